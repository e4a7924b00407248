//! Adding to a per-CPU counter without a locked instruction: a restartable
//! sequence (`rseq(2)`, Linux 4.18+) on the area the C library registers
//! for every thread (glibc 2.35+).
//!
//! # Why
//!
//! A `lock xadd` on a line the thread already owns still drains the store
//! buffer: about 5 ns, an eighth of a denied check (compare.py against a
//! stand-in with a plain add, README "Core v2"). A denial writes nothing
//! else, so under a flood that lock is most of what the limiter costs
//! beyond its reads. A plain `add` is exact only if nothing else writes the
//! word between its load and its store.
//!
//! # How
//!
//! A CPU runs one thread at a time. Counter line `c` is written only by
//! code running on CPU `c`, inside a restartable sequence: read the CPU
//! number the kernel keeps in the thread's rseq area, then one `add` to
//! that CPU's line, which commits the sequence. If the thread is preempted,
//! migrated or signalled before the `add`, the kernel restarts it at the
//! abort handler, which begins again (reading the CPU number anew); after
//! the `add`, the count is in. The single instruction that both writes and
//! commits cannot be split by the kernel, and no other thread can run on
//! that CPU in the middle of the sequence, in this process or in any other
//! process mapping the same file. So every add lands exactly once, with no
//! lock and no atomic read-modify-write.
//!
//! Where the sequence cannot run, [`add`] returns `false` and the caller
//! uses an atomic add on a line no sequence writes (`stats.rs`): before
//! the process has created an engine (which calls [`resolve`]), on CPUs
//! numbered [`CPUS`] and above, in a thread whose registration failed
//! (glibc marks it with a CPU number of -1 or -2, both refused by the same
//! bounds check), in a process where glibc did not register (glibc before
//! 2.35, `GLIBC_TUNABLES=glibc.pthread.rseq=0`, valgrind, qemu-user), and on
//! every target but x86_64 Linux with glibc, and under loom.
//!
//! # Why not register our own area
//!
//! A thread has at most one rseq area; glibc registers it at thread start
//! and reports where through `__rseq_offset` (from the thread pointer) and
//! `__rseq_size` (0 when it did not register). Registering a second one
//! fails with `EBUSY`, and taking over when glibc did not would break
//! whatever else in the process relies on glibc's choice. We read the two
//! symbols through `dlsym`, so a library built here still loads on an
//! older glibc (and then takes the atomic path).

/// CPUs with a counter line of their own. A host with more CPUs counts on
/// the higher ones through the atomic lines: exact, with a locked add.
pub(crate) const CPUS: usize = 128;

/// Bytes of one CPU's counter line (a power of two: the sequence shifts the
/// CPU number by its log2): 128, as the atomic shards (`stats::Shard`), so
/// that a CPU's writes never pull its neighbour's line along (the adjacent-
/// line prefetcher of x86 works on 128-byte pairs).
pub(crate) const LINE: usize = 128;

#[cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(loom)
))]
mod imp {
    use std::sync::atomic::{AtomicI64, Ordering};

    /// `__rseq_offset` once [`resolve`] looked it up; [`NONE`] before, and
    /// when the process has no usable rseq area.
    static OFFSET: AtomicI64 = AtomicI64::new(NONE);
    const NONE: i64 = i64::MIN;

    /// Bytes of `struct rseq` the sequence uses: `cpu_id` at 4, `rseq_cs`
    /// at 8 (linux/rseq.h).
    const NEEDED: u32 = 16;

