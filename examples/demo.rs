//! A tour: burst and sustained limits, a login limit with refunds, a shared
//! file used by two engines, and what a 429 would carry.
//!
//! `cargo run --release --example demo`

use ratekeeper::{Engine, EngineOptions};

const S: u64 = 1_000_000_000;

fn show(what: &str, d: ratekeeper::Decision) {
    println!(
        "  {what:<28} {:<7} limit={:<3} remaining={:<3} retry_after={:>7.3}s reset_after={:>7.3}s (limit #{})",
        if d.allowed { "allowed" } else { "DENIED" },
        d.limit,
        d.remaining,
        if d.retry_after_ns == u64::MAX { f64::INFINITY } else { d.retry_after_ns as f64 / 1e9 },
        d.reset_after_ns as f64 / 1e9,
        d.limit_index
    );
}

fn main() -> Result<(), ratekeeper::Error> {
    let engine = Engine::new(EngineOptions::default())?;
    let api = engine.add_policy("api", "gcra 5/second burst 3; fixed_window 8/minute")?;
    println!("policy api = {}", engine.policy_spec(api)?);
    let t0 = 100 * S;
    for i in 0..5 {
        show(
            &format!("t=0.0s request {i}"),
            engine.check_at(api, b"key:alice", 1, t0),
        );
    }
    for i in 0..7 {
        let t = t0 + (i + 1) * S / 2;
        show(
            &format!("t={:.1}s", (t - t0) as f64 / 1e9),
            engine.check_at(api, b"key:alice", 1, t),
        );
    }
    show(
        "another client, t=0.0s",
        engine.check_at(api, b"key:bob", 1, t0),
    );

    println!("\nlogin: 3 failures per minute; successful logins are refunded");
    let login = engine.add_policy("login", "sliding_log 3/minute")?;
    for (i, ok) in [false, true, false, false, false].iter().enumerate() {
        let t = t0 + i as u64 * S;
        let d = engine.check_at(login, b"user:carol", 1, t);
        show(
            &format!(
                "attempt {i} ({})",
                if *ok { "good password" } else { "bad password" }
            ),
            d,
        );
        if d.allowed && *ok {
            engine.refund_at(login, b"user:carol", 1, t)?;
        }
    }

    let path = std::env::temp_dir().join(format!("ratekeeper-demo-{}", std::process::id()));
    println!(
        "\nshared file {}: two engines (think: two Gunicorn workers), one limit",
        path.display()
    );
    let w1 = Engine::open_shared(&path, EngineOptions::default())?;
    let w2 = Engine::open_shared(&path, EngineOptions::default())?;
    let p1 = w1.add_policy("upload", "4/minute")?;
    let p2 = w2.add_policy("upload", "4 per minute")?;
    for i in 0..6 {
        let (name, e, p) = if i % 2 == 0 {
            ("worker 1", &w1, p1)
        } else {
            ("worker 2", &w2, p2)
        };
        show(
            &format!("{name} request {i}"),
            e.check_at(p, b"ip:203.0.113.7", 1, t0),
        );
    }
    let st = w1.stats(p1)?;
    println!(
        "  totals seen by worker 1: allowed={} denied={}",
        st.allowed, st.denied
    );
    std::fs::remove_file(&path).ok();

    let d = engine.check_at(api, b"key:alice", 1, t0 + 3 * S + S / 2);
    println!(
        "\na denied request becomes: 429 Too Many Requests, Retry-After: {}",
        d.retry_after_ns.div_ceil(S)
    );
    println!(
        "bad spec: {}",
        engine.add_policy("bad", "10/fortnight").unwrap_err()
    );
    Ok(())
}
