//! The Redis script's own cost: microseconds per script call inside Redis
//! (`INFO commandstats`, `cmdstat_fcall` plus `cmdstat_evalsha`: the
//! function library on Redis 7+, the script on older servers), per case, through the real
//! client (`Engine::open_redis`, Redis `TIME`, deny cache off so that every
//! call reaches Redis). Each case makes `N` calls after `CONFIG RESETSTAT`;
//! the table is the median of 3 runs. A `redis-server` is started on a free
//! port and stopped by its PID.
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-opt cargo test -j1 --release \
//!     --bench redis_script_cost -- --ignored --nocapture
//! ```
//!
//! `RK_SCRIPT_COST_N` overrides `N` (default 20000).

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use ratekeeper::{CheckItem, Engine, PolicyId, RedisOptions};
use redis_server::RedisServer;

const RUNS: usize = 3;

/// Total `usec` and `calls` of `cmdstat_fcall` and `cmdstat_evalsha`
/// since the last reset.
fn script_stats(con: &mut redis::Connection) -> (f64, f64) {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    let lines: Vec<&str> = info
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_fcall:"))
        .collect();
    assert!(!lines.is_empty(), "the script was called");
    let field = |line: &str, name: &str| -> f64 {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    lines.iter().fold((0.0, 0.0), |(u, c), l| {
        (u + field(l, "usec"), c + field(l, "calls"))
    })
}

/// Microseconds per script call over `n` iterations of `f` (after a warm-up).
fn usec_per_call(con: &mut redis::Connection, n: u64, mut f: impl FnMut(u64)) -> f64 {
    for i in 0..n / 10 {
        f(n + i);
    }
    redis::cmd("CONFIG").arg("RESETSTAT").exec(con).unwrap();
    for i in 0..n {
        f(i);
    }
    let (usec, calls) = script_stats(con);
    usec / calls
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn script_cost_per_call() {
    let n: u64 = std::env::var("RK_SCRIPT_COST_N")
        .map(|v| v.parse().unwrap())
        .unwrap_or(20000);
    let server = RedisServer::start().expect("redis-server starts");
    let mut con = redis::Client::open(server.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let e = Engine::open_redis(
        &server.url(),
        RedisOptions {
            prefix: "cost:".into(),
            deny_cache: 0,
            log_switches: false,
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let add = |name: &str, spec: &str| -> PolicyId { e.add_policy(name, spec).unwrap() };
    let gcra = add("gcra", "gcra 1000000000/second");
    let fixed = add("fixed", "fixed_window 1000000000/second");
    let two = add("two", "10/second;1000/hour");
    let sw = add("sw", "sliding_window 1000000000/second");
    let log = add("log", "sliding_log 10/second");
    let denied = add("denied", "1/hour");
    let conc = add("conc", "concurrency 4");
    e.check(denied, b"abuser", 1);
    // Keys cycle over this many so that the 10-per-second limits allow.
    let key = |i: u64| (i % 4096).to_le_bytes();

    type Case<'a> = (&'a str, Box<dyn FnMut(u64) + 'a>);
    let mut cases: Vec<Case<'_>> = vec![
        (
            "gcra, 1 limit",
            Box::new(|_| assert!(e.check(gcra, b"k", 1).allowed)),
        ),
        (
            "fixed_window, 1 limit",
            Box::new(|_| assert!(e.check(fixed, b"k", 1).allowed)),
        ),
        (
            "10/second;1000/hour",
            Box::new(|i| assert!(e.check(two, &key(i), 1).allowed)),
        ),
        (
            "sliding_window",
            Box::new(|_| assert!(e.check(sw, b"k", 1).allowed)),
        ),
        (
            "sliding_log 10",
            Box::new(|i| assert!(e.check(log, &key(i), 1).allowed)),
        ),
        (
            "batch of 3 items",
            Box::new(|i| {
                let k = key(i);
                let items = [
                    CheckItem {
                        policy: gcra,
                        key: b"k",
                        cost: 1,
                    },
                    CheckItem {
                        policy: sw,
                        key: b"k",
                        cost: 1,
                    },
                    CheckItem {
                        policy: log,
                        key: &k,
                        cost: 1,
                    },
                ];
                assert!(e.check_many(&items).unwrap().0.allowed);
            }),
        ),
        (
            "denied check",
            Box::new(|_| assert!(!e.check(denied, b"abuser", 1).allowed)),
        ),
        (
            "acquire+release, concurrency 4 (per call)",
            Box::new(|_| {
                let (_, permit) = e.acquire(conc, b"k").unwrap();
                assert!(e.release(permit.unwrap()).unwrap());
            }),
        ),
    ];

    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for _ in 0..RUNS {
        for (c, (_, f)) in cases.iter_mut().enumerate() {
            runs[c].push(usec_per_call(&mut con, n, f));
        }
    }
    println!(
        "\nusec per script call (FCALL or EVALSHA) inside Redis, N = {n}, median of {RUNS} runs"
    );
    println!("{:<44} {:>8}   runs", "case", "median");
    for ((name, _), r) in cases.iter().zip(&mut runs) {
        let shown = r
            .iter()
            .map(|u| format!("{u:.2}"))
            .collect::<Vec<_>>()
            .join(" ");
        r.sort_by(f64::total_cmp);
        println!("{name:<44} {:>8.2}   {shown}", r[RUNS / 2]);
    }
}
