//! Engine behaviour end to end: exactness under threads, eviction, refunds,
//! resets, concurrency permits, statistics.

use ratekeeper::{Engine, EngineOptions, PolicyOptions, WhenFull};
use std::sync::atomic::{AtomicU64, Ordering};

const S: u64 = 1_000_000_000;

fn engine(capacity: usize) -> Engine {
    Engine::new(EngineOptions {
        capacity,
        ..Default::default()
    })
    .unwrap()
}

#[test]
fn gcra_admits_the_burst_then_one_per_emission_interval() {
    let e = engine(1024);
    let p = e.add_policy("p", "10/second").unwrap();
    let now = 100 * S;
    for i in 0..10 {
        let d = e.check_at(p, b"k", 1, now);
        assert!(d.allowed, "request {i}");
        assert_eq!(d.remaining, 9 - i);
    }
    let d = e.check_at(p, b"k", 1, now);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, S / 10);
    assert!(e.check_at(p, b"k", 1, now + S / 10).allowed);
    assert!(!e.check_at(p, b"k", 1, now + S / 10).allowed);
}

#[test]
fn every_algorithm_admits_exactly_its_quota_at_one_instant() {
    for spec in [
        "10/second",
        "fixed_window 10/second",
        "sliding_window 10/second",
        "sliding_log 10/second",
        "10/second;1000/hour",
        "sliding_log 10/second; fixed_window 12/minute",
    ] {
        let e = engine(1024);
        let p = e.add_policy("p", spec).unwrap();
        let allowed = (0..25)
            .filter(|_| e.check_at(p, b"key", 1, 7 * S).allowed)
            .count();
        assert_eq!(allowed, 10, "{spec}");
    }
}

#[test]
fn threads_hammering_one_key_at_one_instant_admit_exactly_the_quota() {
    for spec in [
        "100/second",
        "fixed_window 100/minute",
        "sliding_window 100/minute",
        "sliding_log 100/minute",
        "100/second;150/hour",
        "gcra 200/second burst 100; sliding_log 120/minute",
    ] {
        let e = engine(4096);
        let p = e.add_policy("p", spec).unwrap();
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..500 {
                        if e.check_at(p, b"hot", 1, 42 * S).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 100, "{spec}");
        let st = e.stats(p).unwrap();
        assert_eq!((st.allowed, st.denied), (100, 1900), "{spec}");
    }
}

#[test]
fn a_flood_of_one_shot_keys_does_not_evict_hot_limited_keys() {
    let e = engine(1024);
    let p = e.add_policy("p", "5/minute").unwrap();
    let now = 1000 * S;
    let hot: Vec<String> = (0..64).map(|i| format!("hot:{i}")).collect();
    for k in &hot {
        for _ in 0..5 {
            assert!(e.check_at(p, k.as_bytes(), 1, now).allowed);
        }
        assert!(!e.check_at(p, k.as_bytes(), 1, now).allowed);
    }
    // Each one-shot key charges once: its entry expires in 12 s, well before
    // the hot keys' (60 s), so one-shot keys evict one another first.
    for i in 0..10 * 1024 {
        let k = format!("oneshot:{i}");
        e.check_at(p, k.as_bytes(), 1, now + i as u64 * 1000);
    }
    for k in &hot {
        assert!(
            !e.check_at(p, k.as_bytes(), 1, now + 5 * S).allowed,
            "{k} was evicted"
        );
    }
}

#[test]
fn fail_closed_denies_and_fail_open_allows_when_every_entry_is_live() {
    for (when_full, allowed) in [(WhenFull::FailClosed, false), (WhenFull::FailOpen, true)] {
        let e = engine(8);
        let p = e
            .add_policy_with(
                "p",
                "1/hour",
                PolicyOptions {
                    capacity: Some(8),
                    when_full,
                    ..Default::default()
                },
            )
            .unwrap();
        // Live keys until the first that finds no room (a key fits while
        // either of its two buckets, or a chain of moves, has a slot).
        let capacity = e.stats(p).unwrap().capacity;
        let mut held = 0u64;
        let d = loop {
            let d = e.check_at(p, format!("k{held}").as_bytes(), 1, S);
            if e.stats(p).unwrap().table_full > 0 {
                break d;
            }
            assert!(d.allowed);
            held += 1;
            assert!(held <= capacity, "more keys than slots");
        };
        assert!(held >= 8, "the table of capacity 8 held only {held} keys");
        assert_eq!(d.allowed, allowed, "{when_full:?}");
        assert_eq!(e.stats(p).unwrap().table_full, 1);
        assert_eq!(e.stats(p).unwrap().occupancy, held);
        assert_eq!(e.stats(p).unwrap().evictions, 0);
    }
}

