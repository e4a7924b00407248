//! Policy spec parsing: every form the README's "Policies" section names, exact field values, error
//! positions and messages, and round trips through `Display`.

use proptest::prelude::*;
use ratekeeper::policy::{
    parse, Algorithm, Limit, PolicySpec, DEFAULT_LEASE_NS, MAX_LIMITS, NS_PER_SEC,
};

const SECOND: u64 = NS_PER_SEC;
const MINUTE: u64 = 60 * SECOND;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

const EXPECT_UNIT: &str = "a time unit (second, minute, hour, day, month, year)";
const EXPECT_END: &str = "';', ',', '|' or end of input";

fn rate(algorithm: Algorithm, count: u64, period_ns: u64, burst: u64) -> Limit {
    Limit {
        algorithm,
        count,
        period_ns,
        burst,
    }
}

fn gcra(count: u64, period_ns: u64) -> Limit {
    rate(Algorithm::Gcra, count, period_ns, count)
}

fn limits(spec: &str) -> Vec<Limit> {
    match parse(spec) {
        Ok(policy) => policy.limits,
        Err(e) => panic!("{spec:?} should parse but: {e}"),
    }
}

/// Parses `spec`, which must fail, and returns (position, expected, found).
fn error(spec: &str) -> (usize, String, String) {
    match parse(spec) {
        Ok(policy) => panic!("{spec:?} should not parse, but gave {policy:?}"),
        Err(e) => {
            assert!(e.position <= spec.len(), "{spec:?}: {e:?}");
            assert!(spec.is_char_boundary(e.position), "{spec:?}: {e:?}");
            (e.position, e.expected, e.found)
        }
    }
}

// ---------------------------------------------------------------- valid forms

#[test]
fn ten_slash_second_is_a_gcra_limit_of_ten_per_second_with_a_burst_of_ten() {
    assert_eq!(limits("10/second"), vec![gcra(10, SECOND)]);
    let limit = limits("10/second")[0];
    assert_eq!(limit.algorithm, Algorithm::Gcra);
    assert_eq!(limit.count, 10);
    assert_eq!(limit.period_ns, 1_000_000_000);
    assert_eq!(limit.burst, 10);
}

#[test]
fn ten_per_second_in_words_is_the_same_as_with_a_slash() {
    assert_eq!(limits("10 per second"), vec![gcra(10, SECOND)]);
    assert_eq!(limits("10 PER Second"), vec![gcra(10, SECOND)]);
}

#[test]
fn whitespace_around_every_token_is_tolerated() {
    for spec in [
        "10/ second",
        "10 /second",
        "10 / second",
        "  10/second  ",
        "\t10\n/\r\nsecond\t",
        "\u{3000}10/second\u{00a0}",
    ] {
        assert_eq!(limits(spec), vec![gcra(10, SECOND)], "{spec:?}");
    }
}

#[test]
fn a_multiplier_before_the_unit_multiplies_the_period() {
    for spec in [
        "100/5 minutes",
        "100 per 5 minutes",
        "100/5minutes",
        "100 / 5 minute",
    ] {
        assert_eq!(limits(spec), vec![gcra(100, 5 * MINUTE)], "{spec:?}");
    }
}

#[test]
fn semicolon_comma_and_pipe_all_separate_limits() {
    let expected = vec![gcra(10, SECOND), gcra(1000, HOUR)];
    assert_eq!(limits("10/second;1000/hour"), expected);
    assert_eq!(limits("10/second, 1000/hour"), expected);
    assert_eq!(limits("10/second | 1000/hour"), expected);
    assert_eq!(
        limits("10/second|5/minute"),
        vec![gcra(10, SECOND), gcra(5, MINUTE)]
    );
    assert_eq!(
        limits("1/second; 2/minute, 3/hour | 4/day"),
        vec![
            gcra(1, SECOND),
            gcra(2, MINUTE),
            gcra(3, HOUR),
            gcra(4, DAY)
        ]
    );
}

#[test]
fn a_gcra_limit_with_a_burst_and_a_fixed_window_limit_parse_together() {
    assert_eq!(
        limits("gcra 10/second burst 20; fixed_window 1000/hour"),
        vec![
            rate(Algorithm::Gcra, 10, SECOND, 20),
            rate(Algorithm::FixedWindow, 1000, HOUR, 1000),
        ]
    );
}

