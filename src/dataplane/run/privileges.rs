//! Least privilege once set-up is done: memory locked, capabilities reduced to what the
//! running gateway still uses. Capabilities are per thread (see `natgw_kernel::caps`): the
//! workers drop all of theirs when they start, and the main thread, whose later threads
//! (management, API) inherit its set, keeps only `RUNTIME_CAPS`.

use super::StartError;
use natgw_kernel::caps::{self, Cap};

/// What the running gateway still does with privileges: ask rtnetlink to resolve
/// neighbours (RTM_NEWNEIGH with NTF_USE needs CAP_NET_ADMIN), read the XDP program's drop
/// counters for /metrics (bpf(2) map lookups need CAP_BPF while
/// kernel.unprivileged_bpf_disabled is set, the default), and allocate locked memory
/// (`WORKER_CAPS`). Everything else it opened during set-up (XDP links, AF_XDP sockets, the
/// maps) it keeps as file descriptors.
pub(super) const RUNTIME_CAPS: [Cap; 3] = [Cap::NET_ADMIN, Cap::BPF, Cap::IPC_LOCK];

/// A worker keeps only CAP_IPC_LOCK, if natgw has it: memory is locked for the future too
/// (MCL_FUTURE), so every later allocation (a thread's stack, the port allocators a reload
/// rebuilds) must fit RLIMIT_MEMLOCK unless the allocating thread holds CAP_IPC_LOCK. With
/// LimitMEMLOCK=infinity (deploy/natgw.service) it is not needed at all.
const WORKER_CAPS: [Cap; 1] = [Cap::IPC_LOCK];

/// Before anything is set up: the UMEM registration and mlockall(MCL_FUTURE) need locked
/// memory without a bound (CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK). With a finite
/// limit the UMEM fails with an obscure ENOBUFS, or a later allocation (a reload, a
/// listing) fails and aborts natgw: refuse at once, saying why.
pub(super) fn check_locked_memory() -> Result<(), StartError> {
    if caps::has(Cap::IPC_LOCK) || caps::memlock_unlimited() {
        return Ok(());
    }
    Err(StartError::LockMemory(std::io::Error::other(
        "the locked-memory limit is finite and natgw lacks CAP_IPC_LOCK",
    )))
}

/// Locks memory, then drops every capability but `RUNTIME_CAPS` in the calling (main)
/// thread. Called last in `Gateway::start`, after the workers were started.
pub(super) fn after_setup() -> Result<(), StartError> {
    caps::lock_memory().map_err(StartError::LockMemory)?;
    caps::limit_thread(&RUNTIME_CAPS).map_err(StartError::DropCapabilities)
}

/// A worker's first act: it needs no other capability (its sockets are bound, its neighbour
/// requests go through the management thread).
pub(super) fn worker_drops_all() {
    if let Err(e) = caps::limit_thread(&WORKER_CAPS) {
        // Dropping never needs a privilege; if the kernel refuses anyway, say so.
        tracing::error!("a worker could not drop its capabilities: {e}");
    }
}
