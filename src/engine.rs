//! The engine: named policies over tables, decisions, statistics.

use crate::abuse::Penalty;
use crate::algo::LimitParams;
use crate::clock::Clock;
use crate::events::{DenyEvent, Entry, Record, Ring, RingHead, RING_ENTRIES, RING_UNITS};
use crate::hash::{siphash13, Seed};
use crate::policy::{self, PolicySpec};
use crate::shm::{self, Mapping};
use crate::stats::{Counter, RegionHead, Stats, HEAD_UNITS};
use crate::table::memory::Memory;
use crate::table::{binds_over, Layout, Lease, Mode, Outcome, Table, Verdict, WhenFull};
use crate::Error;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Default number of keys a policy tracks.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Most policies one engine holds.
pub const MAX_POLICIES: usize = 256;

/// Options for [`Engine::new`].
///
/// ```
/// let opts = ratekeeper::EngineOptions { capacity: 1024, ..Default::default() };
/// let engine = ratekeeper::Engine::new(opts)?;
/// # Ok::<(), ratekeeper::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Keys each policy tracks unless the policy asks for another number
    /// (default 65,536). Rounded up to a whole number of buckets.
    pub capacity: usize,
    /// The clock `check` reads (default `CLOCK_MONOTONIC_COARSE`; see [`Clock`]).
    pub clock: Clock,
    /// Shared engines: the largest size in bytes the mapping may grow to
    /// as policies are added (default 1 GiB; pages are only touched when used).
    pub shared_max_bytes: u64,
    /// Shared engines: permission bits of a newly created file (default
    /// 0o600), and the widest an existing file may have: one with more bits
    /// (or owned by another user) is refused with [`Error::UnsafeFile`].
    pub shared_file_mode: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            capacity: DEFAULT_CAPACITY,
            clock: Clock::MonotonicCoarse,
            shared_max_bytes: 1 << 30,
            shared_file_mode: 0o600,
        }
    }
}

/// Per-policy options for [`Engine::add_policy_with`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Keys this policy tracks (default: the engine's `capacity`).
    pub capacity: Option<usize>,
    /// What happens when a new key finds its bucket full of live entries.
    pub when_full: WhenFull,
    /// Shadow mode: decisions are computed, counted and reported as if
    /// enforced, but every request passes (`Decision::shadow_denied` tells
    /// which would have been denied). For rolling out a new limit safely.
    pub shadow: bool,
    /// Adds a random extra of up to this many nanoseconds to the
    /// retry-after of a denial, so that synchronised clients spread out.
    /// Never makes retry-after shorter than the true wait.
    pub retry_jitter_ns: u64,
    /// Penalty box: ban a key that keeps getting denied (see [`Penalty`]).
    pub penalty: Option<Penalty>,
    /// Keep up to 80 bytes of the key in the deny-event ring (off by
    /// default: keys can be personal data; the key's hash is always kept).
    pub record_keys: bool,
}

impl PolicyOptions {
    /// The options of a policy as they must match across processes.
    fn behaviour(&self) -> (bool, u64, Option<Penalty>, bool) {
        (
            self.shadow,
            self.retry_jitter_ns,
            self.penalty,
            self.record_keys,
        )
    }
}

/// A policy of one engine. Cheap to copy; only meaningful to that engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId(pub(crate) u32);

impl PolicyId {
    /// The policy's index in its engine (also its C ABI id).
    pub fn index(self) -> u32 {
        self.0
    }
}

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
}

impl From<Verdict> for Decision {
    fn from(v: Verdict) -> Self {
        Decision {
            allowed: v.allowed,
            limit: v.limit,
            remaining: v.remaining,
            retry_after_ns: v.retry_after_ns,
            reset_after_ns: v.reset_after_ns,
            limit_index: v.limit_index,
            banned: v.banned,
            shadow_denied: false,
        }
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

/// A concurrency permit from [`Engine::acquire`]: give it back with
/// [`Engine::release`]; if you never do, it expires after the policy's TTL.
///
/// A permit is single-use: it is neither `Copy` nor `Clone`, and `release`
/// consumes it. Its lease word carries a nonce (see "Concurrency permits"
/// in the README), so even a permit rebuilt from its raw parts after it was
/// released (the C ABI's `rk_permit` is a plain value a caller can copy)
/// names that one lease only: releasing it again frees nothing, and never
/// another holder's permit.
///
/// ```compile_fail
/// # let engine = ratekeeper::Engine::new(Default::default()).unwrap();
/// # let p = engine.add_policy("p", "concurrency 1").unwrap();
/// let permit = engine.acquire(p, b"k").unwrap().1.unwrap();
/// engine.release(permit).unwrap();
/// engine.release(permit).unwrap(); // error: use of moved value
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    pub(crate) engine: u64,
    pub(crate) policy: u32,
    pub(crate) lease: Lease,
}

impl Permit {
    /// The policy the permit belongs to.
    pub fn policy(&self) -> PolicyId {
        PolicyId(self.policy)
    }

    /// The permit as plain words, for a caller that must keep it outside
    /// Rust (the C ABI): the policy index and four opaque words.
    pub fn into_raw_parts(self) -> (u32, [u64; 4]) {
        self.raw_parts()
    }

