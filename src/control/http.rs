//! The API's HTTP/1.1 server: hyper on a current_thread tokio runtime, on one management
//! thread of its own (never a worker's core: it is spawned unpinned from the main thread), so
//! nothing a client does reaches the forwarding path.
//!
//! What keeps a client from costing more than its own connection:
//! - at most `control.max_connections` connections per listener; at the limit a new one
//!   closes the longest-idle connection (one waiting for a request), else it is closed at
//!   once; both counted. 500 idle connections cannot lock Prometheus out.
//! - one deadline per request (`control.request_timeout`), from its first byte to the end of
//!   the answer: a client that sends its headers a byte a second is cut off when it passes.
//!   Waiting for a (next) request is bounded by `control.idle_timeout`. Both live in
//!   [`Guarded`], the connection's I/O, so they hold whatever hyper is doing.
//! - `control.max_header_bytes` (hyper answers 431), `control.max_body_bytes` (413), a
//!   malformed request 400 (hyper), at most [`MAX_REQUESTS_PER_CONNECTION`] per connection.
//! - accept(2) failing (EMFILE, ENFILE, ENOBUFS) backs off from 10 ms to 1 s, so the
//!   thread does not spin on a full descriptor table.
//! - work that takes the management lock or waits for the workers runs on a small blocking
//!   pool, so /metrics and /healthz answer while a reload or a listing runs.
//!
//! Authentication: on the Unix socket (`control.socket`) every endpoint is open, its file
//! mode and group decide who connects. Over TCP `GET /metrics`, `/healthz` and `/readyz` are
//! open; everything else needs `Authorization: Bearer <control.token_file>`, and without a
//! token file answers 403 pointing to the socket. A POST needs an Authorization header or a
//! Content-Type a browser's cross-site form cannot send (not form, multipart, text/plain).

use super::State;
use super::listen::{SocketFile, bind_tcp, bind_unix, read_token};
use crate::config::Control;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Answers' bodies: whole ones today; a listing can stream through the same type.
pub type Body = BoxBody<Bytes, io::Error>;

/// A keep-alive connection is closed after this many requests (its answer says so).
pub const MAX_REQUESTS_PER_CONNECTION: u32 = 1000;
/// Threads for requests that take the management lock or wait for the workers.
const BLOCKING_THREADS: usize = 4;
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Which listener a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Unix,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Tcp => "tcp",
            Via::Unix => "unix",
        }
    }
}

macro_rules! api_counters {
    ($($name:ident: $kind:literal, $help:literal,)*) => {
        /// One listener's counters, exported as `natgw_api_<name>{listener=...}`.
        #[derive(Default)]
        struct ListenerCounters { $($name: AtomicU64,)* }
        impl ListenerCounters {
            fn each(&self, mut f: impl FnMut(&'static str, &'static str, &'static str, u64)) {
                $(f(stringify!($name), $kind, $help, self.$name.load(Ordering::Relaxed));)*
            }
        }
    };
}

api_counters! {
    connections_accepted_total: "counter", "connections accepted",
    connections_refused_total: "counter", "connections closed at once: control.max_connections busy with requests",
    connections_evicted_total: "counter", "idle connections closed to make room for a new one",
    connections_active: "gauge", "connections open now",
    request_timeouts_total: "counter", "requests cut off at control.request_timeout",
    idle_closed_total: "counter", "connections closed after control.idle_timeout without a request",
    malformed_total: "counter", "connections ended by a request hyper could not parse (400, 431)",
    requests_total: "counter", "requests answered",
    denied_total: "counter", "requests refused for authentication (401, 403, 415)",
    accept_errors_total: "counter", "accept(2) failures (EMFILE ...), each followed by a back-off",
}

/// The limits of `[control]`.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    max_header_bytes: usize,
    max_body_bytes: usize,
    request_timeout: Duration,
    idle_timeout: Duration,
}

