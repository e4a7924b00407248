//! The Redis script (`src/redis/ratekeeper.lua`) call by call against the
//! in-process engine: `EVALSHA` with the layout of `src/redis/PROTOCOL.md`,
//! through the `redis` crate directly (not through `Engine::open_redis`),
//! with explicit times, on a real `redis-server` (tests/support/redis_server.rs).
//!
//! Proptest drives random traces (every algorithm alone, composites, several
//! items in one check, penalty boxes, overrides, concurrency leases; costs
//! of 0, 1, a few, beyond every limit and beyond `MAX_COST`; time steps of
//! 0, 1 ns, fractions of periods and big jumps, below 2^50 ns) through both,
//! and compares every field of every decision, the binding item, whether a
//! ban started, and every refund, reset, release and override result.
//!
//! Two things of Redis are made comparable:
//!
//! - **TTL.** Keys expire in Redis's own (real) time, which has nothing to
//!   do with a trace's explicit times; so every script call runs in a
//!   MULTI/EXEC with `PEXPIRETIME` and `PERSIST` of its state keys, between
//!   two `TIME`s (when both fall in one millisecond, the TTL the script set
//!   is known exactly). The TTL is checked instead: at `now + TTL` the
//!   state must be equivalent to fresh, for `peek` at several costs and,
//!   with a penalty box, for the number of strikes to the next ban and its
//!   length; and where peeks show every field (one limit, no penalty box)
//!   it must not be 1 ms earlier.
//! - **Keys with no state.** When the script leaves no key (it deletes a
//!   state that a write left fresh), the engine's slot must be equivalent
//!   to fresh (`peek` equal to a fresh key's), and is then forgotten with
//!   `reset`, as the table may reclaim an expired slot at any time. Without
//!   this, the two would differ where slot existence shows: `refund` and
//!   `reset` report whether the key has state, and a denial strikes only a
//!   key with state.
#![cfg(feature = "redis")]

#[path = "support/redis_server.rs"]
mod redis_server;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use ratekeeper::policy::{parse, PolicySpec};
use ratekeeper::{
    CheckItem, Decision, Engine, EngineOptions, Penalty, Permit, PolicyId, PolicyOptions, MAX_COST,
};
use redis::Value;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

const SCRIPT: &str = include_str!("../src/redis/ratekeeper.lua");
const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// Trace times stay below this.
const TIME_CAP: u64 = 1 << 50;

/// One server for every test of this file (each case has its own key
/// prefix); it dies with the test process.
fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(|| RedisServer::start().expect("redis-server starts"))
}

fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A connection with the script loaded, as a function library and as an
/// `EVALSHA` script.
struct Lua {
    con: redis::Connection,
    sha: String,
    /// Calls are `FCALL rk_<op>_test` (else `EVALSHA`): every other
    /// connection, so that proptest cases exercise both entry kinds.
    functions: bool,
}

impl Lua {
    fn connect() -> Lua {
        static N: AtomicU64 = AtomicU64::new(0);
        let client = redis::Client::open(server().url()).unwrap();
        let mut con = client.get_connection().unwrap();
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(SCRIPT)
            .query(&mut con)
            .unwrap();
        // The library as the client sends it (PROTOCOL.md, "Entry points").
        let _: String = redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(format!(
                "#!lua name=ratekeeper_test\nlocal SUFFIX = '_test'\n{SCRIPT}"
            ))
            .query(&mut con)
            .unwrap();
        let functions = N.fetch_add(1, Ordering::Relaxed) % 2 == 0;
        Lua {
            con,
            sha,
            functions,
        }
    }

    /// The `EVALSHA` command for `op` over `keys` (state, override) with
    /// item `records` (cost and policy arguments) and `extra` arguments.
    fn cmd(
        &self,
        op: &str,
        now: Option<u64>,
        keys: &[(String, String)],
        records: &[Vec<String>],
        extra: &[String],
    ) -> redis::Cmd {
        let mut cmd;
        if self.functions {
            cmd = redis::cmd("FCALL");
            cmd.arg(format!("rk_{op}_test"));
        } else {
            cmd = redis::cmd("EVALSHA");
            cmd.arg(&self.sha);
        }
        cmd.arg(keys.len() * 2);
        for (s, o) in keys {
            cmd.arg(s).arg(o);
        }
        if !self.functions {
            cmd.arg(op);
        }
        match now {
            Some(t) => cmd.arg(t.to_string()),
            None => cmd.arg(""),
        };
        cmd.arg(records.len());
        for r in records {
            cmd.arg(r);
        }
        cmd.arg(extra);
        cmd
    }

    fn eval(
        &mut self,
        op: &str,
        now: Option<u64>,
        keys: &[(String, String)],
        records: &[Vec<String>],
        extra: &[String],
    ) -> redis::RedisResult<Value> {
        self.cmd(op, now, keys, records, extra).query(&mut self.con)
    }
}

fn ints(v: &Value) -> Vec<i64> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::Int(i) => *i,
                other => panic!("not an integer: {other:?}"),
            })
            .collect(),
        Value::Int(i) => vec![*i],
        other => panic!("unexpected reply {other:?}"),
    }
}

/// A `check` / `peek` / `acquire` reply (PROTOCOL.md, "Replies").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reply {
    decision: Decision,
    item: usize,
    new_ban: bool,
    now: u64,
    lease: i64,
}

fn reply(v: &Value) -> Reply {
    let r = ints(v);
    assert_eq!(r.len(), 11, "reply {r:?}");
    assert!(r.iter().take(10).all(|&x| x >= -1), "reply {r:?}");
    let flag = |i: usize| {
        assert!(r[i] == 0 || r[i] == 1, "reply {r:?}");
        r[i] == 1
    };
    Reply {
        decision: Decision {
            allowed: flag(0),
            limit: r[2] as u64,
            remaining: r[3] as u64,
            retry_after_ns: if r[4] == -1 { u64::MAX } else { r[4] as u64 },
            reset_after_ns: r[5] as u64,
            limit_index: r[6] as u32,
            banned: flag(7),
            shadow_denied: false,
            at_ns: r[9] as u64,
        },
        item: r[1] as usize,
        new_ban: flag(8),
        now: r[9] as u64,
        lease: r[10],
    }
}

