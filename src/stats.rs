//! Per-policy counters: sharded over cache-padded atomics so that no single
//! word is written by every thread on the hot path; summed on read.

use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// Number of shards (threads map onto them by a per-thread index).
pub(crate) const SHARDS: usize = 16;

/// Counter indices.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub(crate) enum Counter {
    Allowed = 0,
    Denied = 1,
    Evictions = 2,
    TableFull = 3,
}

const COUNTERS: usize = 4;

/// One shard: a cache line of counters.
#[derive(Default)]
pub(crate) struct Shard {
    counts: [AtomicU64; COUNTERS],
}

/// The counters of one policy.
pub(crate) struct Counters {
    shards: Box<[CachePadded<Shard>]>,
}

impl Counters {
    pub fn new() -> Counters {
        Counters {
            shards: (0..SHARDS).map(|_| CachePadded::new(Shard::default())).collect(),
        }
    }

    #[inline(always)]
    pub fn add(&self, c: Counter, n: u64) {
        // Relaxed: counters are statistics; no other memory is published through them.
        self.shards[shard_index()].counts[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn sum(&self, c: Counter) -> u64 {
        self.shards
            .iter()
            .map(|s| s.counts[c as usize].load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

/// This thread's shard: assigned round-robin on first use.
#[inline(always)]
fn shard_index() -> usize {
    #[cfg(not(loom))]
    {
        use std::cell::Cell;
        use std::sync::atomic::AtomicUsize;
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
        }
        INDEX.with(|i| {
            let v = i.get();
            if v != usize::MAX {
                return v;
            }
            // Relaxed: only uniqueness-ish spreading matters, not ordering.
            let v = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
            i.set(v);
            v
        })
    }
    #[cfg(loom)]
    {
        0
    }
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
    /// Keys currently tracked.
    pub occupancy: u64,
    /// Keys the table can track.
    pub capacity: u64,
}
