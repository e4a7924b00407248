//! Model-based tests: the real `Engine` against a naive reference model.
//!
//! The model below is written from the formulas of DESIGN.md ("Algorithms")
//! and nothing else: plain structs, a `HashMap` of keys, exact `u64`
//! nanoseconds (`u128` for products), no atomics, no packing, no closed forms
//! from `src/algo`. The sliding window's `reset_after` / `retry_after` are
//! found by a plain search over the (at most three) windows that matter.
//!
//! Proptest drives random op sequences (check / peek / refund / reset, with
//! costs of 0, 1, a few, just around the limit and beyond `MAX_COST`) at
//! nondecreasing times that often land exactly on the interesting instants
//! (multiples of `T`, window edges, the last decision's `retry_after` or
//! `reset_after`, ± 1 ns) and compares every field of every decision and every
//! refund / reset result after every step.
//!
//! Two disagreements this suite found were fixed in the engine: a refund
//! of cost 0 now reports whether the key has state, and a new key takes a
//! free slot before it reclaims an expired one.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ratekeeper::policy::{parse, Algorithm, Limit};
use ratekeeper::{Decision, Engine, EngineOptions, PolicyId, MAX_COST};
use std::collections::HashMap;
use std::fmt::Write as _;

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

/// The state of one limit for one key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LimitState {
    /// Theoretical arrival time (0 = fresh).
    Gcra { tat: u64 },
    /// The window's start and count, if a window was ever opened.
    Fixed(Option<(u64, u64)>),
    /// Counts of window `w` (`cur`) and of window `w - 1` (`prev`).
    Sliding { w: u64, prev: u64, cur: u64 },
    /// Timestamps, oldest first, at most `count` of them.
    Log(Vec<u64>),
}

fn fresh(limit: &Limit) -> LimitState {
    match limit.algorithm {
        Algorithm::Gcra => LimitState::Gcra { tat: 0 },
        Algorithm::FixedWindow => LimitState::Fixed(None),
        Algorithm::SlidingWindow => LimitState::Sliding {
            w: 0,
            prev: 0,
            cur: 0,
        },
        Algorithm::SlidingLog => LimitState::Log(Vec::new()),
        Algorithm::Concurrency => unreachable!("concurrency limits are not modelled"),
    }
}

/// One limit's verdict on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Eval {
    allowed: bool,
    limit: u64,
    remaining: u64,
    retry_after: u64,
    reset_after: u64,
}

fn emission_interval(limit: &Limit) -> u64 {
    limit.period_ns / limit.count
}

fn to_u64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// `(prev, cur)` of a sliding window state as seen at time `t`.
fn sliding_counts(state: (u64, u64, u64), period: u64, t: u64) -> (u64, u64) {
    let (ws, prev, cur) = state;
    let w = t / period;
    if ws == w {
        (prev, cur)
    } else if w >= 1 && ws == w - 1 {
        (cur, 0)
    } else {
        (0, 0)
    }
}

/// The time a sliding-window request at `now` is decided and charged at
/// (README, "Time"): if the stored window is later than `now`'s and counts
/// anything, the stored window's start (elapsed 0, `prev` in full); the
/// state never moves back to an older window.
fn sliding_effective(state: (u64, u64, u64), period: u64, now: u64) -> u64 {
    let (ws, prev, cur) = state;
    if ws > now / period && (prev != 0 || cur != 0) {
        ws * period
    } else {
        now
    }
}

/// The floored weighted count of a sliding window state at time `t`.
fn sliding_weighted(state: (u64, u64, u64), period: u64, t: u64) -> u64 {
    let (prev, cur) = sliding_counts(state, period, t);
    let w = t / period;
    let elapsed = t - w * period;
    let part = (prev as u128) * ((period - elapsed) as u128) / (period as u128);
    to_u64(part) + cur
}

/// The first time `t >= from` at which `pred(t)` holds, given that within
/// one window `pred` is false then true (the weighted count only falls while
/// no traffic comes). Searches window by window, by bisection in each.
fn first_time(from: u64, period: u64, pred: impl Fn(u64) -> bool) -> u64 {
    let w0 = from / period;
    for w in w0..w0 + 4 {
        let lo = (w * period).max(from);
        let hi = (w + 1) * period - 1;
        if !pred(hi) {
            continue;
        }
        // Invariant: pred(hi) holds; find the smallest t in [lo, hi] with pred(t).
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        return lo;
    }
    panic!("model: the predicate never held within four windows of {from}");
}

