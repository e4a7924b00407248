//! What ratekeeper needs from the operating system beyond POSIX, in one
//! place: sleeping on a 32-bit word shared between processes, the boot id,
//! where shared files normally live, reserving and zeroing file ranges, and
//! telling an exited process from a live one. Linux only (x86_64 and
//! aarch64, see `src/sync.rs`); any other OS stops the build here, naming
//! what a port must provide.
//!
//! # Porting to macOS (not supported: never built or tested)
//!
//! Each item of this module, and what is Linux-only outside it:
//!
//! | here (Linux)                         | macOS                                                          |
//! |--------------------------------------|----------------------------------------------------------------|
//! | [`futex_wait`], [`futex_wake_all`]: `futex(2)`, shared (not private) | `os_sync_wait_on_address_with_timeout` / `os_sync_wake_by_address_all` with `OS_SYNC_WAIT_ON_ADDRESS_SHARED` / `OS_SYNC_WAKE_BY_ADDRESS_SHARED` (macOS 14.4+); before that the private `__ulock_wait2` / `__ulock_wake` with `UL_COMPARE_AND_WAIT_SHARED` (and `ULF_WAKE_ALL`) |
//! | [`BOOT_ID_PATH`], [`read_boot_id`]: `/proc/sys/kernel/random/boot_id` | `sysctlbyname("kern.bootsessionuuid")`: a UUID string, new at every boot (same text format, no newline) |
//! | [`DEFAULT_SHARED_DIR`]: `/dev/shm` (tmpfs) | no `/dev/shm`; POSIX `shm_open` objects cannot be resized or punched; a directory the service's user owns, e.g. `confstr(_CS_DARWIN_USER_TEMP_DIR)` (disk-backed: the page cache keeps the hot pages) |
//! | [`reserve`], [`zero_range`]: `fallocate(2)` (plain, and `PUNCH_HOLE`) | `fcntl(F_PREALLOCATE)`, `fcntl(F_PUNCHHOLE)` (APFS; zeros written elsewhere) |
//! | [`has_exited`]: `/proc/<pid>/stat` state `Z`/`X` | `proc_pidinfo(PROC_PIDTBSDINFO)` or `sysctl(KERN_PROC_PID)`, state `SZOMB` |
//! | `src/clock.rs`: `getrandom(2)`, `CLOCK_MONOTONIC_COARSE` | `getentropy(2)`; `CLOCK_MONOTONIC_RAW_APPROX` |
//! | `src/shm/mod.rs`: `st_mode` is a `u32` | a `u16` (a cast where the mode is checked) |
//!
//! The rest is POSIX (`mmap`, `flock`, `open` with `O_NOFOLLOW`, `link`,
//! `fstat`, `kill(pid, 0)`), and the 16-byte atomic (`src/sync.rs`) is
//! the same on Apple silicon as on aarch64 Linux (LSE `casp`). The last two rows
//! (outside this module) are what `cargo check --target aarch64-apple-darwin`
//! reports besides the `compile_error!` below (checked once, with rustup's
//! std for that target).

#[cfg(not(target_os = "linux"))]
compile_error!(
    "ratekeeper supports Linux only (x86_64, aarch64). A port needs, in src/os.rs: futex wait/wake \
     on a word shared between processes (macOS: os_sync_wait_on_address / __ulock_wait), the boot \
     id (macOS: sysctl kern.bootsessionuuid), a shared-file directory other than /dev/shm, \
     fallocate (reserve, punch hole), the state of a process by pid; and in src/clock.rs getrandom \
     and a coarse monotonic clock. See the port list at the top of src/os.rs."
);

use crate::error::Error;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicU32;

/// Where shared files normally live on this platform: `/dev/shm`, a tmpfs
/// (memory, never disk I/O), writable by every user, sticky (only a file's
/// owner may remove or rename it). A convention, not a requirement: any
/// path on a local file system that supports `mmap` works.
pub const DEFAULT_SHARED_DIR: &str = "/dev/shm";

/// Sleeps while `*word == expected`, for at most `timeout_ns`; returns early
/// on a wake-up, a signal, or if the word already differs. The comparison
/// and the sleep are one step for the kernel: a [`futex_wake_all`] that
/// follows a change of the word is never missed by a sleeper that saw the
/// old value. The futex is shared (not private), so that a waiter in one
/// process is woken by a release in another when the word lives in a
/// shared mapping.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout_ns: u64) {
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000).min(i64::MAX as u64) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY:
    // - `word` is a valid, aligned 32-bit atomic for the duration of the call;
    // - FUTEX_WAIT reads it atomically and never writes it; `ts` is a valid
    //   relative timeout that outlives the call.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every thread (of any process) sleeping in [`futex_wait`] on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY:
    // - `word` is a valid, aligned 32-bit atomic; FUTEX_WAKE does not access
    //   its memory, it only uses the address as the wait-queue key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Where the running kernel's boot id is.
