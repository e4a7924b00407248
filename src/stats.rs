//! Per-policy counters: sharded over cache-line-padded atomics so that no
//! single word is written by every thread on the hot path; summed on read.
//!
//! The counters sit at the start of the policy's memory region (see
//! [`RegionHead`]), so for a shared engine they live in the mapping and any
//! process — or the CLI — reads the totals of all workers.

use crate::sync::{FutexWord, SharedOrdering as Ordering, SharedU64 as AtomicU64};

/// Number of shards (see [`pick_shard`] for how threads map onto them).
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
    /// Adds `n` to counter `c` in shard `shard`: the calling thread's
    /// (see [`pick_shard`]), so that threads write different lines.
    #[inline(always)]
    pub fn add_in(&self, shard: usize, c: Counter, n: u64) {
        // Relaxed: counters are statistics; no other memory is published through them.
        self.shards[shard % SHARDS].counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self, c: Counter) -> u64 {
        self.shards
            .iter()
            // Relaxed: statistics; a sum may miss increments in flight.
            .map(|s| s.counts[c as usize].load(Ordering::Relaxed))
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
