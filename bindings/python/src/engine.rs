//! `Handle` (one engine, closable at any time from any thread) and
//! `Checker`, the base class of `ratekeeper.Policy`.

use crate::decision::new_decision;
use crate::{
    cost_of, engine_closed, engine_error, key_bytes, now_of, status_error, with_key, KeyBytes,
    Origin,
};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PySequence, PyTuple};
use ratekeeper::{
    CheckItem, Clock, Engine, EngineOptions, OnFailure, Penalty, PolicyId, PolicyOptions,
    RedisOptions, WhenFull,
};
use std::cell::UnsafeCell;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// `Engine.redis_stats()`'s values, in `_REDIS_STATS_FIELDS` order.
type RedisCounters = (bool, u64, u64, u64, u64, u64, u64, u64);

/// A policy's name, canonical spec and limits (algorithm, count,
/// period_ns, burst).
type PolicyInfo = (String, String, Vec<(&'static str, u64, u64, u64)>);

/// `ratekeeper.errors.STATUS_CONCURRENCY_IN_BATCH`.
const STATUS_CONCURRENCY_IN_BATCH: i64 = -2;

/// A value that is only read or written with the GIL held: a plain load on
/// the hot path, where a lock or an atomic reference count would cost more
/// than the check itself.
struct GilCell<T>(UnsafeCell<T>);

// SAFETY:
// - every access goes through `with` or `replace`, which take a `Python`
//   token: the calling thread holds the GIL, so no two threads touch the
//   cell at once (an abi3 module only loads into a CPython with a GIL:
//   the free-threaded builds have no stable ABI);
// - `with`'s callers run only Rust code in the closure (engine calls that
//   never call into Python), so the GIL cannot be released, and `replace`
//   cannot run, while a reference from `with` is alive;
// - `T: Send`: the value may be dropped by whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    fn new(value: T) -> Self {
        GilCell(UnsafeCell::new(value))
    }

    /// Calls `f` with the value. `f` must not call into Python.
    #[inline(always)]
    fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&T) -> R) -> R {
        // SAFETY: see `impl Sync`: the GIL is held (`_py`) and `f` runs no
        // Python code, so no `replace` overlaps this shared borrow.
        f(unsafe { &*self.0.get() })
    }

    /// Replaces the value, returning the old one.
    fn replace(&self, _py: Python<'_>, value: T) -> T {
        // SAFETY: see `impl Sync`: the GIL is held and no `with` closure is
        // running (they never release it), so this is the only borrow.
        std::mem::replace(unsafe { &mut *self.0.get() }, value)
    }
}

/// What a `Handle` and its `Checker`s share: the engine (None once closed).
struct Shared {
    engine: GilCell<Option<Arc<Engine>>>,
    /// A Redis engine: every call waits for the network, so every call
    /// releases the GIL; and it refuses use after a fork.
    redis: bool,
    /// The process that opened it.
    pid: u32,
}

impl Shared {
    /// Runs `f` on the engine: with the GIL held on an in-process or shared
    /// engine, released on a Redis engine (while `f` waits for Redis, the
    /// engine is kept alive by a reference of its own: a `close()` meanwhile
    /// frees it when `f` returns).
    #[inline(always)]
    fn run<R: Send>(&self, py: Python<'_>, f: impl FnOnce(&Engine) -> R + Send) -> PyResult<R> {
        if self.redis {
            let engine = self.redis_engine(py)?;
            return Ok(py.detach(|| f(&engine)));
        }
        self.engine
            .with(py, |e| match e {
                Some(engine) => Ok(f(engine)),
                None => Err(()),
            })
            .map_err(|()| closed(py))
    }

    /// Runs `f` on the engine with the GIL released (blocking calls).
    fn run_detached<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Engine) -> R + Send,
    ) -> PyResult<R> {
        let engine = if self.redis {
            self.redis_engine(py)?
        } else {
            self.engine
                .with(py, |e| e.clone())
                .ok_or_else(|| closed(py))?
        };
        Ok(py.detach(|| f(&engine)))
    }

    #[cold]
    fn redis_engine(&self, py: Python<'_>) -> PyResult<Arc<Engine>> {
        let engine = self
            .engine
            .with(py, |e| e.clone())
            .ok_or_else(|| closed(py))?;
        if std::process::id() != self.pid {
            // The parent's pooled connections are the parent's: replies to
            // two processes on one socket would be mixed up.
            return Err(engine_closed(
                py,
                &format!(
                    "this Redis engine was opened in process {}, before a fork: open one in each \
                     process (ratekeeper.redis_engine, or the ratekeeper.gunicorn post_fork hook)",
                    self.pid
                ),
            ));
        }
        Ok(engine)
    }
}