/// The script arguments of a policy: m, the limits, the penalty box (the
/// client's own encoding; the script's replies are what is under test).
fn policy_args(spec: &PolicySpec, penalty: Option<Penalty>) -> Vec<String> {
    ratekeeper::__private::script_args(spec, penalty)
}

/// A policy in both engines.
struct Pol {
    id: PolicyId,
    args: Vec<String>,
    penalty: Option<Penalty>,
    spec: String,
}

/// One operation of a trace. `p` picks a policy of the case (mod their
/// number), `key` one of a few keys.
#[derive(Debug, Clone)]
enum Op {
    Check {
        p: usize,
        key: u8,
        cost: u32,
    },
    Many {
        items: Vec<(usize, u8, u32)>,
    },
    Peek {
        p: usize,
        key: u8,
        cost: u32,
    },
    Refund {
        p: usize,
        key: u8,
        cost: u32,
    },
    Reset {
        p: usize,
        key: u8,
    },
    /// Sets (milli > 0) or clears the override, then reads it back.
    Override {
        p: usize,
        key: u8,
        milli: u32,
    },
    Acquire {
        p: usize,
        key: u8,
    },
    /// Releases held permit `i` (mod their number), once.
    Release {
        i: usize,
    },
}

/// A time step: forward or back by some nanoseconds, or onto an instant the
/// last decision named (its retry-after, its reset-after, or for a ban the
/// moment the penalty box forgives it), give or take a nanosecond.
#[derive(Debug, Clone, Copy)]
enum Dt {
    Fwd(u64),
    Back(u64),
    Retry(i8),
    Reset(i8),
    Forgiven(i8),
}

/// A script call's reply, and what it left of each distinct (policy, key).
type Called = (Value, Vec<(usize, u8, Left)>);

/// What a script call left of a state key.
#[derive(Debug, Clone, Copy)]
enum Left {
    /// No key; the transaction may have stalled for this many ms (Redis
    /// 7.0's `PEXPIRE` deletes a key at once if its base time, read from
    /// the live clock, plus the TTL is already past: a 1 ms TTL set just
    /// before a 1 ms stall leaves no key).
    Nothing(u64),
    /// A key the call did not write.
    Untouched,
    /// A key the call wrote, with its TTL in ms (if measured exactly).
    Ttl(Option<u64>),
}

/// Both engines under one trace.
struct World {
    engine: Engine,
    lua: Lua,
    prefix: String,
    pols: Vec<Pol>,
    now: u64,
    /// Held permits: policy, key, the engine's permit, the script's lease and token.
    permits: Vec<(usize, u8, Permit, i64, String)>,
    tokens: u64,
    /// The ops so far, for failure messages.
    trace: Vec<String>,
    /// The last decision (and its policy), for `Dt`'s instants.
    last: Option<(usize, Decision)>,
    /// The latest time of the trace so far.
    latest: u64,
}

impl World {
    fn new(policies: &[(&str, Option<Penalty>)], start: u64) -> World {
        let engine = Engine::new(EngineOptions {
            capacity: 64,
            ..EngineOptions::default()
        })
        .unwrap();
        let pols = policies
            .iter()
            .enumerate()
            .map(|(i, &(spec, penalty))| {
                let id = engine
                    .add_policy_with(
                        &format!("p{i}"),
                        spec,
                        PolicyOptions {
                            penalty,
                            ..PolicyOptions::default()
                        },
                    )
                    .unwrap();
                Pol {
                    id,
                    args: policy_args(&parse(spec).unwrap(), penalty),
                    penalty,
                    spec: spec.to_string(),
                }
            })
            .collect();
        World {
            engine,
            lua: Lua::connect(),
            prefix: format!("rs{}:", next_id()),
            pols,
            now: start,
            permits: Vec::new(),
            tokens: 0,
            trace: Vec::new(),
            last: None,
            latest: start,
        }
    }

    fn keys(&self, p: usize, key: u8) -> (String, String) {
        let tag = format!("{}{{p{p}k{key}}}", self.prefix);
        (format!("{tag}:s"), format!("{tag}:o"))
    }

    fn record(&self, p: usize, cost: u32) -> Vec<String> {
        let mut r = vec![cost.to_string()];
        r.extend(self.pols[p].args.iter().cloned());
        r
    }

    fn context(&self) -> String {
        let pols: Vec<String> = self
            .pols
            .iter()
            .map(|p| format!("{:?} penalty {:?}", p.spec, p.penalty))
            .collect();
        format!(
            "policies {pols:?}\nnow {}\ntrace:\n  {}",
            self.now,
            self.trace.join("\n  ")
        )
    }

    fn bans(&self) -> u64 {
        self.pols
            .iter()
            .map(|p| self.engine.stats(p.id).unwrap().bans)
            .sum()
    }

