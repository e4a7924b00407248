//! Policies: adding, finding and describing them; their statistics.

use super::args::{self, Failure, Out};
use super::boundary;
use super::engine::rk_engine;
use super::status::rk_status;
use crate::{Algorithm, PolicyId, PolicyOptions, WhenFull};
use std::ffi::c_char;
use std::mem::{offset_of, size_of};

/// The most policies one engine holds.
pub const RK_MAX_POLICIES: u32 = 256;
const _: () = assert!(RK_MAX_POLICIES as usize == crate::MAX_POLICIES);

/// The longest policy name, in bytes (without the NUL). A buffer of
/// `RK_MAX_POLICY_NAME_LEN + 1` bytes holds any name.
pub const RK_MAX_POLICY_NAME_LEN: u32 = 128;

/// What a policy does when a new key finds no room in its table (the values
/// of `rk_policy_options.when_full`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rk_when_full {
    /// Evict the entry that would expire soonest (the default).
    RK_WHEN_FULL_EVICT = 0,
    /// Let the request through, uncounted (counted in `rk_stats.table_full`).
    RK_WHEN_FULL_FAIL_OPEN = 1,
    /// Deny the request (counted in `rk_stats.table_full`).
    RK_WHEN_FULL_FAIL_CLOSED = 2,
}

/// Per-policy options for `rk_policy_add_with`. Versioned like
/// `rk_engine_options`: start from `rk_policy_options_init(&opts)`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rk_policy_options {
    /// `sizeof(rk_policy_options)` as the caller knows it (set by
    /// `rk_policy_options_init`). Must cover at least `struct_size` and
    /// `capacity`.
    pub struct_size: u32,
    /// Keys this policy tracks; 0 (the default) means the engine's capacity.
    pub capacity: u64,
    /// An `rk_when_full` value (default `RK_WHEN_FULL_EVICT`).
    pub when_full: u32,
}

const MIN_POLICY_OPTIONS_SIZE: usize = offset_of!(rk_policy_options, capacity) + size_of::<u64>();

/// The algorithm of one limit (the values of `rk_limit.algorithm`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rk_algorithm {
    /// Token bucket of capacity `burst` refilled at `count/period`.
    RK_ALGORITHM_GCRA = 0,
    /// At most `count` per window; a window opens at the first request
    /// after the previous one ended.
    RK_ALGORITHM_FIXED_WINDOW = 1,
    /// Weighted count of the previous and current aligned windows.
    RK_ALGORITHM_SLIDING_WINDOW = 2,
    /// Exact: at most `count` in any interval of length `period`.
    RK_ALGORITHM_SLIDING_LOG = 3,
    /// At most `count` permits in flight; `period_ns` is the lease TTL.
    RK_ALGORITHM_CONCURRENCY = 4,
}

/// One limit of a policy, as parsed from its spec (for HTTP headers such as
/// `RateLimit-Policy: 10;w=60`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_limit {
    /// An `rk_algorithm` value.
    pub algorithm: u32,
    /// Requests (cost units) per period; for concurrency, permits in flight.
    pub count: u64,
    /// The period in nanoseconds (for concurrency: the lease TTL).
    pub period_ns: u64,
    /// GCRA bucket capacity (= `count` for every other algorithm).
    pub burst: u64,
}

/// A policy's statistics at one moment (counters summed over shards).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_stats {
    /// Requests allowed (and charged).
    pub allowed: u64,
    /// Requests denied.
    pub denied: u64,
    /// Live entries evicted to make room for new keys.
    pub evictions: u64,
    /// Requests that found no room and were failed open or closed.
    pub table_full: u64,
    /// Keys currently tracked.
    pub occupancy: u64,
    /// Keys the table can track.
    pub capacity: u64,
}