#[cold]
#[inline(never)]
fn closed(py: Python<'_>) -> PyErr {
    engine_closed(py, "the engine is closed (Engine.close() was called)")
}

fn clock_of(clock: u8) -> PyResult<Clock> {
    match clock {
        0 => Ok(Clock::Monotonic),
        1 => Ok(Clock::MonotonicCoarse),
        _ => Err(PyValueError::new_err(format!("unknown clock {clock}"))),
    }
}

fn engine_options(
    capacity: Option<usize>,
    clock: u8,
    max_bytes: Option<u64>,
    mode: Option<u32>,
) -> PyResult<EngineOptions> {
    let mut o = EngineOptions {
        clock: clock_of(clock)?,
        ..EngineOptions::default()
    };
    if let Some(c) = capacity {
        o.capacity = c;
    }
    if let Some(b) = max_bytes {
        o.shared_max_bytes = b;
    }
    if let Some(m) = mode {
        o.shared_file_mode = m;
    }
    Ok(o)
}

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// One engine: in process, in a shared file or in Redis. Internal: use
/// `ratekeeper.Engine`.
#[pyclass(frozen, module = "ratekeeper._ratekeeper")]
pub struct Handle {
    shared: Arc<Shared>,
}

impl Handle {
    fn adopt(engine: Engine, redis: bool) -> Handle {
        Handle {
            shared: Arc::new(Shared {
                engine: GilCell::new(Some(Arc::new(engine))),
                redis,
                pid: std::process::id(),
            }),
        }
    }
}

#[pymethods]
impl Handle {
    /// An in-process engine.
    #[staticmethod]
    #[pyo3(signature = (capacity, clock))]
    fn local(py: Python<'_>, capacity: Option<usize>, clock: u8) -> PyResult<Handle> {
        let options = engine_options(capacity, clock, None, None)?;
        let engine = Engine::new(options).map_err(|e| engine_error(py, "Engine", &e))?;
        Ok(Handle::adopt(engine, false))
    }

    /// The shared engine of the file `path` (bytes, as `os.fsencode`).
    #[staticmethod]
    #[pyo3(signature = (path, capacity, clock, max_bytes, mode))]
    fn shared(
        py: Python<'_>,
        path: &[u8],
        capacity: Option<usize>,
        clock: u8,
        max_bytes: Option<u64>,
        mode: Option<u32>,
    ) -> PyResult<Handle> {
        let options = engine_options(capacity, clock, max_bytes, mode)?;
        let path = path_of(path);
        let engine = py
            .detach(|| Engine::open_shared(&path, options))
            .map_err(|e| engine_error(py, "Engine.shared", &e))?;
        Ok(Handle::adopt(engine, false))
    }

