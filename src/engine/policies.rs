//! The policies of an engine: each one's name, spec and options, and the
//! memory region that holds its counters, deny-event ring, overrides and
//! table — on the heap, or in a shared file where every process that adds
//! the same policy attaches the same region.

use super::{Engine, PolicyId};
use crate::abuse::Penalty;
use crate::algo::LimitParams;
use crate::events::{Entry, Ring, RingHead, SamplerWord, RING_ENTRIES, RING_UNITS, SAMPLER_SLOTS};
use crate::hash::{siphash13, Seed};
use crate::options::{options_from_stored, options_to_stored, PolicyOptions, MAX_POLICIES};
use crate::policy::{self, PolicySpec};
use crate::shm::{self, Mapping};
use crate::stats::{RegionHead, HEAD_UNITS};
use crate::table::memory::Memory;
use crate::table::{Layout, Table};
use crate::Error;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Keys of one policy that can carry a quota override.
pub const MAX_OVERRIDES: usize = 1024;
const OVERRIDE_UNITS: usize = MAX_OVERRIDES;

/// A policy's region, in 16-byte units:
///
/// ```text
/// [ head: counters, wait words | deny-event ring | override table | table ]
/// 0                            RING_BASE         OVERRIDE_BASE    TABLE_BASE
/// ```
///
/// Where the deny-event ring starts in a region.
pub(crate) const RING_BASE: usize = HEAD_UNITS;
/// Where the override table starts in a region.
pub(crate) const OVERRIDE_BASE: usize = RING_BASE + RING_UNITS;
/// Where the table starts in a region.
pub(crate) const TABLE_BASE: usize = OVERRIDE_BASE + OVERRIDE_UNITS;

/// A policy: its table and, in the units before the table, its
/// [`RegionHead`] (counters and wait words) and deny-event ring.
pub(super) struct Policy {
    pub name: String,
    pub spec: PolicySpec,
    /// The spec as written back (`PolicySpec`'s `Display`).
    pub canonical: String,
    pub table: Table,
    pub seed: Seed,
    pub options: PolicyOptions,
}

impl Policy {
    /// A policy over its region `mem` (see [`region_units`]).
    fn new(
        name: &str,
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
            canonical: spec.to_string(),
            spec,
            table,
            seed,
            options,
        }
    }

    /// The 64-bit hash of `key` under this policy (never 0: 0 marks an
    /// empty slot).
    #[inline(always)]
    pub fn hash(&self, key: &[u8]) -> u64 {
        match siphash13(self.seed, key) {
            0 => 1,
            h => h,
        }
    }

    /// The region's head: counters and wait words.
    #[inline(always)]
    pub fn head(&self) -> &RegionHead {
        let units = self.table.memory().units();
        debug_assert!(units.len() >= HEAD_UNITS);
        // SAFETY:
        // - every policy region starts with `HEAD_UNITS` units reserved for a
        //   `RegionHead` (see `region_units`), 128-byte aligned (heap regions
        //   are allocated with that alignment, shared regions are 4096-aligned);
        // - `RegionHead` is repr(C) of atomics, valid for all-zero bytes, and
        //   only ever accessed through atomic operations (a CPU line's words
        //   through `rseq::add`'s single `add`, exclusive to the CPU it
        //   runs on);
        // - the memory lives as long as the table that owns it.
        unsafe { &*(units.as_ptr() as *const RegionHead) }
    }

    /// The deny-event ring.
    #[inline(always)]
    pub fn ring(&self) -> Ring<'_> {
        let units = self.table.memory().units();
        debug_assert!(units.len() >= RING_BASE + RING_UNITS);
        let base = units[RING_BASE..].as_ptr() as *const u8;
        // SAFETY:
        // - units RING_BASE..RING_BASE+RING_UNITS of every region are reserved
        //   for the ring (see `region_units`): a 128-byte `RingHead`,
        //   `RING_ENTRIES` 128-byte entries, then `SAMPLER_SLOTS` 8-byte
        //   sampler words; the region is 128-byte aligned and HEAD_UNITS * 16
        //   is a multiple of 128;
        // - the three types are repr(C) atomics, valid for all-zero bytes
        //   (and for any bytes: a hostile file can only make the sampler
        //   suppress or write an event), and only accessed atomically; the
        //   memory lives as long as `self`.
        unsafe {
            Ring {
                head: &*(base as *const RingHead),
                entries: std::slice::from_raw_parts(base.add(128) as *const Entry, RING_ENTRIES),
                sampler: std::slice::from_raw_parts(
                    base.add(128 + RING_ENTRIES * 128) as *const SamplerWord,
                    SAMPLER_SLOTS,
                ),
            }
        }
    }

    /// `Ok` for a rate limit; for a concurrency limit, the error that says
    /// to use `instead`.
    pub fn rate_limit(&self, instead: &str) -> Result<(), Error> {
        if self.table.layout.concurrency {
            return Err(self.kind_error(instead));
        }
        Ok(())
    }

    /// The error of a rate-limit call on this concurrency policy, which
    /// needs `instead`.
    #[cold]
    #[inline(never)]
    pub fn kind_error(&self, instead: &str) -> Error {
        Error::WrongPolicyKind(format!(
            "policy {:?} is a concurrency limit: {instead}",
            self.name
        ))
    }

    /// `Ok` for a concurrency limit; for a rate limit, the error that says
    /// to use `check`.
    pub fn concurrency_limit(&self) -> Result<(), Error> {
        if !self.table.layout.concurrency {
            return Err(Error::WrongPolicyKind(format!(
                "policy {:?} is a rate limit: use check",
                self.name
            )));
        }
        Ok(())
    }
}

