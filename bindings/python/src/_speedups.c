/*
 * ratekeeper._speedups: the hot path of the Python binding in plain C.
 *
 * Everything else in the package goes through the cffi module
 * (ratekeeper._ffi, API mode, cdef taken from include/ratekeeper.h). A cffi
 * call of rk_check plus a Python Decision costs ~0.7 us; this module brings
 * Policy.check/peek/refund and Engine.check_many down to ~0.1-0.2 us by
 * parsing arguments with METH_FASTCALL and filling a C-level Decision
 * directly.
 *
 * It links nothing: ratekeeper/_native.py hands it the addresses of the
 * rk_* functions that the cffi module statically links (init()), so the
 * process holds exactly one copy of the library (one thread-local
 * rk_last_error, one set of engine ids).
 *
 * Types:
 * - Handle: owns nothing; holds the rk_engine* of one Engine, or NULL once
 *   the Engine is closed (every call then raises instead of touching freed
 *   memory). No call here releases the GIL, so invalidate() can never race
 *   with a call in progress.
 * - Checker: (Handle, policy id, kind); ratekeeper.Policy subclasses it.
 * - DecisionBase: the six fields of rk_decision, read-only;
 *   ratekeeper.Decision subclasses it (adds seconds as floats, repr).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "ratekeeper.h"

/* ---- function table, filled by init() ---------------------------------- */

typedef rk_status (*check_fn)(rk_engine *, uint32_t, const uint8_t *, size_t, uint32_t, rk_decision *);
typedef rk_status (*check_at_fn)(rk_engine *, uint32_t, const uint8_t *, size_t, uint32_t, uint64_t,
                                 rk_decision *);
typedef rk_status (*refund_fn)(rk_engine *, uint32_t, const uint8_t *, size_t, uint32_t, bool *);
typedef rk_status (*refund_at_fn)(rk_engine *, uint32_t, const uint8_t *, size_t, uint32_t, uint64_t,
                                  bool *);
typedef const char *(*last_error_fn)(void);
typedef uint64_t (*now_fn)(void);

typedef rk_status (*check_many_fn)(rk_engine *, const rk_check_item *, size_t, rk_decision *, size_t *);
typedef rk_status (*check_many_at_fn)(rk_engine *, const rk_check_item *, size_t, uint64_t, rk_decision *,
                                      size_t *);

static struct {
    check_fn check;
    check_at_fn check_at;
    check_fn peek;
    check_at_fn peek_at;
    refund_fn refund;
    refund_at_fn refund_at;
    last_error_fn last_error;
    now_fn now_ns;
    check_many_fn check_many;
    check_many_at_fn check_many_at;
    PyTypeObject *decision_type;    /* ratekeeper.Decision */
    PyObject *error_handler;        /* raise_status(status, message) */
    int ready;
} F;

#define STATUS_CLOSED (-1)

/* Raises the exception for `status` through the Python-level handler (one
 * place maps statuses to classes). Always returns NULL. */
static PyObject *raise_status(long status) {
    const char *msg = "";
    if (status > 0 && F.last_error != NULL) {
        msg = F.last_error();
    }
    PyObject *r = PyObject_CallFunction(F.error_handler, "ls", status, msg);
    if (r != NULL) { /* the handler must raise; be safe if it did not */
        Py_DECREF(r);
        PyErr_Format(PyExc_RuntimeError, "ratekeeper: rk status %ld", status);
    }
    return NULL;
}

static int not_ready(void) {
    if (!F.ready) {
        PyErr_SetString(PyExc_RuntimeError, "ratekeeper._speedups.init() was not called");
        return 1;
    }
    return 0;
}

