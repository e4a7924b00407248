//! Loom models of the packed table's protocol (module docs). Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test --release --lib loom_packed`.
//!
//! Under loom a bucket has two slots and each `Atomic128` operation is one
//! atomic step. The smallest table has 4 buckets (one group), so every key
//! shares its intent with every other.

use super::testkit::{commit_claim, commit_move, move_of, words, Owned};
use super::word::{Intent, Slot};
use super::*;
use loom::sync::Arc;
use loom::thread;

const S: u64 = 1_000_000_000;

/// The smallest table (one group) for `spec`.
fn table(spec: &str) -> Arc<Owned> {
    table_of(spec, GROUP)
}

/// A table of `buckets` buckets for `spec`.
fn table_of(spec: &str, buckets: usize) -> Arc<Owned> {
    Arc::new(Owned::new(spec, WhenFull::Evict, buckets))
}

/// A thread that checks `h` once, at `S`: true if allowed.
fn spawn_decide(o: &Arc<Owned>, h: u64) -> thread::JoinHandle<bool> {
    let o = o.clone();
    thread::spawn(move || allowed(o.t().decide(h, 1, S, true, || 0)))
}

/// A thread that helps group `g`'s intent `m` along, as any check would.
fn spawn_complete(o: &Arc<Owned>, g: usize, m: Intent) -> thread::JoinHandle<()> {
    let o = o.clone();
    thread::spawn(move || {
        o.t().complete(g, m.to_bits(), S);
    })
}

