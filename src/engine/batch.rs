//! The one batch rule: several (policy, key, cost) items checked as one
//! request, all charged or none. Every path runs it — `check_many` here,
//! `rk_check_many` in the C ABI, the Python binding through that — over a
//! store's per-key operations; only a store that decides a whole batch
//! atomically itself (the Redis script, which keeps its own copy of this
//! rule inside Redis) answers instead. A single check is the batch of one:
//! one charge, which also strikes a penalty box on a denial.
//!
//! The rule, for two or more items:
//!
//! 1. **Look**: decide every item without charging. The binding item is
//!    the denying one with the longest retry-after, else the allowed one
//!    with the fewest remaining (ties to the lowest index).
//! 2. **Denied**: if any item denies, nothing is charged. Every item
//!    denied by its own limits is a penalty-box strike, and a strike that
//!    starts a ban makes that ban the answer. The denial is counted (and
//!    recorded as a deny event) against the item whose decision is the
//!    answer only (the binding one, or the one whose strike started a ban).
//! 3. **Charge**: otherwise charge every item in order. If one is denied
//!    now (a concurrent request took the last unit in between), the items
//!    already charged are refunded and that denial is the answer (counted
//!    as one denied request: the refunded items are not counted as
//!    allowed); else the binding item of the charges is.
//!
//! A batch allocates nothing up to [`INLINE`] items.

use super::decision::{conclude, record, tally, Count, Decision};
use super::policies::Policy;
use super::{CheckItem, Engine};
use crate::stats::Counter;
use crate::store::{Batch, Keys, Now, Target};
use crate::table::{Mode, Outcome};
use crate::Error;
use std::mem::MaybeUninit;

/// Items of a batch kept on the stack; a larger batch allocates.
pub(super) const INLINE: usize = 64;

/// Up to [`INLINE`] values on the stack, any number beyond on the heap.
/// The stack room starts uninitialised: a batch of two items writes two
/// entries, not 64.
struct Buf<T: Copy> {
    inline: [MaybeUninit<T>; INLINE],
    len: usize,
    heap: Vec<T>,
}

impl<T: Copy> Buf<T> {
    fn new() -> Self {
        Buf {
            inline: [const { MaybeUninit::uninit() }; INLINE],
            len: 0,
            heap: Vec::new(),
        }
    }

    fn push(&mut self, v: T) {
        if self.len < INLINE {
            self.inline[self.len].write(v);
        } else {
            if self.len == INLINE {
                let spilled = self.inline().to_vec();
                self.heap = spilled;
            }
            self.heap.push(v);
        }
        self.len += 1;
    }

    /// The values kept on the stack.
    fn inline(&self) -> &[T] {
        let n = self.len.min(INLINE);
        // SAFETY:
        // - `push` writes `inline[i]` for every i below `min(len, INLINE)`
        //   before it counts it in `len`, and nothing ever un-writes one, so
        //   the first `n` entries are initialised;
        // - `MaybeUninit<T>` has the size and alignment of `T`, so `n`
        //   initialised entries are a valid `[T]` for the borrow of `self`.
        unsafe { std::slice::from_raw_parts(self.inline.as_ptr().cast::<T>(), n) }
    }

