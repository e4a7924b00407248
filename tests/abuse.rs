//! Abuse control: penalty box, retry jitter, shadow mode.

use ratekeeper::{Engine, EngineOptions, Penalty, PolicyOptions};

#[path = "support/scratch.rs"]
mod scratch;

const S: u64 = 1_000_000_000;
const MIN: u64 = 60 * S;

fn engine() -> Engine {
    Engine::new(EngineOptions {
        capacity: 256,
        ..Default::default()
    })
    .unwrap()
}

/// Two engines on one new shared file (think: two worker processes).
fn two_engines_on_one_file(name: &str) -> (std::path::PathBuf, Engine, Engine) {
    let path = scratch::path(name);
    let opts = EngineOptions {
        shared_max_bytes: 16 << 20,
        capacity: 1024,
        ..Default::default()
    };
    let a = Engine::open_shared(&path, opts.clone()).unwrap();
    let b = Engine::open_shared(&path, opts).unwrap();
    (path, a, b)
}

/// Login protection: 5/minute; 3 denials within 10 minutes ban for 15
/// minutes, doubling up to 4 hours.
fn login_options() -> PolicyOptions {
    PolicyOptions {
        penalty: Some(Penalty {
            strikes: 3,
            window_ns: 10 * MIN,
            ban_ns: 15 * MIN,
            max_ban_ns: 240 * MIN,
        }),
        ..Default::default()
    }
}

#[test]
fn the_third_denial_bans_the_key_for_the_ban_length_and_bans_escalate() {
    let e = engine();
    let p = e
        .add_policy_with("login", "5/minute", login_options())
        .unwrap();
    let t0 = 1000 * S;
    for _ in 0..5 {
        assert!(e.check_at(p, b"ip:1", 1, t0).allowed);
    }
    // Two strikes: ordinary denials.
    for _ in 0..2 {
        let d = e.check_at(p, b"ip:1", 1, t0);
        assert!(!d.allowed && !d.banned);
        assert_eq!(d.retry_after_ns, 12 * S);
    }
    // The third strike starts a 15-minute ban.
    let d = e.check_at(p, b"ip:1", 1, t0);
    assert!(!d.allowed && d.banned);
    assert_eq!(d.retry_after_ns, 15 * MIN);
    // Banned even though the 5/minute quota has long refilled.
    let d = e.check_at(p, b"ip:1", 1, t0 + 10 * MIN);
    assert!(d.banned && !d.allowed);
    assert_eq!(d.retry_after_ns, 5 * MIN);
    // Other keys are not affected.
    assert!(e.check_at(p, b"ip:2", 1, t0 + 10 * MIN).allowed);
    // After the ban: allowed again.
    let t1 = t0 + 15 * MIN;
    assert!(e.check_at(p, b"ip:1", 1, t1).allowed);
    // Breach again soon after: the second ban lasts 30 minutes.
    for _ in 0..4 {
        e.check_at(p, b"ip:1", 1, t1);
    }
    let d = (0..3)
        .map(|_| e.check_at(p, b"ip:1", 1, t1))
        .last()
        .unwrap();
    assert!(d.banned);
    assert_eq!(d.retry_after_ns, 30 * MIN);
    let st = e.stats(p).unwrap();
    assert_eq!(st.bans, 2);
    assert_eq!(
        st.banned, 3,
        "two ban-starting denials and one denial during a ban"
    );
}

#[test]
fn denials_spread_out_over_more_than_the_window_never_ban() {
    let e = engine();
    let p = e
        .add_policy_with("login", "1/hour", login_options())
        .unwrap();
    let t0 = 1000 * S;
    assert!(e.check_at(p, b"k", 1, t0).allowed);
    for i in 1..30 {
        let d = e.check_at(p, b"k", 1, t0 + i * 5 * MIN);
        assert!(!d.banned, "denial {i}");
    }
    assert_eq!(e.stats(p).unwrap().bans, 0);
}

#[test]
fn reset_lifts_a_ban() {
    let e = engine();
    let p = e
        .add_policy_with("login", "1/minute", login_options())
        .unwrap();
    for _ in 0..4 {
        e.check_at(p, b"k", 1, S);
    }
    assert!(e.check_at(p, b"k", 1, 5 * MIN).banned);
    assert!(e.reset(p, b"k").unwrap());
    assert!(e.check_at(p, b"k", 1, 5 * MIN).allowed);
}

