//! `[dataplane]`: the workers (core and queue each) and the AF_XDP ring, UMEM and batch sizes.

use super::err;
use super::raw::{RawDataplane, RawWorker};
use super::values::{choice, int_in, pow2_in, required};
use crate::config::ConfigError;
use crate::config::display::{POLL_MODES, XDP_MODES};
use crate::config::model::{Dataplane, PollMode, SPIN_MAX_US_FLOOR, Worker, XdpMode};

const DEFAULT_BATCH_SIZE: i64 = 64;
const DEFAULT_RING_SIZE: i64 = 2048;
const DEFAULT_UMEM_FRAMES: i64 = 8192;
const DEFAULT_HANDOFF_QUEUE: i64 = 4096;
/// 16 ms: a flow of about 63 packets a second or more keeps the loop polling (tuning.md,
/// "Polling").
const DEFAULT_SPIN_MAX_US: i64 = 16_000;

fn default_core() -> usize {
    // Core 0 usually takes interrupts and housekeeping; keep the poll loop off it when possible.
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => 1,
        _ => 0,
    }
}

pub(super) fn build_dataplane(r: RawDataplane) -> Result<Dataplane, ConfigError> {
    let workers = match r.workers {
        None => vec![Worker {
            core: default_core(),
            queue: 0,
        }],
        Some(ws) => build_workers(&ws)?,
    };
    let xdp_mode = match r.xdp_mode.as_deref() {
        None => XdpMode::Auto,
        Some(s) => choice(s, "dataplane.xdp_mode", &XDP_MODES)?,
    };
    let poll = match r.poll.as_deref() {
        None => PollMode::Adaptive,
        Some(s) => choice(s, "dataplane.poll", &POLL_MODES)?,
    };
    let f = "dataplane.spin_max_us";
    let spin_max_us = int_in(
        r.spin_max_us.unwrap_or(DEFAULT_SPIN_MAX_US),
        f,
        i64::from(SPIN_MAX_US_FLOOR),
        1_000_000,
    )? as u32;
    let f = "dataplane.batch_size";
    let batch_size = int_in(r.batch_size.unwrap_or(DEFAULT_BATCH_SIZE), f, 1, 1024)? as usize;
    let f = "dataplane.ring_size";
    let ring_size = pow2_in(r.ring_size.unwrap_or(DEFAULT_RING_SIZE), f, 64, 16384)?;
    let f = "dataplane.umem_frames";
    // The default grows with a large ring so that raising ring_size alone stays valid.
    let umem_default = DEFAULT_UMEM_FRAMES.max(2 * ring_size);
    let umem_frames = pow2_in(r.umem_frames.unwrap_or(umem_default), f, 128, 1 << 20)?;
    if umem_frames < 2 * ring_size {
        return Err(err(
            f,
            format!(
                "{umem_frames} is less than 2 * ring_size ({}): the fill and tx rings could not both be full",
                2 * ring_size
            ),
        ));
    }
    let f = "dataplane.handoff_queue";
    let handoff_queue = int_in(
        r.handoff_queue.unwrap_or(DEFAULT_HANDOFF_QUEUE),
        f,
        64,
        1 << 20,
    )? as usize;
    Ok(Dataplane {
        workers,
        xdp_mode,
        poll,
        spin_max_us,
        batch_size,
        ring_size: ring_size as u32,
        umem_frames: umem_frames as u32,
        handoff_queue,
        forward_only: r.forward_only.unwrap_or(false),
    })
}

fn build_workers(ws: &[RawWorker]) -> Result<Vec<Worker>, ConfigError> {
    if ws.is_empty() {
        return Err(err("dataplane.workers", "at least one worker is required"));
    }
    let mut out: Vec<Worker> = Vec::with_capacity(ws.len());
    for (i, w) in ws.iter().enumerate() {
        let p = format!("dataplane.workers[{i}]");
        let fc = format!("{p}.core");
        let fq = format!("{p}.queue");
        let core = int_in(required(w.core, &fc)?, &fc, 0, 4095)? as usize;
        let queue = int_in(required(w.queue, &fq)?, &fq, 0, 4095)? as u32;
        if let Some(k) = out.iter().position(|o| o.core == core) {
            return Err(err(
                fc,
                format!("core {core} is already used by workers[{k}]"),
            ));
        }
        if let Some(k) = out.iter().position(|o| o.queue == queue) {
            return Err(err(
                fq,
                format!("queue {queue} is already used by workers[{k}]"),
            ));
        }
        out.push(Worker { core, queue });
    }
    Ok(out)
}
