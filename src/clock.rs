//! Time: `u64` nanoseconds of `CLOCK_MONOTONIC`, the same in every process
//! of a host. Every operation also has a variant that takes `now_ns`
//! explicitly; tests use that or a [`ManualClock`], never `sleep`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which clock `Engine::check` reads when no explicit time is given.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// `CLOCK_MONOTONIC`: nanosecond resolution, 20–30 ns a read (README,
    /// design notes: the hosts measured).
    Monotonic,
    /// `CLOCK_MONOTONIC_COARSE` (the default): the same time base, updated
    /// once per kernel tick (1–4 ms), 2–10 ns a read. It never runs ahead of
    /// `CLOCK_MONOTONIC`, so a decision made with it is never more lenient
    /// than one made at the same instant with the precise clock: limits can
    /// only be stricter by up to one tick, and retry-after is never short.
    #[default]
    MonotonicCoarse,
    /// A clock the program sets by hand (tests, simulations).
    Manual(Arc<ManualClock>),
}

impl Clock {
    /// The current time in nanoseconds.
    #[inline]
    pub fn now_ns(&self) -> u64 {
        match self {
            Clock::Monotonic => monotonic_ns(libc::CLOCK_MONOTONIC),
            Clock::MonotonicCoarse => monotonic_ns(libc::CLOCK_MONOTONIC_COARSE),
            Clock::Manual(m) => m.now_ns(),
        }
    }

    /// The smallest step the clock moves by, in nanoseconds (the kernel
    /// tick for `MonotonicCoarse`; 1 for the others).
    pub fn resolution_ns(&self) -> u64 {
        match self {
            // CLOCK_MONOTONIC_COARSE always exists on Linux, so the call
            // cannot fail (if it did, 1).
            Clock::MonotonicCoarse => vdso::read(libc::clock_getres, libc::CLOCK_MONOTONIC_COARSE)
                .unwrap_or(1)
                .max(1),
            Clock::Monotonic | Clock::Manual(_) => 1,
        }
    }
}

/// A clock that only moves when told to.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    /// A manual clock reading `now_ns`.
    pub fn new(now_ns: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now_ns: AtomicU64::new(now_ns),
        })
    }
    /// The time it reads.
    pub fn now_ns(&self) -> u64 {
        // Relaxed: the value is the only data; no other memory is published with it.
        self.now_ns.load(Ordering::Relaxed)
    }
    /// Sets the time.
    pub fn set_ns(&self, now_ns: u64) {
        self.now_ns.store(now_ns, Ordering::Relaxed);
    }
    /// Moves the time forward by `delta_ns`.
    pub fn advance_ns(&self, delta_ns: u64) {
        self.now_ns.fetch_add(delta_ns, Ordering::Relaxed);
    }
}

/// `CLOCK_MONOTONIC` in nanoseconds (what `rk_now_ns` returns).
#[inline]
pub fn now_ns() -> u64 {
    monotonic_ns(libc::CLOCK_MONOTONIC)
}

#[inline]
fn monotonic_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    vdso::clock_gettime(clock, &mut ts);
    ns(&ts)
}

