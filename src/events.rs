//! A bounded, lock-free ring of recent denials per policy: time, key hash,
//! retry-after, the binding limit, and — only when the policy opts in, since
//! keys can be personal data — up to 80 bytes of the key.
//!
//! Writers take a ticket with one `fetch_add` and write entry
//! `ticket % capacity` as a seqlock: sequence `2·ticket + 1` while writing,
//! `2·ticket + 2` when done, plus a checksum over the fields. A writer that
//! dies mid-entry leaves an odd sequence (the entry is skipped until it is
//! overwritten); two writers that meet on one entry after the ring wrapped
//! leave a mismatching checksum (skipped too). Readers never block writers
//! and never see a torn event.
//!
//! Entry layout (128 bytes, 16 `u64` words):
//!
//! | word | field                                                        |
//! |------|--------------------------------------------------------------|
//! | 0    | sequence                                                     |
//! | 1    | time, ns                                                     |
//! | 2    | key hash                                                     |
//! | 3    | retry-after, ns                                              |
//! | 4    | info: key length (bits 0..8), limit index (8..16), banned (16), shadow (17) |
//! | 5    | checksum of words 1..=4 and 6..16 and the ticket             |
//! | 6..16| key bytes (0..80)                                            |

#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicU64, Ordering};

/// Entries in each policy's ring.
pub const RING_ENTRIES: usize = 512;
/// A key's denials less than this long after its last event are not
/// written to the ring (see "Sampling" above; the sampler counts in ticks
/// of 2^20 ns, so "this long" is exact to about 2 ms): one event per key
/// per second.
pub const DENY_SAMPLE_NS: u64 = 1_000_000_000;
/// Sampler words of each ring (a power of two). Fewer under loom, so that
/// two keys share one.
#[cfg(not(loom))]
pub(crate) const SAMPLER_SLOTS: usize = 1024;
#[cfg(loom)]
pub(crate) const SAMPLER_SLOTS: usize = 1;
/// Key bytes an event keeps.
pub const EVENT_KEY_BYTES: usize = (WORDS - 6) * 8;

/// Words of an entry (fewer under loom, to keep the model small).
#[cfg(not(loom))]
const WORDS: usize = 16;
#[cfg(loom)]
const WORDS: usize = 8;

/// One ring entry.
#[repr(C, align(128))]
pub(crate) struct Entry {
    w: [AtomicU64; WORDS],
}

/// The ring's head: the next ticket.
#[repr(C, align(128))]
pub(crate) struct RingHead {
    next: AtomicU64,
}

/// Units (16 bytes) a ring of `RING_ENTRIES` takes: head, entries, then
/// `SAMPLER_SLOTS` sampler words.
pub(crate) const RING_UNITS: usize = (128 + RING_ENTRIES * 128 + SAMPLER_SLOTS * 8) / 16;

#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Entry>() == 128);
    assert!(std::mem::size_of::<RingHead>() == 128);
};

/// A denial, as read back from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenyEvent {
    /// Position in the ring's history (increases by one per denial).
    pub ticket: u64,
    /// When it happened (ns, the engine's clock).
    pub time_ns: u64,
    /// The key's hash under the policy's seed.
    pub key_hash: u64,
    /// The key's first bytes, if the policy records keys.
    pub key: Option<Vec<u8>>,
    /// The retry-after the client was given.
    pub retry_after_ns: u64,
    /// The binding limit.
    pub limit_index: u32,
    /// Denied by the penalty box.
    pub banned: bool,
    /// Shadow mode: passed, but would have been denied.
    pub shadow: bool,
}

fn checksum(ticket: u64, words: &[u64; WORDS]) -> u64 {
    let mut h = ticket.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5851_F42D_4C95_7F2D;
    for (i, &w) in words.iter().enumerate() {
        if i != 0 && i != 5 {
            h = (h ^ w).wrapping_mul(0x2127_599B_F432_5C37).rotate_left(23);
        }
    }
    h | 1
}