    /// Runs `op` over `items` at the current time, in a MULTI/EXEC between
    /// two `TIME`s, with `PEXPIRETIME` and `PERSIST` of every state key;
    /// returns the script's reply and what it left of each distinct key.
    fn call(
        &mut self,
        op: &str,
        items: &[(usize, u8, u32)],
        extra: &[String],
    ) -> Result<Called, TestCaseError> {
        let keys: Vec<_> = items.iter().map(|&(p, k, _)| self.keys(p, k)).collect();
        let records: Vec<_> = items.iter().map(|&(p, _, c)| self.record(p, c)).collect();
        let mut distinct: Vec<(usize, u8)> = Vec::new();
        for &(p, k, _) in items {
            if !distinct.contains(&(p, k)) {
                distinct.push((p, k));
            }
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("TIME")
            .add_command(self.lua.cmd(op, Some(self.now), &keys, &records, extra))
            .cmd("TIME");
        for &(p, k) in &distinct {
            let (s, _) = self.keys(p, k);
            pipe.cmd("PEXPIRETIME")
                .arg(&s)
                .cmd("PERSIST")
                .arg(&s)
                .ignore();
        }
        let mut out: Vec<Value> = pipe
            .query(&mut self.lua.con)
            .map_err(|e| TestCaseError::fail(format!("{op}: {e}\n{}", self.context())))?;
        let ms = |v: &Value| -> i64 {
            let (s, us): (i64, i64) = redis::from_redis_value_ref(v).unwrap();
            s * 1000 + us / 1000
        };
        let (before, after) = (ms(&out[0]), ms(&out[2]));
        let left = distinct
            .iter()
            .enumerate()
            .map(|(i, &(p, k))| {
                let at = match out[3 + i] {
                    Value::Int(t) => t,
                    ref other => panic!("PEXPIRETIME answered {other:?}"),
                };
                let left = match at {
                    -2 => Left::Nothing((after - before) as u64),
                    -1 => Left::Untouched,
                    // The script's PEXPIRE ran in the millisecond of both TIMEs.
                    at if before == after => Left::Ttl(Some((at - before) as u64)),
                    _ => Left::Ttl(None),
                };
                (p, k, left)
            })
            .collect();
        Ok((out.swap_remove(1), left))
    }

    /// A script call outside the trace (no PERSIST): probes and scratch keys.
    fn raw(&mut self, op: &str, now: u64, keys: (String, String), record: Vec<String>) -> Reply {
        reply(
            &self
                .lua
                .eval(op, Some(now), &[keys], &[record], &[])
                .unwrap(),
        )
    }

    fn scratch(&self) -> String {
        format!("{}{{scratch}}:s", self.prefix)
    }

    /// After a call: every key the script left must be fresh by its TTL,
    /// every key it deleted fresh now (and then forgotten by the engine).
    fn settle(&mut self, left: &[(usize, u8, Left)]) -> Result<(), TestCaseError> {
        for &(p, key, left) in left {
            match left {
                Left::Nothing(stall_ms) => self.forget(p, key, stall_ms)?,
                Left::Ttl(Some(ttl)) => {
                    prop_assert!(ttl >= 1, "a TTL of {} ms\n{}", ttl, self.context());
                    self.fresh_by(p, key, ttl)?;
                }
                Left::Ttl(None) | Left::Untouched => {}
            }
        }
        Ok(())
    }

    /// The script keeps no state for the key: the engine's must be fresh
    /// too (or, if the call may have stalled, by the end of the stall, when
    /// the key's TTL may have run out in real time); then the engine
    /// forgets it, as the table may reclaim an expired slot.
    fn forget(&mut self, p: usize, key: u8, stall_ms: u64) -> Result<(), TestCaseError> {
        let id = self.pols[p].id;
        let fresh_at = |w: &mut World, t: u64| -> Vec<(Decision, Decision)> {
            [0, 1]
                .into_iter()
                .map(|cost| {
                    let here = w.engine.peek_at(id, &[key], cost, t).unwrap();
                    let there = w.raw("peek", t, w.keys(p, key), w.record(p, cost)).decision;
                    (here, there)
                })
                .filter(|(here, there)| here != there)
                .collect()
        };
        let differ = fresh_at(self, self.now);
        if !differ.is_empty()
            && (stall_ms == 0 || !fresh_at(self, self.now + (stall_ms + 1) * MS).is_empty())
        {
            prop_assert!(
                false,
                "the script dropped a state the engine still has (stall {} ms): {:?}\n{}",
                stall_ms,
                differ,
                self.context()
            );
        }
        self.engine.reset(id, &[key]).unwrap();
        Ok(())
    }

    /// At `now + ttl_ms` the key's state must be equivalent to a
    /// fresh one: the same peeks, the same road to the next ban. And for a
    /// policy of one limit and no penalty box (where peeks show every
    /// field), not 1 ms earlier: the TTL is no longer than it must be
    /// (unless time went back: then a state from "the future" may look
    /// fresh for a while and still be kept).
    fn fresh_by(&mut self, p: usize, key: u8, ttl_ms: u64) -> Result<(), TestCaseError> {
        let t = self.now + ttl_ms * MS;
        let (state, over) = self.keys(p, key);
        let scratch = self.scratch();
        if self.now == self.latest
            && self.pols[p].penalty.is_none()
            && !self.pols[p].spec.contains(';')
        {
            let before = self.now + (ttl_ms - 1) * MS;
            let mut differs = false;
            for cost in [0, 1] {
                let kept = self.raw(
                    "peek",
                    before,
                    (state.clone(), over.clone()),
                    self.record(p, cost),
                );
                let fresh = self.raw(
                    "peek",
                    before,
                    (scratch.clone(), over.clone()),
                    self.record(p, cost),
                );
                differs |= kept != fresh;
            }
            prop_assert!(
                differs,
                "fresh 1 ms before the TTL ({} ms)\n{}",
                ttl_ms,
                self.context()
            );
        }
        for cost in [0, 1, 2, 5, 1000] {
            let kept = self.raw(
                "peek",
                t,
                (state.clone(), over.clone()),
                self.record(p, cost),
            );
            let fresh = self.raw(
                "peek",
                t,
                (scratch.clone(), over.clone()),
                self.record(p, cost),
            );
            prop_assert_eq!(
                kept,
                fresh,
                "not fresh at the TTL ({} ms), cost {}\n{}",
                ttl_ms,
                cost,
                self.context()
            );
        }
        let Some(pen) = self.pols[p].penalty else {
            return Ok(());
        };
        // Strikes at t on a copy, in one transaction (no expiry in between).
        let _: () = redis::cmd("COPY")
            .arg(&state)
            .arg(&scratch)
            .arg("REPLACE")
            .query(&mut self.lua.con)
            .unwrap();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let keys = [(scratch.clone(), over.clone())];
        let record = [self.record(p, MAX_COST as u32)];
        for _ in 0..pen.strikes {
            pipe.add_command(self.lua.cmd("check", Some(t), &keys, &record, &[]));
        }
        pipe.cmd("DEL").arg(&scratch).ignore();
        let replies: Vec<Value> = pipe.query(&mut self.lua.con).unwrap();
        let replies: Vec<Reply> = replies.iter().map(reply).collect();
        if replies[0].decision.allowed {
            return Ok(()); // the cost fits (a large limit): no strikes to count
        }
        let first_ban = pen.ban_ns.min(pen.max_ban_ns);
        for (i, r) in replies.iter().enumerate() {
            let last = i + 1 == pen.strikes as usize;
            prop_assert_eq!(
                (r.decision.banned, r.new_ban),
                (last, last),
                "strike {} at the TTL ({} ms) of a penalty box not fresh\n{}",
                i + 1,
                ttl_ms,
                self.context()
            );
            if last {
                prop_assert_eq!(r.decision.retry_after_ns, first_ban, "{}", self.context());
            }
        }
        Ok(())
    }

    fn advance(&mut self, dt: Dt) {
        let near = |t: u64, e: i8| t.saturating_add_signed(e as i64);
        self.now = match (dt, self.last) {
            (Dt::Fwd(x), _) => self.now.saturating_add(x),
            (Dt::Back(x), _) => self.now.saturating_sub(x),
            (Dt::Retry(e), Some((_, d))) if d.retry_after_ns < u64::MAX => {
                near(self.now.saturating_add(d.retry_after_ns), e)
            }
            (Dt::Reset(e), Some((_, d))) => near(self.now.saturating_add(d.reset_after_ns), e),
            (Dt::Forgiven(e), Some((p, d))) if d.banned => {
                let max_ban = self.pols[p].penalty.map_or(0, |p| p.max_ban_ns);
                near(self.now + d.retry_after_ns + max_ban, e)
            }
            _ => self.now,
        }
        .min(TIME_CAP - 1);
        self.latest = self.latest.max(self.now);
    }

    fn step(&mut self, dt: Dt, op: &Op) -> Result<(), TestCaseError> {
        self.advance(dt);
        let n = self.pols.len();
        self.trace.push(format!("{dt:?} -> {}: {op:?}", self.now));
        let now = self.now;
        match *op {
            Op::Check { p, key, cost } => {
                let p = p % n;
                let bans = self.bans();
                let here = self.engine.check_at(self.pols[p].id, &[key], cost, now);
                let (v, ttls) = self.call("check", &[(p, key, cost)], &[])?;
                let there = reply(&v);
                let new_ban = self.bans() > bans;
                prop_assert_eq!(
                    (there.decision, there.item, there.new_ban, there.now),
                    (here, 0, new_ban, now),
                    "check\n{}",
                    self.context()
                );
                self.last = Some((p, here));
                self.settle(&ttls)?;
            }
            Op::Many { ref items } => {
                let items: Vec<(usize, u8, u32)> =
                    items.iter().map(|&(p, k, c)| (p % n, k, c)).collect();
                let keys: Vec<[u8; 1]> = items.iter().map(|&(_, k, _)| [k]).collect();
                let batch: Vec<CheckItem> = items
                    .iter()
                    .zip(&keys)
                    .map(|(&(p, _, cost), key)| CheckItem {
                        policy: self.pols[p].id,
                        key,
                        cost,
                    })
                    .collect();
                let bans = self.bans();
                let (here, at) = self.engine.check_many_at(&batch, now).unwrap();
                let new_ban = self.bans() > bans;
                let (v, ttls) = self.call("check", &items, &[])?;
                let there = reply(&v);
                prop_assert_eq!(
                    (there.decision, there.item, there.new_ban, there.now),
                    (here, at, new_ban, now),
                    "check of {} items\n{}",
                    items.len(),
                    self.context()
                );
                self.last = Some((items[at].0, here));
                self.settle(&ttls)?;
            }
            Op::Peek { p, key, cost } => {
                let p = p % n;
                let here = self
                    .engine
                    .peek_at(self.pols[p].id, &[key], cost, now)
                    .unwrap();
                let (v, ttls) = self.call("peek", &[(p, key, cost)], &[])?;
                let there = reply(&v);
                prop_assert_eq!(
                    (there.decision, there.new_ban),
                    (here, false),
                    "peek\n{}",
                    self.context()
                );
                self.last = Some((p, here));
                self.settle(&ttls)?;
            }
            Op::Refund { p, key, cost } => {
                let p = p % n;
                let Ok(here) = self.engine.refund_at(self.pols[p].id, &[key], cost, now) else {
                    return Ok(()); // a concurrency policy
                };
                let (v, ttls) = self.call("refund", &[(p, key, cost)], &[])?;
                prop_assert_eq!(ints(&v), vec![here as i64], "refund\n{}", self.context());
                self.settle(&ttls)?;
            }
            Op::Reset { p, key } => {
                let p = p % n;
                let here = self.engine.reset(self.pols[p].id, &[key]).unwrap();
                let (v, ttls) = self.call("reset", &[(p, key, 0)], &[])?;
                prop_assert_eq!(ints(&v), vec![here as i64], "reset\n{}", self.context());
                self.settle(&ttls)?;
            }
            Op::Override { p, key, milli } => {
                let p = p % n;
                let id = self.pols[p].id;
                let done = if milli == 0 {
                    self.engine.clear_override(id, &[key])
                } else {
                    self.engine.set_override(id, &[key], milli as f64 / 1000.0)
                };
                if done.is_err() {
                    return Ok(()); // a concurrency policy
                }
                let (v, _) = if milli == 0 {
                    self.call("override_clear", &[(p, key, 0)], &[])?
                } else {
                    self.call("override_set", &[(p, key, 0)], &[milli.to_string()])?
                };
                prop_assert_eq!(ints(&v), vec![1]);
                let here = self
                    .engine
                    .override_of(id, &[key])
                    .unwrap()
                    .map_or(0, |f| (f * 1000.0).round() as i64);
                let (v, _) = self.call("override_get", &[(p, key, 0)], &[])?;
                prop_assert_eq!(ints(&v), vec![here], "override_get\n{}", self.context());
            }
            Op::Acquire { p, key } => {
                let p = p % n;
                let Ok((here, permit)) = self.engine.acquire_at(self.pols[p].id, &[key], now)
                else {
                    return Ok(()); // a rate policy
                };
                self.tokens += 1;
                let token = self.tokens.to_string();
                let extra = [std::process::id().to_string(), token.clone()];
                let (v, ttls) = self.call("acquire", &[(p, key, 1)], &extra)?;
                let there = reply(&v);
                prop_assert_eq!(
                    (there.decision, there.item, there.lease >= 0),
                    (here, 0, permit.is_some()),
                    "acquire\n{}",
                    self.context()
                );
                self.last = Some((p, here));
                if let Some(permit) = permit {
                    self.permits.push((p, key, permit, there.lease, token));
                }
                self.settle(&ttls)?;
            }
            Op::Release { i } => {
                if self.permits.is_empty() {
                    return Ok(());
                }
                let (p, key, permit, lease, token) = self.permits.remove(i % self.permits.len());
                let here = self.engine.release(permit).unwrap();
                let (v, ttls) =
                    self.call("release", &[(p, key, 1)], &[lease.to_string(), token])?;
                prop_assert_eq!(ints(&v), vec![here as i64], "release\n{}", self.context());
                self.settle(&ttls)?;
            }
        }
        Ok(())
    }

    fn run(
        policies: &[(&str, Option<Penalty>)],
        start: u64,
        steps: &[(Dt, Op)],
    ) -> Result<(), TestCaseError> {
        let mut w = World::new(policies, start);
        for (dt, op) in steps {
            w.step(*dt, op)?;
        }
        let _: () = redis::cmd("EVAL")
            .arg("for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end")
            .arg(0)
            .arg(format!("{}*", w.prefix))
            .query(&mut w.lua.con)
            .unwrap();
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn cost() -> impl Strategy<Value = u32> {
    prop_oneof![
        6 => Just(1u32),
        4 => 0..=3u32,
        3 => 0..=12u32,
        1 => 1..=400u32,
        1 => 10_000..=200_000u32,
        1 => prop_oneof![Just(MAX_COST as u32), Just(MAX_COST as u32 + 1), Just(u32::MAX)],
    ]
}

/// Time steps: none, a nanosecond or two, fractions of a second (periods
/// are whole seconds, emission intervals often not), whole and half
/// seconds ± 1 ns, big jumps, a few back, and the instants the last
/// decision named.
fn dt() -> impl Strategy<Value = Dt> {
    prop_oneof![
        4 => Just(Dt::Fwd(0)),
        1 => (1..=3u64).prop_map(Dt::Fwd),
        4 => (0..S / 3).prop_map(Dt::Fwd),
        2 => (0..2 * S).prop_map(Dt::Fwd),
        2 => (1..8u64, 1..8u64).prop_map(|(a, b)| Dt::Fwd(a * S / b)),
        1 => (0..30u64, 0..3u64).prop_map(|(k, e)| Dt::Fwd((k * S / 2 + e).saturating_sub(1))),
        1 => (0..(1u64 << 40)).prop_map(Dt::Fwd),
        1 => (0..(1u64 << 44)).prop_map(Dt::Fwd),
        1 => (0..3 * S).prop_map(Dt::Back),
        3 => (-1..=1i8).prop_map(Dt::Retry),
        2 => (-1..=1i8).prop_map(Dt::Reset),
        1 => (-1..=1i8).prop_map(Dt::Forgiven),
    ]
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 0..1000 * S, 0..(1u64 << 49)]
}

fn penalty() -> impl Strategy<Value = Option<Penalty>> {
    prop_oneof![
        1 => Just(None),
        1 => (1..=4u32, 1..=10u64, 1..=5u64, 1..=8u64).prop_map(|(strikes, w, b, m)| Some(Penalty {
            strikes,
            window_ns: w * S,
            ban_ns: b * S,
            max_ban_ns: b * m * S,
        })),
    ]
}

fn milli() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(500),
        Just(1000),
        Just(1500),
        Just(2500),
        Just(16777),
        Just(MAX_COST as u32),
    ]
}

