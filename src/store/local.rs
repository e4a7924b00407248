//! The local store: each policy's [`Table`], on the heap or in a shared
//! file. It holds no state of its own: the engine owns the tables (they
//! share a region with the policy's counters) and names one in every
//! [`Target`].

use super::{Batch, Keys, Now, Target};
use crate::table::{Lease, Mode, Outcome, Table};
use crate::Error;

/// The local store.
#[derive(Debug, Default)]
pub(crate) struct Local;

impl Local {
    #[inline(always)]
    pub fn decide(&self, t: &Target<'_>, now: Now, mode: Mode) -> Outcome {
        t.table.decide(t.hash, t.cost, now.ns, mode)
    }

    pub fn batch<'s>(&'s self, _: &[Target<'_>], _: Now, _: bool) -> Result<Batch<'s>, Error> {
        Ok(Batch::Rule(self))
    }

    pub fn refund(&self, t: &Target<'_>, now: Now) -> bool {
        t.table.refund(t.hash, t.cost, now.ns)
    }

    pub fn reset(&self, t: &Target<'_>) -> Result<bool, Error> {
        Ok(t.table.reset(t.hash))
    }

    pub fn set_override(&self, t: &Target<'_>, milli: u32) -> Result<(), Error> {
        t.table.set_override(t.hash, milli)
    }

    pub fn override_of(&self, t: &Target<'_>) -> Result<u32, Error> {
        Ok(t.table.override_of(t.hash))
    }

    pub fn acquire(&self, t: &Target<'_>, now: Now, holder: u32) -> (Outcome, Option<Lease>) {
        t.table.acquire(t.hash, now.ns, holder)
    }

    pub fn release(&self, table: &Table, _policy: u32, lease: &Lease) -> Result<bool, Error> {
        if !table.lease_in_range(lease) {
            return Err(Error::InvalidPermit);
        }
        Ok(table.release(lease))
    }

    pub fn release_holder(
        &self,
        table: &Table,
        pid: u32,
        dead: fn(u32) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        dead(pid)?;
        Ok(table.release_holder(pid))
    }

    /// Every release in this store wakes the waiters (a futex in the
    /// policy's region), so a waiter sleeps until the retry-after.
    pub fn poll_ns(&self) -> u64 {
        u64::MAX
    }
}

impl Keys for Local {
    fn decide_each(
        &self,
        ts: &[Target<'_>],
        now: Now,
        mode: Mode,
        seen: &mut dyn FnMut(usize, Outcome, Now) -> bool,
    ) {
        for (i, t) in ts.iter().enumerate() {
            if !seen(i, self.decide(t, now, mode), now) {
                return;
            }
        }
    }

    fn refund_each(&self, ts: &[(Target<'_>, Now)]) {
        for (t, at) in ts {
            self.refund(t, *at);
        }
    }
}
