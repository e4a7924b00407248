//! The storage seam: where per-key state lives.
//!
//! The engine knows what a policy means (its name, spec and options, its
//! counters and deny events, and how a [`Verdict`] becomes a
//! [`Decision`](crate::Decision)); a store keeps the state of each key and
//! applies one operation to one key atomically. Two stores implement the
//! seam:
//!
//! - [`Local`]: the policy's [`Table`] in this process's memory or in a
//!   shared file;
//! - `Redis` (feature `redis`): the same state in Redis, one script call per
//!   operation, with a [`Local`] store as the fallback while Redis cannot
//!   answer.
//!
//! Every operation names its key with a [`Target`]; the engine turns what
//! the store reports into a decision in one place (`engine::decision`), and
//! runs the one batch rule (`engine::batch`) over a store's [`Keys`] unless
//! the store decides a whole batch itself ([`Batch::Done`]: the Redis
//! script, which keeps its own copy of the rule inside Redis).

mod local;
#[cfg(feature = "redis")]
mod redis;

pub(crate) use local::Local;
#[cfg(feature = "redis")]
pub(crate) use redis::Redis;

use crate::table::{Lease, Mode, Outcome, Table};
use crate::Error;

/// One key of one policy, as a store sees it.
#[derive(Clone, Copy)]
pub(crate) struct Target<'a> {
    /// The policy's index in its engine.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub policy: u32,
    /// The policy's local table (the state itself, or the fallback's).
    pub table: &'a Table,
    /// The caller's key.
    pub key: &'a [u8],
    /// The key's 64-bit hash under the policy's seed (never 0).
    pub hash: u64,
    /// The cost of this operation.
    pub cost: u64,
}

/// The time of an operation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    /// Nanoseconds on the engine's clock (or the caller's, if `explicit`).
    pub ns: u64,
    /// The caller gave the time (`*_at`): every store uses it. Otherwise a
    /// store may use a clock of its own (Redis uses Redis's).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub explicit: bool,
}

/// What a store does with a batch of several keys.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum Batch<'s> {
    /// The store decided the batch whole, atomically for every item (all
    /// charged, or none): the binding item, what the store reported, and
    /// the time it decided at.
    Done {
        item: usize,
        outcome: Outcome,
        at: Now,
    },
    /// Run the batch rule over these per-key operations.
    Rule(&'s dyn Keys),
}

/// The per-key operations the batch rule needs, on several keys at once
/// (a store that can send them in one round trip does).
pub(crate) trait Keys {
    /// Decides each of `ts` with `mode`, in order, and reports each outcome
    /// and the time it was decided at (see [`Store::decide`]) to
    /// `seen(i, outcome, at)`, which returns whether to go on. A store that
    /// decides one key at a time stops when told; one that sends them all
    /// at once (a Redis Cluster pipeline) reports every outcome anyway.
    fn decide_each(
        &self,
        ts: &[Target<'_>],
        now: Now,
        mode: Mode,
        seen: &mut dyn FnMut(usize, Outcome, Now) -> bool,
    );

    /// Gives back each target's cost at the time its charge was decided
    /// at (items of a batch that was denied after they were charged).
    fn refund_each(&self, ts: &[(Target<'_>, Now)]);
}

/// The store of an engine: local, or Redis in front of a local one.
pub(crate) enum Store {
    /// State in the engine's own tables.
    Local(Local),
    /// State in Redis, the local tables as the fallback.
    #[cfg(feature = "redis")]
    Redis(Box<Redis>),
}

/// Calls `$e` with `$s` bound to the store in use.
macro_rules! each_store {
    ($self:expr, $s:ident => $e:expr) => {
        match $self {
            Store::Local($s) => $e,
            #[cfg(feature = "redis")]
            Store::Redis($s) => $e,
        }
    };
}

impl Store {
    /// Decides one key: charges it if `mode` says so and it is allowed.
    /// Also returns the time it decided at: `now`, or for a decision Redis
    /// made, Redis's time as an explicit [`Now`] (a refund of the charge
    /// placed at it lands where the charge did).
    #[inline(always)]
    pub fn decide(&self, t: &Target<'_>, now: Now, mode: Mode) -> (Outcome, Now) {
        match self {
            Store::Local(s) => (s.decide(t, now, mode), now),
            #[cfg(feature = "redis")]
            Store::Redis(s) => s.decide(t, now, mode),
        }
    }

    /// Decides a batch whole if `whole` allows it and the store can, or
    /// hands the batch rule its per-key store. The engine forbids it for a
    /// batch with a shadow-mode item: a shadow denial must neither deny nor
    /// bind the batch, which only the rule (that concludes each item with
    /// its policy's options) knows.
    pub fn batch<'s>(
        &'s self,
        ts: &[Target<'_>],
        now: Now,
        whole: bool,
    ) -> Result<Batch<'s>, Error> {
        each_store!(self, s => s.batch(ts, now, whole))
    }

    /// Gives back `t.cost` charged earlier; false if the key holds no state.
    pub fn refund(&self, t: &Target<'_>, now: Now) -> bool {
        each_store!(self, s => s.refund(t, now))
    }

    /// Forgets the key; false if it held no state.
    pub fn reset(&self, t: &Target<'_>) -> Result<bool, Error> {
        each_store!(self, s => s.reset(t))
    }

    /// Sets (`milli` > 0) or clears (0) the key's quota override.
    pub fn set_override(&self, t: &Target<'_>, milli: u32) -> Result<(), Error> {
        each_store!(self, s => s.set_override(t, milli))
    }

    /// The key's override in thousandths (0: none).
    pub fn override_of(&self, t: &Target<'_>) -> Result<u32, Error> {
        each_store!(self, s => s.override_of(t))
    }

    /// Takes a permit for process `holder` if one is free; also returns
    /// the time it decided at (as [`decide`](Self::decide) does).
    pub fn acquire(&self, t: &Target<'_>, now: Now, holder: u32) -> (Outcome, Option<Lease>, Now) {
        match self {
            Store::Local(s) => {
                let (o, lease) = s.acquire(t, now, holder);
                (o, lease, now)
            }
            #[cfg(feature = "redis")]
            Store::Redis(s) => s.acquire(t, now, holder),
        }
    }

    /// Gives a lease back: `Ok(false)` if it was no longer held.
    pub fn release(&self, table: &Table, policy: u32, lease: &Lease) -> Result<bool, Error> {
        each_store!(self, s => s.release(table, policy, lease))
    }

    /// Frees every lease of process `pid`, once `dead` says it is dead.
    pub fn release_holder(
        &self,
        table: &Table,
        pid: u32,
        dead: fn(u32) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        each_store!(self, s => s.release_holder(table, pid, dead))
    }

    /// Longest a waiter for a permit sleeps before it tries again: a
    /// release it cannot be woken by (one on another host) is then seen.
    pub fn poll_ns(&self) -> u64 {
        each_store!(self, s => s.poll_ns())
    }

    /// The Redis store, if this is one (its statistics, policy registry).
    #[cfg(feature = "redis")]
    pub fn redis(&self) -> Option<&Redis> {
        match self {
            Store::Redis(r) => Some(r),
            Store::Local(_) => None,
        }
    }
}
