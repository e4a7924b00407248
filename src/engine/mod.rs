//! The engine: named policies, and the one way a request flows —
//! resolve the policy and hash the key, ask the store
//! ([`crate::store`]), turn its answer into a [`Decision`]
//! ([`decision`]). Several items go through the one batch rule
//! ([`batch`]); permits through [`permits`].

mod batch;
mod decision;
mod local;
pub(crate) mod memo;
mod permits;
mod policies;

pub use decision::Decision;
pub use permits::Permit;
#[cfg(test)]
pub(crate) use policies::layout_for;
pub use policies::MAX_OVERRIDES;
pub(crate) use policies::{OVERRIDE_BASE, RING_BASE, TABLE_BASE};

use crate::events::DenyEvent;
use crate::hash::Seed;
use crate::options::{options_from_stored, EngineOptions, PolicyOptions, MAX_POLICIES};
use crate::policy::{self, PolicySpec};
use crate::shm::{self, Mapping};
use crate::stats::{Counter, Stats};
use crate::store::{Local, Now, Store, Target};
use crate::table::Mode;
use crate::Error;
use decision::{conclude, conclude_quiet, Count};
use policies::Policy;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// A policy of one engine. Cheap to copy; only meaningful to that engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(pub(crate) u32);

impl PolicyId {
    /// The policy's index in its engine (also its C ABI id).
    pub fn index(self) -> u32 {
        self.0
    }
}

/// One item of [`Engine::check_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckItem<'a> {
    /// The policy.
    pub policy: PolicyId,
    /// The key under that policy.
    pub key: &'a [u8],
    /// The cost to charge.
    pub cost: u32,
}

/// The rate-limit engine: a set of named policies.
///
/// `Engine` is `Send + Sync`; share one by reference or `Arc`. `check`
/// never allocates, never blocks and never takes a lock — except on an
/// engine from [`open_redis`](Self::open_redis), where it makes one round
/// trip to Redis, bounded by the engine's timeout.
///
/// ```
/// use ratekeeper::{Engine, EngineOptions};
/// let engine = Engine::new(EngineOptions::default())?;
/// let login = engine.add_policy("login", "5/minute;20/hour")?;
/// let d = engine.check_at(login, b"ip:203.0.113.7", 1, 1_000_000_000);
/// assert!(d.allowed);
/// assert_eq!((d.limit, d.remaining, d.limit_index), (5, 4, 0));
/// # Ok::<(), ratekeeper::Error>(())
/// ```
pub struct Engine {
    id: u64,
    /// This engine's number for the spot memo ([`memo::engine_id`]); 0 when
    /// the memo is off (a Redis engine, whose state is not in its tables).
    memo_id: u64,
    seed: Seed,
    options: EngineOptions,
    policies: Box<[OnceLock<Policy>]>,
    count: AtomicU32,
    add_lock: Mutex<()>,
    shared: Option<Arc<Mapping>>,
    store: Store,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            // Relaxed: a figure for display only.
            .field("policies", &self.count.load(Ordering::Relaxed))
            .field("capacity", &self.options.capacity)
            .finish()
    }
}

impl Engine {
    /// A new in-process engine.
    pub fn new(options: EngineOptions) -> Result<Engine, Error> {
        crate::sync::check_cpu()?;
        if options.capacity == 0 {
            return Err(Error::InvalidArgument("capacity must be at least 1".into()));
        }
        Ok(Self::with(Seed::random(), options, None))
    }

    fn with(seed: Seed, options: EngineOptions, shared: Option<Arc<Mapping>>) -> Engine {
        crate::clock::vdso::resolve();
        crate::rseq::resolve();
        let mut id = [0u8; 8];
        crate::clock::fill_random(&mut id);
        Engine {
            id: u64::from_le_bytes(id) | 1,
            memo_id: memo::engine_id(),
            seed,
            options,
            policies: (0..MAX_POLICIES).map(|_| OnceLock::new()).collect(),
            count: AtomicU32::new(0),
            add_lock: Mutex::new(()),
            shared,
            store: Store::Local(Local),
        }
    }