/* ---- Handle ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    rk_engine *engine;
} HandleObject;

static int Handle_init(HandleObject *self, PyObject *args, PyObject *kwds) {
    unsigned long long addr;
    static char *kwlist[] = {"address", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "K", kwlist, &addr)) {
        return -1;
    }
    self->engine = (rk_engine *)(uintptr_t)addr;
    return 0;
}

static PyObject *Handle_invalidate(HandleObject *self, PyObject *unused) {
    self->engine = NULL;
    Py_RETURN_NONE;
}

static PyObject *Handle_get_closed(HandleObject *self, void *closure) {
    return PyBool_FromLong(self->engine == NULL);
}

static PyMethodDef Handle_methods[] = {
    {"invalidate", (PyCFunction)Handle_invalidate, METH_NOARGS,
     "Forget the engine pointer: every later call raises EngineClosed."},
    {NULL}};

static PyGetSetDef Handle_getset[] = {
    {"closed", (getter)Handle_get_closed, NULL, "True once invalidate() was called.", NULL},
    {NULL}};

static PyTypeObject HandleType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ratekeeper._speedups.Handle",
    .tp_basicsize = sizeof(HandleObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The rk_engine* of one Engine (NULL once closed). Internal.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Handle_init,
    .tp_methods = Handle_methods,
    .tp_getset = Handle_getset,
};

/* ---- DecisionBase ------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    char allowed;
    char banned;        /* rk_decision.banned where the library has it, else 0 */
    char shadow_denied; /* rk_decision.shadow_denied where the library has it, else 0 */
    unsigned long long limit;
    unsigned long long remaining;
    unsigned long long retry_after_ns;
    unsigned long long reset_after_ns;
    unsigned int limit_index;
} DecisionObject;

static PyTypeObject DecisionBaseType;

static PyObject *new_decision(const rk_decision *d) {
    PyTypeObject *t = F.decision_type;
    DecisionObject *o = (DecisionObject *)t->tp_alloc(t, 0);
    if (o == NULL) {
        return NULL;
    }
    o->allowed = d->allowed ? 1 : 0;
#ifdef RKPY_DECISION_HAS_FLAGS /* defined by setup.py when the header has them */
    o->banned = d->banned ? 1 : 0;
    o->shadow_denied = d->shadow_denied ? 1 : 0;
#else
    o->banned = 0;
    o->shadow_denied = 0;
#endif
    o->limit = d->limit;
    o->remaining = d->remaining;
    o->retry_after_ns = d->retry_after_ns;
    o->reset_after_ns = d->reset_after_ns;
    o->limit_index = d->limit_index;
    return (PyObject *)o;
}

static PyObject *DecisionBase_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"allowed", "limit", "remaining", "retry_after_ns", "reset_after_ns",
                             "limit_index", "banned", "shadow_denied", NULL};
    int allowed, banned = 0, shadow_denied = 0;
    unsigned long long limit, remaining, retry, reset;
    unsigned int index = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "pKKKK|Ipp", kwlist, &allowed, &limit, &remaining,
                                     &retry, &reset, &index, &banned, &shadow_denied)) {
        return NULL;
    }
    DecisionObject *o = (DecisionObject *)type->tp_alloc(type, 0);
    if (o == NULL) {
        return NULL;
    }
    o->allowed = (char)allowed;
    o->banned = (char)banned;
    o->shadow_denied = (char)shadow_denied;
    o->limit = limit;
    o->remaining = remaining;
    o->retry_after_ns = retry;
    o->reset_after_ns = reset;
    o->limit_index = index;
    return (PyObject *)o;
}

static PyObject *DecisionBase_astuple(DecisionObject *self) {
    return Py_BuildValue("(OKKKKIOO)", self->allowed ? Py_True : Py_False, self->limit,
                         self->remaining, self->retry_after_ns, self->reset_after_ns,
                         self->limit_index, self->banned ? Py_True : Py_False,
                         self->shadow_denied ? Py_True : Py_False);
}

static PyObject *DecisionBase_richcompare(PyObject *a, PyObject *b, int op) {
    if ((op != Py_EQ && op != Py_NE) || !PyObject_TypeCheck(b, &DecisionBaseType) ||
        !PyObject_TypeCheck(a, &DecisionBaseType)) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    DecisionObject *x = (DecisionObject *)a, *y = (DecisionObject *)b;
    int eq = x->allowed == y->allowed && x->banned == y->banned &&
             x->shadow_denied == y->shadow_denied && x->limit == y->limit && x->remaining == y->remaining &&
             x->retry_after_ns == y->retry_after_ns && x->reset_after_ns == y->reset_after_ns &&
             x->limit_index == y->limit_index;
    if (op == Py_NE) {
        eq = !eq;
    }
    return PyBool_FromLong(eq);
}