    /// Looks `__rseq_offset` up, once: at engine creation, off the check
    /// path, and before a pre-fork server forks (`dlsym` takes the loader's
    /// lock, which another thread may hold across a `fork`). Until then
    /// every [`add`] takes the atomic path.
    pub(crate) fn resolve() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            // Relaxed: the value is the only data published, and a thread
            // that still reads NONE only takes the atomic path.
            OFFSET.store(lookup(), Ordering::Relaxed);
        });
    }

    fn lookup() -> i64 {
        // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no
        // other precondition; it returns null when the symbol is absent.
        let (off, size) = unsafe {
            (
                libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_offset".as_ptr()),
                libc::dlsym(libc::RTLD_DEFAULT, c"__rseq_size".as_ptr()),
            )
        };
        if off.is_null() || size.is_null() {
            return NONE;
        }
        // SAFETY: glibc defines `__rseq_offset` as a `ptrdiff_t` and
        // `__rseq_size` as an `unsigned int`, both written once before
        // `main` (or before `dlopen` returns) and constant afterwards.
        let (off, size) = unsafe { (*(off as *const isize), *(size as *const u32)) };
        if size >= NEEDED {
            off as i64
        } else {
            NONE
        }
    }

    /// Adds `n` to the `u64` at byte `at` of the line of the CPU this runs
    /// on, in `lines` (`super::CPUS` lines of `super::LINE` bytes), without
    /// a locked instruction. `false` (and nothing written) where the
    /// sequence cannot run (module documentation).
    ///
    /// # Safety
    /// `lines` must point to `CPUS * LINE` bytes of 8-byte-aligned memory,
    /// valid for as long as the call runs, in which the word at byte `at`
    /// (`at + 8 <= LINE`) of every line is written only by this function,
    /// and read only by atomic loads.
    #[inline(always)]
    pub(crate) unsafe fn add(lines: *mut u8, at: usize, n: u64) -> bool {
        // Relaxed: see `resolve`.
        let off = OFFSET.load(Ordering::Relaxed);
        if off == NONE {
            return false;
        }
        let done: u32;
        // SAFETY:
        // - `off` is glibc's `__rseq_offset`: the thread's `struct rseq`
        //   sits at fs:off (the thread pointer is fs's base on x86_64), 32-
        //   byte aligned, with `cpu_id` at +4 and `rseq_cs` at +8, valid for
        //   the thread's life, and written by this thread only (the kernel
        //   writes `cpu_id` and clears `rseq_cs`);
        // - the descriptor (label 7, in section `__rseq_cs`, 32-byte
        //   aligned as the kernel requires) names the sequence: it starts at
        //   label 3, ends after the `add` (label 4), and aborts to label 6,
        //   preceded by the signature glibc registered (RSEQ_SIG,
        //   0x53053053, in a `ud1` so that the bytes decode as one
        //   instruction); the handler starts over from label 2, which
        //   stores the descriptor again (a signal handler's own sequence
        //   may have replaced it);
        // - a CPU number at or past CPUS (including glibc's -1 and -2 for an
        //   unregistered thread) leaves the sequence with nothing written;
        //   below it, the `add` writes within line `cpu` of `lines`, which
        //   the caller guarantees is ours alone on that CPU;
        // - `rseq_cs` is left pointing at the descriptor after the sequence,
        //   as librseq does: the kernel ignores it once the instruction
        //   pointer is outside the sequence, and clears it;
        // - the asm writes memory the compiler does not see (`nostack` but
        //   not `nomem`), so it is not reordered with other accesses.
        unsafe {
            std::arch::asm!(
                "xor {done:e}, {done:e}",
                "2:",
                "lea {tmp}, [rip + 7f]",
                "mov qword ptr fs:[{off} + 8], {tmp}",
                "3:",
                "mov {tmp:e}, dword ptr fs:[{off} + 4]",
                "cmp {tmp:e}, {cpus}",
                "jae 5f",
                "shl {tmp}, {shift}",
                "add qword ptr [{p} + {tmp}], {n}",
                "4:",
                "mov {done:e}, 1",
                "5:",
                ".pushsection __rseq_failure, \"ax\"",
                ".byte 0x0f, 0xb9, 0x3d",
                ".long 0x53053053",
                "6:",
                "jmp 2b",
                ".popsection",
                ".pushsection __rseq_cs, \"aw\"",
                ".balign 32",
                "7:",
                ".long 0, 0",
                ".quad 3b, 4b - 3b, 6b",
                ".popsection",
                done = out(reg) done,
                tmp = out(reg) _,
                off = in(reg) off,
                p = in(reg) lines.add(at),
                n = in(reg) n,
                cpus = const super::CPUS,
                shift = const super::LINE.trailing_zeros(),
                options(nostack),
            );
        }
        done != 0
    }

    /// Whether this thread's adds take the sequence (tests).
    #[cfg(test)]
    pub(crate) fn active() -> bool {
        resolve();
        // Relaxed: see `resolve`.
        let off = OFFSET.load(Ordering::Relaxed);
        if off == NONE {
            return false;
        }
        // SAFETY: as in `add`: fs:off + 4 is this thread's `cpu_id`.
        let cpu: u32 = unsafe {
            let cpu: u32;
            std::arch::asm!(
                "mov {cpu:e}, dword ptr fs:[{off} + 4]",
                cpu = out(reg) cpu,
                off = in(reg) off,
                options(nostack, readonly, preserves_flags),
            );
            cpu
        };
        (cpu as usize) < super::CPUS
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_os = "linux",
    target_env = "gnu",
    not(loom)
)))]
mod imp {
    /// No restartable sequence on this target: always the atomic path.
    ///
    /// # Safety
    /// None needed; the signature matches the x86_64 one.
    #[inline(always)]
    pub(crate) unsafe fn add(_lines: *mut u8, _at: usize, _n: u64) -> bool {
        false
    }

    #[cfg(all(test, not(loom)))]
    pub(crate) fn active() -> bool {
        false
    }

    pub(crate) fn resolve() {}
}

#[cfg(all(test, not(loom)))]
pub(crate) use imp::active;
pub(crate) use imp::{add, resolve};
