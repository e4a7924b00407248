//! The typed views of a table's 16-byte words: [`Word`] (a key or state
//! word), [`Intent`] (a bucket's transaction) and [`LeaseId`] (the `a` of a
//! lease word). Only these types shift or mask a word's bits; the rest of
//! the table packs and unpacks through them. The bit layouts are part of
//! the shared-file format (layout version 5): never change them.

use crate::algo::{self, Payload};

/// A key or state word.
///
/// | bits    | field   | meaning                                            |
/// |---------|---------|----------------------------------------------------|
/// | 0..32   | tag     | sequence number of the transaction that wrote it   |
/// | 32..64  | `a`     | payload (algorithm-defined; for a key word, the key's quota override in thousandths, 0 = none) |
/// | 64..128 | `b`     | payload (algorithm-defined; for a key word, the key's 64-bit hash, 0 = empty) |
///
/// Every 128-bit value is a word, so [`from_bits`](Self::from_bits) and
/// [`to_bits`](Self::to_bits) are inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Word {
    pub tag: u32,
    pub payload: Payload,
}

impl Word {
    pub const TAG_SHIFT: u32 = 0;
    pub const TAG_MASK: u128 = u32::MAX as u128;
    pub const A_SHIFT: u32 = 32;
    pub const A_MASK: u128 = u32::MAX as u128;
    pub const B_SHIFT: u32 = 64;
    pub const B_MASK: u128 = u64::MAX as u128;

    #[inline(always)]
    pub const fn new(tag: u32, payload: Payload) -> Word {
        Word { tag, payload }
    }

    /// A key word: key hash `hash` (0: the slot is empty) with quota
    /// override `factor` in thousandths (0: none).
    #[inline(always)]
    pub const fn key(tag: u32, hash: u64, factor: u32) -> Word {
        Word::new(tag, Payload { a: factor, b: hash })
    }

    #[inline(always)]
    pub const fn from_bits(w: u128) -> Word {
        Word {
            tag: ((w >> Self::TAG_SHIFT) & Self::TAG_MASK) as u32,
            payload: Payload {
                a: ((w >> Self::A_SHIFT) & Self::A_MASK) as u32,
                b: ((w >> Self::B_SHIFT) & Self::B_MASK) as u64,
            },
        }
    }

    #[inline(always)]
    pub const fn to_bits(self) -> u128 {
        (self.tag as u128) << Self::TAG_SHIFT
            | (self.payload.a as u128) << Self::A_SHIFT
            | (self.payload.b as u128) << Self::B_SHIFT
    }

    /// For a key word: the key's hash (0: the slot is empty).
    #[inline(always)]
    pub const fn hash(self) -> u64 {
        self.payload.b
    }

    /// For a key word: the key's quota override in thousandths (0: none).
    #[inline(always)]
    pub const fn factor(self) -> u32 {
        self.payload.a
    }
}

/// What a transaction does (an [`Intent`]'s 3-bit `op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    /// Rewrites every word of the bucket with the transaction's tag,
    /// payloads unchanged; committed instead of the transaction whose seq
    /// is a multiple of `RETAG_EVERY` (see `txn.rs`).
    Retag = 0,
    /// Charges `cost` at `arg` (= now) to the slot's limits.
    Charge = 1,
    /// Refunds `cost` at `arg` (= now) to the slot's limits.
    Refund = 2,
    /// Gives the slot to key hash `arg`, with override factor `cost`, and
    /// zeroes its state.
    Claim = 3,
    /// Frees the slot: the key word and the state go back to zero.
    Reset = 4,
    /// Counts a penalty-box strike at `arg` (= now); may start a ban.
    Strike = 5,
    /// Sets the override factor (`cost`) in the slot's key word.
    Factor = 6,
    /// Changes nothing in this bucket; makes concurrent proposals from
    /// older snapshots fail. With `arg` != 0 it is a claim of key hash `arg`
    /// in its second bucket (slot `slot`, chosen at that bucket's seq
    /// `cost`, low 24 bits): see "Two buckets per key" in `table`.
    Touch = 7,
    /// Moves key hash `arg`, which this bucket (its first) holds, to slot
    /// `slot` of its second bucket, chosen at that bucket's seq `cost` (low
    /// 24 bits), with all its state: see "Moving a key" in `table`.
    Move = 8,
    /// In a key's second bucket: gives slot `slot` to key hash `arg` with
    /// the key word and state of slot `cost` of its first bucket, which a
    /// pending MOVE there holds still.
    MoveIn = 9,
    /// A CLAIM whose claimer chose the slot's live key as its victim: it
    /// overwrites that key whatever it holds. (A plain CLAIM of a
    /// single-word policy's slot lands only if the slot's key is still
    /// expired when it runs: see `Table::take_expired`.)
    Evict = 10,
    /// A TOUCH claiming key hash `arg` in its second bucket by an EVICT.
    TouchEvict = 11,
    /// Ops 12..16 are never written; an intent holding one (a corrupt
    /// file) is completed as a no-op. They exist so that every 4-bit op
    /// field decodes to an op and encodes back to the same bits.
    Reserved12 = 12,
    Reserved13 = 13,
    Reserved14 = 14,
    Reserved15 = 15,
}

