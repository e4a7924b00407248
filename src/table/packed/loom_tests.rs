//! Loom models of the packed table's protocol (module docs). Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --lib loom_packed`.
//!
//! Under loom a bucket has two slots and each `Atomic128` operation is one
//! atomic step. The smallest table has 4 buckets (one group), so every key
//! shares its intent with every other.

use super::word::{Intent, Op, Slot};
use super::*;
use crate::table::memory::Memory;
use crate::engine::layout_for;
use crate::policy::parse;
use loom::sync::Arc;
use loom::thread;

const S: u64 = 1_000_000_000;

/// A packed table with its memory.
struct Owned {
    shape: Shape,
    mem: Memory,
}

impl Owned {
    fn t(&self) -> Packed<'_> {
        self.shape.over(self.mem.units())
    }
}

/// The smallest table (one group) for `spec`.
fn table(spec: &str) -> Arc<Owned> {
    let layout = layout_for(&parse(spec).unwrap(), None).unwrap();
    let units = Shape::units_needed(GROUP);
    let mem = Memory::heap(units).unwrap();
    Arc::new(Owned {
        shape: Shape::new(layout.first, WhenFull::Evict, GROUP, units, 0),
        mem,
    })
}

/// The `n`th key hash whose first bucket is `a` and second `b` (searched:
/// the offset is a hash of the fingerprint). Different `a`, `b`, `n` give
/// different fingerprints.
fn key(t: &Packed<'_>, a: usize, b: usize, n: u64) -> u64 {
    (1u64..)
        .map(|i| (mix(i << 16 | (a as u64) << 8 | b as u64) & !(t.mask as u64)) | a as u64)
        .filter(|&h| (h as usize & t.mask) ^ t.off_of(Packed::fp_of(h)) == b)
        .nth(n as usize)
        .unwrap()
}

fn allowed(o: Outcome) -> bool {
    matches!(o, Outcome::Decided { verdict, .. } if verdict.allowed)
}

/// (bucket, slot, word) of every non-empty slot.
fn words(t: &Packed<'_>) -> Vec<(usize, usize, Slot)> {
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

/// The slot word holding `h`'s key, asserting it is held once and live.
fn single(t: &Packed<'_>, h: u64) -> Option<Slot> {
    let ws: Vec<Slot> = words(t)
        .into_iter()
        .map(|w| w.2)
        .filter(|w| w.fp == Packed::fp_of(h))
        .collect();
    assert!(ws.len() <= 1, "key held twice: {ws:?}");
    assert!(ws.iter().all(|w| !w.frozen), "key left frozen: {ws:?}");
    ws.first().copied()
}

/// Commits a MOVE of the key at slot `j` of bucket `x` into slot `k` of its
/// other bucket, without completing it.
fn commit_move(t: &Packed<'_>, x: usize, j: usize, k: usize) -> (usize, Intent) {
    let w = Slot::from_bits(t.line(x)[j].load());
    let off = t.off_of(w.fp);
    let y = x ^ off;
    let (g, d) = Packed::group_of(x, off);
    let snap = t.intent(g).load();
    let m = Intent {
        seq: Intent::from_bits(snap).seq + 1,
        op: Op::Move,
        pending: true,
        member: (d % GROUP) as u8,
        tgt_other: y != d,
        tgt_slot: k as u8,
        src_slot: j as u8,
        tgt_gen: Slot::from_bits(t.line(y)[k].load()).gen,
        src_gen: w.gen,
        off: off as u32,
        ..Intent::FRESH
    };
    t.intent(g).compare_exchange(snap, m.to_bits()).unwrap();
    (g, m)
}

#[test]
fn loom_packed_racing_claims_of_one_new_key_hold_it_once_with_exact_quota() {
    loom::model(|| {
        let o = table("2/second");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        let th: Vec<_> = (0..2)
            .map(|_| {
                let o = o.clone();
                thread::spawn(move || allowed(o.t().decide(h, 1, S, true)))
            })
            .collect();
        let admitted = th.into_iter().map(|j| j.join().unwrap());
        let admitted = admitted.filter(|&a| a).count();
        assert_eq!(admitted, 2);
        assert!(single(&t, h).is_some());
        assert!(!allowed(t.decide(h, 1, S, true)), "a third request over a limit of two");
    });
}

#[test]
fn loom_packed_a_charge_racing_a_move_of_its_key_is_kept_and_the_key_stays_single() {
    loom::model(|| {
        let o = table("3/hour");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        assert!(allowed(t.decide(h, 1, S, true)));
        let (x, j, _) = words(&t)[0];
        let (g, m) = commit_move(&t, x, j, 1);
        let charger = {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(h, 1, S, true)))
        };
        let helper = {
            let o = o.clone();
            thread::spawn(move || {
                o.t().complete(g, m.to_bits(), S);
            })
        };
        assert!(charger.join().unwrap());
        helper.join().unwrap();
        assert!(single(&t, h).is_some());
        assert!(allowed(t.decide(h, 1, S, true)), "the third of three");
        assert!(!allowed(t.decide(h, 1, S, true)), "the charge racing the move was lost");
    });
}

