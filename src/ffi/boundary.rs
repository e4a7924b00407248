//! The panic boundary every export runs behind, and the thread-local
//! message of the last failure.
//!
//! Every `extern "C"` function of the crate is a thin shell around
//! [`ffi_panic_boundary!`], which runs its body in `catch_unwind` through
//! [`run`] (for functions that return an `rk_status`) or [`run_infallible`]
//! (for the few that return a value): a [`Failure`] becomes its status plus
//! a message in the thread-local buffer, and a panic becomes `RK_ERR_PANIC`.
//!
//! The success path touches neither the thread-local buffer nor the heap:
//! the message is only formatted in the `#[cold]` failure path, into a
//! fixed buffer (no allocation there either, beyond what the engine's own
//! error carries).

use super::status::rk_status;
use super::Failure;
use std::any::Any;
use std::cell::RefCell;
use std::ffi::c_char;
use std::fmt::{self, Write as _};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Bytes kept of a last-error message, including the terminating NUL.
/// Longer messages are cut at a character boundary.
const MESSAGE_CAPACITY: usize = 1024;

thread_local! {
    /// This thread's last failure message, NUL-terminated ("" before the
    /// first failure). A plain byte array: const-initialised and without a
    /// destructor, so it never allocates and its address is stable for the
    /// thread's lifetime.
    static LAST_ERROR: RefCell<[u8; MESSAGE_CAPACITY]> =
        const { RefCell::new([0; MESSAGE_CAPACITY]) };
}

/// The body of an `rk_*` export, behind the panic boundary (rustls-ffi's
/// `ffi_panic_boundary!`). Used inside the function, so that cbindgen still
/// sees the `extern "C" fn` with its documentation.
///
/// - `ffi_panic_boundary!("rk_name", { statements })` returns an
///   `rk_status`: `RK_OK` when the statements (of type `()`) complete;
///   a [`Failure`] raised by `?` (or a `return Err(..)`) in them becomes its
///   status and, prefixed with `rk_name`, the thread's last-error message;
///   a panic becomes `RK_ERR_PANIC`.
/// - `ffi_panic_boundary!("rk_name", on_panic, { expression })` returns
///   the block's value, or `on_panic` after a panic (for the few exports
///   that cannot fail and return a value, or nothing: `on_panic` is `()`).
///
/// The body is an always-inlined `move` closure. `move`: the export's
/// parameters (raw pointers and integers, all `Copy`) are copied into it;
/// captured by reference, each was spilled to the stack and read back
/// through a pointer on every call. Inlined: into `run`'s closure, which
/// returns the 4-byte status, instead of a call of its own returning the
/// 72-byte `Result<(), Failure>` through memory. (callgrind,
/// `examples/instructions.rs c`, instructions per `rk_check_at`: 415, 397
/// with `move`, 384 with both.)
macro_rules! ffi_panic_boundary {
    ($function:literal, $body:block) => {
        $crate::ffi::boundary::run(
            $function,
            #[inline(always)]
            move || {
                let () = $body;
                Ok(())
            },
        )
    };
    ($function:literal, $on_panic:expr, $body:block) => {
        $crate::ffi::boundary::run_infallible(
            $function,
            $on_panic,
            #[inline(always)]
            move || $body,
        )
    };
}
pub(crate) use ffi_panic_boundary;

/// Runs the body of `function` behind the panic boundary.
///
/// `AssertUnwindSafe` is sound here: a panic is reported to C and the
/// engine stays usable, because all of its shared state is atomics (a torn
/// update is impossible) and its one lock (policy creation) tolerates
/// poisoning.
#[inline(always)]
pub(crate) fn run<F>(function: &'static str, body: F) -> rk_status
where
    F: FnOnce() -> Result<(), Failure>,
{
    match catch_unwind(AssertUnwindSafe(|| match body() {
        Ok(()) => rk_status::RK_OK,
        Err(failure) => fail(function, &failure),
    })) {
        Ok(status) => status,
        Err(payload) => panicked(function, payload),
    }
}

/// Runs the body of a function that cannot fail but returns a value
/// behind the panic boundary: a panic returns `on_panic` (and records the
/// message, though the caller has no status telling it to look).
#[inline(always)]
pub(crate) fn run_infallible<T, F>(function: &'static str, on_panic: T, body: F) -> T
where
    F: FnOnce() -> T,
{
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            panicked(function, payload);
            on_panic
        }
    }
}

/// Records `failure` as the thread's last error; returns its status.
#[cold]
#[inline(never)]
fn fail(function: &'static str, failure: &Failure) -> rk_status {
    record(format_args!("{function}: {failure}"));
    failure.status()
}

/// Records a caught panic; returns `RK_ERR_PANIC`.
#[cold]
#[inline(never)]
fn panicked(function: &'static str, payload: Box<dyn Any + Send>) -> rk_status {
    let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "(a panic payload that is not a string)"
    };
    record(format_args!(
        "{function}: internal error (panic): {message}"
    ));
    // Dropping the payload runs foreign code that could itself panic:
    // contain that too (and leak the second payload rather than recurse).
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
    rk_status::RK_ERR_PANIC
}

/// Writes `message` into this thread's buffer, NUL-terminated, cut to fit.
fn record(message: fmt::Arguments<'_>) {
    // `try_with`: during thread teardown the buffer may be gone; then there
    // is nowhere to put the message and nobody left to read it.
    let _ = LAST_ERROR.try_with(|cell| {
        // `try_borrow_mut`: `record` never re-enters itself, but if it ever
        // did, losing a message beats panicking.
        if let Ok(mut buf) = cell.try_borrow_mut() {
            let mut w = Truncating {
                buf: &mut buf[..MESSAGE_CAPACITY - 1],
                len: 0,
            };
            let _ = w.write_fmt(message);
            let len = w.len;
            buf[len] = 0;
        }
    });
}

/// The thread's last message (`""` before any failure, or if the thread's
/// storage is already torn down).
pub(crate) fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|cell| cell.as_ptr() as *const c_char)
        .unwrap_or(c"".as_ptr())
}

/// The thread's last message as a Rust string (for tests).
#[cfg(test)]
pub(crate) fn last_error_string() -> String {
    // SAFETY:
    // - `last_error` returns a pointer to this thread's NUL-terminated
    //   buffer (or a static ""), valid while this thread runs;
    // - no `rk_` call runs during this read, so nothing writes to it.
    unsafe { std::ffi::CStr::from_ptr(last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A `fmt::Write` into a fixed buffer that drops what does not fit (at a
/// character boundary) and replaces NUL bytes, which would end the C string.
struct Truncating<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for Truncating<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for ch in s.chars() {
            let ch = if ch == '\0' { '?' } else { ch };
            let mut utf8 = [0; 4];
            let bytes = ch.encode_utf8(&mut utf8).as_bytes();
            let end = self.len + bytes.len();
            if end > self.buf.len() {
                return Err(fmt::Error);
            }
            self.buf[self.len..end].copy_from_slice(bytes);
            self.len = end;
        }
        Ok(())
    }
}