impl Op {
    /// The op of a 4-bit field (every value is one).
    #[inline(always)]
    const fn from_bits(v: u8) -> Op {
        match v & 15 {
            0 => Op::Retag,
            1 => Op::Charge,
            2 => Op::Refund,
            3 => Op::Claim,
            4 => Op::Reset,
            5 => Op::Strike,
            6 => Op::Factor,
            7 => Op::Touch,
            8 => Op::Move,
            9 => Op::MoveIn,
            10 => Op::Evict,
            11 => Op::TouchEvict,
            12 => Op::Reserved12,
            13 => Op::Reserved13,
            14 => Op::Reserved14,
            _ => Op::Reserved15,
        }
    }
}

/// An intent word: one transaction of a bucket (the protocol is in the
/// module docs of `table` and in `txn.rs`).
///
/// | bits    | field   | meaning                                             |
/// |---------|---------|-----------------------------------------------------|
/// | 0..32   | seq     | the transaction's sequence number                   |
/// | 32..56  | cost    | cost of a charge or refund; the override factor of a claim or factor op; a seq for touch and move; a slot for move-in |
/// | 56..60  | op      | [`Op`]: retag, charge, refund, claim, reset, strike, factor, touch, move, move-in, evict, touch-evict (12..16 reserved) |
/// | 60      | pending | set until every word of the transaction is written  |
/// | 61..64  | slot    | the slot the transaction changes                    |
/// | 64..128 | arg     | `now` for charge/refund/strike, the key hash for a claim, touch or move |
///
/// Every 128-bit value is an intent (a reserved op, or a `slot` the bucket
/// lacks, can only come from a corrupt file, and is completed as a no-op), so
/// [`from_bits`](Self::from_bits) and [`to_bits`](Self::to_bits) are inverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Intent {
    pub seq: u32,
    /// At most [`algo::MAX_COST`] (24 bits).
    pub cost: u64,
    pub op: Op,
    pub pending: bool,
    /// 0..8 (3 bits).
    pub slot: usize,
    pub arg: u64,
}

impl Intent {
    pub const SEQ_SHIFT: u32 = 0;
    pub const SEQ_MASK: u128 = u32::MAX as u128;
    pub const COST_SHIFT: u32 = 32;
    pub const COST_MASK: u128 = 0xff_ffff;
    pub const OP_SHIFT: u32 = 56;
    pub const OP_MASK: u128 = 0xf;
    pub const PENDING_SHIFT: u32 = 60;
    pub const PENDING_MASK: u128 = 1;
    pub const SLOT_SHIFT: u32 = 61;
    pub const SLOT_MASK: u128 = 0b111;
    pub const ARG_SHIFT: u32 = 64;
    pub const ARG_MASK: u128 = u64::MAX as u128;

    /// A pending transaction, as it is proposed.
    #[inline(always)]
    pub fn pending(seq: u32, op: Op, slot: usize, cost: u64, arg: u64) -> Intent {
        debug_assert!(cost <= algo::MAX_COST && slot as u128 <= Self::SLOT_MASK);
        Intent {
            seq,
            cost,
            op,
            pending: true,
            slot,
            arg,
        }
    }

