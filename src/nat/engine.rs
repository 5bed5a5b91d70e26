//! The per-core NAT engine: no I/O of its own. The dataplane hands it batches of frames and a
//! timestamp; it rewrites them in place and returns a verdict per frame.
//!
//! This file is the pipeline and the public API. The state lies below, in a [`Ctx`] (the
//! session store, fragments, counters); the paths are functions over it: in2out
//! (`in2out.rs`) and out2in (`out2in.rs`) as in VPP's NAT44-ED, ICMP errors and the engine's
//! own replies (`icmp.rs`), fragments (`frag.rs`), the fast path (`fast.rs`); frames are
//! read through `parse.rs` and patched through `rewrite.rs`.

use super::counters::Counters;
use super::ctx::Ctx;
use super::fast::{self, Lane, Prep};
use super::parse::{self, Meta};
use super::rules::Rules;
use super::session::Session;
use super::types::*;
use super::{in2out, mtu, out2in, rewrite};
use std::net::Ipv4Addr;
use std::sync::Arc;

pub use super::store::PORT_HOLD_SECS;

/// Sessions examined for expiry per batch: bounded work, no pauses; with 64-frame batches at
/// 1 Mpps a 1M-session table is swept about every 4 s (idle ticks sweep more). Lookups check
/// deadlines themselves and a full table reclaims on demand, so the sweep only keeps the
/// table and its gauge tidy; more per batch would cost the established path memory bandwidth.
const SWEEP_PER_BATCH: usize = 16;
/// Sessions examined per idle tick.
const SWEEP_PER_TICK: usize = 4096;
/// Frames per pipeline round (see `process`).
const ROUND: usize = 32;

/// How full an engine's bounded tables are (`Engine::table_use`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TableUse {
    pub sessions_capacity: usize,
    pub frag_datagrams: usize,
    pub frag_datagrams_capacity: usize,
    pub frag_held: usize,
    pub frag_held_capacity: usize,
    pub frag_out: usize,
    pub frag_out_capacity: usize,
}

pub struct Engine {
    rules: Arc<Rules>,
    cx: Ctx,
    /// Per-batch scratch of the pipeline; grows to the largest batch once, then is reused.
    prep: Vec<Prep>,
}

impl Engine {
    /// An engine for worker `core`; allocates every table up front.
    pub fn new(core: usize, rules: Arc<Rules>, counters: Arc<Counters>) -> Engine {
        Engine {
            cx: Ctx::new(core, &rules, counters),
            prep: Vec::with_capacity(256),
            rules,
        }
    }

