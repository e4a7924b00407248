//! Blocking with a timeout on a 32-bit word: Linux futexes, shared (not
//! private) so that a waiter in one process is woken by a release in
//! another when the word lives in a shared mapping.
//!
//! The `atomic-wait` crate waits on private futexes without a timeout, so
//! it cannot serve `acquire(timeout)` nor waits across processes.

use std::sync::atomic::AtomicU32;

/// Sleeps while `*word == expected`, for at most `timeout_ns`; returns early
/// on a wake-up, a signal, or if the word already differs.
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY:
    // - `word` is a valid, aligned 32-bit atomic for the duration of the call;
    // - FUTEX_WAIT reads it atomically and never writes it; `ts` is a valid
    //   relative timeout that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every waiter on `word`.
pub(crate) fn wake_all(word: &AtomicU32) {
    // SAFETY:
    // - `word` is a valid, aligned 32-bit atomic; FUTEX_WAKE does not access
    //   its memory, it only uses the address as the wait-queue key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}
