//! `rk_engine_open_redis`, `rk_redis_options`, `rk_redis_stats`: engines
//! whose limits live in Redis, shared by every host that uses the same
//! server (see `src/redis/`).
//!
//! The functions are always exported, so that the header does not depend
//! on cargo features; in a build without the `redis` feature they fail
//! with `RK_ERR_BACKEND` and a message saying so.

use super::args::{self, try_out, try_ref_from_ptr, try_str};
use super::boundary::ffi_panic_boundary;
use super::engine::{rk_engine, rk_engine_options};
use super::status::rk_status;
use std::ffi::c_char;
use std::mem::{offset_of, size_of};

/// What a Redis engine does while Redis cannot be reached (the values of
/// `rk_redis_options.on_failure`). Every switch to it and back is counted
/// in `rk_redis_stats` and, by default, logged on stderr.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rk_on_failure {
    /// Decide with the engine's local tables (the default): in the
    /// shared-memory file `fallback_path` when set, so that the limit still
    /// holds across the host's processes; else in this process.
    RK_ON_FAILURE_LOCAL = 0,
    /// Allow every request.
    RK_ON_FAILURE_OPEN = 1,
    /// Deny every request, with a retry-after until the next reconnect try.
    RK_ON_FAILURE_CLOSED = 2,
}

/// Options for `rk_engine_open_redis`. Versioned like `rk_policy_options`:
/// start from `rk_redis_options_init(&opts)` (a macro passing this
/// header's `sizeof`), then change the fields you care about. The struct
/// only ever grows at its end; fields beyond the caller's `struct_size`
/// take their defaults. Durations are milliseconds. Strings and the
/// secret are only read during `rk_engine_open_redis`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rk_redis_options {
    /// `sizeof(rk_redis_options)` as the caller knows it (set by
    /// `rk_redis_options_init`). Must cover at least `struct_size` and
    /// `on_failure`.
    pub struct_size: u32,
    /// An `rk_on_failure` value (default `RK_ON_FAILURE_LOCAL`).
    pub on_failure: u32,
    /// Prefix of every Redis key the engine writes, NUL-terminated UTF-8;
    /// NULL (the default) means `"rk:"`. Engines that share limits must
    /// use the same prefix.
    pub prefix: *const c_char,
    /// Time allowed to open a connection, in ms (default 200, at least 1).
    pub connect_timeout_ms: u32,
    /// Time allowed for one round trip (read or write), in ms (default 100,
    /// at least 1). Past it, the failure policy decides.
    pub timeout_ms: u32,
    /// First wait before trying Redis again after a failure, in ms (default
    /// 50, at least 1); it doubles after each failed try up to `retry_max_ms`.
    pub retry_min_ms: u32,
    /// Longest wait between tries, in ms (default 2000, at least
    /// `retry_min_ms`).
    pub retry_max_ms: u32,
    /// Idle connections kept for reuse (default 16). More are opened while
    /// more threads call at once.
    pub pool_size: u64,
    /// Entries of the local deny cache (default 4096; 0 turns it off): a
    /// key denied with retry-after T is answered locally until T, without
    /// a round trip.
    pub deny_cache: u64,
    /// With `RK_ON_FAILURE_LOCAL`: the shared-memory file (as for
    /// `rk_engine_open_shared`) of the fallback tables, NUL-terminated;
    /// NULL (the default): tables in this process.
    pub fallback_path: *const c_char,
    /// The local tables of the fallback (capacity, clock, shared file
    /// sizes), as for `rk_engine_new`; NULL (the default): every default.
    pub engine_options: *const rk_engine_options,
    /// The secret of the keyed hash that turns keys into Redis key names
    /// (`hash_secret_len` bytes, at least 16). NULL (the default): a random
    /// secret that the first engine stores in Redis and every other engine
    /// reads, so that all hosts agree.
    pub hash_secret: *const u8,
    /// Length of `hash_secret` in bytes (0 when it is NULL).
    pub hash_secret_len: usize,
    /// Write one line to stderr at each switch to the failure policy and
    /// back (default true).
    pub log_switches: bool,
    /// For a `rediss://` URL: a PEM file of the certificate authority to
    /// trust instead of the system's store (a private CA), NUL-terminated;
    /// NULL (the default): the system store (`SSL_CERT_FILE` /
    /// `SSL_CERT_DIR` override it). An untrusted certificate fails at open.
    pub tls_ca_file: *const c_char,
    /// `url` names Redis Cluster nodes (one or more, comma-separated):
    /// commands go to the node that holds each key's slot and follow the
    /// cluster when slots move (default false: a standalone server).
    pub cluster: bool,
}

