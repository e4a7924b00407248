//! Unit tests of the C ABI's plumbing, driven from Rust. The C programs
//! under `tests/c/` test the same functions from C, under sanitizers and
//! valgrind.

use super::args::Failure;
use super::boundary::{self, last_error_string};
use super::check::*;
use super::engine::*;
use super::events::*;
use super::overrides::*;
use super::permit::*;
use super::policy::*;
use super::redis::*;
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
    assert_eq!(c(rk_status_str(22)), "unknown rk_status value");
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
        Error::UnsafeFile(String::new()),
        Error::UnsupportedPlatform(String::new()),
        Error::Backend(String::new()),
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

/// Every export runs behind `ffi_panic_boundary!` under its own name (the
/// prefix of its last-error messages), which the macro cannot find itself.
#[test]
fn every_export_runs_behind_the_boundary_under_its_own_name() {
    let sources = [
        include_str!("check.rs"),
        include_str!("engine.rs"),
        include_str!("events.rs"),
        include_str!("overrides.rs"),
        include_str!("permit.rs"),
        include_str!("policy.rs"),
        include_str!("redis.rs"),
        include_str!("status.rs"),
    ];
    let mut exports = 0;
    for source in sources {
        for export in source.split("extern \"C\" fn ").skip(1) {
            let name = &export[..export.find('(').unwrap()];
            let body = &export[..export.find("\n}\n").unwrap()];
            let boundary = format!("ffi_panic_boundary!(\"{name}\", ");
            assert!(
                body.matches("ffi_panic_boundary!(").count() == 1 && body.contains(&boundary),
                "{name} must run its whole body in {boundary}...)"
            );
            exports += 1;
        }
    }
    assert!(exports >= 44, "found only {exports} exports");
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

/// Adds "jobs", `concurrency 1` failing open when its table is full, to `e`.
fn fail_open_jobs(e: *mut rk_engine) -> u32 {
    let mut opts = std::mem::MaybeUninit::<rk_policy_options>::uninit();
    let mut id = 0;
    // SAFETY: `e` is a live engine; the options are initialised by
    // rk_policy_options_init_sized before they are read.
    unsafe {
        rk_policy_options_init_sized(opts.as_mut_ptr(), size_of::<rk_policy_options>());
        let mut opts = opts.assume_init();
        opts.when_full = rk_when_full::RK_WHEN_FULL_FAIL_OPEN as u32;
        let (name, spec) = (c"jobs".as_ptr(), c"concurrency 1".as_ptr());
        assert_eq!(
            rk_policy_add_with(e, name, spec, &opts, &mut id),
            rk_status::RK_OK
        );
    }
    id
}

#[test]
fn a_fail_open_acquire_without_room_hands_out_a_permit_whose_release_does_nothing() {
    let e = new_engine(1);
    let id = fail_open_jobs(e);
    // SAFETY: live engine, writable locals, read only after RK_OK (whole block).
    unsafe {
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
fn rk_acquire_timeout_on_a_full_fail_open_bucket_returns_an_unleased_permit_at_once() {
    // One bucket (8 keys), each key holding its one permit.
    let e = new_engine(8);
    let id = fail_open_jobs(e);
    // SAFETY: live engine, writable locals, read only after RK_OK (whole block).
    unsafe {
        let acquire = |key: &[u8], timeout_ns: Option<u64>| {
            let mut permit = std::mem::MaybeUninit::<rk_permit>::uninit();
            let mut d = std::mem::MaybeUninit::<rk_decision>::uninit();
            let (k, n, pp, dp) = (key.as_ptr(), key.len(), permit.as_mut_ptr(), d.as_mut_ptr());
            let s = match timeout_ns {
                Some(t) => rk_acquire_timeout(e, id, k, n, t, pp, dp),
                None => rk_acquire(e, id, k, n, pp, dp),
            };
            assert_eq!(s, rk_status::RK_OK);
            let d = d.assume_init();
            assert!(d.allowed);
            permit.assume_init()
        };
        for k in 0..8u8 {
            assert_eq!(acquire(&[b'k', k], None).opaque[4], 0, "a leased permit");
        }
        let mut stats = std::mem::zeroed::<rk_stats>();
        assert_eq!(rk_policy_stats(e, id, &mut stats), rk_status::RK_OK);
        assert_eq!((stats.capacity, stats.table_full), (8, 0));
        // No room for a ninth key: admitted at once without a lease, after
        // one attempt (each attempt counts one table_full).
        let unleased = acquire(b"newcomer", Some(2 * S));
        assert_ne!(unleased.opaque[4], 0, "an unleased permit");
        assert_eq!(rk_policy_stats(e, id, &mut stats), rk_status::RK_OK);
        assert_eq!(stats.table_full, 1, "attempts");
        let mut released = true;
        assert_eq!(
            rk_release_permit(e, &unleased, &mut released),
            rk_status::RK_OK
        );
        assert!(!released);
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

/// Counts the calling thread's heap allocations (for the allocation-free
/// promises of the C ABI); forwards everything to the system allocator.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        // Const-initialised, no destructor: touching it never allocates.
        static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    }

    pub struct Counting;

    fn count() {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }

    // SAFETY: forwards to the system allocator unchanged; only counts calls.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: the caller's contract, forwarded.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    /// Allocations made by this thread so far.
    pub fn allocations() -> u64 {
        ALLOCATIONS.with(Cell::get)
    }
}

fn item(policy: u32, key: &[u8], cost: u32) -> rk_check_item {
    rk_check_item {
        policy,
        key: key.as_ptr(),
        key_len: key.len(),
        cost,
    }
}

fn check_many_at(
    engine: *mut rk_engine,
    items: &[rk_check_item],
    now: u64,
) -> Result<(rk_decision, usize), rk_status> {
    let mut d = std::mem::MaybeUninit::uninit();
    let mut index = usize::MAX;
    // SAFETY: live engine; the items (and their keys) are live slices; writable outs.
    match unsafe {
        rk_check_many_at(
            engine,
            items.as_ptr(),
            items.len(),
            now,
            d.as_mut_ptr(),
            &mut index,
        )
    } {
        // SAFETY: RK_OK means `d` was written.
        rk_status::RK_OK => Ok((unsafe { d.assume_init() }, index)),
        s => Err(s),
    }
}

#[test]
fn a_batch_of_up_to_16_items_allocates_nothing_and_a_larger_one_works_too() {
    let e = new_engine(1024);
    let per_ip = add(e, c"ip", c"1000/second").unwrap();
    let per_route = add(e, c"route", c"fixed_window 1000/second").unwrap();
    let keys: Vec<[u8; 8]> = (0..40u64).map(u64::to_le_bytes).collect();
    let items: Vec<rk_check_item> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| item(if i % 2 == 0 { per_ip } else { per_route }, k, 1))
        .collect();
    // Warm-up: slots claimed, thread-locals touched.
    check_many_at(e, &items[..16], S).unwrap();
    let before = counting::allocations();
    for n in 1..=16 {
        let (d, i) = check_many_at(e, &items[..n], S).unwrap();
        assert!(d.allowed && i < n);
    }
    assert_eq!(counting::allocations(), before, "no allocation for n <= 16");
    let (d, i) = check_many_at(e, &items, S).unwrap();
    assert!(d.allowed && i < items.len());
    assert!(
        counting::allocations() > before,
        "the counter sees the larger batch's array"
    );
    free(e);
}

#[test]
fn a_batch_is_all_or_nothing_and_reports_its_binding_item() {
    let e = new_engine(64);
    let ip = add(e, c"ip", c"10/second").unwrap();
    let route = add(e, c"route", c"2/second").unwrap();
    let batch = [item(ip, b"ip:1", 1), item(route, b"/login", 1)];
    let (d, i) = check_many_at(e, &batch, S).unwrap();
    assert_eq!(
        (d.allowed, d.remaining, i),
        (true, 1, 1),
        "fewest remaining binds"
    );
    check_many_at(e, &batch, S).unwrap();
    let (d, i) = check_many_at(e, &batch, S).unwrap();
    assert_eq!((d.allowed, i), (false, 1));
    // The denied batch charged nothing: the ip still has 8 of 10.
    assert_eq!(check_at(e, ip, b"ip:1", 0, S).unwrap().remaining, 8);
    free(e);
}

#[test]
fn batch_arguments_are_checked_and_outs_untouched_on_failure() {
    let e = new_engine(64);
    let p = add(e, c"p", c"10/second").unwrap();
    let jobs = add(e, c"jobs", c"concurrency 2").unwrap();
    let mut d = std::mem::MaybeUninit::<rk_decision>::uninit();
    let mut index = 77usize;
    let ok = [item(p, b"k", 1)];
    // SAFETY: live engine; every pointer is to a live local or NULL (whole block).
    unsafe {
        assert_eq!(
            rk_check_many_at(e, ok.as_ptr(), 0, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert!(last_error_string().contains("`n` is 0"));
        assert_eq!(
            rk_check_many_at(e, null(), 0, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            rk_check_many_at(e, null(), 1, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert!(last_error_string().contains("`items` is NULL"));
        assert_eq!(
            rk_check_many(null_mut(), ok.as_ptr(), 1, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert_eq!(
            rk_check_many(e, ok.as_ptr(), 1, null_mut(), &mut index),
            rk_status::RK_ERR_NULL_POINTER
        );
        let bad_key = [
            item(p, b"a", 1),
            rk_check_item {
                policy: p,
                key: null(),
                key_len: 3,
                cost: 1,
            },
        ];
        assert_eq!(
            rk_check_many_at(e, bad_key.as_ptr(), 2, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_NULL_KEY
        );
        assert!(
            last_error_string().contains("`items[1].key` is NULL but its `key_len` is 3"),
            "{}",
            last_error_string()
        );
        // The same past the stack batch (17 items: the heap path).
        let mut many = vec![item(p, b"a", 1); 17];
        many[16].key = null();
        assert_eq!(
            rk_check_many_at(e, many.as_ptr(), 17, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_NULL_KEY
        );
        assert!(last_error_string().contains("items[16]"));
        let wrong = [item(p, b"a", 1), item(jobs, b"a", 1)];
        assert_eq!(
            rk_check_many_at(e, wrong.as_ptr(), 2, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_WRONG_POLICY_KIND
        );
        let unknown = [item(99, b"a", 1)];
        assert_eq!(
            rk_check_many_at(e, unknown.as_ptr(), 1, S, d.as_mut_ptr(), &mut index),
            rk_status::RK_ERR_UNKNOWN_POLICY
        );
        assert_eq!(index, 77, "index_out untouched on failure");
        // Nothing was charged by any failed batch; index_out is optional.
        assert_eq!(
            rk_check_many_at(e, ok.as_ptr(), 1, S, d.as_mut_ptr(), null_mut()),
            rk_status::RK_OK
        );
        assert_eq!(d.assume_init().remaining, 9);
    }
    free(e);
}

fn add_with(
    engine: *mut rk_engine,
    name: &CStr,
    spec: &CStr,
    opts: *const rk_policy_options,
) -> Result<u32, rk_status> {
    let mut id = u32::MAX;
    // SAFETY: live engine, NUL-terminated strings, options NULL or a live local, writable out.
    match unsafe { rk_policy_add_with(engine, name.as_ptr(), spec.as_ptr(), opts, &mut id) } {
        rk_status::RK_OK => Ok(id),
        s => Err(s),
    }
}

fn policy_options() -> rk_policy_options {
    let mut o = std::mem::MaybeUninit::uninit();
    // SAFETY: `o` is a writable local; the sized init of its whole size
    // writes every field.
    unsafe {
        rk_policy_options_init_sized(o.as_mut_ptr(), size_of::<rk_policy_options>());
        o.assume_init()
    }
}

#[test]
fn the_first_version_init_writes_24_bytes_and_the_sized_one_what_fits() {
    const SENTINEL: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    // Initialises 128 sentinel bytes with the first-version init (`None`)
    // or the sized one; returns the struct_size and the bytes written.
    let written = |size: Option<usize>| -> (u32, usize) {
        let mut buf = [SENTINEL; 16];
        let p = buf.as_mut_ptr().cast::<rk_policy_options>();
        // SAFETY: `buf` holds 128 writable bytes, 8-aligned: more than any
        // size passed, and more than the 24 bytes of the first version.
        unsafe {
            match size {
                None => rk_policy_options_init(p),
                Some(n) => rk_policy_options_init_sized(p, n),
            }
        }
        let untouched = buf.iter().rev().take_while(|&&w| w == SENTINEL).count();
        ((buf[0] & 0xffff_ffff) as u32, (16 - untouched) * 8)
    };
    assert_eq!(
        written(None),
        (24, 24),
        "what a program compiled against the first header has room for"
    );
    assert_eq!(written(Some(size_of::<rk_policy_options>())), (64, 64));
    assert_eq!(written(Some(63)), (24, 24), "the newest version that fits");
    assert_eq!(
        written(Some(128)),
        (64, 64),
        "a newer caller's extra fields are left alone (struct_size says so)"
    );
    assert_eq!(written(Some(23)).1, 0, "too small for any version");
    // SAFETY: NULL does nothing.
    unsafe { rk_policy_options_init_sized(null_mut(), 64) };
}

#[test]
fn policy_options_of_the_first_version_get_defaults_for_the_new_fields() {
    let e = new_engine(64);
    let mut o = policy_options();
    assert_eq!(o.struct_size, 64);
    assert_eq!(
        (
            o.shadow,
            o.record_keys,
            o.retry_jitter_ns,
            o.penalty_strikes
        ),
        (false, false, 0, 0)
    );
    // Garbage beyond a first-version struct is never read: not even a
    // byte that no `bool` may hold.
    o.struct_size = 24;
    o.penalty_strikes = 1; // a penalty box with a zero window: invalid if read
                           // SAFETY: writing a byte into our own struct; it is never read as a bool.
    unsafe { std::ptr::addr_of_mut!(o.shadow).cast::<u8>().write(0xee) };
    let p = add_with(e, c"old", c"1/second", &o).unwrap();
    assert!(check_at(e, p, b"k", 1, S).unwrap().allowed);
    let d = check_at(e, p, b"k", 1, S).unwrap();
    assert!(!d.allowed && !d.shadow_denied && !d.banned, "{d:?}");

    o.struct_size = 64;
    assert_eq!(
        add_with(e, c"bad bool", c"1/second", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(
        last_error_string().contains("opts->shadow is 238"),
        "{}",
        last_error_string()
    );
    o.shadow = true;
    assert_eq!(
        add_with(e, c"bad penalty", c"1/second", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(
        last_error_string().contains("penalty: window must be at least"),
        "{}",
        last_error_string()
    );
    o.penalty_strikes = 0;
    o.penalty_ban_ns = S;
    assert_eq!(
        add_with(e, c"half penalty", c"1/second", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(last_error_string().contains("penalty_strikes is 0"));
    o.penalty_ban_ns = 0;
    let shadow = add_with(e, c"shadow", c"1/second", &o).unwrap();
    check_at(e, shadow, b"k", 1, S).unwrap();
    let d = check_at(e, shadow, b"k", 1, S).unwrap();
    assert!(
        d.allowed && d.shadow_denied && d.retry_after_ns > 0,
        "{d:?}"
    );
    free(e);
}

#[test]
fn rk_policy_stats_writes_the_first_version_only_and_sized_writes_what_fits() {
    let e = new_engine(64);
    let mut o = policy_options();
    o.shadow = true;
    let p = add_with(e, c"p", c"1/second", &o).unwrap();
    check_at(e, p, b"k", 1, S).unwrap();
    check_at(e, p, b"k", 1, S).unwrap();
    let fresh = rk_stats {
        allowed: u64::MAX,
        denied: u64::MAX,
        evictions: u64::MAX,
        table_full: u64::MAX,
        occupancy: u64::MAX,
        capacity: u64::MAX,
        shadow_denied: u64::MAX,
        banned: u64::MAX,
        bans: u64::MAX,
    };
    let mut s = fresh;
    // SAFETY: live engine; `s` is a writable local rk_stats (whole block).
    unsafe {
        assert_eq!(rk_policy_stats(e, p, &mut s), rk_status::RK_OK);
        assert_eq!((s.allowed, s.denied, s.occupancy), (1, 1, 1));
        assert_eq!(
            (s.shadow_denied, s.banned, s.bans),
            (u64::MAX, u64::MAX, u64::MAX)
        );
        let mut s = fresh;
        assert_eq!(
            rk_policy_stats_sized(e, p, &mut s, size_of::<rk_stats>()),
            rk_status::RK_OK
        );
        assert_eq!((s.denied, s.shadow_denied, s.banned, s.bans), (1, 1, 0, 0));
        let mut s = fresh;
        assert_eq!(
            rk_policy_stats_sized(e, p, &mut s, RK_STATS_V1_SIZE + 12),
            rk_status::RK_OK
        );
        assert_eq!(
            (s.shadow_denied, s.banned),
            (1, u64::MAX),
            "whole fields only"
        );
        let mut s = fresh;
        assert_eq!(
            rk_policy_stats_sized(e, p, &mut s, 1000),
            rk_status::RK_OK,
            "a larger (newer) struct gets what this version has"
        );
        assert_eq!(s.bans, 0);
        let mut s = fresh;
        assert_eq!(
            rk_policy_stats_sized(e, p, &mut s, RK_STATS_V1_SIZE - 1),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert_eq!(s, fresh);
    }
    free(e);
}

#[test]
fn deny_events_carry_the_key_only_when_recorded_and_follow_by_ticket() {
    let e = new_engine(64);
    let mut o = policy_options();
    o.record_keys = true;
    let keyed = add_with(e, c"keyed", c"1/second", &o).unwrap();
    let plain = add(e, c"plain", c"1/second").unwrap();
    let long = [b'x'; 100];
    let mut other = long;
    other[99] = b'y';
    for (p, key, second) in [(keyed, &long[..], &other[..]), (plain, b"ip:1", b"ip:2")] {
        check_at(e, p, key, 1, S).unwrap();
        check_at(e, p, key, 1, S).unwrap();
        // Denied again within a second: counted, but sampled out of the ring.
        check_at(e, p, key, 1, S + S / 10).unwrap();
        check_at(e, p, second, 1, S).unwrap();
        check_at(e, p, second, 1, 2 * S / 10 + S).unwrap();
    }
    let mut events = [std::mem::MaybeUninit::<rk_deny_event>::uninit(); 4];
    let mut n = usize::MAX;
    // SAFETY: live engine; `events` holds 4 writable slots; `n` a writable local (whole block).
    unsafe {
        assert_eq!(
            rk_recent_denials(e, keyed, 0, events[0].as_mut_ptr(), 4, &mut n),
            rk_status::RK_OK
        );
        assert_eq!(n, 2);
        let (a, b) = (events[0].assume_init(), events[1].assume_init());
        assert_eq!((a.ticket, b.ticket), (0, 1));
        assert_eq!((a.time_ns, b.time_ns), (S, S + 2 * S / 10));
        assert!(a.has_key && a.key_len as usize == RK_EVENT_KEY_BYTES);
        assert_eq!(a.key, [b'x'; RK_EVENT_KEY_BYTES]);
        assert_eq!(a.retry_after_ns, S);
        assert_ne!(a.key_hash, 0);
        assert_eq!(
            rk_recent_denials(e, keyed, b.ticket + 1, events[0].as_mut_ptr(), 4, &mut n),
            rk_status::RK_OK
        );
        assert_eq!(n, 0, "nothing new");
        assert_eq!(
            rk_recent_denials(e, plain, 0, events[0].as_mut_ptr(), 1, &mut n),
            rk_status::RK_OK
        );
        assert_eq!(n, 1, "capacity caps the count");
        let a = events[0].assume_init();
        assert!(!a.has_key && a.key_len == 0 && a.key == [0; RK_EVENT_KEY_BYTES]);
        assert_eq!(
            rk_recent_denials(e, plain, 0, null_mut(), 0, &mut n),
            rk_status::RK_OK
        );
        assert_eq!(n, 0);
        n = 99;
        assert_eq!(
            rk_recent_denials(e, plain, 0, null_mut(), 1, &mut n),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert_eq!(
            rk_recent_denials(e, 42, 0, events[0].as_mut_ptr(), 4, &mut n),
            rk_status::RK_ERR_UNKNOWN_POLICY
        );
        assert_eq!(
            rk_recent_denials(e, plain, 0, events[0].as_mut_ptr(), 4, null_mut()),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert_eq!(n, 99);
    }
    free(e);
}

#[test]
fn overrides_scale_a_keys_quota_until_cleared() {
    let e = new_engine(64);
    let p = add(e, c"api", c"10/second").unwrap();
    let jobs = add(e, c"jobs", c"concurrency 1").unwrap();
    let mut f = -1.0;
    // SAFETY: live engine; keys are live slices; `f` a writable local (whole block).
    unsafe {
        assert_eq!(
            rk_override_set(e, p, b"vip".as_ptr(), 3, 2.5),
            rk_status::RK_OK
        );
        assert_eq!(
            rk_override_get(e, p, b"vip".as_ptr(), 3, &mut f),
            rk_status::RK_OK
        );
        assert_eq!(f, 2.5);
        assert_eq!(check_at(e, p, b"vip", 1, S).unwrap().limit, 25);
        assert_eq!(
            rk_override_clear(e, p, b"vip".as_ptr(), 3),
            rk_status::RK_OK
        );
        assert_eq!(
            rk_override_get(e, p, b"vip".as_ptr(), 3, &mut f),
            rk_status::RK_OK
        );
        assert_eq!(f, 0.0);
        assert_eq!(check_at(e, p, b"vip", 1, S).unwrap().limit, 10);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            assert_eq!(
                rk_override_set(e, p, b"vip".as_ptr(), 3, bad),
                rk_status::RK_ERR_INVALID_ARGUMENT,
                "{bad}"
            );
        }
        assert_eq!(
            rk_override_set(e, jobs, b"vip".as_ptr(), 3, 2.0),
            rk_status::RK_ERR_WRONG_POLICY_KIND
        );
        f = -1.0;
        assert_eq!(
            rk_override_get(e, p, null(), 3, &mut f),
            rk_status::RK_ERR_NULL_KEY
        );
        assert_eq!(
            rk_override_get(e, p, b"vip".as_ptr(), 3, null_mut()),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert_eq!(
            rk_override_get(e, 42, b"vip".as_ptr(), 3, &mut f),
            rk_status::RK_ERR_UNKNOWN_POLICY
        );
        assert_eq!(f, -1.0);
    }
    free(e);
}

fn redis_options() -> rk_redis_options {
    let mut o = std::mem::MaybeUninit::<rk_redis_options>::uninit();
    // SAFETY: `o` is a writable local of the full size; init fills every field.
    unsafe {
        rk_redis_options_init_sized(o.as_mut_ptr(), size_of::<rk_redis_options>());
        o.assume_init()
    }
}

#[cfg(feature = "redis")]
fn open_redis(url: &CStr, o: *const rk_redis_options) -> Result<*mut rk_engine, rk_status> {
    let mut e = null_mut();
    // SAFETY: NUL-terminated url; `o` is NULL or a live options struct; writable out.
    match unsafe { rk_engine_open_redis(url.as_ptr(), o, &mut e) } {
        rk_status::RK_OK => Ok(e),
        s => {
            assert!(e.is_null(), "out untouched on failure");
            Err(s)
        }
    }
}

#[test]
fn redis_options_init_fills_the_defaults_of_what_fits() {
    let o = redis_options();
    assert_eq!(o.struct_size as usize, size_of::<rk_redis_options>());
    assert_eq!(o.on_failure, rk_on_failure::RK_ON_FAILURE_LOCAL as u32);
    assert!(o.prefix.is_null() && o.fallback_path.is_null() && o.engine_options.is_null());
    assert_eq!((o.connect_timeout_ms, o.timeout_ms), (200, 100));
    assert_eq!((o.retry_min_ms, o.retry_max_ms), (50, 2000));
    assert_eq!((o.pool_size, o.deny_cache), (16, 4096));
    assert!(o.hash_secret.is_null() && o.hash_secret_len == 0 && o.log_switches);
    assert!(o.tls_ca_file.is_null() && !o.cluster);
    let mut buf = [0x5a_u8; 128];
    // SAFETY: `buf` holds 128 writable bytes; too small a size writes nothing.
    unsafe {
        rk_redis_options_init_sized(buf.as_mut_ptr().cast(), size_of::<rk_redis_options>() - 1);
        rk_redis_options_init_sized(null_mut(), 88);
    }
    assert!(buf.iter().all(|&b| b == 0x5a));
}

#[test]
#[cfg(feature = "redis")]
fn redis_options_are_checked_and_read_only_within_struct_size() {
    let mut o = redis_options();
    o.struct_size = 4;
    assert_eq!(
        open_redis(c"redis://127.0.0.1:1/", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(last_error_string().contains("struct_size is 4"));
    // Only `on_failure` is known: the zero timeout beyond is never read.
    o.struct_size = 8;
    o.on_failure = rk_on_failure::RK_ON_FAILURE_OPEN as u32;
    o.timeout_ms = 0;
    o.log_switches = false;
    let e = open_redis(c"redis://127.0.0.1:1/", &o).unwrap();
    free(e);
    o.struct_size = size_of::<rk_redis_options>() as u32;
    assert_eq!(
        open_redis(c"redis://127.0.0.1:1/", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(last_error_string().contains("timeouts must be positive"));
    o.timeout_ms = 100;
    o.on_failure = 3;
    assert_eq!(
        open_redis(c"redis://127.0.0.1:1/", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(last_error_string().contains("opts->on_failure is 3"));
    o.on_failure = 0;
    o.hash_secret_len = 16;
    assert_eq!(
        open_redis(c"redis://127.0.0.1:1/", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(last_error_string().contains("hash_secret is NULL"));
    o.hash_secret_len = 0;
    o.prefix = c"{app}".as_ptr();
    assert_eq!(
        open_redis(c"redis://127.0.0.1:1/", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    o.prefix = null();
    // SAFETY: a byte that no `bool` may hold, in our own struct; read as u8 only.
    unsafe { std::ptr::addr_of_mut!(o.log_switches).cast::<u8>().write(7) };
    assert_eq!(
        open_redis(c"redis://127.0.0.1:1/", &o),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(last_error_string().contains("opts->log_switches is 7"));
}

#[test]
#[cfg(feature = "redis")]
fn a_bad_url_is_an_invalid_argument_and_an_unreachable_server_starts_down() {
    assert_eq!(
        open_redis(c"http://127.0.0.1:6379/", null()),
        Err(rk_status::RK_ERR_INVALID_ARGUMENT)
    );
    assert!(
        last_error_string().contains("rk_engine_open_redis: invalid argument: bad Redis URL"),
        "{}",
        last_error_string()
    );
    let mut e = null_mut();
    // SAFETY: NULL url and out are refused before anything is read or written.
    unsafe {
        assert_eq!(
            rk_engine_open_redis(null(), null(), &mut e),
            rk_status::RK_ERR_NULL_POINTER
        );
        assert_eq!(
            rk_engine_open_redis(c"redis://127.0.0.1:1/".as_ptr(), null(), null_mut()),
            rk_status::RK_ERR_NULL_POINTER
        );
    }
    // Nothing listens on port 1: the engine opens on its failure policy
    // (local tables), and says so in its stats.
    let mut o = redis_options();
    o.log_switches = false;
    let e = open_redis(c"redis://127.0.0.1:1/", &o).unwrap();
    let p = add(e, c"p", c"2/minute").unwrap();
    let allowed: Vec<bool> = (0..3)
        .map(|_| check_at(e, p, b"k", 1, S).unwrap().allowed)
        .collect();
    assert_eq!(allowed, [true, true, false]);
    let mut s = std::mem::MaybeUninit::<rk_redis_stats>::uninit();
    // SAFETY: live engine, writable local of the full size.
    let s = unsafe {
        assert_eq!(
            rk_engine_redis_stats_sized(e, s.as_mut_ptr(), size_of::<rk_redis_stats>()),
            rk_status::RK_OK
        );
        s.assume_init()
    };
    assert!(!s.up && s.failovers == 1 && s.round_trips == 0, "{s:?}");
    assert!(s.fallback_decisions >= 1, "{s:?}");
    free(e);
}

#[test]
fn redis_stats_of_a_local_engine_is_the_wrong_engine_kind() {
    let e = new_engine(16);
    let mut s = std::mem::MaybeUninit::<rk_redis_stats>::uninit();
    // SAFETY: live engine, writable local of the full size (or a size
    // that is refused before anything is written).
    unsafe {
        assert_eq!(
            rk_engine_redis_stats_sized(e, s.as_mut_ptr(), size_of::<rk_redis_stats>()),
            rk_status::RK_ERR_WRONG_ENGINE_KIND
        );
        assert!(last_error_string().contains("not Redis-backed"));
        assert_eq!(
            rk_engine_redis_stats_sized(e, s.as_mut_ptr(), RK_REDIS_STATS_V1_SIZE - 1),
            rk_status::RK_ERR_INVALID_ARGUMENT
        );
        assert_eq!(
            rk_engine_redis_stats_sized(e, null_mut(), size_of::<rk_redis_stats>()),
            rk_status::RK_ERR_NULL_POINTER
        );
    }
    free(e);
}
