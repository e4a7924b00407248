//! Shared memory: a file-backed mapping (normally under `/dev/shm`) that
//! holds a header, a directory of policies and every policy's region
//! (counters, wait words and table), so that all processes of a host that
//! open the same path enforce the same limits together.
//!
//! # File layout
//!
//! | offset            | what                                                |
//! |-------------------|-----------------------------------------------------|
//! | 0                 | [`Header`]: magic, layout version, sizes, hash seed, boot id, directory |
//! | `HEADER_BYTES`..  | policy regions, each 4096-aligned, allocated in order |
//!
//! Everything in the file is integers and atomics (`repr(C)`), located by
//! offsets, never pointers. The header is written before the file appears
//! under its name (it is built under a temporary name and `link(2)`ed into
//! place), magic number last. Adding a policy takes an `flock(2)` on the
//! file (not on the hot path; the kernel drops it if the holder dies); a
//! directory entry is complete before `policy_count` is raised (release)
//! past it, and never changes after.
//!
//! The layout does not depend on the architecture, so the header records
//! none: fields have fixed sizes (no `usize`, no pointers) and alignments
//! fixed by the types (16-byte table words, 128-byte counter and deny-ring
//! lines in `src/stats.rs` and `src/events.rs`: a cache line on x86_64 and
//! on aarch64 alike, but a layout constant, not read from the build), every
//! supported target is 64-bit little-endian (others do not build: see
//! below), and keys hash with the portable SipHash of `src/hash.rs`.
//! `REGION_ALIGN` (4096) is a unit of the layout, not the page size: the
//! whole file is mapped at once from offset 0, so kernels with 16 KiB or
//! 64 KiB pages (common on aarch64) map the same file. A file made by an
//! x86_64 process is used as it is by an aarch64 process, and the other way
//! round (the aarch64 CI step, `tests/aarch64.sh`, does both on one file).
//!
//! A file whose boot id differs from the running kernel's is from an earlier
//! boot: under the lock its magic number is replaced by `MAGIC_RESETTING`,
//! its regions are zeroed in place (a punched hole; the size never changes,
//! so a process that still maps it reads zeros rather than dying of
//! SIGBUS), then a fresh header is written, magic last. An open that finds
//! the mark (or the all-zero header an older version's interrupted reset
//! left) completes the reset under the lock.
//!
//! # Hostile files
//!
//! The file is input from whoever can write it. It is opened without
//! following a symbolic link or blocking, and refused unless it is a
//! regular file owned by this process's effective uid with no permission
//! bits beyond `shared_file_mode`. Header fields and directory entries are
//! copied into process memory once and validated with checked arithmetic;
//! only the copies are used afterwards.

use crate::error::Error;
use crate::hash::Seed;
use crate::sync::{SharedOrdering as Ordering, SharedU32 as AtomicU32, SharedU64 as AtomicU64};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

// The layout is written and read as little-endian 64-bit data (the header
// image is built with `to_le_bytes`, the words are read natively).
#[cfg(not(all(target_endian = "little", target_pointer_width = "64")))]
compile_error!(
    "ratekeeper's shared-file layout needs a 64-bit little-endian target (x86_64 or aarch64 Linux)"
);

/// "RATEKEEP" in ASCII, little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"RATEKEEP");
/// Bumped on any change of the file layout or of the table format.
/// Version 2: the magic number is written last and doubles as the reset
/// mark (`MAGIC_RESETTING`); resets never shrink the file.
/// Version 3: each policy's deny-event ring is followed by its sampler
/// words (events.rs, "Sampling").
/// Version 4: a key may live in its second bucket (table, "Two buckets per
/// key"), which a version-3 reader would not look in.
/// Version 5: an intent's op has 4 bits and its slot 3, for MOVE and
/// MOVE-IN (table, "Moving a key"); a version-4 reader would misread them.
/// Version 6: a policy of one GCRA limit keeps the packed table (table,
/// `packed.rs`: 16-byte words, four to a bucket, an intent per four
/// buckets); a version-5 reader would read it as a slots table.
/// Version 7: a claim of a slot whose key had expired lands only if that
/// key is still expired (EVICT and TOUCH-EVICT, ops 10 and 11, for a claim
/// of a live victim; the packed CLAIM's evict bit); a version-6 process
/// sharing the file would complete an EVICT as a no-op and would still
/// wipe a charge that landed under its own claims.
/// Version 8: each policy's head ends with a counter line per CPU
/// (`stats.rs`, `rseq.rs`), which moves the deny-event ring; a version-7
/// process would read and write the ring at the wrong place.
pub(crate) const LAYOUT_VERSION: u32 = 8;
/// The magic word while the file is being reset for a new boot (or left so
/// by a crash during a reset, which the next open completes).
pub(crate) const MAGIC_RESETTING: u64 = u64::from_le_bytes(*b"RKRESET!");
/// Policies one shared file can hold.
pub const MAX_SHARED_POLICIES: usize = 128;
/// Longest policy name in a shared file.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest canonical spec in a shared file.
pub const MAX_SPEC_BYTES: usize = 1024;
/// Largest shared file (and `shared_max_bytes`): keeps every offset and
/// size computed from the file far from overflow.
pub(crate) const MAX_FILE_BYTES: u64 = 1 << 46;
/// Alignment of policy regions.
const REGION_ALIGN: u64 = 4096;

