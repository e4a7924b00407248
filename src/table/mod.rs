//! The sharded atomic table: fixed capacity, allocated once, updated by
//! compare-and-swap only.
//!
//! A policy of one GCRA limit and no penalty box (`Layout::packed`) keeps
//! the packed table instead (`packed/`: one 16-byte word per key, four to a
//! line); [`Table`] hands every operation of such a policy to it, and
//! everything below describes the *slots table* that every other policy
//! keeps.
//!
//! # Layout
//!
//! A table is an array of buckets; a key lives in one of two buckets its
//! hash picks — its *first* (`hash & (buckets - 1)`) or its *second* (bits
//! 32.. of the hash; never the first) — in one of [`SLOTS`] slots. Every
//! unit is an [`Atomic128`] word. A bucket is:
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
//! | 32..56  | cost    | cost of a charge or refund; the override factor of a claim or factor op |
//! | 56..59  | op      | `Op`: retag, charge, refund, claim, reset, strike, factor, touch |
//! | 59      | pending | set until every word of the transaction is written  |
//! | 60..64  | slot    | the slot the transaction changes                    |
//! | 64..128 | arg     | `now` for charge/refund/strike, the key hash for a claim |
//!
//! A lease word's `a` is a `LeaseId`: the holder's pid in bits 0..22, the
//! lease's nonce in bits 22..32; its `b` is the lease's expiry (0 = free).
//!
//! These layouts are typed in `words.rs` ([`Word`], [`Intent`], [`LeaseId`]),
//! the only code that shifts or masks a word. The module splits by concern:
//! `words.rs` (the words), `txn.rs` (snapshots and transactions: the
//! protocol below), `lease.rs` (concurrency leases), `overrides.rs` (per-key
//! quota overrides), and here the table, its checks, refunds, resets and
//! the choice of a slot for a new key.
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
//! * **A claim never wipes a charge it could not see.** A direct update
//!   commits no transaction, so it may land on a slot's state word after a
//!   claimer found the slot's key expired and committed. A CLAIM of a
//!   single-word policy's slot therefore empties the state word first, by
//!   one CAS from a value expired at the helper's `now` (`take_expired`),
//!   and lands on nothing if the key is live again (a write too: the key
//!   word, as it is, with the claim's tag, so that helpers judging at
//!   other times cannot land it after); only an EVICT (the claimer chose
//!   the live key as its victim) overwrites it regardless. A MOVE-IN into
//!   a slot whose key had expired is checked the same way.
//!   loom: `loom_a_claim_of_an_expired_slot_racing_a_charge_of_its_key_
//!   keeps_the_charge`. (A new concurrency lease fences claims itself:
//!   `fence_lease`.)
//! * **Duplicates are impossible**: a key is added only by a claim
//!   transaction proposed from a snapshot in which the key is absent, and
//!   the proposal fails if any transaction happened since.
//!
//! # Two buckets per key
//!
//! A new key goes to a free slot of either bucket before an expired one
//! (whose key may come back), then to its first bucket (first-fit: most
//! keys are then found without reading the second bucket), so a table
//! fills far further before it must evict a live key than with one bucket
//! per key. A key is
//! looked for in its first bucket, then in its second. Every claim of a key is serialised through
//! its **first** bucket's intents, so that two threads can never put it in
//! both:
//!
//! * A claim in the first bucket is a CLAIM there, proposed from a snapshot
//!   of the first bucket, after which the key was looked for in the second
//!   bucket and not found.
//! * A claim in the second bucket is committed in the **first** bucket as a
//!   TOUCH whose `arg` is the key hash, `slot` the chosen slot of the second
//!   bucket and `cost` the low 24 bits of the second bucket's seq `s` in the
//!   snapshot the slot was chosen from. Completing it (any thread does, as
//!   for every pending intent) means: while the second bucket's latest
//!   transaction is still `s` and done, commit the CLAIM there as
//!   transaction `s + 1`; once its latest is anything else, the claim is
//!   made or can never be, and the TOUCH is marked done. The second
//!   bucket's intents are read without helping them, so completing one
//!   TOUCH never completes another (no recursion, even through a cycle
//!   in a corrupt file).
//! * So a key enters its second bucket only while a TOUCH naming it is
//!   pending in its first bucket, and a snapshot of the first bucket
//!   completes every pending TOUCH before it returns. A claim in the first
//!   bucket proposed from a snapshot at seq `x` (in which no TOUCH is
//!   pending) commits only if the first bucket is still at `x`: no claim of
//!   the key in the second bucket was committed after `x`, and none committed
//!   before `x` can still land (its TOUCH is done). The key's absence from
//!   the second bucket, looked up after the snapshot, therefore holds until
//!   the commit. Conversely a TOUCH commits only from a snapshot in which
//!   the key is absent from the first bucket, which it then stays until the
//!   TOUCH is done. loom: `loom_a_key_claimed_in_its_two_buckets_at_once_
//!   lands_in_one_slot`, `loom_racing_claims_through_the_first_bucket_land_
//!   in_one_slot`.
//! * Everything else about a key in its second bucket (charges, refunds,
//!   resets, strikes, leases, overrides) runs on that bucket's own intents,
//!   as for any key there.
//! * The 24-bit seq in the TOUCH is an ABA bound: a helper that read the
//!   second bucket's intents and then stalled while that bucket ran exactly
//!   a multiple of 2^24 transactions, ending done, could install a stale
//!   claim (the key placed afresh, possibly beside a copy claimed since).