    /// A permit from [`into_raw_parts`](Self::into_raw_parts). Any value is
    /// accepted here; [`Engine::release`] refuses parts that name no lease
    /// of its own (`InvalidPermit`) and frees a lease only if the parts
    /// match it exactly.
    pub fn from_raw_parts(policy: u32, parts: [u64; 4]) -> Permit {
        let [engine, place, lo, hi] = parts;
        Permit {
            engine,
            policy,
            lease: Lease {
                bucket: place as u32,
                slot: (place >> 32) as u8,
                index: (place >> 40) as u16,
                word: u128::from(lo) | u128::from(hi) << 64,
            },
        }
    }

    pub(crate) fn raw_parts(&self) -> (u32, [u64; 4]) {
        let l = &self.lease;
        (
            self.policy,
            [
                self.engine,
                u64::from(l.bucket) | u64::from(l.slot) << 32 | u64::from(l.index) << 40,
                l.word as u64,
                (l.word >> 64) as u64,
            ],
        )
    }
}

/// A policy: its table and, in the units before the table, its
/// [`RegionHead`] (counters and wait words), on the heap or in a shared file.
struct Policy {
    name: String,
    spec: PolicySpec,
    canonical: String,
    table: Table,
    seed: Seed,
    options: PolicyOptions,
}

impl Policy {
    /// A policy over its region `mem` (see `region_units`).
    #[allow(clippy::too_many_arguments)]
    fn new(
        name: &str,
        canonical: String,
        spec: PolicySpec,
        layout: Layout,
        options: PolicyOptions,
        buckets: usize,
        mem: Memory,
        seed: Seed,
    ) -> Policy {
        let table = Table::with_overrides(
            layout,
            options.when_full,
            buckets,
            mem,
            TABLE_BASE,
            OVERRIDE_BASE,
            OVERRIDE_UNITS,
        );
        Policy {
            name: name.into(),
            canonical,
            spec,
            table,
            seed,
            options,
        }
    }

    /// The region's head: counters and wait words.
    #[inline(always)]
    fn head(&self) -> &RegionHead {
        let units = self.table.memory().units();
        debug_assert!(units.len() >= HEAD_UNITS);
        // SAFETY:
        // - every policy region starts with `HEAD_UNITS` units reserved for a
        //   `RegionHead` (see `region_units`), 128-byte aligned (heap regions
        //   are allocated with that alignment, shared regions are 4096-aligned);
        // - `RegionHead` is repr(C) of atomics, valid for all-zero bytes, and
        //   only ever accessed through atomic operations;
        // - the memory lives as long as the table that owns it.
        unsafe { &*(units.as_ptr() as *const RegionHead) }
    }
}

/// Keys of one policy that can carry a quota override.
pub const MAX_OVERRIDES: usize = 1024;
const OVERRIDE_UNITS: usize = MAX_OVERRIDES;
/// Where the deny-event ring starts in a region.
pub(crate) const RING_BASE: usize = HEAD_UNITS;
/// Where the override table starts in a region.
pub(crate) const OVERRIDE_BASE: usize = RING_BASE + RING_UNITS;
/// Where the table starts in a region.
pub(crate) const TABLE_BASE: usize = OVERRIDE_BASE + OVERRIDE_UNITS;

impl Policy {
    /// `Ok` for a rate limit; for a concurrency limit, the error that says
    /// to use `instead`.
    fn rate_limit(&self, instead: &str) -> Result<(), Error> {
        if self.table.layout.concurrency {
            return Err(Error::WrongPolicyKind(format!(
                "policy {:?} is a concurrency limit: {instead}",
                self.name
            )));
        }
        Ok(())
    }

    /// `Ok` for a concurrency limit; for a rate limit, the error that says
    /// to use `check`.
    fn concurrency_limit(&self) -> Result<(), Error> {
        if !self.table.layout.concurrency {
            return Err(Error::WrongPolicyKind(format!(
                "policy {:?} is a rate limit: use check",
                self.name
            )));
        }
        Ok(())
    }

    /// The deny-event ring.
    fn ring(&self) -> Ring<'_> {
        let units = self.table.memory().units();
        debug_assert!(units.len() >= RING_BASE + RING_UNITS);
        let base = units[RING_BASE..].as_ptr() as *const u8;
        // SAFETY:
        // - units RING_BASE..RING_BASE+RING_UNITS of every region are reserved
        //   for the ring (see `region_units`): a 128-byte `RingHead` followed
        //   by `RING_ENTRIES` 128-byte entries; the region is 128-byte aligned
        //   and HEAD_UNITS * 16 is a multiple of 128;
        // - both types are repr(C) of atomics, valid for all-zero bytes, and
        //   only accessed atomically; the memory lives as long as `self`.
        unsafe {
            Ring {
                head: &*(base as *const RingHead),
                entries: std::slice::from_raw_parts(base.add(128) as *const Entry, RING_ENTRIES),
            }
        }
    }
}

/// Units of a policy region: the head (counters, wait words), the
/// deny-event ring, the override table, then the table.
fn region_units(layout: &Layout, buckets: usize) -> usize {
    TABLE_BASE + Table::units_needed(layout, buckets)
}

