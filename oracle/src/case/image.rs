//! The buffers a case passes to the kernel, built from fields: the `KVM_SET_CPUID2` table, the
//! `struct kvm_xsave`, `struct kvm_fpu` and `struct kvm_xcrs` images. Their byte layouts come
//! from [`crate::abi`]; the host-dependent parts are resolved by `render`.

use crate::abi::xcrs::{KvmXcr, KvmXcrs, KVM_XCRS_SIZE, MAX_XCRS};
use crate::abi::{self, put, CpuidEntry};
use crate::hexnum::{bytes_hex, u32_hex, u64_hex, vec_u32_hex};
use crate::host::HostFacts;
use crate::pattern::fill;
use serde::{Deserialize, Serialize};

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
