//! Window edges under concurrency: 4 threads hammer ONE key with requests
//! stamped slightly out of order, on either side of window edges, and every
//! admitted request's stamp is checked against the exact guarantee of its
//! algorithm.
//!
//! Time is the test's own: a shared step counter indexes a fixed timeline
//! that crosses `EDGES` window edges (1 µs steps for 200 µs on either side of
//! each edge, 10 ms steps in between). Each thread reads the step, stamps
//! its request at that step's time minus a random jitter of 0..=5 µs, calls
//! `*_at`, then tries to move the step on. A thread may move it at most
//! `LAG` steps past the oldest step any thread is still working on, so a
//! request is never stamped more than `LAG` coarse steps + the jitter (85 ms)
//! behind another one — less than one period, as the sliding window's
//! guarantee assumes — however the threads are scheduled. What is asserted
//! is deterministic (fixed seeds, fixed timeline; the bounds hold for every
//! interleaving); how many requests run depends on scheduling, but every
//! step is taken by some request, so there are at least as many requests
//! as steps.

use ratekeeper::{Decision, Engine, EngineOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const S: u64 = 1_000_000_000;
/// The period of every limit under test (1 s).
const P: u64 = S;
/// Edges crossed: `FIRST_EDGE·P`, …, `(FIRST_EDGE + EDGES - 1)·P`.
const FIRST_EDGE: u64 = 10;
const EDGES: u64 = 20;
/// Half-width of the fine-stepped zone around each edge, and its step.
const ZONE: u64 = 200_000;
const FINE: u64 = 1_000;
/// The step between edge zones.
const COARSE: u64 = 10_000_000;
/// Stamps are up to this much before the true time.
const JITTER: u64 = 5_000;
/// How far (in steps) the true time may run ahead of a request in flight.
const LAG: u64 = 8;
const THREADS: usize = 4;

/// The true times, increasing: fine around each edge, coarse in between.
fn timeline() -> Vec<u64> {
    let mut t = Vec::new();
    for k in FIRST_EDGE..FIRST_EDGE + EDGES {
        let edge = k * P;
        t.extend((edge - ZONE..=edge + ZONE).step_by(FINE as usize));
        t.extend((edge + ZONE + COARSE..edge + P - ZONE).step_by(COARSE as usize));
    }
    t
}

/// xorshift64*: a small deterministic random source per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// What a run saw.
struct Run {
    /// Admitted requests: (stamp, what the request returned).
    admitted: Vec<(u64, Decision)>,
    requests: u64,
    denied: u64,
    /// Requests stamped in an earlier aligned window than a request decided
    /// before them (the case the sliding window's fix is about).
    behind_an_edge: u64,
    /// The latest stamp of the run.
    last: u64,
    first: u64,
}

/// Runs `THREADS` threads over the timeline; `request(stamp, thread)`
/// makes one request and returns its decision.
fn hammer(request: impl Fn(u64, usize) -> Decision + Sync) -> Run {
    let times = timeline();
    let end = times.len() as u64 - 1;
    let step = AtomicU64::new(0);
    // The step each thread is working on (u64::MAX once it is done). Only
    // ever increases, so a stale read is lower than the truth: the cap
    // computed from it is stricter, never looser.
    let working: [AtomicU64; THREADS] = std::array::from_fn(|_| AtomicU64::new(0));
    // The latest stamp decided so far.
    let latest = AtomicU64::new(0);
    let behind = AtomicU64::new(0);
    let (requests, denied) = (AtomicU64::new(0), AtomicU64::new(0));
    let admitted = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for i in 0..THREADS {
            let (times, step, working, latest, behind) =
                (&times, &step, &working, &latest, &behind);
            let (requests, denied, admitted, request) = (&requests, &denied, &admitted, &request);
            s.spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001));
                let mut mine = Vec::new();
                let (mut n_requests, mut n_denied, mut n_behind) = (0, 0, 0);
                loop {
                    // SeqCst (all step/working accesses): the cap below relies
                    // on one order of "publish my step" and "read the others'".
                    let n = step.load(Ordering::SeqCst);
                    if n >= end {
                        break;
                    }
                    working[i].store(n, Ordering::SeqCst);
                    let stamp = times[n as usize] - rng.below(JITTER + 1);
                    let d = request(stamp, i);
                    // Relaxed: a statistic; fetch_max is atomic whatever the order.
                    let before = latest.fetch_max(stamp, Ordering::Relaxed);
                    if before / P > stamp / P {
                        n_behind += 1;
                    }
                    n_requests += 1;
                    if d.allowed {
                        mine.push((stamp, d));
                    } else {
                        n_denied += 1;
                    }
                    let oldest = working
                        .iter()
                        .map(|w| w.load(Ordering::SeqCst))
                        .min()
                        .unwrap();
                    if n < oldest + LAG {
                        let _ = step.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst);
                    } else {
                        std::thread::yield_now();
                    }
                }
                working[i].store(u64::MAX, Ordering::SeqCst);
                // Relaxed: read after the scope joins every thread.
                requests.fetch_add(n_requests, Ordering::Relaxed);
                denied.fetch_add(n_denied, Ordering::Relaxed);
                behind.fetch_add(n_behind, Ordering::Relaxed);
                admitted.lock().unwrap().extend(mine);
            });
        }
    });
    let mut admitted = admitted.into_inner().unwrap();
    admitted.sort_by_key(|&(t, _)| t);
    let run = Run {
        admitted,
        requests: requests.into_inner(),
        denied: denied.into_inner(),
        behind_an_edge: behind.into_inner(),
        last: latest.into_inner(),
        first: times[0] - JITTER,
    };
    // Not vacuous: the run crossed every edge, was denied, and saw requests
    // stamped behind an edge another request had already crossed.
    let crossed = (run.first / P + 1..=run.last / P).count() as u64;
    assert!(crossed >= EDGES, "crossed {crossed} edges");
    assert!(run.requests >= end, "{} requests", run.requests);
    assert!(run.denied > 0 && !run.admitted.is_empty());
    assert!(
        run.behind_an_edge > 0,
        "no request was stamped behind an edge"
    );
    run
}