/// One policy of the directory. Written once under the file lock, before
/// `Header::policy_count` covers it; read-only afterwards (but never trusted:
/// see [`Mapping::entry_checked`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct DirEntry {
    pub name_len: u32,
    pub spec_len: u32,
    pub name: [u8; MAX_NAME_BYTES],
    pub spec: [u8; MAX_SPEC_BYTES],
    /// Buckets of the policy's table.
    pub buckets: u64,
    /// The policy's behaviour options, as numbers.
    pub options: StoredOptions,
    /// Byte offset of the policy's region from the start of the file.
    pub region_offset: u64,
    /// Bytes of the region.
    pub region_bytes: u64,
}

/// A policy's behaviour options as a directory entry stores them: plain
/// numbers, laid out as in the file. This module only stores and copies
/// them; the engine encodes them and, since the file is hostile and any
/// number may be found here, checks them (the [`OptionsCheck`] given to
/// [`Mapping::open`]) before they are used.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredOptions {
    /// What a full table does: 0 evict, 1 fail open, 2 fail closed.
    pub when_full: u32,
    /// Bit 0: shadow mode; bit 1: the deny ring records keys.
    pub flags: u32,
    pub retry_jitter_ns: u64,
    /// Penalty box: `strikes` (0 = none), `window_ns`, `ban_ns`, `max_ban_ns`.
    pub penalty: [u64; 4],
}

/// Checks a directory entry's [`StoredOptions`]; `Err` says what is wrong
/// (it becomes the entry's `Error::Corrupt` message).
pub(crate) type OptionsCheck = fn(&StoredOptions) -> Result<(), &'static str>;

/// A directory entry copied out of the mapping and validated: the only
/// form in which a process uses an entry.
#[derive(Debug, Clone)]
pub(crate) struct EntryCopy {
    pub name: String,
    pub spec: String,
    /// A power of two, below `region_bytes / 16`.
    pub buckets: usize,
    /// Passed the mapping's [`OptionsCheck`].
    pub options: StoredOptions,
    /// Inside the file, 4096-aligned, at or after `HEADER_BYTES`.
    pub region_offset: u64,
    /// Non-zero; `region_offset + region_bytes` is within the file.
    pub region_bytes: u64,
}

/// The header's plain fields, as read once by `Mapping::snapshot`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderCopy {
    pub magic: u64,
    pub version: u32,
    pub header_bytes: u32,
    pub total_bytes: u64,
    pub boot_id: [u8; 16],
    pub seed: Seed,
    pub used_bytes: u64,
    pub policy_count: u32,
}

impl HeaderCopy {
    /// All zero: what the reset of ratekeeper before layout version 2
    /// (truncate to 0, then back) left when it crashed half-way.
    fn is_zero(&self) -> bool {
        self.magic == 0
            && self.version == 0
            && self.header_bytes == 0
            && self.total_bytes == 0
            && self.boot_id == [0; 16]
            && self.seed == (Seed { k0: 0, k1: 0 })
            && self.used_bytes == 0
            && self.policy_count == 0
    }
}

/// The file header.
#[repr(C)]
pub(crate) struct Header {
    /// Written last (SeqCst) when a header is written; `MAGIC_RESETTING`
    /// while a reset is under way.
    pub magic: AtomicU64,
    pub version: u32,
    pub header_bytes: u32,
    /// Size of the file and of the mapping.
    pub total_bytes: u64,
    pub boot_id: [u8; 16],
    pub seed_k0: u64,
    pub seed_k1: u64,
    /// Bytes allocated so far (header included).
    pub used_bytes: AtomicU64,
    /// Directory entries in use; raised with release ordering after an
    /// entry is complete.
    pub policy_count: AtomicU32,
    pub _pad: u32,
    pub policies: [DirEntry; MAX_SHARED_POLICIES],
}