static Py_hash_t DecisionBase_hash(DecisionObject *self) {
    PyObject *t = DecisionBase_astuple(self);
    if (t == NULL) {
        return -1;
    }
    Py_hash_t h = PyObject_Hash(t);
    Py_DECREF(t);
    return h;
}

static PyObject *DecisionBase_reduce(DecisionObject *self, PyObject *unused) {
    PyObject *t = DecisionBase_astuple(self);
    if (t == NULL) {
        return NULL;
    }
    return Py_BuildValue("(ON)", Py_TYPE(self), t);
}

static PyMemberDef DecisionBase_members[] = {
    {"allowed", T_BOOL, offsetof(DecisionObject, allowed), READONLY, "The request may proceed."},
    {"banned", T_BOOL, offsetof(DecisionObject, banned), READONLY,
     "Denied because the key is in the policy's penalty box (False where the library has none)."},
    {"shadow_denied", T_BOOL, offsetof(DecisionObject, shadow_denied), READONLY,
     "Shadow mode: allowed, but would have been denied (False where the library has none)."},
    {"limit", T_ULONGLONG, offsetof(DecisionObject, limit), READONLY,
     "Quota of the binding limit (for GCRA, the burst)."},
    {"remaining", T_ULONGLONG, offsetof(DecisionObject, remaining), READONLY,
     "Requests of cost 1 still allowed now under the binding limit."},
    {"retry_after_ns", T_ULONGLONG, offsetof(DecisionObject, retry_after_ns), READONLY,
     "When denied: wait at least this long, in ns (2**64-1: never); 0 when allowed."},
    {"reset_after_ns", T_ULONGLONG, offsetof(DecisionObject, reset_after_ns), READONLY,
     "Time until the binding limit is back to full quota, in ns."},
    {"limit_index", T_UINT, offsetof(DecisionObject, limit_index), READONLY,
     "Index of the binding limit within the policy."},
    {NULL}};

static PyMethodDef DecisionBase_methods[] = {
    {"__reduce__", (PyCFunction)DecisionBase_reduce, METH_NOARGS, NULL},
    {"_astuple", (PyCFunction)DecisionBase_astuple, METH_NOARGS,
     "(allowed, limit, remaining, retry_after_ns, reset_after_ns, limit_index, banned, shadow_denied)"},
    {NULL}};

static PyTypeObject DecisionBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ratekeeper._speedups.DecisionBase",
    .tp_basicsize = sizeof(DecisionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "The fields of rk_decision (read-only). Base of ratekeeper.Decision.",
    .tp_new = DecisionBase_new,
    .tp_members = DecisionBase_members,
    .tp_methods = DecisionBase_methods,
    .tp_richcompare = DecisionBase_richcompare,
    .tp_hash = (hashfunc)DecisionBase_hash,
};

/* ---- argument helpers --------------------------------------------------- */

/* Borrowed view of a key: str (UTF-8) or bytes fast; any other buffer via
 * the buffer protocol (released by key_done). */
typedef struct {
    const uint8_t *ptr;
    size_t len;
    Py_buffer view;
    int has_view;
} KeyView;

static int key_get(PyObject *key, KeyView *kv) {
    kv->has_view = 0;
    if (PyUnicode_CheckExact(key) || PyUnicode_Check(key)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(key, &n);
        if (s == NULL) {
            return -1;
        }
        kv->ptr = (const uint8_t *)s;
        kv->len = (size_t)n;
        return 0;
    }
    if (PyBytes_Check(key)) {
        kv->ptr = (const uint8_t *)PyBytes_AS_STRING(key);
        kv->len = (size_t)PyBytes_GET_SIZE(key);
        return 0;
    }
    if (PyObject_CheckBuffer(key)) {
        if (PyObject_GetBuffer(key, &kv->view, PyBUF_SIMPLE) < 0) {
            return -1;
        }
        kv->has_view = 1;
        kv->ptr = (const uint8_t *)kv->view.buf;
        kv->len = (size_t)kv->view.len;
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "key must be str or bytes, not %.100s", Py_TYPE(key)->tp_name);
    return -1;
}

