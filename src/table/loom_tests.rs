//! Loom models of the table protocol. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test --release --lib loom_`.
//!
//! Under loom a bucket has two slots, each `Atomic128` operation is one
//! atomic step, and loom explores every interleaving of the threads (up to
//! the preemption bound).

use super::words::Intent;
use super::*;
use crate::engine::layout_for;
use crate::policy::parse;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;

const S: u64 = 1_000_000_000;

/// A one-bucket table for `spec`.
fn table(spec: &str) -> Arc<Table> {
    let layout = layout_for(&parse(spec).unwrap(), None).unwrap().unpacked();
    let mem = Memory::heap(Table::units_needed(&layout, 1)).unwrap();
    Arc::new(Table::new(layout, WhenFull::Evict, 1, mem, 0))
}

/// Two threads each charge cost 1 to key 7 at `now`; how many were admitted.
fn racing_checks(t: &Arc<Table>, now: u64) -> usize {
    racing_checks_on(t, 7, now)
}

/// A one-bucket table for `spec` that fails closed when full (it never
/// evicts a live key).
fn failing_closed(spec: &str) -> Table {
    let layout = layout_for(&parse(spec).unwrap(), None).unwrap().unpacked();
    let mem = Memory::heap(Table::units_needed(&layout, 1)).unwrap();
    Table::new(layout, WhenFull::FailClosed, 1, mem, 0)
}

fn allowed(o: Outcome) -> bool {
    matches!(o, Outcome::Decided { verdict, .. } if verdict.allowed)
}

fn peek(t: &Table, h: u64, now: u64) -> Verdict {
    match t.decide(h, 1, now, Mode::Peek) {
        Outcome::Decided { verdict, .. } => verdict,
        o => panic!("{o:?}"),
    }
}

#[test]
fn loom_a_new_key_claimed_by_racing_threads_gets_one_slot_and_exact_quota() {
    loom::model(|| {
        let t = table("2/second");
        assert_eq!(racing_checks(&t, S), 2);
        assert_eq!(t.occupancy(), 1, "the key must not be duplicated");
        assert_eq!(peek(&t, 7, S).remaining, 0);
        assert!(!allowed(t.decide(7, 1, S, Mode::Charge)));
    });
}

#[test]
fn loom_gcra_update_on_one_key_admits_exactly_the_remaining_quota() {
    loom::model(|| {
        let t = table("3/second");
        assert!(allowed(t.decide(7, 2, S, Mode::Charge)));
        assert_eq!(racing_checks(&t, S), 1);
    });
}

/// A two-slot fixed window (5 a second) full: key 1 charged `cost` at 0
/// (so it expires first), key 2 charged 1 at S/2. At `now` = S − 1 thread A
/// runs `a` while thread B brings key 3, evicting key 1, possibly while A is
/// mid-update. Key 3, if it got in, then carries exactly its own charge: a
/// stale update of key 1 landing on its slot would show as more. (A peek of
/// cost 1 reports what remains after it: 5 - 1 - 1.) Returns the table and
/// `now`.
fn racing_key_three_in(cost: u64, a: fn(&Table, u64)) -> (Arc<Table>, u64) {
    let t = table("fixed_window 5/second");
    assert!(allowed(t.decide(1, cost, 0, Mode::Charge)));
    assert!(allowed(t.decide(2, 1, S / 2, Mode::Charge)));
    let now = S - 1;
    let ta = {
        let t = t.clone();
        thread::spawn(move || a(&t, now))
    };
    let tb = {
        let t = t.clone();
        thread::spawn(move || assert!(allowed(t.decide(3, 1, now, Mode::Charge))))
    };
    ta.join().unwrap();
    tb.join().unwrap();
    if t.find(t.bucket(0), 3).is_some() {
        assert_eq!(
            peek(&t, 3, now).remaining,
            3,
            "key 3 saw another key's charge"
        );
    }
    (t, now)
}

#[test]
fn loom_slot_reuse_never_applies_a_stale_update_to_the_new_key() {
    loom::model(|| {
        // Thread A charges key 1 twice.
        let (t, now) = racing_key_three_in(1, |t, now| {
            t.decide(1, 2, now, Mode::Charge);
        });
        // Key 2, if still present, has only its own charge.
        if t.find(t.bucket(0), 2).is_some() {
            assert_eq!(peek(&t, 2, now).remaining, 3);
        }
    });
}