/// Bytes the header takes, rounded up to the region alignment.
pub(crate) const HEADER_BYTES: u64 =
    (std::mem::size_of::<Header>() as u64).div_ceil(REGION_ALIGN) * REGION_ALIGN;

const _: () = {
    use std::mem::offset_of;
    assert!(std::mem::size_of::<DirEntry>() == 8 + MAX_NAME_BYTES + MAX_SPEC_BYTES + 72);
    // The options sit where layout version 2 put them, field by field.
    assert!(std::mem::size_of::<StoredOptions>() == 48);
    assert!(offset_of!(DirEntry, options) == offset_of!(DirEntry, buckets) + 8);
    assert!(offset_of!(StoredOptions, when_full) == 0);
    assert!(offset_of!(StoredOptions, flags) == 4);
    assert!(offset_of!(StoredOptions, retry_jitter_ns) == 8);
    assert!(offset_of!(StoredOptions, penalty) == 16);
    assert!(offset_of!(DirEntry, region_offset) == offset_of!(DirEntry, options) + 48);
    assert!(
        std::mem::size_of::<Header>() == 72 + MAX_SHARED_POLICIES * std::mem::size_of::<DirEntry>()
    );
    assert!(std::mem::align_of::<Header>() == 8);
};

/// A mapping of a whole shared file.
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
    fd: OwnedFd,
    path: PathBuf,
    /// The header's seed, read once at open.
    seed: Seed,
    /// Checks every directory entry's options when it is copied out.
    check_options: OptionsCheck,
}

// SAFETY:
// - the mapping is plain shared memory; every access to its contents from
//   more than one thread goes through atomics (header counters, table words)
//   or happens under the file lock (directory entries being written) before
//   being published with release/acquire.
unsafe impl Send for Mapping {}
// SAFETY: as for `Send`.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; nothing borrows
        // the mapping any more (every borrower holds an `Arc<Mapping>`).
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

fn os_error(what: &str, path: &Path) -> Error {
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => Error::Io(format!(
            "{what} {}: permission denied ({e}); shared files must be readable and writable by every worker",
            path.display()
        )),
        _ => Error::Io(format!("{what} {}: {e}", path.display())),
    }
}

fn unsafe_file(path: &Path, what: &str) -> Error {
    Error::UnsafeFile(format!("{} {what}", path.display()))
}

fn fstat(fd: &OwnedFd, path: &Path) -> Result<libc::stat, Error> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(os_error("cannot stat shared file", path));
    }
    Ok(st)
}

/// Whether the path itself (not what it points at) is a symbolic link.
fn is_symlink(c: &CString) -> bool {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    (unsafe { libc::lstat(c.as_ptr(), &mut st) }) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK
}

fn cpath(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("path {:?} contains a NUL byte", path)))
}

use crate::os::read_boot_id;
/// Where the running kernel's boot id is (`src/os.rs`).
pub(crate) use crate::os::BOOT_ID_PATH;