#[test]
fn a_burst_is_allowed_after_a_gcra_limit_that_does_not_name_its_algorithm() {
    assert_eq!(
        limits("10/second burst 20"),
        vec![rate(Algorithm::Gcra, 10, SECOND, 20)]
    );
    assert_eq!(
        limits("100/minute burst 1"),
        vec![rate(Algorithm::Gcra, 100, MINUTE, 1)]
    );
}

#[test]
fn sliding_log_three_per_ten_seconds_keeps_three_timestamps_over_ten_seconds() {
    assert_eq!(
        limits("sliding_log 3/10 seconds"),
        vec![rate(Algorithm::SlidingLog, 3, 10 * SECOND, 3)]
    );
}

#[test]
fn sliding_window_one_hundred_per_minute_parses() {
    assert_eq!(
        limits("sliding_window 100/minute"),
        vec![rate(Algorithm::SlidingWindow, 100, MINUTE, 100)]
    );
}

#[test]
fn fixed_window_one_thousand_per_hour_parses() {
    assert_eq!(
        limits("fixed_window 1000/hour"),
        vec![rate(Algorithm::FixedWindow, 1000, HOUR, 1000)]
    );
}

#[test]
fn flask_limiter_strategy_names_select_the_same_algorithms() {
    for (name, algorithm) in [
        ("gcra", Algorithm::Gcra),
        ("fixed_window", Algorithm::FixedWindow),
        ("fixed-window", Algorithm::FixedWindow),
        ("sliding_window", Algorithm::SlidingWindow),
        ("sliding-window-counter", Algorithm::SlidingWindow),
        ("sliding_log", Algorithm::SlidingLog),
        ("moving-window", Algorithm::SlidingLog),
    ] {
        let spec = format!("{name} 5/minute");
        assert_eq!(
            limits(&spec),
            vec![rate(algorithm, 5, MINUTE, 5)],
            "{spec:?}"
        );
    }
}

#[test]
fn concurrency_four_allows_four_permits_with_the_default_lease() {
    assert_eq!(
        limits("concurrency 4"),
        vec![rate(Algorithm::Concurrency, 4, DEFAULT_LEASE_NS, 4)]
    );
    assert!(parse("concurrency 4").unwrap().is_concurrency());
}

#[test]
fn a_concurrency_ttl_becomes_the_lease_period() {
    assert_eq!(
        limits("concurrency 4 ttl 30 seconds"),
        vec![rate(Algorithm::Concurrency, 4, 30 * SECOND, 4)]
    );
    assert_eq!(
        limits("concurrency 2 ttl 5 minutes"),
        vec![rate(Algorithm::Concurrency, 2, 5 * MINUTE, 2)]
    );
    assert_eq!(
        limits("CONCURRENCY 2 TTL hour"),
        vec![rate(Algorithm::Concurrency, 2, HOUR, 2)]
    );
}

#[test]
fn a_month_is_thirty_days_and_a_year_is_three_hundred_sixty_days() {
    assert_eq!(limits("1/month"), vec![gcra(1, 30 * DAY)]);
    assert_eq!(limits("1/year"), vec![gcra(1, 360 * DAY)]);
    assert_eq!(limits("1/month")[0].period_ns, 2_592_000 * NS_PER_SEC);
    assert_eq!(limits("1/year")[0].period_ns, 31_104_000 * NS_PER_SEC);
}

#[test]
fn every_unit_spelling_means_its_unit() {
    let table: [(&[&str], u64); 6] = [
        (&["second", "seconds", "s", "sec", "secs"], SECOND),
        (&["minute", "minutes", "m", "min", "mins"], MINUTE),
        (&["hour", "hours", "h", "hr", "hrs"], HOUR),
        (&["day", "days", "d"], DAY),
        (&["month", "months"], 30 * DAY),
        (&["year", "years"], 360 * DAY),
    ];
    for (spellings, ns) in table {
        for spelling in spellings {
            for spec in [
                format!("7/{spelling}"),
                format!("7/3 {spelling}"),
                format!("7 per {}", spelling.to_uppercase()),
            ] {
                let multiplier = if spec.contains('3') { 3 } else { 1 };
                assert_eq!(limits(&spec), vec![gcra(7, multiplier * ns)], "{spec:?}");
            }
        }
    }
}

