//! The atomics of the table: [`Atomic128`], the 16-byte word every table
//! slot is made of (a loom model under `--cfg loom`), plus aliases for the
//! std atomics of memory that loom does not model (futex words, counters and
//! headers shared with other processes). The deny-event ring takes loom's
//! 64-bit atomics under `--cfg loom` itself (`src/events.rs`).
//! On x86_64 [`Atomic128`] is a `lock cmpxchg16b` for compare-and-swap and
//! an aligned `movdqa` for loads (atomic on every processor that enumerates
//! AVX, per the Intel SDM vol. 3A §9.1.1 and AMD APM vol. 2 §7.3.2; the
//! engine checks for AVX and CMPXCHG16B before it touches a table). On other
//! targets (aarch64: LSE `casp` or LL/SC) it is portable-atomic's
//! `AtomicU128`, refused where it would take a lock. Under loom it is a
//! loom mutex around a `u128`, so that loom explores every interleaving of
//! whole 128-bit operations.

/// A 32-bit word a futex can sleep on: always std's (the kernel reads it),
/// also under loom, where nothing that blocks is modelled.
pub(crate) type FutexWord = std::sync::atomic::AtomicU32;

/// Atomics of memory shared with other processes (file headers, counters):
/// always std's, since loom models threads of one process only.
pub(crate) use std::sync::atomic::{
    AtomicU32 as SharedU32, AtomicU64 as SharedU64, Ordering as SharedOrdering,
};

/// A per-process heuristic that no correctness argument depends on (a
/// table's move-search skip count): std's, also under loom, which need not
/// explore its interleavings.
pub(crate) use std::sync::atomic::AtomicU32 as HintU32;

// Lock-free 16-byte CAS that this crate has been built and tested on:
// x86_64 (CMPXCHG16B) and aarch64 (LL/SC or LSE `casp`; tests/aarch64.sh).
// portable-atomic covers a few more (s390x, powerpc64, riscv64 with Zacas);
// add them here once they are tested.
#[cfg(all(not(loom), not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
compile_error!(
    "ratekeeper's lock-free table needs a 16-byte compare-and-swap; only x86_64 and aarch64 are supported"
);

// x86_64: two instructions of inline assembly, not portable-atomic. Without
// `-C target-feature=+cmpxchg16b,+avx` at build time (which a library cannot
// impose on its users, and which would turn "refuse a CPU without AVX" into
// SIGILL), portable-atomic reaches both through a function pointer chosen at
// run time: measured with callgrind, +70 instructions per `check` (+14%),
// since no access inlines. `check_cpu` makes the same run-time check once,
// before any table exists, so the hot path is the bare instructions.
/// A 16-byte atomic word. All operations are sequentially consistent: a
/// `lock`-prefixed instruction is a full barrier on x86, and an x86 load is
/// never reordered with older loads or with later stores (TSO), which is
/// what every reader of a table word relies on.
#[cfg(all(not(loom), target_arch = "x86_64"))]
#[repr(C, align(16))]
pub struct Atomic128 {
    v: std::cell::UnsafeCell<u128>,
}

// SAFETY:
// - every access to `v` goes through `load` or `compare_exchange`, which are
//   single atomic instructions, so sharing between threads cannot race.
#[cfg(all(not(loom), target_arch = "x86_64"))]
unsafe impl Sync for Atomic128 {}
// SAFETY:
// - `Atomic128` owns plain integer data with no thread affinity.
#[cfg(all(not(loom), target_arch = "x86_64"))]
unsafe impl Send for Atomic128 {}

#[cfg(all(not(loom), target_arch = "x86_64"))]
impl Atomic128 {
    /// A new word holding `v`.
    pub const fn new(v: u128) -> Self {
        Atomic128 {
            v: std::cell::UnsafeCell::new(v),
        }
    }

    /// Atomically reads the word.
    #[inline(always)]
    pub fn load(&self) -> u128 {
        let (lo, hi): (u64, u64);
        // SAFETY:
        // - `self.v` is 16-byte aligned (`repr(align(16))`) and valid for reads
        //   for the lifetime of `&self`;
        // - `movdqa` of an aligned 16-byte location is a single atomic access on
        //   processors with AVX, which `check_cpu` requires before any table is
        //   built; the asm reads memory only (`readonly`) and uses no stack.
        unsafe {
            std::arch::asm!(
                "movdqa {x}, xmmword ptr [{src}]",
                "movq {lo}, {x}",
                "pextrq {hi}, {x}, 1",
                src = in(reg) self.v.get(),
                x = out(xmm_reg) _,
                lo = out(reg) lo,
                hi = out(reg) hi,
                options(nostack, readonly, preserves_flags)
            );
        }
        ((hi as u128) << 64) | lo as u128
    }

