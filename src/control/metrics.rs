//! Prometheus exposition. Everything a scrape shows is read at scrape time from what the
//! workers publish (single writer each, relaxed atomics, see `dataplane::worker::stats`)
//! and from the interfaces and sockets themselves; the families are built with the
//! prometheus crate's data model and encoded with its text encoder, so names, escaping and
//! histogram layout follow the format (`promtool check metrics` accepts the result, a unit
//! test and tests/prometheus.rs check that).
//!
//! Per-worker counters are `natgw_<counter>_total{worker}`, drops by reason
//! `natgw_drops_total{worker,reason}`; docs/metrics.md lists every metric.

use crate::dataplane::run::Handle;
use crate::dataplane::worker::stats::{PortStats, PublishedHistogram};
use crate::nat::DropReason;
use crate::nat::counters::SESSION_PROTOCOLS;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A worker whose housekeeping tick (every 50 ms while it runs) is older than this is
/// not up: stuck, or gone.
const HEARTBEAT_STALE: Duration = Duration::from_secs(2);

/// Why a session could not be created: the drop reasons that are limits, with their label
/// in `natgw_sessions_refused_total{reason}`.
const REFUSALS: &[DropReason] = &[
    DropReason::SessionTableFull,
    DropReason::PortsExhausted,
    DropReason::PerHostLimit,
    DropReason::PerHostSessions,
    DropReason::InboundLimit,
];

