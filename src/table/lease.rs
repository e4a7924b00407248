//! Concurrency leases: a policy that is one concurrency limit keeps one
//! lease word per permit in each slot (`b`: the lease's expiry, 0 = free;
//! `a`: a [`LeaseId`]), changed by direct CAS only.

use super::txn::Snapshot;
use super::words::{LeaseId, Op, Word};
use super::{Located, Outcome, SlotView, Table, SLOTS};
use crate::algo::{self, concurrency, Payload};
use crate::sync::Atomic128;

/// A lease held by [`Table::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    pub bucket: u32,
    pub slot: u8,
    pub index: u16,
    /// The lease word as written (a [`Word`]'s bits): a permit names this
    /// one lease only.
    pub word: u128,
}

impl Table {
    /// Takes a concurrency lease for `h` held by `holder` until `now + ttl`.
    pub fn acquire(&self, h: u64, now: u64, holder: u32) -> (Outcome, Option<Lease>) {
        let now = now.min(algo::MAX_TIME_NS);
        let l = self.layout.limits[0];
        let mut evicted = false;
        loop {
            let (b, bi, snap, j) = match self.locate(h, now) {
                Located::At(p) => (p.b, p.bi, p.snap, p.slot),
                Located::Absent(absent) => {
                    let verdict = self.fresh_verdict(h, 1, now);
                    if !verdict.allowed {
                        return (Outcome::Decided { verdict, evicted }, None);
                    }
                    match self.claim(h, &absent, now) {
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
            let verdict = self.evaluate(&self.layout.limits, &view, 1, now);
            let free = concurrency::free_lease(&l, &view, now);
            // The word the lease is CASed from is read before `still`, so
            // that it is the word under `snap`: a claim (or reset) of the
            // slot committed after `still` rewrites it with a newer tag and
            // the CAS fails. Read after `still`, it could be the word such a
            // transaction had already zeroed, and the lease would land in
            // the slot of the key that claimed it.
            let free = free.map(|i| (i, words[i].load()));
            if !Self::still(b, &snap) {
                continue;
            }
            if !verdict.allowed {
                return (Outcome::Decided { verdict, evicted }, None);
            }
            let Some((i, cur)) = free else { continue };
            let w = Word::from_bits(cur);
            if w.payload.b > now {
                continue;
            }
            // The lease word must differ from every earlier lease of this
            // position that a stale permit may still name: the tag (the
            // bucket's seq) changes with every transaction, the nonce with
            // every lease under one seq; when the nonces run out, a no-op
            // transaction gives the bucket a new seq first.
            let nonce = (LeaseId::from_a(w.payload.a).nonce + 1) % LeaseId::NONCES;
            if nonce == 0 && w.tag == snap.seq {
                self.transact(b, &snap, Op::Touch, 0, 0, 0, now);
                continue;
            }
            let new = Word::new(
                snap.seq,
                Payload {
                    a: LeaseId::new(holder, nonce).to_a(),
                    b: now.saturating_add(l.period_ns).max(1),
                },
            )
            .to_bits();
            if words[i].compare_exchange(cur, new).is_err() {
                continue;
            }
            let lease = Lease {
                bucket: bi as u32,
                slot: j as u8,
                index: i as u16,
                word: new,
            };
            // A claimer may have judged the key expired from an older
            // snapshot and not committed yet: fence such claims before
            // handing out the permit (see `fence_lease`). Also when the key
            // held other live leases here: a claimer judges at its own
            // `now` (which may be past their expiry), and they may have been
            // released since they were read.
            if !self.fence_lease(b, &snap, &lease, now) {
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
    pub(super) fn fence_lease(
        &self,
        b: &[Atomic128],
        snap: &Snapshot,
        lease: &Lease,
        now: u64,
    ) -> bool {
        let mut snap = *snap;
        loop {
            if self.transact(b, &snap, Op::Touch, 0, 0, 0, now) {
                return true;
            }
            snap = self.snapshot(b, now);
            let unit = &self.slot_words(b, lease.slot as usize)[lease.index as usize];
            if unit.load() != lease.word {
                return false;
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
        unit.compare_exchange(lease.word, Self::freed(Word::from_bits(lease.word)))
            .is_ok()
    }

    /// Lease word `w`, free: same tag and [`LeaseId`], expiry 0.
    #[inline]
    fn freed(w: Word) -> u128 {
        Word::new(
            w.tag,
            Payload {
                a: w.payload.a,
                b: 0,
            },
        )
        .to_bits()
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
                    let w = Word::from_bits(cur);
                    if w.payload.b != 0
                        && LeaseId::from_a(w.payload.a).held_by(holder)
                        && unit.compare_exchange(cur, Self::freed(w)).is_ok()
                    {
                        n += 1;
                    }
                }
            }
        }
        n
    }
}
