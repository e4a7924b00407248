//! The spot memo: where this thread last found a key it checks again and
//! again, so that a hot key — above all a key whose every request is
//! denied, which is what a flood looks like — is decided without hashing
//! it or probing its buckets.
//!
//! Each thread keeps [`WAYS`] entries, picked by a cheap mix of the policy
//! and the key's first bytes. An entry holds a key's bytes (up to
//! [`KEY_BYTES`]), its hash and its [`Spot`]: the bucket and slot of a
//! single-word policy's table that held the key, with the bucket's intent
//! words and the slot's key word as they were then. A check whose key
//! matches an entry asks the table to decide at that spot
//! ([`Table::decide_at`](crate::table::Table::decide_at)), which does so only
//! if the bucket has begun no transaction since and the key word is
//! unchanged — the same test the table's own check makes between finding a
//! key and deciding on it — and reads the key's state as it is now. So a
//! decision through the memo is the decision the table would make: nothing
//! is cached but a location, and a location that may have changed is never
//! used. A refund or another worker's charge changes the state word, which
//! is read afresh; a claim, a move, an eviction, a reset, an override or a
//! retag is a transaction of the bucket, which changes its intents.
//!
//! An entry is filled when the same key misses the same entry twice in a
//! row (the entry remembers the last hash that missed it), so a stream of
//! distinct keys — 100,000 keys, a flood of new ones — only pays the miss:
//! one comparison, one 8-byte store. A key an attacker aims at an entry
//! only evicts it; the check then takes the table's path, as without the
//! memo.
//!
//! Thread-local, fixed-size, never allocating: the entries are part of
//! this thread's [`Local`](super::local::Local), which the check reads once.

use crate::table::{Mode, Outcome, Spot, Table};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries per thread (a power of two).
pub(crate) const WAYS: usize = 8;
/// Longest key the memo keeps: longer keys always take the table's path.
pub(crate) const KEY_BYTES: usize = 32;

/// One remembered key. Every field is a `Cell`, so that a check reads
/// only the fields it compares (the spot is read, in place, on a hit alone).
pub(crate) struct Entry {
    /// The engine ([`engine_id`]) the spot belongs to; 0: empty.
    engine: Cell<u64>,
    /// The policy's index in that engine.
    policy: Cell<u32>,
    len: Cell<u32>,
    /// The key's first 8 bytes (zero-padded), then the rest.
    head: Cell<u64>,
    tail: Cell<[u8; KEY_BYTES - 8]>,
    hash: Cell<u64>,
    spot: Cell<Spot>,
    /// The hash of the last key that missed this entry.
    missed: Cell<u64>,
    /// See [`Quiet`].
    quiet: Quiet,
}

/// Quiet: when this thread's denials of the remembered key need not be
/// offered to the policy's deny-event ring. After an offer at time `from`,
/// the ring ([`Ring::offer`](crate::events::Ring::offer)) reports until
/// when it would sample out every later denial of the key (its event is
/// less than an interval old); a denial decided through the memo at a time
/// in `from..until` is then not offered at all, and costs no read of the
/// ring's shared sampler word. That only differs from offering it when
/// another key took the sampler word within the interval, which would
/// have written this key's event again (displaced keys are written more
/// often); the key still had its event less than an interval ago, so every
/// denying key still reaches the ring at least once an interval. A time
/// before `from` (time going backwards) is offered, as the ring treats it
/// as a new interval; a denial that starts a ban is always offered. A new
/// fill resets it.
pub(crate) struct Quiet {
    from: Cell<u64>,
    until: Cell<u64>,
}

impl Quiet {
    #[allow(clippy::declare_interior_mutable_const)]
    const NONE: Quiet = Quiet {
        from: Cell::new(0),
        until: Cell::new(0),
    };

    /// A denial at `now` need not be offered.
    #[inline(always)]
    pub(crate) fn holds(&self, now: u64) -> bool {
        now < self.until.get() && now >= self.from.get()
    }

    /// An offer at `now` found the ring quiet until `until`.
    #[inline(always)]
    pub(crate) fn set(&self, now: u64, until: u64) {
        self.from.set(now);
        self.until.set(until);
    }
}

impl Entry {
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const EMPTY: Entry = Entry {
        engine: Cell::new(0),
        policy: Cell::new(0),
        len: Cell::new(0),
        head: Cell::new(0),
        tail: Cell::new([0; KEY_BYTES - 8]),
        hash: Cell::new(0),
        spot: Cell::new(Spot::EMPTY),
        missed: Cell::new(0),
        quiet: Quiet::NONE,
    };

    #[inline(always)]
    fn holds(&self, engine: u64, policy: u32, key: &[u8], head: u64) -> bool {
        self.engine.get() == engine
            && self.head.get() == head
            && self.policy.get() == policy
            && self.len.get() as usize == key.len()
            && (key.len() <= 8 || self.tail.get()[..key.len() - 8] == key[8..])
    }
}

