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
    /// Puts a key (fresh state) in the target slot, at its generation.
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
/// | 0..32    | seq       | the transaction's sequence number in its group        |
/// | 32..35   | op        | [`Op`]                                                |
/// | 35       | pending   | not every step is done yet                            |
/// | 36..38   | member    | the key's designated bucket within the group          |
/// | 38       | tgt_other | the target slot is in the key's other bucket          |
/// | 39..41   | tgt_slot  | the target slot within its bucket                     |
/// | 41..43   | src_slot  | Move: the source slot, in the target's partner bucket |
/// | 43       | ovr       | Claim: the key has a quota override                   |
/// | 44..68   | tgt_gen   | the target slot's generation the transaction acts on |
/// | 68..107  | fp        | Claim: the key's fingerprint                          |
/// | 68..92   | src_gen   | Move: the source slot's generation                    |
/// | 92..124  | off       | Move, Reset, Thaw: the key's bucket offset (partner = bucket XOR off) |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Intent {
    pub seq: u32,
    pub op: Op,
    pub pending: bool,
    pub member: u8,
    pub tgt_other: bool,
    pub tgt_slot: u8,
    pub src_slot: u8,
    pub ovr: bool,
    pub tgt_gen: u32,
    pub fp: u64,
    pub src_gen: u32,
    pub off: u32,
}

impl Intent {
    /// A group's state before its first transaction.
    pub const FRESH: Intent = Intent {
        seq: 0,
        op: Op::None,
        pending: false,
        member: 0,
        tgt_other: false,
        tgt_slot: 0,
        src_slot: 0,
        ovr: false,
        tgt_gen: 0,
        fp: 0,
        src_gen: 0,
        off: 0,
    };

    #[inline(always)]
    pub fn from_bits(v: u128) -> Intent {
        let op = Op::from_bits(((v >> 32) & 7) as u8);
        let claim = op == Op::Claim;
        Intent {
            seq: v as u32,
            op,
            pending: (v >> 35) & 1 != 0,
            member: ((v >> 36) & 3) as u8,
            tgt_other: (v >> 38) & 1 != 0,
            tgt_slot: ((v >> 39) & 3) as u8,
            src_slot: ((v >> 41) & 3) as u8,
            ovr: (v >> 43) & 1 != 0,
            tgt_gen: ((v >> 44) as u32) & GEN_MASK,
            fp: if claim { ((v >> 68) as u64) & FP_MASK } else { 0 },
            src_gen: if claim { 0 } else { ((v >> 68) as u32) & GEN_MASK },
            off: if claim { 0 } else { (v >> 92) as u32 },
        }
    }

    #[inline(always)]
    pub fn to_bits(self) -> u128 {
        let mut v = self.seq as u128
            | (self.op as u128) << 32
            | (self.pending as u128) << 35
            | ((self.member & 3) as u128) << 36
            | (self.tgt_other as u128) << 38
            | ((self.tgt_slot & 3) as u128) << 39
            | ((self.src_slot & 3) as u128) << 41
            | (self.ovr as u128) << 43
            | ((self.tgt_gen & GEN_MASK) as u128) << 44;
        if self.op == Op::Claim {
            v |= ((self.fp & FP_MASK) as u128) << 68;
        } else {
            v |= ((self.src_gen & GEN_MASK) as u128) << 68 | (self.off as u128) << 92;
        }
        v
    }

    /// The intent word `bits`, marked done (every other bit as it is).
    pub fn done_bits(bits: u128) -> u128 {
        bits & !(1 << 35)
    }

    /// This transaction, marked done.
    #[cfg(test)]
    pub fn done(self) -> Intent {
        Intent {
            pending: false,
            ..self
        }
    }
}