#[test]
fn retry_jitter_adds_a_bounded_random_extra_never_less_than_the_true_wait() {
    let e = engine();
    let jitter = 2 * S;
    let p = e
        .add_policy_with(
            "p",
            "1/minute",
            PolicyOptions {
                retry_jitter_ns: jitter,
                ..Default::default()
            },
        )
        .unwrap();
    assert!(e.check_at(p, b"k", 1, S).allowed);
    let waits: Vec<u64> = (0..200)
        .map(|_| e.check_at(p, b"k", 1, S).retry_after_ns)
        .collect();
    assert!(
        waits.iter().all(|&w| (MIN..=MIN + jitter).contains(&w)),
        "{waits:?}"
    );
    let distinct: std::collections::HashSet<_> = waits.iter().collect();
    assert!(distinct.len() > 150, "synchronised clients must spread out");
    // A cost that can never pass keeps retry_after = MAX.
    assert_eq!(e.check_at(p, b"k", 5, S).retry_after_ns, u64::MAX);
}

#[test]
fn shadow_mode_passes_every_request_but_counts_and_flags_would_be_denials() {
    let e = engine();
    let p = e
        .add_policy_with(
            "new-limit",
            "2/minute",
            PolicyOptions {
                shadow: true,
                ..Default::default()
            },
        )
        .unwrap();
    let ds: Vec<_> = (0..5).map(|_| e.check_at(p, b"k", 1, S)).collect();
    assert!(ds.iter().all(|d| d.allowed));
    assert_eq!(ds.iter().filter(|d| d.shadow_denied).count(), 3);
    assert_eq!(
        ds[4].retry_after_ns,
        30 * S,
        "the denial it would have been"
    );
    let st = e.stats(p).unwrap();
    assert_eq!((st.allowed, st.denied, st.shadow_denied), (2, 3, 3));
    // Would-be denials charge nothing: after 30 s one more fits, exactly.
    let d = e.check_at(p, b"k", 1, 31 * S);
    assert!(d.allowed && !d.shadow_denied);
}

