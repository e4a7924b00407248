//! Redis Sentinel (`redis+sentinel://host:port[,host:port]/service`)
//! against a real master, replica and three sentinels on 127.0.0.1
//! (tests/support/redis_sentinel.rs): the engine finds the master through
//! the sentinels; when the master is SIGKILLed, the failure policy decides
//! (never an error, never a panic) until the sentinels have promoted the
//! replica, and then decisions come from the new master, with the state
//! the old one had replicated.
//!
//! Timing: no assertion depends on machine speed. Waits are bounded
//! generously (`FAILOVER_BOUND`); the failover time measured is printed.
#![cfg(feature = "redis")]

#[path = "support/redis_sentinel.rs"]
mod redis_sentinel;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use ratekeeper::{Engine, OnFailure, PolicyId, RedisOptions};
use redis_sentinel::{cli, SentinelSet, DOWN_AFTER_MS};

/// Longest wait for the sentinels to be ready, and for a failover to be
/// followed (sentinel agreement and promotion take a few seconds; a loaded
/// machine may take many more).
const FAILOVER_BOUND: Duration = Duration::from_secs(60);

fn engine(url: &str, on_failure: OnFailure, prefix: &str) -> Engine {
    Engine::open_redis(
        url,
        RedisOptions {
            prefix: prefix.into(),
            on_failure,
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_millis(200),
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            // Every check goes to Redis or to the failure policy.
            deny_cache: 0,
            log_switches: false,
            ..RedisOptions::default()
        },
    )
    .expect("the engine opens through the sentinels")
}

#[test]
fn sentinel_urls_that_do_not_parse_are_refused() {
    for url in [
        "redis+sentinel://127.0.0.1:1",
        "redis+sentinel://127.0.0.1:1/",
        "redis+sentinel:///mymaster",
        "redis+sentinel://127.0.0.1:notaport/mymaster",
        "redis+sentinel://127.0.0.1:1/mymaster/notadb",
    ] {
        let e = Engine::open_redis(url, RedisOptions::default());
        assert!(
            matches!(e, Err(ratekeeper::Error::InvalidArgument(_))),
            "{url}: {e:?}"
        );
    }
}

#[test]
fn no_sentinel_answering_starts_the_engine_on_its_failure_policy() {
    let e = engine(
        "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster",
        OnFailure::Closed,
        "none:",
    );
    let p = e.add_policy("p", "10/second").unwrap();
    assert!(!e.check(p, b"k", 1).allowed);
    let s = e.redis_stats().unwrap();
    assert!(!s.up && s.fallback_decisions >= 1, "{s:?}");
}

#[test]
fn a_failover_is_followed_and_the_failure_policy_decides_meanwhile() {
    let mut set = SentinelSet::start(FAILOVER_BOUND).expect("master, replica and sentinels start");
    let url = set.url();
    let (old, new) = (set.master_port(), set.replica_port());

    // One engine per failure policy, each with its own keys.
    let policies = [
        (OnFailure::Local, "local:"),
        (OnFailure::Open, "open:"),
        (OnFailure::Closed, "closed:"),
    ];
    let engines: Vec<(OnFailure, Engine, PolicyId)> = policies
        .iter()
        .map(|&(f, prefix)| {
            let e = engine(&url, f, prefix);
            let p = e.add_policy("p", "fixed_window 3/hour").unwrap();
            (f, e, p)
        })
        .collect();
    for (_, e, p) in &engines {
        // Two of three on "k"; "spent" all three (Redis denies it next).
        assert!(e.check(*p, b"k", 1).allowed);
        assert!(e.check(*p, b"k", 1).allowed);
        for _ in 0..3 {
            assert!(e.check(*p, b"spent", 1).allowed);
        }
        assert!(!e.check(*p, b"spent", 1).allowed);
    }
    // The replica has everything before the master dies.
    assert_eq!(cli(old, &["WAIT", "1", "5000"]), "1");

    set.kill_master();
    let killed = Instant::now();

    // Each engine checks every 10 ms until it decides in Redis again and
    // the sentinels name the replica: during the failover, Open allows
    // "spent" (Redis would deny), Closed denies fresh keys (Redis would
    // allow), Local decides with its own table.
    struct Seen {
        decisions: u64,
        allowed: u64,
        back_after: Option<Duration>,
    }
    let mut seen: Vec<Seen> = engines
        .iter()
        .map(|_| Seen {
            decisions: 0,
            allowed: 0,
            back_after: None,
        })
        .collect();
    let mut i = 0u64;
    while seen.iter().any(|s| s.back_after.is_none()) {
        assert!(
            killed.elapsed() < FAILOVER_BOUND,
            "no failover within {FAILOVER_BOUND:?}: sentinels report {:?}",
            set.reported_master()
        );
        let promoted = set.reported_master() == Some(new);
        for ((f, e, p), s) in engines.iter().zip(&mut seen) {
            if s.back_after.is_some() {
                continue;
            }
            let before = e.redis_stats().unwrap();
            let key = match f {
                OnFailure::Open => b"spent".to_vec(),
                OnFailure::Closed => format!("fresh-{i}").into_bytes(),
                OnFailure::Local => b"local".to_vec(),
            };
            let d = e.check(*p, &key, 1);
            let after = e.redis_stats().unwrap();
            if after.fallback_decisions > before.fallback_decisions {
                s.decisions += 1;
                s.allowed += u64::from(d.allowed);
            } else if promoted && after.round_trips > before.round_trips && after.failovers >= 1 {
                s.back_after = Some(killed.elapsed());
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }

    for ((f, e, p), s) in engines.iter().zip(&seen) {
        let stats = e.redis_stats().unwrap();
        println!(
            "{f:?}: decided by Redis again {:?} after SIGKILL of the master \
             (down-after-milliseconds {DOWN_AFTER_MS}); {} fallback decisions meanwhile; {stats:?}",
            s.back_after.unwrap(),
            s.decisions
        );
        assert!(
            stats.failovers >= 1 && stats.recoveries >= 1,
            "{f:?}: {stats:?}"
        );
        assert!(s.decisions >= 1, "{f:?}: no decision by the failure policy");
        match f {
            OnFailure::Open => assert_eq!(s.allowed, s.decisions, "Open allows"),
            OnFailure::Closed => assert_eq!(s.allowed, 0, "Closed denies"),
            OnFailure::Local => {}
        }
        // Decisions come from the new master, with the replicated state:
        // the third of three on "k" is allowed, the fourth is not.
        assert!(e.check(*p, b"k", 1).allowed, "{f:?}");
        assert!(!e.check(*p, b"k", 1).allowed, "{f:?}");
        assert!(!e.check(*p, b"spent", 1).allowed, "{f:?}");
    }
    assert_eq!(set.reported_master(), Some(new));
    let keys = cli(new, &["DBSIZE"]);
    assert!(
        keys.parse::<u64>().unwrap_or(0) > 0,
        "the new master holds the state"
    );
}
