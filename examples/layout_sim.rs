//! Placement simulator for the packed table layout of issue #14 ("Core
//! v2"): how full a table of `S`-slot buckets gets before a claim must
//! evict a live key, under the placement rules of `src/table/mod.rs`
//! ("Two buckets per key", "Moving a key"), for bucket geometries the
//! packed layout could use. It models placement only (no time, no
//! concurrency): every key is live, uniformly random, and new.
//!
//! ```text
//! cargo run --release --example layout_sim [TABLES]
//! ```
//!
//! prints, for each geometry, the occupancy (keys ÷ slots) at the first
//! claim that finds no room, median, min and max over TABLES tables
//! (default 5), each with its own random keys, for tables of 2^17 and 2^20
//! slots. The figures are quoted in
//! the README ("Design notes": the packed layout).
//!
//! The rules, as the table applied them until it searched breadth first
//! (the first line of each geometry), to a key whose two buckets are
//! `first` and `second` (different buckets):
//!
//! * a free slot in either bucket: the bucket with fewer keys (ties: the
//!   first);
//! * both full: look, within `budget` bucket examinations, for a key of
//!   either bucket that sits in its own first bucket and whose second
//!   bucket has a free slot, and move it there; failing that (a chain of
//!   two moves), for
//!   such a key whose second bucket holds a key that can move on the same
//!   way; then try again (a move makes room, and the claim looks again);
//! * nothing found: the table would evict a live key. The simulation
//!   stops there.
//!
//! and the variants (`Search`): a breadth-first search over chains of
//! moves of any length (applied from the last move back; the table now
//! searches so, first bucket to second, within 64 examinations, and
//! places first-fit), keys allowed to move back from their second bucket
//! to their first ("both ways"), and a new key placed in its first bucket
//! while it has room ("first-fit"). Each line also gives the share of keys
//! in their first bucket when the table held 90% of its slots: a check of
//! such a key reads one bucket.

use std::env;

/// splitmix64: a small, well-mixed generator (the keys only need to be
/// uniformly random; no security is at stake in a simulation).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One simulated table: `buckets` buckets of `slots` slots, each slot
/// holding a key's (first, second) bucket pair or nothing.
struct Table {
    slots: usize,
    mask: u64,
    cells: Vec<Option<(u32, u32)>>,
    fill: Vec<u8>,
    search: Search,
}

impl Table {
    fn new(buckets: usize, slots: usize, search: Search) -> Table {
        assert!(buckets.is_power_of_two() && buckets >= 2);
        Table {
            slots,
            mask: buckets as u64 - 1,
            cells: vec![None; buckets * slots],
            fill: vec![0; buckets],
            search,
        }
    }

    /// The two buckets of a key with hash `h`: as the table picks them
    /// (bits 0.. and 32.. of the hash, the second never equal to the
    /// first).
    fn buckets_of(&self, h: u64) -> (u32, u32) {
        let a = h & self.mask;
        let mut b = (h >> 32) & self.mask;
        if b == a {
            b = (b + 1) & self.mask;
        }
        (a as u32, b as u32)
    }

    fn full(&self, x: u32) -> bool {
        self.fill[x as usize] as usize == self.slots
    }

    fn put(&mut self, x: u32, key: (u32, u32)) {
        let base = x as usize * self.slots;
        let cell = self.cells[base..base + self.slots]
            .iter_mut()
            .find(|c| c.is_none())
            .expect("put into a full bucket");
        *cell = Some(key);
        self.fill[x as usize] += 1;
    }

    /// Moves the key in slot `k` of bucket `x` to its other bucket.
    fn move_out(&mut self, x: u32, k: usize) {
        let key = self.cells[x as usize * self.slots + k].take().unwrap();
        self.fill[x as usize] -= 1;
        self.put(if key.0 == x { key.1 } else { key.0 }, key);
    }

    /// Slots of bucket `x` whose key may move out, each with the bucket it
    /// would move to: keys in their first bucket (and, both ways, every
    /// key).
    fn movable(&self, x: u32) -> Vec<(usize, u32)> {
        let base = x as usize * self.slots;
        (0..self.slots)
            .filter_map(|k| match self.cells[base + k] {
                Some((f, s)) if f == x => Some((k, s)),
                Some((f, _)) if self.search.both_ways => Some((k, f)),
                _ => None,
            })
            .collect()
    }

    /// Breadth-first search for a chain of at most `max_chain` moves, from
    /// bucket `first` or `second`, that ends in a bucket with a free slot,
    /// examining at most `budget` buckets; applies it (last move first).
    fn make_room(&mut self, first: u32, second: u32) -> bool {
        // (bucket, index of the node it was reached from, slot moved out of
        // that node's bucket, moves in the chain that reaches it)
        let mut nodes: Vec<(u32, usize, usize, usize)> =
            vec![(first, usize::MAX, 0, 0), (second, usize::MAX, 0, 0)];
        let mut next = 0;
        let mut budget = self.search.budget;
        while next < nodes.len() {
            let (x, _, _, moves) = nodes[next];
            if moves == self.search.max_chain {
                break;
            }
            for (k, y) in self.movable(x) {
                if budget == 0 {
                    return false;
                }
                budget -= 1;
                if nodes.iter().any(|n| n.0 == y) {
                    continue;
                }
                nodes.push((y, next, k, moves + 1));
                if !self.full(y) {
                    // Apply the chain from its end: each move makes room
                    // for the one before it.
                    let mut at = nodes.len() - 1;
                    while nodes[at].1 != usize::MAX {
                        let (_, from, k, _) = nodes[at];
                        self.move_out(nodes[from].0, k);
                        at = from;
                    }
                    return true;
                }
            }
            next += 1;
        }
        false
    }