pub(crate) const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The boot id in the file at `path` (normally [`BOOT_ID_PATH`]): a UUID,
/// `8-4-4-4-12` hex digits and a newline. Unreadable, malformed or all
/// zero is an error: without it a reboot would go unnoticed, and a file
/// from an earlier boot (its leases, its windows, its clock) be misread.
pub(crate) fn read_boot_id(path: &Path) -> Result<[u8; 16], Error> {
    let text = std::fs::read(path).map_err(|e| {
        Error::Io(format!(
            "cannot read the boot id from {}: {e}; shared engines need it to tell a reboot (after which a shared file is reset)",
            path.display()
        ))
    })?;
    let malformed = || {
        Error::Io(format!(
            "the boot id in {} is not a UUID ({:?}); shared engines need it to tell a reboot",
            path.display(),
            String::from_utf8_lossy(&text[..text.len().min(64)])
        ))
    };
    let uuid = text.strip_suffix(b"\n").unwrap_or(&text);
    if uuid.len() != 36 {
        return Err(malformed());
    }
    let mut id = [0u8; 16];
    let mut nibbles = 0;
    for (i, &c) in uuid.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return Err(malformed());
            }
            continue;
        }
        let v = (c as char).to_digit(16).ok_or_else(malformed)? as u8;
        id[nibbles / 2] |= v << (4 * (1 - nibbles % 2));
        nibbles += 1;
    }
    if id == [0; 16] {
        return Err(malformed());
    }
    Ok(id)
}

/// Allocates `[offset, offset + len)` of the file, so that writing it later
/// cannot fail for want of space (on tmpfs: a full `/dev/shm` is an error
/// here rather than SIGBUS on first touch). A file system that cannot
/// preallocate is not an error.
pub(crate) fn reserve(fd: &OwnedFd, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: `fd` is open for the call; fallocate with mode 0 only
    // allocates (and may extend the file, which callers keep within it).
    let rc =
        unsafe { libc::fallocate(fd.as_raw_fd(), 0, offset as libc::off_t, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(());
    }
    Err(e)
}

/// Zeroes `[offset, offset + len)` of the file by punching a hole, never
/// changing its size. `Ok(false)` if the file system cannot punch holes
/// (the caller writes zeros instead).
pub(crate) fn zero_range(fd: &OwnedFd, offset: u64, len: u64) -> std::io::Result<bool> {
    // SAFETY: `fd` is open for the call; KEEP_SIZE never changes the size.
    let rc = unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
        return Ok(false);
    }
    Err(e)
}

/// True if `/proc/<pid>/stat` shows a process that has exited (`Z`ombie,
/// or `X`, dead). Unreadable: false (taken as alive).
pub(crate) fn has_exited(pid: u32) -> bool {
    // "pid (comm) S ...": comm may hold ')' and spaces, so the state is the
    // byte after the last ')' and a space.
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .iter()
        .rposition(|&b| b == b')')
        .and_then(|i| stat.get(i + 2));
    matches!(state, Some(b'Z' | b'X'))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn the_running_kernel_has_a_boot_id_and_this_process_has_not_exited() {
        let id = read_boot_id(Path::new(BOOT_ID_PATH)).unwrap();
        assert_ne!(id, [0; 16]);
        assert!(!has_exited(std::process::id()));
    }

    #[test]
    fn a_boot_id_is_parsed_as_its_sixteen_bytes() {
        let dir = std::env::temp_dir().join(format!("rk-os-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("boot_id");
        std::fs::write(&p, "0123abcd-4567-89ef-0011-2233445566ff\n").unwrap();
        assert_eq!(
            read_boot_id(&p).unwrap(),
            [
                0x01, 0x23, 0xab, 0xcd, 0x45, 0x67, 0x89, 0xef, 0x00, 0x11, 0x22, 0x33, 0x44, 0x55,
                0x66, 0xff
            ]
        );
        for bad in [
            "",
            "0123abcd-4567-89ef-0011-2233445566f\n",
            "0123abcd+4567-89ef-0011-2233445566ff\n",
            "0123abcd-4567-89ef-0011-2233445566fg\n",
            "00000000-0000-0000-0000-000000000000\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            assert!(read_boot_id(&p).is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Waits for child `pid` to exit and returns its exit code; `None` if it
/// had not exited after `secs` seconds (it is then killed and reaped), a
/// generous bound for a child that only computes. Under qemu-user (CI's
/// aarch64 step) a child forked from a process whose other threads are
/// running has been seen, rarely, to stall on a lock inherited held
/// (tests/hostile_file.rs); without the bound the test run would hang.
/// Tests only.
#[cfg(all(test, not(loom)))]
pub(crate) fn wait_exit(pid: libc::pid_t, secs: u64) -> Option<libc::c_int> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut status = 0;
    loop {
        // SAFETY: `pid` is the caller's child; `status` is a valid out-pointer.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            0 => {
                // SAFETY: our child, not yet reaped: the pid is still ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                // SAFETY: as above.
                unsafe { libc::waitpid(pid, &mut status, 0) };
                return None;
            }
            r => {
                assert_eq!(r, pid, "waitpid failed");
                assert!(libc::WIFEXITED(status), "child status {status:#x}");
                return Some(libc::WEXITSTATUS(status));
            }
        }
    }
}
