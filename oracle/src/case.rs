//! The case format: a host-independent vCPU configuration plus an ordered list of operations.
//!
//! One format everywhere: the same bytes are a libFuzzer/honggfuzz input, a corpus entry, a
//! finding and a file another team replays. Binary form: the magic `XSRC`, a format version
//! byte, then the postcard encoding of [`Case`]. [`Case::decode`] never panics and bounds
//! every list ([`LIMITS`]). The JSON form ([`Case::to_json`]) round-trips.
//!
//! Host-dependent parts (component offsets, the supported CPUID table) are resolved only when
//! a case is rendered for a host ([`XsaveImage::render`], [`CpuidTable::render`]).

use crate::abi::xcrs::{KvmXcr, KvmXcrs, KVM_XCRS_SIZE, MAX_XCRS};
pub use crate::abi::CpuidEntry;
use crate::abi::{self, put};
use crate::hexnum::{bytes_hex, opt_u64_hex, u32_hex, u64_hex, vec_u32_hex};
use crate::host::HostFacts;
pub use crate::pattern::fill;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// Magic bytes at the start of a binary case.
pub const MAGIC: &[u8; 4] = b"XSRC";
/// Current binary format version: 2 adds [`Op::RunGuest`], [`Op::SetFpu`] and [`Op::GetFpu`]
/// (appended to the enum, so version 1 bodies decode unchanged). A case without them is still
/// written as version 1, byte for byte as before, so existing corpora keep their names.
pub const FORMAT_VERSION: u8 = 2;
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

/// Where a CPUID table starts from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuidBase {
    /// No entries.
    Empty,
    /// `KVM_GET_SUPPORTED_CPUID`, with 0xD.0 EDX:EAX ANDed with `xcr0_mask` (how a VMM
    /// narrows a guest), minus the leaves in `drop_leaves`.
    Supported {
        /// Mask applied to 0xD.0 EDX:EAX.
        #[serde(with = "u64_hex")]
        xcr0_mask: u64,
        /// Leaves (functions) removed from the base.
        #[serde(default, with = "vec_u32_hex")]
        drop_leaves: Vec<u32>,
    },
    /// Only the `KVM_GET_SUPPORTED_CPUID` entries of `leaves` (in the supported table's
    /// order), with 0xD.0 EDX:EAX ANDed with `xcr0_mask`: the XSAVE-relevant part of a VMM's
    /// table.
    Subset {
        /// Leaves (functions) kept.
        #[serde(with = "vec_u32_hex")]
        leaves: Vec<u32>,
        /// Mask applied to 0xD.0 EDX:EAX.
        #[serde(with = "u64_hex")]
        xcr0_mask: u64,
    },
}

/// A `KVM_SET_CPUID2` table: a base plus extra entries appended (duplicates allowed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuidTable {
    /// Start from this.
    pub base: CpuidBase,
    /// Appended after the base, in order.
    #[serde(default)]
    pub entries: Vec<CpuidEntry>,
    /// Reverse the final order.
    #[serde(default)]
    pub reverse: bool,
}

impl CpuidTable {
    /// The concrete entries for `host`.
    pub fn render(&self, host: &HostFacts) -> Vec<CpuidEntry> {
        let (keep, mask): (Box<dyn Fn(u32) -> bool + '_>, u64) = match &self.base {
            CpuidBase::Empty => (Box::new(|_| false), 0),
            CpuidBase::Supported { xcr0_mask, drop_leaves } => (Box::new(move |f| !drop_leaves.contains(&f)), *xcr0_mask),
            CpuidBase::Subset { leaves, xcr0_mask } => (Box::new(move |f| leaves.contains(&f)), *xcr0_mask),
        };
        let mut out: Vec<CpuidEntry> = host
            .supported_cpuid
            .iter()
            .filter(|e| keep(e.function))
            .map(|e| {
                let mut e = *e;
                if e.function == 0xd && e.index == 0 {
                    e.eax &= mask as u32;
                    e.edx &= (mask >> 32) as u32;
                }
                e
            })
            .collect();
        out.extend_from_slice(&self.entries);
        if self.reverse {
            out.reverse();
        }
        out
    }
}