#[test]
fn loom_window_roll_over_opens_one_window_for_racing_threads() {
    loom::model(|| {
        let t = table("fixed_window 1/second");
        assert!(allowed(t.decide(7, 1, 0, Mode::Charge)));
        assert_eq!(racing_checks(&t, S + 5), 1);
        let v = peek(&t, 7, S + 5);
        assert_eq!((v.remaining, v.reset_after_ns), (0, S));
    });
}

#[test]
fn loom_sliding_log_appends_from_racing_threads_are_all_recorded() {
    loom::model(|| {
        let t = table("sliding_log 3/second");
        assert!(allowed(t.decide(7, 1, 0, Mode::Charge)));
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let t = t.clone();
                thread::spawn(move || {
                    assert!(allowed(t.decide(7, 1, 10 + i, Mode::Charge)));
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let v = peek(&t, 7, 20);
        assert_eq!(v.remaining, 0, "three entries");
        assert!(!v.allowed);
        // The oldest entry (t = 0) stops counting first.
        assert_eq!(v.retry_after_ns, S - 20);
    });
}

#[test]
fn loom_composite_charge_is_all_or_nothing() {
    loom::model(|| {
        let t = table("2/second; fixed_window 2/minute");
        let ta = {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(7, 2, S, Mode::Charge)))
        };
        let tb = {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(7, 1, S, Mode::Charge)))
        };
        let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
        assert!(
            a ^ b,
            "exactly one of cost 2 and cost 1 fits after the other"
        );
        // Whatever won, both limits hold exactly its charge: 1 left after
        // the cost-1 request, none after the cost-2 one.
        let left = if a { 0 } else { 1 };
        assert_eq!(peek(&t, 7, S).allowed, left > 0);
        // Charge the rest through the composite and confirm nothing extra.
        let mut n = 0;
        while allowed(t.decide(7, 1, S, Mode::Charge)) {
            n += 1;
        }
        assert_eq!(n, left);
    });
}

