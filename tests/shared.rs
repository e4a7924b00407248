//! Shared memory across processes: exact totals, crashes, bad files,
//! creation races, reboots.
//!
//! Multi-process tests re-run this test binary as children (`child_entry`,
//! ignored unless a child role is set in the environment).

use ratekeeper::{Engine, EngineOptions, Error};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[path = "support/runner.rs"]
mod runner;

const S: u64 = 1_000_000_000;
const NOW: u64 = 1_000 * S;

#[path = "support/scratch.rs"]
mod scratch;
use scratch::path;

fn opts() -> EngineOptions {
    EngineOptions {
        capacity: 4096,
        shared_max_bytes: 64 << 20,
        ..Default::default()
    }
}

fn open(p: &Path) -> Engine {
    Engine::open_shared(p, opts()).unwrap()
}

/// The command that runs this test binary as a child in `role`, with
/// `args` (passed in the environment).
fn child_command(role: &str, p: &Path, args: &str) -> Command {
    let mut c = runner::command(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "child_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("RK_CHILD_ROLE", role)
    .env("RK_CHILD_PATH", p)
    .env("RK_CHILD_ARGS", args);
    c
}

/// Starts a child in `role` that talks to this process while it runs: its
/// stdin and stdout are pipes.
fn child(role: &str, p: &Path, args: &str) -> Child {
    child_command(role, p, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Starts a child in `role` whose only answer is its `RESULT` line, read
/// when it has exited (see [`result`]).
fn answering_child(role: &str, p: &Path, args: &str) -> runner::Logged {
    runner::spawn_logged(child_command(role, p, args).stdin(Stdio::null())).unwrap()
}

/// The `RESULT ...` line a child printed.
fn result(c: runner::Logged) -> String {
    let out = c.wait().unwrap();
    assert!(
        out.status.success(),
        "child failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // The harness may print "test child_entry ... " on the same line.
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.trim().to_owned()))
        .expect("child printed no RESULT line")
}

#[test]
#[ignore = "run by the multi-process tests as a child"]
fn child_entry() {
    let Ok(role) = std::env::var("RK_CHILD_ROLE") else {
        return;
    };
    let p = PathBuf::from(std::env::var("RK_CHILD_PATH").unwrap());
    let args = std::env::var("RK_CHILD_ARGS").unwrap();
    if role == "open_only" {
        match Engine::open_shared(&p, opts()) {
            Ok(_) => println!("RESULT opened"),
            Err(e) => println!("RESULT {e}"),
        }
        return;
    }
    let e = open(&p);
    match role.as_str() {
        // Hammer one key `n` times at one instant; report admissions.
        "hammer" => {
            let (spec, n) = args.split_once('|').unwrap();
            let pol = e.add_policy("p", spec).unwrap();
            let n: u64 = n.parse().unwrap();
            let admitted = (0..n)
                .filter(|_| e.check_at(pol, b"hot", 1, NOW).allowed)
                .count();
            println!("RESULT {admitted}");
        }
        // Many keys: report admissions per key.
        "keys" => {
            let pol = e.add_policy("k", "10/minute").unwrap();
            let mut counts = vec![0u32; 500];
            for round in 0..20 {
                // Each round visits the keys from a different starting point.
                for i in 0..500 {
                    let k = (i + round * 37) % 500;
                    counts[k] += e
                        .check_at(pol, format!("key:{k}").as_bytes(), 1, NOW)
                        .allowed as u32;
                }
            }
            let s: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
            println!("RESULT {}", s.join(","));
        }
        // Hammer forever (until killed), reporting each admission at once.
        "forever" => {
            use std::io::Write;
            let pol = e
                .add_policy("crash", "sliding_log 300/minute; 1000/hour")
                .unwrap();
            let lease = e
                .add_policy("lease", "concurrency 3 ttl 10 seconds")
                .unwrap();
            let mut out = std::io::stdout().lock();
            let mut i = 0u64;
            loop {
                if e.check_at(pol, b"hot", 1, NOW).allowed {
                    writeln!(out, "A").unwrap();
                    out.flush().unwrap();
                }
                // Hold leases without releasing them; others expire after the TTL.
                let _ = e.acquire_at(lease, b"hot", NOW);
                e.check_at(pol, format!("cold:{}", i % 50).as_bytes(), 1, NOW);
                i += 1;
            }
        }
        // Take the only permit, say so, hold it for a while, release it.
        "hold_permit" => {
            let pol = e.add_policy("slot", "concurrency 1 ttl 1 minute").unwrap();
            let (_, permit) = e.acquire(pol, b"report").unwrap();
            println!("HELD");
            std::thread::sleep(std::time::Duration::from_millis(1500));
            assert!(e.release(permit.unwrap()).unwrap());
            println!("RESULT released");
        }
        // Take a permit, say so, and exit without releasing it once stdin
        // closes.
        "hold_until_eof" => {
            let pol = e.add_policy("jobs", "concurrency 3 ttl 1 hour").unwrap();
            let (d, permit) = e.acquire(pol, b"job").unwrap();
            assert!(d.allowed && permit.is_some());
            println!("HELD");
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
            println!("RESULT exiting");
        }
        "open_and_add" => {
            let pol = e.add_policy("race", "5/minute").unwrap();
            let admitted = (0..3)
                .filter(|_| e.check_at(pol, b"k", 1, NOW).allowed)
                .count();
            println!("RESULT {admitted}");
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn two_engines_on_one_file_share_one_limit() {
    let p = path("two-engines");
    let a = open(&p);
    let b = open(&p);
    let pa = a.add_policy("login", "5/minute").unwrap();
    let pb = b.add_policy("login", "5 per minute").unwrap();
    let admitted = (0..10)
        .filter(|i| if i % 2 == 0 { a.check_at(pa, b"ip", 1, NOW) } else { b.check_at(pb, b"ip", 1, NOW) }.allowed)
        .count();
    assert_eq!(admitted, 5);
    assert_eq!(b.stats(pb).unwrap().allowed, 5);
    assert_eq!(a.stats(pa).unwrap().denied, 5);
}

#[test]
fn four_processes_hammering_one_key_admit_exactly_the_quota() {
    for spec in [
        "100/minute",
        "sliding_log 100/minute; 500/hour",
        "fixed_window 100/minute",
    ] {
        let p = path("hammer");
        let children: Vec<runner::Logged> = (0..4)
            .map(|_| answering_child("hammer", &p, &format!("{spec}|400")))
            .collect();
        let total: u64 = children
            .into_iter()
            .map(|c| result(c).parse::<u64>().unwrap())
            .sum();
        assert_eq!(total, 100, "{spec}");
        let e = open(&p);
        let st = e.stats(e.policy("p").unwrap()).unwrap();
        assert_eq!((st.allowed, st.denied), (100, 1500), "{spec}");
    }
}

#[test]
fn with_many_keys_no_key_exceeds_its_quota_across_processes() {
    let p = path("keys");
    let children: Vec<runner::Logged> = (0..4).map(|_| answering_child("keys", &p, "")).collect();
    let mut per_key = vec![0u32; 500];
    for c in children {
        for (k, n) in result(c).split(',').enumerate() {
            per_key[k] += n.parse::<u32>().unwrap();
        }
    }
    assert!(per_key.iter().all(|&n| n == 10), "{per_key:?}");
}

#[test]
fn processes_killed_mid_traffic_never_wedge_or_overrun_the_table() {
    use std::io::Read;
    let p = path("crash");
    let e = open(&p);
    let pol = e
        .add_policy("crash", "sliding_log 300/minute; 1000/hour")
        .unwrap();
    let lease = e
        .add_policy("lease", "concurrency 3 ttl 10 seconds")
        .unwrap();
    let mut reported = 0usize;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for round in 0..6 {
        let mut kids: Vec<Child> = (0..3).map(|_| child("forever", &p, "")).collect();
        // Kill each child at a pseudo-random moment while it runs.
        for k in kids.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(std::time::Duration::from_millis(20 + seed % 60));
            k.kill().unwrap();
        }
        for mut k in kids {
            k.wait().unwrap();
            let mut s = String::new();
            k.stdout.take().unwrap().read_to_string(&mut s).unwrap();
            reported += s.lines().filter(|l| *l == "A").count();
        }
        // The survivors (this process) keep working on the same buckets.
        let d = e.check_at(pol, format!("survivor:{round}").as_bytes(), 1, NOW);
        assert!(d.allowed);
    }
    // Never more than the quota was admitted (children may die between
    // their admission and its report, so reported <= charged <= 300).
    let v = e.peek_at(pol, b"hot", 1, NOW).unwrap();
    let charged = 300 - v.remaining - v.allowed as u64;
    assert!(
        reported as u64 <= charged,
        "{reported} reported, {charged} charged"
    );
    assert!(charged <= 300);
    // The state is consistent: exactly the remaining quota is still admitted.
    let left = (0..400)
        .filter(|_| e.check_at(pol, b"hot", 1, NOW).allowed)
        .count() as u64;
    assert_eq!(left + charged, 300);
    // Leases held by killed processes come back after their TTL.
    let later = NOW + 11 * S;
    let got = (0..5)
        .filter(|_| e.acquire_at(lease, b"hot", later).unwrap().1.is_some())
        .count();
    assert_eq!(got, 3);
}

#[test]
fn acquire_with_a_timeout_sleeps_until_another_process_releases() {
    use std::io::{BufRead, BufReader};
    let p = path("permit-wait");
    let e = open(&p);
    let pol = e.add_policy("slot", "concurrency 1 ttl 1 minute").unwrap();
    let mut holder = child("hold_permit", &p, "");
    let mut out = BufReader::new(holder.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HELD") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before holding the permit"
        );
    }
    // The permit is taken: a short wait times out...
    let (d, permit) = e
        .acquire_timeout(pol, b"report", std::time::Duration::from_millis(20))
        .unwrap();
    assert!(!d.allowed && permit.is_none());
    // ...a long one is woken by the other process's release, well before
    // the one-minute lease would have expired.
    let start = std::time::Instant::now();
    let (d, permit) = e
        .acquire_timeout(pol, b"report", std::time::Duration::from_secs(30))
        .unwrap();
    assert!(d.allowed && permit.is_some());
    assert!(start.elapsed() < std::time::Duration::from_secs(10));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(holder.wait().unwrap().success());
}

#[test]
fn eight_processes_creating_one_new_file_at_once_share_one_table() {
    let p = path("race");
    let children: Vec<runner::Logged> = (0..8)
        .map(|_| answering_child("open_and_add", &p, ""))
        .collect();
    let total: u64 = children
        .into_iter()
        .map(|c| result(c).parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, 5);
    let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("race.tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left behind");
}

#[test]
fn a_new_file_is_private_to_its_owner_by_default() {
    use std::os::unix::fs::PermissionsExt;
    let p = path("mode");
    let _e = open(&p);
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let q = path("mode-group");
    let _g = Engine::open_shared(
        &q,
        EngineOptions {
            shared_file_mode: 0o660,
            ..opts()
        },
    )
    .unwrap();
    assert_eq!(
        std::fs::metadata(&q).unwrap().permissions().mode() & 0o777,
        0o660
    );
}

#[test]
fn the_same_name_with_other_limits_in_another_engine_is_an_error_naming_both() {
    let p = path("mismatch");
    open(&p).add_policy("login", "5/minute").unwrap();
    let err = open(&p).add_policy("login", "50/minute").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::PolicyMismatch { .. }));
    assert!(
        msg.contains("5/minute") && msg.contains("50/minute"),
        "{msg}"
    );
}

/// Writes a new file with the mode shared files must have (a wider one is
/// refused before its contents are looked at).
fn write_private(p: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(p, bytes).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn corrupt_err(p: &Path) -> String {
    match Engine::open_shared(p, opts()) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("{} opened", p.display()),
    }
}

#[test]
fn bad_files_get_clear_errors() {
    // Zero length.
    let p = path("zero");
    write_private(&p, b"");
    assert!(corrupt_err(&p).contains("truncated or not a ratekeeper file"));
    // Random bytes.
    let p = path("random");
    let bytes: Vec<u8> = (0..300_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    write_private(&p, &bytes);
    assert!(corrupt_err(&p).contains("bad magic"));
    // A real file, truncated.
    let p = path("truncated");
    open(&p).add_policy("x", "1/second").unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(200_000).unwrap();
    assert!(corrupt_err(&p).contains("truncated or corrupt"));
    // Wrong magic and wrong version.
    let p = path("magic");
    open(&p);
    let mut b = std::fs::read(&p).unwrap();
    b[0] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    assert!(corrupt_err(&p).contains("bad magic"));
    let p = path("version");
    open(&p);
    let mut b = std::fs::read(&p).unwrap();
    b[8] = 99;
    std::fs::write(&p, &b).unwrap();
    assert!(corrupt_err(&p).contains("layout version 99"));
    // A corrupt directory entry.
    let p = path("entry");
    open(&p).add_policy("x", "1/second").unwrap();
    let mut b = std::fs::read(&p).unwrap();
    b[72..76].copy_from_slice(&5000u32.to_le_bytes()); // name_len of entry 0
    std::fs::write(&p, &b).unwrap();
    assert!(corrupt_err(&p).contains("bad name length"));
}

#[test]
fn a_read_only_file_is_a_permission_error() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let p = path("readonly");
    open(&p);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
    if !is_root() {
        assert!(corrupt_err(&p).contains("permission denied"));
        return;
    }
    // root ignores permission bits: try as an unprivileged user instead,
    // from a copy of this binary that user can execute.
    let exe = p.with_file_name("child-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(p.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = runner::output(
        runner::command(&exe)
            .args([
                "--ignored",
                "--exact",
                "child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RK_CHILD_ROLE", "open_only")
            .env("RK_CHILD_PATH", &p)
            .env("RK_CHILD_ARGS", "")
            .uid(65534)
            .gid(65534),
    )
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("permission denied"), "{text}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn a_file_from_an_earlier_boot_is_reset_not_misread() {
    let p = path("boot");
    let e = open(&p);
    let pol = e.add_policy("p", "1/hour").unwrap();
    assert!(e.check_at(pol, b"k", 1, NOW).allowed);
    drop(e);
    // Boot id is at offset 24 of the header.
    let mut b = std::fs::read(&p).unwrap();
    b[24] ^= 0x5a;
    std::fs::write(&p, &b).unwrap();
    let e = open(&p);
    assert!(e.policies().is_empty(), "the old boot's policies are gone");
    let pol = e.add_policy("p", "2/hour").unwrap();
    assert_eq!(e.check_at(pol, b"k", 1, NOW).remaining, 1);
}

#[test]
fn a_policy_that_does_not_fit_the_file_is_a_clear_error() {
    let p = path("small");
    let e = Engine::open_shared(
        &p,
        EngineOptions {
            shared_max_bytes: 1 << 20,
            ..opts()
        },
    )
    .unwrap();
    let err = e
        .add_policy_with(
            "big",
            "1/second",
            ratekeeper::PolicyOptions {
                capacity: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
    assert!(err.to_string().contains("raise shared_max_bytes"), "{err}");
    // Smaller policies still fit.
    e.add_policy("small", "1/second").unwrap();
}

#[test]
fn a_policy_added_by_another_process_is_found_by_name() {
    let p = path("lookup");
    open(&p).add_policy("other", "3/second").unwrap();
    let e = open(&p);
    let id = e.policy("other").expect("found");
    assert_eq!(e.policy_spec(id).unwrap().limits[0].count, 3);
    assert_eq!(e.policy_name(id).unwrap(), "other");
}

/// Waits (up to a generous 60 s) for a child's "HELD" line.
fn wait_held(c: &mut Child) -> std::io::BufReader<std::process::ChildStdout> {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("HELD") {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the child ended before holding its permit"
        );
    }
    out
}

/// The state letter of `/proc/<pid>/stat`, if readable.
fn proc_state(pid: u32) -> Option<u8> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    let i = stat.iter().rposition(|&b| b == b')')?;
    stat.get(i + 2).copied()
}

fn refused(r: Result<u64, Error>, says: &str) {
    match r {
        Err(Error::InvalidArgument(m)) => assert!(m.contains(says), "{m}"),
        other => panic!("expected a refusal saying {says:?}, got {other:?}"),
    }
}

#[test]
fn release_holder_frees_only_the_permits_of_a_dead_process() {
    let p = path("release-holder");
    let e = open(&p);
    let pol = e.add_policy("jobs", "concurrency 3 ttl 1 hour").unwrap();
    let free = |e: &Engine| e.peek(pol, b"job", 1).unwrap().remaining + 1;
    // This process holds a permit: its own pid is refused, the permit stays.
    let (_, mine) = e.acquire(pol, b"job").unwrap();
    let mine = mine.unwrap();
    refused(e.release_holder(pol, std::process::id()), "is this process");
    // Two children hold the other two.
    let mut a = child("hold_until_eof", &p, "");
    let mut b = child("hold_until_eof", &p, "");
    let mut a_out = wait_held(&mut a);
    let mut b_out = wait_held(&mut b);
    assert!(!e.peek(pol, b"job", 1).unwrap().allowed, "3 permits held");
    // A live holder (or a live process that reused a dead holder's pid) is
    // refused, and keeps its permit.
    refused(e.release_holder(pol, a.id()), "is alive");
    assert!(!e.peek(pol, b"job", 1).unwrap().allowed);
    // So is any live process, holder or not, and numbers that are no pid.
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    refused(e.release_holder(pol, sleeper.id()), "is alive");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    refused(e.release_holder(pol, 0), "not a process id");
    refused(e.release_holder(pol, 1 << 22), "not a process id");
    refused(e.release_holder(pol, u32::MAX), "not a process id");
    // A dead process that held nothing: allowed, nothing released.
    let mut done = Command::new("true").spawn().unwrap();
    let gone = done.id();
    assert!(done.wait().unwrap().success());
    assert_eq!(e.release_holder(pol, gone), Ok(0));
    // Child a exits without releasing; not reaped yet, it is a zombie:
    // dead, so its permit may go.
    drop(a.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut a_out, &mut rest).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proc_state(a.id()) != Some(b'Z') {
        assert!(std::time::Instant::now() < deadline, "child a never exited");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(e.release_holder(pol, a.id()), Ok(1));
    assert_eq!(free(&e), 1);
    assert!(a.wait().unwrap().success());
    // Child b exits and is reaped (waitpid): exactly its one permit goes.
    drop(b.stdin.take());
    std::io::Read::read_to_string(&mut b_out, &mut rest).unwrap();
    assert!(b.wait().unwrap().success());
    assert_eq!(e.release_holder(pol, b.id()), Ok(1));
    assert_eq!(e.release_holder(pol, b.id()), Ok(0));
    assert_eq!(free(&e), 2);
    // This process's permit was never touched.
    assert!(e.release(mine).unwrap());
    assert_eq!(free(&e), 3);
}
