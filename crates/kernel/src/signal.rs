//! Signals as requests that any thread can poll: SIGTERM and SIGINT ask for a clean
//! shutdown, SIGHUP (when [`install_reload_handler`] was called) for a configuration reload.

use std::sync::atomic::{AtomicBool, Ordering};

static SIGNALLED: AtomicBool = AtomicBool::new(false);
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

extern "C" fn on_hup(_: libc::c_int) {
    RELOAD.store(true, Ordering::SeqCst);
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: installing an async-signal-safe handler (a single atomic store) with a
    // zero-initialised sigaction (plain data). SA_RESTART: system calls the signal
    // interrupts in other threads (accept, read) are restarted rather than failing with
    // EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = handler as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Makes SIGTERM and SIGINT request a clean shutdown.
pub fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        install(sig, on_signal);
    }
}

/// Makes SIGHUP request a reload ([`take_reload_request`]) instead of ending the process
/// (its default action).
pub fn install_reload_handler() {
    install(libc::SIGHUP, on_hup);
}

/// Whether SIGTERM or SIGINT arrived since [`install_signal_handlers`].
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Whether SIGHUP arrived since the last call; clears the request. Several SIGHUPs
/// between two calls are one request.
pub fn take_reload_request() -> bool {
    RELOAD.swap(false, Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sighup_becomes_a_reload_request() {
        install_reload_handler();
        assert!(!take_reload_request());
        // SAFETY: raise(3) sends the signal to this thread; the handler only stores.
        assert_eq!(unsafe { libc::raise(libc::SIGHUP) }, 0);
        assert!(take_reload_request(), "SIGHUP did not set the request");
        assert!(!take_reload_request(), "the request is taken once");
    }
}