//! # Moving a key
//!
//! Two candidate buckets alone fill a table to about 71% before a claim
//! must evict a live key (and every such eviction resets that key's
//! limits). So before a claim evicts a live entry (or reports the table
//! full), it looks for a key that can **move** out of one of its two full
//! buckets into that key's own second bucket: directly (a free or expired
//! slot there), or at the end of a chain of such moves — breadth first,
//! within [`MOVE_BUDGET`] bucket examinations, so that a flood of new keys
//! into a really full table costs a bounded amount per key. The move
//! proposed is the chain's last (into the free slot); the claim then looks
//! again, and the next search finds the chain one move shorter. Only a key
//! in its *first* bucket moves, and only to its second, so every move is
//! serialised through the key's first bucket like its claims, and keys
//! never move back and forth. With it, 93% of the capacity in live,
//! uniformly random keys fits without a live eviction (the first came at
//! 0.937–0.953 of 2^20 slots and 0.960–0.964 of 2^17 in three tables each:
//! `benches/memory.rs`, `first_live_eviction_slots`; a search of direct
//! moves and one move before them, within 16 examinations, reached 92–94%). Concurrency
//! policies never move keys (a key holding a live lease is never evicted
//! anyway).
//!
//! A move of key `k` from bucket `F` (its first, slot `i`) to slot `j` of
//! its second bucket `S` is a **MOVE** transaction in `F` (`arg` = `k`,
//! `slot` = `j`, `cost` = the low 24 bits of `S`'s seq `s` when `j` was
//! chosen). Completing it (any thread does):
//!
//! 1. **Freeze**: every state word of `k`'s slot is rewritten with the
//!    MOVE's tag, payload unchanged. A direct update read before the MOVE
//!    now fails its CAS (the word changed); one that landed before the
//!    freeze is in the frozen value. Nothing else writes the slot while the
//!    MOVE is pending: its key word changes only by transactions of `F`.
//! 2. **Install**: while `S`'s latest transaction is still `s` and done,
//!    commit a **MOVE-IN** there as `s + 1` (`arg` = `k`, `slot` = `j`,
//!    `cost` = `i`), which writes `k`'s key word and copies every frozen
//!    state word of `F`'s slot `i` into slot `j`. A MOVE-IN found pending is
//!    completed; nothing else of `S` is helped (as for a TOUCH). A MOVE-IN's
//!    words are a pure function of its intent and the frozen source, which
//!    cannot change while it is pending: `F`'s MOVE is not done before the
//!    MOVE-IN is. A late helper of a done MOVE-IN reads whatever the source
//!    holds by then, and its CAS fails: the target word has its new tag.
//! 3. **Outcome**: once no MOVE-IN of `k` is pending in `S`, `k`'s key word
//!    in `F` is written (once, with the MOVE's tag): empty if `S`'s slot `j`
//!    holds `k`, unchanged if it does not (`S` moved on without it, or
//!    evicted it again since). Helpers may read slot `j` at different
//!    moments, but the first write wins, and either outcome leaves `k` in
//!    at most one slot: `k` can enter `S` only through this MOVE-IN.
//!
//! A reader of `k` snapshots `F` first, which completes a pending MOVE, so
//! it finds `k` either still in `F` or (looking on) in `S`, never half-way.
//! loom: `loom_a_charge_racing_a_move_of_its_key_is_kept_and_the_key_stays_
//! single`, `loom_a_move_racing_a_charge_and_a_claim_keeps_every_key_single_
//! and_exact`, `loom_racing_moves_of_one_key_land_it_in_one_slot_with_its_
//! state`. A MOVE or MOVE-IN in a corrupt file naming a key or slot that is
//! not there completes as a no-op.

mod lease;
pub(crate) mod memory;
mod overrides;
pub(crate) mod packed;
mod txn;
mod words;

use crate::abuse::{self, Penalty};
use crate::algo::Algorithm;
use crate::algo::{self, LimitParams, Payload, Words};
use crate::sync::{self, Atomic128, HintU32};
pub(crate) use lease::Lease;
use memory::Memory;
use std::sync::atomic::Ordering::Relaxed;
use txn::Snapshot;
use words::{Intent, LeaseId, Op, Word};

/// Slots per bucket (two under loom, so that models stay small and a
/// bucket fills after two keys).
#[cfg(not(loom))]
pub(crate) const SLOTS: usize = 8;
#[cfg(loom)]
pub(crate) const SLOTS: usize = 2;

/// Units (16 bytes) of a slots-table bucket whose slots keep `words` state
/// words each: two of intents, then every slot's key word and state words.
pub(crate) const fn bucket_units(words: usize) -> usize {
    2 + SLOTS * (1 + words)
}

/// The unit of slot `j`'s key word within its bucket (its state words
/// follow it).
pub(crate) const fn key_unit_in_bucket(words: usize, j: usize) -> usize {
    2 + j * (1 + words)
}

/// Buckets a claim may examine for a key to move out of its way before it
/// evicts a live entry (see "Moving a key" in the module docs): the bound
/// on what a flood of new keys into a full table costs per key. 64 puts
/// the first live eviction at about 95% of the capacity with first-fit
/// placement (97% with placement in the emptier bucket; 16: about 92%;
/// `examples/layout_sim.rs` simulates these).
const MOVE_BUDGET: usize = 64;

/// Claims that evict without searching after a search found no key to
/// move: a table that a flood of new keys keeps full pays for one search
/// per `MOVE_SKIP + 1` claims, not one per claim — about a fifth of a
/// bucket examination per key (callgrind, `examples/instructions.rs
/// flood-fw`: 3,034 instructions per check in all, of which the search
/// was 150 when last measured apart).
const MOVE_SKIP: u32 = 5 * MOVE_BUDGET as u32;

const _: () = assert!(SLOTS as u128 <= Intent::SLOT_MASK + 1);

/// The bits of a lease holder's pid that a lease word keeps (see
/// [`LeaseId`]): Linux pids are below `PID_MAX_LIMIT` = 2^22.
pub(crate) const PID_MASK: u32 = LeaseId::PID_MASK;

