//! The `ratekeeper` command-line tool against a real shared file.

use std::process::Command;

#[path = "support/runner.rs"]
mod runner;
#[path = "support/scratch.rs"]
mod scratch;

fn rk(args: &[&str]) -> (i32, String, String) {
    let out = runner::output(runner::command(env!("CARGO_BIN_EXE_ratekeeper")).args(args)).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn shm_path(name: &str) -> String {
    let p = scratch::path(name);
    p.to_string_lossy().into_owned()
}

#[test]
fn add_check_stats_reset_and_policies_work_end_to_end_with_shell_exit_codes() {
    let p = shm_path("e2e");
    let (code, out, _) = rk(&["add", &p, "login", "2 per minute", "--capacity", "1000"]);
    assert_eq!((code, out.as_str()), (0, "login\t2/minute\n"));
    assert_eq!(rk(&["check", &p, "login", "ip:1"]).0, 0);
    let (code, out, _) = rk(&["check", &p, "login", "ip:1"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("allowed limit=2 remaining=0 "), "{out}");
    let (code, out, _) = rk(&["check", &p, "login", "ip:1"]);
    assert_eq!(code, 1, "denied exits 1");
    assert!(
        out.starts_with("denied limit=2 remaining=0 retry_after="),
        "{out}"
    );
    let (code, out, _) = rk(&["stats", &p]);
    assert_eq!(code, 0);
    let row = out.lines().find(|l| l.starts_with("login")).unwrap();
    let cols: Vec<&str> = row.split_whitespace().collect();
    // allowed, denied, shadow, banned, bans, evictions, table_full, occupancy
    assert_eq!(
        &cols[1..9],
        &["2", "1", "0", "0", "0", "0", "0", "1/1024"],
        "{row}"
    );
    let (_, out, _) = rk(&["stats", "--json", &p]);
    assert!(
        out.contains("\"policy\":\"login\"")
            && out.contains("\"allowed\":2")
            && out.contains("\"denied\":1"),
        "{out}"
    );
    assert_eq!(rk(&["reset", &p, "login", "ip:1"]).0, 0);
    assert_eq!(
        rk(&["reset", &p, "login", "ip:1"]).0,
        1,
        "nothing left to reset"
    );
    assert_eq!(rk(&["check", &p, "login", "ip:1", "--peek"]).0, 0);
    let (code, out, _) = rk(&["policies", &p]);
    assert_eq!(
        (code, out.as_str()),
        (0, "login\t2/minute\tcapacity=1024\n")
    );
}

#[test]
fn mistakes_exit_2_with_a_message() {
    let p = shm_path("mistakes");
    let (code, _, err) = rk(&["stats", &p]);
    assert_eq!(code, 2);
    assert!(err.contains("no such shared file"), "{err}");
    rk(&["add", &p, "login", "5/minute"]);
    let (code, _, err) = rk(&["check", &p, "nope", "k"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no policy named \"nope\" (policies: login)"),
        "{err}"
    );
    let (code, _, err) = rk(&["add", &p, "login", "6/minute"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("5/minute") && err.contains("6/minute"),
        "{err}"
    );
    let (code, _, err) = rk(&["add", &p, "x", "5/fortnight"]);
    assert_eq!(code, 2);
    assert!(err.contains("at byte 2"), "{err}");
    let (code, _, _) = rk(&["frobnicate"]);
    assert_eq!(code, 2);
}

#[test]
fn tail_prints_recent_denials_and_follow_prints_new_ones() {
    use std::io::{BufRead, BufReader};
    let p = shm_path("tail");
    rk(&["add", &p, "login", "1/minute"]);
    // Two keys denied once each (the first check of each is allowed): two
    // events whatever the time between the commands (each key's repeats
    // within a second would be sampled out, and this test cannot know how
    // fast the machine runs them).
    for key in ["ip:1", "ip:1", "ip:3", "ip:3"] {
        rk(&["check", &p, "login", key]);
    }
    let (code, out, _) = rk(&["tail", &p]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_ne!(
        lines[0].split(' ').nth(2),
        lines[1].split(' ').nth(2),
        "{out}"
    );
    for l in &lines {
        let f: Vec<&str> = l.split(' ').collect();
        assert_eq!(f[1], "login");
        assert!(
            f[2].starts_with('#') && f[2].len() == 17,
            "keys are hashed unless recorded: {l}"
        );
        assert_eq!(f[3], "denied");
        let retry: f64 = f[4]
            .strip_prefix("retry_after=")
            .and_then(|r| r.strip_suffix('s'))
            .and_then(|r| r.parse().ok())
            .unwrap();
        assert!((59.0..=60.0).contains(&retry), "{l}");
        assert_eq!(f[5], "limit=0");
    }
    // Follow: a new denial shows up while tail runs.
    let mut child = runner::command(env!("CARGO_BIN_EXE_ratekeeper"))
        .args([
            "tail",
            "--follow",
            "--interval-ms",
            "20",
            "--policy",
            "login",
            &p,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read lines on a thread, so that a missing line fails the test
    // instead of hanging it.
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || rx.recv_timeout(std::time::Duration::from_secs(20));
    for _ in 0..2 {
        next().expect("the two earlier denials");
    }
    rk(&["check", &p, "login", "ip:2"]);
    rk(&["check", &p, "login", "ip:2"]);
    let line = next();
    child.kill().unwrap();
    child.wait().unwrap();
    let line = line.expect("tail --follow printed the new denial");
    assert!(
        line.contains(" login #") && line.contains(" denied "),
        "{line}"
    );
}

#[test]
fn override_sets_shows_and_clears_a_keys_quota_for_every_process() {
    let p = shm_path("override");
    rk(&["add", &p, "api", "2/minute"]);
    let (code, out, _) = rk(&["override", &p, "api", "key:partner", "10"]);
    assert_eq!((code, out.as_str()), (0, "api key:partner: 10x\n"));
    let (_, out, _) = rk(&["check", &p, "api", "key:partner"]);
    assert!(out.contains("limit=20 remaining=19"), "{out}");
    assert_eq!(
        rk(&["override", &p, "api", "key:partner"]).1,
        "api key:partner: 10x\n"
    );
    assert_eq!(
        rk(&["override", &p, "api", "key:partner", "--clear"]).1,
        "api key:partner: no override\n"
    );
    let (code, _, err) = rk(&["override", &p, "api", "k", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("between 0.001"), "{err}");
}

#[test]
fn release_pid_refuses_a_live_process_and_accepts_a_dead_one() {
    let p = shm_path("release-pid");
    assert_eq!(rk(&["add", &p, "jobs", "concurrency 2"]).0, 0);
    // This test process is alive (to the CLI, another live process).
    let me = std::process::id().to_string();
    let (code, out, err) = rk(&["release-pid", &p, &me]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains(&format!("process {me} is alive")), "{err}");
    let mut done = Command::new("true").spawn().unwrap();
    let dead = done.id().to_string();
    assert!(done.wait().unwrap().success());
    let (code, out, _) = rk(&["release-pid", &p, &dead]);
    assert_eq!(code, 0);
    assert_eq!(out, format!("released 0 permits held by pid {dead}\n"));
    let (_, help, _) = rk(&["release-pid", "--help"]);
    assert!(help.contains("PID namespace"), "{help}");
    let _ = std::fs::remove_file(&p);
}

#[test]
fn a_file_with_a_group_mode_needs_mode_and_a_wider_one_is_refused() {
    let p = shm_path("mode");
    assert_eq!(rk(&["add", &p, "api", "5/second", "--mode", "660"]).0, 0);
    let (code, _, err) = rk(&["policies", &p]);
    assert_eq!(code, 2);
    assert!(
        err.contains("is mode 0660, wider than the configured 0600"),
        "{err}"
    );
    let (code, out, _) = rk(&["policies", &p, "--mode", "660"]);
    assert_eq!((code, out.as_str()), (0, "api\t5/second\tcapacity=65536\n"));
    let (code, _, err) = rk(&["policies", &p, "--mode", "9"]);
    assert_eq!(code, 2, "{err}");
    let link = shm_path("mode-link");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    let (code, _, err) = rk(&["policies", &link, "--mode", "660"]);
    assert_eq!(code, 2);
    assert!(err.contains("is a symbolic link"), "{err}");
}