#[test]
fn keywords_algorithms_and_units_are_case_insensitive() {
    assert_eq!(
        limits("GCRA 10 Per SECOND Burst 20; Fixed_Window 5/Minutes"),
        vec![
            rate(Algorithm::Gcra, 10, SECOND, 20),
            rate(Algorithm::FixedWindow, 5, MINUTE, 5),
        ]
    );
    assert_eq!(
        limits("Moving-Window 3/HRS"),
        vec![rate(Algorithm::SlidingLog, 3, HOUR, 3)]
    );
}

#[test]
fn leading_zeros_are_ignored_and_the_largest_count_is_accepted() {
    assert_eq!(limits("010/002 seconds"), vec![gcra(10, 2 * SECOND)]);
    assert_eq!(
        limits("18446744073709551615/second"),
        vec![gcra(u64::MAX, SECOND)]
    );
    assert_eq!(
        limits("1/18446744073 seconds"),
        vec![gcra(1, 18_446_744_073 * SECOND)]
    );
}

#[test]
fn sixteen_limits_are_allowed_in_one_policy() {
    let spec = vec!["1/second"; MAX_LIMITS].join(";");
    assert_eq!(limits(&spec).len(), 16);
}

#[test]
fn from_str_is_the_same_as_parse() {
    let policy: PolicySpec = "10/second; 1000/hour".parse().unwrap();
    assert_eq!(Ok(policy), parse("10/second;1000/hour"));
    let err = "10/parsec".parse::<PolicySpec>().unwrap_err();
    assert_eq!(Err(err), parse("10/parsec"));
}

// ------------------------------------------------------------------- helpers

#[test]
fn the_emission_interval_is_the_period_divided_by_the_count_rounded_down() {
    assert_eq!(limits("10/second")[0].emission_interval_ns(), 100_000_000);
    assert_eq!(limits("3/second")[0].emission_interval_ns(), 333_333_333);
    assert_eq!(
        limits("100/5 minutes")[0].emission_interval_ns(),
        3 * SECOND
    );
}

#[test]
fn only_a_policy_with_a_concurrency_limit_is_a_concurrency_policy() {
    assert!(parse("concurrency 1").unwrap().is_concurrency());
    assert!(!parse("10/second; sliding_log 5/minute")
        .unwrap()
        .is_concurrency());
}

// ------------------------------------------------------------------- display

#[test]
fn display_picks_the_largest_unit_that_divides_the_period() {
    for (spec, shown) in [
        ("5/60 seconds", "5/minute"),
        ("5/120 minutes", "5/2 hours"),
        ("5/24 hours", "5/day"),
        ("5/30 days", "5/month"),
        ("5/12 months", "5/year"),
        ("5/360 days", "5/year"),
        ("5/90 seconds", "5/90 seconds"),
        ("5/7 days", "5/7 days"),
        ("5/720 days", "5/2 years"),
        ("5/1 second", "5/second"),
    ] {
        assert_eq!(parse(spec).unwrap().to_string(), shown, "{spec:?}");
    }
}

#[test]
fn display_names_every_algorithm_but_gcra_and_a_burst_only_when_it_differs() {
    for (spec, shown) in [
        ("gcra 10/second", "10/second"),
        ("gcra 10/second burst 10", "10/second"),
        ("10 per second burst 20", "10/second burst 20"),
        ("fixed-window 1000 per hour", "fixed_window 1000/hour"),
        (
            "sliding-window-counter 100/minute",
            "sliding_window 100/minute",
        ),
        ("moving-window 3/10s", "sliding_log 3/10 seconds"),
        (
            "gcra 10/second burst 20; fixed_window 1000/hour",
            "10/second burst 20; fixed_window 1000/hour",
        ),
        ("10/second,1000/hour|1/day", "10/second; 1000/hour; 1/day"),
    ] {
        assert_eq!(parse(spec).unwrap().to_string(), shown, "{spec:?}");
    }
}

#[test]
fn display_shows_a_concurrency_ttl_only_when_it_is_not_the_default() {
    assert_eq!(parse("concurrency 4").unwrap().to_string(), "concurrency 4");
    assert_eq!(
        parse("concurrency 4 ttl 60 seconds").unwrap().to_string(),
        "concurrency 4"
    );
    assert_eq!(
        parse("concurrency 4 ttl 30 seconds").unwrap().to_string(),
        "concurrency 4 ttl 30 seconds"
    );
    assert_eq!(
        parse("concurrency 2 ttl 1 hour").unwrap().to_string(),
        "concurrency 2 ttl hour"
    );
}