// The layout is ABI: fields never move, and later ones are appended.
const _: () = {
    assert!(offset_of!(rk_redis_options, on_failure) == 4);
    assert!(offset_of!(rk_redis_options, log_switches) == 80);
    assert!(offset_of!(rk_redis_options, tls_ca_file) == 88);
    assert!(offset_of!(rk_redis_options, cluster) == 96);
    assert!(size_of::<rk_redis_options>() == 104);
};

/// The sizes `rk_redis_options` has had, oldest first.
const REDIS_OPTIONS_SIZES: [usize; 1] = [size_of::<rk_redis_options>()];

/// A Redis engine's counters (this process's view), from
/// `rk_engine_redis_stats`. Written by the library, versioned by size:
/// fields are only ever appended, and the library writes no more than the
/// caller's size.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_redis_stats {
    /// Redis is reachable (as of the last round trip or reconnect try).
    pub up: bool,
    /// Script calls that got an answer.
    pub round_trips: u64,
    /// Calls that failed (connect, timeout, protocol or server error).
    pub errors: u64,
    /// Switches from Redis to the failure policy.
    pub failovers: u64,
    /// Switches back to Redis.
    pub recoveries: u64,
    /// Decisions made by the failure policy instead of Redis.
    pub fallback_decisions: u64,
    /// Denials answered by the local deny cache, without a round trip.
    pub deny_cache_hits: u64,
    /// Times the script was loaded into Redis (once per server, again after
    /// a restart or `SCRIPT FLUSH`).
    pub script_loads: u64,
}

/// `sizeof(rk_redis_stats)` of the first version: the least
/// `rk_engine_redis_stats_sized` accepts.
pub const RK_REDIS_STATS_V1_SIZE: usize = 64;

const _: () = {
    assert!(size_of::<rk_redis_stats>() == RK_REDIS_STATS_V1_SIZE);
    assert!(offset_of!(rk_redis_stats, round_trips) == 8);
    assert!(offset_of!(rk_redis_stats, script_loads) == 56);
};

/// Writes the defaults of the newest version of `rk_redis_options` that
/// fits in `size` bytes (nothing if none does), field by field.
///
/// # Safety
/// `opts` is NULL or valid for writing `size` bytes.
unsafe fn init_options(opts: *mut rk_redis_options, size: usize) {
    let Some(&version) = REDIS_OPTIONS_SIZES.iter().rev().find(|&&v| v <= size) else {
        return;
    };
    if opts.is_null() || !opts.is_aligned() {
        return;
    }
    let d = defaults();
    macro_rules! put {
        ($($field:ident),*) => {$(
            if offset_of!(rk_redis_options, $field) + std::mem::size_of_val(&d.$field) <= version {
                // SAFETY:
                // - `opts` is non-NULL and aligned (checked above) and valid
                //   for writing `size >= version` bytes (this function's
                //   contract); the field lies within the first `version`;
                // - a raw write through `addr_of_mut!` neither reads the
                //   caller's (maybe uninitialised) memory nor makes a
                //   reference to it.
                unsafe { std::ptr::addr_of_mut!((*opts).$field).write(d.$field) }
            }
        )*};
    }
    put!(
        struct_size,
        on_failure,
        prefix,
        connect_timeout_ms,
        timeout_ms,
        retry_min_ms,
        retry_max_ms,
        pool_size,
        deny_cache,
        fallback_path,
        engine_options,
        hash_secret,
        hash_secret_len,
        log_switches,
        tls_ca_file,
        cluster
    );
}

/// Fills `*opts` with every default of the newest version of
/// `rk_redis_options` that fits in `opts_size` bytes and sets
/// `opts->struct_size` to that version's size (104 with this header).
/// Writes nothing beyond `opts_size` bytes, and nothing at all if it is
/// below 104. NULL `opts` does nothing. Thread-safe.
///
/// This header makes `rk_redis_options_init(opts)` a macro for
/// `rk_redis_options_init_sized((opts), sizeof(rk_redis_options))`: call that.
///
/// # Safety
/// `opts` is NULL or valid for writing `opts_size` bytes.
#[no_mangle]
pub unsafe extern "C" fn rk_redis_options_init_sized(
    opts: *mut rk_redis_options,
    opts_size: usize,
) {
    ffi_panic_boundary!("rk_redis_options_init_sized", (), {
        // SAFETY: forwarded from this function's contract.
        unsafe { init_options(opts, opts_size) }
    })
}