const KEYS: u8 = 3;

/// Ops on the policies of a case (check, peek, refund, reset, override).
fn rate_op(policies: usize) -> impl Strategy<Value = Op> {
    let p = 0..policies;
    let key = 0..KEYS;
    prop_oneof![
        8 => (p.clone(), key.clone(), cost()).prop_map(|(p, key, cost)| Op::Check { p, key, cost }),
        2 => (p.clone(), key.clone(), cost()).prop_map(|(p, key, cost)| Op::Peek { p, key, cost }),
        2 => (p.clone(), key.clone(), cost()).prop_map(|(p, key, cost)| Op::Refund { p, key, cost }),
        1 => (p.clone(), key.clone()).prop_map(|(p, key)| Op::Reset { p, key }),
        1 => (p, key, milli()).prop_map(|(p, key, milli)| Op::Override { p, key, milli }),
    ]
}

fn steps(op: impl Strategy<Value = Op>, max: usize) -> impl Strategy<Value = Vec<(Dt, Op)>> {
    prop::collection::vec((dt(), op), 1..max)
}

const ALONE: &[&str] = &[
    "gcra 5/second burst 8",
    "gcra 3/7 seconds burst 5",
    "gcra 1/second",
    "gcra 100000000/day burst 150000000",
    "fixed_window 4/second",
    "fixed_window 3/7 seconds",
    "sliding_window 6/2 seconds",
    "sliding_window 7/3 seconds",
    "sliding_window 100000/day",
    "sliding_window 4000000000/day",
    "sliding_log 3/second",
    "sliding_log 5/7 seconds",
    "sliding_log 300/minute",
    "sliding_log 70/3 seconds",
];