#[test]
fn every_design_example_survives_a_round_trip_through_display() {
    for spec in [
        "10/second",
        "10 per second",
        "100/5 minutes",
        "10/second;1000/hour",
        "10/second, 1000/hour",
        "gcra 10/second burst 20; fixed_window 1000/hour",
        "sliding_log 3/10 seconds",
        "sliding_window 100/minute",
        "concurrency 4",
        "10/second|5/minute",
        "1/month",
        "1/year",
        "5/minute;20/hour",
        "concurrency 2 ttl 5 minutes",
    ] {
        let policy = parse(spec).unwrap();
        assert_eq!(parse(&policy.to_string()), Ok(policy), "{spec:?}");
    }
}

// -------------------------------------------------------------------- errors

#[test]
fn an_empty_or_blank_spec_is_an_error_asking_for_at_least_one_limit() {
    let (pos, expected, found) = error("");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (0, "at least one limit", "end of input")
    );
    let (pos, expected, found) = error("  \t ");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (4, "at least one limit", "end of input")
    );
}

#[test]
fn a_typo_in_the_unit_is_an_error_at_the_unit_that_quotes_it() {
    let (pos, expected, found) = error("10/secs2");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (3, EXPECT_UNIT, "\"secs2\"")
    );
    let (pos, expected, found) = error("10/second; 5/minuets");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (13, EXPECT_UNIT, "\"minuets\"")
    );
    // Milliseconds are not a unit: periods are whole seconds.
    assert_eq!(error("10/500 ms").0, 7);
}

#[test]
fn a_missing_unit_at_the_end_is_an_error_at_end_of_input() {
    let (pos, expected, found) = error("10/");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (3, EXPECT_UNIT, "end of input")
    );
    let (pos, expected, _) = error("10/5");
    assert_eq!((pos, expected.as_str()), (4, EXPECT_UNIT));
}

#[test]
fn a_missing_count_is_an_error_at_what_came_instead() {
    let (pos, expected, found) = error("/second");
    assert_eq!(pos, 0);
    assert!(
        expected.starts_with("a count (a positive integer)"),
        "{expected}"
    );
    assert_eq!(found, "\"/\"");
    let (pos, expected, found) = error("gcra /second");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (5, "a count (a positive integer)", "\"/\"")
    );
    let (pos, expected, found) = error("per second");
    assert_eq!((pos, found.as_str()), (0, "\"per\""));
    assert!(expected.contains("an algorithm"), "{expected}");
}

#[test]
fn a_missing_slash_or_per_is_an_error_at_the_unit() {
    let (pos, expected, found) = error("10 second");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (3, "'/' or 'per'", "\"second\"")
    );
    let (pos, expected, found) = error("10");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (2, "'/' or 'per'", "end of input")
    );
}

#[test]
fn a_zero_count_multiplier_burst_or_permit_count_is_an_error() {
    let (pos, expected, found) = error("0/second");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (0, "a count of at least 1", "\"0\"")
    );
    let (pos, expected, _) = error("10/0 seconds");
    assert_eq!((pos, expected.as_str()), (3, "a multiplier of at least 1"));
    let (pos, expected, _) = error("10/second burst 000");
    assert_eq!((pos, expected.as_str()), (16, "a burst of at least 1"));
    let (pos, expected, _) = error("concurrency 0");
    assert_eq!((pos, expected.as_str()), (12, "a count of at least 1"));
}

#[test]
fn a_count_too_large_for_u64_is_an_error_at_the_count() {
    let (pos, expected, found) = error("18446744073709551616/second");
    assert_eq!(pos, 0);
    assert_eq!(expected, "a count of at most 18446744073709551615");
    assert_eq!(found, "\"18446744073709551616\"");
    let (pos, expected, _) = error("10/second burst 99999999999999999999");
    assert_eq!(
        (pos, expected.as_str()),
        (16, "a burst of at most 18446744073709551615")
    );
}