/// Units of a policy region: the head (counters, wait words), the
/// deny-event ring, the override table, then the table.
fn region_units(layout: &Layout, buckets: usize) -> usize {
    TABLE_BASE + Table::units_needed(layout, buckets)
}

/// `region_units`, or `None` if it overflows or `buckets` is no valid
/// count for the layout (`buckets` from a shared file is hostile).
fn region_units_checked(layout: &Layout, buckets: usize) -> Option<usize> {
    Table::units_needed_checked(layout, buckets)?.checked_add(TABLE_BASE)
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

impl Engine {
    /// The policy `id`, or `UnknownPolicy`.
    #[inline(always)]
    pub(super) fn get(&self, id: PolicyId) -> Result<&Policy, Error> {
        // A match, not `ok_or`: the error is built only when the policy is
        // missing (built eagerly, it was dropped on every call and its drop
        // glue showed in the C ABI's profile).
        match self.policies.get(id.0 as usize).and_then(|p| p.get()) {
            Some(policy) => Ok(policy),
            None => Err(Error::UnknownPolicy(id.0)),
        }
    }

    /// `add_policy_with` on the local tables (in a shared file or on the
    /// heap), once the spec has parsed and the options are valid.
    pub(super) fn add_local(
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
                    existing: p.options.describe(&p.canonical),
                    requested: options.describe(&parsed.to_string()),
                });
            }
        }
        if n >= MAX_POLICIES {
            return Err(Error::TooManyPolicies(MAX_POLICIES));
        }
        let layout = layout_for(&parsed, options.penalty)?;
        let buckets = Table::buckets_for(&layout, capacity);
        let mem = Memory::heap(region_units(&layout, buckets))?;
        let seed = self.seed.for_policy(n as u32);
        let policy = Policy::new(name, parsed, layout, options, buckets, mem, seed);
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
                let stored = options_from_stored(&e.options).map_err(|what| {
                    Error::Corrupt(format!(
                        "{}: policy entry {i}: {what}",
                        map.path().display()
                    ))
                })?;
                if existing != parsed || stored.behaviour() != options.behaviour() {
                    return Err(Error::PolicyMismatch {
                        name: name.into(),
                        existing: stored.describe(&e.spec),
                        requested: options.describe(&canonical),
                    });
                }
                return self.attach(map, i, e);
            }
        }
        let layout = layout_for(&parsed, options.penalty)?;
        let buckets = Table::buckets_for(&layout, capacity);
        let bytes = region_units_checked(&layout, buckets)
            .and_then(|units| (units as u64).checked_mul(16))
            .ok_or_else(|| Error::OutOfMemory(format!("a table of {buckets} buckets")))?;
        let stored = options_to_stored(&options);
        let i = map.add_entry(name, &canonical, buckets as u64, &stored, bytes)?;
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
        let options = options_from_stored(&options).map_err(|what| corrupt(what.into()))?;
        let parsed = policy::parse(&spec)
            .map_err(|err| corrupt(format!("unreadable spec {spec:?}: {err}")))?;
        let layout = layout_for(&parsed, options.penalty)?;
        let units = region_units_checked(&layout, buckets).ok_or_else(|| {
            corrupt(format!(
                "{buckets} buckets is not a valid table size for the spec {spec:?}"
            ))
        })?;
        if (units as u64)
            .checked_mul(16)
            .is_none_or(|b| b > region_bytes)
        {
            return Err(corrupt(format!(
                "region of {region_bytes} bytes is too small for a table of {buckets} buckets"
            )));
        }
        let mem = Memory::mapped(
            map.at(region_offset) as *const crate::sync::Atomic128,
            units,
            map.clone(),
        );
        let seed = self.seed.for_policy(i as u32);
        let policy = Policy::new(&name, parsed, layout, options, buckets, mem, seed);
        let _ = self.policies[i].set(policy);
        // AcqRel: publishes the policy just set, like the Release in add_local.
        self.count.fetch_max(i as u32 + 1, Ordering::AcqRel);
        Ok(PolicyId(i as u32))
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
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::stats::Counter;
    use crate::{Engine, EngineOptions};

    /// An engine's checks count in the CPU lines wherever this thread's
    /// restartable sequence runs (x86_64, glibc 2.35+, not under valgrind
    /// or qemu-user), and in the atomic shards elsewhere: so the engine
    /// resolves the rseq area when it is created, and the check path adds
    /// through it. The totals are exact either way.
    #[test]
    fn an_engines_counts_land_in_the_cpu_lines_where_the_sequence_runs() {
        let e = Engine::new(EngineOptions::default()).unwrap();
        let p = e.add_policy("cpu-lines", "10/hour").unwrap();
        let t = 1_000_000_000;
        let allowed = (0..1000)
            .filter(|_| e.check_at(p, b"k", 1, t).allowed)
            .count() as u64;
        assert_eq!(allowed, 10);
        let s = e.stats(p).unwrap();
        assert_eq!((s.allowed, s.denied), (10, 990));
        let head = e.get(p).unwrap().head();
        let lines = head.in_cpu_lines(Counter::Allowed) + head.in_cpu_lines(Counter::Denied);
        assert_eq!(lines, if crate::rseq::active() { 1000 } else { 0 });
    }
}
