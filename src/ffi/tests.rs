//! Unit tests of the C ABI's plumbing, driven from Rust. The C programs
//! under `tests/c/` test the same functions from C, under sanitizers and
//! valgrind.

use super::args::Failure;
use super::boundary::{self, last_error_string};
use super::check::*;
use super::engine::*;
use super::permit::*;
use super::policy::*;
use super::status::*;
use std::ffi::{c_char, CStr};
use std::mem::size_of;
use std::ptr::{null, null_mut};

const S: u64 = 1_000_000_000;

fn new_engine(capacity: u64) -> *mut rk_engine {
    let mut opts = std::mem::MaybeUninit::<rk_engine_options>::uninit();
    let mut engine = null_mut();
    // SAFETY: `opts` is a writable local; init fills every field; `engine` is a writable local.
    unsafe {
        rk_engine_options_init(opts.as_mut_ptr());
        let mut opts = opts.assume_init();
        opts.capacity = capacity;
        assert_eq!(rk_engine_new(&opts, &mut engine), rk_status::RK_OK);
    }
    engine
}

fn add(engine: *mut rk_engine, name: &CStr, spec: &CStr) -> Result<u32, rk_status> {
    let mut id = u32::MAX;
    // SAFETY: live engine, NUL-terminated strings, writable out.
    match unsafe { rk_policy_add(engine, name.as_ptr(), spec.as_ptr(), &mut id) } {
        rk_status::RK_OK => Ok(id),
        s => Err(s),
    }
}

fn check_at(
    engine: *mut rk_engine,
    policy: u32,
    key: &[u8],
    cost: u32,
    now: u64,
) -> Result<rk_decision, rk_status> {
    let mut d = std::mem::MaybeUninit::uninit();
    // SAFETY: live engine, key slice, writable out.
    match unsafe {
        rk_check_at(
            engine,
            policy,
            key.as_ptr(),
            key.len(),
            cost,
            now,
            d.as_mut_ptr(),
        )
    } {
        // SAFETY: RK_OK means `d` was written.
        rk_status::RK_OK => Ok(unsafe { d.assume_init() }),
        s => Err(s),
    }
}

fn free(engine: *mut rk_engine) {
    // SAFETY: `engine` came from rk_engine_new and is not used afterwards.
    unsafe { rk_engine_free(engine) }
}