#[test]
fn a_period_too_long_for_u64_nanoseconds_is_an_error_at_the_multiplier() {
    let (pos, expected, found) = error("1/18446744074 seconds");
    assert_eq!(pos, 2);
    assert!(
        expected.starts_with("a period of at most 18446744073 seconds"),
        "{expected}"
    );
    assert_eq!(found, "\"18446744074 seconds\"");
    assert_eq!(error("1/600 years").0, 2);
    assert_eq!(error("concurrency 1 ttl 99999999999999999999999 s").0, 18);
}

#[test]
fn burst_on_fixed_window_is_an_error_at_the_burst_keyword() {
    let (pos, expected, found) = error("fixed_window 10/second burst 20");
    assert_eq!(pos, 23);
    assert!(
        expected.contains("burst is only valid for gcra"),
        "{expected}"
    );
    assert_eq!(found, "\"burst\"");
    for spec in [
        "sliding_window 10/second burst 20",
        "sliding_log 10/second burst 20",
        "10/second; moving-window 1/day BURST 2",
    ] {
        let (pos, expected, _) = error(spec);
        assert_eq!(pos, spec.to_lowercase().find("burst").unwrap(), "{spec:?}");
        assert!(
            expected.contains("burst is only valid for gcra"),
            "{spec:?}"
        );
    }
}

#[test]
fn a_burst_without_a_size_is_an_error_after_the_keyword() {
    let (pos, expected, found) = error("10/second burst");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (15, "a burst (a positive integer)", "end of input")
    );
}

#[test]
fn a_concurrency_limit_combined_with_another_limit_is_an_error_at_the_second_limit() {
    for (spec, pos) in [
        ("concurrency 4; 10/second", 15),
        ("10/second; concurrency 4", 11),
        ("concurrency 4, concurrency 2", 15),
        ("1/second|1/minute|concurrency 2", 18),
    ] {
        let (at, expected, _) = error(spec);
        assert_eq!(at, pos, "{spec:?}");
        assert!(
            expected.contains("a concurrency limit cannot be combined with other limits"),
            "{spec:?}: {expected}"
        );
    }
}

#[test]
fn a_trailing_separator_is_an_error_at_end_of_input() {
    let (pos, expected, found) = error("10/second;");
    assert_eq!((pos, found.as_str()), (10, "end of input"));
    assert!(expected.starts_with("a limit"), "{expected}");
    assert_eq!(error("10/second, ").0, 11);
    assert_eq!(error("concurrency 4 |").0, 15);
}

#[test]
fn an_empty_item_between_separators_is_an_error_at_the_second_separator() {
    let (pos, expected, found) = error("10/second;;5/minute");
    assert_eq!((pos, found.as_str()), (10, "\";\""));
    assert!(expected.starts_with("a limit"), "{expected}");
    assert_eq!(error("10/second; ,5/minute").0, 11);
    assert_eq!(error(";10/second").0, 0);
}

#[test]
fn garbage_after_a_limit_is_an_error_at_the_garbage() {
    let (pos, expected, found) = error("10/second garbage");
    assert_eq!((pos, found.as_str()), (10, "\"garbage\""));
    assert_eq!(expected, "'burst', ';', ',', '|' or end of input");
    let (pos, expected, _) = error("fixed_window 10/second 5");
    assert_eq!((pos, expected.as_str()), (23, EXPECT_END));
    let (pos, expected, _) = error("10/second burst 20 burst 30");
    assert_eq!((pos, expected.as_str()), (19, EXPECT_END));
    let (pos, expected, _) = error("concurrency 4 permits");
    assert_eq!(
        (pos, expected.as_str()),
        (14, "'ttl', ';', ',', '|' or end of input")
    );
    let (pos, expected, _) = error("concurrency 4 ttl 5 seconds more");
    assert_eq!((pos, expected.as_str()), (28, EXPECT_END));
}

#[test]
fn a_ttl_on_a_rate_limit_or_a_burst_on_a_concurrency_limit_is_an_error() {
    assert_eq!(error("10/second ttl 5 seconds").0, 10);
    assert_eq!(error("concurrency 4 burst 8").0, 14);
    assert_eq!(error("concurrency 4/second").0, 13);
}

