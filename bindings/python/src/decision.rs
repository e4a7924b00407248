//! `Decision`: the outcome of a check, an immutable object of plain
//! integers, and `rate_limit_fields`, the `RateLimit` header fields of one.
//!
//! `Decision` is a type of its own made with `PyType_FromSpec` rather than a
//! `#[pyclass]`: a check builds one on every call, and PyO3's instance
//! creation (through `object.__new__`) and destruction (through its panic
//! trampoline) cost more than the engine's whole decision. Here an instance
//! is one `PyType_GenericAlloc` and one `PyObject_Free`, its fields are
//! read by `PyMemberDef` descriptors (no Rust call at all), and every other
//! method runs behind [`boundary`], which turns errors into Python
//! exceptions and keeps panics from crossing into Python.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::fmt::Write as _;
use std::mem::offset_of;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

const NEVER: u64 = u64::MAX;

/// The object: a Python header, then the fields of `ratekeeper::Decision`.
#[repr(C)]
struct DecisionObject {
    ob_base: ffi::PyObject,
    limit: u64,
    remaining: u64,
    retry_after_ns: u64,
    reset_after_ns: u64,
    at_ns: u64,
    limit_index: u32,
    allowed: c_char,
    banned: c_char,
    shadow_denied: c_char,
}

/// The type, made once at module import (`init`). Relaxed: it is written
/// before the module object exists and read only by code the module runs.
static TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());

/// The fields as a tuple, in the constructor's order.
type Fields = (bool, u64, u64, u64, u64, u32, bool, bool, u64);

/// The decision `d` as a new `Decision` object.
#[inline(always)]
pub(crate) fn new_decision<'py>(
    py: Python<'py>,
    d: &ratekeeper::Decision,
) -> PyResult<Bound<'py, PyAny>> {
    let tp = TYPE.load(Ordering::Relaxed);
    // SAFETY:
    // - `tp` is the Decision type made in `init` (never freed: the module
    //   holds it), and the GIL is held (`py`);
    // - `PyType_GenericAlloc` returns a zeroed object of `tp_basicsize`
    //   (`size_of::<DecisionObject>()`) with its header set, or NULL with
    //   an exception set;
    // - the writes below stay inside that object.
    unsafe {
        let obj = ffi::PyType_GenericAlloc(tp, 0);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        let o = obj.cast::<DecisionObject>();
        (*o).limit = d.limit;
        (*o).remaining = d.remaining;
        (*o).retry_after_ns = d.retry_after_ns;
        (*o).reset_after_ns = d.reset_after_ns;
        (*o).at_ns = d.at_ns;
        (*o).limit_index = d.limit_index;
        (*o).allowed = d.allowed as c_char;
        (*o).banned = d.banned as c_char;
        (*o).shadow_denied = d.shadow_denied as c_char;
        Ok(Bound::from_owned_ptr(py, obj))
    }
}

/// The fields of `obj` if it is a `Decision`.
#[inline(always)]
pub(crate) fn decision_of(obj: &Bound<'_, PyAny>) -> Option<ratekeeper::Decision> {
    let tp = TYPE.load(Ordering::Relaxed);
    // SAFETY: `obj` is a live object (the GIL is held); its type is compared
    // with the Decision type (which has no subclasses: no BASETYPE flag)
    // before its memory is read as a `DecisionObject`.
    unsafe {
        if ffi::Py_TYPE(obj.as_ptr()) != tp {
            return None;
        }
        let o = &*obj.as_ptr().cast::<DecisionObject>();
        Some(ratekeeper::Decision {
            allowed: o.allowed != 0,
            limit: o.limit,
            remaining: o.remaining,
            retry_after_ns: o.retry_after_ns,
            reset_after_ns: o.reset_after_ns,
            limit_index: o.limit_index,
            banned: o.banned != 0,
            shadow_denied: o.shadow_denied != 0,
            at_ns: o.at_ns,
        })
    }
}

fn fields(d: &ratekeeper::Decision) -> Fields {
    (
        d.allowed,
        d.limit,
        d.remaining,
        d.retry_after_ns,
        d.reset_after_ns,
        d.limit_index,
        d.banned,
        d.shadow_denied,
        d.at_ns,
    )
}

