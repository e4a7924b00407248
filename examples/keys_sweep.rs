//! Wall time per `check_at` over `n` tracked keys, in one loop: how much of
//! a check at 10^6 keys is the one cache miss of the key's bucket (compare
//! `n` = 1000, which stays in cache, with `n` = 1000000). For `perf record`
//! too (no criterion between the samples).
//!
//! Run: `cargo run --release --example keys_sweep -- CHECKS KEYS...`, e.g.
//! `cargo run --release --example keys_sweep -- 20000000 1000 100000 1000000`.

use ratekeeper::{Engine, EngineOptions};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("CHECKS KEYS...: whole numbers"))
        .collect();
    let (&checks, sizes) = args.split_first().expect("CHECKS KEYS...");
    for &n in sizes {
        // Twice the keys in slots, as the criterion benchmark `gcra_1000k_keys`.
        let e = Engine::new(EngineOptions {
            capacity: 2 * n as usize,
            ..Default::default()
        })
        .unwrap();
        let p = e.add_policy("p", "1000000000/second").unwrap();
        let mut now = 1u64 << 40;
        for k in 0..n {
            assert!(e.check_at(p, &k.to_le_bytes(), 1, now).allowed);
        }
        let start = std::time::Instant::now();
        let mut allowed = 0u64;
        for i in 0..checks {
            now += 1;
            // Keys in a scattered order (as the benchmark's `scatter`).
            let k = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n;
            allowed += e.check_at(p, &k.to_le_bytes(), 1, now).allowed as u64;
        }
        let ns = start.elapsed().as_nanos() as f64 / checks as f64;
        assert_eq!(allowed, checks);
        println!("{n:>9} keys: {ns:6.1} ns per check");
    }
}
