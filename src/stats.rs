//! Per-policy counters: sharded over cache-line-padded atomics so that no
//! single word is written by every thread on the hot path; summed on read.
//!
//! The counters sit at the start of the policy's memory region (see
//! [`RegionHead`]), so for a shared engine they live in the mapping and any
//! process — or the CLI — reads the totals of all workers.

use crate::sync::{FutexWord, SharedOrdering as Ordering, SharedU64 as AtomicU64};

/// Number of shards (see [`shard_index`] for how threads map onto them).
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
}

const _: () = {
    assert!(std::mem::size_of::<Shard>() == 128);
    assert!(
        std::mem::size_of::<Shard>()
            == std::mem::size_of::<crossbeam_utils::CachePadded<[u64; 16]>>()
    );
    assert!(std::mem::size_of::<RegionHead>() == 128 * (1 + SHARDS));
    assert!(std::mem::size_of::<RegionHead>() % 16 == 0);
};

/// Units (16-byte words) the head takes.
pub(crate) const HEAD_UNITS: usize = std::mem::size_of::<RegionHead>() / 16;

impl RegionHead {
    #[inline(always)]
    pub fn add(&self, c: Counter, n: u64) {
        // Relaxed: counters are statistics; no other memory is published through them.
        self.shards[shard_index()].counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self, c: Counter) -> u64 {
        self.shards
            .iter()
            // Relaxed: statistics; a sum may miss increments in flight.
            .map(|s| s.counts[c as usize].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// This thread's shard, chosen on its first count: the process id plus a
/// per-process round-robin number, so that the single-threaded workers of
/// a pre-fork server (consecutive pids) write different lines of a shared
/// file instead of all starting at shard 0. A forked child forgets the
/// shard it inherited (see [`forget_shard_in_child`]) and picks its own.
#[inline(always)]
fn shard_index() -> usize {
    SHARD.with(|i| {
        let v = i.get();
        if v != usize::MAX {
            return v;
        }
        let v = pick_shard();
        i.set(v);
        v
    })
}

thread_local! {
    static SHARD: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

#[cold]
fn pick_shard() -> usize {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static AT_FORK: std::sync::Once = std::sync::Once::new();
    AT_FORK.call_once(|| {
        // SAFETY: `forget_shard_in_child` is an `extern "C" fn()` that only
        // writes a thread-local `Cell` (async-signal-safe in effect: no
        // allocation, no lock); registering a handler has no other
        // precondition. A failure (ENOMEM) only leaves forked children on
        // their parent's shard, which costs contention, not correctness.
        unsafe { libc::pthread_atfork(None, None, Some(forget_shard_in_child)) };
    });
    // Relaxed: only spreading matters, not ordering.
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (std::process::id() as usize).wrapping_add(n) % SHARDS
}

/// Runs in a forked child, in its only thread (the one that called fork):
/// its next count picks a shard from the child's own pid.
extern "C" fn forget_shard_in_child() {
    // `try_with`: the thread-local may already be destroyed if fork is
    // called from a thread-local destructor; then there is nothing to reset.
    let _ = SHARD.try_with(|i| i.set(usize::MAX));
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