    /// Creates or attaches the shared engine backed by the file at `path`
    /// (normally under `/dev/shm`): every process that opens the same path
    /// enforces the same limits together.
    ///
    /// # Examples
    /// ```
    /// use ratekeeper::{Engine, EngineOptions};
    /// let path = std::env::temp_dir().join(format!("rk-doc-{}", std::process::id()));
    /// let worker_1 = Engine::open_shared(&path, EngineOptions::default())?;
    /// let worker_2 = Engine::open_shared(&path, EngineOptions::default())?;
    /// let a = worker_1.add_policy("upload", "2/minute")?;
    /// let b = worker_2.add_policy("upload", "2/minute")?;
    /// assert!(worker_1.check_at(a, b"ip", 1, 1).allowed);
    /// assert!(worker_2.check_at(b, b"ip", 1, 1).allowed);
    /// assert!(!worker_1.check_at(a, b"ip", 1, 1).allowed); // one limit for both
    /// # std::fs::remove_file(&path).unwrap();
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn open_shared(
        path: impl AsRef<std::path::Path>,
        options: EngineOptions,
    ) -> Result<Engine, Error> {
        Self::open_shared_booted(
            path.as_ref(),
            options,
            std::path::Path::new(shm::BOOT_ID_PATH),
        )
    }

    /// `open_shared`, reading the kernel's boot id from `boot_id_file`
    /// (tests simulate reboots and unreadable boot ids with it).
    pub(crate) fn open_shared_booted(
        path: &std::path::Path,
        options: EngineOptions,
        boot_id_file: &std::path::Path,
    ) -> Result<Engine, Error> {
        crate::sync::check_cpu()?;
        if options.capacity == 0 {
            return Err(Error::InvalidArgument("capacity must be at least 1".into()));
        }
        let map = Mapping::open(
            path,
            options.shared_max_bytes,
            options.shared_file_mode,
            boot_id_file,
            |stored| options_from_stored(stored).map(drop),
        )?;
        Ok(Self::with(map.seed(), options, Some(map)))
    }

    /// Opens an engine whose limits live in Redis, shared by every host
    /// that opens the same Redis with the same prefix: each decision is one
    /// round trip running one Lua script, atomic for all limits of the
    /// request. Calls without an explicit time use Redis's clock (`TIME`),
    /// one clock for all hosts; `*_at` calls pass their time to Redis.
    ///
    /// The engine keeps local tables with the same policies: while Redis
    /// cannot be reached they decide ([`OnFailure::Local`], in the shared
    /// file at `fallback_path` if set), or every request is allowed or
    /// denied ([`OnFailure::Open`], [`OnFailure::Closed`]). Recovery is
    /// detected by trying again with backoff, without a restart.
    ///
    /// `url`: `redis://[[user]:password@]host[:port][/db]`, `rediss://`
    /// (TLS), with [`RedisOptions::cluster`](crate::RedisOptions::cluster) a comma-separated list of
    /// cluster nodes, or
    /// `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`:
    /// the master that the sentinels name, asked again after every failed
    /// call, so that a failover is followed (the failure policy decides
    /// meanwhile).
    ///
    /// Errors: a bad URL or option ([`Error::InvalidArgument`]); a refused
    /// password or a server that is not Redis ([`Error::Backend`]). An
    /// unreachable server is not an error: the engine starts on its failure
    /// policy and switches to Redis when it answers.
    ///
    /// [`OnFailure::Local`]: crate::OnFailure::Local
    /// [`OnFailure::Open`]: crate::OnFailure::Open
    /// [`OnFailure::Closed`]: crate::OnFailure::Closed
    #[cfg(feature = "redis")]
    pub fn open_redis(url: &str, options: crate::RedisOptions) -> Result<Engine, Error> {
        if options.fallback_path.is_some() && options.on_failure != crate::OnFailure::Local {
            return Err(Error::InvalidArgument(
                "fallback_path is used only with on_failure = Local".into(),
            ));
        }
        let mut engine = match &options.fallback_path {
            Some(path) => Engine::open_shared(path, options.engine.clone())?,
            None => Engine::new(options.engine.clone())?,
        };
        engine.store = Store::Redis(Box::new(crate::store::Redis::open(url, options)?));
        engine.memo_id = 0;
        Ok(engine)
    }

    /// The Redis backend's counters (`None` for a local engine).
    #[cfg(feature = "redis")]
    pub fn redis_stats(&self) -> Option<crate::RedisStats> {
        self.store.redis().map(|r| r.stats())
    }

