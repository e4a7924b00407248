//! Runs a program of this build (the test binary itself, the CLI) through
//! the target's runner when there is one: `$RATEKEEPER_TEST_RUNNER`, which
//! tests/aarch64.sh sets to `qemu-aarch64 -L /usr/aarch64-linux-gnu`. There
//! the test binaries are aarch64 programs run by qemu-user, and the kernel
//! cannot exec another aarch64 program directly (no binfmt_misc handler is
//! registered: the step changes nothing on the machine).
//!
//! [`output`] and [`spawn_logged`] run any program with its output in files
//! instead of pipes (see [`Logged`]); every test that collects a program's
//! output goes through them.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::process::Command;

/// A `Command` for `program`, a binary of this build: the program itself,
/// or the runner's words followed by the program.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let runner = std::env::var("RATEKEEPER_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(first) => {
            let mut c = Command::new(first);
            c.args(words).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A child whose stdout and stderr go to files, never pipes.
///
/// `Command::output` and `Child::wait_with_output` read pipes inside std and
/// unwrap what the read returns; on the CI machine that read once failed with
/// EFAULT ("Bad address") and the test panicked inside std, not in its own
/// code. A file leaves std nothing to read while the child runs: the child
/// writes, `wait` reaps it, and the files are read and removed afterwards.
pub struct Logged {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

/// Spawns `cmd` with its stdout and stderr in two fresh files in the
/// temporary directory (stdin as `cmd` sets it).
pub fn spawn_logged(cmd: &mut Command) -> std::io::Result<Logged> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let stem = format!(
        "ratekeeper-run-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let out = std::env::temp_dir().join(format!("{stem}.out"));
    let err = std::env::temp_dir().join(format!("{stem}.err"));
    let create = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p)
    };
    let (out_file, err_file) = (create(&out)?, create(&err)?);
    let child = cmd.stdout(out_file).stderr(err_file).spawn();
    match child {
        Ok(child) => Ok(Logged { child, out, err }),
        Err(e) => {
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_file(&err);
            Err(e)
        }
    }
}

impl Logged {
    /// The child's stdin, if `cmd` made it a pipe.
    pub fn stdin(&mut self) -> Option<&mut std::process::ChildStdin> {
        self.child.stdin.as_mut()
    }

    /// Waits for the child (closing its stdin first, as `wait_with_output`
    /// does) and returns its status and everything it wrote.
    pub fn wait(mut self) -> std::io::Result<std::process::Output> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        let stdout = std::fs::read(&self.out)?;
        let stderr = std::fs::read(&self.err)?;
        Ok(std::process::Output {
            status,
            stdout,
            stderr,
        })
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

/// `cmd`'s status and output, as `Command::output` gives them (stdin is
/// null unless `cmd` sets it), through files: see [`Logged`].
pub fn output(cmd: &mut Command) -> std::io::Result<std::process::Output> {
    spawn_logged(cmd.stdin(std::process::Stdio::null()))?.wait()
}
