//! Sliding log (Flask-Limiter's "moving-window"): exact, at most `count`
//! requests in any interval of length `period`. A request at `t` counts
//! while `now < t + period`.
//!
//! Words: word 0 is the meta word, words `1..=count` a ring of timestamps.
//!
//! | word  | `a`                               | `b`                         |
//! |-------|-----------------------------------|-----------------------------|
//! | meta  | `head` (bits 0..16), `prev_head` (bits 16..32) | newest timestamp + 1 (0: none) |
//! | entry | unused                            | timestamp + 1 (0: empty)    |
//!
//! `head` is the oldest entry; ring order from `head` is time order, because
//! a new entry is stamped `max(now, newest)`: if the clock goes backwards (an
//! explicit `now` earlier than an earlier call's), the entry is recorded at
//! the newest time seen, which only ever makes the limit stricter.
//! `prev_head` records where the last transaction started writing, so that
//! a helper finishing that transaction knows which entries to write.

use super::{until, Eval, LimitParams, Payload, Words};

pub(crate) fn head(meta: Payload) -> usize {
    (meta.a & 0xffff) as usize
}

pub(crate) fn prev_head(meta: Payload) -> usize {
    (meta.a >> 16) as usize
}

/// Timestamp of ring entry `i` (0 = oldest), or `None` if empty.
#[inline]
fn entry(l: &LimitParams, w: &(impl Words + ?Sized), h: usize, i: usize) -> Option<u64> {
    let n = l.count as usize;
    let b = w.word(1 + (h + i) % n).b;
    (b != 0).then(|| b - 1)
}

/// Ring index of the first entry that counts at `now` (`count` if none).
fn first_counting(l: &LimitParams, w: &(impl Words + ?Sized), h: usize, now: u64) -> usize {
    let counts = |i| entry(l, w, h, i).is_some_and(|t: u64| now < t.saturating_add(l.period_ns));
    let (mut lo, mut hi) = (0usize, l.count as usize);
    while lo < hi {
        let mid = (lo + hi) / 2;
        if counts(mid) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

pub(crate) fn evaluate(l: &LimitParams, w: &(impl Words + ?Sized), cost: u64, now: u64) -> Eval {
    let meta = w.word(0);
    let h = head(meta);
    let first = first_counting(l, w, h, now);
    let counted = l.count - first as u64;
    let newest = (meta.b != 0).then(|| meta.b - 1);
    if counted + cost <= l.count {
        // A request of cost 0 writes no entry.
        let stamp = match newest {
            _ if cost == 0 && counted == 0 => None,
            _ if cost == 0 => newest,
            Some(t) => Some(t.max(now)),
            None => Some(now),
        };
        Eval {
            allowed: true,
            limit: l.count,
            remaining: l.count - counted - cost,
            retry_after_ns: 0,
            reset_after_ns: stamp.map_or(0, |t| until(t.saturating_add(l.period_ns), now)),
        }
    } else {
        let retry = if cost > l.count {
            u64::MAX
        } else {
            // The oldest `counted + cost - limit` counting entries must expire.
            let k = (counted + cost - l.count) as usize;
            let t = entry(l, w, h, first + k - 1).unwrap_or(0);
            until(t.saturating_add(l.period_ns), now)
        };
        let reset = if counted > 0 {
            until(newest.unwrap_or(0).saturating_add(l.period_ns), now)
        } else {
            0
        };
        Eval {
            allowed: false,
            limit: l.count,
            remaining: l.count - counted,
            retry_after_ns: retry,
            reset_after_ns: reset,
        }
    }
}

/// The meta word after charging `cost` at `now`.
pub(crate) fn charge_meta(l: &LimitParams, meta: Payload, cost: u64, now: u64) -> Payload {
    let n = l.count as usize;
    let h = head(meta);
    let stamp = if meta.b != 0 {
        (meta.b - 1).max(now)
    } else {
        now
    };
    Payload {
        a: (((h + cost as usize) % n) as u32) | ((h as u32) << 16),
        b: stamp.saturating_add(1),
    }
}

/// The meta word after refunding `cost`: the newest `cost` entries go.
/// `before_new_head` is the entry just before the new head (the newest one
/// that stays), which this transaction does not write.
pub(crate) fn refund_meta(
    l: &LimitParams,
    meta: Payload,
    cost: u64,
    before_new_head: Payload,
) -> Payload {
    let n = l.count as usize;
    let c = (cost as usize).min(n);
    let h = head(meta);
    let new_head = (h + n - c) % n;
    Payload {
        a: (new_head as u32) | ((h as u32) << 16),
        b: if c == n { 0 } else { before_new_head.b },
    }
}

/// Whether a refund at `now` gives anything back to a log with meta word
/// `meta`: only if its newest entry is not newer than `now`, the time of
/// the charge it undoes. A newer entry is another request's, charged after
/// this refund's charge with a later clock; taking it back would keep the
/// older charge, which leaves the window sooner (one request too many
/// within a period). Entries are stamped in order (a late charge takes the
/// newest stamp), so when the newest is not newer than `now`, the newest
/// `cost` entries are this charge's or stamped like it.
pub(crate) fn refundable(meta: Payload, now: u64) -> bool {
    meta.b == 0 || meta.b - 1 <= now
}

/// Ring position (word index minus 1) of the entry just before the head a
/// refund of `cost` would leave.
pub(crate) fn refund_keeper(l: &LimitParams, meta: Payload, cost: u64) -> usize {
    let n = l.count as usize;
    let c = (cost as usize).min(n);
    (head(meta) + 2 * n - c - 1) % n
}

/// Entries (ring positions) a transaction with meta word `meta_after`
/// writes, and what it writes there.
pub(crate) fn entries_written(
    l: &LimitParams,
    meta_after: Payload,
    refund: bool,
) -> (usize, usize, Payload) {
    let n = l.count as usize;
    // Heads are below `n` unless the words come from a corrupt file: then
    // they are reduced, never used out of range.
    let (from, to) = if refund {
        (head(meta_after) % n, prev_head(meta_after) % n)
    } else {
        (prev_head(meta_after) % n, head(meta_after) % n)
    };
    let len = (to + n - from) % n;
    // A charge or refund of the whole ring moves the head by n ≡ 0.
    let len = if len == 0 { n } else { len };
    let value = if refund {
        Payload::default()
    } else {
        Payload {
            a: 0,
            b: meta_after.b,
        }
    };
    (from, len, value)
}

pub(crate) fn expiry(l: &LimitParams, w: &(impl Words + ?Sized)) -> u64 {
    let meta = w.word(0);
    if meta.b == 0 {
        0
    } else {
        (meta.b - 1).saturating_add(l.period_ns)
    }
}