    /// Atomically replaces the word with `new` if it holds `current`.
    /// Returns `Ok(current)` on success, `Err(actual)` otherwise.
    #[inline(always)]
    pub fn compare_exchange(&self, current: u128, new: u128) -> Result<u128, u128> {
        let (prev_lo, prev_hi): (u64, u64);
        // SAFETY:
        // - `self.v` is 16-byte aligned and valid for reads and writes through
        //   the `UnsafeCell` for the lifetime of `&self`;
        // - `lock cmpxchg16b` is one atomic read-modify-write (and a full
        //   barrier); `check_cpu` verified the instruction exists;
        // - rbx is reserved by LLVM, so the new low half is swapped into rbx
        //   around the instruction and rbx is restored before the asm ends;
        //   the address is pinned to rdi so that it can never be given rbx.
        unsafe {
            std::arch::asm!(
                "xchg {rbx_tmp}, rbx",
                "lock cmpxchg16b xmmword ptr [rdi]",
                "mov rbx, {rbx_tmp}",
                rbx_tmp = inout(reg) new as u64 => _,
                in("rcx") (new >> 64) as u64,
                inout("rax") current as u64 => prev_lo,
                inout("rdx") (current >> 64) as u64 => prev_hi,
                in("rdi") self.v.get(),
                options(nostack)
            );
        }
        // On success rdx:rax keep `current`; on failure they hold the value found.
        let prev = ((prev_hi as u128) << 64) | prev_lo as u128;
        if prev == current {
            Ok(prev)
        } else {
            Err(prev)
        }
    }
}

/// Loom model of [`Atomic128`]: a mutex makes each operation one atomic step.
/// A 16-byte atomic word: [`portable_atomic::AtomicU128`], with the two
/// operations the table uses.
///
/// Every operation is sequentially consistent, which is what every reader
/// of a table word relies on: the protocol reads intents, then slot words,
/// then the intents again, and must see them in that order, and the loom
/// models check it with every word access as one step of a single total
/// order. On aarch64, portable-atomic's SeqCst operations give that order
/// (checked in portable-atomic 1.15's `imp/atomic128/aarch64.rs`): a load is
/// `ldar` + `ldp` + `dmb ishld` with LSE2 (the `ldar` keeps it from moving
/// before an earlier `caspal`/`stlxp`: GCC bug 108891), `caspal` with LSE
/// only, `ldaxp`/`stlxp` on ARMv8.0; a compare-and-swap is `caspal` or an
/// `ldaxp`/`stlxp` loop.
///
/// Without LSE2 a load writes the value it read back (`casp`, `stlxp`), so
/// every word must be in writable memory: the heap, or a shared mapping,
/// which is always mapped read-write.
///
/// It is never a lock: [`check_cpu`] refuses a CPU where it would be (on
/// aarch64 none: every ARMv8-A CPU has `ldxp`/`stxp`).
#[cfg(all(not(loom), not(target_arch = "x86_64")))]
#[repr(transparent)]
pub struct Atomic128(portable_atomic::AtomicU128);

// The table and the shared file rely on these: a word is 16 bytes, 16-byte
// aligned, and all-zero bytes are a valid word (zeroed heap regions and
// fresh file mappings are cast to `[Atomic128]`; portable-atomic documents
// `AtomicU128` as having the in-memory representation of a `u128`).
#[cfg(all(not(loom), not(target_arch = "x86_64")))]
const _: () = {
    assert!(std::mem::size_of::<Atomic128>() == 16);
    assert!(std::mem::align_of::<Atomic128>() == 16);
    assert!(std::mem::size_of::<portable_atomic::AtomicU128>() == 16);
};

#[cfg(all(not(loom), not(target_arch = "x86_64")))]
impl Atomic128 {
    /// A new word holding `v`.
    pub const fn new(v: u128) -> Self {
        Atomic128(portable_atomic::AtomicU128::new(v))
    }

