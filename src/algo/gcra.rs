//! GCRA: one word, the theoretical arrival time (TAT) in nanoseconds.
//!
//! `tat' = max(tat, now) + c*T`; allowed iff `tat' - now <= burst*T`.
//! Word layout: `b` = TAT (0 = fresh: any TAT at or before `now` means a
//! full bucket); `a` unused.

use super::{Eval, LimitParams, Payload};

/// `c * T`, saturating (a cost that large is denied anyway).
#[inline(always)]
fn increment(l: &LimitParams, cost: u64) -> u64 {
    cost.saturating_mul(l.t.get())
}

/// `x / T`, by a multiplication (`divisor.rs`; a GCRA limit's `T` is at
/// least 1: `LimitParams::new` refuses less, `scaled` keeps it so).
#[inline(always)]
fn per_t(l: &LimitParams, x: u64) -> u64 {
    l.t.div(x)
}

/// [`per_t`] with a branch for `x < T`, where it is 0: on a denial of
/// cost 1 it always is (denied means `tat - now + T > tol`, so
/// `tol - (tat - now) < T`), so a flood of denials skips the division's
/// multiply chain, which sat on the denial's critical path.
#[inline(always)]
fn below_t_is_zero(l: &LimitParams, x: u64) -> u64 {
    if x < l.t.get() {
        0
    } else {
        per_t(l, x)
    }
}

/// Decision for `cost` at `now` on state `p`. (Always inlined: with
/// `#[inline]` alone, `rk_check_at` called it out of line, and the C ABI's
/// hot check took 39 instructions here where `check_at` takes 13.)
#[inline(always)]
pub(crate) fn evaluate(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Eval {
    let tat = p.b.max(now);
    let new_tat = tat.saturating_add(increment(l, cost));
    let ahead = new_tat - now;
    if ahead <= l.tol_ns {
        Eval {
            allowed: true,
            limit: l.burst,
            remaining: per_t(l, l.tol_ns - ahead),
            retry_after_ns: 0,
            reset_after_ns: ahead,
        }
    } else {
        let retry = if cost > l.burst {
            u64::MAX
        } else {
            ahead - l.tol_ns
        };
        Eval {
            allowed: false,
            limit: l.burst,
            remaining: below_t_is_zero(l, l.tol_ns - (tat - now).min(l.tol_ns)),
            retry_after_ns: retry,
            reset_after_ns: tat - now,
        }
    }
}

/// State after charging `cost` at `now` (only called for allowed requests).
#[inline]
pub(crate) fn charge(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    Payload {
        a: 0,
        b: p.b.max(now).saturating_add(increment(l, cost)),
    }
}

/// State after giving `cost` back: the TAT moves back by `c*T` (never
/// below `now`, where the bucket is full anyway).
pub(crate) fn refund(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    let tat = p.b.saturating_sub(increment(l, cost));
    Payload {
        a: 0,
        b: if tat <= now { 0 } else { tat },
    }
}
