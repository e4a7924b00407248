//! Arbitrary operation sequences on an in-process engine with explicit
//! times: check / peek / refund / reset / acquire / release / release_holder
//! with arbitrary keys, costs and times (forwards, backwards, near 0 and
//! near `u64::MAX`). Nothing may panic or hang, and:
//!
//! - every decision has `remaining <= limit`, `limit` equal to the quota of
//!   the binding limit, `limit_index` in range, `retry_after_ns == 0` when
//!   allowed and `> 0` when denied;
//! - a fresh key hammered at one fixed instant never gets more than the
//!   policy's smallest quota admitted (and exactly that many when the table
//!   had room and the time is sane);
//! - concurrency permits never exceed the limit in flight;
//! - a GCRA policy on a separate engine, driven at nondecreasing whole
//!   microseconds, matches a reference model of the README's formulas in
//!   every field of every decision.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ratekeeper::policy::{Algorithm, Limit};
use ratekeeper::{
    Decision, Engine, EngineOptions, Error, Permit, PolicyId, PolicyOptions, WhenFull,
};
use std::collections::HashMap;

const S: u64 = 1_000_000_000;

const SPECS: &[&str] = &[
    "5/second",
    "10/second burst 20",
    "3/minute",
    "fixed_window 5/second",
    "sliding_window 5/second",
    "sliding_log 3/10 seconds",
    "concurrency 2",
    "concurrency 3 ttl 5 seconds",
    "10/second; fixed_window 20/minute",
    "sliding_log 4/second, sliding_window 6/second, gcra 3/second burst 5",
    "1/second",
    "fixed_window 1/day",
    "sliding_window 50/hour",
    "gcra 100/minute burst 150",
];

