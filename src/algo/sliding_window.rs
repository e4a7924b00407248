//! Sliding window counter (Flask-Limiter's "sliding-window-counter"):
//! windows aligned on multiples of the period, `w = floor(now / period)`,
//! `weighted = floor(prev * (period - elapsed) / period) + cur`.
//!
//! Word layout: `a` = `cur` (count of the stored window), `b` = low 32 bits
//! of the stored window index `<< 32 | prev` (count of the window before).
//! A stored window two or more windows old counts as empty. Only the low 32
//! bits of the index are kept: a key idle for exactly a multiple of 2^32
//! periods would be misread (136 years at one-second periods).
//!
//! **Time never runs backwards into the limit.** A request stamped in a
//! window *before* the stored one (two threads or processes that read the
//! clock on either side of a window edge, the later reader charging first)
//! is decided and charged as at the start of the stored window
//! ([`effective_now`]): its previous window counts in full and the charge
//! lands in the stored window's count. The state never moves back to an
//! older window, so no count is ever dropped; figures (retry-after,
//! reset-after) stay relative to the request's own `now`. "Ahead" means
//! ahead by fewer than 2^31 windows of the request's, which tells a clock
//! that is behind from a key idle for 2^31 periods or more (68 years at the
//! shortest period, one second).

use super::{until, Eval, LimitParams, Payload, MAX_TIME_NS};

/// The time a request at `now` is decided at, and its window index: `now`,
/// or, if the state has reached a later window (and counts anything), that
/// window's start. One division, as before this rule.
#[inline(always)]
pub(crate) fn effective_now(l: &LimitParams, p: Payload, now: u64) -> (u64, u64) {
    let w = now / l.period_ns;
    let ahead = ((p.b >> 32) as u32).wrapping_sub(w as u32);
    if ahead == 0 || ahead >= 1 << 31 || (p.a == 0 && p.b as u32 == 0) {
        return (now, w);
    }
    let t = (w + ahead as u64)
        .saturating_mul(l.period_ns)
        .clamp(now, MAX_TIME_NS.max(now));
    (t, t / l.period_ns)
}

/// `(w, prev, cur)` in window `w`.
#[inline(always)]
fn counts(p: Payload, w: u64) -> (u64, u64, u64) {
    let stored = (p.b >> 32) as u32;
    let prev = p.b & 0xffff_ffff;
    match (w as u32).wrapping_sub(stored) {
        0 => (w, prev, p.a as u64),
        1 => (w, p.a as u64, 0),
        _ => (w, 0, 0),
    }
}

/// `floor(n * (P - e) / P)`.
#[inline(always)]
fn decayed(n: u64, e: u64, period: u64) -> u64 {
    ((n as u128 * (period - e) as u128) / period as u128) as u64
}

/// Smallest elapsed `e` in a window at which `floor(n * (P - e) / P) <= x`.
#[inline]
fn first_elapsed_at_most(n: u64, x: u64, period: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    // n * (P - e) <= (x + 1) * P - 1  <=>  P - e <= floor(((x + 1) * P - 1) / n)
    let bound = ((x as u128 + 1) * period as u128 - 1) / n as u128;
    (period as u128).saturating_sub(bound) as u64
}

/// Absolute time at which the weighted count reaches 0 with no more traffic.
fn zero_at(w: u64, prev: u64, cur: u64, period: u64) -> u64 {
    let base = w.saturating_mul(period);
    if cur > 0 {
        base.saturating_add(period)
            .saturating_add(first_elapsed_at_most(cur, 0, period))
    } else if prev > 0 {
        base.saturating_add(first_elapsed_at_most(prev, 0, period))
    } else {
        0
    }
}

#[inline]
pub(crate) fn evaluate(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Eval {
    let period = l.period_ns;
    let (t, w) = effective_now(l, p, now);
    let (w, prev, cur) = counts(p, w);
    let elapsed = t - w * period;
    let weighted = decayed(prev, elapsed, period) + cur;
    if weighted + cost <= l.count {
        Eval {
            allowed: true,
            limit: l.count,
            remaining: l.count - weighted - cost,
            retry_after_ns: 0,
            reset_after_ns: until(zero_at(w, prev, cur + cost, period), now),
        }
    } else {
        let retry = if cost > l.count {
            u64::MAX
        } else {
            retry_at(w, prev, cur, elapsed, cost, l.count, period) - now
        };
        Eval {
            allowed: false,
            limit: l.count,
            remaining: l.count.saturating_sub(weighted),
            retry_after_ns: retry,
            reset_after_ns: until(zero_at(w, prev, cur, period), now),
        }
    }
}

/// Absolute time from which `weighted + cost <= limit` (needs `cost <= limit`).
fn retry_at(w: u64, prev: u64, cur: u64, elapsed: u64, cost: u64, limit: u64, period: u64) -> u64 {
    let base = w * period;
    if cur + cost <= limit {
        let e = first_elapsed_at_most(prev, limit - cost - cur, period);
        if e < period {
            return base + e.max(elapsed);
        }
    }
    // In window w + 1, the current count becomes `prev` and decays.
    base.saturating_add(period)
        .saturating_add(first_elapsed_at_most(cur, limit - cost, period))
}

#[inline]
pub(crate) fn charge(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    let (w, prev, cur) = counts(p, effective_now(l, p, now).1);
    Payload {
        a: (cur + cost) as u32,
        b: ((w as u32 as u64) << 32) | prev,
    }
}

/// Gives `cost` back to the count its charge, at `now`, went into. By the
/// window of `now` itself (not moved forward as a late request's is):
/// - the stored window: the charge is in its count (`cur`);
/// - the window after the stored one (a refund later than its charge):
///   in the stored count too;
/// - the window before the stored one (a request with a later clock moved
///   the key on between the charge and this refund): in `prev`, or, if
///   the charge was itself late, in `cur`. It comes out of `prev`, which
///   is exact in the first case and in the second lowers the weighted
///   count by less than the charge (never more lenient);
/// - anything else: the charge's window has gone, or the two cases above
///   cannot be told apart further back: nothing is given back.
pub(crate) fn refund(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    let w = (now / l.period_ns) as u32;
    let stored = (p.b >> 32) as u32;
    let less = |n: u64| n.saturating_sub(cost);
    match stored.wrapping_sub(w) {
        0 | u32::MAX => Payload {
            a: less(p.a as u64) as u32,
            b: p.b,
        },
        1 => Payload {
            a: p.a,
            b: (p.b & !0xffff_ffff) | less(p.b & 0xffff_ffff),
        },
        _ => p,
    }
}

pub(crate) fn expiry(l: &LimitParams, p: Payload, now: u64) -> u64 {
    let w_now = effective_now(l, p, now).1;
    let back = (w_now as u32).wrapping_sub((p.b >> 32) as u32) as u64;
    if back > 1 || back > w_now {
        return 0;
    }
    zero_at(w_now - back, p.b & 0xffff_ffff, p.a as u64, l.period_ns)
}