/// Claims left that skip the search for a key to move, after a search
/// found none: a table that a flood of new keys keeps full pays for one
/// search per `rest + 1` claims. Per process, not in the shared file (both
/// tables keep one).
pub(crate) struct MoveSkip(HintU32);

impl MoveSkip {
    pub fn new() -> MoveSkip {
        MoveSkip(HintU32::new(0))
    }

    /// True if this claim skips the search (one fewer is then left).
    #[inline]
    pub fn skip(&self) -> bool {
        // Relaxed: a hint; a racing claim that misreads it searches once
        // more or once less, and every decision stays exact either way.
        let left = self.0.load(Relaxed);
        if left == 0 {
            return false;
        }
        let _ = self.0.compare_exchange(left, left - 1, Relaxed, Relaxed);
        true
    }

    /// A search found nothing: the next `claims` claims skip theirs.
    pub fn rest(&self, claims: u32) {
        // Relaxed: a hint, as in `skip`.
        self.0.store(claims, Relaxed);
    }
}

/// What a check does besides deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Decide only: no charge, and a denial is no strike.
    Peek,
    /// Charge an allowed request; a denial is a penalty-box strike.
    Charge,
    /// No charge, but a denial is a penalty-box strike (for a batch of
    /// limits that one of them denied).
    StrikeIfDenied,
}

impl Mode {
    /// An allowed request is charged.
    #[inline(always)]
    fn charges(self) -> bool {
        self == Mode::Charge
    }

    /// A denial counts as a penalty-box strike.
    #[inline(always)]
    fn strikes(self) -> bool {
        self != Mode::Peek
    }
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
    /// One GCRA limit and nothing else: the table is the packed one
    /// (`packed.rs`: one 16-byte word per key).
    pub packed: bool,
}

impl Layout {
    /// This layout on the slots table even if it could be packed (tests of
    /// that table's protocol).
    #[cfg(test)]
    pub fn unpacked(self) -> Layout {
        Layout {
            packed: false,
            ..self
        }
    }

