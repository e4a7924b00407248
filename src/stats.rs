//! Per-policy counters, summed on read: a line per CPU, added to without a
//! locked instruction (`src/rseq.rs`), and cache-line-padded atomic shards
//! for what cannot take that path, so that no single word is written by
//! every thread on the hot path.
//!
//! The counters sit at the start of the policy's memory region (see
//! [`RegionHead`]), so for a shared engine they live in the mapping and any
//! process — or the CLI — reads the totals of all workers.

use crate::rseq::{self, CPUS, LINE};
use crate::sync::{FutexWord, SharedOrdering as Ordering, SharedU64 as AtomicU64};

/// Number of atomic shards (see [`pick_shard`] for how threads map onto
/// them): for adds that cannot go to a CPU's line.
pub(crate) const SHARDS: usize = 16;

/// Counter indices (room for 16 per shard; the layout reserves them).
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Counter {
    Allowed = 0,
    Denied = 1,
    Evictions = 2,
    TableFull = 3,
    ShadowDenied = 4,
    Banned = 5,
    Bans = 6,
}

/// One shard: a 128-byte line of counters (the size and alignment of
/// `crossbeam_utils::CachePadded` on x86_64 and aarch64, as a `repr(C)` type
/// so that the shared-memory layout is fixed and the same on both).
#[repr(C, align(128))]
pub(crate) struct Shard {
    counts: [AtomicU64; 16],
}

/// Wait/wake words of a policy (for blocking `acquire`).
#[repr(C, align(128))]
pub(crate) struct Cells {
    /// Bumped on every release; waiters sleep on it.
    pub released: FutexWord,
    /// Threads (of any process) sleeping in `acquire_timeout`.
    pub waiters: FutexWord,
}

/// The start of every policy's memory region, before its table.
#[repr(C)]
pub(crate) struct RegionHead {
    pub cells: Cells,
    pub shards: [Shard; SHARDS],
    /// One [`Shard`] per CPU, written only by [`rseq::add`] running on
    /// that CPU, read by atomic loads.
    pub cpus: [Shard; CPUS],
}

const _: () = {
    assert!(std::mem::size_of::<Shard>() == 128);
    assert!(
        std::mem::size_of::<Shard>()
            == std::mem::size_of::<crossbeam_utils::CachePadded<[u64; 16]>>()
    );
    assert!(std::mem::size_of::<Shard>() == LINE);
    assert!(LINE.is_power_of_two());
    assert!(Counter::Bans as usize * 8 + 8 <= LINE);
    assert!(std::mem::size_of::<RegionHead>() == 128 * (1 + SHARDS) + LINE * CPUS);
    assert!(std::mem::size_of::<RegionHead>() % 16 == 0);
};

/// Units (16-byte words) the head takes.
pub(crate) const HEAD_UNITS: usize = std::mem::size_of::<RegionHead>() / 16;

impl RegionHead {
    /// Adds `n` to counter `c`: in the line of the CPU the thread runs on,
    /// or, where that cannot be done (`src/rseq.rs`), atomically in shard
    /// `shard`, the calling thread's (see [`pick_shard`]), so that threads
    /// write different lines either way.
    #[inline(always)]
    pub fn add_in(&self, shard: usize, c: Counter, n: u64) {
        // SAFETY: `cpus` is `CPUS` lines of `LINE` bytes, 128-byte aligned
        // (`Shard`), each counter word of which is written only by
        // `rseq::add` and read only by atomic loads (`sum`); `c as usize * 8
        // + 8 <= LINE` (asserted above); the `AtomicU64`s are `UnsafeCell`s,
        // so writing them through a pointer from `&self` is allowed.
        if unsafe { rseq::add(self.cpus.as_ptr() as *mut u8, c as usize * 8, n) } {
            return;
        }
        // Relaxed: counters are statistics; no other memory is published through them.
        self.shards[shard % SHARDS].counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// What the CPU lines hold of counter `c` (tests: the rest is in the
    /// atomic shards).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn in_cpu_lines(&self, c: Counter) -> u64 {
        self.cpus
            .iter()
            .map(|l| l.counts[c as usize].load(Ordering::Relaxed))
            .sum()
    }

