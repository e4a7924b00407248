//! `check` never allocates: a counting global allocator sees zero
//! allocations across a million checks per policy over 100,000 keys after
//! warm-up — every algorithm, a composite policy, denials, refunds, peeks,
//! batches (`check_many`), abuse control (penalty-box strikes and bans,
//! retry jitter, overridden keys, the deny-event ring), shadow mode and
//! evictions.
//!
//! Time is driven explicitly (a manual clock for the calls that read the
//! engine clock, the same instants for the `*_at` calls), never by the
//! machine: each key gets its ten checks at one instant, so what is
//! allowed, denied, banned, recorded and evicted is known exactly and
//! asserted exactly, however slow the machine is.

use ratekeeper::{
    CheckItem, Clock, Engine, EngineOptions, ManualClock, Penalty, PolicyId, PolicyOptions, Stats,
};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the thread whose allocations are counted: the test's own.
    /// Other threads (libtest's main thread prints "has been running for
    /// over 60 seconds" on a slow machine) do not count.
    static COUNTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Counts one allocation if this thread's are counted.
fn count() {
    // `try_with`: the allocator may run while this thread's locals are torn down.
    if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
        // Relaxed: a count read after the measured loop on the same thread.
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const S: u64 = 1_000_000_000;
/// Keys of the measured pass.
const KEYS: u64 = 100_000;
/// Checks per key (all at one instant).
const CHECKS: usize = 10;
/// Keys of the warm-up pass (it includes overridden keys).
const WARM_KEYS: u64 = 2_000;
/// Warm-up and measured pass: three hours apart, so that every state of
/// the warm-up (the longest: a 1000/hour GCRA charge, a 50/minute window,
/// an 8 s ban's forgiveness) has expired and every key starts fresh.
const T_WARM: u64 = 1_000 * S;
const T_MEASURED: u64 = T_WARM + 3 * 3600 * S;
/// Keys with a quota override (factor 3): every 100th.
fn overridden(i: u64) -> bool {
    i % 100 == 0
}
/// Keys whose last charge is refunded and then checked once more.
fn refunded(i: u64) -> bool {
    i % 10 == 5
}

/// Writes `key:<i>` into `buf` without allocating; returns its length.
fn key(buf: &mut [u8; 24], mut i: u64) -> usize {
    buf[..4].copy_from_slice(b"key:");
    let mut digits = [0u8; 20];
    let mut n = 0;
    loop {
        digits[n] = b'0' + (i % 10) as u8;
        n += 1;
        i /= 10;
        if i == 0 {
            break;
        }
    }
    for k in 0..n {
        buf[4 + k] = digits[n - 1 - k];
    }
    4 + n
}

/// The policies under test.
struct Policies {
    /// Plain rate limits: (policy, quota at one instant).
    plain: [(PolicyId, usize); 5],
    /// `fixed_window 4/second` on a table of 1,024 keys: every key past
    /// the eighth of its bucket evicts a live one.
    evict: PolicyId,
    abuse: PolicyId,
    shadow: PolicyId,
    batch_a: PolicyId,
    batch_b: PolicyId,
}

/// Allowed decisions by position of the check within its key's ten (and
/// one more slot for the check after a refund), per policy.
#[derive(Default)]
struct Tally {
    plain: [[u64; CHECKS + 1]; 5],
    evict: [u64; CHECKS],
    abuse: [u64; CHECKS],
    /// Shadow decisions: (returned allowed, flagged shadow_denied).
    shadow: [(u64, u64); CHECKS],
    batch: [u64; CHECKS],
    /// Batch denials bound by item 0.
    batch_binding_0: u64,
    /// Peeks after a key's checks that would allow one more.
    peek_allowed: u64,
}

/// One pass: every key of `keys` gets its ten checks at `t0 + i µs`, half
/// through the engine clock (set to that time), half with the explicit time.
fn pass(
    e: &Engine,
    clock: &ManualClock,
    p: &Policies,
    keys: std::ops::Range<u64>,
    t0: u64,
) -> Tally {
    let mut tally = Tally::default();
    let mut buf = [0u8; 24];
    for i in keys {
        let n = key(&mut buf, i);
        let k = &buf[..n];
        let t = t0 + i * 1_000;
        clock.set_ns(t);
        for (pi, &(id, _)) in p.plain.iter().enumerate() {
            for c in 0..CHECKS {
                let d = if c % 2 == 0 {
                    e.check(id, k, 1)
                } else {
                    e.check_at(id, k, 1, t)
                };
                tally.plain[pi][c] += d.allowed as u64;
            }
            let peek = if i % 2 == 0 {
                e.peek(id, k, 1)
            } else {
                e.peek_at(id, k, 1, t)
            };
            tally.peek_allowed += peek.unwrap().allowed as u64;
            if refunded(i) {
                let back = if i % 20 == 5 {
                    e.refund(id, k, 1)
                } else {
                    e.refund_at(id, k, 1, t)
                };
                assert!(back.unwrap());
                tally.plain[pi][CHECKS] += e.check_at(id, k, 1, t).allowed as u64;
            }
        }
        for c in 0..CHECKS {
            tally.evict[c] += e.check_at(p.evict, k, 1, t).allowed as u64;
            let d = if c % 2 == 0 {
                e.check(p.abuse, k, 1)
            } else {
                e.check_at(p.abuse, k, 1, t)
            };
            tally.abuse[c] += d.allowed as u64;
            let d = e.check_at(p.shadow, k, 1, t);
            tally.shadow[c].0 += d.allowed as u64;
            tally.shadow[c].1 += d.shadow_denied as u64;
            let items = [
                CheckItem {
                    policy: p.batch_a,
                    key: k,
                    cost: 1,
                },
                CheckItem {
                    policy: p.batch_b,
                    key: k,
                    cost: 1,
                },
            ];
            let (d, binding) = if c % 2 == 0 {
                e.check_many(&items).unwrap()
            } else {
                e.check_many_at(&items, t).unwrap()
            };
            tally.batch[c] += d.allowed as u64;
            tally.batch_binding_0 += (!d.allowed && binding == 0) as u64;
        }
    }
    tally
}

/// `after - before` for the counters.
fn delta(after: Stats, before: Stats) -> [u64; 6] {
    [
        after.allowed - before.allowed,
        after.denied - before.denied,
        after.evictions - before.evictions,
        after.shadow_denied - before.shadow_denied,
        after.bans - before.bans,
        after.banned - before.banned,
    ]
}

/// `[n; q] ++ [0; CHECKS - q]`.
fn first(q: usize, n: u64) -> [u64; CHECKS] {
    std::array::from_fn(|c| if c < q { n } else { 0 })
}

#[test]
fn a_million_checks_per_policy_over_100k_keys_allocate_nothing() {
    COUNTED.with(|c| c.set(true));
    let clock = ManualClock::new(T_WARM);
    let e = Engine::new(EngineOptions {
        capacity: 131_072,
        clock: Clock::Manual(clock.clone()),
        ..Default::default()
    })
    .unwrap();
    let plain = [
        ("4/second", 4),
        ("fixed_window 4/second", 4),
        ("sliding_window 4/second", 4),
        ("sliding_log 4/second", 4),
        ("6/second;1000/hour", 6),
    ]
    .map(|(spec, q)| (e.add_policy(spec, spec).unwrap(), q));
    let evict = e
        .add_policy_with(
            "evict",
            "fixed_window 4/second",
            PolicyOptions {
                capacity: Some(1024),
                ..Default::default()
            },
        )
        .unwrap();
    // Abuse control on the hot path too: denials that strike and ban, retry
    // jitter, keys with overrides, the deny-event ring with keys recorded.
    let abuse = e
        .add_policy_with(
            "abuse",
            "2/second; fixed_window 50/minute",
            PolicyOptions {
                penalty: Some(Penalty {
                    strikes: 3,
                    window_ns: 10 * S,
                    ban_ns: S,
                    max_ban_ns: 8 * S,
                }),
                retry_jitter_ns: 1_000_000,
                record_keys: true,
                ..Default::default()
            },
        )
        .unwrap();
    let shadow = e
        .add_policy_with(
            "shadow",
            "1/second",
            PolicyOptions {
                shadow: true,
                ..Default::default()
            },
        )
        .unwrap();
    let batch_a = e.add_policy("batch_a", "3/second").unwrap();
    let batch_b = e.add_policy("batch_b", "fixed_window 5/second").unwrap();
    let mut buf = [0u8; 24];
    // 1,000 keys with overrides (the override table holds 1,024).
    for i in (0..KEYS).filter(|&i| overridden(i)) {
        let n = key(&mut buf, i);
        e.set_override(abuse, &buf[..n], 3.0).unwrap();
    }
    let p = Policies {
        plain: [plain[0], plain[1], plain[2], plain[3], plain[4]],
        evict,
        abuse,
        shadow,
        batch_a,
        batch_b,
    };
    let all = [
        plain[0].0, plain[1].0, plain[2].0, plain[3].0, plain[4].0, evict, abuse, shadow, batch_a,
        batch_b,
    ];

    // Warm-up: every path once (thread-locals, first page faults).
    let warm = pass(&e, &clock, &p, 0..WARM_KEYS, T_WARM);
    assert_eq!(warm.abuse, {
        let o = WARM_KEYS / 100;
        let mut a = first(2, WARM_KEYS);
        a[2..6].iter_mut().for_each(|n| *n = o);
        a
    });
    let before: Vec<Stats> = all.iter().map(|&id| e.stats(id).unwrap()).collect();
    let ticket_before = e.recent_denials(abuse, 0).unwrap().last().unwrap().ticket + 1;

    // The counter does count (the statistics above were collected in a Vec).
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    assert!(allocations_before > 0);
    let t = pass(&e, &clock, &p, 0..KEYS, T_MEASURED);
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    assert_eq!(allocations, 0, "allocations on the hot path");

    let d: Vec<[u64; 6]> = all
        .iter()
        .zip(&before)
        .map(|(&id, b)| delta(e.stats(id).unwrap(), *b))
        .collect();
    let refunds = KEYS / 10;
    // Plain limits: the first `q` checks of every key pass, the rest are
    // denied; a refund makes room for exactly one more.
    for (pi, &(id, q)) in p.plain.iter().enumerate() {
        let name = e.policy_name(id).unwrap();
        let mut want = [0; CHECKS + 1];
        want[..CHECKS].copy_from_slice(&first(q, KEYS));
        want[CHECKS] = refunds;
        assert_eq!(t.plain[pi], want, "{name}");
        let (allowed, denied) = (q as u64 * KEYS + refunds, (CHECKS - q) as u64 * KEYS);
        assert_eq!(d[pi][..2], [allowed, denied], "{name}");
    }
    // Every peek came after a key's quota was spent.
    assert_eq!(t.peek_allowed, 0);
    // Eviction: 128 buckets of 8 slots; once a bucket holds 8 live keys,
    // every further key evicts one (a bucket gets ~781 of the 100,000 keys;
    // the warm-up's entries have expired and are reclaimed, not evicted).
    assert_eq!(t.evict, first(4, KEYS));
    assert_eq!(
        d[5],
        [4 * KEYS, 6 * KEYS, KEYS - 1024, 0, 0, 0],
        "evicting policy"
    );
    // Abuse: a plain key passes 2 (its burst), its next 3 denials are
    // strikes, the third of which bans it, and its last 5 checks are banned.
    // An overridden key (factor 3: 6/second) passes 6, strikes 3 times (the
    // third bans) and is banned once more.
    let o = KEYS / 100;
    let plain_keys = KEYS - o;
    let mut want = first(2, KEYS);
    want[2..6].iter_mut().for_each(|n| *n = o);
    assert_eq!(t.abuse, want);
    let abuse_denied = plain_keys * 8 + o * 4;
    // (Evictions of this 131,072-key table depend on its random hash seed.)
    let [allowed, denied, _, shadow_denied, bans, banned] = d[6];
    assert_eq!(
        [allowed, denied, shadow_denied, bans, banned],
        [
            plain_keys * 2 + o * 6,
            abuse_denied,
            0,
            KEYS,
            plain_keys * 6 + o * 2
        ],
        "abuse"
    );
    // Every denying key reached the deny-event ring twice, with its key:
    // its first denial (its denials all fall within one second, so the rest
    // are sampled out; the counters above still count each one) and the
    // denial that started its ban (always written).
    let events = e.recent_denials(abuse, ticket_before).unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.ticket + 1 - ticket_before, 2 * KEYS);
    assert_eq!(last.key.as_deref(), Some(&b"key:99999"[..]));
    assert_eq!(last.time_ns, T_MEASURED + (KEYS - 1) * 1_000);
    assert!(last.banned && !last.shadow);
    // Jitter: a ban's retry-after is its remaining time plus up to 1 ms.
    assert!(
        (S..=S + 1_000_000).contains(&last.retry_after_ns),
        "{last:?}"
    );
    // Shadow: every request passes; all but the first would have been denied.
    assert_eq!(
        t.shadow,
        std::array::from_fn(|c| (KEYS, if c == 0 { 0 } else { KEYS }))
    );
    let [allowed, denied, _, shadow_denied, ..] = d[7];
    assert_eq!(
        [allowed, denied, shadow_denied],
        [KEYS, 9 * KEYS, 9 * KEYS],
        "shadow"
    );
    // Batches: 3 pass (batch_a's quota), the rest are denied by item 0 and
    // charge nothing to batch_b.
    assert_eq!(t.batch, first(3, KEYS));
    assert_eq!(t.batch_binding_0, 7 * KEYS);
    assert_eq!(d[8][..2], [3 * KEYS, 7 * KEYS], "batch_a");
    assert_eq!(d[9][..2], [3 * KEYS, 0], "batch_b");
}