/// A number no other engine of this process has had (from 1), so that an
/// entry is never taken for a spot of another engine's table, even one at
/// the same address after the first was dropped.
pub(crate) fn engine_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    // Relaxed: only uniqueness matters, which the read-modify-write gives.
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A key's first (up to) 8 bytes, zero-padded, as a number.
#[inline(always)]
fn head_of(key: &[u8]) -> u64 {
    if let Some(first) = key.first_chunk::<8>() {
        return u64::from_le_bytes(*first);
    }
    key.iter().rev().fold(0u64, |h, &b| (h << 8) | b as u64)
}

/// The entry a key of `policy` uses: its head, its length and the policy,
/// mixed by one multiplication.
#[inline(always)]
fn way(policy: u32, key: &[u8], head: u64) -> usize {
    let x = head ^ ((key.len() as u64) << 56) ^ ((policy as u64) << 40);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - WAYS.trailing_zeros())) as usize
}

/// Where `key` of `policy` would be remembered: its entry and head.
#[derive(Clone, Copy)]
pub(crate) struct Way {
    e: &'static Entry,
    head: u64,
}

/// The decision on `key` (of `policy` of engine `engine`, table `table`)
/// at the spot this thread remembers for it in `entries` (this thread's:
/// [`Local::memo`](super::local::Local::memo)), with the key's hash and
/// its [`Quiet`]; else the key's [`Way`] for [`missed`] (`None`: too long
/// to remember).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn decide(
    entries: &'static [Entry; WAYS],
    engine: u64,
    policy: u32,
    table: &Table,
    key: &[u8],
    cost: u64,
    now: u64,
    mode: Mode,
) -> Result<(Outcome, u64, &'static Quiet), Option<Way>> {
    if key.len() > KEY_BYTES {
        return Err(None);
    }
    let head = head_of(key);
    let e = &entries[way(policy, key, head)];
    if !e.holds(engine, policy, key, head) {
        return Err(Some(Way { e, head }));
    }
    // SAFETY: `e` is this thread's (`Local` is thread-local and `Entry` is
    // not `Sync`), and nothing writes `e.spot` while this shared reference
    // lives: `decide_at` is table code that never reaches the memo (no
    // callback, no re-entry), and the reference ends with this statement.
    // Reading in place spares copying the 80-byte spot out of its `Cell`.
    let outcome = table.decide_at(unsafe { &*e.spot.as_ptr() }, cost, now, mode);
    #[cfg(test)]
    HITS.with(|h| h.set(h.get() + outcome.is_some() as u64));
    match outcome {
        Some(o) => Ok((o, e.hash.get(), &e.quiet)),
        None => Err(Some(forget(e, head))),
    }
}

/// After a look at `e`'s spot that found it no longer holds the key (its
/// bucket began a transaction, or its key word changed): the entry is
/// forgotten, and refilled after the next miss.
#[cold]
#[inline(never)]
fn forget(e: &'static Entry, head: u64) -> Way {
    e.engine.set(0);
    Way { e, head }
}

/// After the table decided a key (hash `hash`, way `w`) itself: true if the
/// key also missed its entry the last time anything did, and so should
/// [`fill`] it — unless the entry holds the key's spot already (kept after
/// a lost race).
#[inline(always)]
pub(crate) fn missed(w: Way, hash: u64) -> bool {
    w.e.missed.replace(hash) == hash && (w.e.engine.get() == 0 || w.e.hash.get() != hash)
}

/// Remembers where `key` (hash `hash`, way `w`) of `policy` lives in
/// `table` now.
#[cold]
#[inline(never)]
pub(crate) fn fill(engine: u64, policy: u32, table: &Table, key: &[u8], hash: u64, w: Way) {
    let Some(spot) = table.spot_of(hash) else {
        return;
    };
    let e = w.e;
    e.engine.set(engine);
    e.policy.set(policy);
    e.len.set(key.len() as u32);
    e.head.set(w.head);
    if key.len() > 8 {
        let mut tail = [0; KEY_BYTES - 8];
        tail[..key.len() - 8].copy_from_slice(&key[8..]);
        e.tail.set(tail);
    }
    e.hash.set(hash);
    e.spot.set(spot);
    e.quiet.set(0, 0);
}

#[cfg(test)]
thread_local! {
    static HITS: Cell<u64> = const { Cell::new(0) };
}

/// Checks this thread decided through the memo so far (tests).
#[cfg(test)]
pub(crate) fn hits() -> u64 {
    HITS.with(Cell::get)
}

#[cfg(test)]
#[path = "memo_tests.rs"]
mod tests;