/// What every connection shares.
struct Ctx {
    state: Arc<State>,
    token: Option<String>,
    limits: Limits,
    counters: [ListenerCounters; 2],
}

impl Ctx {
    fn counters(&self, via: Via) -> &ListenerCounters {
        &self.counters[via as usize]
    }

    fn bump(&self, via: Via, f: impl Fn(&ListenerCounters) -> &AtomicU64) {
        f(self.counters(via)).fetch_add(1, Ordering::Relaxed);
    }

    /// The API's own metrics in Prometheus text format.
    fn render(&self) -> String {
        let mut out = String::new();
        let mut seen: Vec<&str> = Vec::new();
        for via in [Via::Tcp, Via::Unix] {
            self.counters(via).each(|name, _, _, _| {
                if !seen.contains(&name) {
                    seen.push(name);
                }
            });
        }
        for name in seen {
            for via in [Via::Tcp, Via::Unix] {
                self.counters(via).each(|n, kind, help, v| {
                    if n != name {
                        return;
                    }
                    if via == Via::Tcp {
                        let _ = writeln!(out, "# HELP natgw_api_{n} {help}");
                        let _ = writeln!(out, "# TYPE natgw_api_{n} {kind}");
                    }
                    let _ = writeln!(out, "natgw_api_{n}{{listener=\"{}\"}} {v}", via.label());
                });
            }
        }
        out
    }
}

/// Where a connection is in its life; the deadline that applies follows from it.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Waiting for a request since then (accepted, or the last answer flushed).
    Idle(Instant),
    /// A request's first byte arrived; everything up to the end of its answer by then.
    Request(Instant),
    /// The answer is being written; still the request's deadline.
    Responding(Instant),
}

struct SlotState {
    phase: Phase,
    evicted: bool,
    /// An answer is being streamed (see [`Busy`]).
    busy: bool,
    waker: Option<Waker>,
}

/// One open connection, as the listener's table sees it.
struct Slot {
    st: Mutex<SlotState>,
}