#[test]
fn loom_packed_a_claim_and_a_move_racing_for_one_empty_slot_keep_every_key_single() {
    loom::model(|| {
        let o = table("3/hour");
        let t = o.t();
        // K lives in bucket 0 (pair 0/1); bucket 1 has one empty slot left,
        // which K's move and J's claim both want.
        let k = key(&t, 0, 1, 0);
        let f = key(&t, 1, 0, 0);
        assert!(allowed(t.decide(f, 1, S, true)));
        assert!(allowed(t.decide(k, 1, S, true)));
        let kx = words(&t).into_iter().find(|w| w.2.fp == Packed::fp_of(k)).unwrap();
        assert_eq!(kx.0, 0, "{:?} k={k:x} f={f:x}", words(&t));
        let free = (0..WAYS)
            .find(|&s| Slot::from_bits(t.line(1)[s].load()).is_empty())
            .unwrap();
        let (g, m) = commit_move(&t, kx.0, kx.1, free);
        // J's buckets are 1 and 0, one free slot each: it claims bucket 1's
        // (its first, on a tie) unless the move took it.
        let jh = key(&t, 1, 0, 1);
        let claimer = {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(jh, 1, S, true)))
        };
        let helper = {
            let o = o.clone();
            thread::spawn(move || {
                o.t().complete(g, m.to_bits(), S);
            })
        };
        assert!(claimer.join().unwrap());
        helper.join().unwrap();
        for h in [k, f, jh] {
            assert!(single(&t, h).is_some(), "a key was lost");
            assert!(allowed(t.decide(h, 1, S, true)));
            assert!(allowed(t.decide(h, 1, S, true)));
            assert!(!allowed(t.decide(h, 1, S, true)), "a key lost its charge");
        }
    });
}

#[test]
fn loom_packed_an_eviction_racing_a_move_of_its_victim_keeps_every_key_single() {
    loom::model(|| {
        let o = table("2/hour");
        let t = o.t();
        // Buckets 0 and 1 full (2 keys each); V (in bucket 0) is being
        // moved to bucket 2 (pair 0/2) while a new key N of pair 0/1 must
        // evict (or wait for the slot the move frees).
        let v = key(&t, 0, 2, 0);
        let others = [key(&t, 0, 1, 0), key(&t, 1, 0, 0), key(&t, 1, 0, 1)];
        assert!(allowed(t.decide(v, 1, S, true)));
        for (i, &h) in others.iter().enumerate() {
            assert!(allowed(t.decide(h, 1, S + 1 + i as u64, true)));
        }
        let vx = words(&t).into_iter().find(|w| w.2.fp == Packed::fp_of(v)).unwrap();
        assert_eq!(vx.0, 0, "V placed in its first bucket");
        let (g, m) = commit_move(&t, vx.0, vx.1, 0);
        let n = key(&t, 0, 1, 1);
        let claimer = {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(n, 1, S, true)))
        };
        let helper = {
            let o = o.clone();
            thread::spawn(move || {
                o.t().complete(g, m.to_bits(), S);
            })
        };
        assert!(claimer.join().unwrap());
        helper.join().unwrap();
        assert!(single(&t, n).is_some());
        for h in [v, others[0], others[1], others[2]] {
            // Each is held once, or was evicted; one that is held kept its charge.
            if let Some(w) = single(&t, h) {
                assert!(w.state > S, "a held key lost its state");
            }
        }
    });
}

#[test]
fn loom_packed_a_stalled_helper_of_a_finished_move_changes_nothing_when_the_key_comes_back() {
    loom::model(|| {
        let o = table("2/hour");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        assert!(allowed(t.decide(h, 1, S, true)));
        let (x, j, w) = words(&t)[0];
        let (g, m1) = commit_move(&t, x, j, 0);
        // The stalled helper: any prefix of its steps may run before the
        // mover finishes M1 and moves the key back.
        let stalled = {
            let o = o.clone();
            thread::spawn(move || {
                o.t().complete(g, m1.to_bits(), S);
            })
        };
        t.complete(g, m1.to_bits(), S);
        let (y, k, _) = words(&t)[0];
        let (g2, m2) = commit_move(&t, y, k, j);
        t.complete(g2, m2.to_bits(), S);
        stalled.join().unwrap();
        let back = single(&t, h).expect("the key was lost");
        assert_eq!((back.state, back.fp), (w.state, w.fp));
        assert_eq!(words(&t).len(), 1);
        assert_eq!(words(&t)[0].0, x, "the key is back where it started");
    });
}