fn c(p: *const c_char) -> String {
    // SAFETY: the functions tested return static or thread-local NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

#[test]
fn status_values_are_explicit_distinct_and_described() {
    for (i, s) in rk_status::ALL.iter().enumerate() {
        assert_eq!(*s as u32, i as u32, "{s:?} keeps its value");
        let text = c(rk_status_str(*s as u32));
        assert!(text.starts_with(&format!("{s:?}: ")), "{text}");
    }
    assert_eq!(c(rk_status_str(19)), "unknown rk_status value");
    assert_eq!(c(rk_status_str(u32::MAX)), "unknown rk_status value");
}

#[test]
fn every_engine_error_has_its_own_status() {
    use crate::{Error, ParseError};
    let errors = [
        Error::Parse(ParseError {
            position: 0,
            expected: String::new(),
            found: String::new(),
        }),
        Error::Unsupported(String::new()),
        Error::InvalidArgument(String::new()),
        Error::PolicyMismatch {
            name: String::new(),
            existing: String::new(),
            requested: String::new(),
        },
        Error::UnknownPolicy(0),
        Error::TooManyPolicies(0),
        Error::WrongPolicyKind(String::new()),
        Error::InvalidPermit,
        Error::Timeout,
        Error::OutOfMemory(String::new()),
        Error::Io(String::new()),
        Error::Corrupt(String::new()),
        Error::UnsupportedPlatform(String::new()),
    ];
    let mut statuses: Vec<u32> = errors.iter().map(|e| rk_status::of(e) as u32).collect();
    statuses.sort_unstable();
    statuses.dedup();
    assert_eq!(statuses.len(), errors.len());
    assert!(!statuses.contains(&0));
}

#[test]
fn a_panic_inside_the_boundary_becomes_rk_err_panic_with_its_message() {
    let status = boundary::run("rk_test", || panic!("boom {}", 42));
    assert_eq!(status, rk_status::RK_ERR_PANIC);
    assert_eq!(
        last_error_string(),
        "rk_test: internal error (panic): boom 42"
    );
    let value = boundary::run_infallible("rk_test_value", 7u32, || panic!("static message"));
    assert_eq!(value, 7);
    assert_eq!(
        last_error_string(),
        "rk_test_value: internal error (panic): static message"
    );
}

#[test]
fn a_failure_sets_the_message_and_success_leaves_it_alone() {
    std::thread::spawn(|| {
        assert_eq!(c(rk_last_error()), "", "empty before any failure");
        let e = new_engine(64);
        let p = add(e, c"p", c"10/second").unwrap();
        assert_eq!(
            check_at(e, 99, b"k", 1, S),
            Err(rk_status::RK_ERR_UNKNOWN_POLICY)
        );
        assert_eq!(c(rk_last_error()), "rk_check_at: unknown policy id 99");
        let before = rk_last_error();
        assert!(check_at(e, p, b"k", 1, S).unwrap().allowed);
        assert_eq!(rk_last_error(), before, "same buffer");
        assert_eq!(c(rk_last_error()), "rk_check_at: unknown policy id 99");
        free(e);
    })
    .join()
    .unwrap();
}

#[test]
fn long_messages_are_cut_at_a_character_boundary_and_nuls_replaced() {
    std::thread::spawn(|| {
        let long = "é".repeat(2000);
        let status = boundary::run("rk_test", || Err(Failure::Invalid(format!("a\0b{long}"))));
        assert_eq!(status, rk_status::RK_ERR_INVALID_ARGUMENT);
        let m = last_error_string();
        assert!(m.starts_with("rk_test: invalid argument: a?bé"));
        assert!(m.len() <= 1023 && m.len() > 1000, "{}", m.len());
        assert!(m.ends_with('é'));
    })
    .join()
    .unwrap();
}

#[test]
fn engine_options_read_only_the_fields_within_struct_size() {
    // SAFETY: every pointer is to a live local of the right type (whole test).
    unsafe {
        let mut opts = std::mem::zeroed::<rk_engine_options>();
        rk_engine_options_init(&mut opts);
        assert_eq!(opts.struct_size as usize, size_of::<rk_engine_options>());
        assert_eq!(opts.capacity, crate::DEFAULT_CAPACITY as u64);
        let mut e = null_mut();

        opts.struct_size = 0;
        assert_eq!(
            rk_engine_new(&opts, &mut e),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert!(
            last_error_string().contains("struct_size is 0"),
            "{}",
            last_error_string()
        );
        opts.struct_size = 12;
        assert_eq!(
            rk_engine_new(&opts, &mut e),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert!(e.is_null(), "out untouched on failure");

        // A caller that knows only `struct_size` and `capacity`: the bad
        // clock beyond its struct is never read.
        opts.struct_size = 16;
        opts.capacity = 100;
        opts.clock = 77;
        assert_eq!(rk_engine_new(&opts, &mut e), rk_status::RK_OK);
        free(e);

        opts.struct_size = size_of::<rk_engine_options>() as u32;
        assert_eq!(
            rk_engine_new(&opts, &mut e),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert!(last_error_string().contains("opts->clock is 77"));
        opts.clock = rk_clock::RK_CLOCK_MONOTONIC_COARSE as u32;
        opts.capacity = 0;
        assert_eq!(
            rk_engine_new(&opts, &mut e),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        opts.capacity = 1;
        assert_eq!(rk_engine_new(&opts, &mut e), rk_status::RK_OK);
        free(e);
        assert_eq!(rk_engine_new(null(), &mut e), rk_status::RK_OK);
        free(e);
        assert_eq!(
            rk_engine_new(null(), null_mut()),
            rk_status::RK_ERR_NULL_POINTER
        );
        rk_engine_options_init(null_mut());
        rk_engine_free(null_mut());
    }
}

#[test]
fn the_policy_name_limit_matches_the_engine() {
    let e = new_engine(16);
    let ok = std::ffi::CString::new("n".repeat(RK_MAX_POLICY_NAME_LEN as usize)).unwrap();
    let long = std::ffi::CString::new("n".repeat(RK_MAX_POLICY_NAME_LEN as usize + 1)).unwrap();
    let p = add(e, &ok, c"1/second").unwrap();
    assert_eq!(
        add(e, &long, c"1/second"),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    let mut buf = [0 as c_char; RK_MAX_POLICY_NAME_LEN as usize + 1];
    let mut len = 0;
    // SAFETY: live engine; buffer and length are writable locals.
    unsafe {
        assert_eq!(
            rk_policy_name(e, p, buf.as_mut_ptr(), buf.len(), &mut len),
            rk_status::RK_OK
        );
        assert_eq!(len, RK_MAX_POLICY_NAME_LEN as usize);
        assert_eq!(CStr::from_ptr(buf.as_ptr()), ok.as_c_str());
        assert_eq!(
            rk_policy_name(e, p, buf.as_mut_ptr(), buf.len() - 1, &mut len),
            rk_status::RK_ERR_BUFFER_TOO_SMALL
        );
    }
    free(e);
}

#[test]
fn permits_round_trip_and_altered_permits_are_refused() {
    let e = new_engine(64);
    let p = add(e, c"jobs", c"concurrency 2").unwrap();
    let mut permit = std::mem::MaybeUninit::<rk_permit>::uninit();
    let mut d = std::mem::MaybeUninit::<rk_decision>::uninit();
    // SAFETY: live engine, writable locals, read only after RK_OK (whole block).
    unsafe {
        assert_eq!(
            rk_acquire_at(
                e,
                p,
                b"k".as_ptr(),
                1,
                S,
                permit.as_mut_ptr(),
                d.as_mut_ptr()
            ),
            rk_status::RK_OK
        );
        assert!(d.assume_init().allowed);
        let permit = permit.assume_init();
        assert_eq!(permit.policy, p);
        for (i, delta) in [(0usize, 2u64), (1, 1 << 60), (4, 2)] {
            let mut bad = permit;
            bad.opaque[i] ^= delta;
            assert_eq!(
                rk_release(e, &bad),
                rk_status::RK_ERR_INVALID_PERMIT,
                "opaque[{i}]"
            );
        }
        // A lease word that is not the live one is a stale permit: released
        // as a no-op, and the real lease stays held.
        for i in [2usize, 3] {
            let mut stale = permit;
            stale.opaque[i] ^= 1;
            assert_eq!(rk_release(e, &stale), rk_status::RK_OK, "opaque[{i}]");
        }
        let mut peek = std::mem::zeroed::<rk_decision>();
        assert_eq!(
            rk_peek_at(e, p, b"k".as_ptr(), 1, 1, S, &mut peek),
            rk_status::RK_OK
        );
        // `remaining` counts after this (peeked) request's own charge.
        assert_eq!(
            (peek.allowed, peek.remaining),
            (true, 0),
            "one of two permits still held"
        );
        let mut bad = permit;
        bad.reserved = 1;
        assert_eq!(rk_release(e, &bad), rk_status::RK_ERR_INVALID_PERMIT);
        let mut bad = permit;
        bad.policy = 7;
        assert_ne!(rk_release(e, &bad), rk_status::RK_OK);
        assert_eq!(rk_release(e, &permit), rk_status::RK_OK);
        assert_eq!(
            rk_release(e, &permit),
            rk_status::RK_OK,
            "a second release does nothing"
        );
        assert_eq!(
            rk_peek_at(e, p, b"k".as_ptr(), 1, 1, S, &mut peek),
            rk_status::RK_OK
        );
        assert_eq!(
            (peek.allowed, peek.remaining),
            (true, 1),
            "both permits free again"
        );
        let zero = std::mem::zeroed::<rk_permit>();
        assert_eq!(rk_release(e, &zero), rk_status::RK_ERR_INVALID_PERMIT);
    }
    free(e);
}

#[test]
fn a_fail_open_acquire_without_room_hands_out_a_permit_whose_release_does_nothing() {
    let e = new_engine(1);
    let mut opts = std::mem::MaybeUninit::<rk_policy_options>::uninit();
    let mut id = 0;
    // SAFETY: live engine, writable locals, read only after RK_OK (whole block).
    unsafe {
        rk_policy_options_init(opts.as_mut_ptr());
        let mut opts = opts.assume_init();
        opts.when_full = rk_when_full::RK_WHEN_FULL_FAIL_OPEN as u32;
        assert_eq!(
            rk_policy_add_with(
                e,
                c"jobs".as_ptr(),
                c"concurrency 1".as_ptr(),
                &opts,
                &mut id
            ),
            rk_status::RK_OK
        );
        let mut stats = std::mem::zeroed::<rk_stats>();
        assert_eq!(rk_policy_stats(e, id, &mut stats), rk_status::RK_OK);
        let mut unleased = None;
        for k in 0..(4 * stats.capacity + 8) {
            let key = k.to_le_bytes();
            let mut permit = std::mem::MaybeUninit::<rk_permit>::uninit();
            let mut d = std::mem::MaybeUninit::<rk_decision>::uninit();
            let s = rk_acquire_at(
                e,
                id,
                key.as_ptr(),
                key.len(),
                S,
                permit.as_mut_ptr(),
                d.as_mut_ptr(),
            );
            assert_eq!(s, rk_status::RK_OK);
            assert!(d.assume_init().allowed, "fail open admits key {k}");
            let permit = permit.assume_init();
            if permit.opaque[4] != 0 {
                unleased = Some(permit);
                break;
            }
        }
        let unleased = unleased.expect("the table filled up");
        assert_eq!(rk_policy_stats(e, id, &mut stats), rk_status::RK_OK);
        assert!(stats.table_full >= 1);
        assert_eq!(rk_release(e, &unleased), rk_status::RK_OK);
        let other = new_engine(1);
        assert_eq!(
            rk_release(other, &unleased),
            rk_status::RK_ERR_INVALID_PERMIT
        );
        free(other);
    }
    free(e);
}

#[test]
fn zero_and_impossible_costs_are_decisions_not_errors() {
    let e = new_engine(64);
    let p = add(e, c"p", c"10/second").unwrap();
    let d = check_at(e, p, b"k", 0, S).unwrap();
    assert!(d.allowed);
    assert_eq!(d.remaining, 10);
    let d = check_at(e, p, b"k", u32::MAX, S).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ns, u64::MAX);
    free(e);
}

#[test]
fn a_misaligned_out_pointer_is_an_invalid_argument_and_is_not_written() {
    let e = new_engine(64);
    let p = add(e, c"p", c"10/second").unwrap();
    // u64s: the buffer is 8-aligned, so one byte in is misaligned for sure.
    let mut buf = [u64::MAX; 2 * size_of::<rk_decision>() / 8];
    // SAFETY: live engine; the (misaligned) pointer is inside `buf` and is
    // only checked, never written.
    let s = unsafe {
        let out = buf.as_mut_ptr().cast::<u8>().add(1).cast::<rk_decision>();
        rk_check_at(e, p, b"k".as_ptr(), 1, 1, S, out)
    };
    assert_eq!(s, rk_status::RK_ERR_INVALID_ARGUMENT);
    assert!(last_error_string().contains("`out` is not aligned"));
    assert!(buf.iter().all(|&w| w == u64::MAX));
    free(e);
}
