//! The vocabulary of the algorithms: which [`Algorithm`] enforces a
//! [`Limit`], and the limit's canonical text.
//!
//! The spec parser (`crate::policy`) produces these values; the algorithms,
//! the table and the engine consume them. Nothing here parses.

use std::fmt;

/// Nanoseconds per second.
pub const NS_PER_SEC: u64 = 1_000_000_000;

/// Default lease of a concurrency permit when the spec gives none.
pub const DEFAULT_LEASE_NS: u64 = 60 * NS_PER_SEC;

/// Which algorithm enforces a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic cell rate algorithm: a token bucket of capacity `burst`
    /// refilled at `count / period`. The default.
    Gcra,
    /// At most `count` per window; a window opens at the first request after
    /// the previous one ended.
    FixedWindow,
    /// Weighted count of the previous and current aligned windows.
    SlidingWindow,
    /// Exact: at most `count` in any interval of length `period`.
    SlidingLog,
    /// At most `count` permits in flight, each a lease that expires.
    Concurrency,
}

impl Algorithm {
    /// The name used in specs (`gcra`, `fixed_window`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::FixedWindow => "fixed_window",
            Algorithm::SlidingWindow => "sliding_window",
            Algorithm::SlidingLog => "sliding_log",
            Algorithm::Concurrency => "concurrency",
        }
    }
}

/// One limit of a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests (cost units) per period; for `Concurrency`, permits in flight.
    pub count: u64,
    /// The period in nanoseconds (for `Concurrency`: the lease TTL).
    pub period_ns: u64,
    /// GCRA bucket capacity (defaults to `count`); equal to `count` for
    /// every other algorithm.
    pub burst: u64,
}

impl Limit {
    /// The emission interval `T = period / count` in nanoseconds, rounded
    /// down (for `Concurrency`: the lease TTL divided by the permits).
    /// `u64::MAX` when `count` is 0, which the spec parser never produces.
    #[must_use]
    pub fn emission_interval_ns(&self) -> u64 {
        self.period_ns.checked_div(self.count).unwrap_or(u64::MAX)
    }

    /// Whether this is a concurrency limit (permits in flight) rather than a
    /// rate limit.
    #[must_use]
    pub fn is_concurrency(&self) -> bool {
        self.algorithm == Algorithm::Concurrency
    }
}

const SECOND_NS: u64 = NS_PER_SEC;
const MINUTE_NS: u64 = 60 * SECOND_NS;
const HOUR_NS: u64 = 60 * MINUTE_NS;
const DAY_NS: u64 = 24 * HOUR_NS;
/// A month is 30 days, as in Flask-Limiter.
const MONTH_NS: u64 = 30 * DAY_NS;
/// A year is 360 days (12 months of 30 days), as in Flask-Limiter.
const YEAR_NS: u64 = 360 * DAY_NS;

/// A time unit of the canonical text: its names and its length.
#[derive(Debug)]
pub(crate) struct Unit {
    pub singular: &'static str,
    pub plural: &'static str,
    pub ns: u64,
}

/// Largest first: `Display` picks the first unit that divides a period.
pub(crate) const UNITS: [Unit; 6] = [
    Unit {
        singular: "year",
        plural: "years",
        ns: YEAR_NS,
    },
    Unit {
        singular: "month",
        plural: "months",
        ns: MONTH_NS,
    },
    Unit {
        singular: "day",
        plural: "days",
        ns: DAY_NS,
    },
    Unit {
        singular: "hour",
        plural: "hours",
        ns: HOUR_NS,
    },
    Unit {
        singular: "minute",
        plural: "minutes",
        ns: MINUTE_NS,
    },
    Unit {
        singular: "second",
        plural: "seconds",
        ns: SECOND_NS,
    },
];

/// A period in its most readable exact form: the largest unit that divides it
/// (`second`, `5 minutes`, `2 days`).
struct Period(u64);

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns != 0 {
            if let Some(unit) = UNITS.iter().find(|u| ns % u.ns == 0) {
                let n = ns / unit.ns;
                return if n == 1 {
                    f.write_str(unit.singular)
                } else {
                    write!(f, "{n} {}", unit.plural)
                };
            }
        }
        // Not whole seconds: cannot come from the spec parser, and does not
        // parse back.
        write!(f, "{ns} nanoseconds")
    }
}

