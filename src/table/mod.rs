//! The sharded atomic table: fixed capacity, allocated once, updated by
//! compare-and-swap only.
//!
//! # Layout
//!
//! A table is an array of buckets; a key lives in the bucket its hash picks
//! (`hash & (buckets - 1)`), in one of [`SLOTS`] slots. Every unit is an
//! [`Atomic128`] word. A bucket is:
//!
//! ```text
//! [ intent 0 | intent 1 | key 0 | slot 0 words | ... | key 7 | slot 7 words ]
//! ```
//!
//! A key is looked for (and placed) starting from the slot its hash
//! prefers, so that it usually sits right where it is looked for first.
//!
//! A key or state word:
//!
//! | bits    | field   | meaning                                            |
//! |---------|---------|----------------------------------------------------|
//! | 0..32   | tag     | sequence number of the transaction that wrote it   |
//! | 32..64  | `a`     | payload (algorithm-defined; for a key word, the key's quota override in thousandths, 0 = none) |
//! | 64..128 | `b`     | payload (algorithm-defined; for a key word, the key's 64-bit hash, 0 = empty) |
//!
//! An intent word (one transaction of the bucket):
//!
//! | bits    | field   | meaning                                             |
//! |---------|---------|-----------------------------------------------------|
//! | 0..32   | seq     | the transaction's sequence number                   |
//! | 32..56  | cost    | cost of a charge or refund                          |
//! | 56..59  | op      | `CHARGE`, `REFUND`, `CLAIM`, `RESET`, `STRIKE`, `FACTOR`, `TOUCH` |
//! | 59      | pending | set until every word of the transaction is written  |
//! | 60..64  | slot    | the slot the transaction changes                    |
//! | 64..128 | arg     | `now` for charge/refund, the key hash for a claim   |
//!
//! # Protocol
//!
//! Transactions of one bucket are totally ordered by `seq`; transaction
//! `s` lives in intent word `s & 1`. The *latest* transaction is the one
//! whose intent has the higher seq (the other holds `seq - 1`; a fresh,
//! all-zero bucket has both at 0 and the latest is intent 0).
//!
//! | state of latest intent | meaning                                      |
//! |------------------------|----------------------------------------------|
//! | pending                | its words are being written; anyone helps    |
//! | done                   | every word is at state `seq`; a new txn may start |
//!
//! * **Snapshot**: read both intents; help the latest if pending; read the
//!   words; read both intents again. If they are unchanged, no transaction
//!   started in between, so the words read are the state at `seq`.
//! * **Transaction** (claiming a slot for a key, resetting a slot, or
//!   charging a multi-word policy): compare-and-swap the other intent from
//!   its value in the snapshot (`seq - 1`) to `seq + 1, pending`. That one
//!   CAS is the commit point: it succeeds only if nothing changed since the
//!   snapshot. Then every word the transaction changes is written by CAS
//!   from its pre-transaction value to `(tag = seq + 1, f(value))`, and the
//!   intent is marked done. Every step is idempotent and a pure function of
//!   the intent and the pre-transaction words, so any thread that sees a
//!   pending intent completes it: a process killed mid-transaction cannot
//!   wedge a bucket.
//! * A helper writes a word only after checking, *after* loading the word,
//!   that the intent is still pending: a stale helper can never overwrite a
//!   later state (the word it loaded would have to be unchanged, and a word
//!   the transaction must write cannot be unchanged once it is done).
//! * **Direct update** (policies whose whole state is one word, and
//!   concurrency leases): snapshot, decide, then one CAS of that word from
//!   the value read to the new value, tagged with the snapshot's seq. A slot
//!   reused by another key in between was rewritten with a newer tag by the
//!   claim, so the CAS fails: a stale update after reuse is impossible.
//! * **Duplicates are impossible**: a key is added only by a claim
//!   transaction proposed from a snapshot in which the key is absent, and
//!   the proposal fails if any transaction happened since.

pub(crate) mod memory;

use crate::abuse::{self, Penalty};
use crate::algo::Algorithm;
use crate::algo::{self, concurrency, sliding_log, LimitParams, Payload, Words};
use crate::sync::Atomic128;
use memory::Memory;

/// Slots per bucket (two under loom, so that models stay small and a
/// bucket fills after two keys).
#[cfg(not(loom))]
pub(crate) const SLOTS: usize = 8;
#[cfg(loom)]
pub(crate) const SLOTS: usize = 2;

/// Rewrites every word of the bucket with the transaction's tag, payloads
/// unchanged; committed instead of the transaction whose seq is a multiple
/// of [`RETAG_EVERY`] (see "Sequence numbers" in the module docs).
const OP_RETAG: u8 = 0;
const OP_CHARGE: u8 = 1;
const OP_REFUND: u8 = 2;
const OP_CLAIM: u8 = 3;
const OP_RESET: u8 = 4;
const OP_STRIKE: u8 = 5;
/// Sets the override factor in a slot's key word.
const OP_FACTOR: u8 = 6;
/// Changes nothing; makes concurrent proposals from older snapshots fail.
const OP_TOUCH: u8 = 7;

const PENDING: u128 = 1 << 59;

/// Every transaction whose seq is a multiple of this is a retag: so no word
/// of a bucket (other than a lease word) carries a tag more than 2^31
/// transactions old, and a tag equal to a transaction's seq can only have
/// been written by that transaction.
const RETAG_EVERY: u32 = 1 << 31;

/// A lease word's `a`: the holder's pid in the low [`PID_BITS`] bits (Linux
/// pids are below `PID_MAX_LIMIT` = 2^22), the lease's nonce above them.
const PID_BITS: u32 = 22;
pub(crate) const PID_MASK: u32 = (1 << PID_BITS) - 1;
/// Nonces a lease word goes through before its bucket must take a new seq.
const NONCES: u32 = 1 << (32 - PID_BITS);