#[test]
fn loom_leases_are_exclusive_and_expired_leases_are_reclaimed_once() {
    loom::model(|| {
        let t = table("concurrency 1 ttl 1 second");
        // A lease taken at 0 and never released expires at 1 s.
        assert!(t.acquire(7, 0, 1).1.is_some());
        let holders = Arc::new(AtomicUsize::new(0));
        let got = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..2)
            .map(|i| {
                let (t, holders, got) = (t.clone(), holders.clone(), got.clone());
                thread::spawn(move || {
                    if let (_, Some(lease)) = t.acquire(7, 2 * S, 10 + i) {
                        got.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(
                            holders.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two holders at once"
                        );
                        holders.fetch_sub(1, Ordering::SeqCst);
                        assert!(t.release(&lease));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert!(got.load(Ordering::SeqCst) >= 1);
        assert!(
            t.acquire(7, 2 * S, 99).1.is_some(),
            "released leases are free"
        );
    });
}

#[test]
fn loom_a_reset_racing_a_charge_leaves_either_order_never_a_mix() {
    loom::model(|| {
        let t = table("sliding_log 2/second; 3/second");
        assert!(allowed(t.decide(7, 1, S, Mode::Charge)));
        let ta = {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(7, 1, S, Mode::Charge)))
        };
        let tb = {
            let t = t.clone();
            thread::spawn(move || {
                t.reset(7);
            })
        };
        assert!(ta.join().unwrap());
        tb.join().unwrap();
        // Reset first then charge: one entry (a peek leaves 0); charge first
        // then reset: none (a peek leaves 1). Never a mix of the two limits.
        let v = peek(&t, 7, S);
        assert!(v.remaining <= 1, "{v:?}");
        let more = (0..3)
            .filter(|_| allowed(t.decide(7, 1, S, Mode::Charge)))
            .count() as u64;
        assert_eq!(more, v.remaining + 1);
    });
}

#[test]
fn loom_racing_strikes_start_exactly_one_ban() {
    loom::model(|| {
        let layout = layout_for(
            &parse("1/second").unwrap(),
            Some(crate::abuse::Penalty {
                strikes: 2,
                window_ns: 10 * S,
                ban_ns: 100 * S,
                max_ban_ns: 1000 * S,
            }),
        )
        .unwrap();
        let mem = Memory::heap(Table::units_needed(&layout, 1)).unwrap();
        let t = Arc::new(Table::new(layout, WhenFull::Evict, 1, mem, 0));
        assert!(allowed(t.decide(7, 1, S, Mode::Charge)));
        let new_bans = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (t, new_bans) = (t.clone(), new_bans.clone());
                thread::spawn(move || {
                    if let Outcome::Decided { verdict, .. } = t.decide(7, 1, S, Mode::Charge) {
                        assert!(!verdict.allowed);
                        if verdict.new_ban {
                            new_bans.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(new_bans.load(Ordering::SeqCst), 1, "two strikes, one ban");
        let v = peek(&t, 7, 2 * S);
        assert!(v.banned);
        assert_eq!(v.retry_after_ns, 99 * S);
    });
}

#[test]
fn loom_an_override_set_while_its_key_is_claimed_always_reaches_the_slot() {
    loom::model(|| {
        let layout = layout_for(&parse("2/second").unwrap(), None)
            .unwrap()
            .unpacked();
        let units = Table::units_needed(&layout, 1);
        let mem = Memory::heap(2 + units).unwrap();
        let t = Arc::new(Table::with_overrides(
            layout,
            WhenFull::Evict,
            1,
            mem,
            2,
            0,
            2,
        ));
        let ta = {
            let t = t.clone();
            thread::spawn(move || {
                assert!(allowed(t.decide(7, 1, S, Mode::Charge)));
            })
        };
        let tb = {
            let t = t.clone();
            thread::spawn(move || t.set_override(7, 3000).unwrap())
        };
        ta.join().unwrap();
        tb.join().unwrap();
        // However they interleaved, the key now has 3 × 2 = 6 per second:
        // 5 more if A charged under the override; 2 more if A charged half a
        // second of the old 2/second first (GCRA state is time). Without the
        // override (the race lost) only 1 more would fit.
        let admitted = (0..10)
            .filter(|_| allowed(t.decide(7, 1, S, Mode::Charge)))
            .count();
        assert!(admitted == 5 || admitted == 2, "{admitted}");
    });
}

/// A thread that takes a lease on key `h` at `now` for `holder`.
fn spawn_acquire(
    t: &Arc<Table>,
    h: u64,
    now: u64,
    holder: u32,
) -> thread::JoinHandle<Option<Lease>> {
    let t = t.clone();
    thread::spawn(move || t.acquire(h, now, holder).1)
}

/// Every live lease word of the table (any slot, any index).
fn live_leases(t: &Table, now: u64) -> usize {
    let b = t.bucket(0);
    (0..SLOTS)
        .map(|j| {
            t.slot_words(b, j)
                .iter()
                .filter(|w| Word::from_bits(w.load()).payload.b > now)
                .count()
        })
        .sum()
}

#[test]
fn loom_eviction_racing_a_multi_word_charge_never_mixes_two_keys() {
    loom::model(|| {
        // Both slots full; key 1 expires first.
        let t = table("2/second; fixed_window 5/minute");
        assert!(allowed(t.decide(1, 1, 0, Mode::Charge)));
        assert!(allowed(t.decide(2, 1, S / 2, Mode::Charge)));
        let now = 100 * S;
        let ta = {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(1, 2, now, Mode::Charge)))
        };
        let tb = {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(3, 1, now, Mode::Charge)))
        };
        let a = ta.join().unwrap();
        assert!(tb.join().unwrap());
        // Whoever holds a slot holds exactly its own charges, in both words
        // (a peek of cost 1 reports what would remain after it).
        let b = t.bucket(0);
        assert!(t.find(b, 3).is_some(), "the new key is in");
        let v = peek(&t, 3, now);
        assert_eq!((v.remaining, v.limit_index), (0, 0), "key 3: {v:?}");
        let words3: Vec<u64> = t
            .slot_words(b, t.find(b, 3).unwrap())
            .iter()
            .map(|w| Word::from_bits(w.load()).payload.a as u64)
            .collect();
        assert_eq!(words3[1], 1, "key 3's window counts its one request");
        if a && t.find(b, 1).is_some() {
            let j = t.find(b, 1).unwrap();
            assert_eq!(Word::from_bits(t.slot_words(b, j)[1].load()).payload.a, 2);
        }
        assert_eq!(t.occupancy(), 2);
    });
}

#[test]
fn loom_acquire_racing_eviction_never_loses_a_live_lease() {
    loom::model(|| {
        let t = table("concurrency 1 ttl 1 second");
        // Key 1's lease expired at 1 s; key 2's is live until 3 s.
        assert!(t.acquire(1, 0, 11).1.is_some());
        assert!(t.acquire(2, 2 * S, 12).1.is_some());
        let now = 2 * S;
        let ta = spawn_acquire(&t, 1, now, 21);
        let tb = spawn_acquire(&t, 3, now, 23);
        let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
        // One slot was free to reclaim: at most one of them got it, and a
        // lease handed out is still there to release.
        assert!(!(a.is_some() && b.is_some()), "two keys in one free slot");
        assert_eq!(
            live_leases(&t, now),
            1 + a.is_some() as usize + b.is_some() as usize
        );
        for lease in [a, b].into_iter().flatten() {
            assert!(t.release(&lease), "a live lease was lost");
        }
    });
}

#[test]
fn loom_a_third_thread_helps_a_pending_transaction_exactly_once() {
    loom::model(|| {
        let t = table("3/second; fixed_window 4/minute");
        assert!(allowed(t.decide(7, 1, S, Mode::Charge)));
        // A writer died right after committing a charge of 1.
        let b = t.bucket(0);
        let j = t.find(b, 7).unwrap();
        let snap = t.snapshot(b, 0);
        let s1 = snap.seq.wrapping_add(1);
        let e = Intent::pending(s1, Op::Charge, j, 1, S);
        let expected = if e.index() == 0 { snap.e0 } else { snap.e1 };
        assert!(b[e.index()].compare_exchange(expected, e.to_bits()).is_ok());
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                thread::spawn(move || allowed(t.decide(7, 1, S, Mode::Charge)))
            })
            .collect();
        let helper = {
            let t = t.clone();
            thread::spawn(move || peek(&t, 7, S).remaining)
        };
        let admitted = hs.into_iter().filter(|_| true).map(|h| h.join().unwrap());
        let admitted = admitted.filter(|&a| a).count();
        helper.join().unwrap();
        // 1 + the dead writer's 1 + whoever was admitted: exactly 3 in all.
        assert_eq!(admitted, 1);
        let words = t.slot_words(b, j);
        assert_eq!(
            Word::from_bits(words[1].load()).payload.a,
            3,
            "the window counts 3, once each"
        );
    });
}

