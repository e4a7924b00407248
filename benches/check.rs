//! ratekeeper vs governor, side by side in the same groups.
//!
//! `cargo bench --bench check` (add `-- <filter>` for one group).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use governor::{Quota, RateLimiter};
use ratekeeper::{Clock, Engine, EngineOptions, PolicyId};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const RATE: u32 = 1_000_000_000; // per second: nearly everything is allowed, so every check charges

fn engine(capacity: usize, clock: Clock) -> (Engine, PolicyId) {
    let e = Engine::new(EngineOptions {
        capacity,
        clock,
        ..Default::default()
    })
    .unwrap();
    let p = e.add_policy("bench", &format!("{RATE}/second")).unwrap();
    (e, p)
}

fn governor_keyed() -> governor::DefaultKeyedRateLimiter<u64> {
    RateLimiter::keyed(Quota::per_second(NonZeroU32::new(RATE).unwrap()))
}

/// Key `i` of `n`, visited in a scattered order.
#[inline(always)]
fn scatter(i: u64, n: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n
}

fn hot_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_hot_key");
    g.throughput(Throughput::Elements(1));
    let (e, p) = engine(1024, Clock::MonotonicCoarse);
    g.bench_function(BenchmarkId::new("ratekeeper", "check"), |b| {
        b.iter(|| e.check(p, black_box(&7u64.to_le_bytes()), 1))
    });
    let (ep, pp) = engine(1024, Clock::Monotonic);
    g.bench_function(BenchmarkId::new("ratekeeper", "check_precise_clock"), |b| {
        b.iter(|| ep.check(pp, black_box(&7u64.to_le_bytes()), 1))
    });
    let (ea, pa) = engine(1024, Clock::Monotonic);
    let mut now = 1u64 << 40;
    g.bench_function(BenchmarkId::new("ratekeeper", "check_at"), |b| {
        b.iter(|| {
            now += 1;
            ea.check_at(pa, black_box(&7u64.to_le_bytes()), 1, now)
        })
    });
    let gov = governor_keyed();
    g.bench_function(BenchmarkId::new("governor", "check_key"), |b| {
        b.iter(|| gov.check_key(black_box(&7u64)))
    });
    g.finish();
}

/// One hot key at three quotas, so that every check is allowed, some are,
/// or none is (a flood): ratekeeper's default clock against governor's.
/// Under a flood almost every check is a denial; that path must cost least.
fn hot_key_by_outcome(c: &mut Criterion) {
    for (name, per_second) in [
        ("allowed", 1_000_000_000u32),
        ("mixed", 1_000_000),
        ("denied", 1),
    ] {
        let mut g = c.benchmark_group(format!("gcra_hot_key_{name}"));
        g.throughput(Throughput::Elements(1));
        let e = Engine::new(EngineOptions {
            capacity: 1024,
            ..Default::default()
        })
        .unwrap();
        let p = e
            .add_policy("bench", &format!("{per_second}/second"))
            .unwrap();
        g.bench_function(BenchmarkId::new("ratekeeper", "check"), |b| {
            b.iter(|| e.check(p, black_box(&7u64.to_le_bytes()), 1))
        });
        let gov: governor::DefaultKeyedRateLimiter<u64> =
            RateLimiter::keyed(Quota::per_second(NonZeroU32::new(per_second).unwrap()));
        g.bench_function(BenchmarkId::new("governor", "check_key"), |b| {
            b.iter(|| gov.check_key(black_box(&7u64)))
        });
        g.finish();
    }
}

fn many_keys(c: &mut Criterion) {
    for n in [100_000u64, 1_000_000] {
        let mut g = c.benchmark_group(format!("gcra_{}k_keys", n / 1000));
        g.throughput(Throughput::Elements(1));
        // Twice the keys in slots, as the README advises, so that buckets
        // rarely overflow (governor's map simply grows).
        let (e, p) = engine((n as usize) * 2, Clock::MonotonicCoarse);
        for k in 0..n {
            e.check(p, &k.to_le_bytes(), 1);
        }
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("ratekeeper", "check"), |b| {
            b.iter(|| {
                i += 1;
                e.check(p, &scatter(i, n).to_le_bytes(), 1)
            })
        });
        // Keys that stay live (10^6 an hour: each check is allowed and moves
        // the key's TAT further ahead), in the capacity the README advises
        // (1.1x the live keys, rounded up to a power of two of slots): some
        // keys sit in their second bucket, whose lookup first scans the
        // whole first bucket.
        let live = Engine::new(EngineOptions {
            capacity: (n as usize) * 11 / 10,
            clock: Clock::MonotonicCoarse,
            ..Default::default()
        })
        .unwrap();
        let lp = live.add_policy("live", "1000000/hour").unwrap();
        for k in 0..n {
            assert!(live.check(lp, &k.to_le_bytes(), 1).allowed);
        }
        g.bench_function(BenchmarkId::new("ratekeeper", "check_live_keys"), |b| {
            b.iter(|| {
                i += 1;
                live.check(lp, &scatter(i, n).to_le_bytes(), 1)
            })
        });
        drop(live);
        let gov = governor_keyed();
        for k in 0..n {
            let _ = gov.check_key(&k);
        }
        g.bench_function(BenchmarkId::new("governor", "check_key"), |b| {
            b.iter(|| {
                i += 1;
                gov.check_key(&scatter(i, n))
            })
        });
        g.finish();
    }
}

