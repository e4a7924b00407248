//! The packed table (issue #14, "Core v2"): one 16-byte word per key, four
//! to a 64-byte bucket, for policies of one `gcra` limit. A check of a
//! present key reads its bucket line (two when the key sits in its second
//! bucket), finds its live word and CASes it; nothing else.
//!
//! Every operation of such a policy's [`Table`](super::Table) comes here
//! (`Table::packed`); the slots table serves every other policy. It is
//! tested against the slots table on one GCRA limit (`tests.rs`) and in
//! loom models (`loom_tests.rs`). README "Design notes" (the packed layout)
//! explains the choices; this header is the protocol.
//!
//! # Layout
//!
//! `buckets` (a power of two, at least 4) lines of [`WAYS`] slot words,
//! then one intent word per group of four buckets. A slot word is a
//! [`Slot`]: fingerprint (39 bits), generation (24), frozen bit, state (63:
//! a GCRA TAT, which is at most `now + tolerance` < 2^63), override bit.
//!
//! A key with hash `h` has fingerprint `fp` = the top 39 bits of `h` (1 if
//! those are 0), first bucket `a` = `h & (buckets - 1)` and second bucket
//! `b` = `a ^ off(fp)`, where `off` is a hash of the fingerprint, never 0.
//! From either bucket and the fingerprint the other follows, so a key can
//! move between its two buckets without its hash. Its *designated* bucket
//! is the lower of the two, and its *group* that bucket's group: every
//! transaction on a key goes through its group's intent word.
//!
//! # Protocol
//!
//! * **Generations.** Every write of a transaction to a slot bumps the
//!   slot's 24-bit generation; a direct charge or refund keeps it. Every
//!   transaction names the generation(s) of the slot(s) it acts on, and
//!   each of its steps is a CAS from a value at a named generation, so a
//!   step lands at most once, and never after the slot has moved on: a
//!   stalled helper's CAS fails (unless that one slot saw a multiple of
//!   2^24 transactions meanwhile). No step needs to know whether another
//!   helper took it.
//! * **Checks.** A check finds its key's live word (scanning its first
//!   bucket, then its second) and CASes the new state in, from the exact
//!   word it decided on. That CAS is the decision's linearisation point. A
//!   stale one can only land on a word equal bit for bit to the one it
//!   decided on (same key, generation and state), so it is the same charge,
//!   late. A check that finds its key frozen helps the key's group and
//!   looks again.
//! * **Transactions.** An intent word holds one transaction: its seq, op
//!   and pending bit, and what it acts on. It is committed by a CAS from
//!   the group's latest intent, done, to the next seq, pending; any thread
//!   that meets a pending intent completes it (`complete`), then marks it
//!   done. A process killed mid-transaction wedges nothing.
//! * **Claims.** A key is claimed (put in a slot with a fresh state) only
//!   by a CLAIM of its group committed from an intent snapshot under which
//!   both its buckets were scanned and the key was absent (live or
//!   frozen). Every way a key enters a slot is a transaction of its group,
//!   so the commit CAS succeeding means no transaction of the group ran
//!   since the scan, and the key is still absent: two racing claims of
//!   one key, or a claim racing a move of it, can never leave it in two
//!   slots. The CLAIM names the target slot's generation; it lands on
//!   what the slot holds at that generation: empty, expired, or (with its
//!   `evict` bit) the live victim of an eviction (evictions are claims).
//!   A charge keeps the generation, so a charge of an expired word's key
//!   may land between the claim's commit and its step: the step then
//!   finds the word live at its `now` and lands on nothing (without the
//!   `evict` bit a live word is never overwritten), and the claimer looks
//!   again. Landing on nothing is itself a CAS, which moves the word to its
//!   next generation unchanged, so helpers that judge the word at other
//!   times never both land: the first CAS decides. The claimer then
//!   charges the key like any check.
//! * **Resets.** A RESET names the key's live word and its generation.
//!   The word is read before the group's snapshot, so after it the reset
//!   reads the word again: a move of the key, or a reset and a new claim
//!   of it, completed in between would leave the RESET landing on nothing
//!   while the key kept its state; the reset then looks for the key again.
//!   A claim of another group landing on nothing moves the word's
//!   generation on with the key still in it, so a RESET's step also lands
//!   on its key's live word at a later generation (nothing else can put
//!   that key there while the RESET is pending).
//! * **Moves.** A MOVE of key K names the source slot (K, live, at
//!   generation `p`) and an empty target slot in K's other bucket (at
//!   generation `e`). Its steps, each a CAS from a named generation:
//!   1. freeze the source (`p` → `p+1`, frozen): charges stop landing;
//!   2. copy it into the target, frozen (`e` → `e+1`);
//!   3. empty the source (`p+1` → `p+2`);
//!   4. unfreeze the target (`e+1` → `e+2`).
//!
//!   If the target is taken before step 2, the move is undone: an
//!   unfrozen source is bumped (`p` → `p+1`, live, so that no late freeze
//!   can land), a frozen one unfrozen (`p+1` → `p+2`, live). A helper reads
//!   the source, then the target, and their generations say which step is
//!   next. At every moment K has at most one live word, and a frozen word
//!   is never evicted. A check that finds K in neither bucket may have
//!   missed it in flight (moves go both ways), so the claim path scans again
//!   under the group's intent.
//! * **Room.** A new key takes an empty slot of the emptier of its buckets
//!   (ties: its first), else an expired one (first bucket first); if both
//!   are full of live keys, a breadth-first search over both buckets' keys
//!   (each may move to its other bucket) looks, within [`MOVE_BUDGET`]
//!   bucket examinations, for a chain of moves ending in an empty slot and
//!   proposes its last move; the claim then looks again. Failing that, the
//!   policy evicts the live key that expires soonest, fails open or closed.

