//! Concurrency permits: `rk_permit`, `rk_acquire*`, `rk_release*`.

use super::args::{try_key, try_opt_out, try_out, try_ref_from_ptr, Failure, Out};
use super::boundary::ffi_panic_boundary;
use super::check::rk_decision;
use super::engine::rk_engine;
use super::status::rk_status;
use crate::engine::Permit;
use crate::{Decision, PolicyId};
use std::time::Duration;

/// A permit of a concurrency policy, from `rk_acquire*`. A plain value the
/// caller owns: copy it, store it, give it back with `rk_release`. Its
/// `opaque` words identify the engine and the lease; do not change them
/// (an altered or foreign permit is refused with `RK_ERR_INVALID_PERMIT`).
/// A permit never released expires after the policy's lease TTL.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_permit {
    /// The policy the permit belongs to.
    pub policy: u32,
    /// Reserved (0).
    pub reserved: u32,
    /// The engine and the lease, in the library's own encoding.
    pub opaque: [u64; 5],
}

// Encoding of `opaque`:
//
// | word | leased permit                          | unleased permit         |
// |------|----------------------------------------|-------------------------|
// | 0    | engine id (`Permit::engine`)           | address of `rk_engine`  |
// | 1    | bucket (bits 0-31), slot (32-39), index (40-55) | 0              |
//        (the words of `Permit::into_raw_parts`)
// | 2, 3 | lease word, low and high halves        | 0                       |
// | 4    | 0                                      | `UNLEASED`              |
//
// An unleased permit is what a policy with `RK_WHEN_FULL_FAIL_OPEN` hands
// out when it admits a request without room for a lease: releasing it does
// nothing, so callers can treat every allowed acquire alike.
const UNLEASED: u64 = 1;

impl From<Permit> for rk_permit {
    fn from(p: Permit) -> Self {
        let (policy, [engine, place, lo, hi]) = p.into_raw_parts();
        rk_permit {
            policy,
            reserved: 0,
            opaque: [engine, place, lo, hi, 0],
        }
    }
}

impl rk_permit {
    /// The permit of a request admitted without a lease (fail-open).
    fn unleased(engine: &rk_engine, policy: u32) -> rk_permit {
        rk_permit {
            policy,
            reserved: 0,
            opaque: [engine as *const rk_engine as u64, 0, 0, 0, UNLEASED],
        }
    }

    /// Decodes a permit presented to `engine`: `Ok(None)` for an unleased
    /// one. Any encoding this module cannot produce is refused.
    fn decode(&self, engine: &rk_engine) -> Result<Option<Permit>, Failure> {
        let invalid = || Failure::Engine(crate::Error::InvalidPermit);
        if *self == rk_permit::unleased(engine, self.policy) {
            return Ok(None);
        }
        let [id, place, lo, hi, _] = self.opaque;
        let permit = Permit::from_raw_parts(self.policy, [id, place, lo, hi]);
        let (_, parts) = permit.raw_parts();
        // A live lease word is never 0 (it holds an expiry time of at least 1).
        let canonical = rk_permit {
            policy: self.policy,
            reserved: 0,
            opaque: [parts[0], parts[1], parts[2], parts[3], 0],
        };
        if permit.lease.word == 0 || canonical != *self {
            return Err(invalid());
        }
        Ok(Some(permit))
    }
}

/// Writes the outcome of an `rk_acquire*` call: the permit, if the request
/// was allowed (an unleased one if it was admitted without a lease), and
/// the decision.
fn write_acquired(
    engine: &rk_engine,
    policy: PolicyId,
    (d, permit): (Decision, Option<Permit>),
    permit_out: Out<'_, rk_permit>,
    out: Out<'_, rk_decision>,
) {
    // `allowed` tells the caller whether `*permit_out` was written.
    match permit {
        Some(permit) => permit_out.write(permit.into()),
        None if d.allowed => permit_out.write(rk_permit::unleased(engine, policy.index())),
        None => {}
    }
    out.write(d.into());
}

/// Takes a permit of the concurrency policy `policy` for `key` if one is
/// free now, at the engine clock's time.
///
/// Returns `RK_OK` whether or not a permit was free: `out->allowed` says
/// which. When allowed, the permit is stored in `*permit_out` and the
/// caller must give it back with `rk_release` (or it expires after the
/// policy's lease TTL); when denied, `*permit_out` is left untouched and
/// `out->retry_after_ns` tells when a lease expires at the latest. (A
/// policy added with `RK_WHEN_FULL_FAIL_OPEN` that admits a request
/// without room for a lease still writes a permit, whose release does
/// nothing.)
/// Never blocks. Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine`, `permit_out` or `out`),
/// `RK_ERR_NULL_KEY`, `RK_ERR_UNKNOWN_POLICY`, `RK_ERR_WRONG_POLICY_KIND`
/// (a rate-limit policy: use `rk_check`).
///
/// # Safety
/// `engine` is NULL or a live engine; `key` is NULL or points to `key_len`
/// readable bytes; `permit_out` and `out` are NULL or valid for writing an
/// `rk_permit` and an `rk_decision`.
#[no_mangle]
pub unsafe extern "C" fn rk_acquire(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    permit_out: *mut rk_permit,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_acquire", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let (permit_out, out) = (try_out!(permit_out), try_out!(out));
        let acquired = engine.acquire(PolicyId(policy), key)?;
        write_acquired(engine, PolicyId(policy), acquired, permit_out, out);
    })
}