/// The sequence word of a complete entry for `ticket` (`- 1` while it is
/// being written). Wrapping: the head lives in a shared file, where any
/// value may be found; a wrapped sequence at worst hides an event.
fn sequence(ticket: u64) -> u64 {
    ticket.wrapping_mul(2).wrapping_add(2)
}

/// One sampler word (see [`Ring::offer`]).
pub(crate) type SamplerWord = AtomicU64;

/// A ring over a head, `entries` and its sampler words (in a policy
/// region, or built by a test).
pub(crate) struct Ring<'a> {
    pub head: &'a RingHead,
    pub entries: &'a [Entry],
    pub sampler: &'a [SamplerWord],
}

/// A sampler word: bit 63 set once written, a 35-bit fingerprint of the
/// key hash in bits 28..63, and the event's time in ticks of 2^20 ns (about
/// 1 ms) in bits 0..28 (wrapping every 78 hours; differences are taken
/// modulo 2^28).
///
/// The fingerprint is the hash's bits 34..64 and 0..5: none of the bits
/// that choose the word ([`slot`]), so two keys of one word share it with
/// probability 2^-35. A key whose fingerprint matches the key that wrote
/// the word last less than an interval ago is sampled out, so a shared
/// fingerprint hides an event: with the 23 bits this word held before
/// (bits 41..64, 7 of them chosen by nothing else), 100,000 keys denied
/// in turn lost one event in about 1% of runs (tests/alloc.rs counts every
/// event). The time's bits pay for it: a word's stamp also looks recent
/// to the same key a whole multiple of 78 hours (within a second) later,
/// if no other key wrote the word in between, which hides that one event.
mod stamp {
    pub const TICK_SHIFT: u32 = 20;
    pub const TIME_BITS: u32 = 28;
    pub const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
    /// Fingerprint bits: 63 - TIME_BITS.
    const PRINT_MASK: u64 = (1 << (63 - TIME_BITS)) - 1;
    // The word's index (hash bits 24..34 at most) and the fingerprint
    // (bits 34..64 and 0..5) stay disjoint.
    const _: () = assert!(super::SAMPLER_SLOTS <= 1 << 10 && 63 - TIME_BITS == 35);
    /// [`super::DENY_SAMPLE_NS`] in ticks, rounded down: a denial a full
    /// interval after the key's last event is always written (one a tick,
    /// about 1 ms, less than an interval after it may be too).
    pub const INTERVAL: u64 = super::DENY_SAMPLE_NS >> TICK_SHIFT;

    #[inline(always)]
    pub fn of(key_hash: u64, time_ns: u64) -> u64 {
        1 << 63
            | (key_hash.rotate_right(34) & PRINT_MASK) << TIME_BITS
            | (time_ns >> TICK_SHIFT) & TIME_MASK
    }

    /// `old` names the same key as `new` and is less than an interval
    /// older (a time that went backwards is a new interval).
    #[inline(always)]
    pub fn recent(old: u64, new: u64) -> bool {
        old >> TIME_BITS == new >> TIME_BITS && (new.wrapping_sub(old) & TIME_MASK) < INTERVAL
    }

    /// The sampler word a key hash uses: its bits 24..34, which the
    /// fingerprint leaves out.
    #[inline(always)]
    pub fn slot(key_hash: u64, slots: usize) -> usize {
        (key_hash >> 24) as usize & (slots - 1)
    }
}

/// What [`Ring::offer`] did with a denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Offered {
    /// The event was written.
    pub written: bool,
    /// Until this time (ns), as long as no other key takes the key's
    /// sampler word, the ring samples out every further denial of the key
    /// offered at or after the offer's time: the key's event (this one or
    /// the one that sampled it out) is then a whole interval old. The spot
    /// memo keeps it, so that a flood on one key stops before the sampler
    /// (`engine/memo.rs`, "Quiet").
    pub quiet_until_ns: u64,
}

