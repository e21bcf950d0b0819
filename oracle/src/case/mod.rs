//! The case format: a host-independent vCPU configuration plus an ordered list of operations.
//!
//! One format everywhere: the same bytes are a libFuzzer/honggfuzz input, a corpus entry, a
//! finding and a file another team replays. Binary form: the magic `XSRC`, a format version
//! byte, then the postcard encoding of [`Case`]. [`Case::decode`] never panics and bounds
//! every list ([`LIMITS`]). The JSON form ([`Case::to_json`]) round-trips.
//!
//! Host-dependent parts (component offsets, the supported CPUID table) are resolved only when
//! a case is rendered for a host ([`XsaveImage::render`], [`CpuidTable::render`]).

mod image;

use crate::abi::region::Buffer;
pub use crate::abi::CpuidEntry;
use crate::hexnum::opt_u64_hex;
pub use crate::pattern::fill;
pub use image::{ComponentData, CpuidBase, CpuidTable, FpuImage, Patch, Xcr, XcrsImage, XsaveImage};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Magic bytes at the start of a binary case.
pub const MAGIC: &[u8; 4] = b"XSRC";
/// Current binary format version: 2 adds [`Op::RunGuest`], [`Op::SetFpu`] and [`Op::GetFpu`]
/// (appended to the enum, so version 1 bodies decode unchanged). A case without them is still
/// written as version 1, byte for byte as before, so existing corpora keep their names.
/// 3 adds the guest actions `Spin`, `Ud2` and `StoreNull` (appended to
/// [`GuestAction`](crate::guest::GuestAction)); only a case that has one is written as version 3.
pub const FORMAT_VERSION: u8 = 3;
/// The oldest version this build reads.
pub const FORMAT_VERSION_MIN: u8 = 1;

/// Bounds enforced by the decoder (and respected by the generator).
pub struct Limits {
    /// Operations per case.
    pub ops: usize,
    /// CPUID entries per table (KVM_MAX_CPUID_ENTRIES is 256; one more tests E2BIG).
    pub cpuid_entries: usize,
    /// XCR entries per `kvm_xcrs` (the struct holds 16).
    pub xcrs: usize,
    /// Raw patches per XSAVE image.
    pub patches: usize,
    /// Bytes per patch.
    pub patch_bytes: usize,
    /// Components per XSAVE image.
    pub components: usize,
    /// Encoded case size.
    pub encoded_bytes: usize,
}

/// The decoder's bounds.
pub const LIMITS: Limits =
    Limits { ops: 64, cpuid_entries: 300, xcrs: 16, patches: 16, patch_bytes: 4096, components: 64, encoded_bytes: 1 << 20 };

/// Why a case could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The input does not start with `XSRC`.
    #[error("not a case file (no XSRC magic)")]
    NoMagic,
    /// A version this build does not read.
    #[error("unsupported case format version {0} (this build reads {FORMAT_VERSION_MIN} to {FORMAT_VERSION})")]
    Version(u8),
    /// The body is not a valid encoding.
    #[error("corrupt case body: {0}")]
    Body(String),
    /// Decoded fine but exceeds a bound.
    #[error("case exceeds a limit: {0}")]
    Limit(String),
    /// JSON form could not be parsed.
    #[error("invalid case JSON: {0}")]
    Json(String),
}

/// One operation on the current vCPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Replace the current VM and vCPU by fresh ones, then apply the case configuration.
    NewVcpu,
    /// `KVM_SET_CPUID2`.
    SetCpuid2(CpuidTable),
    /// `KVM_GET_CPUID2` with room for `capacity` entries.
    GetCpuid2 {
        /// `nent` passed in.
        capacity: u16,
    },
    /// `KVM_SET_XSAVE`.
    SetXsave(XsaveImage),
    /// `KVM_SET_XSAVE` of the output of the last successful GET of this case (an all-zero
    /// buffer if none), with XSTATE_BV replaced by `force_xstate_bv` when given: the
    /// save/restore sequences of the kernel's `state_test.c`.
    RestoreLast {
        /// Replacement XSTATE_BV.
        #[serde(with = "opt_u64_hex", default)]
        force_xstate_bv: Option<u64>,
    },
    /// `KVM_GET_XSAVE` (4096 bytes).
    GetXsave,
    /// `KVM_GET_XSAVE2` (`KVM_CAP_XSAVE2` bytes).
    GetXsave2,
    /// `KVM_SET_XCRS`.
    SetXcrs(XcrsImage),
    /// `KVM_GET_XCRS`.
    GetXcrs,
    /// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` on the VM fd.
    CheckXsave2,
    /// `KVM_RUN` on a guest program until it exits (format version 2). The step's return
    /// value is the [`crate::guest::Exit`]; its data is the guest's own XSAVE image when the
    /// program stores one.
    RunGuest(crate::guest::GuestProgram),
    /// `KVM_SET_FPU` (format version 2).
    SetFpu(FpuImage),
    /// `KVM_GET_FPU` (format version 2); the step's data is the 416-byte `struct kvm_fpu`.
    GetFpu,
}

