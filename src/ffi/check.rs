//! Rate-limit checks: `rk_decision`, `rk_check*`, `rk_check_item`,
//! `rk_check_many*`, `rk_peek*`, `rk_refund*`, `rk_reset`.

use super::args::{self, try_key, try_opt_out, try_out, try_ref_from_ptr, try_slice, Failure};
use super::boundary::ffi_panic_boundary;
use super::engine::rk_engine;
use super::status::rk_status;
use crate::{CheckItem, Decision, Engine, PolicyId};
use std::mem::{offset_of, size_of};

/// The outcome of a check, peek or acquire. A plain value the caller owns.
///
/// Maps onto HTTP: `retry_after_ns` is `Retry-After`; `limit`, `remaining`
/// and `reset_after_ns` feed the `RateLimit` / `X-RateLimit-*` fields.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct rk_decision {
    /// The request may proceed.
    pub allowed: bool,
    /// Denied because the key is in the policy's penalty box
    /// (`rk_policy_options.penalty_strikes`): `retry_after_ns` is the
    /// ban's remaining time. Always false without a penalty box.
    /// (Added in the padding after `allowed`: no other field moved.)
    pub banned: bool,
    /// Shadow mode (`rk_policy_options.shadow`): the request passes
    /// (`allowed` is true) but would have been denied; the other fields
    /// describe that denial. Always false without shadow mode.
    pub shadow_denied: bool,
    /// Quota of the binding limit (for GCRA, the burst).
    pub limit: u64,
    /// Requests of cost 1 still allowed now under the binding limit.
    pub remaining: u64,
    /// When denied: wait at least this long (`UINT64_MAX`: never, the cost
    /// exceeds what the limit can ever allow); 0 when allowed.
    pub retry_after_ns: u64,
    /// Time until the binding limit is back to full quota.
    pub reset_after_ns: u64,
    /// Index of the binding limit within the policy (see `rk_policy_limit`).
    pub limit_index: u32,
}

impl From<Decision> for rk_decision {
    #[inline(always)]
    fn from(d: Decision) -> Self {
        rk_decision {
            allowed: d.allowed,
            limit: d.limit,
            remaining: d.remaining,
            retry_after_ns: d.retry_after_ns,
            reset_after_ns: d.reset_after_ns,
            limit_index: d.limit_index,
            banned: d.banned,
            shadow_denied: d.shadow_denied,
        }
    }
}

// The layout of `rk_decision` is ABI: `banned` and `shadow_denied` went
// into the padding after `allowed`, and nothing else may ever move.
const _: () = {
    assert!(size_of::<rk_decision>() == 48);
    assert!(std::mem::align_of::<rk_decision>() == 8);
    assert!(offset_of!(rk_decision, allowed) == 0);
    assert!(offset_of!(rk_decision, banned) == 1);
    assert!(offset_of!(rk_decision, shadow_denied) == 2);
    assert!(offset_of!(rk_decision, limit) == 8);
    assert!(offset_of!(rk_decision, remaining) == 16);
    assert!(offset_of!(rk_decision, retry_after_ns) == 24);
    assert!(offset_of!(rk_decision, reset_after_ns) == 32);
    assert!(offset_of!(rk_decision, limit_index) == 40);
};

/// The decision of `rk_check` (`now_ns`: `None`) or `rk_check_at`.
#[inline(always)]
fn check(
    engine: &Engine,
    policy: PolicyId,
    key: &[u8],
    cost: u32,
    now_ns: Option<u64>,
) -> Result<rk_decision, Failure> {
    // What `try_check_at` checks, with `check_at`'s inlined hot path and
    // one lookup of the policy (measured: `try_check_at` costs ~13 ns
    // more). No explicit time: the engine's own (for a Redis engine,
    // Redis's).
    let d = match engine.check_rate(policy, key, cost, now_ns) {
        Ok(d) => d,
        Err(_) => {
            return Err(Failure::Engine(
                engine.not_rate(policy, "use rk_acquire/rk_release"),
            ))
        }
    };
    Ok(d.into())
}