#[test]
fn loom_a_second_release_never_frees_a_lease_taken_in_between() {
    loom::model(|| {
        let t = table("concurrency 1 ttl 10 seconds");
        let now = S;
        let first = t.acquire(7, now, 5).1.unwrap();
        let stale = first;
        let releaser = {
            let t = t.clone();
            thread::spawn(move || (t.release(&first), t.release(&stale)))
        };
        let taker = {
            let t = t.clone();
            // Same process, same instant: the lease word differs only by
            // its nonce (or tag).
            thread::spawn(move || t.acquire(7, now, 5).1)
        };
        let (once, twice) = releaser.join().unwrap();
        let second = taker.join().unwrap();
        assert!(once && !twice, "released once, then nothing");
        if let Some(second) = second {
            assert_eq!(live_leases(&t, now), 1, "the second holder still counts");
            assert!(t.release(&second));
        }
    });
}

/// A two-bucket table for `spec`: every key's first bucket is its hash's
/// low bit, its second the other bucket.
fn table2(spec: &str) -> Arc<Table> {
    let layout = layout_for(&parse(spec).unwrap(), None).unwrap().unpacked();
    let mem = Memory::heap(Table::units_needed(&layout, 2)).unwrap();
    Arc::new(Table::new(layout, WhenFull::Evict, 2, mem, 0))
}

/// Slots (of both buckets) holding key `h`.
fn copies(t: &Table, h: u64) -> usize {
    (0..2).filter(|&b| t.find(t.bucket(b), h).is_some()).count()
}

/// The claim race of two candidate buckets: thread 1 claims key 4 while its
/// first bucket holds a live key (so in its second bucket); thread 2 resets
/// that key and claims key 4 in its emptied first bucket. Whatever the
/// interleaving, key 4 ends in one slot carrying both charges.
#[test]
fn loom_a_key_claimed_in_its_two_buckets_at_once_lands_in_one_slot() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let t = table2("10/second");
        assert!(allowed(t.decide(2, 1, S, Mode::Charge)));
        let t1 = {
            let t = t.clone();
            thread::spawn(move || assert!(allowed(t.decide(4, 1, S, Mode::Charge))))
        };
        let t2 = {
            let t = t.clone();
            thread::spawn(move || {
                assert!(t.reset(2));
                assert!(allowed(t.decide(4, 1, S, Mode::Charge)));
            })
        };
        t1.join().unwrap();
        t2.join().unwrap();
        assert_eq!(copies(&t, 4), 1, "key 4 must live in one slot");
        assert_eq!(peek(&t, 4, S).remaining, 7, "both charges, on one state");
    });
}

