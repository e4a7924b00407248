//! Concurrency: at most `count` permits in flight per key. A permit is a
//! lease: it counts until it is released or until its TTL (`period_ns`)
//! runs out, so a holder that crashed cannot leak it.
//!
//! Words: `count` lease words; `b` = expiry in nanoseconds (0 or past:
//! free), `a` = the holder's id (the process id, so that a supervisor can
//! release a dead worker's permits at once).

use super::{until, Eval, LimitParams, Words};

pub(crate) fn evaluate(l: &LimitParams, w: &(impl Words + ?Sized), now: u64) -> Eval {
    let (mut in_flight, mut soonest, mut latest) = (0u64, u64::MAX, 0u64);
    for i in 0..l.count as usize {
        let e = w.word(i).b;
        if e > now {
            in_flight += 1;
            soonest = soonest.min(e);
            latest = latest.max(e);
        }
    }
    if in_flight < l.count {
        Eval {
            allowed: true,
            limit: l.count,
            remaining: l.count - in_flight - 1,
            retry_after_ns: 0,
            reset_after_ns: until(latest.max(now.saturating_add(l.period_ns)), now),
        }
    } else {
        Eval {
            allowed: false,
            limit: l.count,
            remaining: 0,
            retry_after_ns: until(soonest, now),
            reset_after_ns: until(latest, now),
        }
    }
}

/// Index of a free (never used, released or expired) lease, if any.
pub(crate) fn free_lease(l: &LimitParams, w: &(impl Words + ?Sized), now: u64) -> Option<usize> {
    (0..l.count as usize).find(|&i| w.word(i).b <= now)
}

pub(crate) fn expiry(l: &LimitParams, w: &(impl Words + ?Sized)) -> u64 {
    (0..l.count as usize)
        .map(|i| w.word(i).b)
        .max()
        .unwrap_or(0)
}
