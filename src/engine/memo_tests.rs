//! The spot memo against engines without it: every operation gives the
//! same result, whatever the order of keys, costs, refunds, resets,
//! overrides, evictions and times (forwards and backwards).

use super::hits;
use crate::engine::Engine;
use crate::events::DENY_SAMPLE_NS;
use crate::hash::Seed;
use crate::{EngineOptions, PolicyId};
use proptest::prelude::*;

const S: u64 = 1_000_000_000;

/// Keys that share their first 8 bytes, keys of 0, 8, 9, 32 and 33 bytes
/// (the last is too long for the memo).
fn keys() -> Vec<Vec<u8>> {
    let mut k: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"b".to_vec(),
        b"8bytes!!".to_vec(),
        b"8bytes!!x".to_vec(),
        b"8bytes!!y".to_vec(),
        vec![b'l'; 32],
        vec![b'l'; 33],
    ];
    k.extend((0..8).map(|i| format!("user:{i}").into_bytes()));
    k
}

#[derive(Debug, Clone)]
enum Op {
    Check(usize, u32),
    Peek(usize),
    Refund(usize, u32),
    Reset(usize),
    Override(usize, u32),
    ClearOverride(usize),
    ResetAll,
    /// Moves the time by this many milliseconds (backwards if negative).
    Time(i32),
}

fn op() -> impl Strategy<Value = Op> {
    let n = keys().len();
    prop_oneof![
        8 => (0..n, 0u32..3).prop_map(|(k, c)| Op::Check(k, c)),
        1 => (0..n).prop_map(Op::Peek),
        1 => (0..n, 1u32..3).prop_map(|(k, c)| Op::Refund(k, c)),
        1 => (0..n).prop_map(Op::Reset),
        1 => (0..n, 500u32..3000).prop_map(|(k, f)| Op::Override(k, f)),
        1 => (0..n).prop_map(Op::ClearOverride),
        1 => Just(Op::ResetAll),
        3 => (-400i32..1500).prop_map(Op::Time),
    ]
}

/// What an operation returned, for comparing two engines.
fn apply(e: &Engine, id: PolicyId, op: &Op, now: u64) -> String {
    let keys = keys();
    match *op {
        Op::Check(k, c) => format!("{:?}", e.check_at(id, &keys[k], c, now)),
        Op::Peek(k) => format!("{:?}", e.peek_at(id, &keys[k], 1, now)),
        Op::Refund(k, c) => format!("{:?}", e.refund_at(id, &keys[k], c, now)),
        Op::Reset(k) => format!("{:?}", e.reset(id, &keys[k])),
        Op::Override(k, f) => format!("{:?}", e.set_override(id, &keys[k], f as f64 / 1000.0)),
        Op::ClearOverride(k) => format!("{:?}", e.clear_override(id, &keys[k])),
        Op::ResetAll => format!("{:?}", e.reset_all(id)),
        Op::Time(_) => String::new(),
    }
}

fn step(now: u64, op: &Op) -> u64 {
    match *op {
        Op::Time(ms) => now.saturating_add_signed(ms as i64 * 1_000_000).max(1),
        _ => now,
    }
}

/// Two in-process engines with the same hash seed (so the same keys land
/// in the same slots and are evicted alike), the second without the memo.
fn twins(spec: &str, capacity: usize) -> ((Engine, PolicyId), (Engine, PolicyId)) {
    let seed = Seed { k0: 7, k1: 11 };
    let options = EngineOptions {
        capacity,
        ..Default::default()
    };
    let with = Engine::with(seed, options.clone(), None);
    let mut without = Engine::with(seed, options, None);
    without.memo_id = 0;
    let a = with.add_policy("p", spec).unwrap();
    let b = without.add_policy("p", spec).unwrap();
    ((with, a), (without, b))
}

/// Runs each of `ops` (from a time of 1,000 s) on the engine and policy
/// `on` picks for it and on `reference`: every result must be the same.
fn same_as_reference<'e>(
    ops: &[Op],
    on: impl Fn(usize) -> (&'e Engine, PolicyId),
    reference: (&Engine, PolicyId),
) -> Result<(), TestCaseError> {
    let mut now = 1_000 * S;
    for (i, op) in ops.iter().enumerate() {
        now = step(now, op);
        let (e, id) = on(i);
        prop_assert_eq!(
            apply(e, id, op, now),
            apply(reference.0, reference.1, op, now),
            "op {} ({:?}) at {}",
            i,
            op,
            now
        );
    }
    Ok(())
}

