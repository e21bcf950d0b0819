//! Serde helpers: integers as `"0x…"` strings in human-readable formats (JSON), plain
//! integers in binary formats (postcard). Decimal numbers are accepted on input too.

use serde::{de::Error, Deserialize, Deserializer, Serializer};

fn parse(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    N(u64),
    S(String),
}

fn de_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    if d.is_human_readable() {
        match NumOrStr::deserialize(d)? {
            NumOrStr::N(n) => Ok(n),
            NumOrStr::S(s) => parse(&s).ok_or_else(|| D::Error::custom(format!("bad number {s:?}"))),
        }
    } else {
        u64::deserialize(d)
    }
}

/// `u64` as hex.
pub mod u64_hex {
    use super::*;
    /// Serialize.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format!("{v:#x}"))
        } else {
            s.serialize_u64(*v)
        }
    }
    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        de_u64(d)
    }
}

/// `u32` as hex.
pub mod u32_hex {
    use super::*;
    /// Serialize.
    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&format!("{v:#x}"))
        } else {
            s.serialize_u32(*v)
        }
    }
    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        if d.is_human_readable() {
            let v = de_u64(d)?;
            u32::try_from(v).map_err(|_| D::Error::custom(format!("{v:#x} does not fit in 32 bits")))
        } else {
            u32::deserialize(d)
        }
    }
}

/// `Option<u64>` as hex.
pub mod opt_u64_hex {
    use super::*;
    /// Serialize.
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) if s.is_human_readable() => s.serialize_some(&format!("{v:#x}")),
            Some(v) => s.serialize_some(v),
            None => s.serialize_none(),
        }
    }
    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(deserialize_with = "super::de_u64")] u64);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// `b` as lower-case hex digits, two per byte (`"0a1f"`): the one byte-string encoding of
/// the rig's JSON, reports and logs.
pub fn to_hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len() * 2);
    for x in b {
        out.push_str(&format!("{x:02x}"));
    }
    out
}

/// Byte vectors as hex strings in human-readable formats.
pub mod bytes_hex {
    use super::*;
    /// Serialize.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&to_hex(v))
        } else {
            s.serialize_bytes(v)
        }
    }
    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            if s.len() % 2 != 0 || !s.is_ascii() {
                return Err(D::Error::custom("hex string must have an even number of hex digits"));
            }
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(D::Error::custom)).collect()
        } else {
            serde_bytes_vec(d)
        }
    }
    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// `Vec<u32>` as hex strings in human-readable formats.
pub mod vec_u32_hex {
    use super::*;
    /// Serialize.
    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let human = s.is_human_readable();
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for x in v {
            if human {
                seq.serialize_element(&format!("{x:#x}"))?;
            } else {
                seq.serialize_element(x)?;
            }
        }
        seq.end()
    }
    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::u32_hex")] u32);
        Ok(Vec::<W>::deserialize(d)?.into_iter().map(|w| w.0).collect())
    }
}