/// A raw byte patch applied after everything else (the escape hatch).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Patch {
    /// Byte offset in the buffer.
    pub offset: u16,
    /// Bytes written there (clipped at the buffer end).
    #[serde(with = "bytes_hex")]
    pub bytes: Vec<u8>,
}

/// Data for one extended component, placed at the host's offset for `bit`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentData {
    /// xfeature bit.
    pub bit: u8,
    /// Seed of the byte pattern ([`fill`]).
    #[serde(with = "u32_hex")]
    pub seed: u32,
}

/// A `struct kvm_xsave` built from fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XsaveImage {
    /// Header XSTATE_BV.
    #[serde(with = "u64_hex")]
    pub xstate_bv: u64,
    /// Header XCOMP_BV.
    #[serde(with = "u64_hex", default)]
    pub xcomp_bv: u64,
    /// Non-zero reserved header bytes: (index 0..48, value).
    #[serde(default)]
    pub hdr_reserved: Vec<(u8, u8)>,
    /// x87 control word.
    #[serde(with = "u32_hex")]
    pub fcw: u32,
    /// x87 status word.
    #[serde(with = "u32_hex", default)]
    pub fsw: u32,
    /// Abridged tag word byte and its reserved neighbour.
    #[serde(default)]
    pub ftw: [u8; 2],
    /// Last x87 opcode.
    #[serde(with = "u32_hex", default)]
    pub fop: u32,
    /// FIP.
    #[serde(with = "u64_hex", default)]
    pub fip: u64,
    /// FDP.
    #[serde(with = "u64_hex", default)]
    pub fdp: u64,
    /// MXCSR.
    #[serde(with = "u32_hex")]
    pub mxcsr: u32,
    /// MXCSR_MASK.
    #[serde(with = "u32_hex", default)]
    pub mxcsr_mask: u32,
    /// Seed for ST0..7 (bytes 32..159).
    #[serde(with = "u32_hex", default)]
    pub st_seed: u32,
    /// Seed for XMM0..15 (bytes 160..415).
    #[serde(with = "u32_hex", default)]
    pub xmm_seed: u32,
    /// Seed for padding and sw_reserved (bytes 416..511), which KVM must ignore.
    #[serde(with = "u32_hex", default)]
    pub pad_seed: u32,
    /// Extended component data at host offsets.
    #[serde(default)]
    pub components: Vec<ComponentData>,
    /// PKRU value, written at the host's PKRU offset if it has one.
    #[serde(with = "u32_hex", default)]
    pub pkru: u32,
    /// Raw patches, applied last.
    #[serde(default)]
    pub patches: Vec<Patch>,
}

impl XsaveImage {
    /// An image holding init values and the given XSTATE_BV.
    pub fn init(xstate_bv: u64) -> XsaveImage {
        XsaveImage {
            xstate_bv,
            xcomp_bv: 0,
            hdr_reserved: Vec::new(),
            fcw: abi::FCW_INIT as u32,
            fsw: 0,
            ftw: [0, 0],
            fop: 0,
            fip: 0,
            fdp: 0,
            mxcsr: abi::MXCSR_INIT,
            mxcsr_mask: 0,
            st_seed: 0,
            xmm_seed: 0,
            pad_seed: 0,
            components: Vec::new(),
            pkru: 0,
            patches: Vec::new(),
        }
    }