    fn as_slice(&self) -> &[T] {
        if self.len <= INLINE {
            self.inline()
        } else {
            &self.heap
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A charge that stuck: the store reported an allowed, costed decision
/// (not a shadow-mode pass or a table-full admission, which charge nothing).
fn charged(o: &Outcome, t: &Target<'_>) -> bool {
    matches!(o, Outcome::Decided { verdict, .. } if verdict.allowed && t.cost > 0)
}

impl Engine {
    /// `check_many_at`: resolves the items, then runs the rule.
    pub(super) fn run_batch(
        &self,
        items: &[CheckItem<'_>],
        now: Now,
    ) -> Result<(Decision, usize), Error> {
        if items.is_empty() {
            return Err(Error::InvalidArgument(
                "check_many needs at least one item".into(),
            ));
        }
        let mut ps = Buf::new();
        let mut ts = Buf::new();
        for it in items {
            let p = self.get(it.policy)?;
            p.rate_limit("use acquire/release")?;
            let t = Self::target(p, it.policy, it.key, it.cost);
            if items.len() > 1 {
                // Every item's lines are asked for before the first is
                // decided: on large tables the items' misses overlap.
                p.table.prefetch(t.hash);
            }
            ps.push(p);
            ts.push(t);
        }
        let (ps, ts) = (ps.as_slice(), ts.as_slice());
        if ts.len() == 1 {
            return Ok((
                self.decide(ps[0], &ts[0], now, Mode::Charge, Count::here()),
                0,
            ));
        }
        let whole = ps.iter().all(|p| !p.options.shadow);
        Ok(match self.store.batch(ts, now, whole)? {
            Batch::Done { item, outcome, at } => Self::whole(ps, ts, item, outcome, now, at),
            Batch::Rule(keys) => Self::rule(keys, ps, ts, now),
        })
    }

    /// A batch the store decided whole: every item was charged if the
    /// binding one was allowed, none otherwise.
    fn whole(
        ps: &[&Policy],
        ts: &[Target<'_>],
        item: usize,
        outcome: Outcome,
        now: Now,
        at: Now,
    ) -> (Decision, usize) {
        let shard = super::local::shard();
        let d = conclude(
            ps[item],
            &ts[item],
            outcome,
            now.ns,
            at.ns,
            Count::In(shard),
        );
        if let Outcome::Decided { verdict, .. } = outcome {
            if verdict.allowed {
                let others = ps.iter().enumerate().filter(|&(j, _)| j != item);
                for (_, q) in others {
                    tally(q, shard, &Decision::of(verdict, at.ns), false);
                }
            }
        }
        (d, item)
    }

    /// The batch rule (see the module's documentation) over `keys`.
    fn rule(keys: &dyn Keys, ps: &[&Policy], ts: &[Target<'_>], now: Now) -> (Decision, usize) {
        // 1. Look at every item.
        let mut best: Option<(Decision, usize)> = None;
        let mut denied = Buf::new();
        keys.decide_each(ts, now, Mode::Peek, &mut |i, o, at| {
            let d = conclude(ps[i], &ts[i], o, now.ns, at.ns, Count::No);
            denied.push(!d.allowed);
            if best.as_ref().is_none_or(|(b, _)| d.binds_over(b)) {
                best = Some((d, i));
            }
            true
        });
        let (d, i) = best.expect("a store decides every item of a batch");
        if !d.allowed {
            return Self::denied(keys, ps, ts, denied.as_slice(), (d, i), now);
        }
        // 3. Charge every item; stop at the first denial.
        let mut best: Option<(Decision, usize)> = None;
        let mut denial: Option<(Decision, usize)> = None;
        let mut back = Buf::new();
        // Items allowed by their charge: counted as allowed requests only
        // once every item is charged (a batch refunded on a later item's
        // denial is one denied request, not also an allowed one).
        let mut passed = Buf::new();
        let shard = super::local::shard();
        keys.decide_each(ts, now, Mode::Charge, &mut |i, o, at| {
            if charged(&o, &ts[i]) {
                // Refunded, if it comes to that, at its charge's time.
                back.push((ts[i], at));
            }
            if denial.is_some() {
                return false; // a store that charged on regardless: refunded below
            }
            let allowed = matches!(o, Outcome::Decided { verdict, .. } if verdict.allowed);
            let count = if allowed { Count::No } else { Count::In(shard) };
            let d = conclude(ps[i], &ts[i], o, now.ns, at.ns, count);
            if allowed {
                passed.push((i, d));
            }
            if !d.allowed {
                denial = Some((d, i));
                return false;
            }
            if best.as_ref().is_none_or(|(b, _)| d.binds_over(b)) {
                best = Some((d, i));
            }
            true
        });
        if let Some(answer) = denial {
            keys.refund_each(back.as_slice());
            return answer;
        }
        for &(i, d) in passed.as_slice() {
            tally(ps[i], shard, &d, false);
        }
        best.expect("a store decides every item of a batch")
    }

    /// Step 2 of the rule: a batch that some item denies. Strikes every item
    /// its own limits deny, and counts the denial against the item whose
    /// decision is the answer (the binding one, or one whose strike started
    /// a ban).
    fn denied(
        keys: &dyn Keys,
        ps: &[&Policy],
        ts: &[Target<'_>],
        denied: &[bool],
        binding: (Decision, usize),
        now: Now,
    ) -> (Decision, usize) {
        let shard = super::local::shard();
        let mut struck = Buf::new();
        let mut index = Buf::new();
        for (j, t) in ts.iter().enumerate() {
            if denied[j] && t.table.layout.penalty.is_some() {
                struck.push(*t);
                index.push(j);
            }
        }
        let mut answer = binding;
        let mut new_ban = false;
        if !struck.is_empty() {
            let index = index.as_slice();
            keys.decide_each(
                struck.as_slice(),
                now,
                Mode::StrikeIfDenied,
                &mut |k, o, at| {
                    if let Outcome::Decided { verdict, .. } = o {
                        if verdict.new_ban {
                            let j = index[k];
                            ps[j].head().add_in(shard, Counter::Bans, 1);
                            answer = (Decision::of(verdict, at.ns), j);
                            new_ban = true;
                        }
                    }
                    true
                },
            );
        }
        // The denial is counted against the item whose decision the batch
        // returns, as its deny event is (the binding one, or the one whose
        // strike just started a ban): its `denied` includes its `banned`.
        ps[answer.1].head().add_in(shard, Counter::Denied, 1);
        if answer.0.banned {
            ps[answer.1].head().add_in(shard, Counter::Banned, 1);
        }
        // The event names the item whose decision the batch returns: the
        // binding one, or the one whose strike just started a ban.
        let j = answer.1;
        let _ = record(ps[j], &answer.0, &ts[j], now.ns, new_ban);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::{Buf, INLINE};

    #[test]
    fn a_buffer_keeps_every_value_in_order_on_the_stack_and_past_it() {
        for n in [0, 1, 2, INLINE - 1, INLINE, INLINE + 1, 3 * INLINE] {
            let mut b = Buf::new();
            for i in 0..n {
                b.push(i);
            }
            assert_eq!(b.as_slice(), (0..n).collect::<Vec<_>>(), "{n} values");
            assert_eq!(b.is_empty(), n == 0);
        }
    }
}
