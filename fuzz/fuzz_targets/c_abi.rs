//! The C ABI called as a C program would, with arbitrary arguments: keys of
//! any bytes and lengths (and NULL with any length), arbitrary specs and
//! names (any bytes, NUL-terminated), costs, policy ids, times, options
//! with any `struct_size` (and any byte in their `bool`s), penalty boxes,
//! forged permits, batches of any length (NULL items, NULL keys), override
//! factors (NaN, infinities), deny-event buffers of any capacity, stats
//! structs of any size, small buffers and NULL out-parameters. Never a panic (the fuzzer aborts on any, caught or not),
//! every status is a known value other than RK_ERR_PANIC, out-parameters are
//! untouched on failure, and a failure always leaves a message.
//!
//! Capacities are kept small (a fuzzer's memory limit is not an engine bug);
//! every pointer passed is valid for what the contract says it must be.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ratekeeper::ffi::check::*;
use ratekeeper::ffi::engine::*;
use ratekeeper::ffi::events::*;
use ratekeeper::ffi::overrides::*;
use ratekeeper::ffi::permit::*;
use ratekeeper::ffi::policy::*;
use ratekeeper::ffi::status::*;
use std::ffi::{c_char, CStr, CString};
use std::mem::{size_of, MaybeUninit};
use std::ptr::{null, null_mut};

#[derive(Arbitrary, Debug)]
enum EngineRef {
    Null,
    Live(u8),
}

#[derive(Arbitrary, Debug)]
enum PolicyRef {
    Known(u8),
    Any(u32),
}

#[derive(Arbitrary, Debug)]
enum KeyArg {
    Bytes(Vec<u8>),
    /// The first `len % (bytes.len() + 1)` bytes.
    Prefix(Vec<u8>, u16),
    Null(usize),
}

#[derive(Arbitrary, Debug)]
enum Text {
    Bytes(Vec<u8>),
    Spec(u8),
    Null,
}

#[derive(Arbitrary, Debug)]
enum PermitArg {
    Held(u8),
    Altered(u8, u8, u64),
    Forged(u32, u32, [u64; 5]),
    Null,
}

#[derive(Arbitrary, Debug)]
struct Options {
    struct_size: u8,
    capacity: u16,
    clock: u32,
    shared_max_bytes: u64,
    shared_file_mode: u32,
}

#[derive(Arbitrary, Debug)]
struct PolicyOpts {
    /// Initialise with the first-version `rk_policy_options_init` (24
    /// bytes) instead of the sized one.
    legacy_init: bool,
    struct_size: u8,
    capacity: u16,
    when_full: u32,
    retry_jitter_ns: u64,
    penalty: Option<PenaltyArg>,
    /// Any byte: only 0 and 1 are valid `bool`s.
    shadow: u8,
    record_keys: u8,
}

#[derive(Arbitrary, Debug)]
enum PenaltyArg {
    /// Small values, mostly valid.
    Plausible {
        strikes: u8,
        window_ms: u16,
        ban_ms: u16,
        max_ban_ms: u16,
    },
    Any {
        strikes: u32,
        window_ns: u64,
        ban_ns: u64,
        max_ban_ns: u64,
    },
}

#[derive(Arbitrary, Debug)]
struct ItemArg {
    policy: PolicyRef,
    key: KeyArg,
    cost: u32,
}