static void key_done(KeyView *kv) {
    if (kv->has_view) {
        PyBuffer_Release(&kv->view);
        kv->has_view = 0;
    }
}

static int get_cost(PyObject *o, uint32_t *out) {
    if (o == NULL) {
        *out = 1;
        return 0;
    }
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "cost must be an int, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (v == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || v < 0 || v > 0xFFFFFFFFLL) {
        PyErr_SetString(PyExc_ValueError, "cost must be an int in 0..4294967295");
        return -1;
    }
    *out = (uint32_t)v;
    return 0;
}

/* now_ns: NULL/None -> *has = 0. */
static int get_now(PyObject *o, int *has, uint64_t *out) {
    if (o == NULL || o == Py_None) {
        *has = 0;
        return 0;
    }
    if (!PyLong_Check(o) || PyBool_Check(o)) {
        PyErr_Format(PyExc_TypeError, "now_ns must be an int or None, not %.100s",
                     Py_TYPE(o)->tp_name);
        return -1;
    }
    unsigned long long v = PyLong_AsUnsignedLongLong(o);
    if (v == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "now_ns must be an int in 0..2**64-1");
        return -1;
    }
    *has = 1;
    *out = (uint64_t)v;
    return 0;
}

/* Parses (key, cost=1, now_ns=None) from a vectorcall. */
static int parse_kcn(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                     PyObject **key, PyObject **cost, PyObject **now) {
    static const char *names[3] = {"key", "cost", "now_ns"};
    PyObject *slots[3] = {NULL, NULL, NULL};
    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 3 positional arguments (%zd given)",
                     fname, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        slots[i] = args[i];
    }
    if (kwnames != NULL) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t j = 0; j < nk; j++) {
            PyObject *kw = PyTuple_GET_ITEM(kwnames, j);
            int found = -1;
            for (int i = 0; i < 3; i++) {
                if (PyUnicode_CompareWithASCIIString(kw, names[i]) == 0) {
                    found = i;
                    break;
                }
            }
            if (found < 0) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'", fname,
                             kw);
                return -1;
            }
            if (slots[found] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'", fname,
                             names[found]);
                return -1;
            }
            slots[found] = args[nargs + j];
        }
    }
    if (slots[0] == NULL) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument 'key'", fname);
        return -1;
    }
    *key = slots[0];
    *cost = slots[1];
    *now = slots[2];
    return 0;
}

/* ---- Checker ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    HandleObject *handle;
    uint32_t policy;
    int concurrency;
} CheckerObject;

static PyTypeObject CheckerType;

static int Checker_init(CheckerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"handle", "policy_id", "concurrency", NULL};
    PyObject *handle;
    unsigned int policy;
    int concurrency = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!I|p", kwlist, &HandleType, &handle, &policy,
                                     &concurrency)) {
        return -1;
    }
    Py_INCREF(handle);
    Py_XSETREF(self->handle, (HandleObject *)handle);
    self->policy = policy;
    self->concurrency = concurrency;
    return 0;
}

static int Checker_traverse(CheckerObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->handle);
    return 0;
}

static int Checker_clear(CheckerObject *self) {
    Py_CLEAR(self->handle);
    return 0;
}

/* Static type: a Python subclass's subtype_dealloc visits and releases
 * the heap type itself, so neither traverse nor dealloc touches it here. */
static void Checker_dealloc(CheckerObject *self) {
    PyObject_GC_UnTrack(self);
    Checker_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static rk_engine *checker_engine(CheckerObject *self) {
    if (not_ready()) {
        return NULL;
    }
    if (self->handle == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "policy is not initialised");
        return NULL;
    }
    if (self->handle->engine == NULL) {
        raise_status(STATUS_CLOSED);
        return NULL;
    }
    return self->handle->engine;
}