fn evaluate(limit: &Limit, state: &LimitState, cost: u64, now: u64) -> Eval {
    let count = limit.count;
    let period = limit.period_ns;
    match state {
        LimitState::Gcra { tat } => {
            let t = emission_interval(limit);
            let tol = to_u64(limit.burst as u128 * t as u128);
            let base = (*tat).max(now);
            let tat1 = to_u64(base as u128 + cost as u128 * t as u128);
            if tat1 - now <= tol {
                Eval {
                    allowed: true,
                    limit: limit.burst,
                    remaining: (tol - (tat1 - now)) / t,
                    retry_after: 0,
                    reset_after: tat1 - now,
                }
            } else {
                Eval {
                    allowed: false,
                    limit: limit.burst,
                    remaining: (tol - (base - now).min(tol)) / t,
                    retry_after: if cost > limit.burst {
                        u64::MAX
                    } else {
                        tat1 - now - tol
                    },
                    reset_after: base - now,
                }
            }
        }
        LimitState::Fixed(window) => {
            let open = match window {
                Some((start, n)) if now < start + period => Some((*start, *n)),
                _ => None,
            };
            let (start, n) = open.unwrap_or((now, 0));
            if n + cost <= count {
                Eval {
                    allowed: true,
                    limit: count,
                    remaining: count - n - cost,
                    retry_after: 0,
                    // A request of cost 0 opens no window.
                    reset_after: if open.is_none() && cost == 0 {
                        0
                    } else {
                        start + period - now
                    },
                }
            } else {
                let reset_after = if open.is_some() {
                    start + period - now
                } else {
                    0
                };
                Eval {
                    allowed: false,
                    limit: count,
                    remaining: count - n,
                    retry_after: if cost > count { u64::MAX } else { reset_after },
                    reset_after,
                }
            }
        }
        LimitState::Sliding { w, prev, cur } => {
            let s = (*w, *prev, *cur);
            // Decided at `t`; every figure is reported relative to `now`.
            let t = sliding_effective(s, period, now);
            let weighted = sliding_weighted(s, period, t);
            if weighted + cost <= count {
                let (p, c) = sliding_counts(s, period, t);
                let after = (t / period, p, c + cost);
                let reset = first_time(t, period, |x| sliding_weighted(after, period, x) == 0);
                Eval {
                    allowed: true,
                    limit: count,
                    remaining: count - weighted - cost,
                    retry_after: 0,
                    reset_after: reset - now,
                }
            } else {
                let reset = first_time(t, period, |x| sliding_weighted(s, period, x) == 0);
                let retry_after = if cost > count {
                    u64::MAX
                } else {
                    first_time(t + 1, period, |x| {
                        sliding_weighted(s, period, x) + cost <= count
                    }) - now
                };
                Eval {
                    allowed: false,
                    limit: count,
                    remaining: count.saturating_sub(weighted),
                    retry_after,
                    reset_after: reset - now,
                }
            }
        }
        LimitState::Log(entries) => {
            let counting: Vec<u64> = entries
                .iter()
                .copied()
                .filter(|&t| now < t.saturating_add(period))
                .collect();
            let counted = counting.len() as u64;
            if counted + cost <= count {
                // A request of cost 0 writes no entry: the counted ones decide.
                let reset_after = if cost == 0 {
                    counting.last().map_or(0, |&t| t + period - now)
                } else {
                    entries.last().map_or(now, |&newest| newest.max(now)) + period - now
                };
                Eval {
                    allowed: true,
                    limit: count,
                    remaining: count - counted - cost,
                    retry_after: 0,
                    reset_after,
                }
            } else {
                let retry_after = if cost > count {
                    u64::MAX
                } else {
                    let k = counted + cost - count;
                    counting[(k - 1) as usize] + period - now
                };
                let reset_after = if counted > 0 {
                    entries.last().unwrap() + period - now
                } else {
                    0
                };
                Eval {
                    allowed: false,
                    limit: count,
                    remaining: count - counted,
                    retry_after,
                    reset_after,
                }
            }
        }
    }
}

fn charge(limit: &Limit, state: &mut LimitState, cost: u64, now: u64) {
    let period = limit.period_ns;
    match state {
        LimitState::Gcra { tat } => {
            let t = emission_interval(limit);
            *tat = to_u64((*tat).max(now) as u128 + cost as u128 * t as u128);
        }
        LimitState::Fixed(window) => match window {
            Some((start, n)) if now < *start + period => *n += cost,
            _ => *window = Some((now, cost)),
        },
        LimitState::Sliding { w, prev, cur } => {
            let t = sliding_effective((*w, *prev, *cur), period, now);
            let (p, c) = sliding_counts((*w, *prev, *cur), period, t);
            *w = t / period;
            *prev = p;
            *cur = c + cost;
        }
        LimitState::Log(entries) => {
            let stamp = entries.last().map_or(now, |&newest| newest.max(now));
            for _ in 0..cost {
                entries.push(stamp);
            }
            while entries.len() as u64 > limit.count {
                entries.remove(0);
            }
        }
    }
}

fn refund_limit(limit: &Limit, state: &mut LimitState, cost: u64, now: u64) {
    let period = limit.period_ns;
    match state {
        LimitState::Gcra { tat } => {
            let t = emission_interval(limit);
            let back = to_u64(cost as u128 * t as u128);
            *tat = tat.saturating_sub(back);
            if *tat <= now {
                *tat = 0;
            }
        }
        LimitState::Fixed(window) => {
            if let Some((start, n)) = window {
                if now < *start + period {
                    *n = n.saturating_sub(cost);
                }
            }
        }
        LimitState::Sliding { w, prev, cur } => {
            // At an older `now` a refund acts on the stored window.
            let nw = sliding_effective((*w, *prev, *cur), period, now) / period;
            if *w == nw || (nw >= 1 && *w == nw - 1) {
                *cur = cur.saturating_sub(cost);
            }
        }
        LimitState::Log(entries) => {
            let drop = (cost as usize).min(entries.len());
            entries.truncate(entries.len() - drop);
        }
    }
}

/// The decision of a policy's limits (in `states`) on a request: every limit
/// must allow; the binding limit is the denying one with the longest
/// retry-after, or when allowed the one with the fewest remaining (ties to
/// the lowest index).
fn limits_decision(limits: &[Limit], states: &[LimitState], cost: u64, now: u64) -> Decision {
    if cost > MAX_COST {
        let d = limits_decision(limits, states, 0, now);
        return Decision {
            allowed: false,
            retry_after_ns: u64::MAX,
            ..d
        };
    }
    let evals: Vec<Eval> = limits
        .iter()
        .zip(states)
        .map(|(l, s)| evaluate(l, s, cost, now))
        .collect();
    let allowed = evals.iter().all(|e| e.allowed);
    let mut binding: Option<usize> = None;
    for (i, e) in evals.iter().enumerate() {
        let better = match binding {
            None => allowed || !e.allowed,
            Some(b) if allowed => e.remaining < evals[b].remaining,
            Some(b) => !e.allowed && e.retry_after > evals[b].retry_after,
        };
        if better {
            binding = Some(i);
        }
    }
    let i = binding.expect("some limit binds");
    let e = evals[i];
    Decision {
        allowed,
        limit: e.limit,
        remaining: e.remaining,
        retry_after_ns: if allowed { 0 } else { e.retry_after },
        reset_after_ns: e.reset_after,
        limit_index: i as u32,
        banned: false,
        shadow_denied: false,
    }
}