/// Opens an engine whose limits live in the Redis server at `url` and
/// stores it in `*out`. Every engine (in any process, on any host) opened
/// on the same server with the same `prefix` enforces the same limits
/// together; each check is one round trip, whatever the number of limits
/// of its policy. Checks without an explicit time use Redis `TIME` (one
/// clock for all hosts); a `*_at` call's `now_ns` is used as given.
///
/// `url`: `redis://[[user]:password@]host[:port][/db]`, `rediss://` for
/// TLS, or `redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`
/// for the master that Redis Sentinel names (found again after a failover;
/// the password is the master's). `opts` may be NULL for every default; else set it up with
/// `rk_redis_options_init`. The engine connects once at open, so that a
/// wrong password or a server that is not Redis fails here; a server that
/// cannot be reached is not an error: the engine starts on its failure
/// policy (`opts->on_failure`) and switches to Redis when it answers (see
/// `rk_engine_redis_stats`). Checks never fail because of Redis: the
/// failure policy decides, within `timeout_ms` of a call. The caller owns
/// the engine and frees it with `rk_engine_free`. Thread-safe
/// (connections are pooled). Open it in each process after `fork`: a
/// child must not use its parent's connections.
///
/// Errors: `RK_ERR_NULL_POINTER` (`url` or `out`), `RK_ERR_INVALID_UTF8`
/// (`url` or `prefix`), `RK_ERR_INVALID_ARGUMENT` (a URL that does not
/// parse, a bad `struct_size` or `on_failure`, a zero timeout,
/// `retry_max_ms` below `retry_min_ms`, a `hash_secret` shorter than 16
/// bytes, a `prefix` with `{` or `}`, a `fallback_path` without
/// `RK_ON_FAILURE_LOCAL`, an unreadable `tls_ca_file` or one with a
/// `redis://` URL), `RK_ERR_BACKEND` (password refused, not a Redis server,
/// an untrusted TLS certificate; or a build without the Redis backend), and
/// those of
/// `rk_engine_open_shared` for `fallback_path`. `*out` is written only on
/// success.
///
/// # Safety
/// `url` is NULL or NUL-terminated; `opts` is NULL or points to an
/// `rk_redis_options` of at least `opts->struct_size` initialised bytes,
/// whose pointers within it are NULL or valid as documented there; `out`
/// is NULL or valid for writing an `rk_engine*`.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_open_redis(
    url: *const c_char,
    opts: *const rk_redis_options,
    out: *mut *mut rk_engine,
) -> rk_status {
    ffi_panic_boundary!("rk_engine_open_redis", {
        let url = try_str!(url);
        let out = try_out!(out);
        // SAFETY: forwarded from this function's contract.
        let engine = unsafe { backend::open(url, opts)? };
        out.write(rk_engine::into_raw(engine));
    })
}

/// Stores the counters of a Redis engine in `*out`: every field that lies
/// within the caller's `out_size` bytes (pass `sizeof(rk_redis_stats)`;
/// this header makes `rk_engine_redis_stats(engine, out)` a macro that
/// does). Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER`, `RK_ERR_INVALID_ARGUMENT` (`out_size`
/// below 64, the first version's size), `RK_ERR_WRONG_ENGINE_KIND` (the
/// engine is not Redis-backed). `*out` is written only on success.
///
/// # Safety
/// `engine` is NULL or a live engine; `out` is NULL or valid for writing
/// `out_size` bytes (at most `sizeof(rk_redis_stats)` are written), aligned
/// for an `rk_redis_stats`.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_redis_stats_sized(
    engine: *mut rk_engine,
    out: *mut rk_redis_stats,
    out_size: usize,
) -> rk_status {
    ffi_panic_boundary!("rk_engine_redis_stats_sized", {
        let engine = try_ref_from_ptr!(engine);
        let out = try_out!(out);
        args::out_size(out_size, RK_REDIS_STATS_V1_SIZE, "rk_redis_stats")?;
        // The whole struct: it is the first version, which `out_size` covers.
        // (A later, larger version writes only the fields within `out_size`.)
        out.write(backend::stats(engine)?);
    })
}

/// The defaults of the `rk_redis_options` fields that are not NULL, zero
/// or false; `Defaults::get()` is in `backend` (from
/// `RedisOptions::default()` when the backend is built in).
struct Defaults {
    connect_timeout_ms: u32,
    timeout_ms: u32,
    retry_min_ms: u32,
    retry_max_ms: u32,
    pool_size: u64,
    deny_cache: u64,
    log_switches: bool,
}