/// The canonical spec of one limit, which
/// [`policy::parse`](crate::policy::parse) reads back to the same value:
/// `10/second`, `100/5 minutes`, `10/second burst 20`,
/// `fixed_window 1000/hour`, `concurrency 4`, `concurrency 4 ttl 30 seconds`.
///
/// The algorithm is named unless it is `gcra`, `burst` is shown only when it
/// differs from `count`, a concurrency TTL only when it is not
/// [`DEFAULT_LEASE_NS`]. A limit that `parse` cannot produce (a period that is
/// not whole seconds, a zero count, a burst on another algorithm than `gcra`)
/// is still written out, as a spec that does not parse.
impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.algorithm == Algorithm::Concurrency {
            write!(f, "concurrency {}", self.count)?;
            if self.period_ns != DEFAULT_LEASE_NS {
                write!(f, " ttl {}", Period(self.period_ns))?;
            }
            return Ok(());
        }
        if self.algorithm != Algorithm::Gcra {
            write!(f, "{} ", self.algorithm.name())?;
        }
        write!(f, "{}/{}", self.count, Period(self.period_ns))?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(count: u64, period_ns: u64) -> Limit {
        Limit {
            algorithm: Algorithm::Gcra,
            count,
            period_ns,
            burst: count,
        }
    }

    #[test]
    fn units_are_listed_largest_first_so_display_picks_the_largest() {
        for pair in UNITS.windows(2) {
            assert!(pair[0].ns > pair[1].ns);
            assert_eq!(pair[0].ns % pair[1].ns, 0);
        }
        assert_eq!(UNITS[0].ns, 360 * 24 * 3600 * NS_PER_SEC);
        assert_eq!(UNITS[1].ns, 30 * 24 * 3600 * NS_PER_SEC);
    }

    #[test]
    fn a_period_is_written_in_the_largest_unit_that_divides_it() {
        assert_eq!(Period(NS_PER_SEC).to_string(), "second");
        assert_eq!(Period(300 * NS_PER_SEC).to_string(), "5 minutes");
        assert_eq!(Period(2 * 86_400 * NS_PER_SEC).to_string(), "2 days");
        assert_eq!(Period(90 * NS_PER_SEC).to_string(), "90 seconds");
    }

    #[test]
    fn a_period_that_is_not_whole_seconds_is_written_in_nanoseconds() {
        assert_eq!(
            gcra(3, 1_500_000_000).to_string(),
            "3/1500000000 nanoseconds"
        );
        assert_eq!(Period(0).to_string(), "0 nanoseconds");
    }

    #[test]
    fn a_limit_names_its_algorithm_unless_gcra_and_its_burst_only_when_not_count() {
        assert_eq!(gcra(10, NS_PER_SEC).to_string(), "10/second");
        let burst = Limit {
            burst: 20,
            ..gcra(10, NS_PER_SEC)
        };
        assert_eq!(burst.to_string(), "10/second burst 20");
        let window = Limit {
            algorithm: Algorithm::FixedWindow,
            ..gcra(1000, 3600 * NS_PER_SEC)
        };
        assert_eq!(window.to_string(), "fixed_window 1000/hour");
    }

    #[test]
    fn a_concurrency_limit_shows_its_ttl_only_when_not_the_default() {
        let permits = |ttl_ns| Limit {
            algorithm: Algorithm::Concurrency,
            count: 4,
            period_ns: ttl_ns,
            burst: 4,
        };
        assert_eq!(permits(DEFAULT_LEASE_NS).to_string(), "concurrency 4");
        assert_eq!(
            permits(30 * NS_PER_SEC).to_string(),
            "concurrency 4 ttl 30 seconds"
        );
        assert!(permits(NS_PER_SEC).is_concurrency());
        assert!(!gcra(4, NS_PER_SEC).is_concurrency());
    }

    #[test]
    fn the_emission_interval_is_the_period_over_the_count_rounded_down() {
        assert_eq!(gcra(10, NS_PER_SEC).emission_interval_ns(), 100_000_000);
        assert_eq!(gcra(3, NS_PER_SEC).emission_interval_ns(), 333_333_333);
        assert_eq!(gcra(u64::MAX, NS_PER_SEC).emission_interval_ns(), 0);
        assert_eq!(gcra(0, NS_PER_SEC).emission_interval_ns(), u64::MAX);
    }
}
