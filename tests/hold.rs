//! Regression tests of the "Hold under attack" issue for the core (the
//! table and the algorithms): each failed on the code before its fix, as
//! its doc comment says. Time is always explicit (`*_at`).

use ratekeeper::{Engine, EngineOptions, Penalty, Permit, PolicyOptions, WhenFull};

const S: u64 = 1_000_000_000;
const US: u64 = 1_000;

fn engine() -> Engine {
    Engine::new(EngineOptions::default()).unwrap()
}

fn admitted(e: &Engine, p: ratekeeper::PolicyId, key: &[u8], n: usize, now: u64) -> usize {
    (0..n)
        .filter(|_| e.check_at(p, key, 1, now).allowed)
        .count()
}

/// #3: ten requests at 100 s + 1 µs fill a `sliding_window 10/second`; one
/// stamped 100 s − 1 ns (a thread that read the clock just before the edge
/// and charged last) was admitted and rewound the window, after which ten
/// more were admitted: 21 against a limit of 10. Now the late request is
/// decided in the stored window, where the limit is reached.
#[test]
fn a_request_stamped_before_the_stored_window_cannot_wipe_a_sliding_window() {
    let e = engine();
    let p = e.add_policy("p", "sliding_window 10/second").unwrap();
    let edge = 100 * S;
    assert_eq!(admitted(&e, p, b"k", 11, edge + US), 10);
    let late = e.check_at(p, b"k", 1, edge - 1);
    assert!(!late.allowed, "the limit is reached in the stored window");
    // Retry-after is relative to the late request's own now: the window
    // that holds 10 decays below 10 one nanosecond into the next window.
    assert_eq!(late.retry_after_ns, 1 + S + 1);
    assert_eq!(admitted(&e, p, b"k", 10, edge + 2 * US), 0);
    // And it is a stricter view, never a looser one: a late request on a
    // window that still has room is charged to the stored window.
    let q = e.add_policy("q", "sliding_window 10/second").unwrap();
    assert_eq!(admitted(&e, q, b"k", 5, edge + US), 5);
    assert_eq!(admitted(&e, q, b"k", 10, edge - 1), 5);
    assert_eq!(admitted(&e, q, b"k", 10, edge + 3 * US), 0);
}

/// The same late request against every algorithm and a composite: the
/// total admitted around the edge never exceeds what the stored window
/// allows.
#[test]
fn late_requests_never_exceed_any_algorithm_s_limit() {
    for spec in [
        "gcra 10/second",
        "fixed_window 10/second",
        "sliding_window 10/second",
        "sliding_log 10/second",
        "sliding_window 10/second; gcra 20/minute",
        "fixed_window 10/second; sliding_log 15/minute",
    ] {
        let e = engine();
        let p = e.add_policy("p", spec).unwrap();
        let edge = 100 * S;
        let mut n = admitted(&e, p, b"k", 20, edge + US);
        // Late requests from up to one window back, interleaved with
        // punctual ones, all within 1 µs after the edge.
        for back in [1, US, S / 2, S - 1] {
            n += admitted(&e, p, b"k", 5, edge - back);
            n += admitted(&e, p, b"k", 1, edge + US);
        }
        assert_eq!(n, 10, "{spec}: admitted around the edge");
    }
}

fn banning(capacity: usize) -> PolicyOptions {
    PolicyOptions {
        capacity: Some(capacity),
        penalty: Some(Penalty {
            strikes: 2,
            window_ns: 10 * S,
            ban_ns: 60 * S,
            max_ban_ns: 600 * S,
        }),
        ..Default::default()
    }
}