#[test]
fn an_unknown_algorithm_is_an_error_at_its_name() {
    for spec in [
        "token_bucket 10/second",
        "sliding-window 10/second",
        "leaky 1/s",
    ] {
        let (pos, expected, _) = error(spec);
        assert_eq!(pos, 0, "{spec:?}");
        assert!(
            expected.contains("an algorithm (gcra, fixed_window"),
            "{expected}"
        );
    }
}

#[test]
fn signs_decimals_and_digit_separators_are_errors_at_the_stray_character() {
    assert_eq!(
        error("-5/second"),
        (0, error("-5/second").1, "\"-\"".into())
    );
    assert_eq!(error("+5/second").0, 0);
    let (pos, expected, found) = error("1.5/second");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (1, "'/' or 'per'", "\".\"")
    );
    let (pos, _, found) = error("1_000/second");
    assert_eq!((pos, found.as_str()), (1, "\"_000\""));
    assert_eq!(error("10/1.5 hours").0, 4);
}

#[test]
fn a_seventeenth_limit_is_an_error_at_its_start() {
    let spec = vec!["1/second"; MAX_LIMITS + 1].join(";");
    let (pos, expected, _) = error(&spec);
    assert_eq!(pos, 16 * "1/second;".len());
    assert!(expected.contains("at most 16 limits"), "{expected}");
}

#[test]
fn non_ascii_input_is_an_error_at_a_byte_offset_on_a_char_boundary() {
    let (pos, expected, found) = error("10/sécond");
    assert_eq!(
        (pos, expected.as_str(), found.as_str()),
        (3, EXPECT_UNIT, "\"sécond\"")
    );
    // U+FF11 U+FF10: fullwidth digits are not a count.
    let (pos, _, found) = error("１０/second");
    assert_eq!((pos, found.as_str()), (0, "\"１０\""));
    // A fullwidth semicolon is not a separator.
    let (pos, _, found) = error("10/second；5/minute");
    assert_eq!((pos, found.as_str()), (9, "\"；\""));
    let (pos, _, found) = error("10/second ☃");
    assert_eq!((pos, found.as_str()), (10, "\"☃\""));
    // After multi-byte whitespace the offset counts bytes, not chars.
    let (pos, _, _) = error("\u{3000}\u{3000}10/fortnight");
    assert_eq!(pos, 3 + 3 + 3);
    let (pos, _, found) = error("10/second\u{0}");
    assert_eq!((pos, found.as_str()), (9, "\"\\0\""));
}

#[test]
fn a_long_offending_token_is_quoted_only_in_part() {
    let spec = format!("10/{}", "x".repeat(1000));
    let (pos, _, found) = error(&spec);
    assert_eq!(pos, 3);
    assert!(found.len() < 50, "{found}");
    assert!(
        found.starts_with("\"xxxx") && found.ends_with("..."),
        "{found}"
    );
}

#[test]
fn the_error_message_names_the_position_what_was_expected_and_what_was_found() {
    let err = parse("10/secs2").unwrap_err();
    assert_eq!(
        err.to_string(),
        "at byte 3: expected a time unit (second, minute, hour, day, month, year), found \"secs2\""
    );
}

// ---------------------------------------------------------------- properties

const RATE_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Gcra,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
    Algorithm::SlidingLog,
];

const UNIT_NS: [u64; 6] = [SECOND, MINUTE, HOUR, DAY, 30 * DAY, 360 * DAY];

/// Folds a multiplier into the range whose period fits in u64 nanoseconds
/// (at most 593 years of 360 days).
fn fit_multiplier(m: u64, unit_ns: u64) -> u64 {
    1 + (m - 1) % (u64::MAX / unit_ns)
}

fn period() -> impl Strategy<Value = u64> {
    (1u64..=1000, prop::sample::select(UNIT_NS.to_vec()))
        .prop_map(|(m, unit)| fit_multiplier(m, unit) * unit)
}

fn rate_limit() -> impl Strategy<Value = Limit> {
    (
        prop::sample::select(RATE_ALGORITHMS.to_vec()),
        1u64..=1_000_000,
        period(),
        prop::option::of(1u64..=1_000_000),
    )
        .prop_map(|(algorithm, count, period_ns, burst)| Limit {
            algorithm,
            count,
            period_ns,
            burst: match (algorithm, burst) {
                (Algorithm::Gcra, Some(burst)) => burst,
                _ => count,
            },
        })
}

