//! The Redis store: each operation of the seam is one script call (see
//! `src/redis`), with the local store as the fallback while Redis cannot
//! answer (or the failure policy's fixed answer), and denials answered
//! from the local deny cache while they hold.

use super::{Batch, Keys, Local, Now, Target};
use crate::policy::PolicySpec;
use crate::redis::{
    ints, reply, Item, Key, OnFailure, RedisOptions, RedisStats, Remote, RemotePolicy, Reply,
};
use crate::table::{Lease, Mode, Outcome, Table, Verdict};
use crate::{Error, Penalty};

/// `Lease::slot` of a permit held in Redis (local slots are below 8):
/// then `bucket` is the permit's token, `index` the lease index and `word`
/// the key's 128-bit hash.
const REMOTE_SLOT: u8 = 0xFF;

/// Most items a batch may carry through Redis (the script's bound).
const MAX_REMOTE_ITEMS: usize = 64;

/// Longest a waiter for a Redis permit sleeps between tries: a release
/// on another host wakes nobody here.
const POLL_NS: u64 = 50_000_000;

/// Redis in front of the local tables.
pub(crate) struct Redis {
    remote: Remote,
    local: Local,
}

/// A decision of one key: the outcome of a verdict Redis (or the deny
/// cache) made.
fn decided(verdict: Verdict) -> Outcome {
    Outcome::Decided {
        verdict,
        evicted: false,
    }
}

/// The script's time argument: the caller's, or Redis's own clock.
fn when(now: Now) -> Option<u64> {
    now.explicit.then_some(now.ns)
}

/// The time a reply was decided at, as the explicit time a refund of its
/// charge is placed at (on a call without one, Redis's clock then).
fn at(rep: &Reply) -> Now {
    Now {
        ns: rep.at_ns,
        explicit: true,
    }
}

