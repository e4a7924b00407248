use super::*;
use crate::engine::layout_for;
use crate::policy::parse;

const S: u64 = 1_000_000_000;

fn table(spec: &str, buckets: usize) -> Table {
    let layout = layout_for(&parse(spec).unwrap(), None).unwrap();
    let mem = Memory::heap(Table::units_needed(&layout, buckets)).unwrap();
    Table::new(layout, WhenFull::Evict, buckets, mem, 0)
}

fn verdict(o: Outcome) -> Verdict {
    match o {
        Outcome::Decided { verdict, .. } => verdict,
        o => panic!("{o:?}"),
    }
}

#[test]
fn word_and_intent_fields_round_trip_through_their_bit_layout() {
    let p = Payload {
        a: 0xdead_beef,
        b: 0x0123_4567_89ab_cdef,
    };
    let w = word(0x8000_0001, p);
    assert_eq!((tag(w), payload(w)), (0x8000_0001, p));
    let e = intent(u32::MAX, OP_REFUND, 15, algo::MAX_COST, u64::MAX);
    assert_eq!(seq(e), u32::MAX);
    assert_eq!(intent_op(e), OP_REFUND);
    assert_eq!(intent_slot(e), 15);
    assert_eq!(intent_cost(e), algo::MAX_COST);
    assert_eq!(intent_arg(e), u64::MAX);
    assert_ne!(e & PENDING, 0);
}

/// Commits a transaction on bucket 0 the way `transact` does, but without
/// applying it: a writer that dies right after its commit point.
fn commit_only(t: &Table, op: u8, slot: usize, cost: u64, arg: u64) -> u128 {
    let b = t.bucket(0);
    let snap = t.snapshot(b);
    let s1 = snap.seq.wrapping_add(1);
    let idx = (s1 & 1) as usize;
    let expected = if idx == 0 { snap.e0 } else { snap.e1 };
    let e = intent(s1, op, slot, cost, arg);
    b[idx].compare_exchange(expected, e).unwrap();
    e
}

/// A writer that dies right after its commit point (the intent CAS) leaves
/// a pending transaction; the next operation on the bucket completes it.
#[test]
fn a_transaction_abandoned_after_its_commit_is_completed_by_the_next_caller() {
    let t = table("sliding_log 3/minute; 10/hour", 1);
    let h = 42;
    assert!(verdict(t.check(h, 1, S, true)).allowed);
    let j = t.find(t.bucket(0), h).unwrap();
    // Commit a charge of 1 at 2 s, then "die" before writing any word.
    commit_only(&t, OP_CHARGE, j, 1, 2 * S);
    // The next caller helps: two entries are recorded, so one more fits.
    let v = verdict(t.check(h, 1, 3 * S, true));
    assert!(v.allowed);
    assert_eq!(v.remaining, 0);
    assert!(!verdict(t.check(h, 1, 3 * S, true)).allowed);
}

/// A writer that dies halfway through writing its words is completed too,
/// and the words it already wrote are not written twice.
#[test]
fn a_transaction_abandoned_halfway_is_completed_exactly_once() {
    let t = table("fixed_window 5/minute; fixed_window 7/minute", 1);
    let h = 9;
    assert!(verdict(t.check(h, 1, S, true)).allowed);
    let b = t.bucket(0);
    let j = t.find(b, h).unwrap();
    let e = commit_only(&t, OP_CHARGE, j, 2, S);
    // Write only the first limit's word, as the dying writer would have.
    let words = t.slot_words(b, j);
    let l0 = t.layout.limits[0];
    Table::write(b, &words[0], e, |p| {
        algo::fixed_window::charge(&l0, p, 2, S)
    })
    .unwrap();
    // Completion writes the second word only; the first keeps its 3.
    let v0 = verdict(t.check(h, 1, S, false));
    assert_eq!(v0.remaining, 5 - 3 - 1, "limit 0 charged once, not twice");
    let l1_remaining = 7 - 3 - 1;
    assert!(v0.remaining < l1_remaining);
    assert_eq!(payload(words[1].load()).a, 3, "limit 1 completed");
}

#[test]
fn a_stale_helper_never_rewrites_a_word_of_a_completed_transaction() {
    let t = table("3/second; fixed_window 9/minute", 1);
    let h = 5;
    assert!(verdict(t.check(h, 1, S, true)).allowed);
    let b = t.bucket(0);
    // The intent of the transaction that just completed.
    let snap = t.snapshot(b);
    let done = if seq(snap.e0) == snap.seq {
        snap.e0
    } else {
        snap.e1
    };
    let stale = done | PENDING;
    // A helper that read the intent while it was pending and wakes up now.
    let before: Vec<u128> = t
        .slot_words(b, t.find(b, h).unwrap())
        .iter()
        .map(|w| w.load())
        .collect();
    t.apply(b, stale);
    let after: Vec<u128> = t
        .slot_words(b, t.find(b, h).unwrap())
        .iter()
        .map(|w| w.load())
        .collect();
    assert_eq!(before, after);
}

#[test]
fn capacity_rounds_up_to_whole_power_of_two_buckets() {
    assert_eq!(Table::buckets_for(1), 1);
    assert_eq!(Table::buckets_for(8), 1);
    assert_eq!(Table::buckets_for(9), 2);
    assert_eq!(Table::buckets_for(65_536), 8192);
    let t = table("1/second", Table::buckets_for(100));
    assert_eq!(t.capacity(), 128);
    assert_eq!(t.bytes(), 16 * (2 + 8 + 8) * 16);
}
