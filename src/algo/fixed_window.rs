//! Fixed window: a window opens at the first request after the previous
//! one ended (as Flask-Limiter's "fixed-window" does), so clients' resets
//! are not synchronised.
//!
//! Word layout: `b` = window start + 1 in nanoseconds (0 = no window open),
//! `a` = count charged in the window.

use super::{until, Eval, LimitParams, Payload};

/// `(start, count)` of the open window at `now`, if one is open.
#[inline(always)]
fn open_window(l: &LimitParams, p: Payload, now: u64) -> Option<(u64, u64)> {
    if p.b == 0 {
        return None;
    }
    let start = p.b - 1;
    (now < start.saturating_add(l.period_ns)).then_some((start, p.a as u64))
}

#[inline]
pub(crate) fn evaluate(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Eval {
    let open = open_window(l, p, now);
    let (start, count) = open.unwrap_or((now, 0));
    let end = start.saturating_add(l.period_ns);
    if count + cost <= l.count {
        Eval {
            allowed: true,
            limit: l.count,
            remaining: l.count - count - cost,
            retry_after_ns: 0,
            // A request of cost 0 opens no window.
            reset_after_ns: if open.is_none() && cost == 0 {
                0
            } else {
                until(end, now)
            },
        }
    } else {
        let reset = if open.is_some() { until(end, now) } else { 0 };
        Eval {
            allowed: false,
            limit: l.count,
            remaining: l.count.saturating_sub(count),
            retry_after_ns: if cost > l.count { u64::MAX } else { reset },
            reset_after_ns: reset,
        }
    }
}

#[inline]
pub(crate) fn charge(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    match open_window(l, p, now) {
        Some((start, count)) => Payload {
            a: (count + cost) as u32,
            b: start + 1,
        },
        None => Payload {
            a: cost as u32,
            b: now.saturating_add(1),
        },
    }
}

/// Gives `cost` back to the window open at `now`, the time of the charge
/// it undoes. A refund stamped before the stored window's start gives
/// nothing back: the charge went either into an older window, which has
/// closed (a request with a later clock opened this one in between), or,
/// late, into this one; the two cannot be told apart, and taking a unit
/// of this window in the first case would admit one request too many, so
/// the second keeps its charge (stricter, never more lenient).
pub(crate) fn refund(l: &LimitParams, p: Payload, cost: u64, now: u64) -> Payload {
    match open_window(l, p, now) {
        Some((start, count)) if start <= now => Payload {
            a: count.saturating_sub(cost) as u32,
            b: start + 1,
        },
        _ => p,
    }
}

pub(crate) fn expiry(l: &LimitParams, p: Payload) -> u64 {
    if p.b == 0 {
        0
    } else {
        (p.b - 1).saturating_add(l.period_ns)
    }
}
