//! Keyed SipHash-1-3 (the hash std's `HashMap` uses), from the `siphasher`
//! crate pinned to one version, so that every build of ratekeeper — the
//! Rust crate, the C library, the Python extension, the CLI, on any target —
//! computes the same hash for the same seed: processes sharing a table must
//! agree on where each key lives.
//!
//! Why SipHash-1-3: keys come from clients, and a limiter's table is
//! exactly what an attacker floods. With a secret per-table seed, SipHash is
//! a pseudo-random function, so nobody who cannot read the seed can aim
//! keys at one bucket (a seeded non-cryptographic hash such as xxHash or
//! wyhash has seed-independent collisions). SipHash-1-3 rather than the
//! reference 2-4 is std's trade: one compression round instead of two
//! keeps a short key's hash at about 70 instructions. The alternatives
//! weighed are in the README ("Design notes").

/// A 128-bit SipHash key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seed {
    pub k0: u64,
    pub k1: u64,
}

impl Seed {
    /// A seed from the operating system's random source.
    pub fn random() -> Seed {
        let mut buf = [0u8; 16];
        crate::clock::fill_random(&mut buf);
        Seed {
            k0: u64::from_le_bytes(buf[..8].try_into().expect("8 bytes")),
            k1: u64::from_le_bytes(buf[8..].try_into().expect("8 bytes")),
        }
    }

    /// The seed of one policy's table: the engine seed mixed with the
    /// policy's index, so that two policies' tables collide differently.
    pub fn for_policy(self, index: u32) -> Seed {
        Seed {
            k0: self.k0 ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            k1: self.k1.rotate_left(17) ^ index as u64,
        }
    }
}

/// SipHash-1-3 of `data` under `seed`, from the `siphasher` crate (pinned
/// in Cargo.toml: processes built separately share a table file, so the
/// output must never change; `tests` checks it against published vectors).
#[inline]
pub(crate) fn siphash13(seed: Seed, data: &[u8]) -> u64 {
    siphasher::sip::SipHasher13::new_with_keys(seed.k0, seed.k1).hash(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::{DefaultHasher, Hasher};

    /// std's `DefaultHasher::new()` is SipHash-1-3 with a zero key (its
    /// algorithm is unspecified but has been this since Rust 1.13).
    #[test]
    fn matches_std_siphash13_with_a_zero_key_for_every_length_up_to_64_bytes() {
        let data: Vec<u8> = (0u8..64).collect();
        for len in 0..=64 {
            let mut h = DefaultHasher::new();
            h.write(&data[..len]);
            assert_eq!(
                siphash13(Seed { k0: 0, k1: 0 }, &data[..len]),
                h.finish(),
                "len {len}"
            );
        }
    }

    /// Published SipHash-1-3 vectors (the reference implementation,
    /// github.com/veorq/SipHash, built with 1 compression and 3
    /// finalization rounds): key 00 01 .. 0f, input 00 01 .. (len - 1).
    /// Lengths 0..16 cover every tail length with and without a full block.
    #[test]
    fn matches_the_published_siphash13_vectors() {
        const VECTORS: [u64; 16] = [
            0xabac0158050fc4dc,
            0xc9f49bf37d57ca93,
            0x82cb9b024dc7d44d,
            0x8bf80ab8e7ddf7fb,
            0xcf75576088d38328,
            0xdef9d52f49533b67,
            0xc50d2b50c59f22a7,
            0xd3927d989bb11140,
            0x369095118d299a8e,
            0x25a48eb36c063de4,
            0x79de85ee92ff097f,
            0x70c118c1f94dc352,
            0x78a384b157b4d9a2,
            0x306f760c1229ffa7,
            0x605aa111c0f95d34,
            0xd320d86d2a519956,
        ];
        let key: Vec<u8> = (0u8..16).collect();
        let seed = Seed {
            k0: u64::from_le_bytes(key[..8].try_into().unwrap()),
            k1: u64::from_le_bytes(key[8..].try_into().unwrap()),
        };
        let data: Vec<u8> = (0u8..16).collect();
        for (len, &want) in VECTORS.iter().enumerate() {
            assert_eq!(siphash13(seed, &data[..len]), want, "len {len}");
        }
        // And with a zero key, the empty input (the value other
        // implementations' tests quote).
        assert_eq!(siphash13(Seed { k0: 0, k1: 0 }, b""), 0xd1fba762150c532c);
    }

    #[test]
    fn different_seeds_give_different_hashes() {
        let a = Seed { k0: 1, k1: 2 };
        let b = Seed { k0: 1, k1: 3 };
        assert_ne!(
            siphash13(a, b"ip:203.0.113.7"),
            siphash13(b, b"ip:203.0.113.7")
        );
    }
}
