//! Blocking `acquire`: the handshake between a thread waiting for a permit
//! and one releasing a permit, on two 32-bit words of the policy's region
//! (`Cells`, `src/stats.rs`), possibly in two processes' mappings of one
//! shared file:
//!
//! - `released`, bumped by every release; waiters sleep on it (a futex,
//!   `src/os.rs`);
//! - `waiters`, the threads about to sleep or sleeping, so that a release
//!   makes a wake-up system call only when someone may be asleep.
//!
//! ```text
//! waiter   seen = released (Acquire); try to take a permit;
//!          on failure: waiters += 1; fence(SeqCst); sleep while released == seen
//! release  free the permit; released += 1 (Release); fence(SeqCst);
//!          if waiters > 0: wake every sleeper
//! ```
//!
//! No wake-up is lost. `seen` is read before the try: if the try found the
//! permit taken, the release that frees it bumps `released` past `seen`
//! (and if `seen` already counts that release, its Acquire read makes the
//! freed permit visible to the try). The two SeqCst fences are ordered one
//! way or the other: if the waiter's comes first, the releaser's load of
//! `waiters` sees the waiter and wakes it (the kernel compares the word and
//! sleeps in one step, so a wake-up after the bump is not missed); if the
//! releaser's comes first, the futex's read of `released`, after the
//! waiter's fence, sees the bump and does not sleep. Fences rather than
//! SeqCst accesses: the waiter's read of `released` is the kernel's plain
//! load inside `futex(2)`, not an atomic access of the Rust memory model,
//! and loom models `fence(SeqCst)` exactly but SeqCst accesses only as
//! AcqRel (loom's README), which would report this correct protocol as
//! losing wake-ups. `loom_tests` below models it with a futex of loom
//! primitives.

use std::sync::atomic::Ordering;

/// A 32-bit word the handshake uses: atomic operations, plus sleeping on
/// it and waking its sleepers (a futex). Implemented by std's `AtomicU32`
/// (the words of a policy's region) and, under loom, by a model.
pub(crate) trait Futex {
    fn load(&self, order: Ordering) -> u32;
    fn fetch_add(&self, v: u32, order: Ordering) -> u32;
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32;
    /// Sleeps while the word holds `expected` (compared and put to sleep
    /// in one step), for at most `timeout_ns`; may return early.
    fn wait(&self, expected: u32, timeout_ns: u64);
    /// Wakes every sleeper of [`Futex::wait`] on this word.
    fn wake_all(&self);
    /// A sequentially consistent fence.
    fn fence();
}

impl Futex for std::sync::atomic::AtomicU32 {
    #[inline]
    fn load(&self, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::load(self, order)
    }
    #[inline]
    fn fetch_add(&self, v: u32, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::fetch_add(self, v, order)
    }
    #[inline]
    fn fetch_sub(&self, v: u32, order: Ordering) -> u32 {
        std::sync::atomic::AtomicU32::fetch_sub(self, v, order)
    }
    fn wait(&self, expected: u32, timeout_ns: u64) {
        crate::os::futex_wait(self, expected, timeout_ns);
    }
    fn wake_all(&self) {
        crate::os::futex_wake_all(self);
    }
    #[inline]
    fn fence() {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// The two words of one policy, as the handshake uses them.
pub(crate) struct Handshake<'a, W: Futex> {
    pub released: &'a W,
    pub waiters: &'a W,
}

impl<W: Futex> Handshake<'_, W> {
    /// Waiter, before each try: the count to sleep on if the try fails.
    pub fn observe(&self) -> u32 {
        // Acquire: pairs with the Release bump in `notify`; if this count
        // includes a release, the try that follows sees its freed permit.
        self.released.load(Ordering::Acquire)
    }

    /// Waiter, after a failed try: sleeps until a release after `seen`, for
    /// at most `timeout_ns` (or less: a signal, a spurious wake-up).
    pub fn sleep(&self, seen: u32, timeout_ns: u64) {
        // Relaxed: the fence below orders the registration before the
        // futex's read of `released` (see the module doc).
        self.waiters.fetch_add(1, Ordering::Relaxed);
        W::fence();
        self.released.wait(seen, timeout_ns);
        // Relaxed: the count only decides whether releases make a wake-up
        // call; a late decrement costs one needless call.
        self.waiters.fetch_sub(1, Ordering::Relaxed);
    }

