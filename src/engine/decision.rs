//! The one place where what a store reports becomes a [`Decision`]: the
//! policy's counters, its table-full behaviour, retry jitter, shadow mode
//! and the deny-event ring.

use super::memo::Quiet;
use super::policies::Policy;
use crate::events::{Offered, Record};
use crate::stats::Counter;
use crate::store::Target;
use crate::table::{Outcome, Verdict, WhenFull};

/// The outcome of a check.
///
/// Maps onto HTTP: `retry_after_ns` is `Retry-After`; `limit`, `remaining`
/// and `reset_after_ns` feed the `RateLimit` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The request may proceed.
    pub allowed: bool,
    /// Quota of the binding limit (for GCRA, the burst).
    pub limit: u64,
    /// Requests of cost 1 still allowed now under the binding limit.
    pub remaining: u64,
    /// When denied: wait at least this long (`u64::MAX`: never, the cost
    /// exceeds what the limit can ever allow); 0 when allowed.
    pub retry_after_ns: u64,
    /// Time until the binding limit is back to full quota.
    pub reset_after_ns: u64,
    /// Index of the binding limit within the policy.
    pub limit_index: u32,
    /// Denied because the key is in the penalty box (`retry_after_ns` is
    /// the ban's remaining time).
    pub banned: bool,
    /// Shadow mode: the request passes (`allowed` is true) but would have
    /// been denied; the other fields describe that denial.
    pub shadow_denied: bool,
    /// The time the decision was made at: the `now_ns` of a `*_at` call,
    /// else the engine clock's reading — or, for a decision Redis made,
    /// Redis's clock (nanoseconds since 2026-01-01 UTC: `REDIS_EPOCH_UNIX_S`).
    /// A refund of the charge at this time (`refund_at(.., d.at_ns)`) lands
    /// where the charge did, even after a window edge (README, "refund").
    pub at_ns: u64,
}

impl Decision {
    /// The decision of verdict `v`, made at `at_ns` (no shadow denial:
    /// `finish` applies shadow mode).
    #[inline(always)]
    pub(super) fn of(v: Verdict, at_ns: u64) -> Decision {
        Decision {
            allowed: v.allowed,
            limit: v.limit,
            remaining: v.remaining,
            retry_after_ns: v.retry_after_ns,
            reset_after_ns: v.reset_after_ns,
            limit_index: v.limit_index,
            banned: v.banned,
            shadow_denied: false,
            at_ns,
        }
    }
}

impl Decision {
    /// The binding rule, for the limits of a policy and for the items of
    /// a batch: does `self` bind over `other`? (See `table::binds_over`.)
    #[inline(always)]
    pub(super) fn binds_over(&self, other: &Decision) -> bool {
        crate::table::binds_over(
            (self.allowed, self.remaining, self.retry_after_ns),
            (other.allowed, other.remaining, other.retry_after_ns),
        )
    }
}

/// Whether a decision is counted in the policy's statistics and deny
/// events (a request), or only reported (a peek, or the first look of a
/// batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Count {
    /// Counted, in this counter shard (the calling thread's: see
    /// [`Local::shard`](super::local::Local::shard)).
    In(usize),
    No,
}

impl Count {
    /// Counted, in the calling thread's shard.
    #[inline(always)]
    pub(super) fn here() -> Count {
        Count::In(super::local::shard())
    }
}

/// Turns what the store reported for `t` into the decision, counting it
/// as `count` says. `now` is the engine's time of the call (deny events,
/// the penalty box), `at` the time the store decided at (the decision's
/// `at_ns`: `now`, or Redis's).
#[inline(always)]
pub(super) fn conclude(
    p: &Policy,
    t: &Target<'_>,
    outcome: Outcome,
    now: u64,
    at: u64,
    count: Count,
) -> Decision {
    conclude_quiet(p, t, outcome, now, at, count, None)
}

