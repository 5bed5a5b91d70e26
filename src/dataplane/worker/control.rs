//! The management thread's channel to a worker, and the bounded session steps a worker
//! answers on it.
//!
//! A worker reads its channel between two rounds of its poll loop, so a request costs it
//! one bounded step (see [`crate::nat::listing`]). The channel comes with an eventfd the
//! worker sleeps on too: an idle worker answers at once instead of after its poll
//! timeout, which keeps a listing of a million sessions (a thousand steps) short.

use super::Control;
use crate::nat::Engine;
use crate::nat::listing::{Cursor, Filter};
use crate::nat::session::{Session, flags, tcp};
use crate::packet::ipv4::Protocol;
use crossbeam::channel::{Receiver, SendError, Sender, TryRecvError};
use natgw_kernel::wake::EventFd;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The management thread's end.
#[derive(Clone, Debug)]
pub struct ControlTx {
    tx: Sender<Control>,
    wake: Arc<EventFd>,
}

/// The worker's end.
pub struct ControlRx {
    rx: Receiver<Control>,
    wake: Arc<EventFd>,
}

/// A bounded control channel (`cap` messages) with its wake-up.
pub fn channel(cap: usize) -> std::io::Result<(ControlTx, ControlRx)> {
    let (tx, rx) = crossbeam::channel::bounded(cap);
    let wake = Arc::new(EventFd::new()?);
    Ok((
        ControlTx {
            tx,
            wake: Arc::clone(&wake),
        },
        ControlRx { rx, wake },
    ))
}

impl ControlTx {
    /// Queues `m` (waiting while the channel is full) and wakes the worker.
    pub fn send(&self, m: Control) -> Result<(), SendError<Control>> {
        self.tx.send(m)?;
        self.wake.signal();
        Ok(())
    }

    /// Like `send`, giving up after `timeout` while the channel stays full (a reload must
    /// answer even when a worker is stuck).
    pub fn send_timeout(
        &self,
        m: Control,
        timeout: std::time::Duration,
    ) -> Result<(), crossbeam::channel::SendTimeoutError<Control>> {
        self.tx.send_timeout(m, timeout)?;
        self.wake.signal();
        Ok(())
    }
}

impl ControlRx {
    /// Whether a message waits: one atomic load, cheap enough for every loop round.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    pub fn try_recv(&self) -> Result<Control, TryRecvError> {
        self.wake.drain();
        self.rx.try_recv()
    }

    /// The descriptor that becomes readable when a message is sent.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.wake.fd()
    }
}

/// A session as the management plane lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub core: usize,
    /// The session's slot on its core: with `core`, where a paged listing resumes.
    pub slot: u32,
    /// Stable realm id (the management plane names it).
    pub realm: u16,
    pub proto: Protocol,
    pub inside: (Ipv4Addr, u16),
    pub external: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
    pub state: &'static str,
    pub tcp_established: bool,
    pub age_secs: u32,
    /// Seconds since the last packet that refreshed it (its timeout less the time left).
    pub idle_secs: u32,
    pub expires_in_secs: u32,
    pub inbound: bool,
}

impl SessionInfo {
    fn of(engine: &Engine, slot: u32, s: &Session) -> SessionInfo {
        let now = engine.now_secs();
        let established = s.proto == Protocol::TCP && tcp::is_established(s.tcp);
        let left = s.expires.saturating_sub(now);
        let timeout = engine
            .rules()
            .realms
            .get(s.realm as usize)
            .map_or(left, |r| r.timeout(s.proto, established));
        SessionInfo {
            core: engine.core(),
            slot,
            realm: s.realm,
            proto: s.proto,
            inside: (Ipv4Addr::from(s.in_addr), s.in_port),
            external: (Ipv4Addr::from(s.ext_addr), s.ext_port),
            remote: (Ipv4Addr::from(s.rem_addr), s.rem_port),
            state: state_name(s),
            tcp_established: established,
            age_secs: now.saturating_sub(s.created),
            idle_secs: timeout.saturating_sub(left),
            expires_in_secs: left,
            inbound: s.flags & flags::INBOUND != 0,
        }
    }
}

