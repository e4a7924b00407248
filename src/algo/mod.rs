//! The five algorithms as pure functions of (state, limit, cost, now).
//!
//! No `unsafe`, no atomics: the table reads a slot's words, calls these to
//! decide and to compute the new words, and then installs them with a
//! compare-and-swap. Every figure follows the README's formulas ("Algorithms"), in
//! nanoseconds, with the emission interval `T = period_ns / count` (floor).

pub(crate) mod concurrency;
mod divisor;
pub(crate) mod fixed_window;
pub(crate) mod gcra;
mod limit;
pub(crate) mod sliding_log;
pub(crate) mod sliding_window;

pub(crate) use limit::UNITS;
pub use limit::{Algorithm, Limit, DEFAULT_LEASE_NS, NS_PER_SEC};

use crate::Error;
pub(crate) use divisor::Divisor;

/// The 96 payload bits of a table word: `a` (32 bits) and `b` (64 bits).
/// What they mean is up to each algorithm; all zero is always "fresh".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Payload {
    pub a: u32,
    pub b: u64,
}

/// One limit's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Eval {
    pub allowed: bool,
    pub limit: u64,
    pub remaining: u64,
    pub retry_after_ns: u64,
    pub reset_after_ns: u64,
}

/// The most limits one policy may hold; a spec with more is a parse error.
pub const MAX_LIMITS: usize = 16;

/// Largest cost a single request may carry (the intent word keeps 24 bits
/// for it). A larger cost is denied with `retry_after_ns = u64::MAX`.
pub const MAX_COST: u64 = (1 << 24) - 1;

/// Latest time the engine represents: explicit times beyond it (146 years
/// of uptime) are treated as this time, so that no sum of a time and a
/// period can overflow.
pub const MAX_TIME_NS: u64 = 1 << 62;

/// Largest `count` of a `sliding_log` limit (one 16-byte word per entry).
pub const MAX_LOG_ENTRIES: u64 = 4096;

/// Largest `count` of a `concurrency` limit (one 16-byte word per lease).
pub const MAX_LEASES: u64 = 1024;

/// A limit with everything the hot path needs precomputed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitParams {
    pub algorithm: Algorithm,
    pub count: u64,
    pub period_ns: u64,
    pub burst: u64,
    /// GCRA's emission interval `T = period_ns / count`, kept only as a
    /// divisor (`t.get()` is T), since `remaining` divides by it on every
    /// check: one field, so T and its reciprocal cannot disagree. `new`
    /// refuses a GCRA limit with T = 0; the other algorithms never read it
    /// (theirs is `period_ns / count`, or 1 where that is 0).
    pub t: Divisor,
    /// GCRA's tolerance `burst * T`.
    pub tol_ns: u64,
    /// Index of this limit's first word within the slot.
    pub offset: usize,
}

impl LimitParams {
    /// Validates `limit` against what the packed state can hold.
    pub fn new(limit: &Limit, offset: usize) -> Result<LimitParams, Error> {
        let unsupported = |m: String| Err(Error::Unsupported(m));
        if limit.count == 0 || limit.period_ns == 0 {
            return unsupported("count and period must be at least 1".into());
        }
        let t_ns = limit.period_ns / limit.count;
        match limit.algorithm {
            Algorithm::Gcra => {
                if t_ns == 0 {
                    return unsupported(format!(
                        "gcra {}/{} ns: more than one request per nanosecond",
                        limit.count, limit.period_ns
                    ));
                }
            }
            Algorithm::FixedWindow | Algorithm::SlidingWindow => {
                if limit.count > u32::MAX as u64 {
                    return unsupported(format!(
                        "{} counts up to {} per window",
                        limit.algorithm.name(),
                        u32::MAX
                    ));
                }
            }
            Algorithm::SlidingLog => {
                if limit.count > MAX_LOG_ENTRIES {
                    return unsupported(format!(
                        "sliding_log keeps at most {MAX_LOG_ENTRIES} timestamps per key (asked for {}); use sliding_window for large counts",
                        limit.count
                    ));
                }
            }
            Algorithm::Concurrency => {
                if limit.count > MAX_LEASES {
                    return unsupported(format!(
                        "concurrency allows at most {MAX_LEASES} permits per key (asked for {})",
                        limit.count
                    ));
                }
            }
        }
        let tol = (limit.burst as u128) * (t_ns as u128);
        if tol > (u64::MAX / 4) as u128 {
            return unsupported("burst * period / count overflows the clock".into());
        }
        Ok(LimitParams {
            algorithm: limit.algorithm,
            count: limit.count,
            period_ns: limit.period_ns,
            burst: limit.burst,
            t: divisor_of(t_ns),
            tol_ns: tol as u64,
            offset,
        })
    }

