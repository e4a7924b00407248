//! The words of the packed table: a slot and an intent, each one
//! [`Atomic128`](crate::sync::Atomic128) unit. The only code that shifts or
//! masks them.

/// Bits of a slot's generation (see [`Slot::gen`]).
pub(super) const GEN_BITS: u32 = 24;
pub(super) const GEN_MASK: u32 = (1 << GEN_BITS) - 1;

/// Bits of a key's fingerprint.
pub(super) const FP_BITS: u32 = 39;
pub(super) const FP_MASK: u64 = (1 << FP_BITS) - 1;

/// Bits of a slot's state (a GCRA TAT: below 2^63, see the module docs).
pub(super) const STATE_MASK: u64 = (1 << 63) - 1;

/// The generation after `g` (wrapping within [`GEN_BITS`]).
#[inline(always)]
pub(super) fn next_gen(g: u32) -> u32 {
    g.wrapping_add(1) & GEN_MASK
}

/// How far generation `g` is past `base` (wrapping within [`GEN_BITS`]).
#[inline(always)]
pub(super) fn gens_since(g: u32, base: u32) -> u32 {
    g.wrapping_sub(base) & GEN_MASK
}

/// One slot.
///
/// | bits     | field  | meaning                                              |
/// |----------|--------|------------------------------------------------------|
/// | 0        | frozen | the word is a step of a pending move: no charge lands |
/// | 1..25    | gen    | bumped by every write of a transaction, kept by charges |
/// | 25..64   | fp     | the key's fingerprint; 0 = empty                     |
/// | 64..127  | state  | the key's state (GCRA: its TAT; 0 = fresh)           |
/// | 127      | ovr    | the key has a quota override (in the overrides table) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Slot {
    pub fp: u64,
    pub gen: u32,
    pub frozen: bool,
    pub state: u64,
    pub ovr: bool,
}

impl Slot {
    #[inline(always)]
    pub fn from_bits(v: u128) -> Slot {
        let lo = v as u64;
        let hi = (v >> 64) as u64;
        Slot {
            frozen: lo & 1 != 0,
            gen: ((lo >> 1) as u32) & GEN_MASK,
            fp: lo >> (1 + GEN_BITS),
            state: hi & STATE_MASK,
            ovr: hi >> 63 != 0,
        }
    }

    #[inline(always)]
    pub fn to_bits(self) -> u128 {
        debug_assert!(self.fp <= FP_MASK && self.gen <= GEN_MASK && self.state <= STATE_MASK);
        let lo = (self.fp << (1 + GEN_BITS)) | ((self.gen as u64) << 1) | self.frozen as u64;
        let hi = (self.state & STATE_MASK) | ((self.ovr as u64) << 63);
        ((hi as u128) << 64) | lo as u128
    }

    /// An empty slot at generation `gen`.
    #[inline(always)]
    pub fn empty(gen: u32) -> Slot {
        Slot {
            fp: 0,
            gen,
            frozen: false,
            state: 0,
            ovr: false,
        }
    }

    /// No key (a frozen word with no key, which no valid writer makes,
    /// counts as empty too).
    #[inline(always)]
    pub fn is_empty(self) -> bool {
        self.fp == 0
    }

    /// A key that checks may charge.
    #[inline(always)]
    pub fn is_live(self) -> bool {
        self.fp != 0 && !self.frozen
    }

    /// This word as the next generation, with `frozen` set as given.
    #[inline(always)]
    pub fn bumped(self, frozen: bool) -> Slot {
        Slot {
            gen: next_gen(self.gen),
            frozen,
            ..self
        }
    }
}

/// What a transaction does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    /// No transaction yet (a fresh group).
    None = 0,
    /// Puts a key (fresh state) in the target slot, at its generation:
    /// over an empty word, an expired one, or (`evict`) a live one.
    Claim = 1,
    /// Moves the key at the source slot into the empty target slot.
    Move = 2,
    /// Empties the target slot.
    Reset = 3,
    /// Unfreezes the target slot (a frozen word no pending move explains:
    /// only a corrupt file has one).
    Thaw = 4,
}

impl Op {
    fn from_bits(v: u8) -> Op {
        match v {
            1 => Op::Claim,
            2 => Op::Move,
            3 => Op::Reset,
            4 => Op::Thaw,
            // 0, and the values no writer uses (a corrupt file): nothing to do.
            _ => Op::None,
        }
    }
}