/// Puts key `h` in empty slot `j` of bucket `x` with state `state`, as a
/// claim and charges would have (the setup of a model, before its threads).
fn put(t: &Packed<'_>, x: usize, j: usize, h: u64, state: u64) {
    let w = Slot::from_bits(t.line(x)[j].load());
    assert!(w.is_empty());
    let k = Slot {
        fp: Packed::fp_of(h),
        gen: w.gen + 1,
        frozen: false,
        state,
        ovr: false,
    };
    t.line(x)[j]
        .compare_exchange(w.to_bits(), k.to_bits())
        .unwrap();
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

/// The smallest table failing closed for "1/second", with buckets 0 and 1
/// full: M (state `states[0]`) and N in bucket 0, P and Q in bucket 1 (the
/// same), each key with buckets 0 and 1. Returns the table and
/// `[m, n, p, q, k]`, where K is a further key of those two buckets.
fn full_pair(states: [u64; 4]) -> (Arc<Owned>, [u64; 5]) {
    full_pair_of("1/second", WhenFull::FailClosed, states)
}

/// [`full_pair`] for a policy of `spec` that does `when_full`.
fn full_pair_of(spec: &str, when_full: WhenFull, states: [u64; 4]) -> (Arc<Owned>, [u64; 5]) {
    let o = Arc::new(Owned::new(spec, when_full, GROUP));
    let t = o.t();
    let keys = [
        key(&t, 0, 1, 0),
        key(&t, 0, 1, 1),
        key(&t, 1, 0, 0),
        key(&t, 1, 0, 1),
        key(&t, 0, 1, 2),
    ];
    for (i, (x, j)) in [(0, 0), (0, 1), (1, 0), (1, 1)].into_iter().enumerate() {
        put(&t, x, j, keys[i], states[i]);
    }
    (o, keys)
}

#[test]
fn loom_packed_racing_claims_of_one_new_key_hold_it_once_with_exact_quota() {
    loom::model(|| {
        let o = table("2/second");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        let th: Vec<_> = (0..2).map(|_| spawn_decide(&o, h)).collect();
        let admitted = th.into_iter().map(|j| j.join().unwrap());
        let admitted = admitted.filter(|&a| a).count();
        assert_eq!(admitted, 2);
        assert!(single(&t, h).is_some());
        assert!(
            !allowed(t.decide(h, 1, S, true, || 0)),
            "a third request over a limit of two"
        );
    });
}

#[test]
fn loom_packed_a_charge_racing_a_move_of_its_key_is_kept_and_the_key_stays_single() {
    loom::model(|| {
        let o = table("3/hour");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        assert!(allowed(t.decide(h, 1, S, true, || 0)));
        let (x, j, _) = words(&t)[0];
        let (g, m) = commit_move(&t, x, j, 1);
        let charger = spawn_decide(&o, h);
        let helper = spawn_complete(&o, g, m);
        assert!(charger.join().unwrap());
        helper.join().unwrap();
        assert!(single(&t, h).is_some());
        assert!(allowed(t.decide(h, 1, S, true, || 0)), "the third of three");
        assert!(
            !allowed(t.decide(h, 1, S, true, || 0)),
            "the charge racing the move was lost"
        );
    });
}

#[test]
fn loom_packed_a_claim_and_a_move_racing_for_one_empty_slot_keep_every_key_single() {
    loom::model(|| {
        // Two groups: K (buckets 0 and 4, group 0) moves from bucket 0 into
        // bucket 4's free slot, while J (buckets 4 and 5, group 1: another
        // intent) claims that same slot (its first bucket, on a tie with 5).
        let o = table_of("3/hour", 8);
        let t = o.t();
        let (k, f, g5, jh) = (
            key(&t, 0, 4, 0),
            key(&t, 4, 5, 0),
            key(&t, 5, 6, 0),
            key(&t, 4, 5, 1),
        );
        let charged = S + 1200 * S; // one request of three an hour, at S
        put(&t, 0, 0, k, charged);
        put(&t, 4, 0, f, charged);
        put(&t, 5, 0, g5, charged);
        let (g, m) = commit_move(&t, 0, 0, 1);
        assert_ne!(g, Packed::group_of(4, 4 ^ 5).0);
        let claimer = spawn_decide(&o, jh);
        let helper = spawn_complete(&o, g, m);
        assert!(claimer.join().unwrap());
        helper.join().unwrap();
        assert!(single(&t, jh).is_some());
        for h in [k, f, g5] {
            assert_eq!(
                single(&t, h).map(|w| w.state),
                Some(charged),
                "a key was lost"
            );
        }
    });
}

#[test]
fn loom_packed_an_eviction_racing_a_move_of_its_victim_keeps_every_key_single() {
    loom::model(|| {
        // V (buckets 4 and 0, group 0) moves from bucket 4 to bucket 0,
        // while N (buckets 4 and 5, group 1), finding both full, evicts
        // (V is the soonest to expire) or makes room.
        let o = table_of("2/hour", 8);
        let t = o.t();
        let (v, x, y, z) = (
            key(&t, 4, 0, 0),
            key(&t, 4, 5, 0),
            key(&t, 5, 6, 0),
            key(&t, 5, 6, 1),
        );
        put(&t, 4, 0, v, S + 10);
        put(&t, 4, 1, x, S + 20);
        put(&t, 5, 0, y, S + 30);
        put(&t, 5, 1, z, S + 40);
        let (g, m) = commit_move(&t, 4, 0, 0);
        let n = key(&t, 4, 5, 1);
        assert_ne!(g, Packed::group_of(4, 4 ^ 5).0);
        let claimer = spawn_decide(&o, n);
        let helper = spawn_complete(&o, g, m);
        assert!(claimer.join().unwrap());
        helper.join().unwrap();
        assert!(single(&t, n).is_some());
        for (h, state) in [(v, S + 10), (x, S + 20), (y, S + 30), (z, S + 40)] {
            // Each is held once with its state, or was evicted.
            if let Some(w) = single(&t, h) {
                assert_eq!(w.state, state, "a held key lost its state");
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
        assert!(allowed(t.decide(h, 1, S, true, || 0)));
        let (x, j, w) = words(&t)[0];
        let (g, m1) = commit_move(&t, x, j, 0);
        // The stalled helper: any prefix of its steps may run before the
        // mover finishes M1 and moves the key back.
        let stalled = spawn_complete(&o, g, m1);
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

#[test]
fn loom_packed_an_override_set_while_the_key_is_claimed_reaches_its_word() {
    use loom::sync::atomic::{AtomicU32, Ordering};
    loom::model(|| {
        // The override table, reduced to the one key: written before the
        // flag, as `Table::set_override` does.
        let factor = Arc::new(AtomicU32::new(0));
        let o = table("2/hour");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        let claimer = {
            let (o, factor) = (o.clone(), factor.clone());
            thread::spawn(move || {
                allowed(
                    o.t()
                        .decide(h, 1, S, true, || factor.load(Ordering::SeqCst)),
                )
            })
        };
        let setter = {
            let (o, factor) = (o.clone(), factor.clone());
            thread::spawn(move || {
                factor.store(2000, Ordering::SeqCst);
                o.t().set_override_flag(h, true);
            })
        };
        assert!(claimer.join().unwrap());
        setter.join().unwrap();
        // The claim read the table before the write and raced the setter:
        // either way the key's word must say it has an override.
        assert!(single(&t, h).expect("the key was claimed").ovr);
    });
}

#[test]
fn loom_packed_a_reset_racing_a_move_of_its_key_forgets_it_wherever_it_went() {
    loom::model(|| {
        let o = table("2/hour");
        let t = o.t();
        let h = key(&t, 0, 1, 0);
        assert!(allowed(t.decide(h, 1, S, true, || 0)));
        let (x, j, _) = words(&t)[0];
        // The move is proposed (committed and completed) while the reset
        // runs: either commits first.
        let (g, m) = move_of(&t, x, j, 0);
        let snap = t.intent(g).load();
        let mover = {
            let o = o.clone();
            thread::spawn(move || {
                o.t().propose(g, snap, m, S);
            })
        };
        assert!(t.reset(h), "the key held state");
        mover.join().unwrap();
        assert!(single(&t, h).is_none(), "the key survived its reset");
    });
}

#[test]
fn loom_packed_a_claim_of_an_expired_slot_racing_a_charge_of_its_key_keeps_the_charge() {
    loom::model(|| {
        // Both buckets of K (0 and 1) are full; M's word in bucket 0 has
        // expired, so K's claim takes it, while M is charged again.
        // Nothing may be evicted (fail closed): either M's charge lands
        // first (K then finds no room) or K's claim does (M then finds no
        // room); a charge allowed is never wiped.
        let later = 10 * S;
        // M expired at `later`.
        let (o, [m, n, p, q, k]) = full_pair([S, 100 * S, 100 * S, 100 * S]);
        let t = o.t();
        let spawn = |h: u64| {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(h, 1, later, true, || 0)))
        };
        let (claimer, charger) = (spawn(k), spawn(m));
        let (k_in, m_charged) = (claimer.join().unwrap(), charger.join().unwrap());
        assert!(k_in != m_charged, "exactly one of them got the slot");
        if m_charged {
            let w = single(&t, m).expect("M's charge was wiped");
            assert!(w.state > later, "M holds its charge");
            assert!(single(&t, k).is_none());
        } else {
            assert!(single(&t, k).is_some());
            assert!(single(&t, m).is_none());
        }
        for h in [n, p, q] {
            assert_eq!(single(&t, h).map(|w| w.state), Some(100 * S));
        }
    });
}

#[test]
fn loom_packed_an_eviction_a_helper_completes_is_counted_by_its_claimer() {
    loom::model(|| {
        // Both buckets of N (0 and 1) are full of live keys that cannot
        // move: N evicts V, the soonest to expire. Another thread, looking
        // for an absent key of the same group, may complete N's claim
        // before N's own step: the eviction is still counted, once.
        let o = table("2/hour");
        let t = o.t();
        let (v, x, y, z) = (
            key(&t, 0, 1, 0),
            key(&t, 0, 1, 1),
            key(&t, 1, 0, 0),
            key(&t, 1, 0, 1),
        );
        put(&t, 0, 0, v, S + 10);
        put(&t, 0, 1, x, S + 20);
        put(&t, 1, 0, y, S + 30);
        put(&t, 1, 1, z, S + 40);
        let n = key(&t, 0, 1, 2);
        let helper = {
            let o = o.clone();
            thread::spawn(move || {
                let t = o.t();
                assert!(!t.reset(key(&t, 2, 3, 0)));
            })
        };
        let claimed = t.decide(n, 1, S, true, || 0);
        helper.join().unwrap();
        assert!(
            matches!(claimed, Outcome::Decided { evicted: true, verdict } if verdict.allowed),
            "{claimed:?}"
        );
        assert!(single(&t, n).is_some());
        assert!(single(&t, v).is_none(), "the victim");
    });
}

#[test]
fn loom_packed_an_aborted_claim_never_lands_after_done() {
    loom::model(|| {
        // K's buckets are 0 and 1. M's word in bucket 0 expired at S: K's
        // check at `late` claims it (CLAIM, no evict bit). K's other check,
        // at `early` (M live then), helps that claim: its step finds M live
        // and lands on nothing; it then claims P's slot of bucket 1
        // (expired at both times). The first claimer's own step, read
        // before, must not land after its claim was marked done.
        let (early, late) = (S / 2, 10 * S);
        // M live at `early`, expired at `late`; P expired at both.
        let (o, [_, _, _, _, k]) = full_pair([S, 100 * S, S / 4, 100 * S]);
        let t = o.t();
        let spawn = |now: u64| {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(k, 1, now, true, || 0)))
        };
        let (a, b) = (spawn(late), spawn(early));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        let _ = (a, b);
        single(&t, k); // asserts K is held at most once
    });
}

#[test]
fn loom_packed_a_claim_aborted_by_a_reset_never_lands_after_done() {
    loom::model(|| {
        // As above, every check at `later`: K's claim takes M's expired
        // word in bucket 0. Another thread resets P (its snapshot helps the
        // claim with no time, `now` = 0: M's word is "live", the claim is
        // aborted), then checks K, which takes the slot the reset freed.
        let later = 10 * S;
        // M expired at `later`.
        let (o, [_, _, p, _, k]) = full_pair([S, 100 * S, 100 * S, 100 * S]);
        let t = o.t();
        let claimer = {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(k, 1, later, true, || 0)))
        };
        let other = {
            let o = o.clone();
            thread::spawn(move || {
                let t = o.t();
                assert!(t.reset(p));
                allowed(t.decide(k, 1, later, true, || 0))
            })
        };
        let _ = (claimer.join().unwrap(), other.join().unwrap());
        single(&t, k); // asserts K is held at most once
    });
}

