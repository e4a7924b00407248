//! Runs a program of this build (the test binary itself, the CLI) through
//! the target's runner when there is one: `$RATEKEEPER_TEST_RUNNER`, which
//! tests/aarch64.sh sets to `qemu-aarch64 -L /usr/aarch64-linux-gnu`. There
//! the test binaries are aarch64 programs run by qemu-user, and the kernel
//! cannot exec another aarch64 program directly (no binfmt_misc handler is
//! registered: the step changes nothing on the machine).

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