    /// Claims a slot for a new key; false if the table would have to
    /// evict a live key.
    fn claim(&mut self, h: u64) -> bool {
        let (a, b) = self.buckets_of(h);
        loop {
            let (fa, fb) = (self.fill[a as usize], self.fill[b as usize]);
            if !self.full(a) || !self.full(b) {
                let x = if !self.full(a) && (fa <= fb || self.search.first_fit) || self.full(b) {
                    a
                } else {
                    b
                };
                self.put(x, (a, b));
                return true;
            }
            if !self.make_room(a, b) {
                return false;
            }
        }
    }
}

/// Share of the keys that sit in their first bucket.
fn share_first(t: &Table) -> f64 {
    let (mut first, mut all) = (0usize, 0usize);
    for (i, c) in t.cells.iter().enumerate() {
        if let Some((f, _)) = c {
            all += 1;
            first += (*f as usize == i / t.slots) as usize;
        }
    }
    first as f64 / all as f64
}

/// Occupancy at the first claim that finds no room, and the share of keys
/// in their first bucket when the table held 90% of its slots (or, if it
/// never got there, when it stopped).
fn first_eviction(slots_total: usize, slots: usize, search: Search, seed: u64) -> (f64, f64) {
    let mut t = Table::new(slots_total / slots, slots, search);
    let mut rng = Rng(seed);
    let mut keys = 0usize;
    let mut share = None;
    while keys < slots_total && t.claim(rng.next()) {
        keys += 1;
        if keys == slots_total * 9 / 10 {
            share = Some(share_first(&t));
        }
    }
    let share = share.unwrap_or_else(|| share_first(&t));
    (keys as f64 / slots_total as f64, share)
}

/// How a claim that finds both buckets full looks for room.
#[derive(Clone, Copy)]
struct Search {
    /// Most bucket examinations per claim.
    budget: usize,
    /// Longest chain of moves: 2 was the table's search until it searched
    /// without a bound (a direct move, or a move after one more).
    max_chain: usize,
    /// Keys may also move back from their second bucket to their first.
    both_ways: bool,
    /// A new key takes its first bucket while it has a free slot (else
    /// the emptier of its two buckets).
    first_fit: bool,
}

impl Search {
    fn name(self) -> String {
        let ways = if self.both_ways {
            "both ways"
        } else {
            "first -> second"
        };
        let how = match self.max_chain {
            usize::MAX => format!("BFS, {ways}"),
            n => format!("chains <= {n}, {ways}"),
        };
        let fit = if self.first_fit {
            "first-fit"
        } else {
            "emptier"
        };
        format!("{fit}, {how}, budget {}", self.budget)
    }
}

fn main() {
    let tables: usize = env::args()
        .nth(1)
        .map(|a| a.parse().expect("TABLES: a number"))
        .unwrap_or(5);
    // (slots per bucket, what a bucket is)
    let geometries = [
        (8, "8 slots (today's bucket)"),
        (7, "7 slots + header: 128 B"),
        (4, "4 slots: one 64 B line"),
        (3, "3 slots + header: 64 B"),
    ];
    let search = |budget, max_chain, both_ways, first_fit| Search {
        budget,
        max_chain,
        both_ways,
        first_fit,
    };
    let searches = [
        search(16, 2, false, false),
        search(64, usize::MAX, false, false),
        search(64, usize::MAX, false, true),
        search(64, usize::MAX, true, false),
        search(256, usize::MAX, true, false),
        search(64, usize::MAX, true, true),
        search(256, usize::MAX, true, true),
    ];
    println!(
        "at the first claim with no room: occupancy (keys / slots), median [min, max] of \
         {tables} tables; share of keys in their first bucket at 90% occupancy, median"
    );
    for total in [1usize << 17, 1 << 20] {
        for (slots, what) in geometries {
            // 2^k slots in 7- or 3-slot buckets: the bucket count is the
            // power of two the table would round to.
            let n = (total / slots).next_power_of_two() * slots;
            for search in searches {
                let mut v: Vec<(f64, f64)> = (0..tables as u64)
                    .map(|s| {
                        first_eviction(
                            n,
                            slots,
                            search,
                            0x5eed ^ s.wrapping_mul(0x1_0000_0001) ^ n as u64,
                        )
                    })
                    .collect();
                let mut shares: Vec<f64> = v.iter().map(|x| x.1).collect();
                shares.sort_by(f64::total_cmp);
                v.sort_by(|x, y| x.0.total_cmp(&y.0));
                println!(
                    "{n:>8} slots  {what:<26} {:<52}: {:.3} [{:.3}, {:.3}]  first {:.2}",
                    search.name(),
                    v[v.len() / 2].0,
                    v[0].0,
                    v[v.len() - 1].0,
                    shares[shares.len() / 2],
                );
            }
        }
    }
}
