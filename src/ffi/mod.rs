//! The C ABI: `include/ratekeeper.h` is generated from this module by
//! cbindgen (see `build.rs` and `cbindgen.toml`). This is the only module of
//! the crate with `#[no_mangle]` functions.
//!
//! One module per C "class":
//!
//! | module | C names |
//! |---|---|
//! | [`status`] | `rk_status`, `rk_status_str`, `rk_last_error` |
//! | [`engine`] | `rk_engine`, `rk_engine_options`, `rk_engine_*`, `rk_version`, `rk_now_ns` |
//! | [`policy`] | `rk_policy_options`, `rk_limit`, `rk_stats`, `rk_policy_*` |
//! | [`check`] | `rk_decision`, `rk_check_item`, `rk_check*`, `rk_peek*`, `rk_refund*`, `rk_reset` |
//! | [`permit`] | `rk_permit`, `rk_acquire*`, `rk_release*` |
//! | [`overrides`] | `rk_override_*` (per-key quota factors) |
//! | [`events`] | `rk_deny_event`, `rk_recent_denials` |
//! | [`redis`] | `rk_redis_options`, `rk_redis_stats`, `rk_engine_open_redis`, `rk_engine_redis_stats` |
//!
//! The plumbing lives in private modules, so that each export reads as
//! what it does in a few lines: `boundary` (the panic boundary,
//! `ffi_panic_boundary!`, and the thread-local last-error message) and
//! `args` (turning C pointers into Rust references, slices, strings and
//! out-parameters: `try_ref_from_ptr!`, `try_key!`, `try_slice!`,
//! `try_slice_mut!`, `try_str!`, `try_out!`, `try_opt_out!`; each check
//! reported as a `Failure`). A typical export:
//!
//! ```text
//! ffi_panic_boundary!("rk_override_get", {
//!     let engine = try_ref_from_ptr!(engine);
//!     let key = try_key!(key, key_len);
//!     let factor_out = try_out!(factor_out);
//!     factor_out.write(engine.override_of(PolicyId(policy), key)?.unwrap_or(0.0));
//! })
//! ```
//!
//! Conventions, which every function's documentation repeats where it matters:
//!
//! - Every function returns an `rk_status`; `RK_OK` (0) is success. A denied
//!   request is a decision (`rk_decision.allowed == false`), never an error.
//! - Out-parameters are written only on success.
//! - On failure, `rk_last_error()` describes what went wrong, on the calling
//!   thread. Successful calls never touch it (the hot path stays free of
//!   thread-local accesses and allocation).
//! - No panic crosses the boundary: one becomes `RK_ERR_PANIC`.
//! - An `rk_engine*` is thread-safe: share one pointer between all threads.
//!
//! Rust programs use [`crate::Engine`] directly; these functions are public
//! so that Rust fuzzers and tests can drive the exact code that C runs.

#![allow(non_camel_case_types)]

mod args;
mod boundary;

// In the order the header presents them.
pub mod check;
pub mod engine;
pub mod events;
pub mod overrides;
pub mod permit;
pub mod policy;
pub mod redis;
pub mod status;

pub(crate) use args::Failure;

#[cfg(test)]
mod tests;
