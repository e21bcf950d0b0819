//! The rig's one pseudo-random generator: xorshift64 (shifts 13, 7, 17). It fills seeded
//! byte patterns in cases ([`fill`]) and drives deterministic choices in the mutator and the
//! campaign; every use must stay bit-identical, since case files and corpus names depend on it.

/// One xorshift64 step: the next state after `x` (a zero state stays zero).
pub fn xorshift64(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A byte pattern generated from a seed: 0 gives zeros, anything else pseudo-random bytes.
pub fn fill(seed: u32, out: &mut [u8]) {
    if seed == 0 {
        out.fill(0);
        return;
    }
    let mut x = (seed as u64) ^ 0x9e37_79b9_7f4a_7c15;
    for chunk in out.chunks_mut(8) {
        x = xorshift64(x);
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}