impl Op {
    /// Short stable name (ioctl name).
    pub fn name(&self) -> &'static str {
        match self {
            Op::NewVcpu => "NEW_VCPU",
            Op::SetCpuid2(_) => "KVM_SET_CPUID2",
            Op::GetCpuid2 { .. } => "KVM_GET_CPUID2",
            Op::SetXsave(_) => "KVM_SET_XSAVE",
            Op::RestoreLast { .. } => "KVM_SET_XSAVE(restore)",
            Op::GetXsave => "KVM_GET_XSAVE",
            Op::GetXsave2 => "KVM_GET_XSAVE2",
            Op::SetXcrs(_) => "KVM_SET_XCRS",
            Op::GetXcrs => "KVM_GET_XCRS",
            Op::CheckXsave2 => "KVM_CHECK_EXTENSION(XSAVE2)",
            Op::RunGuest(_) => "KVM_RUN",
            Op::SetFpu(_) => "KVM_SET_FPU",
            Op::GetFpu => "KVM_GET_FPU",
        }
    }

    /// The ioctl buffer the step's output data is ([`Buffer::Xsave`] for XSAVE images, a
    /// guest's own XSAVE included, and for ops without data).
    pub fn buffer(&self) -> Buffer {
        match self {
            Op::GetCpuid2 { .. } => Buffer::Cpuid2,
            Op::GetXcrs => Buffer::Xcrs,
            Op::GetFpu => Buffer::Fpu,
            _ => Buffer::Xsave,
        }
    }

    /// The operation needs format version 2 (added after version 1 files existed).
    pub fn needs_v2(&self) -> bool {
        matches!(self, Op::RunGuest(_) | Op::SetFpu(_) | Op::GetFpu)
    }

    /// Whether the op needs format version 3 (a guest program with an action that came with it).
    pub fn needs_v3(&self) -> bool {
        matches!(self, Op::RunGuest(p) if p.actions.iter().any(crate::guest::GuestAction::since_v3))
    }
}

/// The vCPU configuration applied to every fresh vCPU of a case (like a VMM's setup).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Config {
    /// CPUID table set right after creation (none: the vCPU never sees `KVM_SET_CPUID2`).
    #[serde(default)]
    pub cpuid: Option<CpuidTable>,
    /// XCR0 set after the CPUID table.
    #[serde(with = "opt_u64_hex", default)]
    pub xcr0: Option<u64>,
}

/// A test case.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Case {
    /// Applied to each fresh vCPU.
    #[serde(default)]
    pub config: Config,
    /// Operations, in order.
    pub ops: Vec<Op>,
}

/// Where an executed step came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// `config.cpuid` or `config.xcr0` applied to the vCPU created before op `n` (or at start).
    Config(usize),
    /// `ops[n]`.
    Op(usize),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Config(n) => write!(f, "config (vCPU before op {n})"),
            Origin::Op(n) => write!(f, "op {n}"),
        }
    }
}

impl Case {
    /// The flat step list every backend executes: the configuration after the implicit
    /// initial vCPU and after each `NewVcpu`, then the operations.
    pub fn steps(&self) -> Vec<(Origin, Cow<'_, Op>)> {
        let mut v = Vec::with_capacity(self.ops.len() + 2);
        let push_config = |v: &mut Vec<(Origin, Cow<'_, Op>)>, at: usize| {
            if let Some(t) = &self.config.cpuid {
                v.push((Origin::Config(at), Cow::Owned(Op::SetCpuid2(t.clone()))));
            }
            if let Some(x) = self.config.xcr0 {
                v.push((Origin::Config(at), Cow::Owned(Op::SetXcrs(XcrsImage::xcr0(x)))));
            }
        };
        push_config(&mut v, 0);
        for (i, op) in self.ops.iter().enumerate() {
            v.push((Origin::Op(i), Cow::Borrowed(op)));
            if *op == Op::NewVcpu {
                push_config(&mut v, i);
            }
        }
        v
    }