fn same_results(spec: &str, capacity: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let ((with, a), (without, b)) = twins(spec, capacity);
    same_as_reference(ops, |_| (&with, a), (&without, b))?;
    prop_assert_eq!(with.stats(a).unwrap(), without.stats(b).unwrap());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A table of 8 slots for 16 keys: claims evict and move keys while
    /// the memo holds their spots.
    #[test]
    fn gcra_under_eviction_pressure_decides_as_without_the_memo(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        same_results("3/second", 8, &ops)?;
    }

    #[test]
    fn gcra_with_room_decides_as_without_the_memo(
        ops in proptest::collection::vec(op(), 1..120)
    ) {
        same_results("2/second", 1024, &ops)?;
    }

    #[test]
    fn fixed_and_sliding_windows_decide_as_without_the_memo(
        ops in proptest::collection::vec(op(), 1..120),
        sliding in any::<bool>(),
        capacity in prop_oneof![Just(8usize), Just(1024)],
    ) {
        let spec = if sliding { "sliding_window 4/second" } else { "fixed_window 3/second" };
        same_results(spec, capacity, &ops)?;
    }

    /// Two limits (not single-word: the memo stays out of the way).
    #[test]
    fn a_two_limit_policy_decides_as_without_the_memo(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        same_results("2/second;5/minute", 8, &ops)?;
    }

    /// Two engines on one shared file (two workers) with the memo, against
    /// one engine without it: whatever one worker does to a key (charge,
    /// refund, reset, override) the other's next check sees, though it
    /// holds the key's spot.
    #[test]
    fn two_workers_on_a_shared_file_decide_as_one_engine_without_the_memo(
        ops in proptest::collection::vec((op(), any::<bool>()), 1..120)
    ) {
        let path = std::env::temp_dir().join(format!(
            "rk-memo-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let options = EngineOptions { capacity: 1024, shared_max_bytes: 1 << 22, ..Default::default() };
        let w1 = Engine::open_shared(&path, options.clone()).unwrap();
        let w2 = Engine::open_shared(&path, options.clone()).unwrap();
        let mut reference = Engine::new(options).unwrap();
        reference.memo_id = 0;
        let (p1, p2) = (w1.add_policy("p", "3/second").unwrap(), w2.add_policy("p", "3/second").unwrap());
        let r = reference.add_policy("p", "3/second").unwrap();
        let (ops, second): (Vec<Op>, Vec<bool>) = ops.into_iter().unzip();
        let on = |i: usize| if second[i] { (&w2, p2) } else { (&w1, p1) };
        same_as_reference(&ops, on, (&reference, r))?;
        drop((w1, w2));
        std::fs::remove_file(&path).unwrap();
    }
}

/// The memo is used at all: a key denied again and again is decided at
/// its spot from its third check on, and a reset (a transaction of its
/// bucket) sends the next check back to the table, which allows it.
#[test]
fn a_denied_key_is_decided_at_its_spot_until_its_bucket_changes() {
    let ((e, id), _) = twins("1/minute", 1024);
    let t = 1_000 * S;
    let before = hits();
    assert!(e.check_at(id, b"k", 1, t).allowed);
    assert!(!e.check_at(id, b"k", 1, t).allowed);
    assert_eq!(hits(), before, "filled after the second miss, not used yet");
    for i in 1..=5 {
        let d = e.check_at(id, b"k", 1, t + i);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 60 * S - i);
    }
    assert_eq!(hits(), before + 5);
    assert!(e.reset(id, b"k").unwrap());
    assert!(
        e.check_at(id, b"k", 1, t + 6).allowed,
        "a stale spot was used"
    );
    assert_eq!(hits(), before + 5);
    assert_eq!(e.stats(id).unwrap().denied, 6);
}

/// A key longer than the memo keeps is always decided by the table.
#[test]
fn a_key_longer_than_the_memo_keeps_never_hits() {
    let ((e, id), _) = twins("1/minute", 1024);
    let key = [b'x'; super::KEY_BYTES + 1];
    let before = hits();
    for i in 0..5 {
        e.check_at(id, &key, 1, S + i);
    }
    assert_eq!(hits(), before);
}

/// Three keys of one policy: `a` and `b` share a sampler word of the
/// deny-event ring, `c` has another.
fn sampler_keys(e: &Engine, id: PolicyId) -> [Vec<u8>; 3] {
    let p = e.get(id).unwrap();
    let word = |k: &[u8]| crate::events::sampler_word_of(p.hash(k));
    let a = b"user:a".to_vec();
    let b = (0..)
        .map(|i| format!("user:b{i}").into_bytes())
        .find(|k| word(k) == word(&a))
        .unwrap();
    let c = (0..)
        .map(|i| format!("user:c{i}").into_bytes())
        .find(|k| word(k) != word(&a))
        .unwrap();
    [a, b, c]
}

/// (key hash, time) of each event in the policy's ring.
fn events(e: &Engine, id: PolicyId) -> Vec<(u64, u64)> {
    let ring = e.recent_denials(id, 0).unwrap();
    ring.iter().map(|d| (d.key_hash, d.time_ns)).collect()
}

/// A flood on a key the memo holds stops before the ring's sampler word
/// (the memo's `Quiet`): when another key takes that word within the
/// interval, the plain ring writes the flooding key's event again, the
/// memo does not, and both write it once the interval has passed, or
/// when the time goes back. The decisions stay the same.
#[test]
fn a_memoised_flood_is_offered_to_the_ring_once_an_interval() {
    let ((with, a), (without, b)) = twins("1/hour", 1024);
    let [k, other, _] = sampler_keys(&with, a);
    let hash = with.get(a).unwrap().hash(&k);
    let t = 1_000 * S;
    let both = |key: &[u8], now: u64| {
        let d = with.check_at(a, key, 1, now);
        assert_eq!(d, without.check_at(b, key, 1, now));
        d.allowed
    };
    assert!(both(&k, t));
    let before = hits();
    for i in 1..=100 {
        assert!(!both(&k, t + i * 1_000_000));
    }
    assert!(hits() >= before + 98, "the flood went through the memo");
    let once = vec![(hash, t + 1_000_000)];
    assert_eq!(events(&with, a), once);
    assert_eq!(events(&without, b), once);
    // Another key takes the sampler word: the plain ring writes `k` again
    // at its next denial; the memo stays quiet until `k`'s event is an
    // interval old.
    assert!(both(&other, t + 200_000_000));
    assert!(!both(&other, t + 200_000_001));
    assert!(!both(&k, t + 300_000_000));
    assert_eq!(events(&with, a).len(), 2, "k, other");
    assert_eq!(events(&without, b).len(), 3, "k, other, k again");
    let late = t + 1_000_000 + DENY_SAMPLE_NS + (1 << 20);
    assert!(!both(&k, late));
    assert_eq!(events(&with, a).last(), Some(&(hash, late)));
    // Time goes back before the memo's last offer: offered, and written,
    // as the ring writes a time that went backwards.
    assert!(!both(&k, late - 500_000_000));
    assert_eq!(events(&with, a).last(), Some(&(hash, late - 500_000_000)));
    assert_eq!(with.stats(a).unwrap(), without.stats(b).unwrap());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Denials of three keys (two of them sharing a sampler word) at times
    /// that move both ways, through the memo: every denial has an event of
    /// its key less than an interval before it (in the sampler's ticks),
    /// and each event is of a denial. (The memo may write fewer events than the plain ring,
    /// as the test above shows, or, over a long trace, one more: after it
    /// stayed quiet through a displacement, its next event comes an
    /// interval after the first, where the ring's came an interval after
    /// the displaced one.)
    #[test]
    fn every_denied_key_has_an_event_an_interval_with_the_memo(
        steps in proptest::collection::vec((0usize..3, -300i64..900), 1..200)
    ) {
        let ((with, a), (without, b)) = twins("3/minute", 1024);
        let keys = sampler_keys(&with, a);
        let hashes: Vec<u64> = keys.iter().map(|k| with.get(a).unwrap().hash(k)).collect();
        let mut now = 1_000 * S;
        let mut denials = Vec::new();
        for (k, ms) in steps {
            now = now.saturating_add_signed(ms * 1_000_000);
            let d = with.check_at(a, &keys[k], 1, now);
            prop_assert_eq!(d, without.check_at(b, &keys[k], 1, now));
            if !d.allowed {
                denials.push((hashes[k], now));
            }
        }
        let with_events = events(&with, a);
        // The sampler counts in ticks of 2^20 ns: an event in the same
        // tick samples out a denial, even one a little earlier (time that
        // went back less than a tick).
        let tick = |ns: u64| ns >> 20;
        for &(hash, t) in &denials {
            prop_assert!(
                with_events.iter().any(|&(h, e)| h == hash
                    && tick(e) <= tick(t)
                    && tick(t) - tick(e) < tick(DENY_SAMPLE_NS)),
                "denial of {:x} at {} has no event in the interval before it: {:?}", hash, t, with_events
            );
        }
        for event in &with_events {
            prop_assert!(denials.contains(event), "{:?} is no denial", event);
        }
    }
}
