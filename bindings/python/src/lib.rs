//! `ratekeeper._ratekeeper`: the one binding of the Python package, linking
//! the `ratekeeper` crate directly.
//!
//! - [`decision`]: `Decision`, an immutable value of plain Rust integers,
//!   and the `RateLimit` header fields built from one.
//! - [`engine`]: `Handle` (an engine, closable from any thread) and
//!   `Checker`, the base class of `ratekeeper.Policy` whose `check`,
//!   `peek` and `refund` are the hot path.
//! - here: module plumbing: keys, costs and times taken from Python
//!   objects without copying, and errors mapped to `ratekeeper.errors`.
//!
//! Threading: calls on an in-process or shared engine keep the GIL (they
//! take tens of nanoseconds and never block); calls that wait — every call
//! of a Redis engine, and `acquire` with a timeout — release it.

mod decision;
mod engine;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyInt, PyMemoryView, PyString};

/// Where an error came from: the prefix of its message, as the C ABI's
/// `rk_last_error()` names its function.
pub(crate) type Origin = &'static str;

/// The exception for a library error: the class `ratekeeper.errors` maps
/// its `rk_status` to, with the message `"<origin>: <error>"`.
#[cold]
#[inline(never)]
pub(crate) fn engine_error(py: Python<'_>, origin: Origin, e: &ratekeeper::Error) -> PyErr {
    let status = ratekeeper::ffi::status::rk_status::of(e) as i64;
    status_error(py, status, &format!("{origin}: {e}"))
}

/// `ratekeeper.errors.error_for_status(status, message)` as a `PyErr`.
#[cold]
#[inline(never)]
pub(crate) fn status_error(py: Python<'_>, status: i64, message: &str) -> PyErr {
    let made = py
        .import("ratekeeper.errors")
        .and_then(|m| m.getattr("error_for_status"))
        .and_then(|f| f.call1((status, message)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// `ratekeeper.errors.EngineClosed(message)`.
#[cold]
#[inline(never)]
pub(crate) fn engine_closed(py: Python<'_>, message: &str) -> PyErr {
    let made = py
        .import("ratekeeper.errors")
        .and_then(|m| m.getattr("EngineClosed"))
        .and_then(|cls| cls.call1((message,)));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

#[cold]
#[inline(never)]
fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Calls `f` with the bytes of a key: a `str` (its UTF-8, cached in the
/// object: no copy) or `bytes` (no copy); a `bytearray` or `memoryview` is
/// copied first (it could change while the engine reads it).
#[inline(always)]
pub(crate) fn with_key<R>(
    key: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8]) -> PyResult<R>,
) -> PyResult<R> {
    if let Ok(s) = key.cast_exact::<PyString>() {
        return f(s.to_str()?.as_bytes());
    }
    if let Ok(b) = key.cast_exact::<PyBytes>() {
        return f(b.as_bytes());
    }
    let owned = key_bytes(key)?;
    f(owned.as_bytes())
}

/// The slow part of [`with_key`]: subclasses of `str` and `bytes`, and
/// copies of bytearrays and memoryviews.
#[cold]
#[inline(never)]
pub(crate) fn key_bytes<'py>(key: &Bound<'py, PyAny>) -> PyResult<KeyBytes<'py>> {
    if let Ok(s) = key.cast::<PyString>() {
        return Ok(KeyBytes::Str(s.clone()));
    }
    if let Ok(b) = key.cast::<PyBytes>() {
        return Ok(KeyBytes::Bytes(b.clone()));
    }
    if key.cast::<PyByteArray>().is_ok() || key.cast::<PyMemoryView>().is_ok() {
        let copy = key.py().get_type::<PyBytes>().call1((key,))?;
        return Ok(KeyBytes::Bytes(copy.cast_into::<PyBytes>()?));
    }
    Err(PyTypeError::new_err(format!(
        "key must be str or bytes, not {}",
        type_name(key)
    )))
}

/// A key object whose bytes stay valid while it is held.
pub(crate) enum KeyBytes<'py> {
    Str(Bound<'py, PyString>),
    Bytes(Bound<'py, PyBytes>),
}

impl KeyBytes<'_> {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            // `to_str` only fails on lone surrogates; `key_bytes` callers
            // convert with `checked` first.
            KeyBytes::Str(s) => s.to_str().map(str::as_bytes).unwrap_or(b""),
            KeyBytes::Bytes(b) => b.as_bytes(),
        }
    }

    /// Fails (UnicodeEncodeError) on a str that is not valid UTF-8.
    pub(crate) fn checked(self) -> PyResult<Self> {
        if let KeyBytes::Str(s) = &self {
            s.to_str()?;
        }
        Ok(self)
    }
}

