//! Per-key quota overrides: `rk_override_set`, `rk_override_clear`,
//! `rk_override_get`.

use super::args::{try_key, try_out, try_ref_from_ptr};
use super::boundary::ffi_panic_boundary;
use super::engine::rk_engine;
use super::status::rk_status;
use crate::PolicyId;

/// Keys of one policy that can carry an override (cleared ones included:
/// an override entry, once made for a key, keeps its place).
pub const RK_MAX_OVERRIDES: u32 = 1024;
const _: () = assert!(RK_MAX_OVERRIDES as usize == crate::MAX_OVERRIDES);

/// Gives `key` a quota of `factor` times the policy's own (e.g. 10.0 for a
/// partner's API key, 0.5 for a suspicious one), from now on, for every
/// thread and every process sharing the engine. Applies to `gcra`,
/// `fixed_window` and `sliding_window` limits (count and burst are scaled,
/// at least 1); `sliding_log` limits keep their count. `factor` is kept in
/// thousandths (rounded), from 0.001 to 16777.215.
///
/// `key` is only read during the call (NULL with `key_len` 0 is the empty
/// key). Lock-free. Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine`), `RK_ERR_NULL_KEY`,
/// `RK_ERR_INVALID_ARGUMENT` (`factor` out of range, NaN or infinite),
/// `RK_ERR_UNKNOWN_POLICY`, `RK_ERR_WRONG_POLICY_KIND` (a concurrency
/// policy), `RK_ERR_UNSUPPORTED_POLICY` (the policy's override table already
/// holds `RK_MAX_OVERRIDES` keys).
///
/// # Safety
/// `engine` is NULL or a live engine; `key` is NULL or points to `key_len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rk_override_set(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    factor: f64,
) -> rk_status {
    ffi_panic_boundary!("rk_override_set", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        engine.set_override(PolicyId(policy), key, factor)?;
    })
}

/// Removes `key`'s override under `policy`: it gets the policy's own quota
/// again, at once. Clearing a key without an override is not an error.
///
/// Key rules and threading as for `rk_override_set`. Errors:
/// `RK_ERR_NULL_POINTER` (`engine`), `RK_ERR_NULL_KEY`,
/// `RK_ERR_UNKNOWN_POLICY`.
///
/// # Safety
/// As for `rk_override_set`.
#[no_mangle]
pub unsafe extern "C" fn rk_override_clear(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
) -> rk_status {
    ffi_panic_boundary!("rk_override_clear", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        engine.clear_override(PolicyId(policy), key)?;
    })
}

/// Stores `key`'s override factor under `policy` in `*factor_out`: 0.0
/// when the key has none (its quota is the policy's own). The factor is
/// the one kept, in thousandths (e.g. 2.5 for 2.5; 0.001 for 0.0012).
///
/// Key rules and threading as for `rk_override_set`. Errors:
/// `RK_ERR_NULL_POINTER` (`engine` or `factor_out`), `RK_ERR_NULL_KEY`,
/// `RK_ERR_UNKNOWN_POLICY`. `*factor_out` is written only on success.
///
/// # Safety
/// As for `rk_override_set`; `factor_out` is NULL or valid for writing a
/// `double`.
#[no_mangle]
pub unsafe extern "C" fn rk_override_get(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    factor_out: *mut f64,
) -> rk_status {
    ffi_panic_boundary!("rk_override_get", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let factor_out = try_out!(factor_out);
        factor_out.write(engine.override_of(PolicyId(policy), key)?.unwrap_or(0.0));
    })
}
