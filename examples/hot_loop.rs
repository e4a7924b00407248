//! A tight loop of checks on one key, for profilers (callgrind, perf).
fn main() {
    let e = ratekeeper::Engine::new(Default::default()).unwrap();
    let p = e.add_policy("p", "1000000000/second").unwrap();
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().unwrap());
    let mut allowed = 0u64;
    let t = std::time::Instant::now();
    for i in 0..n {
        allowed += e.check_at(p, &7u64.to_le_bytes(), 1, (1 << 40) + i).allowed as u64;
    }
    eprintln!(
        "{:.1} ns/check, {allowed} allowed",
        t.elapsed().as_nanos() as f64 / n as f64
    );
}