#[test]
fn denied_request_consumes_nothing_and_opens_no_window() {
    let e = engine(64);
    let p = e
        .add_policy("p", "fixed_window 5/minute; fixed_window 2/second")
        .unwrap();
    // Cost 3 exceeds the 2/second limit: denied, and no window opens for either limit.
    let d = e.check_at(p, b"k", 3, 10 * S);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, u64::MAX);
    assert_eq!(d.limit_index, 1);
    assert_eq!(e.stats(p).unwrap().occupancy, 0);
    let d = e.check_at(p, b"k", 1, 20 * S);
    assert!(d.allowed);
    assert_eq!(
        d.reset_after_ns, S,
        "the second limit's window opened at 20 s"
    );
}

#[test]
fn refund_gives_back_exactly_what_was_charged() {
    for spec in [
        "3/minute",
        "fixed_window 3/minute",
        "sliding_window 3/minute",
        "sliding_log 3/minute",
        "3/minute;10/hour",
    ] {
        let e = engine(64);
        let p = e.add_policy("p", spec).unwrap();
        for _ in 0..3 {
            assert!(e.check_at(p, b"k", 1, 5 * S).allowed);
        }
        assert!(!e.check_at(p, b"k", 1, 5 * S).allowed, "{spec}");
        assert!(e.refund_at(p, b"k", 1, 5 * S).unwrap());
        assert!(e.check_at(p, b"k", 1, 5 * S).allowed, "{spec}");
        assert!(!e.check_at(p, b"k", 1, 5 * S).allowed, "{spec}");
        assert!(!e.refund_at(p, b"unknown", 1, 5 * S).unwrap());
    }
}

#[test]
fn reset_gives_a_key_its_full_quota_back() {
    let e = engine(64);
    let p = e.add_policy("p", "sliding_log 2/minute; 5/hour").unwrap();
    assert!(e.check_at(p, b"k", 2, S).allowed);
    assert!(!e.check_at(p, b"k", 1, S).allowed);
    assert!(e.reset(p, b"k").unwrap());
    assert_eq!(e.check_at(p, b"k", 1, S).remaining, 1);
    assert!(!e.reset(p, b"other").unwrap());
}

#[test]
fn peek_reports_without_charging() {
    let e = engine(64);
    let p = e.add_policy("p", "2/minute").unwrap();
    for _ in 0..5 {
        let d = e.peek_at(p, b"k", 1, S).unwrap();
        assert!(d.allowed);
        assert_eq!(d.remaining, 1);
    }
    assert_eq!(e.stats(p).unwrap().occupancy, 0);
}

#[test]
fn concurrency_permits_are_exact_and_expire_after_their_ttl() {
    let e = engine(64);
    let p = e.add_policy("p", "concurrency 2 ttl 10 seconds").unwrap();
    let (d1, p1) = e.acquire_at(p, b"k", S).unwrap();
    let (d2, p2) = e.acquire_at(p, b"k", S).unwrap();
    let (d3, p3) = e.acquire_at(p, b"k", S).unwrap();
    assert!(d1.allowed && d2.allowed && !d3.allowed);
    assert_eq!((d1.remaining, d2.remaining), (1, 0));
    assert_eq!(d3.retry_after_ns, 10 * S);
    assert!(p1.is_some() && p2.is_some() && p3.is_none());
    let (policy, parts) = p1.unwrap().into_raw_parts();
    assert!(e
        .release(ratekeeper::Permit::from_raw_parts(policy, parts))
        .unwrap());
    assert!(
        !e.release(ratekeeper::Permit::from_raw_parts(policy, parts))
            .unwrap(),
        "a permit is released once"
    );
    assert!(e.acquire_at(p, b"k", S).unwrap().1.is_some());
    // The never-released permits expire after the TTL.
    assert!(e.acquire_at(p, b"k", 11 * S).unwrap().1.is_some());
    assert!(e.acquire_at(p, b"k", 11 * S).unwrap().1.is_some());
    assert!(e.acquire_at(p, b"k", 11 * S).unwrap().1.is_none());
    let _ = p2;
}

