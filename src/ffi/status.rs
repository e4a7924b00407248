//! `rk_status`, `rk_status_str` and `rk_last_error`.

use super::boundary::{self, ffi_panic_boundary};
use crate::Error;
use std::ffi::{c_char, CStr};

/// The result of every fallible `rk_` function. `RK_OK` (0) is success;
/// every other value names one class of failure, and `rk_last_error()`
/// holds a message with the details.
///
/// The values are part of the ABI: they are never renumbered or reused, and
/// new ones are only ever added. A denied request is not an error: it is
/// `RK_OK` with `rk_decision.allowed == false`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum rk_status {
    /// Success.
    RK_OK = 0,
    /// A required pointer argument (the engine, an out-parameter, a name,
    /// a spec, a path, a permit) was NULL.
    RK_ERR_NULL_POINTER = 1,
    /// `key` was NULL while `key_len` was not 0 (NULL with length 0 is the
    /// empty key).
    RK_ERR_NULL_KEY = 2,
    /// A policy name or spec was not valid UTF-8.
    RK_ERR_INVALID_UTF8 = 3,
    /// A policy spec did not parse; the message names the byte position
    /// and what was expected there.
    RK_ERR_PARSE = 4,
    /// A policy spec parsed but asks for more than the engine supports
    /// (e.g. a count too large for its algorithm's state).
    RK_ERR_UNSUPPORTED_POLICY = 5,
    /// A policy of that name already exists with different limits.
    RK_ERR_POLICY_MISMATCH = 6,
    /// The policy id does not belong to this engine (or no policy has the
    /// name given to `rk_policy_find`).
    RK_ERR_UNKNOWN_POLICY = 7,
    /// The engine already holds `RK_MAX_POLICIES` policies.
    RK_ERR_TOO_MANY_POLICIES = 8,
    /// The operation needs the other kind of policy: `rk_check`,
    /// `rk_refund` on a concurrency policy, or `rk_acquire` on a rate limit.
    RK_ERR_WRONG_POLICY_KIND = 9,
    /// The permit was not issued by this engine, or was altered.
    RK_ERR_INVALID_PERMIT = 10,
    /// Timed out. (`rk_acquire_timeout` reports a timeout as `RK_OK` with
    /// `allowed == false`; this status is reserved for operations that
    /// cannot express it as a decision.)
    RK_ERR_TIMEOUT = 11,
    /// Not enough memory (e.g. for a policy's table).
    RK_ERR_OUT_OF_MEMORY = 12,
    /// An operating-system call failed (e.g. opening a shared file).
    RK_ERR_IO = 13,
    /// A shared-memory file is truncated, foreign or corrupt.
    RK_ERR_CORRUPT = 14,
    /// This CPU or OS lacks something the engine needs (e.g. `cmpxchg16b`).
    RK_ERR_UNSUPPORTED_PLATFORM = 15,
    /// An argument is out of range: zero capacity, an empty or too long
    /// policy name, a bad `struct_size`, an unknown enum value, a length
    /// larger than `PTRDIFF_MAX`, a misaligned pointer.
    RK_ERR_INVALID_ARGUMENT = 16,
    /// A Rust panic was caught at the boundary (a bug in ratekeeper: please
    /// report it with the message of `rk_last_error()`).
    RK_ERR_PANIC = 17,
    /// The caller's buffer is too small for the string asked for; the
    /// message says how many bytes are needed.
    RK_ERR_BUFFER_TOO_SMALL = 18,
    /// The Redis backend could not be used: unreachable at an operation
    /// that needs it, a refused password, or a server that is not Redis.
    RK_ERR_BACKEND = 19,
    /// The operation needs the other kind of engine: `rk_engine_redis_stats`
    /// on an engine that is not Redis-backed.
    RK_ERR_WRONG_ENGINE_KIND = 20,
    /// A shared-memory file that must not be trusted: not a regular file
    /// (a FIFO, a directory, ...), a symbolic link, owned by another user,
    /// or with permission bits beyond `shared_file_mode`. Nothing in it
    /// was read or changed.
    RK_ERR_UNSAFE_FILE = 21,
}

impl rk_status {
    /// The status of an engine error (also used by the Python binding).
    pub fn of(e: &Error) -> rk_status {
        // Exhaustive on purpose: a new `Error` variant must get a status.
        match e {
            Error::Parse(_) => rk_status::RK_ERR_PARSE,
            Error::Unsupported(_) => rk_status::RK_ERR_UNSUPPORTED_POLICY,
            Error::InvalidArgument(_) => rk_status::RK_ERR_INVALID_ARGUMENT,
            Error::PolicyMismatch { .. } => rk_status::RK_ERR_POLICY_MISMATCH,
            Error::UnknownPolicy(_) => rk_status::RK_ERR_UNKNOWN_POLICY,
            Error::TooManyPolicies(_) => rk_status::RK_ERR_TOO_MANY_POLICIES,
            Error::WrongPolicyKind(_) => rk_status::RK_ERR_WRONG_POLICY_KIND,
            Error::InvalidPermit => rk_status::RK_ERR_INVALID_PERMIT,
            Error::Timeout => rk_status::RK_ERR_TIMEOUT,
            Error::OutOfMemory(_) => rk_status::RK_ERR_OUT_OF_MEMORY,
            Error::Io(_) => rk_status::RK_ERR_IO,
            Error::Corrupt(_) => rk_status::RK_ERR_CORRUPT,
            Error::UnsafeFile(_) => rk_status::RK_ERR_UNSAFE_FILE,
            Error::UnsupportedPlatform(_) => rk_status::RK_ERR_UNSUPPORTED_PLATFORM,
            Error::Backend(_) => rk_status::RK_ERR_BACKEND,
        }
    }