impl Slot {
    /// A connection just accepted: idle since now.
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            st: Mutex::new(SlotState {
                phase: Phase::Idle(Instant::now()),
                evicted: false,
                busy: false,
                waker: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // The state is plain data, valid whatever a panicking holder did.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current request's deadline (or now + request_timeout outside a request).
    fn deadline(&self, limits: &Limits) -> Instant {
        match self.lock().phase {
            Phase::Request(d) | Phase::Responding(d) => d,
            Phase::Idle(_) => Instant::now() + limits.request_timeout,
        }
    }
}

/// A listener's open connections.
struct Slots {
    max: usize,
    open: Mutex<Vec<Arc<Slot>>>,
}

/// Whether a new connection may be served.
enum Admit {
    Yes(Arc<Slot>),
    /// Yes, and the longest-idle connection was told to close.
    Evicted(Arc<Slot>),
    No,
}

impl Slots {
    fn admit(&self) -> Admit {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let slot = Slot::new();
        if open.len() < self.max {
            open.push(Arc::clone(&slot));
            return Admit::Yes(slot);
        }
        let idle = open
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match &*s.lock() {
                SlotState {
                    phase: Phase::Idle(since),
                    busy: false,
                    ..
                } => Some((*since, i)),
                _ => None,
            })
            .min();
        let Some((_, i)) = idle else {
            return Admit::No;
        };
        let old = open.swap_remove(i);
        let waker = {
            let mut st = old.lock();
            st.evicted = true;
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        open.push(Arc::clone(&slot));
        Admit::Evicted(slot)
    }

    fn release(&self, slot: &Arc<Slot>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = open.iter().position(|s| Arc::ptr_eq(s, slot)) {
            open.swap_remove(i);
        }
    }

    fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A connection's I/O with its deadlines: a read or write past the one that applies (or after
/// an eviction) fails, which ends the connection whatever hyper was waiting for.
struct Guarded<S> {
    inner: S,
    slot: Arc<Slot>,
    ctx: Arc<Ctx>,
    via: Via,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<S> Guarded<S> {
    fn new(inner: S, slot: Arc<Slot>, ctx: Arc<Ctx>, via: Via) -> Guarded<S> {
        Guarded {
            inner,
            slot,
            ctx,
            via,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }

    /// Err once the connection must end; else the timer is armed for the deadline that
    /// applies now (it wakes this task to fail the next call).
    fn gate(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let limits = self.ctx.limits;
        let (limit, idle) = {
            let mut st = self.slot.lock();
            if st.evicted {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed to make room for another connection",
                ));
            }
            if !st.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                st.waker = Some(cx.waker().clone());
            }
            match st.phase {
                Phase::Idle(since) => (since + limits.idle_timeout, true),
                Phase::Request(d) | Phase::Responding(d) => (d, false),
            }
        };
        if self.armed != Some(limit) {
            self.sleep.as_mut().reset(limit.into());
            self.armed = Some(limit);
        }
        if Instant::now() >= limit || self.sleep.as_mut().poll(cx).is_ready() {
            if idle {
                self.ctx.bump(self.via, |c| &c.idle_closed_total);
            } else {
                self.ctx.bump(self.via, |c| &c.request_timeouts_total);
            }
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        Ok(())
    }

    fn on_read(&self) {
        let mut st = self.slot.lock();
        if let Phase::Idle(_) | Phase::Responding(_) = st.phase {
            st.phase = Phase::Request(Instant::now() + self.ctx.limits.request_timeout);
        }
    }

    fn on_write(&self) {
        let mut st = self.slot.lock();
        st.phase = match st.phase {
            Phase::Request(d) | Phase::Responding(d) => Phase::Responding(d),
            // More of an answer after a flush: progress restarts the idle bound.
            Phase::Idle(_) => Phase::Idle(Instant::now()),
        };
    }

    fn on_flush(&self) {
        let mut st = self.slot.lock();
        if let Phase::Responding(_) = st.phase {
            st.phase = Phase::Idle(Instant::now());
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gate(cx)?;
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r
            && buf.filled().len() > before
        {
            this.on_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.gate(cx)?;
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r
            && n > 0
        {
            this.on_write();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.gate(cx)?;
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            this.on_flush();
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The API's listeners, opened (and the token read) before the gateway starts.
pub struct Api {
    tcp: std::net::TcpListener,
    unix: std::os::unix::net::UnixListener,
    socket: SocketFile,
    token: Option<String>,
    limits: Limits,
}

impl Api {
    /// Reads the token file, binds `control.listen` and creates `control.socket`. Err names
    /// the key; nothing is left behind.
    pub fn open(cfg: &Control) -> Result<Api, super::ListenError> {
        let token = cfg.token_file.as_deref().map(read_token).transpose()?;
        let tcp = bind_tcp(cfg)?;
        let (unix, socket) = bind_unix(cfg)?;
        Ok(Api {
            tcp,
            unix,
            socket,
            token,
            limits: Limits {
                max_connections: cfg.max_connections as usize,
                max_header_bytes: cfg.max_header_bytes as usize,
                max_body_bytes: cfg.max_body_bytes as usize,
                request_timeout: Duration::from_secs(cfg.request_timeout.into()),
                idle_timeout: Duration::from_secs(cfg.idle_timeout.into()),
            },
        })
    }

    /// Serves both listeners on the API thread until the process ends. Returns the socket
    /// file, to be dropped (removed) when natgw stops.
    pub fn serve(self, state: Arc<State>) -> io::Result<SocketFile> {
        let Api {
            tcp,
            unix,
            socket,
            token,
            limits,
        } = self;
        let ctx = Arc::new(Ctx {
            state,
            token,
            limits,
            counters: Default::default(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .max_blocking_threads(BLOCKING_THREADS)
            .thread_name("natgw-api-work")
            .build()?;
        std::thread::Builder::new()
            .name("natgw-api".into())
            .spawn(move || {
                rt.block_on(async move {
                    let slots = |max| {
                        Arc::new(Slots {
                            max,
                            open: Mutex::new(Vec::new()),
                        })
                    };
                    let (ts, us) = (slots(limits.max_connections), slots(limits.max_connections));
                    match tokio::net::UnixListener::from_std(unix) {
                        Ok(l) => {
                            tokio::spawn(accept_loop(l, Via::Unix, Arc::clone(&ctx), us));
                        }
                        Err(e) => tracing::error!("control.socket: {e}"),
                    }
                    match tokio::net::TcpListener::from_std(tcp) {
                        Ok(l) => accept_loop(l, Via::Tcp, ctx, ts).await,
                        Err(e) => {
                            tracing::error!("control.listen: {e}");
                            std::future::pending::<()>().await
                        }
                    }
                })
            })?;
        Ok(socket)
    }
}

/// Whether an accept(2) error is about one connection (retry at once) rather than the
/// process or the system (back off).
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// A listening socket of either kind.
trait Accept {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Stream>>;
}

impl Accept for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Stream>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    fn poll_accept(&self, cx: &mut Context<'_>) -> Poll<io::Result<Self::Stream>> {
        tokio::net::UnixListener::poll_accept(self, cx).map_ok(|(s, _)| s)
    }
}

async fn accept_loop<L: Accept>(listener: L, via: Via, ctx: Arc<Ctx>, slots: Arc<Slots>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let stream = match std::future::poll_fn(|cx| listener.poll_accept(cx)).await {
            Ok(s) => {
                backoff = BACKOFF_MIN;
                s
            }
            Err(e) => {
                ctx.bump(via, |c| &c.accept_errors_total);
                if !transient(&e) {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                continue;
            }
        };
        let slot = match slots.admit() {
            Admit::Yes(s) => s,
            Admit::Evicted(s) => {
                ctx.bump(via, |c| &c.connections_evicted_total);
                s
            }
            Admit::No => {
                ctx.bump(via, |c| &c.connections_refused_total);
                drop(stream);
                continue;
            }
        };
        ctx.bump(via, |c| &c.connections_accepted_total);
        ctx.counters(via)
            .connections_active
            .store(slots.len() as u64, Ordering::Relaxed);
        tokio::spawn(serve_connection(
            stream,
            via,
            Arc::clone(&ctx),
            Arc::clone(&slots),
            slot,
        ));
        // Let the new connection read what it was sent before the next accept: a request
        // already in its socket takes it out of the idle ones a burst of new connections
        // would close.
        tokio::task::yield_now().await;
    }
}

async fn serve_connection<S>(stream: S, via: Via, ctx: Arc<Ctx>, slots: Arc<Slots>, slot: Arc<Slot>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Guarded::new(
        stream,
        Arc::clone(&slot),
        Arc::clone(&ctx),
        via,
    ));
    let served = Arc::new(AtomicU64::new(0));
    let svc = {
        let (ctx, slot) = (Arc::clone(&ctx), Arc::clone(&slot));
        hyper::service::service_fn(move |req| {
            let (ctx, slot) = (Arc::clone(&ctx), Arc::clone(&slot));
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                let mut resp = answer(&ctx, via, &slot, req).await;
                ctx.bump(via, |c| &c.requests_total);
                if n >= MAX_REQUESTS_PER_CONNECTION as u64 {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, std::convert::Infallible>(resp)
            }
        })
    };
    let limits = ctx.limits;
    let r = hyper::server::conn::http1::Builder::new()
        .max_header_size(limits.max_header_bytes)
        .max_buf_size(limits.max_header_bytes.max(8192) + 8192)
        // The deadlines are Guarded's: one for the whole request, not only its head.
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, svc)
        .await;
    if let Err(e) = r
        && (e.is_parse() || e.is_parse_too_large())
    {
        ctx.bump(via, |c| &c.malformed_total);
    }
    slots.release(&slot);
    ctx.counters(via)
        .connections_active
        .store(slots.len() as u64, Ordering::Relaxed);
}

/// Marks a connection whose answer is still being streamed: not idle, whatever its I/O
/// looks like between two chunks, so never closed to make room.
struct Busy(Arc<Slot>);

impl Busy {
    fn new(slot: Arc<Slot>) -> Busy {
        slot.lock().busy = true;
        Busy(slot)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.lock().busy = false;
    }
}

/// An answer written as its chunks arrive from the blocking pool. An error after the head
/// went out (a worker that did not answer a listing step) ends the body with that error:
/// hyper then aborts the connection instead of closing the chunked body, so the client sees
/// a cut-off answer, never a complete-looking 200 with half the sessions.
struct Streamed {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    _busy: Busy,
}

impl hyper::body::Body for Streamed {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|c| c.map(|b| b.map(hyper::body::Frame::data)))
    }
}

/// The endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Metrics,
    Healthz,
    Readyz,
    Stats,
    Status,
    Sessions,
    DeleteSessions,
    Mappings,
    PutMapping,
    DeleteMapping,
    Reload,
    ClearSessions,
}

/// (path, method, endpoint, open over TCP without a token).
const ROUTES: &[(&str, Method, Endpoint, bool)] = &[
    ("/metrics", Method::GET, Endpoint::Metrics, true),
    ("/healthz", Method::GET, Endpoint::Healthz, true),
    ("/readyz", Method::GET, Endpoint::Readyz, true),
    ("/stats", Method::GET, Endpoint::Stats, false),
    ("/status", Method::GET, Endpoint::Status, false),
    ("/sessions", Method::GET, Endpoint::Sessions, false),
    ("/sessions", Method::DELETE, Endpoint::DeleteSessions, false),
    ("/mappings", Method::GET, Endpoint::Mappings, false),
    ("/mappings", Method::PUT, Endpoint::PutMapping, false),
    ("/mappings", Method::DELETE, Endpoint::DeleteMapping, false),
    ("/reload", Method::POST, Endpoint::Reload, false),
    (
        "/sessions/clear",
        Method::POST,
        Endpoint::ClearSessions,
        false,
    ),
];

fn full(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

const JSON: &str = "application/json";

fn json(status: StatusCode, body: String) -> Response<Body> {
    full(status, JSON, body)
}

/// An error as JSON, `{"ok":false,"error":...}`: what the CLI prints.
fn error(status: StatusCode, msg: &str) -> Response<Body> {
    json(
        status,
        format!("{{\"ok\":false,\"error\":{}}}", super::json_str(msg)),
    )
}

/// Compares in time that depends only on the expected token's length, not on where the
/// presented one first differs.
fn token_matches(presented: &[u8], expected: &[u8]) -> bool {
    let mut diff = (presented.len() != expected.len()) as u8;
    for (i, e) in expected.iter().enumerate() {
        let p = presented.get(i).copied().unwrap_or(!*e);
        diff |= p ^ e;
    }
    std::hint::black_box(diff) == 0
}

/// Media types a cross-site HTML form (or a "simple" fetch) can send without a CORS
/// preflight, so a POST with one of them may come from any web page the operator opens.
fn simple_content_type(v: Option<&HeaderValue>) -> bool {
    let Some(v) = v.and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let mime = v
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    matches!(
        mime.as_str(),
        "" | "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
    )
}

/// Authentication for `ep` over `via`: None to go on, or the refusal.
fn authorize(ctx: &Ctx, via: Via, open: bool, req: &Request<Incoming>) -> Option<Response<Body>> {
    let auth = req.headers().get(header::AUTHORIZATION);
    if via == Via::Tcp && !open {
        let Some(token) = &ctx.token else {
            return Some(error(
                StatusCode::FORBIDDEN,
                "over TCP this endpoint needs a bearer token and control.token_file is not set; \
                 use the Unix socket (control.socket, the natgw CLI's default) or set \
                 control.token_file",
            ));
        };
        let presented = auth
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        if !token_matches(presented, token.as_bytes()) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                if auth.is_none() {
                    "this endpoint needs Authorization: Bearer <the token in control.token_file>"
                } else {
                    "wrong token"
                },
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"natgw\""),
            );
            return Some(r);
        }
    }
    if req.method() == Method::POST
        && auth.is_none()
        && simple_content_type(req.headers().get(header::CONTENT_TYPE))
    {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "POST {} needs Content-Type: application/json (or an Authorization header): \
                 a cross-site form cannot send either",
                req.uri().path()
            ),
        ));
    }
    None
}