fn engine() -> Engine {
    Engine::new(EngineOptions {
        capacity: 64,
        ..Default::default()
    })
    .unwrap()
}

fn check_run(spec: &str) -> Run {
    let e = engine();
    let p = e.add_policy("p", spec).unwrap();
    let run = hammer(|t, _| e.check_at(p, b"one key", 1, t));
    println!(
        "{spec}: {} requests, {} admitted, {} denied, {} stamped behind an edge",
        run.requests,
        run.admitted.len(),
        run.denied,
        run.behind_an_edge
    );
    run
}

fn stamps(run: &Run) -> Vec<u64> {
    run.admitted.iter().map(|&(t, _)| t).collect()
}

/// GCRA with burst `b` and emission interval `T`: in any interval `[s, e]`
/// of stamps, at most `b + floor((e − s) / T)` requests are admitted.
///
/// Derivation from the README's formula (`tat' = max(tat, now) + c·T`,
/// allowed iff `tat' − now ≤ b·T`; cost 1; the TAT never decreases without
/// a refund): take the m admitted requests stamped in `[s, e]`, in the order
/// they were decided (any order of stamps; other admitted requests may be
/// interleaved, which only raise the TAT). After the first of them,
/// `tat ≥ now₁ + T ≥ s + T`; each further one raises it by at least `T`
/// (`max(tat, now) + T ≥ tat + T`), so after the m-th, `tat ≥ s + m·T`.
/// The m-th was allowed: `tat − now_m ≤ b·T` with `now_m ≤ e`, so
/// `s + m·T ≤ e + b·T`, i.e. `m ≤ b + (e − s)/T`, and m is whole:
/// `m ≤ b + floor((e − s)/T)`. (At one instant, the burst: `m ≤ b`.)
fn assert_gcra_bound(t: &[u64], burst: u64, t_ns: u64, what: &str) {
    for i in 0..t.len() {
        for j in i..t.len() {
            let m = (j - i + 1) as u64;
            let bound = burst + (t[j] - t[i]) / t_ns;
            assert!(
                m <= bound,
                "{what}: {m} admitted in [{}, {}] (bound {bound})",
                t[i],
                t[j]
            );
        }
    }
}

#[test]
fn gcra_never_admits_more_than_its_formula_allows_across_out_of_order_stamps() {
    let run = check_run("gcra 10/second burst 4");
    let t = stamps(&run);
    assert_gcra_bound(&t, 4, P / 10, "gcra");
    assert!(t.len() as u64 >= 5 * EDGES, "{} admitted", t.len());
}

#[test]
fn sliding_log_admits_at_most_count_in_any_period_across_out_of_order_stamps() {
    let run = check_run("sliding_log 10/second");
    let t = stamps(&run);
    // Any 11 admitted stamps span at least a period: no interval
    // [a, a + P) holds 11.
    for w in t.windows(11) {
        assert!(
            w[10] - w[0] >= P,
            "11 admitted within {} ns: {w:?}",
            w[10] - w[0]
        );
    }
    assert!(t.len() as u64 >= 5 * EDGES, "{} admitted", t.len());
}