/// Checks `key` against `policy` at the engine clock's time and, if every
/// limit allows, charges `cost` to each (a denied request is charged
/// nothing). Stores the decision in `*out`.
///
/// `key` is `key_len` arbitrary bytes, only read during the call (NULL with
/// `key_len` 0 is the empty key). `cost` may be 0 (a check that charges
/// nothing); a cost above what a limit can ever allow is denied with
/// `retry_after_ns == UINT64_MAX`.
///
/// The hot path: lock-free, allocation-free, never blocks, touches no
/// thread-local state on success. Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine` or `out`), `RK_ERR_NULL_KEY`,
/// `RK_ERR_UNKNOWN_POLICY`, `RK_ERR_WRONG_POLICY_KIND` (a concurrency
/// policy: use `rk_acquire`). `*out` is written only on success (`RK_OK`,
/// allowed or denied).
///
/// # Safety
/// `engine` is NULL or a live engine; `key` is NULL or points to `key_len`
/// readable bytes; `out` is NULL or valid for writing an `rk_decision`.
#[no_mangle]
pub unsafe extern "C" fn rk_check(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    cost: u32,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_check", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let out = try_out!(out);
        out.write(check(engine, PolicyId(policy), key, cost, None)?);
    })
}

/// `rk_check` at the explicit time `now_ns` (nanoseconds of
/// `CLOCK_MONOTONIC`, see `rk_now_ns`) instead of the engine's clock: for
/// tests, simulations, and callers that read the clock once per request.
///
/// # Safety
/// As for `rk_check`.
#[no_mangle]
pub unsafe extern "C" fn rk_check_at(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    cost: u32,
    now_ns: u64,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_check_at", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let out = try_out!(out);
        out.write(check(engine, PolicyId(policy), key, cost, Some(now_ns))?);
    })
}

/// One item of `rk_check_many`: a policy, a key under it and the cost to
/// charge. A plain value the caller owns; `key` is only read during the call.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rk_check_item {
    /// The policy (a rate limit: concurrency policies are refused).
    pub policy: u32,
    /// `key_len` arbitrary bytes (NULL with `key_len` 0 is the empty key).
    pub key: *const u8,
    /// Length of `key` in bytes.
    pub key_len: usize,
    /// The cost to charge (as for `rk_check`).
    pub cost: u32,
}

// Pinned: the Python binding's C accelerator mirrors this layout.
#[cfg(target_pointer_width = "64")]
const _: () = {
    assert!(size_of::<rk_check_item>() == 32);
    assert!(offset_of!(rk_check_item, policy) == 0);
    assert!(offset_of!(rk_check_item, key) == 8);
    assert!(offset_of!(rk_check_item, key_len) == 16);
    assert!(offset_of!(rk_check_item, cost) == 24);
};

/// Batches of at most this many items are converted on the stack: no
/// allocation. Larger batches allocate one array for the call.
const STACK_ITEMS: usize = 16;

/// `items[index]` as an engine item.
///
/// # Safety
/// `item.key` is NULL or points to `item.key_len` readable bytes that stay
/// unchanged for `'a`.
#[inline(always)]
unsafe fn check_item<'a>(index: usize, item: &rk_check_item) -> Result<CheckItem<'a>, Failure> {
    // SAFETY: forwarded from this function's contract.
    let key = unsafe { args::key(item.key, item.key_len) }.map_err(|f| match f {
        Failure::NullKey(len) => Failure::NullItemKey { index, len },
        Failure::TooLong(_, len) => Failure::Invalid(format!(
            "items[{index}].key_len is {len}, larger than PTRDIFF_MAX"
        )),
        other => other,
    })?;
    Ok(CheckItem {
        policy: PolicyId(item.policy),
        key,
        cost: item.cost,
    })
}