/// The defaults of `rk_redis_options`.
fn defaults() -> rk_redis_options {
    let d = Defaults::get();
    rk_redis_options {
        struct_size: size_of::<rk_redis_options>() as u32,
        on_failure: rk_on_failure::RK_ON_FAILURE_LOCAL as u32,
        prefix: std::ptr::null(),
        connect_timeout_ms: d.connect_timeout_ms,
        timeout_ms: d.timeout_ms,
        retry_min_ms: d.retry_min_ms,
        retry_max_ms: d.retry_max_ms,
        pool_size: d.pool_size,
        deny_cache: d.deny_cache,
        fallback_path: std::ptr::null(),
        engine_options: std::ptr::null(),
        hash_secret: std::ptr::null(),
        hash_secret_len: 0,
        log_switches: d.log_switches,
        tls_ca_file: std::ptr::null(),
        cluster: false,
    }
}

#[cfg(feature = "redis")]
mod backend {
    use super::super::args::{self, Failure};
    use super::super::engine::{read_options, rk_engine_options};
    use super::{rk_redis_options, rk_redis_stats, Defaults};
    use crate::{Engine, OnFailure, RedisOptions, RedisStats};
    use std::ffi::c_char;
    use std::mem::{offset_of, size_of};
    use std::path::PathBuf;
    use std::time::Duration;

    /// The smallest `struct_size` accepted: `struct_size` and `on_failure`.
    const MIN_REDIS_OPTIONS_SIZE: usize =
        offset_of!(rk_redis_options, on_failure) + size_of::<u32>();

    fn ms(d: Duration) -> u32 {
        u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
    }

    impl Defaults {
        pub(super) fn get() -> Defaults {
            let d = RedisOptions::default();
            Defaults {
                connect_timeout_ms: ms(d.connect_timeout),
                timeout_ms: ms(d.timeout),
                retry_min_ms: ms(d.retry_min),
                retry_max_ms: ms(d.retry_max),
                pool_size: d.pool_size as u64,
                deny_cache: d.deny_cache as u64,
                log_switches: d.log_switches,
            }
        }
    }

    fn count(name: &str, value: u64) -> Result<usize, Failure> {
        usize::try_from(value)
            .map_err(|_| Failure::Invalid(format!("opts->{name} {value} is too large")))
    }

    /// A NUL-terminated path field (any bytes but NUL); NULL is none.
    ///
    /// # Safety
    /// `p` is NULL or a NUL-terminated string.
    unsafe fn path(p: *const c_char, name: &'static str) -> Result<Option<PathBuf>, Failure> {
        if p.is_null() {
            return Ok(None);
        }
        // SAFETY: forwarded from this function's contract (non-NULL here).
        Ok(Some(unsafe { args::path(p, name)? }.to_path_buf()))
    }

