//! The atomics of the table: [`Atomic128`], the 16-byte word every table
//! slot is made of (a loom model under `--cfg loom`), plus aliases for the
//! std atomics of memory that loom does not model (futex words, counters and
//! headers shared with other processes). The deny-event ring takes loom's
//! 64-bit atomics under `--cfg loom` itself (`src/events.rs`).
//! [`Atomic128`] is portable-atomic's `AtomicU128`: on x86_64 a `lock
//! cmpxchg16b` for compare-and-swap and an aligned `vmovdqa` for loads
//! (atomic on every processor that enumerates AVX, per the Intel SDM vol. 3A
//! §9.1.1 and AMD APM vol. 2 §7.3.2; a `lock cmpxchg16b` without AVX); the
//! engine checks that it is lock-free before it touches a table. Under loom
//! it is a loom mutex around a `u128`, so that loom explores every
//! interleaving of whole 128-bit operations.

/// A 32-bit word a futex can sleep on: always std's (the kernel reads it),
/// also under loom, where nothing that blocks is modelled.
pub(crate) type FutexWord = std::sync::atomic::AtomicU32;

/// Atomics of memory shared with other processes (file headers, counters):
/// always std's, since loom models threads of one process only.
pub(crate) use std::sync::atomic::{
    AtomicU32 as SharedU32, AtomicU64 as SharedU64, Ordering as SharedOrdering,
};

// Lock-free 16-byte CAS that this crate has been built and tested on:
// x86_64 (CMPXCHG16B) and, next (issue #19), aarch64 (LL/SC or LSE `casp`).
// portable-atomic covers a few more (s390x, powerpc64, riscv64 with Zacas);
// add them here once they are tested.
#[cfg(all(not(loom), not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
compile_error!(
    "ratekeeper's lock-free table needs a 16-byte compare-and-swap; only x86_64 and aarch64 are supported"
);

/// A 16-byte atomic word: [`portable_atomic::AtomicU128`], with the two
/// operations the table uses.
///
/// Every operation is sequentially consistent, which is what every reader
/// of a table word relies on: the protocol reads intents, then slot words,
/// then the intents again, and must see them in that order. On x86_64 this
/// costs nothing over weaker orderings: the CAS is `lock cmpxchg16b` (a
/// full barrier) and a SeqCst load is a plain aligned `vmovdqa` (x86 never
/// reorders a load with older loads or later stores), or a `lock
/// cmpxchg16b` on a CPU without AVX, where `vmovdqa` is not guaranteed
/// atomic. portable-atomic picks between them at run time unless the
/// build enables `cmpxchg16b` and `avx` (see "Requirements" in the README).
///
/// It is never a lock: [`check_cpu`] refuses a CPU where it would be.
#[cfg(not(loom))]
#[repr(transparent)]
pub struct Atomic128(portable_atomic::AtomicU128);

// The table and the shared file rely on these: a word is 16 bytes, 16-byte
// aligned, and all-zero bytes are a valid word (zeroed heap regions and
// fresh file mappings are cast to `[Atomic128]`; portable-atomic documents
// `AtomicU128` as having the in-memory representation of a `u128`).
#[cfg(not(loom))]
const _: () = {
    assert!(std::mem::size_of::<Atomic128>() == 16);
    assert!(std::mem::align_of::<Atomic128>() == 16);
    assert!(std::mem::size_of::<portable_atomic::AtomicU128>() == 16);
};

#[cfg(not(loom))]
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

/// Checks that this CPU has what [`Atomic128`] needs: a lock-free 16-byte
/// compare-and-swap (CMPXCHG16B on x86_64). Where portable-atomic would fall
/// back to a lock, the table is refused: a lock in one process does not
/// exclude another process sharing the table file.
pub(crate) fn check_cpu() -> Result<(), crate::Error> {
    #[cfg(not(loom))]
    if !portable_atomic::AtomicU128::is_lock_free() {
        return Err(crate::Error::UnsupportedPlatform(
            "this CPU lacks a lock-free 16-byte compare-and-swap (CMPXCHG16B on x86_64)".into(),
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
