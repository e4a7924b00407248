//! Inputs found by the fuzzers under `fuzz/`, kept as ordinary tests.
//!
//! Each test names its fuzz target and the input it reduces to. A test for
//! a bug that is not fixed yet is `#[ignore]`d with the reason, so that
//! `cargo test` stays green while `cargo test -- --ignored` shows what is
//! still open; when the bug is fixed, drop the `#[ignore]`.

use ratekeeper::{Engine, EngineOptions, PolicyOptions, WhenFull};

const S: u64 = 1_000_000_000;

fn engine() -> Engine {
    Engine::new(EngineOptions {
        capacity: 64,
        ..Default::default()
    })
    .unwrap()
}

/// How many of `attempts` requests of cost 1 for one fresh key at one
/// instant are admitted.
fn admitted_at(spec: &str, now: u64, attempts: u32) -> u32 {
    let e = engine();
    let p = e.add_policy("p", spec).unwrap();
    (0..attempts)
        .filter(|_| {
            if spec.starts_with("concurrency") {
                e.acquire_at(p, b"k", now).unwrap().0.allowed
            } else {
                e.check_at(p, b"k", 1, now).allowed
            }
        })
        .count() as u32
}

/// fuzz/engine_ops: `Hammer` on "gcra 100/minute burst 150" (fail closed,
/// capacity 24) at `now = u64::MAX - 65535`: all 151 attempts admitted.
/// GCRA admits without limit once `now + burst * T` exceeds `u64::MAX`
/// (the theoretical arrival time saturates, so `tat' - now <= burst * T`
/// always holds); here from `now = u64::MAX - 90 s`.
#[test]
fn gcra_near_the_end_of_time_admits_no_more_than_the_burst() {
    let e = engine();
    let p = e
        .add_policy_with(
            "p0",
            "gcra 100/minute burst 150",
            PolicyOptions {
                capacity: None,
                when_full: WhenFull::FailClosed,
                ..Default::default()
            },
        )
        .unwrap();
    let now = u64::MAX - 65535;
    let admitted = (0..151)
        .filter(|_| e.check_at(p, b"hammer:1", 1, now).allowed)
        .count();
    assert_eq!(admitted, 150);
    assert_eq!(admitted_at("5/second", u64::MAX - S, 10), 5);
}

/// The same overflow at exactly `now = u64::MAX` for fixed_window,
/// sliding_log and concurrency (found by scanning after the GCRA crash).
#[test]
fn windows_logs_and_leases_at_u64_max_admit_no_more_than_the_quota() {
    for spec in [
        "fixed_window 5/second",
        "sliding_log 5/second",
        "concurrency 5",
    ] {
        assert_eq!(admitted_at(spec, u64::MAX, 10), 5, "{spec}");
    }
}

/// At `now = u64::MAX` a sliding_window denial says "retry after 0 ns",
/// which would be allowed at the same instant: a denial must have a
/// positive `retry_after_ns`.
#[test]
fn a_sliding_window_denial_at_u64_max_has_a_positive_retry_after() {
    let e = engine();
    let p = e.add_policy("p", "sliding_window 5/second").unwrap();
    for _ in 0..5 {
        assert!(e.check_at(p, b"k", 1, u64::MAX).allowed);
    }
    let d = e.check_at(p, b"k", 1, u64::MAX);
    assert!(!d.allowed);
    assert!(d.retry_after_ns > 0, "{d:?}");
}

/// Below the overflow zone the same hammer admits exactly the quota (the
/// fuzzers check this for every time below 2^63 ns).
#[test]
fn a_fresh_key_at_one_instant_gets_exactly_its_quota_at_extreme_but_sane_times() {
    for now in [0, 1, 999, 1 << 40, (1 << 62) + 12_345, (1 << 63) - 1] {
        assert_eq!(
            admitted_at("gcra 100/minute burst 150", now, 151),
            150,
            "{now}"
        );
        for spec in [
            "5/second",
            "fixed_window 5/second",
            "sliding_window 5/second",
            "sliding_log 5/second",
            "concurrency 5",
        ] {
            assert_eq!(admitted_at(spec, now, 10), 5, "{spec} at {now}");
        }
    }
}
