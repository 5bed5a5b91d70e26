//! The interface sections and the bounds of `[dataplane]`, `[sessions]` and `[fragments]`.

use super::util::*;

#[test]
fn interfaces() {
    rejects(
        &doc("", "").replace("interface = \"eth2\"", "interface = \"eth0\""),
        "inside[1].interface",
        "declared twice (also inside[0])",
    );
    rejects(
        &doc("", "").replace("interface = \"eth2\"", "interface = \"eth1\""),
        "inside[1].interface",
        "already the outside interface",
    );
}

#[test]
fn dataplane_bounds() {
    let dp = |s: &str| doc("", &format!("[dataplane]\n{s}"));
    rejects(
        &dp("workers = []"),
        "dataplane.workers",
        "at least one worker",
    );
    rejects(
        &dp("workers = [{ core = 1, queue = 0 }, { core = 1, queue = 1 }]"),
        "dataplane.workers[1].core",
        "core 1 is already used by workers[0]",
    );
    rejects(
        &dp("workers = [{ core = 1, queue = 0 }, { core = 2, queue = 0 }]"),
        "dataplane.workers[1].queue",
        "queue 0 is already used by workers[0]",
    );
    rejects(
        &dp("workers = [{ core = -1, queue = 0 }]"),
        "dataplane.workers[0].core",
        "out of range",
    );
    rejects(
        &dp("xdp_mode = \"fast\""),
        "dataplane.xdp_mode",
        "expected one of: auto, native, generic",
    );
    rejects(
        &dp("poll = \"spin\""),
        "dataplane.poll",
        "expected one of: adaptive, busy",
    );
    rejects(
        &dp("spin_max_us = 199"),
        "dataplane.spin_max_us",
        "out of range 200..=1000000",
    );
    rejects(
        &dp("spin_max_us = 1000001"),
        "dataplane.spin_max_us",
        "out of range",
    );
    rejects(
        &dp("batch_size = 0"),
        "dataplane.batch_size",
        "out of range 1..=1024",
    );
    rejects(
        &dp("batch_size = 1025"),
        "dataplane.batch_size",
        "out of range",
    );
    rejects(
        &dp("ring_size = 1000"),
        "dataplane.ring_size",
        "not a power of two",
    );
    rejects(
        &dp("ring_size = 32"),
        "dataplane.ring_size",
        "out of range 64..=16384",
    );
    rejects(
        &dp("ring_size = 32768"),
        "dataplane.ring_size",
        "out of range",
    );
    rejects(
        &dp("ring_size = 4096\numem_frames = 4096"),
        "dataplane.umem_frames",
        "less than 2 * ring_size (8192)",
    );
    rejects(
        &dp("umem_frames = 10000"),
        "dataplane.umem_frames",
        "not a power of two",
    );
    rejects(
        &dp("handoff_queue = 63"),
        "dataplane.handoff_queue",
        "out of range 64..=",
    );
    rejects(
        &doc("", "[sessions]\ncapacity_per_core = 1023"),
        "sessions.capacity_per_core",
        "out of range 1024..=67108864",
    );
    rejects(
        &doc("", "[sessions]\ncapacity_per_core = 67108865"),
        "sessions.capacity_per_core",
        "out of range",
    );
    rejects(
        &doc("", "[fragments]\ntimeout = 0"),
        "fragments.timeout",
        "out of range 1..=60",
    );
    rejects(
        &doc("", "[fragments]\ntimeout = 61"),
        "fragments.timeout",
        "out of range 1..=60",
    );
    rejects(
        &doc("", "[fragments]\nmax_datagrams = 0"),
        "fragments.max_datagrams",
        "out of range",
    );
    rejects(
        &doc("", "[fragments]\nmax_held = -1"),
        "fragments.max_held",
        "out of range",
    );
}