/// Two threads claim the same key while its first bucket is full: both
/// go to its second bucket, through the first bucket's TOUCH; one slot,
/// exact quota, and the other keys untouched.
#[test]
fn loom_racing_claims_through_the_first_bucket_land_in_one_slot() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let t = table2("2/second");
        // Bucket 0 takes keys 2 and 6 (full), bucket 1 key 3: key 4 (first
        // bucket 0) goes to the emptier bucket 1.
        for k in [2, 3, 6] {
            assert!(allowed(t.decide(k, 1, S, Mode::Charge)));
        }
        assert!(t.find(t.bucket(0), 6).is_some());
        assert_eq!(racing_checks_on(&t, 4, S), 2);
        assert_eq!(copies(&t, 4), 1, "key 4 must live in one slot");
        assert!(t.find(t.bucket(1), 4).is_some(), "in its second bucket");
        assert_eq!((copies(&t, 2), copies(&t, 3), copies(&t, 6)), (1, 1, 1));
        assert!(!allowed(t.decide(4, 1, S, Mode::Charge)));
    });
}

/// Two threads each charge cost 1 to key `h` at `now`; how many were admitted.
fn racing_checks_on(t: &Arc<Table>, h: u64, now: u64) -> usize {
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(h, 1, now, Mode::Charge)))
        })
        .collect();
    hs.into_iter()
        .map(|h| h.join().unwrap())
        .filter(|&a| a)
        .count()
}

/// Proposes the MOVE of key `h` from bucket 0 (its first) into the free
/// slot of bucket 1, as `make_room` does; true if it committed.
fn propose_move_of(t: &Table, h: u64, now: u64) -> bool {
    let (f, s) = (t.bucket(0), t.bucket(1));
    let sf = t.snapshot(f, now);
    if t.find(f, h).is_none() {
        return false; // moved already
    }
    let ss = t.snapshot(s, now);
    let Victim::Empty(j) = t.choose_victim(s, h, now) else {
        return false;
    };
    let at = ss.seq as u64 & Intent::COST_MASK as u64;
    t.transact(f, &sf, Op::Move, j, at, h, now)
}

/// A key moving into its second bucket while another thread charges it
/// (the direct-CAS path of a one-word state): the charge is never lost to
/// the copy, and the key ends in one slot.
#[test]
fn loom_a_charge_racing_a_move_of_its_key_is_kept_and_the_key_stays_single() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let t = table2("10/second");
        assert!(allowed(t.decide(2, 1, S, Mode::Charge)));
        let mover = {
            let t = t.clone();
            thread::spawn(move || {
                propose_move_of(&t, 2, S);
            })
        };
        let checker = {
            let t = t.clone();
            thread::spawn(move || assert!(allowed(t.decide(2, 1, S, Mode::Charge))))
        };
        mover.join().unwrap();
        checker.join().unwrap();
        assert_eq!(copies(&t, 2), 1, "key 2 must live in one slot");
        assert_eq!(peek(&t, 2, S).remaining, 7, "both charges, on one state");
    });
}

/// The same through CHARGE transactions (a two-limit state), with a third
/// key claimed into the second bucket at the same time: every key in one
/// slot, every charge kept.
#[test]
fn loom_a_move_racing_a_charge_and_a_claim_keeps_every_key_single_and_exact() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let t = table2("10/second; 100/minute");
        assert!(allowed(t.decide(2, 1, S, Mode::Charge)));
        let mover = {
            let t = t.clone();
            thread::spawn(move || {
                propose_move_of(&t, 2, S);
            })
        };
        let other = {
            let t = t.clone();
            thread::spawn(move || {
                assert!(allowed(t.decide(2, 1, S, Mode::Charge)));
                assert!(allowed(t.decide(3, 1, S, Mode::Charge)));
            })
        };
        mover.join().unwrap();
        other.join().unwrap();
        assert_eq!((copies(&t, 2), copies(&t, 3)), (1, 1));
        assert_eq!(peek(&t, 2, S).remaining, 7, "both charges, on one state");
        assert_eq!(peek(&t, 3, S).remaining, 8);
    });
}