    /// Releaser, after freeing one or more permits: wakes the sleepers
    /// (only if `waiters` shows one, unless `always_wake`).
    pub fn notify(&self, always_wake: bool) {
        // Release: pairs with the Acquire of `observe` (the freed permit is
        // visible to a waiter that reads this count).
        self.released.fetch_add(1, Ordering::Release);
        W::fence();
        // Relaxed: the fence above orders this read after the bump (see the
        // module doc).
        if always_wake || self.waiters.load(Ordering::Relaxed) > 0 {
            self.released.wake_all();
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    //! The handshake with a futex of loom primitives: the kernel's
    //! compare-and-sleep is a check of the word under the futex's lock
    //! followed by a condition-variable wait, and a wake-up takes the lock.
    //! Sleeps have no timeout, so a lost wake-up leaves a thread asleep
    //! forever, which loom reports as a deadlock. The permit is a word the
    //! try reads (Acquire, like the table's loads) before it takes it by
    //! CAS, as `Table::acquire` does.
    use super::*;
    use loom::sync::atomic::{AtomicU32, Ordering::*};
    use loom::sync::{Arc, Condvar, Mutex};

    struct ModelFutex {
        v: AtomicU32,
        queue: Mutex<()>,
        sleepers: Condvar,
    }

    impl ModelFutex {
        fn new() -> Self {
            ModelFutex {
                v: AtomicU32::new(0),
                queue: Mutex::new(()),
                sleepers: Condvar::new(),
            }
        }
    }

    impl Futex for ModelFutex {
        fn load(&self, order: Ordering) -> u32 {
            self.v.load(order)
        }
        fn fetch_add(&self, v: u32, order: Ordering) -> u32 {
            self.v.fetch_add(v, order)
        }
        fn fetch_sub(&self, v: u32, order: Ordering) -> u32 {
            self.v.fetch_sub(v, order)
        }
        fn wait(&self, expected: u32, _timeout_ns: u64) {
            let queue = self.queue.lock().unwrap();
            // Relaxed: the kernel's plain read; the caller's fence orders it.
            if self.v.load(Relaxed) == expected {
                drop(self.sleepers.wait(queue).unwrap());
            }
        }
        fn wake_all(&self) {
            let _queue = self.queue.lock().unwrap();
            self.sleepers.notify_all();
        }
        fn fence() {
            loom::sync::atomic::fence(SeqCst);
        }
    }

    /// A policy with `permits` permits, all taken.
    struct Policy {
        released: ModelFutex,
        waiters: ModelFutex,
        taken: Vec<AtomicU32>,
    }

    impl Policy {
        fn new(permits: usize) -> Arc<Policy> {
            Arc::new(Policy {
                released: ModelFutex::new(),
                waiters: ModelFutex::new(),
                taken: (0..permits).map(|_| AtomicU32::new(1)).collect(),
            })
        }

        fn handshake(&self) -> Handshake<'_, ModelFutex> {
            Handshake {
                released: &self.released,
                waiters: &self.waiters,
            }
        }

        /// One try: read each permit word, take a free one by CAS (SeqCst,
        /// as the table's words; loom takes it as AcqRel).
        fn try_take(&self) -> bool {
            self.taken
                .iter()
                .any(|t| t.load(SeqCst) == 0 && t.compare_exchange(0, 1, SeqCst, SeqCst).is_ok())
        }

        /// `acquire_timeout` with no timeout: returns once it holds a permit.
        fn acquire_waiting(&self) {
            let h = self.handshake();
            loop {
                let seen = h.observe();
                if self.try_take() {
                    return;
                }
                h.sleep(seen, u64::MAX);
            }
        }

        /// `release` of permit `i`.
        fn release(&self, i: usize) {
            assert!(self.taken[i].compare_exchange(1, 0, SeqCst, SeqCst).is_ok());
            self.handshake().notify(false);
        }
    }

    #[test]
    fn loom_futex_a_release_wakes_a_waiter_that_found_the_permit_taken() {
        loom::model(|| {
            let p = Policy::new(1);
            let waiter = {
                let p = p.clone();
                loom::thread::spawn(move || p.acquire_waiting())
            };
            p.release(0);
            waiter.join().unwrap();
            assert_eq!(p.taken[0].load(SeqCst), 1, "the waiter holds the permit");
            assert_eq!(p.waiters.load(SeqCst), 0);
        });
    }

    #[test]
    fn loom_futex_two_releases_wake_both_waiters() {
        loom::model(|| {
            let p = Policy::new(2);
            let waiters: Vec<_> = (0..2)
                .map(|_| {
                    let p = p.clone();
                    loom::thread::spawn(move || p.acquire_waiting())
                })
                .collect();
            p.release(0);
            p.release(1);
            for w in waiters {
                w.join().unwrap();
            }
            assert!(p.taken.iter().all(|t| t.load(SeqCst) == 1));
        });
    }
}