    pub fn sum(&self, c: Counter) -> u64 {
        let atomic = self.shards.iter().map(|s| &s.counts[c as usize]);
        let cpus = self.cpus.iter().map(|l| &l.counts[c as usize]);
        atomic
            .chain(cpus)
            // Relaxed: statistics; a sum may miss increments in flight. A
            // CPU line's word is written by one aligned `add`, whose store
            // an atomic load sees whole or not at all.
            .map(|w| w.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// A shard for a thread that has none yet (the engine keeps each thread's
/// in its thread-local state, `engine/local.rs`): the process id plus a
/// per-process round-robin number, so that the single-threaded workers of
/// a pre-fork server (consecutive pids) write different lines of a shared
/// file instead of all starting at shard 0.
#[cold]
pub(crate) fn pick_shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Relaxed: only spreading matters, not ordering.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (std::process::id() as usize).wrapping_add(n) % SHARDS
}

/// A policy's statistics at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests allowed (and charged).
    pub allowed: u64,
    /// Requests denied.
    pub denied: u64,
    /// Live entries evicted to make room for new keys.
    pub evictions: u64,
    /// Requests that found no room and were failed open or closed.
    pub table_full: u64,
    /// Shadow mode: requests that passed but would have been denied.
    pub shadow_denied: u64,
    /// Requests denied because their key was in the penalty box.
    pub banned: u64,
    /// Bans imposed.
    pub bans: u64,
    /// Keys currently tracked.
    pub occupancy: u64,
    /// Keys the table can track.
    pub capacity: u64,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64 as Count};

    /// A zeroed head on the heap (all-zero is a valid `RegionHead`).
    fn zeroed() -> Box<RegionHead> {
        let layout = std::alloc::Layout::new::<RegionHead>();
        // SAFETY: the layout is non-zero-sized; the memory is checked for
        // null, zeroed, of `RegionHead`'s size and alignment, and allocated
        // by the global allocator as `Box` frees it; `RegionHead` is
        // repr(C) of atomics, valid for all-zero bytes.
        unsafe {
            let p = std::alloc::alloc_zeroed(layout) as *mut RegionHead;
            assert!(!p.is_null(), "out of memory");
            Box::from_raw(p)
        }
    }

    /// The head the signal handler adds to, and how often it did.
    static TARGET: AtomicPtr<RegionHead> = AtomicPtr::new(std::ptr::null_mut());
    static HANDLED: Count = Count::new(0);

    extern "C" fn on_signal(_: libc::c_int) {
        let h = TARGET.load(SeqCst);
        if !h.is_null() {
            // SAFETY: the test keeps the head alive until every worker has
            // been joined, and clears TARGET before it drops the head.
            unsafe { &*h }.add_in(5, Counter::Denied, 1);
            HANDLED.fetch_add(1, SeqCst);
        }
    }

