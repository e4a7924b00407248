//! Deny events: `rk_deny_event`, `rk_recent_denials`.

use super::args::{try_out, try_ref_from_ptr, try_slice_mut};
use super::boundary::ffi_panic_boundary;
use super::engine::rk_engine;
use super::status::rk_status;
use crate::{DenyEvent, PolicyId};
use std::mem::{offset_of, size_of, MaybeUninit};

/// Key bytes a deny event keeps (longer keys are cut).
pub const RK_EVENT_KEY_BYTES: usize = 80;
// (Loom models shrink the ring's entries, and so the key bytes they keep.)
#[cfg(not(loom))]
const _: () = assert!(RK_EVENT_KEY_BYTES == crate::EVENT_KEY_BYTES);
#[cfg(loom)]
const _: () = assert!(RK_EVENT_KEY_BYTES >= crate::EVENT_KEY_BYTES);

/// Deny events each policy keeps: `rk_recent_denials` never returns more.
pub const RK_DENY_RING_ENTRIES: usize = 512;
const _: () = assert!(RK_DENY_RING_ENTRIES == crate::RING_ENTRIES);

/// One denial (or, in shadow mode, a would-be denial), from
/// `rk_recent_denials`. A plain value the caller owns. Its layout is fixed
/// (it is an array element); a version with more fields would come with a
/// function of its own.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_deny_event {
    /// The event's position in the policy's history: one more for each
    /// denial. Follow a policy by asking for `ticket + 1` of the last event
    /// seen.
    pub ticket: u64,
    /// When it happened (nanoseconds; the `now_ns` of the check).
    pub time_ns: u64,
    /// The key's 64-bit hash under the policy's seed (always kept, so
    /// repeated offenders can be told apart without their keys).
    pub key_hash: u64,
    /// The `retry_after_ns` the client was given.
    pub retry_after_ns: u64,
    /// The binding limit (as `rk_decision.limit_index`; capped at 255).
    pub limit_index: u32,
    /// Denied by the penalty box (`rk_decision.banned`).
    pub banned: bool,
    /// Shadow mode: the request passed, but would have been denied.
    pub shadow: bool,
    /// `key` holds the key's first bytes: the policy was added with
    /// `record_keys`. Otherwise `key_len` is 0.
    pub has_key: bool,
    /// Bytes of `key` that are valid (at most `RK_EVENT_KEY_BYTES`; a longer
    /// key was cut). The rest of `key` is 0.
    pub key_len: u8,
    /// The key's first `key_len` bytes (not NUL-terminated).
    pub key: [u8; RK_EVENT_KEY_BYTES],
}

const _: () = {
    assert!(size_of::<rk_deny_event>() == 120);
    assert!(offset_of!(rk_deny_event, limit_index) == 32);
    assert!(offset_of!(rk_deny_event, key_len) == 39);
    assert!(offset_of!(rk_deny_event, key) == 40);
};

impl From<&DenyEvent> for rk_deny_event {
    fn from(e: &DenyEvent) -> Self {
        let mut key = [0u8; RK_EVENT_KEY_BYTES];
        let len = match &e.key {
            Some(k) => {
                let len = k.len().min(RK_EVENT_KEY_BYTES);
                key[..len].copy_from_slice(&k[..len]);
                len
            }
            None => 0,
        };
        rk_deny_event {
            ticket: e.ticket,
            time_ns: e.time_ns,
            key_hash: e.key_hash,
            retry_after_ns: e.retry_after_ns,
            limit_index: e.limit_index,
            banned: e.banned,
            shadow: e.shadow,
            has_key: e.key.is_some(),
            key_len: len as u8,
            key,
        }
    }
}

/// Copies as many of `found` as fit into the caller's `slots`; returns how many.
fn copy_events(slots: &mut [MaybeUninit<rk_deny_event>], found: &[DenyEvent]) -> usize {
    for (slot, event) in slots.iter_mut().zip(found) {
        slot.write(event.into());
    }
    slots.len().min(found.len())
}

/// Copies the recent denials of `policy` with a ticket of at least `since`
/// into `events[0..capacity]`, oldest first, and stores how many it wrote
/// in `*count_out` (at most `capacity`).
///
/// Each policy keeps its last `RK_DENY_RING_ENTRIES` (512) denials, also
/// shadow-mode would-be denials, in a lock-free ring that any process of a
/// shared engine sees. To follow a policy, start with `since = 0` and then
/// pass the `ticket` of the last event received plus 1; if `*count_out ==
/// capacity`, more may be waiting: call again at once. Tickets increase
/// by one per denial; a gap means events were overwritten before they were
/// read (or were being written at that instant and are skipped).
///
/// `events` may be NULL only with `capacity` 0 (which writes nothing and
/// stores 0). The call allocates a temporary list: not for the hot path.
/// Thread-safe; never blocks writers.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine`, `count_out`, or `events` with
/// `capacity > 0`), `RK_ERR_UNKNOWN_POLICY`. `events` and `*count_out` are
/// written only on success.
///
/// # Safety
/// `engine` is NULL or a live engine; `events` is NULL or valid for writing
/// `capacity` `rk_deny_event`s; `count_out` is NULL or valid for writing a
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_recent_denials(
    engine: *mut rk_engine,
    policy: u32,
    since: u64,
    events: *mut rk_deny_event,
    capacity: usize,
    count_out: *mut usize,
) -> rk_status {
    ffi_panic_boundary!("rk_recent_denials", {
        let engine = try_ref_from_ptr!(engine);
        let count_out = try_out!(count_out);
        // No more elements than the caller offers, nor than the ring holds.
        let capacity = capacity.min(RK_DENY_RING_ENTRIES);
        let events = try_slice_mut!(events, capacity);
        let found = engine.recent_denials(PolicyId(policy), since)?;
        count_out.write(copy_events(events, &found));
    })
}