    /// Every status, in value order (for tests).
    #[cfg(test)]
    pub(crate) const ALL: [rk_status; 22] = [
        rk_status::RK_OK,
        rk_status::RK_ERR_NULL_POINTER,
        rk_status::RK_ERR_NULL_KEY,
        rk_status::RK_ERR_INVALID_UTF8,
        rk_status::RK_ERR_PARSE,
        rk_status::RK_ERR_UNSUPPORTED_POLICY,
        rk_status::RK_ERR_POLICY_MISMATCH,
        rk_status::RK_ERR_UNKNOWN_POLICY,
        rk_status::RK_ERR_TOO_MANY_POLICIES,
        rk_status::RK_ERR_WRONG_POLICY_KIND,
        rk_status::RK_ERR_INVALID_PERMIT,
        rk_status::RK_ERR_TIMEOUT,
        rk_status::RK_ERR_OUT_OF_MEMORY,
        rk_status::RK_ERR_IO,
        rk_status::RK_ERR_CORRUPT,
        rk_status::RK_ERR_UNSUPPORTED_PLATFORM,
        rk_status::RK_ERR_INVALID_ARGUMENT,
        rk_status::RK_ERR_PANIC,
        rk_status::RK_ERR_BUFFER_TOO_SMALL,
        rk_status::RK_ERR_BACKEND,
        rk_status::RK_ERR_WRONG_ENGINE_KIND,
        rk_status::RK_ERR_UNSAFE_FILE,
    ];
}

/// The description of a status value, for messages (`rk_status_str`; the
/// Python binding's `status_str`).
pub fn describe(status: u32) -> &'static CStr {
    match status {
        0 => c"RK_OK: success",
        1 => c"RK_ERR_NULL_POINTER: a required pointer argument is NULL",
        2 => c"RK_ERR_NULL_KEY: the key is NULL but its length is not 0",
        3 => c"RK_ERR_INVALID_UTF8: a name or spec is not valid UTF-8",
        4 => c"RK_ERR_PARSE: the policy spec does not parse",
        5 => c"RK_ERR_UNSUPPORTED_POLICY: the policy asks for more than the engine supports",
        6 => c"RK_ERR_POLICY_MISMATCH: a policy of that name exists with other limits",
        7 => c"RK_ERR_UNKNOWN_POLICY: no such policy in this engine",
        8 => c"RK_ERR_TOO_MANY_POLICIES: the engine holds its maximum number of policies",
        9 => c"RK_ERR_WRONG_POLICY_KIND: the operation needs the other kind of policy (rate limit or concurrency)",
        10 => c"RK_ERR_INVALID_PERMIT: the permit was not issued by this engine",
        11 => c"RK_ERR_TIMEOUT: timed out",
        12 => c"RK_ERR_OUT_OF_MEMORY: out of memory",
        13 => c"RK_ERR_IO: an operating-system call failed",
        14 => c"RK_ERR_CORRUPT: the shared-memory file is not a valid ratekeeper file",
        15 => c"RK_ERR_UNSUPPORTED_PLATFORM: this CPU or OS lacks a feature the engine needs",
        16 => c"RK_ERR_INVALID_ARGUMENT: an argument is out of range",
        17 => c"RK_ERR_PANIC: internal error (a panic was caught; please report it)",
        18 => c"RK_ERR_BUFFER_TOO_SMALL: the buffer is too small",
        19 => c"RK_ERR_BACKEND: the Redis backend could not be used",
        20 => c"RK_ERR_WRONG_ENGINE_KIND: the operation needs a Redis-backed engine",
        21 => c"RK_ERR_UNSAFE_FILE: the shared-memory file is not a regular file owned by this user with the configured mode",
        _ => c"unknown rk_status value",
    }
}

/// A static, NUL-terminated description of `status` (its name, a colon and
/// a sentence), e.g. `"RK_ERR_PARSE: the policy spec does not parse"`.
///
/// Any value is accepted: one that is not an `rk_status` gets
/// `"unknown rk_status value"`. The string is never freed and never NULL.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rk_status_str(status: u32) -> *const c_char {
    ffi_panic_boundary!("rk_status_str", c"".as_ptr(), { describe(status).as_ptr() })
}

/// The message of the last failed `rk_` call on the calling thread (what
/// went wrong, in which function, with which argument), or `""` if no call
/// has failed on this thread yet.
///
/// Never NULL. The string belongs to the library: do not free it. It stays
/// valid until the next failing `rk_` call on the same thread (successful
/// calls never change it), so copy it before calling again if you need to
/// keep it. Each thread has its own message.
#[no_mangle]
pub extern "C" fn rk_last_error() -> *const c_char {
    ffi_panic_boundary!("rk_last_error", c"".as_ptr(), { boundary::last_error() })
}