static PyObject *do_check(CheckerObject *self, int peek, const char *fname, PyObject *const *args,
                          Py_ssize_t nargs, PyObject *kwnames) {
    PyObject *key, *cost_o, *now_o;
    uint32_t cost;
    uint64_t now = 0;
    int has_now;
    KeyView kv;
    if (parse_kcn(fname, args, nargs, kwnames, &key, &cost_o, &now_o) < 0 ||
        get_cost(cost_o, &cost) < 0 || get_now(now_o, &has_now, &now) < 0) {
        return NULL;
    }
    rk_engine *e = checker_engine(self);
    if (e == NULL || key_get(key, &kv) < 0) {
        return NULL;
    }
    rk_decision d;
    rk_status st;
    if (peek) {
        st = has_now ? F.peek_at(e, self->policy, kv.ptr, kv.len, cost, now, &d)
                     : F.peek(e, self->policy, kv.ptr, kv.len, cost, &d);
    } else {
        st = has_now ? F.check_at(e, self->policy, kv.ptr, kv.len, cost, now, &d)
                     : F.check(e, self->policy, kv.ptr, kv.len, cost, &d);
    }
    key_done(&kv);
    if (st != 0) {
        return raise_status((long)st);
    }
    return new_decision(&d);
}

static PyObject *Checker_check(CheckerObject *self, PyObject *const *args, Py_ssize_t nargs,
                               PyObject *kwnames) {
    return do_check(self, 0, "check", args, nargs, kwnames);
}

static PyObject *Checker_peek(CheckerObject *self, PyObject *const *args, Py_ssize_t nargs,
                              PyObject *kwnames) {
    return do_check(self, 1, "peek", args, nargs, kwnames);
}

static PyObject *Checker_refund(CheckerObject *self, PyObject *const *args, Py_ssize_t nargs,
                                PyObject *kwnames) {
    PyObject *key, *cost_o, *now_o;
    uint32_t cost;
    uint64_t now = 0;
    int has_now;
    KeyView kv;
    if (parse_kcn("refund", args, nargs, kwnames, &key, &cost_o, &now_o) < 0 ||
        get_cost(cost_o, &cost) < 0 || get_now(now_o, &has_now, &now) < 0) {
        return NULL;
    }
    rk_engine *e = checker_engine(self);
    if (e == NULL || key_get(key, &kv) < 0) {
        return NULL;
    }
    bool refunded = false;
    rk_status st = has_now ? F.refund_at(e, self->policy, kv.ptr, kv.len, cost, now, &refunded)
                           : F.refund(e, self->policy, kv.ptr, kv.len, cost, &refunded);
    key_done(&kv);
    if (st != 0) {
        return raise_status((long)st);
    }
    return PyBool_FromLong(refunded);
}

static PyObject *Checker_get_policy_id(CheckerObject *self, void *closure) {
    return PyLong_FromUnsignedLong(self->policy);
}

static PyMethodDef Checker_methods[] = {
    {"check", (PyCFunction)(void (*)(void))Checker_check, METH_FASTCALL | METH_KEYWORDS,
     "check(key, cost=1, now_ns=None) -> Decision\n--\n\n"
     "Checks `key` (str, UTF-8 encoded, or bytes) and, if every limit of the\n"
     "policy allows, charges `cost` to each; a denied request is charged\n"
     "nothing. `now_ns` (CLOCK_MONOTONIC ns, see ratekeeper.now_ns()) replaces\n"
     "the engine's clock. Raises WrongPolicyKind on a concurrency policy (use\n"
     "acquire), EngineClosed after Engine.close()."},
    {"peek", (PyCFunction)(void (*)(void))Checker_peek, METH_FASTCALL | METH_KEYWORDS,
     "peek(key, cost=1, now_ns=None) -> Decision\n--\n\n"
     "What check() would decide, without charging anything or changing any\n"
     "state. Also accepted by concurrency policies (is a permit free?)."},
    {"refund", (PyCFunction)(void (*)(void))Checker_refund, METH_FASTCALL | METH_KEYWORDS,
     "refund(key, cost=1, now_ns=None) -> bool\n--\n\n"
     "Gives back `cost` charged earlier to `key` (never beyond the full quota).\n"
     "Returns whether the key held any state to refund."},
    {NULL}};