/// # Safety
/// `p` is NULL or points to an `rk_policy_options` of at least
/// `p->struct_size` initialised bytes.
unsafe fn read_options(p: *const rk_policy_options) -> Result<PolicyOptions, Failure> {
    let mut options = PolicyOptions::default();
    if p.is_null() {
        return Ok(options);
    }
    if !p.is_aligned() {
        return Err(Failure::Misaligned("opts"));
    }
    // SAFETY: `p` is non-NULL and aligned; the rest is this function's contract.
    let size = unsafe { args::struct_size(p, MIN_POLICY_OPTIONS_SIZE, "opts")? };
    if let Some(capacity) = args::versioned_field!(p, size, rk_policy_options, capacity: u64) {
        if capacity != 0 {
            options.capacity = Some(usize::try_from(capacity).map_err(|_| {
                Failure::Invalid(format!("opts->capacity {capacity} is too large"))
            })?);
        }
    }
    if let Some(when_full) = args::versioned_field!(p, size, rk_policy_options, when_full: u32) {
        options.when_full = match when_full {
            0 => WhenFull::Evict,
            1 => WhenFull::FailOpen,
            2 => WhenFull::FailClosed,
            other => {
                return Err(Failure::Invalid(format!(
                    "opts->when_full is {other}; expected RK_WHEN_FULL_EVICT (0), \
                     RK_WHEN_FULL_FAIL_OPEN (1) or RK_WHEN_FULL_FAIL_CLOSED (2)"
                )))
            }
        };
    }
    Ok(options)
}

/// Fills `*opts` with every default and sets `opts->struct_size` to
/// `sizeof(rk_policy_options)`. NULL `opts` does nothing. Thread-safe.
///
/// # Safety
/// `opts` is NULL or valid for writing an `rk_policy_options`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_options_init(opts: *mut rk_policy_options) {
    boundary::run_infallible("rk_policy_options_init", (), || {
        // SAFETY: forwarded from this function's contract.
        if let Ok(Some(out)) = unsafe { Out::optional(opts, "opts") } {
            out.write(rk_policy_options {
                struct_size: size_of::<rk_policy_options>() as u32,
                capacity: 0,
                when_full: rk_when_full::RK_WHEN_FULL_EVICT as u32,
            });
        }
    })
}

/// Adds a policy named `name` with the limits of `spec` (e.g.
/// `"5/minute;20/hour"`, `"sliding_log 3/10 seconds"`, `"concurrency 4"`;
/// see the README for the grammar) and stores its id in `*policy_out`.
/// Adding a name again with the same limits (in any spelling) returns the
/// existing id.
///
/// `name` (1 to `RK_MAX_POLICY_NAME_LEN` bytes) and `spec` are
/// NUL-terminated UTF-8, only read during the call. The id is valid for
/// the engine's lifetime. Thread-safe (concurrent adds are serialised).
///
/// Errors: `RK_ERR_NULL_POINTER`, `RK_ERR_INVALID_UTF8`, `RK_ERR_PARSE`
/// (the message names the byte position and what was expected),
/// `RK_ERR_UNSUPPORTED_POLICY`, `RK_ERR_POLICY_MISMATCH` (the name exists
/// with other limits), `RK_ERR_TOO_MANY_POLICIES`, `RK_ERR_INVALID_ARGUMENT`
/// (empty or too long name), `RK_ERR_OUT_OF_MEMORY`. `*policy_out` is
/// written only on success.
///
/// # Safety
/// `engine` is NULL or a live engine; `name` and `spec` are NULL or
/// NUL-terminated strings; `policy_out` is NULL or valid for writing a
/// `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_add(
    engine: *mut rk_engine,
    name: *const c_char,
    spec: *const c_char,
    policy_out: *mut u32,
) -> rk_status {
    // SAFETY: forwarded from this function's contract (NULL options are defaults).
    unsafe {
        add(
            "rk_policy_add",
            engine,
            name,
            spec,
            std::ptr::null(),
            policy_out,
        )
    }
}