#[derive(Arbitrary, Debug)]
struct Input {
    capacity: u8,
    policies: Vec<(u8, u8)>,
    ops: Vec<Op>,
    model: ModelInput,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Time {
    Same,
    AdvanceNs(u32),
    AdvanceUs(u16),
    AdvanceS(u8),
    BackNs(u32),
    Absolute(u64),
    NearMax(u16),
}

#[derive(Arbitrary, Debug)]
enum Key {
    Small(u8),
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cost {
    One,
    Zero,
    Small(u8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Check {
        policy: u8,
        key: Key,
        cost: Cost,
        time: Time,
    },
    Peek {
        policy: u8,
        key: Key,
        cost: Cost,
        time: Time,
    },
    Refund {
        policy: u8,
        key: Key,
        cost: Cost,
        time: Time,
    },
    Reset {
        policy: u8,
        key: Key,
    },
    Acquire {
        policy: u8,
        key: Key,
        time: Time,
    },
    Release {
        permit: u8,
    },
    ReleaseHolder {
        policy: u8,
        own: bool,
    },
    Hammer {
        policy: u8,
        extra: u8,
        time: Time,
    },
    Stats {
        policy: u8,
    },
}

impl Key {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Key::Small(k) => vec![b'k', k % 8],
            Key::Bytes(b) => b.clone(),
        }
    }
}

impl Cost {
    fn get(self) -> u32 {
        match self {
            Cost::One => 1,
            Cost::Zero => 0,
            Cost::Small(c) => u32::from(c % 12),
            Cost::Any(c) => c,
        }
    }
}

fn advance(now: u64, t: Time) -> u64 {
    match t {
        Time::Same => now,
        Time::AdvanceNs(d) => now.saturating_add(u64::from(d)),
        Time::AdvanceUs(d) => now.saturating_add(u64::from(d) * 1000),
        Time::AdvanceS(d) => now.saturating_add(u64::from(d) * S),
        Time::BackNs(d) => now.saturating_sub(u64::from(d)),
        Time::Absolute(t) => t,
        Time::NearMax(d) => u64::MAX - u64::from(d),
    }
}

/// The quota a limit reports as `Decision::limit`.
fn quota(l: &Limit) -> u64 {
    match l.algorithm {
        Algorithm::Gcra => l.burst,
        _ => l.count,
    }
}

/// Times from here on are only checked for "no panic, no hang": the engine
/// is known to overflow there (see tests/fuzz_regressions.rs), and
/// CLOCK_MONOTONIC takes 292 years to get there.
const SANE_TIME: u64 = 1 << 63;

fn check_decision(d: &Decision, limits: &[Limit], now: u64, what: &str) {
    let i = d.limit_index as usize;
    assert!(
        i < limits.len(),
        "{what}: limit_index {i} of {} limits: {d:?}",
        limits.len()
    );
    assert_eq!(
        d.limit,
        quota(&limits[i]),
        "{what}: limit is the binding limit's quota: {d:?}"
    );
    assert!(d.remaining <= d.limit, "{what}: remaining <= limit: {d:?}");
    if d.allowed {
        assert_eq!(
            d.retry_after_ns, 0,
            "{what}: allowed => retry_after_ns == 0: {d:?}"
        );
    } else if now < SANE_TIME {
        assert!(
            d.retry_after_ns > 0,
            "{what}: denied => retry_after_ns > 0 at {now}: {d:?}"
        );
    }
}

struct Pol {
    id: PolicyId,
    limits: Vec<Limit>,
    concurrency: bool,
}

fuzz_target!(|input: Input| {
    let engine = Engine::new(EngineOptions {
        capacity: usize::from(input.capacity % 64) + 1,
        ..Default::default()
    })
    .expect("engine");
    let mut pols = Vec::new();
    for (i, &(spec, full)) in input.policies.iter().take(6).enumerate() {
        let when_full = match full % 3 {
            0 => WhenFull::Evict,
            1 => WhenFull::FailOpen,
            _ => WhenFull::FailClosed,
        };
        let spec = SPECS[spec as usize % SPECS.len()];
        let id = engine
            .add_policy_with(
                &format!("p{i}"),
                spec,
                PolicyOptions {
                    when_full,
                    ..Default::default()
                },
            )
            .expect("listed specs are valid");
        let limits = engine.policy_spec(id).unwrap().limits.clone();
        let concurrency = limits[0].algorithm == Algorithm::Concurrency;
        pols.push(Pol {
            id,
            limits,
            concurrency,
        });
    }
    if pols.is_empty() {
        run_model(&input.model);
        return;
    }
    let pick = |p: u8| &pols[p as usize % pols.len()];
    let mut now = 1_000 * S;
    let mut permits: Vec<Permit> = Vec::new();
    let mut hammers = 0u64;
    let own_pid = std::process::id();

    for op in input.ops.iter().take(400) {
        match op {
            Op::Check {
                policy,
                key,
                cost,
                time,
            } => {
                now = advance(now, *time);
                let p = pick(*policy);
                match engine.try_check_at(p.id, &key.bytes(), cost.get(), now) {
                    Ok(d) => check_decision(&d, &p.limits, now, "check"),
                    Err(Error::WrongPolicyKind(_)) => assert!(p.concurrency),
                    Err(e) => panic!("check: {e}"),
                }
            }
            Op::Peek {
                policy,
                key,
                cost,
                time,
            } => {
                now = advance(now, *time);
                let p = pick(*policy);
                let d = engine
                    .peek_at(p.id, &key.bytes(), cost.get(), now)
                    .expect("peek");
                check_decision(&d, &p.limits, now, "peek");
            }
            Op::Refund {
                policy,
                key,
                cost,
                time,
            } => {
                now = advance(now, *time);
                let p = pick(*policy);
                match engine.refund_at(p.id, &key.bytes(), cost.get(), now) {
                    Ok(_) => assert!(!p.concurrency),
                    Err(Error::WrongPolicyKind(_)) => assert!(p.concurrency),
                    Err(e) => panic!("refund: {e}"),
                }
            }
            Op::Reset { policy, key } => {
                engine.reset(pick(*policy).id, &key.bytes()).expect("reset");
            }
            Op::Acquire { policy, key, time } => {
                now = advance(now, *time);
                let p = pick(*policy);
                match engine.acquire_at(p.id, &key.bytes(), now) {
                    Ok((d, permit)) => {
                        assert!(p.concurrency);
                        check_decision(&d, &p.limits, now, "acquire");
                        if permit.is_some() {
                            assert!(d.allowed, "a permit comes with an allowed decision");
                        }
                        permits.extend(permit);
                    }
                    Err(Error::WrongPolicyKind(_)) => assert!(!p.concurrency),
                    Err(e) => panic!("acquire: {e}"),
                }
            }
            Op::Release { permit } => {
                if !permits.is_empty() {
                    let permit = permits.swap_remove(*permit as usize % permits.len());
                    let (policy, parts) = permit.into_raw_parts();
                    engine
                        .release(Permit::from_raw_parts(policy, parts))
                        .expect("our own permit");
                    // Releasing twice does nothing.
                    assert!(!engine
                        .release(Permit::from_raw_parts(policy, parts))
                        .expect("our own permit"));
                }
            }
            Op::ReleaseHolder { policy, own } => {
                let pid = if *own {
                    own_pid
                } else {
                    own_pid.wrapping_add(1)
                };
                // Only a dead process's permits can be released: this
                // process (alive) is refused, and so is the pid after it if
                // that names a live process.
                match engine.release_holder(pick(*policy).id, pid) {
                    Ok(n) => {
                        assert!(!*own, "release_holder accepted this live process");
                        assert_eq!(n, 0, "no other process holds permits");
                    }
                    Err(Error::InvalidArgument(_)) => {}
                    Err(e) => panic!("release_holder: {e}"),
                }
            }
            Op::Hammer {
                policy,
                extra,
                time,
            } => {
                now = advance(now, *time);
                let p = pick(*policy);
                let min_quota = p.limits.iter().map(quota).min().unwrap();
                let n = min_quota + u64::from(*extra % 8);
                hammers += 1;
                let key = format!("hammer:{hammers}");
                let before = engine.stats(p.id).unwrap();
                let mut admitted = 0u64;
                let mut held = Vec::new();
                for _ in 0..n {
                    if p.concurrency {
                        let (d, permit) = engine.acquire_at(p.id, key.as_bytes(), now).unwrap();
                        check_decision(&d, &p.limits, now, "hammer acquire");
                        admitted += u64::from(d.allowed);
                        held.extend(permit);
                    } else {
                        let d = engine.try_check_at(p.id, key.as_bytes(), 1, now).unwrap();
                        check_decision(&d, &p.limits, now, "hammer check");
                        admitted += u64::from(d.allowed);
                    }
                }
                let after = engine.stats(p.id).unwrap();
                if after.table_full == before.table_full && now < SANE_TIME {
                    assert!(
                        admitted <= min_quota,
                        "a fresh key at one instant ({now}) got {admitted} > {min_quota} admitted"
                    );
                    assert_eq!(
                        admitted, min_quota,
                        "a fresh key at one instant ({now}): admitted"
                    );
                }
                for permit in held {
                    engine.release(permit).unwrap();
                }
            }
            Op::Stats { policy } => {
                let s = engine.stats(pick(*policy).id).expect("stats");
                assert!(s.occupancy <= s.capacity, "{s:?}");
            }
        }
    }
    run_model(&input.model);
});

// ---------------------------------------------------------------------------
// GCRA against a reference model (README, "Algorithms").
// ---------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct ModelInput {
    count: u8,
    period_s: u8,
    burst: u8,
    ops: Vec<ModelOp>,
}

