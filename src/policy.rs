//! Policy specs: Flask-Limiter's rate strings plus ratekeeper's extensions.
//!
//! The parser turns a spec into a [`PolicySpec`] of [`Limit`]s, the
//! algorithms' vocabulary (defined with them, re-exported here); the
//! canonical text of a policy is its limits' `Display`, joined by `"; "`.

use crate::algo::UNITS;
pub use crate::algo::{Algorithm, Limit, DEFAULT_LEASE_NS, MAX_LIMITS, NS_PER_SEC};
use crate::error::ParseError;
use std::fmt;

/// A parsed policy: one or more limits, all of which must allow a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicySpec {
    /// The limits, in spec order (their index is `Decision::limit_index`).
    pub limits: Vec<Limit>,
}

/// Every accepted spelling of each unit of `UNITS`, in the same order
/// (largest first); each list holds the unit's singular and plural names.
const SPELLINGS: [&[&str]; 6] = [
    &["year", "years"],
    &["month", "months"],
    &["day", "days", "d"],
    &["hour", "hours", "h", "hr", "hrs"],
    &["minute", "minutes", "m", "min", "mins"],
    &["second", "seconds", "s", "sec", "secs"],
];

/// Algorithm names accepted before a limit: ratekeeper's own names plus
/// Flask-Limiter's strategy names.
const ALGORITHMS: [(&str, Algorithm); 8] = [
    ("gcra", Algorithm::Gcra),
    ("fixed_window", Algorithm::FixedWindow),
    ("fixed-window", Algorithm::FixedWindow),
    ("sliding_window", Algorithm::SlidingWindow),
    ("sliding-window-counter", Algorithm::SlidingWindow),
    ("sliding_log", Algorithm::SlidingLog),
    ("moving-window", Algorithm::SlidingLog),
    ("concurrency", Algorithm::Concurrency),
];

const EXPECT_LIMIT_START: &str =
    "a count (a positive integer), an algorithm (gcra, fixed_window, sliding_window, sliding_log) or 'concurrency'";
const EXPECT_COUNT: &str = "a count (a positive integer)";
const EXPECT_PER: &str = "'/' or 'per'";
const EXPECT_UNIT: &str = "a time unit (second, minute, hour, day, month, year)";
const EXPECT_BURST: &str = "a burst (a positive integer)";
const EXPECT_END: &str = "';', ',', '|' or end of input";
const EXPECT_BURST_OR_END: &str = "'burst', ';', ',', '|' or end of input";
const EXPECT_TTL_OR_END: &str = "'ttl', ';', ',', '|' or end of input";
const BURST_ONLY_GCRA: &str = "';', ',', '|' or end of input (burst is only valid for gcra)";
const EXPECT_PERIOD: &str =
    "a period of at most 18446744073 seconds (it must fit in u64 nanoseconds)";
const CONCURRENCY_ALONE: &str = "a concurrency limit cannot be combined with other limits";

/// Parses a policy spec: one or more limits separated by `;`, `,` or `|`.
///
/// Accepts Flask-Limiter's rate strings (`10/second`, `10 per second`,
/// `100/5 minutes`, `10/second;1000/hour`) plus ratekeeper's extensions: an
/// algorithm before a limit (`gcra`, `fixed_window`, `sliding_window`,
/// `sliding_log`, or Flask-Limiter's `fixed-window`,
/// `sliding-window-counter`, `moving-window`), `burst N` after a `gcra`
/// limit, and a concurrency limit, `concurrency N [ttl [M] UNIT]`, which must
/// be the policy's only limit. A policy holds at most [`MAX_LIMITS`] limits.
/// Keywords and units are case-insensitive and whitespace between tokens is
/// free. A month is 30 days and a year 360 days,
/// as in Flask-Limiter.
///
/// # Errors
///
/// A [`ParseError`] whose `position` is the byte offset of the offending
/// token (`spec.len()` at end of input), `expected` says what could have come
/// there and `found` quotes what came instead. No input makes it panic.
///
/// # Example
///
/// ```
/// use ratekeeper::policy::{parse, Algorithm, NS_PER_SEC};
///
/// let policy = parse("gcra 10/second burst 20; fixed_window 1000/hour").unwrap();
/// assert_eq!(policy.limits.len(), 2);
/// assert_eq!(policy.limits[0].burst, 20);
/// assert_eq!(policy.limits[1].algorithm, Algorithm::FixedWindow);
/// assert_eq!(policy.limits[1].period_ns, 3600 * NS_PER_SEC);
/// assert_eq!(policy.to_string(), "10/second burst 20; fixed_window 1000/hour");
///
/// let err = parse("10/secs2").unwrap_err();
/// assert_eq!(err.position, 3);
/// assert_eq!(err.found, "\"secs2\"");
/// ```
pub fn parse(spec: &str) -> Result<PolicySpec, ParseError> {
    let mut lexer = Lexer { src: spec, pos: 0 };
    let mut limits: Vec<Limit> = Vec::new();
    loop {
        let start = lexer.peek();
        if matches!(start.kind, Kind::End | Kind::Separator) {
            let expected = if limits.is_empty() && start.kind == Kind::End {
                "at least one limit"
            } else {
                "a limit (an empty item between or after separators is not allowed)"
            };
            return Err(error_at(&start, expected));
        }
        if limits.len() == MAX_LIMITS {
            return Err(error_at(
                &start,
                format!("end of input (a policy holds at most {MAX_LIMITS} limits)"),
            ));
        }
        if limits.first().is_some_and(Limit::is_concurrency) {
            return Err(error_at(
                &start,
                format!("end of input ({CONCURRENCY_ALONE})"),
            ));
        }
        let (limit, expected_next) = parse_limit(&mut lexer)?;
        if limit.is_concurrency() && !limits.is_empty() {
            return Err(error_at(
                &start,
                format!("a rate limit ({CONCURRENCY_ALONE})"),
            ));
        }
        limits.push(limit);
        let next = lexer.next();
        match next.kind {
            Kind::End => return Ok(PolicySpec { limits }),
            Kind::Separator => {}
            _ => return Err(error_at(&next, expected_next)),
        }
    }
}