const COMPOSITE: &[&str] = &[
    "gcra 10/second burst 20; fixed_window 100/minute",
    "sliding_window 7/second; sliding_log 4/2 seconds",
    "gcra 2/second; sliding_window 5/3 seconds; fixed_window 9/10 seconds; sliding_log 6/4 seconds",
    "fixed_window 3/second; fixed_window 5/3 seconds",
    "gcra 3/second burst 1; gcra 10/minute burst 12",
];

const CONCURRENCY: &[&str] = &[
    "concurrency 1",
    "concurrency 2 ttl 3 seconds",
    "concurrency 3 ttl 1 second",
    "concurrency 70 ttl 2 seconds",
];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn every_algorithm_alone_matches_the_engine(
        spec in prop::sample::select(ALONE),
        penalty in penalty(),
        start in start(),
        steps in steps(rate_op(1), 80),
    ) {
        World::run(&[(spec, penalty)], start, &steps)?;
    }
}

proptest! {
    #![proptest_config(config(80))]

    #[test]
    fn composite_policies_match_the_engine(
        spec in prop::sample::select(COMPOSITE),
        penalty in penalty(),
        start in start(),
        steps in steps(rate_op(1), 80),
    ) {
        World::run(&[(spec, penalty)], start, &steps)?;
    }

    #[test]
    fn several_items_in_one_check_match_check_many(
        policies in prop::collection::vec(
            (prop::sample::select([ALONE, COMPOSITE].concat()), penalty()),
            1..=3,
        ),
        start in start(),
        steps in steps(
            prop_oneof![
                3 => prop::collection::vec((0..3usize, 0..KEYS, cost()), 1..=5)
                    .prop_map(|items| Op::Many { items }),
                2 => rate_op(3),
            ],
            50,
        ),
    ) {
        World::run(&policies, start, &steps)?;
    }

    #[test]
    fn concurrency_leases_match_acquire_and_release(
        spec in prop::sample::select(CONCURRENCY),
        start in start(),
        steps in steps(
            prop_oneof![
                5 => (0..1usize, 0..2u8).prop_map(|(p, key)| Op::Acquire { p, key }),
                3 => any::<usize>().prop_map(|i| Op::Release { i }),
                1 => (0..2u8, cost()).prop_map(|(key, cost)| Op::Peek { p: 0, key, cost }),
                1 => (0..2u8, cost()).prop_map(|(key, cost)| Op::Check { p: 0, key, cost }),
                1 => (0..2u8).prop_map(|key| Op::Reset { p: 0, key }),
            ],
            60,
        ),
    ) {
        World::run(&[(spec, None)], start, &steps)?;
    }
}

