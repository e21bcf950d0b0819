//! Observations and predictions share one type: per executed step, the return value or errno
//! and every byte the ioctl wrote back.

use crate::case::Origin;
use crate::hexnum::bytes_hex;
use crate::rules::Rule;
use serde::{Deserialize, Serialize};

/// `EPERM`.
pub const EPERM: i32 = 1;
/// `E2BIG`.
pub const E2BIG: i32 = 7;
/// `EFAULT`.
pub const EFAULT: i32 = 14;
/// `EINVAL`.
pub const EINVAL: i32 = 22;

/// Name of an errno value.
pub fn errno_name(e: i32) -> String {
    match e {
        1 => "EPERM".into(),
        7 => "E2BIG".into(),
        12 => "ENOMEM".into(),
        14 => "EFAULT".into(),
        16 => "EBUSY".into(),
        22 => "EINVAL".into(),
        25 => "ENOTTY".into(),
        95 => "EOPNOTSUPP".into(),
        n => format!("errno {n}"),
    }
}

/// An ioctl's result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Ret {
    /// Success with this return value.
    Ok(i64),
    /// Failure with this (positive) errno.
    Err(i32),
}

impl std::fmt::Display for Ret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ret::Ok(v) => write!(f, "{v}"),
            Ret::Err(e) => write!(f, "-{}", errno_name(*e)),
        }
    }
}

/// The result of one executed step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpResult {
    /// Which step of the case this is.
    pub origin: Origin,
    /// Return value or errno.
    pub ret: Ret,
    /// Bytes written back (XSAVE image, `kvm_xcrs`, `nent` + CPUID entries); empty for SETs.
    #[serde(with = "bytes_hex", default)]
    pub data: Vec<u8>,
    /// Byte ranges `[start, end)` of `data` a predictor deliberately leaves unpredicted
    /// (host-owned fields under a modelled quirk). Always empty in observations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpredicted: Vec<(u32, u32)>,
    /// Rules that decided this result (predictions only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Where the architecture lets the hardware choose (predictions only): each choice states
    /// the allowed set under a named rule, and the diff checks membership
    /// ([`OpResult::resolve`]); no byte goes unchecked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<Allowed>,
}

/// One hardware choice in a prediction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Allowed {
    /// Bits `mask` of the little-endian u64 at `at` may be set or clear (e.g. XSTATE_BV bits of
    /// components at their init value: XINUSE is the processor's choice).
    FreeBits {
        /// Offset of the u64.
        at: u32,
        /// Free bits.
        mask: u64,
        /// The rule that allows it.
        rule: Rule,
    },
    /// When the u64 at `at` has none of `bits` set (after free bits are resolved), bytes
    /// `start..start + alt.len()` read `alt` instead of the predicted bytes.
    Unless {
        /// Offset of the u64.
        at: u32,
        /// The bits.
        bits: u64,
        /// First byte replaced.
        start: u32,
        /// Replacement bytes.
        #[serde(with = "bytes_hex")]
        alt: Vec<u8>,
        /// The rule.
        rule: Rule,
    },
    /// Bytes `start..start + len` may read as any of `values` (or as predicted).
    OneOf {
        /// First byte.
        start: u32,
        /// Allowed values, all of one length.
        #[serde(with = "vec_bytes_hex")]
        values: Vec<Vec<u8>>,
        /// The rule.
        rule: Rule,
    },
}

impl Allowed {
    /// The rule that allows the choice.
    pub fn rule(&self) -> Rule {
        match self {
            Allowed::FreeBits { rule, .. } | Allowed::Unless { rule, .. } | Allowed::OneOf { rule, .. } => *rule,
        }
    }
}

mod vec_bytes_hex {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    pub fn serialize<S: Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        v.iter().map(|b| crate::hexnum::to_hex(b)).collect::<Vec<_>>().serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|h| {
                (0..h.len() / 2)
                    .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2).unwrap_or("zz"), 16).map_err(serde::de::Error::custom))
                    .collect()
            })
            .collect()
    }
}

impl OpResult {
    /// The prediction with every hardware choice taken as `observed` shows it, where the
    /// choice allows that; bytes outside the allowed sets are left as predicted, so the diff
    /// still catches them. Returns the rules of the choices that applied.
    pub fn resolve(&self, observed: &OpResult) -> (OpResult, Vec<Rule>) {
        let mut out = self.clone();
        let mut used = Vec::new();
        if self.allowed.is_empty() || observed.data.len() != self.data.len() {
            return (out, used);
        }
        let word = |d: &[u8], at: u32| crate::abi::le64(d, at as usize);
        for a in &self.allowed {
            if let Allowed::FreeBits { at, mask, rule } = a {
                let (e, o) = (word(&out.data, *at), word(&observed.data, *at));
                if (e ^ o) & mask != 0 {
                    crate::abi::put(&mut out.data, *at as usize, &((e & !mask) | (o & mask)).to_le_bytes());
                    used.push(*rule);
                }
            }
        }
        for a in &self.allowed {
            match a {
                Allowed::Unless { at, bits, start, alt, rule } if word(&out.data, *at) & bits == 0 => {
                    let s = *start as usize;
                    if let Some(dst) = out.data.get_mut(s..s + alt.len()) {
                        if dst != alt.as_slice() {
                            dst.copy_from_slice(alt);
                            used.push(*rule);
                        }
                    }
                }
                Allowed::OneOf { start, values, rule } => {
                    let s = *start as usize;
                    let n = values.first().map_or(0, Vec::len);
                    if let (Some(o), Some(dst)) = (observed.data.get(s..s + n), out.data.get_mut(s..s + n)) {
                        if o != dst && values.iter().any(|v| v.as_slice() == o) {
                            dst.copy_from_slice(o);
                            used.push(*rule);
                        }
                    }
                }
                _ => {}
            }
        }
        (out, used)
    }
}

impl OpResult {
    /// A result with no data.
    pub fn new(origin: Origin, ret: Ret) -> OpResult {
        OpResult { origin, ret, data: Vec::new(), unpredicted: Vec::new(), rules: Vec::new(), allowed: Vec::new() }
    }
}

/// All step results of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Trace {
    /// In step order.
    pub results: Vec<OpResult>,
}