static PyGetSetDef Checker_getset[] = {
    {"id", (getter)Checker_get_policy_id, NULL, "The policy's id within its engine.", NULL},
    {NULL}};

static PyTypeObject CheckerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ratekeeper._speedups.Checker",
    .tp_basicsize = sizeof(CheckerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "check/peek/refund of one policy in C. Base of ratekeeper.Policy.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Checker_init,
    .tp_dealloc = (destructor)Checker_dealloc,
    .tp_traverse = (traverseproc)Checker_traverse,
    .tp_clear = (inquiry)Checker_clear,
    .tp_methods = Checker_methods,
    .tp_getset = Checker_getset,
};

/* ---- check_many --------------------------------------------------------- */

/* Batches of at most this many items are parsed on the stack. */
#define SMALL_BATCH 16

/* check_many(handle, items, now_ns): one call of rk_check_many(_at), the
 * library's batch (which item binds, strikes, refunds: all decided there). */
static PyObject *speedups_check_many(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "check_many(handle, items, now_ns)");
        return NULL;
    }
    if (not_ready()) return NULL;
    if (!PyObject_TypeCheck(args[0], &HandleType)) {
        PyErr_SetString(PyExc_TypeError, "check_many: handle must be a Handle");
        return NULL;
    }
    HandleObject *h = (HandleObject *)args[0];
    int has_now;
    uint64_t now = 0;
    if (get_now(args[2], &has_now, &now) < 0) return NULL;
    PyObject *seq = PySequence_Fast(args[1], "items must be a sequence of (policy, key[, cost])");
    if (seq == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject *result = NULL;
    rk_check_item small_items[SMALL_BATCH];
    KeyView small_keys[SMALL_BATCH];
    rk_check_item *items = small_items;
    KeyView *keys = small_keys;
    Py_ssize_t got = 0;
    if (n == 0) {
        PyErr_SetString(PyExc_ValueError, "check_many needs at least one item");
        goto done;
    }
    if (n > SMALL_BATCH) {
        items = PyMem_Malloc(sizeof(*items) * (size_t)n);
        keys = PyMem_Malloc(sizeof(*keys) * (size_t)n);
        if (items == NULL || keys == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) < 2 || PyTuple_GET_SIZE(t) > 3) {
            PyErr_Format(PyExc_TypeError, "check_many: item %zd must be a tuple (policy, key[, cost])",
                         i);
            goto done;
        }
        PyObject *p = PyTuple_GET_ITEM(t, 0);
        if (!PyObject_TypeCheck(p, &CheckerType)) {
            PyErr_Format(PyExc_TypeError, "check_many: item %zd: expected a Policy, not %.100s", i,
                         Py_TYPE(p)->tp_name);
            goto done;
        }
        CheckerObject *c = (CheckerObject *)p;
        if (c->handle != h) {
            PyErr_Format(PyExc_ValueError, "check_many: item %zd: the policy belongs to another engine",
                         i);
            goto done;
        }
        if (c->concurrency) {
            raise_status(-2); /* WrongPolicyKind, message built in Python */
            goto done;
        }
        uint32_t cost = 1;
        if (PyTuple_GET_SIZE(t) == 3 && get_cost(PyTuple_GET_ITEM(t, 2), &cost) < 0) goto done;
        if (key_get(PyTuple_GET_ITEM(t, 1), &keys[i]) < 0) goto done;
        got = i + 1;
        items[i].policy = c->policy;
        items[i].key = keys[i].ptr;
        items[i].key_len = keys[i].len;
        items[i].cost = cost;
    }
    if (h->engine == NULL) {
        raise_status(STATUS_CLOSED);
        goto done;
    }
    rk_decision d;
    size_t index = 0;
    rk_status st = has_now ? F.check_many_at(h->engine, items, (size_t)n, now, &d, &index)
                           : F.check_many(h->engine, items, (size_t)n, &d, &index);
    if (st != 0) {
        raise_status((long)st);
        goto done;
    }
    PyObject *dec = new_decision(&d);
    if (dec == NULL) goto done;
    result = Py_BuildValue("(Nn)", dec, (Py_ssize_t)index);