// ---------------------------------------------------------------------------
// The exact arithmetic
// ---------------------------------------------------------------------------

/// The script's `muldivmod`, cut out of the script and run alone.
fn muldivmod_lua() -> String {
    let start = SCRIPT
        .find("local function muldivmod")
        .expect("muldivmod in the script");
    let end = start + SCRIPT[start..].find("\n  end\n").expect("its end") + 7;
    format!(
        "local fmod = math.fmod\nlocal TWO53 = 9007199254740992\n{}\n\
         local q, r = muldivmod(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))\n\
         return {{string.format('%.0f', q), string.format('%.0f', r)}}",
        &SCRIPT[start..end]
    )
}

fn eval_muldivmod(a: u64, b: u64, c: u64) -> Vec<String> {
    thread_local! {
        static CON: std::cell::RefCell<redis::Connection> = std::cell::RefCell::new(
            redis::Client::open(server().url()).unwrap().get_connection().unwrap());
    }
    CON.with(|con| {
        redis::cmd("EVAL")
            .arg(muldivmod_lua())
            .arg(0)
            .arg(a.to_string())
            .arg(b.to_string())
            .arg(c.to_string())
            .query(&mut *con.borrow_mut())
            .unwrap()
    })
}

proptest! {
    #![proptest_config(config(2000))]

    /// floor(a*b/c) and a*b mod c, exactly, for a, b, c below 2^53 and a
    /// quotient below 2^53, on both sides of the fast path.
    #[test]
    fn muldivmod_is_exact_below_2_pow_53(
        a in prop_oneof![0..(1u64 << 53), 0..(1u64 << 26), 0..1000u64],
        b in prop_oneof![0..(1u64 << 53), 0..(1u64 << 30)],
        c in prop_oneof![1..(1u64 << 53), 1..1000u64, 1..(1u64 << 40)],
    ) {
        let q = (a as u128 * b as u128) / c as u128;
        prop_assume!(q < 1 << 53);
        let r = (a as u128 * b as u128) % c as u128;
        let got = eval_muldivmod(a, b, c);
        prop_assert_eq!(got, vec![q.to_string(), r.to_string()], "{} * {} / {}", a, b, c);
    }
}

proptest! {
    #![proptest_config(config(500))]

    /// The same on exact multiples (a = c1*x, b = c2*y, c = c1*c2), where
    /// the running remainder lands exactly on c.
    #[test]
    fn muldivmod_is_exact_on_exact_multiples(
        c1 in 1..(1u64 << 26),
        c2 in 1..(1u64 << 26),
        x in 1..(1u64 << 26),
        y in 1..(1u64 << 26),
    ) {
        let (a, b, c) = (c1 * x, c2 * y, c1 * c2);
        prop_assume!(a < 1 << 53 && b < 1 << 53 && c < 1 << 53);
        let q = (a as u128 * b as u128) / c as u128;
        prop_assume!(q < 1 << 53);
        let got = eval_muldivmod(a, b, c);
        prop_assert_eq!(got, vec![q.to_string(), "0".to_string()], "{} * {} / {}", a, b, c);
    }
}

// ---------------------------------------------------------------------------
// Fixed cases
// ---------------------------------------------------------------------------

fn spec_args(spec: &str, penalty: Option<Penalty>, cost: u32) -> Vec<String> {
    let mut r = vec![cost.to_string()];
    r.extend(policy_args(&parse(spec).unwrap(), penalty));
    r
}

fn fresh_keys() -> (String, String) {
    let tag = format!("fixed{}", next_id());
    (format!("{{{tag}}}:s"), format!("{{{tag}}}:o"))
}

/// The TTL (ms) a script call sets on its key: the call runs between two
/// `TIME`s in one transaction, repeated until both fall in the same
/// millisecond, so that `PEXPIRETIME` minus that millisecond is exact.
fn ttl_set_by(
    lua: &mut Lua,
    op: &str,
    now: u64,
    spec: &str,
    penalty: Option<Penalty>,
    cost: u32,
) -> (Reply, i64) {
    for _ in 0..100 {
        let keys = fresh_keys();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("TIME")
            .add_command(lua.cmd(
                op,
                Some(now),
                std::slice::from_ref(&keys),
                &[spec_args(spec, penalty, cost)],
                &[],
            ))
            .cmd("TIME")
            .cmd("PEXPIRETIME")
            .arg(&keys.0);
        let (before, r, after, at): ((u64, u64), Value, (u64, u64), i64) =
            pipe.query(&mut lua.con).unwrap();
        let ms = |(s, us): (u64, u64)| (s * 1000 + us / 1000) as i64;
        if ms(before) == ms(after) {
            return (reply(&r), if at < 0 { at } else { at - ms(before) });
        }
    }
    panic!("no two TIMEs in one millisecond");
}