/// `rk_acquire` at the explicit time `now_ns` (the lease expires at
/// `now_ns` plus the policy's TTL).
///
/// # Safety
/// As for `rk_acquire`.
#[no_mangle]
pub unsafe extern "C" fn rk_acquire_at(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    now_ns: u64,
    permit_out: *mut rk_permit,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_acquire_at", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let (permit_out, out) = (try_out!(permit_out), try_out!(out));
        let acquired = engine.acquire_at(PolicyId(policy), key, now_ns)?;
        write_acquired(engine, PolicyId(policy), acquired, permit_out, out);
    })
}

/// `rk_acquire`, waiting up to `timeout_ns` nanoseconds (real time) for a
/// permit to be released or to expire. Sleeps (on a futex), never spins;
/// other threads may keep using the engine meanwhile. A policy added with
/// `RK_WHEN_FULL_FAIL_OPEN` whose table has no room for the key admits the
/// request at once with an unleased permit (waiting would not change that).
///
/// Running out of time is not an error: the call returns `RK_OK` with
/// `out->allowed == false` and `*permit_out` untouched, exactly as
/// `rk_acquire` does when no permit is free. Errors as for `rk_acquire`.
///
/// # Safety
/// As for `rk_acquire`.
#[no_mangle]
pub unsafe extern "C" fn rk_acquire_timeout(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    timeout_ns: u64,
    permit_out: *mut rk_permit,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_acquire_timeout", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let (permit_out, out) = (try_out!(permit_out), try_out!(out));
        let timeout = Duration::from_nanos(timeout_ns);
        let acquired = engine.acquire_timeout(PolicyId(policy), key, timeout)?;
        write_acquired(engine, PolicyId(policy), acquired, permit_out, out);
    })
}

/// Gives a permit back, waking one waiting `rk_acquire_timeout`. Releasing
/// a permit whose lease already expired (and may now belong to someone
/// else, who keeps it) or that was already released is not an error: it
/// does nothing.
///
/// `permit` is only read during the call. Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine` or `permit`),
/// `RK_ERR_INVALID_PERMIT` (a permit of another engine, or altered),
/// `RK_ERR_UNKNOWN_POLICY`.
///
/// # Safety
/// `engine` is NULL or a live engine; `permit` is NULL or points to a
/// readable `rk_permit`.
#[no_mangle]
pub unsafe extern "C" fn rk_release(engine: *mut rk_engine, permit: *const rk_permit) -> rk_status {
    ffi_panic_boundary!("rk_release", {
        let engine = try_ref_from_ptr!(engine);
        let permit = try_ref_from_ptr!(permit);
        if let Some(permit) = permit.decode(engine)? {
            engine.release(permit)?;
        }
    })
}

/// Gives a permit back, like `rk_release`, and says whether this call
/// released it: `*released_out` is true if the permit's lease was live and
/// is now free, false if it had expired, was released already (a second
/// release of the same permit, or of a copy of it) or is an unleased
/// (fail-open) permit. A permit names one lease only (its lease word
/// carries a nonce): releasing it twice never frees another holder's
/// permit. `released_out` may be NULL.
///
/// Errors: as `rk_release`.
///
/// # Safety
/// `engine` is NULL or a live engine; `permit` is NULL or points to a
/// readable `rk_permit`; `released_out` is NULL or valid for writing a
/// `bool`.
#[no_mangle]
pub unsafe extern "C" fn rk_release_permit(
    engine: *mut rk_engine,
    permit: *const rk_permit,
    released_out: *mut bool,
) -> rk_status {
    ffi_panic_boundary!("rk_release_permit", {
        let engine = try_ref_from_ptr!(engine);
        let permit = try_ref_from_ptr!(permit);
        let released_out = try_opt_out!(released_out);
        let released = match permit.decode(engine)? {
            Some(permit) => engine.release(permit)?,
            None => false,
        };
        released_out.write(released);
    })
}

/// Releases every permit of `policy` held by process `pid` (for a
/// supervisor that saw a worker die) and, if `released_out` is not NULL,
/// stores how many were released. Thread-safe.
///
/// Only a dead process's permits: `pid` must name no live process in the
/// caller's PID namespace (no process, or a zombie: exited, not yet
/// reaped). A lease records the holder's pid only, so after the pid is
/// reused by a live process, freeing "its" permits would free that
/// process's. Every process sharing an engine's file, and the supervisor,
/// must therefore share one PID namespace: a pid from another namespace
/// names another process here, or none.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine`), `RK_ERR_UNKNOWN_POLICY`,
/// `RK_ERR_INVALID_ARGUMENT` (nothing released): `pid` is a live process
/// (also one the caller may not signal), the calling process itself, 0,
/// or 2^22 or more. On a rate-limit policy it releases nothing (0).
///
/// # Safety
/// `engine` is NULL or a live engine; `released_out` is NULL or valid for
/// writing a `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_release_holder(
    engine: *mut rk_engine,
    policy: u32,
    pid: u32,
    released_out: *mut u64,
) -> rk_status {
    ffi_panic_boundary!("rk_release_holder", {
        let engine = try_ref_from_ptr!(engine);
        let released_out = try_opt_out!(released_out);
        released_out.write(engine.release_holder(PolicyId(policy), pid)?);
    })
}