fn seconds(ns: u64) -> f64 {
    if ns == NEVER {
        f64::INFINITY
    } else {
        ns as f64 / 1e9
    }
}

/// Runs the body of a slot or method: an error becomes the raised Python
/// exception (NULL), and so does a panic (as PyO3's `PanicException`
/// would be: here a `RuntimeError`), which never unwinds into CPython.
fn boundary(f: impl FnOnce(Python<'_>) -> PyResult<*mut ffi::PyObject>) -> *mut ffi::PyObject {
    // SAFETY: every caller is a slot or method CPython calls with the GIL held.
    let py = unsafe { Python::assume_attached() };
    match catch_unwind(AssertUnwindSafe(|| f(py))) {
        Ok(Ok(obj)) => obj,
        Ok(Err(e)) => {
            e.restore(py);
            ptr::null_mut()
        }
        Err(_) => {
            pyo3::exceptions::PyRuntimeError::new_err(
                "ratekeeper: internal error (a panic) in Decision",
            )
            .restore(py);
            ptr::null_mut()
        }
    }
}

/// `self` of a method or slot of Decision.
///
/// # Safety
/// `obj` is a live `Decision` (CPython calls Decision's slots and methods
/// only on its instances; the type has no subclasses).
unsafe fn this<'a>(
    py: Python<'a>,
    obj: *mut ffi::PyObject,
) -> (Bound<'a, PyAny>, ratekeeper::Decision) {
    // SAFETY: `obj` is live and borrowed for the call (see above).
    let bound = unsafe { Bound::from_borrowed_ptr(py, obj) };
    let d = decision_of(&bound).expect("a Decision method called on a Decision");
    (bound, d)
}

unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: the last reference is gone; the object came from
    // `PyType_GenericAlloc` (PyObject_Malloc: the type is not GC-tracked)
    // and its type is a heap type, which each instance holds a reference to.
    unsafe {
        let tp = ffi::Py_TYPE(obj);
        ffi::PyObject_Free(obj.cast::<c_void>());
        ffi::Py_DECREF(tp.cast::<ffi::PyObject>());
    }
}

unsafe extern "C" fn get_retry_after(
    obj: *mut ffi::PyObject,
    _: *mut c_void,
) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: a getter of Decision, called on a Decision.
        let (_, d) = unsafe { this(py, obj) };
        Ok(seconds(d.retry_after_ns).into_pyobject(py)?.into_ptr())
    })
}

unsafe extern "C" fn get_reset_after(
    obj: *mut ffi::PyObject,
    _: *mut c_void,
) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: a getter of Decision, called on a Decision.
        let (_, d) = unsafe { this(py, obj) };
        Ok((d.reset_after_ns as f64 / 1e9)
            .into_pyobject(py)?
            .into_ptr())
    })
}

unsafe extern "C" fn to_dict(obj: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: a method of Decision, called on a Decision.
        let (_, d) = unsafe { this(py, obj) };
        let out = PyDict::new(py);
        out.set_item("allowed", d.allowed)?;
        out.set_item("limit", d.limit)?;
        out.set_item("remaining", d.remaining)?;
        out.set_item("retry_after", seconds(d.retry_after_ns))?;
        out.set_item("reset_after", d.reset_after_ns as f64 / 1e9)?;
        out.set_item("retry_after_ns", d.retry_after_ns)?;
        out.set_item("reset_after_ns", d.reset_after_ns)?;
        out.set_item("limit_index", d.limit_index)?;
        out.set_item("banned", d.banned)?;
        out.set_item("shadow_denied", d.shadow_denied)?;
        out.set_item("at_ns", d.at_ns)?;
        Ok(out.into_ptr())
    })
}

unsafe extern "C" fn astuple(obj: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: a method of Decision, called on a Decision.
        let (_, d) = unsafe { this(py, obj) };
        Ok(fields(&d).into_pyobject(py)?.into_ptr())
    })
}

unsafe extern "C" fn reduce(obj: *mut ffi::PyObject, _: *mut ffi::PyObject) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: a method of Decision, called on a Decision.
        let (bound, d) = unsafe { this(py, obj) };
        Ok((bound.get_type(), fields(&d)).into_pyobject(py)?.into_ptr())
    })
}

