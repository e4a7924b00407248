//! Policies: adding, finding and describing them; their statistics.

use super::args::{self, try_out, try_ref_from_ptr, try_str, Failure, Out};
use super::boundary::ffi_panic_boundary;
use super::engine::rk_engine;
use super::status::rk_status;
use crate::{Algorithm, Engine, Limit, Penalty, PolicyId, PolicyOptions, WhenFull};
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
///
/// The struct only ever grows at its end. Its first version ended with
/// `when_full` (`struct_size` 24); a caller that passes that size gets the
/// defaults for every field after it, and the library never reads or
/// writes past a caller's size (see `rk_policy_options_init`). All
/// durations are nanoseconds.
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
    /// Adds a random extra of 0 to this many nanoseconds to the
    /// `retry_after_ns` of every denial, so that clients denied together do
    /// not all retry at the same instant (default 0: none). Never makes
    /// `retry_after_ns` shorter than the true wait.
    pub retry_jitter_ns: u64,
    /// Penalty box: the window in which `penalty_strikes` denials of one key
    /// ban it (strikes decay smoothly: one per `window / strikes`).
    pub penalty_window_ns: u64,
    /// Penalty box: length of a key's first ban; each further ban (before
    /// the key has been left alone for `penalty_max_ban_ns`) doubles it.
    pub penalty_ban_ns: u64,
    /// Penalty box: the longest ban (at least `penalty_ban_ns`); also how
    /// long a key must stay unbanned for its escalation to start over.
    pub penalty_max_ban_ns: u64,
    /// Penalty box: denials of one key within `penalty_window_ns` that ban
    /// it. 0 (the default) means no penalty box; then the three other
    /// `penalty_*` fields must be 0 too. A banned key is denied without
    /// touching its limits, with `rk_decision.banned` set and the ban's
    /// remaining time as `retry_after_ns`. Rate-limit policies only.
    /// Invalid settings are `RK_ERR_INVALID_ARGUMENT`.
    pub penalty_strikes: u32,
    /// Shadow mode (default false): decisions are computed, counted and
    /// recorded as if enforced, but every request passes; a request that
    /// would have been denied has `allowed` true and `shadow_denied` set.
    /// For rolling out a new limit safely.
    pub shadow: bool,
    /// Keep up to `RK_EVENT_KEY_BYTES` bytes of the key in the policy's deny
    /// events (`rk_recent_denials`). Default false: keys can be personal
    /// data; the key's hash is always kept.
    pub record_keys: bool,
}

// The layout is ABI: the first version's fields never move, and the
// fields added later start past its 24 bytes (its tail padding, which an
// old caller leaves uninitialised, is never read).
const _: () = {
    assert!(size_of::<rk_policy_options>() == 64);
    assert!(offset_of!(rk_policy_options, capacity) == 8);
    assert!(offset_of!(rk_policy_options, when_full) == 16);
    assert!(offset_of!(rk_policy_options, retry_jitter_ns) == POLICY_OPTIONS_V1_SIZE);
    assert!(offset_of!(rk_policy_options, penalty_window_ns) == 32);
    assert!(offset_of!(rk_policy_options, penalty_ban_ns) == 40);
    assert!(offset_of!(rk_policy_options, penalty_max_ban_ns) == 48);
    assert!(offset_of!(rk_policy_options, penalty_strikes) == 56);
    assert!(offset_of!(rk_policy_options, shadow) == 60);
    assert!(offset_of!(rk_policy_options, record_keys) == 61);
};

/// `sizeof(rk_policy_options)` of the first version (through `when_full`).
const POLICY_OPTIONS_V1_SIZE: usize = 24;

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

impl From<&Limit> for rk_limit {
    fn from(limit: &Limit) -> Self {
        rk_limit {
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
        }
    }
}

/// A policy's statistics at one moment (counters summed over shards).
///
/// Written by the library, and versioned by size: fields are only ever
/// appended, and the library writes no more than the caller's size (see
/// `rk_policy_stats` and `rk_policy_stats_sized`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_stats {
    /// Requests allowed (and charged).
    pub allowed: u64,
    /// Requests denied. In shadow mode: requests that would have been
    /// denied (they passed, and are counted in `shadow_denied` too).
    pub denied: u64,
    /// Live entries evicted to make room for new keys.
    pub evictions: u64,
    /// Requests that found no room and were failed open or closed.
    pub table_full: u64,
    /// Keys currently tracked.
    pub occupancy: u64,
    /// Keys the table can track.
    pub capacity: u64,
    /// Shadow mode: requests that passed but would have been denied.
    /// (Second version: only from `rk_policy_stats_sized`.)
    pub shadow_denied: u64,
    /// Requests denied because their key was in the penalty box.
    /// (Second version: only from `rk_policy_stats_sized`.)
    pub banned: u64,
    /// Bans imposed by the penalty box.
    /// (Second version: only from `rk_policy_stats_sized`.)
    pub bans: u64,
}