/// One request checked against two limits as one batch (`check_many`: all
/// charged or none), as the Flask extension does for a per-IP and a
/// per-user limit: 1M keys in each policy, one a lone GCRA limit (the
/// packed table), the other a fixed window (the slots table). Beside it,
/// the same two checks one after the other (each charged on its own).
fn batches(c: &mut Criterion) {
    let mut g = c.benchmark_group("batch_1000k_keys");
    g.throughput(Throughput::Elements(1));
    let n = 1_000_000u64;
    let e = Engine::new(EngineOptions {
        capacity: (n as usize) * 2,
        clock: Clock::MonotonicCoarse,
        ..Default::default()
    })
    .unwrap();
    let ip = e.add_policy("ip", "1000000000/second").unwrap();
    let user = e
        .add_policy("user", "fixed_window 4000000000/second")
        .unwrap();
    for k in 0..n {
        e.check(ip, &k.to_le_bytes(), 1);
        e.check(user, &k.to_le_bytes(), 1);
    }
    // The two keys of a request, independent of each other.
    let keys = |i: u64| (scatter(i, n), scatter(i.wrapping_mul(7) + 3, n));
    let mut i = 0u64;
    g.bench_function(BenchmarkId::new("ratekeeper", "check_many_2"), |b| {
        b.iter(|| {
            i += 1;
            let (a, u) = keys(i);
            let (a, u) = (a.to_le_bytes(), u.to_le_bytes());
            e.check_many(&[
                ratekeeper::CheckItem {
                    policy: ip,
                    key: &a,
                    cost: 1,
                },
                ratekeeper::CheckItem {
                    policy: user,
                    key: &u,
                    cost: 1,
                },
            ])
        })
    });
    g.bench_function(BenchmarkId::new("ratekeeper", "two_checks"), |b| {
        b.iter(|| {
            i += 1;
            let (a, u) = keys(i);
            (
                e.check(ip, &a.to_le_bytes(), 1),
                e.check(user, &u.to_le_bytes(), 1),
            )
        })
    });
    g.finish();
}

fn algorithms(c: &mut Criterion) {
    // Every algorithm with quotas large enough that (nearly) every check
    // charges: one hot key (1 thread), 1M keys (1 thread), one hot key (2 threads).
    let specs = [
        ("gcra", "1000000000/second"),
        ("fixed_window", "fixed_window 4000000000/second"),
        ("sliding_window", "sliding_window 4000000000/second"),
        ("sliding_log", "sliding_log 4/second"),
        (
            "gcra+fixed_window",
            "1000000000/second; fixed_window 4000000000/hour",
        ),
    ];
    let n = 1_000_000u64;
    for (name, spec) in specs {
        let mut g = c.benchmark_group(format!("algorithm_{name}"));
        g.throughput(Throughput::Elements(1));
        let e = Engine::new(EngineOptions {
            capacity: 2 * n as usize,
            ..Default::default()
        })
        .unwrap();
        let p = e.add_policy("p", spec).unwrap();
        // sliding_log keeps 4 stamps a second: step a quarter second per
        // check on the hot key so that each one is admitted and charged.
        let step = if name == "sliding_log" {
            250_000_000
        } else {
            1
        };
        let mut now = 1u64 << 40;
        g.bench_function(BenchmarkId::new("ratekeeper", "hot_key"), |b| {
            b.iter(|| {
                now += step;
                e.check_at(p, black_box(b"hot"), 1, now)
            })
        });
        for k in 0..n {
            e.check_at(p, &k.to_le_bytes(), 1, now);
        }
        let mut i = 0u64;
        g.bench_function(BenchmarkId::new("ratekeeper", "1m_keys"), |b| {
            b.iter(|| {
                i += 1;
                now += 1;
                e.check_at(p, &scatter(i, n).to_le_bytes(), 1, now)
            })
        });
        g.bench_function(BenchmarkId::new("ratekeeper", "hot_key_2_threads"), |b| {
            b.iter_custom(|iters| {
                parallel(2, iters, &|_, _| {
                    black_box(e.check(p, b"hot2", 1));
                })
            })
        });
        g.finish();
    }
    let mut g = c.benchmark_group("algorithm_concurrency");
    let e = Engine::new(EngineOptions {
        capacity: 1024,
        ..Default::default()
    })
    .unwrap();
    let p = e.add_policy("c", "concurrency 4").unwrap();
    g.bench_function(BenchmarkId::new("ratekeeper", "acquire_release"), |b| {
        b.iter(|| {
            let (_, permit) = e.acquire_at(p, black_box(b"hot"), 1 << 40).unwrap();
            e.release(permit.unwrap()).unwrap()
        })
    });
    g.finish();
}

