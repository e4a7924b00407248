//! The Redis backend, against a local `redis-server` this bench starts on a
//! free port (and stops by PID): the latency of one decision (one round
//! trip, whatever the number of limits), of a deny-cache hit, and the
//! failover timings — how long requests take while Redis is killed, hung
//! (SIGSTOP) and restarted, and how soon traffic notices the recovery.
//!
//! `cargo bench --bench redis`

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use ratekeeper::{CheckItem, Engine, OnFailure, RedisOptions};
use redis_server::RedisServer;

fn options(prefix: &str) -> RedisOptions {
    RedisOptions {
        prefix: format!("bench:{prefix}:"),
        log_switches: false,
        ..RedisOptions::default()
    }
}

fn latency(c: &mut Criterion) {
    let server = RedisServer::start().expect("redis-server starts");
    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements(1));

    // The floor: one PING round trip on the same kind of connection.
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    g.bench_function(BenchmarkId::new("floor", "PING"), |b| {
        b.iter(|| redis::cmd("PING").query::<String>(&mut con).unwrap())
    });

    let e = Engine::open_redis(&server.url(), options("lat")).unwrap();
    let one = e.add_policy("one", "1000000000/second").unwrap();
    let two = e
        .add_policy("two", "1000000000/second; 1000000000/hour")
        .unwrap();
    let log = e.add_policy("log", "sliding_log 1000/second").unwrap();
    let mut i = 0u64;
    g.bench_function(BenchmarkId::new("check", "1 limit"), |b| {
        b.iter(|| e.check(one, black_box(b"ip:203.0.113.7"), 1))
    });
    g.bench_function(BenchmarkId::new("check", "2 limits"), |b| {
        b.iter(|| e.check(two, black_box(b"ip:203.0.113.7"), 1))
    });
    g.bench_function(BenchmarkId::new("check", "sliding_log 1000"), |b| {
        b.iter(|| {
            i += 1;
            e.check(log, black_box(&i.to_le_bytes()), 1)
        })
    });
    g.bench_function(
        BenchmarkId::new("check_many", "3 policies, 4 limits"),
        |b| {
            b.iter(|| {
                // A new route key each time keeps the sliding log under its limit.
                i += 1;
                let route = i.to_le_bytes();
                let items = [
                    CheckItem {
                        policy: one,
                        key: b"ip:203.0.113.7",
                        cost: 1,
                    },
                    CheckItem {
                        policy: two,
                        key: b"key:alice",
                        cost: 1,
                    },
                    CheckItem {
                        policy: log,
                        key: &route,
                        cost: 1,
                    },
                ];
                let (d, _) = e.check_many(black_box(&items)).unwrap();
                assert!(d.allowed);
            })
        },
    );
    let denied = e.add_policy("denied", "1/hour").unwrap();
    e.check(denied, b"abuser", 1);
    g.bench_function(BenchmarkId::new("check", "deny-cache hit"), |b| {
        b.iter(|| e.check(denied, black_box(b"abuser"), 1))
    });
    g.finish();
}

/// Median of `n` timed calls of `f`.
fn median(n: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[n / 2]
}

/// Failover timings with the default options (100 ms timeout, 200 ms
/// connect timeout, 50 ms .. 2 s backoff), printed as lines that
/// `benches/report.py` and a reader can take as they are.
fn failover() {
    let mut server = RedisServer::start().expect("redis-server starts");
    let e = Engine::open_redis(
        &server.url(),
        RedisOptions {
            on_failure: OnFailure::Local,
            ..options("failover")
        },
    )
    .unwrap();
    let p = e.add_policy("api", "1000000/second").unwrap();
    let up = median(1001, || {
        e.check(p, b"k", 1);
    });

    // Killed: the socket is closed, so the first request fails at once.
    server.stop();
    let t = Instant::now();
    let d = e.check(p, b"k", 1);
    let first_killed = t.elapsed();
    assert!(d.allowed && !e.redis_stats().unwrap().up);
    let down = median(1001, || {
        e.check(p, b"k", 1);
    });
    server.restart().unwrap();
    let t = Instant::now();
    while !e.redis_stats().unwrap().up {
        e.check(p, b"k", 1);
        std::thread::sleep(Duration::from_millis(1));
    }
    let recovery = t.elapsed();

    // Hung (SIGSTOP): the first request waits for the read timeout.
    let pid = server.pid().unwrap() as i32;
    e.check(p, b"k", 1);
    // SAFETY: kill with a valid signal on the server's own PID.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let t = Instant::now();
    e.check(p, b"k", 1);
    let first_hung = t.elapsed();
    let hung = median(101, || {
        e.check(p, b"k", 1);
    });
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let t = Instant::now();
    while !e.redis_stats().unwrap().up {
        e.check(p, b"k", 1);
        std::thread::sleep(Duration::from_millis(1));
    }
    let resumed = t.elapsed();
    let s = e.redis_stats().unwrap();
    println!(
        "failover: check with Redis up (median)            {:>10.1?}",
        up
    );
    println!(
        "failover: first check after Redis was killed      {:>10.1?}",
        first_killed
    );
    println!(
        "failover: check while Redis is down (median)      {:>10.1?}",
        down
    );
    println!(
        "failover: restart to first Redis decision         {:>10.1?}",
        recovery
    );
    println!(
        "failover: first check after Redis hung (SIGSTOP)  {:>10.1?}",
        first_hung
    );
    println!(
        "failover: check while Redis is hung (median)      {:>10.1?}",
        hung
    );
    println!(
        "failover: SIGCONT to first Redis decision         {:>10.1?}",
        resumed
    );
    println!(
        "failover: stats failovers={} recoveries={} fallback_decisions={}",
        s.failovers, s.recoveries, s.fallback_decisions
    );
}

criterion_group!(benches, latency);

fn main() {
    failover();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