/// Parses one limit; returns it with what may follow it.
fn parse_limit(lexer: &mut Lexer<'_>) -> Result<(Limit, &'static str), ParseError> {
    let first = lexer.peek();
    let algorithm = match first.kind {
        Kind::Number => Algorithm::Gcra,
        Kind::Word => {
            let found = ALGORITHMS
                .iter()
                .find(|(name, _)| first.text.eq_ignore_ascii_case(name));
            match found {
                Some(&(_, algorithm)) => {
                    lexer.next();
                    algorithm
                }
                None => return Err(error_at(&first, EXPECT_LIMIT_START)),
            }
        }
        _ => return Err(error_at(&first, EXPECT_LIMIT_START)),
    };

    if algorithm == Algorithm::Concurrency {
        let count = lexer.positive(EXPECT_COUNT, "a count")?;
        let mut period_ns = DEFAULT_LEASE_NS;
        let mut expected_next = EXPECT_TTL_OR_END;
        if lexer.peek().is_word("ttl") {
            lexer.next();
            period_ns = lexer.period()?;
            expected_next = EXPECT_END;
        }
        let limit = Limit {
            algorithm,
            count,
            period_ns,
            burst: count,
        };
        return Ok((limit, expected_next));
    }

    let count = lexer.positive(EXPECT_COUNT, "a count")?;
    let per = lexer.next();
    if !(per.kind == Kind::Slash || per.is_word("per")) {
        return Err(error_at(&per, EXPECT_PER));
    }
    let period_ns = lexer.period()?;
    let mut limit = Limit {
        algorithm,
        count,
        period_ns,
        burst: count,
    };
    let next = lexer.peek();
    if algorithm != Algorithm::Gcra {
        if next.is_word("burst") {
            return Err(error_at(&next, BURST_ONLY_GCRA));
        }
        return Ok((limit, EXPECT_END));
    }
    if next.is_word("burst") {
        lexer.next();
        limit.burst = lexer.positive(EXPECT_BURST, "a burst")?;
        return Ok((limit, EXPECT_END));
    }
    Ok((limit, EXPECT_BURST_OR_END))
}

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// ASCII digits.
    Number,
    /// A letter, `_` or a non-ASCII digit, then letters, digits, `_` and `-`
    /// (`fixed-window`, `secs2`).
    Word,
    /// `/`.
    Slash,
    /// `;`, `,` or `|`.
    Separator,
    /// Any other single character.
    Other,
    /// End of input.
    End,
}

#[derive(Debug, Clone, Copy)]
struct Token<'a> {
    kind: Kind,
    /// Byte offset of the token's first character.
    start: usize,
    text: &'a str,
}

impl Token<'_> {
    fn end(&self) -> usize {
        self.start + self.text.len()
    }

    fn is_word(&self, word: &str) -> bool {
        self.kind == Kind::Word && self.text.eq_ignore_ascii_case(word)
    }
}