/// The deny cache's key for target `t`.
fn cache_tag(t: &Target<'_>) -> u64 {
    t.hash ^ (u64::from(t.policy) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Redis {
    /// Connects (see [`Remote::open`]).
    pub fn open(url: &str, options: RedisOptions) -> Result<Redis, Error> {
        Ok(Redis {
            remote: Remote::open(url, options)?,
            local: Local,
        })
    }

    /// The client's counters.
    pub fn stats(&self) -> RedisStats {
        self.remote.stats()
    }

    /// A policy's script arguments, once its definition is registered in
    /// Redis (or found there, equal): hand them to [`set_policy`](Self::set_policy)
    /// with the policy's index once it has one.
    pub fn prepare(
        &self,
        name: &str,
        spec: &PolicySpec,
        penalty: Option<Penalty>,
        definition: &str,
    ) -> Result<RemotePolicy, Error> {
        let remote = RemotePolicy::new(name, spec, penalty)?;
        self.remote.register(name, definition)?;
        Ok(remote)
    }

    /// Makes policy `index` known to Redis calls.
    pub fn set_policy(&self, index: u32, policy: RemotePolicy) {
        self.remote.set_policy(index, policy);
    }

    fn policy(&self, index: u32) -> Result<&RemotePolicy, Error> {
        self.remote.policy(index).ok_or(Error::UnknownPolicy(index))
    }

    /// The script items of `ts` (every policy must be known to Redis).
    fn items<'a>(
        &'a self,
        ts: impl IntoIterator<Item = Target<'a>>,
    ) -> Result<Vec<Item<'a>>, Error> {
        ts.into_iter()
            .map(|t| Ok(Item::raw(self.policy(t.policy)?, t.key, t.cost as u32)))
            .collect()
    }

    fn on_failure(&self) -> OnFailure {
        self.remote.options.on_failure
    }

    /// The failure policy's decision of `t` while Redis cannot answer:
    /// `Local` decides on the local tables, `Open` allows with the figures
    /// of a fresh key, `Closed` denies until the next try at Redis (at
    /// least 1 ms). Counted in `fallback_decisions`.
    fn failed(&self, t: &Target<'_>, now: Now, mode: Mode) -> Outcome {
        self.remote.fell_back();
        let fresh = t.table.fresh_verdict(t.hash, t.cost, now.ns);
        match self.on_failure() {
            OnFailure::Local => self.local.decide(t, now, mode),
            OnFailure::Open => decided(Verdict {
                allowed: true,
                retry_after_ns: 0,
                ..fresh
            }),
            OnFailure::Closed => {
                let wait = self.remote.until_retry_ns().max(1_000_000);
                decided(Verdict {
                    allowed: false,
                    remaining: 0,
                    retry_after_ns: wait,
                    reset_after_ns: wait,
                    ..fresh
                })
            }
        }
    }

    /// Records what a charge did in the deny cache: an allowed one changed
    /// the key; a denial (with no penalty box, every item of cost 1) holds
    /// until its retry-after.
    fn cache_charge(&self, tags: &[u64], costs: &[u32], now: Now, rep: &Reply, cacheable: bool) {
        if rep.verdict.allowed {
            tags.iter().for_each(|&t| self.remote.cache.changed(t));
        } else if cacheable {
            self.remote
                .cache
                .put(tags, costs.iter().copied(), now.ns, &rep.verdict, rep.item);
        }
    }

    /// Decides one key (see [`Store::decide`](super::Store::decide)):
    /// through Redis, at the time Redis reports; from the deny cache or
    /// the failure policy, at `now`.
    pub fn decide(&self, t: &Target<'_>, now: Now, mode: Mode) -> (Outcome, Now) {
        let Ok(rp) = self.policy(t.policy) else {
            // A policy another process added to a shared fallback file.
            return (self.local.decide(t, now, mode), now);
        };
        let tag = cache_tag(t);
        let cost = t.cost as u32;
        let cacheable = mode == Mode::Charge && !rp.penalty;
        if cacheable {
            if let Some((v, _)) = self.remote.cache.get(&[tag], [cost].into_iter(), now.ns) {
                self.remote.cache_hit();
                return (decided(v), now);
            }
        }
        let op = if mode == Mode::Peek { "peek" } else { "check" };
        let item = Item::raw(rp, t.key, cost);
        match self
            .remote
            .call(op, when(now), &[item], &[])
            .and_then(|v| reply(&v))
        {
            Ok(rep) => {
                let at = at(&rep);
                if mode == Mode::StrikeIfDenied && rep.verdict.allowed {
                    // The strike's check charged a key that a refill let
                    // through meanwhile: give it back (the batch is denied).
                    self.refund(t, at);
                }
                if mode != Mode::Peek {
                    self.cache_charge(&[tag], &[cost], now, &rep, cacheable);
                }
                (decided(rep.verdict), at)
            }
            Err(_) => (self.failed(t, now, mode), now),
        }
    }

    pub fn batch<'s>(
        &'s self,
        ts: &[Target<'_>],
        now: Now,
        whole: bool,
    ) -> Result<Batch<'s>, Error> {
        if ts.len() > MAX_REMOTE_ITEMS {
            return Err(Error::InvalidArgument(format!(
                "check_many through Redis takes at most {MAX_REMOTE_ITEMS} items (got {})",
                ts.len()
            )));
        }
        if !whole || self.remote.is_cluster() {
            // The batch rule, one (pipelined) round trip per step: one
            // script call cannot reach keys in different slots of a
            // cluster, nor treat a shadow-mode item as the engine does.
            return Ok(Batch::Rule(self));
        }
        let items = self.items(ts.iter().copied())?;
        let tags: Vec<u64> = ts.iter().map(cache_tag).collect();
        let costs: Vec<u32> = ts.iter().map(|t| t.cost as u32).collect();
        let cacheable = items.iter().all(|it| !it.policy.penalty);
        if cacheable {
            if let Some((v, i)) = self.remote.cache.get(&tags, costs.iter().copied(), now.ns) {
                self.remote.cache_hit();
                return Ok(Batch::Done {
                    item: i,
                    outcome: decided(v),
                    at: now,
                });
            }
        }
        match self
            .remote
            .call("check", when(now), &items, &[])
            .and_then(|v| reply(&v))
        {
            Ok(rep) if rep.item < ts.len() => {
                self.cache_charge(&tags, &costs, now, &rep, cacheable);
                Ok(Batch::Done {
                    item: rep.item,
                    outcome: decided(rep.verdict),
                    at: at(&rep),
                })
            }
            Ok(_) | Err(_) => Ok(match self.on_failure() {
                OnFailure::Local => {
                    self.remote.fell_back();
                    Batch::Rule(&self.local)
                }
                OnFailure::Open | OnFailure::Closed => Batch::Done {
                    item: 0,
                    outcome: self.failed(&ts[0], now, Mode::Charge),
                    at: now,
                },
            }),
        }
    }

    /// `refund`: while Redis is down the refund goes to the local tables
    /// (where the failure policy `Local` charged), and is otherwise
    /// dropped: a refund never fails a request.
    pub fn refund(&self, t: &Target<'_>, now: Now) -> bool {
        let Ok(rp) = self.policy(t.policy) else {
            return self.local.refund(t, now);
        };
        self.remote.cache.changed(cache_tag(t));
        let item = Item::raw(rp, t.key, t.cost as u32);
        match self
            .remote
            .call("refund", when(now), &[item], &[])
            .and_then(|v| ints(&v))
        {
            Ok(v) => v.first() == Some(&1),
            Err(_) if self.on_failure() == OnFailure::Local => self.local.refund(t, now),
            Err(_) => false,
        }
    }

    /// An administrative call (reset, overrides): Redis must answer, or
    /// the caller gets `Error::Backend`.
    fn admin(&self, op: &str, t: &Target<'_>, extra: &[String]) -> Result<i64, Error> {
        let rp = self.policy(t.policy)?;
        self.remote.cache.changed(cache_tag(t));
        let item = Item::raw(rp, t.key, 0);
        let v = self
            .remote
            .call(op, None, &[item], extra)
            .and_then(|v| ints(&v))
            .map_err(|e| Error::Backend(e.0))?;
        Ok(v.first().copied().unwrap_or(0))
    }

    /// `reset` in Redis and in the local tables.
    pub fn reset(&self, t: &Target<'_>) -> Result<bool, Error> {
        let local = self.local.reset(t)?;
        Ok(self.admin("reset", t, &[])? == 1 || local)
    }

    /// `reset_all` of policy `index`: every state key of the policy in
    /// Redis is deleted (a scan: see [`Remote::delete_policy_state`]), and
    /// the local tables (the fallback) and the deny cache forget it too.
    /// Redis must answer, or the caller gets `Error::Backend`. Returns how
    /// many keys Redis held.
    pub fn reset_all(&self, index: u32, table: &Table) -> Result<u64, Error> {
        let rp = self.policy(index)?;
        table.reset_all();
        let removed = self
            .remote
            .delete_policy_state(rp)
            .map_err(|e| Error::Backend(e.0))?;
        // After the delete: a denial cached meanwhile is dropped too.
        self.remote.cache.clear();
        Ok(removed)
    }

    /// Sets or clears an override in Redis; the local tables get it too,
    /// so that the failure policy `Local` honours it.
    pub fn set_override(&self, t: &Target<'_>, milli: u32) -> Result<(), Error> {
        self.local.set_override(t, milli)?;
        if milli == 0 {
            self.admin("override_clear", t, &[])?;
        } else {
            self.admin("override_set", t, &[milli.to_string()])?;
        }
        Ok(())
    }

    /// The override (thousandths, 0 = none) kept in Redis.
    pub fn override_of(&self, t: &Target<'_>) -> Result<u32, Error> {
        Ok(self
            .admin("override_get", t, &[])?
            .clamp(0, u32::MAX as i64) as u32)
    }

    pub fn acquire(&self, t: &Target<'_>, now: Now, holder: u32) -> (Outcome, Option<Lease>, Now) {
        let Ok(rp) = self.policy(t.policy) else {
            let (o, lease) = self.local.acquire(t, now, holder);
            return (o, lease, now);
        };
        let mut token = [0u8; 4];
        crate::clock::fill_random(&mut token);
        let token = u32::from_le_bytes(token).max(1);
        let item = Item::raw(rp, t.key, 1);
        let extra = [holder.to_string(), token.to_string()];
        match self
            .remote
            .call("acquire", when(now), &[item], &extra)
            .and_then(|v| reply(&v))
        {
            Ok(rep) => {
                let lease = match (rep.lease, self.remote.hash_of(rp, t.key)) {
                    (Some(index), Some(hash)) if rep.verdict.allowed => Some(Lease {
                        bucket: token,
                        slot: REMOTE_SLOT,
                        index: index as u16,
                        word: hash,
                    }),
                    _ => None,
                };
                (decided(rep.verdict), lease, at(&rep))
            }
            Err(_) if self.on_failure() == OnFailure::Local => {
                self.remote.fell_back();
                let (o, lease) = self.local.acquire(t, now, holder);
                (o, lease, now)
            }
            Err(_) => (self.failed(t, now, Mode::Charge), None, now),
        }
    }

    /// `release`: through Redis for a Redis permit (a release Redis cannot
    /// take now is `Ok(false)`: the lease expires by its TTL), locally for
    /// a permit of the local fallback.
    pub fn release(&self, table: &Table, policy: u32, lease: &Lease) -> Result<bool, Error> {
        if lease.slot != REMOTE_SLOT {
            return self.local.release(table, policy, lease);
        }
        let item = Item {
            policy: self.policy(policy)?,
            key: Key::Hashed(lease.word),
            cost: 0,
        };
        let extra = [lease.index.to_string(), lease.bucket.to_string()];
        Ok(
            match self
                .remote
                .call("release", None, &[item], &extra)
                .and_then(|v| ints(&v))
            {
                Ok(v) => v.first() == Some(&1),
                Err(_) => false,
            },
        )
    }

    pub fn release_holder(
        &self,
        _: &Table,
        _: u32,
        _: fn(u32) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        Err(Error::Unsupported(
            "release_holder works on shared-memory engines; Redis permits of a dead process expire by their TTL".into(),
        ))
    }

    pub fn poll_ns(&self) -> u64 {
        POLL_NS
    }
}