/// `rk_policy_add` with options of the policy's own: its capacity and what
/// it does when its table is full. `opts` may be NULL (defaults); else it
/// must have been set up by `rk_policy_options_init`. Besides the errors of
/// `rk_policy_add`: `RK_ERR_INVALID_ARGUMENT` for a bad `struct_size` or
/// `when_full`.
///
/// # Safety
/// As for `rk_policy_add`; `opts` is NULL or points to an
/// `rk_policy_options` of at least `opts->struct_size` initialised bytes.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_add_with(
    engine: *mut rk_engine,
    name: *const c_char,
    spec: *const c_char,
    opts: *const rk_policy_options,
    policy_out: *mut u32,
) -> rk_status {
    // SAFETY: forwarded from this function's contract.
    unsafe { add("rk_policy_add_with", engine, name, spec, opts, policy_out) }
}

/// # Safety
/// The contract of `rk_policy_add_with`.
unsafe fn add(
    function: &'static str,
    engine: *mut rk_engine,
    name: *const c_char,
    spec: *const c_char,
    opts: *const rk_policy_options,
    policy_out: *mut u32,
) -> rk_status {
    boundary::run(function, || {
        // SAFETY: forwarded from the caller's contract.
        let engine = unsafe { args::engine(engine)? };
        // SAFETY: as above.
        let name = unsafe { args::utf8(name, "name")? };
        // SAFETY: as above.
        let spec = unsafe { args::utf8(spec, "spec")? };
        // SAFETY: as above.
        let out = unsafe { Out::new(policy_out, "policy_out")? };
        // SAFETY: as above.
        let options = unsafe { read_options(opts)? };
        out.write(engine.add_policy_with(name, spec, options)?.index());
        Ok(())
    })
}

/// Looks up the policy named `name` and stores its id in `*policy_out`.
///
/// Errors: `RK_ERR_UNKNOWN_POLICY` if no policy has that name,
/// `RK_ERR_NULL_POINTER`, `RK_ERR_INVALID_UTF8`. Thread-safe.
///
/// # Safety
/// `engine` is NULL or a live engine; `name` is NULL or NUL-terminated;
/// `policy_out` is NULL or valid for writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_find(
    engine: *mut rk_engine,
    name: *const c_char,
    policy_out: *mut u32,
) -> rk_status {
    boundary::run("rk_policy_find", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        // SAFETY: forwarded from this function's contract.
        let name = unsafe { args::utf8(name, "name")? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(policy_out, "policy_out")? };
        let id = engine
            .policy(name)
            .ok_or_else(|| Failure::NoSuchPolicy(name.into()))?;
        out.write(id.index());
        Ok(())
    })
}

/// Stores the number of policies of the engine in `*count_out`. Their ids
/// are `0 .. count-1`, in the order they were added. Thread-safe.
///
/// # Safety
/// `engine` is NULL or a live engine; `count_out` is NULL or valid for
/// writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_count(engine: *mut rk_engine, count_out: *mut u32) -> rk_status {
    boundary::run("rk_policy_count", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(count_out, "count_out")? };
        out.write(engine.policies().len() as u32);
        Ok(())
    })
}

/// Copies the name of `policy`, NUL-terminated, into `buf` (`buf_len`
/// bytes; `RK_MAX_POLICY_NAME_LEN + 1` always suffices) and stores its
/// length without the NUL in `*len_out` (`len_out` may be NULL).
///
/// `buf == NULL` with `buf_len == 0` only stores the length in `*len_out`
/// (then required). The caller owns the buffer; nothing is kept. Errors:
/// `RK_ERR_BUFFER_TOO_SMALL` (nothing written; the message says the size
/// needed), `RK_ERR_UNKNOWN_POLICY`, `RK_ERR_NULL_POINTER`. Thread-safe.
///
/// # Safety
/// `engine` is NULL or a live engine; `buf` is NULL or valid for writing
/// `buf_len` bytes; `len_out` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_name(
    engine: *mut rk_engine,
    policy: u32,
    buf: *mut c_char,
    buf_len: usize,
    len_out: *mut usize,
) -> rk_status {
    boundary::run("rk_policy_name", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        let name = engine.policy_name(PolicyId(policy))?;
        // SAFETY: forwarded from this function's contract; the engine's
        // string cannot overlap the caller's buffer.
        unsafe { args::copy_str_out(name, buf, buf_len, len_out) }
    })
}