/// An exclusive `flock` on the shared file, released on drop.
pub(crate) struct FileLock<'a> {
    fd: &'a OwnedFd,
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: the fd is open for the lifetime of the borrow.
        unsafe {
            libc::flock(self.fd.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

impl Mapping {
    /// Creates the file at `path` if it does not exist, then maps and
    /// validates it (resetting it if it is from an earlier boot, or if a
    /// reset was interrupted). `boot_id_file` is where the running kernel's
    /// boot id is read ([`BOOT_ID_PATH`]; another file in tests).
    /// `check_options` validates the options of every directory entry
    /// (see [`Mapping::entry_checked`]), from this open on.
    pub fn open(
        path: &Path,
        total_bytes: u64,
        mode: u32,
        boot_id_file: &Path,
        check_options: OptionsCheck,
    ) -> Result<Arc<Mapping>, Error> {
        if !(HEADER_BYTES + REGION_ALIGN..=MAX_FILE_BYTES).contains(&total_bytes) {
            return Err(Error::InvalidArgument(format!(
                "shared_max_bytes must be between {} and 2^46 bytes (got {total_bytes})",
                HEADER_BYTES + REGION_ALIGN
            )));
        }
        let total_bytes = total_bytes.div_ceil(REGION_ALIGN) * REGION_ALIGN;
        let boot = read_boot_id(boot_id_file)?;
        let fd = Self::open_fd(path, total_bytes, mode, &boot)?;
        let size = Self::check_file(&fd, path, mode)?;
        let header = std::mem::size_of::<Header>() as u64;
        if size < header {
            return Err(Error::Corrupt(format!(
                "{} is {size} bytes, shorter than a ratekeeper header ({header} bytes): truncated or not a ratekeeper file",
                path.display()
            )));
        }
        if size > MAX_FILE_BYTES {
            return Err(Error::Corrupt(format!(
                "{} is {size} bytes, larger than any ratekeeper file (2^46 bytes)",
                path.display()
            )));
        }
        let mut map = Self::map(fd, size, path, check_options)?;
        let mut h = map.snapshot();
        if h.magic != MAGIC || h.boot_id != boot {
            // From an earlier boot, being reset, or left half reset by a
            // crash: decide (and reset) under the lock, on a fresh look.
            let _lock = map.lock()?;
            h = map.snapshot();
            let earlier_boot = h.magic == MAGIC && h.version == LAYOUT_VERSION && h.boot_id != boot;
            let interrupted = (h.magic == MAGIC_RESETTING || h.is_zero())
                && size >= HEADER_BYTES + REGION_ALIGN
                && size % REGION_ALIGN == 0;
            if earlier_boot || interrupted {
                map.reset(&h, boot)?;
                h = map.snapshot();
            }
        }
        map.validate(&h, size)?;
        map.seed = h.seed;
        Ok(Arc::new(map))
    }

    /// Opens the file at `path` without following a symbolic link and
    /// without blocking (a FIFO would block a plain open), creating it first
    /// if there is none.
    fn open_fd(
        path: &Path,
        total_bytes: u64,
        mode: u32,
        boot: &[u8; 16],
    ) -> Result<OwnedFd, Error> {
        let c = cpath(path)?;
        let mut created = false;
        loop {
            // SAFETY: `c` is a valid NUL-terminated path; the flags open an
            // existing file only, never through a final symbolic link, never
            // blocking, never as a controlling terminal.
            let fd = unsafe {
                libc::open(
                    c.as_ptr(),
                    libc::O_RDWR
                        | libc::O_NOFOLLOW
                        | libc::O_NONBLOCK
                        | libc::O_NOCTTY
                        | libc::O_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: `fd` was just returned by open and is owned by nobody else.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            match std::io::Error::last_os_error().raw_os_error() {
                // Not there: build it (under another name, linked into
                // place), then open whatever is at the path now. Once only:
                // a file that vanishes again is someone else's doing.
                Some(libc::ENOENT) if !created => {
                    Self::create(path, total_bytes, mode, boot)?;
                    created = true;
                }
                Some(libc::ELOOP) if is_symlink(&c) => {
                    return Err(unsafe_file(
                        path,
                        "is a symbolic link: shared files are never opened through a link (whoever made it could point it at a file of theirs); use the real path",
                    ));
                }
                Some(libc::EISDIR) => {
                    return Err(unsafe_file(path, "is a directory, not a regular file"));
                }
                _ => return Err(os_error("cannot open shared file", path)),
            }
        }
    }

    /// Checks that the open file is one this process can trust: a regular
    /// file, owned by the effective uid, with no permission bits beyond
    /// `mode`. Returns its size. Touches nothing in the file.
    fn check_file(fd: &OwnedFd, path: &Path, mode: u32) -> Result<u64, Error> {
        let st = fstat(fd, path)?;
        let kind = match st.st_mode & libc::S_IFMT {
            libc::S_IFREG => None,
            libc::S_IFIFO => Some("a FIFO"),
            libc::S_IFDIR => Some("a directory"),
            libc::S_IFSOCK => Some("a socket"),
            libc::S_IFCHR => Some("a character device"),
            libc::S_IFBLK => Some("a block device"),
            libc::S_IFLNK => Some("a symbolic link"),
            _ => Some("not a file"),
        };
        if let Some(kind) = kind {
            return Err(unsafe_file(path, &format!("is {kind}, not a regular file")));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if st.st_uid != euid {
            return Err(unsafe_file(
                path,
                &format!(
                    "is owned by uid {}, not by this process's uid {euid}: its owner could change the limits; remove it, or run every worker as its owner",
                    st.st_uid
                ),
            ));
        }
        let bits = st.st_mode & 0o7777;
        if bits & !(mode & 0o7777) != 0 {
            return Err(unsafe_file(
                path,
                &format!(
                    "is mode {bits:04o}, wider than the configured {:04o}: another user could change the limits; remove it or set shared_file_mode",
                    mode & 0o7777
                ),
            ));
        }
        Ok(st.st_size as u64)
    }

    fn map(
        fd: OwnedFd,
        size: u64,
        path: &Path,
        check_options: OptionsCheck,
    ) -> Result<Mapping, Error> {
        // SAFETY: mapping `size` bytes of an open, read-write file as shared;
        // the result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error("cannot map shared file", path));
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len: size as usize,
            fd,
            path: path.to_path_buf(),
            seed: Seed { k0: 0, k1: 0 },
            check_options,
        })
    }

    /// Builds a complete file under a temporary name, then links it into
    /// place: whoever links first wins, the others use the winner's file.
    fn create(path: &Path, total_bytes: u64, mode: u32, boot: &[u8; 16]) -> Result<(), Error> {
        let mut rnd = [0u8; 8];
        crate::clock::fill_random(&mut rnd);
        let tmp = PathBuf::from(format!(
            "{}.tmp.{}.{:016x}",
            path.display(),
            std::process::id(),
            u64::from_le_bytes(rnd)
        ));
        let c = cpath(&tmp)?;
        // SAFETY: valid path; O_EXCL creates a new file only this call owns.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(os_error("cannot create shared file", &tmp));
        }
        // SAFETY: `fd` was just returned by open and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let result = (|| {
            // SAFETY: `fd` is open; fchmod sets the exact mode despite the umask.
            if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
                return Err(os_error("cannot set the mode of", &tmp));
            }
            // SAFETY: `fd` is open for writing.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), total_bytes as libc::off_t) } != 0 {
                return Err(os_error("cannot size shared file", &tmp));
            }
            // Only the header is written through this mapping; no directory
            // entry is ever read from it, so none needs a check.
            let map = Self::map(fd, total_bytes, &tmp, |_| Err("not read"))?;
            map.write_header(*boot)?;
            let link_to = cpath(path)?;
            // SAFETY: both are valid paths; link fails with EEXIST if the
            // name is taken, which is how a creation race is decided.
            if unsafe { libc::link(c.as_ptr(), link_to.as_ptr()) } != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
            {
                return Err(os_error("cannot create shared file", path));
            }
            Ok(())
        })();
        // SAFETY: `c` is a valid path; the temporary name is ours alone.
        unsafe {
            libc::unlink(c.as_ptr());
        }
        result
    }

    /// Writes a fresh header over the whole header area (an empty
    /// directory, a new seed), the magic number last: until it is there, an
    /// opener finds the file being reset (or, after a crash, left so).
    /// The regions must already be zero. On a new file, or under the lock.
    fn write_header(&self, boot: [u8; 16]) -> Result<(), Error> {
        let seed = Seed::random();
        // The header image, built in process memory and written with one
        // pwrite (all but the magic word), then the magic.
        let mut image = vec![0u8; std::mem::size_of::<Header>()];
        let mut put = |offset: usize, bytes: &[u8]| {
            image[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(8, &LAYOUT_VERSION.to_le_bytes());
        put(12, &(std::mem::size_of::<Header>() as u32).to_le_bytes());
        put(16, &(self.len as u64).to_le_bytes());
        put(24, &boot);
        put(40, &seed.k0.to_le_bytes());
        put(48, &seed.k1.to_le_bytes());
        put(56, &HEADER_BYTES.to_le_bytes());
        // policy_count (64) and the directory stay zero.
        self.pwrite(&image[8..], 8)?;
        // SeqCst: every field above is written before the magic number that
        // makes the header valid (readers load it with Acquire).
        self.header().magic.store(MAGIC, Ordering::SeqCst);
        Ok(())
    }

    /// Writes `bytes` at `offset` of the file (through the page cache the
    /// mapping shares).
    fn pwrite(&self, bytes: &[u8], offset: u64) -> Result<(), Error> {
        let mut done = 0;
        while done < bytes.len() {
            // SAFETY: the fd is open for writing; the buffer is valid for
            // `len - done` bytes from `done`.
            let n = unsafe {
                libc::pwrite(
                    self.fd.as_raw_fd(),
                    bytes[done..].as_ptr().cast(),
                    bytes.len() - done,
                    (offset + done as u64) as libc::off_t,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Err(os_error("cannot write shared file", &self.path));
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Zeroes `[offset, offset + len)` of the file without changing its
    /// size: a hole punched where the file system can, zeros written where
    /// it cannot. Processes that still map the range read zeros, never
    /// SIGBUS.
    fn zero(&self, offset: u64, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        match crate::os::zero_range(&self.fd, offset, len) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => {
                return Err(Error::Io(format!(
                    "cannot reset {}: {e}",
                    self.path.display()
                )))
            }
        }
        let zeros = vec![0u8; 1 << 16];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(zeros.len() as u64) as usize;
            self.pwrite(&zeros[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Resets the file for this boot; call under the lock. The size never
    /// changes (another process may still map the file: a shorter file
    /// would be SIGBUS for it). Steps: mark the header as being reset (the
    /// magic word), zero the regions, write the fresh header, magic last.
    /// A crash at any step leaves the mark, or a zero header, which the
    /// next open completes the reset from.
    fn reset(&self, old: &HeaderCopy, boot: [u8; 16]) -> Result<(), Error> {
        // SeqCst: the mark is visible before any region is zeroed.
        self.header().magic.store(MAGIC_RESETTING, Ordering::SeqCst);
        let len = self.len as u64;
        // What was allocated, if the old header says so sanely; else all.
        let used = if (HEADER_BYTES..=len).contains(&old.used_bytes) && old.magic == MAGIC {
            len.min(old.used_bytes.div_ceil(REGION_ALIGN) * REGION_ALIGN)
        } else {
            len
        };
        self.zero(HEADER_BYTES, used - HEADER_BYTES)?;
        self.write_header(boot)
    }

    /// The header's fields, each read once (volatile: another process may
    /// be writing them); only this copy is used afterwards.
    fn snapshot(&self) -> HeaderCopy {
        let h = self.ptr.cast::<Header>();
        // SAFETY:
        // - the mapping is at least `size_of::<Header>()` bytes (checked
        //   before mapping) and page-aligned, so every field is in bounds
        //   and aligned; all are integers or atomics, valid for any bits;
        // - plain fields are read with volatile reads (another process may
        //   write them during a reset: a torn value fails validation, and
        //   the magic number, written last, is loaded first with Acquire).
        unsafe {
            // Acquire: pairs with the SeqCst store of the magic number in
            // `write_header`; the fields written before it are visible.
            let magic = (*h).magic.load(Ordering::Acquire);
            HeaderCopy {
                magic,
                version: std::ptr::read_volatile(std::ptr::addr_of!((*h).version)),
                header_bytes: std::ptr::read_volatile(std::ptr::addr_of!((*h).header_bytes)),
                total_bytes: std::ptr::read_volatile(std::ptr::addr_of!((*h).total_bytes)),
                boot_id: std::ptr::read_volatile(std::ptr::addr_of!((*h).boot_id)),
                seed: Seed {
                    k0: std::ptr::read_volatile(std::ptr::addr_of!((*h).seed_k0)),
                    k1: std::ptr::read_volatile(std::ptr::addr_of!((*h).seed_k1)),
                },
                used_bytes: (*h).used_bytes.load(Ordering::SeqCst),
                // Acquire: entries below the count are complete (see `add_entry`).
                policy_count: (*h).policy_count.load(Ordering::Acquire),
            }
        }
    }

    fn validate(&self, h: &HeaderCopy, size: u64) -> Result<(), Error> {
        let p = self.path.display();
        if h.magic == MAGIC_RESETTING {
            return Err(Error::Corrupt(format!(
                "{p} was left half reset and cannot be completed (size {size} bytes is not a whole number of 4096-byte units above the header): remove it"
            )));
        }
        if h.magic != MAGIC {
            return Err(Error::Corrupt(format!(
                "{p} is not a ratekeeper shared file (bad magic number)"
            )));
        }
        if h.version != LAYOUT_VERSION {
            return Err(Error::Corrupt(format!(
                "{p} has layout version {}, this build of ratekeeper reads version {LAYOUT_VERSION}; remove the file (or stop the processes using it) to recreate it",
                h.version
            )));
        }
        if h.header_bytes as usize != std::mem::size_of::<Header>() {
            return Err(Error::Corrupt(format!(
                "{p}: header size {} is not {}",
                h.header_bytes,
                std::mem::size_of::<Header>()
            )));
        }
        if h.total_bytes != size {
            return Err(Error::Corrupt(format!(
                "{p} is {size} bytes but its header says {}: truncated or corrupt",
                h.total_bytes
            )));
        }
        if !(HEADER_BYTES..=size).contains(&h.used_bytes) {
            return Err(Error::Corrupt(format!(
                "{p}: allocated size {} is outside the file",
                h.used_bytes
            )));
        }
        let n = h.policy_count as usize;
        if n > MAX_SHARED_POLICIES {
            return Err(Error::Corrupt(format!(
                "{p}: {n} policies listed, at most {MAX_SHARED_POLICIES} fit"
            )));
        }
        for i in 0..n {
            self.entry_checked(i)?;
        }
        Ok(())
    }

    /// The header, for its atomics (`magic`, `used_bytes`, `policy_count`);
    /// its plain fields are read once, by `snapshot`.
    pub fn header(&self) -> &Header {
        // SAFETY: the mapping is at least `size_of::<Header>()` bytes
        // (checked before mapping) and page-aligned; `Header` is repr(C) of
        // integers and atomics, valid for any bit pattern.
        unsafe { &*(self.ptr as *const Header) }
    }

    /// The seed all processes hash keys with (read once, at open).
    pub fn seed(&self) -> Seed {
        self.seed
    }

    /// An error if the file is now shorter than the mapping: another
    /// process truncated it, and touching the missing part would kill this
    /// process with SIGBUS.
    pub fn check_intact(&self) -> Result<(), Error> {
        let size = fstat(&self.fd, &self.path)?.st_size as u64;
        if size < self.len as u64 {
            return Err(Error::Corrupt(format!(
                "{} was truncated to {size} bytes under this process, which maps {} bytes: touching the missing part would kill it (SIGBUS); stop the workers and remove the file",
                self.path.display(),
                self.len
            )));
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the file lock (blocking).
    pub fn lock(&self) -> Result<FileLock<'_>, Error> {
        loop {
            // SAFETY: the fd is open for the lifetime of `self`.
            if unsafe { libc::flock(self.fd.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(FileLock { fd: &self.fd });
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return Err(os_error("cannot lock shared file", &self.path));
            }
        }
    }

    /// Published directory entries.
    pub fn policy_count(&self) -> usize {
        // Acquire: pairs with the release in `add_entry`; entries below the
        // count are complete.
        (self.header().policy_count.load(Ordering::Acquire) as usize).min(MAX_SHARED_POLICIES)
    }

    /// Entry `i` (`i < policy_count()`), copied out of the mapping once and
    /// validated. Callers use only the copy: the mapping's entry may be
    /// changed by a hostile writer at any time after it was checked.
    pub fn entry_checked(&self, i: usize) -> Result<EntryCopy, Error> {
        let p = self.path.display();
        let bad = |what: &str| Err(Error::Corrupt(format!("{p}: policy entry {i}: {what}")));
        if i >= MAX_SHARED_POLICIES {
            return bad("beyond the directory");
        }
        // SAFETY:
        // - entry `i` lies inside the header, which lies inside the mapping
        //   (checked before mapping), and is 8-byte aligned (`repr(C)`);
        // - `DirEntry` is plain integers, valid for any bit pattern; the
        //   volatile read copies whatever bytes are there once, even if
        //   another process writes them meanwhile (a torn copy fails the
        //   checks below or is a wrong but in-bounds entry).
        let e: DirEntry = unsafe {
            std::ptr::read_volatile(std::ptr::addr_of!((*self.ptr.cast::<Header>()).policies[i]))
        };
        let (name_len, spec_len) = (e.name_len as usize, e.spec_len as usize);
        if name_len > MAX_NAME_BYTES || name_len == 0 {
            return bad("bad name length");
        }
        if spec_len > MAX_SPEC_BYTES || spec_len == 0 {
            return bad("bad spec length");
        }
        let len = self.len as u64;
        let inside = e
            .region_offset
            .checked_add(e.region_bytes)
            .is_some_and(|end| end <= len);
        if e.region_offset < HEADER_BYTES
            || e.region_offset % REGION_ALIGN != 0
            || e.region_bytes == 0
            || !inside
        {
            return bad("region outside the file");
        }
        // A bucket takes more than one 16-byte unit, so a region of
        // `region_bytes` holds fewer than `region_bytes / 16` buckets; this
        // bound keeps every size computed from `buckets` far from overflow
        // (regions are at most `MAX_FILE_BYTES`).
        if !e.buckets.is_power_of_two() || e.buckets > e.region_bytes / 16 {
            return bad("bad table parameters");
        }
        if let Err(what) = (self.check_options)(&e.options) {
            return bad(what);
        }
        let (Ok(name), Ok(spec)) = (
            std::str::from_utf8(&e.name[..name_len]),
            std::str::from_utf8(&e.spec[..spec_len]),
        ) else {
            return bad("name or spec is not UTF-8");
        };
        Ok(EntryCopy {
            name: name.to_owned(),
            spec: spec.to_owned(),
            buckets: e.buckets as usize,
            options: e.options,
            region_offset: e.region_offset,
            region_bytes: e.region_bytes,
        })
    }

    /// Appends a directory entry and allocates its region; call under the lock.
    pub fn add_entry(
        &self,
        name: &str,
        spec: &str,
        buckets: u64,
        options: &StoredOptions,
        region_bytes: u64,
    ) -> Result<usize, Error> {
        let h = self.header();
        let i = self.policy_count();
        if i >= MAX_SHARED_POLICIES {
            return Err(Error::TooManyPolicies(MAX_SHARED_POLICIES));
        }
        if name.len() > MAX_NAME_BYTES || spec.len() > MAX_SPEC_BYTES {
            return Err(Error::InvalidArgument(format!(
                "shared policies have names of at most {MAX_NAME_BYTES} bytes and specs of at most {MAX_SPEC_BYTES}"
            )));
        }
        let len = self.len as u64;
        // The new region starts after the allocated bytes and after every
        // existing region (a corrupt `used_bytes` must not make two policies
        // share memory), all with checked arithmetic: the words are hostile.
        let used = h.used_bytes.load(Ordering::SeqCst);
        if !(HEADER_BYTES..=len).contains(&used) {
            return Err(Error::Corrupt(format!(
                "{}: allocated size {used} is outside the file",
                self.path.display()
            )));
        }
        let mut start = used;
        for j in 0..i {
            let e = self.entry_checked(j)?;
            start = start.max(e.region_offset + e.region_bytes);
        }
        let offset = start.div_ceil(REGION_ALIGN) * REGION_ALIGN;
        let size = region_bytes.div_ceil(REGION_ALIGN) * REGION_ALIGN;
        if offset.checked_add(size).is_none_or(|end| end > len) {
            return Err(Error::OutOfMemory(format!(
                "{}: no room for policy {name:?} ({size} bytes needed, {} of {} bytes free); raise shared_max_bytes or lower the policy's capacity",
                self.path.display(),
                len.saturating_sub(offset),
                self.len
            )));
        }
        // Reserve the pages now, so that a full /dev/shm is an error here
        // rather than SIGBUS on first touch (the range lies inside the file).
        if let Err(e) = crate::os::reserve(&self.fd, offset, size) {
            return Err(Error::OutOfMemory(format!(
                "{}: cannot reserve {size} bytes for policy {name:?}: {e}",
                self.path.display()
            )));
        }
        // SAFETY: entry `i` is beyond `policy_count`, so no process reads it;
        // writers are serialised by the file lock, which the caller holds.
        let e = unsafe { &mut *(std::ptr::addr_of!(h.policies[i]) as *mut DirEntry) };
        e.name_len = name.len() as u32;
        e.spec_len = spec.len() as u32;
        e.name[..name.len()].copy_from_slice(name.as_bytes());
        e.spec[..spec.len()].copy_from_slice(spec.as_bytes());
        e.buckets = buckets;
        e.options = *options;
        e.region_offset = offset;
        e.region_bytes = size;
        h.used_bytes.store(offset + size, Ordering::SeqCst);
        // Release: the entry's fields are visible to whoever acquires the count.
        h.policy_count.store(i as u32 + 1, Ordering::Release);
        Ok(i)
    }

    /// A pointer to byte `offset` of the mapping (`offset` within it).
    pub fn at(&self, offset: u64) -> *const u8 {
        debug_assert!(offset <= self.len as u64);
        // SAFETY: callers pass offsets validated to lie within the mapping.
        unsafe { self.ptr.add(offset as usize) }
    }
}
