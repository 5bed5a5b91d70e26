//! The CLI's side of the API: one HTTP/1.1 request over the Unix socket or TCP, through
//! hyper's client connection (the server's stack, so chunked and streamed answers are read
//! like any other), on a current_thread runtime.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Connecting, and then the whole exchange, each within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Where natgw is.
#[derive(Clone, Debug)]
pub enum Target {
    Unix(PathBuf),
    /// host:port (for the connection and the Host header).
    Tcp(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

impl Target {
    /// `http://host[:port]` (no path; port 80 if none).
    pub fn from_url(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "--url {url:?}: only http:// (natgw serves no TLS; put a proxy in front)"
            ));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(format!(
                "--url {url:?}: give no path, only http://host:port"
            ));
        }
        let auth = uri
            .authority()
            .ok_or_else(|| format!("--url {url:?}: no host"))?;
        Ok(Target::Tcp(format!(
            "{}:{}",
            auth.host(),
            auth.port_u16().unwrap_or(80)
        )))
    }
}

/// Why a request did not get a 2xx answer.
#[derive(Debug)]
pub enum CallError {
    /// natgw could not be reached (no socket, refused, timed out).
    Unreachable(String),
    /// natgw answered with an error status.
    Refused { status: StatusCode, message: String },
    /// The answer was not HTTP or not what was expected.
    Protocol(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Unreachable(m) | CallError::Protocol(m) => f.write_str(m),
            CallError::Refused { status, message } => write!(f, "{status}: {message}"),
        }
    }
}

pub struct Client {
    pub target: Target,
    pub token: Option<String>,
}

/// An error answer's message: natgw's `{"error": ...}`, else its text.
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string())
}

impl Client {
    /// One request; the body of a 2xx answer.
    pub fn call(&self, method: Method, path: &str) -> Result<Bytes, CallError> {
        self.call_with(method, path, Bytes::new())
    }

    /// One request with a JSON body (`PUT /mappings`); the body of a 2xx answer.
    pub fn call_with(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, CallError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| CallError::Protocol(format!("starting the client: {e}")))?;
        rt.block_on(self.exchange(method, path, body))
    }

    async fn exchange(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, CallError> {
        let unreachable = |e: String| {
            CallError::Unreachable(format!("cannot reach natgw at {}: {e}", self.target))
        };
        let connect = async {
            match &self.target {
                Target::Unix(p) => tokio::net::UnixStream::connect(p)
                    .await
                    .map(|s| Box::new(TokioIo::new(s)) as Box<dyn Io>),
                Target::Tcp(a) => tokio::net::TcpStream::connect(a.as_str())
                    .await
                    .map(|s| Box::new(TokioIo::new(s)) as Box<dyn Io>),
            }
        };
        let io = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable("no connection within 3 s".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let host = match &self.target {
            Target::Unix(_) => "natgw".to_string(),
            Target::Tcp(a) => a.clone(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, host)
            .body(Full::new(body))
            .map_err(|e| CallError::Protocol(format!("{path}: {e}")))?;
        if let Some(t) = &self.token {
            let v = HeaderValue::from_str(&format!("Bearer {t}"))
                .map_err(|_| CallError::Protocol("the token cannot be sent in a header".into()))?;
            req.headers_mut().insert(header::AUTHORIZATION, v);
        }
        if method == Method::POST || method == Method::PUT {
            // What the API asks of a POST that is not a cross-site form.
            req.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        let exchange = async {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tokio::spawn(conn);
            let resp = send
                .send_request(req)
                .await
                .map_err(|e| CallError::Protocol(format!("{method} {path}: {e}")))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| {
                    CallError::Protocol(format!("{method} {path}: reading the answer: {e}"))
                })?
                .to_bytes();
            if status.is_success() {
                Ok(body)
            } else {
                Err(CallError::Refused {
                    status,
                    message: message_of(&body),
                })
            }
        };
        tokio::time::timeout(ANSWER_TIMEOUT, exchange)
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs())))?
    }

    /// GET, parsed as JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value, CallError> {
        let body = self.call(Method::GET, path)?;
        serde_json::from_slice(&body)
            .map_err(|e| CallError::Protocol(format!("GET {path}: not JSON: {e}")))
    }
}

/// A connection of either kind, for hyper.
trait Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send {}
impl<T: hyper::rt::Read + hyper::rt::Write + Unpin + Send> Io for T {}
