//! What the unit tests and the loom models share: a table that owns its
//! memory, a dump of its words, and moves built or committed by hand (the
//! state a stalled or killed process leaves).

use super::word::{Intent, Op, Slot};
use super::*;
use crate::engine::layout_for;
use crate::policy::parse;
use crate::table::memory::Memory;

/// A packed table with its memory.
pub(super) struct Owned {
    pub shape: Shape,
    pub mem: Memory,
}

impl Owned {
    /// A table of `buckets` buckets for the one-limit GCRA policy `spec`.
    pub fn new(spec: &str, when_full: WhenFull, buckets: usize) -> Owned {
        let layout = layout_for(&parse(spec).unwrap(), None).unwrap();
        let units = Shape::units_needed(buckets);
        Owned {
            shape: Shape::new(layout.first, when_full, buckets, units, 0),
            mem: Memory::heap(units).unwrap(),
        }
    }

    pub fn t(&self) -> Packed<'_> {
        self.shape.over(self.mem.units())
    }
}

/// Every live or frozen word of the table, as (bucket, slot, word).
pub(super) fn words(t: &Packed<'_>) -> Vec<(usize, usize, Slot)> {
    let mut out = Vec::new();
    for x in 0..=t.mask {
        for (j, u) in t.line(x).iter().enumerate() {
            let w = Slot::from_bits(u.load());
            if !w.is_empty() {
                out.push((x, j, w));
            }
        }
    }
    out
}

/// The MOVE of the key at slot `j` of bucket `x` into slot `k` of its other
/// bucket, naming the generations the two slots have now: (its group, the
/// intent, with `seq` 0 and not pending).
pub(super) fn move_of(t: &Packed<'_>, x: usize, j: usize, k: usize) -> (usize, Intent) {
    let w = Slot::from_bits(t.line(x)[j].load());
    let off = t.off_of(w.fp);
    let y = x ^ off;
    let (g, d) = Packed::group_of(x, off);
    let m = Intent {
        op: Op::Move,
        member: (d % GROUP) as u8,
        tgt_other: y != d,
        tgt_slot: k as u8,
        src_slot: j as u8,
        tgt_gen: Slot::from_bits(t.line(y)[k].load()).gen,
        src_gen: w.gen,
        fp: w.fp,
        ..Intent::FRESH
    };
    (g, m)
}

/// Commits [`move_of`] as its group's next pending intent, without any of
/// its steps.
pub(super) fn commit_move(t: &Packed<'_>, x: usize, j: usize, k: usize) -> (usize, Intent) {
    let (g, m) = move_of(t, x, j, k);
    let snap = t.intent(g).load();
    let m = Intent {
        seq: Intent::from_bits(snap).seq + 1,
        pending: true,
        ..m
    };
    t.intent(g).compare_exchange(snap, m.to_bits()).unwrap();
    (g, m)
}

/// Commits, as key `h`'s group's next pending intent, a CLAIM of slot `j`
/// of bucket `x` (one of `h`'s buckets) for `h`, naming the generation the
/// slot has now, without its step: (the group, the intent).
pub(super) fn commit_claim(
    t: &Packed<'_>,
    h: u64,
    x: usize,
    j: usize,
    evict: bool,
) -> (usize, Intent) {
    let fp = Packed::fp_of(h);
    let off = t.off_of(fp);
    let a = h as usize & t.mask;
    assert!(x == a || x == a ^ off, "bucket {x} is not one of the key's");
    let (g, d) = Packed::group_of(a, off);
    let snap = t.intent(g).load();
    let c = Intent {
        seq: Intent::from_bits(snap).seq + 1,
        op: Op::Claim,
        pending: true,
        member: (d % GROUP) as u8,
        tgt_other: x != d,
        tgt_slot: j as u8,
        tgt_gen: Slot::from_bits(t.line(x)[j].load()).gen,
        fp,
        evict,
        ..Intent::FRESH
    };
    t.intent(g).compare_exchange(snap, c.to_bits()).unwrap();
    (g, c)
}