fn concurrency_limit() -> impl Strategy<Value = Limit> {
    (1u64..=1_000_000, prop::option::of(period())).prop_map(|(count, ttl)| Limit {
        algorithm: Algorithm::Concurrency,
        count,
        period_ns: ttl.unwrap_or(DEFAULT_LEASE_NS),
        burst: count,
    })
}

fn policy() -> impl Strategy<Value = PolicySpec> {
    prop_oneof![
        prop::collection::vec(rate_limit(), 1..=4).prop_map(|limits| PolicySpec { limits }),
        concurrency_limit().prop_map(|limit| PolicySpec {
            limits: vec![limit]
        }),
    ]
}

/// Whitespace that may be empty, and whitespace that must not be.
fn optional_space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "  ", "\t", "\n"])
}

fn required_space() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![" ", "  ", "\t", " \r\n "])
}

/// Randomly upper-cases ASCII letters.
fn shuffle_case(text: &str, mask: u64) -> String {
    text.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

const UNIT_SPELLINGS: [&[&str]; 6] = [
    &["second", "seconds", "s", "sec", "secs"],
    &["minute", "minutes", "m", "min", "mins"],
    &["hour", "hours", "h", "hr", "hrs"],
    &["day", "days", "d"],
    &["month", "months"],
    &["year", "years"],
];

fn algorithm_spellings(algorithm: Algorithm) -> &'static [&'static str] {
    match algorithm {
        Algorithm::Gcra => &["", "gcra"],
        Algorithm::FixedWindow => &["fixed_window", "fixed-window"],
        Algorithm::SlidingWindow => &["sliding_window", "sliding-window-counter"],
        Algorithm::SlidingLog => &["sliding_log", "moving-window"],
        Algorithm::Concurrency => &["concurrency"],
    }
}

/// `[MULTIPLIER] UNIT` in some spelling, and its length in nanoseconds.
fn period_text() -> impl Strategy<Value = (String, u64)> {
    (
        1u64..=1000,
        0..UNIT_NS.len(),
        any::<prop::sample::Index>(),
        any::<bool>(),
        optional_space(),
        any::<u64>(),
    )
        .prop_map(|(m, unit, spelling, omit_one, space, mask)| {
            let m = fit_multiplier(m, UNIT_NS[unit]);
            let spelling: &str = spelling.get::<&str>(UNIT_SPELLINGS[unit]);
            let spelled = shuffle_case(spelling, mask);
            let text = if m == 1 && omit_one {
                spelled
            } else {
                format!("{m}{space}{spelled}")
            };
            (text, m * UNIT_NS[unit])
        })
}

/// A rate limit written in some spelling, and its value.
fn rate_limit_text() -> impl Strategy<Value = (String, Limit)> {
    (
        prop::sample::select(RATE_ALGORITHMS.to_vec()),
        any::<prop::sample::Index>(),
        1u64..=1_000_000,
        0usize..3,
        any::<bool>(),
        period_text(),
        prop::option::of(1u64..=1_000_000),
        (
            required_space(),
            optional_space(),
            required_space(),
            any::<u64>(),
        ),
    )
        .prop_map(
            |(
                algorithm,
                spelling,
                count,
                zeros,
                slash,
                (period, period_ns),
                burst,
                (ws, ows, ws2, mask),
            )| {
                let name = *spelling.get(algorithm_spellings(algorithm));
                let mut text = String::new();
                if !name.is_empty() {
                    text.push_str(&shuffle_case(name, mask));
                    text.push_str(ws);
                }
                text.push_str(&"0".repeat(zeros));
                text.push_str(&count.to_string());
                if slash {
                    text.push_str(&format!("{ows}/{ows}"));
                } else {
                    text.push_str(&format!("{ows}{}{ws}", shuffle_case("per", mask >> 7)));
                }
                text.push_str(&period);
                let mut limit = Limit {
                    algorithm,
                    count,
                    period_ns,
                    burst: count,
                };
                if let (Algorithm::Gcra, Some(burst)) = (algorithm, burst) {
                    text.push_str(&format!(
                        "{ws}{}{ws2}{burst}",
                        shuffle_case("burst", mask >> 13)
                    ));
                    limit.burst = burst;
                }
                (text, limit)
            },
        )
}