/// One transaction of a group of four buckets (see the module docs).
///
/// | bits     | field     | meaning                                              |
/// |----------|-----------|------------------------------------------------------|
/// | 0..30    | seq       | the transaction's sequence number in its group (wraps at 2^30) |
/// | 30..33   | op        | [`Op`]                                                |
/// | 33       | pending   | not every step is done yet                            |
/// | 34..36   | member    | the key's designated bucket within the group          |
/// | 36       | tgt_other | the target slot is in the key's other bucket          |
/// | 37..39   | tgt_slot  | the target slot within its bucket                     |
/// | 39..63   | tgt_gen   | the target slot's generation the transaction acts on |
/// | 63..102  | fp        | the key's fingerprint (its other bucket follows)      |
/// | 102      | ovr       | Claim: the key has a quota override                   |
/// | 103      | evict     | Claim: the claimer chose the target's live key as its victim |
/// | 102..104 | src_slot  | Move: the source slot, in the target's partner bucket |
/// | 104..128 | src_gen   | Move: the source slot's generation                    |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Intent {
    pub seq: u32,
    pub op: Op,
    pub pending: bool,
    pub member: u8,
    pub tgt_other: bool,
    pub tgt_slot: u8,
    pub tgt_gen: u32,
    pub fp: u64,
    pub ovr: bool,
    pub evict: bool,
    pub src_slot: u8,
    pub src_gen: u32,
}

/// Bits of an intent's seq.
pub(super) const SEQ_MASK: u32 = (1 << 30) - 1;

/// The pending bit of an intent word.
const PENDING: u128 = 1 << 33;

impl Intent {
    /// A group's state before its first transaction.
    pub const FRESH: Intent = Intent {
        seq: 0,
        op: Op::None,
        pending: false,
        member: 0,
        tgt_other: false,
        tgt_slot: 0,
        tgt_gen: 0,
        fp: 0,
        ovr: false,
        evict: false,
        src_slot: 0,
        src_gen: 0,
    };

    #[inline(always)]
    pub fn from_bits(v: u128) -> Intent {
        let op = Op::from_bits(((v >> 30) & 7) as u8);
        let moves = op == Op::Move;
        Intent {
            seq: v as u32 & SEQ_MASK,
            op,
            pending: v & PENDING != 0,
            member: ((v >> 34) & 3) as u8,
            tgt_other: (v >> 36) & 1 != 0,
            tgt_slot: ((v >> 37) & 3) as u8,
            tgt_gen: ((v >> 39) as u32) & GEN_MASK,
            fp: ((v >> 63) as u64) & FP_MASK,
            ovr: op == Op::Claim && (v >> 102) & 1 != 0,
            evict: op == Op::Claim && (v >> 103) & 1 != 0,
            src_slot: if moves { ((v >> 102) & 3) as u8 } else { 0 },
            src_gen: if moves {
                ((v >> 104) as u32) & GEN_MASK
            } else {
                0
            },
        }
    }

    #[inline(always)]
    pub fn to_bits(self) -> u128 {
        let mut v = (self.seq & SEQ_MASK) as u128
            | (self.op as u128) << 30
            | if self.pending { PENDING } else { 0 }
            | ((self.member & 3) as u128) << 34
            | (self.tgt_other as u128) << 36
            | ((self.tgt_slot & 3) as u128) << 37
            | ((self.tgt_gen & GEN_MASK) as u128) << 39
            | ((self.fp & FP_MASK) as u128) << 63;
        match self.op {
            Op::Claim => v |= (self.ovr as u128) << 102 | (self.evict as u128) << 103,
            Op::Move => {
                v |= ((self.src_slot & 3) as u128) << 102
                    | ((self.src_gen & GEN_MASK) as u128) << 104
            }
            _ => {}
        }
        v
    }

    /// The intent word `bits`, marked done (every other bit as it is).
    pub fn done_bits(bits: u128) -> u128 {
        bits & !PENDING
    }

    /// This transaction, marked done.
    #[cfg(all(test, not(loom)))]
    pub fn done(self) -> Intent {
        Intent {
            pending: false,
            ..self
        }
    }
}