/// Copies the canonical spec of `policy` (e.g. `"5/minute; 20/hour"`,
/// which `rk_policy_add` reads back to the same limits) into `buf`, as
/// `rk_policy_name` does (same buffer rules and errors; specs have no
/// fixed maximum length, so ask for the length first if unsure).
///
/// # Safety
/// As for `rk_policy_name`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_spec(
    engine: *mut rk_engine,
    policy: u32,
    buf: *mut c_char,
    buf_len: usize,
    len_out: *mut usize,
) -> rk_status {
    boundary::run("rk_policy_spec", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        let spec = engine.policy_spec(PolicyId(policy))?.to_string();
        // SAFETY: forwarded from this function's contract; `spec` is our own string.
        unsafe { args::copy_str_out(&spec, buf, buf_len, len_out) }
    })
}

/// Stores the number of limits of `policy` in `*count_out` (at least 1).
/// Thread-safe.
///
/// # Safety
/// `engine` is NULL or a live engine; `count_out` is NULL or valid for
/// writing a `uint32_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_limit_count(
    engine: *mut rk_engine,
    policy: u32,
    count_out: *mut u32,
) -> rk_status {
    boundary::run("rk_policy_limit_count", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(count_out, "count_out")? };
        out.write(engine.policy_spec(PolicyId(policy))?.limits.len() as u32);
        Ok(())
    })
}

/// Stores limit number `index` (`0 .. count-1`, the `limit_index` of
/// decisions) of `policy` in `*out`. Errors: `RK_ERR_INVALID_ARGUMENT` for
/// an index out of range, `RK_ERR_UNKNOWN_POLICY`, `RK_ERR_NULL_POINTER`.
/// Thread-safe.
///
/// # Safety
/// `engine` is NULL or a live engine; `out` is NULL or valid for writing an
/// `rk_limit`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_limit(
    engine: *mut rk_engine,
    policy: u32,
    index: u32,
    out: *mut rk_limit,
) -> rk_status {
    boundary::run("rk_policy_limit", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(out, "out")? };
        let spec = engine.policy_spec(PolicyId(policy))?;
        let limit = spec.limits.get(index as usize).ok_or_else(|| {
            Failure::Invalid(format!(
                "limit index {index} is out of range: the policy has {} limits",
                spec.limits.len()
            ))
        })?;
        out.write(rk_limit {
            algorithm: match limit.algorithm {
                Algorithm::Gcra => rk_algorithm::RK_ALGORITHM_GCRA,
                Algorithm::FixedWindow => rk_algorithm::RK_ALGORITHM_FIXED_WINDOW,
                Algorithm::SlidingWindow => rk_algorithm::RK_ALGORITHM_SLIDING_WINDOW,
                Algorithm::SlidingLog => rk_algorithm::RK_ALGORITHM_SLIDING_LOG,
                Algorithm::Concurrency => rk_algorithm::RK_ALGORITHM_CONCURRENCY,
            } as u32,
            count: limit.count,
            period_ns: limit.period_ns,
            burst: limit.burst,
        });
        Ok(())
    })
}

/// Stores the statistics of `policy` in `*out`: counters summed over
/// shards (a consistent-enough snapshot while other threads run: each
/// counter is exact, they are not read at one instant) and occupancy.
/// Thread-safe; never blocks the hot path.
///
/// # Safety
/// `engine` is NULL or a live engine; `out` is NULL or valid for writing an
/// `rk_stats`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_stats(
    engine: *mut rk_engine,
    policy: u32,
    out: *mut rk_stats,
) -> rk_status {
    boundary::run("rk_policy_stats", || {
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { args::engine(engine)? };
        // SAFETY: forwarded from this function's contract.
        let out = unsafe { Out::new(out, "out")? };
        let s = engine.stats(PolicyId(policy))?;
        out.write(rk_stats {
            allowed: s.allowed,
            denied: s.denied,
            evictions: s.evictions,
            table_full: s.table_full,
            occupancy: s.occupancy,
            capacity: s.capacity,
        });
        Ok(())
    })
}