unsafe extern "C" fn repr(obj: *mut ffi::PyObject) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: a slot of Decision, called on a Decision.
        let (_, d) = unsafe { this(py, obj) };
        let py_bool = |b: bool| if b { "True" } else { "False" };
        let mut s = format!(
            "Decision(allowed={}, limit={}, remaining={}, retry_after_ns={}, reset_after_ns={}, limit_index={}",
            py_bool(d.allowed),
            d.limit,
            d.remaining,
            d.retry_after_ns,
            d.reset_after_ns,
            d.limit_index
        );
        if d.banned {
            s.push_str(", banned=True");
        }
        if d.shadow_denied {
            s.push_str(", shadow_denied=True");
        }
        if d.at_ns != 0 {
            write!(s, ", at_ns={}", d.at_ns).expect("writing to a String");
        }
        s.push(')');
        Ok(PyString::new(py, &s).into_ptr())
    })
}

unsafe extern "C" fn richcompare(
    a: *mut ffi::PyObject,
    b: *mut ffi::PyObject,
    op: c_int,
) -> *mut ffi::PyObject {
    boundary(|py| {
        // SAFETY: CPython passes two live objects, borrowed for the call;
        // `a` is a Decision (the slot is Decision's).
        let (_, x) = unsafe { this(py, a) };
        // SAFETY: as above; `b` may be anything (`decision_of` checks it).
        let other = unsafe { Bound::from_borrowed_ptr(py, b) };
        let result = match (decision_of(&other), op) {
            (Some(y), ffi::Py_EQ) => (x == y).into_pyobject(py)?.to_owned().into_any(),
            (Some(y), ffi::Py_NE) => (x != y).into_pyobject(py)?.to_owned().into_any(),
            _ => py.NotImplemented().into_bound(py),
        };
        Ok(result.into_ptr())
    })
}

unsafe extern "C" fn hash(obj: *mut ffi::PyObject) -> ffi::Py_hash_t {
    // SAFETY: CPython calls tp_hash with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let r = catch_unwind(AssertUnwindSafe(|| -> PyResult<isize> {
        // SAFETY: a slot of Decision, called on a Decision.
        let (_, d) = unsafe { this(py, obj) };
        // The hash of the field tuple, as the Python class had.
        fields(&d).into_pyobject(py)?.hash()
    }));
    match r {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            e.restore(py);
            -1
        }
        Err(_) => {
            pyo3::exceptions::PyRuntimeError::new_err(
                "ratekeeper: internal error (a panic) in Decision",
            )
            .restore(py);
            -1
        }
    }
}

/// The constructor's argument parser: `Decision(allowed, limit, remaining,
/// retry_after_ns, reset_after_ns, limit_index=0, banned=False,
/// shadow_denied=False, at_ns=0)`.
#[pyfunction]
#[pyo3(signature = (allowed, limit, remaining, retry_after_ns, reset_after_ns, limit_index=0, banned=None, shadow_denied=None, at_ns=0))]
#[allow(clippy::too_many_arguments)]
fn _decision_new<'py>(
    allowed: &Bound<'py, PyAny>,
    limit: u64,
    remaining: u64,
    retry_after_ns: u64,
    reset_after_ns: u64,
    limit_index: u32,
    banned: Option<&Bound<'py, PyAny>>,
    shadow_denied: Option<&Bound<'py, PyAny>>,
    at_ns: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let truthy = |v: Option<&Bound<'py, PyAny>>| v.map_or(Ok(false), |v| v.is_truthy());
    let d = ratekeeper::Decision {
        allowed: allowed.is_truthy()?,
        limit,
        remaining,
        retry_after_ns,
        reset_after_ns,
        limit_index,
        banned: truthy(banned)?,
        shadow_denied: truthy(shadow_denied)?,
        at_ns,
    };
    new_decision(allowed.py(), &d)
}

/// `_decision_new` as a function object, for `tp_new`.
static NEW: AtomicPtr<ffi::PyObject> = AtomicPtr::new(ptr::null_mut());