/// Reloads as the metrics show them. `control::reload` counts every attempt.
#[derive(Debug)]
pub struct ReloadStats {
    succeeded: AtomicU64,
    failed: AtomicU64,
    /// Unix time of the last successful load of the configuration (start or reload), s.
    last_success: AtomicU64,
    /// Whether the last reload (or the start) succeeded.
    last_ok: AtomicU64,
    /// The running configuration's generation: 1 at start, one more with each reload that
    /// applied (until the gateway numbers its generations itself, see `set_generation`).
    generation: AtomicU64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Default for ReloadStats {
    fn default() -> Self {
        ReloadStats {
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_success: AtomicU64::new(unix_now()),
            last_ok: AtomicU64::new(1),
            generation: AtomicU64::new(1),
        }
    }
}

impl ReloadStats {
    /// Counts one reload attempt.
    pub fn record(&self, ok: bool) {
        if ok {
            self.succeeded.fetch_add(1, Relaxed);
            self.last_success.store(unix_now(), Relaxed);
            self.generation.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
        self.last_ok.store(u64::from(ok), Relaxed);
    }

    /// The running configuration's generation as the gateway numbers it.
    pub fn set_generation(&self, g: u64) {
        self.generation.store(g, Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub reloads: ReloadStats,
}

/// The families of one scrape, in the order they were first used.
#[derive(Default)]
struct Families {
    fams: Vec<MetricFamily>,
    index: HashMap<String, usize>,
}

type Labels<'a> = &'a [(&'static str, &'a str)];

fn metric(labels: Labels<'_>) -> proto::Metric {
    let mut pairs: Vec<proto::LabelPair> = labels
        .iter()
        .map(|(k, v)| {
            let mut p = proto::LabelPair::default();
            p.set_name(k.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    proto::Metric::from_label(pairs)
}

impl Families {
    fn family(&mut self, name: &str, help: &str, t: MetricType) -> &mut MetricFamily {
        let i = *self.index.entry(name.to_string()).or_insert_with(|| {
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(t);
            self.fams.push(f);
            self.fams.len() - 1
        });
        &mut self.fams[i]
    }

    fn counter(&mut self, name: &str, help: &str, labels: Labels<'_>, v: u64) {
        self.counter_f(name, help, labels, v as f64)
    }

    fn counter_f(&mut self, name: &str, help: &str, labels: Labels<'_>, v: f64) {
        let mut m = metric(labels);
        let mut c = proto::Counter::default();
        c.set_value(v);
        m.set_counter(c);
        self.family(name, help, MetricType::COUNTER)
            .mut_metric()
            .push(m);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: Labels<'_>, v: f64) {
        let mut m = metric(labels);
        let mut g = proto::Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
        self.family(name, help, MetricType::GAUGE)
            .mut_metric()
            .push(m);
    }

    /// A histogram from cumulative bucket counts; `scale` turns the bounds and the sum
    /// into the metric's unit (1e-9 for ns to seconds).
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        h: &PublishedHistogram,
        scale: f64,
    ) {
        let (cumulative, count, sum) = h.read();
        let mut ph = proto::Histogram::default();
        ph.set_bucket(
            h.bounds
                .iter()
                .zip(cumulative)
                .map(|(&b, c)| {
                    let mut pb = proto::Bucket::default();
                    pb.set_upper_bound(b as f64 * scale);
                    pb.set_cumulative_count(c);
                    pb
                })
                .collect(),
        );
        ph.set_sample_count(count);
        ph.set_sample_sum(sum as f64 * scale);
        let mut m = metric(labels);
        m.set_histogram(ph);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }

    /// Sums of `v` per label set, emitted as counters or gauges in first-seen order.
    fn summed(&mut self, name: &str, help: &str, t: MetricType, rows: Summed) {
        for (labels, v) in rows.rows {
            let l: Vec<(&'static str, &str)> =
                labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match t {
                MetricType::GAUGE => self.gauge(name, help, &l, v as f64),
                _ => self.counter(name, help, &l, v),
            }
        }
    }

    fn encode(mut self) -> String {
        self.fams.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.fams, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Values summed over workers by label set, in first-seen order.
#[derive(Default)]
struct Summed {
    rows: Vec<(Vec<(&'static str, String)>, u64)>,
    index: HashMap<Vec<(&'static str, String)>, usize>,
}

impl Summed {
    fn add(&mut self, labels: Vec<(&'static str, String)>, v: u64) {
        match self.index.get(&labels) {
            Some(&i) => self.rows[i].1 += v,
            None => {
                self.index.insert(labels.clone(), self.rows.len());
                self.rows.push((labels, v));
            }
        }
    }
}

/// What each per-socket `XDP_STATISTICS` field is called and means.
const XSK_STATS: &[(&str, &str)] = &[
    (
        "natgw_xsk_rx_dropped_total",
        "frames the AF_XDP socket dropped on receive for reasons other than an invalid descriptor (e.g. no packet buffer)",
    ),
    (
        "natgw_xsk_rx_invalid_descs_total",
        "invalid descriptors on the AF_XDP socket's receive side",
    ),
    (
        "natgw_xsk_rx_ring_full_total",
        "frames dropped because the AF_XDP socket's receive ring was full",
    ),
    (
        "natgw_xsk_rx_fill_ring_empty_descs_total",
        "times the kernel found the AF_XDP socket's fill ring empty",
    ),
    (
        "natgw_xsk_tx_invalid_descs_total",
        "invalid descriptors on the AF_XDP socket's transmit ring",
    ),
    (
        "natgw_xsk_tx_ring_empty_descs_total",
        "times the kernel found the AF_XDP socket's transmit ring empty",
    ),
];

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    pub fn render(&self, h: &Handle) -> String {
        let mut f = Families::default();
        self.render_workers(&mut f, h);
        self.render_sessions(&mut f, h);
        self.render_traffic(&mut f, h);
        self.render_pool(&mut f, h);
        self.render_interfaces(&mut f, h);
        self.render_process(&mut f, h);
        render_eventlog(&mut f, h);
        f.encode()
    }

    /// Every worker's counters, drops, loop and batch figures, table use and liveness.
    fn render_workers(&self, f: &mut Families, h: &Handle) {
        for (wi, c) in h.counters.iter().enumerate() {
            let w = wi.to_string();
            let wl: Labels<'_> = &[("worker", &w)];
            c.each(|name, help, v| match name {
                // By realm and protocol below; the table's fill per worker is
                // natgw_session_table_used.
                "sessions_active" | "sessions_created" => {}
                n if n.ends_with("_active") => f.gauge(&gauge_name(n), help, wl, v as f64),
                n => f.counter(&counter_name(n), help, wl, v),
            });
            for r in DropReason::ALL {
                f.counter(
                    "natgw_drops_total",
                    "frames dropped, by reason",
                    &[("worker", &w), ("reason", r.label())],
                    c.drops_of(*r),
                );
            }
            f.gauge(
                "natgw_session_table_used",
                "sessions in the worker's table",
                wl,
                c.sessions_active.get() as f64,
            );
        }
        let now_ns = h.started.elapsed().as_nanos() as u64;
        for (wi, d) in h.dp.iter().enumerate() {
            let w = wi.to_string();
            let wl: Labels<'_> = &[("worker", &w)];
            d.each(|name, help, v| {
                if name.ends_with("_active") {
                    f.gauge(&gauge_name(name), help, wl, v as f64)
                } else {
                    f.counter(&counter_name(name), help, wl, v)
                }
            });
            let s = &d.stats;
            let t = &s.tables;
            let tables = [
                (
                    "natgw_session_table_capacity",
                    "session slots of the worker's table",
                    &t.sessions_capacity,
                ),
                (
                    "natgw_fragment_table_used",
                    "fragmented datagrams the worker's fragment table tracks now",
                    &t.frag_datagrams,
                ),
                (
                    "natgw_fragment_table_capacity",
                    "fragmented datagrams the worker's fragment table can track",
                    &t.frag_datagrams_capacity,
                ),
                (
                    "natgw_fragment_hold_used",
                    "out-of-order fragments held for their first fragment now",
                    &t.frag_held,
                ),
                (
                    "natgw_fragment_hold_capacity",
                    "out-of-order fragments the worker can hold",
                    &t.frag_held_capacity,
                ),
                (
                    "natgw_fragment_out_used",
                    "buffers for fragments natgw makes (egress MTU) in use now",
                    &t.frag_out,
                ),
                (
                    "natgw_fragment_out_capacity",
                    "buffers for fragments natgw makes",
                    &t.frag_out_capacity,
                ),
                (
                    "natgw_neighbour_hold_used",
                    "frames held for an unresolved next hop now",
                    &d.neigh_hold_active,
                ),
                (
                    "natgw_neighbour_hold_capacity",
                    "frames the worker holds for unresolved next hops at most",
                    &t.neigh_hold_capacity,
                ),
            ];
            for (name, help, v) in tables {
                f.gauge(name, help, wl, v.get() as f64);
            }
            f.gauge(
                "natgw_worker_busy_ratio",
                "share of the worker's poll loop time spent on work over its last second",
                wl,
                s.busy_ratio(),
            );
            f.counter_f(
                "natgw_worker_busy_seconds_total",
                "poll loop time spent on work (rate() over natgw_worker_poll_seconds_total's is the busy ratio)",
                wl,
                s.busy_ns.get() as f64 / 1e9,
            );
            f.counter_f(
                "natgw_worker_poll_seconds_total",
                "poll loop time, working, polling or asleep",
                wl,
                s.loop_ns.get() as f64 / 1e9,
            );
            f.histogram(
                "natgw_batch_size",
                "frames per engine batch (published once a second)",
                wl,
                &s.batch_size,
                1.0,
            );
            f.histogram(
                "natgw_batch_seconds",
                "time the engine and the frames' routing took per batch (published once a second)",
                wl,
                &s.batch_ns,
                1e-9,
            );
            let hb = s.heartbeat_ns.get();
            let up = s.running.load(Relaxed)
                && hb != 0
                && now_ns.saturating_sub(hb) < HEARTBEAT_STALE.as_nanos() as u64;
            f.gauge(
                "natgw_worker_up",
                "1 while the worker's poll loop runs and keeps its housekeeping tick",
                wl,
                f64::from(u8::from(up)),
            );
        }
    }
}
impl Metrics {
    /// Sessions by realm and protocol (summed over workers), how they ended and why
    /// others were not created.
    fn render_sessions(&self, f: &mut Families, h: &Handle) {
        for r in h.rules.realms.iter().filter(|r| !r.retired) {
            for (pi, p) in SESSION_PROTOCOLS.iter().enumerate() {
                let (mut created, mut active) = (0, 0);
                for c in &h.counters {
                    let (cr, ac) = c.realm_sessions_of(r.id, pi);
                    created += cr;
                    active += ac;
                }
                let l: Labels<'_> = &[("realm", &r.name), ("protocol", p.name())];
                f.gauge(
                    "natgw_sessions_active",
                    "sessions in the tables, by realm and protocol",
                    l,
                    active as f64,
                );
                f.counter(
                    "natgw_sessions_created_total",
                    "sessions created, by realm and protocol",
                    l,
                    created,
                );
            }
        }
        let sum = |g: &dyn Fn(&crate::nat::Counters) -> u64| h.counters.iter().map(|c| g(c)).sum();
        for (reason, v) in [
            ("transitory", sum(&|c| c.sessions_evicted_transitory.get())),
            ("idle", sum(&|c| c.sessions_evicted_idle.get())),
        ] {
            f.counter(
                "natgw_sessions_evicted_total",
                "sessions evicted to make room: unestablished or closing TCP (transitory), idle UDP/ICMP (idle)",
                &[("reason", reason)],
                v,
            );
        }
        for r in REFUSALS {
            f.counter(
                "natgw_sessions_refused_total",
                "sessions not created because a limit was reached, by reason (also in natgw_drops_total)",
                &[("reason", r.label())],
                sum(&|c| c.drops_of(*r)),
            );
        }
        for (limit, r) in [
            ("ports", DropReason::PerHostLimit),
            ("sessions", DropReason::PerHostSessions),
        ] {
            f.counter(
                "natgw_per_host_limit_hits_total",
                "new sessions refused because their inside host reached its port or session limit",
                &[("limit", limit)],
                sum(&|c| c.drops_of(r)),
            );
        }
        f.counter(
            "natgw_port_allocation_failures_total",
            "new mappings refused because no external port was free",
            &[],
            sum(&|c| c.drops_of(DropReason::PortsExhausted)),
        );
    }

    /// Frames and bytes per interface (summed over workers) and each socket's
    /// `XDP_STATISTICS`.
    fn render_traffic(&self, f: &mut Families, h: &Handle) {
        let mut rx = [Summed::default(), Summed::default()];
        let mut tx = [Summed::default(), Summed::default()];
        let mut xsk: Vec<Summed> = XSK_STATS.iter().map(|_| Summed::default()).collect();
        for d in &h.dp {
            for p in d.stats.ports.iter() {
                let p: &PortStats = p;
                let ifname = h.interfaces.get(p.interface).cloned().unwrap_or_default();
                // The interface's side: what arrives outside goes in, what leaves there
                // came out.
                let (rx_dir, tx_dir) = if p.interface == 0 {
                    ("out2in", "in2out")
                } else {
                    ("in2out", "out2in")
                };
                let rl = vec![
                    ("interface", ifname.clone()),
                    ("direction", rx_dir.to_string()),
                ];
                let tl = vec![
                    ("interface", ifname.clone()),
                    ("direction", tx_dir.to_string()),
                ];
                rx[0].add(rl.clone(), p.rx_packets.get());
                rx[1].add(rl, p.rx_bytes.get());
                tx[0].add(tl.clone(), p.tx_packets.get());
                tx[1].add(tl, p.tx_bytes.get());
                if let Some(st) = p.xsk.as_ref().and_then(|r| r.statistics().ok()) {
                    let l = vec![("interface", ifname), ("queue", p.queue.to_string())];
                    let vals = [
                        st.rx_dropped,
                        st.rx_invalid_descs,
                        st.rx_ring_full,
                        st.rx_fill_ring_empty_descs,
                        st.tx_invalid_descs,
                        st.tx_ring_empty_descs,
                    ];
                    for (s, v) in xsk.iter_mut().zip(vals) {
                        s.add(l.clone(), v);
                    }
                }
            }
        }
        let [rxp, rxb] = rx;
        let [txp, txb] = tx;
        let dir = "; direction is the interface's side (in2out: received on an inside interface, sent on the outside one)";
        f.summed(
            "natgw_rx_packets_total",
            &format!("frames received{dir}"),
            MetricType::COUNTER,
            rxp,
        );
        f.summed(
            "natgw_rx_bytes_total",
            &format!("bytes of the frames received (Ethernet headers included){dir}"),
            MetricType::COUNTER,
            rxb,
        );
        f.summed(
            "natgw_tx_packets_total",
            &format!("frames transmitted{dir}"),
            MetricType::COUNTER,
            txp,
        );
        f.summed(
            "natgw_tx_bytes_total",
            &format!("bytes of the frames transmitted (Ethernet headers included){dir}"),
            MetricType::COUNTER,
            txb,
        );
        for ((name, help), rows) in XSK_STATS.iter().zip(xsk) {
            f.summed(name, help, MetricType::COUNTER, rows);
        }
    }

    /// Ports in use per pool address and protocol, summed over the workers (each owns
    /// its share of every address's ports).
    fn render_pool(&self, f: &mut Families, h: &Handle) {
        let mut used = Summed::default();
        let mut usable = Summed::default();
        for d in &h.dp {
            let pool = d.stats.pool();
            for e in pool.entries.iter() {
                let realm = h
                    .rules
                    .realms
                    .get(usize::from(e.realm))
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                let l = vec![
                    ("realm", realm),
                    ("address", e.addr.to_string()),
                    ("protocol", e.proto.name().to_string()),
                ];
                used.add(l.clone(), e.used.get());
                usable.add(l, e.usable.get());
            }
        }
        for ((labels, u), (_, n)) in used.rows.iter().zip(&usable.rows) {
            let l: Vec<(&'static str, &str)> =
                labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            f.gauge(
                "natgw_pool_use_ratio",
                "share of the address's ports for the protocol in use, on hold or reserved",
                &l,
                if *n == 0 { 0.0 } else { *u as f64 / *n as f64 },
            );
        }
        f.summed(
            "natgw_pool_ports_used",
            "external ports of a pool address in use, on hold (after their mapping ended) or reserved (static mappings), by protocol (published once a second)",
            MetricType::GAUGE,
            used,
        );
        f.summed(
            "natgw_pool_ports_usable",
            "external ports of a pool address natgw may hand out, by protocol (the port range and, for TCP/UDP, 1-1023)",
            MetricType::GAUGE,
            usable,
        );
    }

    /// Per interface: the XDP program's drops, whether the link is up, and whether the
    /// kernel would forward what reaches it.
    fn render_interfaces(&self, f: &mut Families, h: &Handle) {
        for (ifname, drops) in &h.health.xdp_drops {
            for (slot, label, _) in crate::dataplane::xdp::XDP_DROP_REASONS {
                f.counter(
                    "natgw_xdp_drops_total",
                    "frames natgw's XDP program dropped, by interface and reason",
                    &[("interface", ifname), ("reason", label)],
                    drops.get(*slot).unwrap_or(0),
                );
            }
        }
        for (ifname, up) in &h.health.link_up {
            f.gauge(
                "natgw_link_up",
                "1 while the interface is up with carrier, as natgw last saw it",
                &[("interface", ifname)],
                f64::from(u8::from(up.load(Relaxed))),
            );
        }
        for ifname in &h.interfaces {
            if let Some(on) = crate::dataplane::run::kernel_forwarding(ifname) {
                f.gauge(
                    "natgw_kernel_forwarding",
                    "1 if the kernel forwards IPv4 arriving on the interface \
                     (net.ipv4.conf.<interface>.forwarding); natgw does not need it",
                    &[("interface", ifname)],
                    f64::from(u8::from(on)),
                );
            }
        }
    }

    /// The process: version, uptime, configuration and reloads, readiness.
    fn render_process(&self, f: &mut Families, h: &Handle) {
        f.gauge(
            "natgw_build_info",
            "1, with natgw's version as a label",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        f.gauge(
            "natgw_uptime_seconds",
            "seconds since start",
            &[],
            h.started.elapsed().as_secs() as f64,
        );
        let r = &self.reloads;
        f.gauge(
            "natgw_config_generation",
            "generation of the running configuration (1 at start, one more per applied reload)",
            &[],
            r.generation.load(Relaxed) as f64,
        );
        for (result, v) in [("success", &r.succeeded), ("failure", &r.failed)] {
            f.counter(
                "natgw_reloads_total",
                "configuration reloads (SIGHUP, POST /reload), by result",
                &[("result", result)],
                v.load(Relaxed),
            );
        }
        f.gauge(
            "natgw_last_reload_timestamp_seconds",
            "Unix time the running configuration was loaded (start or the last successful reload)",
            &[],
            r.last_success.load(Relaxed) as f64,
        );
        f.gauge(
            "natgw_last_reload_successful",
            "1 if the last reload (or the start) applied its configuration",
            &[],
            r.last_ok.load(Relaxed) as f64,
        );
        // Ready: every worker polls, and every link is up.
        let now_ns = h.started.elapsed().as_nanos() as u64;
        let workers_up = !h.dp.is_empty()
            && h.dp.iter().all(|d| {
                let hb = d.stats.heartbeat_ns.get();
                d.stats.running.load(Relaxed)
                    && hb != 0
                    && now_ns.saturating_sub(hb) < HEARTBEAT_STALE.as_nanos() as u64
            });
        let links_up = h.health.link_up.iter().all(|(_, u)| u.load(Relaxed));
        f.gauge(
            "natgw_ready",
            "1 while every worker is up and every interface has its link up",
            &[],
            f64::from(u8::from(workers_up && links_up)),
        );
    }
}
/// The NAT event log (docs/eventlog.md): records lost per worker ring, exhaustion records
/// left out by the rate limit, and what the logger wrote per output.
fn render_eventlog(f: &mut Families, h: &Handle) {
    for (wi, c) in h.counters.iter().enumerate() {
        let w = wi.to_string();
        f.counter(
            "natgw_eventlog_lost_total",
            "NAT event log records dropped because the worker's ring was full (logger slow or stalled)",
            &[("worker", &w)],
            c.eventlog.lost.get(),
        );
        f.counter(
            "natgw_eventlog_suppressed_total",
            "NAT event log exhaustion records left out by the rate limit (one per address and second)",
            &[("worker", &w)],
            c.eventlog.suppressed.get(),
        );
    }
    let st = &super::eventlog::STATS;
    for (i, out) in super::eventlog::OUTPUTS.iter().enumerate() {
        f.counter(
            "natgw_eventlog_records_total",
            "NAT event log records written, by output (file, syslog)",
            &[("output", out)],
            st.records[i].load(Relaxed),
        );
        f.counter(
            "natgw_eventlog_write_errors_total",
            "NAT event log records an output failed to write, by output (file, syslog)",
            &[("output", out)],
            st.errors[i].load(Relaxed),
        );
    }
}

/// `natgw_<name>_total` of a per-worker counter.
fn counter_name(n: &str) -> String {
    format!("natgw_{n}_total")
}

/// `natgw_<name>` of a per-worker gauge.
fn gauge_name(n: &str) -> String {
    format!("natgw_{n}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::worker::DpCounters;
    use crate::dataplane::worker::stats::{PoolEntry, PoolUse, PortStats, WorkerStats};
    use crate::nat::counters::Counter;
    use crate::nat::{Counters, Rules};
    use crate::packet::ipv4::Protocol;
    use std::sync::Arc;

    fn handle() -> Handle {
        let cfg = crate::config::parse(include_str!("../../deploy/examples/minimal.toml")).unwrap();
        let rules = Arc::new(Rules::new(
            &cfg,
            Arc::new(crate::nat::ports::BlockPartition::new(2)),
        ));
        let c: Vec<Arc<Counters>> = (0..2).map(|_| Arc::new(Counters::default())).collect();
        c[0].in2out.add(5);
        c[1].in2out.add(7);
        c[1].dropped(DropReason::Unsolicited);
        c[0].dropped(DropReason::PortsExhausted);
        c[1].dropped(DropReason::PerHostLimit);
        c[0].sessions_active.set(3);
        // Realm 0 ("default" in minimal.toml): 3 UDP sessions created on worker 0, one gone;
        // 2 TCP on worker 1.
        for _ in 0..3 {
            c[0].session_opened(0, Protocol::UDP);
        }
        c[0].session_closed(0, Protocol::UDP);
        c[1].session_opened(0, Protocol::TCP);
        c[1].session_opened(0, Protocol::TCP);
        let dp: Vec<Arc<DpCounters>> = (0..2)
            .map(|w| {
                let ports = vec![PortStats::new(0, w, None), PortStats::new(1, w, None)];
                Arc::new(DpCounters {
                    stats: WorkerStats::new(ports),
                    ..DpCounters::default()
                })
            })
            .collect();
        dp[1].neigh_held.add(4);
        dp[1].neigh_hold_active.set(2);
        for (w, d) in dp.iter().enumerate() {
            let p = &d.stats.ports;
            p[0].rx_packets.add(10 + w as u64);
            p[0].rx_bytes.add(1000);
            p[1].tx_packets.add(3);
            p[1].tx_bytes.add(300);
            let addr = std::net::Ipv4Addr::new(192, 168, 1, 10);
            let e = |proto, used: u64, usable: u64| {
                let (u, n) = (Counter::default(), Counter::default());
                u.set(used);
                n.set(usable);
                PoolEntry {
                    realm: 0,
                    addr,
                    proto,
                    used: u,
                    usable: n,
                }
            };
            *d.stats.pool.lock().unwrap() = Arc::new(PoolUse {
                entries: vec![
                    e(Protocol::TCP, 1 + w as u64, 1000),
                    e(Protocol::UDP, 0, 1000),
                ]
                .into_boxed_slice(),
            });
        }
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 16, 3).unwrap();
        for n in [1, 3, 64, 64, 2000] {
            h.record(n).unwrap();
        }
        dp[0].stats.batch_size.publish(&h, 2132);
        Handle {
            counters: c,
            dp,
            control: Vec::new(),
            rules,
            neigh: Arc::new(crate::dataplane::neigh::NeighTable::new(16)),
            started: std::time::Instant::now(),
            xdp_modes: Vec::new(),
            copy_fallbacks: 0,
            interfaces: vec!["eth1".into(), "eth0".into()],
            config: Arc::new(cfg.clone()),
            generation: 1,
            health: Arc::new(crate::dataplane::run::Health {
                xdp_drops: Vec::new(),
                link_up: vec![(
                    "eth1".into(),
                    Arc::new(std::sync::atomic::AtomicBool::new(true)),
                )],
            }),
            pass: Vec::new(),
        }
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn exposition_has_per_worker_counters_and_drop_reasons() {
        let text = Metrics::new().render(&handle());
        has(&text, "natgw_in2out_total{worker=\"0\"} 5");
        has(&text, "natgw_in2out_total{worker=\"1\"} 7");
        has(
            &text,
            "natgw_drops_total{reason=\"unsolicited\",worker=\"1\"} 1",
        );
        has(&text, "natgw_session_table_used{worker=\"0\"} 3");
        has(&text, "# TYPE natgw_in2out_total counter");
        has(&text, "natgw_link_up{interface=\"eth1\"} 1");
        has(&text, "natgw_neigh_held_total{worker=\"1\"} 4");
        has(&text, "natgw_neigh_hold_active{worker=\"1\"} 2");
        has(&text, "natgw_neighbour_hold_used{worker=\"1\"} 2");
        has(&text, "# TYPE natgw_neigh_hold_active gauge");
    }

    #[test]
    fn sessions_by_realm_and_protocol_sum_over_workers() {
        let text = Metrics::new().render(&handle());
        has(
            &text,
            "natgw_sessions_active{protocol=\"udp\",realm=\"default\"} 2",
        );
        has(
            &text,
            "natgw_sessions_created_total{protocol=\"udp\",realm=\"default\"} 3",
        );
        has(
            &text,
            "natgw_sessions_active{protocol=\"tcp\",realm=\"default\"} 2",
        );
        has(
            &text,
            "natgw_sessions_active{protocol=\"icmp\",realm=\"default\"} 0",
        );
        has(
            &text,
            "natgw_sessions_refused_total{reason=\"ports_exhausted\"} 1",
        );
        has(&text, "natgw_per_host_limit_hits_total{limit=\"ports\"} 1");
        has(&text, "natgw_port_allocation_failures_total 1");
        has(&text, "natgw_sessions_evicted_total{reason=\"idle\"} 0");
    }

    #[test]
    fn traffic_per_interface_and_pool_use_per_address() {
        let text = Metrics::new().render(&handle());
        has(
            &text,
            "natgw_rx_packets_total{direction=\"out2in\",interface=\"eth1\"} 21",
        );
        has(
            &text,
            "natgw_rx_bytes_total{direction=\"out2in\",interface=\"eth1\"} 2000",
        );
        has(
            &text,
            "natgw_tx_packets_total{direction=\"out2in\",interface=\"eth0\"} 6",
        );
        has(
            &text,
            "natgw_pool_ports_used{address=\"192.168.1.10\",protocol=\"tcp\",realm=\"default\"} 3",
        );
        has(
            &text,
            "natgw_pool_ports_usable{address=\"192.168.1.10\",protocol=\"tcp\",realm=\"default\"} 2000",
        );
        has(
            &text,
            "natgw_pool_use_ratio{address=\"192.168.1.10\",protocol=\"tcp\",realm=\"default\"} 0.0015",
        );
    }

    #[test]
    fn batch_histogram_is_cumulative_with_inf_and_count() {
        let text = Metrics::new().render(&handle());
        has(&text, "# TYPE natgw_batch_size histogram");
        has(&text, "natgw_batch_size_bucket{worker=\"0\",le=\"1\"} 1");
        has(&text, "natgw_batch_size_bucket{worker=\"0\",le=\"2\"} 1");
        has(&text, "natgw_batch_size_bucket{worker=\"0\",le=\"4\"} 2");
        has(&text, "natgw_batch_size_bucket{worker=\"0\",le=\"64\"} 4");
        has(&text, "natgw_batch_size_bucket{worker=\"0\",le=\"1024\"} 4");
        has(&text, "natgw_batch_size_bucket{worker=\"0\",le=\"+Inf\"} 5");
        has(&text, "natgw_batch_size_count{worker=\"0\"} 5");
        has(&text, "natgw_batch_size_sum{worker=\"0\"} 2132");
        has(&text, "natgw_batch_seconds_count{worker=\"1\"} 0");
    }

    #[test]
    fn reloads_build_info_and_readiness() {
        let m = Metrics::new();
        let h = handle();
        let text = m.render(&h);
        has(&text, "natgw_config_generation 1");
        has(&text, "natgw_reloads_total{result=\"success\"} 0");
        has(
            &text,
            &format!(
                "natgw_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        );
        // The test's workers never ran.
        has(&text, "natgw_worker_up{worker=\"0\"} 0");
        has(&text, "natgw_ready 0");
        m.reloads.record(true);
        m.reloads.record(false);
        let text = m.render(&h);
        has(&text, "natgw_config_generation 2");
        has(&text, "natgw_reloads_total{result=\"success\"} 1");
        has(&text, "natgw_reloads_total{result=\"failure\"} 1");
        has(&text, "natgw_last_reload_successful 0");
        for d in &h.dp {
            d.stats.running.store(true, Relaxed);
            d.stats
                .heartbeat_ns
                .set(h.started.elapsed().as_nanos() as u64 + 1);
        }
        let text = m.render(&h);
        has(&text, "natgw_worker_up{worker=\"1\"} 1");
        has(&text, "natgw_ready 1");
    }

    /// The exposition passes Prometheus' own linter (HELP on everything, counters end in
    /// _total, histograms well formed). promtool comes with Debian's `prometheus` package;
    /// CI installs it.
    #[test]
    fn promtool_accepts_the_exposition() {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let text = Metrics::new().render(&handle());
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "promtool is required under CI: {e}"
                );
                eprintln!("skipping: promtool not installed ({e})");
                return;
            }
        };
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
