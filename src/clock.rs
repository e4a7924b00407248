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
            Clock::MonotonicCoarse => {
                let mut ts = libc::timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                // SAFETY:
                // - `ts` is a valid, writable timespec owned by this frame;
                // - CLOCK_MONOTONIC_COARSE always exists on Linux, so the call
                //   cannot fail (on failure `ts` stays 0 and 1 is returned).
                unsafe {
                    libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts);
                }
                ((ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64).max(1)
            }
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
    // SAFETY:
    // - `ts` is a valid, writable timespec owned by this frame;
    // - CLOCK_MONOTONIC(_COARSE) always exists on Linux, so the call cannot fail.
    unsafe {
        libc::clock_gettime(clock, &mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
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

    #[test]
    fn the_coarse_clock_reports_its_tick() {
        // Linux ticks at 100 to 1000 Hz.
        let tick = Clock::MonotonicCoarse.resolution_ns();
        assert!((1_000_000..=10_000_000).contains(&tick), "{tick}");
        assert_eq!(Clock::Monotonic.resolution_ns(), 1);
    }
}