mod word;

use super::{MoveSkip, Outcome, Verdict, WhenFull};
use crate::algo::{self, LimitParams, Payload};
use crate::sync::{self, Atomic128};
use word::{gens_since, next_gen, Intent, Op, Slot, FP_BITS};

/// Slots per bucket: four 16-byte words, one 64-byte line (two under loom,
/// so that models stay small and a bucket fills after two keys).
#[cfg(not(loom))]
pub(crate) const WAYS: usize = 4;
#[cfg(loom)]
pub(crate) const WAYS: usize = 2;

/// Buckets per intent word.
pub(crate) const GROUP: usize = 4;

/// Bucket examinations a claim may spend looking for a chain of moves. The
/// first live eviction (`cargo bench --bench memory`, medians of 3 tables
/// of 2^20 slots, min in brackets): 64, 0.905–0.913 (0.900); 128, 0.934
/// (0.930); 256, 0.952 (0.951), at a cost to a flood of new keys into a
/// full table (callgrind `flood`: 1,506, 1,527, 1,579 instructions a check).
const MOVE_BUDGET: usize = 128;

/// Claims that evict without searching after a search found nothing (see
/// `Table`'s `MOVE_SKIP`: a flood of new keys into a full table pays for
/// one search per `MOVE_SKIP + 1` claims).
const MOVE_SKIP: u32 = 5 * MOVE_BUDGET as u32;

/// Where a key was found.
#[derive(Clone, Copy)]
enum Found {
    /// Its live word: bucket, slot, the word's bits.
    Live(usize, usize, u128),
    /// A frozen word of it (a move in flight, or garbage in a corrupt file).
    Frozen(usize, usize, u128),
    Absent,
}

/// What a bucket offers a new key.
#[derive(Clone, Copy)]
enum Room {
    /// Empty slots: how many, and the first (slot, generation).
    Empty(usize, usize, u32),
    /// An expired entry (slot, generation).
    Expired(usize, u32),
    /// The live unfrozen entry that expires soonest (slot, generation, expiry).
    Live(usize, u32, u64),
    /// Every slot is frozen (moves in flight).
    None,
}

/// The shape of a GCRA policy's packed table: everything but its memory,
/// which its owner (the policy's [`Table`](super::Table)) keeps.
pub(crate) struct Shape {
    limit: LimitParams,
    pub when_full: WhenFull,
    mask: usize,
    /// Unit index of bucket 0 (a multiple of 4: every bucket is one line).
    base: usize,
    /// Unit index of group 0's intent.
    intents: usize,
    /// Claims left that skip the move search (per process; a hint).
    move_skip: MoveSkip,
}

/// A packed table: its shape over its memory (two pointers, built per call).
#[derive(Clone, Copy)]
pub(crate) struct Packed<'a> {
    shape: &'a Shape,
    units: &'a [Atomic128],
}

impl std::ops::Deref for Packed<'_> {
    type Target = Shape;
    #[inline(always)]
    fn deref(&self) -> &Shape {
        self.shape
    }
}

