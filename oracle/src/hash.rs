//! The rig's one content hash: 64-bit FNV-1a, stable across builds and platforms. Finding
//! signatures, corpus file names, pack manifests and matrix digests all use it, so it must
//! never change.

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The content hash of `bytes` as 16 lower-case hex digits.
pub fn content_hash(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a(bytes))
}

/// The content name of a case file: `<content hash>.case`.
pub fn content_name(bytes: &[u8]) -> String {
    format!("{}.case", content_hash(bytes))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fnv1a_is_stable() {
        assert_eq!(super::fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(super::content_hash(b"a"), "af63dc4c8601ec8c");
        assert_eq!(super::content_name(b"a"), "af63dc4c8601ec8c.case");
    }
}