/// `region_units`, or `None` if it overflows (`buckets` from a shared
/// file is hostile). A table's units grow linearly with its buckets.
fn region_units_checked(layout: &Layout, buckets: usize) -> Option<usize> {
    Table::units_needed(layout, 1)
        .checked_mul(buckets)?
        .checked_add(TABLE_BASE)
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
    seed: Seed,
    options: EngineOptions,
    policies: Box<[OnceLock<Policy>]>,
    count: AtomicU32,
    add_lock: Mutex<()>,
    shared: Option<Arc<Mapping>>,
    /// The Redis backend, for an engine from `open_redis`.
    #[cfg(feature = "redis")]
    remote: Option<Box<crate::redis::Remote>>,
}

/// Returns early with the Redis backend's answer when the engine has one.
macro_rules! via_redis {
    ($self:ident, $r:ident => $e:expr) => {
        #[cfg(feature = "redis")]
        if let Some($r) = $self.remote() {
            return $e;
        }
    };
}

#[cfg(feature = "redis")]
#[path = "redis/glue.rs"]
mod redis_glue;

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
        let mut id = [0u8; 8];
        crate::clock::fill_random(&mut id);
        Engine {
            id: u64::from_le_bytes(id) | 1,
            seed,
            options,
            policies: (0..MAX_POLICIES).map(|_| OnceLock::new()).collect(),
            count: AtomicU32::new(0),
            add_lock: Mutex::new(()),
            shared,
            #[cfg(feature = "redis")]
            remote: None,
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
        )?;
        Ok(Self::with(map.seed(), options, Some(map)))
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
        if let Some(r) = self.remote() {
            let remote = crate::redis::RemotePolicy::new(name, &parsed, &options)?;
            r.register(name, &describe(&parsed.to_string(), &options))?;
            let id = self.add_local(name, parsed, capacity, options)?;
            r.set_policy(id.0, remote);
            return Ok(id);
        }
        self.add_local(name, parsed, capacity, options)
    }

    /// `add_policy_with` on the local tables (in a shared file or on the
    /// heap), once the spec has parsed and the options are valid.
    fn add_local(
        &self,
        name: &str,
        parsed: PolicySpec,
        capacity: usize,
        options: PolicyOptions,
    ) -> Result<PolicyId, Error> {
        if let Some(map) = &self.shared {
            return self.add_shared(map, name, parsed, capacity, options);
        }
        let _guard = self.add_lock.lock().unwrap_or_else(|e| e.into_inner());
        // Acquire: policies below the count are set (pairs with the Release below).
        let n = self.count.load(Ordering::Acquire) as usize;
        for (i, slot) in self.policies[..n].iter().enumerate() {
            let p = slot.get().expect("policies below count are set");
            if p.name == name {
                if p.spec == parsed && p.options.behaviour() == options.behaviour() {
                    return Ok(PolicyId(i as u32));
                }
                return Err(Error::PolicyMismatch {
                    name: name.into(),
                    existing: describe(&p.canonical, &p.options),
                    requested: describe(&parsed.to_string(), &options),
                });
            }
        }
        if n >= MAX_POLICIES {
            return Err(Error::TooManyPolicies(MAX_POLICIES));
        }
        let layout = layout_for(&parsed, options.penalty)?;
        let buckets = Table::buckets_for(capacity);
        let mem = Memory::heap(region_units(&layout, buckets))?;
        let canonical = parsed.to_string();
        let policy = Policy::new(
            name,
            canonical,
            parsed,
            layout,
            options,
            buckets,
            mem,
            self.seed.for_policy(n as u32),
        );
        if self.policies[n].set(policy).is_err() {
            unreachable!("slot {n} is set only under the add lock");
        }
        // Release: publishes the policy to readers that load `count` with Acquire.
        self.count.store(n as u32 + 1, Ordering::Release);
        Ok(PolicyId(n as u32))
    }

    /// `add_policy` on a shared engine: find the policy in the file's
    /// directory, or append it, under the file lock.
    fn add_shared(
        &self,
        map: &Arc<Mapping>,
        name: &str,
        parsed: PolicySpec,
        capacity: usize,
        options: PolicyOptions,
    ) -> Result<PolicyId, Error> {
        let canonical = parsed.to_string();
        let _file = map.lock()?;
        map.check_intact()?;
        for i in 0..map.policy_count() {
            let e = map.entry_checked(i)?;
            if e.name == name {
                let existing = policy::parse(&e.spec).map_err(|err| {
                    Error::Corrupt(format!(
                        "policy {name:?} in the shared file has an unreadable spec {:?}: {err}",
                        e.spec
                    ))
                })?;
                if existing != parsed || e.options.behaviour() != options.behaviour() {
                    return Err(Error::PolicyMismatch {
                        name: name.into(),
                        existing: describe(&e.spec, &e.options),
                        requested: describe(&canonical, &options),
                    });
                }
                return self.attach(map, i, e);
            }
        }
        let layout = layout_for(&parsed, options.penalty)?;
        let buckets = Table::buckets_for(capacity);
        let bytes = region_units_checked(&layout, buckets)
            .and_then(|units| (units as u64).checked_mul(16))
            .ok_or_else(|| Error::OutOfMemory(format!("a table of {buckets} buckets")))?;
        let i = map.add_entry(name, &canonical, buckets as u64, &options, bytes)?;
        let e = map.entry_checked(i)?;
        self.attach(map, i, e)
    }

    /// Makes directory entry `i` of the shared file, as copied and checked
    /// by `entry_checked` (never read again from the mapping), usable in
    /// this process.
    fn attach(&self, map: &Arc<Mapping>, i: usize, e: shm::EntryCopy) -> Result<PolicyId, Error> {
        let _guard = self.add_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.policies[i].get().is_some() {
            return Ok(PolicyId(i as u32));
        }
        let shm::EntryCopy {
            name,
            spec,
            buckets,
            options,
            region_offset,
            region_bytes,
        } = e;
        let corrupt =
            |m: String| Error::Corrupt(format!("{}: policy {name:?}: {m}", map.path().display()));
        let parsed = policy::parse(&spec)
            .map_err(|err| corrupt(format!("unreadable spec {spec:?}: {err}")))?;
        let layout = layout_for(&parsed, options.penalty)?;
        let units = region_units_checked(&layout, buckets)
            .filter(|&units| {
                (units as u64)
                    .checked_mul(16)
                    .is_some_and(|b| b <= region_bytes)
            })
            .ok_or_else(|| {
                corrupt(format!(
                    "region of {region_bytes} bytes is too small for a table of {buckets} buckets"
                ))
            })?;
        let mem = Memory::Mapped {
            ptr: map.at(region_offset) as *const crate::sync::Atomic128,
            len: units,
            _owner: map.clone(),
        };
        let policy = Policy::new(
            &name,
            spec,
            parsed,
            layout,
            options,
            buckets,
            mem,
            self.seed.for_policy(i as u32),
        );
        let _ = self.policies[i].set(policy);
        // AcqRel: publishes the policy just set, like the Release in add_policy.
        self.count.fetch_max(i as u32 + 1, Ordering::AcqRel);
        Ok(PolicyId(i as u32))
    }

    /// The id of the policy named `name`, if any (for a shared engine,
    /// also a policy another process added).
    pub fn policy(&self, name: &str) -> Option<PolicyId> {
        self.policies()
            .into_iter()
            .find(|&id| self.get(id).is_ok_and(|p| p.name == name))
    }

    /// Ids of all policies, in the order they were added (for a shared
    /// engine, by any process; a corrupt entry is skipped).
    pub fn policies(&self) -> Vec<PolicyId> {
        if let Some(map) = &self.shared {
            if map.check_intact().is_err() {
                return Vec::new();
            }
            return (0..map.policy_count())
                .filter_map(|i| {
                    map.entry_checked(i)
                        .and_then(|e| self.attach(map, i, e))
                        .ok()
                })
                .collect();
        }
        // Acquire: pairs with the Release that published each policy.
        (0..self.count.load(Ordering::Acquire))
            .map(PolicyId)
            .collect()
    }

    /// The name of a policy.
    pub fn policy_name(&self, id: PolicyId) -> Result<&str, Error> {
        Ok(&self.get(id)?.name)
    }

    /// The parsed limits of a policy.
    pub fn policy_spec(&self, id: PolicyId) -> Result<&PolicySpec, Error> {
        Ok(&self.get(id)?.spec)
    }

    #[inline(always)]
    fn get(&self, id: PolicyId) -> Result<&Policy, Error> {
        self.policies
            .get(id.0 as usize)
            .and_then(|p| p.get())
            .ok_or(Error::UnknownPolicy(id.0))
    }

    #[inline(always)]
    fn hash(p: &Policy, key: &[u8]) -> u64 {
        match siphash13(p.seed, key) {
            0 => 1,
            h => h,
        }
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
        engine.remote = Some(Box::new(crate::redis::Remote::open(url, options)?));
        Ok(engine)
    }

    /// The Redis backend's counters (`None` for a local engine).
    #[cfg(feature = "redis")]
    pub fn redis_stats(&self) -> Option<crate::RedisStats> {
        self.remote().map(|r| r.stats())
    }

    /// The engine's current time (its clock, in nanoseconds). On a Redis
    /// engine, `check` uses Redis's clock instead; this is the local clock
    /// of the fallback tables.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        self.options.clock.now_ns()
    }

    /// Checks and charges `cost` for `key` at the engine clock's time.
    ///
    /// # Panics
    /// If `policy` does not belong to this engine (as indexing out of bounds
    /// does); [`try_check_at`](Self::try_check_at) returns an error instead.
    #[inline]
    pub fn check(&self, policy: PolicyId, key: &[u8], cost: u32) -> Decision {
        via_redis!(self, r => self.remote_check(r, policy, key, cost, None));
        self.check_at(policy, key, cost, self.now_ns())
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
        via_redis!(self, r => self.remote_check(r, policy, key, cost, Some(now_ns)));
        let Some(p) = self.policies.get(policy.0 as usize).and_then(OnceLock::get) else {
            unknown_policy(policy)
        };
        let charge = !p.table.layout.concurrency;
        let h = Self::hash(p, key);
        Self::decide(p, key, h, cost as u64, now_ns, charge)
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
        let p = self.get(policy)?;
        p.rate_limit("use acquire/release")?;
        Ok(self.check_at(policy, key, cost, now_ns))
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
    /// may be visible to other requests for that instant.
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
        via_redis!(self, r => self.remote_check_many(r, items, Some(now_ns)));
        self.local_check_many_at(items, now_ns)
    }

    /// `check_many_at` on the local tables.
    fn local_check_many_at(
        &self,
        items: &[CheckItem<'_>],
        now_ns: u64,
    ) -> Result<(Decision, usize), Error> {
        if items.is_empty() {
            return Err(Error::InvalidArgument(
                "check_many needs at least one item".into(),
            ));
        }
        let mut best: Option<(Decision, usize)> = None;
        // Items (of the first 64) that deny: each such denial is a strike.
        let mut denied = 0u64;
        // Each key is hashed once (the first 64 items' hashes are kept).
        let mut hashes = [0u64; 64];
        let hash_of = |hashes: &[u64; 64], i: usize, p: &Policy, key: &[u8]| {
            if i < 64 {
                hashes[i]
            } else {
                Self::hash(p, key)
            }
        };
        let better = |d: &Decision, b: &Decision| {
            binds_over(
                (d.allowed, d.remaining, d.retry_after_ns),
                (b.allowed, b.remaining, b.retry_after_ns),
            )
        };
        for (i, it) in items.iter().enumerate() {
            let p = self.get(it.policy)?;
            p.rate_limit("use acquire/release")?;
            let h = Self::hash(p, it.key);
            if i < 64 {
                hashes[i] = h;
            }
            let (cost, key) = (it.cost as u64, it.key);
            let d = Self::decide(p, key, h, cost, now_ns, false);
            if !d.allowed && i < 64 {
                denied |= 1 << i;
            }
            if best.as_ref().is_none_or(|(b, _)| better(&d, b)) {
                best = Some((d, i));
            }
        }
        let (d, i) = best.expect("items is not empty");
        if !d.allowed {
            // Count the denial against the binding item only.
            let p = self.get(items[i].policy)?;
            p.head().add(Counter::Denied, 1);
            Self::record(
                p,
                &d,
                items[i].key,
                hash_of(&hashes, i, p, items[i].key),
                now_ns,
            );
            // A strike that starts a ban makes the ban the batch's answer.
            let mut answer = (d, i);
            for (j, it) in items.iter().enumerate().take(64) {
                let p = self.get(it.policy)?;
                if denied >> j & 1 == 1 && p.table.layout.penalty.is_some() {
                    let outcome =
                        p.table
                            .decide(hashes[j], it.cost as u64, now_ns, Mode::StrikeIfDenied);
                    if let Outcome::Decided { verdict, .. } = outcome {
                        if verdict.new_ban {
                            p.head().add(Counter::Bans, 1);
                            answer = (verdict.into(), j);
                        }
                    }
                }
            }
            if answer.0.banned {
                self.get(items[answer.1].policy)?
                    .head()
                    .add(Counter::Banned, 1);
            }
            return Ok(answer);
        }
        let mut best: Option<(Decision, usize)> = None;
        for (i, it) in items.iter().enumerate() {
            let p = self.get(it.policy)?;
            let (h, cost, key) = (hash_of(&hashes, i, p, it.key), it.cost as u64, it.key);
            let d = Self::decide(p, key, h, cost, now_ns, true);
            if !d.allowed {
                for (j, done) in items[..i].iter().enumerate() {
                    let p = self.get(done.policy)?;
                    p.table
                        .refund(hash_of(&hashes, j, p, done.key), done.cost as u64, now_ns);
                }
                return Ok((d, i));
            }
            if best.as_ref().is_none_or(|(b, _)| better(&d, b)) {
                best = Some((d, i));
            }
        }
        Ok(best.expect("items is not empty"))
    }

    /// [`check_many_at`](Self::check_many_at) at the engine clock's time.
    pub fn check_many(&self, items: &[CheckItem<'_>]) -> Result<(Decision, usize), Error> {
        via_redis!(self, r => self.remote_check_many(r, items, None));
        self.check_many_at(items, self.now_ns())
    }

    /// What `check` would decide now, without charging anything.
    pub fn peek(&self, policy: PolicyId, key: &[u8], cost: u32) -> Result<Decision, Error> {
        via_redis!(self, r => self.remote_peek(r, policy, key, cost, None));
        self.peek_at(policy, key, cost, self.now_ns())
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
        via_redis!(self, r => self.remote_peek(r, policy, key, cost, Some(now_ns)));
        let p = self.get(policy)?;
        let h = Self::hash(p, key);
        Ok(Self::decide(p, key, h, cost as u64, now_ns, false))
    }

    /// Checks `key` (hash `h`) on the policy's table, charging if `charge`,
    /// and concludes the decision (counters, options, deny events).
    #[inline(always)]
    fn decide(p: &Policy, key: &[u8], h: u64, cost: u64, now: u64, charge: bool) -> Decision {
        Self::conclude(
            p,
            p.table
                .decide(h, cost, now, if charge { Mode::Charge } else { Mode::Peek }),
            key,
            h,
            cost,
            now,
            charge,
        )
    }

    #[inline(always)]
    fn conclude(
        p: &Policy,
        outcome: Outcome,
        key: &[u8],
        h: u64,
        cost: u64,
        now: u64,
        count: bool,
    ) -> Decision {
        let d: Decision = match outcome {
            Outcome::Decided { verdict, evicted } => {
                let head = p.head();
                if evicted {
                    head.add(Counter::Evictions, 1);
                }
                let d = verdict.into();
                if count {
                    Self::tally(p, &d, verdict.new_ban);
                }
                d
            }
            Outcome::Full { retry_after_ns } => {
                if count {
                    p.head().add(Counter::TableFull, 1);
                }
                let fresh = p.table.fresh_verdict(h, cost, now);
                match p.table.when_full {
                    WhenFull::FailOpen => fresh.into(),
                    // Fail closed, or an evicting policy that may not evict
                    // (every key of the bucket holds a live lease).
                    WhenFull::FailClosed | WhenFull::Evict => Decision {
                        allowed: false,
                        remaining: 0,
                        retry_after_ns: retry_after_ns.max(1),
                        reset_after_ns: retry_after_ns.max(1),
                        ..fresh.into()
                    },
                }
            }
        };
        Self::finish(p, d, key, h, now, count)
    }

    /// Counts a decision in the policy's counters.
    fn tally(p: &Policy, d: &Decision, new_ban: bool) {
        let head = p.head();
        head.add(
            if d.allowed {
                Counter::Allowed
            } else {
                Counter::Denied
            },
            1,
        );
        if d.banned {
            head.add(Counter::Banned, 1);
        }
        if new_ban {
            head.add(Counter::Bans, 1);
        }
    }

    /// Applies a policy's options to a decision: retry jitter and shadow
    /// mode on a denial, which is also recorded in the deny-event ring.
    fn finish(p: &Policy, mut d: Decision, key: &[u8], h: u64, now: u64, count: bool) -> Decision {
        if !d.allowed {
            if p.options.retry_jitter_ns > 0 && d.retry_after_ns != u64::MAX {
                d.retry_after_ns = d
                    .retry_after_ns
                    .saturating_add(crate::abuse::jitter(p.options.retry_jitter_ns));
            }
            if p.options.shadow {
                if count {
                    p.head().add(Counter::ShadowDenied, 1);
                }
                d.allowed = true;
                d.shadow_denied = true;
            }
            if count {
                Self::record(p, &d, key, h, now);
            }
        }
        d
    }

    #[cold]
    fn record(p: &Policy, d: &Decision, key: &[u8], h: u64, now: u64) {
        p.ring().push(&Record {
            time_ns: now,
            key_hash: h,
            key: p.options.record_keys.then_some(key),
            retry_after_ns: d.retry_after_ns,
            limit_index: d.limit_index,
            banned: d.banned,
            shadow: d.shadow_denied,
        });
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
        via_redis!(self, r => self.remote_refund(r, policy, key, cost, None));
        self.refund_at(policy, key, cost, self.now_ns())
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
        via_redis!(self, r => self.remote_refund(r, policy, key, cost, Some(now_ns)));
        let p = self.get(policy)?;
        p.rate_limit("release its permits instead")?;
        Ok(p.table.refund(Self::hash(p, key), cost as u64, now_ns))
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
        via_redis!(self, r => self.remote_reset(r, policy, key));
        let p = self.get(policy)?;
        Ok(p.table.reset(Self::hash(p, key)))
    }

    /// Takes a permit of a concurrency policy if one is free now. The
    /// decision says how many remain; the permit is `None` when denied.
    pub fn acquire(
        &self,
        policy: PolicyId,
        key: &[u8],
    ) -> Result<(Decision, Option<Permit>), Error> {
        via_redis!(self, r => self.remote_acquire(r, policy, key, None));
        self.acquire_at(policy, key, self.now_ns())
    }

    /// [`acquire`](Self::acquire) at an explicit time.
    pub fn acquire_at(
        &self,
        policy: PolicyId,
        key: &[u8],
        now_ns: u64,
    ) -> Result<(Decision, Option<Permit>), Error> {
        via_redis!(self, r => self.remote_acquire(r, policy, key, Some(now_ns)));
        self.local_acquire_at(policy, key, now_ns)
    }

    /// `acquire_at` on the local tables.
    fn local_acquire_at(
        &self,
        policy: PolicyId,
        key: &[u8],
        now_ns: u64,
    ) -> Result<(Decision, Option<Permit>), Error> {
        let p = self.get(policy)?;
        p.concurrency_limit()?;
        // SAFETY: getpid has no preconditions and cannot fail.
        let holder = unsafe { libc::getpid() } as u32;
        let h = Self::hash(p, key);
        let (outcome, lease) = p.table.acquire(h, now_ns, holder);
        let d = Self::conclude(p, outcome, key, h, 1, now_ns, true);
        let permit = lease.map(|lease| Permit {
            engine: self.id,
            policy: policy.0,
            lease,
        });
        Ok((d, permit))
    }

    /// [`acquire`](Self::acquire), waiting up to `timeout` for a permit to
    /// be released or to expire. Sleeps (on a futex), never spins.
    ///
    /// Returns at once with a final decision: a permit; an admission
    /// without a permit (a policy that fails open whose table has no room
    /// for the key, or shadow mode), which waiting would only repeat; or a
    /// denial that can never turn (`retry_after_ns == u64::MAX`). A denial
    /// with a finite retry-after is waited on even if it lies beyond the
    /// deadline, since a release can come sooner. `timeout` is real time
    /// (`CLOCK_MONOTONIC`), whatever clock the engine decides with.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let reports = engine.add_policy("reports", "concurrency 1")?;
    /// let (_, permit) = engine.acquire(reports, b"user:1")?;
    /// let permit = permit.expect("free");
    /// // Taken: a short wait times out (no permit, denied decision).
    /// let (d, none) = engine.acquire_timeout(reports, b"user:1", std::time::Duration::from_millis(5))?;
    /// assert!(!d.allowed && none.is_none());
    /// assert!(engine.release(permit)?);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn acquire_timeout(
        &self,
        policy: PolicyId,
        key: &[u8],
        timeout: Duration,
    ) -> Result<(Decision, Option<Permit>), Error> {
        via_redis!(self, r => self.remote_acquire_timeout(r, policy, key, timeout));
        let p = self.get(policy)?;
        // The deadline is kept in real time: a coarse engine clock lags by up
        // to a tick (waits of the remaining few ns would repeat until it
        // ticks), and a manual one may never reach it.
        let timeout_ns = timeout.as_nanos().min(u64::MAX as u128) as u64;
        let deadline = crate::clock::now_ns().saturating_add(timeout_ns);
        // A wait for an expiry shorter than the engine clock's resolution
        // would wake before the clock shows it and try again at once.
        let floor = self.options.clock.resolution_ns().max(1_000);
        loop {
            // SeqCst (here and in `release`): the waiter's "read word, then
            // register as waiter" and the releaser's "bump word, then read
            // waiters" must not both miss each other.
            let cells = &p.head().cells;
            let seen = cells.released.load(Ordering::SeqCst);
            let (d, permit) = self.acquire_at(policy, key, self.now_ns())?;
            let left = deadline.saturating_sub(crate::clock::now_ns());
            let settled = permit.is_some() || d.allowed || d.retry_after_ns == u64::MAX;
            if settled || left == 0 {
                return Ok((d, permit));
            }
            let wait_ns = left.min(d.retry_after_ns.max(floor));
            cells.waiters.fetch_add(1, Ordering::SeqCst);
            crate::wait::wait(&cells.released, seen, wait_ns);
            cells.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Gives a permit back. `Ok(false)` if it had already expired (its
    /// lease may now belong to someone else, who keeps it), was released
    /// already (a permit rebuilt with [`Permit::from_raw_parts`]), or its
    /// key was reset. Never frees a lease the permit does not name.
    pub fn release(&self, permit: Permit) -> Result<bool, Error> {
        if permit.engine != self.id {
            return Err(Error::InvalidPermit);
        }
        #[cfg(feature = "redis")]
        if let Some(r) = self.remote() {
            if let Some(released) = self.remote_release(r, &permit)? {
                return Ok(released);
            }
        }
        let p = self.get(PolicyId(permit.policy))?;
        if !p.table.lease_in_range(&permit.lease) {
            return Err(Error::InvalidPermit);
        }
        let released = p.table.release(&permit.lease);
        if released {
            let cells = &p.head().cells;
            cells.released.fetch_add(1, Ordering::SeqCst);
            if cells.waiters.load(Ordering::SeqCst) > 0 {
                crate::wait::wake_all(&cells.released);
            }
        }
        Ok(released)
    }

    /// Releases every permit of `policy` held by process `pid` (for a
    /// supervisor that saw a worker die). Returns how many were released.
    ///
    /// Only a dead process's permits: `pid` must name no live process in
    /// this process's PID namespace (no process at all, or a zombie — a
    /// process that exited and is waiting to be reaped). A lease records
    /// the holder's pid only, so once the pid is reused by a live process,
    /// freeing "its" permits could free that process's. Refused with
    /// [`Error::InvalidArgument`], releasing nothing: a live pid (also one
    /// this process may not signal), this process's own pid (release its
    /// permits with [`release`](Self::release)), 0, and numbers Linux never
    /// gives a process (2²² or more).
    ///
    /// Every process sharing an engine's file must share one PID namespace
    /// (and with the supervisor calling this): a pid from another namespace
    /// names some other process here, or none.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let jobs = engine.add_policy("jobs", "concurrency 2")?;
    /// let (_, permit) = engine.acquire(jobs, b"k")?;
    /// // This process is alive: its permits are not for release_holder.
    /// assert!(engine.release_holder(jobs, std::process::id()).is_err());
    /// assert!(engine.release(permit.unwrap())?);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn release_holder(&self, policy: PolicyId, pid: u32) -> Result<u64, Error> {
        via_redis!(self, _r => Err(Error::Unsupported(
            "release_holder works on shared-memory engines; Redis permits of a dead process expire by their TTL".into()
        )));
        let p = self.get(policy)?;
        dead_holder(pid)?;
        let n = p.table.release_holder(pid);
        if n > 0 {
            let cells = &p.head().cells;
            cells.released.fetch_add(1, Ordering::SeqCst);
            crate::wait::wake_all(&cells.released);
        }
        Ok(n)
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
        via_redis!(self, r => self.remote_set_override(r, policy, key, milli as u32));
        p.table.set_override(Self::hash(p, key), milli as u32)
    }

    /// Removes `key`'s override: it gets the policy's own quota again.
    pub fn clear_override(&self, policy: PolicyId, key: &[u8]) -> Result<(), Error> {
        via_redis!(self, r => self.remote_set_override(r, policy, key, 0));
        let p = self.get(policy)?;
        self.intact()?;
        p.table.set_override(Self::hash(p, key), 0)
    }

    /// `key`'s override factor, if it has one.
    pub fn override_of(&self, policy: PolicyId, key: &[u8]) -> Result<Option<f64>, Error> {
        #[cfg(feature = "redis")]
        if let Some(r) = self.remote() {
            let milli = self.remote_override_of(r, policy, key)?;
            return Ok((milli > 0).then(|| milli as f64 / 1000.0));
        }
        let p = self.get(policy)?;
        self.intact()?;
        Ok(match p.table.override_of(Self::hash(p, key)) {
            0 => None,
            m => Some(m as f64 / 1000.0),
        })
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
        Ok(Stats {
            allowed: p.head().sum(Counter::Allowed),
            denied: p.head().sum(Counter::Denied),
            evictions: p.head().sum(Counter::Evictions),
            table_full: p.head().sum(Counter::TableFull),
            shadow_denied: p.head().sum(Counter::ShadowDenied),
            banned: p.head().sum(Counter::Banned),
            bans: p.head().sum(Counter::Bans),
            occupancy: p.table.occupancy(),
            capacity: p.table.capacity() as u64,
        })
    }

    /// Bytes of table memory the policy uses.
    pub fn policy_bytes(&self, policy: PolicyId) -> Result<usize, Error> {
        Ok(self.get(policy)?.table.bytes())
    }
}

/// `Ok` if `pid` may be a dead process whose permits `release_holder` can
/// free: a Linux pid (1 to 2²² − 1), not this process, and naming no live
/// process in this PID namespace (none, or a zombie).
fn dead_holder(pid: u32) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::InvalidArgument(format!(
            "release_holder: {why}; it frees only the permits of a process that has died"
        )))
    };
    if pid == 0 || pid > crate::table::PID_MASK {
        return refuse(format!(
            "{pid} is not a process id (1 to {})",
            crate::table::PID_MASK
        ));
    }
    if pid == std::process::id() {
        return refuse(format!(
            "pid {pid} is this process (give its permits back with release)"
        ));
    }
    // SAFETY: signal 0 sends nothing: kill only checks that the process
    // exists and may be signalled. `pid` is in 1..2^22, so it names one
    // process, never a process group (negative) or every process (-1).
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if alive && !dead_state(pid) {
        return refuse(format!(
            "process {pid} is alive (it may have reused a dead holder's pid, or \
             the holder is in another PID namespace, which release_holder cannot tell)"
        ));
    }
    Ok(())
}