#[derive(Arbitrary, Debug)]
enum ModelOp {
    Check { key: u8, cost: u8, advance_us: u32 },
    Peek { key: u8, cost: u8, advance_us: u32 },
    Reset { key: u8 },
}

/// Counts that divide a whole number of seconds in microseconds, so that
/// `T` is whole microseconds and every figure is exact.
const COUNTS: &[u64] = &[1, 2, 4, 5, 8, 10, 16, 20, 25, 40, 50, 64, 100];

/// The six figures of a decision (`ratekeeper::Decision`).
#[derive(Debug, PartialEq, Eq)]
struct Figures {
    allowed: bool,
    limit: u64,
    remaining: u64,
    retry_after_ns: u64,
    reset_after_ns: u64,
    limit_index: u32,
}

impl From<Decision> for Figures {
    fn from(d: Decision) -> Self {
        Figures {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ns: d.retry_after_ns,
            reset_after_ns: d.reset_after_ns,
            limit_index: d.limit_index,
        }
    }
}

struct Model {
    t: u64,
    burst: u64,
    tat: HashMap<u8, u64>,
}

impl Model {
    /// The decision for cost `c` at `now`, and the new `tat` if charged.
    fn decide(&self, key: u8, c: u64, now: u64) -> (Figures, Option<u64>) {
        let (t, b) = (self.t, self.burst);
        let tat = self.tat.get(&key).copied().unwrap_or(0).max(now);
        let full = b * t;
        if c > b {
            let d = Figures {
                allowed: false,
                limit: b,
                remaining: (full - (tat - now)) / t,
                retry_after_ns: u64::MAX,
                reset_after_ns: tat - now,
                limit_index: 0,
            };
            return (d, None);
        }
        let new_tat = tat + c * t;
        if new_tat - now <= full {
            let d = Figures {
                allowed: true,
                limit: b,
                remaining: (full - (new_tat - now)) / t,
                retry_after_ns: 0,
                reset_after_ns: new_tat - now,
                limit_index: 0,
            };
            (d, Some(new_tat))
        } else {
            let d = Figures {
                allowed: false,
                limit: b,
                remaining: (full - (tat - now)) / t,
                retry_after_ns: new_tat - now - full,
                reset_after_ns: tat - now,
                limit_index: 0,
            };
            (d, None)
        }
    }
}

