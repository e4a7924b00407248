//! `rk_engine`: creating, opening and freeing engines; `rk_version`, `rk_now_ns`.

use super::args::{self, try_out, try_ref_from_ptr, Failure, Out};
use super::boundary::ffi_panic_boundary;
use super::status::rk_status;
use crate::{Clock, Engine, EngineOptions};
use std::ffi::c_char;
use std::mem::{offset_of, size_of};

/// An engine: a set of named policies. Opaque; made by `rk_engine_new`,
/// `rk_engine_open_shared` or `rk_engine_open_redis`, freed by
/// `rk_engine_free`.
///
/// Thread-safe: every function may be called on the same `rk_engine*` from
/// any number of threads at once (except `rk_engine_free`, which must be
/// the last call).
pub struct rk_engine {
    pub(crate) engine: Engine,
}

impl rk_engine {
    /// A new engine, owned by the caller from now on (until `rk_engine_free`).
    pub(super) fn into_raw(engine: Engine) -> *mut rk_engine {
        Box::into_raw(Box::new(rk_engine { engine }))
    }
}

impl std::ops::Deref for rk_engine {
    type Target = Engine;

    #[inline(always)]
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// Which clock an engine reads when no explicit time is given (the values
/// of `rk_engine_options.clock`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rk_clock {
    /// `CLOCK_MONOTONIC`, nanosecond resolution.
    RK_CLOCK_MONOTONIC = 0,
    /// `CLOCK_MONOTONIC_COARSE` (the default): the same time base, updated
    /// once per kernel tick (1-4 ms), several times cheaper to read.
    /// Decisions stay exact for the time read, which may lag by one tick.
    RK_CLOCK_MONOTONIC_COARSE = 1,
}

/// Options for `rk_engine_new` and `rk_engine_open_shared`.
///
/// Always start from `rk_engine_options_init(&opts)`, then change the
/// fields you care about. The struct only ever grows at its end:
/// `struct_size` (set by `rk_engine_options_init` to the `sizeof` the
/// program was compiled with) tells the library which fields the caller
/// knows; fields beyond it take their defaults, so a program compiled
/// against an older header keeps working with a newer library.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rk_engine_options {
    /// `sizeof(rk_engine_options)` as the caller knows it. Must cover at
    /// least `struct_size` and `capacity`, else `RK_ERR_INVALID_ARGUMENT`.
    pub struct_size: u32,
    /// Keys each policy tracks unless it asks for another number (default
    /// 65536, at least 1); rounded up to a whole number of buckets.
    pub capacity: u64,
    /// An `rk_clock` value (default `RK_CLOCK_MONOTONIC_COARSE`).
    pub clock: u32,
    /// Shared engines: the largest size in bytes the mapping may grow to as
    /// policies are added (default 1 GiB; pages are touched only when used).
    pub shared_max_bytes: u64,
    /// Shared engines: permission bits of a newly created file (default
    /// 0600), and the widest an existing file may have (`RK_ERR_UNSAFE_FILE`
    /// otherwise).
    pub shared_file_mode: u32,
}

impl rk_engine_options {
    fn defaults() -> rk_engine_options {
        let d = EngineOptions::default();
        rk_engine_options {
            struct_size: size_of::<rk_engine_options>() as u32,
            capacity: d.capacity as u64,
            clock: match d.clock {
                Clock::MonotonicCoarse => rk_clock::RK_CLOCK_MONOTONIC_COARSE,
                _ => rk_clock::RK_CLOCK_MONOTONIC,
            } as u32,
            shared_max_bytes: d.shared_max_bytes,
            shared_file_mode: d.shared_file_mode,
        }
    }
}

/// The smallest `struct_size` accepted: through `capacity`, the one field
/// the first version of the struct was defined around.
const MIN_OPTIONS_SIZE: usize = offset_of!(rk_engine_options, capacity) + size_of::<u64>();

/// Reads the caller's options (NULL: defaults), only the fields that fit in
/// its `struct_size`.
///
/// # Safety
/// `p` is NULL or points to a readable, aligned block of at least
/// `(*p).struct_size` bytes whose fields within that size are initialised.
pub(super) unsafe fn read_options(p: *const rk_engine_options) -> Result<EngineOptions, Failure> {
    let mut options = EngineOptions::default();
    if p.is_null() {
        return Ok(options);
    }
    if !p.is_aligned() {
        return Err(Failure::Misaligned("opts"));
    }
    // SAFETY: `p` is non-NULL and aligned; the rest is this function's contract.
    let size = unsafe { args::struct_size(p, MIN_OPTIONS_SIZE, "opts")? };
    macro_rules! field {
        ($field:ident: $ty:ty) => {
            args::versioned_field!(p, size, rk_engine_options, $field: $ty)
        };
    }
    if let Some(capacity) = field!(capacity: u64) {
        options.capacity = usize::try_from(capacity)
            .map_err(|_| Failure::Invalid(format!("opts->capacity {capacity} is too large")))?;
    }
    if let Some(clock) = field!(clock: u32) {
        options.clock = match clock {
            0 => Clock::Monotonic,
            1 => Clock::MonotonicCoarse,
            other => {
                return Err(Failure::Invalid(format!(
                    "opts->clock is {other}; expected RK_CLOCK_MONOTONIC (0) or \
                     RK_CLOCK_MONOTONIC_COARSE (1)"
                )))
            }
        };
    }
    if let Some(max) = field!(shared_max_bytes: u64) {
        options.shared_max_bytes = max;
    }
    if let Some(mode) = field!(shared_file_mode: u32) {
        options.shared_file_mode = mode;
    }
    Ok(options)
}

