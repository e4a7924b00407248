//! A scratch directory of this test process's own. Its name holds the pid,
//! the clock and an attempt number, and it is made with `create_dir`, which
//! fails on a name that exists: the pid alone is not enough, because a CI
//! machine runs the same binaries again with the same small pids and a
//! failed run leaves its files behind (a directory left by one run once made
//! the next run's `create_dir` fail with "File exists").
//!
//! Tests have no hook that runs when the test binary ends, so a directory
//! outlives its process; the next process to make one removes those whose
//! process has exited (see [`sweep`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The directory, made on first use.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let base = std::env::temp_dir();
        for attempt in 0..1_000 {
            let d = base.join(format!(
                "ratekeeper-test-{}-{nanos}-{attempt}",
                std::process::id()
            ));
            match std::fs::create_dir(&d) {
                Ok(()) => {
                    sweep(&base, &d);
                    return d;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot make a scratch directory {}: {e}", d.display()),
            }
        }
        panic!("no free scratch directory name under {}", base.display())
    })
}

/// Removes the scratch directories under `base` left by processes that have
/// exited: a `ratekeeper-test-{pid}-...` directory (not a link) owned by the
/// same user as `ours`, whose pid has no `/proc` entry. A live process keeps
/// its directory (so does a dead one whose pid was reused: it goes later);
/// another user's directory is not ours to remove.
fn sweep(base: &Path, ours: &Path) {
    use std::os::unix::fs::MetadataExt;
    let (Ok(entries), Ok(me)) = (std::fs::read_dir(base), ours.metadata()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("ratekeeper-test-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let path = entry.path();
        let owned_dir = path
            .symlink_metadata()
            .is_ok_and(|m| m.is_dir() && m.uid() == me.uid());
        if owned_dir && path != ours && !Path::new(&format!("/proc/{pid}")).exists() {
            // Another process may sweep the same directory at once: either
            // removal may fail part way, and the other finishes it.
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// `name` in the scratch directory, with nothing at it: a file, link or
/// directory an earlier call of this process left there is removed.
pub fn path(name: &str) -> PathBuf {
    let p = dir().join(name);
    match p.symlink_metadata() {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p).unwrap(),
        Ok(_) => std::fs::remove_file(&p).unwrap(),
        Err(_) => {}
    }
    p
}
