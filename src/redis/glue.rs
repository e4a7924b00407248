//! `Engine` over Redis: each operation makes one script call, and falls
//! back to the failure policy when Redis cannot answer. A child module of
//! `engine` (it needs the policies' private parts); `Engine`'s methods
//! route here when the engine was opened with `Engine::open_redis`.

use std::time::Duration;

use super::{unknown_policy, CheckItem, Decision, Engine, Permit, Policy, PolicyId};
use crate::redis::{ints, reply, Down, Item, Key, OnFailure, Remote, RemotePolicy, Reply};
use crate::table::{binds_over, Lease};
use crate::Error;

/// `Lease::slot` of a permit held in Redis (local slots are below 8):
/// then `bucket` is the permit's token, `index` the lease index and `word`
/// the key's 128-bit hash.
const REMOTE_SLOT: u8 = 0xFF;

/// Most items a batch may carry through Redis (the script's bound).
const MAX_REMOTE_ITEMS: usize = 64;

impl Engine {
    /// The Redis connection, if this engine was opened with `open_redis`.
    #[inline(always)]
    pub(super) fn remote(&self) -> Option<&Remote> {
        self.remote.as_deref()
    }

    fn remote_policy<'a>(&self, r: &'a Remote, id: PolicyId) -> Result<&'a RemotePolicy, Error> {
        r.policy(id.0).ok_or(Error::UnknownPolicy(id.0))
    }

    /// The key of the deny cache for `key` (hash `h`) of policy `id`.
    fn cache_tag(id: PolicyId, h: u64) -> u64 {
        h ^ (u64::from(id.0) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// `check`/`check_at` through Redis (`now`: `None` = Redis time).
    pub(super) fn remote_check(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now: Option<u64>,
    ) -> Decision {
        let (Ok(p), Ok(rp)) = (self.get(policy), self.remote_policy(r, policy)) else {
            unknown_policy(policy)
        };
        // A check of a concurrency policy is a peek (as in `check_at`).
        let charge = !p.table.layout.concurrency;
        let h = Self::hash(p, key);
        let local_now = now.unwrap_or_else(|| self.now_ns());
        let tag = Self::cache_tag(policy, h);
        if charge && !rp.penalty {
            if let Some((d, _)) = r.cache.get(&[tag], [cost].into_iter(), local_now) {
                r.cache_hit();
                return self.settle(p, d, false, key, h, local_now, true);
            }
        }
        let item = Item::raw(rp, key, cost);
        let op = if charge { "check" } else { "peek" };
        match r.call(op, now, &[item], &[]).and_then(|v| reply(&v)) {
            Ok(rep) => {
                if rep.decision.allowed && charge {
                    r.cache.changed(tag);
                } else if charge && !rp.penalty {
                    r.cache
                        .put(&[tag], [cost].into_iter(), local_now, &rep.decision, 0);
                }
                self.settle(p, rep.decision, rep.new_ban, key, h, local_now, charge)
            }
            Err(_) => self.fall_back(r, p, key, h, cost as u64, local_now, charge),
        }
    }

    /// Counts a decision made in Redis (or the deny cache) and applies the
    /// policy's local options (jitter, shadow mode, the deny-event ring),
    /// as `conclude` does for local decisions.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        p: &Policy,
        d: Decision,
        new_ban: bool,
        key: &[u8],
        h: u64,
        now: u64,
        count: bool,
    ) -> Decision {
        if count {
            Self::tally(p, &d, new_ban);
        }
        Self::finish(p, d, key, h, now, count)
    }

    /// A single-key decision while Redis cannot answer: the failure
    /// policy's, or with `Local` the local tables'.
    #[allow(clippy::too_many_arguments)]
    fn fall_back(
        &self,
        r: &Remote,
        p: &Policy,
        key: &[u8],
        h: u64,
        cost: u64,
        now: u64,
        charge: bool,
    ) -> Decision {
        self.failed(r, p, key, h, cost, now, charge)
            .unwrap_or_else(|| Self::decide(p, key, h, cost, now, charge))
    }

    /// Counts a decision Redis could not make and, for `Open` and
    /// `Closed`, makes it (counted as `count` says): allowed with the
    /// figures of a fresh key, or denied until the next try at Redis (at
    /// least 1 ms). `None` for `Local`: the caller decides on its local
    /// tables, as the same call on a local engine would.
    #[allow(clippy::too_many_arguments)]
    fn failed(
        &self,
        r: &Remote,
        p: &Policy,
        key: &[u8],
        h: u64,
        cost: u64,
        now: u64,
        count: bool,
    ) -> Option<Decision> {
        r.fell_back();
        let fresh: Decision = p.table.fresh_verdict(h, cost, now).into();
        let d = match r.options.on_failure {
            OnFailure::Local => return None,
            OnFailure::Open => Decision {
                allowed: true,
                retry_after_ns: 0,
                ..fresh
            },
            OnFailure::Closed => {
                let wait = r.until_retry_ns().max(1_000_000);
                Decision {
                    allowed: false,
                    remaining: 0,
                    retry_after_ns: wait,
                    reset_after_ns: wait,
                    ..fresh
                }
            }
        };
        Some(self.settle(p, d, false, key, h, now, count))
    }

    /// `check_many`/`check_many_at` through Redis: one script call for the
    /// whole batch, all-or-nothing inside Redis.
    pub(super) fn remote_check_many(
        &self,
        r: &Remote,
        items: &[CheckItem<'_>],
        now: Option<u64>,
    ) -> Result<(Decision, usize), Error> {
        if items.is_empty() {
            return Err(Error::InvalidArgument(
                "check_many needs at least one item".into(),
            ));
        }
        if items.len() > MAX_REMOTE_ITEMS {
            return Err(Error::InvalidArgument(format!(
                "check_many through Redis takes at most {MAX_REMOTE_ITEMS} items (got {})",
                items.len()
            )));
        }
        let local_now = now.unwrap_or_else(|| self.now_ns());
        let mut batch = Vec::with_capacity(items.len());
        let mut hashes = Vec::with_capacity(items.len());
        let mut tags = Vec::with_capacity(items.len());
        for it in items {
            let p = self.get(it.policy)?;
            p.rate_limit("use acquire/release")?;
            let rp = self.remote_policy(r, it.policy)?;
            let h = Self::hash(p, it.key);
            tags.push(Self::cache_tag(it.policy, h));
            hashes.push(h);
            batch.push(Item {
                policy: rp,
                key: Key::Raw(it.key),
                cost: it.cost,
            });
        }
        let costs = || items.iter().map(|it| it.cost);
        let cacheable = batch.iter().all(|it| !it.policy.penalty);
        if cacheable {
            if let Some((d, i)) = r.cache.get(&tags, costs(), local_now) {
                r.cache_hit();
                let p = self.get(items[i].policy)?;
                return Ok((
                    self.settle(p, d, false, items[i].key, hashes[i], local_now, true),
                    i,
                ));
            }
        }
        let answer = if r.is_cluster() && batch.len() > 1 {
            Self::cluster_batch(r, &batch, now)
        } else {
            r.call("check", now, &batch, &[]).and_then(|v| reply(&v))
        };
        match answer {
            Ok(rep) if rep.item < items.len() => {
                let (i, it) = (rep.item, &items[rep.item]);
                let p = self.get(it.policy)?;
                if rep.decision.allowed {
                    for (j, other) in items.iter().enumerate() {
                        r.cache.changed(tags[j]);
                        if j != i {
                            let q = self.get(other.policy)?;
                            Self::tally(
                                q,
                                &Decision {
                                    allowed: true,
                                    ..rep.decision
                                },
                                false,
                            );
                        }
                    }
                } else if cacheable {
                    r.cache.put(&tags, costs(), local_now, &rep.decision, i);
                }
                let d = self.settle(
                    p,
                    rep.decision,
                    rep.new_ban,
                    it.key,
                    hashes[i],
                    local_now,
                    true,
                );
                Ok((d, i))
            }
            Ok(_) | Err(_) => {
                let (first, p) = (&items[0], self.get(items[0].policy)?);
                let cost = first.cost as u64;
                match self.failed(r, p, first.key, hashes[0], cost, local_now, true) {
                    Some(d) => Ok((d, 0)),
                    None => self.local_check_many_at(items, local_now),
                }
            }
        }
    }

    /// A batch of several keys on a Redis Cluster, where one script call
    /// cannot reach keys in different slots: what the local `check_many`
    /// does, with a pipelined round trip per step (each call to its key's
    /// node). Peek every item; if all allow, charge every item, and refund
    /// the charged ones if a racing request took the last unit of another
    /// in between; if some deny, strike the denied items that have a
    /// penalty box (a strike that starts a ban is the answer). Two round
    /// trips for an allowed request, one or two for a denied one.
    fn cluster_batch(r: &Remote, batch: &[Item<'_>], now: Option<u64>) -> Result<Reply, Down> {
        let replies = |op: &str, items: &[Item<'_>], retry: bool| -> Result<Vec<Reply>, Down> {
            r.call_each(op, now, items, retry)?
                .iter()
                .map(reply)
                .collect()
        };
        let binding = |reps: &[Reply]| -> Reply {
            let key = |d: &Decision| (d.allowed, d.remaining, d.retry_after_ns);
            let mut best = Reply { item: 0, ..reps[0] };
            for (i, rep) in reps.iter().enumerate().skip(1) {
                if binds_over(key(&rep.decision), key(&best.decision)) {
                    best = Reply { item: i, ..*rep };
                }
            }
            best
        };
        let peeks = replies("peek", batch, true)?;
        let peeked = binding(&peeks);
        if !peeked.decision.allowed {
            let struck: Vec<usize> = (0..batch.len())
                .filter(|&i| batch[i].policy.penalty && !peeks[i].decision.allowed)
                .collect();
            if struck.is_empty() {
                return Ok(peeked);
            }
            let items: Vec<Item<'_>> = struck.iter().map(|&i| batch[i]).collect();
            let strikes = replies("check", &items, false)?;
            // A struck item that a refill let through meanwhile was charged:
            // give it back (the batch is denied).
            let back: Vec<Item<'_>> = (0..items.len())
                .filter(|&j| strikes[j].decision.allowed)
                .map(|j| items[j])
                .collect();
            if !back.is_empty() {
                r.call_each("refund", now, &back, false)?;
            }
            return Ok(match strikes.iter().position(|s| s.new_ban) {
                Some(j) => Reply {
                    item: struck[j],
                    ..strikes[j]
                },
                None => peeked,
            });
        }
        let charges = replies("check", batch, false)?;
        if let Some(i) = charges.iter().position(|c| !c.decision.allowed) {
            let back: Vec<Item<'_>> = (0..batch.len())
                .filter(|&j| charges[j].decision.allowed)
                .map(|j| batch[j])
                .collect();
            if !back.is_empty() {
                r.call_each("refund", now, &back, false)?;
            }
            return Ok(Reply {
                item: i,
                ..charges[i]
            });
        }
        Ok(binding(&charges))
    }

    /// `peek_at` through Redis; the failure policy's answer while down.
    pub(super) fn remote_peek(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now: Option<u64>,
    ) -> Result<Decision, Error> {
        let p = self.get(policy)?;
        let rp = self.remote_policy(r, policy)?;
        let item = Item::raw(rp, key, cost);
        let local_now = now.unwrap_or_else(|| self.now_ns());
        let h = Self::hash(p, key);
        match r.call("peek", now, &[item], &[]).and_then(|v| reply(&v)) {
            Ok(rep) => Ok(Self::finish(p, rep.decision, key, h, local_now, false)),
            Err(_) => Ok(self.fall_back(r, p, key, h, cost as u64, local_now, false)),
        }
    }

    /// `refund_at` through Redis. While Redis is down the refund goes to
    /// the local tables (where the failure policy `Local` charged), and is
    /// otherwise dropped: a refund never fails a request.
    pub(super) fn remote_refund(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now: Option<u64>,
    ) -> Result<bool, Error> {
        let p = self.get(policy)?;
        p.rate_limit("release its permits instead")?;
        let rp = self.remote_policy(r, policy)?;
        let h = Self::hash(p, key);
        r.cache.changed(Self::cache_tag(policy, h));
        let item = Item::raw(rp, key, cost);
        match r.call("refund", now, &[item], &[]).and_then(|v| ints(&v)) {
            Ok(v) => Ok(v.first() == Some(&1)),
            Err(_) if r.options.on_failure == OnFailure::Local => {
                let local_now = now.unwrap_or_else(|| self.now_ns());
                Ok(p.table.refund(h, cost as u64, local_now))
            }
            Err(_) => Ok(false),
        }
    }

    /// An administrative call (reset, overrides): Redis must answer, or the
    /// caller gets `Error::Backend`.
    fn admin(
        &self,
        r: &Remote,
        op: &str,
        policy: PolicyId,
        key: &[u8],
        extra: &[String],
    ) -> Result<i64, Error> {
        let p = self.get(policy)?;
        let rp = self.remote_policy(r, policy)?;
        r.cache.changed(Self::cache_tag(policy, Self::hash(p, key)));
        let item = Item::raw(rp, key, 0);
        let v = r
            .call(op, None, &[item], extra)
            .and_then(|v| ints(&v))
            .map_err(|e| Error::Backend(e.0))?;
        Ok(v.first().copied().unwrap_or(0))
    }

    /// `reset` in Redis and in the local tables.
    pub(super) fn remote_reset(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
    ) -> Result<bool, Error> {
        let p = self.get(policy)?;
        let local = p.table.reset(Self::hash(p, key));
        Ok(self.admin(r, "reset", policy, key, &[])? == 1 || local)
    }

    /// Sets (`milli` > 0) or clears (0) an override in Redis; the local
    /// tables get it too, so that the failure policy `Local` honours it.
    pub(super) fn remote_set_override(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
        milli: u32,
    ) -> Result<(), Error> {
        let p = self.get(policy)?;
        p.table.set_override(Self::hash(p, key), milli)?;
        if milli == 0 {
            self.admin(r, "override_clear", policy, key, &[])?;
        } else {
            self.admin(r, "override_set", policy, key, &[milli.to_string()])?;
        }
        Ok(())
    }

    /// The override factor (thousandths, 0 = none) kept in Redis.
    pub(super) fn remote_override_of(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
    ) -> Result<u32, Error> {
        Ok(self
            .admin(r, "override_get", policy, key, &[])?
            .clamp(0, u32::MAX as i64) as u32)
    }

    /// `acquire`/`acquire_at` through Redis.
    pub(super) fn remote_acquire(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
        now: Option<u64>,
    ) -> Result<(Decision, Option<Permit>), Error> {
        let p = self.get(policy)?;
        p.concurrency_limit()?;
        let rp = self.remote_policy(r, policy)?;
        let h = Self::hash(p, key);
        let local_now = now.unwrap_or_else(|| self.now_ns());
        let mut token = [0u8; 4];
        crate::clock::fill_random(&mut token);
        let token = u32::from_le_bytes(token).max(1);
        // SAFETY: getpid has no preconditions and cannot fail.
        let holder = unsafe { libc::getpid() } as u32;
        let item = Item::raw(rp, key, 1);
        let extra = [holder.to_string(), token.to_string()];
        match r
            .call("acquire", now, &[item], &extra)
            .and_then(|v| reply(&v))
        {
            Ok(rep) => {
                let d = self.settle(p, rep.decision, rep.new_ban, key, h, local_now, true);
                let permit = match (rep.lease, r.hash_of(rp, key)) {
                    (Some(index), Some(hash)) if rep.decision.allowed => Some(Permit {
                        engine: self.id,
                        policy: policy.0,
                        lease: Lease {
                            bucket: token,
                            slot: REMOTE_SLOT,
                            index: index as u16,
                            word: hash,
                        },
                    }),
                    _ => None,
                };
                Ok((d, permit))
            }
            Err(_) => match self.failed(r, p, key, h, 1, local_now, true) {
                Some(d) => Ok((d, None)),
                None => self.local_acquire_at(policy, key, local_now),
            },
        }
    }

    /// `acquire_timeout` through Redis: tries again when the decision says
    /// a permit may be free (at most every 50 ms, since a release on
    /// another host wakes nobody here) until `timeout`.
    pub(super) fn remote_acquire_timeout(
        &self,
        r: &Remote,
        policy: PolicyId,
        key: &[u8],
        timeout: Duration,
    ) -> Result<(Decision, Option<Permit>), Error> {
        let start = std::time::Instant::now();
        loop {
            let (d, permit) = self.remote_acquire(r, policy, key, None)?;
            let spent = start.elapsed();
            if permit.is_some() || d.allowed || spent >= timeout {
                return Ok((d, permit));
            }
            let wait = Duration::from_nanos(d.retry_after_ns.clamp(1_000_000, 50_000_000));
            std::thread::sleep(wait.min(timeout - spent));
        }
    }

    /// `release` of a permit: through Redis for a Redis permit (a release
    /// Redis cannot take now is `Ok(false)`: the lease expires by its TTL).
    pub(super) fn remote_release(
        &self,
        r: &Remote,
        permit: &Permit,
    ) -> Result<Option<bool>, Error> {
        if permit.lease.slot != REMOTE_SLOT {
            return Ok(None); // a permit of the local fallback
        }
        let rp = self.remote_policy(r, PolicyId(permit.policy))?;
        let item = Item {
            policy: rp,
            key: Key::Hashed(permit.lease.word),
            cost: 0,
        };
        let extra = [
            permit.lease.index.to_string(),
            permit.lease.bucket.to_string(),
        ];
        Ok(Some(
            match r
                .call("release", None, &[item], &extra)
                .and_then(|v| ints(&v))
            {
                Ok(v) => v.first() == Some(&1),
                Err(_) => false,
            },
        ))
    }
}
