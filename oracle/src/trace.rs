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
}

impl OpResult {
    /// A result with no data.
    pub fn new(origin: Origin, ret: Ret) -> OpResult {
        OpResult { origin, ret, data: Vec::new(), unpredicted: Vec::new(), rules: Vec::new() }
    }
}

/// All step results of one case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Trace {
    /// In step order.
    pub results: Vec<OpResult>,
}