/// The whole reference engine for one policy.
#[derive(Clone, Debug)]
struct Model {
    limits: Vec<Limit>,
    keys: HashMap<Vec<u8>, Vec<LimitState>>,
}

impl Model {
    fn new(limits: Vec<Limit>) -> Model {
        Model {
            limits,
            keys: HashMap::new(),
        }
    }

    fn states(&self, key: &[u8]) -> Vec<LimitState> {
        match self.keys.get(key) {
            Some(s) => s.clone(),
            None => self.limits.iter().map(fresh).collect(),
        }
    }

    fn decide(&self, key: &[u8], cost: u64, now: u64) -> Decision {
        limits_decision(&self.limits, &self.states(key), cost, now)
    }

    fn check(&mut self, key: &[u8], cost: u64, now: u64) -> Decision {
        let d = self.decide(key, cost, now);
        if d.allowed && cost > 0 {
            let mut states = self.states(key);
            for (l, s) in self.limits.iter().zip(states.iter_mut()) {
                charge(l, s, cost, now);
            }
            self.keys.insert(key.to_vec(), states);
        }
        d
    }

    fn peek(&self, key: &[u8], cost: u64, now: u64) -> Decision {
        self.decide(key, cost, now)
    }

    fn refund(&mut self, key: &[u8], cost: u64, now: u64) -> bool {
        let Some(states) = self.keys.get_mut(key) else {
            return false;
        };
        if cost == 0 {
            // Nothing to give back (which matters when times go back: GCRA's
            // TAT is not clamped at this `now`).
            return true;
        }
        for (l, s) in self.limits.iter().zip(states.iter_mut()) {
            refund_limit(l, s, cost, now);
        }
        true
    }

    fn reset(&mut self, key: &[u8]) -> bool {
        self.keys.remove(key).is_some()
    }

    fn run(&mut self, step: &Step) -> Outcome {
        let (key, cost, now) = (&step.key[..], step.cost as u64, step.now);
        match step.action {
            Action::Check => Outcome::Decision(self.check(key, cost, now)),
            Action::Peek => Outcome::Decision(self.peek(key, cost, now)),
            Action::Refund => Outcome::Bool(self.refund(key, cost, now)),
            Action::Reset => Outcome::Bool(self.reset(key)),
        }
    }
}

// ---------------------------------------------------------------------------
// Running ops against both
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Check,
    Peek,
    Refund,
    Reset,
}

/// One concrete step (times and costs resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Step {
    action: Action,
    key: Vec<u8>,
    cost: u32,
    now: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Decision(Decision),
    Bool(bool),
}

struct Pair {
    spec: String,
    engine: Engine,
    policy: PolicyId,
    model: Model,
}

impl Pair {
    fn new(spec: &str) -> Pair {
        // A handful of keys: 64 slots (8 per bucket) never need an eviction.
        Pair::with_capacity(spec, 64)
    }

    fn with_capacity(spec: &str, capacity: usize) -> Pair {
        let parsed = parse(spec).unwrap_or_else(|e| panic!("spec {spec:?} does not parse: {e}"));
        let engine = Engine::new(EngineOptions {
            capacity,
            ..Default::default()
        })
        .unwrap();
        let policy = engine
            .add_policy("p", spec)
            .unwrap_or_else(|e| panic!("spec {spec:?} is refused: {e}"));
        Pair {
            spec: spec.to_string(),
            engine,
            policy,
            model: Model::new(parsed.limits),
        }
    }

    /// Runs `step` on the model only.
    fn run_model(&mut self, step: &Step) -> Outcome {
        self.model.run(step)
    }

    /// Runs `step` on the engine only.
    fn run_engine(&self, step: &Step) -> Outcome {
        let (e, p) = (&self.engine, self.policy);
        let (key, cost, now) = (&step.key[..], step.cost, step.now);
        match step.action {
            Action::Check => Outcome::Decision(e.check_at(p, key, cost, now)),
            Action::Peek => Outcome::Decision(e.peek_at(p, key, cost, now).unwrap()),
            Action::Refund => Outcome::Bool(e.refund_at(p, key, cost, now).unwrap()),
            Action::Reset => Outcome::Bool(e.reset(p, key).unwrap()),
        }
    }

    /// Runs `step` and fails (with the whole story) if the two disagree.
    fn agree(&mut self, index: usize, step: &Step, history: &[Step]) -> Result<Outcome, String> {
        let before = self.model.keys.get(&step.key).cloned();
        let model = self.run_model(step);
        let engine = self.run_engine(step);
        if model == engine {
            return Ok(model);
        }
        let mut msg = String::new();
        let _ = writeln!(msg, "engine and model disagree");
        let _ = writeln!(
            msg,
            "  spec:   {:?}  (parsed: {:?})",
            self.spec, self.model.limits
        );
        let _ = writeln!(msg, "  step {index}: {step:?}");
        let _ = writeln!(msg, "  model state of the key before: {before:?}");
        let _ = writeln!(msg, "  expected (model): {model:?}");
        let _ = writeln!(msg, "  actual (engine):  {engine:?}");
        let _ = writeln!(msg, "  steps so far ({}):", history.len());
        for (i, s) in history.iter().enumerate() {
            let _ = writeln!(
                msg,
                "    {i}: {:?} key={:?} cost={} now={}",
                s.action, s.key, s.cost, s.now
            );
        }
        Err(msg)
    }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

/// A limit to generate, written out as a spec.
#[derive(Clone, Debug)]
struct LimitGen {
    algorithm: Algorithm,
    count: u64,
    period_s: u64,
    burst: Option<u64>,
}

impl LimitGen {
    fn spec(&self) -> String {
        let name = self.algorithm.name();
        let mut s = format!("{name} {}/{} seconds", self.count, self.period_s);
        if let Some(b) = self.burst {
            let _ = write!(s, " burst {b}");
        }
        s
    }
}

fn count_and_period() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        6 => (1..=20u64, 1..=3600u64),
        2 => (1..=20u64, prop_oneof![Just(1u64), Just(3), Just(7), Just(60)]),
        1 => (21..=200u64, 1..=3600u64),
        1 => (Just(1000u64), prop_oneof![Just(1u64), Just(7), 1..=3600u64]),
        // Emission intervals that are not whole (nor whole microseconds).
        2 => prop_oneof![
            Just((2u64, 3u64)),
            Just((3, 7)),
            Just((7, 1)),
            Just((3, 1)),
            Just((6, 7)),
            Just((11, 13)),
        ],
    ]
}