    /// This limit with its quota scaled by `factor_milli / 1000` (a runtime
    /// override for one key). `gcra`, `fixed_window` and `sliding_window`
    /// scale their count and burst (at least 1); `sliding_log` and
    /// `concurrency` keep theirs, since their state has one word per unit.
    /// A factor of 0 means "no override": the limit as it is.
    pub fn scaled(&self, factor_milli: u32) -> LimitParams {
        if factor_milli == 0 {
            return *self;
        }
        let scale =
            |n: u64| ((n as u128 * factor_milli as u128) / 1000).clamp(1, u32::MAX as u128) as u64;
        match self.algorithm {
            Algorithm::SlidingLog | Algorithm::Concurrency => *self,
            Algorithm::Gcra => {
                let count = scale(self.count);
                let burst = scale(self.burst);
                let t_ns = (self.period_ns / count).max(1);
                LimitParams {
                    count,
                    burst,
                    t: divisor_of(t_ns),
                    tol_ns: burst.saturating_mul(t_ns).min(u64::MAX / 4),
                    ..*self
                }
            }
            _ => {
                let count = scale(self.count);
                LimitParams {
                    count,
                    burst: count,
                    ..*self
                }
            }
        }
    }

    /// Words this limit keeps per key.
    pub fn words(&self) -> usize {
        match self.algorithm {
            Algorithm::Gcra | Algorithm::FixedWindow | Algorithm::SlidingWindow => 1,
            Algorithm::SlidingLog => 1 + self.count as usize,
            Algorithm::Concurrency => self.count as usize,
        }
    }
}

/// `t_ns` as a [`Divisor`] (1 for 0, which only a window algorithm has).
fn divisor_of(t_ns: u64) -> Divisor {
    Divisor::new(std::num::NonZeroU64::new(t_ns).unwrap_or(std::num::NonZeroU64::MIN))
}

/// Reads word `i` of a limit's words (the table passes a closure over its
/// snapshot, a test passes a slice).
pub(crate) trait Words {
    fn word(&self, i: usize) -> Payload;
}

impl Words for [Payload] {
    fn word(&self, i: usize) -> Payload {
        self[i]
    }
}

/// Evaluates a request of `cost` at `now` against one limit.
pub(crate) fn evaluate(l: &LimitParams, w: &(impl Words + ?Sized), cost: u64, now: u64) -> Eval {
    match l.algorithm {
        Algorithm::Gcra => gcra::evaluate(l, w.word(0), cost, now),
        Algorithm::FixedWindow => fixed_window::evaluate(l, w.word(0), cost, now),
        Algorithm::SlidingWindow => sliding_window::evaluate(l, w.word(0), cost, now),
        Algorithm::SlidingLog => sliding_log::evaluate(l, w, cost, now),
        Algorithm::Concurrency => concurrency::evaluate(l, w, now),
    }
}

/// A one-word limit's state after charging `cost` at `now` (the other
/// algorithms keep several words; their transactions write them).
/// (Always inlined, as `gcra::evaluate` is: `rk_check_at` called it out of
/// line.)
#[inline(always)]
pub(crate) fn charge_word(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    match l.algorithm {
        Algorithm::Gcra => gcra::charge(l, p, cost, now),
        Algorithm::FixedWindow => fixed_window::charge(l, p, cost, now),
        Algorithm::SlidingWindow => sliding_window::charge(l, p, cost, now),
        Algorithm::SlidingLog | Algorithm::Concurrency => p,
    }
}

/// A one-word limit's state after giving `cost` back at `now`.
pub(crate) fn refund_word(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    match l.algorithm {
        Algorithm::Gcra => gcra::refund(l, p, cost, now),
        Algorithm::FixedWindow => fixed_window::refund(l, p, cost, now),
        Algorithm::SlidingWindow => sliding_window::refund(l, p, cost, now),
        Algorithm::SlidingLog | Algorithm::Concurrency => p,
    }
}

/// The time from which a limit's state is equivalent to fresh: an entry
/// whose every limit has reached its expiry can be reclaimed. (Inlined:
/// a victim scan asks for 16 per claim; out of line, a flood of new keys
/// cost 3,355 instructions per check against 2,978.)
#[inline]
pub(crate) fn expiry(l: &LimitParams, w: &(impl Words + ?Sized), now: u64) -> u64 {
    match l.algorithm {
        Algorithm::Gcra => expiry_gcra(w.word(0)),
        Algorithm::FixedWindow => fixed_window::expiry(l, w.word(0)),
        Algorithm::SlidingWindow => sliding_window::expiry(l, w.word(0), now),
        Algorithm::SlidingLog => sliding_log::expiry(l, w),
        Algorithm::Concurrency => concurrency::expiry(l, w),
    }
}

/// [`expiry`] of a GCRA limit: its TAT (at which the bucket is full again).
#[inline(always)]
pub(crate) fn expiry_gcra(p: Payload) -> u64 {
    p.b
}

/// Saturating `a - b` for times.
#[inline(always)]
pub(crate) fn until(later: u64, now: u64) -> u64 {
    later.saturating_sub(now)
}