/// Two threads move the same key at once (each from its own snapshots):
/// one MOVE commits, its helpers agree, and the key lands in one slot with
/// its state.
#[test]
fn loom_racing_moves_of_one_key_land_it_in_one_slot_with_its_state() {
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(2);
    model.check(|| {
        let t = table2("10/second");
        assert!(allowed(t.decide(2, 3, S, Mode::Charge)));
        let movers: Vec<_> = (0..2)
            .map(|_| {
                let t = t.clone();
                thread::spawn(move || propose_move_of(&t, 2, S))
            })
            .collect();
        let committed = movers
            .into_iter()
            .map(|m| m.join().unwrap())
            .filter(|&c| c)
            .count();
        assert_eq!(
            committed, 1,
            "the second MOVE finds the key gone or fails its commit"
        );
        assert_eq!(copies(&t, 2), 1, "key 2 must live in one slot");
        assert!(
            t.find(t.bucket(1), 2).is_some(),
            "moved to its second bucket"
        );
        assert_eq!(peek(&t, 2, S).remaining, 6, "its state moved with it");
    });
}

/// A charge at a remembered spot (`decide_at`, the engine's spot memo,
/// falling back to `decide` when the spot no longer holds) racing a check
/// of the same key through `decide`: together they admit exactly what
/// remains.
#[test]
fn loom_a_charge_at_a_spot_racing_a_check_admits_exactly_the_remaining_quota() {
    loom::model(|| {
        let t = table("3/second");
        assert!(allowed(t.decide(7, 2, S, Mode::Charge)));
        let spot = t.spot_of(7).unwrap();
        let ta = {
            let t = t.clone();
            thread::spawn(move || {
                let o = t
                    .decide_at(&spot, 1, S, Mode::Charge)
                    .unwrap_or_else(|| t.decide(7, 1, S, Mode::Charge));
                allowed(o) as usize
            })
        };
        let b = allowed(t.decide(7, 1, S, Mode::Charge)) as usize;
        assert_eq!(ta.join().unwrap() + b, 1);
        assert_eq!(peek(&t, 7, S).remaining, 0);
    });
}

/// A spot taken before its key is evicted is never used on the key that
/// takes the slot: thread A charges 2 at key 1's spot while thread B
/// brings key 3, which evicts key 1; key 3 holds B's charge alone.
#[test]
fn loom_a_spot_is_never_used_on_the_key_that_took_its_slot() {
    loom::model(|| {
        let t = table("fixed_window 5/second");
        assert!(allowed(t.decide(1, 1, 0, Mode::Charge)));
        assert!(allowed(t.decide(2, 1, S / 2, Mode::Charge)));
        let spot = t.spot_of(1).unwrap();
        let now = S - 1;
        let ta = {
            let t = t.clone();
            thread::spawn(move || {
                let _ = t.decide_at(&spot, 2, now, Mode::Charge);
            })
        };
        assert!(allowed(t.decide(3, 1, now, Mode::Charge)));
        ta.join().unwrap();
        // A peek of cost 1 reports what remains after it: 5 - 1 - 1 (with
        // A's 2 landing on key 3 it would be 1).
        assert_eq!(peek(&t, 3, now).remaining, 3, "key 3 saw key 1's charge");
    });
}

#[test]
fn loom_a_claim_of_an_expired_slot_racing_a_charge_of_its_key_keeps_the_charge() {
    loom::model(|| {
        // One bucket, failing closed: key 1's window has ended, key 2's is
        // open. Key 3's claim takes key 1's slot while key 1 is charged
        // again: exactly one of them gets the slot, and a charge allowed is
        // never wiped.
        let t = Arc::new(failing_closed("fixed_window 1/second"));
        let now = 5 * S + 1;
        assert!(allowed(t.decide(1, 1, 0, Mode::Charge)));
        assert!(allowed(t.decide(2, 1, now, Mode::Charge)));
        let spawn = |h: u64| {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(h, 1, now, Mode::Charge)))
        };
        let (claimer, charger) = (spawn(3), spawn(1));
        let (in3, charged1) = (claimer.join().unwrap(), charger.join().unwrap());
        assert!(
            in3 != charged1,
            "exactly one of them got the slot: {in3} {charged1}"
        );
        let b = t.bucket(0);
        if charged1 {
            assert!(t.find(b, 1).is_some(), "key 1's charge was wiped");
            assert_eq!(peek(&t, 1, now).remaining, 0, "key 1 holds its charge");
        } else {
            assert!(t.find(b, 3).is_some() && t.find(b, 1).is_none());
        }
    });
}