#[test]
fn a_permit_from_another_engine_is_rejected() {
    let a = engine(64);
    let b = engine(64);
    let pa = a.add_policy("p", "concurrency 1").unwrap();
    b.add_policy("p", "concurrency 1").unwrap();
    let (_, permit) = a.acquire(pa, b"k").unwrap();
    assert_eq!(
        b.release(permit.unwrap()),
        Err(ratekeeper::Error::InvalidPermit)
    );
}

#[test]
fn acquire_timeout_wakes_when_a_permit_is_released() {
    let e = engine(64);
    let p = e.add_policy("p", "concurrency 1").unwrap();
    let (_, held) = e.acquire(p, b"k").unwrap();
    let held = held.unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            e.acquire_timeout(p, b"k", std::time::Duration::from_secs(30))
                .unwrap()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(e.release(held).unwrap());
        let (d, permit) = waiter.join().unwrap();
        assert!(d.allowed && permit.is_some());
    });
    let (d, permit) = e
        .acquire_timeout(p, b"k", std::time::Duration::from_millis(20))
        .unwrap();
    assert!(!d.allowed && permit.is_none());
}

#[test]
fn the_same_name_with_other_limits_is_an_error_naming_both_specs() {
    let e = engine(64);
    e.add_policy("login", "5/minute").unwrap();
    let err = e.add_policy("login", "6/minute").unwrap_err().to_string();
    assert!(
        err.contains("5/minute") && err.contains("6/minute"),
        "{err}"
    );
}

#[test]
fn bad_specs_are_errors_not_panics() {
    let e = engine(64);
    assert!(matches!(
        e.add_policy("a", "10/fortnight"),
        Err(ratekeeper::Error::Parse(_))
    ));
    assert!(matches!(
        e.add_policy("b", "sliding_log 100000/hour"),
        Err(ratekeeper::Error::Unsupported(_))
    ));
    assert!(matches!(
        e.add_policy("", "1/second"),
        Err(ratekeeper::Error::InvalidArgument(_))
    ));
}

#[test]
fn check_many_charges_every_item_or_none() {
    use ratekeeper::CheckItem;
    let e = engine(64);
    let ip = e.add_policy("ip", "3/minute").unwrap();
    let route = e.add_policy("route", "2/minute").unwrap();
    let items = |k: &'static [u8]| {
        [
            CheckItem {
                policy: ip,
                key: b"ip:1",
                cost: 1,
            },
            CheckItem {
                policy: route,
                key: k,
                cost: 1,
            },
        ]
    };
    let (d, i) = e.check_many_at(&items(b"user:a"), S).unwrap();
    assert!(d.allowed);
    assert_eq!(
        (i, d.remaining),
        (1, 1),
        "the route limit binds with fewest remaining"
    );
    assert!(e.check_many_at(&items(b"user:a"), S).unwrap().0.allowed);
    // The route limit for user:a is spent: denied, and the ip limit is not charged.
    let (d, i) = e.check_many_at(&items(b"user:a"), S).unwrap();
    assert!(!d.allowed);
    assert_eq!(i, 1);
    assert_eq!(
        e.peek_at(ip, b"ip:1", 1, S).unwrap().remaining,
        0,
        "ip has 1 left, not 0 left after"
    );
    // Another user from the same ip still gets the ip's last unit.
    assert!(e.check_many_at(&items(b"user:b"), S).unwrap().0.allowed);
    let (d, i) = e.check_many_at(&items(b"user:c"), S).unwrap();
    assert!(!d.allowed && i == 0);
    assert!(e.check_many_at(&[], S).is_err());
}

#[test]
fn engine_is_send_and_sync_and_decisions_and_ids_are_copy() {
    fn send_sync<T: Send + Sync>() {}
    fn copy<T: Copy>() {}
    send_sync::<Engine>();
    copy::<ratekeeper::Decision>();
    copy::<ratekeeper::PolicyId>();
    send_sync::<ratekeeper::Permit>(); // single-use: not Copy (a compile_fail doc test)
}

