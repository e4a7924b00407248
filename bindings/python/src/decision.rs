//! `Decision`: the outcome of a check, an immutable value of plain
//! integers (nothing is converted to a Python object until it is read),
//! and `rate_limit_fields`, the `RateLimit` header fields of one.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyTuple};
use std::fmt::Write as _;

const NEVER: u64 = u64::MAX;

/// The outcome of a check: immutable, hashable, comparable.
///
/// Fields (as the Rust `ratekeeper::Decision`): `allowed`; `limit` (quota of
/// the binding limit; for GCRA the burst); `remaining` (requests of cost 1
/// still allowed now under the binding limit); `retry_after_ns` (when
/// denied, wait at least this long; 0 when allowed; `2**64-1` when the cost
/// can never be allowed); `reset_after_ns` (time until the binding limit is
/// back to full quota); `limit_index` (index of the binding limit in its
/// policy). `retry_after` and `reset_after` are the same in seconds, as
/// floats (`retry_after` is `math.inf` for "never"). Where the library
/// reports them (penalty box, shadow mode): `banned` and `shadow_denied`,
/// else always False.
///
/// `Decision(allowed, limit, remaining, retry_after_ns, reset_after_ns,
/// limit_index=0, banned=False, shadow_denied=False)` builds one by hand
/// (e.g. in tests).
#[pyclass(frozen, module = "ratekeeper", name = "Decision")]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decision {
    /// The request may proceed.
    #[pyo3(get)]
    pub allowed: bool,
    /// Quota of the binding limit (for GCRA, the burst).
    #[pyo3(get)]
    pub limit: u64,
    /// Requests of cost 1 still allowed now under the binding limit.
    #[pyo3(get)]
    pub remaining: u64,
    /// When denied, wait at least this long (ns); 0 when allowed.
    #[pyo3(get)]
    pub retry_after_ns: u64,
    /// Time until the binding limit is back to full quota (ns).
    #[pyo3(get)]
    pub reset_after_ns: u64,
    /// Index of the binding limit within its policy.
    #[pyo3(get)]
    pub limit_index: u32,
    /// Denied by the penalty box.
    #[pyo3(get)]
    pub banned: bool,
    /// Shadow mode: passed, but would have been denied.
    #[pyo3(get)]
    pub shadow_denied: bool,
}

impl From<ratekeeper::Decision> for Decision {
    #[inline(always)]
    fn from(d: ratekeeper::Decision) -> Self {
        Decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ns: d.retry_after_ns,
            reset_after_ns: d.reset_after_ns,
            limit_index: d.limit_index,
            banned: d.banned,
            shadow_denied: d.shadow_denied,
        }
    }
}

type Fields = (bool, u64, u64, u64, u64, u32, bool, bool);

fn truthy(v: Option<&Bound<'_, PyAny>>) -> PyResult<bool> {
    v.map_or(Ok(false), |v| v.is_truthy())
}

impl Decision {
    fn fields(&self) -> Fields {
        (
            self.allowed,
            self.limit,
            self.remaining,
            self.retry_after_ns,
            self.reset_after_ns,
            self.limit_index,
            self.banned,
            self.shadow_denied,
        )
    }

    fn seconds(ns: u64) -> f64 {
        if ns == NEVER {
            f64::INFINITY
        } else {
            ns as f64 / 1e9
        }
    }
}

