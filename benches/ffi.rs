//! The cost of the C ABI over the Rust call, in the same run: `rk_check_at`
//! (what a C program calls: argument checks, panic boundary, out-parameter)
//! against `Engine::check_at` (inlined, and as an out-of-line call) and
//! `Engine::try_check_at` on the same engine, policy and key.
//!
//! `cargo bench --bench ffi`

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ratekeeper::ffi::check::{rk_check, rk_check_at, rk_decision};
use ratekeeper::ffi::engine::{rk_engine, rk_engine_free, rk_engine_new};
use ratekeeper::ffi::policy::rk_policy_add;
use ratekeeper::ffi::status::rk_status;
use ratekeeper::{Engine, EngineOptions, PolicyId};
use std::mem::MaybeUninit;

/// `Engine::check_at` as an out-of-line call, as a C caller gets it: the
/// fair baseline for the boundary's own cost (inlined into the benchmark
/// loop, `check_at` also hoists the policy lookup out of the loop).
#[inline(never)]
fn check_at_call(e: &Engine, p: PolicyId, key: &[u8], now: u64) -> ratekeeper::Decision {
    e.check_at(p, key, 1, now)
}

/// Per second: nearly everything is allowed, so every check charges.
const SPEC: &std::ffi::CStr = c"1000000000/second";

fn c_abi_overhead(c: &mut Criterion) {
    let mut g = c.benchmark_group("c_abi_overhead");
    g.throughput(Throughput::Elements(1));
    let key = 7u64.to_le_bytes();

    let e = Engine::new(EngineOptions {
        capacity: 1024,
        ..Default::default()
    })
    .unwrap();
    let p: PolicyId = e.add_policy("bench", SPEC.to_str().unwrap()).unwrap();
    let mut now = 1u64 << 40;
    g.bench_function(BenchmarkId::new("rust", "check_at"), |b| {
        b.iter(|| {
            now += 1;
            e.check_at(p, black_box(&key), 1, now)
        })
    });
    g.bench_function(BenchmarkId::new("rust", "check_at_out_of_line"), |b| {
        b.iter(|| {
            now += 1;
            check_at_call(black_box(&e), p, black_box(&key), now)
        })
    });
    // What `rk_check_at` does, in Rust: the policy id and kind validated,
    // the key's length unknown to the compiler (the C ABI ÷ Rust ratio of
    // benches/report.py).
    g.bench_function(BenchmarkId::new("rust", "try_check_at"), |b| {
        b.iter(|| {
            now += 1;
            e.try_check_at(p, black_box(&key[..]), 1, now)
        })
    });

    let mut ce: *mut rk_engine = std::ptr::null_mut();
    let mut cp = 0u32;
    // SAFETY: out-pointers are live locals; the strings are NUL-terminated.
    unsafe {
        assert_eq!(rk_engine_new(std::ptr::null(), &mut ce), rk_status::RK_OK);
        assert_eq!(
            rk_policy_add(ce, c"bench".as_ptr(), SPEC.as_ptr(), &mut cp),
            rk_status::RK_OK
        );
    }
    let mut out = MaybeUninit::<rk_decision>::uninit();
    g.bench_function(BenchmarkId::new("c_abi", "rk_check_at"), |b| {
        b.iter(|| {
            now += 1;
            // SAFETY: live engine, key slice, writable out-parameter.
            unsafe {
                rk_check_at(
                    black_box(ce),
                    cp,
                    black_box(key.as_ptr()),
                    key.len(),
                    1,
                    now,
                    out.as_mut_ptr(),
                )
            }
        })
    });
    g.bench_function(BenchmarkId::new("c_abi", "rk_check"), |b| {
        // SAFETY: as above.
        b.iter(|| unsafe {
            rk_check(
                black_box(ce),
                cp,
                black_box(key.as_ptr()),
                key.len(),
                1,
                out.as_mut_ptr(),
            )
        })
    });
    g.bench_function(BenchmarkId::new("rust", "check"), |b| {
        b.iter(|| e.check(p, black_box(&key), 1))
    });
    // SAFETY: the engine is not used after this.
    unsafe { rk_engine_free(ce) };
    g.finish();
}

criterion_group!(benches, c_abi_overhead);
criterion_main!(benches);