#[derive(Arbitrary, Debug)]
enum Op {
    New {
        opts: Option<Options>,
        null_out: bool,
    },
    Free(u8),
    Add {
        engine: EngineRef,
        name: Text,
        spec: Text,
        opts: Option<PolicyOpts>,
        null_out: bool,
    },
    Find {
        engine: EngineRef,
        name: Text,
        null_out: bool,
    },
    Count {
        engine: EngineRef,
        null_out: bool,
    },
    Name {
        engine: EngineRef,
        policy: PolicyRef,
        spec: bool,
        buf_len: u8,
        null_buf: bool,
        null_len: bool,
    },
    Limit {
        engine: EngineRef,
        policy: PolicyRef,
        index: u32,
        count: bool,
        null_out: bool,
    },
    Stats {
        engine: EngineRef,
        policy: PolicyRef,
        null_out: bool,
    },
    Check {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
        cost: u32,
        now: Option<u64>,
        peek: bool,
        null_out: bool,
    },
    Refund {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
        cost: u32,
        now: Option<u64>,
        null_out: bool,
    },
    Reset {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
    },
    Acquire {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
        now: Option<u64>,
        timeout_us: Option<u8>,
        null_permit: bool,
        null_out: bool,
    },
    Release {
        engine: EngineRef,
        permit: PermitArg,
    },
    ReleaseHolder {
        engine: EngineRef,
        policy: PolicyRef,
        pid: u32,
        null_out: bool,
    },
    StatusStr(u32),
    CheckMany {
        engine: EngineRef,
        items: Vec<ItemArg>,
        /// Pass `n = 0` (or, with `null_items`, any `n`) instead.
        zero_n: bool,
        null_items: bool,
        now: Option<u64>,
        null_out: bool,
        null_index: bool,
    },
    OverrideSet {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
        factor: f64,
    },
    OverrideClear {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
    },
    OverrideGet {
        engine: EngineRef,
        policy: PolicyRef,
        key: KeyArg,
        null_out: bool,
    },
    RecentDenials {
        engine: EngineRef,
        policy: PolicyRef,
        since: u64,
        capacity: u16,
        null_events: bool,
        null_count: bool,
    },
    StatsSized {
        engine: EngineRef,
        policy: PolicyRef,
        out_size: u8,
        null_out: bool,
    },
}

const SPECS: &[&str] = &[
    "5/second",
    "10/second burst 20; fixed_window 100/minute",
    "sliding_window 3/second",
    "sliding_log 3/10 seconds",
    "concurrency 2",
    "concurrency 1 ttl 1 second",
    "1/day",
];

struct World {
    engines: Vec<*mut rk_engine>,
    permits: Vec<(usize, rk_permit)>,
}

impl World {
    fn engine(&self, r: &EngineRef) -> *mut rk_engine {
        match r {
            EngineRef::Null => null_mut(),
            EngineRef::Live(i) if !self.engines.is_empty() => {
                self.engines[*i as usize % self.engines.len()]
            }
            EngineRef::Live(_) => null_mut(),
        }
    }
}

fn policy(r: &PolicyRef) -> u32 {
    match r {
        PolicyRef::Known(i) => u32::from(*i % 8),
        PolicyRef::Any(i) => *i,
    }
}

/// A key argument: the owned bytes (kept alive by the caller) and the pointer/length to pass.
fn key(k: &KeyArg) -> (Vec<u8>, bool, usize) {
    match k {
        KeyArg::Bytes(b) => (b.clone(), false, b.len()),
        KeyArg::Prefix(b, n) => (b.clone(), false, *n as usize % (b.len() + 1)),
        KeyArg::Null(len) => (Vec::new(), true, *len),
    }
}

fn key_ptr(bytes: &[u8], is_null: bool) -> *const u8 {
    if is_null {
        null()
    } else {
        bytes.as_ptr()
    }
}

/// A NUL-terminated text argument (interior NULs end it early, as in C).
fn text(t: &Text) -> Option<CString> {
    match t {
        Text::Null => None,
        Text::Spec(i) => Some(CString::new(SPECS[*i as usize % SPECS.len()]).unwrap()),
        Text::Bytes(b) => {
            let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
            Some(CString::new(&b[..end]).unwrap())
        }
    }
}

fn text_ptr(t: &Option<CString>) -> *const c_char {
    t.as_ref().map_or(null(), |s| s.as_ptr())
}

/// Checks a status; on failure, that a message was left.
fn status(s: rk_status, what: &str) -> bool {
    assert!((s as u32) <= 18, "{what}: unknown status {}", s as u32);
    assert_ne!(s, rk_status::RK_ERR_PANIC, "{what}: panic");
    if s != rk_status::RK_OK {
        // SAFETY: rk_last_error returns a NUL-terminated thread-local string.
        let m = unsafe { CStr::from_ptr(rk_last_error()) };
        assert!(
            !m.to_bytes().is_empty(),
            "{what}: failure without a message"
        );
    }
    s == rk_status::RK_OK
}