    /// For a shared engine, an error if its file was truncated under the
    /// mapping (touching the missing pages would be SIGBUS). Checked on the
    /// slow paths only: one `fstat`.
    fn intact(&self) -> Result<(), Error> {
        match &self.shared {
            Some(map) => map.check_intact(),
            None => Ok(()),
        }
    }

    /// The path of a shared engine's file (`None` for an in-process engine).
    pub fn shared_path(&self) -> Option<&std::path::Path> {
        self.shared.as_deref().map(Mapping::path)
    }

    /// Adds a policy named `name` with the limits of `spec` (see the README
    /// for the grammar), or returns the existing one if `name` already has
    /// exactly these limits.
    ///
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let api = engine.add_policy("api", "10/second;1000/hour")?;
    /// assert_eq!(engine.add_policy("api", "10 per second, 1000/hour")?, api);
    /// assert!(engine.add_policy("api", "5/second").is_err());
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn add_policy(&self, name: &str, spec: &str) -> Result<PolicyId, Error> {
        self.add_policy_with(name, spec, PolicyOptions::default())
    }

    /// [`add_policy`](Self::add_policy) with a capacity and table-full
    /// behaviour of the policy's own.
    pub fn add_policy_with(
        &self,
        name: &str,
        spec: &str,
        options: PolicyOptions,
    ) -> Result<PolicyId, Error> {
        if name.is_empty() || name.len() > 128 {
            return Err(Error::InvalidArgument(
                "a policy name must be 1 to 128 bytes long".into(),
            ));
        }
        let parsed = policy::parse(spec)?;
        let capacity = options.capacity.unwrap_or(self.options.capacity);
        if capacity == 0 {
            return Err(Error::InvalidArgument("capacity must be at least 1".into()));
        }
        if let Some(pen) = &options.penalty {
            pen.validate()?;
        }
        #[cfg(feature = "redis")]
        if let Some(r) = self.store.redis() {
            let definition = options.describe(&parsed.to_string());
            let remote = r.prepare(name, &parsed, options.penalty, &definition)?;
            let id = self.add_local(name, parsed, capacity, options)?;
            r.set_policy(id.0, remote);
            return Ok(id);
        }
        self.add_local(name, parsed, capacity, options)
    }

    /// The id of the policy named `name`, if any (for a shared engine,
    /// also a policy another process added).
    pub fn policy(&self, name: &str) -> Option<PolicyId> {
        self.policies()
            .into_iter()
            .find(|&id| self.get(id).is_ok_and(|p| p.name == name))
    }

    /// The name of a policy.
    pub fn policy_name(&self, id: PolicyId) -> Result<&str, Error> {
        Ok(&self.get(id)?.name)
    }

    /// The parsed limits of a policy.
    pub fn policy_spec(&self, id: PolicyId) -> Result<&PolicySpec, Error> {
        Ok(&self.get(id)?.spec)
    }

    /// [`check_at`](Self::check_at) (with `now_ns`) or
    /// [`check`](Self::check) (without) after one lookup of the policy,
    /// which refuses a foreign id or a concurrency policy instead of
    /// panicking or peeking (the caller builds the error with
    /// [`not_rate`](Self::not_rate), off the hot path): the C ABI's
    /// `rk_check`/`rk_check_at` and [`try_check_at`](Self::try_check_at).
    #[inline(always)]
    pub(crate) fn check_rate(
        &self,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now_ns: Option<u64>,
    ) -> Result<Decision, NotRate> {
        let Some(p) = self.policies.get(policy.0 as usize).and_then(OnceLock::get) else {
            return Err(NotRate);
        };
        if p.table.layout.concurrency {
            return Err(NotRate);
        }
        let now = match now_ns {
            Some(ns) => Self::at(ns),
            None => self.clock_now(),
        };
        Ok(self.decide_key(p, policy, key, cost, now, Mode::Charge))
    }