fn limit_gen(algorithm: Algorithm) -> BoxedStrategy<LimitGen> {
    if algorithm == Algorithm::Gcra {
        (count_and_period(), 0..=3u8, any::<u64>())
            .prop_map(|((count, period_s), kind, raw)| {
                let burst = match kind {
                    0 => None,
                    1 => Some(count),
                    _ => Some(1 + raw % (3 * count)),
                };
                LimitGen {
                    algorithm: Algorithm::Gcra,
                    count,
                    period_s,
                    burst,
                }
            })
            .boxed()
    } else {
        count_and_period()
            .prop_map(move |(count, period_s)| LimitGen {
                algorithm,
                count,
                period_s,
                burst: None,
            })
            .boxed()
    }
}

fn any_algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::Gcra),
        Just(Algorithm::FixedWindow),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::SlidingLog),
    ]
}

fn composite_limits() -> impl Strategy<Value = Vec<LimitGen>> {
    proptest::collection::vec(any_algorithm().prop_flat_map(limit_gen), 2..=3)
}

/// How far the clock moves before a step.
#[derive(Clone, Copy, Debug)]
enum Advance {
    Zero,
    /// A few nanoseconds.
    Tiny(u64),
    /// Up to 10 ms.
    Small(u64),
    /// Uniform in 0 ..= 2 * the longest period.
    Uniform(u64),
    /// Permille of the longest period, 0 ..= 2000.
    Permille(u64),
    /// Permille of limit `i`'s emission interval (the pace of its refill).
    Intervals {
        limit: usize,
        permille: u64,
    },
    /// To the previous decision's retry_after (or reset_after), plus delta.
    AfterLast {
        reset: bool,
        delta: i64,
    },
    /// To the next multiple of limit `i`'s emission interval, plus delta.
    ToEmission {
        limit: usize,
        delta: i64,
    },
    /// To the next multiple of limit `i`'s period (a sliding window's edge), plus delta.
    ToPeriod {
        limit: usize,
        delta: i64,
    },
    /// Hostile: a few microseconds either side of the clock (threads that
    /// read the clock in one order and charge in the other).
    Jitter(i64),
    /// Hostile: limit `i`'s latest window edge at or before the clock, plus
    /// `permille` (-1000 ..= 1000) of its period, plus `delta` ns: up to
    /// one window back (or forth) around the edge.
    AroundEdge {
        limit: usize,
        permille: i64,
        delta: i64,
    },
    /// Hostile: far back, `permille` (0 ..= 3000) of the longest period
    /// before the clock.
    FarBack(u64),
}

#[derive(Clone, Copy, Debug)]
enum CostGen {
    Lit(u32),
    /// The smallest capacity among the limits (burst for gcra) plus delta.
    AroundLimit(i64),
}

#[derive(Clone, Debug)]
struct OpGen {
    action: Action,
    key: usize,
    cost: CostGen,
    advance: Advance,
}

#[derive(Clone, Debug)]
struct Case {
    limits: Vec<LimitGen>,
    keys: usize,
    start: u64,
    ops: Vec<OpGen>,
    /// Times may go back (see [`hostile_advance`]).
    hostile: bool,
}

fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![2 => Just(0i64), 1 => Just(-1i64), 1 => Just(1i64)]
}

/// `pressure` 0 ..= 2: how much of the time the clock stands still (more
/// pressure: more requests at one instant, so more denials).
fn advance(pressure: u32) -> impl Strategy<Value = Advance> {
    prop_oneof![
        12 + 20 * pressure => Just(Advance::Zero),
        3 => (1..=3u64).prop_map(Advance::Tiny),
        3 => (1..=10 * MS).prop_map(Advance::Small),
        1 => any::<u64>().prop_map(Advance::Uniform),
        1 => (0..=2000u64).prop_map(Advance::Permille),
        10 => (0..3usize, 0..=1000u64).prop_map(|(limit, permille)| Advance::Intervals { limit, permille }),
        4 => (any::<bool>(), delta()).prop_map(|(reset, delta)| Advance::AfterLast { reset, delta }),
        3 => (0..3usize, delta()).prop_map(|(limit, delta)| Advance::ToEmission { limit, delta }),
        1 => (0..3usize, delta()).prop_map(|(limit, delta)| Advance::ToPeriod { limit, delta }),
    ]
}

/// [`advance`] plus steps whose time goes back: jitter of a few µs, up to a
/// window either side of a window edge, and now and then far back.
fn hostile_advance(pressure: u32) -> BoxedStrategy<Advance> {
    prop_oneof![
        14 => advance(pressure),
        3 => (-5000..=5000i64).prop_map(Advance::Jitter),
        3 => (
            0..3usize,
            prop_oneof![2 => Just(0i64), 1 => Just(-1000i64), 2 => -1000..=1000i64],
            delta(),
        )
            .prop_map(|(limit, permille, delta)| Advance::AroundEdge { limit, permille, delta }),
        1 => (0..=3000u64).prop_map(Advance::FarBack),
    ]
    .boxed()
}