    pub fn new(limits: Vec<LimitParams>, penalty: Option<Penalty>) -> Layout {
        let limit_words: usize = limits.iter().map(|l| l.words()).sum();
        let words = limit_words + if penalty.is_some() { 2 } else { 0 };
        let concurrency = limits.len() == 1 && limits[0].algorithm == Algorithm::Concurrency;
        let single_word = words == 1 && !concurrency;
        Layout {
            packed: single_word && limits[0].algorithm == Algorithm::Gcra,
            single_word,
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
        Word::from_bits(self.words[i].load()).payload
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
enum Victim {
    Empty(usize),
    Expired(usize),
    /// A live entry, its expiry and how protected it is: evicted if the
    /// policy evicts.
    Live(usize, u64, Protected),
    /// Nothing may be evicted (every entry holds a live lease) until the
    /// given time.
    None(u64),
}

impl Victim {
    /// How much a claim of this slot costs others: nothing (free), a
    /// returning key's state (expired), a live entry.
    fn rank(self) -> u8 {
        match self {
            Victim::Empty(_) => 0,
            Victim::Expired(_) => 1,
            Victim::Live(..) | Victim::None(_) => 2,
        }
    }
}

/// A key's slot: bucket `b` (index `bi`), as of snapshot `snap`.
#[derive(Clone, Copy)]
struct Place<'a> {
    b: &'a [Atomic128],
    bi: usize,
    snap: Snapshot,
    slot: usize,
}

/// A key absent from its first bucket and (if the table has more than one
/// bucket) its second, as their snapshots saw them.
#[derive(Clone, Copy)]
struct Absent<'a> {
    first: (&'a [Atomic128], Snapshot),
    second: Option<(&'a [Atomic128], Snapshot)>,
}

impl Absent<'_> {
    /// True if neither bucket has started a transaction since: the key is
    /// still absent.
    #[inline(always)]
    fn still(&self) -> bool {
        Table::still(self.first.0, &self.first.1)
            && self.second.is_none_or(|(b, s)| Table::still(b, &s))
    }
}

/// Where a key of a single-word policy lived when [`Table::spot_of`] found
/// it: its bucket and slot, the bucket's intent words then, and the slot's
/// key word. Kept between checks by a caller that wants to skip hashing and
/// probing ([`Table::decide_at`]); only meaningful for the table it came
/// from.
#[derive(Clone, Copy)]
pub(crate) struct Spot {
    bucket: usize,
    slot: usize,
    /// The bucket's snapshot when the key was found there.
    snap: Snapshot,
    /// The slot's key word then.
    key: u128,
}

impl Spot {
    /// A spot that names bucket 0, slot 0 (kept only beside an owner that
    /// marks it unused).
    pub const EMPTY: Spot = Spot {
        bucket: 0,
        slot: 0,
        snap: Snapshot {
            e0: 0,
            e1: 0,
            seq: 0,
        },
        key: 0,
    };
}

/// What [`Table::locate`] found.
enum Located<'a> {
    At(Place<'a>),
    Absent(Absent<'a>),
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
    /// Claims left that evict without looking for a key to move: set to
    /// [`MOVE_SKIP`] when a search finds nothing (see [`Table::make_room`]).
    /// Per process, not in the shared file.
    move_skip: MoveSkip,
    /// The packed table's shape, for a `layout.packed` policy: every
    /// operation goes there (over `mem`), and the fields above for slots
    /// tables go unused.
    packed: Option<packed::Shape>,
}

impl Table {
    /// Units a table of `buckets` buckets needs for `layout`, or `None` if
    /// that overflows or `buckets` is not a valid count for it (a count
    /// from a shared file is hostile).
    pub fn units_needed_checked(layout: &Layout, buckets: usize) -> Option<usize> {
        if !buckets.is_power_of_two() {
            return None;
        }
        if layout.packed {
            if buckets < packed::GROUP {
                return None;
            }
            // `Shape::units_needed` is at most this: no overflow past here.
            buckets.checked_mul(packed::WAYS + 1)?.checked_add(3)?;
            return Some(packed::Shape::units_needed(buckets));
        }
        buckets.checked_mul(bucket_units(layout.words))
    }

    /// Units a table of `buckets` buckets (from `buckets_for`) needs for `layout`.
    pub fn units_needed(layout: &Layout, buckets: usize) -> usize {
        Self::units_needed_checked(layout, buckets).expect("a valid bucket count")
    }

    /// Buckets for at least `capacity` keys with `layout` (a power of two).
    pub fn buckets_for(layout: &Layout, capacity: usize) -> usize {
        if layout.packed {
            return packed::Shape::buckets_for(capacity);
        }
        capacity.div_ceil(SLOTS).next_power_of_two().max(1)
    }

    /// The packed table, for a packed layout.
    #[inline(always)]
    fn packed(&self) -> Option<packed::Packed<'_>> {
        self.packed.as_ref().map(|s| s.over(self.mem.units()))
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
        let bucket_units = bucket_units(layout.words);
        assert!(mem.units().len() >= base + Self::units_needed(&layout, buckets));
        assert!(overrides_base + overrides_len <= base || overrides_len == 0);
        let packed = layout
            .packed
            .then(|| packed::Shape::new(layout.first, when_full, buckets, mem.units().len(), base));
        Table {
            packed,
            layout,
            when_full,
            mask: buckets - 1,
            bucket_units,
            base,
            overrides_base,
            overrides_len,
            mem,
            move_skip: MoveSkip::new(),
        }
    }

    /// The memory the table lives in (and, before `base`, its policy's head).
    pub fn memory(&self) -> &Memory {
        &self.mem
    }

    /// Keys the table can hold.
    pub fn capacity(&self) -> usize {
        if let Some(p) = &self.packed {
            return p.capacity();
        }
        (self.mask + 1) * SLOTS
    }

    /// Bytes of memory the table uses.
    pub fn bytes(&self) -> usize {
        if let Some(p) = &self.packed {
            return p.bytes();
        }
        (self.mask + 1) * self.bucket_units * std::mem::size_of::<Atomic128>()
    }

    /// Asks for the lines a lookup of key hash `h` reads first, without
    /// waiting for them: both bucket lines on the packed table, the first
    /// bucket's lines on the slots table (where a key lives in its first
    /// bucket unless that was full when it came). A batch asks for every
    /// item's before it decides the first, so that the items' misses
    /// overlap instead of following one another.
    #[inline]
    pub fn prefetch(&self, h: u64) {
        if let Some(p) = self.packed() {
            return p.prefetch(h);
        }
        let bucket = self.bucket(self.bucket_of(h));
        // One unit in every 64 bytes, and the last: a bucket need not
        // start on a line.
        for u in bucket.iter().step_by(4).chain(bucket.last()) {
            sync::prefetch(u);
        }
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

    /// The second bucket key `h` may live in (bits 32.. of its hash pick
    /// it; never its first), or none in a table of one bucket.
    #[inline(always)]
    fn second_of(&self, h: u64) -> Option<usize> {
        if self.mask == 0 {
            return None;
        }
        let first = self.bucket_of(h);
        let second = (h >> 32) as usize & self.mask;
        Some(if second == first { first ^ 1 } else { second })
    }

    #[inline(always)]
    fn key_unit(&self, j: usize) -> usize {
        key_unit_in_bucket(self.layout.words, j)
    }

    #[inline(always)]
    fn slot_words<'a>(&self, b: &'a [Atomic128], j: usize) -> &'a [Atomic128] {
        let start = self.key_unit(j) + 1;
        &b[start..start + self.layout.words]
    }

    /// The key word of slot `j` of bucket `b`.
    #[inline(always)]
    fn key_word(&self, b: &[Atomic128], j: usize) -> Word {
        Word::from_bits(b[self.key_unit(j)].load())
    }

    /// The slots of a bucket in the order key `h` visits them: from the
    /// slot its hash prefers, so that a key usually sits where it looks
    /// first (one cache line past the intents).
    #[inline(always)]
    fn probe_order(h: u64) -> impl Iterator<Item = usize> {
        let first = (h >> 58) as usize;
        (0..SLOTS).map(move |i| (first + i) % SLOTS)
    }

    /// The slot of bucket `b` that holds key `h`, if any.
    #[inline]
    fn find(&self, b: &[Atomic128], h: u64) -> Option<usize> {
        Self::probe_order(h).find(|&j| self.key_word(b, j).hash() == h)
    }

    /// The policy's limits for a key with override `factor` (0: none).
    #[inline(always)]
    fn with_limits<R>(&self, factor: u32, f: impl FnOnce(&[LimitParams]) -> R) -> R {
        if factor == 0 {
            // The common case: no copy.
            return f(&self.layout.limits);
        }
        let mut buf = [self.layout.first; algo::MAX_LIMITS];
        let n = self.layout.limits.len();
        for (d, l) in buf.iter_mut().zip(&self.layout.limits) {
            *d = l.scaled(factor);
        }
        f(&buf[..n])
    }

    /// The verdict on `words` (a slot, or `Fresh`) under `limits`.
    #[inline]
    fn evaluate(
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
        let factor = self.override_of(h);
        if let Some(p) = self.packed() {
            return p.fresh_verdict(factor, cost, now);
        }
        if self.layout.single_word && factor == 0 {
            // The step a located key of a single-word policy takes
            // (`single_at`), on the fresh state: what a flood of new keys
            // asks for on every check.
            return self.decide_single(&self.layout.first, Payload::default(), cost, now);
        }
        self.with_limits(factor, |limits| self.evaluate(limits, &Fresh, cost, now))
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
            return self.evaluate(std::slice::from_ref(l), &[p][..], cost, now);
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

    /// A slot of bucket `b` for new key `h` — a free one (the first in
    /// `h`'s probe order), else an expired one, else the live one that
    /// would expire soonest, sparing keys in the penalty box while there is
    /// any other; a key holding a live lease is never a victim.
    fn choose_victim(&self, b: &[Atomic128], h: u64, now: u64) -> Victim {
        // Two instances of one loop: single-word policies (one limit in one
        // word: no penalty box, no lease) read each slot's state word inline
        // and compare expiries alone, since nothing is protected. A flood of
        // new keys into a full table runs this twice per check.
        // The algorithm is matched once, outside the loop (inside, it cost
        // a jump through a table per slot).
        if self.layout.single_word {
            let l = &self.layout.first;
            let state = |j| Word::from_bits(self.slot_words(b, j)[0].load()).payload;
            return match l.algorithm {
                Algorithm::Gcra => {
                    self.pick_victim(b, h, now, |j| (algo::expiry_gcra(state(j)), Protected::No))
                }
                Algorithm::FixedWindow => self.pick_victim(b, h, now, |j| {
                    (algo::fixed_window::expiry(l, state(j)), Protected::No)
                }),
                _ => self.pick_victim(b, h, now, |j| {
                    (algo::expiry(l, &[state(j)][..], now), Protected::No)
                }),
            };
        }
        self.pick_victim(b, h, now, |j| self.expiry(b, j, now))
    }

    /// Single-word policies: when state `p` expires (as `choose_victim`
    /// judges it: the unscaled limit, as every claimer does).
    pub(super) fn single_expiry(&self, p: Payload, now: u64) -> u64 {
        let l = &self.layout.first;
        match l.algorithm {
            Algorithm::Gcra => algo::expiry_gcra(p),
            Algorithm::FixedWindow => algo::fixed_window::expiry(l, p),
            _ => algo::expiry(l, &[p][..], now),
        }
    }

    /// The loop of [`choose_victim`](Self::choose_victim), with slot `j`'s
    /// expiry and protection from `expiry(j)`.
    #[inline(always)]
    fn pick_victim(
        &self,
        b: &[Atomic128],
        h: u64,
        now: u64,
        expiry: impl Fn(usize) -> (u64, Protected),
    ) -> Victim {
        // Slot indices, `SLOTS` for none: cheaper than `Option`s here.
        let (mut free, mut expired) = (SLOTS, SLOTS);
        let (mut best, mut best_at) = ((Protected::Lease, u64::MAX), SLOTS);
        for j in Self::probe_order(h) {
            if self.key_word(b, j).hash() == 0 {
                if free == SLOTS {
                    free = j;
                }
                continue;
            }
            let (exp, protected) = expiry(j);
            if exp <= now {
                if expired == SLOTS {
                    expired = j;
                }
                continue;
            }
            // Strictly less protected, or as protected and sooner: ties keep
            // the first in probe order.
            if best_at == SLOTS || (protected, exp) < best {
                (best, best_at) = ((protected, exp), j);
            }
        }
        if free < SLOTS {
            Victim::Empty(free)
        } else if expired < SLOTS {
            Victim::Expired(expired)
        } else {
            // Every slot is live, so `best_at` is one of them.
            match best {
                // The least protected entry holds a live lease, so every
                // entry does; `exp` is the soonest of them, when one frees.
                (Protected::Lease, exp) => Victim::None(exp),
                (protected, exp) => Victim::Live(best_at, exp, protected),
            }
        }
    }

    /// Claims a slot for `h`, absent from both its buckets as `absent` saw
    /// them: a free slot of either bucket, else an expired one (each in
    /// the first bucket if it has one), else (if the
    /// policy evicts) the live entry of the two that is least protected and
    /// expires soonest. A claim in the first bucket is a
    /// CLAIM transaction there; a claim in the second is committed in the
    /// first bucket as a TOUCH naming the key (see "Two buckets per key" in
    /// the module docs), which any thread completes. `Err(outcome)` when
    /// both buckets are full and the policy does not evict. `Ok(evicted)`
    /// says whether a live entry made room; the claim may also have lost a
    /// race, and the caller simply looks again.
    fn claim(&self, h: u64, absent: &Absent<'_>, now: u64) -> Result<bool, Outcome> {
        let (a, sa) = absent.first;
        let in_first = self.choose_victim(a, h, now);
        let in_second = absent.second.map(|(b, _)| self.choose_victim(b, h, now));
        // A free slot of either bucket before an expired one: an expired
        // entry's key may come back, and a key found again is charged in
        // place, where one whose slot was reused must claim anew (and may
        // take another returning key's slot: at 76% occupancy, with every
        // entry expired, preferring the first bucket's expired slots made
        // one check in ten a claim). Then the first bucket (first-fit):
        // 87% of the keys of a table 90% full then sit in their first
        // bucket, where a check finds them without reading the second (67%
        // when the emptier bucket was taken), and the breadth-first search
        // for moves still fits 95% of the capacity in live keys (README
        // "Design notes": placement).
        let second_first = in_second.is_some_and(|v| v.rank() < in_first.rank());
        // Where the key goes: (in the second bucket, slot, evicts a live entry).
        let place = match (in_first, in_second) {
            (_, Some(Victim::Empty(j) | Victim::Expired(j))) if second_first => {
                Some((true, j, false))
            }
            (Victim::Empty(j) | Victim::Expired(j), _) => Some((false, j, false)),
            (_, Some(Victim::Empty(j) | Victim::Expired(j))) => Some((true, j, false)),
            _ if self.when_full != WhenFull::Evict => None,
            (Victim::Live(j, e, p), Some(Victim::Live(k, f, q))) => Some(if (q, f) < (p, e) {
                (true, k, true)
            } else {
                (false, j, true)
            }),
            (Victim::Live(j, _, _), _) => Some((false, j, true)),
            (_, Some(Victim::Live(k, _, _))) => Some((true, k, true)),
            _ => None,
        };
        // Rather than evict a live entry (or report the table full), move a
        // key out of the way, into its own second bucket: see "Moving a
        // key" in the module docs.
        if place.is_none_or(|(_, _, evicts)| evicts) && self.make_room(h, absent, now) {
            return Ok(false);
        }
        let Some((second, j, evicts)) = place else {
            if !absent.still() {
                return Ok(false);
            }
            // Full: the soonest a slot of either bucket frees.
            let exp = |v: Option<Victim>| match v {
                Some(Victim::Live(_, e, _) | Victim::None(e)) => e,
                _ => u64::MAX,
            };
            return Err(Outcome::Full {
                retry_after_ns: algo::until(exp(Some(in_first)).min(exp(in_second)), now),
            });
        };
        // A claim of an empty or expired slot is a CLAIM, which lands only
        // if the slot's key is still expired when it runs (a charge of it
        // may land after the claimer's snapshot: see `take_expired`); one
        // that chose a live victim is an EVICT, which lands regardless.
        let (claim, touch) = match evicts {
            false => (Op::Claim, Op::Touch),
            true => (Op::Evict, Op::TouchEvict),
        };
        if !second {
            let factor = self.override_of(h) as u64;
            return Ok(self.transact(a, &sa, claim, j, factor, h, now) && evicts);
        }
        let (b, sb) = absent.second.expect("a second bucket was chosen");
        let at = sb.seq as u64 & Intent::COST_MASK as u64;
        if !self.transact(a, &sa, touch, j, at, h, now) {
            return Ok(false);
        }
        // Counted as an eviction if the claim in the second bucket is the
        // transaction right after the snapshot it was chosen from (whoever
        // completed it); if that bucket has moved on by two more
        // transactions since, an eviction goes uncounted.
        let e = Intent::from_bits(b[(sb.seq.wrapping_add(1) & 1) as usize].load());
        Ok(evicts
            && e.seq == sb.seq.wrapping_add(1)
            && e.op == Op::Evict
            && e.arg == h
            && e.slot == j)
    }

    /// Looks, within [`MOVE_BUDGET`] buckets, for a key that can move from
    /// one of the new key's two buckets (full of live entries, as `absent`
    /// saw them) into its own second bucket — directly (the key's second
    /// bucket has a free or expired slot), or after one key of that bucket
    /// moves on into its own second bucket — and proposes the first such
    /// move. True if a move was proposed (committed or lost to a race: the
    /// caller looks again), false if none was found — after which the next
    /// [`MOVE_SKIP`] calls (in this process) return false at once.
    fn make_room(&self, h: u64, absent: &Absent<'_>, now: u64) -> bool {
        if self.layout.concurrency {
            return false; // a live lease is never evicted: nothing to save
        }
        let (Some((_, sb)), Some(bi)) = (absent.second, self.second_of(h)) else {
            return false;
        };
        if self.move_skip.skip() {
            return false;
        }
        if self.search_move(h, bi, absent.first.1, sb, now) {
            return true;
        }
        self.move_skip.rest(MOVE_SKIP);
        false
    }

    /// The search of [`make_room`](Self::make_room), from the snapshots
    /// `sa` and `sb` of key `h`'s first and second (index `bi`) buckets:
    /// breadth first, over chains of moves of any length that end in a
    /// bucket with a free or expired slot. Each bucket a movable key leads
    /// to is examined once (one unit of [`MOVE_BUDGET`]); the move proposed
    /// is the last of the chain found (a key into that slot), after which
    /// the caller looks again and the search finds the chain one shorter.
    /// Keys only move from their first bucket to their second, so chains
    /// never loop back onto a key that already moved.
    fn search_move(&self, h: u64, bi: usize, sa: Snapshot, sb: Snapshot, now: u64) -> bool {
        // The buckets reached, with the snapshots they were examined at: the
        // two full ones, then one per examination at most. A fixed array:
        // a claim allocates nothing.
        let mut reached = [(0usize, sa); MOVE_BUDGET + 2];
        reached[0] = (self.bucket_of(h), sa);
        reached[1] = (bi, sb);
        let (mut len, mut next, mut budget) = (2, 0, MOVE_BUDGET);
        while next < len {
            let (x, sx) = reached[next];
            next += 1;
            for (g, y) in self.movable(x) {
                let Some(left) = budget.checked_sub(1) else {
                    return false;
                };
                budget = left;
                let b = self.bucket(y);
                let sy = self.snapshot(b, now);
                if let Victim::Empty(j) | Victim::Expired(j) = self.choose_victim(b, g, now) {
                    return self.propose_move(x, &sx, g, j, &sy, now);
                }
                if !reached[..len].iter().any(|&(z, _)| z == y) {
                    reached[len] = (y, sy);
                    len += 1;
                }
            }
        }
        false
    }

    /// The keys of bucket `x` that live in their first bucket, each with its
    /// second bucket: the keys that may move out of `x`.
    fn movable(&self, x: usize) -> impl Iterator<Item = (u64, usize)> + '_ {
        let b = self.bucket(x);
        (0..SLOTS).filter_map(move |k| {
            let g = self.key_word(b, k).hash();
            if g == 0 || self.bucket_of(g) != x {
                return None;
            }
            Some((g, self.second_of(g)?))
        })
    }

    /// Proposes, from snapshot `sx` of bucket `x` (key `g`'s first), the
    /// MOVE of `g` to slot `j` of its second bucket, as of that bucket's
    /// snapshot `sy`. True whether or not it committed: either way the
    /// caller looks again.
    fn propose_move(
        &self,
        x: usize,
        sx: &Snapshot,
        g: u64,
        j: usize,
        sy: &Snapshot,
        now: u64,
    ) -> bool {
        let at = sy.seq as u64 & Intent::COST_MASK as u64;
        self.transact(self.bucket(x), sx, Op::Move, j, at, g, now);
        true
    }

    /// Where key `h` lives: the bucket and slot holding it, with a snapshot
    /// of that bucket, or the snapshots of both its buckets without it. A
    /// key is looked for in its first bucket, then in its second. `now`:
    /// the caller's time (0 if it has none), for the transactions it helps.
    #[inline(always)]
    fn locate(&self, h: u64, now: u64) -> Located<'_> {
        let ai = self.bucket_of(h);
        let a = self.bucket(ai);
        // A third of the keys of a table three-quarters full live in their
        // second bucket: start loading its intents and the key word its
        // hash prefers now, so that those misses overlap the first
        // bucket's (a hint; README "Design notes" has what it saves).
        if let Some(bi) = self.second_of(h) {
            let b = self.bucket(bi);
            sync::prefetch(&b[0]);
            sync::prefetch(&b[self.key_unit((h >> 58) as usize % SLOTS)]);
        }
        let sa = self.snapshot(a, now);
        if let Some(j) = self.find(a, h) {
            return Located::At(Place {
                b: a,
                bi: ai,
                snap: sa,
                slot: j,
            });
        }
        self.locate_second(h, a, sa, now)
    }