/// #4: a key whose limit state was idle counted as expired though it was
/// banned, so the next new key in its bucket took its slot and the ban,
/// the strikes and the escalation level vanished (capacity 8: one bucket).
#[test]
fn a_ban_outlives_a_flood_of_new_keys_in_its_bucket() {
    let e = engine();
    let p = e.add_policy_with("p", "1/second", banning(8)).unwrap();
    assert!(e.check_at(p, b"attacker", 1, S).allowed);
    assert!(!e.check_at(p, b"attacker", 1, S).allowed);
    let ban = e.check_at(p, b"attacker", 1, S);
    assert!(ban.banned, "second strike: banned for 60 s");
    // 2 s later the limit is idle, the ban is not. A flood of new keys
    // fills the bucket again and again.
    for i in 0..1_000u32 {
        e.check_at(p, format!("flood:{i}").as_bytes(), 1, 2 * S);
    }
    let d = e.check_at(p, b"attacker", 1, 3 * S);
    assert!(d.banned && !d.allowed, "{d:?}");
    assert_eq!(d.retry_after_ns, 58 * S);
    // The escalation level survived too: the next ban is twice as long.
    let after = 61 * S;
    for i in 0..100u32 {
        e.check_at(p, format!("flood2:{i}").as_bytes(), 1, after);
    }
    assert!(e.check_at(p, b"attacker", 1, after).allowed);
    assert!(!e.check_at(p, b"attacker", 1, after).allowed);
    let again = e.check_at(p, b"attacker", 1, after);
    assert!(again.banned);
    assert_eq!(again.retry_after_ns, 120 * S, "second ban doubles");
}

/// A bucket whose every key is banned must still take a new key: then a
/// banned key is evicted, and it is counted as an eviction.
#[test]
fn a_bucket_of_banned_keys_evicts_one_and_counts_it() {
    let e = engine();
    let p = e.add_policy_with("p", "1/second", banning(8)).unwrap();
    for k in 0..8u8 {
        for _ in 0..3 {
            e.check_at(p, &[k], 1, S);
        }
        assert!(e.check_at(p, &[k], 1, S).banned);
    }
    let before = e.stats(p).unwrap().evictions;
    assert!(e.check_at(p, b"new", 1, 2 * S).allowed);
    assert_eq!(e.stats(p).unwrap().evictions, before + 1);
    let still = (0..8u8).filter(|k| e.check_at(p, &[*k], 1, 2 * S).banned);
    assert_eq!(still.count(), 7);
}

/// #5: with the coarse clock, a process that re-acquires within one tick
/// got a lease word identical to the one it had just released, so a stale
/// copy of permit A freed permit B (1000 of 1000 tries), and a third
/// acquire then succeeded while B was held.
#[test]
fn releasing_a_permit_twice_never_frees_another_holder_s_permit() {
    let e = engine();
    let p = e.add_policy("p", "concurrency 1 ttl 60 seconds").unwrap();
    let now = 5 * S;
    for i in 0..1_000 {
        let a = e.acquire_at(p, b"k", now).unwrap().1.expect("free");
        let (policy, stale) = a.into_raw_parts();
        assert!(e.release(Permit::from_raw_parts(policy, stale)).unwrap());
        let b = e.acquire_at(p, b"k", now).unwrap().1.expect("free again");
        assert!(
            !e.release(Permit::from_raw_parts(policy, stale)).unwrap(),
            "try {i}: a stale copy of A released B"
        );
        let (d, c) = e.acquire_at(p, b"k", now).unwrap();
        assert!(!d.allowed && c.is_none(), "try {i}: B is still held");
        assert!(e.release(b).unwrap());
    }
}

/// #9: a concurrency key holding live leases was an eviction victim like
/// any other, so its holders were forgotten and more permits than the
/// limit were handed out. Now a bucket full of keys with live leases
/// denies a new key, and every held permit still counts.
#[test]
fn a_concurrency_key_with_a_live_lease_is_never_evicted() {
    let e = engine();
    let opts = PolicyOptions {
        capacity: Some(8),
        ..Default::default()
    };
    let p = e
        .add_policy_with("p", "concurrency 1 ttl 60 seconds", opts)
        .unwrap();
    let held: Vec<Permit> = (0..8u8)
        .map(|k| e.acquire_at(p, &[k], S).unwrap().1.expect("free"))
        .collect();
    let (d, none) = e.acquire_at(p, b"ninth", 2 * S).unwrap();
    assert!(!d.allowed && none.is_none(), "{d:?}");
    assert_eq!(d.retry_after_ns, 59 * S, "until the first lease expires");
    assert_eq!(e.stats(p).unwrap().evictions, 0);
    for k in 0..8u8 {
        let (d, none) = e.acquire_at(p, &[k], 2 * S).unwrap();
        assert!(
            !d.allowed && none.is_none(),
            "key {k}: its holder still counts"
        );
    }
    // A released lease frees its key's slot for reclaiming once idle.
    let mut held = held;
    assert!(e.release(held.remove(0)).unwrap());
    assert!(e.acquire_at(p, b"ninth", 3 * S).unwrap().1.is_some());
    // Leases expire by their TTL: then the bucket takes new keys again.
    assert!(e.acquire_at(p, b"tenth", 62 * S).unwrap().1.is_some());
}