/// The holder pid of a lease word's `a`.
#[inline(always)]
pub(crate) fn lease_holder(a: u32) -> u32 {
    a & PID_MASK
}

/// The nonce of a lease word's `a`.
#[inline(always)]
fn lease_nonce(a: u32) -> u32 {
    a >> PID_BITS
}

#[inline(always)]
fn tag(w: u128) -> u32 {
    w as u32
}
#[inline(always)]
fn payload(w: u128) -> Payload {
    Payload {
        a: (w >> 32) as u32,
        b: (w >> 64) as u64,
    }
}
#[inline(always)]
fn word(tag: u32, p: Payload) -> u128 {
    tag as u128 | (p.a as u128) << 32 | (p.b as u128) << 64
}

#[inline(always)]
fn seq(e: u128) -> u32 {
    e as u32
}
#[inline(always)]
fn intent(seq: u32, op: u8, slot: usize, cost: u64, arg: u64) -> u128 {
    debug_assert!(cost <= algo::MAX_COST && slot < 16);
    seq as u128
        | (cost as u128) << 32
        | (op as u128) << 56
        | PENDING
        | (slot as u128) << 60
        | (arg as u128) << 64
}
#[inline(always)]
fn intent_cost(e: u128) -> u64 {
    ((e >> 32) as u64) & 0xff_ffff
}
#[inline(always)]
fn intent_op(e: u128) -> u8 {
    ((e >> 56) & 7) as u8
}
#[inline(always)]
fn intent_slot(e: u128) -> usize {
    ((e >> 60) & 0xf) as usize
}
#[inline(always)]
fn intent_arg(e: u128) -> u64 {
    (e >> 64) as u64
}

/// What to do when a key arrives and its bucket has no free or expired slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhenFull {
    /// Evict the entry that would expire soonest (the default).
    #[default]
    Evict,
    /// Let the request through, uncounted.
    FailOpen,
    /// Deny the request.
    FailClosed,
}

/// How one policy's per-key state is laid out in a slot.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub limits: Vec<LimitParams>,
    /// Words per slot.
    pub words: usize,
    /// The policy's whole state is one word: charge by direct CAS.
    pub single_word: bool,
    /// The policy's first limit (the only one when `single_word`), kept
    /// inline for the hot path.
    pub first: LimitParams,
    /// The policy is one concurrency limit.
    pub concurrency: bool,
    /// Penalty box, with its two words at `penalty_offset`.
    pub penalty: Option<Penalty>,
    pub penalty_offset: usize,
}

impl Layout {
    pub fn new(limits: Vec<LimitParams>, penalty: Option<Penalty>) -> Layout {
        let limit_words: usize = limits.iter().map(|l| l.words()).sum();
        let words = limit_words + if penalty.is_some() { 2 } else { 0 };
        let concurrency = limits.len() == 1 && limits[0].algorithm == Algorithm::Concurrency;
        Layout {
            single_word: words == 1 && !concurrency,
            first: limits[0],
            concurrency,
            words,
            limits,
            penalty,
            penalty_offset: limit_words,
        }
    }
}

/// A decision before it is turned into the public [`crate::Decision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub retry_after_ns: u64,
    pub reset_after_ns: u64,
    pub limit_index: u32,
    /// Denied because the key is in the penalty box.
    pub banned: bool,
    /// This request's strike started the ban.
    pub new_ban: bool,
}

/// What a table operation did, for the engine's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Decided; `evicted` is set if a live entry was evicted to make room.
    Decided { verdict: Verdict, evicted: bool },
    /// No room, and the policy does not evict: the engine fails open or closed.
    Full { retry_after_ns: u64 },
}

/// What [`Table::decide`] does besides deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Charge nothing; a denial is no strike.
    Peek,
    /// Charge if allowed; a denial is a penalty-box strike.
    Charge,
    /// Charge nothing, but a denial is a strike (an item of a batch that
    /// some item denied).
    StrikeIfDenied,
}

/// A lease held by [`Table::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub bucket: u32,
    pub slot: u8,
    pub index: u16,
    pub word: u128,
}

/// Combines per-limit verdicts: a denial binds by largest retry-after, an
/// allow by fewest remaining; ties go to the lowest index.
/// The binding rule, for the limits of a policy and for the items of a
/// batch: does `a` (allowed, remaining, retry-after) bind over the current
/// `b`? A denial binds over an allow; among denials the longest retry-after,
/// among allows the fewest remaining; on a tie the earlier (`b`) stays.
#[inline(always)]
pub(crate) fn binds_over(a: (bool, u64, u64), b: (bool, u64, u64)) -> bool {
    match (a.0, b.0) {
        (false, true) => true,
        (true, false) => false,
        (false, false) => a.2 > b.2,
        (true, true) => a.1 < b.1,
    }
}

fn combine(
    limits: &[LimitParams],
    mut eval: impl FnMut(usize, &LimitParams) -> algo::Eval,
) -> Verdict {
    let mut best: Option<(usize, algo::Eval)> = None;
    let mut allowed = true;
    for (i, l) in limits.iter().enumerate() {
        let e = eval(i, l);
        let better = match &best {
            None => true,
            Some((_, b)) => binds_over(
                (e.allowed, e.remaining, e.retry_after_ns),
                (b.allowed, b.remaining, b.retry_after_ns),
            ),
        };
        allowed &= e.allowed;
        if better {
            best = Some((i, e));
        }
    }
    let (i, e) = best.expect("a policy has at least one limit");
    Verdict {
        allowed,
        limit: e.limit,
        remaining: e.remaining,
        retry_after_ns: if allowed { 0 } else { e.retry_after_ns },
        reset_after_ns: e.reset_after_ns,
        limit_index: i as u32,
        banned: false,
        new_ban: false,
    }
}

