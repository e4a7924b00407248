//! Concurrency permits: acquire (at once or waiting), release, and the
//! release of a dead process's permits.

use super::decision::Count;
use super::{Decision, Engine, PolicyId};
use crate::store::Now;
use crate::table::Lease;
use crate::wait::Handshake;
use crate::Error;
use std::time::Duration;

/// A concurrency permit from [`Engine::acquire`]: give it back with
/// [`Engine::release`]; if you never do, it expires after the policy's TTL.
///
/// A permit is single-use: it is neither `Copy` nor `Clone`, and `release`
/// consumes it. Its lease word carries a nonce (see "Concurrency permits"
/// in the README), so even a permit rebuilt from its raw parts after it was
/// released (the C ABI's `rk_permit` is a plain value a caller can copy)
/// names that one lease only: releasing it again frees nothing, and never
/// another holder's permit.
///
/// ```compile_fail
/// # let engine = ratekeeper::Engine::new(Default::default()).unwrap();
/// # let p = engine.add_policy("p", "concurrency 1").unwrap();
/// let permit = engine.acquire(p, b"k").unwrap().1.unwrap();
/// engine.release(permit).unwrap();
/// engine.release(permit).unwrap(); // error: use of moved value
/// ```
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    pub(crate) engine: u64,
    pub(crate) policy: u32,
    pub(crate) lease: Lease,
}

impl Permit {
    /// The policy the permit belongs to.
    pub fn policy(&self) -> PolicyId {
        PolicyId(self.policy)
    }

    /// The permit as plain words, for a caller that must keep it outside
    /// Rust (the C ABI): the policy index and four opaque words.
    pub fn into_raw_parts(self) -> (u32, [u64; 4]) {
        self.raw_parts()
    }

    /// A permit from [`into_raw_parts`](Self::into_raw_parts). Any value is
    /// accepted here; [`Engine::release`] refuses parts that name no lease
    /// of its own (`InvalidPermit`) and frees a lease only if the parts
    /// match it exactly.
    pub fn from_raw_parts(policy: u32, parts: [u64; 4]) -> Permit {
        let [engine, place, lo, hi] = parts;
        Permit {
            engine,
            policy,
            lease: Lease {
                bucket: place as u32,
                slot: (place >> 32) as u8,
                index: (place >> 40) as u16,
                word: u128::from(lo) | u128::from(hi) << 64,
            },
        }
    }

    pub(crate) fn raw_parts(&self) -> (u32, [u64; 4]) {
        let l = &self.lease;
        (
            self.policy,
            [
                self.engine,
                u64::from(l.bucket) | u64::from(l.slot) << 32 | u64::from(l.index) << 40,
                l.word as u64,
                (l.word >> 64) as u64,
            ],
        )
    }
}

impl Engine {
    /// Takes a permit of a concurrency policy if one is free now. The
    /// decision says how many remain; the permit is `None` when denied.
    pub fn acquire(
        &self,
        policy: PolicyId,
        key: &[u8],
    ) -> Result<(Decision, Option<Permit>), Error> {
        self.acquire_now(policy, key, self.clock_now())
    }

    /// [`acquire`](Self::acquire) at an explicit time.
    pub fn acquire_at(
        &self,
        policy: PolicyId,
        key: &[u8],
        now_ns: u64,
    ) -> Result<(Decision, Option<Permit>), Error> {
        self.acquire_now(policy, key, Self::at(now_ns))
    }

    fn acquire_now(
        &self,
        policy: PolicyId,
        key: &[u8],
        now: Now,
    ) -> Result<(Decision, Option<Permit>), Error> {
        let p = self.get(policy)?;
        p.concurrency_limit()?;
        // SAFETY: getpid has no preconditions and cannot fail.
        let holder = unsafe { libc::getpid() } as u32;
        let t = Self::target(p, policy, key, 1);
        let (outcome, lease, at) = self.store.acquire(&t, now, holder);
        let d = super::decision::conclude(p, &t, outcome, now.ns, at.ns, Count::here());
        let permit = lease.map(|lease| Permit {
            engine: self.id,
            policy: policy.0,
            lease,
        });
        Ok((d, permit))
    }