/// [`conclude`] for a key decided through the spot memo, whose denials
/// are offered to the deny-event ring only outside its [`Quiet`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn conclude_quiet(
    p: &Policy,
    t: &Target<'_>,
    outcome: Outcome,
    now: u64,
    at: u64,
    count: Count,
    quiet: Option<&Quiet>,
) -> Decision {
    let (d, new_ban): (Decision, bool) = match outcome {
        Outcome::Decided { verdict, evicted } => {
            if evicted {
                p.head()
                    .add_in(super::local::shard(), Counter::Evictions, 1);
            }
            let d = Decision::of(verdict, at);
            if let Count::In(shard) = count {
                tally(p, shard, &d, verdict.new_ban);
            }
            (d, verdict.new_ban)
        }
        Outcome::Full { retry_after_ns } => {
            if let Count::In(shard) = count {
                p.head().add_in(shard, Counter::TableFull, 1);
            }
            let fresh = p.table.fresh_verdict(t.hash, t.cost, now);
            let d = match p.table.when_full {
                WhenFull::FailOpen => Decision::of(fresh, at),
                // Fail closed, or an evicting policy that may not evict
                // (every key of the bucket holds a live lease).
                WhenFull::FailClosed | WhenFull::Evict => Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after_ns: retry_after_ns.max(1),
                    reset_after_ns: retry_after_ns.max(1),
                    ..Decision::of(fresh, at)
                },
            };
            (d, false)
        }
    };
    finish(p, d, t, now, count, new_ban, quiet)
}

/// Counts a decision in the policy's counters.
#[inline(always)]
pub(super) fn tally(p: &Policy, shard: usize, d: &Decision, new_ban: bool) {
    let head = p.head();
    head.add_in(
        shard,
        if d.allowed {
            Counter::Allowed
        } else {
            Counter::Denied
        },
        1,
    );
    if d.banned {
        head.add_in(shard, Counter::Banned, 1);
    }
    if new_ban {
        head.add_in(shard, Counter::Bans, 1);
    }
}

/// Applies a policy's options to a decision: retry jitter and shadow
/// mode on a denial, which is also recorded in the deny-event ring
/// (outside the memo's `quiet`, if the key was decided through it).
#[inline(always)]
fn finish(
    p: &Policy,
    mut d: Decision,
    t: &Target<'_>,
    now: u64,
    count: Count,
    new_ban: bool,
    quiet: Option<&Quiet>,
) -> Decision {
    if !d.allowed {
        if p.options.retry_jitter_ns > 0 && d.retry_after_ns != u64::MAX {
            d.retry_after_ns = d
                .retry_after_ns
                .saturating_add(crate::abuse::jitter(p.options.retry_jitter_ns));
        }
        if p.options.shadow {
            if let Count::In(shard) = count {
                p.head().add_in(shard, Counter::ShadowDenied, 1);
            }
            d.allowed = true;
            d.shadow_denied = true;
        }
        if count != Count::No {
            match quiet {
                Some(q) if !new_ban && q.holds(now) => {}
                _ => {
                    let offered = record(p, &d, t, now, new_ban);
                    if let Some(q) = quiet {
                        q.set(now, offered.quiet_until_ns);
                    }
                }
            }
        }
    }
    d
}

/// Offers a denial to the policy's deny-event ring, which writes it if
/// the key had no event in the last `DENY_SAMPLE_NS` (events.rs,
/// "Sampling"): a flood of denials on one key reads one shared word. A
/// denial that starts a ban (`new_ban`) is always written.
#[inline(always)]
pub(super) fn record(p: &Policy, d: &Decision, t: &Target<'_>, now: u64, new_ban: bool) -> Offered {
    p.ring().offer(t.hash, now, new_ban, || Record {
        time_ns: now,
        key_hash: t.hash,
        key: p.options.record_keys.then_some(t.key),
        retry_after_ns: d.retry_after_ns,
        limit_index: d.limit_index,
        banned: d.banned,
        shadow: d.shadow_denied,
    })
}