/// splitmix64's finaliser: the bucket offset of a fingerprint.
#[inline(always)]
fn mix(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Shape {
    /// Buckets for at least `capacity` keys (a power of two, at least one group).
    pub fn buckets_for(capacity: usize) -> usize {
        capacity.div_ceil(WAYS).next_power_of_two().max(GROUP)
    }

    /// Units a table of `buckets` buckets needs from its base (3 units of
    /// slack align the buckets to a line).
    pub fn units_needed(buckets: usize) -> usize {
        buckets * WAYS + buckets / GROUP + 3
    }

    /// The shape of a table of `buckets` buckets at unit `base` of a
    /// region of `units` units (the region itself aligned to 64 bytes), for
    /// one GCRA limit.
    pub fn new(
        limit: LimitParams,
        when_full: WhenFull,
        buckets: usize,
        units: usize,
        base: usize,
    ) -> Shape {
        assert!(buckets.is_power_of_two() && buckets >= GROUP);
        assert_eq!(limit.algorithm, algo::Algorithm::Gcra);
        assert!(units >= base + Self::units_needed(buckets));
        let aligned = base.next_multiple_of(4);
        Shape {
            limit,
            when_full,
            mask: buckets - 1,
            base: aligned,
            intents: aligned + buckets * WAYS,
            move_skip: MoveSkip::new(),
        }
    }

    /// The table over `units`, the region this shape was made for.
    #[inline(always)]
    pub fn over<'a>(&'a self, units: &'a [Atomic128]) -> Packed<'a> {
        debug_assert!(units.len() >= self.intents + (self.mask + 1) / GROUP);
        Packed { shape: self, units }
    }

    /// Keys the table can hold.
    pub fn capacity(&self) -> usize {
        (self.mask + 1) * WAYS
    }

    /// Bytes of memory the table uses (buckets and intents).
    pub fn bytes(&self) -> usize {
        ((self.mask + 1) * WAYS + (self.mask + 1) / GROUP) * std::mem::size_of::<Atomic128>()
    }
}

impl<'a> Packed<'a> {
    #[inline(always)]
    fn line(&self, b: usize) -> &'a [Atomic128] {
        let start = self.base + b * WAYS;
        &self.units[start..start + WAYS]
    }

    #[inline(always)]
    fn intent(&self, g: usize) -> &'a Atomic128 {
        &self.units[self.intents + g]
    }

    /// The fingerprint of hash `h`: its top bits (the low bits pick the
    /// first bucket), never 0 (an empty slot's).
    #[inline(always)]
    fn fp_of(h: u64) -> u64 {
        (h >> (64 - FP_BITS)).max(1)
    }

    /// Key hash `h`'s fingerprint, first and second bucket, and the offset
    /// between them (module docs: "Layout").
    #[inline(always)]
    fn place_of(&self, h: u64) -> (u64, usize, usize, usize) {
        let fp = Self::fp_of(h);
        let a = h as usize & self.mask;
        let off = self.off_of(fp);
        (fp, a, a ^ off, off)
    }

    /// The offset between a key's two buckets: a hash of its fingerprint,
    /// within the table, never 0.
    #[inline(always)]
    fn off_of(&self, fp: u64) -> usize {
        (mix(fp) as usize & self.mask).max(1)
    }

    /// The group of a key in bucket `x` with offset `off`, and its
    /// designated bucket.
    #[inline(always)]
    fn group_of(x: usize, off: usize) -> (usize, usize) {
        let d = x.min(x ^ off);
        (d / GROUP, d)
    }

    /// The verdict of limit `l` on a key with state `state`.
    #[inline(always)]
    fn verdict(l: &LimitParams, state: u64, cost: u64, now: u64) -> Verdict {
        let p = Payload { a: 0, b: state };
        let e = if cost > algo::MAX_COST {
            // As the slots table decides an impossible cost: the state as
            // it is, and never allowed.
            let mut e = algo::gcra::evaluate(l, p, 0, now);
            e.allowed = false;
            e.retry_after_ns = u64::MAX;
            e
        } else {
            algo::gcra::evaluate(l, p, cost, now)
        };
        Verdict {
            allowed: e.allowed,
            limit: e.limit,
            remaining: e.remaining,
            retry_after_ns: if e.allowed { 0 } else { e.retry_after_ns },
            reset_after_ns: e.reset_after_ns,
            limit_index: 0,
            banned: false,
            new_ban: false,
        }
    }

    /// Looks for fingerprint `fp` in buckets `a` then `b`.
    #[inline(always)]
    fn find(&self, a: usize, b: usize, fp: u64) -> Found {
        sync::prefetch(&self.line(b)[0]);
        for x in [a, b] {
            for (j, unit) in self.line(x).iter().enumerate() {
                let v = unit.load();
                let w = Slot::from_bits(v);
                if w.fp == fp {
                    return if w.frozen {
                        Found::Frozen(x, j, v)
                    } else {
                        Found::Live(x, j, v)
                    };
                }
            }
        }
        Found::Absent
    }

    /// Decides `cost` for the key at slot `j` of bucket `x`, whose live
    /// word (`find`'s `Found::Live`) was `v`, and charges it if allowed and
    /// `charge`; `factor` gives the key's quota override if its word says
    /// it has one. `None` if the word no longer holds the key live: the
    /// caller looks again.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn decide_live(
        &self,
        x: usize,
        j: usize,
        v: u128,
        cost: u64,
        now: u64,
        charge: bool,
        factor: impl Fn() -> u32,
    ) -> Option<Verdict> {
        let first = Slot::from_bits(v);
        debug_assert!(first.is_live());
        // No override (nearly every key): the limit by reference.
        let scaled;
        let l = if first.ovr {
            scaled = self.limit.scaled(factor());
            &scaled
        } else {
            &self.limit
        };
        Self::settle(&self.line(x)[j], v, l, cost, now, charge)
    }

    /// Decides `cost` under limit `l` on `v`, a live word of `unit`, and
    /// charges it if allowed and `charge`: the CAS from `v` is the
    /// decision's linearisation point. After a failed CAS it decides again
    /// on the word found if that still holds the same key live with the
    /// same override bit (at any generation, as before this split: a claim
    /// of another group that lands on nothing moves the word on with the
    /// key still in it); else `None`, and the caller looks again. The
    /// caller knows that `v` is live (`decide_live` from `find`, which
    /// matched its fingerprint and found it unfrozen; `decide_at` by
    /// comparing its low half with the spot's), so the first pass decides
    /// without checking it again.
    #[inline(always)]
    fn settle(
        unit: &Atomic128,
        mut v: u128,
        l: &LimitParams,
        cost: u64,
        now: u64,
        charge: bool,
    ) -> Option<Verdict> {
        loop {
            let w = Slot::from_bits(v);
            let verdict = Self::verdict(l, w.state, cost, now);
            if !charge || !verdict.allowed || cost == 0 {
                return Some(verdict);
            }
            let state = algo::gcra::charge(l, Payload { a: 0, b: w.state }, cost, now).b;
            match unit.compare_exchange(v, Slot { state, ..w }.to_bits()) {
                Ok(_) => return Some(verdict),
                // Another charge won (or a transaction moved the word on):
                // decide again on what the CAS found, if it still holds
                // the key live.
                Err(actual) => {
                    let a = Slot::from_bits(actual);
                    if !a.is_live() || a.fp != w.fp || a.ovr != w.ovr {
                        return None;
                    }
                    v = actual;
                }
            }
        }
    }

    /// Decides `cost` for key hash `h` at `now`; charges it if allowed and
    /// `charge`. `factor` gives the key's quota override (0: none), read
    /// only for a key that has one or is new.
    #[inline(always)]
    pub fn decide(
        &self,
        h: u64,
        cost: u64,
        now: u64,
        charge: bool,
        factor: impl Fn() -> u32,
    ) -> Outcome {
        let now = now.min(algo::MAX_TIME_NS);
        let (fp, a, b, off) = self.place_of(h);
        let mut evicted = false;
        loop {
            match self.find(a, b, fp) {
                Found::Live(x, j, v) => {
                    if let Some(verdict) = self.decide_live(x, j, v, cost, now, charge, &factor) {
                        return Outcome::Decided { verdict, evicted };
                    }
                }
                Found::Frozen(x, j, v) => self.unfreeze(x, j, v, off, now),
                Found::Absent => {
                    let Some(snap) = self.absent(a, b, fp, now) else {
                        continue;
                    };
                    // Read after the snapshot: a racing `set_override`
                    // fences claims proposed before its write.
                    let f = factor();
                    let verdict = self.fresh_verdict(f, cost, now);
                    if !charge || !verdict.allowed || cost == 0 {
                        return Outcome::Decided { verdict, evicted };
                    }
                    match self.claim(fp, a, b, snap, f != 0, now) {
                        Ok(e) => evicted |= e,
                        Err(full) => return full,
                    }
                }
            }
        }
    }

    /// The verdict for a key with no state yet and override `factor`.
    pub fn fresh_verdict(&self, factor: u32, cost: u64, now: u64) -> Verdict {
        let now = now.min(algo::MAX_TIME_NS);
        if factor == 0 {
            return Self::verdict(&self.limit, 0, cost, now);
        }
        Self::verdict(&self.limit.scaled(factor), 0, cost, now)
    }

    /// Asks for both bucket lines of key hash `h` without waiting for them
    /// (see [`Table::prefetch`](super::Table::prefetch)).
    #[inline(always)]
    pub fn prefetch(&self, h: u64) {
        let (_, a, b, _) = self.place_of(h);
        sync::prefetch(&self.line(a)[0]);
        sync::prefetch(&self.line(b)[0]);
    }

    /// Where key `h` lives now, for [`decide_at`](Self::decide_at): its
    /// bucket, slot, and the low half of its word (fingerprint, generation,
    /// frozen bit); `None` if absent, or if it has a quota override.
    pub fn spot_of(&self, h: u64) -> Option<(usize, usize, u128)> {
        let (x, j, v, _) = self.present(h, 0)?;
        (!Slot::from_bits(v).ovr).then_some((x, j, v as u64 as u128))
    }

    /// Decides for the key at a spot from [`spot_of`](Self::spot_of),
    /// without hashing or probing: `None` if the slot no longer holds it as
    /// it did (any transaction on the slot changed its generation), which
    /// it never will again.
    #[inline(always)]
    pub fn decide_at(
        &self,
        x: usize,
        j: usize,
        key: u128,
        cost: u64,
        now: u64,
        charge: bool,
    ) -> Option<Verdict> {
        let (x, j) = (x & self.mask, j % WAYS);
        let unit = &self.line(x)[j];
        let v = unit.load();
        // The spot's low half: the key's fingerprint, at the generation it
        // was found, unfrozen; so the word still holds the key live.
        if v as u64 != key as u64 || Slot::from_bits(v).ovr {
            return None;
        }
        Self::settle(unit, v, &self.limit, cost, now, charge)
    }

    /// Marks key `h`'s word as having a quota override (`on`) or not, after
    /// the overrides table was written. With no word, a no-op transaction
    /// of the key's group makes any claim proposed from an older snapshot
    /// (which may have read the table before the write) fail and read it
    /// again.
    pub fn set_override_flag(&self, h: u64, on: bool) {
        let (fp, a, b, off) = self.place_of(h);
        let (g, d) = Self::group_of(a, off);
        loop {
            match self.find(a, b, fp) {
                Found::Live(x, j, v) => {
                    let w = Slot::from_bits(v);
                    let flagged = Slot { ovr: on, ..w }.to_bits();
                    if w.ovr == on || self.line(x)[j].compare_exchange(v, flagged).is_ok() {
                        return;
                    }
                }
                Found::Frozen(x, j, v) => self.unfreeze(x, j, v, off, 0),
                Found::Absent => {
                    let Some(snap) = self.absent(a, b, fp, 0) else {
                        continue;
                    };
                    let touch = Intent {
                        member: (d % GROUP) as u8,
                        fp,
                        ..Intent::FRESH
                    };
                    if self.propose(g, snap, touch, 0).is_some() {
                        return;
                    }
                }
            }
        }
    }

    /// The intent of the group of the key in buckets `a`/`b`, done, under
    /// which the key is absent from both (it was scanned between two reads
    /// of that intent that agree); `None` if it was found (or the intent
    /// kept changing): the caller looks again.
    fn absent(&self, a: usize, b: usize, fp: u64, now: u64) -> Option<u128> {
        let (g, _) = Self::group_of(a, a ^ b);
        for _ in 0..4 {
            let Some(i) = self.settled(g, now) else {
                continue;
            };
            if !matches!(self.find(a, b, fp), Found::Absent) {
                return None;
            }
            if self.intent(g).load() == i {
                return Some(i);
            }
        }
        None
    }

    /// A frozen word of a key (bucket `x`, slot `j`, bits `v`, offset
    /// `off`) met by a check: completes the key's group's pending
    /// transaction, or if none is pending, the word is left by a corrupt
    /// file: a THAW makes it live again.
    fn unfreeze(&self, x: usize, j: usize, v: u128, off: usize, now: u64) {
        let (g, d) = Self::group_of(x, off);
        let Some(i) = self.settled(g, now) else {
            return;
        };
        let w = Slot::from_bits(v);
        self.propose(
            g,
            i,
            Intent {
                op: Op::Thaw,
                member: (d % GROUP) as u8,
                tgt_other: x != d,
                tgt_slot: j as u8,
                tgt_gen: w.gen,
                fp: w.fp,
                ..Intent::FRESH
            },
            now,
        );
    }

    /// Commits `t` as the transaction after `i` (done) in group `g` and
    /// completes it. `None` if the group moved on since `i` (nothing was
    /// committed); else whether this thread evicted a live entry
    /// completing it.
    fn propose(&self, g: usize, i: u128, t: Intent, now: u64) -> Option<bool> {
        let prev = Intent::from_bits(i);
        debug_assert!(!prev.pending);
        let t = Intent {
            seq: prev.seq.wrapping_add(1) & word::SEQ_MASK,
            pending: true,
            ..t
        };
        self.intent(g).compare_exchange(i, t.to_bits()).ok()?;
        Some(self.complete(g, t.to_bits(), now))
    }

    /// The latest intent of group `g`, done: a pending one is completed
    /// first (`None` then: the caller looks again).
    fn settled(&self, g: usize, now: u64) -> Option<u128> {
        let i = self.intent(g).load();
        if Intent::from_bits(i).pending {
            self.complete(g, i, now);
            return None;
        }
        Some(i)
    }

    /// Helps every frozen word of bucket `x` (moves in flight, or garbage)
    /// along; true if there was one.
    fn help_frozen(&self, x: usize, now: u64) -> bool {
        let mut any = false;
        for (j, unit) in self.line(x).iter().enumerate() {
            let v = unit.load();
            let w = Slot::from_bits(v);
            if w.frozen && w.fp != 0 {
                self.unfreeze(x, j, v, self.off_of(w.fp), now);
                any = true;
            }
        }
        any
    }

    /// The slot a transaction's target or source names: (bucket, unit).
    #[inline(always)]
    fn slot_of(&self, g: usize, t: &Intent, other: bool, slot: u8) -> (usize, &'a Atomic128) {
        let d = g * GROUP + t.member as usize;
        let off = self.off_of(t.fp);
        let x = if other { (d ^ off) & self.mask } else { d };
        (x, &self.line(x)[slot as usize % WAYS])
    }

    /// Completes pending transaction `t` of group `g` and marks it done.
    /// Every step first reads the slots it acts on, then checks that `t`
    /// is still the group's pending transaction, then CASes from the value
    /// read: a step of a finished transaction never lands (its
    /// generations are gone). True if this thread's step evicted a live
    /// entry (a claim over a key that had not expired at `now`).
    ///
    /// `bits` is the intent word as read (a corrupt file's may hold bits no
    /// field uses: it is compared and marked done as it is, never
    /// re-encoded, or it could never be marked done).
    fn complete(&self, g: usize, bits: u128, now: u64) -> bool {
        let t = Intent::from_bits(bits);
        let current = || self.intent(g).load() == bits;
        let mut evicted = false;
        match t.op {
            Op::Claim => {
                let (_, unit) = self.slot_of(g, &t, t.tgt_other, t.tgt_slot);
                loop {
                    let v = unit.load();
                    let w = Slot::from_bits(v);
                    if w.gen != t.tgt_gen || (w.frozen && !w.is_empty()) || !current() {
                        break;
                    }
                    // The word's key may have been charged since the claim
                    // saw it expired (charges keep the generation): unless
                    // the claimer chose it as a victim, a word live at
                    // `now` is never overwritten. The claim then lands on
                    // nothing, and the claimer looks again. Helpers with
                    // other times may judge the word otherwise, so landing
                    // on nothing is a step too: the word moves to the next
                    // generation as it is (charges compare key and state,
                    // not generation), and whichever of the two CASes comes
                    // first decides; a helper that read the word before
                    // can never land the claim after it is done.
                    let abort = !w.is_empty() && !t.evict && w.state > now;
                    let new = if abort {
                        w.bumped(false)
                    } else {
                        Slot {
                            fp: t.fp,
                            gen: next_gen(w.gen),
                            frozen: false,
                            state: 0,
                            ovr: t.ovr,
                        }
                    };
                    if unit.compare_exchange(v, new.to_bits()).is_ok() {
                        evicted = !abort && w.fp != 0 && w.state > now;
                        break;
                    }
                }
            }
            Op::Reset | Op::Thaw => {
                let (_, unit) = self.slot_of(g, &t, t.tgt_other, t.tgt_slot);
                loop {
                    let v = unit.load();
                    let w = Slot::from_bits(v);
                    // A RESET also lands on its key's word at a later
                    // generation: a claim of another group that landed on
                    // nothing moves a live word on, unchanged, and while the
                    // RESET is pending nothing else can put this key (or
                    // another of its fingerprint, which would be of this
                    // group) in the slot. The CAS from the word read keeps
                    // a helper from landing after the RESET is done.
                    let named = w.gen == t.tgt_gen
                        || (t.op == Op::Reset
                            && w.fp == t.fp
                            && gens_since(w.gen, t.tgt_gen) < 1 << (word::GEN_BITS - 1));
                    if !named || w.is_empty() || !current() {
                        break;
                    }
                    let new = if t.op == Op::Reset {
                        if w.frozen {
                            break; // a move's: never reset under it
                        }
                        Slot::empty(next_gen(w.gen))
                    } else {
                        if !w.frozen {
                            break;
                        }
                        w.bumped(false)
                    };
                    if unit.compare_exchange(v, new.to_bits()).is_ok() {
                        break;
                    }
                }
            }
            Op::Move => self.complete_move(g, &t, &current),
            Op::None => {}
        }
        let _ = self
            .intent(g)
            .compare_exchange(bits, Intent::done_bits(bits));
        evicted
    }

    /// The steps of a MOVE (module docs: "Moves").
    fn complete_move(&self, g: usize, t: &Intent, current: &dyn Fn() -> bool) {
        let (_, tgt) = self.slot_of(g, t, t.tgt_other, t.tgt_slot);
        let (_, src) = self.slot_of(g, t, !t.tgt_other, t.src_slot);
        let (e, p) = (t.tgt_gen, t.src_gen);
        loop {
            // The source first, then the target: a step decided on a stale
            // source is a CAS from that source value, which fails; and once
            // the source is emptied (step 3), the target read after it says
            // whether step 4 is done. (Read the other way round, a target
            // read before step 2 and a source read after step 3 looked like
            // a finished move, and step 4 was never taken: loom.)
            let sv = src.load();
            let tv = tgt.load();
            let (tw, sw) = (Slot::from_bits(tv), Slot::from_bits(sv));
            if !current() {
                return;
            }
            // The target still as proposed (empty), or holding the copy.
            let tgt_free = tw.gen == e && tw.is_empty();
            let tgt_copy = tw.gen == next_gen(e) && tw.frozen && tw.fp == t.fp;
            let step = match gens_since(sw.gen, p) {
                // 1: freeze the live source, while the target is free;
                // else undo: bump it, so that no late freeze lands.
                0 if sw.is_live() && sw.fp == t.fp => {
                    src.compare_exchange(sv, sw.bumped(tgt_free).to_bits())
                }
                1 if sw.frozen && sw.fp == t.fp => {
                    if tgt_free {
                        // 2: copy, frozen, into the target.
                        let copy = Slot {
                            gen: next_gen(e),
                            ..sw
                        };
                        tgt.compare_exchange(tv, copy.to_bits())
                    } else if tgt_copy {
                        // 3: empty the source.
                        src.compare_exchange(sv, Slot::empty(next_gen(sw.gen)).to_bits())
                    } else {
                        // Undo: the target was taken. Unfreeze the source.
                        src.compare_exchange(sv, sw.bumped(false).to_bits())
                    }
                }
                // 4: the source has left `p + 1` frozen: emptied by step 3
                // (perhaps claimed again since), or unfrozen by an undo. The
                // copy exists only after step 2, and an undo happens only
                // before it, so a copy means step 3 is done: unfreeze it.
                _ if tgt_copy => tgt.compare_exchange(tv, tw.bumped(false).to_bits()),
                // Done, undone, or the source was evicted before its freeze.
                _ => return,
            };
            let _ = step; // won or lost, read both slots again
        }
    }

    /// What bucket `x` offers a new key at `now`.
    fn room(&self, x: usize, now: u64) -> Room {
        let (mut empties, mut first_empty) = (0, None);
        let mut expired = None;
        let mut live: Option<(usize, u32, u64)> = None;
        for (j, unit) in self.line(x).iter().enumerate() {
            let w = Slot::from_bits(unit.load());
            if w.is_empty() {
                empties += 1;
                first_empty.get_or_insert((j, w.gen));
            } else if w.frozen {
                continue;
            } else if w.state <= now {
                expired.get_or_insert((j, w.gen));
            } else if live.is_none_or(|(_, _, e)| w.state < e) {
                live = Some((j, w.gen, w.state));
            }
        }
        match (first_empty, expired, live) {
            (Some((j, g)), _, _) => Room::Empty(empties, j, g),
            (_, Some((j, g)), _) => Room::Expired(j, g),
            (_, _, Some((j, g, e))) => Room::Live(j, g, e),
            _ => Room::None,
        }
    }

    /// Claims a slot for fingerprint `fp` (buckets `a`, `b`), absent under
    /// intent snapshot `snap` of its group. `Ok(evicted)`: a claim was
    /// proposed (or a move made room; or a race was lost): the caller
    /// looks again. `Err(outcome)`: both buckets are full and the policy
    /// does not evict.
    #[allow(clippy::too_many_arguments)]
    fn claim(
        &self,
        fp: u64,
        a: usize,
        b: usize,
        snap: u128,
        ovr: bool,
        now: u64,
    ) -> Result<bool, Outcome> {
        let (g, d) = Self::group_of(a, a ^ b);
        let (ra, rb) = (self.room(a, now), self.room(b, now));
        // (bucket, slot, generation, the slot's live key is the victim)
        let pick = match (ra, rb) {
            (Room::Empty(n, j, e), Room::Empty(m, k, f)) => Some(if m > n {
                (b, k, f, false)
            } else {
                (a, j, e, false)
            }),
            (Room::Empty(_, j, e), _) => Some((a, j, e, false)),
            (_, Room::Empty(_, k, f)) => Some((b, k, f, false)),
            (Room::Expired(j, e), _) => Some((a, j, e, false)),
            (_, Room::Expired(k, f)) => Some((b, k, f, false)),
            _ => None,
        };
        let pick = match pick {
            Some(p) => p,
            None => {
                if self.make_room(a, b, now) {
                    return Ok(false);
                }
                let victim = match (ra, rb) {
                    (Room::Live(j, e, x), Room::Live(k, f, y)) => {
                        Some(if y < x { (b, k, f, y) } else { (a, j, e, x) })
                    }
                    (Room::Live(j, e, x), _) => Some((a, j, e, x)),
                    (_, Room::Live(k, f, y)) => Some((b, k, f, y)),
                    _ => None,
                };
                match victim {
                    Some((x, j, e, _)) if self.when_full == WhenFull::Evict => (x, j, e, true),
                    _ => {
                        // Slots frozen by moves in flight are not full:
                        // help those moves and look again.
                        let frozen = self.help_frozen(a, now) | self.help_frozen(b, now);
                        if frozen || self.intent(g).load() != snap {
                            return Ok(false);
                        }
                        let exp = |r: Room| match r {
                            Room::Live(_, _, e) => e,
                            _ => u64::MAX,
                        };
                        return Err(Outcome::Full {
                            retry_after_ns: algo::until(exp(ra).min(exp(rb)), now),
                        });
                    }
                }
            }
        };
        let (x, j, e, evict) = pick;
        let committed = self.propose(
            g,
            snap,
            Intent {
                op: Op::Claim,
                member: (d % GROUP) as u8,
                tgt_other: x != d,
                tgt_slot: j as u8,
                tgt_gen: e,
                fp,
                ovr,
                evict,
                ..Intent::FRESH
            },
            now,
        );
        // An eviction is counted by its claimer, once: its own step, or a
        // helper's that landed first (the slot then holds the key at the
        // next generation; helpers count nothing). Not counted if the slot
        // has moved on again since (rare: the count is a statistic).
        Ok(match committed {
            Some(true) => true,
            Some(false) if evict => {
                let w = Slot::from_bits(self.line(x)[j].load());
                w.gen == next_gen(e) && w.fp == fp
            }
            _ => false,
        })
    }

    /// Looks for a chain of moves that frees a slot in bucket `a` or `b`
    /// (both full of live keys), breadth first over the keys of the buckets
    /// reached (each may move to its other bucket), within [`MOVE_BUDGET`]
    /// bucket examinations, and proposes the chain's last move (into an
    /// empty slot). True if a move was proposed.
    fn make_room(&self, a: usize, b: usize, now: u64) -> bool {
        if self.move_skip.skip() {
            return false;
        }
        let mut reached = [0usize; MOVE_BUDGET + 2];
        reached[0] = a;
        reached[1] = b;
        let (mut len, mut next, mut budget) = (2, 0, MOVE_BUDGET);
        while next < len {
            let x = reached[next];
            next += 1;
            for (i, unit) in self.line(x).iter().enumerate() {
                let v = unit.load();
                let w = Slot::from_bits(v);
                if !w.is_live() {
                    continue;
                }
                let Some(left) = budget.checked_sub(1) else {
                    self.move_skip.rest(MOVE_SKIP);
                    return false;
                };
                budget = left;
                let off = self.off_of(w.fp);
                let y = x ^ off;
                if let Room::Empty(_, j, e) = self.room(y, now) {
                    let (g, d) = Self::group_of(x, off);
                    let Some(snap) = self.settled(g, now) else {
                        return true;
                    };
                    self.propose(
                        g,
                        snap,
                        Intent {
                            op: Op::Move,
                            member: (d % GROUP) as u8,
                            tgt_other: y != d,
                            tgt_slot: j as u8,
                            src_slot: i as u8,
                            tgt_gen: e,
                            src_gen: w.gen,
                            fp: w.fp,
                            ..Intent::FRESH
                        },
                        now,
                    );
                    return true;
                }
                if len < reached.len() && !reached[..len].contains(&y) {
                    reached[len] = y;
                    len += 1;
                }
            }
        }
        self.move_skip.rest(MOVE_SKIP);
        false
    }

    /// The live word of key `h`, or `None` if it is absent (confirmed under
    /// its group's intent).
    fn present(&self, h: u64, now: u64) -> Option<(usize, usize, u128, usize)> {
        let (fp, a, b, off) = self.place_of(h);
        let (x, j, v) = self.present_in(a, b, fp, off, now)?;
        Some((x, j, v, off))
    }

    /// The live word of the key with fingerprint `fp` (buckets `a`, `b`,
    /// offset `off`) as (bucket, slot, bits), or `None` if it is absent.
    fn present_in(
        &self,
        a: usize,
        b: usize,
        fp: u64,
        off: usize,
        now: u64,
    ) -> Option<(usize, usize, u128)> {
        loop {
            match self.find(a, b, fp) {
                Found::Live(x, j, v) => return Some((x, j, v)),
                Found::Frozen(x, j, v) => self.unfreeze(x, j, v, off, now),
                Found::Absent => {
                    if self.absent(a, b, fp, now).is_some() {
                        return None;
                    }
                }
            }
        }
    }

    /// Gives back `cost` charged to `h` earlier; false if the key holds no
    /// state. `factor` gives its quota override if it has one.
    pub fn refund(&self, h: u64, cost: u64, now: u64, factor: impl Fn() -> u32) -> bool {
        let now = now.min(algo::MAX_TIME_NS);
        let cost = cost.min(algo::MAX_COST);
        loop {
            let Some((x, j, v, _)) = self.present(h, now) else {
                return false;
            };
            let w = Slot::from_bits(v);
            if cost == 0 {
                return true;
            }
            let l = if w.ovr {
                self.limit.scaled(factor())
            } else {
                self.limit
            };
            let state = algo::gcra::refund(&l, Payload { a: 0, b: w.state }, cost, now).b;
            if self.line(x)[j]
                .compare_exchange(v, Slot { state, ..w }.to_bits())
                .is_ok()
            {
                return true;
            }
        }
    }

    /// Forgets `h`; false if it held no state.
    pub fn reset(&self, h: u64) -> bool {
        let (fp, a, b, off) = self.place_of(h);
        self.forget(a, b, fp, off)
    }

    /// Forgets the key with fingerprint `fp` (buckets `a`, `b`, offset
    /// `off`) wherever it is now; false if it held no state.
    fn forget(&self, a: usize, b: usize, fp: u64, off: usize) -> bool {
        loop {
            let Some((x, j, v)) = self.present_in(a, b, fp, off, 0) else {
                return false;
            };
            if self.reset_at(x, j, v, off) {
                return true;
            }
        }
    }

    /// Proposes a RESET of the key whose live word `v` is at slot `j` of
    /// bucket `x`. True if it committed (the key is then gone: nothing of
    /// its group can run before the reset lands); false if the group moved
    /// on or the word did (the caller looks for the key again).
    fn reset_at(&self, x: usize, j: usize, v: u128, off: usize) -> bool {
        let (g, d) = Self::group_of(x, off);
        let Some(snap) = self.settled(g, 0) else {
            return false;
        };
        // `v` was read before `snap`: a move of the key, or a reset and a
        // new claim of it, may have completed in between, and a RESET
        // naming the generation `v` had would then land on nothing while
        // the key kept its state elsewhere. Read after `snap`, the word
        // still at that generation is the key's live word, and nothing of
        // its group runs before the commit.
        let w = Slot::from_bits(v);
        let now = Slot::from_bits(self.line(x)[j].load());
        if now.gen != w.gen || now.fp != w.fp || !now.is_live() {
            return false;
        }
        let t = Intent {
            op: Op::Reset,
            member: (d % GROUP) as u8,
            tgt_other: x != d,
            tgt_slot: j as u8,
            tgt_gen: w.gen,
            fp: w.fp,
            ..Intent::FRESH
        };
        // A claim of another group that lands on nothing may move the word
        // to a later generation, as it is, before the RESET's step: the
        // step lands on the key there (see `complete`).
        self.propose(g, snap, t, 0).is_some()
    }

    /// Forgets every key (a scan: a key claimed while it runs may stay).
    /// Each key met is forgotten wherever it is by then: a frozen word is
    /// helped along first (its move completed, or thawed if no move
    /// explains it), so a key a dead process left frozen, a key that moved
    /// into a bucket the scan passed, or a corrupt file's frozen garbage
    /// does not come back with its state. Returns how many keys it reset.
    pub fn reset_all(&self) -> u64 {
        let mut n = 0;
        for x in 0..=self.mask {
            for j in 0..WAYS {
                // A corrupt file may hold a fingerprint twice in one pair
                // of buckets: each pass forgets the first copy found, so
                // the slot is empty after at most one pass per slot of
                // the pair (more only if other threads keep claiming it).
                for _ in 0..2 * WAYS {
                    let w = Slot::from_bits(self.line(x)[j].load());
                    if w.is_empty() {
                        break;
                    }
                    let off = self.off_of(w.fp);
                    n += self.forget(x, (x ^ off) & self.mask, w.fp, off) as u64;
                }
            }
        }
        n
    }

    /// Keys held (a scan; a key in the middle of a move may count twice).
    pub fn occupancy(&self) -> u64 {
        (0..=self.mask)
            .map(|x| {
                self.line(x)
                    .iter()
                    .filter(|u| !Slot::from_bits(u.load()).is_empty())
                    .count() as u64
            })
            .sum()
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(test)]
mod testkit;
#[cfg(all(test, not(loom)))]
mod tests;