/// Splits a spec into tokens, skipping (Unicode) whitespace. `pos` is
/// always on a char boundary.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    fn peek(&self) -> Token<'a> {
        let rest = &self.src[self.pos..];
        let trimmed = rest.trim_start();
        let start = self.pos + (rest.len() - trimmed.len());
        let Some(c) = trimmed.chars().next() else {
            return Token {
                kind: Kind::End,
                start,
                text: "",
            };
        };
        let run = |keep: fn(char) -> bool| trimmed.find(|c| !keep(c)).unwrap_or(trimmed.len());
        let (kind, len) = if c.is_ascii_digit() {
            (Kind::Number, run(|c| c.is_ascii_digit()))
        } else if c.is_alphanumeric() || c == '_' {
            (
                Kind::Word,
                run(|c| c.is_alphanumeric() || c == '_' || c == '-'),
            )
        } else if c == '/' {
            (Kind::Slash, 1)
        } else if matches!(c, ';' | ',' | '|') {
            (Kind::Separator, 1)
        } else {
            (Kind::Other, c.len_utf8())
        };
        Token {
            kind,
            start,
            text: &trimmed[..len],
        }
    }

    fn next(&mut self) -> Token<'a> {
        let token = self.peek();
        self.pos = token.end();
        token
    }

    /// A decimal integer of at least 1 that fits in a `u64`.
    fn positive(&mut self, expected: &str, noun: &str) -> Result<u64, ParseError> {
        let token = self.next();
        if token.kind != Kind::Number {
            return Err(error_at(&token, expected));
        }
        match token.text.parse::<u64>() {
            Ok(0) => Err(error_at(&token, format!("{noun} of at least 1"))),
            Ok(n) => Ok(n),
            Err(_) => Err(error_at(&token, format!("{noun} of at most {}", u64::MAX))),
        }
    }

    /// `[MULTIPLIER] UNIT`, in nanoseconds.
    fn period(&mut self) -> Result<u64, ParseError> {
        let first = self.peek();
        let multiplier = if first.kind == Kind::Number {
            self.next();
            match first.text.parse::<u64>() {
                Ok(0) => return Err(error_at(&first, "a multiplier of at least 1")),
                Ok(n) => Some((n, first)),
                // More digits than fit in a u64: too long a period, whatever the unit.
                Err(_) => return Err(error_at(&first, EXPECT_PERIOD)),
            }
        } else {
            None
        };
        let unit = self.next();
        let unit_ns = match unit.kind {
            Kind::Word => UNITS
                .iter()
                .zip(SPELLINGS)
                .find(|(_, spellings)| spellings.iter().any(|s| unit.text.eq_ignore_ascii_case(s)))
                .map(|(u, _)| u.ns),
            _ => None,
        };
        let Some(unit_ns) = unit_ns else {
            return Err(error_at(&unit, EXPECT_UNIT));
        };
        match multiplier {
            None => Ok(unit_ns),
            Some((n, first)) => n.checked_mul(unit_ns).ok_or_else(|| ParseError {
                position: first.start,
                expected: EXPECT_PERIOD.to_string(),
                found: quote(&self.src[first.start..unit.end()]),
            }),
        }
    }
}

/// The error for an unexpected token.
fn error_at(token: &Token<'_>, expected: impl Into<String>) -> ParseError {
    ParseError {
        position: token.start,
        expected: expected.into(),
        found: if token.kind == Kind::End {
            "end of input".to_string()
        } else {
            quote(token.text)
        },
    }
}

/// Quotes (and escapes) an excerpt of the spec, cut to 32 characters.
fn quote(text: &str) -> String {
    const MAX_CHARS: usize = 32;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{:?}...", &text[..cut]),
        None => format!("{text:?}"),
    }
}

impl std::str::FromStr for PolicySpec {
    type Err = ParseError;

    /// Same as [`parse`].
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        parse(spec)
    }
}

impl PolicySpec {
    /// Whether the policy is a concurrency policy (then it has exactly one
    /// limit, of [`Algorithm::Concurrency`], if it came from [`parse`]).
    #[must_use]
    pub fn is_concurrency(&self) -> bool {
        self.limits.iter().any(Limit::is_concurrency)
    }
}