fn check_cost() -> impl Strategy<Value = CostGen> {
    prop_oneof![
        70 => Just(CostGen::Lit(1)),
        10 => (2..=5u32).prop_map(CostGen::Lit),
        6 => (-1..=1i64).prop_map(CostGen::AroundLimit),
        1 => (6..=100u32).prop_map(CostGen::Lit),
        // The rare ones: zero, exactly MAX_COST, beyond MAX_COST.
        4 => Just(CostGen::Lit(0)),
        1 => Just(CostGen::Lit(MAX_COST as u32)),
        1 => prop_oneof![Just(MAX_COST as u32 + 1), (MAX_COST as u32 + 1)..=u32::MAX].prop_map(CostGen::Lit),
    ]
}

fn refund_cost() -> impl Strategy<Value = CostGen> {
    prop_oneof![
        10 => Just(CostGen::Lit(1)),
        4 => (2..=5u32).prop_map(CostGen::Lit),
        // A refund of 0: see `a_refund_of_zero_on_a_key_with_state_returns_true`.
        1 => Just(CostGen::Lit(0)),
        1 => Just(CostGen::Lit(1000)),
        1 => (0..=1i64).prop_map(CostGen::AroundLimit),
    ]
}

fn op(pressure: u32, hostile: bool) -> impl Strategy<Value = OpGen> {
    let action = prop_oneof![
        75 => Just(Action::Check),
        10 => Just(Action::Peek),
        10 => Just(Action::Refund),
        5 => Just(Action::Reset),
    ];
    // One key gets half of the traffic, so that it meets its limits.
    let key = prop_oneof![3 => Just(0usize), 3 => 1..4usize];
    let advance = if hostile {
        hostile_advance(pressure)
    } else {
        advance(pressure).boxed()
    };
    (action, key, check_cost(), refund_cost(), advance).prop_map(
        |(action, key, check_cost, refund_cost, advance)| OpGen {
            action,
            key,
            cost: if action == Action::Refund {
                refund_cost
            } else {
                check_cost
            },
            advance,
        },
    )
}

fn start_time() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(0u64),
        1 => 1..=1000u64,
        4 => 0..=1_000_000 * S,
        3 => (1..=1_000_000u64).prop_map(|k| k * S),
    ]
}

fn case(limits: impl Strategy<Value = Vec<LimitGen>>) -> impl Strategy<Value = Case> {
    case_with(limits, false)
}

/// A case whose times go back as well as forth.
fn hostile_case(limits: impl Strategy<Value = Vec<LimitGen>>) -> impl Strategy<Value = Case> {
    case_with(limits, true)
}

fn case_with(
    limits: impl Strategy<Value = Vec<LimitGen>>,
    hostile: bool,
) -> impl Strategy<Value = Case> {
    (
        limits,
        1..=4usize,
        start_time(),
        (0..=2u32).prop_flat_map(move |pressure| {
            proptest::collection::vec(op(pressure, hostile), 64..=200)
        }),
    )
        .prop_map(move |(limits, keys, start, ops)| Case {
            limits,
            keys,
            start,
            ops,
            hostile,
        })
}

const KEYS: [&[u8]; 4] = [b"ip:203.0.113.7", b"", b"user:alice", b"\x00\xff\x00key"];

fn next_multiple(now: u64, m: u64) -> u64 {
    now.div_ceil(m).saturating_mul(m)
}

fn plus(t: u64, delta: i64) -> u64 {
    t.saturating_add_signed(delta)
}

/// Resolves the generated ops against the run and compares every step.
fn run_case(case: &Case) -> Result<(), TestCaseError> {
    let spec = case
        .limits
        .iter()
        .map(LimitGen::spec)
        .collect::<Vec<_>>()
        .join("; ");
    let mut pair = Pair::new(&spec);
    let limits = pair.model.limits.clone();
    // The parser must give back exactly what was generated.
    for (g, l) in case.limits.iter().zip(&limits) {
        prop_assert_eq!(
            (
                g.algorithm,
                g.count,
                g.period_s * S,
                g.burst.unwrap_or(g.count)
            ),
            (l.algorithm, l.count, l.period_ns, l.burst)
        );
    }
    let mut clock = Timeline::new(case.start, case.hostile);
    let mut last: Option<Decision> = None;
    let mut history: Vec<Step> = Vec::new();
    for (i, op) in case.ops.iter().enumerate() {
        let step = resolve(op, case.keys, &limits, &mut clock, last);
        history.push(step.clone());
        match pair.agree(i, &step, &history) {
            Ok(Outcome::Decision(d)) => last = Some(d),
            Ok(Outcome::Bool(_)) => {}
            Err(msg) => return Err(TestCaseError::fail(msg)),
        }
    }
    Ok(())
}

/// The times of a run: the latest time seen (`clock`, what the fastest
/// thread's clock reads) and the time of the last step (`now`). Without
/// `hostile`, times never go back and the two are equal.
struct Timeline {
    clock: u64,
    now: u64,
    hostile: bool,
}

impl Timeline {
    fn new(start: u64, hostile: bool) -> Timeline {
        Timeline {
            clock: start,
            now: start,
            hostile,
        }
    }

