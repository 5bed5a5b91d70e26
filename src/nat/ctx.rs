//! The state the translation paths work on, below them: the session store, the fragment
//! table, the counters and the engine's own small state (clock, ICMP rate limit, IP ids).
//! in2out, out2in, ICMP and fragments are functions over a `Ctx`; the engine owns one and
//! runs the pipeline over it.

use super::counters::Counters;
use super::frag::{FragAction, FragKey, FragTable};
use super::parse::{Frag, Meta};
use super::rules::Rules;
use super::store::Store;
use super::types::*;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// ICMP errors the engine itself may emit per second and core (RFC 1812 4.3.2.8 rate limit).
const ICMP_RATE: u32 = 1000;

pub(crate) struct Ctx {
    pub core: usize,
    pub counters: Arc<Counters>,
    pub store: Store,
    pub frags: FragTable,
    icmp_tokens: u32,
    icmp_second: u32,
    ip_ident: u16,
}

impl Ctx {
    pub fn new(core: usize, rules: &Rules, counters: Arc<Counters>) -> Ctx {
        Ctx {
            core,
            store: Store::new(core, rules, Arc::clone(&counters)),
            frags: FragTable::new(
                rules.frag_max_datagrams as usize,
                rules.frag_max_held as usize,
                rules.frag_timeout,
            ),
            counters,
            icmp_tokens: ICMP_RATE,
            icmp_second: 0,
            ip_ident: (core as u16).wrapping_mul(0x1000),
        }
    }

    /// The engine's clock, seconds.
    #[inline(always)]
    pub fn now(&self) -> u32 {
        self.store.now()
    }

    pub fn set_time(&mut self, now_ns: u64) {
        let now = (now_ns / 1_000_000_000) as u32;
        self.store.set_now(now);
        if now != self.icmp_second {
            self.icmp_second = now;
            self.icmp_tokens = ICMP_RATE;
        }
    }

    /// Bounded housekeeping: expiry, port holds, fragment timeouts.
    pub fn housekeeping(&mut self, budget: usize) {
        self.store.housekeeping(budget);
        self.frags.expire(self.store.now(), &self.counters);
    }

    #[inline]
    pub fn discard(&self, r: DropReason) -> Verdict {
        self.counters.dropped(r);
        Verdict::Drop(r)
    }

    /// Takes one ICMP-error token (rate limit for errors natgw originates).
    pub fn icmp_token(&mut self) -> bool {
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }

    pub fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }

    /// Remembers what a first fragment's translation was and releases the later fragments
    /// of its datagram that arrived before it.
    pub fn record_frag(&mut self, k: FragKey, action: FragAction) {
        self.frags
            .record(k, action, self.store.now(), &self.counters);
    }

    /// A frame handed to its owner; the first fragment leaves a note so later fragments follow.
    pub fn handoff(&mut self, core: usize, ingress: Ingress, m: &Meta, fkey: FragKey) -> Verdict {
        self.counters.handoffs.inc();
        let v = Verdict::Handoff {
            core: core as u16,
            ingress,
        };
        if m.frag == Frag::First {
            self.record_frag(
                fkey,
                FragAction::Handoff {
                    core: core as u16,
                    ingress,
                },
            );
        }
        v
    }
}

/// Untags the frame and sends it to the outside next hop.
pub(crate) fn send_outside(f: &mut Frame<'_>, nh: u32) -> Verdict {
    f.set_vlan(None);
    Verdict::Forward {
        egress: Egress::Outside,
        next_hop: Ipv4Addr::from(nh),
    }
}