/// The canonical spec of a policy: its limits, in order, joined by `"; "`.
/// For every `p` that [`parse`] returns, `parse(&p.to_string()) == Ok(p)`.
impl fmt::Display for PolicySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, limit) in self.limits.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{limit}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every token of `spec` as (kind, start, text), up to and including End.
    fn tokens(spec: &str) -> Vec<(Kind, usize, &str)> {
        let mut lexer = Lexer { src: spec, pos: 0 };
        let mut out = Vec::new();
        loop {
            let token = lexer.next();
            out.push((token.kind, token.start, token.text));
            if token.kind == Kind::End {
                return out;
            }
        }
    }

    #[test]
    fn the_lexer_splits_numbers_words_slashes_and_separators() {
        assert_eq!(
            tokens("gcra 10/5minutes burst 20;x"),
            vec![
                (Kind::Word, 0, "gcra"),
                (Kind::Number, 5, "10"),
                (Kind::Slash, 7, "/"),
                (Kind::Number, 8, "5"),
                (Kind::Word, 9, "minutes"),
                (Kind::Word, 17, "burst"),
                (Kind::Number, 23, "20"),
                (Kind::Separator, 25, ";"),
                (Kind::Word, 26, "x"),
                (Kind::End, 27, ""),
            ]
        );
    }

    #[test]
    fn the_lexer_keeps_hyphenated_names_and_trailing_digits_in_one_word() {
        assert_eq!(
            tokens("sliding-window-counter secs2"),
            vec![
                (Kind::Word, 0, "sliding-window-counter"),
                (Kind::Word, 23, "secs2"),
                (Kind::End, 28, ""),
            ]
        );
    }

    #[test]
    fn the_lexer_makes_any_other_character_a_token_of_its_own() {
        assert_eq!(
            tokens("-1.☃"),
            vec![
                (Kind::Other, 0, "-"),
                (Kind::Number, 1, "1"),
                (Kind::Other, 2, "."),
                (Kind::Other, 3, "☃"),
                (Kind::End, 6, ""),
            ]
        );
    }

    #[test]
    fn the_lexer_counts_bytes_of_multibyte_whitespace_and_letters() {
        assert_eq!(
            tokens("\u{3000}é1 ,"),
            vec![
                (Kind::Word, 3, "é1"),
                (Kind::Separator, 7, ","),
                (Kind::End, 8, ""),
            ]
        );
    }

    #[test]
    fn no_spelling_names_two_units_or_an_algorithm_or_a_keyword() {
        let mut seen: Vec<&str> = vec!["per", "burst", "ttl"];
        seen.extend(ALGORITHMS.iter().map(|(name, _)| *name));
        for (unit, spellings) in UNITS.iter().zip(SPELLINGS) {
            assert!(spellings.contains(&unit.singular));
            assert!(spellings.contains(&unit.plural));
            for spelling in spellings {
                assert!(!seen.contains(spelling), "{spelling} is ambiguous");
                seen.push(spelling);
            }
        }
    }

    #[test]
    fn every_algorithm_name_parses_back_to_its_algorithm() {
        for algorithm in [
            Algorithm::Gcra,
            Algorithm::FixedWindow,
            Algorithm::SlidingWindow,
            Algorithm::SlidingLog,
            Algorithm::Concurrency,
        ] {
            assert!(ALGORITHMS.contains(&(algorithm.name(), algorithm)));
        }
    }

    #[test]
    fn a_period_that_is_not_whole_seconds_is_displayed_in_nanoseconds() {
        let limit = Limit {
            algorithm: Algorithm::Gcra,
            count: 3,
            period_ns: 1_500_000_000,
            burst: 3,
        };
        assert_eq!(limit.to_string(), "3/1500000000 nanoseconds");
        assert!(parse(&limit.to_string()).is_err());
    }

    #[test]
    fn a_burst_on_another_algorithm_than_gcra_is_displayed_and_rejected() {
        let limit = Limit {
            algorithm: Algorithm::FixedWindow,
            count: 3,
            period_ns: NS_PER_SEC,
            burst: 5,
        };
        assert_eq!(limit.to_string(), "fixed_window 3/second burst 5");
        assert!(parse(&limit.to_string()).is_err());
    }

    #[test]
    fn the_longest_period_that_fits_parses_and_one_second_more_does_not() {
        let max_seconds = u64::MAX / NS_PER_SEC;
        let ok = parse(&format!("1/{max_seconds} seconds")).unwrap();
        assert_eq!(ok.limits[0].period_ns, max_seconds * NS_PER_SEC);
        assert_eq!(parse(&ok.to_string()), Ok(ok));
        let err = parse(&format!("1/{} seconds", max_seconds + 1)).unwrap_err();
        assert_eq!(err.position, 2);
        assert_eq!(err.expected, EXPECT_PERIOD);
    }

    #[test]
    fn quote_escapes_and_cuts_long_excerpts_at_a_char_boundary() {
        assert_eq!(quote("secs2"), "\"secs2\"");
        assert_eq!(quote("a\"b\n"), "\"a\\\"b\\n\"");
        let long = "é".repeat(40);
        assert_eq!(quote(&long), format!("{:?}...", "é".repeat(32)));
    }

    #[test]
    fn a_policy_is_a_concurrency_policy_only_if_it_has_a_concurrency_limit() {
        assert!(parse("concurrency 3").unwrap().is_concurrency());
        assert!(!parse("3/second").unwrap().is_concurrency());
        assert!(!PolicySpec { limits: vec![] }.is_concurrency());
    }

    #[test]
    fn an_error_names_the_second_limit_when_a_concurrency_limit_comes_first() {
        let err = parse("concurrency 2; 5/minute").unwrap_err();
        assert_eq!(err.position, 15);
        assert_eq!(err.expected, format!("end of input ({CONCURRENCY_ALONE})"));
        assert_eq!(err.found, "\"5\"");
    }
}
