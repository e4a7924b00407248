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
//! used. A refund, a reset, an override or another process's charge
//! changes the state or the key word, which the spot reads afresh or
//! compares; an eviction or a move is a transaction of the bucket.
//!
//! An entry is filled when the same key misses the same entry twice in a
//! row (the entry remembers the last hash that missed it), so a stream of
//! distinct keys — 100,000 keys, a flood of new ones — only pays the miss:
//! one comparison, one 8-byte store. A key an attacker aims at an entry
//! only evicts it; the check then takes the table's path, as without the
//! memo.
//!
//! Thread-local, fixed-size, never allocating: a `const`-initialised
//! `thread_local!` of plain `Copy` data registers no destructor.

use crate::table::{Mode, Outcome, Spot, Table};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries per thread (a power of two).
const WAYS: usize = 8;
/// Longest key the memo keeps: longer keys always take the table's path.
pub(crate) const KEY_BYTES: usize = 32;

#[derive(Clone, Copy)]
struct Entry {
    /// The engine ([`engine_id`]) and policy index the spot belongs to;
    /// engine 0: empty.
    engine: u64,
    policy: u32,
    len: u32,
    /// The key's first 8 bytes (zero-padded), then the rest.
    head: u64,
    tail: [u8; KEY_BYTES - 8],
    hash: u64,
    spot: Spot,
}

impl Entry {
    const EMPTY: Entry = Entry {
        engine: 0,
        policy: 0,
        len: 0,
        head: 0,
        tail: [0; KEY_BYTES - 8],
        hash: 0,
        spot: Spot::EMPTY,
    };

    #[inline(always)]
    fn holds(&self, engine: u64, policy: u32, key: &[u8], head: u64) -> bool {
        self.engine == engine
            && self.policy == policy
            && self.head == head
            && self.len as usize == key.len()
            && (key.len() <= 8 || self.tail[..key.len() - 8] == key[8..])
    }
}

thread_local! {
    static MEMO: RefCell<[Entry; WAYS]> = const { RefCell::new([Entry::EMPTY; WAYS]) };
    /// Per entry, the hash of the last key that missed it.
    static MISSED: [Cell<u64>; WAYS] = const { [const { Cell::new(0) }; WAYS] };
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
    let mut head = [0u8; 8];
    let n = key.len().min(8);
    head[..n].copy_from_slice(&key[..n]);
    u64::from_le_bytes(head)
}

/// The entry a key of `policy` uses: its head, its length and the policy,
/// mixed by one multiplication.
#[inline(always)]
fn way(policy: u32, key: &[u8], head: u64) -> usize {
    let x = head ^ ((key.len() as u64) << 56) ^ ((policy as u64) << 40);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - WAYS.trailing_zeros())) as usize
}

/// The decision on `key` (of `policy` of engine `engine`, table `table`)
/// at the spot this thread remembers for it, with the key's hash; `None`
/// if there is none or it no longer holds.
#[inline(always)]
pub(crate) fn decide(
    engine: u64,
    policy: u32,
    table: &Table,
    key: &[u8],
    cost: u64,
    now: u64,
    mode: Mode,
) -> Option<(Outcome, u64)> {
    if key.len() > KEY_BYTES {
        return None;
    }
    let head = head_of(key);
    let i = way(policy, key, head);
    let (spot, hash) = MEMO.with(|m| {
        let m = m.borrow();
        let e = &m[i];
        e.holds(engine, policy, key, head)
            .then_some((e.spot, e.hash))
    })?;
    let outcome = table.decide_at(&spot, cost, now, mode);
    #[cfg(test)]
    HITS.with(|h| h.set(h.get() + outcome.is_some() as u64));
    if outcome.is_none() {
        // Gone or changed: refilled after the next miss.
        MEMO.with(|m| m.borrow_mut()[i].engine = 0);
    }
    Some((outcome?, hash))
}

/// After the table decided `key` (hash `hash`) itself: true if the key
/// also missed its entry the last time anything did, and so should
/// [`fill`] it.
#[inline(always)]
pub(crate) fn missed(policy: u32, key: &[u8], hash: u64) -> bool {
    if key.len() > KEY_BYTES {
        return false;
    }
    let i = way(policy, key, head_of(key));
    MISSED.with(|m| m[i].replace(hash) == hash)
}

/// Remembers where `key` (hash `hash`) of `policy` lives in `table` now.
#[cold]
#[inline(never)]
pub(crate) fn fill(engine: u64, policy: u32, table: &Table, key: &[u8], hash: u64) {
    let Some(spot) = table.spot_of(hash) else {
        return;
    };
    let head = head_of(key);
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        let e = &mut m[way(policy, key, head)];
        e.engine = engine;
        e.policy = policy;
        e.len = key.len() as u32;
        e.head = head;
        if key.len() > 8 {
            e.tail[..key.len() - 8].copy_from_slice(&key[8..]);
        }
        e.hash = hash;
        e.spot = spot;
    });
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
