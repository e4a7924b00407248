//! Memory per tracked key, ratekeeper vs governor, at 100k and 1M keys.
//! Prints one line per contender and size; `benches/report.py` reads them.
//!
//! `cargo bench --bench memory`

use governor::{Quota, RateLimiter};
use ratekeeper::{Engine, EngineOptions};
use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};

struct Counting;
static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: forwards to the system allocator; only tracks live bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as i64 - l.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    // `cargo bench` passes `--bench`; ignore arguments.
    for n in [100_000u64, 1_000_000] {
        let before = LIVE.load(Ordering::Relaxed);
        let gov = RateLimiter::keyed(Quota::per_second(NonZeroU32::new(10).unwrap()));
        for k in 0..n {
            let _ = gov.check_key(&k);
        }
        let gov_bytes = LIVE.load(Ordering::Relaxed) - before;
        println!("memory governor {n} {:.1}", gov_bytes as f64 / n as f64);
        drop(gov);

        let before = LIVE.load(Ordering::Relaxed);
        let e = Engine::new(EngineOptions {
            capacity: n as usize,
            ..Default::default()
        })
        .unwrap();
        let p = e.add_policy("p", "10/second").unwrap();
        for k in 0..n {
            e.check(p, &k.to_le_bytes(), 1);
        }
        let rk_bytes = LIVE.load(Ordering::Relaxed) - before;
        let st = e.stats(p).unwrap();
        println!(
            "memory ratekeeper {n} {:.1} (table {} bytes for {} slots; {} keys held, {} evicted)",
            rk_bytes as f64 / n as f64,
            e.policy_bytes(p).unwrap(),
            st.capacity,
            st.occupancy,
            st.evictions
        );
    }
}