    pub fn core(&self) -> usize {
        self.cx.core
    }
    /// The engine's clock, seconds (as last given to `process` / `tick`).
    pub fn now_secs(&self) -> u32 {
        self.cx.now()
    }
    pub fn counters(&self) -> &Arc<Counters> {
        &self.cx.counters
    }
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }
    pub fn session_count(&self) -> usize {
        self.cx.store.session_count()
    }
    pub fn mapping_count(&self) -> usize {
        self.cx.store.mapping_count()
    }
    /// Bytes of memory held by the engine's tables (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        self.cx.store.memory_bytes() + self.cx.frags.memory_bytes()
    }

    /// How full the bounded tables are (metrics).
    pub fn table_use(&self) -> TableUse {
        let [d, h, o] = self.cx.frags.usage();
        TableUse {
            sessions_capacity: self.cx.store.session_capacity(),
            frag_datagrams: d.0,
            frag_datagrams_capacity: d.1,
            frag_held: h.0,
            frag_held_capacity: h.1,
            frag_out: o.0,
            frag_out_capacity: o.1,
        }
    }

    /// Port use of every pool address of every realm, for TCP, UDP and ICMP in turn:
    /// `f(realm id, address, protocol, in use (or on hold, or reserved), this core's share)`.
    /// Starts at the `from`-th entry of that order, skipping realms before it without work,
    /// and stops when `f` returns false.
    pub fn pool_port_use(
        &self,
        from: usize,
        mut f: impl FnMut(u16, std::net::Ipv4Addr, crate::packet::ipv4::Protocol, usize, usize) -> bool,
    ) {
        use crate::nat::counters::SESSION_PROTOCOLS;
        let mut at = 0;
        for r in &self.rules.realms {
            let n = r.pool.len() * SESSION_PROTOCOLS.len();
            if at + n <= from {
                at += n;
                continue;
            }
            let Some(pa) = self.cx.store.ports_of(usize::from(r.id)) else {
                at += n;
                continue;
            };
            for (ai, &addr) in r.pool.iter().enumerate() {
                for p in SESSION_PROTOCOLS {
                    if at >= from && !f(r.id, addr.into(), p, pa.in_use(ai, p), pa.usable(ai, p)) {
                        return;
                    }
                    at += 1;
                }
            }
        }
    }

    /// Translates a batch in place. `now_ns` is a monotonic clock in nanoseconds.
    pub fn process(&mut self, now_ns: u64, pkts: &mut [Pkt<'_>], verdicts: &mut [Verdict]) {
        self.cx.set_time(now_ns);
        let rules = Arc::clone(&self.rules);
        let n = pkts.len().min(verdicts.len());
        // A software pipeline of three stages over rounds of ROUND frames, so that each
        // round's cache misses are in flight while earlier rounds are worked on:
        // - classify round r+2: parse, hash, prefetch the session slot;
        // - look up round r+1 (slots arrived meanwhile); a miss prefetches what set-up needs;
        // - translate round r.
        // An established packet's whole state is in its slot, so it costs one cache miss.
        // Taken out of self for the batch, so the stages can hold it while they call &mut self.
        let mut prep = std::mem::take(&mut self.prep);
        if prep.len() < n {
            prep.resize(n, Prep::SLOW);
        }
        let rounds = n.div_ceil(ROUND);
        let range = |r: usize| r * ROUND..((r + 1) * ROUND).min(n);
        let (mut fast_in, mut fast_out) = (0u64, 0u64);
        for step in 0..rounds + 2 {
            if step < rounds {
                let r = range(step);
                if rules.forward_only {
                    prep[r].fill(Prep::SLOW);
                } else {
                    self.classify(&rules, &pkts[r.clone()], &mut prep[r]);
                }
            }
            if step >= 1 && step <= rounds {
                self.lookup(&rules, &mut prep[range(step - 1)]);
            }
            if step >= 2 {
                let r = range(step - 2);
                let (i, o) = self.translate(
                    &rules,
                    &mut pkts[r.clone()],
                    &mut verdicts[r.clone()],
                    &prep[r],
                );
                fast_in += i;
                fast_out += o;
            }
        }
        self.prep = prep;
        let c = &self.cx.counters;
        c.rx_frames.add(fast_in + fast_out);
        c.in2out.add(fast_in);
        c.out2in.add(fast_out);
        self.cx.housekeeping(SWEEP_PER_BATCH);
    }

    /// Pipeline stage one: classify frames and prefetch their session slots.
    #[inline(always)]
    fn classify(&self, r: &Rules, pkts: &[Pkt<'_>], prep: &mut [Prep]) {
        for (p, x) in pkts.iter().zip(prep.iter_mut()) {
            *x = fast::classify(r, p);
            match x.lane {
                Lane::In(_) => self.cx.store.prefetch_in(x.hash),
                Lane::Out(_) => self.cx.store.prefetch_out(x.hash),
                Lane::Slow => {}
            }
        }
    }

    /// Pipeline stage two: find each classified frame's session slot.
    #[inline(always)]
    fn lookup(&mut self, r: &Rules, prep: &mut [Prep]) {
        // Whether the slot lets the fast path take the packet is decided when it is
        // translated: an earlier frame of the batch may still change the slot.
        let store = &self.cx.store;
        for p in prep.iter_mut() {
            let found = match p.lane {
                Lane::In(k) => {
                    let found = store.position_in(&k, p.hash);
                    if found.is_none()
                        && let Some(realm) = r.realms.get(k.realm as usize)
                    {
                        // Probably a new flow: set-up will look up its mapping and host next.
                        store.prefetch_setup(realm, &k);
                    }
                    found
                }
                Lane::Out(k) => store.position_out(&k, p.hash),
                Lane::Slow => None,
            };
            match found {
                Some((pos, epoch)) => (p.pos, p.epoch) = (pos, epoch),
                None => p.fast = false,
            }
        }
    }

    /// Pipeline stage three: the fast path where the slot allows it, else the full path.
    /// Returns the frames the fast path took, inbound and outbound.
    #[inline(always)]
    fn translate(
        &mut self,
        rules: &Rules,
        pkts: &mut [Pkt<'_>],
        verdicts: &mut [Verdict],
        prep: &[Prep],
    ) -> (u64, u64) {
        let (mut fast_in, mut fast_out) = (0u64, 0u64);
        // While a reload's walk is under way a slot may belong to a session the reload
        // removed: the full path checks (store/reload.rs).
        let allow_fast = !self.cx.store.reconciling();
        for ((p, v), pr) in pkts.iter_mut().zip(verdicts.iter_mut()).zip(prep) {
            let fast = if pr.fast && allow_fast {
                match pr.lane {
                    Lane::In(k) => fast::in2out(&mut self.cx, rules, &mut p.frame, &k, pr),
                    Lane::Out(k) => fast::out2in(&mut self.cx, rules, &mut p.frame, &k, pr),
                    Lane::Slow => None,
                }
            } else {
                None
            };
            *v = match fast {
                Some(verdict) => {
                    if matches!(pr.lane, Lane::In(_)) {
                        fast_in += 1;
                    } else {
                        fast_out += 1;
                    }
                    verdict
                }
                None => {
                    let meta = parse::parse(p.frame.data());
                    self.process_one(rules, &mut p.frame, p.ingress, meta)
                }
            };
        }
        (fast_in, fast_out)
    }

    /// Bounded housekeeping when there is no traffic: expiry, port holds, fragment timeouts.
    pub fn tick(&mut self, now_ns: u64) {
        self.cx.set_time(now_ns);
        self.cx.housekeeping(SWEEP_PER_TICK);
    }

    /// Replaces the rules (configuration reload) and reconciles the sessions with them
    /// (store/reload.rs): a session whose realm, external address and mapping (pool
    /// address, port forward, 1:1 mapping) still exist stays as it is, with its ports,
    /// timers and TCP state; sessions of removed things are removed over the next batches
    /// and counted (`sessions_removed_by_reload`). Filtering, hairpinning and the like
    /// apply to existing sessions at once, new timeouts from each session's next refresh.
    /// Allocates (port allocators of changed pools); reloads are rare and not per packet.
    /// Rules compiled against the running ones (`Rules::reload`) carry what changed, so
    /// this costs O(changes), not O(mappings).
    /// The core partition must not change (the dataplane refuses another worker count).
    pub fn set_rules(&mut self, rules: Arc<Rules>) {
        self.cx.store.reload(&self.rules, &rules);
        self.rules = rules;
    }

    /// Entries the reloads so far looked at on this core, the walk aside: forwards
    /// compared or applied, inbound count slots copied (tests hold it to O(changes)).
    pub fn reload_steps(&self) -> u64 {
        self.cx.store.reload_steps()
    }

    /// Whether a reload's reconciliation walk is still under way (tests, benchmarks).
    pub fn reconciling(&self) -> bool {
        self.cx.store.reconciling()
    }

    /// Which core owns this frame's flow (None: any core may handle it, e.g. a ping to natgw).
    pub fn owner(&self, frame: &Frame<'_>, ingress: Ingress) -> Option<usize> {
        let r = &self.rules;
        let m = parse::parse(frame.data()).ok()?;
        match ingress {
            Ingress::Inside(i) => {
                let realm = r.realm_for(i, m.vlan)?;
                let inside = parse::inside_addr_of(frame.data(), &m)?;
                Some(r.inside_owner(realm.id, inside))
            }
            Ingress::Outside | Ingress::Hairpin => {
                let (proto, addr, port) = parse::outside_endpoint(frame.data(), &m)?;
                r.outside_owner(proto, addr, port)
            }
        }
    }

    /// The full path for one frame the fast path did not take.
    fn process_one(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        ingress: Ingress,
        parsed: Result<Meta, Option<DropReason>>,
    ) -> Verdict {
        let cx = &mut self.cx;
        cx.counters.rx_frames.inc();
        let m = match parsed {
            Ok(m) => m,
            Err(None) => {
                cx.counters.to_kernel.inc();
                return Verdict::ToKernel;
            }
            Err(Some(reason)) => return cx.discard(reason),
        };
        // Kept only for a frame larger than some egress link, with DF set: an ICMP error
        // about it quotes it as it arrived.
        let arrived = mtu::Arrived::save(r, f.data(), &m);
        let v = if r.forward_only {
            forward_only(cx, r, f, &m, ingress)
        } else {
            match ingress {
                Ingress::Inside(iface) => match r.realm_for(iface, m.vlan) {
                    Some(realm) => in2out::in2out(cx, r, realm, f, m, ingress),
                    None => cx.discard(DropReason::UnknownRealm),
                },
                Ingress::Outside => out2in::out2in(cx, r, f, m, false),
                Ingress::Hairpin => out2in::out2in(cx, r, f, m, true),
            }
        };
        mtu::egress(cx, r, f, &m, ingress, v, arrived.as_ref())
    }

    /// Iterates over live sessions (management plane listing; not for the hot path), each
    /// with its real deadline in `expires`.
    pub fn for_each_session(&self, f: impl FnMut(&Session)) {
        self.cx.store.for_each_session(f)
    }

    /// One bounded step of a session listing from slot `from` (see [`super::listing`]).
    pub fn list_sessions(
        &self,
        from: u32,
        filter: &super::listing::Filter,
        f: impl FnMut(u32, &Session),
    ) -> super::listing::Cursor {
        self.cx.store.list_step(from, filter, f)
    }

    /// One bounded step of a session deletion from slot `from`: how many were removed and
    /// where the next step resumes.
    pub fn delete_sessions(
        &mut self,
        from: u32,
        filter: &super::listing::Filter,
    ) -> (u32, super::listing::Cursor) {
        let (n, next) = self.cx.store.delete_step(from, filter);
        self.cx.counters.sessions_deleted.add(n as u64);
        (n, next)
    }

    /// Removes every session (management command).
    pub fn clear_sessions(&mut self) {
        let n = self.cx.store.session_count();
        self.cx.store.clear();
        self.cx.counters.sessions_deleted.add(n as u64);
    }

    /// Frames released from the fragment hold buffer, ready to send: `f(bytes, verdict)`.
    pub fn drain_ready(&mut self, f: impl FnMut(&[u8], Verdict)) {
        self.cx.frags.drain_ready(f)
    }

    /// Makes the port choice repeatable (tests that compare two engines).
    #[cfg(test)]
    pub(crate) fn seed_rng(&mut self, seed: u64) {
        self.cx.store.seed_rng(seed)
    }

    /// A session's `in_tab` slot value (tests).
    #[cfg(test)]
    pub(crate) fn in_val(&self, k: &super::session::InKey) -> Option<super::session::InVal> {
        self.cx.store.in_val(k)
    }

    /// Cross-checks every table against the slots (tests only; O(capacity)).
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        self.cx.store.check_invariants()
    }
}

/// Benchmark baseline: routes without translation (TTL decrement only).
fn forward_only(cx: &mut Ctx, r: &Rules, f: &mut Frame<'_>, m: &Meta, ingress: Ingress) -> Verdict {
    if m.ttl <= 1 {
        return cx.discard(DropReason::TtlExceeded);
    }
    rewrite::dec_ttl(f.data_mut(), m);
    cx.counters.forwarded_untranslated.inc();
    match ingress {
        Ingress::Outside | Ingress::Hairpin => {
            let realm = &r.realms[0];
            Verdict::Forward {
                egress: Egress::Inside(realm.iface),
                next_hop: Ipv4Addr::from(realm.next_hop(m.dst)),
            }
        }
        Ingress::Inside(_) => Verdict::Forward {
            egress: Egress::Outside,
            next_hop: Ipv4Addr::from(r.outside_next_hop(m.dst)),
        },
    }
}