/// A timespec in nanoseconds (wrapping: the kernel's monotonic clocks
/// count from boot, far below 2^64 ns).
#[inline(always)]
fn ns(ts: &libc::timespec) -> u64 {
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// `clock_gettime` without libc's wrapper: the vDSO's own function, looked
/// up once ([`vdso::resolve`], which `Engine::new` calls) and then called
/// directly. On the hosts measured the wrapper was 35% of a coarse read
/// (8.0 ns through libc, 5.9 ns direct, `CLOCK_MONOTONIC_COARSE`), and a
/// denied check reads the clock and little else. Where the vDSO or its
/// symbol is missing (valgrind hides it; another libc may not name it),
/// or its first answer disagrees with libc's, libc's `clock_gettime` is
/// used, as before the lookup.
pub(crate) mod vdso {
    use std::sync::atomic::{AtomicUsize, Ordering};

    type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

    /// The function's address; 0 until found (or if never found).
    static FUNCTION: AtomicUsize = AtomicUsize::new(0);

    /// The vDSO's name for `clock_gettime` (Linux's `vdso.lds` of each
    /// architecture).
    #[cfg(target_arch = "x86_64")]
    const SYMBOL: &std::ffi::CStr = c"__vdso_clock_gettime";
    #[cfg(target_arch = "aarch64")]
    const SYMBOL: &std::ffi::CStr = c"__kernel_clock_gettime";

    /// Reads `clock` into `ts`. CLOCK_MONOTONIC(_COARSE) always exists on
    /// Linux, so neither path can fail.
    #[inline(always)]
    pub(crate) fn clock_gettime(clock: libc::clockid_t, ts: &mut libc::timespec) {
        // Relaxed: the value is an address of code the kernel mapped before
        // the process ran its first instruction; nothing else is published
        // with it, and a thread that still reads 0 uses libc.
        let f = FUNCTION.load(Ordering::Relaxed);
        if f != 0 {
            // SAFETY: `f` was stored by `resolve` from `dlsym` of the
            // vDSO's clock_gettime, whose ABI is libc's `clock_gettime`
            // (`ClockGettime`); the vDSO stays mapped for the life of the
            // process (and of a forked child, at the same address). `ts`
            // is a valid, writable timespec.
            unsafe {
                std::mem::transmute::<usize, ClockGettime>(f)(clock, ts);
            }
        } else {
            // SAFETY: `ts` is a valid, writable timespec.
            unsafe {
                libc::clock_gettime(clock, ts);
            }
        }
    }

    /// Looks the vDSO's function up, once per process (`Engine::new` calls
    /// it: off the check path, and before any fork of a pre-fork server,
    /// since the loader's lock may be held across `fork` by another
    /// thread). Keeps it only if it answers as libc does.
    pub(crate) fn resolve() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            if let Some(f) = lookup() {
                FUNCTION.store(f as usize, Ordering::Relaxed);
            }
        });
    }

    /// The vDSO's function is in use (tests).
    #[cfg(test)]
    pub(crate) fn found() -> bool {
        FUNCTION.load(Ordering::Relaxed) != 0
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn lookup() -> Option<ClockGettime> {
        // SAFETY: both strings are NUL-terminated; RTLD_NOLOAD only finds
        // an object already mapped (the vDSO, which glibc registers under
        // this name), never loads one; the handle is not closed, as the
        // vDSO is never unmapped.
        let sym = unsafe {
            let h = libc::dlopen(
                c"linux-vdso.so.1".as_ptr(),
                libc::RTLD_LAZY | libc::RTLD_NOLOAD,
            );
            if h.is_null() {
                return None;
            }
            libc::dlsym(h, SYMBOL.as_ptr())
        };
        if sym.is_null() {
            return None;
        }
        // SAFETY: the vDSO exports this symbol as a function with
        // clock_gettime's C signature (its architecture's `vdso.lds`).
        let f = unsafe { std::mem::transmute::<*mut libc::c_void, ClockGettime>(sym) };
        // Both clocks, read through it, fall between two reads through libc.
        for clock in [libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC_COARSE] {
            let before = read(libc::clock_gettime, clock)?;
            let direct = read(f, clock)?;
            if direct < before || direct > read(libc::clock_gettime, clock)? {
                return None;
            }
        }
        Some(f)
    }

    /// `clock` read through `f`, in nanoseconds; `None` if it failed. `f`
    /// is libc's `clock_gettime` or `clock_getres`, or the vDSO's
    /// `clock_gettime`: all three have this signature.
    pub(crate) fn read(f: ClockGettime, clock: libc::clockid_t) -> Option<u64> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; `f` is one of the
        // functions above, whose C signature `ClockGettime` is (`lookup`
        // for the vDSO's).
        let rc = unsafe { f(clock, &mut ts) };
        (rc == 0).then(|| super::ns(&ts))
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn lookup() -> Option<ClockGettime> {
        None
    }
}

/// Fills `buf` from the kernel's random source (`getrandom(2)`).
pub(crate) fn fill_random(buf: &mut [u8]) {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY:
        // - the pointer and length describe the unfilled tail of `buf`, which is
        //   valid for writes; getrandom writes at most that many bytes.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // getrandom only fails on kernels older than 3.17; fall back to the
            // clock and the address of the buffer, which still differ per table.
            let fallback = now_ns() ^ (buf.as_ptr() as u64).rotate_left(32);
            for (i, b) in buf[filled..].iter_mut().enumerate() {
                *b = (fallback.rotate_left(i as u32 * 8) as u8) ^ i as u8;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_clock_never_goes_backwards() {
        let mut last = now_ns();
        for _ in 0..1000 {
            let t = now_ns();
            assert!(t >= last);
            last = t;
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let m = ManualClock::new(5);
        let c = Clock::Manual(m.clone());
        assert_eq!(c.now_ns(), 5);
        m.advance_ns(10);
        assert_eq!(c.now_ns(), 15);
        m.set_ns(1);
        assert_eq!(c.now_ns(), 1);
        assert_eq!(c.resolution_ns(), 1);
    }

    /// The direct vDSO call is found where the kernel mapped a vDSO (on
    /// these hosts; not under valgrind, which hides it), and both clocks
    /// read through it fall between two reads through libc.
    #[test]
    fn the_vdso_clock_is_found_and_agrees_with_libc() {
        vdso::resolve();
        // SAFETY: getauxval has no preconditions.
        let mapped = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } != 0;
        if mapped && cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(
                vdso::found(),
                "the kernel mapped a vDSO, but it was not used"
            );
        }
        let libc_ns = |clock| vdso::read(libc::clock_gettime, clock).unwrap();
        for clock in [libc::CLOCK_MONOTONIC, libc::CLOCK_MONOTONIC_COARSE] {
            for _ in 0..1000 {
                let (before, t, after) = (libc_ns(clock), monotonic_ns(clock), libc_ns(clock));
                assert!(before <= t && t <= after, "{clock}: {before} {t} {after}");
            }
        }
    }

    #[test]
    fn the_coarse_clock_reports_its_tick() {
        // Linux ticks at 100 to 1000 Hz.
        let tick = Clock::MonotonicCoarse.resolution_ns();
        assert!((1_000_000..=10_000_000).contains(&tick), "{tick}");
        assert_eq!(Clock::Monotonic.resolution_ns(), 1);
    }
}