/// Runs `f(thread, i)` for `iters` iterations split over `threads` threads;
/// returns wall time.
fn parallel(threads: u64, iters: u64, f: &(dyn Fn(u64, u64) + Sync)) -> Duration {
    let per = iters / threads;
    // The threads start together (the clock starts when the last one is
    // ready), so that their loops overlap from the first check: spawning
    // inside the timed region let the first thread run alone for a while.
    let ready = std::sync::Barrier::new(threads as usize + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let ready = &ready;
            s.spawn(move || {
                ready.wait();
                for i in 0..per {
                    f(t, i);
                }
            });
        }
        ready.wait();
        let start = Instant::now();
        // The scope joins every thread before it returns.
        start
    })
    .elapsed()
}

/// The machine's own scaling for a table's footprint, with no table code:
/// `bytes` of memory (huge pages, as the table's region) that each "check"
/// touches as a check of a tracked key does, a read of one random 64-byte
/// line then a compare-and-swap on a word of another, both picked by
/// hashing the key. Beside ratekeeper's distinct-keys case it shows how
/// much of the 2-thread scaling the hardware leaves: threads writing lines
/// of one shared table pull lines out of each other's cache (2 MiB of L2
/// per core here) whatever the code does.
struct ReferenceLoop {
    words: &'static [AtomicU64],
}