/// `sizeof(rk_stats)` of the first version (through `capacity`): what
/// `rk_policy_stats` writes, and the least `rk_policy_stats_sized` accepts.
pub const RK_STATS_V1_SIZE: usize = 48;

const _: () = {
    assert!(size_of::<rk_stats>() == 72);
    assert!(offset_of!(rk_stats, capacity) + size_of::<u64>() == RK_STATS_V1_SIZE);
    assert!(offset_of!(rk_stats, shadow_denied) == RK_STATS_V1_SIZE);
    assert!(offset_of!(rk_stats, bans) == 64);
};

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
    macro_rules! field {
        ($field:ident: $ty:ty) => {
            args::versioned_field!(p, size, rk_policy_options, $field: $ty)
        };
    }
    if let Some(jitter) = field!(retry_jitter_ns: u64) {
        options.retry_jitter_ns = jitter;
    }
    // The penalty fields are read as a group, when the caller's struct has
    // `penalty_strikes` (the last of them).
    if let Some(strikes) = field!(penalty_strikes: u32) {
        let window_ns = field!(penalty_window_ns: u64).unwrap_or(0);
        let ban_ns = field!(penalty_ban_ns: u64).unwrap_or(0);
        let max_ban_ns = field!(penalty_max_ban_ns: u64).unwrap_or(0);
        if strikes != 0 {
            // Validated by the engine (`RK_ERR_INVALID_ARGUMENT` with its message).
            options.penalty = Some(Penalty {
                strikes,
                window_ns,
                ban_ns,
                max_ban_ns,
            });
        } else if (window_ns, ban_ns, max_ban_ns) != (0, 0, 0) {
            return Err(Failure::Invalid(format!(
                "opts->penalty_strikes is 0 (no penalty box) but penalty_window_ns, \
                 penalty_ban_ns and penalty_max_ban_ns are {window_ns}, {ban_ns} and \
                 {max_ban_ns}; set penalty_strikes (at least 1) or all of them to 0"
            )));
        }
    }
    if let Some(shadow) = args::versioned_bool!(p, size, rk_policy_options, "opts", shadow)? {
        options.shadow = shadow;
    }
    if let Some(record) = args::versioned_bool!(p, size, rk_policy_options, "opts", record_keys)? {
        options.record_keys = record;
    }
    Ok(options)
}

/// The sizes `rk_policy_options` has had, oldest first.
const POLICY_OPTIONS_SIZES: [usize; 2] = [POLICY_OPTIONS_V1_SIZE, size_of::<rk_policy_options>()];

/// Writes the defaults of the newest version of `rk_policy_options` that
/// fits in `size` bytes (nothing if none does), with `struct_size` set to
/// that version's size. Field by field: the caller's padding bytes are
/// left as they are. A misaligned `opts` is left alone too.
///
/// # Safety
/// `opts` is NULL or valid for writing `size` bytes.
unsafe fn init_options(opts: *mut rk_policy_options, size: usize) {
    let Some(&version) = POLICY_OPTIONS_SIZES.iter().rev().find(|&&v| v <= size) else {
        return;
    };
    if opts.is_null() || !opts.is_aligned() {
        return;
    }
    let defaults = rk_policy_options {
        struct_size: version as u32,
        capacity: 0,
        when_full: rk_when_full::RK_WHEN_FULL_EVICT as u32,
        retry_jitter_ns: 0,
        penalty_window_ns: 0,
        penalty_ban_ns: 0,
        penalty_max_ban_ns: 0,
        penalty_strikes: 0,
        shadow: false,
        record_keys: false,
    };
    macro_rules! put {
        ($($field:ident),*) => {$(
            if offset_of!(rk_policy_options, $field) + std::mem::size_of_val(&defaults.$field)
                <= version
            {
                // SAFETY:
                // - `opts` is non-NULL and aligned (checked above) and valid
                //   for writing `size >= version` bytes (this function's
                //   contract); the field lies within the first `version`;
                // - a raw write through `addr_of_mut!` neither reads the
                //   caller's (maybe uninitialised) memory nor makes a
                //   reference to it.
                unsafe { std::ptr::addr_of_mut!((*opts).$field).write(defaults.$field) }
            }
        )*};
    }
    put!(
        struct_size,
        capacity,
        when_full,
        retry_jitter_ns,
        penalty_window_ns,
        penalty_ban_ns,
        penalty_max_ban_ns,
        penalty_strikes,
        shadow,
        record_keys
    );
}