/// A concurrency policy on one bucket (capacity 8) whose 8 slots all hold
/// a key with a live lease; returns the engine, the policy and the permits.
fn full_bucket(when_full: WhenFull) -> (Engine, ratekeeper::PolicyId, Vec<ratekeeper::Permit>) {
    let e = engine(8);
    let p = e
        .add_policy_with(
            "jobs",
            "concurrency 1",
            PolicyOptions {
                capacity: Some(8),
                when_full,
                ..Default::default()
            },
        )
        .unwrap();
    let permits = (0..8)
        .map(|i| {
            let (d, permit) = e.acquire(p, format!("holder:{i}").as_bytes()).unwrap();
            assert!(d.allowed, "holder {i}");
            permit.expect("a slot is free")
        })
        .collect();
    assert_eq!(e.stats(p).unwrap().table_full, 0);
    (e, p, permits)
}

#[test]
fn acquire_timeout_on_a_full_fail_open_bucket_returns_its_decision_at_once() {
    let (e, p, _held) = full_bucket(WhenFull::FailOpen);
    // The table cannot hold the new key: fail-open admits it without a
    // permit. That is final; every attempt counts one `table_full`, so the
    // count of attempts is exact (the wait that spun made 2,280 in 2 s).
    let started = std::time::Instant::now();
    let (d, permit) = e
        .acquire_timeout(p, b"newcomer", std::time::Duration::from_secs(2))
        .unwrap();
    assert!(d.allowed && permit.is_none(), "{d:?}");
    assert_eq!(e.stats(p).unwrap().table_full, 1, "attempts");
    // Generous: the call must not have waited for its 2 s deadline.
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
}

#[test]
fn acquire_timeout_on_a_full_fail_closed_bucket_sleeps_until_the_deadline() {
    for when_full in [WhenFull::FailClosed, WhenFull::Evict] {
        let (e, p, _held) = full_bucket(when_full);
        // Denied until a lease frees (60 s): it sleeps on the futex until its
        // deadline and tries once more, never spinning (2 attempts; 3 allows
        // for one spurious wake-up). The old loop kept its deadline on the
        // coarse engine clock and made 38 attempts here: once the futex
        // timed out, waits of the remaining few ns repeated until the clock
        // ticked.
        let (d, permit) = e
            .acquire_timeout(p, b"newcomer", std::time::Duration::from_millis(200))
            .unwrap();
        assert!(!d.allowed && permit.is_none(), "{when_full:?}: {d:?}");
        // At least 1: on a machine so loaded that the first attempt takes
        // the whole 200 ms, the deadline has passed when it returns.
        let attempts = e.stats(p).unwrap().table_full;
        assert!(
            (1..=3).contains(&attempts),
            "{when_full:?}: {attempts} attempts"
        );
    }
}

#[test]
fn acquire_timeout_on_a_full_fail_closed_bucket_wakes_when_another_key_releases() {
    let (e, p, mut held) = full_bucket(WhenFull::FailClosed);
    let released = held.pop().unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            e.acquire_timeout(p, b"newcomer", std::time::Duration::from_secs(30))
                .unwrap()
        });
        // Let the waiter reach its futex (not required for correctness: a
        // release before it sleeps changes the word it waits on).
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(e.release(released).unwrap());
        // The released key's entry holds no live lease: it is reclaimed for
        // the newcomer, who gets a permit.
        let (d, permit) = waiter.join().unwrap();
        assert!(d.allowed && permit.is_some(), "{d:?}");
    });
    let attempts = e.stats(p).unwrap().table_full;
    assert!((1..=3).contains(&attempts), "{attempts} attempts");
}