/// The batch rule's steps on a Redis Cluster: each step is one pipeline
/// of script calls, each call to its key's node.
impl Keys for Redis {
    fn decide_each(
        &self,
        ts: &[Target<'_>],
        now: Now,
        mode: Mode,
        seen: &mut dyn FnMut(usize, Outcome, Now) -> bool,
    ) {
        let items = self.items(ts.iter().copied());
        let op = if mode == Mode::Peek { "peek" } else { "check" };
        let replies = items.ok().and_then(|items| {
            let values = self
                .remote
                .call_each(op, &items, &|_| when(now), mode == Mode::Peek);
            let replies: Option<Vec<Reply>> = values.ok()?.iter().map(|v| reply(v).ok()).collect();
            Some((items, replies?))
        });
        let Some((items, replies)) = replies else {
            if self.on_failure() == OnFailure::Local {
                self.remote.fell_back();
                return self.local.decide_each(ts, now, mode, seen);
            }
            for (i, t) in ts.iter().enumerate() {
                seen(i, self.failed(t, now, mode), now);
            }
            return;
        };
        if mode == Mode::StrikeIfDenied {
            // A struck item that a refill let through meanwhile was charged:
            // give it back (the batch is denied), at its charge's time.
            let charged: Vec<usize> = (0..ts.len())
                .filter(|&i| replies[i].verdict.allowed)
                .collect();
            if !charged.is_empty() {
                let back: Vec<Item<'_>> = charged.iter().map(|&i| items[i]).collect();
                let times = |k: usize| when(at(&replies[charged[k]]));
                let _ = self.remote.call_each("refund", &back, &times, false);
            }
        }
        for (i, rep) in replies.iter().enumerate() {
            if mode != Mode::Peek && rep.verdict.allowed {
                self.remote.cache.changed(cache_tag(&ts[i]));
            }
            // Every item was decided (and charged if allowed): report them all.
            seen(i, decided(rep.verdict), at(rep));
        }
    }

    fn refund_each(&self, ts: &[(Target<'_>, Now)]) {
        ts.iter()
            .for_each(|(t, _)| self.remote.cache.changed(cache_tag(t)));
        let sent = self.items(ts.iter().map(|&(t, _)| t)).map(|items| {
            self.remote
                .call_each("refund", &items, &|i| when(ts[i].1), false)
        });
        if !matches!(sent, Ok(Ok(_))) && self.on_failure() == OnFailure::Local {
            self.local.refund_each(ts);
        }
    }
}