    /// [`acquire`](Self::acquire), waiting up to `timeout` for a permit to
    /// be released or to expire. Sleeps (on a futex), never spins.
    ///
    /// Returns at once with a final decision: a permit; an admission
    /// without a permit (a policy that fails open whose table has no room
    /// for the key, or shadow mode), which waiting would only repeat; or a
    /// denial that can never turn (`retry_after_ns == u64::MAX`). A denial
    /// with a finite retry-after is waited on even if it lies beyond the
    /// deadline, since a release can come sooner. `timeout` is real time
    /// (`CLOCK_MONOTONIC`), whatever clock the engine decides with. On a
    /// Redis engine a release on another host wakes nobody here: the
    /// waiter tries again at least every 50 ms.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let reports = engine.add_policy("reports", "concurrency 1")?;
    /// let (_, permit) = engine.acquire(reports, b"user:1")?;
    /// let permit = permit.expect("free");
    /// // Taken: a short wait times out (no permit, denied decision).
    /// let (d, none) = engine.acquire_timeout(reports, b"user:1", std::time::Duration::from_millis(5))?;
    /// assert!(!d.allowed && none.is_none());
    /// assert!(engine.release(permit)?);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn acquire_timeout(
        &self,
        policy: PolicyId,
        key: &[u8],
        timeout: Duration,
    ) -> Result<(Decision, Option<Permit>), Error> {
        let p = self.get(policy)?;
        // The deadline is kept in real time: a coarse engine clock lags by up
        // to a tick (waits of the remaining few ns would repeat until it
        // ticks), and a manual one may never reach it.
        let timeout_ns = timeout.as_nanos().min(u64::MAX as u128) as u64;
        let deadline = crate::clock::now_ns().saturating_add(timeout_ns);
        // A wait for an expiry shorter than the engine clock's resolution
        // would wake before the clock shows it and try again at once.
        let floor = self.options.clock.resolution_ns().max(1_000);
        let poll = self.store.poll_ns();
        let cells = &p.head().cells;
        let handshake = Handshake {
            released: &cells.released,
            waiters: &cells.waiters,
        };
        loop {
            // Read before the try: a release after it changes the word
            // (src/wait.rs says why no wake-up is lost).
            let seen = handshake.observe();
            let (d, permit) = self.acquire(policy, key)?;
            let left = deadline.saturating_sub(crate::clock::now_ns());
            let settled = permit.is_some() || d.allowed || d.retry_after_ns == u64::MAX;
            if settled || left == 0 {
                return Ok((d, permit));
            }
            let wait_ns = left.min(d.retry_after_ns.max(floor)).min(poll);
            handshake.sleep(seen, wait_ns);
        }
    }

    /// Gives a permit back. `Ok(false)` if it had already expired (its
    /// lease may now belong to someone else, who keeps it), was released
    /// already (a permit rebuilt with [`Permit::from_raw_parts`]), or its
    /// key was reset. Never frees a lease the permit does not name.
    pub fn release(&self, permit: Permit) -> Result<bool, Error> {
        if permit.engine != self.id {
            return Err(Error::InvalidPermit);
        }
        let p = self.get(PolicyId(permit.policy))?;
        let released = self.store.release(&p.table, permit.policy, &permit.lease)?;
        if released {
            let cells = &p.head().cells;
            Handshake {
                released: &cells.released,
                waiters: &cells.waiters,
            }
            .notify(false);
        }
        Ok(released)
    }

    /// Releases every permit of `policy` held by process `pid` (for a
    /// supervisor that saw a worker die). Returns how many were released.
    ///
    /// Only a dead process's permits: `pid` must name no live process in
    /// this process's PID namespace (no process at all, or a zombie — a
    /// process that exited and is waiting to be reaped). A lease records
    /// the holder's pid only, so once the pid is reused by a live process,
    /// freeing "its" permits could free that process's. Refused with
    /// [`Error::InvalidArgument`], releasing nothing: a live pid (also one
    /// this process may not signal), this process's own pid (release its
    /// permits with [`release`](Self::release)), 0, and numbers Linux never
    /// gives a process (2²² or more). On a Redis engine:
    /// [`Error::Unsupported`] (Redis permits of a dead process expire by
    /// their TTL).
    ///
    /// Every process sharing an engine's file must share one PID namespace
    /// (and with the supervisor calling this): a pid from another namespace
    /// names some other process here, or none.
    ///
    /// # Examples
    /// ```
    /// # let engine = ratekeeper::Engine::new(Default::default())?;
    /// let jobs = engine.add_policy("jobs", "concurrency 2")?;
    /// let (_, permit) = engine.acquire(jobs, b"k")?;
    /// // This process is alive: its permits are not for release_holder.
    /// assert!(engine.release_holder(jobs, std::process::id()).is_err());
    /// assert!(engine.release(permit.unwrap())?);
    /// # Ok::<(), ratekeeper::Error>(())
    /// ```
    pub fn release_holder(&self, policy: PolicyId, pid: u32) -> Result<u64, Error> {
        let p = self.get(policy)?;
        let n = self.store.release_holder(&p.table, pid, dead_holder)?;
        if n > 0 {
            // Wakes whoever sleeps even if `waiters` is wrong (a process that
            // died asleep leaves it too high, which is harmless; a corrupt
            // file could leave it too low): an administrative call, not a
            // hot one.
            let cells = &p.head().cells;
            Handshake {
                released: &cells.released,
                waiters: &cells.waiters,
            }
            .notify(true);
        }
        Ok(n)
    }
}

/// `Ok` if `pid` may be a dead process whose permits `release_holder` can
/// free: a Linux pid (1 to 2²² − 1), not this process, and naming no live
/// process in this PID namespace (none, or a zombie).
fn dead_holder(pid: u32) -> Result<(), Error> {
    let refuse = |why: String| {
        Err(Error::InvalidArgument(format!(
            "release_holder: {why}; it frees only the permits of a process that has died"
        )))
    };
    if pid == 0 || pid > crate::table::PID_MASK {
        return refuse(format!(
            "{pid} is not a process id (1 to {})",
            crate::table::PID_MASK
        ));
    }
    if pid == std::process::id() {
        return refuse(format!(
            "pid {pid} is this process (give its permits back with release)"
        ));
    }
    // SAFETY: signal 0 sends nothing: kill only checks that the process
    // exists and may be signalled. `pid` is in 1..2^22, so it names one
    // process, never a process group (negative) or every process (-1).
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if alive && !crate::os::has_exited(pid) {
        return refuse(format!(
            "process {pid} is alive (it may have reused a dead holder's pid, or \
             the holder is in another PID namespace, which release_holder cannot tell)"
        ));
    }
    Ok(())
}
