//! This thread's state on the check path, in one thread-local: the spot
//! memo's entries and the counter shard this thread writes. A check reads
//! it once ([`here`]) and passes the reference down, because
//! `LocalKey::with` is not inlined on these paths and each call costs
//! 15–40 instructions (callgrind, `examples/instructions.rs`): a check
//! that reached two thread-locals paid that twice.
//!
//! Fixed-size plain data, never allocating: a `const`-initialised
//! `thread_local!` of `Cell`s, which has no drop glue and so registers no
//! destructor.

use super::memo::{self, Entry};
use std::cell::Cell;

/// This thread's state (see the module documentation).
pub(crate) struct Local {
    /// The spot memo's entries (`engine/memo.rs`).
    pub(crate) memo: [Entry; memo::WAYS],
    /// The counter shard this thread writes (`stats::pick_shard`);
    /// `usize::MAX` until its first count.
    shard: Cell<usize>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            memo: [Entry::EMPTY; memo::WAYS],
            shard: Cell::new(usize::MAX),
        }
    };
}

/// This thread's state.
#[inline(always)]
pub(crate) fn here() -> &'static Local {
    // SAFETY: a `const`-initialised thread-local of a type without drop
    // glue is never destroyed: its storage lives as long as the thread, and
    // the reference never leaves the thread (`Local` is `!Sync` through its
    // `Cell`s, so `&'static Local` is `!Send`).
    unsafe { &*LOCAL.with(|l| l as *const Local) }
}

impl Local {
    /// The counter shard this thread writes, picked on its first count.
    #[inline(always)]
    pub(crate) fn shard(&self) -> usize {
        let v = self.shard.get();
        if v != usize::MAX {
            return v;
        }
        self.first_shard()
    }

    #[cold]
    #[inline(never)]
    fn first_shard(&self) -> usize {
        static AT_FORK: std::sync::Once = std::sync::Once::new();
        AT_FORK.call_once(|| {
            // SAFETY: `forget_shard_in_child` is an `extern "C" fn()` that
            // only writes a thread-local `Cell` (async-signal-safe in
            // effect: no allocation, no lock); registering a handler has no
            // other precondition. A failure (ENOMEM) only leaves forked
            // children on their parent's shard, which costs contention,
            // not correctness.
            unsafe { libc::pthread_atfork(None, None, Some(forget_shard_in_child)) };
        });
        let v = crate::stats::pick_shard();
        self.shard.set(v);
        v
    }
}

/// The calling thread's counter shard.
#[inline(always)]
pub(super) fn shard() -> usize {
    here().shard()
}

/// Runs in a forked child, in its only thread (the one that called fork):
/// its next count picks a shard from the child's own pid instead of
/// writing the line its parent's thread writes.
extern "C" fn forget_shard_in_child() {
    // `try_with`: the thread-local may already be destroyed if fork is
    // called from a thread-local destructor; then there is nothing to reset.
    let _ = LOCAL.try_with(|l| l.shard.set(usize::MAX));
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// Forks a child that reports whether it forgot its shard; `None` if
    /// it had not exited after 60 s (then killed: `os::wait_exit`).
    fn fork_and_ask() -> Option<bool> {
        // SAFETY: the child runs only async-signal-safe code (a `Cell`
        // read through an already-initialised thread-local, `_exit`).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let forgot = here().shard.get() == usize::MAX;
            // SAFETY: `_exit` ends the child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(if forgot { 0 } else { 1 }) };
        }
        crate::os::wait_exit(pid, 60).map(|code| code == 0)
    }

    /// A forked child forgets the counter shard its parent's thread
    /// picked, so that the workers of a pre-fork server pick their own
    /// lines (it fails if the fork handler is not registered).
    #[test]
    fn a_forked_child_picks_its_own_counter_shard() {
        let parent = shard();
        assert_eq!(here().shard.get(), parent);
        let forgot = (0..3)
            .find_map(|_| fork_and_ask())
            .expect("a forked child stalled three times");
        assert!(forgot, "the child kept its parent's shard");
        assert_eq!(here().shard.get(), parent, "the parent keeps its shard");
    }
}