    /// Render into `out` (at least 4096 bytes) for `host`.
    pub fn render_into(&self, host: &HostFacts, out: &mut [u8]) {
        out.fill(0);
        put(out, abi::FCW, &(self.fcw as u16).to_le_bytes());
        put(out, abi::FSW, &(self.fsw as u16).to_le_bytes());
        put(out, abi::FTW, &self.ftw);
        put(out, abi::FOP, &(self.fop as u16).to_le_bytes());
        put(out, abi::FIP, &self.fip.to_le_bytes());
        put(out, abi::FDP, &self.fdp.to_le_bytes());
        put(out, abi::MXCSR, &self.mxcsr.to_le_bytes());
        put(out, abi::MXCSR_MASK, &self.mxcsr_mask.to_le_bytes());
        if let Some(s) = out.get_mut(abi::ST..abi::FP_END) {
            fill(self.st_seed, s);
        }
        if let Some(s) = out.get_mut(abi::XMM..abi::XMM_END) {
            fill(self.xmm_seed, s);
        }
        if let Some(s) = out.get_mut(abi::PAD..abi::HDR) {
            fill(self.pad_seed, s);
        }
        put(out, abi::XSTATE_BV, &self.xstate_bv.to_le_bytes());
        put(out, abi::XCOMP_BV, &self.xcomp_bv.to_le_bytes());
        for &(i, v) in &self.hdr_reserved {
            if (i as usize) < abi::HDR_RSVD_LEN {
                put(out, abi::HDR_RSVD + i as usize, &[v]);
            }
        }
        for c in &self.components {
            if let Some(hc) = host.component(c.bit) {
                let (s, e) = (hc.offset as usize, (hc.offset + hc.size) as usize);
                if let Some(dst) = out.get_mut(s..e) {
                    fill(c.seed, dst);
                }
            }
        }
        if let Some(pk) = host.component(crate::xfeatures::PKRU_BIT) {
            put(out, pk.offset as usize, &self.pkru.to_le_bytes());
        }
        for p in &self.patches {
            let start = p.offset as usize;
            if start < out.len() {
                let n = p.bytes.len().min(out.len() - start);
                out[start..start + n].copy_from_slice(&p.bytes[..n]);
            }
        }
    }

    /// Render a buffer of `size` bytes (at least 4096) for `host`.
    pub fn render(&self, host: &HostFacts, size: usize) -> Vec<u8> {
        let mut v = vec![0u8; size.max(abi::KVM_XSAVE_SIZE)];
        self.render_into(host, &mut v);
        v
    }
}

/// A `struct kvm_fpu` (`KVM_SET_FPU`) built from fields; [`FpuImage::render`] is the one
/// place its ABI layout is written ([`abi::FPU_FCW`] and neighbours).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FpuImage {
    /// `fcw`.
    #[serde(with = "u32_hex")]
    pub fcw: u32,
    /// `fsw`.
    #[serde(with = "u32_hex", default)]
    pub fsw: u32,
    /// `ftwx`: the abridged (FXSAVE) tag byte, one bit per register.
    #[serde(default)]
    pub ftwx: u8,
    /// `pad1` (ignored by KVM).
    #[serde(default)]
    pub pad1: u8,
    /// `last_opcode`.
    #[serde(with = "u32_hex", default)]
    pub last_opcode: u32,
    /// `last_ip`.
    #[serde(with = "u64_hex", default)]
    pub last_ip: u64,
    /// `last_dp`.
    #[serde(with = "u64_hex", default)]
    pub last_dp: u64,
    /// `mxcsr`.
    #[serde(with = "u32_hex")]
    pub mxcsr: u32,
    /// `pad2` (ignored by KVM).
    #[serde(with = "u32_hex", default)]
    pub pad2: u32,
    /// Seed for `fpr[8][16]` ([`fill`]).
    #[serde(with = "u32_hex", default)]
    pub fpr_seed: u32,
    /// Seed for `xmm[16][16]` ([`fill`]).
    #[serde(with = "u32_hex", default)]
    pub xmm_seed: u32,
}

