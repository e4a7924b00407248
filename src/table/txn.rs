//! The transaction protocol of a bucket (see "Protocol" in the module docs
//! of `table`): snapshots, the commit of a transaction, and its completion
//! by any thread that sees it pending.

use super::words::{Intent, Op, Word};
use super::{Table, SLOTS};
use crate::abuse;
use crate::algo::Algorithm;
use crate::algo::{self, sliding_log, LimitParams, Payload};
use crate::sync::Atomic128;

/// Every transaction whose seq is a multiple of this is a retag: so no word
/// of a bucket (other than a lease word) carries a tag more than 2^31
/// transactions old, and a tag equal to a transaction's seq can only have
/// been written by that transaction.
pub(super) const RETAG_EVERY: u32 = 1 << 31;

/// A bucket's two intent words as read, and the seq of its latest
/// completed transaction. The intents are kept as raw bits: they are only
/// compared with what the bucket holds later.
#[derive(Clone, Copy)]
pub(super) struct Snapshot {
    pub e0: u128,
    pub e1: u128,
    pub seq: u32,
}

impl Table {
    /// The latest completed transaction of bucket `b`, helping a pending one
    /// (as of `now`, the caller's time, or 0 if it has none: see `apply`).
    /// (Always inlined: it is the first step of every check.)
    #[inline(always)]
    pub(super) fn snapshot(&self, b: &[Atomic128], now: u64) -> Snapshot {
        loop {
            let e0 = b[0].load();
            let e1 = b[1].load();
            let (i0, i1) = (Intent::from_bits(e0), Intent::from_bits(e1));
            let (cur, other) = if i1.seq == i0.seq.wrapping_add(1) {
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
            let latest = Intent::from_bits(cur);
            if latest.pending {
                self.apply(b, latest, now);
                continue;
            }
            return Snapshot {
                e0,
                e1,
                seq: latest.seq,
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
        let (cur, other) = (Intent::from_bits(cur), Intent::from_bits(other));
        cur.index() == cur_index && other.seq == cur.seq.wrapping_sub(1) && !other.pending
    }

    /// Makes a corrupt intent pair consistent, deciding from intent 0 alone
    /// (so racing repairers agree): intent 0, which must hold an even seq,
    /// is taken as the latest, and intent 1 becomes a completed no-op one
    /// seq before it. Whatever transaction the corrupt words described may
    /// be lost; the slot words keep whatever they hold. Never called for a
    /// pair the protocol wrote.
    #[cold]
    fn repair(b: &[Atomic128], e0: u128, e1: u128) {
        let s0 = Intent::from_bits(e0).seq;
        let touch = |seq: u32| Intent::pending(seq, Op::Touch, 0, 0, 0).done().to_bits();
        if s0 & 1 == 1 {
            let _ = b[0].compare_exchange(e0, touch(s0.wrapping_add(1)));
            return;
        }
        let _ = b[1].compare_exchange(e1, touch(s0.wrapping_sub(1)));
    }

    /// True if no transaction started since `s` was taken.
    #[inline(always)]
    pub(super) fn still(b: &[Atomic128], s: &Snapshot) -> bool {
        b[0].load() == s.e0 && b[1].load() == s.e1
    }

    /// Commits transaction `snap.seq + 1`; on success, completes it (as of
    /// `now`, the caller's time, or 0 if it has none: see `apply`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn transact(
        &self,
        b: &[Atomic128],
        snap: &Snapshot,
        op: Op,
        slot: usize,
        cost: u64,
        arg: u64,
        now: u64,
    ) -> bool {
        let s1 = snap.seq.wrapping_add(1);
        if s1 % RETAG_EVERY == 0 && op != Op::Retag {
            // This seq belongs to a retag; the caller takes a new snapshot.
            self.transact(b, snap, Op::Retag, 0, 0, 0, now);
            return false;
        }
        let e = Intent::pending(s1, op, slot, cost, arg);
        let expected = if e.index() == 0 { snap.e0 } else { snap.e1 };
        if b[e.index()]
            .compare_exchange(expected, e.to_bits())
            .is_err()
        {
            return false;
        }
        self.apply(b, e, now);
        true
    }

    /// Writes one word of transaction `e` (see the module docs); `None` if
    /// the transaction turned out to be complete already.
    #[inline]
    pub(super) fn write(
        b: &[Atomic128],
        unit: &Atomic128,
        e: Intent,
        f: impl Fn(Payload) -> Payload,
    ) -> Option<Payload> {
        let bits = e.to_bits();
        loop {
            let cur = unit.load();
            let w = Word::from_bits(cur);
            if w.tag == e.seq {
                return Some(w.payload);
            }
            if b[e.index()].load() != bits {
                return None;
            }
            let new = Word::new(e.seq, f(w.payload));
            if unit.compare_exchange(cur, new.to_bits()).is_ok() {
                return Some(new.payload);
            }
        }
    }

    /// The first step of CLAIM or MOVE-IN `e` of slot `slot` in a
    /// single-word policy: its state word, set to `fill` (the claim's empty
    /// state, or the moving key's) tagged `e.seq`, if the slot is empty or
    /// its key has expired at `now`. A direct charge keeps no tag of its
    /// own and commits no transaction, so a charge of the slot's key may
    /// land after the claimer found it expired and committed: the word is
    /// then live, and the transaction lands on nothing
    /// ([`land_on_nothing`](Self::land_on_nothing)); its claimer looks
    /// again. The check and the write are one CAS, so a charge landing
    /// after it fails its own CAS and looks again. True: the state word is
    /// the transaction's (by this helper or another), and the caller writes
    /// the rest; false: the transaction is complete (it landed on nothing,
    /// here or by another helper, whose write of the victim's key word
    /// carries its tag, or it was done already). A helper with no time
    /// (`now` = 0) finds every charged key live: the transaction then lands
    /// on nothing, which is safe.
    fn take_expired(
        &self,
        b: &[Atomic128],
        slot: usize,
        e: Intent,
        now: u64,
        fill: Payload,
    ) -> bool {
        let unit = &self.slot_words(b, slot)[0];
        let bits = e.to_bits();
        loop {
            let cur = unit.load();
            let w = Word::from_bits(cur);
            if w.tag == e.seq {
                return true;
            }
            if b[e.index()].load() != bits {
                return false;
            }
            // The key word changes only by transactions of this bucket: while
            // this one is pending it holds the victim (or nothing), until a
            // helper writes the transaction's key into it, after this word.
            let key = Word::from_bits(b[self.key_unit(slot)].load());
            let live = if key.tag == e.seq {
                // Written by this transaction: its key, or the victim's own
                // key if a helper found it live.
                key.hash() != e.arg
            } else {
                key.hash() != 0 && self.single_expiry(w.payload, now) > now
            };
            if live {
                self.land_on_nothing(b, slot, e);
                return false;
            }
            if key.tag == e.seq {
                return true;
            }
            let taken = Word::new(e.seq, fill);
            if unit.compare_exchange(cur, taken.to_bits()).is_ok() {
                return true;
            }
        }
    }

    /// Completes CLAIM or MOVE-IN `e` without giving slot `slot` to its
    /// key, whose victim a helper found live ([`take_expired`](Self::take_expired)).
    /// Helpers with other times may judge the victim otherwise, so landing
    /// on nothing writes too: the victim's key word, as it is, with the
    /// transaction's tag. Whichever write of the key word comes first
    /// decides, and a helper that read it before can never write the
    /// transaction's key after it is done.
    #[cold]
    #[inline(never)]
    fn land_on_nothing(&self, b: &[Atomic128], slot: usize, e: Intent) {
        if Self::write(b, &b[self.key_unit(slot)], e, |p| p).is_some() {
            Self::mark_done(b, e);
        }
    }

    /// Marks pending transaction `e` done; failure means another helper
    /// already did.
    #[inline(always)]
    fn mark_done(b: &[Atomic128], e: Intent) {
        let _ = b[e.index()].compare_exchange(e.to_bits(), e.done().to_bits());
    }

    /// Completes transaction `e` (idempotent; any thread may call it) at
    /// `now`, the helper's time (0 if it has none), which only a CLAIM of a
    /// slot whose key had expired reads: see [`take_expired`](Self::take_expired).
    /// An intent naming a slot the bucket does not have (a corrupt shared
    /// file) is completed as a no-op.
    pub(super) fn apply(&self, b: &[Atomic128], e: Intent, now: u64) {
        let slot = e.slot;
        if slot >= SLOTS {
            Self::mark_done(b, e);
            return;
        }
        let words = self.slot_words(b, slot);
        let done = match e.op {
            Op::Retag => (0..SLOTS).all(|j| {
                Self::write(b, &b[self.key_unit(j)], e, |p| p).is_some()
                    && (self.layout.concurrency
                        || self
                            .slot_words(b, j)
                            .iter()
                            .all(|w| Self::write(b, w, e, |p| p).is_some()))
            }),
            Op::Claim | Op::Evict => {
                if e.op == Op::Claim
                    && self.layout.single_word
                    && !self.take_expired(b, slot, e, now, Payload::default())
                {
                    return;
                }
                let key = Word::key(e.seq, e.arg, e.cost as u32);
                Self::write(b, &b[self.key_unit(slot)], e, |_| key.payload).is_some()
                    && words
                        .iter()
                        .all(|w| Self::write(b, w, e, |_| Payload::default()).is_some())
            }
            // A reset frees the slot: the key word goes back to empty.
            Op::Reset => {
                Self::write(b, &b[self.key_unit(slot)], e, |_| Payload::default()).is_some()
                    && words
                        .iter()
                        .all(|w| Self::write(b, w, e, |_| Payload::default()).is_some())
            }
            Op::Factor => {
                let factor = e.cost as u32;
                // A key word's `a` is its override factor (see `Word`).
                Self::write(b, &b[self.key_unit(slot)], e, |p| Payload {
                    a: factor,
                    ..p
                })
                .is_some()
            }
            // A TOUCH naming a key (arg != 0) claims it in its second
            // bucket (see "Two buckets per key" in the module docs).
            Op::Touch | Op::TouchEvict => {
                if e.arg != 0 {
                    self.install_in_second(e, None, now);
                }
                true
            }
            Op::Move => self.move_out(b, e, now),
            Op::MoveIn => {
                let (from, i) = (self.bucket(self.bucket_of(e.arg)), e.cost as usize);
                if i >= SLOTS || self.layout.concurrency {
                    Self::mark_done(b, e);
                    return;
                }
                // The key word and state of the source slot, which the
                // pending MOVE there holds still (see "Moving a key"). A
                // helper that reads them after that MOVE is done finds this
                // transaction done too, and its writes fail.
                let (src_key, src) = (&from[self.key_unit(i)], self.slot_words(from, i));
                // A MOVE may target a slot whose key had expired: as for a
                // CLAIM, a charge of that key landing after the commit makes
                // the MOVE-IN land on nothing (and the key stays in its
                // first bucket: the MOVE reads the outcome).
                if self.layout.single_word {
                    let fill = Word::from_bits(src[0].load()).payload;
                    if !self.take_expired(b, slot, e, now, fill) {
                        return;
                    }
                }
                let factor =
                    |_| Word::key(0, e.arg, Word::from_bits(src_key.load()).factor()).payload;
                Self::write(b, &b[self.key_unit(slot)], e, factor).is_some()
                    && words.iter().zip(src).all(|(w, s)| {
                        Self::write(b, w, e, |_| Word::from_bits(s.load()).payload).is_some()
                    })
            }
            Op::Reserved12 | Op::Reserved13 | Op::Reserved14 | Op::Reserved15 => true,
            Op::Strike => {
                let (Some(pen), off, now) =
                    (self.layout.penalty, self.layout.penalty_offset, e.arg)
                else {
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
            op @ (Op::Charge | Op::Refund) => {
                let refund = op == Op::Refund;
                let (cost, now) = (e.cost, e.arg);
                // The key word's override is stable during a charge: only
                // CLAIM and FACTOR transactions write it.
                let factor = self.key_word(b, slot).factor();
                self.with_limits(factor, |limits| {
                    limits
                        .iter()
                        .all(|l| Self::apply_limit(b, words, l, e, refund, cost, now))
                })
            }
        };
        if done {
            Self::mark_done(b, e);
        }
    }

    /// Completes what TOUCH or MOVE `e` (in key `e.arg`'s first bucket)
    /// stands for in the key's second bucket: slot `e.slot` there, chosen
    /// from a snapshot at seq `e.cost` (its low 24 bits), becomes the key's —
    /// for a TOUCH by a CLAIM (fresh state), for a MOVE by a MOVE-IN copying
    /// source slot `from` of the first bucket — if that bucket is still at
    /// that seq. Returns once the bucket has moved past it (by this claim or
    /// any other transaction), after which the claim can never be made: so
    /// once the TOUCH or MOVE is done, no late helper can put the key in the
    /// second bucket. A MOVE-IN found pending is completed before returning
    /// (the MOVE then reads its outcome); nothing else of the second bucket
    /// is helped, so a chain of such intents (or a cycle, in a corrupt file)
    /// never recurses; a pair it cannot read as consistent has moved on too
    /// (or is corrupt: the next snapshot of it repairs it).
    fn install_in_second(&self, e: Intent, from: Option<usize>, now: u64) {
        let Some(bi) = self.second_of(e.arg) else {
            return; // a corrupt file: this table has one bucket
        };
        let b = self.bucket(bi);
        let at = e.cost as u32;
        let (op, cost) = match from {
            None if e.op == Op::TouchEvict => (Op::Evict, self.override_of(e.arg) as u64),
            None => (Op::Claim, self.override_of(e.arg) as u64),
            Some(i) => (Op::MoveIn, i as u64),
        };
        loop {
            let (e0, e1) = (b[0].load(), b[1].load());
            let (i0, i1) = (Intent::from_bits(e0), Intent::from_bits(e1));
            let (cur, other) = if i1.seq == i0.seq.wrapping_add(1) {
                (e1, e0)
            } else {
                (e0, e1)
            };
            let latest = Intent::from_bits(cur);
            if !Self::consistent(e0, e1, cur, other) {
                return;
            }
            let low = |seq: u32| seq & Intent::COST_MASK as u32;
            if latest.pending {
                let ours = latest.op == op
                    && latest.op == Op::MoveIn
                    && latest.arg == e.arg
                    && latest.slot == e.slot
                    && latest.cost == cost
                    && low(latest.seq) == low(at.wrapping_add(1));
                if ours {
                    self.apply(b, latest, now);
                }
                return;
            }
            if low(latest.seq) != at {
                return;
            }
            let snap = Snapshot {
                e0,
                e1,
                seq: latest.seq,
            };
            if self.transact(b, &snap, op, e.slot, cost, e.arg, now) {
                return;
            }
        }
    }

    /// Completes MOVE `e` in bucket `f` (key `e.arg`'s first; see "Moving a
    /// key" in the module docs): freezes the key's state words (rewritten
    /// with the MOVE's tag, so that no direct update read before the MOVE
    /// can land), installs key and state in the second bucket, then writes
    /// the outcome into the key word: empty if the second bucket's slot now
    /// holds the key, unchanged if the second bucket moved on without it.
    /// A key no longer in `f` was moved already (or the intent is corrupt):
    /// nothing to do. Returns false if another helper finished first.
    fn move_out(&self, f: &[Atomic128], e: Intent, now: u64) -> bool {
        if e.arg == 0 || self.layout.concurrency {
            return true; // only a corrupt file holds such a MOVE
        }
        let Some(i) = self.find(f, e.arg) else {
            return true;
        };
        if !self
            .slot_words(f, i)
            .iter()
            .all(|w| Self::write(f, w, e, |p| p).is_some())
        {
            return false;
        }
        self.install_in_second(e, Some(i), now);
        let moved = self
            .second_of(e.arg)
            .is_some_and(|s| self.key_word(self.bucket(s), e.slot).hash() == e.arg);
        Self::write(f, &f[self.key_unit(i)], e, |p| {
            if moved {
                Payload::default()
            } else {
                p
            }
        })
        .is_some()
    }

    fn apply_limit(
        b: &[Atomic128],
        words: &[Atomic128],
        l: &LimitParams,
        e: Intent,
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
            (Algorithm::SlidingLog, true)
                if !sliding_log::refundable(Word::from_bits(w[0].load()).payload, now) =>
            {
                // Nothing given back. The key's words change only by this
                // transaction while its intent is pending, so a helper reads
                // either the meta word as it was (not refundable: no helper
                // writes it, all skip) or, if the original was refundable
                // and another helper already wrote it, the refunded meta,
                // whose newest entry is older still: it goes on below.
                true
            }
            (Algorithm::SlidingLog, _) => {
                let n = l.count as usize;
                let meta = Self::write(b, &w[0], e, |m| {
                    if refund {
                        let keeper = sliding_log::refund_keeper(l, m, cost);
                        let kept = Word::from_bits(w[1 + keeper].load()).payload;
                        sliding_log::refund_meta(l, m, cost, kept)
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
}
