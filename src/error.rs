//! The crate's one error type. A denial is a [`crate::Decision`], never an error.

use std::fmt;

/// A policy spec that did not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the spec where the problem starts.
    pub position: usize,
    /// What the parser expected at `position` (e.g. "a time unit (second, minute, ...)").
    pub expected: String,
    /// What it found instead (a short excerpt, or "end of input").
    pub found: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at byte {}: expected {}, found {}",
            self.position, self.expected, self.found
        )
    }
}

impl std::error::Error for ParseError {}

/// Everything that can go wrong in ratekeeper.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A policy spec did not parse.
    Parse(ParseError),
    /// A spec parsed but is outside what the engine supports (e.g. a count
    /// too large for an algorithm's packed state). The message says which bound.
    Unsupported(String),
    /// An option or argument is invalid (zero capacity, empty name, ...).
    InvalidArgument(String),
    /// A policy with this name already exists with different limits.
    PolicyMismatch {
        /// The policy's name.
        name: String,
        /// The spec it already has.
        existing: String,
        /// The spec that was asked for.
        requested: String,
    },
    /// The policy id does not belong to this engine.
    UnknownPolicy(u32),
    /// The engine holds as many policies as it can.
    TooManyPolicies(usize),
    /// The operation needs a concurrency limit (acquire/release) or a rate
    /// limit (check), and the policy has the other kind.
    WrongPolicyKind(String),
    /// A permit that this engine did not issue, or already released.
    InvalidPermit,
    /// `acquire` with a timeout ran out of time before a permit was free.
    Timeout,
    /// Not enough memory for the policy's table.
    OutOfMemory(String),
    /// An operating-system call failed.
    Io(String),
    /// A shared-memory file is not a valid ratekeeper file.
    Corrupt(String),
    /// A shared-memory file this process must not trust: not a regular file
    /// (a FIFO, a directory, ...), a symbolic link, owned by another user,
    /// or with permission bits beyond the configured `shared_file_mode`.
    /// Nothing in it was read or changed.
    UnsafeFile(String),
    /// This CPU lacks an instruction the lock-free table needs.
    UnsupportedPlatform(String),
    /// The Redis backend could not be used: unreachable for an operation
    /// that needs it, a refused password, or a server that is not Redis.
    Backend(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Parse(e) => write!(f, "invalid policy spec: {e}"),
            Error::Unsupported(m) => write!(f, "unsupported policy: {m}"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::PolicyMismatch {
                name,
                existing,
                requested,
            } => write!(
                f,
                "policy {name:?} already exists as {existing:?}; refusing to redefine it as {requested:?}"
            ),
            Error::UnknownPolicy(id) => write!(f, "unknown policy id {id}"),
            Error::TooManyPolicies(n) => write!(f, "the engine already holds its maximum of {n} policies"),
            Error::WrongPolicyKind(m) => write!(f, "wrong kind of policy: {m}"),
            Error::InvalidPermit => write!(f, "permit was not issued by this engine or was already released"),
            Error::Timeout => write!(f, "timed out waiting for a permit"),
            Error::OutOfMemory(m) => write!(f, "out of memory: {m}"),
            Error::Io(m) => write!(f, "I/O error: {m}"),
            Error::Corrupt(m) => write!(f, "corrupt shared-memory file: {m}"),
            Error::UnsafeFile(m) => write!(f, "unsafe shared-memory file: {m}"),
            Error::UnsupportedPlatform(m) => write!(f, "unsupported platform: {m}"),
            Error::Backend(m) => write!(f, "backend error: {m}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        Error::Parse(e)
    }
}