impl Offered {
    /// The offer of stamp `new` at `time_ns`, `written` or not, after
    /// which the key's stamp in its word is `old` (recent at `new`: `new`
    /// itself if written, else the stamp that sampled it out).
    #[inline(always)]
    fn after(written: bool, old: u64, new: u64, time_ns: u64) -> Offered {
        // `recent(old, new)`: age < INTERVAL. A later offer, at tick
        // n' >= n, is sampled out while n' - n + age < INTERVAL.
        let age = new.wrapping_sub(old) & stamp::TIME_MASK;
        debug_assert!(age < stamp::INTERVAL);
        let next = (time_ns >> stamp::TICK_SHIFT) + (stamp::INTERVAL - age);
        Offered {
            written,
            // Saturating: a time within an interval of 2^64 ns.
            quiet_until_ns: u64::try_from((next as u128) << stamp::TICK_SHIFT).unwrap_or(u64::MAX),
        }
    }
}

/// The sampler word of a key hash (tests that make keys share one).
#[cfg(test)]
pub(crate) fn sampler_word_of(key_hash: u64) -> usize {
    stamp::slot(key_hash, SAMPLER_SLOTS)
}

/// What a writer records.
pub(crate) struct Record<'k> {
    pub time_ns: u64,
    pub key_hash: u64,
    pub key: Option<&'k [u8]>,
    pub retry_after_ns: u64,
    pub limit_index: u32,
    pub banned: bool,
    pub shadow: bool,
}

