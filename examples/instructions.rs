//! Instructions per check, counted by valgrind (deterministic, unlike
//! timings on a shared machine): run N and 3N checks of one path and divide
//! the difference of the two totals by 2N.
//!
//! ```sh
//! cargo build --release --example instructions
//! ir() { valgrind --tool=callgrind --callgrind-out-file=/dev/null "$@" 2>&1 | grep -o 'Collected : [0-9]*' | awk '{print $3}'; }
//! bin=target/release/examples/instructions
//! echo $(( ($(ir $bin hot 300000) - $(ir $bin hot 100000)) / 200000 ))
//! ```
//!
//! Paths: `hot` (one key, `check_at`), `clock` (one key, `check`), `fw`
//! (fixed window), `log` (sliding log), `two` (gcra + fixed window),
//! `keys` (100,000 keys, each expired by its next check), `live` (100,000
//! keys that stay live: a limit of 10^6 an hour; in both, every key is
//! claimed before the count starts, so only checks of tracked keys are
//! counted), `many` (`check_many_at` of two items), `deny`
//! (one key, every check denied), `mixed` (one key, one check in five allowed),
//! `c` (the `hot` case through the C ABI's `rk_check_at`), `rust-abi` (the
//! same through Rust's `try_check_at`, which validates its arguments as
//! `rk_check_at` does, with the key's length unknown to the compiler as it
//! is to a C caller, and its whole decision computed, as `rk_check_at`
//! writes every field of it), `flood` (a new
//! key every check, each live for an hour, into a table of
//! 2^14 slots: past the first 16,384 checks every claim finds its two
//! buckets full of live keys, looks for a key to move, and evicts; a lone
//! GCRA limit, so the packed table), `flood-fw` (the same on a fixed
//! window: the slots table).
//!
//! Under valgrind glibc cannot register its restartable-sequence area
//! (valgrind refuses `rseq(2)`), so every count is added through the
//! atomic shards (`src/rseq.rs`): these figures include a `lock xadd` that
//! a native run on x86_64 with glibc 2.35+ replaces by a per-CPU `add`.
//!
//! `gov-hot`, `gov-deny`, `gov-mixed` and `gov-keys` run the same cases
//! through governor's keyed limiter (`DefaultKeyedRateLimiter`'s DashMap
//! store, same quotas), on its fake clock advanced by the same steps.
use ratekeeper::{Engine, EngineOptions};

/// Keys of the keyed cases (`keys`, `live`, `gov-keys`).
const KEYS: u64 = 100_000;

/// The `i`-th key of a keyed case: the keys in a scattered order.
fn scatter(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYS
}

fn governor(what: &str, n: u64) -> u64 {
    use governor::clock::FakeRelativeClock;
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    let per_second = match what {
        "gov-deny" => 1,
        "gov-mixed" => 1_000_000,
        _ => 1_000_000_000,
    };
    let clock = FakeRelativeClock::default();
    let limiter = RateLimiter::dashmap_with_clock(
        Quota::per_second(NonZeroU32::new(per_second).unwrap()),
        clock.clone(),
    );
    if what == "gov-keys" {
        // Every key tracked before the count starts, as for `keys`.
        for k in 0..KEYS {
            let _ = limiter.check_key(&k);
        }
    }
    let step = std::time::Duration::from_nanos(if what == "gov-mixed" { 200 } else { 1 });
    let mut allowed = 0;
    for i in 0..n {
        clock.advance(step);
        let key = if what == "gov-keys" { scatter(i) } else { 7 };
        allowed += limiter.check_key(&key).is_ok() as u64;
    }
    allowed
}

/// The `hot` case through the C ABI: `rk_check_at` on an engine and policy
/// made by `rk_engine_new` and `rk_policy_add`, as a C program does.
fn c_abi(n: u64) -> u64 {
    use ratekeeper::ffi::{check, engine, policy, status::rk_status};
    let mut e: *mut engine::rk_engine = std::ptr::null_mut();
    let mut p = 0u32;
    // SAFETY: out-pointers are live locals; the strings are NUL-terminated.
    unsafe {
        assert_eq!(
            engine::rk_engine_new(std::ptr::null(), &mut e),
            rk_status::RK_OK
        );
        assert_eq!(
            policy::rk_policy_add(e, c"p".as_ptr(), c"1000000000/second".as_ptr(), &mut p),
            rk_status::RK_OK
        );
    }
    let key = 7u64.to_le_bytes();
    let mut out = std::mem::MaybeUninit::<check::rk_decision>::uninit();
    let (mut allowed, mut now) = (0, 1u64 << 40);
    for _ in 0..n {
        now += 1;
        // SAFETY: a live engine, the key slice, a writable out-parameter;
        // the decision is read only after RK_OK wrote it.
        unsafe {
            let st = check::rk_check_at(e, p, key.as_ptr(), key.len(), 1, now, out.as_mut_ptr());
            assert_eq!(st, rk_status::RK_OK);
            allowed += out.assume_init_ref().allowed as u64;
        }
    }
    // SAFETY: not used after this.
    unsafe { engine::rk_engine_free(e) };
    allowed
}