/// A fail-open policy still lets a request through when no lease can be
/// recorded, without a permit (as documented for `WhenFull::FailOpen`).
#[test]
fn a_fail_open_concurrency_policy_admits_without_a_permit_when_full() {
    let e = engine();
    let opts = PolicyOptions {
        capacity: Some(8),
        when_full: WhenFull::FailOpen,
        ..Default::default()
    };
    let p = e.add_policy_with("p", "concurrency 1", opts).unwrap();
    let _held: Vec<Permit> = (0..8u8)
        .map(|k| e.acquire_at(p, &[k], S).unwrap().1.expect("free"))
        .collect();
    let (d, none) = e.acquire_at(p, b"ninth", S).unwrap();
    assert!(d.allowed && none.is_none());
    assert_eq!(e.stats(p).unwrap().table_full, 1);
}

/// The refund of a batch (`check_many` refunds the items it charged when a
/// later item is denied) runs at the batch's `now`. If a request of the
/// same key from another thread, stamped just after a window edge, opened
/// a new fixed window between that charge and its refund, the refund took
/// the unit out of the *new* window, whose count then forgot that request:
/// 3 admitted in a window of 2. Interleaving (one thread's batch, another
/// thread's check): charge at 70 s − 1 ns, check at 70 s, refund at
/// 70 s − 1 ns — driven here in that order.
#[test]
fn a_refund_stamped_before_a_new_fixed_window_never_takes_a_unit_of_it() {
    let e = engine();
    let p = e.add_policy("p", "fixed_window 2/minute").unwrap();
    assert_eq!(admitted(&e, p, b"k", 1, 10 * S), 1); // window [10 s, 70 s)
    let edge = 70 * S;
    assert!(e.check_at(p, b"k", 1, edge - 1).allowed); // the batch's charge
    assert!(e.check_at(p, b"k", 1, edge).allowed); // opens [70 s, 130 s)
    e.refund_at(p, b"k", 1, edge - 1).unwrap(); // the batch's refund
    assert_eq!(
        1 + admitted(&e, p, b"k", 5, edge + S),
        2,
        "admitted in the window [70 s, 130 s) of a 2/minute limit"
    );
}

/// The same for a sliding window: the batch's charge sits in the window
/// before the one a racing request moved the key to; its refund took the
/// unit from the newer window's count, so the racing request stopped
/// counting while the refunded charge kept counting (decaying) as the
/// previous window: 3 admitted where the sliding count allows 2.
#[test]
fn a_refund_stamped_before_the_stored_sliding_window_never_takes_a_unit_of_it() {
    let e = engine();
    let p = e.add_policy("p", "sliding_window 2/second").unwrap();
    let edge = 101 * S;
    assert!(e.check_at(p, b"k", 1, edge - 1).allowed); // the batch's charge
    assert!(e.check_at(p, b"k", 1, edge).allowed); // moves the key to [101 s, 102 s)
    e.refund_at(p, b"k", 1, edge - 1).unwrap(); // the batch's refund

    // At the end of window 101 the previous window has decayed to nothing:
    // only the racing request counts, so one more fits.
    assert_eq!(admitted(&e, p, b"k", 5, edge + S - 1), 1);
}

/// The same for a sliding log: the refund takes back the log's *newest*
/// entry, which is the racing request's (stamped after the batch's `now`),
/// and leaves the batch's older one, which leaves the window sooner: once
/// it has, the racing request no longer counts, and two more are admitted
/// within a minute of it under a limit of 2 a minute.
#[test]
fn a_refund_after_a_later_charge_of_its_key_never_forgets_that_charge_in_a_sliding_log() {
    let e = engine();
    let p = e.add_policy("p", "sliding_log 2/minute").unwrap();
    let t1 = 10 * S;
    let t2 = t1 + S;
    assert!(e.check_at(p, b"k", 1, t1).allowed); // the batch's charge
    assert!(e.check_at(p, b"k", 1, t2).allowed); // a racing request
    e.refund_at(p, b"k", 1, t1).unwrap(); // the batch's refund

    // Half a second before the racing request leaves the window.
    let t3 = t2 + 60 * S - S / 2;
    assert_eq!(
        admitted(&e, p, b"k", 5, t3),
        1,
        "admitted in the minute after the racing request (which holds one unit)"
    );
}