fn check_decision(d: &rk_decision) {
    assert!(d.remaining <= d.limit, "{d:?}");
    if d.allowed && !d.shadow_denied {
        assert_eq!(d.retry_after_ns, 0, "{d:?}");
    } else {
        // A denial, or in shadow mode the denial it would have been.
        assert!(d.retry_after_ns > 0, "{d:?}");
    }
    assert!(
        !d.shadow_denied || d.allowed,
        "shadow mode lets it pass: {d:?}"
    );
    assert!(!d.banned || !d.allowed || d.shadow_denied, "{d:?}");
}

/// Sentinel-filled storage for an out-parameter, to see whether it was written.
fn sentinel<T>() -> MaybeUninit<T> {
    let mut m = MaybeUninit::<T>::uninit();
    // SAFETY: writing bytes into our own storage of size_of::<T>() bytes.
    unsafe { std::ptr::write_bytes(m.as_mut_ptr().cast::<u8>(), 0xA5, size_of::<T>()) };
    m
}

fn untouched<T>(m: &MaybeUninit<T>) -> bool {
    // SAFETY: reading the bytes of our own storage, all initialised by `sentinel` or a write.
    let bytes = unsafe { std::slice::from_raw_parts(m.as_ptr().cast::<u8>(), size_of::<T>()) };
    bytes.iter().all(|&b| b == 0xA5)
}