unsafe extern "C" fn tp_new(
    _tp: *mut ffi::PyTypeObject,
    args: *mut ffi::PyObject,
    kwargs: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: `NEW` holds a strong reference made in `init` (never
    // released); `args` is a tuple and `kwargs` a dict or NULL, as CPython
    // passes them to tp_new; `PyObject_Call` takes them borrowed.
    unsafe { ffi::PyObject_Call(NEW.load(Ordering::Relaxed), args, kwargs) }
}

const DOC: &CStr = c"The outcome of a check: immutable, hashable, comparable.

Fields (as the Rust ``ratekeeper::Decision``): ``allowed``; ``limit`` (quota of the
binding limit; for GCRA the burst); ``remaining`` (requests of cost 1 still
allowed now under the binding limit); ``retry_after_ns`` (when denied, wait at
least this long; 0 when allowed; ``2**64-1`` when the cost can never be
allowed); ``reset_after_ns`` (time until the binding limit is back to full
quota); ``limit_index`` (index of the binding limit in its policy).
``retry_after`` and ``reset_after`` are the same in seconds, as floats
(``retry_after`` is ``math.inf`` for \"never\"). Where the library reports them
(penalty box, shadow mode): ``banned`` and ``shadow_denied``, else always False.
``at_ns``: the time the decision was made at (the call's ``now_ns``, else the
engine's clock; Redis's clock for a decision Redis made): refund a charge at it
(``policy.refund(key, cost, d.at_ns)``) to place the refund where the charge was.

``Decision(allowed, limit, remaining, retry_after_ns, reset_after_ns,
limit_index=0, banned=False, shadow_denied=False, at_ns=0)`` builds one by hand
(e.g. in tests).";

fn member(
    name: &'static CStr,
    type_code: c_int,
    offset: usize,
    doc: &'static CStr,
) -> ffi::PyMemberDef {
    ffi::PyMemberDef {
        name: name.as_ptr(),
        type_code,
        offset: offset as ffi::Py_ssize_t,
        flags: ffi::Py_READONLY,
        doc: doc.as_ptr(),
    }
}

fn method(name: &'static CStr, f: ffi::PyCFunction, doc: &'static CStr) -> ffi::PyMethodDef {
    ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer { PyCFunction: f },
        ml_flags: ffi::METH_NOARGS,
        ml_doc: doc.as_ptr(),
    }
}

fn slot(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

/// Makes the type and adds it to the module as `Decision`.
pub(crate) fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    type O = DecisionObject;
    // The tables live as long as the type, i.e. for the rest of the process.
    let members: &'static mut [ffi::PyMemberDef] = Box::leak(Box::new([
        member(
            c"allowed",
            ffi::Py_T_BOOL,
            offset_of!(O, allowed),
            c"The request may proceed.",
        ),
        member(
            c"limit",
            ffi::Py_T_ULONGLONG,
            offset_of!(O, limit),
            c"Quota of the binding limit (for GCRA, the burst).",
        ),
        member(
            c"remaining",
            ffi::Py_T_ULONGLONG,
            offset_of!(O, remaining),
            c"Requests of cost 1 still allowed now under the binding limit.",
        ),
        member(
            c"retry_after_ns",
            ffi::Py_T_ULONGLONG,
            offset_of!(O, retry_after_ns),
            c"When denied, wait at least this long (ns); 0 when allowed.",
        ),
        member(
            c"reset_after_ns",
            ffi::Py_T_ULONGLONG,
            offset_of!(O, reset_after_ns),
            c"Time until the binding limit is back to full quota (ns).",
        ),
        member(
            c"limit_index",
            ffi::Py_T_UINT,
            offset_of!(O, limit_index),
            c"Index of the binding limit within its policy.",
        ),
        member(
            c"banned",
            ffi::Py_T_BOOL,
            offset_of!(O, banned),
            c"Denied by the penalty box.",
        ),
        member(
            c"shadow_denied",
            ffi::Py_T_BOOL,
            offset_of!(O, shadow_denied),
            c"Shadow mode: passed, but would have been denied.",
        ),
        member(
            c"at_ns",
            ffi::Py_T_ULONGLONG,
            offset_of!(O, at_ns),
            c"The time the decision was made at (ns; Redis's clock for a decision Redis made): refund its charge at it.",
        ),
        ffi::PyMemberDef::default(),
    ]));
    let getsets: &'static mut [ffi::PyGetSetDef] = Box::leak(Box::new([
        ffi::PyGetSetDef {
            name: c"retry_after".as_ptr(),
            get: Some(get_retry_after),
            set: None,
            doc: c"Seconds to wait before retrying (0.0 when allowed; math.inf when the request can never be allowed).".as_ptr(),
            closure: ptr::null_mut(),
        },
        ffi::PyGetSetDef {
            name: c"reset_after".as_ptr(),
            get: Some(get_reset_after),
            set: None,
            doc: c"Seconds until the binding limit is back to full quota.".as_ptr(),
            closure: ptr::null_mut(),
        },
        ffi::PyGetSetDef::default(),
    ]));
    let methods: &'static mut [ffi::PyMethodDef] = Box::leak(Box::new([
        method(
            c"to_dict",
            to_dict,
            c"The fields (and seconds) as a dict, e.g. for JSON.",
        ),
        method(
            c"_astuple",
            astuple,
            c"The fields as a tuple, in the constructor's order.",
        ),
        method(c"__reduce__", reduce, c"Pickling: the type and the fields."),
        ffi::PyMethodDef::zeroed(),
    ]));
    let slots: &'static mut [ffi::PyType_Slot] = Box::leak(Box::new([
        slot(ffi::Py_tp_doc, DOC.as_ptr() as *mut c_void),
        slot(ffi::Py_tp_dealloc, dealloc as *mut c_void),
        slot(ffi::Py_tp_new, tp_new as *mut c_void),
        slot(ffi::Py_tp_repr, repr as *mut c_void),
        slot(ffi::Py_tp_hash, hash as *mut c_void),
        slot(ffi::Py_tp_richcompare, richcompare as *mut c_void),
        slot(ffi::Py_tp_members, members.as_mut_ptr().cast()),
        slot(ffi::Py_tp_getset, getsets.as_mut_ptr().cast()),
        slot(ffi::Py_tp_methods, methods.as_mut_ptr().cast()),
        slot(0, ptr::null_mut()),
    ]));
    let spec: &'static mut ffi::PyType_Spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: c"ratekeeper.Decision".as_ptr(),
        basicsize: std::mem::size_of::<DecisionObject>() as c_int,
        itemsize: 0,
        // Not BASETYPE (no subclasses: `decision_of` compares types), not
        // GC (no references held), immutable like the builtin types.
        flags: (ffi::Py_TPFLAGS_DEFAULT | ffi::Py_TPFLAGS_IMMUTABLETYPE) as _,
        slots: slots.as_mut_ptr(),
    }));
    // SAFETY: the spec and its tables are 'static (leaked above) and
    // well-formed (each table ends with a zeroed entry); the GIL is held.
    let tp = unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))? };
    let new = wrap_pyfunction!(_decision_new, m)?;
    NEW.store(new.clone().into_ptr(), Ordering::Relaxed);
    TYPE.store(tp.as_ptr().cast::<ffi::PyTypeObject>(), Ordering::Relaxed);
    // The module keeps the type alive (and `TYPE` is never cleared).
    let tp = tp.cast_into::<PyType>()?;
    std::mem::forget(tp.clone());
    m.add("Decision", tp)?;
    Ok(())
}

/// `rate_limit_fields(decision, policy_value, names, legacy, now_s)`: the
/// header fields of a checked request, as `(name, value)` pairs:
/// `RateLimit-Policy` (`policy_value`), `RateLimit` for the binding limit
/// (`names[limit_index]`, its structured-field name, with `r` remaining and
/// `t` the reset in whole seconds, rounded up) and, with `legacy`,
/// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (`now_s + t`).
#[pyfunction]
pub fn rate_limit_fields<'py>(
    decision: &Bound<'py, PyAny>,
    policy_value: &Bound<'py, PyString>,
    names: &Bound<'py, PyTuple>,
    legacy: bool,
    now_s: u64,
) -> PyResult<Bound<'py, PyAny>> {
    let py = decision.py();
    let d = decision_of(decision).ok_or_else(|| {
        PyTypeError::new_err("rate_limit_fields: decision must be a ratekeeper.Decision")
    })?;
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
