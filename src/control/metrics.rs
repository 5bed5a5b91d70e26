//! Prometheus exposition of the workers' counters. The counters live in the workers (single
//! writer, no locks on the hot path); each scrape reads them, sums them per worker label and
//! encodes them with the prometheus crate's text encoder.

use crate::dataplane::run::Handle;
use crate::nat::DropReason;
use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

pub struct Metrics;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics
    }

    pub fn render(&self, h: &Handle) -> String {
        let reg = Registry::new();
        let mut counters: Vec<(&'static str, IntCounterVec)> = Vec::new();
        let mut gauges: Vec<(&'static str, IntGaugeVec)> = Vec::new();
        // One metric family per name, created on first use and registered once. The
        // *_active counters are gauges; everything else only grows.
        let mut publish = |name: &'static str, help: &'static str, worker: &str, v: u64| {
            if name.ends_with("_active") {
                let g = match gauges.iter().find(|(n, _)| *n == name) {
                    Some((_, g)) => g.clone(),
                    None => {
                        let g =
                            IntGaugeVec::new(Opts::new(format!("natgw_{name}"), help), &["worker"])
                                .expect("static metric definition");
                        let _ = reg.register(Box::new(g.clone()));
                        gauges.push((name, g.clone()));
                        g
                    }
                };
                g.with_label_values(&[worker]).set(v as i64);
            } else {
                let c = match counters.iter().find(|(n, _)| *n == name) {
                    Some((_, c)) => c.clone(),
                    None => {
                        let opts = Opts::new(format!("natgw_{name}_total"), help);
                        let c = IntCounterVec::new(opts, &["worker"])
                            .expect("static metric definition");
                        let _ = reg.register(Box::new(c.clone()));
                        counters.push((name, c.clone()));
                        c
                    }
                };
                c.with_label_values(&[worker]).inc_by(v);
            }
        };
        let drops = IntCounterVec::new(
            Opts::new("natgw_drops_total", "frames dropped, by reason"),
            &["worker", "reason"],
        )
        .expect("static metric definition");
        let _ = reg.register(Box::new(drops.clone()));
        for (wi, c) in h.counters.iter().enumerate() {
            let w = wi.to_string();
            c.each(|name, help, v| publish(name, help, &w, v));
            for r in DropReason::ALL {
                drops
                    .with_label_values(&[w.as_str(), r.label()])
                    .inc_by(c.drops_of(*r));
            }
        }
        for (wi, d) in h.dp.iter().enumerate() {
            let w = wi.to_string();
            d.each(|name, help, v| publish(name, help, &w, v));
        }
        self.render_interfaces(&reg, h);
        let up = IntGaugeVec::new(
            Opts::new("natgw_uptime_seconds", "seconds since start"),
            &[],
        )
        .expect("static");
        let _ = reg.register(Box::new(up.clone()));
        up.with_label_values(&[] as &[&str])
            .set(h.started.elapsed().as_secs() as i64);
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&reg.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Metrics {
    /// Per interface: the XDP program's drops, whether the link is up, and whether the
    /// kernel would forward what reaches it.
    fn render_interfaces(&self, reg: &Registry, h: &Handle) {
        let xdp = IntCounterVec::new(
            Opts::new(
                "natgw_xdp_drops_total",
                "frames natgw's XDP program dropped, by interface and reason",
            ),
            &["interface", "reason"],
        )
        .expect("static metric definition");
        let _ = reg.register(Box::new(xdp.clone()));
        for (ifname, drops) in &h.health.xdp_drops {
            for (slot, label, _) in crate::dataplane::xdp::XDP_DROP_REASONS {
                xdp.with_label_values(&[ifname.as_str(), label])
                    .inc_by(drops.get(*slot).unwrap_or(0));
            }
        }
        let link_up = IntGaugeVec::new(
            Opts::new(
                "natgw_link_up",
                "1 while the interface is up with carrier, as natgw last saw it",
            ),
            &["interface"],
        )
        .expect("static metric definition");
        let _ = reg.register(Box::new(link_up.clone()));
        for (ifname, up) in &h.health.link_up {
            link_up
                .with_label_values(&[ifname.as_str()])
                .set(i64::from(up.load(std::sync::atomic::Ordering::Relaxed)));
        }
        let fwd = IntGaugeVec::new(
            Opts::new(
                "natgw_kernel_forwarding",
                "1 if the kernel forwards IPv4 arriving on the interface \
                 (net.ipv4.conf.<interface>.forwarding); natgw does not need it",
            ),
            &["interface"],
        )
        .expect("static metric definition");
        let _ = reg.register(Box::new(fwd.clone()));
        for ifname in &h.interfaces {
            if let Some(on) = crate::dataplane::run::kernel_forwarding(ifname) {
                fwd.with_label_values(&[ifname.as_str()]).set(i64::from(on));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Counters, Rules};
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
        c[0].sessions_active.set(3);
        let dp: Vec<Arc<crate::dataplane::worker::DpCounters>> =
            (0..2).map(|_| Arc::default()).collect();
        dp[1].neigh_held.add(4);
        dp[1].neigh_hold_active.set(2);
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

    #[test]
    fn exposition_has_per_worker_counters_and_drop_reasons() {
        let text = Metrics::new().render(&handle());
        assert!(
            text.contains("natgw_in2out_total{worker=\"0\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("natgw_in2out_total{worker=\"1\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("natgw_drops_total{reason=\"unsolicited\",worker=\"1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("natgw_sessions_active{worker=\"0\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE natgw_in2out_total counter"), "{text}");
        assert!(
            text.contains("natgw_link_up{interface=\"eth1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("natgw_neigh_held_total{worker=\"1\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("natgw_neigh_hold_active{worker=\"1\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE natgw_neigh_hold_active gauge"),
            "{text}"
        );
    }

    /// The exposition passes Prometheus' own linter (HELP on everything, counters end in
    /// _total). promtool comes with Debian's `prometheus` package; CI installs it.
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
            out.status.success(),
            "promtool check metrics failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