/// The words of one slot, read live (callers validate the snapshot after).
struct SlotView<'a> {
    words: &'a [Atomic128],
}

impl Words for SlotView<'_> {
    #[inline(always)]
    fn word(&self, i: usize) -> Payload {
        payload(self.words[i].load())
    }
}

/// One limit's words within a slot.
struct LimitView<'a, W: Words + ?Sized> {
    slot: &'a W,
    offset: usize,
}

impl<W: Words + ?Sized> Words for LimitView<'_, W> {
    #[inline(always)]
    fn word(&self, i: usize) -> Payload {
        self.slot.word(self.offset + i)
    }
}

/// The state of a key that has none yet.
struct Fresh;

impl Words for Fresh {
    fn word(&self, _: usize) -> Payload {
        Payload::default()
    }
}

#[derive(Clone, Copy)]
struct Snapshot {
    e0: u128,
    e1: u128,
    seq: u32,
}

enum Victim {
    Empty(usize),
    Expired(usize),
    /// A live entry and its expiry: evicted if the policy evicts.
    Live(usize, u64),
    /// Nothing may be evicted (every entry holds a live lease) until the
    /// given time.
    None(u64),
}

/// Why eviction should spare an entry; ordered from least to most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Protected {
    No,
    Penalty,
    Lease,
}

/// One policy's table.
pub(crate) struct Table {
    pub layout: Layout,
    pub when_full: WhenFull,
    mask: usize,
    bucket_units: usize,
    /// Index of the table's first unit within `mem`.
    base: usize,
    /// The override table: `overrides_len` units from `overrides_base`.
    overrides_base: usize,
    overrides_len: usize,
    mem: Memory,
}

impl Table {
    /// Units a table of `buckets` buckets needs for `layout`.
    pub fn units_needed(layout: &Layout, buckets: usize) -> usize {
        buckets * (2 + SLOTS + SLOTS * layout.words)
    }

    /// Buckets for at least `capacity` keys (a power of two).
    pub fn buckets_for(capacity: usize) -> usize {
        capacity.div_ceil(SLOTS).next_power_of_two().max(1)
    }

    /// A table over `mem[base..]`, which must hold `units_needed(layout,
    /// buckets)` units, all zero or left by an earlier table of the same layout.
    #[cfg(test)]
    pub fn new(
        layout: Layout,
        when_full: WhenFull,
        buckets: usize,
        mem: Memory,
        base: usize,
    ) -> Table {
        Self::with_overrides(layout, when_full, buckets, mem, base, 0, 0)
    }

    /// [`new`](Self::new), with `overrides_len` units of `mem` from
    /// `overrides_base` holding the policy's per-key quota overrides.
    pub fn with_overrides(
        layout: Layout,
        when_full: WhenFull,
        buckets: usize,
        mem: Memory,
        base: usize,
        overrides_base: usize,
        overrides_len: usize,
    ) -> Table {
        assert!(buckets.is_power_of_two());
        let bucket_units = 2 + SLOTS + SLOTS * layout.words;
        assert!(mem.units().len() >= base + buckets * bucket_units);
        assert!(overrides_base + overrides_len <= base || overrides_len == 0);
        Table {
            layout,
            when_full,
            mask: buckets - 1,
            bucket_units,
            base,
            overrides_base,
            overrides_len,
            mem,
        }
    }

    /// The memory the table lives in (and, before `base`, its policy's head).
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// Keys the table can hold.
    pub fn capacity(&self) -> usize {
        (self.mask + 1) * SLOTS
    }

    /// Bytes of memory the table uses.
    pub fn bytes(&self) -> usize {
        (self.mask + 1) * self.bucket_units * std::mem::size_of::<Atomic128>()
    }

    #[inline(always)]
    fn bucket(&self, b: usize) -> &[Atomic128] {
        let start = self.base + b * self.bucket_units;
        &self.mem.units()[start..start + self.bucket_units]
    }

    #[inline(always)]
    fn bucket_of(&self, h: u64) -> usize {
        // The low bits pick the bucket; keys compare on all 64 bits.
        h as usize & self.mask
    }

    #[inline(always)]
    fn key_unit(&self, j: usize) -> usize {
        2 + j * (1 + self.layout.words)
    }