done:
    for (Py_ssize_t i = 0; i < got; i++) key_done(&keys[i]);
    if (items != small_items) PyMem_Free(items);
    if (keys != small_keys) PyMem_Free(keys);
    Py_DECREF(seq);
    return result;
}

/* ---- HTTP fields ------------------------------------------------------- */

/* rate_limit_fields(decision, policy_value, names, legacy, now_s) -> list of
 * (name, value): RateLimit-Policy (given), RateLimit for the binding limit
 * (names[limit_index]: its structured-field name), and with `legacy` the
 * X-RateLimit-Limit/Remaining/Reset fields (Reset = now_s + t). t is
 * reset_after rounded up to whole seconds. */
static PyObject *FIELD_NAMES[5]; /* interned at module init */

static PyObject *ascii_u64(unsigned long long v) {
    char buf[24];
    int n = snprintf(buf, sizeof buf, "%llu", v);
    return PyUnicode_FromStringAndSize(buf, n);
}

static PyObject *pair(int field, PyObject *value /* stolen */) {
    if (value == NULL) return NULL;
    PyObject *t = PyTuple_Pack(2, FIELD_NAMES[field], value);
    Py_DECREF(value);
    return t;
}

static PyObject *speedups_rate_limit_fields(PyObject *mod, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyObject_TypeCheck(args[0], &DecisionBaseType) || !PyUnicode_Check(args[1]) ||
        !PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[2]) == 0) {
        PyErr_SetString(PyExc_TypeError,
                        "rate_limit_fields(decision, policy_value: str, names: tuple[str, ...], legacy, now_s)");
        return NULL;
    }
    DecisionObject *d = (DecisionObject *)args[0];
    Py_ssize_t li = (Py_ssize_t)d->limit_index;
    if (li >= PyTuple_GET_SIZE(args[2])) li = 0;
    PyObject *name = PyTuple_GET_ITEM(args[2], li);
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "rate_limit_fields: names must be str");
        return NULL;
    }
    int legacy = PyObject_IsTrue(args[3]);
    if (legacy < 0) return NULL;
    unsigned long long reset = d->reset_after_ns / 1000000000ULL + (d->reset_after_ns % 1000000000ULL != 0);
    Py_ssize_t name_len;
    const char *name_s = PyUnicode_AsUTF8AndSize(name, &name_len);
    if (name_s == NULL) return NULL;
    PyObject *list = PyList_New(legacy ? 5 : 2);
    if (list == NULL) return NULL;
    PyObject *t;
    Py_INCREF(args[1]);
    if ((t = pair(0, args[1])) == NULL) goto fail;
    PyList_SET_ITEM(list, 0, t);
    {
        /* name ";r=" u64 ";t=" u64 */
        char small[256];
        char *buf = small;
        size_t cap = (size_t)name_len + 64;
        if (cap > sizeof small && (buf = PyMem_Malloc(cap)) == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(buf, name_s, (size_t)name_len);
        int n = snprintf(buf + name_len, 64, ";r=%llu;t=%llu", d->remaining, reset);
        PyObject *v = PyUnicode_FromStringAndSize(buf, name_len + n);
        if (buf != small) PyMem_Free(buf);
        if ((t = pair(1, v)) == NULL) goto fail;
        PyList_SET_ITEM(list, 1, t);
    }
    if (legacy) {
        unsigned long long now_s = PyLong_AsUnsignedLongLong(args[4]);
        if (now_s == (unsigned long long)-1 && PyErr_Occurred()) goto fail;
        if ((t = pair(2, ascii_u64(d->limit))) == NULL) goto fail;
        PyList_SET_ITEM(list, 2, t);
        if ((t = pair(3, ascii_u64(d->remaining))) == NULL) goto fail;
        PyList_SET_ITEM(list, 3, t);
        if ((t = pair(4, ascii_u64(now_s + reset))) == NULL) goto fail;
        PyList_SET_ITEM(list, 4, t);
    }
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

/* ---- init --------------------------------------------------------------- */

static void *addr_of(PyObject *table, const char *name, int required) {
    PyObject *v = PyDict_GetItemString(table, name); /* borrowed */
    if (v == NULL || v == Py_None) {
        if (required) PyErr_Format(PyExc_KeyError, "init: missing address of %s", name);
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(v);
    if (p == NULL && !PyErr_Occurred() && required) {
        PyErr_Format(PyExc_ValueError, "init: NULL address for %s", name);
    }
    return p;
}

static PyObject *speedups_init(PyObject *mod, PyObject *args) {
    PyObject *table, *decision_type, *handler;
    if (!PyArg_ParseTuple(args, "O!O!O", &PyDict_Type, &table, &PyType_Type, &decision_type,
                          &handler)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)decision_type, &DecisionBaseType)) {
        PyErr_SetString(PyExc_TypeError, "init: the decision type must subclass DecisionBase");
        return NULL;
    }
#define REQ(field, type, name)                                   \
    do {                                                         \
        F.field = (type)addr_of(table, name, 1);                 \
        if (F.field == NULL) return NULL;                        \
    } while (0)
    F.ready = 0;
    REQ(check, check_fn, "rk_check");
    REQ(check_at, check_at_fn, "rk_check_at");
    REQ(peek, check_fn, "rk_peek");
    REQ(peek_at, check_at_fn, "rk_peek_at");
    REQ(refund, refund_fn, "rk_refund");
    REQ(refund_at, refund_at_fn, "rk_refund_at");
    REQ(last_error, last_error_fn, "rk_last_error");
    REQ(now_ns, now_fn, "rk_now_ns");
    REQ(check_many, check_many_fn, "rk_check_many");
    REQ(check_many_at, check_many_at_fn, "rk_check_many_at");
#undef REQ
    Py_INCREF(decision_type);
    Py_XSETREF(F.decision_type, (PyTypeObject *)decision_type);
    Py_INCREF(handler);
    Py_XSETREF(F.error_handler, handler);
    F.ready = 1;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"init", (PyCFunction)speedups_init, METH_VARARGS,
     "init(addresses: dict[str, int], decision_type, error_handler) -> None\n\n"
     "Installs the rk_* function addresses (from the cffi module), the Decision\n"
     "class to instantiate and the status->exception handler."},
    {"check_many", (PyCFunction)(void (*)(void))speedups_check_many, METH_FASTCALL,
     "check_many(handle, items, now_ns) -> (Decision, index)"},
    {"rate_limit_fields", (PyCFunction)(void (*)(void))speedups_rate_limit_fields, METH_FASTCALL,
     "rate_limit_fields(decision, policy_value, names, legacy, now_s) -> list[tuple[str, str]]"},
    {NULL}};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "ratekeeper._speedups",
    "The hot path of ratekeeper's Python binding (see the source's header).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__speedups(void) {
    if (PyType_Ready(&HandleType) < 0 || PyType_Ready(&DecisionBaseType) < 0 ||
        PyType_Ready(&CheckerType) < 0) {
        return NULL;
    }
    static const char *field_names[5] = {"RateLimit-Policy", "RateLimit", "X-RateLimit-Limit",
                                         "X-RateLimit-Remaining", "X-RateLimit-Reset"};
    for (int i = 0; i < 5; i++) {
        if (FIELD_NAMES[i] == NULL && (FIELD_NAMES[i] = PyUnicode_InternFromString(field_names[i])) == NULL) {
            return NULL;
        }
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) return NULL;
    Py_INCREF(&HandleType);
    Py_INCREF(&DecisionBaseType);
    Py_INCREF(&CheckerType);
    if (PyModule_AddObject(m, "Handle", (PyObject *)&HandleType) < 0 ||
        PyModule_AddObject(m, "DecisionBase", (PyObject *)&DecisionBaseType) < 0 ||
        PyModule_AddObject(m, "Checker", (PyObject *)&CheckerType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
