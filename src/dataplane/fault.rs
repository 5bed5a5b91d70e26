//! Fault injection for the tests of worker supervision, compiled into debug builds only
//! (`cfg(debug_assertions)`): release builds, the ones deployed, contain none of it and
//! ignore the variable.
//!
//! With `NATGW_DEBUG_WORKER_PANIC=<worker>:<file>` in its environment, worker `<worker>`
//! panics in its poll loop (between two batches) once `<file>` exists. The tests start
//! natgw with it, forward traffic, create the file and watch natgw exit non-zero.

use std::cell::Cell;
use std::path::PathBuf;

thread_local! {
    static ARMED: Cell<Option<&'static PathBuf>> = const { Cell::new(None) };
}

/// Arms the calling (worker `wi`'s) thread if the variable names it.
pub(crate) fn arm(wi: usize) {
    let Ok(v) = std::env::var("NATGW_DEBUG_WORKER_PANIC") else {
        return;
    };
    let Some((w, file)) = v.split_once(':') else {
        return;
    };
    if w.parse::<usize>() == Ok(wi) {
        let path: &'static PathBuf = Box::leak(Box::new(PathBuf::from(file)));
        ARMED.with(|a| a.set(Some(path)));
    }
}

/// Panics if this thread is armed and its file exists (one stat(2) per call; the worker
/// calls it every 50 ms).
pub(crate) fn check() {
    if let Some(p) = ARMED.with(|a| a.get())
        && p.exists()
    {
        panic!(
            "NATGW_DEBUG_WORKER_PANIC: injected worker fault ({} exists)",
            p.display()
        );
    }
}
