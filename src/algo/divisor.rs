//! Division by a number fixed when a limit is made, as a multiplication.
//!
//! A check divides by the limit's emission interval `T` to report how many
//! requests remain. A 64-bit `div` takes tens of cycles (more than the rest
//! of GCRA's arithmetic together); a multiplication by a reciprocal worked
//! out once takes a few, and one correction makes it exact:
//!
//! With `M = 2^64` and `m = floor((M - 1) / d)` (so `(M - d) / d <= m <= (M - 1) / d`),
//! for every `x < M`:
//!
//! - `x * m / M <= x * (M - 1) / (d * M) < x / d`, so `q = floor(x * m / M) <= floor(x / d)`;
//! - `x * m / M >= x * (M - d) / (d * M) = x / d - x / M > x / d - 1`,
//!   so `q >= floor(x / d) - 1`.
//!
//! So `q` is the quotient or one less, and the remainder `x - q * d` (which
//! cannot overflow, as `q * d <= x`) is below `2d`: if it is `d` or more,
//! the quotient is `q + 1`. The proptest below holds it to `/` over all of
//! `u64`.

use std::num::NonZeroU64;

/// A divisor `d >= 1` and its reciprocal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Divisor {
    d: u64,
    m: u64,
}

impl Divisor {
    /// The divisor `d`.
    pub(crate) const fn new(d: NonZeroU64) -> Divisor {
        Divisor {
            d: d.get(),
            m: u64::MAX / d.get(),
        }
    }

    /// `d`.
    #[inline(always)]
    pub(crate) const fn get(self) -> u64 {
        self.d
    }

    /// `floor(x / d)`, exactly.
    #[inline(always)]
    pub(crate) const fn div(self, x: u64) -> u64 {
        let q = ((x as u128 * self.m as u128) >> 64) as u64;
        let r = x - q * self.d;
        q + (r >= self.d) as u64
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::Divisor;
    use proptest::prelude::*;
    use std::num::NonZeroU64;

    fn check(x: u64, d: u64) {
        let by = Divisor::new(NonZeroU64::new(d).unwrap());
        assert_eq!(by.div(x), x / d, "{x} / {d}");
    }

    #[test]
    fn edges_divide_as_the_operator_does() {
        let edges = [
            0,
            1,
            2,
            3,
            7,
            1 << 32,
            (1 << 32) + 1,
            u64::MAX / 4,
            (1 << 63) - 1,
            1 << 63,
            u64::MAX - 1,
            u64::MAX,
        ];
        for d in edges.into_iter().filter(|&d| d != 0) {
            for x in edges {
                check(x, d);
                for k in [1u64, 2, 3, 1000] {
                    // Around the multiples of d, where an estimate one short shows.
                    if let Some(m) = d.checked_mul(k) {
                        check(m, d);
                        check(m - 1, d);
                        check(m.saturating_add(1), d);
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_quotient_is_the_operators(x in any::<u64>(), d in 1..=u64::MAX) {
            check(x, d);
        }

        #[test]
        fn small_divisors_near_their_multiples(d in 1u64..1 << 40, k in any::<u64>(), off in 0u64..3) {
            let m = (k % (u64::MAX / d)) * d;
            check(m, d);
            check(m.saturating_sub(off), d);
            check(m.saturating_add(off), d);
        }
    }
}