/// True if `/proc/<pid>/stat` shows a process that has exited (`Z`ombie,
/// or `X`, dead). Unreadable: false (taken as alive).
fn dead_state(pid: u32) -> bool {
    // "pid (comm) S ...": comm may hold ')' and spaces, so the state is the
    // byte after the last ')' and a space.
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .iter()
        .rposition(|&b| b == b')')
        .and_then(|i| stat.get(i + 2));
    matches!(state, Some(b'Z' | b'X'))
}

#[cold]
#[inline(never)]
fn unknown_policy(policy: PolicyId) -> ! {
    panic!(
        "ratekeeper: policy id {} does not belong to this engine",
        policy.0
    )
}

/// A spec with its behaviour options, for error messages.
fn describe(spec: &str, o: &PolicyOptions) -> String {
    let mut s = spec.to_string();
    if o.shadow {
        s.push_str(" (shadow)");
    }
    if o.retry_jitter_ns > 0 {
        s.push_str(&format!(" (retry jitter {} ns)", o.retry_jitter_ns));
    }
    if let Some(p) = &o.penalty {
        s.push_str(&format!(
            " (ban {} ns after {} denials in {} ns, up to {} ns)",
            p.ban_ns, p.strikes, p.window_ns, p.max_ban_ns
        ));
    }
    s
}

/// Validates a parsed spec against the engine's limits and lays it out.
pub(crate) fn layout_for(spec: &PolicySpec, penalty: Option<Penalty>) -> Result<Layout, Error> {
    let mut offset = 0;
    let mut limits = Vec::with_capacity(spec.limits.len());
    for l in &spec.limits {
        let p = LimitParams::new(l, offset)?;
        offset += p.words();
        limits.push(p);
    }
    if penalty.is_some() && spec.is_concurrency() {
        return Err(Error::Unsupported(
            "a penalty box needs a rate limit, not a concurrency limit".into(),
        ));
    }
    Ok(Layout::new(limits, penalty))
}