#[test]
fn loom_packed_a_reset_racing_a_foreign_claim_that_lands_on_nothing_and_a_move_still_forgets_the_key(
) {
    loom::model(|| {
        // V (buckets 4 and 0: group 0) is live. A claim of group 1 (N,
        // buckets 4 and 5) names V's slot, judged expired by a claimer
        // with a later clock; its helper here finds V live and lands on
        // nothing, moving V's word to its next generation, maybe between
        // the reset's second read of the word and its commit. A third
        // thread moves V (its own group's MOVE, into bucket 0) if it finds
        // it live in its slot. The reset must forget V wherever it is.
        let o = table_of("2/hour", 8);
        let t = o.t();
        let (v, n) = (key(&t, 4, 0, 0), key(&t, 4, 5, 0));
        put(&t, 4, 0, v, 2 * S);
        let (g, c) = commit_claim(&t, n, 4, 0, false);
        assert_ne!(g, Packed::group_of(4, 4 ^ 0).0);
        let helper = spawn_complete(&o, g, c);
        let mover = {
            let o = o.clone();
            thread::spawn(move || {
                let t = o.t();
                let w = Slot::from_bits(t.line(4)[0].load());
                if !(w.is_live() && w.fp == Packed::fp_of(v)) {
                    return;
                }
                let (g, m) = move_of(&t, 4, 0, 0);
                let Some(snap) = t.settled(g, S) else {
                    return;
                };
                t.propose(g, snap, m, S);
            })
        };
        assert!(t.reset(v), "V held state");
        helper.join().unwrap();
        mover.join().unwrap();
        assert!(
            single(&t, v).is_none(),
            "V survived its reset: {:?}",
            words(&t)
        );
    });
}

/// Review 3 (passes): a refund of a key racing its eviction never lands on
/// the key that took its word.
#[test]
fn loom_packed_a_refund_racing_the_eviction_of_its_key_never_reaches_the_new_key() {
    loom::model(|| {
        let now = 10 * S;
        // M expires first, but is live at `now`.
        let (o, [m, _, _, _, k]) = full_pair_of(
            "5/second",
            WhenFull::Evict,
            [now + S / 2, 100 * S, 100 * S, 100 * S],
        );
        let t = o.t();
        let ta = {
            let o = o.clone();
            thread::spawn(move || {
                o.t().refund(m, 1, now, || 0);
            })
        };
        let tb = {
            let o = o.clone();
            thread::spawn(move || allowed(o.t().decide(k, 1, now, true, || 0)))
        };
        ta.join().unwrap();
        assert!(tb.join().unwrap());
        let w = single(&t, k).expect("K is in");
        assert_eq!(w.state, now + S / 5, "K holds only its own charge");
        if let Some(w) = single(&t, m) {
            panic!("M was the victim, yet holds {w:?}");
        }
    });
}
