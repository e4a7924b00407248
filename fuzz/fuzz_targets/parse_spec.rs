//! The policy-spec parser never panics, and every spec it accepts prints
//! (`Display`) as a canonical spec that parses back to the same value. An
//! accepted spec is then added to an engine, which either takes it or
//! refuses it with an error, never a panic.
//!
//! Inputs are either raw text or a structured spec assembled from the
//! grammar's pieces (so that most inputs get past the first token).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ratekeeper::policy::parse;
use ratekeeper::{Engine, EngineOptions, Error};

#[derive(Arbitrary, Debug)]
enum Input {
    Raw(String),
    Structured(Vec<Piece>),
}

#[derive(Arbitrary, Debug)]
struct Piece {
    algorithm: Option<u8>,
    count: Number,
    per: Per,
    amount: Option<Number>,
    unit: u8,
    plural: bool,
    burst: Option<Number>,
    ttl: Option<(Number, u8)>,
    separator: u8,
    junk: Option<String>,
}

#[derive(Arbitrary, Debug)]
enum Number {
    Small(u8),
    Any(u64),
    Digits(String),
}

#[derive(Arbitrary, Debug)]
enum Per {
    Slash,
    Per,
    Spaces,
}

const ALGORITHMS: &[&str] = &[
    "gcra",
    "fixed_window",
    "sliding_window",
    "sliding_log",
    "concurrency",
    "moving-window",
    "fixed-window",
    "sliding-window-counter",
    "GCRA",
];
const UNITS: &[&str] = &[
    "second", "minute", "hour", "day", "month", "year", "sec", "s", "ms", "week", "",
];
const SEPARATORS: &[&str] = &[";", ",", " ; ", ";;", "", " "];

fn number(n: &Number) -> String {
    match n {
        Number::Small(v) => v.to_string(),
        Number::Any(v) => v.to_string(),
        Number::Digits(s) => s.chars().filter(|c| c.is_ascii_digit()).take(40).collect(),
    }
}

fn render(pieces: &[Piece]) -> String {
    let mut s = String::new();
    for (i, p) in pieces.iter().enumerate().take(20) {
        if i > 0 {
            s += SEPARATORS[p.separator as usize % SEPARATORS.len()];
        }
        if let Some(a) = p.algorithm {
            s += ALGORITHMS[a as usize % ALGORITHMS.len()];
            s += " ";
        }
        s += &number(&p.count);
        s += match p.per {
            Per::Slash => "/",
            Per::Per => " per ",
            Per::Spaces => " ",
        };
        if let Some(a) = &p.amount {
            s += &number(a);
            s += " ";
        }
        s += UNITS[p.unit as usize % UNITS.len()];
        if p.plural {
            s += "s";
        }
        if let Some(b) = &p.burst {
            s += " burst ";
            s += &number(b);
        }
        if let Some((n, u)) = &p.ttl {
            s += " ttl ";
            s += &number(n);
            s += " ";
            s += UNITS[*u as usize % UNITS.len()];
        }
        if let Some(j) = &p.junk {
            s += j;
        }
    }
    s
}

fuzz_target!(|input: Input| {
    let text = match &input {
        Input::Raw(s) => s.clone(),
        Input::Structured(pieces) => render(pieces),
    };
    let Ok(spec) = parse(&text) else { return };
    let canonical = spec.to_string();
    assert_eq!(
        parse(&canonical).as_ref(),
        Ok(&spec),
        "{text:?} printed as {canonical:?}"
    );
    assert_eq!(
        parse(&canonical).unwrap().to_string(),
        canonical,
        "canonical is a fixed point"
    );

    let engine = Engine::new(EngineOptions {
        capacity: 1,
        ..Default::default()
    })
    .expect("engine");
    match engine.add_policy("p", &text) {
        Ok(id) => assert_eq!(engine.policy_spec(id).unwrap(), &spec),
        Err(Error::Unsupported(_) | Error::OutOfMemory(_)) => {}
        Err(e) => panic!("{text:?} parsed but was refused with {e:?}"),
    }
});