/// Runs `f` on the blocking pool (it takes the management lock or waits for the workers).
async fn blocking(
    ctx: &Arc<Ctx>,
    f: impl FnOnce(&State) -> Response<Body> + Send + 'static,
) -> Response<Body> {
    let st = Arc::clone(&ctx.state);
    match tokio::task::spawn_blocking(move || f(&st)).await {
        Ok(r) => r,
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal error"),
    }
}

fn no_handle() -> Response<Body> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal: the management state's lock was poisoned",
    )
}

async fn answer(
    ctx: &Arc<Ctx>,
    via: Via,
    slot: &Arc<Slot>,
    req: Request<Incoming>,
) -> Response<Body> {
    let deadline = slot.deadline(&ctx.limits);
    let path = req.uri().path();
    let Some(&(_, _, ep, open)) = ROUTES
        .iter()
        .find(|(p, m, _, _)| *p == path && *m == req.method())
    else {
        let allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|(p, _, _, _)| *p == path)
            .map(|(_, m, _, _)| m.as_str())
            .collect();
        if allowed.is_empty() {
            return error(StatusCode::NOT_FOUND, &format!("no endpoint {path}"));
        }
        let mut r = error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{path} takes {}", allowed.join(", ")),
        );
        if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
            r.headers_mut().insert(header::ALLOW, v);
        }
        return r;
    };
    if let Some(r) = authorize(ctx, via, open, &req) {
        ctx.bump(via, |c| &c.denied_total);
        return r;
    }
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "the body is larger than control.max_body_bytes ({})",
                ctx.limits.max_body_bytes
            ),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.limits.max_body_bytes as u64) {
        return too_large();
    }
    let query = req.uri().query().unwrap_or("").to_string();
    // Read (bounded) for every endpoint so the connection stays usable; PUT /mappings uses it.
    let body = Limited::new(req.into_body(), ctx.limits.max_body_bytes);
    let body = match tokio::time::timeout_at(deadline.into(), body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return too_large();
        }
        Ok(Err(_)) => return error(StatusCode::BAD_REQUEST, "malformed body"),
        // Guarded ends the connection at the deadline; this answer is not written.
        Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "request deadline passed"),
    };
    let work = dispatch(ctx, slot, ep, query, body);
    match tokio::time::timeout_at(deadline.into(), work).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took longer than control.request_timeout",
        ),
    }
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    slot: &Arc<Slot>,
    ep: Endpoint,
    query: String,
    body: Bytes,
) -> Response<Body> {
    use super::*;
    match ep {
        Endpoint::Healthz => full(StatusCode::OK, "text/plain", "ok\n"),
        Endpoint::Metrics => {
            let c = Arc::clone(ctx);
            blocking(ctx, move |st| match st.handle() {
                Some(h) => {
                    let mut text = st.metrics.render(&h);
                    text.push_str(&c.render());
                    full(StatusCode::OK, "text/plain; version=0.0.4", text)
                }
                None => no_handle(),
            })
            .await
        }
        Endpoint::Readyz => {
            blocking(ctx, |st| match st.handle().map(|h| readiness(&h)) {
                Some(Ok(())) => full(StatusCode::OK, "text/plain", "ready\n"),
                Some(Err(why)) => full(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {}\n", why.join("; ")),
                ),
                None => no_handle(),
            })
            .await
        }
        Endpoint::Stats => {
            blocking(ctx, |st| match st.handle() {
                Some(h) => json(StatusCode::OK, stats_json(&h)),
                None => no_handle(),
            })
            .await
        }
        Endpoint::Status => {
            blocking(ctx, |st| match st.handle() {
                Some(h) => json(StatusCode::OK, status_json(&h)),
                None => no_handle(),
            })
            .await
        }
        Endpoint::Sessions => {
            let Some(h) = ctx.state.handle() else {
                return no_handle();
            };
            let q = match sessions::Query::parse(&query, &h) {
                Ok(q) => q,
                Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
            };
            // Streamed: the listing runs on the blocking pool, each chunk goes out as the
            // workers answer (a bounded channel: a slow reader slows the listing down).
            let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
            tokio::task::spawn_blocking(move || {
                let r = sessions::list(&h, &q, &mut |chunk| {
                    tx.blocking_send(Ok(Bytes::copy_from_slice(chunk.as_bytes())))
                        .map_err(|_| io::Error::other("the client went away"))
                });
                if let Err(e) = r {
                    tracing::warn!("GET /sessions cut off: {e}");
                    let _ = tx.blocking_send(Err(e));
                }
            });
            let body = Streamed {
                rx,
                _busy: Busy::new(Arc::clone(slot)),
            };
            let mut r = Response::new(body.boxed());
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
            r
        }
        Endpoint::DeleteSessions => {
            blocking(ctx, move |st| {
                let Some(h) = st.handle() else {
                    return no_handle();
                };
                match sessions::Query::parse(&query, &h) {
                    Ok(q) => match sessions::delete(&h, &q) {
                        Ok(n) => json(StatusCode::OK, format!("{{\"ok\":true,\"removed\":{n}}}")),
                        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
                    },
                    Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
                }
            })
            .await
        }
        Endpoint::Mappings => {
            blocking(ctx, move |st| match st.handle() {
                Some(h) => match mappings::realm_filter(&query, &h.config) {
                    Ok(realm) => json(
                        StatusCode::OK,
                        mappings_json_of(&h.config, realm.as_deref()),
                    ),
                    Err(e) => json(StatusCode::BAD_REQUEST, e.json()),
                },
                None => no_handle(),
            })
            .await
        }
        Endpoint::PutMapping | Endpoint::DeleteMapping => {
            let edit = if ep == Endpoint::PutMapping {
                mappings::parse_put(&body)
            } else {
                mappings::parse_delete(&query)
            };
            let edit = match edit {
                Ok(e) => e,
                Err(e) => return json(StatusCode::BAD_REQUEST, e.json()),
            };
            blocking(ctx, move |st| match mappings::apply(st, &edit) {
                Ok(done) => json(StatusCode::OK, done.json()),
                Err(e) => json(
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                    e.json(),
                ),
            })
            .await
        }
        Endpoint::Reload => {
            blocking(ctx, |st| match reload(st) {
                Ok(done) => json(
                    StatusCode::OK,
                    format!(
                        "{{\"ok\":true,\"generation\":{},\"message\":{}}}",
                        done.generation,
                        json_str(&done.message)
                    ),
                ),
                Err(ReloadError::Poisoned) => no_handle(),
                Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
            })
            .await
        }
        Endpoint::ClearSessions => {
            blocking(ctx, |st| match st.handle() {
                Some(h) => {
                    clear_sessions(&h);
                    json(StatusCode::OK, "{\"ok\":true}".into())
                }
                None => no_handle(),
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one request on a Unix socket pair whose answer is a [`Streamed`] body fed
    /// `chunks`; returns everything the client read until the server closed.
    fn streamed_answer(chunks: Vec<io::Result<Bytes>>) -> String {
        use std::io::{Read, Write};
        let (mut client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reader = std::thread::spawn(move || {
            client
                .write_all(b"GET /sessions HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got);
            String::from_utf8_lossy(&got).into_owned()
        });
        rt.block_on(async move {
            server.set_nonblocking(true).unwrap();
            let io = TokioIo::new(tokio::net::UnixStream::from_std(server).unwrap());
            let chunks = Mutex::new(Some(chunks));
            let svc = hyper::service::service_fn(move |_req| {
                let chunks = chunks.lock().unwrap().take().unwrap_or_default();
                async move {
                    let (tx, rx) = tokio::sync::mpsc::channel(chunks.len().max(1));
                    for c in chunks {
                        tx.send(c).await.unwrap();
                    }
                    let slot = Slot::new();
                    let body = Streamed {
                        rx,
                        _busy: Busy::new(slot),
                    };
                    Ok::<_, std::convert::Infallible>(Response::new(body))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(io, svc)
                .await;
        });
        reader.join().unwrap()
    }

    /// A listing cut off by an error (a worker that did not answer) aborts the connection:
    /// the chunked body never gets its terminating chunk, so no client takes the half
    /// listing for a complete answer (it did when the error just ended the stream). A
    /// listing that ends normally gets it.
    #[test]
    fn a_streamed_answer_cut_off_by_an_error_is_not_terminated() {
        let ok = streamed_answer(vec![Ok(Bytes::from_static(b"{\"sessions\":[]}"))]);
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("\r\n0\r\n\r\n"), "complete: {ok:?}");
        let cut = streamed_answer(vec![
            Ok(Bytes::from_static(b"{\"sessions\":[")),
            Err(io::Error::other("worker 0 did not answer")),
        ]);
        // What was still buffered is not sent either: the client sees the connection end
        // early (here before the head; in a long listing after the chunks already flushed).
        assert!(
            !cut.ends_with("0\r\n\r\n"),
            "cut off, yet terminated: {cut:?}"
        );
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(token_matches(b"abc", b"abc"));
        assert!(!token_matches(b"abd", b"abc"));
        assert!(!token_matches(b"ab", b"abc"));
        assert!(!token_matches(b"abcd", b"abc"));
        assert!(!token_matches(b"", b"abc"));
    }

    #[test]
    fn simple_types_are_the_cross_site_ones() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(simple_content_type(None));
        assert!(simple_content_type(Some(&v("text/plain;charset=utf-8"))));
        assert!(simple_content_type(Some(&v(
            "Application/X-WWW-Form-Urlencoded"
        ))));
        assert!(simple_content_type(Some(&v(
            "multipart/form-data; boundary=x"
        ))));
        assert!(!simple_content_type(Some(&v("application/json"))));
    }

    #[test]
    fn full_table_evicts_the_longest_idle() {
        let slots = Slots {
            max: 2,
            open: Mutex::new(Vec::new()),
        };
        let Admit::Yes(a) = slots.admit() else {
            panic!()
        };
        let Admit::Yes(b) = slots.admit() else {
            panic!()
        };
        // Both busy with requests: refused.
        for s in [&a, &b] {
            s.lock().phase = Phase::Request(Instant::now() + Duration::from_secs(9));
        }
        assert!(matches!(slots.admit(), Admit::No));
        // b idle: it goes.
        b.lock().phase = Phase::Idle(Instant::now());
        let Admit::Evicted(c) = slots.admit() else {
            panic!()
        };
        assert!(b.lock().evicted && !a.lock().evicted);
        assert_eq!(slots.len(), 2);
        slots.release(&b);
        assert_eq!(slots.len(), 2, "b was no longer in the table");
        slots.release(&c);
        assert_eq!(slots.len(), 1);
    }
}