    /// The time of the next step. Small moves (and waits for the last
    /// decision's figures) go from the last step's time, big ones from the
    /// clock; the hostile moves go back from the clock.
    fn next(&mut self, advance: Advance, limits: &[Limit], last: Option<Decision>) -> u64 {
        let (clock, now) = (self.clock, self.now);
        let longest = limits.iter().map(|l| l.period_ns).max().unwrap();
        let limit = |i: usize| &limits[i % limits.len()];
        let target = match advance {
            Advance::Zero => now,
            Advance::Tiny(d) | Advance::Small(d) => now + d,
            Advance::Uniform(raw) => clock + raw % (2 * longest + 1),
            Advance::Permille(p) => clock + (longest as u128 * p as u128 / 1000) as u64,
            Advance::Intervals { limit: i, permille } => {
                now + (emission_interval(limit(i)) as u128 * permille as u128 / 1000) as u64
            }
            Advance::AfterLast { reset, delta } => match last {
                Some(d) => {
                    let wait = if reset {
                        d.reset_after_ns
                    } else {
                        d.retry_after_ns
                    };
                    if wait == u64::MAX {
                        now
                    } else {
                        plus(now + wait, delta)
                    }
                }
                None => now,
            },
            Advance::ToEmission { limit: i, delta } => {
                plus(next_multiple(clock, emission_interval(limit(i))), delta)
            }
            Advance::ToPeriod { limit: i, delta } => {
                plus(next_multiple(clock, limit(i).period_ns), delta)
            }
            Advance::Jitter(d) => plus(clock, d),
            Advance::AroundEdge {
                limit: i,
                permille,
                delta,
            } => {
                let p = limit(i).period_ns;
                let edge = clock / p * p;
                let shift = (p as i128 * permille as i128 / 1000) as i64;
                plus(plus(edge, shift), delta)
            }
            Advance::FarBack(permille) => {
                clock.saturating_sub((longest as u128 * permille as u128 / 1000) as u64)
            }
        };
        let t = if self.hostile {
            target
        } else {
            target.max(clock)
        };
        self.now = t;
        self.clock = clock.max(t);
        t
    }
}

/// The concrete step of a generated op: its time, key and cost, given the
/// policy's limits and the previous decision.
fn resolve(
    op: &OpGen,
    keys: usize,
    limits: &[Limit],
    clock: &mut Timeline,
    last: Option<Decision>,
) -> Step {
    let now = clock.next(op.advance, limits, last);
    let smallest_capacity = limits
        .iter()
        .map(|l| {
            if l.algorithm == Algorithm::Gcra {
                l.burst
            } else {
                l.count
            }
        })
        .min()
        .unwrap();
    let cost = match op.cost {
        CostGen::Lit(c) => c,
        CostGen::AroundLimit(d) => smallest_capacity
            .saturating_add_signed(d)
            .min(u32::MAX as u64) as u32,
    };
    Step {
        action: op.action,
        key: KEYS[op.key % keys].to_vec(),
        cost,
        now,
    }
}