/// A batch of more items than the batch rule keeps on the stack (64)
/// follows the same rule: all or nothing, and every item its own limits
/// deny is a penalty-box strike (also items past the 64th).
#[test]
fn a_batch_of_more_than_64_items_follows_the_same_rule() {
    use ratekeeper::{CheckItem, Penalty};
    let e = engine(4096);
    let once = PolicyOptions {
        penalty: Some(Penalty {
            strikes: 1,
            window_ns: 60 * S,
            ban_ns: 600 * S,
            max_ban_ns: 600 * S,
        }),
        ..PolicyOptions::default()
    };
    let p = e.add_policy_with("login", "1/minute", once).unwrap();
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("user:{i}").into_bytes()).collect();
    let items: Vec<CheckItem<'_>> = keys
        .iter()
        .map(|k| CheckItem {
            policy: p,
            key: k,
            cost: 1,
        })
        .collect();
    // A fresh key at the end that an earlier request exhausted: nothing of
    // the batch is charged.
    assert!(e.check_at(p, b"spent", 1, S).allowed);
    let mut with_spent = items.clone();
    with_spent.push(CheckItem {
        policy: p,
        key: b"spent",
        cost: 1,
    });
    let (d, i) = e.check_many_at(&with_spent, S).unwrap();
    assert!(!d.allowed && i == 100, "{d:?} {i}");
    for k in &keys {
        assert!(e.peek_at(p, k, 1, S).unwrap().allowed, "{k:?} was charged");
    }
    // All allow: every item is charged.
    assert!(e.check_many_at(&items, S).unwrap().0.allowed);
    for k in &keys {
        assert!(!e.peek_at(p, k, 1, S).unwrap().allowed);
    }
    // All deny: each denial is a strike, and one strike bans.
    let (d, _) = e.check_many_at(&items, S).unwrap();
    assert!(!d.allowed && d.banned, "{d:?}");
    for k in &keys {
        let later = e.peek_at(p, k, 1, 120 * S).unwrap();
        assert!(later.banned, "{k:?} was not struck: {later:?}");
    }
    assert_eq!(e.stats(p).unwrap().bans, 100 + 1); // "spent" was struck too
}

#[test]
fn try_check_at_refuses_foreign_ids_and_concurrency_policies_and_charges_nothing() {
    let e = engine(1024);
    let rate = e.add_policy("rate", "2/hour").unwrap();
    let slots = e.add_policy("slots", "concurrency 1").unwrap();
    // The third policy of another engine: this one has two.
    let other = engine(1024);
    let foreign = ["a", "b", "c"].map(|n| other.add_policy(n, "1/hour").unwrap())[2];
    assert!(matches!(
        e.try_check_at(foreign, b"k", 1, S),
        Err(ratekeeper::Error::UnknownPolicy(i)) if i == foreign.index()
    ));
    match e.try_check_at(slots, b"k", 1, S) {
        Err(ratekeeper::Error::WrongPolicyKind(m)) => {
            assert!(
                m.contains("\"slots\"") && m.contains("use acquire/release"),
                "{m}"
            )
        }
        other => panic!("a concurrency policy was checked: {other:?}"),
    }
    // Refused calls took nothing: the permit is still free.
    let (d, permit) = e.acquire_at(slots, b"k", S).unwrap();
    assert!(d.allowed && permit.is_some());
    // And a rate limit is checked as by check_at: exactly 2 of 3.
    let allowed: Vec<bool> = (0..3)
        .map(|_| e.try_check_at(rate, b"k", 1, S).unwrap().allowed)
        .collect();
    assert_eq!(allowed, [true, true, false]);
}

#[test]
fn policy_memory_bytes_counts_the_table_and_its_head_small_or_mapped() {
    for capacity in [1_000usize, 1 << 20] {
        let e = Engine::new(EngineOptions {
            capacity,
            ..Default::default()
        })
        .unwrap();
        let p = e.add_policy("p", "10/second").unwrap();
        let table = e.policy_bytes(p).unwrap();
        let region = e.policy_memory_bytes(p).unwrap();
        // The region holds the table (a GCRA policy's packed table: 17
        // bytes a slot) and, before it, the counters and the deny-event ring.
        let slots = e.stats(p).unwrap().capacity as usize;
        assert!(slots >= capacity);
        assert_eq!(
            table,
            slots * 16 + slots / 16 * 16,
            "{table} bytes for {slots} slots"
        );
        assert!(region > table, "{region} <= {table}");
        assert!(region < table + (1 << 20), "{region} vs {table}");
    }
}

/// A batch whose items all pass the first look but whose last charge is
/// denied (here: one key named twice, 3 + 3 over a quota of 5) is refunded
/// and answered with that denial: one denied request. The item charged and
/// refunded on the way was counted as an allowed request.
#[test]
fn a_batch_refunded_after_a_charge_counts_no_allowed_request() {
    use ratekeeper::CheckItem;
    let e = engine(64);
    let p = e.add_policy("p", "fixed_window 5/minute").unwrap();
    let item = CheckItem {
        policy: p,
        key: b"k",
        cost: 3,
    };
    let (d, _) = e.check_many_at(&[item, item], S).unwrap();
    assert!(!d.allowed);
    let st = e.stats(p).unwrap();
    assert_eq!((st.allowed, st.denied), (0, 1), "{st:?}");
    assert!(e.check_at(p, b"k", 5, S).allowed, "the whole quota is back");
}
