//! `check` never allocates: a counting global allocator sees zero
//! allocations across a million checks over 100,000 keys after warm-up.

use ratekeeper::{Engine, EngineOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Writes `key:<i>` into `buf` without allocating; returns its length.
fn key(buf: &mut [u8; 24], mut i: u64) -> usize {
    buf[..4].copy_from_slice(b"key:");
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (i % 10) as u8;
        n += 1;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    for k in 0..n {
        buf[4 + k] = digits[n - 1 - k];
    }
    4 + n
}

#[test]
fn a_million_checks_over_100k_keys_allocate_nothing() {
    let engine = Engine::new(EngineOptions {
        capacity: 131_072,
        ..Default::default()
    })
    .unwrap();
    let specs = [
        "10/second",
        "fixed_window 10/second",
        "sliding_window 10/second",
        "sliding_log 5/second",
        "10/second;1000/hour",
    ];
    let mut buf = [0u8; 24];
    let mut ids: Vec<_> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| engine.add_policy(&format!("p{i}"), s).unwrap())
        .collect();
    // Abuse control on the hot path too: denials that strike and ban, shadow
    // denials, retry jitter, keys with overrides, the deny-event ring.
    let abuse = engine
        .add_policy_with(
            "abuse",
            "2/second; fixed_window 50/minute",
            ratekeeper::PolicyOptions {
                penalty: Some(ratekeeper::Penalty {
                    strikes: 3,
                    window_ns: 10_000_000_000,
                    ban_ns: 1_000_000_000,
                    max_ban_ns: 8_000_000_000,
                }),
                retry_jitter_ns: 1_000_000,
                record_keys: true,
                ..Default::default()
            },
        )
        .unwrap();
    let shadow = engine
        .add_policy_with(
            "shadow",
            "1/second",
            ratekeeper::PolicyOptions {
                shadow: true,
                ..Default::default()
            },
        )
        .unwrap();
    // 1,000 keys with overrides (the override table holds 1,024).
    for i in (0..100_000).step_by(100) {
        let n = key(&mut buf, i);
        engine.set_override(abuse, &buf[..n], 3.0).unwrap();
    }
    ids.push(abuse);
    ids.push(shadow);
    // Warm-up: touch every key once (thread-locals, first page faults).
    for &p in &ids {
        for i in 0..100_000 {
            let n = key(&mut buf, i);
            engine.check(p, &buf[..n], 1);
        }
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let mut allowed = 0u64;
    for &p in &ids {
        for i in 0..1_000_000u64 {
            let n = key(&mut buf, i % 100_000);
            allowed += engine.check(p, &buf[..n], 1).allowed as u64;
            if i % 7 == 0 {
                let _ = engine.peek(p, &buf[..n], 1);
            }
        }
    }
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(allowed > 0);
    assert_eq!(after - before, 0, "allocations on the hot path");
    // The abuse-control paths did run during the measured loop.
    let a = engine.stats(abuse).unwrap();
    assert!(a.bans > 0 && a.banned > 0 && a.denied > 0, "{a:?}");
    assert!(engine.stats(shadow).unwrap().shadow_denied > 0);
}