#[test]
fn loom_an_aborted_claim_never_writes_its_key_after_done() {
    loom::model(|| {
        // One bucket, failing closed, GCRA 2/second (T = 0.5 s, burst 2):
        // key 1 charged once at 0 (TAT 0.5 s), key 2 live at `late`. Key 3's
        // claimer runs at `late` (key 1 expired: a CLAIM of its slot); key
        // 1's checker runs at `early` (key 1 live: as a helper its
        // take_expired aborts the claim) and charges key 1 (TAT 1.0 s, live
        // at `late` too, so no helper may wipe it). A charge allowed must
        // never be wiped, and key 3 must never inherit key 1's state.
        let t = Arc::new(failing_closed("2/second"));
        let (early, late) = (S / 4, S / 2 + 1);
        assert!(allowed(t.decide(1, 1, 0, Mode::Charge)));
        assert!(allowed(t.decide(2, 1, late, Mode::Charge)));
        let spawn = |h: u64, now: u64| {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(h, 1, now, Mode::Charge)))
        };
        let (claimer, charger) = (spawn(3, late), spawn(1, early));
        let (in3, charged1) = (claimer.join().unwrap(), charger.join().unwrap());
        let b = t.bucket(0);
        // Key 3 charged once at `late` from a fresh state, as a reference.
        let fresh = {
            let r = failing_closed("2/second");
            assert!(allowed(r.decide(3, 1, late, Mode::Charge)));
            peek(&r, 3, late)
        };
        if in3 {
            assert_eq!(
                peek(&t, 3, late),
                fresh,
                "key 3 holds only its own charge (charged1 = {charged1})"
            );
        }
        if charged1 {
            assert!(
                t.find(b, 1).is_some(),
                "key 1's charge (live at every helper's time) was allowed, then its slot was taken by key 3"
            );
        }
    });
}

#[test]
fn loom_an_aborted_claim_never_puts_its_key_in_a_second_slot() {
    loom::model(|| {
        // One bucket, GCRA 2/second, every check at `now`: key 1 in slot 0
        // has expired (a CLAIM of slot 0 for key 3), key 2 in slot 1 is
        // live. Another thread resets key 2 (its snapshot helps the pending
        // CLAIM with no time, `now` = 0, and so aborts it) and then checks
        // key 3, which takes the slot the reset freed. Key 3 must end up
        // in one slot.
        let t = Arc::new(failing_closed("2/second"));
        let now = 5 * S;
        assert!(allowed(t.decide(1, 1, 0, Mode::Charge)));
        assert!(allowed(t.decide(2, 1, now, Mode::Charge)));
        let b = t.bucket(0);
        assert_eq!((t.find(b, 1), t.find(b, 2)), (Some(0), Some(1)));
        let claimer = {
            let t = t.clone();
            thread::spawn(move || allowed(t.decide(3, 1, now, Mode::Charge)))
        };
        let other = {
            let t = t.clone();
            thread::spawn(move || {
                assert!(t.reset(2));
                allowed(t.decide(3, 1, now, Mode::Charge))
            })
        };
        let _ = (claimer.join().unwrap(), other.join().unwrap());
        let copies = (0..SLOTS).filter(|&j| t.key_word(b, j).hash() == 3).count();
        assert!(copies <= 1, "key 3 is in {copies} slots");
    });
}