#[test]
fn a_shared_policy_must_be_asked_for_with_the_same_abuse_options() {
    let (path, a, b) = two_engines_on_one_file("abuse");
    let pa = a
        .add_policy_with("login", "5/minute", login_options())
        .unwrap();
    let err = b.add_policy("login", "5/minute").unwrap_err().to_string();
    assert!(err.contains("ban") && err.contains("5/minute"), "{err}");
    let pb = b
        .add_policy_with("login", "5/minute", login_options())
        .unwrap();
    // One penalty box for both processes: strikes from either count.
    for _ in 0..5 {
        a.check_at(pa, b"ip", 1, S);
    }
    a.check_at(pa, b"ip", 1, S);
    b.check_at(pb, b"ip", 1, S);
    assert!(a.check_at(pa, b"ip", 1, S).banned);
    assert!(b.check_at(pb, b"ip", 1, 2 * S).banned);
    assert_eq!(b.stats(pb).unwrap().bans, 1);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_override_gives_one_key_a_multiple_of_the_quota_at_once() {
    let e = engine();
    let p = e
        .add_policy("api", "10/second; fixed_window 100/minute")
        .unwrap();
    assert!(e.check_at(p, b"key:partner", 1, S).allowed);
    e.set_override(p, b"key:partner", 10.0).unwrap();
    assert_eq!(e.override_of(p, b"key:partner").unwrap(), Some(10.0));
    // Already-tracked key: the new quota applies at once. GCRA keeps its
    // state as time, so the tenth of a second the first request used (one
    // unit of 10/second) is ten units of 100/second: 90 remain.
    let admitted = (0..500)
        .filter(|_| e.check_at(p, b"key:partner", 1, S).allowed)
        .count();
    assert_eq!(admitted, 90);
    let d = e.peek_at(p, b"key:partner", 1, S).unwrap();
    assert_eq!(d.limit, 100);
    // Other keys keep the policy's quota.
    let others = (0..50)
        .filter(|_| e.check_at(p, b"key:other", 1, S).allowed)
        .count();
    assert_eq!(others, 10);
    // Cleared: the policy's own quota again (and its state is kept).
    e.clear_override(p, b"key:partner").unwrap();
    assert_eq!(e.override_of(p, b"key:partner").unwrap(), None);
    assert_eq!(e.peek_at(p, b"key:partner", 1, S).unwrap().limit, 10);
}

#[test]
fn an_override_outlives_the_eviction_of_its_key() {
    let e = engine();
    let p = e
        .add_policy_with(
            "api",
            "5/minute",
            PolicyOptions {
                capacity: Some(8),
                ..Default::default()
            },
        )
        .unwrap();
    e.set_override(p, b"partner", 4.0).unwrap();
    assert_eq!(e.check_at(p, b"partner", 1, S).limit, 20);
    // A flood of other keys takes every slot (the table holds 8).
    for i in 0..100 {
        e.check_at(p, format!("k{i}").as_bytes(), 1, S);
    }
    assert!(e.stats(p).unwrap().evictions > 0);
    let d = e.check_at(p, b"partner", 1, 2 * S);
    assert_eq!(d.limit, 20, "the override is kept outside the key's slot");
}

#[test]
fn an_override_set_in_one_process_is_seen_by_every_process_of_the_file() {
    let (path, a, b) = two_engines_on_one_file("override");
    let pa = a.add_policy("api", "gcra 2/second burst 2").unwrap();
    let pb = b.add_policy("api", "2/second").unwrap();
    a.set_override(pa, b"key:p", 3.0).unwrap();
    let admitted = (0..20).filter(|i| if i % 2 == 0 { a.check_at(pa, b"key:p", 1, S) } else { b.check_at(pb, b"key:p", 1, S) }.allowed).count();
    assert_eq!(admitted, 6);
    assert_eq!(b.override_of(pb, b"key:p").unwrap(), Some(3.0));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_override_factors_are_errors() {
    let e = engine();
    let p = e.add_policy("api", "10/second").unwrap();
    for bad in [0.0, -1.0, 0.0001, 1e9, f64::NAN] {
        assert!(e.set_override(p, b"k", bad).is_err(), "{bad}");
    }
    let c = e.add_policy("c", "concurrency 2").unwrap();
    assert!(e.set_override(c, b"k", 2.0).is_err());
}

#[test]
fn denials_are_kept_in_a_ring_with_keys_only_when_the_policy_opts_in() {
    let e = engine();
    let quiet = e.add_policy("quiet", "1/minute").unwrap();
    let keyed = e
        .add_policy_with(
            "keyed",
            "1/minute",
            PolicyOptions {
                record_keys: true,
                ..Default::default()
            },
        )
        .unwrap();
    for (i, k) in ["ip:1", "ip:1", "ip:2", "ip:1"].iter().enumerate() {
        e.check_at(quiet, k.as_bytes(), 1, (i as u64 + 1) * S);
        e.check_at(keyed, k.as_bytes(), 1, (i as u64 + 1) * S);
    }
    let q = e.recent_denials(quiet, 0).unwrap();
    assert_eq!(q.len(), 2, "ip:1 twice over its limit");
    assert!(q.iter().all(|ev| ev.key.is_none()));
    assert_eq!((q[0].time_ns, q[1].time_ns), (2 * S, 4 * S));
    assert_eq!(q[0].key_hash, q[1].key_hash);
    assert_eq!(q[0].retry_after_ns, 59 * S);
    let k = e.recent_denials(keyed, 0).unwrap();
    assert_eq!(k[0].key.as_deref(), Some(&b"ip:1"[..]));
    // Following: only newer events.
    assert_eq!(e.recent_denials(keyed, k[1].ticket + 1).unwrap().len(), 0);
    e.check_at(keyed, b"ip:2", 1, 9 * S);
    let new = e.recent_denials(keyed, k[1].ticket + 1).unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].key.as_deref(), Some(&b"ip:2"[..]));
}

#[test]
fn the_ring_keeps_the_latest_512_denials() {
    let e = engine();
    let p = e.add_policy("p", "1/day").unwrap();
    // Two seconds apart: each denial is in a new sampling interval.
    for i in 0..2000u64 {
        e.check_at(p, b"k", 1, S + 2 * S * i);
    }
    let ev = e.recent_denials(p, 0).unwrap();
    assert_eq!(ev.len(), ratekeeper::RING_ENTRIES);
    assert_eq!(ev.last().unwrap().ticket, 1998);
    assert!(ev.windows(2).all(|w| w[1].ticket == w[0].ticket + 1));
}

