//! Per-key quota overrides: an open-addressed table of key words (tag 0,
//! `a`: the factor in thousandths, `b`: the key hash) in the policy's own
//! units, mirrored into the `a` of the key's live key word.

use super::words::{Op, Word};
use super::{Located, Table};
use crate::algo;
use crate::sync::Atomic128;

impl Table {
    /// The override entry units.
    fn override_units(&self) -> &[Atomic128] {
        &self.mem.units()[self.overrides_base..self.overrides_base + self.overrides_len]
    }

    /// The quota override of key `h` in thousandths (0: none), at most
    /// [`MAX_COST`](algo::MAX_COST), the largest factor `set_override`
    /// writes: a larger one is a word of a shared file someone else wrote,
    /// and a claim carries the factor in its intent's 24-bit cost field
    /// (unclamped, a debug build's assertion on that field panicked in the
    /// check, and the intent held only the factor's low 24 bits).
    #[inline]
    pub fn override_of(&self, h: u64) -> u32 {
        let units = self.override_units();
        let n = units.len();
        for i in 0..n {
            let entry = Word::from_bits(units[((h >> 32) as usize + i) % n].load());
            if entry.hash() == h {
                return entry.factor().min(algo::MAX_COST as u32);
            }
            if entry.hash() == 0 {
                return 0;
            }
        }
        0
    }

    /// Sets (or with 0, clears) the quota override of key `h`, in
    /// thousandths, and applies it to the key's live state at once.
    /// Override entries are keyed once and never removed (a cleared one
    /// keeps its key with factor 0), so racing setters of one key always
    /// meet on the same entry.
    pub fn set_override(&self, h: u64, factor_milli: u32) -> Result<(), crate::Error> {
        let units = self.override_units();
        let n = units.len();
        let mut done = false;
        'probe: for i in 0..n {
            let unit = &units[((h >> 32) as usize + i) % n];
            let mut cur = unit.load();
            loop {
                let entry = Word::from_bits(cur);
                if entry.hash() != h && entry.hash() != 0 {
                    continue 'probe;
                }
                if entry.hash() == 0 && factor_milli == 0 {
                    break 'probe; // nothing to clear
                }
                let new = Word::key(0, h, factor_milli).to_bits();
                match unit.compare_exchange(cur, new) {
                    Ok(_) => {
                        done = true;
                        break 'probe;
                    }
                    Err(actual) => cur = actual,
                }
            }
        }
        if !done && factor_milli != 0 {
            return Err(crate::Error::Unsupported(format!(
                "the policy's override table is full ({n} keys)"
            )));
        }
        if let Some(p) = self.packed() {
            p.set_override_flag(h, factor_milli != 0);
            return Ok(());
        }
        // Bring the live slot in line; with no slot, a no-op transaction
        // makes any claim proposed from an older snapshot (which may have
        // read the old override) fail and read it again.
        // (A key in its second bucket was claimed through its first one,
        // which the TOUCH here fences too: see "Two buckets per key".)
        loop {
            match self.locate(h, 0) {
                Located::At(p) if self.key_word(p.b, p.slot).factor() == factor_milli => {
                    if Self::still(p.b, &p.snap) {
                        return Ok(());
                    }
                }
                Located::At(p) => {
                    if self.transact(p.b, &p.snap, Op::Factor, p.slot, factor_milli as u64, 0, 0) {
                        return Ok(());
                    }
                }
                Located::Absent(absent) => {
                    let (a, sa) = absent.first;
                    if self.transact(a, &sa, Op::Touch, 0, 0, 0, 0) {
                        return Ok(());
                    }
                }
            }
        }
    }
}