/// Review 3: an acquire loads the free lease word it CASes *after* its
/// `still` check, so a claim of its key's (expired) slot by another key
/// that commits and completes in between leaves that word zeroed under the
/// claim's tag; the acquire's CAS from it succeeds, and its fence (a TOUCH
/// from the next snapshot) finds the lease word still there. The permit of
/// key 1 then sits in key 3's slot: key 1 is absent and takes a full quota
/// of new permits.
#[test]
fn loom_a_lease_taken_as_its_key_is_evicted_never_lands_in_the_new_keys_slot() {
    loom::model(|| {
        let t = table("concurrency 1 ttl 10 seconds");
        // Key 1's lease expired at 10 s; key 2's is live until 15 s.
        assert!(t.acquire(1, 0, 11).1.is_some());
        let two = t.acquire(2, 5 * S, 12).1.unwrap();
        let now = 11 * S;
        let ta = spawn_acquire(&t, 1, now, 21);
        let tb = spawn_acquire(&t, 3, now, 23);
        let (a, b) = (ta.join().unwrap(), tb.join().unwrap());
        let bk = t.bucket(0);
        let owner = |l: Option<Lease>| l.map(|l| t.key_word(bk, l.slot as usize).hash());
        let owners = (owner(a), owner(b));
        // With key 2's permit back, key 1 has room; it holds A's permit
        // (live until 21 s) if A got one, and concurrency 1 allows no more.
        assert!(t.release(&two));
        let more = t.acquire(1, now, 31).1.is_some();
        assert!(
            !(a.is_some() && more),
            "two holders of key 1 under concurrency 1"
        );
        assert_eq!(
            owners.0.unwrap_or(1),
            1,
            "key 1's permit sits in another key's slot"
        );
        assert_eq!(
            owners.1.unwrap_or(3),
            3,
            "key 3's permit sits in another key's slot"
        );
    });
}

/// Under "concurrency 2": with key 2's permit `two` released, key 1 (which
/// holds one permit if `held`) takes as many more as it can at `now`; it
/// must never hold more than two.
fn assert_two_holders_at_most(t: &Table, two: Lease, held: bool, now: u64) {
    assert!(t.release(&two));
    let more = (0..3)
        .filter(|i| t.acquire(1, now, 31 + i).1.is_some())
        .count();
    assert!(
        held as usize + more <= 2,
        "{} holders of key 1 under concurrency 2",
        held as usize + more
    );
}

/// Review 3: `acquire` fences claims only when its key held no live lease
/// (`remaining + 1 == count`), reasoning that a key with a live lease is
/// never a claim's victim. But a claimer judges at its own `now`: a
/// thread that read the clock at 9 s sees key 1's first lease (until
/// 10 s) live and takes the second without a fence, while a claimer at
/// 11 s, which read key 1's words before that CAS, judged key 1 expired
/// and commits after it (the CAS committed no transaction): the CLAIM
/// zeroes every word, the second lease with them. Key 1 is then absent
/// and takes two more permits: three holders under concurrency 2.
#[test]
fn loom_a_second_lease_taken_at_an_earlier_now_is_never_wiped_by_a_claim() {
    loom::model(|| {
        let t = table("concurrency 2 ttl 10 seconds");
        // Key 1 holds a lease until 10 s; key 2 one until 15 s.
        assert!(t.acquire(1, 0, 11).1.is_some());
        let two = t.acquire(2, 5 * S, 12).1.unwrap();
        let ta = spawn_acquire(&t, 1, 9 * S, 21);
        let tb = spawn_acquire(&t, 3, 11 * S, 23);
        let (a, _b) = (ta.join().unwrap(), tb.join().unwrap());
        let now = 11 * S;
        // A's permit (if any) is live until 19 s: key 1 has one more at most.
        assert_two_holders_at_most(&t, two, a.is_some(), now);
        if let Some(a) = a {
            assert!(t.release(&a), "a live lease was lost");
        }
    });
}

/// Review 3: the same without a clock skew. Key 1's other lease is
/// released between the acquire's look (which saw it live, so fences
/// nothing) and its CAS; a claimer at the same `now` reads key 1 free in
/// between, chooses it and commits after the CAS, wiping the new lease.
#[test]
fn loom_a_lease_taken_while_its_keys_other_lease_is_released_is_never_wiped_by_a_claim() {
    loom::model(|| {
        let t = table("concurrency 2 ttl 10 seconds");
        let now = S;
        let first = t.acquire(1, now, 11).1.unwrap();
        let two = t.acquire(2, now, 12).1.unwrap();
        let ta = spawn_acquire(&t, 1, now, 21);
        let tr = {
            let t = t.clone();
            thread::spawn(move || assert!(t.release(&first)))
        };
        let tb = spawn_acquire(&t, 3, now, 23);
        let a = ta.join().unwrap();
        tr.join().unwrap();
        tb.join().unwrap();
        assert_two_holders_at_most(&t, two, a.is_some(), now);
    });
}

/// Review 3 (passes): a refund of a single-word key racing the eviction of
/// that key never lands on the key that took its slot.
#[test]
fn loom_a_refund_racing_the_eviction_of_its_key_never_reaches_the_new_key() {
    loom::model(|| {
        racing_key_three_in(2, |t, now| {
            t.refund(1, 1, now);
        });
    });
}