#[pymethods]
impl Decision {
    #[new]
    #[pyo3(signature = (allowed, limit, remaining, retry_after_ns, reset_after_ns, limit_index=0, banned=None, shadow_denied=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        allowed: &Bound<'_, PyAny>,
        limit: u64,
        remaining: u64,
        retry_after_ns: u64,
        reset_after_ns: u64,
        limit_index: u32,
        banned: Option<&Bound<'_, PyAny>>,
        shadow_denied: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        Ok(Decision {
            allowed: allowed.is_truthy()?,
            limit,
            remaining,
            retry_after_ns,
            reset_after_ns,
            limit_index,
            banned: truthy(banned)?,
            shadow_denied: truthy(shadow_denied)?,
        })
    }

    /// Seconds to wait before retrying (0.0 when allowed; `math.inf` when
    /// the request can never be allowed).
    #[getter]
    fn retry_after(&self) -> f64 {
        Self::seconds(self.retry_after_ns)
    }

    /// Seconds until the binding limit is back to full quota.
    #[getter]
    fn reset_after(&self) -> f64 {
        self.reset_after_ns as f64 / 1e9
    }

    /// The fields (and seconds) as a dict, e.g. for JSON.
    #[allow(clippy::wrong_self_convention)] // the Python API's name
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("allowed", self.allowed)?;
        d.set_item("limit", self.limit)?;
        d.set_item("remaining", self.remaining)?;
        d.set_item("retry_after", self.retry_after())?;
        d.set_item("reset_after", self.reset_after())?;
        d.set_item("retry_after_ns", self.retry_after_ns)?;
        d.set_item("reset_after_ns", self.reset_after_ns)?;
        d.set_item("limit_index", self.limit_index)?;
        d.set_item("banned", self.banned)?;
        d.set_item("shadow_denied", self.shadow_denied)?;
        Ok(d)
    }

    fn _astuple(&self) -> Fields {
        self.fields()
    }

    fn __repr__(&self) -> String {
        let py_bool = |b: bool| if b { "True" } else { "False" };
        let mut s = format!(
            "Decision(allowed={}, limit={}, remaining={}, retry_after_ns={}, reset_after_ns={}, limit_index={}",
            py_bool(self.allowed),
            self.limit,
            self.remaining,
            self.retry_after_ns,
            self.reset_after_ns,
            self.limit_index
        );
        if self.banned {
            s.push_str(", banned=True");
        }
        if self.shadow_denied {
            s.push_str(", shadow_denied=True");
        }
        s.push(')');
        s
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> Py<PyAny> {
        let py = other.py();
        match other.cast::<Decision>() {
            Ok(o) => PyBool::new(py, *self == *o.get())
                .to_owned()
                .into_any()
                .unbind(),
            Err(_) => py.NotImplemented(),
        }
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        // The hash of the field tuple, as the Python class had.
        self.fields().into_pyobject(py)?.hash()
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<(Bound<'py, PyAny>, Fields)> {
        Ok((slf.get_type().into_any(), slf.get().fields()))
    }
}

/// `rate_limit_fields(decision, policy_value, names, legacy, now_s)`: the
/// header fields of a checked request, as `(name, value)` pairs:
/// `RateLimit-Policy` (`policy_value`), `RateLimit` for the binding limit
/// (`names[limit_index]`, its structured-field name, with `r` remaining and
/// `t` the reset in whole seconds, rounded up) and, with `legacy`,
/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (`now_s + t`).
#[pyfunction]
pub fn rate_limit_fields<'py>(
    decision: &Bound<'py, Decision>,
    policy_value: &Bound<'py, PyString>,
    names: &Bound<'py, PyTuple>,
    legacy: bool,
    now_s: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let py = decision.py();
    let d = decision.get();
    let li = d.limit_index as usize;
    let name = names.get_item(if li < names.len() { li } else { 0 })?;
    let name = name.cast::<PyString>()?.to_str()?;
    let reset = d.reset_after_ns.div_ceil(1_000_000_000);
    let mut value = String::with_capacity(name.len() + 48);
    value.push_str(name);
    let _ = write!(value, ";r={};t={}", d.remaining, reset);
    let head = [
        ("RateLimit-Policy", policy_value.clone().into_any()),
        ("RateLimit", PyString::new(py, &value).into_any()),
    ];
    if !legacy {
        return Ok(head.into_pyobject(py)?.into_any());
    }
    let s = |v: u64| PyString::new(py, &v.to_string()).into_any();
    let [a, b] = head;
    let fields = vec![
        a,
        b,
        ("X-RateLimit-Limit", s(d.limit)),
        ("X-RateLimit-Remaining", s(d.remaining)),
        ("X-RateLimit-Reset", s(now_s.saturating_add(reset))),
    ];
    Ok(fields.into_pyobject(py)?.into_any())
}