    /// Binary encoding (magic, version, postcard body).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(MAGIC);
        out.push(if self.ops.iter().any(Op::needs_v3) {
            3
        } else if self.ops.iter().any(Op::needs_v2) {
            2
        } else {
            1
        });
        // postcard serialization of plain data into a Vec cannot fail.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(e) => unreachable!("postcard encoding into a Vec failed: {e}"),
        }
    }

    /// Decode a binary case. Never panics; bounds every list.
    pub fn decode(bytes: &[u8]) -> Result<Case, DecodeError> {
        if bytes.len() > LIMITS.encoded_bytes {
            return Err(DecodeError::Limit(format!("{} bytes > {}", bytes.len(), LIMITS.encoded_bytes)));
        }
        let body = bytes.strip_prefix(MAGIC.as_slice()).ok_or(DecodeError::NoMagic)?;
        let (&ver, body) = body.split_first().ok_or(DecodeError::Version(0))?;
        if !(FORMAT_VERSION_MIN..=FORMAT_VERSION).contains(&ver) {
            return Err(DecodeError::Version(ver));
        }
        let (case, rest): (Case, &[u8]) = postcard::take_from_bytes(body).map_err(|e| DecodeError::Body(e.to_string()))?;
        if !rest.is_empty() {
            return Err(DecodeError::Body(format!("{} trailing bytes", rest.len())));
        }
        case.check_limits()?;
        Ok(case)
    }

    /// Parse the JSON form.
    pub fn from_json(s: &str) -> Result<Case, DecodeError> {
        let case: Case = serde_json::from_str(s).map_err(|e| DecodeError::Json(e.to_string()))?;
        case.check_limits()?;
        Ok(case)
    }

    /// Pretty JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| unreachable!("case JSON: {e}"))
    }

    /// Check the [`LIMITS`].
    pub fn check_limits(&self) -> Result<(), DecodeError> {
        let lim = |what: &str, n: usize, max: usize| {
            if n > max {
                Err(DecodeError::Limit(format!("{what}: {n} > {max}")))
            } else {
                Ok(())
            }
        };
        lim("ops", self.ops.len(), LIMITS.ops)?;
        let table = |t: &CpuidTable| -> Result<(), DecodeError> {
            lim("cpuid entries", t.entries.len(), LIMITS.cpuid_entries)?;
            match &t.base {
                CpuidBase::Supported { drop_leaves: l, .. } | CpuidBase::Subset { leaves: l, .. } => {
                    lim("base leaves", l.len(), LIMITS.cpuid_entries)?
                }
                CpuidBase::Empty => {}
            }
            Ok(())
        };
        if let Some(t) = &self.config.cpuid {
            table(t)?;
        }
        for op in &self.ops {
            match op {
                Op::SetCpuid2(t) => table(t)?,
                Op::SetXsave(x) => {
                    lim("components", x.components.len(), LIMITS.components)?;
                    lim("header bytes", x.hdr_reserved.len(), crate::abi::HDR_RSVD_LEN)?;
                    lim("patches", x.patches.len(), LIMITS.patches)?;
                    for p in &x.patches {
                        lim("patch bytes", p.bytes.len(), LIMITS.patch_bytes)?;
                    }
                }
                Op::SetXcrs(x) => lim("xcrs", x.xcrs.len(), LIMITS.xcrs)?,
                Op::RunGuest(p) => lim("guest actions", p.actions.len(), crate::guest::MAX_ACTIONS)?,
                _ => {}
            }
        }
        Ok(())
    }
}

/// Decode `data`; if it is a case, check it round-trips through the binary and JSON forms.
/// Panics on a violation (for fuzz targets and tests).
pub fn check_round_trip(data: &[u8]) {
    let Ok(case) = Case::decode(data) else { return };
    let bin = case.encode();
    assert_eq!(Case::decode(&bin).ok().as_ref(), Some(&case), "binary round-trip");
    assert_eq!(Case::from_json(&case.to_json()).ok().as_ref(), Some(&case), "JSON round-trip");
}

/// A fuzzer input as a case: a case file decodes as itself; any other bytes are read
/// structurally (`arbitrary`), so byte-level fuzzers without a custom mutator still reach the
/// oracle on every input.
pub fn from_fuzz_input(data: &[u8]) -> Case {
    use arbitrary::Arbitrary;
    Case::decode(data).unwrap_or_else(|_| {
        let c = Case::arbitrary(&mut arbitrary::Unstructured::new(data)).unwrap_or_default();
        if c.ops.is_empty() {
            Case { ops: vec![Op::GetXsave], ..c }
        } else {
            c
        }
    })
}