impl ReferenceLoop {
    fn new(bytes: usize) -> ReferenceLoop {
        let len = bytes / 8;
        // SAFETY: a fresh anonymous private mapping of `bytes` bytes: zeroed,
        // aligned to a page, owned by nobody else; it is never unmapped, so
        // the `'static` slice over it stays valid (the bench process ends).
        // Zeroed memory is a valid `AtomicU64` array.
        let words = unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert!(p != libc::MAP_FAILED, "mmap of {bytes} bytes failed");
            libc::madvise(p, bytes, libc::MADV_HUGEPAGE);
            std::slice::from_raw_parts(p as *const AtomicU64, len)
        };
        for w in words {
            w.store(1, Ordering::Relaxed); // touch every page now, not in the loop
        }
        ReferenceLoop { words }
    }

    #[inline]
    fn check(&self, key: u64) -> bool {
        let lines = self.words.len() / 8;
        let h = splitmix(key);
        let seen = self.words[(h as usize % lines) * 8].load(Ordering::Acquire);
        let w = &self.words[(splitmix(h ^ seen) as usize % lines) * 8 + 1];
        let x = w.load(Ordering::Acquire);
        w.compare_exchange(x, x.wrapping_add(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

fn splitmix(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("gcra_threads");
    g.throughput(Throughput::Elements(1));
    // Distinct keys at two sizes, each thread on `n` keys of its own, 76% of
    // the slots holding keys with 2 threads (no claim evicts: the cases
    // measure checks of tracked keys; in 2^17 slots, 200,000 keys made
    // every check of 2 threads a claim that evicts): 100,000 keys per
    // thread in 2^18 slots (a 4.5 MB table, which this VM's 32 MB L3
    // holds), 800,000 in 2^21 (36 MB).
    // One key whose every check is denied (a flood): reads only, so with 2
    // threads the key's line can stay shared by both cores.
    let flood = Engine::new(EngineOptions {
        capacity: 1024,
        clock: Clock::MonotonicCoarse,
        ..Default::default()
    })
    .unwrap();
    let fp_denied = flood.add_policy("denied", "1/hour").unwrap();
    assert!(flood.check(fp_denied, b"flood", 1).allowed);
    let gov_denied: governor::DefaultKeyedRateLimiter<u64> =
        RateLimiter::keyed(Quota::per_hour(NonZeroU32::new(1).unwrap()));
    assert!(gov_denied.check_key(&7).is_ok());
    for (n, slots, size) in [(100_000u64, 1usize << 18, ""), (800_000, 1 << 21, "_800k")] {
        let (e, p) = engine(slots, Clock::MonotonicCoarse);
        for k in 0..2 * n {
            assert!(e.check(p, &k.to_le_bytes(), 1).allowed);
        }
        let reference = ReferenceLoop::new(e.policy_bytes(p).unwrap());
        let gov = governor_keyed();
        for k in 0..2 * n {
            assert!(gov.check_key(&k).is_ok());
        }
        for threads in [1u64, 2] {
            let id = |who: &str, kind: &str| {
                BenchmarkId::new(format!("{who}_{kind}{size}_{threads}t"), threads)
            };
            if size.is_empty() {
                g.bench_function(id("ratekeeper", "hot_key"), |b| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, &|_, _| {
                            black_box(e.check(p, &7u64.to_le_bytes(), 1));
                        })
                    })
                });
                // Each thread on a hot key of its own: no word of the check
                // path is shared, so 2 threads should scale 2x.
                g.bench_function(id("ratekeeper", "own_hot_key"), |b| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, &|t, _| {
                            black_box(e.check(p, &(7 + t).to_le_bytes(), 1));
                        })
                    })
                });
                g.bench_function(id("ratekeeper", "denied_hot_key"), |b| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, &|_, _| {
                            black_box(flood.check(fp_denied, b"flood", 1));
                        })
                    })
                });
                g.bench_function(id("governor", "denied_hot_key"), |b| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, &|_, _| {
                            let _ = black_box(gov_denied.check_key(&7u64));
                        })
                    })
                });
                g.bench_function(id("governor", "hot_key"), |b| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, &|_, _| {
                            let _ = black_box(gov.check_key(&7u64));
                        })
                    })
                });
                g.bench_function(id("governor", "own_hot_key"), |b| {
                    b.iter_custom(|iters| {
                        parallel(threads, iters, &|t, _| {
                            let _ = black_box(gov.check_key(&(7 + t)));
                        })
                    })
                });
            }
            g.bench_function(id("ratekeeper", "distinct_keys"), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|t, i| {
                        black_box(e.check(p, &(t * n + scatter(i, n)).to_le_bytes(), 1));
                    })
                })
            });
            g.bench_function(id("governor", "distinct_keys"), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|t, i| {
                        let _ = black_box(gov.check_key(&(t * n + scatter(i, n))));
                    })
                })
            });
            g.bench_function(id("reference_loop", "distinct_keys"), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|t, i| {
                        black_box(reference.check(t * n + scatter(i, n)));
                    })
                })
            });
        }
    }
    g.finish();
}

fn shared_vs_in_process(c: &mut Criterion) {
    let mut g = c.benchmark_group("shared_vs_in_process");
    g.throughput(Throughput::Elements(1));
    let (e, p) = engine(1 << 17, Clock::MonotonicCoarse);
    let path = std::env::temp_dir().join(format!("rk-bench-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let shared = Engine::open_shared(
        &path,
        EngineOptions {
            capacity: 1 << 17,
            shared_max_bytes: 64 << 20,
            ..Default::default()
        },
    )
    .unwrap();
    let ps = shared
        .add_policy("bench", &format!("{RATE}/second"))
        .unwrap();
    let n = 100_000u64;
    for (name, e, p) in [("in_process", &e, p), ("shared", &shared, ps)] {
        let mut i = 0u64;
        g.bench_function(
            BenchmarkId::new("ratekeeper", format!("{name}_hot_key")),
            |b| b.iter(|| e.check(p, black_box(&7u64.to_le_bytes()), 1)),
        );
        g.bench_function(
            BenchmarkId::new("ratekeeper", format!("{name}_100k_keys")),
            |b| {
                b.iter(|| {
                    i += 1;
                    e.check(p, &scatter(i, n).to_le_bytes(), 1)
                })
            },
        );
    }
    g.finish();
    let _ = std::fs::remove_file(&path);
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2)).sample_size(30);
    targets = hot_key, hot_key_by_outcome, many_keys, batches, algorithms, threads, shared_vs_in_process
}
criterion_main!(benches);