/// Fills the caller's `rk_policy_options` with every default and sets
/// `opts->struct_size`. Call it before changing any field.
///
/// This header makes `rk_policy_options_init(opts)` a macro for
/// `rk_policy_options_init_sized((opts), sizeof(rk_policy_options))`, so
/// code compiled against it fills the whole struct. The function itself,
/// which programs compiled against the first header call (and which taking
/// the address of `rk_policy_options_init`, or writing
/// `(rk_policy_options_init)(opts)`, reaches), fills only the first
/// version of the struct (24 bytes, through `when_full`) and sets
/// `struct_size` to 24: that is all the room those programs have.
///
/// NULL `opts` does nothing. Thread-safe (touches only `*opts`).
///
/// # Safety
/// `opts` is NULL or valid for writing the first 24 bytes of an
/// `rk_policy_options`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_options_init(opts: *mut rk_policy_options) {
    ffi_panic_boundary!("rk_policy_options_init", (), {
        // SAFETY: forwarded from this function's contract.
        unsafe { init_options(opts, POLICY_OPTIONS_V1_SIZE) }
    })
}

/// Fills `*opts` with every default of the newest version of
/// `rk_policy_options` that fits in `opts_size` bytes (pass
/// `sizeof(rk_policy_options)`) and sets `opts->struct_size` to that
/// version's size: 64 with this header (or 24, the first version). Writes
/// nothing beyond `opts_size` bytes, and nothing at all if `opts_size` is
/// below 24. NULL `opts` does nothing. Thread-safe.
///
/// # Safety
/// `opts` is NULL or valid for writing `opts_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_options_init_sized(
    opts: *mut rk_policy_options,
    opts_size: usize,
) {
    ffi_panic_boundary!("rk_policy_options_init_sized", (), {
        // SAFETY: forwarded from this function's contract.
        unsafe { init_options(opts, opts_size) }
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
    ffi_panic_boundary!("rk_policy_add", {
        let engine = try_ref_from_ptr!(engine);
        let (name, spec) = (try_str!(name), try_str!(spec));
        let policy_out = try_out!(policy_out);
        let id = engine.add_policy_with(name, spec, PolicyOptions::default())?;
        policy_out.write(id.index());
    })
}

/// `rk_policy_add` with options of the policy's own: its capacity, what it
/// does when its table is full, and abuse control (shadow mode, retry
/// jitter, a penalty box, keys in deny events). `opts` may be NULL
/// (defaults); else it must have been set up by `rk_policy_options_init`.
/// Adding a name again returns the existing id only if the limits and the
/// abuse-control options (`shadow`, `retry_jitter_ns`, the penalty box,
/// `record_keys`) are the same; else `RK_ERR_POLICY_MISMATCH`.
///
/// Besides the errors of `rk_policy_add`: `RK_ERR_INVALID_ARGUMENT` for a
/// bad `struct_size`, `when_full`, `shadow` or `record_keys` byte (neither
/// 0 nor 1) or penalty box (the message says which setting, e.g. "penalty:
/// ban must be positive and no longer than max_ban"), and
/// `RK_ERR_UNSUPPORTED_POLICY` for a penalty box on a concurrency policy.
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
    ffi_panic_boundary!("rk_policy_add_with", {
        let engine = try_ref_from_ptr!(engine);
        let (name, spec) = (try_str!(name), try_str!(spec));
        let policy_out = try_out!(policy_out);
        // SAFETY: forwarded from this function's contract.
        let options = unsafe { read_options(opts)? };
        policy_out.write(engine.add_policy_with(name, spec, options)?.index());
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
    ffi_panic_boundary!("rk_policy_find", {
        let engine = try_ref_from_ptr!(engine);
        let name = try_str!(name);
        let policy_out = try_out!(policy_out);
        let id = engine
            .policy(name)
            .ok_or_else(|| Failure::NoSuchPolicy(name.into()))?;
        policy_out.write(id.index());
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
    ffi_panic_boundary!("rk_policy_count", {
        let engine = try_ref_from_ptr!(engine);
        let count_out = try_out!(count_out);
        count_out.write(engine.policies().len() as u32);
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
    ffi_panic_boundary!("rk_policy_name", {
        let engine = try_ref_from_ptr!(engine);
        let name = engine.policy_name(PolicyId(policy))?;
        // SAFETY: forwarded from this function's contract; the engine's
        // string cannot overlap the caller's buffer.
        unsafe { args::copy_str_out(name, buf, buf_len, len_out)? };
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
    ffi_panic_boundary!("rk_policy_spec", {
        let engine = try_ref_from_ptr!(engine);
        let spec = engine.policy_spec(PolicyId(policy))?.to_string();
        // SAFETY: forwarded from this function's contract; `spec` is our own string.
        unsafe { args::copy_str_out(&spec, buf, buf_len, len_out)? };
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
    ffi_panic_boundary!("rk_policy_limit_count", {
        let engine = try_ref_from_ptr!(engine);
        let count_out = try_out!(count_out);
        count_out.write(engine.policy_spec(PolicyId(policy))?.limits.len() as u32);
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
    ffi_panic_boundary!("rk_policy_limit", {
        let engine = try_ref_from_ptr!(engine);
        let out = try_out!(out);
        let limits = &engine.policy_spec(PolicyId(policy))?.limits;
        let limit = limits
            .get(index as usize)
            .ok_or_else(|| no_such_limit(index, limits.len()))?;
        out.write(limit.into());
    })
}

#[cold]
fn no_such_limit(index: u32, count: usize) -> Failure {
    Failure::Invalid(format!(
        "limit index {index} is out of range: the policy has {count} limits"
    ))
}

/// Stores the statistics of `policy` in `*out`.
///
/// This header makes `rk_policy_stats(engine, policy, out)` a macro for
/// `rk_policy_stats_sized((engine), (policy), (out), sizeof(rk_stats))`, so
/// code compiled against it gets every field. The function itself, which
/// programs compiled against the first header call (and which taking the
/// address of `rk_policy_stats`, or writing `(rk_policy_stats)(...)`,
/// reaches), writes only the first version's fields, `allowed` to
/// `capacity` (`RK_STATS_V1_SIZE`, 48 bytes), and nothing after them: that
/// is all the room those programs have.
///
/// Counters are summed over shards (a consistent-enough snapshot while
/// other threads run: each counter is exact, they are not read at one
/// instant). Thread-safe; never blocks the hot path.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine` or `out`), `RK_ERR_UNKNOWN_POLICY`.
///
/// # Safety
/// `engine` is NULL or a live engine; `out` is NULL or valid for writing
/// `RK_STATS_V1_SIZE` bytes, aligned for an `rk_stats`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_stats(
    engine: *mut rk_engine,
    policy: u32,
    out: *mut rk_stats,
) -> rk_status {
    ffi_panic_boundary!("rk_policy_stats", {
        let engine = try_ref_from_ptr!(engine);
        let out = try_out!(out);
        stats(engine, PolicyId(policy), out, RK_STATS_V1_SIZE)?;
    })
}

/// Stores the statistics of `policy` in `*out`, every field that lies
/// within the caller's `out_size` bytes: pass `sizeof(rk_stats)` (72 with
/// this header; `rk_policy_stats` does). A later library whose `rk_stats`
/// has grown writes no more than `out_size` bytes. Counters as for
/// `rk_policy_stats`. Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine` or `out`), `RK_ERR_INVALID_ARGUMENT`
/// (`out_size` below `RK_STATS_V1_SIZE`, 48), `RK_ERR_UNKNOWN_POLICY`.
/// `*out` is written only on success.
///
/// # Safety
/// `engine` is NULL or a live engine; `out` is NULL or valid for writing
/// `out_size` bytes (at most `sizeof(rk_stats)` are written), aligned for
/// an `rk_stats`.
#[no_mangle]
pub unsafe extern "C" fn rk_policy_stats_sized(
    engine: *mut rk_engine,
    policy: u32,
    out: *mut rk_stats,
    out_size: usize,
) -> rk_status {
    ffi_panic_boundary!("rk_policy_stats_sized", {
        let engine = try_ref_from_ptr!(engine);
        let out = try_out!(out);
        stats(engine, PolicyId(policy), out, out_size)?;
    })
}

/// The body of `rk_policy_stats` and `rk_policy_stats_sized`: writes the
/// whole `u64` fields of `rk_stats` that fit in `out_size` bytes (the
/// caller's, which `out` is valid for).
fn stats(
    engine: &Engine,
    policy: PolicyId,
    out: Out<'_, rk_stats>,
    out_size: usize,
) -> Result<(), Failure> {
    args::out_size(out_size, RK_STATS_V1_SIZE, "rk_stats")?;
    let s = engine.stats(policy)?;
    let stats = rk_stats {
        allowed: s.allowed,
        denied: s.denied,
        evictions: s.evictions,
        table_full: s.table_full,
        occupancy: s.occupancy,
        capacity: s.capacity,
        shadow_denied: s.shadow_denied,
        banned: s.banned,
        bans: s.bans,
    };
    // Whole fields only (all are `u64`; `rk_stats` has no padding).
    out.write_prefix(stats, out_size / size_of::<u64>() * size_of::<u64>());
    Ok(())
}