/// Fills `*opts` with every default and sets `opts->struct_size` to
/// `sizeof(rk_engine_options)`. Call it before changing any field.
///
/// NULL `opts` does nothing. Thread-safe (touches only `*opts`).
///
/// # Safety
/// `opts` is NULL or valid for writing an `rk_engine_options`.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_options_init(opts: *mut rk_engine_options) {
    ffi_panic_boundary!("rk_engine_options_init", (), {
        // SAFETY: forwarded from this function's contract.
        if let Ok(opts) = unsafe { Out::optional(opts, "opts") } {
            opts.write(rk_engine_options::defaults());
        }
    })
}

/// Creates an in-process engine and stores it in `*out`.
///
/// `opts` may be NULL for every default; otherwise it must have been set up
/// by `rk_engine_options_init` (it is only read during the call). The
/// caller owns the new engine and frees it with `rk_engine_free`; until
/// then, any number of threads may use it at once.
///
/// Errors: `RK_ERR_NULL_POINTER` (`out` is NULL), `RK_ERR_INVALID_ARGUMENT`
/// (bad `struct_size`, zero capacity, unknown clock),
/// `RK_ERR_UNSUPPORTED_PLATFORM` (no `cmpxchg16b`). `*out` is written only
/// on success.
///
/// # Safety
/// `opts` is NULL or points to an `rk_engine_options` of at least
/// `opts->struct_size` initialised bytes; `out` is NULL or valid for
/// writing an `rk_engine*`.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_new(
    opts: *const rk_engine_options,
    out: *mut *mut rk_engine,
) -> rk_status {
    ffi_panic_boundary!("rk_engine_new", {
        let out = try_out!(out);
        // SAFETY: forwarded from this function's contract.
        let options = unsafe { read_options(opts)? };
        out.write(rk_engine::into_raw(Engine::new(options)?));
    })
}

/// Creates or attaches the shared engine backed by the file at `path`
/// (normally under `/dev/shm`), and stores it in `*out`: every process that
/// opens the same path enforces the same limits together.
///
/// `path` is a NUL-terminated file name (any bytes, as on Unix). `opts` as
/// for `rk_engine_new`; `shared_max_bytes` and `shared_file_mode` apply
/// when the file is created, and an existing file with permission bits
/// beyond `shared_file_mode` is refused (`RK_ERR_UNSAFE_FILE`). The caller owns the engine and frees it with
/// `rk_engine_free` (which unmaps it; the file stays). Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`path` or `out` NULL),
/// `RK_ERR_INVALID_ARGUMENT`, `RK_ERR_IO` (the file cannot be opened or
/// mapped), `RK_ERR_CORRUPT` (not a valid ratekeeper file),
/// `RK_ERR_UNSAFE_FILE` (not a regular file, a symbolic link, owned by
/// another user, or a mode wider than `shared_file_mode`),
/// `RK_ERR_UNSUPPORTED_PLATFORM`. `*out` is written only on success.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `opts` and `out` as for
/// `rk_engine_new`.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_open_shared(
    path: *const c_char,
    opts: *const rk_engine_options,
    out: *mut *mut rk_engine,
) -> rk_status {
    ffi_panic_boundary!("rk_engine_open_shared", {
        // SAFETY: forwarded from this function's contract.
        let path = unsafe { args::path(path, "path")? };
        let out = try_out!(out);
        // SAFETY: forwarded from this function's contract.
        let options = unsafe { read_options(opts)? };
        out.write(rk_engine::into_raw(Engine::open_shared(path, options)?));
    })
}

/// Frees an engine and every policy in it. NULL does nothing.
///
/// Must be the last call on `engine`: no other thread may be using it, and
/// the pointer (and every policy id and permit of it) is invalid afterwards.
/// Permits still held are simply dropped; a shared engine's file stays.
///
/// # Safety
/// `engine` is NULL or was returned by `rk_engine_new`,
/// `rk_engine_open_shared` or `rk_engine_open_redis` and not freed yet, and
/// no other call on it is
/// running or will run.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_free(engine: *mut rk_engine) {
    ffi_panic_boundary!("rk_engine_free", (), {
        if !engine.is_null() {
            // SAFETY:
            // - `engine` came from `Box::into_raw` in `rk_engine_new`,
            //   `rk_engine_open_shared` or `rk_engine_open_redis` and has
            //   not been freed (contract);
            // - no other reference to it exists or will be used (contract).
            drop(unsafe { Box::from_raw(engine) });
        }
    })
}

/// The library's version, e.g. `"0.1.0"`: a static NUL-terminated string,
/// never NULL, never freed. Thread-safe.
#[no_mangle]
pub extern "C" fn rk_version() -> *const c_char {
    const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    ffi_panic_boundary!("rk_version", c"".as_ptr(), { VERSION.as_ptr().cast() })
}

/// The current time of `CLOCK_MONOTONIC` in nanoseconds: the time base of
/// every `*_at` function (`now_ns`), the same in every process of the host.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rk_now_ns() -> u64 {
    ffi_panic_boundary!("rk_now_ns", 0, { crate::clock::now_ns() })
}

/// The time the engine's own clock reads now (the one `rk_check` uses:
/// `CLOCK_MONOTONIC_COARSE` unless the options chose otherwise), written to
/// `*now_out`. Use it to make `*_at` calls consistent with `rk_check`.
/// On a Redis engine `rk_check` uses Redis's clock instead (one for all
/// hosts); this is then the local clock its fallback tables use.
/// Thread-safe.
///
/// # Safety
/// `engine` is NULL or a live engine; `now_out` is NULL or valid for
/// writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_engine_now_ns(engine: *mut rk_engine, now_out: *mut u64) -> rk_status {
    ffi_panic_boundary!("rk_engine_now_ns", {
        let engine = try_ref_from_ptr!(engine);
        let now_out = try_out!(now_out);
        now_out.write(engine.now_ns());
    })
}
