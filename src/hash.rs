//! Keyed SipHash-1-3 (the hash std's `HashMap` uses), implemented here so
//! that every build of ratekeeper — the Rust crate, the C library, the Python
//! extension, the CLI — computes the same hash for the same seed: processes
//! sharing a table must agree on where each key lives.

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

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-1-3 of `data` under `seed`.
#[inline]
pub(crate) fn siphash13(seed: Seed, data: &[u8]) -> u64 {
    let mut v = [
        seed.k0 ^ 0x736f_6d65_7073_6575,
        seed.k1 ^ 0x646f_7261_6e64_6f6d,
        seed.k0 ^ 0x6c79_6765_6e65_7261,
        seed.k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let m = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        v[3] ^= m;
        sip_round(&mut v);
        v[0] ^= m;
    }
    let rest = chunks.remainder();
    let mut last = (data.len() as u64) << 56;
    for (i, &b) in rest.iter().enumerate() {
        last |= (b as u64) << (8 * i);
    }
    v[3] ^= last;
    sip_round(&mut v);
    v[0] ^= last;
    v[2] ^= 0xff;
    sip_round(&mut v);
    sip_round(&mut v);
    sip_round(&mut v);
    v[0] ^ v[1] ^ v[2] ^ v[3]
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
