//! # ratekeeper
//!
//! An embedded rate-limit engine: GCRA, fixed window, sliding window,
//! sliding log and concurrency limits over a lock-free, allocation-free
//! table of 16-byte atomic words, with a C ABI.
//!
//! ```
//! use ratekeeper::{Engine, EngineOptions};
//! let engine = Engine::new(EngineOptions::default())?;
//! let api = engine.add_policy("api", "10/second;1000/hour")?;
//! let d = engine.check(api, b"key:alice", 1);
//! assert!(d.allowed);
//! # Ok::<(), ratekeeper::Error>(())
//! ```
//!
//! See the README for the policy grammar, the exact semantics of every
//! algorithm and the concurrency protocol of the table.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub(crate) mod abuse;
pub(crate) mod algo;
pub mod clock;
mod engine;
mod error;
pub(crate) mod events;
pub mod ffi;
pub(crate) mod hash;
mod options;
mod os;
pub mod policy;
#[cfg(feature = "redis")]
pub(crate) mod redis;
mod rseq;
pub(crate) mod shm;
mod stats;
pub(crate) mod store;
pub(crate) mod sync;
pub(crate) mod table;
mod wait;

/// The crate's version (what `rk_version()` returns).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub use abuse::Penalty;
pub use algo::{Algorithm, Limit};
pub use algo::{MAX_COST, MAX_LEASES, MAX_LOG_ENTRIES, MAX_TIME_NS};
pub use clock::{Clock, ManualClock};
pub use engine::{CheckItem, Decision, Engine, Permit, PolicyId, MAX_OVERRIDES};
pub use error::{Error, ParseError};
pub use events::{DenyEvent, EVENT_KEY_BYTES, RING_ENTRIES};
pub use options::{EngineOptions, PolicyOptions, DEFAULT_CAPACITY, MAX_POLICIES};
pub use os::DEFAULT_SHARED_DIR;
pub use policy::PolicySpec;
#[cfg(feature = "redis")]
pub use redis::{OnFailure, RedisOptions, RedisStats, REDIS_EPOCH_UNIX_S};
pub use shm::{MAX_NAME_BYTES, MAX_SHARED_POLICIES, MAX_SPEC_BYTES};
pub use stats::Stats;
pub use table::WhenFull;

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for the loom models and benches; not a stable API.
    /// A policy's arguments to the Redis script (tests/redis_script.rs).
    #[cfg(feature = "redis")]
    pub use crate::redis::script_args;
    pub use crate::sync::Atomic128;

    /// [`Engine::open_shared`](crate::Engine::open_shared), with the kernel's
    /// boot id read from `boot_id_file` instead of
    /// `/proc/sys/kernel/random/boot_id` (tests/hostile_file.rs simulates
    /// reboots, unreadable boot ids and interrupted resets with it).
    pub fn open_shared_with_boot_id(
        path: impl AsRef<std::path::Path>,
        options: crate::EngineOptions,
        boot_id_file: impl AsRef<std::path::Path>,
    ) -> Result<crate::Engine, crate::Error> {
        crate::Engine::open_shared_booted(path.as_ref(), options, boot_id_file.as_ref())
    }

    /// Byte offsets of the shared file's layout, from the structs that
    /// define it, for tests and fuzz targets that corrupt chosen words.
    pub mod layout {
        use crate::shm::{DirEntry, Header, StoredOptions};
        use std::mem::{offset_of, size_of};
        /// Header fields.
        pub const BOOT_ID: usize = offset_of!(Header, boot_id);
        pub const SEED: usize = offset_of!(Header, seed_k0);
        /// The directory: the header's fields end where it starts.
        pub const DIR: usize = offset_of!(Header, policies);
        pub const ENTRY_BYTES: usize = size_of::<DirEntry>();
        /// Fields of a directory entry.
        pub const ENTRY_BUCKETS: usize = offset_of!(DirEntry, buckets);
        /// A policy's options: `when_full` (u32) and `flags` (u32), then
        /// `retry_jitter_ns` and the four penalty words.
        pub const ENTRY_OPTIONS: usize = offset_of!(DirEntry, options);
        pub const ENTRY_PENALTY: usize = ENTRY_OPTIONS + offset_of!(StoredOptions, penalty);
        pub const ENTRY_REGION_OFFSET: usize = offset_of!(DirEntry, region_offset);
        pub const ENTRY_REGION_BYTES: usize = offset_of!(DirEntry, region_bytes);
        /// Within a policy's region: the head (counters, wait words) at 0,
        /// then the deny-event ring, the override table and the table.
        pub const RING_IN_REGION: usize = crate::engine::RING_BASE * 16;
        pub const OVERRIDES_IN_REGION: usize = crate::engine::OVERRIDE_BASE * 16;
        pub const TABLE_IN_REGION: usize = crate::engine::TABLE_BASE * 16;
        /// The slots table (every policy but a lone GCRA limit): units of
        /// a bucket, and the unit of slot `j`'s key word in it, for slots of
        /// `words` state words.
        pub const fn bucket_units(words: usize) -> usize {
            crate::table::bucket_units(words)
        }
        pub const fn key_unit_in_bucket(words: usize, j: usize) -> usize {
            crate::table::key_unit_in_bucket(words, j)
        }
    }
}