    /// A Redis engine (every duration in milliseconds; validated by the
    /// Python layer).
    #[staticmethod]
    #[pyo3(signature = (url, prefix, on_failure, connect_timeout_ms, timeout_ms, retry_min_ms, retry_max_ms,
                        deny_cache, pool_size, fallback_path, capacity, clock, max_bytes, mode, hash_secret,
                        log_switches, tls_ca_file, cluster))]
    #[allow(clippy::too_many_arguments)]
    fn redis(
        py: Python<'_>,
        url: &str,
        prefix: &str,
        on_failure: u8,
        connect_timeout_ms: u64,
        timeout_ms: u64,
        retry_min_ms: Option<u64>,
        retry_max_ms: Option<u64>,
        deny_cache: usize,
        pool_size: Option<usize>,
        fallback_path: Option<&[u8]>,
        capacity: Option<usize>,
        clock: u8,
        max_bytes: Option<u64>,
        mode: Option<u32>,
        hash_secret: Option<Vec<u8>>,
        log_switches: bool,
        tls_ca_file: Option<&[u8]>,
        cluster: bool,
    ) -> PyResult<Handle> {
        let defaults = RedisOptions::default();
        let options = RedisOptions {
            engine: engine_options(capacity, clock, max_bytes, mode)?,
            prefix: prefix.to_owned(),
            connect_timeout: Duration::from_millis(connect_timeout_ms),
            timeout: Duration::from_millis(timeout_ms),
            pool_size: pool_size.unwrap_or(defaults.pool_size),
            on_failure: match on_failure {
                0 => OnFailure::Local,
                1 => OnFailure::Open,
                _ => OnFailure::Closed,
            },
            fallback_path: fallback_path.map(path_of),
            deny_cache,
            retry_min: retry_min_ms.map_or(defaults.retry_min, Duration::from_millis),
            retry_max: retry_max_ms.map_or(defaults.retry_max, Duration::from_millis),
            log_switches,
            hash_secret,
            tls_ca_file: tls_ca_file.map(path_of),
            cluster,
        };
        let url = url.to_owned();
        let engine = py
            .detach(move || Engine::open_redis(&url, options))
            .map_err(|e| engine_error(py, "Engine.redis", &e))?;
        Ok(Handle::adopt(engine, true))
    }

    /// Frees the engine (after the calls in progress in other threads
    /// return). Idempotent.
    fn close(&self, py: Python<'_>) {
        let engine = self.shared.engine.replace(py, None);
        // A Redis engine joins its threads and closes sockets: not under the GIL.
        if self.shared.redis {
            py.detach(move || drop(engine));
        } else {
            drop(engine);
        }
    }

    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        self.shared.engine.with(py, |e| e.is_none())
    }

    /// The engine clock's time now (`Engine::now_ns`): what a call without
    /// `now_ns` uses on an in-process or shared engine. On a Redis engine,
    /// the local clock of its fallback tables (its checks read Redis's).
    fn now_ns(&self, py: Python<'_>) -> PyResult<u64> {
        self.shared.run(py, |e| e.now_ns())
    }

    #[getter]
    fn is_redis(&self) -> bool {
        self.shared.redis
    }

    /// Adds (or finds) a policy; returns its id.
    #[pyo3(signature = (name, spec, capacity, when_full, shadow, record_keys, retry_jitter_ns, penalty))]
    #[allow(clippy::too_many_arguments)]
    fn add_policy(
        &self,
        py: Python<'_>,
        name: &str,
        spec: &str,
        capacity: Option<usize>,
        when_full: u8,
        shadow: bool,
        record_keys: bool,
        retry_jitter_ns: u64,
        penalty: Option<(u32, u64, u64, u64)>,
    ) -> PyResult<u32> {
        let options = PolicyOptions {
            capacity,
            when_full: match when_full {
                0 => WhenFull::Evict,
                1 => WhenFull::FailOpen,
                _ => WhenFull::FailClosed,
            },
            shadow,
            retry_jitter_ns,
            penalty: penalty.map(|(strikes, window_ns, ban_ns, max_ban_ns)| Penalty {
                strikes,
                window_ns,
                ban_ns,
                max_ban_ns,
            }),
            record_keys,
        };
        self.shared
            .run_detached(py, |e| e.add_policy_with(name, spec, options))?
            .map(PolicyId::index)
            .map_err(|e| engine_error(py, "Engine.policy", &e))
    }

    /// The id of the policy `name`.
    fn find_policy(&self, py: Python<'_>, name: &str) -> PyResult<u32> {
        match self.shared.run(py, |e| e.policy(name))? {
            Some(id) => Ok(id.index()),
            None => Err(status_error(
                py,
                ratekeeper::ffi::status::rk_status::RK_ERR_UNKNOWN_POLICY as i64,
                &format!("Engine.find_policy: no policy named {name:?}"),
            )),
        }
    }

    /// The ids of every policy, in the order they were added.
    fn policy_ids(&self, py: Python<'_>) -> PyResult<Vec<u32>> {
        self.shared.run(py, |e| {
            e.policies().into_iter().map(PolicyId::index).collect()
        })
    }

    /// The Redis counters, or None for another engine.
    fn redis_stats(&self, py: Python<'_>) -> PyResult<Option<RedisCounters>> {
        Ok(self.shared.run(py, |e| e.redis_stats())?.map(|s| {
            (
                s.up,
                s.round_trips,
                s.errors,
                s.failovers,
                s.recoveries,
                s.fallback_decisions,
                s.deny_cache_hits,
                s.script_loads,
            )
        }))
    }

    /// Checks several `(policy, key[, cost])` items as one request: all
    /// charged or none. Returns the binding decision and its index.
    #[pyo3(signature = (items, now_ns=None))]
    fn check_many<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        now_ns: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Bound<'py, PyAny>, usize)> {
        let now = now_of(now_ns)?;
        // The key objects are held here, so their bytes stay valid below.
        let mut held: Vec<(PolicyId, KeyBytes<'py>, u32)> = Vec::new();
        let mut add = |i: usize, item: &Bound<'py, PyAny>| -> PyResult<()> {
            let item = item.cast::<PyTuple>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "check_many: item {i} must be a tuple (policy, key[, cost])"
                ))
            })?;
            let n = item.len();
            if !(2..=3).contains(&n) {
                return Err(PyTypeError::new_err(format!(
                    "check_many: item {i} must be a tuple (policy, key[, cost])"
                )));
            }
            let policy = item.get_item(0)?;
            let policy = policy.cast::<Checker>().map_err(|_| {
                PyTypeError::new_err(format!(
                    "check_many: item {i}: expected a Policy, not {}",
                    policy
                        .get_type()
                        .name()
                        .map(|s| s.to_string())
                        .unwrap_or_default()
                ))
            })?;
            let checker = policy.get();
            if !Arc::ptr_eq(&checker.shared, &self.shared) {
                return Err(PyValueError::new_err(format!(
                    "check_many: item {i}: the policy belongs to another engine"
                )));
            }
            if checker.concurrency {
                return Err(status_error(py, STATUS_CONCURRENCY_IN_BATCH, ""));
            }
            let key = key_bytes(&item.get_item(1)?)?.checked()?;
            let cost = if n == 3 {
                cost_of(Some(&item.get_item(2)?))?
            } else {
                1
            };
            held.push((checker.id, key, cost));
            Ok(())
        };
        if let Ok(list) = items.cast::<PyList>() {
            for (i, item) in list.iter().enumerate() {
                add(i, &item)?;
            }
        } else if let Ok(tuple) = items.cast::<PyTuple>() {
            for (i, item) in tuple.iter().enumerate() {
                add(i, &item)?;
            }
        } else {
            let seq = items.cast::<PySequence>()?;
            for i in 0..seq.len()? {
                add(i, &seq.get_item(i)?)?;
            }
        }
        if held.is_empty() {
            return Err(PyValueError::new_err("check_many needs at least one item"));
        }
        let batch: Vec<CheckItem<'_>> = held
            .iter()
            .map(|(policy, key, cost)| CheckItem {
                policy: *policy,
                key: key.as_bytes(),
                cost: *cost,
            })
            .collect();
        let result = self.shared.run(py, |e| match now {
            Some(t) => e.check_many_at(&batch, t),
            None => e.check_many(&batch),
        })?;
        let (d, index) = result.map_err(|e| engine_error(py, "Engine.check_many", &e))?;
        Ok((new_decision(py, &d)?, index))
    }
}

