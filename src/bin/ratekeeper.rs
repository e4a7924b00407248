//! `ratekeeper`: inspect and operate a shared ratekeeper file.
//!
//! Exit codes: 0 success (for `check`: allowed), 1 denied / nothing to
//! reset, 2 usage or file errors.

use clap::{Parser, Subcommand};
use ratekeeper::{Engine, EngineOptions, PolicyId};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ratekeeper",
    version,
    about = "Inspect and operate ratekeeper shared-memory limits"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Permission bits (octal) of a new file, and the widest an existing
    /// file may have: the workers' `shared_file_mode`.
    #[arg(long, global = true, default_value = "600", value_parser = octal_mode)]
    mode: u32,
}

fn octal_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("{s:?} is not an octal file mode such as 600 or 660"))
}

#[derive(Subcommand)]
enum Command {
    /// Create the shared file if needed and add a policy (idempotent; an
    /// existing policy of that name with other limits is an error).
    Add {
        path: PathBuf,
        policy: String,
        spec: String,
        /// Keys the policy tracks.
        #[arg(long)]
        capacity: Option<usize>,
    },
    /// List the policies of a shared file.
    Policies { path: PathBuf },
    /// Counters and occupancy of every policy (totals of all processes).
    Stats {
        path: PathBuf,
        /// One JSON object per policy, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Check (and charge) a key; exit 0 if allowed, 1 if denied.
    Check {
        path: PathBuf,
        policy: String,
        key: String,
        /// Cost of the request.
        #[arg(long, default_value_t = 1)]
        cost: u32,
        /// Report without charging.
        #[arg(long)]
        peek: bool,
    },
    /// Forget a key's state (its quota is full again); exit 1 if it had none.
    Reset {
        path: PathBuf,
        policy: String,
        key: String,
    },
    /// Give a key a multiple of the policy's quota (e.g. 10 for a partner),
    /// for every process at once; `--clear` takes it back; no factor shows it.
    Override {
        path: PathBuf,
        policy: String,
        key: String,
        factor: Option<f64>,
        #[arg(long, conflicts_with = "factor")]
        clear: bool,
    },
    /// Release every concurrency permit held by a dead process.
    ///
    /// Refused, releasing nothing, if PID is a live process in this PID
    /// namespace (a zombie, exited but not yet reaped, counts as dead): a
    /// lease records only its holder's pid, which a live process may have
    /// reused. Every process sharing the file, and this command, must share
    /// one PID namespace: a pid from another namespace names another
    /// process here, or none.
    ReleasePid { path: PathBuf, pid: u32 },
    /// Print recent denials (the last 512 per policy), oldest first.
    Tail {
        path: PathBuf,
        /// Only this policy.
        #[arg(long)]
        policy: Option<String>,
        /// Keep printing new denials as they happen (like `tail -f`).
        #[arg(short, long)]
        follow: bool,
        /// How often to look for new denials when following.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
    },
}

fn options(mode: u32) -> EngineOptions {
    EngineOptions {
        shared_file_mode: mode,
        ..Default::default()
    }
}

fn open(path: &Path, mode: u32) -> Result<Engine, String> {
    if std::fs::symlink_metadata(path).is_err() {
        return Err(format!("{}: no such shared file", path.display()));
    }
    Engine::open_shared(path, options(mode)).map_err(|e| e.to_string())
}

fn policy(e: &Engine, name: &str) -> Result<PolicyId, String> {
    e.policy(name).ok_or_else(|| {
        let names: Vec<String> = e
            .policies()
            .into_iter()
            .filter_map(|p| e.policy_name(p).ok().map(str::to_owned))
            .collect();
        format!("no policy named {name:?} (policies: {})", names.join(", "))
    })
}

fn secs(ns: u64) -> String {
    if ns == u64::MAX {
        "never".into()
    } else {
        format!("{:.3}s", ns as f64 / 1e9)
    }
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    let mode = cli.mode;
    match cli.command {
        Command::Add {
            path,
            policy,
            spec,
            capacity,
        } => add(&path, mode, &policy, &spec, capacity),
        Command::Policies { path } => list_policies(&open(&path, mode)?),
        Command::Stats { path, json } => stats(&open(&path, mode)?, json),
        Command::Check {
            path,
            policy,
            key,
            cost,
            peek,
        } => check(&open(&path, mode)?, &policy, &key, cost, peek),
        Command::Reset { path, policy, key } => reset(&open(&path, mode)?, &policy, &key),
        Command::Tail {
            path,
            policy,
            follow,
            interval_ms,
        } => tail(&open(&path, mode)?, policy.as_deref(), follow, interval_ms),
        Command::Override {
            path,
            policy,
            key,
            factor,
            clear,
        } => set_override(&open(&path, mode)?, &policy, &key, factor, clear),
        Command::ReleasePid { path, pid } => release_pid(&open(&path, mode)?, pid),
    }
}

/// `add`: creates the file if needed, and the policy.
fn add(
    path: &Path,
    mode: u32,
    policy: &str,
    spec: &str,
    capacity: Option<usize>,
) -> Result<ExitCode, String> {
    let e = Engine::open_shared(path, options(mode)).map_err(|e| e.to_string())?;
    let opts = ratekeeper::PolicyOptions {
        capacity,
        ..Default::default()
    };
    let id = e
        .add_policy_with(policy, spec, opts)
        .map_err(|e| e.to_string())?;
    println!(
        "{policy}\t{}",
        e.policy_spec(id).map_err(|e| e.to_string())?
    );
    Ok(ExitCode::SUCCESS)
}

/// `policies`: one line per policy.
fn list_policies(e: &Engine) -> Result<ExitCode, String> {
    for p in e.policies() {
        let spec = e.policy_spec(p).map_err(|e| e.to_string())?;
        let st = e.stats(p).map_err(|e| e.to_string())?;
        println!(
            "{}\t{}\tcapacity={}",
            e.policy_name(p).unwrap_or("?"),
            spec,
            st.capacity
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `stats`: every policy's counters, as a table or JSON lines.
fn stats(e: &Engine, json: bool) -> Result<ExitCode, String> {
    if !json {
        println!(
            "{:<20} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>21}  limits",
            "policy",
            "allowed",
            "denied",
            "shadow",
            "banned",
            "bans",
            "evictions",
            "table_full",
            "occupancy"
        );
    }
    for p in e.policies() {
        let name = e.policy_name(p).unwrap_or("?");
        let spec = e.policy_spec(p).map_err(|e| e.to_string())?.to_string();
        let s = e.stats(p).map_err(|e| e.to_string())?;
        if json {
            println!(
                "{{\"policy\":{},\"limits\":{},\"allowed\":{},\"denied\":{},\"shadow_denied\":{},\"banned\":{},\"bans\":{},\"evictions\":{},\"table_full\":{},\"occupancy\":{},\"capacity\":{}}}",
                json_str(name), json_str(&spec), s.allowed, s.denied, s.shadow_denied, s.banned, s.bans, s.evictions, s.table_full, s.occupancy, s.capacity
            );
        } else {
            println!(
                "{:<20} {:>12} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>21}  {}",
                name,
                s.allowed,
                s.denied,
                s.shadow_denied,
                s.banned,
                s.bans,
                s.evictions,
                s.table_full,
                format!("{}/{}", s.occupancy, s.capacity),
                spec
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `check`: one check (or peek); exit status 1 when denied.
fn check(e: &Engine, name: &str, key: &str, cost: u32, peek: bool) -> Result<ExitCode, String> {
    let p = policy(e, name)?;
    let d = if peek {
        e.peek(p, key.as_bytes(), cost).map_err(|e| e.to_string())?
    } else {
        e.try_check_at(p, key.as_bytes(), cost, e.now_ns())
            .map_err(|e| e.to_string())?
    };
    println!(
        "{} limit={} remaining={} retry_after={} reset_after={} limit_index={}",
        if d.allowed { "allowed" } else { "denied" },
        d.limit,
        d.remaining,
        secs(d.retry_after_ns),
        secs(d.reset_after_ns),
        d.limit_index
    );
    Ok(if d.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `reset`: exit status 1 when the key held no state.
fn reset(e: &Engine, name: &str, key: &str) -> Result<ExitCode, String> {
    let p = policy(e, name)?;
    if e.reset(p, key.as_bytes()).map_err(|e| e.to_string())? {
        println!("reset {name} {key}");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{name} {key}: no state to reset");
        Ok(ExitCode::from(1))
    }
}

/// `tail`: recent denials of one or every policy, oldest first; with
/// `follow`, new ones as they come.
fn tail(
    e: &Engine,
    only: Option<&str>,
    follow: bool,
    interval_ms: u64,
) -> Result<ExitCode, String> {
    use std::io::Write;
    let mut next: std::collections::HashMap<PolicyId, u64> = Default::default();
    loop {
        let ids = match only {
            Some(name) => vec![policy(e, name)?],
            None => e.policies(),
        };
        let mut batch = vec![];
        for p in ids {
            let since = next.get(&p).copied().unwrap_or(0);
            for ev in e.recent_denials(p, since).map_err(|e| e.to_string())? {
                next.insert(p, ev.ticket + 1);
                batch.push((ev.time_ns, p, ev));
            }
        }
        batch.sort_by_key(|(t, p, ev)| (*t, p.index(), ev.ticket));
        let mut out = std::io::stdout().lock();
        for (_, p, ev) in batch {
            let line = writeln!(out, "{}", event_line(e, p, &ev));
            if line.is_err() {
                return Ok(ExitCode::SUCCESS); // the reader went away (| head)
            }
        }
        let _ = out.flush();
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(interval_ms.max(10)));
    }
}

/// One line of `tail`.
fn event_line(e: &Engine, p: PolicyId, ev: &ratekeeper::DenyEvent) -> String {
    let key = match &ev.key {
        Some(k) => String::from_utf8_lossy(k).into_owned(),
        None => format!("#{:016x}", ev.key_hash),
    };
    let what = if ev.banned {
        "banned"
    } else if ev.shadow {
        "shadow-denied"
    } else {
        "denied"
    };
    format!(
        "{:.3} {} {} {} retry_after={} limit={}",
        ev.time_ns as f64 / 1e9,
        e.policy_name(p).unwrap_or("?"),
        key,
        what,
        secs(ev.retry_after_ns),
        ev.limit_index
    )
}

/// `override`: sets or clears a key's override, then shows it.
fn set_override(
    e: &Engine,
    name: &str,
    key: &str,
    factor: Option<f64>,
    clear: bool,
) -> Result<ExitCode, String> {
    let p = policy(e, name)?;
    if clear {
        e.clear_override(p, key.as_bytes())
            .map_err(|e| e.to_string())?;
    } else if let Some(f) = factor {
        e.set_override(p, key.as_bytes(), f)
            .map_err(|e| e.to_string())?;
    }
    match e
        .override_of(p, key.as_bytes())
        .map_err(|e| e.to_string())?
    {
        Some(f) => println!("{name} {key}: {f}x"),
        None => println!("{name} {key}: no override"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `release-pid`: a dead worker's permits, in every policy.
fn release_pid(e: &Engine, pid: u32) -> Result<ExitCode, String> {
    let mut total = 0;
    for p in e.policies() {
        total += e.release_holder(p, pid).map_err(|e| e.to_string())?;
    }
    println!("released {total} permits held by pid {pid}");
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("ratekeeper: {msg}");
            ExitCode::from(2)
        }
    }
}
