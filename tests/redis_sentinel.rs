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
#[path = "support/runner.rs"]
mod runner;

use std::time::{Duration, Instant};

use std::ffi::CString;
use std::mem::size_of;
use std::ptr::null_mut;

use ratekeeper::ffi::check::{rk_check, rk_decision};
use ratekeeper::ffi::engine::{rk_engine, rk_engine_free};
use ratekeeper::ffi::policy::rk_policy_add;
use ratekeeper::ffi::redis::{
    rk_engine_open_redis, rk_engine_redis_stats_sized, rk_on_failure, rk_redis_options,
    rk_redis_options_init_sized, rk_redis_stats,
};
use ratekeeper::ffi::status::rk_status;
use ratekeeper::{Engine, OnFailure, PolicyId, RedisOptions, RedisStats};
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

/// The same through the C ABI (`rk_engine_open_redis` with the sentinel
/// URL, `rk_check`, `rk_engine_redis_stats`), on failure policy closed.
struct CEngine {
    e: *mut rk_engine,
    policy: u32,
}

impl CEngine {
    fn open(url: &str, prefix: &str, spec: &str) -> CEngine {
        let url = CString::new(url).unwrap();
        let prefix = CString::new(prefix).unwrap();
        let (name, spec) = (c"p", CString::new(spec).unwrap());
        // SAFETY: zeroed bytes are a valid `rk_redis_options` (integers,
        // bools, NULL pointers); init writes its defaults over them.
        let mut o = unsafe { std::mem::zeroed::<rk_redis_options>() };
        // SAFETY: `o` is a live, writable struct of the size passed.
        unsafe { rk_redis_options_init_sized(&mut o, size_of::<rk_redis_options>()) };
        o.on_failure = rk_on_failure::RK_ON_FAILURE_CLOSED as u32;
        o.prefix = prefix.as_ptr();
        o.connect_timeout_ms = 200;
        o.timeout_ms = 200;
        o.retry_min_ms = 20;
        o.retry_max_ms = 200;
        o.deny_cache = 0;
        o.log_switches = false;
        let mut e = null_mut();
        let mut policy = 0;
        // SAFETY: NUL-terminated strings that outlive the calls; `o` set up
        // by init; writable outs; `e` is the engine just opened.
        unsafe {
            assert_eq!(
                rk_engine_open_redis(url.as_ptr(), &o, &mut e),
                rk_status::RK_OK
            );
            assert_eq!(
                rk_policy_add(e, name.as_ptr(), spec.as_ptr(), &mut policy),
                rk_status::RK_OK
            );
        }
        CEngine { e, policy }
    }

    fn check(&self, key: &[u8]) -> bool {
        // SAFETY: zeroed bytes are a valid `rk_decision` (integers, bools).
        let mut d = unsafe { std::mem::zeroed::<rk_decision>() };
        // SAFETY: a live engine, the key's bytes, a writable out.
        let status = unsafe { rk_check(self.e, self.policy, key.as_ptr(), key.len(), 1, &mut d) };
        assert_eq!(status, rk_status::RK_OK, "a check never fails");
        d.allowed
    }

    fn stats(&self) -> RedisStats {
        // SAFETY: zeroed bytes are a valid `rk_redis_stats` (integers, bools).
        let mut s = unsafe { std::mem::zeroed::<rk_redis_stats>() };
        // SAFETY: a live engine, a writable out of the size passed.
        let status =
            unsafe { rk_engine_redis_stats_sized(self.e, &mut s, size_of::<rk_redis_stats>()) };
        assert_eq!(status, rk_status::RK_OK);
        RedisStats {
            up: s.up,
            round_trips: s.round_trips,
            failovers: s.failovers,
            recoveries: s.recoveries,
            fallback_decisions: s.fallback_decisions,
            ..RedisStats::default()
        }
    }
}

impl Drop for CEngine {
    fn drop(&mut self) {
        // SAFETY: the engine opened in `open`, freed once.
        unsafe { rk_engine_free(self.e) };
    }
}

/// One engine of the failover test: Rust or C, and its failure policy.
enum Contender {
    Rust(OnFailure, Engine, PolicyId),
    C(CEngine),
}

impl Contender {
    fn on_failure(&self) -> OnFailure {
        match self {
            Contender::Rust(f, _, _) => *f,
            Contender::C(_) => OnFailure::Closed,
        }
    }

    fn check(&self, key: &[u8]) -> bool {
        match self {
            Contender::Rust(_, e, p) => e.check(*p, key, 1).allowed,
            Contender::C(c) => c.check(key),
        }
    }

    fn stats(&self) -> RedisStats {
        match self {
            Contender::Rust(_, e, _) => e.redis_stats().unwrap(),
            Contender::C(c) => c.stats(),
        }
    }

    fn name(&self) -> String {
        match self {
            Contender::Rust(f, _, _) => format!("Rust {f:?}"),
            Contender::C(_) => "C ABI Closed".into(),
        }
    }
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
    let spec = "fixed_window 3/hour";
    let mut engines: Vec<Contender> = policies
        .iter()
        .map(|&(f, prefix)| {
            let e = engine(&url, f, prefix);
            let p = e.add_policy("p", spec).unwrap();
            Contender::Rust(f, e, p)
        })
        .collect();
    engines.push(Contender::C(CEngine::open(&url, "c:", spec)));
    for e in &engines {
        // Two of three on "k"; "spent" all three (Redis denies it next).
        assert!(e.check(b"k") && e.check(b"k"));
        for _ in 0..3 {
            assert!(e.check(b"spent"));
        }
        assert!(!e.check(b"spent"));
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
        for (e, s) in engines.iter().zip(&mut seen) {
            if s.back_after.is_some() {
                continue;
            }
            let before = e.stats();
            let key = match e.on_failure() {
                OnFailure::Open => b"spent".to_vec(),
                OnFailure::Closed => format!("fresh-{i}").into_bytes(),
                OnFailure::Local => b"local".to_vec(),
            };
            let allowed = e.check(&key);
            let after = e.stats();
            if after.fallback_decisions > before.fallback_decisions {
                s.decisions += 1;
                s.allowed += u64::from(allowed);
            } else if promoted && after.round_trips > before.round_trips && after.failovers >= 1 {
                s.back_after = Some(killed.elapsed());
            }
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(10));
    }

    for (e, s) in engines.iter().zip(&seen) {
        let (f, stats, name) = (e.on_failure(), e.stats(), e.name());
        println!(
            "{name}: decided by Redis again {:?} after SIGKILL of the master \
             (down-after-milliseconds {DOWN_AFTER_MS}); {} fallback decisions meanwhile; {stats:?}",
            s.back_after.unwrap(),
            s.decisions
        );
        assert!(
            stats.failovers >= 1 && stats.recoveries >= 1,
            "{name}: {stats:?}"
        );
        assert!(
            s.decisions >= 1,
            "{name}: no decision by the failure policy"
        );
        match f {
            OnFailure::Open => assert_eq!(s.allowed, s.decisions, "Open allows"),
            OnFailure::Closed => assert_eq!(s.allowed, 0, "Closed denies"),
            OnFailure::Local => {}
        }
        // Decisions come from the new master, with the replicated state:
        // the third of three on "k" is allowed, the fourth is not.
        assert!(e.check(b"k"), "{name}");
        assert!(!e.check(b"k"), "{name}");
        assert!(!e.check(b"spent"), "{name}");
    }
    assert_eq!(set.reported_master(), Some(new));
    let keys = cli(new, &["DBSIZE"]);
    assert!(
        keys.parse::<u64>().unwrap_or(0) > 0,
        "the new master holds the state"
    );
}