/// One policy of one engine: the base class of `ratekeeper.Policy`, whose
/// `check`, `peek` and `refund` run here.
#[pyclass(frozen, subclass, module = "ratekeeper._ratekeeper")]
pub struct Checker {
    shared: Arc<Shared>,
    id: PolicyId,
    concurrency: bool,
}

impl Checker {
    #[cold]
    #[inline(never)]
    fn wrong_kind(&self, py: Python<'_>, what: &str) -> PyErr {
        let name = self
            .shared
            .engine
            .with(py, |e| {
                e.as_ref()
                    .and_then(|e| e.policy_name(self.id).ok().map(str::to_owned))
            })
            .unwrap_or_else(|| "?".into());
        engine_error(
            py,
            "Policy.check",
            &ratekeeper::Error::WrongPolicyKind(format!("policy {name:?} is {what}")),
        )
    }

    /// Calls `f` with the engine and the key's bytes.
    #[inline(always)]
    fn with_engine_key<R: Send>(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        f: impl FnOnce(&Engine, &[u8]) -> R + Send,
    ) -> PyResult<R> {
        with_key(key, |k| self.shared.run(py, |e| f(e, k)))
    }

    fn fail<T>(
        &self,
        py: Python<'_>,
        origin: Origin,
        r: Result<T, ratekeeper::Error>,
    ) -> PyResult<T> {
        r.map_err(|e| engine_error(py, origin, &e))
    }
}