    /// The engine's current time (its clock, in nanoseconds). On a Redis
    /// engine, `check` uses Redis's clock instead; this is the local clock
    /// of the fallback tables.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.options.clock.now_ns()
    }

    /// The time of a call without an explicit one.
    #[inline(always)]
    fn clock_now(&self) -> Now {
        Now {
            ns: self.now_ns(),
            explicit: false,
        }
    }

    /// The time of a `*_at` call.
    #[inline(always)]
    fn at(now_ns: u64) -> Now {
        Now {
            ns: now_ns,
            explicit: true,
        }
    }

    /// `key` of policy `p` (id `policy`) as the store sees it.
    #[inline(always)]
    fn target<'a>(p: &'a Policy, policy: PolicyId, key: &'a [u8], cost: u32) -> Target<'a> {
        Self::target_hashed(p, policy, key, cost, p.hash(key))
    }

    /// [`target`](Self::target) for a key whose hash is known (the spot
    /// memo keeps it).
    #[inline(always)]
    fn target_hashed<'a>(
        p: &'a Policy,
        policy: PolicyId,
        key: &'a [u8],
        cost: u32,
        hash: u64,
    ) -> Target<'a> {
        Target {
            policy: policy.0,
            table: &p.table,
            key,
            hash,
            cost: cost as u64,
        }
    }

    /// A counted decision on one key: at the spot this thread's memo keeps
    /// for it, if the memo has one that still holds (see `memo`), else
    /// through the store; then concluded.
    #[inline(always)]
    fn decide_key(
        &self,
        p: &Policy,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now: Now,
        mode: Mode,
    ) -> Decision {
        let here = local::here();
        let count = Count::In(here.shard());
        if self.memo_id == 0 || !p.table.layout.single_word {
            return self.decide(p, &Self::target(p, policy, key, cost), now, mode, count);
        }
        let table = &p.table;
        let way = match memo::decide(
            &here.memo,
            self.memo_id,
            policy.0,
            table,
            key,
            cost as u64,
            now.ns,
            mode,
        ) {
            Ok((outcome, hash, quiet)) => {
                let t = Self::target_hashed(p, policy, key, cost, hash);
                return conclude_quiet(p, &t, outcome, now.ns, now.ns, count, Some(quiet));
            }
            Err(way) => way,
        };
        let t = Self::target(p, policy, key, cost);
        let d = self.decide(p, &t, now, mode, count);
        if let Some(w) = way {
            if memo::missed(w, t.hash) {
                memo::fill(self.memo_id, policy.0, table, key, t.hash, w);
            }
        }
        d
    }

    /// Asks the store about one key and concludes the decision.
    #[inline(always)]
    fn decide(&self, p: &Policy, t: &Target<'_>, now: Now, mode: Mode, count: Count) -> Decision {
        let (outcome, at) = self.store.decide(t, now, mode);
        conclude(p, t, outcome, now.ns, at.ns, count)
    }

    /// Checks and charges `cost` for `key` at the engine clock's time.
    ///
    /// # Panics
    /// If `policy` does not belong to this engine (as indexing out of bounds
    /// does); [`try_check_at`](Self::try_check_at) returns an error instead.
    #[inline]
    pub fn check(&self, policy: PolicyId, key: &[u8], cost: u32) -> Decision {
        self.check_now(policy, key, cost, self.clock_now())
    }

    /// [`check`](Self::check) at an explicit time `now_ns`.
    ///
    /// On a concurrency policy (which is used through
    /// [`acquire`](Self::acquire)) this charges nothing and reports whether
    /// a permit is free, as [`peek_at`](Self::peek_at) does.
    ///
    /// # Panics
    /// If `policy` does not belong to this engine.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let api = engine.add_policy("api", "2/second")?;
    /// let t = 1_000_000_000;
    /// assert!(engine.check_at(api, b"k", 1, t).allowed);
    /// assert!(engine.check_at(api, b"k", 1, t).allowed);
    /// let d = engine.check_at(api, b"k", 1, t);
    /// assert!(!d.allowed);
    /// assert_eq!(d.retry_after_ns, 500_000_000); // one token every half second
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    #[inline]
    pub fn check_at(&self, policy: PolicyId, key: &[u8], cost: u32, now_ns: u64) -> Decision {
        self.check_now(policy, key, cost, Self::at(now_ns))
    }

    /// The batch of one: the whole of `check`.
    #[inline(always)]
    fn check_now(&self, policy: PolicyId, key: &[u8], cost: u32, now: Now) -> Decision {
        let Some(p) = self.policies.get(policy.0 as usize).and_then(OnceLock::get) else {
            unknown_policy(policy)
        };
        let mode = if p.table.layout.concurrency {
            Mode::Peek
        } else {
            Mode::Charge
        };
        self.decide_key(p, policy, key, cost, now, mode)
    }

    /// [`check_at`](Self::check_at) that reports a foreign policy id or a
    /// concurrency policy (which needs [`acquire`](Self::acquire)) as an error.
    pub fn try_check_at(
        &self,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now_ns: u64,
    ) -> Result<Decision, Error> {
        match self.check_rate(policy, key, cost, Some(now_ns)) {
            Ok(d) => Ok(d),
            Err(_) => Err(self.not_rate(policy, "use acquire/release")),
        }
    }

    /// The error of a rate-limit call (one that [`check_rate`](Self::check_rate)
    /// refused) on `policy`: a foreign id, or a concurrency policy that
    /// needs `instead`.
    #[cold]
    #[inline(never)]
    pub(crate) fn not_rate(&self, policy: PolicyId, instead: &str) -> Error {
        match self.get(policy) {
            Ok(p) => p.kind_error(instead),
            Err(e) => e,
        }
    }

    /// Checks several (policy, key, cost) items — e.g. every limit that
    /// applies to one HTTP request — as one request: if every item allows,
    /// every item is charged; if any denies, none is. Returns the binding
    /// decision (a denying item with the largest retry-after, else the item
    /// with the fewest remaining; ties to the lowest index) and its index.
    ///
    /// Items are first peeked, then charged in order; if a concurrent request
    /// takes the last unit of an item between the two, the items already
    /// charged are refunded and the batch is denied. Across different keys
    /// that is the strongest guarantee a lock-free engine can give: a charge
    /// may be visible to other requests for that instant. Every item denied
    /// by its own limits is a penalty-box strike. (The rule: `src/engine/batch.rs`.)
    ///
    /// # Examples
    /// ```
    /// use ratekeeper::CheckItem;
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let per_ip = engine.add_policy("ip", "100/minute")?;
    /// let per_key = engine.add_policy("key", "1/minute")?;
    /// let request = [
    ///     CheckItem { policy: per_ip, key: b"203.0.113.7", cost: 1 },
    ///     CheckItem { policy: per_key, key: b"key:alice", cost: 1 },
    /// ];
    /// assert!(engine.check_many_at(&request, 1)?.0.allowed);
    /// let (d, binding) = engine.check_many_at(&request, 1)?;
    /// assert!(!d.allowed && binding == 1);
    /// assert_eq!(engine.peek_at(per_ip, b"203.0.113.7", 1, 1)?.remaining, 98); // charged once
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn check_many_at(
        &self,
        items: &[CheckItem<'_>],
        now_ns: u64,
    ) -> Result<(Decision, usize), Error> {
        self.run_batch(items, Self::at(now_ns))
    }

    /// [`check_many_at`](Self::check_many_at) at the engine clock's time.
    pub fn check_many(&self, items: &[CheckItem<'_>]) -> Result<(Decision, usize), Error> {
        self.run_batch(items, self.clock_now())
    }

    /// What `check` would decide now, without charging anything.
    pub fn peek(&self, policy: PolicyId, key: &[u8], cost: u32) -> Result<Decision, Error> {
        self.peek_now(policy, key, cost, self.clock_now())
    }

    /// [`peek`](Self::peek) at an explicit time.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let p = engine.add_policy("p", "3/minute")?;
    /// assert_eq!(engine.peek_at(p, b"k", 1, 1)?.remaining, 2);
    /// assert_eq!(engine.peek_at(p, b"k", 1, 1)?.remaining, 2); // nothing was charged
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn peek_at(
        &self,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now_ns: u64,
    ) -> Result<Decision, Error> {
        self.peek_now(policy, key, cost, Self::at(now_ns))
    }

    fn peek_now(
        &self,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now: Now,
    ) -> Result<Decision, Error> {
        let p = self.get(policy)?;
        let t = Self::target(p, policy, key, cost);
        Ok(self.decide(p, &t, now, Mode::Peek, Count::No))
    }

    /// Recent denials of a policy (also shadow-mode would-be denials), oldest
    /// first: those with a ticket of at least `since` still in the ring (it
    /// keeps the last 512). Follow a policy by passing the last ticket + 1.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let p = engine.add_policy("p", "1/minute")?;
    /// engine.check_at(p, b"k", 1, 1);
    /// engine.check_at(p, b"k", 1, 2);
    /// let events = engine.recent_denials(p, 0)?;
    /// assert_eq!(events.len(), 1);
    /// assert_eq!((events[0].time_ns, events[0].retry_after_ns), (2, 59_999_999_999));
    /// // Follow: ask for what came after the last ticket seen.
    /// assert!(engine.recent_denials(p, events[0].ticket + 1)?.is_empty());
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn recent_denials(&self, policy: PolicyId, since: u64) -> Result<Vec<DenyEvent>, Error> {
        let p = self.get(policy)?;
        self.intact()?;
        Ok(p.ring().read(since))
    }

    /// Gives back `cost` charged earlier to `key` (e.g. charge every login
    /// attempt, then refund the successful ones). Returns false if the key
    /// holds no state. A refund never takes a limit beyond its full quota.
    pub fn refund(&self, policy: PolicyId, key: &[u8], cost: u32) -> Result<bool, Error> {
        self.refund_now(policy, key, cost, self.clock_now())
    }

    /// [`refund`](Self::refund) at an explicit time.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let login = engine.add_policy("login", "3/minute")?;
    /// let d = engine.check_at(login, b"user:ann", 1, 1);
    /// let password_ok = true;
    /// if d.allowed && password_ok {
    ///     engine.refund_at(login, b"user:ann", 1, 1)?; // only failures count
    /// }
    /// assert_eq!(engine.peek_at(login, b"user:ann", 1, 1)?.remaining, 2);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn refund_at(
        &self,
        policy: PolicyId,
        key: &[u8],
        cost: u32,
        now_ns: u64,
    ) -> Result<bool, Error> {
        self.refund_now(policy, key, cost, Self::at(now_ns))
    }

    fn refund_now(&self, policy: PolicyId, key: &[u8], cost: u32, now: Now) -> Result<bool, Error> {
        let p = self.get(policy)?;
        p.rate_limit("release its permits instead")?;
        Ok(self.store.refund(&Self::target(p, policy, key, cost), now))
    }

    /// Forgets everything about `key` under `policy` (its quota is full
    /// again). Returns false if the key held no state.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let p = engine.add_policy("p", "1/hour")?;
    /// engine.check_at(p, b"k", 1, 1);
    /// assert!(!engine.check_at(p, b"k", 1, 1).allowed);
    /// assert!(engine.reset(p, b"k")?);
    /// assert!(engine.check_at(p, b"k", 1, 1).allowed);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn reset(&self, policy: PolicyId, key: &[u8]) -> Result<bool, Error> {
        let p = self.get(policy)?;
        self.store.reset(&Self::target(p, policy, key, 0))
    }

    /// Forgets every key of `policy` (for a concurrency policy: drops every
    /// permit), in this process's view of the table — for a shared engine,
    /// the file every process uses. A scan of the whole table, for tests
    /// and administration: keys inserted while it runs may stay. Returns
    /// how many keys held state.
    ///
    /// On a Redis engine it deletes the policy's state in Redis, on every
    /// master of a cluster (`SCAN` of the policy's key pattern a page at a
    /// time and `UNLINK`; overrides stay), for every host, and clears the
    /// local fallback tables and the deny cache; it returns how many keys
    /// Redis held. O(keys in Redis): for tests and administration, not the
    /// request path. Redis must answer ([`Error::Backend`] otherwise).
    ///
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let p = engine.add_policy("p", "1/minute")?;
    /// assert!(engine.check_at(p, b"a", 1, 1).allowed && engine.check_at(p, b"b", 1, 1).allowed);
    /// assert!(!engine.check_at(p, b"a", 1, 1).allowed);
    /// assert_eq!(engine.reset_all(p)?, 2);
    /// assert!(engine.check_at(p, b"a", 1, 1).allowed && engine.check_at(p, b"b", 1, 1).allowed);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn reset_all(&self, policy: PolicyId) -> Result<u64, Error> {
        let p = self.get(policy)?;
        self.intact()?;
        #[cfg(feature = "redis")]
        if let Some(r) = self.store.redis() {
            return r.reset_all(policy.0, &p.table);
        }
        Ok(p.table.reset_all())
    }

    /// Gives `key` a quota of `factor` times the policy's own (e.g. 10.0 for
    /// a partner API key), from now on and for every process sharing the
    /// engine. Applies to `gcra`, `fixed_window` and `sliding_window` limits
    /// (count and burst are scaled, at least 1); `sliding_log` limits keep
    /// their count. `factor` is kept in thousandths, from 0.001 to 16,777.
    ///
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let api = engine.add_policy("api", "10/second")?;
    /// engine.set_override(api, b"key:partner", 10.0)?;
    /// assert_eq!(engine.check_at(api, b"key:partner", 1, 1).limit, 100);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn set_override(&self, policy: PolicyId, key: &[u8], factor: f64) -> Result<(), Error> {
        let milli = (factor * 1000.0).round();
        if !(1.0..=crate::algo::MAX_COST as f64).contains(&milli) {
            return Err(Error::InvalidArgument(format!(
                "an override factor must be between 0.001 and {} (got {factor})",
                crate::algo::MAX_COST as f64 / 1000.0
            )));
        }
        let p = self.get(policy)?;
        self.intact()?;
        if p.table.layout.concurrency {
            return Err(Error::WrongPolicyKind(
                "overrides apply to rate limits".into(),
            ));
        }
        self.store
            .set_override(&Self::target(p, policy, key, 0), milli as u32)
    }

    /// Removes `key`'s override: it gets the policy's own quota again.
    pub fn clear_override(&self, policy: PolicyId, key: &[u8]) -> Result<(), Error> {
        let p = self.get(policy)?;
        self.intact()?;
        self.store.set_override(&Self::target(p, policy, key, 0), 0)
    }

    /// `key`'s override factor, if it has one.
    pub fn override_of(&self, policy: PolicyId, key: &[u8]) -> Result<Option<f64>, Error> {
        let p = self.get(policy)?;
        self.intact()?;
        Ok(
            match self.store.override_of(&Self::target(p, policy, key, 0))? {
                0 => None,
                m => Some(m as f64 / 1000.0),
            },
        )
    }

    /// The policy's counters (summed over shards) and occupancy.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let p = engine.add_policy("p", "1/minute")?;
    /// engine.check_at(p, b"k", 1, 1);
    /// engine.check_at(p, b"k", 1, 1);
    /// let s = engine.stats(p)?;
    /// assert_eq!((s.allowed, s.denied, s.occupancy), (1, 1, 1));
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn stats(&self, policy: PolicyId) -> Result<Stats, Error> {
        let p = self.get(policy)?;
        self.intact()?;
        let head = p.head();
        Ok(Stats {
            allowed: head.sum(Counter::Allowed),
            denied: head.sum(Counter::Denied),
            evictions: head.sum(Counter::Evictions),
            table_full: head.sum(Counter::TableFull),
            shadow_denied: head.sum(Counter::ShadowDenied),
            banned: head.sum(Counter::Banned),
            bans: head.sum(Counter::Bans),
            occupancy: p.table.occupancy(),
            capacity: p.table.capacity() as u64,
        })
    }

    /// Bytes of table memory the policy uses.
    pub fn policy_bytes(&self, policy: PolicyId) -> Result<usize, Error> {
        Ok(self.get(policy)?.table.bytes())
    }

    /// Bytes of memory the policy holds: its table, counters and deny-event
    /// ring (in a shared engine, its region of the file). An in-process
    /// region of 2 MiB or more is a mapping of its own (huge pages), not
    /// memory from the global allocator.
    pub fn policy_memory_bytes(&self, policy: PolicyId) -> Result<usize, Error> {
        Ok(std::mem::size_of_val(
            self.get(policy)?.table.memory().units(),
        ))
    }
}

/// [`Engine::check_rate`] refused the policy: see [`Engine::not_rate`].
/// (No payload: a small `Result` keeps the decision in registers.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NotRate;

#[cold]
#[inline(never)]
fn unknown_policy(policy: PolicyId) -> ! {
    panic!(
        "ratekeeper: policy id {} does not belong to this engine",
        policy.0
    )
}
