//! The options an engine and its policies are opened with: plain data,
//! shared by the engine, its stores and the bindings.

use crate::abuse::Penalty;
use crate::clock::Clock;
use crate::shm::StoredOptions;
use crate::table::WhenFull;

/// Most policies one engine holds.
pub const MAX_POLICIES: usize = 256;

/// Default number of keys a policy tracks.
pub const DEFAULT_CAPACITY: usize = 65_536;

/// Options for [`Engine::new`](crate::Engine::new).
///
/// ```
/// let opts = ratekeeper::EngineOptions { capacity: 1024, ..Default::default() };
/// let engine = ratekeeper::Engine::new(opts)?;
/// # Ok::<(), ratekeeper::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Keys each policy tracks unless the policy asks for another number
    /// (default 65,536). Rounded up to a whole number of buckets.
    pub capacity: usize,
    /// The clock `check` reads (default `CLOCK_MONOTONIC_COARSE`; see [`Clock`]).
    pub clock: Clock,
    /// Shared engines: the largest size in bytes the mapping may grow to
    /// as policies are added (default 1 GiB; pages are only touched when used).
    pub shared_max_bytes: u64,
    /// Shared engines: permission bits of a newly created file (default
    /// 0o600), and the widest an existing file may have: one with more bits
    /// (or owned by another user) is refused with [`Error::UnsafeFile`](crate::Error::UnsafeFile).
    pub shared_file_mode: u32,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            capacity: DEFAULT_CAPACITY,
            clock: Clock::MonotonicCoarse,
            shared_max_bytes: 1 << 30,
            shared_file_mode: 0o600,
        }
    }
}

/// Per-policy options for [`Engine::add_policy_with`](crate::Engine::add_policy_with).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyOptions {
    /// Keys this policy tracks (default: the engine's `capacity`).
    pub capacity: Option<usize>,
    /// What happens when a new key finds its bucket full of live entries.
    pub when_full: WhenFull,
    /// Shadow mode: decisions are computed, counted and reported as if
    /// enforced, but every request passes (`Decision::shadow_denied` tells
    /// which would have been denied). For rolling out a new limit safely.
    pub shadow: bool,
    /// Adds a random extra of up to this many nanoseconds to the
    /// retry-after of a denial, so that synchronised clients spread out.
    /// Never makes retry-after shorter than the true wait.
    pub retry_jitter_ns: u64,
    /// Penalty box: ban a key that keeps getting denied (see [`Penalty`]).
    pub penalty: Option<Penalty>,
    /// Keep up to 80 bytes of the key in the deny-event ring (off by
    /// default: keys can be personal data; the key's hash is always kept).
    pub record_keys: bool,
}

/// The options of a policy that every process sharing it must agree on
/// (capacity and `when_full` are fixed by whoever created the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Behaviour {
    pub shadow: bool,
    pub retry_jitter_ns: u64,
    pub penalty: Option<Penalty>,
    pub record_keys: bool,
}

impl PolicyOptions {
    /// The options of a policy as they must match across processes.
    pub(crate) fn behaviour(&self) -> Behaviour {
        Behaviour {
            shadow: self.shadow,
            retry_jitter_ns: self.retry_jitter_ns,
            penalty: self.penalty,
            record_keys: self.record_keys,
        }
    }

    /// The spec `spec` with these options, for messages (and the
    /// definition a Redis engine registers).
    pub(crate) fn describe(&self, spec: &str) -> String {
        let mut s = spec.to_string();
        if self.shadow {
            s.push_str(" (shadow)");
        }
        if self.retry_jitter_ns > 0 {
            s.push_str(&format!(" (retry jitter {} ns)", self.retry_jitter_ns));
        }
        if let Some(p) = &self.penalty {
            s.push_str(&format!(
                " (ban {} ns after {} denials in {} ns, up to {} ns)",
                p.ban_ns, p.strikes, p.window_ns, p.max_ban_ns
            ));
        }
        s
    }
}

// A shared file's directory entry stores a policy's behaviour options as
// plain numbers (`shm::StoredOptions`, layout version 2); these two
// functions are the only code that knows what the numbers mean.

/// `options` as a directory entry stores them (the capacity is not stored:
/// the entry's bucket count records it).
pub(crate) fn options_to_stored(options: &PolicyOptions) -> StoredOptions {
    StoredOptions {
        when_full: match options.when_full {
            WhenFull::Evict => 0,
            WhenFull::FailOpen => 1,
            WhenFull::FailClosed => 2,
        },
        flags: options.shadow as u32 | (options.record_keys as u32) << 1,
        retry_jitter_ns: options.retry_jitter_ns,
        penalty: options.penalty.map_or([0; 4], |p| {
            [p.strikes as u64, p.window_ns, p.ban_ns, p.max_ban_ns]
        }),
    }
}

/// The options a directory entry stores (`capacity: None`), checked: the
/// file is hostile and may hold any numbers. `Err` says what is wrong, for
/// the entry's `Error::Corrupt` message.
pub(crate) fn options_from_stored(stored: &StoredOptions) -> Result<PolicyOptions, &'static str> {
    const BAD_TABLE: &str = "bad table parameters";
    const BAD_PENALTY: &str = "bad penalty settings";
    let when_full = match stored.when_full {
        0 => WhenFull::Evict,
        1 => WhenFull::FailOpen,
        2 => WhenFull::FailClosed,
        _ => return Err(BAD_TABLE),
    };
    if stored.flags > 3 {
        return Err(BAD_TABLE);
    }
    let [strikes, window_ns, ban_ns, max_ban_ns] = stored.penalty;
    let penalty = if strikes == 0 {
        None
    } else {
        let penalty = Penalty {
            strikes: u32::try_from(strikes).map_err(|_| BAD_PENALTY)?,
            window_ns,
            ban_ns,
            max_ban_ns,
        };
        penalty.validate().map_err(|_| BAD_PENALTY)?;
        Some(penalty)
    };
    Ok(PolicyOptions {
        capacity: None,
        when_full,
        shadow: stored.flags & 1 == 1,
        record_keys: stored.flags & 2 == 2,
        retry_jitter_ns: stored.retry_jitter_ns,
        penalty,
    })
}
