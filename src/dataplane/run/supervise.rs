//! While the gateway runs: what ends it on its own, and what it follows in place.
//!
//! - A worker thread that finishes before shutdown (a panic in a debug build; release
//!   builds abort the whole process on any panic, `panic = "abort"`) ends the gateway with
//!   [`RunError::WorkerDied`]: a NAT with a dead core silently black-holes its flows.
//! - Its interfaces are watched over rtnetlink (RTNLGRP_LINK). Down/up and carrier changes
//!   are followed in place: the XDP program stays attached and the AF_XDP sockets stay bound
//!   across them, so traffic resumes when the link comes back; each change is logged and
//!   `natgw_link_up` shows the state. A change natgw cannot follow in place (the interface
//!   deleted, re-created, renamed, or its MTU changed) ends the gateway with a [`RunError`]
//!   naming it, and `natgw run` exits non-zero so that the service manager starts it again
//!   on the interface as it is now.

use super::checks::Links;
use natgw_kernel::netlink::{self, LinkEvent, LinkInfo, LinkSocket};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Why a running gateway stopped on its own.
#[derive(Debug)]
pub enum RunError {
    /// A worker thread ended (panicked) while the gateway ran.
    WorkerDied {
        worker: usize,
        panic: Option<String>,
    },
    /// An interface was deleted (or moved to another namespace).
    LinkDeleted { role: &'static str, name: String },
    /// An interface of natgw's name exists again, but it is another device.
    LinkReplaced {
        role: &'static str,
        name: String,
        ifindex: u32,
        now: u32,
    },
    /// An interface was renamed.
    LinkRenamed {
        role: &'static str,
        name: String,
        now: String,
    },
    /// An interface's MTU changed.
    MtuChanged {
        role: &'static str,
        name: String,
        from: u32,
        to: u32,
    },
    /// The interface could no longer be queried after lost link notifications.
    LinkQuery {
        role: &'static str,
        name: String,
        err: io::Error,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::WorkerDied { worker, panic } => {
                match panic {
                    Some(p) => write!(f, "worker {worker} died (panicked: {p})")?,
                    None => write!(f, "worker {worker} died (its loop ended unasked)")?,
                }
                f.write_str("; its flows would be black-holed")
            }
            RunError::LinkDeleted { role, name } => {
                write!(f, "{role} interface {name} was deleted")
            }
            RunError::LinkReplaced {
                role,
                name,
                ifindex,
                now,
            } => write!(
                f,
                "{role} interface {name} was re-created (ifindex {ifindex} -> {now}); \
                 natgw's sockets and XDP program were on the old device"
            ),
            RunError::LinkRenamed { role, name, now } => {
                write!(f, "{role} interface {name} was renamed to {now}")
            }
            RunError::MtuChanged {
                role,
                name,
                from,
                to,
            } => write!(
                f,
                "the MTU of {role} interface {name} changed from {from} to {to}"
            ),
            RunError::LinkQuery { role, name, err } => {
                write!(f, "{role} interface {name}: {err}")
            }
        }
    }
}

impl std::error::Error for RunError {}

/// The first worker thread that has finished, joined, with its panic message.
pub(super) fn dead_worker(workers: &mut [Option<JoinHandle<()>>]) -> Option<RunError> {
    let i = workers
        .iter()
        .position(|t| t.as_ref().is_some_and(|t| t.is_finished()))?;
    let panic = match workers[i].take()?.join() {
        Ok(()) => None,
        Err(p) => Some(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic payload".into()),
        ),
    };
    Some(RunError::WorkerDied { worker: i, panic })
}

/// One interface as natgw bound it.
struct Watched {
    role: &'static str,
    at_start: LinkInfo,
    /// Up and with carrier, as last seen; shared with the metrics.
    up: Arc<AtomicBool>,
}

/// Whether an interface is up and has carrier, per interface, for `natgw_link_up`.
pub type LinkStates = Vec<(String, Arc<AtomicBool>)>;

/// Follows natgw's interfaces over rtnetlink.
pub(super) struct LinkWatch {
    sock: LinkSocket,
    links: Vec<Watched>,
    events: Vec<LinkEvent>,
}

fn running(l: &LinkInfo) -> bool {
    l.up && l.carrier
}

impl LinkWatch {
    /// Subscribes to link notifications about `links` (as read at start; a [`resync`]
    /// catches what changed before the subscription).
    ///
    /// [`resync`]: LinkWatch::resync
    pub(super) fn open(links: &Links) -> io::Result<(LinkWatch, LinkStates)> {
        let sock = LinkSocket::open()?;
        let roles =
            std::iter::once("outside").chain(std::iter::repeat_n("inside", links.inside.len()));
        let watched: Vec<Watched> = links
            .all()
            .zip(roles)
            .map(|(l, role)| Watched {
                role,
                at_start: l.clone(),
                up: Arc::new(AtomicBool::new(running(l))),
            })
            .collect();
        let states = watched
            .iter()
            .map(|w| (w.at_start.name.clone(), Arc::clone(&w.up)))
            .collect();
        Ok((
            LinkWatch {
                sock,
                links: watched,
                events: Vec::new(),
            },
            states,
        ))
    }