fn out_ptr<T>(m: &mut MaybeUninit<T>, is_null: bool) -> *mut T {
    if is_null {
        null_mut()
    } else {
        m.as_mut_ptr()
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut w = World {
        engines: Vec::new(),
        permits: Vec::new(),
    };
    // SAFETY: (for every call below) each pointer passed is NULL or points to
    // live storage of the right type and size that outlives the call; keys
    // and buffers are at least as long as the lengths passed.
    unsafe {
        for op in ops.iter().take(200) {
            match op {
                Op::New { opts, null_out } => {
                    if w.engines.len() >= 3 {
                        continue;
                    }
                    // 64 aligned bytes: any struct_size up to 64 is readable.
                    let mut buf = [0u64; 8];
                    let o = buf.as_mut_ptr().cast::<rk_engine_options>();
                    let p = if let Some(opts) = opts {
                        rk_engine_options_init(o);
                        (*o).struct_size = u32::from(opts.struct_size % 65);
                        (*o).capacity = u64::from(opts.capacity % 4096);
                        (*o).clock = opts.clock % 3;
                        (*o).shared_max_bytes = opts.shared_max_bytes;
                        (*o).shared_file_mode = opts.shared_file_mode;
                        o.cast_const()
                    } else {
                        null()
                    };
                    let mut out = sentinel::<*mut rk_engine>();
                    if status(rk_engine_new(p, out_ptr(&mut out, *null_out)), "new") {
                        w.engines.push(out.assume_init());
                    } else {
                        assert!(untouched(&out));
                    }
                }
                Op::Free(i) => {
                    if !w.engines.is_empty() {
                        let i = *i as usize % w.engines.len();
                        rk_engine_free(w.engines.swap_remove(i));
                        // Permits of a freed engine are dropped; indices shift.
                        w.permits.clear();
                    }
                }
                Op::Add {
                    engine,
                    name,
                    spec,
                    opts,
                    null_out,
                } => {
                    let e = w.engine(engine);
                    let (name, spec) = (text(name), text(spec));
                    // 80 aligned bytes: any struct_size up to 80 is readable.
                    let mut buf = [0u64; 10];
                    let o = buf.as_mut_ptr().cast::<rk_policy_options>();
                    let p = if let Some(opts) = opts {
                        if opts.legacy_init {
                            rk_policy_options_init(o);
                            assert_eq!((*o).struct_size, 24);
                        } else {
                            rk_policy_options_init_sized(o, size_of::<rk_policy_options>());
                            assert_eq!((*o).struct_size as usize, size_of::<rk_policy_options>());
                        }
                        (*o).struct_size = u32::from(opts.struct_size % 81);
                        (*o).capacity = u64::from(opts.capacity % 4096);
                        (*o).when_full = opts.when_full % 4;
                        (*o).retry_jitter_ns = opts.retry_jitter_ns;
                        match opts.penalty {
                            None => {}
                            Some(PenaltyArg::Plausible {
                                strikes,
                                window_ms,
                                ban_ms,
                                max_ban_ms,
                            }) => {
                                (*o).penalty_strikes = u32::from(strikes % 8);
                                (*o).penalty_window_ns = u64::from(window_ms) * 1_000_000;
                                (*o).penalty_ban_ns = u64::from(ban_ms) * 1_000_000;
                                (*o).penalty_max_ban_ns = u64::from(max_ban_ms) * 1_000_000;
                            }
                            Some(PenaltyArg::Any {
                                strikes,
                                window_ns,
                                ban_ns,
                                max_ban_ns,
                            }) => {
                                (*o).penalty_strikes = strikes;
                                (*o).penalty_window_ns = window_ns;
                                (*o).penalty_ban_ns = ban_ns;
                                (*o).penalty_max_ban_ns = max_ban_ns;
                            }
                        }
                        // Raw bytes: a C caller can leave any byte in a bool.
                        std::ptr::addr_of_mut!((*o).shadow)
                            .cast::<u8>()
                            .write(opts.shadow % 3);
                        std::ptr::addr_of_mut!((*o).record_keys)
                            .cast::<u8>()
                            .write(opts.record_keys % 3);
                        o.cast_const()
                    } else {
                        null()
                    };
                    let mut out = sentinel::<u32>();
                    let s = rk_policy_add_with(
                        e,
                        text_ptr(&name),
                        text_ptr(&spec),
                        p,
                        out_ptr(&mut out, *null_out),
                    );
                    if !status(s, "add") {
                        assert!(untouched(&out));
                    }
                }
                Op::Find {
                    engine,
                    name,
                    null_out,
                } => {
                    let name = text(name);
                    let mut out = sentinel::<u32>();
                    let s = rk_policy_find(
                        w.engine(engine),
                        text_ptr(&name),
                        out_ptr(&mut out, *null_out),
                    );
                    if !status(s, "find") {
                        assert!(untouched(&out));
                    }
                }
                Op::Count { engine, null_out } => {
                    let mut out = sentinel::<u32>();
                    if !status(
                        rk_policy_count(w.engine(engine), out_ptr(&mut out, *null_out)),
                        "count",
                    ) {
                        assert!(untouched(&out));
                    }
                }
                Op::Name {
                    engine,
                    policy: pr,
                    spec,
                    buf_len,
                    null_buf,
                    null_len,
                } => {
                    let mut buf = vec![0x5a as c_char; 256];
                    let len = usize::from(*buf_len);
                    let (b, l) = if *null_buf {
                        (null_mut(), if len % 2 == 0 { 0 } else { len })
                    } else {
                        (buf.as_mut_ptr(), len)
                    };
                    let mut out = sentinel::<usize>();
                    let f = if *spec {
                        rk_policy_spec
                    } else {
                        rk_policy_name
                    };
                    let s = f(
                        w.engine(engine),
                        policy(pr),
                        b,
                        l,
                        out_ptr(&mut out, *null_len),
                    );
                    if status(s, "name") {
                        if !*null_buf {
                            let n = CStr::from_ptr(buf.as_ptr()).to_bytes().len();
                            assert!(n < l);
                            if !*null_len {
                                assert_eq!(out.assume_init(), n);
                            }
                        }
                    } else {
                        assert!(untouched(&out));
                        assert!(buf.iter().all(|&c| c == 0x5a));
                    }
                }
                Op::Limit {
                    engine,
                    policy: pr,
                    index,
                    count,
                    null_out,
                } => {
                    if *count {
                        let mut out = sentinel::<u32>();
                        if !status(
                            rk_policy_limit_count(
                                w.engine(engine),
                                policy(pr),
                                out_ptr(&mut out, *null_out),
                            ),
                            "limit_count",
                        ) {
                            assert!(untouched(&out));
                        }
                    } else {
                        let mut out = sentinel::<rk_limit>();
                        if !status(
                            rk_policy_limit(
                                w.engine(engine),
                                policy(pr),
                                *index % 4,
                                out_ptr(&mut out, *null_out),
                            ),
                            "limit",
                        ) {
                            assert!(untouched(&out));
                        }
                    }
                }
                Op::Stats {
                    engine,
                    policy: pr,
                    null_out,
                } => {
                    let mut out = sentinel::<rk_stats>();
                    if status(
                        rk_policy_stats(w.engine(engine), policy(pr), out_ptr(&mut out, *null_out)),
                        "stats",
                    ) {
                        // The first-version function: 48 bytes, no more.
                        let bytes = std::slice::from_raw_parts(
                            out.as_ptr().cast::<u8>(),
                            size_of::<rk_stats>(),
                        );
                        assert!(bytes[RK_STATS_V1_SIZE..].iter().all(|&b| b == 0xA5));
                        let s = out.assume_init();
                        assert!(s.occupancy <= s.capacity);
                    } else {
                        assert!(untouched(&out));
                    }
                }
                Op::Check {
                    engine,
                    policy: pr,
                    key: k,
                    cost,
                    now,
                    peek,
                    null_out,
                } => {
                    let (bytes, null_key, len) = key(k);
                    let kp = key_ptr(&bytes, null_key);
                    let e = w.engine(engine);
                    let mut out = sentinel::<rk_decision>();
                    let o = out_ptr(&mut out, *null_out);
                    let s = match (now, peek) {
                        (Some(t), false) => rk_check_at(e, policy(pr), kp, len, *cost, *t, o),
                        (Some(t), true) => rk_peek_at(e, policy(pr), kp, len, *cost, *t, o),
                        (None, false) => rk_check(e, policy(pr), kp, len, *cost, o),
                        (None, true) => rk_peek(e, policy(pr), kp, len, *cost, o),
                    };
                    if status(s, "check") {
                        check_decision(&out.assume_init());
                    } else {
                        assert!(untouched(&out));
                        if null_key && len > 0 && !e.is_null() && !*null_out {
                            assert_eq!(s, rk_status::RK_ERR_NULL_KEY);
                        }
                    }
                }
                Op::Refund {
                    engine,
                    policy: pr,
                    key: k,
                    cost,
                    now,
                    null_out,
                } => {
                    let (bytes, null_key, len) = key(k);
                    let mut out = sentinel::<bool>();
                    let o = out_ptr(&mut out, *null_out);
                    let s = match now {
                        Some(t) => rk_refund_at(
                            w.engine(engine),
                            policy(pr),
                            key_ptr(&bytes, null_key),
                            len,
                            *cost,
                            *t,
                            o,
                        ),
                        None => rk_refund(
                            w.engine(engine),
                            policy(pr),
                            key_ptr(&bytes, null_key),
                            len,
                            *cost,
                            o,
                        ),
                    };
                    if !status(s, "refund") {
                        assert!(untouched(&out));
                    }
                }
                Op::Reset {
                    engine,
                    policy: pr,
                    key: k,
                } => {
                    let (bytes, null_key, len) = key(k);
                    status(
                        rk_reset(w.engine(engine), policy(pr), key_ptr(&bytes, null_key), len),
                        "reset",
                    );
                }
                Op::Acquire {
                    engine,
                    policy: pr,
                    key: k,
                    now,
                    timeout_us,
                    null_permit,
                    null_out,
                } => {
                    let (bytes, null_key, len) = key(k);
                    let kp = key_ptr(&bytes, null_key);
                    let e = w.engine(engine);
                    let mut permit = sentinel::<rk_permit>();
                    let mut out = sentinel::<rk_decision>();
                    let (pp, o) = (
                        out_ptr(&mut permit, *null_permit),
                        out_ptr(&mut out, *null_out),
                    );
                    let s = match (now, timeout_us) {
                        (_, Some(us)) => rk_acquire_timeout(
                            e,
                            policy(pr),
                            kp,
                            len,
                            u64::from(*us % 50) * 1000,
                            pp,
                            o,
                        ),
                        (Some(t), None) => rk_acquire_at(e, policy(pr), kp, len, *t, pp, o),
                        (None, None) => rk_acquire(e, policy(pr), kp, len, pp, o),
                    };
                    if status(s, "acquire") {
                        let d = out.assume_init();
                        check_decision(&d);
                        assert_eq!(d.allowed, !untouched(&permit), "allowed <=> permit written");
                        if d.allowed {
                            let i = w.engines.iter().position(|&x| x == e).unwrap();
                            w.permits.push((i, permit.assume_init()));
                        }
                    } else {
                        assert!(untouched(&out) && untouched(&permit));
                    }
                }
                Op::Release { engine, permit } => {
                    let e = w.engine(engine);
                    let p = match permit {
                        PermitArg::Null => None,
                        PermitArg::Held(i) if !w.permits.is_empty() => {
                            Some(w.permits[*i as usize % w.permits.len()].1)
                        }
                        PermitArg::Held(_) => None,
                        PermitArg::Altered(i, word, bits) if !w.permits.is_empty() => {
                            let mut p = w.permits[*i as usize % w.permits.len()].1;
                            p.opaque[*word as usize % 5] ^= bits;
                            Some(p)
                        }
                        PermitArg::Altered(..) => None,
                        PermitArg::Forged(policy, reserved, opaque) => Some(rk_permit {
                            policy: *policy % 8,
                            reserved: *reserved,
                            opaque: *opaque,
                        }),
                    };
                    let s = rk_release(e, p.as_ref().map_or(null(), |p| p as *const rk_permit));
                    status(s, "release");
                }
                Op::ReleaseHolder {
                    engine,
                    policy: pr,
                    pid,
                    null_out,
                } => {
                    let mut out = sentinel::<u64>();
                    if !status(
                        rk_release_holder(
                            w.engine(engine),
                            policy(pr),
                            *pid,
                            out_ptr(&mut out, *null_out),
                        ),
                        "release_holder",
                    ) {
                        assert!(untouched(&out));
                    }
                }
                Op::CheckMany {
                    engine,
                    items,
                    zero_n,
                    null_items,
                    now,
                    null_out,
                    null_index,
                } => {
                    // Up to 40 items: both the stack batch (<= 16) and the heap one.
                    let keys: Vec<(Vec<u8>, bool, usize)> =
                        items.iter().take(40).map(|it| key(&it.key)).collect();
                    let batch: Vec<rk_check_item> = items
                        .iter()
                        .zip(&keys)
                        .map(|(it, (bytes, null_key, len))| rk_check_item {
                            policy: policy(&it.policy),
                            key: key_ptr(bytes, *null_key),
                            key_len: *len,
                            cost: it.cost,
                        })
                        .collect();
                    let n = if *zero_n && !*null_items {
                        0
                    } else if *null_items {
                        // Any n with NULL items (no item is ever read).
                        batch.len() + usize::from(*zero_n)
                    } else {
                        batch.len()
                    };
                    let ip = if *null_items { null() } else { batch.as_ptr() };
                    let e = w.engine(engine);
                    let mut out = sentinel::<rk_decision>();
                    let mut index = sentinel::<usize>();
                    let (o, io) = (
                        out_ptr(&mut out, *null_out),
                        out_ptr(&mut index, *null_index),
                    );
                    let s = match now {
                        Some(t) => rk_check_many_at(e, ip, n, *t, o, io),
                        None => rk_check_many(e, ip, n, o, io),
                    };
                    if status(s, "check_many") {
                        assert!(n > 0 && !*null_items);
                        check_decision(&out.assume_init());
                        if !*null_index {
                            assert!(index.assume_init() < n);
                        }
                    } else {
                        assert!(untouched(&out) && untouched(&index));
                        if !e.is_null() && !*null_out {
                            if n == 0 {
                                assert_eq!(s, rk_status::RK_ERR_INVALID_ARGUMENT);
                            } else if *null_items {
                                assert_eq!(s, rk_status::RK_ERR_NULL_POINTER);
                            }
                        }
                    }
                }
                Op::OverrideSet {
                    engine,
                    policy: pr,
                    key: k,
                    factor,
                } => {
                    let (bytes, null_key, len) = key(k);
                    let e = w.engine(engine);
                    let s = rk_override_set(e, policy(pr), key_ptr(&bytes, null_key), len, *factor);
                    if status(s, "override_set") {
                        assert!(factor.is_finite() && *factor > 0.0);
                        let mut f = 0.0f64;
                        let s =
                            rk_override_get(e, policy(pr), key_ptr(&bytes, null_key), len, &mut f);
                        assert_eq!(s, rk_status::RK_OK);
                        assert!(
                            (f - factor).abs() <= 0.0005 + 1e-9 * factor,
                            "{f} vs {factor}"
                        );
                    } else if !factor.is_finite() && !e.is_null() && !(null_key && len > 0) {
                        assert!(matches!(
                            s,
                            rk_status::RK_ERR_INVALID_ARGUMENT | rk_status::RK_ERR_UNKNOWN_POLICY
                        ));
                    }
                }
                Op::OverrideClear {
                    engine,
                    policy: pr,
                    key: k,
                } => {
                    let (bytes, null_key, len) = key(k);
                    let e = w.engine(engine);
                    if status(
                        rk_override_clear(e, policy(pr), key_ptr(&bytes, null_key), len),
                        "override_clear",
                    ) {
                        let mut f = -1.0f64;
                        let s =
                            rk_override_get(e, policy(pr), key_ptr(&bytes, null_key), len, &mut f);
                        assert_eq!(s, rk_status::RK_OK);
                        assert_eq!(f, 0.0, "cleared");
                    }
                }
                Op::OverrideGet {
                    engine,
                    policy: pr,
                    key: k,
                    null_out,
                } => {
                    let (bytes, null_key, len) = key(k);
                    let mut out = sentinel::<f64>();
                    let s = rk_override_get(
                        w.engine(engine),
                        policy(pr),
                        key_ptr(&bytes, null_key),
                        len,
                        out_ptr(&mut out, *null_out),
                    );
                    if status(s, "override_get") {
                        let f = out.assume_init();
                        assert!(f == 0.0 || (0.001..=16_777.215).contains(&f), "{f}");
                    } else {
                        assert!(untouched(&out));
                    }
                }
                Op::RecentDenials {
                    engine,
                    policy: pr,
                    since,
                    capacity,
                    null_events,
                    null_count,
                } => {
                    let cap = usize::from(*capacity % 600);
                    let mut events: Vec<MaybeUninit<rk_deny_event>> =
                        (0..cap).map(|_| sentinel::<rk_deny_event>()).collect();
                    let ep = if *null_events {
                        null_mut()
                    } else {
                        events.as_mut_ptr().cast::<rk_deny_event>()
                    };
                    let mut count = sentinel::<usize>();
                    let s = rk_recent_denials(
                        w.engine(engine),
                        policy(pr),
                        *since,
                        ep,
                        cap,
                        out_ptr(&mut count, *null_count),
                    );
                    if status(s, "recent_denials") {
                        let n = count.assume_init();
                        assert!(n <= cap && n <= RK_DENY_RING_ENTRIES);
                        let mut last = None;
                        for (i, slot) in events.iter().enumerate() {
                            if i >= n {
                                assert!(untouched(slot), "only `count` events written");
                                continue;
                            }
                            let ev = slot.assume_init();
                            assert!(ev.ticket >= *since);
                            assert!(last.is_none_or(|l| ev.ticket > l), "oldest first");
                            last = Some(ev.ticket);
                            assert!(usize::from(ev.key_len) <= RK_EVENT_KEY_BYTES);
                            assert!(ev.has_key || ev.key_len == 0);
                            assert!(ev.key[usize::from(ev.key_len)..].iter().all(|&b| b == 0));
                            assert!(ev.retry_after_ns > 0);
                        }
                    } else {
                        assert!(untouched(&count));
                        assert!(events.iter().all(untouched));
                    }
                }
                Op::StatsSized {
                    engine,
                    policy: pr,
                    out_size,
                    null_out,
                } => {
                    // 128 aligned bytes: any out_size up to 128 is writable.
                    let mut buf = [0xA5A5_A5A5_A5A5_A5A5u64; 16];
                    let size = usize::from(*out_size % 129);
                    let o = if *null_out {
                        null_mut()
                    } else {
                        buf.as_mut_ptr().cast::<rk_stats>()
                    };
                    let s = rk_policy_stats_sized(w.engine(engine), policy(pr), o, size);
                    let written = if status(s, "stats_sized") {
                        assert!(size >= RK_STATS_V1_SIZE);
                        let st = &*o;
                        assert!(st.occupancy <= st.capacity);
                        size.min(size_of::<rk_stats>()) / 8
                    } else {
                        0
                    };
                    assert!(
                        buf[written..].iter().all(|&w| w == 0xA5A5_A5A5_A5A5_A5A5),
                        "nothing written past the whole fields within out_size"
                    );
                }
                Op::StatusStr(v) => {
                    let s = CStr::from_ptr(rk_status_str(*v));
                    assert!(!s.to_bytes().is_empty());
                }
            }
        }
        for e in w.engines.drain(..) {
            rk_engine_free(e);
        }
    }
});