/// A `cost` argument: `None` is 1; otherwise an int (not a bool) in
/// `0..=u32::MAX`.
#[inline(always)]
pub(crate) fn cost_of(cost: Option<&Bound<'_, PyAny>>) -> PyResult<u32> {
    match cost {
        None => Ok(1),
        Some(c) if c.is_exact_instance_of::<PyInt>() => {
            c.extract::<u32>().map_err(|_| cost_range())
        }
        Some(c) => cost_slow(c),
    }
}

#[cold]
#[inline(never)]
fn cost_range() -> PyErr {
    PyValueError::new_err("cost must be an int in 0..4294967295")
}

#[cold]
#[inline(never)]
fn cost_slow(c: &Bound<'_, PyAny>) -> PyResult<u32> {
    if !c.is_instance_of::<PyInt>() || c.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "cost must be an int, not {}",
            type_name(c)
        )));
    }
    c.extract::<u32>().map_err(|_| cost_range())
}

/// A `now_ns` argument: `None` (the engine's clock) or an int (not a bool)
/// in `0..=u64::MAX`.
#[inline(always)]
pub(crate) fn now_of(now: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
    match now {
        None => Ok(None),
        Some(n) if n.is_none() => Ok(None),
        Some(n) if n.is_exact_instance_of::<PyInt>() => {
            n.extract::<u64>().map(Some).map_err(|_| now_range())
        }
        Some(n) => now_slow(n),
    }
}

#[cold]
#[inline(never)]
fn now_range() -> PyErr {
    PyValueError::new_err("now_ns must be an int in 0..2**64-1")
}

#[cold]
#[inline(never)]
fn now_slow(n: &Bound<'_, PyAny>) -> PyResult<Option<u64>> {
    if !n.is_instance_of::<PyInt>() || n.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!(
            "now_ns must be an int or None, not {}",
            type_name(n)
        )));
    }
    n.extract::<u64>().map(Some).map_err(|_| now_range())
}

/// The crate's version (`rk_version()`); the package checks it at import.
#[pyfunction]
fn version() -> &'static str {
    ratekeeper::VERSION
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the time base of every `now_ns`.
#[pyfunction]
fn now_ns() -> u64 {
    ratekeeper::clock::now_ns()
}

/// The C ABI's description of an `rk_status` value (`rk_status_str`).
#[pyfunction]
fn status_str(status: u32) -> String {
    ratekeeper::ffi::status::describe(status)
        .to_string_lossy()
        .into_owned()
}

#[pymodule]
fn _ratekeeper(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(now_ns, m)?)?;
    m.add_function(wrap_pyfunction!(status_str, m)?)?;
    m.add_function(wrap_pyfunction!(decision::rate_limit_fields, m)?)?;
    decision::init(m)?;
    m.add_class::<engine::Handle>()?;
    m.add_class::<engine::Checker>()?;
    m.add("DENY_RING_ENTRIES", ratekeeper::RING_ENTRIES)?;
    m.add("MAX_POLICIES", ratekeeper::MAX_POLICIES)?;
    Ok(())
}