#[pymethods]
impl Checker {
    /// `Checker(engine, policy_id, ...)`: `engine` is a `ratekeeper.Engine`
    /// (its `_handle`); further arguments are the subclass's.
    #[new]
    #[pyo3(signature = (engine, policy_id, *_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        engine: &Bound<'_, PyAny>,
        policy_id: u32,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, pyo3::types::PyDict>>,
    ) -> PyResult<Checker> {
        let handle = engine.getattr("_handle")?;
        let handle = handle.cast::<Handle>()?.get();
        let shared = handle.shared.clone();
        let found = shared.run(py, |e| {
            let id = e.policies().into_iter().find(|p| p.index() == policy_id)?;
            let concurrency = e.policy_spec(id).ok()?.is_concurrency();
            Some((id, concurrency))
        })?;
        let Some((id, concurrency)) = found else {
            return Err(engine_error(
                py,
                "Policy",
                &ratekeeper::Error::UnknownPolicy(policy_id),
            ));
        };
        Ok(Checker {
            shared,
            id,
            concurrency,
        })
    }

    /// The policy's id within its engine.
    #[getter]
    fn id(&self) -> u32 {
        self.id.index()
    }

    /// Whether it is a concurrency policy (`acquire`/`release`).
    #[getter]
    fn is_concurrency(&self) -> bool {
        self.concurrency
    }

    /// Checks `key` and charges `cost` if every limit allows.
    #[pyo3(signature = (key, cost=None, now_ns=None))]
    fn check<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
        now_ns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cost = cost_of(cost)?;
        let now = now_of(now_ns)?;
        if self.concurrency {
            return Err(self.wrong_kind(py, "a concurrency limit: use acquire/release"));
        }
        let id = self.id;
        // Policies are never removed and `id` was found in this engine, so
        // `check`/`check_at` cannot panic on it.
        let d = self.with_engine_key(py, key, |e, k| match now {
            None => e.check(id, k, cost),
            Some(t) => e.check_at(id, k, cost, t),
        })?;
        new_decision(py, &d)
    }

    /// What `check` would decide, changing nothing.
    #[pyo3(signature = (key, cost=None, now_ns=None))]
    fn peek<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
        now_ns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let cost = cost_of(cost)?;
        let now = now_of(now_ns)?;
        let id = self.id;
        let r = self.with_engine_key(py, key, |e, k| match now {
            None => e.peek(id, k, cost),
            Some(t) => e.peek_at(id, k, cost, t),
        })?;
        let d = self.fail(py, "Policy.peek", r)?;
        new_decision(py, &d)
    }

    /// Gives back `cost`; whether the key held state.
    #[pyo3(signature = (key, cost=None, now_ns=None))]
    fn refund(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        cost: Option<&Bound<'_, PyAny>>,
        now_ns: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let cost = cost_of(cost)?;
        let now = now_of(now_ns)?;
        let id = self.id;
        let r = self.with_engine_key(py, key, |e, k| match now {
            None => e.refund(id, k, cost),
            Some(t) => e.refund_at(id, k, cost, t),
        })?;
        self.fail(py, "Policy.refund", r)
    }

    /// Forgets everything about `key` (for a concurrency policy, drops its
    /// permits): its quota is full again. Returns whether the key held any
    /// state (was below its full quota, banned, or holding permits) just
    /// before the reset.
    fn reset(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let id = self.id;
        let r = self.with_engine_key(py, key, |e, k| e.reset(id, k))?;
        self.fail(py, "Policy.reset", r)
    }

    /// Forgets every key of this policy (a scan of its table; on a Redis
    /// engine, of its keys in Redis, for every host); how many held state.
    /// Releases the GIL while it waits for Redis.
    fn reset_all(&self, py: Python<'_>) -> PyResult<u64> {
        let id = self.id;
        let r = self.shared.run(py, |e| e.reset_all(id))?;
        self.fail(py, "Policy.reset_all", r)
    }

    /// `(name, spec, [(algorithm, count, period_ns, burst), ...])`.
    fn _info(&self, py: Python<'_>) -> PyResult<PolicyInfo> {
        let id = self.id;
        let r = self.shared.run(py, |e| {
            let name = e.policy_name(id)?.to_owned();
            let spec = e.policy_spec(id)?;
            let limits = spec
                .limits
                .iter()
                .map(|l| (l.algorithm.name(), l.count, l.period_ns, l.burst))
                .collect();
            Ok((name, spec.to_string(), limits))
        })?;
        self.fail(py, "Policy", r)
    }

    /// `(allowed, denied, evictions, table_full, occupancy, capacity,
    /// shadow_denied, banned, bans)`.
    #[allow(clippy::type_complexity)]
    fn _stats(&self, py: Python<'_>) -> PyResult<(u64, u64, u64, u64, u64, u64, u64, u64, u64)> {
        let id = self.id;
        let r = self.shared.run(py, |e| e.stats(id))?;
        let s = self.fail(py, "Policy.stats", r)?;
        Ok((
            s.allowed,
            s.denied,
            s.evictions,
            s.table_full,
            s.occupancy,
            s.capacity,
            s.shadow_denied,
            s.banned,
            s.bans,
        ))
    }

    fn _set_override(&self, py: Python<'_>, key: &Bound<'_, PyAny>, factor: f64) -> PyResult<()> {
        let id = self.id;
        let r = self.with_engine_key(py, key, |e, k| e.set_override(id, k, factor))?;
        self.fail(py, "Policy.set_override", r)
    }

    /// Removes `key`'s override: it gets the policy's own quota again, at
    /// once (clearing a key without one does nothing).
    fn clear_override(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let id = self.id;
        let r = self.with_engine_key(py, key, |e, k| e.clear_override(id, k))?;
        self.fail(py, "Policy.clear_override", r)
    }

    /// `key`'s override factor (as kept: thousandths), or None if it has none.
    #[pyo3(name = "override")]
    fn override_of(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let id = self.id;
        let r = self.with_engine_key(py, key, |e, k| e.override_of(id, k))?;
        self.fail(py, "Policy.override", r)
    }

    /// `[(ticket, time_ns, key_hash, key or None, retry_after_ns,
    /// limit_index, banned, shadow), ...]`.
    #[allow(clippy::type_complexity)]
    fn _recent_denials(
        &self,
        py: Python<'_>,
        since: u64,
    ) -> PyResult<Vec<(u64, u64, u64, Option<Vec<u8>>, u64, u32, bool, bool)>> {
        let id = self.id;
        let r = self.shared.run(py, |e| e.recent_denials(id, since))?;
        let events = self.fail(py, "Policy.recent_denials", r)?;
        Ok(events
            .into_iter()
            .map(|e| {
                (
                    e.ticket,
                    e.time_ns,
                    e.key_hash,
                    e.key,
                    e.retry_after_ns,
                    e.limit_index,
                    e.banned,
                    e.shadow,
                )
            })
            .collect())
    }

    /// One try (`timeout_ns` None: now; else waiting up to that long, the
    /// GIL released): `(decision, raw permit)`, the permit `None` when
    /// denied and `(policy, None)` for a fail-open admission without a lease.
    #[pyo3(signature = (key, timeout_ns, now_ns))]
    #[allow(clippy::type_complexity)]
    fn _acquire<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'_, PyAny>,
        timeout_ns: Option<u64>,
        now_ns: Option<u64>,
    ) -> PyResult<(Bound<'py, PyAny>, Option<(u32, Option<[u64; 4]>)>)> {
        let id = self.id;
        let r = with_key(key, |k| match (timeout_ns, now_ns) {
            (_, Some(t)) => self.shared.run(py, |e| e.acquire_at(id, k, t)),
            (Some(ns), None) if ns > 0 => self
                .shared
                .run_detached(py, |e| e.acquire_timeout(id, k, Duration::from_nanos(ns))),
            _ => self.shared.run(py, |e| e.acquire(id, k)),
        })?;
        let (d, permit) = self.fail(py, "Policy.acquire", r)?;
        let raw = match permit {
            Some(p) => {
                let (policy, parts) = p.into_raw_parts();
                Some((policy, Some(parts)))
            }
            None if d.allowed => Some((id.index(), None)),
            None => None,
        };
        Ok((new_decision(py, &d)?, raw))
    }

    /// Releases a raw permit from `_acquire`; whether this call released
    /// its lease.
    fn _release(&self, py: Python<'_>, raw: (u32, Option<[u64; 4]>)) -> PyResult<bool> {
        let (policy, parts) = raw;
        let Some(parts) = parts else {
            return Ok(false); // admitted without a lease: nothing to give back
        };
        let permit = ratekeeper::Permit::from_raw_parts(policy, parts);
        let r = self.shared.run(py, move |e| e.release(permit))?;
        self.fail(py, "Permit.release", r)
    }

    /// Releases every permit of this policy held by the dead process `pid`.
    fn _release_holder(&self, py: Python<'_>, pid: u32) -> PyResult<u64> {
        let id = self.id;
        let r = self.shared.run(py, |e| e.release_holder(id, pid))?;
        self.fail(py, "Policy.release_holder", r)
    }
}