    #[inline(always)]
    fn slot_words<'a>(&self, b: &'a [Atomic128], j: usize) -> &'a [Atomic128] {
        let start = 2 + j * (1 + self.layout.words) + 1;
        &b[start..start + self.layout.words]
    }

    /// The slots of a bucket in the order key `h` visits them: from the
    /// slot its hash prefers, so that a key usually sits where it looks
    /// first (one cache line past the intents).
    #[inline(always)]
    fn probe_order(h: u64) -> impl Iterator<Item = usize> {
        let first = (h >> 58) as usize;
        (0..SLOTS).map(move |i| (first + i) % SLOTS)
    }

    /// The latest completed transaction of bucket `b`, helping a pending one.
    #[inline]
    fn snapshot(&self, b: &[Atomic128]) -> Snapshot {
        loop {
            let e0 = b[0].load();
            let e1 = b[1].load();
            let (cur, other) = if seq(e1) == seq(e0).wrapping_add(1) {
                (e1, e0)
            } else {
                (e0, e1)
            };
            if !Self::consistent(e0, e1, cur, other) {
                // Read across a transaction boundary, or a corrupt pair (a
                // shared file written by someone else). In a live bucket the
                // two intents are consistent at every instant, so if intent 0
                // is unchanged since intent 1 was read, this pair is what the
                // bucket holds: repair it, then read again.
                if b[0].load() == e0 {
                    Self::repair(b, e0, e1);
                }
                continue;
            }
            if cur & PENDING != 0 {
                self.apply(b, cur);
                continue;
            }
            return Snapshot {
                e0,
                e1,
                seq: seq(cur),
            };
        }
    }

    /// The two intents are a state the protocol can reach: the latest one
    /// lives at index `seq & 1` and the other holds `seq - 1` (or the
    /// bucket is all zero), and the older one is not pending.
    #[inline(always)]
    fn consistent(e0: u128, e1: u128, cur: u128, other: u128) -> bool {
        if e0 == 0 && e1 == 0 {
            return true;
        }
        let cur_index = if cur == e0 { 0 } else { 1 };
        seq(cur) & 1 == cur_index && seq(other) == seq(cur).wrapping_sub(1) && other & PENDING == 0
    }

    /// Makes a corrupt intent pair consistent, deciding from intent 0 alone
    /// (so racing repairers agree): intent 0, which must hold an even seq,
    /// is taken as the latest, and intent 1 becomes a completed no-op one
    /// seq before it. Whatever transaction the corrupt words described may
    /// be lost; the slot words keep whatever they hold. Never called for a
    /// pair the protocol wrote.
    #[cold]
    fn repair(b: &[Atomic128], e0: u128, e1: u128) {
        let s0 = seq(e0);
        if s0 & 1 == 1 {
            let fixed = intent(s0.wrapping_add(1), OP_TOUCH, 0, 0, 0) & !PENDING;
            let _ = b[0].compare_exchange(e0, fixed);
            return;
        }
        let fixed = intent(s0.wrapping_sub(1), OP_TOUCH, 0, 0, 0) & !PENDING;
        let _ = b[1].compare_exchange(e1, fixed);
    }

    /// True if no transaction started since `s` was taken.
    #[inline(always)]
    fn still(b: &[Atomic128], s: &Snapshot) -> bool {
        b[0].load() == s.e0 && b[1].load() == s.e1
    }

    #[inline]
    fn find(&self, b: &[Atomic128], h: u64) -> Option<usize> {
        Self::probe_order(h).find(|&j| (b[self.key_unit(j)].load() >> 64) as u64 == h)
    }

    /// Commits transaction `snap.seq + 1`; on success, completes it.
    fn transact(
        &self,
        b: &[Atomic128],
        snap: &Snapshot,
        op: u8,
        slot: usize,
        cost: u64,
        arg: u64,
    ) -> bool {
        let s1 = snap.seq.wrapping_add(1);
        if s1 % RETAG_EVERY == 0 && op != OP_RETAG {
            // This seq belongs to a retag; the caller takes a new snapshot.
            self.transact(b, snap, OP_RETAG, 0, 0, 0);
            return false;
        }
        let idx = (s1 & 1) as usize;
        let expected = if idx == 0 { snap.e0 } else { snap.e1 };
        let e = intent(s1, op, slot, cost, arg);
        if b[idx].compare_exchange(expected, e).is_err() {
            return false;
        }
        self.apply(b, e);
        true
    }

    /// Writes one word of transaction `e` (see the module docs); `None` if
    /// the transaction turned out to be complete already.
    #[inline]
    fn write(
        b: &[Atomic128],
        unit: &Atomic128,
        e: u128,
        f: impl Fn(Payload) -> Payload,
    ) -> Option<Payload> {
        let s1 = seq(e);
        let idx = (s1 & 1) as usize;
        loop {
            let cur = unit.load();
            if tag(cur) == s1 {
                return Some(payload(cur));
            }
            if b[idx].load() != e {
                return None;
            }
            let new = word(s1, f(payload(cur)));
            if unit.compare_exchange(cur, new).is_ok() {
                return Some(payload(new));
            }
        }
    }

    /// Completes transaction `e` (idempotent; any thread may call it).
    /// An intent naming a slot the bucket does not have (a corrupt shared
    /// file) is completed as a no-op.
    fn apply(&self, b: &[Atomic128], e: u128) {
        let slot = intent_slot(e);
        if slot >= SLOTS {
            let _ = b[(seq(e) & 1) as usize].compare_exchange(e, e & !PENDING);
            return;
        }
        let words = self.slot_words(b, slot);
        let done = match intent_op(e) {
            OP_RETAG => (0..SLOTS).all(|j| {
                Self::write(b, &b[self.key_unit(j)], e, |p| p).is_some()
                    && (self.layout.concurrency
                        || self
                            .slot_words(b, j)
                            .iter()
                            .all(|w| Self::write(b, w, e, |p| p).is_some()))
            }),
            OP_CLAIM => {
                let (h, factor) = (intent_arg(e), intent_cost(e) as u32);
                Self::write(b, &b[self.key_unit(slot)], e, |_| Payload {
                    a: factor,
                    b: h,
                })
                .is_some()
                    && words
                        .iter()
                        .all(|w| Self::write(b, w, e, |_| Payload::default()).is_some())
            }
            // A reset frees the slot: the key word goes back to empty.
            OP_RESET => {
                Self::write(b, &b[self.key_unit(slot)], e, |_| Payload::default()).is_some()
                    && words
                        .iter()
                        .all(|w| Self::write(b, w, e, |_| Payload::default()).is_some())
            }
            OP_FACTOR => {
                let factor = intent_cost(e) as u32;
                Self::write(b, &b[self.key_unit(slot)], e, |p| Payload {
                    a: factor,
                    ..p
                })
                .is_some()
            }
            OP_TOUCH => true,
            OP_STRIKE => {
                let (Some(pen), off, now) = (
                    self.layout.penalty,
                    self.layout.penalty_offset,
                    intent_arg(e),
                ) else {
                    return;
                };
                match Self::write(b, &words[off], e, |p| abuse::strike(&pen, p, now)) {
                    // A strike word reset to 0 means this strike starts a ban.
                    Some(strikes) => Self::write(b, &words[off + 1], e, |p| {
                        if strikes.b == 0 {
                            abuse::ban(&pen, p, now)
                        } else {
                            p
                        }
                    })
                    .is_some(),
                    None => false,
                }
            }
            op @ (OP_CHARGE | OP_REFUND) => {
                let refund = op == OP_REFUND;
                let (cost, now) = (intent_cost(e), intent_arg(e));
                // The key word's override is stable during a charge: only
                // CLAIM and FACTOR transactions write it.
                let factor = payload(b[self.key_unit(slot)].load()).a;
                self.with_limits(factor, |limits| {
                    limits
                        .iter()
                        .all(|l| Self::apply_limit(b, words, l, e, refund, cost, now))
                })
            }
            _ => true,
        };
        if done {
            // Mark done; failure means another helper already did.
            let _ = b[(seq(e) & 1) as usize].compare_exchange(e, e & !PENDING);
        }
    }

    fn apply_limit(
        b: &[Atomic128],
        words: &[Atomic128],
        l: &LimitParams,
        e: u128,
        refund: bool,
        cost: u64,
        now: u64,
    ) -> bool {
        let w = &words[l.offset..l.offset + l.words()];
        match (l.algorithm, refund) {
            (Algorithm::Gcra | Algorithm::FixedWindow | Algorithm::SlidingWindow, false) => {
                Self::write(b, &w[0], e, |p| algo::charge_word(l, p, cost, now)).is_some()
            }
            (Algorithm::Gcra | Algorithm::FixedWindow | Algorithm::SlidingWindow, true) => {
                Self::write(b, &w[0], e, |p| algo::refund_word(l, p, cost, now)).is_some()
            }
            (Algorithm::SlidingLog, _) => {
                let n = l.count as usize;
                let meta = Self::write(b, &w[0], e, |m| {
                    if refund {
                        let keeper = sliding_log::refund_keeper(l, m, cost);
                        sliding_log::refund_meta(l, m, cost, payload(w[1 + keeper].load()))
                    } else {
                        sliding_log::charge_meta(l, m, cost, now)
                    }
                });
                let Some(meta) = meta else { return false };
                let (from, len, value) = sliding_log::entries_written(l, meta, refund);
                (0..len).all(|i| Self::write(b, &w[1 + (from + i) % n], e, |_| value).is_some())
            }
            // Leases change by direct CAS only.
            (Algorithm::Concurrency, _) => true,
        }
    }

    /// The policy's limits for a key with override `factor` (0: none).
    #[inline(always)]
    fn with_limits<R>(&self, factor: u32, f: impl FnOnce(&[LimitParams]) -> R) -> R {
        if factor == 0 {
            // The common case: no copy.
            return f(&self.layout.limits);
        }
        let mut buf = [self.layout.first; crate::policy::MAX_LIMITS];
        let n = self.layout.limits.len();
        for (d, l) in buf.iter_mut().zip(&self.layout.limits) {
            *d = l.scaled(factor);
        }
        f(&buf[..n])
    }

    /// The verdict on `words` (a slot, or `Fresh`) under `limits`.
    #[inline]
    fn verdict_of(
        &self,
        limits: &[LimitParams],
        words: &(impl Words + ?Sized),
        cost: u64,
        now: u64,
    ) -> Verdict {
        let view = |l: &LimitParams| LimitView {
            slot: words,
            offset: l.offset,
        };
        if cost > algo::MAX_COST {
            let mut v = combine(limits, |_, l| algo::evaluate(l, &view(l), 0, now));
            v.allowed = false;
            v.retry_after_ns = u64::MAX;
            return v;
        }
        combine(limits, |_, l| algo::evaluate(l, &view(l), cost, now))
    }

    /// The verdict for a key with no state yet.
    pub fn fresh_verdict(&self, h: u64, cost: u64, now: u64) -> Verdict {
        let now = now.min(algo::MAX_TIME_NS);
        self.with_limits(self.override_of(h), |limits| {
            self.verdict_of(limits, &Fresh, cost, now)
        })
    }

    /// Single-word policies: the verdict on one word's payload.
    #[inline(always)]
    fn decide_single(&self, l: &LimitParams, p: Payload, cost: u64, now: u64) -> Verdict {
        let e = match l.algorithm {
            Algorithm::Gcra => algo::gcra::evaluate(l, p, cost.min(algo::MAX_COST + 1), now),
            Algorithm::FixedWindow => {
                algo::fixed_window::evaluate(l, p, cost.min(algo::MAX_COST + 1), now)
            }
            _ => algo::sliding_window::evaluate(l, p, cost.min(algo::MAX_COST + 1), now),
        };
        if cost > algo::MAX_COST {
            return self.verdict_of(std::slice::from_ref(l), &[p][..], cost, now);
        }
        Verdict {
            allowed: e.allowed,
            limit: e.limit,
            remaining: e.remaining,
            retry_after_ns: e.retry_after_ns,
            reset_after_ns: e.reset_after_ns,
            limit_index: 0,
            banned: false,
            new_ban: false,
        }
    }

    /// When slot `j`'s state becomes equivalent to fresh (every limit, and
    /// the penalty box: strikes until their TAT, a ban's escalation level
    /// until the ban ended `max_ban` ago), and whether eviction must spare
    /// it: a key in the penalty box (evicted only when every other entry of
    /// the bucket is one too) or holding a live lease (never evicted).
    fn expiry(&self, b: &[Atomic128], j: usize, now: u64) -> (u64, Protected) {
        let view = SlotView {
            words: self.slot_words(b, j),
        };
        let limits = self
            .layout
            .limits
            .iter()
            .map(|l| {
                algo::expiry(
                    l,
                    &LimitView {
                        slot: &view,
                        offset: l.offset,
                    },
                    now,
                )
            })
            .max()
            .unwrap_or(0);
        if self.layout.concurrency && limits > now {
            return (limits, Protected::Lease);
        }
        if let Some(pen) = &self.layout.penalty {
            let off = self.layout.penalty_offset;
            let (strikes, ban) = (view.word(off), view.word(off + 1));
            let forgiven = if ban.b == 0 {
                0
            } else {
                ban.b.saturating_add(pen.max_ban_ns)
            };
            let penalty = strikes.b.max(forgiven);
            if penalty > now {
                return (limits.max(penalty), Protected::Penalty);
            }
        }
        (limits, Protected::No)
    }

    /// A slot for a new key: a free one, else an expired one, else the live
    /// one that would expire soonest, sparing keys in the penalty box while
    /// there is any other; a key holding a live lease is never a victim.
    fn choose_victim(&self, b: &[Atomic128], h: u64, now: u64) -> Victim {
        if let Some(j) =
            Self::probe_order(h).find(|&j| (b[self.key_unit(j)].load() >> 64) as u64 == 0)
        {
            return Victim::Empty(j);
        }
        let mut best: Option<(Protected, u64, usize)> = None;
        for j in 0..SLOTS {
            let (exp, protected) = self.expiry(b, j, now);
            if exp <= now {
                return Victim::Expired(j);
            }
            if best.is_none_or(|(p, e, _)| (protected, exp) < (p, e)) {
                best = Some((protected, exp, j));
            }
        }
        let (protected, exp, j) = best.expect("SLOTS > 0");
        if protected == Protected::Lease {
            // The least protected entry holds a live lease, so every entry
            // does; `exp` is the soonest of them, when one frees.
            return Victim::None(exp);
        }
        Victim::Live(j, exp)
    }

    /// Claims a slot for `h`, absent from snapshot `snap`: a free slot, an
    /// expired one, or (if the policy evicts) the live one expiring soonest.
    /// `Err(outcome)` when the bucket is full and the policy does not evict.
    /// `Ok(evicted)` says whether a live entry made room; the claim may also
    /// have lost a race, and the caller simply looks again.
    fn claim(&self, b: &[Atomic128], snap: &Snapshot, h: u64, now: u64) -> Result<bool, Outcome> {
        let (j, evicted) = match self.choose_victim(b, h, now) {
            Victim::Empty(j) | Victim::Expired(j) => (j, false),
            Victim::Live(j, _) if self.when_full == WhenFull::Evict => (j, true),
            Victim::Live(_, exp) | Victim::None(exp) => {
                if !Self::still(b, snap) {
                    return Ok(false);
                }
                return Err(Outcome::Full {
                    retry_after_ns: algo::until(exp, now),
                });
            }
        };
        Ok(self.transact(b, snap, OP_CLAIM, j, self.override_of(h) as u64, h) && evicted)
    }

    /// `decide` with a charge flag (the unit tests' shorthand).
    #[cfg(any(test, loom))]
    pub fn check(&self, h: u64, cost: u64, now: u64, charge: bool) -> Outcome {
        self.decide(h, cost, now, if charge { Mode::Charge } else { Mode::Peek })
    }

    /// Decides `cost` for key hash `h` at `now` as `mode` says.
    #[inline]
    pub fn decide(&self, h: u64, cost: u64, now: u64, mode: Mode) -> Outcome {
        match mode {
            Mode::Peek => self.check_mode(h, cost, now, false, false),
            Mode::Charge => self.check_mode(h, cost, now, true, true),
            Mode::StrikeIfDenied => self.check_mode(h, cost, now, false, true),
        }
    }

    #[inline(always)]
    fn check_mode(
        &self,
        h: u64,
        cost: u64,
        now: u64,
        charge: bool,
        strike_denials: bool,
    ) -> Outcome {
        let now = now.min(algo::MAX_TIME_NS);
        let b = self.bucket(self.bucket_of(h));
        let mut evicted = false;
        loop {
            let snap = self.snapshot(b);
            let j = match self.find(b, h) {
                Some(j) => j,
                None => {
                    let verdict = self.fresh_verdict(h, cost, now);
                    if !charge || !verdict.allowed || cost == 0 {
                        if !Self::still(b, &snap) {
                            continue;
                        }
                        return Outcome::Decided { verdict, evicted };
                    }
                    match self.claim(b, &snap, h, now) {
                        Ok(e) => {
                            evicted |= e;
                            continue;
                        }
                        Err(full) => return full,
                    }
                }
            };
            let factor = payload(b[self.key_unit(j)].load()).a;
            if self.layout.single_word {
                let l = self.layout.first.scaled(factor);
                let unit = &self.slot_words(b, j)[0];
                let cur = unit.load();
                let verdict = self.decide_single(&l, payload(cur), cost, now);
                if !Self::still(b, &snap) {
                    continue;
                }
                if !charge || !verdict.allowed || cost == 0 {
                    return Outcome::Decided { verdict, evicted };
                }
                let new = algo::charge_word(&l, payload(cur), cost, now);
                if unit.compare_exchange(cur, word(snap.seq, new)).is_ok() {
                    return Outcome::Decided { verdict, evicted };
                }
                continue;
            }
            let view = SlotView {
                words: self.slot_words(b, j),
            };
            let mut verdict =
                self.with_limits(factor, |limits| self.verdict_of(limits, &view, cost, now));
            let mut strike = None;
            if let Some(pen) = &self.layout.penalty {
                let off = self.layout.penalty_offset;
                let until = abuse::banned_until(view.word(off + 1));
                if until > now {
                    verdict.allowed = false;
                    verdict.banned = true;
                    verdict.remaining = 0;
                    verdict.retry_after_ns = until - now;
                    verdict.reset_after_ns = verdict.reset_after_ns.max(until - now);
                } else if !verdict.allowed && strike_denials && cost <= algo::MAX_COST {
                    // This denial is a strike; the one over budget starts a ban.
                    if abuse::strike(pen, view.word(off), now).b == 0 {
                        let ban = abuse::ban(pen, view.word(off + 1), now);
                        verdict.banned = true;
                        verdict.new_ban = true;
                        verdict.remaining = 0;
                        verdict.retry_after_ns = ban.b - now;
                        verdict.reset_after_ns = verdict.reset_after_ns.max(ban.b - now);
                    }
                    strike = Some(());
                }
            }
            if !Self::still(b, &snap) {
                continue;
            }
            if strike.is_some() {
                if self.transact(b, &snap, OP_STRIKE, j, 0, now) {
                    return Outcome::Decided { verdict, evicted };
                }
                continue;
            }
            if !charge || !verdict.allowed || cost == 0 || self.layout.concurrency {
                return Outcome::Decided { verdict, evicted };
            }
            if self.transact(b, &snap, OP_CHARGE, j, cost, now) {
                return Outcome::Decided { verdict, evicted };
            }
        }
    }

    /// Gives back `cost` previously charged to `h`. Returns false if the
    /// key holds no state (never seen, reset or evicted).
    pub fn refund(&self, h: u64, cost: u64, now: u64) -> bool {
        let now = now.min(algo::MAX_TIME_NS);
        if self.layout.concurrency {
            return false;
        }
        let cost = cost.min(algo::MAX_COST);
        let b = self.bucket(self.bucket_of(h));
        loop {
            let snap = self.snapshot(b);
            let Some(j) = self.find(b, h) else {
                if Self::still(b, &snap) {
                    return false;
                }
                continue;
            };
            if cost == 0 {
                // Nothing to give back; report whether the key has state.
                if Self::still(b, &snap) {
                    return true;
                }
                continue;
            }
            if self.layout.single_word {
                let unit = &self.slot_words(b, j)[0];
                // The override is read inside the snapshot, like the state.
                let factor = payload(b[self.key_unit(j)].load()).a;
                let cur = unit.load();
                if !Self::still(b, &snap) {
                    continue;
                }
                let l = self.layout.first.scaled(factor);
                let new = algo::refund_word(&l, payload(cur), cost, now);
                if unit.compare_exchange(cur, word(snap.seq, new)).is_ok() {
                    return true;
                }
                continue;
            }
            if self.transact(b, &snap, OP_REFUND, j, cost, now) {
                return true;
            }
        }
    }

    /// Forgets all state of `h`. Returns false if there was none.
    pub fn reset(&self, h: u64) -> bool {
        let b = self.bucket(self.bucket_of(h));
        loop {
            let snap = self.snapshot(b);
            let Some(j) = self.find(b, h) else {
                if Self::still(b, &snap) {
                    return false;
                }
                continue;
            };
            if self.transact(b, &snap, OP_RESET, j, 0, 0) {
                return true;
            }
        }
    }

    /// Takes a concurrency lease for `h` held by `holder` until `now + ttl`.
    pub fn acquire(&self, h: u64, now: u64, holder: u32) -> (Outcome, Option<Lease>) {
        let now = now.min(algo::MAX_TIME_NS);
        let l = self.layout.limits[0];
        let bi = self.bucket_of(h);
        let b = self.bucket(bi);
        let mut evicted = false;
        loop {
            let snap = self.snapshot(b);
            let j = match self.find(b, h) {
                Some(j) => j,
                None => {
                    let verdict = self.fresh_verdict(h, 1, now);
                    if !verdict.allowed {
                        return (Outcome::Decided { verdict, evicted }, None);
                    }
                    match self.claim(b, &snap, h, now) {
                        Ok(e) => {
                            evicted |= e;
                            continue;
                        }
                        Err(full) => return (full, None),
                    }
                }
            };
            let words = self.slot_words(b, j);
            let view = SlotView { words };
            let verdict = self.verdict_of(&self.layout.limits, &view, 1, now);
            let free = concurrency::free_lease(&l, &view, now);
            if !Self::still(b, &snap) {
                continue;
            }
            if !verdict.allowed {
                return (Outcome::Decided { verdict, evicted }, None);
            }
            let Some(i) = free else { continue };
            let cur = words[i].load();
            if payload(cur).b > now {
                continue;
            }
            // The lease word must differ from every earlier lease of this
            // position that a stale permit may still name: the tag (the
            // bucket's seq) changes with every transaction, the nonce with
            // every lease under one seq; when the nonces run out, a no-op
            // transaction gives the bucket a new seq first.
            let nonce = (lease_nonce(payload(cur).a) + 1) % NONCES;
            if nonce == 0 && tag(cur) == snap.seq {
                self.transact(b, &snap, OP_TOUCH, 0, 0, 0);
                continue;
            }
            let new = word(
                snap.seq,
                Payload {
                    a: (holder & PID_MASK) | nonce << PID_BITS,
                    b: now.saturating_add(l.period_ns).max(1),
                },
            );
            if words[i].compare_exchange(cur, new).is_err() {
                continue;
            }
            let lease = Lease {
                bucket: bi as u32,
                slot: j as u8,
                index: i as u16,
                word: new,
            };
            // A lease on a key that held none makes it unevictable, but a
            // claimer may have judged it expired from an older snapshot and
            // not committed yet: fence such claims before handing out the
            // permit (see `fence_lease`).
            if verdict.remaining + 1 == l.count && !self.fence_lease(b, &snap, &lease) {
                continue; // the lease was wiped by a claim: take another
            }
            return (Outcome::Decided { verdict, evicted }, Some(lease));
        }
    }

    /// Makes a lease just written by direct CAS safe from claims: a claim
    /// commits only if no transaction started since its snapshot, so a
    /// no-op transaction after the lease was written fails every claim
    /// decided before it, and every later claim sees the live lease. If
    /// some transaction started since `snap`, a claim may have been decided
    /// on the old words: complete whatever is pending, and keep the lease
    /// only if it is still there (then fence again from the new snapshot).
    /// False if the lease was wiped (nothing to undo: its word is gone).
    fn fence_lease(&self, b: &[Atomic128], snap: &Snapshot, lease: &Lease) -> bool {
        let mut snap = *snap;
        loop {
            if self.transact(b, &snap, OP_TOUCH, 0, 0, 0) {
                return true;
            }
            snap = self.snapshot(b);
            let unit = &self.slot_words(b, lease.slot as usize)[lease.index as usize];
            if unit.load() != lease.word {
                return false;
            }
        }
    }

    /// The override entry units.
    fn override_units(&self) -> &[Atomic128] {
        &self.mem.units()[self.overrides_base..self.overrides_base + self.overrides_len]
    }

    /// The quota override of key `h` in thousandths (0: none).
    #[inline]
    pub fn override_of(&self, h: u64) -> u32 {
        let units = self.override_units();
        let n = units.len();
        for i in 0..n {
            let p = payload(units[((h >> 32) as usize + i) % n].load());
            if p.b == h {
                return p.a;
            }
            if p.b == 0 {
                return 0;
            }
        }
        0
    }

    /// Sets (or with 0, clears) the quota override of key `h`, in
    /// thousandths, and applies it to the key's live state at once.
    /// Override entries are keyed once and never removed (a cleared one
    /// keeps its key with factor 0), so racing setters of one key always
    /// meet on the same entry.
    pub fn set_override(&self, h: u64, factor_milli: u32) -> Result<(), crate::Error> {
        let units = self.override_units();
        let n = units.len();
        let mut done = false;
        'probe: for i in 0..n {
            let unit = &units[((h >> 32) as usize + i) % n];
            let mut cur = unit.load();
            loop {
                let p = payload(cur);
                if p.b != h && p.b != 0 {
                    continue 'probe;
                }
                if p.b == 0 && factor_milli == 0 {
                    break 'probe; // nothing to clear
                }
                let new = word(
                    0,
                    Payload {
                        a: factor_milli,
                        b: h,
                    },
                );
                match unit.compare_exchange(cur, new) {
                    Ok(_) => {
                        done = true;
                        break 'probe;
                    }
                    Err(actual) => cur = actual,
                }
            }
        }
        if !done && factor_milli != 0 {
            return Err(crate::Error::Unsupported(format!(
                "the policy's override table is full ({n} keys)"
            )));
        }
        // Bring the live slot in line; with no slot, a no-op transaction
        // makes any claim proposed from an older snapshot (which may have
        // read the old override) fail and read it again.
        let b = self.bucket(self.bucket_of(h));
        loop {
            let snap = self.snapshot(b);
            match self.find(b, h) {
                Some(j) if payload(b[self.key_unit(j)].load()).a == factor_milli => {
                    if Self::still(b, &snap) {
                        return Ok(());
                    }
                }
                Some(j) => {
                    if self.transact(b, &snap, OP_FACTOR, j, factor_milli as u64, 0) {
                        return Ok(());
                    }
                }
                None => {
                    if self.transact(b, &snap, OP_TOUCH, 0, 0, 0) {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Releases a lease. False if it had already expired and been reused,
    /// or the key was evicted or reset.
    pub fn release(&self, lease: &Lease) -> bool {
        let Some(unit) = self.lease_unit(lease) else {
            return false;
        };
        // The whole word must match: tag and nonce make a permit name one
        // lease only, so a second release (or a stale copy) frees nothing.
        // The freed word keeps its tag and nonce for the next lease here.
        let freed = word(
            tag(lease.word),
            Payload {
                a: payload(lease.word).a,
                b: 0,
            },
        );
        unit.compare_exchange(lease.word, freed).is_ok()
    }

    fn lease_unit(&self, lease: &Lease) -> Option<&Atomic128> {
        if !self.layout.concurrency
            || lease.bucket as usize > self.mask
            || lease.slot as usize >= SLOTS
            || lease.index as usize >= self.layout.words
        {
            return None;
        }
        let b = self.bucket(lease.bucket as usize);
        Some(&self.slot_words(b, lease.slot as usize)[lease.index as usize])
    }

    /// True if `lease` is a well-formed lease position of this table.
    pub fn lease_in_range(&self, lease: &Lease) -> bool {
        self.lease_unit(lease).is_some()
    }

    /// Releases every live lease held by `holder`; returns how many.
    pub fn release_holder(&self, holder: u32) -> u64 {
        if !self.layout.concurrency {
            return 0;
        }
        let mut n = 0;
        for bi in 0..=self.mask {
            let b = self.bucket(bi);
            for j in 0..SLOTS {
                for unit in self.slot_words(b, j) {
                    let cur = unit.load();
                    let p = payload(cur);
                    if p.b != 0
                        && lease_holder(p.a) == holder & PID_MASK
                        && unit
                            .compare_exchange(cur, word(tag(cur), Payload { a: p.a, b: 0 }))
                            .is_ok()
                    {
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// Keys currently held (a scan: for statistics, not the hot path).
    pub fn occupancy(&self) -> u64 {
        (0..=self.mask)
            .map(|bi| {
                let b = self.bucket(bi);
                (0..SLOTS)
                    .filter(|&j| (b[self.key_unit(j)].load() >> 64) as u64 != 0)
                    .count() as u64
            })
            .sum()
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;