#[test]
fn a_flood_of_denials_on_one_key_writes_one_event_per_second_and_counts_every_one() {
    let e = engine();
    let p = e.add_policy("p", "10/minute").unwrap();
    // 10 allowed, then 100,000 denials over 5 seconds (one every 50 us),
    // and one denial of a second key in the middle of the flood.
    let mut denied = 0;
    for i in 0..100_010u64 {
        let now = S + i * 50_000;
        denied += !e.check_at(p, b"flood", 1, now).allowed as u64;
        if i == 50_000 {
            for _ in 0..11 {
                e.check_at(p, b"other", 1, now);
            }
        }
    }
    assert_eq!(denied, 100_000);
    let stats = e.stats(p).unwrap();
    assert_eq!(stats.denied, 100_001, "the totals count every denial");
    let ev = e.recent_denials(p, 0).unwrap();
    let flood: Vec<u64> = ev
        .iter()
        .filter(|x| x.key_hash == ev[0].key_hash)
        .map(|x| x.time_ns)
        .collect();
    // One event per second of flood, at the first denial of each interval.
    assert!((5..=6).contains(&flood.len()), "{flood:?}");
    assert!(flood
        .windows(2)
        .all(|w| w[1] - w[0] >= S - S / 500 && w[1] - w[0] < S + S / 100));
    assert_eq!(
        ev.len(),
        flood.len() + 1,
        "the other key's one denial is written too"
    );
}

#[test]
fn denials_of_a_batch_are_strikes_too() {
    use ratekeeper::CheckItem;
    let e = engine();
    let login = e
        .add_policy_with("login", "2/minute", login_options())
        .unwrap();
    let site = e.add_policy("site", "1000/minute").unwrap();
    let items = [
        CheckItem {
            policy: site,
            key: b"ip:9",
            cost: 1,
        },
        CheckItem {
            policy: login,
            key: b"ip:9",
            cost: 1,
        },
    ];
    let ds: Vec<_> = (0..6)
        .map(|_| e.check_many_at(&items, S).unwrap().0)
        .collect();
    assert_eq!(ds.iter().filter(|d| d.allowed).count(), 2);
    // Denials 1 and 2 are strikes, the third starts the ban.
    assert!(!ds[3].banned && ds[4].banned && ds[5].banned, "{ds:?}");
    let st = e.stats(login).unwrap();
    assert_eq!((st.bans, st.banned), (1, 2));
    // The site limit was charged only for the two allowed requests.
    assert_eq!(e.peek_at(site, b"ip:9", 1, S).unwrap().remaining, 997);
}

/// The policy whose strike starts a ban in a denied batch is the one whose
/// decision the batch returns (and whose deny event is written): its
/// `banned` and `bans` counters move, so must its `denied` (which counts
/// banned requests too), as for a single check.
#[test]
fn a_ban_started_by_a_non_binding_batch_item_is_a_denial_of_its_policy() {
    use ratekeeper::CheckItem;
    let e = engine();
    let hourly = e.add_policy("hourly", "1/hour").unwrap();
    // Login protection as above, banning at the first strike.
    let mut one_strike = login_options();
    one_strike.penalty.as_mut().unwrap().strikes = 1;
    let login = e.add_policy_with("login", "1/minute", one_strike).unwrap();
    let items = [
        CheckItem {
            policy: hourly,
            key: b"ip:8",
            cost: 1,
        },
        CheckItem {
            policy: login,
            key: b"ip:8",
            cost: 1,
        },
    ];
    assert!(e.check_many_at(&items, S).unwrap().0.allowed);
    // Both deny; the hourly limit binds (longer wait), the login item's
    // strike starts a ban, which is the answer.
    let (d, i) = e.check_many_at(&items, S).unwrap();
    assert!(!d.allowed && d.banned && i == 1, "{d:?} {i}");
    let st = e.stats(login).unwrap();
    assert_eq!((st.bans, st.banned), (1, 1));
    assert!(
        st.denied >= st.banned,
        "login: denied {} < banned {}",
        st.denied,
        st.banned
    );
}