impl FpuImage {
    /// Init values: FCW 0x37F, MXCSR 0x1F80, everything else zero.
    pub fn init() -> FpuImage {
        FpuImage {
            fcw: abi::FCW_INIT as u32,
            fsw: 0,
            ftwx: 0,
            pad1: 0,
            last_opcode: 0,
            last_ip: 0,
            last_dp: 0,
            mxcsr: abi::MXCSR_INIT,
            pad2: 0,
            fpr_seed: 0,
            xmm_seed: 0,
        }
    }

    /// The 416-byte `struct kvm_fpu`.
    pub fn render(&self) -> [u8; abi::KVM_FPU_SIZE] {
        let mut b = [0u8; abi::KVM_FPU_SIZE];
        fill(self.fpr_seed, &mut b[abi::FPU_FPR..abi::FPU_FCW]);
        let f = abi::FPU_FCW;
        put(&mut b, f, &(self.fcw as u16).to_le_bytes());
        put(&mut b, f + 2, &(self.fsw as u16).to_le_bytes());
        put(&mut b, f + 4, &[self.ftwx, self.pad1]);
        put(&mut b, f + 6, &(self.last_opcode as u16).to_le_bytes());
        put(&mut b, f + 8, &self.last_ip.to_le_bytes());
        put(&mut b, f + 16, &self.last_dp.to_le_bytes());
        fill(self.xmm_seed, &mut b[abi::FPU_XMM..abi::FPU_MXCSR]);
        put(&mut b, abi::FPU_MXCSR, &self.mxcsr.to_le_bytes());
        put(&mut b, abi::FPU_PAD2, &self.pad2.to_le_bytes());
        b
    }
}

/// One `struct kvm_xcr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xcr {
    /// XCR index.
    pub xcr: u32,
    /// Reserved word (ignored by KVM).
    #[serde(default)]
    pub reserved: u32,
    /// Value.
    #[serde(with = "u64_hex")]
    pub value: u64,
}

/// A `struct kvm_xcrs` with possibly odd `nr_xcrs`, `flags` and indices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct XcrsImage {
    /// `nr_xcrs` as passed (may exceed the entries given, or 16).
    pub nr_xcrs: u32,
    /// `flags` (must be 0).
    #[serde(default)]
    pub flags: u32,
    /// Entries (at most 16; the rest of the array is zero).
    pub xcrs: Vec<Xcr>,
    /// Seed for the trailing `padding[16]` (ignored by KVM).
    #[serde(with = "u32_hex", default)]
    pub padding_seed: u32,
}

impl XcrsImage {
    /// XCRS that sets XCR0 to `value`.
    pub fn xcr0(value: u64) -> XcrsImage {
        XcrsImage { nr_xcrs: 1, flags: 0, xcrs: vec![Xcr { xcr: 0, reserved: 0, value }], padding_seed: 0 }
    }

    /// The 392-byte struct.
    pub fn render(&self) -> [u8; KVM_XCRS_SIZE] {
        let mut s = KvmXcrs { nr_xcrs: self.nr_xcrs, flags: self.flags, ..KvmXcrs::default() };
        for (dst, x) in s.xcrs.iter_mut().zip(self.xcrs.iter().take(MAX_XCRS as usize)) {
            *dst = KvmXcr { xcr: x.xcr, reserved: x.reserved, value: x.value };
        }
        let mut pad = [0u8; 128];
        fill(self.padding_seed, &mut pad);
        for (w, b) in s.padding.iter_mut().zip(pad.chunks(8)) {
            *w = abi::le64(b, 0);
        }
        s.to_bytes()
    }
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

    /// The operation needs format version 2 (added after version 1 files existed).
    pub fn needs_v2(&self) -> bool {
        matches!(self, Op::RunGuest(_) | Op::SetFpu(_) | Op::GetFpu)
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
        out.push(if self.ops.iter().any(Op::needs_v2) { FORMAT_VERSION } else { 1 });
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
                    lim("header bytes", x.hdr_reserved.len(), abi::HDR_RSVD_LEN)?;
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