    /// Applies pending notifications. Err: a change natgw cannot follow in place.
    pub(super) fn poll(&mut self) -> Result<(), RunError> {
        self.events.clear();
        match self.sock.poll_events(&mut self.events) {
            Ok(_) => {
                let events = std::mem::take(&mut self.events);
                let r = events.iter().try_for_each(|e| self.apply(e));
                self.events = events;
                r
            }
            // Notifications were lost (ENOBUFS): read every interface again.
            Err(_) => self.resync(),
        }
    }

    /// The link socket, readable when [`poll`](LinkWatch::poll) has work.
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        self.sock.fd()
    }

    /// Checks every interface by name, as after lost notifications.
    pub(super) fn resync(&mut self) -> Result<(), RunError> {
        for i in 0..self.links.len() {
            let w = &self.links[i];
            match netlink::link_by_name(&w.at_start.name) {
                Ok(now) => self.apply(&LinkEvent::New(now))?,
                Err(e) if natgw_kernel::sys::errno(&e) == Some(natgw_kernel::sys::ENODEV) => {
                    return Err(RunError::LinkDeleted {
                        role: w.role,
                        name: w.at_start.name.clone(),
                    });
                }
                Err(err) => {
                    return Err(RunError::LinkQuery {
                        role: w.role,
                        name: w.at_start.name.clone(),
                        err,
                    });
                }
            }
        }
        Ok(())
    }

    fn apply(&self, e: &LinkEvent) -> Result<(), RunError> {
        match e {
            LinkEvent::Del(l) => {
                if let Some(w) = self.links.iter().find(|w| w.at_start.ifindex == l.ifindex) {
                    return Err(RunError::LinkDeleted {
                        role: w.role,
                        name: w.at_start.name.clone(),
                    });
                }
            }
            LinkEvent::New(l) => {
                if let Some(w) = self.links.iter().find(|w| w.at_start.ifindex == l.ifindex) {
                    let s = &w.at_start;
                    if l.name != s.name {
                        return Err(RunError::LinkRenamed {
                            role: w.role,
                            name: s.name.clone(),
                            now: l.name.clone(),
                        });
                    }
                    if l.mtu != s.mtu {
                        return Err(RunError::MtuChanged {
                            role: w.role,
                            name: s.name.clone(),
                            from: s.mtu,
                            to: l.mtu,
                        });
                    }
                    let now = running(l);
                    if w.up.swap(now, Ordering::Relaxed) != now {
                        if now {
                            tracing::info!(interface = %s.name, "{} interface {} is up again", w.role, s.name);
                        } else {
                            tracing::warn!(
                                interface = %s.name,
                                "{} interface {} is down ({}); natgw stays bound to it \
                                 and forwards again when it comes back",
                                w.role,
                                s.name,
                                if l.up { "no carrier" } else { "set down" }
                            );
                        }
                    }
                } else if let Some(w) = self.links.iter().find(|w| w.at_start.name == l.name) {
                    return Err(RunError::LinkReplaced {
                        role: w.role,
                        name: l.name.clone(),
                        ifindex: w.at_start.ifindex,
                        now: l.ifindex,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(ifindex: u32, name: &str, mtu: u32, up: bool) -> LinkInfo {
        LinkInfo {
            ifindex,
            name: name.into(),
            mac: [2, 0, 0, 0, 0, 1],
            mtu,
            up,
            carrier: up,
            num_rx_queues: 1,
            num_tx_queues: 1,
        }
    }

    fn watch() -> Option<LinkWatch> {
        let links = Links {
            outside: link(2, "eth1", 1500, true),
            inside: vec![link(3, "eth0", 1500, true)],
        };
        // Opening needs only a netlink socket; none means no rtnetlink here.
        LinkWatch::open(&links).ok().map(|(w, _)| w)
    }

    #[test]
    fn link_changes_are_followed_or_fatal() {
        let Some(w) = watch() else {
            eprintln!("skipping: no rtnetlink socket");
            return;
        };
        // Other interfaces do not matter.
        w.apply(&LinkEvent::Del(link(9, "eth9", 1500, true)))
            .unwrap();
        w.apply(&LinkEvent::New(link(9, "eth9", 9000, false)))
            .unwrap();
        // Down and up again: followed, the state is tracked.
        w.apply(&LinkEvent::New(link(3, "eth0", 1500, false)))
            .unwrap();
        assert!(!w.links[1].up.load(Ordering::Relaxed));
        w.apply(&LinkEvent::New(link(3, "eth0", 1500, true)))
            .unwrap();
        assert!(w.links[1].up.load(Ordering::Relaxed));
        let e = |ev| w.apply(&ev).unwrap_err().to_string();
        assert_eq!(
            e(LinkEvent::Del(link(3, "eth0", 1500, true))),
            "inside interface eth0 was deleted"
        );
        assert!(e(LinkEvent::New(link(3, "eth0", 9000, true))).contains("from 1500 to 9000"));
        assert!(e(LinkEvent::New(link(2, "wan", 1500, true))).contains("renamed to wan"));
        assert!(e(LinkEvent::New(link(7, "eth0", 1500, true))).contains("re-created"));
    }
}