/// The binding decision of the batch `items` and its index
/// (`rk_check_many`, or with `now_ns` `rk_check_many_at`).
///
/// # Safety
/// Every item's `key` is NULL or points to its `key_len` readable bytes,
/// unchanged during the call.
#[inline(always)]
unsafe fn check_many(
    engine: &Engine,
    items: &[rk_check_item],
    now_ns: Option<u64>,
) -> Result<(Decision, usize), Failure> {
    if items.is_empty() {
        return Err(Failure::Invalid(
            "`n` is 0: a batch needs at least one item".into(),
        ));
    }
    let many = |batch: &[CheckItem<'_>]| match now_ns {
        Some(now_ns) => engine.check_many_at(batch, now_ns),
        None => engine.check_many(batch),
    };
    Ok(if items.len() <= STACK_ITEMS {
        let mut batch = [CheckItem {
            policy: PolicyId(0),
            key: &[],
            cost: 0,
        }; STACK_ITEMS];
        for (i, (slot, item)) in batch.iter_mut().zip(items).enumerate() {
            // SAFETY: forwarded from this function's contract (every item's key).
            *slot = unsafe { check_item(i, item)? };
        }
        many(&batch[..items.len()])?
    } else {
        let batch = items
            .iter()
            .enumerate()
            // SAFETY: forwarded from this function's contract (every item's key).
            .map(|(i, item)| unsafe { check_item(i, item) })
            .collect::<Result<Vec<_>, _>>()?;
        many(&batch)?
    })
}

/// Checks several (policy, key, cost) items - e.g. every limit that applies
/// to one HTTP request: per IP, per route, per user - as one request, at the
/// engine clock's time: if every item allows, every item is charged; if any
/// denies, none is. Stores the binding decision in `*out` and its item's
/// index in `*index_out`: a denying item with the largest retry-after, else
/// the item with the fewest remaining (ties go to the lowest index). A
/// denial is counted (stats, deny events) against the binding item only.
///
/// `items[0..n]` and their keys are only read during the call; `index_out`
/// may be NULL. Items are peeked, then charged in order; if a concurrent
/// request takes the last unit of an item in between, the items already
/// charged are refunded and the batch is denied (never more than the quota
/// is admitted). Allocation-free for up to 16 items; lock-free; never
/// blocks. Thread-safe.
///
/// Errors: `RK_ERR_NULL_POINTER` (`engine` or `out`, or `items` with
/// `n > 0`), `RK_ERR_INVALID_ARGUMENT` (`n == 0`), `RK_ERR_NULL_KEY` (an
/// item's `key` is NULL with a non-zero `key_len`; the message names the
/// item), `RK_ERR_UNKNOWN_POLICY`, `RK_ERR_WRONG_POLICY_KIND` (an item's
/// policy is a concurrency limit). `*out` and `*index_out` are written only
/// on success; on failure nothing is charged.
///
/// # Safety
/// `engine` is NULL or a live engine; `items` is NULL or points to `n`
/// readable `rk_check_item`s whose `key`s are NULL or point to `key_len`
/// readable bytes; `out` is NULL or valid for writing an `rk_decision`;
/// `index_out` is NULL or valid for writing a `size_t`.
#[no_mangle]
pub unsafe extern "C" fn rk_check_many(
    engine: *mut rk_engine,
    items: *const rk_check_item,
    n: usize,
    out: *mut rk_decision,
    index_out: *mut usize,
) -> rk_status {
    ffi_panic_boundary!("rk_check_many", {
        let engine = try_ref_from_ptr!(engine);
        let out = try_out!(out);
        let index_out = try_opt_out!(index_out);
        let items = try_slice!(items, n);
        // SAFETY: every item's key is NULL or valid (this function's contract).
        let (d, index) = unsafe { check_many(engine, items, None)? };
        out.write(d.into());
        index_out.write(index);
    })
}

/// `rk_check_many` at the explicit time `now_ns` (nanoseconds of
/// `CLOCK_MONOTONIC`, see `rk_now_ns`).
///
/// # Safety
/// As for `rk_check_many`.
#[no_mangle]
pub unsafe extern "C" fn rk_check_many_at(
    engine: *mut rk_engine,
    items: *const rk_check_item,
    n: usize,
    now_ns: u64,
    out: *mut rk_decision,
    index_out: *mut usize,
) -> rk_status {
    ffi_panic_boundary!("rk_check_many_at", {
        let engine = try_ref_from_ptr!(engine);
        let out = try_out!(out);
        let index_out = try_opt_out!(index_out);
        let items = try_slice!(items, n);
        // SAFETY: every item's key is NULL or valid (this function's contract).
        let (d, index) = unsafe { check_many(engine, items, Some(now_ns))? };
        out.write(d.into());
        index_out.write(index);
    })
}

