//! One load-generating process of the Redis capacity benchmark
//! (`benches/redis_capacity.py` starts several and a `redis-server`, and
//! writes the report). Open loop: each of `threads` threads sends its share
//! of `rate` checks per second on a fixed schedule from `start_unix_ns` for
//! `duration_ms`, and records each check's latency from its scheduled time
//! (so a server that falls behind shows as queueing, not as fewer samples).
//! Prints one line: `<completed> <fallbacks> <latencies in µs, space-separated>`.
//!
//! ```text
//! redis_capacity URL SCENARIO RATE THREADS DURATION_MS START_UNIX_NS [LIMITS_SCRIPT]
//! ```
//!
//! Scenarios: `rk1` (ratekeeper, gcra 100000000/hour, keys rotating over
//! 10,000), `rk2` (`10000/second;100000/hour`, the same keys), `rkflood`
//! and `rkflood-nocache` (one key, `10/second`, deny cache 4096 and 0),
//! `lim1`, `lim2` and `lim2flood` (`limits` RedisStorage fixed window: its
//! `incr_expire.lua` by `EVALSHA`, read from LIMITS_SCRIPT, once per limit
//! as `limits` and Flask-Limiter call it; the keys rotating, or one key).
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-redis cargo build --release --example redis_capacity
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ratekeeper::{Engine, RedisOptions};

const KEYS: u64 = 10_000;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn sleep_until(t: u64) {
    let now = unix_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 7 {
        eprintln!("usage: redis_capacity URL SCENARIO RATE THREADS DURATION_MS START_UNIX_NS [LIMITS_SCRIPT]");
        std::process::exit(2);
    }
    let (url, scenario) = (a[1].clone(), a[2].clone());
    let rate: f64 = a[3].parse().unwrap();
    let threads: usize = a[4].parse().unwrap();
    let duration_ns = a[5].parse::<u64>().unwrap() * 1_000_000;
    let start: u64 = a[6].parse().unwrap();
    let interval_ns = (threads as f64 * 1e9 / rate) as u64;
    let per_thread = duration_ns / interval_ns.max(1);
    let pid = u64::from(std::process::id());

    let limits_script = a.get(7).map(|p| std::fs::read_to_string(p).unwrap());
    let engine = if scenario.starts_with("rk") {
        let e = Engine::open_redis(
            &url,
            RedisOptions {
                prefix: format!("cap-{scenario}:"),
                deny_cache: if scenario == "rkflood-nocache" {
                    0
                } else {
                    4096
                },
                pool_size: threads,
                timeout: Duration::from_secs(2),
                log_switches: false,
                ..RedisOptions::default()
            },
        )
        .unwrap();
        let spec = match scenario.as_str() {
            "rk1" => "gcra 100000000/hour",
            "rk2" => "10000/second;100000/hour",
            _ => "10/second",
        };
        let p = e.add_policy("p", spec).unwrap();
        Some((e, p))
    } else {
        None
    };
    let engine = engine.as_ref();

    let results: Vec<(u64, Vec<u32>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (url, scenario, script) = (&url, &scenario, &limits_script);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_thread as usize);
                    let mut con = if engine.is_none() {
                        let c = redis::Client::open(url.as_str()).unwrap();
                        Some(c.get_connection().unwrap())
                    } else {
                        None
                    };
                    let script = script.as_ref().map(|s| redis::Script::new(s));
                    // Warm-up before the schedule: the connection, and the
                    // library or script loaded.
                    if let Some((e, p)) = engine {
                        let _ = e.check(*p, b"warm-up", 1);
                    } else if let (Some(con), Some(script)) = (con.as_mut(), script.as_ref()) {
                        let _: i64 = script
                            .key("LIMITS:warm-up")
                            .arg(1)
                            .arg(1)
                            .invoke(con)
                            .unwrap();
                    }
                    // Threads start staggered over one interval.
                    let offset = interval_ns * t as u64 / threads as u64;
                    let mut done = 0;
                    for k in 0..per_thread {
                        let at = start + offset + k * interval_ns;
                        sleep_until(at);
                        let i = (pid * 7919 + t as u64 * 104_729 + k) % KEYS;
                        let key = if scenario.contains("flood") {
                            "flood".to_string()
                        } else {
                            format!("ip:10.0.{}.{}", i / 256, i % 256)
                        };
                        if let Some((e, p)) = engine {
                            let _ = e.check(*p, key.as_bytes(), 1);
                        } else {
                            let (con, script) = (con.as_mut().unwrap(), script.as_ref().unwrap());
                            // limits' key layout: LIMITER/<key>/<amount>/<multiples>/<unit>.
                            let limits: &[(&str, u64)] = if scenario == "lim1" {
                                &[("100000000/1/hour", 3600)]
                            } else {
                                &[("10000/1/second", 1), ("100000/1/hour", 3600)]
                            };
                            for (l, expiry) in limits {
                                let n: i64 = script
                                    .key(format!("LIMITS:LIMITER/{key}/{l}"))
                                    .arg(expiry)
                                    .arg(1)
                                    .invoke(con)
                                    .unwrap();
                                std::hint::black_box(n);
                            }
                        }
                        let us = (unix_ns().saturating_sub(at) / 1000).min(u64::from(u32::MAX));
                        lat.push(us as u32);
                        done += 1;
                    }
                    (done, lat)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let completed: u64 = results.iter().map(|r| r.0).sum();
    let fallbacks = engine.map_or(0, |(e, _)| e.redis_stats().unwrap().fallback_decisions);
    let mut line = format!("{completed} {fallbacks}");
    for (_, lat) in &results {
        for l in lat {
            line.push(' ');
            line.push_str(&l.to_string());
        }
    }
    println!("{line}");
}