#[test]
fn the_ttl_is_the_expiry_rounded_up_to_milliseconds() {
    let mut lua = Lua::connect();
    // gcra 1/second: a charge holds for exactly 1 s; gcra 3/second for
    // 333,333,333 ns, which is 334 ms rounded up.
    let (r, ttl) = ttl_set_by(&mut lua, "check", 0, "gcra 1/second", None, 1);
    assert!(r.decision.allowed);
    assert_eq!(ttl, 1000);
    let (_, ttl) = ttl_set_by(&mut lua, "check", 12_345, "gcra 3/second", None, 1);
    assert_eq!(ttl, 334);
    // The smallest TTL is 1 ms.
    let (_, ttl) = ttl_set_by(&mut lua, "check", 0, "gcra 1000000000/second", None, 1);
    assert_eq!(ttl, 1);
    // A sliding log holds until its newest entry stops counting.
    let (_, ttl) = ttl_set_by(&mut lua, "check", 999, "sliding_log 3/7 seconds", None, 2);
    assert_eq!(ttl, 7000);
    // The penalty box remembers a ban for max_ban after it ends: a first
    // denial with one strike allowed bans for 10 s, remembered 100 s more.
    let pen = Penalty {
        strikes: 1,
        window_ns: S,
        ban_ns: 10 * S,
        max_ban_ns: 100 * S,
    };
    let (r, ttl) = ttl_set_by(
        &mut lua,
        "check",
        0,
        "sliding_window 1/second",
        Some(pen),
        2,
    );
    assert!(
        !r.decision.allowed && !r.new_ban,
        "a key with no state takes no strike"
    );
    assert_eq!(ttl, -2);
    let keys = fresh_keys();
    let args = |cost| spec_args("fixed_window 1/second", Some(pen), cost);
    lua.eval(
        "check",
        Some(0),
        std::slice::from_ref(&keys),
        &[args(1)],
        &[],
    )
    .unwrap();
    let r = reply(
        &lua.eval(
            "check",
            Some(0),
            std::slice::from_ref(&keys),
            &[args(1)],
            &[],
        )
        .unwrap(),
    );
    assert!(r.new_ban && r.decision.banned);
    assert_eq!(r.decision.retry_after_ns, 10 * S);
    let ttl: i64 = redis::cmd("PTTL").arg(&keys.0).query(&mut lua.con).unwrap();
    assert!((109_000..=110_000).contains(&ttl), "{ttl}");
}

#[test]
fn a_write_that_leaves_the_state_fresh_deletes_the_key() {
    let mut lua = Lua::connect();
    let keys = fresh_keys();
    let args = |cost| spec_args("gcra 2/2 seconds; sliding_log 3/second", None, cost);
    let d = reply(
        &lua.eval(
            "check",
            Some(5),
            std::slice::from_ref(&keys),
            &[args(2)],
            &[],
        )
        .unwrap(),
    );
    assert!(d.decision.allowed);
    // One refund or reset call at time 5: its integer reply.
    let op = |lua: &mut Lua, op: &str, cost: u32| {
        ints(
            &lua.eval(op, Some(5), std::slice::from_ref(&keys), &[args(cost)], &[])
                .unwrap(),
        )
    };
    let exists = |lua: &mut Lua| -> i64 {
        redis::cmd("EXISTS")
            .arg(&keys.0)
            .query(&mut lua.con)
            .unwrap()
    };
    assert_eq!(exists(&mut lua), 1);
    assert_eq!(op(&mut lua, "refund", 1), [1]);
    assert_eq!(exists(&mut lua), 1);
    assert_eq!(op(&mut lua, "refund", 1), [1]);
    assert_eq!(exists(&mut lua), 0);
    // No state: refund and reset say so.
    assert_eq!(op(&mut lua, "refund", 1), [0]);
    assert_eq!(op(&mut lua, "reset", 0), [0]);
    // A concurrency key goes when its last live lease is released.
    let keys = fresh_keys();
    let c = spec_args("concurrency 2", None, 1);
    let a = |lua: &mut Lua, token: &str| {
        reply(
            &lua.eval(
                "acquire",
                Some(9),
                std::slice::from_ref(&keys),
                std::slice::from_ref(&c),
                &["42".into(), token.into()],
            )
            .unwrap(),
        )
    };
    assert_eq!(a(&mut lua, "7").lease, 0);
    assert_eq!(a(&mut lua, "8").lease, 1);
    assert_eq!(a(&mut lua, "9").lease, -1);
    let release = |lua: &mut Lua, lease: &str, token: &str| {
        ints(
            &lua.eval(
                "release",
                Some(9),
                std::slice::from_ref(&keys),
                std::slice::from_ref(&c),
                &[lease.into(), token.into()],
            )
            .unwrap(),
        )
    };
    assert_eq!(release(&mut lua, "0", "8"), [0], "not that lease's token");
    assert_eq!(release(&mut lua, "0", "7"), [1]);
    assert_eq!(release(&mut lua, "0", "7"), [0], "released already");
    assert_eq!(exists(&mut lua), 0, "the first key is still gone");
    let exists2: i64 = redis::cmd("EXISTS")
        .arg(&keys.0)
        .query(&mut lua.con)
        .unwrap();
    assert_eq!(exists2, 1);
    assert_eq!(release(&mut lua, "1", "8"), [1]);
    let exists2: i64 = redis::cmd("EXISTS")
        .arg(&keys.0)
        .query(&mut lua.con)
        .unwrap();
    assert_eq!(exists2, 0);
}

#[test]
fn now_comes_from_redis_time_when_it_is_empty() {
    let mut lua = Lua::connect();
    let keys = fresh_keys();
    let (secs, usecs): (u64, u64) = redis::cmd("TIME").query(&mut lua.con).unwrap();
    let before = (secs - 1_767_225_600) * S + usecs * 1000;
    let r = lua.eval(
        "check",
        None,
        std::slice::from_ref(&keys),
        &[spec_args("gcra 5/second", None, 1)],
        &[],
    );
    let r = reply(&r.unwrap());
    assert!(r.decision.allowed);
    assert!(
        r.now >= before && r.now < before + 10 * S,
        "{} vs {before}",
        r.now
    );
    assert_eq!(r.now % 1000, 0);
    // The state is written in that clock: the next call sees the charge.
    let r2 = reply(
        &lua.eval(
            "peek",
            None,
            &[keys],
            &[spec_args("gcra 5/second", None, 1)],
            &[],
        )
        .unwrap(),
    );
    assert_eq!(r2.decision.remaining, 3);
}