fn single(algorithm: Algorithm) -> impl Strategy<Value = Vec<LimitGen>> {
    limit_gen(algorithm).prop_map(|l| vec![l])
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn gcra_agrees_with_the_reference_model(case in case(single(Algorithm::Gcra))) {
        run_case(&case)?;
    }

    #[test]
    fn fixed_window_agrees_with_the_reference_model(case in case(single(Algorithm::FixedWindow))) {
        run_case(&case)?;
    }

    #[test]
    fn sliding_window_agrees_with_the_reference_model(case in case(single(Algorithm::SlidingWindow))) {
        run_case(&case)?;
    }

    #[test]
    fn sliding_log_agrees_with_the_reference_model(case in case(single(Algorithm::SlidingLog))) {
        run_case(&case)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn composite_policies_agree_with_the_reference_model(case in case(composite_limits())) {
        run_case(&case)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        max_shrink_iters: 20_000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn gcra_agrees_with_the_reference_model_when_time_goes_back(case in hostile_case(single(Algorithm::Gcra))) {
        run_case(&case)?;
    }

    #[test]
    fn fixed_window_agrees_with_the_reference_model_when_time_goes_back(case in hostile_case(single(Algorithm::FixedWindow))) {
        run_case(&case)?;
    }

    #[test]
    fn sliding_window_agrees_with_the_reference_model_when_time_goes_back(case in hostile_case(single(Algorithm::SlidingWindow))) {
        run_case(&case)?;
    }

    #[test]
    fn sliding_log_agrees_with_the_reference_model_when_time_goes_back(case in hostile_case(single(Algorithm::SlidingLog))) {
        run_case(&case)?;
    }

    #[test]
    fn composite_policies_agree_with_the_reference_model_when_time_goes_back(case in hostile_case(composite_limits())) {
        run_case(&case)?;
    }
}

// ---------------------------------------------------------------------------
// Hand-computed examples: model and engine must both give these numbers
// ---------------------------------------------------------------------------

fn dec(allowed: bool, limit: u64, remaining: u64, retry: u64, reset: u64, index: u32) -> Outcome {
    Outcome::Decision(Decision {
        allowed,
        limit,
        remaining,
        retry_after_ns: retry,
        reset_after_ns: reset,
        limit_index: index,
        banned: false,
        shadow_denied: false,
    })
}

fn allow(limit: u64, remaining: u64, reset: u64) -> Outcome {
    dec(true, limit, remaining, 0, reset, 0)
}

fn deny(limit: u64, remaining: u64, retry: u64, reset: u64) -> Outcome {
    dec(false, limit, remaining, retry, reset, 0)
}

const K: &[u8] = b"k";

fn check(cost: u32, now: u64) -> Step {
    Step {
        action: Action::Check,
        key: K.to_vec(),
        cost,
        now,
    }
}

fn peek(cost: u32, now: u64) -> Step {
    Step {
        action: Action::Peek,
        ..check(cost, now)
    }
}

fn refund(cost: u32, now: u64) -> Step {
    Step {
        action: Action::Refund,
        ..check(cost, now)
    }
}

/// Runs `script` on a fresh engine and model; both must give exactly the
/// expected outcome at every step.
fn expect(spec: &str, script: &[(Step, Outcome)]) {
    expect_with(64, spec, script)
}

fn expect_with(capacity: usize, spec: &str, script: &[(Step, Outcome)]) {
    let mut pair = Pair::with_capacity(spec, capacity);
    let mut history = Vec::new();
    for (i, (step, expected)) in script.iter().enumerate() {
        history.push(step.clone());
        let mut model = pair.model.clone();
        let alone = model.run(step);
        assert_eq!(
            &alone, expected,
            "the MODEL is wrong: spec {spec:?}, step {i}: {step:?}"
        );
        match pair.agree(i, step, &history) {
            Ok(outcome) => assert_eq!(&outcome, expected),
            Err(msg) => panic!("{msg}\n  hand-computed: {expected:?}"),
        }
    }
}

#[test]
fn a_sliding_window_resets_and_retries_exactly_at_and_just_after_window_edges() {
    // P = 10 s; at 100 s the window 10 opens with elapsed 0.
    let p = 10 * S;
    let t0 = 100 * S;
    expect(
        "sliding_window 4/10 seconds",
        &[
            // One request: weighted(110 s + e) = floor(1 * (P - e) / P) = 0 iff e >= 1 ns.
            (check(1, t0), allow(4, 3, p + 1)),
            // Two: floor(2 (P - e) / P) = 0 iff e > P / 2.
            (check(1, t0), allow(4, 2, p + 5 * S + 1)),
            // Three: e > 2P/3 = 6_666_666_666.67 ns.
            (check(1, t0), allow(4, 1, p + 6_666_666_667)),
            // Four: e > 3P/4.
            (check(1, t0), allow(4, 0, p + 7_500_000_001)),
            // Full: weighted + 1 <= 4 first holds 1 ns into the next window.
            (check(1, t0), deny(4, 0, p + 1, p + 7_500_000_001)),
            // weighted <= 2 iff 4 (P - e) < 3 P iff e > P / 4.
            (
                check(2, t0),
                deny(4, 0, p + 2_500_000_001, p + 7_500_000_001),
            ),
            (
                check(4, t0),
                deny(4, 0, p + 7_500_000_001, p + 7_500_000_001),
            ),
            (check(5, t0), deny(4, 0, u64::MAX, p + 7_500_000_001)),
            // Last nanosecond of window 10, and the first of window 11: still 4.
            (
                check(1, t0 + p - 1),
                deny(4, 0, 2, p + 7_500_000_001 - (p - 1)),
            ),
            (check(1, t0 + p), deny(4, 0, 1, 7_500_000_001)),
            // 1 ns later the previous window weighs floor(4 (P - 1) / P) = 3.
            (peek(1, t0 + p + 1), allow(4, 0, p)),
            (check(1, t0 + p + 1), allow(4, 0, p - 1 + 1)),
            // Window 12 opens at 120 s: prev = 1 (the request above), weight 1.
            (check(1, t0 + 2 * p), allow(4, 2, p + 1)),
        ],
    );
}

#[test]
fn a_sliding_window_that_only_has_an_old_previous_window_counts_nothing() {
    let p = 10 * S;
    expect(
        "sliding_window 2/10 seconds",
        &[
            (check(2, 100 * S), allow(2, 0, p + 5 * S + 1)),
            // Two windows later nothing counts any more.
            (peek(2, 120 * S), allow(2, 0, p + 5 * S + 1)),
            // At 115 s the previous window still weighs floor(2 * 5/10) = 1.
            (check(2, 115 * S), deny(2, 1, 1, 1)),
            (check(1, 115 * S), allow(2, 0, 5 * S + 1)),
        ],
    );
}

#[test]
fn a_sliding_log_retries_when_enough_of_its_counting_entries_have_expired() {
    let s = S;
    expect(
        "sliding_log 3/10 seconds",
        &[
            (check(1, 100 * s), allow(3, 2, 10 * s)),
            (check(1, 101 * s), allow(3, 1, 10 * s)),
            (check(1, 102 * s), allow(3, 0, 10 * s)),
            // Denied at 103 s: the k-th oldest counting entry decides.
            (check(1, 103 * s), deny(3, 0, 7 * s, 9 * s)),
            (check(2, 103 * s), deny(3, 0, 8 * s, 9 * s)),
            (check(3, 103 * s), deny(3, 0, 9 * s, 9 * s)),
            (check(4, 103 * s), deny(3, 0, u64::MAX, 9 * s)),
            // 1 ns before 110 s the oldest still counts; at 110 s it does not.
            (check(1, 110 * s - 1), deny(3, 0, 1, 2 * s + 1)),
            (check(1, 110 * s), allow(3, 0, 10 * s)),
            // Now the log holds 101, 102, 110.
            (check(2, 110 * s), deny(3, 0, 2 * s, 10 * s)),
            // A refund takes back the newest entry (110 s).
            (refund(1, 110 * s), Outcome::Bool(true)),
            (check(2, 110 * s), deny(3, 1, s, 2 * s)),
            (check(1, 110 * s), allow(3, 0, 10 * s)),
        ],
    );
}

#[test]
fn gcra_with_a_burst_below_the_count_admits_the_burst_then_one_per_interval() {
    // T = 100 ms, tolerance = 200 ms.
    let t0 = 50 * S;
    expect(
        "gcra 10/second burst 2",
        &[
            (check(1, t0), allow(2, 1, 100 * MS)),
            (check(1, t0), allow(2, 0, 200 * MS)),
            (check(1, t0), deny(2, 0, 100 * MS, 200 * MS)),
            (check(2, t0), deny(2, 0, 200 * MS, 200 * MS)),
            (check(3, t0), deny(2, 0, u64::MAX, 200 * MS)),
            (check(1, t0 + 100 * MS - 1), deny(2, 0, 1, 100 * MS + 1)),
            (check(1, t0 + 100 * MS), allow(2, 0, 200 * MS)),
            (peek(1, t0 + 250 * MS), allow(2, 0, 150 * MS)),
            (peek(0, t0 + 250 * MS), allow(2, 1, 50 * MS)),
            (check(0, t0 + 250 * MS), allow(2, 1, 50 * MS)),
            // Beyond MAX_COST: denied forever, other figures as for cost 0.
            (
                check(MAX_COST as u32 + 1, t0 + 250 * MS),
                deny(2, 1, u64::MAX, 50 * MS),
            ),
            (refund(1, t0 + 250 * MS), Outcome::Bool(true)),
            (peek(0, t0 + 250 * MS), allow(2, 2, 0)),
        ],
    );
}

#[test]
fn gcra_with_an_interval_that_is_not_whole_rounds_it_down() {
    // 2/3 seconds: T = 1.5 s; burst 1: tolerance 1.5 s.
    let t0 = 9 * S;
    let t = 1_500_000_000;
    expect(
        "gcra 2/3 seconds burst 1",
        &[
            (check(1, t0), allow(1, 0, t)),
            (check(1, t0 + t - 1), deny(1, 0, 1, 1)),
            (check(1, t0 + t), allow(1, 0, t)),
            (check(2, t0 + t), deny(1, 0, u64::MAX, t)),
        ],
    );
    // 3/7 seconds: T = 2_333_333_333 ns (floor), 3 T = 6_999_999_999 ns.
    let t = 2_333_333_333;
    expect(
        "7 per 7 seconds; gcra 3/7 seconds",
        &[
            (check(3, t0), dec(true, 3, 0, 0, 3 * t, 1)),
            (check(1, t0), dec(false, 3, 0, t, 3 * t, 1)),
            (check(1, t0 + t), dec(true, 3, 0, 0, 3 * t, 1)),
        ],
    );
}

#[test]
fn a_fixed_window_opens_at_the_first_request_and_a_denial_opens_none() {
    let t0 = 100 * S;
    expect(
        "fixed_window 2/10 seconds",
        &[
            // Too big: denied forever, and no window opens.
            (check(3, t0), deny(2, 2, u64::MAX, 0)),
            (refund(1, t0), Outcome::Bool(false)),
            (check(1, t0 + S), allow(2, 1, 10 * S)),
            (check(1, t0 + 6 * S), allow(2, 0, 5 * S)),
            (check(1, t0 + 11 * S - 1), deny(2, 0, 1, 1)),
            (check(1, t0 + 11 * S), allow(2, 1, 10 * S)),
        ],
    );
}

#[test]
fn a_composite_policy_binds_on_the_fewest_remaining_or_the_longest_retry() {
    let t0 = 1000 * S;
    expect(
        "gcra 5/second; fixed_window 3/minute; sliding_log 4/minute",
        &[
            // Remaining 4, 2, 3: the fixed window binds.
            (check(1, t0), dec(true, 3, 2, 0, 60 * S, 1)),
            (check(1, t0), dec(true, 3, 1, 0, 60 * S, 1)),
            // gcra: remaining 2, fixed 0, log 1.
            (check(1, t0), dec(true, 3, 0, 0, 60 * S, 1)),
            // gcra would allow; the window (retry 60 s) denies; the log allows.
            (check(1, t0), dec(false, 3, 0, 60 * S, 60 * S, 1)),
            // Cost 2: gcra allows (2 left), window denies (60 s), log denies (60 s):
            // the tie goes to the lower index.
            (check(2, t0), dec(false, 3, 0, 60 * S, 60 * S, 1)),
            // Cost 6: all deny, gcra's retry is u64::MAX.
            (check(6, t0), dec(false, 5, 2, u64::MAX, 600 * MS, 0)),
        ],
    );
}

#[test]
fn a_refund_of_zero_on_a_key_with_state_returns_true() {
    for spec in [
        "gcra 1/second",
        "fixed_window 1/second",
        "sliding_window 1/second",
        "sliding_log 1/second",
    ] {
        expect(
            spec,
            &[
                (
                    check(1, 5 * S),
                    allow(
                        1,
                        0,
                        S + if spec.starts_with("sliding_window") {
                            1
                        } else {
                            0
                        },
                    ),
                ),
                (refund(0, 5 * S), Outcome::Bool(true)),
            ],
        );
    }
}

#[test]
fn a_reset_key_holds_no_state_for_refund_or_a_second_reset() {
    for spec in [
        "gcra 1/second",
        "fixed_window 1/second",
        "sliding_window 1/second",
        "sliding_log 1/second",
    ] {
        let reset = Step {
            action: Action::Reset,
            ..check(0, 5 * S)
        };
        expect(
            spec,
            &[
                (
                    check(1, 5 * S),
                    allow(
                        1,
                        0,
                        S + if spec.starts_with("sliding_window") {
                            1
                        } else {
                            0
                        },
                    ),
                ),
                (reset.clone(), Outcome::Bool(true)),
                (refund(1, 5 * S), Outcome::Bool(false)),
                (reset, Outcome::Bool(false)),
            ],
        );
    }
}

#[test]
fn a_key_back_to_full_quota_keeps_its_state_when_another_key_arrives() {
    // Capacity 8 is one bucket, so both keys share it; the bucket has 7 free
    // slots when `b` arrives, yet the engine hands it the expired slot of `k`.
    for spec in [
        "gcra 1/second",
        "fixed_window 1/second",
        "sliding_window 1/second",
        "sliding_log 1/second",
    ] {
        let b = |step: Step| Step {
            key: b"b".to_vec(),
            ..step
        };
        let reset = Step {
            action: Action::Reset,
            ..check(0, 10 * S)
        };
        let sw = if spec.starts_with("sliding_window") {
            1
        } else {
            0
        };
        expect_with(
            8,
            spec,
            &[
                (check(1, 5 * S), allow(1, 0, S + sw)),
                (b(check(1, 10 * S)), allow(1, 0, S + sw)),
                (refund(1, 10 * S), Outcome::Bool(true)),
                (reset, Outcome::Bool(true)),
            ],
        );
    }
}