/// A policy written in some spelling, and its value.
fn policy_text() -> impl Strategy<Value = (String, PolicySpec)> {
    let rates = prop::collection::vec(
        (
            rate_limit_text(),
            prop::sample::select(vec![";", ",", "|"]),
            optional_space(),
        ),
        1..=MAX_LIMITS,
    )
    .prop_map(|items| {
        let mut text = String::new();
        let mut limits = Vec::new();
        for (i, ((limit_text, limit), separator, space)) in items.into_iter().enumerate() {
            if i > 0 {
                text.push_str(&format!("{space}{separator}{space}"));
            }
            text.push_str(&limit_text);
            limits.push(limit);
        }
        (text, PolicySpec { limits })
    });
    let concurrency = (
        1u64..=1_000_000,
        prop::option::of(period_text()),
        required_space(),
        any::<u64>(),
    )
        .prop_map(|(count, ttl, ws, mask)| {
            let mut text = format!("{}{ws}{count}", shuffle_case("concurrency", mask));
            let mut period_ns = DEFAULT_LEASE_NS;
            if let Some((ttl, ns)) = ttl {
                text.push_str(&format!("{ws}{}{ws}{ttl}", shuffle_case("ttl", mask >> 11)));
                period_ns = ns;
            }
            let limit = Limit {
                algorithm: Algorithm::Concurrency,
                count,
                period_ns,
                burst: count,
            };
            (
                text,
                PolicySpec {
                    limits: vec![limit],
                },
            )
        });
    (
        prop_oneof![rates, concurrency],
        optional_space(),
        optional_space(),
    )
        .prop_map(|((text, policy), lead, trail)| (format!("{lead}{text}{trail}"), policy))
}

/// Tokens of the grammar (and near misses), to be shuffled into specs.
const TOKENS: &[&str] = &[
    "10",
    "1",
    "0",
    "5",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999",
    "/",
    "per",
    "second",
    "seconds",
    "s",
    "minute",
    "m",
    "hour",
    "day",
    "month",
    "year",
    "years",
    "ms",
    "gcra",
    "fixed_window",
    "fixed-window",
    "sliding_window",
    "sliding-window-counter",
    "sliding_log",
    "moving-window",
    "concurrency",
    "ttl",
    "burst",
    ";",
    ",",
    "|",
    " ",
    "\t",
    "-",
    ".",
    "_",
    "é",
    "☃",
    "\u{3000}",
    "１",
    "\u{301}",
    "\u{0}",
];

/// Parses `spec` and checks that the outcome is sound: a policy that
/// round-trips, or an error on a char boundary inside the spec.
fn assert_well_formed(spec: &str) {
    let result = parse(spec);
    match &result {
        Ok(policy) => {
            assert!(!policy.limits.is_empty() && policy.limits.len() <= MAX_LIMITS);
            assert_eq!(parse(&policy.to_string()), result, "{spec:?}");
        }
        Err(e) => {
            assert!(e.position <= spec.len(), "{spec:?}: {e:?}");
            assert!(spec.is_char_boundary(e.position), "{spec:?}: {e:?}");
            assert!(
                !e.expected.is_empty() && !e.found.is_empty(),
                "{spec:?}: {e:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_policy_parses_back_from_its_display(policy in policy()) {
        let text = policy.to_string();
        prop_assert_eq!(parse(&text), Ok(policy), "{}", text);
    }

    #[test]
    fn every_spelling_of_a_policy_parses_to_that_policy((text, policy) in policy_text()) {
        prop_assert_eq!(parse(&text), Ok(policy.clone()), "{:?}", text);
        prop_assert_eq!(parse(&policy.to_string()), Ok(policy));
    }

    #[test]
    fn parse_never_panics_on_arbitrary_strings(spec in any::<String>()) {
        assert_well_formed(&spec);
    }

    #[test]
    fn parse_never_panics_on_printable_text(spec in "\\PC{0,64}") {
        assert_well_formed(&spec);
    }

    #[test]
    fn parse_never_panics_on_shuffled_grammar_tokens(
        tokens in prop::collection::vec(prop::sample::select(TOKENS.to_vec()), 0..24),
        spaces in prop::collection::vec(any::<bool>(), 24),
    ) {
        let mut spec = String::new();
        for (token, space) in tokens.iter().zip(&spaces) {
            spec.push_str(token);
            if *space {
                spec.push(' ');
            }
        }
        assert_well_formed(&spec);
    }
}