fn run_model(input: &ModelInput) {
    let count = COUNTS[input.count as usize % COUNTS.len()];
    let period_s = u64::from(input.period_s % 60) + 1;
    let burst = u64::from(input.burst) % (2 * count) + 1;
    let spec = if burst == count {
        format!("{count}/{period_s} seconds")
    } else {
        format!("{count}/{period_s} seconds burst {burst}")
    };
    let engine = Engine::new(EngineOptions {
        capacity: 1024,
        ..Default::default()
    })
    .unwrap();
    let id = engine.add_policy("model", &spec).unwrap();
    let mut model = Model {
        t: period_s * S / count,
        burst,
        tat: HashMap::new(),
    };
    let mut now = 1_000 * S;
    for op in input.ops.iter().take(300) {
        match *op {
            ModelOp::Check {
                key,
                cost,
                advance_us,
            }
            | ModelOp::Peek {
                key,
                cost,
                advance_us,
            } => {
                let charge = matches!(op, ModelOp::Check { .. });
                let key = key % 4;
                let cost = u64::from(cost) % (burst + 3);
                now += u64::from(advance_us % 5_000_000) * 1000;
                let (want, new_tat) = model.decide(key, cost, now);
                let got = if charge {
                    engine.check_at(id, &[key], cost as u32, now)
                } else {
                    engine.peek_at(id, &[key], cost as u32, now).unwrap()
                };
                let got = Figures::from(got);
                assert_eq!(
                    got,
                    want,
                    "{spec:?} {} key {key} cost {cost} at {now}",
                    if charge { "check" } else { "peek" }
                );
                if charge {
                    if let Some(tat) = new_tat {
                        model.tat.insert(key, tat);
                    }
                }
            }
            ModelOp::Reset { key } => {
                let key = key % 4;
                engine.reset(id, &[key]).unwrap();
                model.tat.remove(&key);
            }
        }
    }
}