impl Ring<'_> {
    /// Writes the event `record()` builds unless an event for the same key
    /// was written less than [`DENY_SAMPLE_NS`] before `time_ns` (see
    /// "Sampling"), or always if `always` (a denial that starts a ban). A
    /// repeated denial costs one shared load and builds nothing.
    #[inline(always)]
    pub fn offer<'k>(
        &self,
        key_hash: u64,
        time_ns: u64,
        always: bool,
        record: impl FnOnce() -> Record<'k>,
    ) -> Offered {
        let word = &self.sampler[stamp::slot(key_hash, self.sampler.len())];
        let new = stamp::of(key_hash, time_ns);
        if !always {
            // Relaxed: the sampler word is a hint that publishes no other
            // memory; the entry's own sequence word orders the event.
            let old = word.load(Ordering::Relaxed);
            if stamp::recent(old, new) {
                return Offered::after(false, old, new, time_ns);
            }
            // Relaxed as above. On failure another denial changed the word
            // just now: if it stamped this key, that one writes the event; if
            // another key, this one is written too (displaced keys are
            // written more often, never less).
            if let Err(current) =
                word.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
            {
                if stamp::recent(current, new) {
                    return Offered::after(false, current, new, time_ns);
                }
            }
        } else {
            // Relaxed: as above.
            word.store(new, Ordering::Relaxed);
        }
        self.push(&record());
        Offered::after(true, new, new, time_ns)
    }

    /// Appends an event (never blocks; may overwrite the oldest).
    #[cold]
    pub fn push(&self, r: &Record<'_>) {
        let n = self.entries.len() as u64;
        // Relaxed: the ticket only picks an entry; the entry's own sequence
        // word orders its contents.
        let ticket = self.head.next.fetch_add(1, Ordering::Relaxed);
        let e = &self.entries[(ticket % n) as usize];
        let mut w = [0u64; WORDS];
        w[1] = r.time_ns;
        w[2] = r.key_hash;
        w[3] = r.retry_after_ns;
        let key = r.key.unwrap_or(&[]);
        let len = key.len().min(EVENT_KEY_BYTES);
        w[4] = len as u64
            | ((r.limit_index.min(255) as u64) << 8)
            | ((r.banned as u64) << 16)
            | ((r.shadow as u64) << 17)
            | ((r.key.is_some() as u64) << 18);
        for (i, chunk) in key[..len].chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            w[6 + i] = u64::from_le_bytes(b);
        }
        w[5] = checksum(ticket, &w);
        // SeqCst: the odd sequence must be visible before any field, and
        // every field before the even one (a seqlock's write side).
        e.w[0].store(sequence(ticket).wrapping_sub(1), Ordering::SeqCst);
        for (slot, &value) in e.w.iter().zip(&w).skip(1) {
            slot.store(value, Ordering::SeqCst);
        }
        e.w[0].store(sequence(ticket), Ordering::SeqCst);
    }

    /// The next ticket (events so far).
    pub fn next_ticket(&self) -> u64 {
        self.head.next.load(Ordering::SeqCst)
    }

    /// Events with tickets from `since` on (at most the ring's capacity,
    /// oldest first); torn or half-written entries are skipped.
    pub fn read(&self, since: u64) -> Vec<DenyEvent> {
        let n = self.entries.len() as u64;
        let end = self.next_ticket();
        let start = since.max(end.saturating_sub(n));
        let mut out = Vec::new();
        for ticket in start..end {
            let e = &self.entries[(ticket % n) as usize];
            let seq = e.w[0].load(Ordering::SeqCst);
            if seq != sequence(ticket) {
                continue;
            }
            let mut w = [0u64; WORDS];
            for (i, x) in w.iter_mut().enumerate().skip(1) {
                *x = e.w[i].load(Ordering::SeqCst);
            }
            if e.w[0].load(Ordering::SeqCst) != seq || w[5] != checksum(ticket, &w) {
                continue;
            }
            let len = (w[4] & 0xff) as usize;
            let key = (w[4] >> 18 & 1 == 1).then(|| {
                let mut k = Vec::with_capacity(len);
                for word in &w[6..] {
                    k.extend_from_slice(&word.to_le_bytes());
                }
                k.truncate(len);
                k
            });
            out.push(DenyEvent {
                ticket,
                time_ns: w[1],
                key_hash: w[2],
                key,
                retry_after_ns: w[3],
                limit_index: (w[4] >> 8 & 0xff) as u32,
                banned: w[4] >> 16 & 1 == 1,
                shadow: w[4] >> 17 & 1 == 1,
            });
        }
        out
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn ring(n: usize) -> (RingHead, Vec<Entry>) {
        (
            RingHead {
                next: AtomicU64::new(0),
            },
            (0..n)
                .map(|_| Entry {
                    w: Default::default(),
                })
                .collect(),
        )
    }

    fn rec(t: u64, key: Option<&[u8]>) -> Record<'_> {
        Record {
            time_ns: t,
            key_hash: t * 7,
            key,
            retry_after_ns: t * 3,
            limit_index: 2,
            banned: t % 2 == 0,
            shadow: false,
        }
    }

    fn offer(r: &Ring<'_>, rec: &Record<'_>, always: bool) -> bool {
        r.offer(rec.key_hash, rec.time_ns, always, || Record { ..*rec })
            .written
    }

    fn sampler(n: usize) -> Vec<AtomicU64> {
        (0..n).map(|_| AtomicU64::new(0)).collect()
    }

    proptest::proptest! {
        /// A sampler word written by anyone (a shared file is open to
        /// every process of the host, and to whoever corrupts it): the
        /// quiet an offer reports — how long the spot memo then offers
        /// none of the key's denials — ends after the offer and at most
        /// one interval (and a tick) after it, written or not; a later
        /// offer past it reads the word again.
        #[test]
        fn any_sampler_word_quiets_a_key_for_at_most_an_interval(
            word in proptest::prelude::any::<u64>(),
            key_hash in proptest::prelude::any::<u64>(),
            // Below 2^60: `rec` derives fields as 7 × the time.
            time_ns in 0u64..1 << 60,
            own_print in proptest::prelude::any::<bool>(),
        ) {
            let (head, entries) = ring(8);
            let sampler = sampler(1);
            // Half the cases carry the key's own fingerprint, so that the
            // word's time decides.
            let word = if own_print {
                stamp::of(key_hash, 0) & !stamp::TIME_MASK | word & stamp::TIME_MASK
            } else {
                word
            };
            sampler[0].store(word, Ordering::Relaxed);
            let r = Ring { head: &head, entries: &entries, sampler: &sampler };
            let o = r.offer(key_hash, time_ns, false, || rec(time_ns, None));
            proptest::prop_assert!(o.quiet_until_ns > time_ns);
            proptest::prop_assert!(o.quiet_until_ns <= time_ns + DENY_SAMPLE_NS + (1 << stamp::TICK_SHIFT));
            proptest::prop_assert_eq!(o.written, r.read(0).len() == 1);
        }
    }

    /// What each `offer` of `(key hash, time)` wrote, in order.
    fn offered(sampler_slots: usize, offers: &[(u64, u64)]) -> Vec<bool> {
        let (head, entries) = ring(64);
        let sampler = sampler(sampler_slots);
        let r = Ring {
            head: &head,
            entries: &entries,
            sampler: &sampler,
        };
        let mut rec = rec(0, None);
        let out: Vec<bool> = offers
            .iter()
            .map(|&(key_hash, time_ns)| {
                rec.key_hash = key_hash;
                rec.time_ns = time_ns;
                offer(&r, &rec, false)
            })
            .collect();
        let written = out.iter().filter(|&&w| w).count();
        assert_eq!(
            r.read(0).len(),
            written.min(64),
            "offer said written: the ring holds it (the last 64)"
        );
        out
    }

    const S: u64 = DENY_SAMPLE_NS;

    #[test]
    fn a_key_is_written_once_per_interval_however_often_it_is_denied() {
        let k = 0xDEAD_BEEF_0123_4567;
        let t0 = 5 * S;
        let mut offers = vec![(k, t0)];
        // A flood within the interval: a thousand denials, none written.
        offers.extend((1..1000).map(|i| (k, t0 + i * (S / 2000))));
        // The first denial one interval later is written again.
        offers.push((k, t0 + S));
        let w = offered(1024, &offers);
        assert!(w[0]);
        assert!(w[1..1000].iter().all(|&x| !x));
        assert!(w[1000]);
    }

    #[test]
    fn an_event_offered_always_is_written_and_starts_the_interval() {
        let k = 0xDEAD_BEEF_0123_4567;
        let (head, entries) = ring(8);
        let sampler = sampler(16);
        let r = Ring {
            head: &head,
            entries: &entries,
            sampler: &sampler,
        };
        let mut rec = rec(0, None);
        rec.key_hash = k;
        rec.time_ns = S;
        assert!(offer(&r, &rec, false));
        rec.time_ns = S + 1;
        assert!(
            offer(&r, &rec, true),
            "a ban starts: written within the interval"
        );
        rec.time_ns = S + S / 2;
        assert!(!offer(&r, &rec, false));
        rec.time_ns = 2 * S + S / 100;
        assert!(
            offer(&r, &rec, false),
            "one interval after the always-written one"
        );
        assert_eq!(r.read(0).len(), 3);
    }

    #[test]
    fn time_that_goes_backwards_starts_a_new_interval() {
        let k = 77 << 41;
        let w = offered(
            1024,
            &[(k, 10 * S), (k, 10 * S - S / 2), (k, 10 * S - S / 4)],
        );
        // Backwards: written, and it starts the interval the third is in.
        assert_eq!(w, vec![true, true, false]);
    }

    #[test]
    fn keys_of_one_word_that_differ_only_outside_the_old_23_bit_fingerprint_are_both_written() {
        // Same sampler word (bits 24..34) and same top 23 bits, which were
        // the whole fingerprint before: the second key's first denial was
        // sampled out. Each bit the fingerprint now holds tells them apart.
        let a = 0xA5A5_A5A5_A5A5_A5A5u64;
        for bit in (0..5).chain(34..41) {
            let b = a ^ (1 << bit);
            assert_eq!(stamp::slot(a, SAMPLER_SLOTS), stamp::slot(b, SAMPLER_SLOTS));
            assert_eq!(
                offered(SAMPLER_SLOTS, &[(a, S), (b, S + 1)]),
                vec![true, true],
                "bit {bit}"
            );
        }
        // A bit that chooses the word: another word, written too.
        assert_eq!(
            offered(SAMPLER_SLOTS, &[(a, S), (a ^ 1 << 30, S + 1)]),
            vec![true, true]
        );
    }

    #[test]
    fn a_key_written_through_a_word_again_a_whole_time_wrap_later_is_sampled_out_once() {
        // The documented price of 28 time bits: 2^48 ns (78 hours) later,
        // with no other key in between, the old stamp looks recent.
        let k = 0x0123_4567_89AB_CDEF;
        let wrap = 1u64 << (stamp::TIME_BITS + stamp::TICK_SHIFT);
        assert_eq!(
            offered(1, &[(k, S), (k, S + wrap), (k, S + wrap + 2 * S)]),
            vec![true, false, true]
        );
    }

    #[test]
    fn keys_that_share_a_sampler_word_are_written_more_often_never_less() {
        // One sampler word: two keys alternate; each denial of either is
        // written, and a third key's first denial is too.
        let (a, b, c) = (1 << 41, 2 << 41, 3 << 41);
        let offers: Vec<(u64, u64)> = (0..10)
            .map(|i| (if i % 2 == 0 { a } else { b }, S + i))
            .chain([(c, S + 10)])
            .collect();
        assert!(offered(1, &offers).iter().all(|&x| x));
        // With many words, distinct keys never suppress each other: the
        // first denial of each of 200 keys is written.
        let keys: Vec<(u64, u64)> = (0..200u64)
            .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15), S))
            .collect();
        assert!(offered(1024, &keys).iter().all(|&x| x));
    }

    #[test]
    fn a_sampler_word_from_a_hostile_file_suppresses_at_most_one_interval() {
        let k = 0x1234_5678_9ABC_DEF0;
        let (head, entries) = ring(8);
        let sampler = sampler(1);
        // Someone wrote "this key, at the latest possible tick".
        sampler[0].store(stamp::of(k, u64::MAX), Ordering::Relaxed);
        let r = Ring {
            head: &head,
            entries: &entries,
            sampler: &sampler,
        };
        let mut rec = rec(0, None);
        rec.key_hash = k;
        for t in [0, S / 2, S, 3 * S] {
            rec.time_ns = t;
            offer(&r, &rec, false);
        }
        assert!(!r.read(0).is_empty());
        assert!(r.read(0).len() <= 4);
    }

    #[test]
    fn events_read_back_in_order_and_the_oldest_are_overwritten() {
        let (head, entries) = ring(4);
        let sampler = sampler(4);
        let r = Ring {
            head: &head,
            entries: &entries,
            sampler: &sampler,
        };
        for t in 0..6 {
            r.push(&rec(
                t,
                if t == 5 {
                    Some(b"ip:203.0.113.7")
                } else {
                    None
                },
            ));
        }
        let ev = r.read(0);
        assert_eq!(
            ev.iter().map(|e| e.ticket).collect::<Vec<_>>(),
            vec![2, 3, 4, 5]
        );
        assert_eq!(ev[3].key.as_deref(), Some(&b"ip:203.0.113.7"[..]));
        assert_eq!(ev[0].key, None);
        assert_eq!(
            (
                ev[2].time_ns,
                ev[2].key_hash,
                ev[2].retry_after_ns,
                ev[2].limit_index,
                ev[2].banned
            ),
            (4, 28, 12, 2, true)
        );
        assert_eq!(r.read(5).len(), 1);
        assert_eq!(r.read(6).len(), 0);
    }

    #[test]
    fn long_keys_are_cut_to_80_bytes() {
        let (head, entries) = ring(2);
        let sampler = sampler(4);
        let r = Ring {
            head: &head,
            entries: &entries,
            sampler: &sampler,
        };
        let key = [b'x'; 200];
        r.push(&rec(1, Some(&key)));
        assert_eq!(r.read(0)[0].key.as_ref().unwrap().len(), EVENT_KEY_BYTES);
    }

    #[test]
    fn a_half_written_entry_is_skipped() {
        let (head, entries) = ring(2);
        let sampler = sampler(4);
        let r = Ring {
            head: &head,
            entries: &entries,
            sampler: &sampler,
        };
        r.push(&rec(1, None));
        r.push(&rec(2, None));
        // A writer that died after its odd sequence, or a torn field.
        entries[0].w[0].store(1, Ordering::SeqCst); // ticket 0, odd: being written
        entries[1].w[3].store(999, Ordering::SeqCst);
        assert!(r.read(0).is_empty());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    #[test]
    fn loom_event_ring_readers_never_see_a_torn_event() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(2);
        model.check(|| {
            let head = Arc::new(RingHead {
                next: AtomicU64::new(0),
            });
            let entries: Arc<Vec<Entry>> = Arc::new(
                (0..1)
                    .map(|_| Entry {
                        w: Default::default(),
                    })
                    .collect(),
            );
            let writers: Vec<_> = (0..2u64)
                .map(|i| {
                    let (head, entries) = (head.clone(), entries.clone());
                    loom::thread::spawn(move || {
                        let sampler = [AtomicU64::new(0)];
                        let r = Ring {
                            head: &head,
                            entries: &entries,
                            sampler: &sampler,
                        };
                        r.push(&Record {
                            time_ns: 100 + i,
                            key_hash: 200 + i,
                            key: None,
                            retry_after_ns: 300 + i,
                            limit_index: i as u32,
                            banned: false,
                            shadow: false,
                        });
                    })
                })
                .collect();
            let sampler = [AtomicU64::new(0)];
            let r = Ring {
                head: &head,
                entries: &entries,
                sampler: &sampler,
            };
            for e in r.read(0) {
                let i = e.time_ns - 100;
                assert_eq!(
                    (e.key_hash, e.retry_after_ns, e.limit_index as u64),
                    (200 + i, 300 + i, i),
                    "torn event"
                );
            }
            for w in writers {
                w.join().unwrap();
            }
            let after = r.read(0);
            assert!(after.len() <= 1);
            for e in after {
                let i = e.time_ns - 100;
                assert_eq!((e.key_hash, e.retry_after_ns), (200 + i, 300 + i));
            }
        });
    }

    /// Two threads deny two keys that share the one sampler word, at the
    /// same time, while a third denies the first key again: whatever the
    /// interleaving, each key's denial reaches the ring at least once, and
    /// the sampler never holds a torn stamp.
    #[test]
    fn loom_the_sampler_never_loses_a_denying_key() {
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let head = Arc::new(RingHead {
                next: AtomicU64::new(0),
            });
            let entries: Arc<Vec<Entry>> = Arc::new(
                (0..4)
                    .map(|_| Entry {
                        w: Default::default(),
                    })
                    .collect(),
            );
            let sampler = Arc::new([AtomicU64::new(0)]);
            let (a, b) = (1u64 << 41, 2u64 << 41);
            let threads: Vec<_> = [a, b, a]
                .into_iter()
                .map(|key_hash| {
                    let (head, entries, sampler) = (head.clone(), entries.clone(), sampler.clone());
                    loom::thread::spawn(move || {
                        let r = Ring {
                            head: &head,
                            entries: &entries,
                            sampler: &*sampler,
                        };
                        r.offer(key_hash, DENY_SAMPLE_NS, false, || Record {
                            time_ns: DENY_SAMPLE_NS,
                            key_hash,
                            key: None,
                            retry_after_ns: 1,
                            limit_index: 0,
                            banned: false,
                            shadow: false,
                        })
                        .written
                    })
                })
                .collect();
            let written: Vec<bool> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert!(
                written[1],
                "key b shares the word with a: never suppressed by it"
            );
            assert!(written[0] || written[2], "key a reached the ring");
            let r = Ring {
                head: &head,
                entries: &entries,
                sampler: &*sampler,
            };
            let keys: Vec<u64> = r.read(0).iter().map(|e| e.key_hash).collect();
            assert!(keys.contains(&a) && keys.contains(&b));
            let last = sampler[0].load(Ordering::Relaxed);
            assert!(last == stamp::of(a, DENY_SAMPLE_NS) || last == stamp::of(b, DENY_SAMPLE_NS));
        });
    }
}
