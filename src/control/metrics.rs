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
        let drops = IntCounterVec::new(
            Opts::new("natgw_drops_total", "frames dropped, by reason"),
            &["worker", "reason"],
        )
        .expect("static metric definition");
        let _ = reg.register(Box::new(drops.clone()));
        for (wi, c) in h.counters.iter().enumerate() {
            let w = wi.to_string();
            c.each(|name, help, v| {
                // Gauges are the *_active counters; everything else only grows.
                if name.ends_with("_active") {
                    let g = match gauges.iter().find(|(n, _)| *n == name) {
                        Some((_, g)) => g.clone(),
                        None => {
                            let g = IntGaugeVec::new(
                                Opts::new(format!("natgw_{name}"), help),
                                &["worker"],
                            )
                            .expect("static metric definition");
                            let _ = reg.register(Box::new(g.clone()));
                            gauges.push((name, g.clone()));
                            g
                        }
                    };
                    g.with_label_values(&[w.as_str()]).set(v as i64);
                } else {
                    let cv = match counters.iter().find(|(n, _)| *n == name) {
                        Some((_, c)) => c.clone(),
                        None => {
                            let c = IntCounterVec::new(
                                Opts::new(format!("natgw_{name}_total"), help),
                                &["worker"],
                            )
                            .expect("static metric definition");
                            let _ = reg.register(Box::new(c.clone()));
                            counters.push((name, c.clone()));
                            c
                        }
                    };
                    cv.with_label_values(&[w.as_str()]).inc_by(v);
                }
            });
            for r in DropReason::ALL {
                drops
                    .with_label_values(&[w.as_str(), r.label()])
                    .inc_by(c.drops_of(*r));
            }
        }
        for (wi, d) in h.dp.iter().enumerate() {
            let w = wi.to_string();
            d.each(|name, help, v| {
                let cv = match counters.iter().find(|(n, _)| *n == name) {
                    Some((_, c)) => c.clone(),
                    None => {
                        let c = IntCounterVec::new(
                            Opts::new(format!("natgw_{name}_total"), help),
                            &["worker"],
                        )
                        .expect("static metric definition");
                        let _ = reg.register(Box::new(c.clone()));
                        counters.push((name, c.clone()));
                        c
                    }
                };
                cv.with_label_values(&[w.as_str()]).inc_by(v);
            });
        }
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