/// A session's state in words: UDP and ICMP sessions are `active`; TCP follows
/// [`tcp`]'s tracking.
pub fn state_name(s: &Session) -> &'static str {
    if s.proto != Protocol::TCP {
        return "active";
    }
    let t = s.tcp;
    if t & tcp::RST != 0 {
        "reset"
    } else if t & (tcp::FIN_OUT | tcp::FIN_IN) == tcp::FIN_OUT | tcp::FIN_IN {
        "closed"
    } else if tcp::is_established(t) {
        if t & (tcp::FIN_OUT | tcp::FIN_IN) != 0 {
            "closing"
        } else {
            "established"
        }
    } else {
        "opening"
    }
}

/// One step of a listing: the worker visits the sessions matching `filter` from slot `from`
/// on and returns at most `emit` of them; the others it only counts.
pub struct ListStep {
    pub from: u32,
    pub filter: Filter,
    pub emit: u32,
    pub reply: Sender<ListChunk>,
}

/// A worker's answer to a [`ListStep`].
#[derive(Debug, Default)]
pub struct ListChunk {
    pub sessions: Vec<SessionInfo>,
    /// Matching sessions visited (emitted or not).
    pub matched: u32,
    /// The slot of the first matching session not emitted (a page's end), if any.
    pub first_unsent: Option<u32>,
    pub next: Cursor,
}

/// One step of a deletion: the worker removes the sessions matching `filter` from slot
/// `from` on and answers how many, and where the next step resumes.
pub struct DeleteStep {
    pub from: u32,
    pub filter: Filter,
    pub reply: Sender<(u32, Cursor)>,
}

impl ListStep {
    /// Runs the step on `engine` (between two batches).
    pub fn answer(self, engine: &Engine) {
        let mut chunk = ListChunk {
            sessions: Vec::with_capacity(self.emit.min(crate::nat::listing::STEP_LIVE) as usize),
            ..ListChunk::default()
        };
        chunk.next = engine.list_sessions(self.from, &self.filter, |slot, s| {
            chunk.matched += 1;
            if (chunk.sessions.len() as u32) < self.emit {
                chunk.sessions.push(SessionInfo::of(engine, slot, s));
            } else if chunk.first_unsent.is_none() {
                chunk.first_unsent = Some(slot);
            }
        });
        // The receiver may have given up (a client gone): nothing to do then.
        let _ = self.reply.send(chunk);
    }
}

impl DeleteStep {
    pub fn answer(self, engine: &mut Engine) {
        let _ = self
            .reply
            .send(engine.delete_sessions(self.from, &self.filter));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names() {
        let t = |proto, tcp| {
            state_name(&Session {
                proto,
                tcp,
                ..Session::default()
            })
        };
        assert_eq!(t(Protocol::UDP, 0), "active");
        assert_eq!(t(Protocol::TCP, tcp::SYN_OUT), "opening");
        let est = tcp::SYN_OUT | tcp::SYN_IN | tcp::ACKED;
        assert_eq!(t(Protocol::TCP, est), "established");
        assert_eq!(t(Protocol::TCP, est | tcp::FIN_OUT), "closing");
        assert_eq!(t(Protocol::TCP, est | tcp::FIN_OUT | tcp::FIN_IN), "closed");
        assert_eq!(t(Protocol::TCP, est | tcp::RST), "reset");
    }

    #[test]
    fn send_wakes_and_try_recv_drains() {
        let (tx, rx) = channel(2).unwrap();
        assert!(rx.is_empty());
        assert!(!natgw_kernel::wake::wait_readable(&[rx.fd()], 0));
        tx.send(Control::ClearSessions).unwrap();
        assert!(!rx.is_empty());
        assert!(natgw_kernel::wake::wait_readable(&[rx.fd()], 0));
        assert!(matches!(rx.try_recv(), Ok(Control::ClearSessions)));
        assert!(!natgw_kernel::wake::wait_readable(&[rx.fd()], 0));
        assert!(rx.try_recv().is_err());
    }
}