    /// Six threads on two cores add to the same counter while another
    /// thread sends them signals whose handler adds to it too: the
    /// sequences are preempted, migrated and interrupted by a sequence of
    /// their own (the handler's) at every point, and the sum is exact.
    /// Where this thread takes the sequence (x86_64 glibc 2.35+, not under
    /// valgrind or qemu-user), the counts are in the CPU lines; elsewhere
    /// they are all in the atomic shards. Red (a dozen or more adds lost
    /// per run, checked three times) when the abort handler counts an
    /// interrupted sequence as done instead of starting it over.
    #[test]
    fn adds_sum_exactly_through_preemption_migration_and_signal_handlers_that_add_too() {
        const THREADS: usize = 6;
        const EACH: u64 = 400_000;
        const SIGNALS: u64 = 5_000;
        let head = zeroed();
        let active = rseq::active(); // also looks the offset up before any handler runs
        HANDLED.store(0, SeqCst);
        TARGET.store(&*head as *const RegionHead as *mut RegionHead, SeqCst);
        let signal = libc::SIGRTMIN() + 2;
        // SAFETY: a zeroed sigaction with a handler that only does atomic
        // adds (async-signal-safe) and SA_RESTART; the signal is one no
        // other test of this binary uses.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            assert_eq!(libc::sigaction(signal, &sa, std::ptr::null_mut()), 0);
        }
        let done = AtomicBool::new(false);
        let ids: [Count; THREADS] = std::array::from_fn(|_| Count::new(0));
        let ready = std::sync::Barrier::new(THREADS + 1);
        let (sent, added) = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (head, ids, ready) = (&*head, &ids, &ready);
                    s.spawn(move || {
                        // SAFETY: no precondition.
                        ids[t].store(unsafe { libc::pthread_self() } as u64, SeqCst);
                        ready.wait();
                        // At least EACH adds, and on until enough
                        // handlers have run (a count, not a time).
                        let mut added = 0u64;
                        while added < EACH || HANDLED.load(SeqCst) < SIGNALS {
                            for _ in 0..1000 {
                                head.add_in(t, Counter::Denied, 1);
                            }
                            added += 1000;
                            // Lets the signaller run on a busy machine.
                            std::thread::yield_now();
                        }
                        added
                    })
                })
                .collect();
            ready.wait();
            let threads: Vec<libc::pthread_t> = ids
                .iter()
                .map(|i| i.load(SeqCst) as libc::pthread_t)
                .collect();
            let done = &done;
            let signaller = s.spawn(move || {
                let mut sent = 0u64;
                let mut i = 0;
                while !done.load(SeqCst) {
                    // SAFETY: the workers are joined only after this
                    // thread has stopped sending (it is joined first), so
                    // every pthread_t names a thread not yet joined.
                    if unsafe { libc::pthread_kill(threads[i % THREADS], signal) } == 0 {
                        sent += 1;
                    }
                    i += 1;
                    std::thread::yield_now();
                }
                sent
            });
            // Every worker finished (exited, not yet joined, so its
            // pthread_t stays valid) before the signaller stops; only
            // then are the workers joined.
            while !workers.iter().all(|w| w.is_finished()) {
                std::thread::yield_now();
            }
            done.store(true, SeqCst);
            let sent = signaller.join().unwrap();
            let added: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
            (sent, added)
        });
        TARGET.store(std::ptr::null_mut(), SeqCst);
        let handled = HANDLED.load(SeqCst);
        assert!(handled >= SIGNALS, "{handled} of {sent} signals handled");
        assert_eq!(head.sum(Counter::Denied), added + handled);
        assert_eq!(
            head.sum(Counter::Allowed),
            0,
            "an add landed in another counter"
        );
        let lines = head.in_cpu_lines(Counter::Denied);
        assert_eq!(
            lines > 0,
            active,
            "CPU lines hold {lines}; sequence active: {active}"
        );
        eprintln!("sequence active: {active}; {added} adds, {handled} by signal handlers; {lines} in CPU lines");
    }

    /// Processes sharing the lines (a shared mapping, as workers share a
    /// policy file) add to one counter at once: the sum is exact.
    #[test]
    fn adds_from_forked_processes_sharing_the_lines_sum_exactly() {
        const KIDS: usize = 3;
        const EACH: u64 = 300_000;
        let size = std::mem::size_of::<RegionHead>();
        // SAFETY: a fresh anonymous shared mapping (zeroed by the kernel),
        // unmapped at the end; `RegionHead` is valid for all-zero bytes and
        // its alignment (128) divides the page size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: see above; the mapping outlives every use of `head`.
        let head = unsafe { &*(p as *const RegionHead) };
        rseq::active(); // the lookup (dlsym) happens before fork, not in a child
        let kids: Vec<libc::pid_t> = (0..KIDS)
            .map(|k| {
                // SAFETY: the child only adds (no allocation, no lock: the
                // offset was looked up above) and leaves with `_exit`.
                let pid = unsafe { libc::fork() };
                assert!(pid >= 0, "fork failed");
                if pid == 0 {
                    for _ in 0..EACH {
                        head.add_in(k, Counter::Allowed, 1);
                    }
                    // SAFETY: ends the child without the parent's destructors.
                    unsafe { libc::_exit(0) };
                }
                pid
            })
            .collect();
        for _ in 0..EACH {
            head.add_in(KIDS, Counter::Allowed, 1);
        }
        for pid in kids {
            let code = crate::os::wait_exit(pid, 60);
            assert_eq!(
                code,
                Some(0),
                "a child failed or stalled (None: killed after 60 s)"
            );
        }
        assert_eq!(head.sum(Counter::Allowed), (KIDS as u64 + 1) * EACH);
        // SAFETY: mapped above with this size; `head` is not used afterwards.
        unsafe { libc::munmap(p, size) };
    }
}