/// The Rust side of the C ABI ÷ Rust ratio: the `hot` case through
/// `try_check_at`, which checks the policy id and kind as `rk_check_at`
/// does, with the key's length hidden from the compiler as it is from a C
/// caller (SipHash's tail is then not specialised for 8 bytes). Not
/// `check_at`: a second call site of it would change how it inlines into
/// `main`'s loop, and every other path with it.
fn rust_abi(n: u64) -> u64 {
    let e = Engine::new(EngineOptions {
        capacity: 1 << 17,
        ..Default::default()
    })
    .unwrap();
    let p = e.add_policy("p", "1000000000/second").unwrap();
    let key = 7u64.to_le_bytes();
    let (mut allowed, mut now) = (0, 1u64 << 40);
    for _ in 0..n {
        now += 1;
        // Every field of the decision computed, as `rk_check_at` writes
        // them all to `*out` (read here, only `allowed` would be).
        let d = std::hint::black_box(e.try_check_at(p, std::hint::black_box(&key[..]), 1, now));
        allowed += d.unwrap().allowed as u64;
    }
    allowed
}

/// Claims every key of a keyed case. Out of line, through `check`: a
/// second call site of `check_at` in `main` would change how it inlines
/// there, and the count of every path with it.
#[inline(never)]
fn claim_all(e: &Engine, p: ratekeeper::PolicyId, now: u64) {
    for k in 0..KEYS {
        let d = e.try_check_at(p, std::hint::black_box(&k.to_le_bytes()[..]), 1, now);
        assert!(d.unwrap().allowed);
    }
}

fn main() {
    let what = std::env::args().nth(1).unwrap();
    let n: u64 = std::env::args().nth(2).unwrap().parse().unwrap();
    if what == "c" {
        println!("{}", c_abi(n));
        return;
    }
    if what == "rust-abi" {
        println!("{}", rust_abi(n));
        return;
    }
    if what.starts_with("gov-") {
        println!("{}", governor(&what, n));
        return;
    }
    let e = Engine::new(EngineOptions {
        capacity: if what.starts_with("flood") {
            1 << 14
        } else {
            1 << 17
        },
        ..Default::default()
    })
    .unwrap();
    let spec = match what.as_str() {
        "fw" => "fixed_window 4000000000/second",
        "log" => "sliding_log 1000/second",
        "two" => "1000000000/second; fixed_window 4000000000/hour",
        "deny" => "1/second",
        "flood" => "1/hour",
        "flood-fw" => "fixed_window 1/hour",
        "mixed" => "1000000/second",
        // Every key stays live (its TAT is ahead of `now`) and allowed.
        "live" => "1000000/hour",
        _ => "1000000000/second",
    };
    let p = e.add_policy("p", spec).unwrap();
    let q = e.add_policy("q", "1000000000/second").unwrap();
    let mut allowed = 0u64;
    let mut now = 1u64 << 40;
    // Keyed cases first claim every key, in both runs, so that the
    // difference counts checks of tracked keys only.
    let keyed = what == "keys" || what == "live";
    if keyed {
        claim_all(&e, p, now);
    }
    for i in 0..n {
        // `mixed`: a check every 200 ns against 10^6/second allows one in five.
        now += if what == "mixed" { 200 } else { 1 };
        let key = if keyed {
            scatter(i).to_le_bytes()
        } else if what.starts_with("flood") {
            i.to_le_bytes()
        } else {
            7u64.to_le_bytes()
        };
        if what == "many" {
            let items = [
                ratekeeper::CheckItem {
                    policy: p,
                    key: &key,
                    cost: 1,
                },
                ratekeeper::CheckItem {
                    policy: q,
                    key: b"route",
                    cost: 1,
                },
            ];
            allowed += e.check_many_at(&items, now).unwrap().0.allowed as u64;
            continue;
        }
        let d = if what == "clock" {
            e.check(p, &key, 1)
        } else {
            e.check_at(p, &key, 1, now)
        };
        allowed += d.allowed as u64;
    }
    println!("{allowed}");
}