#[test]
fn sliding_window_admits_at_most_count_per_aligned_window_across_out_of_order_stamps() {
    let run = check_run("sliding_window 10/second");
    let t = stamps(&run);
    let mut per_window = std::collections::BTreeMap::<u64, u64>::new();
    for &x in &t {
        *per_window.entry(x / P).or_default() += 1;
    }
    for (&w, &n) in &per_window {
        assert!(n <= 10, "{n} admitted stamped in window {w} (limit 10)");
    }
    assert!(per_window.len() as u64 >= EDGES, "{per_window:?}");
    assert!(per_window.values().any(|&n| n == 10), "{per_window:?}");
}

#[test]
fn fixed_window_admits_at_most_count_per_window_across_out_of_order_stamps() {
    let run = check_run("fixed_window 10/second");
    // An admitted request's window ends at stamp + reset_after.
    let mut windows = std::collections::BTreeMap::<u64, Vec<u64>>::new();
    for &(t, d) in &run.admitted {
        windows.entry(t + d.reset_after_ns).or_default().push(t);
    }
    let ends: Vec<u64> = windows.keys().copied().collect();
    // Windows do not overlap: each opens at or after the previous one's end.
    for w in ends.windows(2) {
        assert!(w[1] - w[0] >= P, "windows ending at {} and {}", w[0], w[1]);
    }
    let mut most_in_span = 0;
    for (&end, members) in &windows {
        assert!(
            members.len() <= 10,
            "{} in the window ending at {end}",
            members.len()
        );
        // A request is counted in the window open when it is decided: its
        // stamp lies before the window's end (and may lie before its start).
        assert!(members.iter().all(|&t| t < end));
        // Admitted stamps from the window's start to its end, whatever window
        // they were charged to (measured, not a guarantee: a request stamped
        // just before an end but decided after the next window opened is
        // charged to the next window).
        let start = end - P;
        let in_span = run
            .admitted
            .iter()
            .filter(|&&(t, _)| (start..end).contains(&t))
            .count();
        most_in_span = most_in_span.max(in_span);
    }
    println!("fixed_window: at most {most_in_span} admitted stamps within one window's span");
    assert!(run.admitted.len() <= 10 * windows.len());
    assert!(
        windows.len() as u64 >= EDGES - 1,
        "{} windows",
        windows.len()
    );
    assert!(windows.values().any(|m| m.len() == 10));
}

#[test]
fn a_composite_policy_keeps_both_gcra_bounds_across_out_of_order_stamps() {
    let run = check_run("10/second;50/minute");
    let t = stamps(&run);
    assert_gcra_bound(&t, 10, P / 10, "10/second");
    assert_gcra_bound(&t, 50, 60 * S / 50, "50/minute");
    // Over 20 s the 50/minute limit binds: it was reached.
    assert!(t.len() as u64 >= 50, "{} admitted", t.len());
}

#[test]
fn concurrency_never_has_more_than_count_permits_held() {
    let e = engine();
    let p = e.add_policy("p", "concurrency 3 ttl 1 hour").unwrap();
    let in_use = AtomicU64::new(0);
    let most = AtomicU64::new(0);
    // Each thread keeps up to 3 permits, releasing its oldest first.
    let held: [Mutex<std::collections::VecDeque<ratekeeper::Permit>>; THREADS] =
        std::array::from_fn(|_| Mutex::new(Default::default()));
    let run = hammer(|t, i| {
        let mut mine = held[i].lock().unwrap();
        if mine.len() == 3 {
            // Relaxed: the counter is its own datum; counted down before
            // the release, so it never exceeds the permits really held.
            in_use.fetch_sub(1, Ordering::Relaxed);
            assert!(e.release(mine.pop_front().unwrap()).unwrap());
        }
        let (d, permit) = e.acquire_at(p, b"one key", t).unwrap();
        assert_eq!(d.allowed, permit.is_some());
        if let Some(permit) = permit {
            // Relaxed: as above; counted up after the acquire succeeded.
            let n = in_use.fetch_add(1, Ordering::Relaxed) + 1;
            most.fetch_max(n, Ordering::Relaxed);
            mine.push_back(permit);
        }
        d
    });
    for q in held {
        for permit in q.into_inner().unwrap() {
            assert!(e.release(permit).unwrap());
        }
    }
    println!(
        "concurrency: {} requests, {} admitted, at most {} held",
        run.requests,
        run.admitted.len(),
        most.load(Ordering::Relaxed)
    );
    assert_eq!(most.load(Ordering::Relaxed), 3);
    // Every permit is back.
    assert_eq!(e.acquire_at(p, b"one key", 100 * S).unwrap().0.remaining, 2);
}