    /// Where key `h` lives, or `None` if it is absent from both its
    /// buckets (confirmed: neither changed while it was looked for).
    fn present(&self, h: u64, now: u64) -> Option<Place<'_>> {
        loop {
            match self.locate(h, now) {
                Located::At(p) => return Some(p),
                Located::Absent(absent) if absent.still() => return None,
                Located::Absent(_) => continue,
            }
        }
    }

    /// [`locate`](Self::locate), once the key is not in its first bucket.
    #[inline(never)]
    fn locate_second<'t>(
        &'t self,
        h: u64,
        a: &'t [Atomic128],
        sa: Snapshot,
        now: u64,
    ) -> Located<'t> {
        let Some(bi) = self.second_of(h) else {
            return Located::Absent(Absent {
                first: (a, sa),
                second: None,
            });
        };
        let b = self.bucket(bi);
        let sb = self.snapshot(b, now);
        if let Some(j) = self.find(b, h) {
            return Located::At(Place {
                b,
                bi,
                snap: sb,
                slot: j,
            });
        }
        Located::Absent(Absent {
            first: (a, sa),
            second: Some((b, sb)),
        })
    }

    /// Single-word policies: decides `cost` on slot `j` of bucket `b` (key
    /// override `factor`), found under snapshot `snap`, and charges it if
    /// allowed and `charge`. `None` if the bucket changed meanwhile: the
    /// caller looks again. A charge that loses a race with another charge
    /// of the key decides again on the word that won.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn single_at(
        &self,
        b: &[Atomic128],
        snap: &Snapshot,
        j: usize,
        factor: u32,
        cost: u64,
        now: u64,
        charge: bool,
    ) -> Option<Verdict> {
        // No override (factor 0, nearly every key): the layout's limit by
        // reference; `scaled` would copy it (27 instructions of a
        // 600-instruction check, callgrind).
        let scaled;
        let l = if factor == 0 {
            &self.layout.first
        } else {
            scaled = self.layout.first.scaled(factor);
            &scaled
        };
        let unit = &self.slot_words(b, j)[0];
        let mut cur = unit.load();
        loop {
            let state = Word::from_bits(cur).payload;
            let verdict = self.decide_single(l, state, cost, now);
            if !Self::still(b, snap) {
                return None;
            }
            if !charge || !verdict.allowed || cost == 0 {
                return Some(verdict);
            }
            let new = Word::new(snap.seq, algo::charge_word(l, state, cost, now));
            match unit.compare_exchange(cur, new.to_bits()) {
                Ok(_) => return Some(verdict),
                // Another charge of the key won: decide again on the word
                // it wrote, which the failed compare-and-swap returned (and
                // whose cache line this core now holds, so that under
                // contention the next attempt rarely loses it again). The
                // key word need not be read again: `still` above, after
                // this word was read, finds the intents unchanged, so no
                // transaction began since the key word matched, exactly as
                // for the first word.
                Err(actual) => cur = actual,
            }
        }
    }

    /// Where key `h` lives now, for [`decide_at`](Self::decide_at): `None`
    /// if it is absent, or if the policy keeps more than one word per key
    /// (only single-word policies are decided at a spot).
    pub fn spot_of(&self, h: u64) -> Option<Spot> {
        if !self.layout.single_word {
            return None;
        }
        if let Some(p) = self.packed() {
            let (bucket, slot, key) = p.spot_of(h)?;
            return Some(Spot {
                bucket,
                slot,
                key,
                ..Spot::EMPTY
            });
        }
        let p = self.present(h, 0)?;
        let key = p.b[self.key_unit(p.slot)].load();
        (Word::from_bits(key).hash() == h && Self::still(p.b, &p.snap)).then_some(Spot {
            bucket: p.bi,
            slot: p.slot,
            snap: p.snap,
            key,
        })
    }

    /// [`decide`](Self::decide) for the key found at spot `s` of this table
    /// ([`spot_of`](Self::spot_of)), without hashing or probing: `None` if
    /// the spot no longer holds what it held then (the bucket has begun a
    /// transaction since, or the key word changed), which it never will
    /// again. A charge that loses a race with another charge of the key
    /// decides again on the word that won (`single_at`).
    ///
    /// The same decision `decide` would make: a bucket whose intent words
    /// are unchanged has begun no transaction since the spot's snapshot
    /// (claims, moves, evictions, resets, overrides and retags are all
    /// transactions, and each writes an intent), so the snapshot is still
    /// the bucket's latest, its slot still holds the key (its key word,
    /// factor included, is compared too), and what follows is `decide`'s
    /// own step on a located key: the state word as it is now, the `still`
    /// check, the charge's compare-and-swap.
    #[inline(always)]
    pub fn decide_at(&self, s: &Spot, cost: u64, now: u64, mode: Mode) -> Option<Outcome> {
        let now = now.min(algo::MAX_TIME_NS);
        if let Some(p) = self.packed() {
            let verdict = p.decide_at(s.bucket, s.slot, s.key, cost, now, mode.charges())?;
            return Some(Outcome::Decided {
                verdict,
                evicted: false,
            });
        }
        let b = self.bucket(s.bucket);
        // The key word, then (in `single_at`) the state word, then the
        // intents compared with the spot's: if they are unchanged, both
        // words were read under the spot's snapshot.
        if b[self.key_unit(s.slot)].load() != s.key {
            return None;
        }
        let factor = Word::from_bits(s.key).factor();
        let verdict = self.single_at(b, &s.snap, s.slot, factor, cost, now, mode.charges())?;
        Some(Outcome::Decided {
            verdict,
            evicted: false,
        })
    }

    /// Decides `cost` for key hash `h` at `now`, and as `mode` says,
    /// charges it if allowed and counts a denial as a penalty-box strike.
    /// (Always inlined: the hot path of `check`, where `mode` is a constant.)
    #[inline(always)]
    pub fn decide(&self, h: u64, cost: u64, now: u64, mode: Mode) -> Outcome {
        if let Some(p) = self.packed() {
            return p.decide(h, cost, now, mode.charges(), || self.override_of(h));
        }
        let (charge, strike_denials) = (mode.charges(), mode.strikes());
        let now = now.min(algo::MAX_TIME_NS);
        let mut evicted = false;
        loop {
            let (b, snap, j) = match self.locate(h, now) {
                Located::At(p) => (p.b, p.snap, p.slot),
                Located::Absent(absent) => {
                    let verdict = self.fresh_verdict(h, cost, now);
                    if !charge || !verdict.allowed || cost == 0 {
                        if !absent.still() {
                            continue;
                        }
                        return Outcome::Decided { verdict, evicted };
                    }
                    match self.claim(h, &absent, now) {
                        Ok(e) => {
                            evicted |= e;
                            continue;
                        }
                        Err(full) => return full,
                    }
                }
            };
            let factor = self.key_word(b, j).factor();
            if self.layout.single_word {
                match self.single_at(b, &snap, j, factor, cost, now, charge) {
                    Some(verdict) => return Outcome::Decided { verdict, evicted },
                    None => continue,
                }
            }
            let view = SlotView {
                words: self.slot_words(b, j),
            };
            let mut verdict =
                self.with_limits(factor, |limits| self.evaluate(limits, &view, cost, now));
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
                if self.transact(b, &snap, Op::Strike, j, 0, now, now) {
                    return Outcome::Decided { verdict, evicted };
                }
                continue;
            }
            if !charge || !verdict.allowed || cost == 0 || self.layout.concurrency {
                return Outcome::Decided { verdict, evicted };
            }
            if self.transact(b, &snap, Op::Charge, j, cost, now, now) {
                return Outcome::Decided { verdict, evicted };
            }
        }
    }

    /// Gives back `cost` previously charged to `h`. Returns false if the
    /// key holds no state (never seen, reset or evicted).
    pub fn refund(&self, h: u64, cost: u64, now: u64) -> bool {
        if let Some(p) = self.packed() {
            return p.refund(h, cost, now, || self.override_of(h));
        }
        let now = now.min(algo::MAX_TIME_NS);
        if self.layout.concurrency {
            return false;
        }
        let cost = cost.min(algo::MAX_COST);
        loop {
            let Some(Place {
                b, snap, slot: j, ..
            }) = self.present(h, now)
            else {
                return false;
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
                let factor = self.key_word(b, j).factor();
                let cur = unit.load();
                if !Self::still(b, &snap) {
                    continue;
                }
                let l = self.layout.first.scaled(factor);
                let state = Word::from_bits(cur).payload;
                let new = Word::new(snap.seq, algo::refund_word(&l, state, cost, now));
                if unit.compare_exchange(cur, new.to_bits()).is_ok() {
                    return true;
                }
                continue;
            }
            if self.transact(b, &snap, Op::Refund, j, cost, now, now) {
                return true;
            }
        }
    }

    /// Forgets all state of `h`. Returns false if there was none.
    pub fn reset(&self, h: u64) -> bool {
        if let Some(p) = self.packed() {
            return p.reset(h);
        }
        loop {
            let Some(Place {
                b, snap, slot: j, ..
            }) = self.present(h, 0)
            else {
                return false;
            };
            if self.transact(b, &snap, Op::Reset, j, 0, 0, 0) {
                return true;
            }
        }
    }

    /// Forgets every key: [`reset`](Self::reset) of each occupied slot's
    /// hash, one after the other (a scan, for tests and administration: a
    /// key inserted while it runs may stay). Returns how many keys held
    /// state.
    pub fn reset_all(&self) -> u64 {
        if let Some(p) = self.packed() {
            return p.reset_all();
        }
        let mut count = 0;
        for bi in 0..=self.mask {
            let b = self.bucket(bi);
            for j in 0..SLOTS {
                let h = self.key_word(b, j).hash();
                if h != 0 && self.reset(h) {
                    count += 1;
                }
            }
        }
        count
    }

    /// Keys currently held (a scan: for statistics, not the hot path).
    pub fn occupancy(&self) -> u64 {
        if let Some(p) = self.packed() {
            return p.occupancy();
        }
        (0..=self.mask)
            .map(|bi| {
                let b = self.bucket(bi);
                (0..SLOTS)
                    .filter(|&j| self.key_word(b, j).hash() != 0)
                    .count() as u64
            })
            .sum()
    }
}

#[cfg(all(test, loom))]
mod loom_tests;
#[cfg(all(test, not(loom)))]
mod tests;