/// Redis `TIME` is past 2^53 ns (since 2026-04-15), where figures are
/// rounded to a few ns: every algorithm still enforces its limit. (Sliding
/// windows of a day, so that no window ends during the test.)
#[test]
fn every_algorithm_enforces_its_limit_on_redis_time() {
    let mut lua = Lua::connect();
    for spec in [
        "gcra 5/minute",
        "fixed_window 5/minute",
        "sliding_window 5/day",
        "sliding_log 5/minute",
        "gcra 3/7 seconds burst 5; sliding_window 9/day",
    ] {
        let keys = fresh_keys();
        let check = |lua: &mut Lua, cost| {
            reply(
                &lua.eval(
                    "check",
                    None,
                    std::slice::from_ref(&keys),
                    &[spec_args(spec, None, cost)],
                    &[],
                )
                .unwrap(),
            )
        };
        let first = check(&mut lua, 1);
        assert!(first.now > 1 << 53, "{spec}: Redis time {}", first.now);
        assert!(
            first.decision.allowed && first.decision.remaining == 4,
            "{spec}: {first:?}"
        );
        for left in (0..4).rev() {
            let r = check(&mut lua, 1);
            assert!(
                r.decision.allowed && r.decision.remaining == left,
                "{spec}: {r:?}"
            );
        }
        let r = check(&mut lua, 1);
        assert!(!r.decision.allowed, "{spec}: {r:?}");
        assert!(
            r.decision.retry_after_ns > 0 && r.decision.retry_after_ns <= 86_400 * S,
            "{spec}: {r:?}"
        );
        assert!(r.decision.reset_after_ns <= 2 * 86_400 * S, "{spec}: {r:?}");
        // Given back, one more fits.
        assert_eq!(
            ints(
                &lua.eval(
                    "refund",
                    None,
                    std::slice::from_ref(&keys),
                    &[spec_args(spec, None, 1)],
                    &[]
                )
                .unwrap()
            ),
            [1]
        );
        assert!(check(&mut lua, 1).decision.allowed, "{spec}");
        assert!(!check(&mut lua, 1).decision.allowed, "{spec}");
    }
}

#[test]
fn a_cost_no_limit_can_allow_waits_for_ever() {
    let mut lua = Lua::connect();
    for spec in [
        "gcra 5/second",
        "fixed_window 5/second",
        "sliding_window 5/second",
        "sliding_log 5/second",
    ] {
        for cost in [6, MAX_COST as u32 + 1, u32::MAX] {
            let r = lua.eval(
                "check",
                Some(7),
                &[fresh_keys()],
                &[spec_args(spec, None, cost)],
                &[],
            );
            let d = reply(&r.unwrap()).decision;
            assert!(
                !d.allowed && d.retry_after_ns == u64::MAX,
                "{spec} cost {cost}: {d:?}"
            );
        }
    }
}

#[test]
fn a_big_sliding_log_counts_every_entry() {
    let mut lua = Lua::connect();
    let keys = fresh_keys();
    let spec = "sliding_log 4096/minute";
    let engine = Engine::new(EngineOptions {
        capacity: 8,
        ..EngineOptions::default()
    })
    .unwrap();
    let p = engine.add_policy("log", spec).unwrap();
    let mut now = 5 * S;
    for i in 0..200u64 {
        let cost = [1, 7, 30, 100][i as usize % 4];
        now += (i * 7919 % 13) * S / 10;
        let here = engine.check_at(p, b"k", cost, now);
        let v = lua
            .cmd(
                "check",
                Some(now),
                std::slice::from_ref(&keys),
                &[spec_args(spec, None, cost)],
                &[],
            )
            .query::<Value>(&mut lua.con)
            .unwrap();
        let _: i64 = redis::cmd("PERSIST")
            .arg(&keys.0)
            .query(&mut lua.con)
            .unwrap();
        assert_eq!(reply(&v).decision, here, "step {i}");
    }
}

#[test]
fn malformed_calls_are_errors() {
    for functions in [false, true] {
        malformed_calls_are_errors_via(functions);
    }
}

/// Through `FCALL` (an unknown op is then an unknown function) or `EVALSHA`.
fn malformed_calls_are_errors_via(functions: bool) {
    let mut lua = Lua::connect();
    lua.functions = functions;
    let keys = fresh_keys();
    let good = spec_args("gcra 5/second", None, 1);
    let err = |r: redis::RedisResult<Value>| -> String {
        let e = r.expect_err("an error").to_string();
        // redis-rs shows the first word, "rk:", as the error's code.
        assert!(e.starts_with("\"rk:\": "), "{e}");
        e
    };
    let unknown = lua.eval(
        "frobnicate",
        Some(0),
        std::slice::from_ref(&keys),
        std::slice::from_ref(&good),
        &[],
    );
    if functions {
        let e = unknown.expect_err("an error").to_string();
        assert!(e.contains("Function not found"), "{e}");
    } else {
        assert!(err(unknown).contains("unknown op"));
    }
    // The record is the cost and the policy's text (PROTOCOL.md).
    assert_eq!(good.len(), 2, "{good:?}");
    let mut bad = good.clone();
    bad[1] = bad[1].replacen(" g ", " x ", 1);
    let e = err(lua.eval("check", Some(0), std::slice::from_ref(&keys), &[bad], &[]));
    assert!(e.contains("unknown algorithm"), "{e}");
    let e = err(lua.eval(
        "check",
        Some(0),
        std::slice::from_ref(&keys),
        std::slice::from_ref(&good),
        &["extra".into()],
    ));
    assert!(e.contains("check takes"), "{e}");
    let e = err(lua.eval(
        "refund",
        Some(0),
        &[keys.clone(), fresh_keys()],
        &[good.clone(), good.clone()],
        &[],
    ));
    assert!(e.contains("bad item count"), "{e}");
    let e = err(lua.eval(
        "check",
        Some(0),
        std::slice::from_ref(&keys),
        &[good[..1].to_vec()],
        &[],
    ));
    assert!(
        e.contains("cut short") || e.contains("bad limit count"),
        "{e}"
    );
    let mut bad = good.clone();
    bad[0] = "-1".into();
    let e = err(lua.eval("check", Some(0), std::slice::from_ref(&keys), &[bad], &[]));
    assert!(e.contains("not a non-negative integer"), "{e}");
    // A policy text with a limit count its fields do not match.
    let mut bad = good.clone();
    bad[1] = bad[1].replacen('1', "2", 1);
    let e = err(lua.eval("check", Some(0), &[keys], &[bad], &[]));
    assert!(e.contains("bad limit count"), "{e}");
}