    /// Reads the caller's options (NULL: defaults), only the fields that
    /// fit in its `struct_size`.
    ///
    /// # Safety
    /// The contract of `rk_engine_open_redis` for `p`.
    unsafe fn read(p: *const rk_redis_options) -> Result<RedisOptions, Failure> {
        let mut o = RedisOptions::default();
        if p.is_null() {
            return Ok(o);
        }
        if !p.is_aligned() {
            return Err(Failure::Misaligned("opts"));
        }
        // SAFETY: `p` is non-NULL and aligned; the rest is this function's contract.
        let size = unsafe { args::struct_size(p, MIN_REDIS_OPTIONS_SIZE, "opts")? };
        macro_rules! field {
            ($field:ident: $ty:ty) => {
                args::versioned_field!(p, size, rk_redis_options, $field: $ty)
            };
        }
        if let Some(on_failure) = field!(on_failure: u32) {
            o.on_failure = match on_failure {
                0 => OnFailure::Local,
                1 => OnFailure::Open,
                2 => OnFailure::Closed,
                other => {
                    return Err(Failure::Invalid(format!(
                        "opts->on_failure is {other}; expected RK_ON_FAILURE_LOCAL (0), \
                         RK_ON_FAILURE_OPEN (1) or RK_ON_FAILURE_CLOSED (2)"
                    )))
                }
            };
        }
        if let Some(prefix) = field!(prefix: *const c_char) {
            if !prefix.is_null() {
                // SAFETY: a non-NULL `prefix` is NUL-terminated (contract).
                o.prefix = unsafe { args::utf8(prefix, "opts->prefix")? }.to_owned();
            }
        }
        if let Some(v) = field!(connect_timeout_ms: u32) {
            o.connect_timeout = Duration::from_millis(v.into());
        }
        if let Some(v) = field!(timeout_ms: u32) {
            o.timeout = Duration::from_millis(v.into());
        }
        if let Some(v) = field!(retry_min_ms: u32) {
            o.retry_min = Duration::from_millis(v.into());
        }
        if let Some(v) = field!(retry_max_ms: u32) {
            o.retry_max = Duration::from_millis(v.into());
        }
        if let Some(v) = field!(pool_size: u64) {
            o.pool_size = count("pool_size", v)?;
        }
        if let Some(v) = field!(deny_cache: u64) {
            o.deny_cache = count("deny_cache", v)?;
        }
        if let Some(p) = field!(fallback_path: *const c_char) {
            // SAFETY: NULL or NUL-terminated (contract).
            o.fallback_path = unsafe { path(p, "opts->fallback_path")? };
        }
        if let Some(e) = field!(engine_options: *const rk_engine_options) {
            // SAFETY: NULL or a valid `rk_engine_options` (contract).
            o.engine = unsafe { read_options(e)? };
        }
        if let (Some(secret), Some(len)) = (
            field!(hash_secret: *const u8),
            field!(hash_secret_len: usize),
        ) {
            if !secret.is_null() || len != 0 {
                if secret.is_null() {
                    return Err(Failure::Invalid(format!(
                        "opts->hash_secret is NULL but hash_secret_len is {len}"
                    )));
                }
                // SAFETY: `hash_secret` points to `hash_secret_len`
                // readable bytes (contract); `u8` needs no alignment.
                let bytes = unsafe { args::slice(secret, len, "opts->hash_secret", "n")? };
                if bytes.is_empty() {
                    return Err(Failure::Invalid(
                        "opts->hash_secret is set but hash_secret_len is 0".into(),
                    ));
                }
                o.hash_secret = Some(bytes.to_vec());
            }
        }
        if let Some(v) = args::versioned_bool!(p, size, rk_redis_options, "opts", log_switches)? {
            o.log_switches = v;
        }
        if let Some(p) = field!(tls_ca_file: *const c_char) {
            // SAFETY: NULL or NUL-terminated (contract).
            o.tls_ca_file = unsafe { path(p, "opts->tls_ca_file")? };
        }
        if let Some(v) = args::versioned_bool!(p, size, rk_redis_options, "opts", cluster)? {
            o.cluster = v;
        }
        Ok(o)
    }

    /// # Safety
    /// The contract of `rk_engine_open_redis` for `opts`.
    pub(super) unsafe fn open(url: &str, opts: *const rk_redis_options) -> Result<Engine, Failure> {
        // SAFETY: forwarded from this function's contract.
        let options = unsafe { read(opts)? };
        Ok(Engine::open_redis(url, options)?)
    }

    pub(super) fn stats(engine: &Engine) -> Result<rk_redis_stats, Failure> {
        let s = engine.redis_stats().ok_or(Failure::WrongEngineKind)?;
        Ok(s.into())
    }

    impl From<RedisStats> for rk_redis_stats {
        fn from(s: RedisStats) -> Self {
            rk_redis_stats {
                up: s.up,
                round_trips: s.round_trips,
                errors: s.errors,
                failovers: s.failovers,
                recoveries: s.recoveries,
                fallback_decisions: s.fallback_decisions,
                deny_cache_hits: s.deny_cache_hits,
                script_loads: s.script_loads,
            }
        }
    }
}

#[cfg(not(feature = "redis"))]
mod backend {
    use super::super::args::Failure;
    use super::{rk_redis_options, rk_redis_stats, Defaults};
    use crate::{Engine, Error};

    const NOT_BUILT: &str =
        "this build of ratekeeper has no Redis backend (built without the cargo feature `redis`)";

    impl Defaults {
        pub(super) fn get() -> Defaults {
            Defaults {
                connect_timeout_ms: 200,
                timeout_ms: 100,
                retry_min_ms: 50,
                retry_max_ms: 2000,
                pool_size: 16,
                deny_cache: 4096,
                log_switches: true,
            }
        }
    }

    /// # Safety
    /// Nothing is read.
    pub(super) unsafe fn open(
        _url: &str,
        _opts: *const rk_redis_options,
    ) -> Result<Engine, Failure> {
        Err(Error::Backend(NOT_BUILT.into()).into())
    }

    pub(super) fn stats(_engine: &Engine) -> Result<rk_redis_stats, Failure> {
        Err(Failure::WrongEngineKind)
    }
}