    /// The same transaction, completed.
    #[inline(always)]
    pub fn done(self) -> Intent {
        Intent {
            pending: false,
            ..self
        }
    }

    /// Which of the bucket's two intent words holds this transaction.
    #[inline(always)]
    pub fn index(self) -> usize {
        (self.seq & 1) as usize
    }

    #[inline(always)]
    pub const fn from_bits(e: u128) -> Intent {
        Intent {
            seq: ((e >> Self::SEQ_SHIFT) & Self::SEQ_MASK) as u32,
            cost: ((e >> Self::COST_SHIFT) & Self::COST_MASK) as u64,
            op: Op::from_bits(((e >> Self::OP_SHIFT) & Self::OP_MASK) as u8),
            pending: (e >> Self::PENDING_SHIFT) & Self::PENDING_MASK != 0,
            slot: ((e >> Self::SLOT_SHIFT) & Self::SLOT_MASK) as usize,
            arg: ((e >> Self::ARG_SHIFT) & Self::ARG_MASK) as u64,
        }
    }

    #[inline(always)]
    pub const fn to_bits(self) -> u128 {
        (self.seq as u128 & Self::SEQ_MASK) << Self::SEQ_SHIFT
            | (self.cost as u128 & Self::COST_MASK) << Self::COST_SHIFT
            | (self.op as u128 & Self::OP_MASK) << Self::OP_SHIFT
            | (self.pending as u128) << Self::PENDING_SHIFT
            | (self.slot as u128 & Self::SLOT_MASK) << Self::SLOT_SHIFT
            | (self.arg as u128 & Self::ARG_MASK) << Self::ARG_SHIFT
    }
}

/// The `a` of a lease word (whose `b` is the lease's expiry, 0 = free):
/// who holds the lease, and which lease of that position it is.
///
/// | bits   | field | meaning                                                  |
/// |--------|-------|----------------------------------------------------------|
/// | 0..22  | pid   | the holder's pid (Linux pids are below `PID_MAX_LIMIT` = 2^22) |
/// | 22..32 | nonce | counts the leases of this position under one bucket seq  |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeaseId {
    pub pid: u32,
    pub nonce: u32,
}

impl LeaseId {
    pub const PID_SHIFT: u32 = 0;
    pub const PID_BITS: u32 = 22;
    pub const PID_MASK: u32 = (1 << Self::PID_BITS) - 1;
    pub const NONCE_SHIFT: u32 = Self::PID_BITS;
    /// Nonces a lease word goes through before its bucket must take a new seq.
    pub const NONCES: u32 = 1 << (32 - Self::PID_BITS);
    pub const NONCE_MASK: u32 = Self::NONCES - 1;

    /// The lease of holder `pid` (its low [`PID_BITS`](Self::PID_BITS) bits)
    /// with `nonce` (modulo [`NONCES`](Self::NONCES)).
    #[inline(always)]
    pub const fn new(pid: u32, nonce: u32) -> LeaseId {
        LeaseId {
            pid: pid & Self::PID_MASK,
            nonce: nonce & Self::NONCE_MASK,
        }
    }

    #[inline(always)]
    pub const fn from_a(a: u32) -> LeaseId {
        LeaseId {
            pid: (a >> Self::PID_SHIFT) & Self::PID_MASK,
            nonce: (a >> Self::NONCE_SHIFT) & Self::NONCE_MASK,
        }
    }

    #[inline(always)]
    pub const fn to_a(self) -> u32 {
        (self.pid & Self::PID_MASK) << Self::PID_SHIFT
            | (self.nonce & Self::NONCE_MASK) << Self::NONCE_SHIFT
    }

    /// True if this lease is held by `pid` (compared on its low
    /// [`PID_BITS`](Self::PID_BITS) bits, as stored).
    #[inline(always)]
    pub const fn held_by(self, pid: u32) -> bool {
        self.pid == pid & Self::PID_MASK
    }
}