/// What `rk_check` would decide now, without charging anything or changing
/// any state. Same arguments, ownership, threading and errors as
/// `rk_check`, except that a concurrency policy is accepted (the decision
/// tells whether a permit is free).
///
/// # Safety
/// As for `rk_check`.
#[no_mangle]
pub unsafe extern "C" fn rk_peek(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    cost: u32,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_peek", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let out = try_out!(out);
        out.write(engine.peek(PolicyId(policy), key, cost)?.into());
    })
}

/// `rk_peek` at the explicit time `now_ns`.
///
/// # Safety
/// As for `rk_check`.
#[no_mangle]
pub unsafe extern "C" fn rk_peek_at(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    cost: u32,
    now_ns: u64,
    out: *mut rk_decision,
) -> rk_status {
    ffi_panic_boundary!("rk_peek_at", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let out = try_out!(out);
        out.write(engine.peek_at(PolicyId(policy), key, cost, now_ns)?.into());
    })
}

/// Gives back `cost` charged earlier to `key` under `policy` (e.g. charge
/// every login attempt, then refund the successful ones). A refund never
/// takes a limit beyond its full quota. If `refunded_out` is not NULL, it
/// receives whether the key held any state to refund.
///
/// Key rules, threading and errors as for `rk_check` (a concurrency policy
/// is `RK_ERR_WRONG_POLICY_KIND`: release its permits instead).
///
/// # Safety
/// As for `rk_check`; `refunded_out` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn rk_refund(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    cost: u32,
    refunded_out: *mut bool,
) -> rk_status {
    ffi_panic_boundary!("rk_refund", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let refunded_out = try_opt_out!(refunded_out);
        refunded_out.write(engine.refund(PolicyId(policy), key, cost)?);
    })
}

/// `rk_refund` at the explicit time `now_ns`.
///
/// # Safety
/// As for `rk_refund`.
#[no_mangle]
pub unsafe extern "C" fn rk_refund_at(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    cost: u32,
    now_ns: u64,
    refunded_out: *mut bool,
) -> rk_status {
    ffi_panic_boundary!("rk_refund_at", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let refunded_out = try_opt_out!(refunded_out);
        refunded_out.write(engine.refund_at(PolicyId(policy), key, cost, now_ns)?);
    })
}

/// Forgets everything about `key` under `policy`: its quota is full again
/// (for a concurrency policy, its permits are dropped). Resetting a key
/// that holds no state is not an error.
///
/// Key rules, threading and errors as for `rk_check` (any kind of policy).
///
/// # Safety
/// `engine` is NULL or a live engine; `key` is NULL or points to `key_len`
/// readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rk_reset(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
) -> rk_status {
    ffi_panic_boundary!("rk_reset", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        engine.reset(PolicyId(policy), key)?;
    })
}

/// `rk_reset` that also says whether the key held any state (was below its
/// full quota, banned, or holding permits) before the reset:
/// `*had_state_out` (may be NULL) is written on success.
///
/// Key rules, threading and errors as for `rk_check` (any kind of policy).
///
/// # Safety
/// As for `rk_reset`; `had_state_out` is NULL or valid for writing a `bool`.
#[no_mangle]
pub unsafe extern "C" fn rk_reset_key(
    engine: *mut rk_engine,
    policy: u32,
    key: *const u8,
    key_len: usize,
    had_state_out: *mut bool,
) -> rk_status {
    ffi_panic_boundary!("rk_reset_key", {
        let engine = try_ref_from_ptr!(engine);
        let key = try_key!(key, key_len);
        let had_state_out = try_opt_out!(had_state_out);
        had_state_out.write(engine.reset(PolicyId(policy), key)?);
    })
}