    /// Atomically reads the word.
    #[inline(always)]
    pub fn load(&self) -> u128 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Atomically replaces the word with `new` if it holds `current`.
    /// Returns `Ok(current)` on success, `Err(actual)` otherwise.
    #[inline(always)]
    pub fn compare_exchange(&self, current: u128, new: u128) -> Result<u128, u128> {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.compare_exchange(current, new, SeqCst, SeqCst)
    }
}

/// Loom model of [`Atomic128`]: a mutex makes each operation one atomic step.
#[cfg(loom)]
pub struct Atomic128 {
    v: loom::sync::Mutex<u128>,
}

#[cfg(loom)]
impl Atomic128 {
    /// A new word holding `v`.
    pub fn new(v: u128) -> Self {
        Atomic128 {
            v: loom::sync::Mutex::new(v),
        }
    }

    /// Atomically reads the word.
    pub fn load(&self) -> u128 {
        *self.v.lock().unwrap()
    }

    /// Atomically replaces the word with `new` if it holds `current`.
    pub fn compare_exchange(&self, current: u128, new: u128) -> Result<u128, u128> {
        let mut g = self.v.lock().unwrap();
        if *g == current {
            *g = new;
            Ok(current)
        } else {
            Err(*g)
        }
    }
}

/// Asks the CPU to start loading the cache line of `w` (a hint: no
/// effect on what any load returns, and none under loom). A check whose key
/// may sit in either of two buckets issues the second bucket's lines early,
/// so that their misses overlap the first bucket's instead of following
/// them.
#[inline(always)]
pub(crate) fn prefetch(w: &Atomic128) {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    // SAFETY:
    // - `prefetcht0` reads nothing architecturally and cannot fault; `w` is
    //   a live reference in any case. SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            (w as *const Atomic128).cast(),
        );
    }
    #[cfg(all(not(loom), target_arch = "aarch64"))]
    // SAFETY:
    // - `prfm` is a hint: it changes no register, flag or memory and cannot
    //   fault; `w` is a live reference in any case.
    unsafe {
        std::arch::asm!(
            "prfm pldl1keep, [{p}]",
            p = in(reg) w as *const Atomic128,
            options(nostack, readonly, preserves_flags)
        );
    }
    #[cfg(loom)]
    let _ = w;
}

/// Checks that this CPU has what [`Atomic128`] needs: a lock-free 16-byte
/// compare-and-swap and, on x86_64, atomic 16-byte loads (AVX). Where
/// portable-atomic would fall back to a lock, the table is refused: a lock
/// in one process does not exclude another process sharing the table file.
pub(crate) fn check_cpu() -> Result<(), crate::Error> {
    #[cfg(all(not(loom), target_arch = "x86_64"))]
    {
        if !std::arch::is_x86_feature_detected!("cmpxchg16b") {
            return Err(crate::Error::UnsupportedPlatform(
                "this CPU lacks CMPXCHG16B (16-byte compare-and-swap)".into(),
            ));
        }
        if !std::arch::is_x86_feature_detected!("avx") {
            return Err(crate::Error::UnsupportedPlatform(
                "this CPU lacks AVX, without which 16-byte loads are not guaranteed atomic".into(),
            ));
        }
    }
    #[cfg(all(not(loom), not(target_arch = "x86_64")))]
    if !portable_atomic::AtomicU128::is_lock_free() {
        return Err(crate::Error::UnsupportedPlatform(
            "this CPU lacks a lock-free 16-byte compare-and-swap".into(),
        ));
    }
    Ok(())
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn compare_exchange_swaps_only_on_match_and_reports_the_actual_value() {
        check_cpu().unwrap();
        let a = Atomic128::new(5 | (9 << 64));
        assert_eq!(a.compare_exchange(5, 7), Err(5 | (9 << 64)));
        assert_eq!(
            a.compare_exchange(5 | (9 << 64), 7 | (3 << 64)),
            Ok(5 | (9 << 64))
        );
        assert_eq!(a.load(), 7 | (3 << 64));
    }

    #[test]
    fn concurrent_increments_of_both_halves_are_never_torn_or_lost() {
        check_cpu().unwrap();
        let a = Atomic128::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..100_000 {
                        let mut cur = a.load();
                        loop {
                            let (lo, hi) = (cur as u64, (cur >> 64) as u64);
                            assert_eq!(lo, hi, "torn read");
                            let next = ((hi as u128 + 1) << 64) | (lo as u128 + 1);
                            match a.compare_exchange(cur, next) {
                                Ok(_) => break,
                                Err(actual) => cur = actual,
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(a.load(), 200_000 | (200_000 << 64));
    }
}
