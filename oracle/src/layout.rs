//! Standard-format XSAVE buffer geometry and region names (spec §2).

use crate::host::{Component, HostFacts};
use crate::xfeatures;

/// Size of `struct kvm_xsave` (the legacy uABI buffer).
pub const KVM_XSAVE_SIZE: usize = 4096;
/// Legacy area size.
pub const LEGACY_SIZE: usize = 512;
/// Offset of the XSAVE header.
pub const HDR: usize = 512;
/// Offset of the first extended component.
pub const EXT: usize = 576;
/// FCW offset.
pub const FCW: usize = 0;
/// MXCSR offset.
pub const MXCSR: usize = 24;
/// FOP: the last x87 opcode (u16).
pub const FOP: usize = 6;
/// MXCSR_MASK offset.
pub const MXCSR_MASK: usize = 28;
/// Start of ST0..7.
pub const ST: usize = 32;
/// End of the kernel's FP component.
pub const FP_END: usize = 160;
/// Start of XMM0..15 (SSE component).
pub const XMM: usize = 160;
/// End of the SSE component.
pub const XMM_END: usize = 416;
/// Start of the padding KVM always zeroes.
pub const PAD: usize = 416;
/// Start of the software-usable bytes.
pub const SW: usize = 464;
/// XSTATE_BV offset.
pub const XSTATE_BV: usize = 512;
/// XCOMP_BV offset.
pub const XCOMP_BV: usize = 520;
/// Start of the 48 reserved header bytes.
pub const HDR_RSVD: usize = 528;
/// Byte pattern a backend pre-fills XSAVE2 buffers with (bytes the kernel did not write).
pub const CANARY: u8 = 0xa5;
/// FCW init value.
pub const FCW_INIT: u16 = 0x037f;
/// MXCSR init value.
pub const MXCSR_INIT: u32 = 0x1f80;

/// `xstate_required_size(mask, compacted)`: bytes an XSAVE image of `mask` needs (spec §1.3).
pub fn xstate_required_size(components: &[Component], mask: u64, compacted: bool) -> u32 {
    let mut sorted: Vec<&Component> = components.iter().filter(|c| mask & (1u64 << c.bit) != 0).collect();
    sorted.sort_by_key(|c| c.bit);
    let mut size = EXT as u32;
    let mut running = EXT as u32;
    for c in sorted {
        let end = if compacted {
            let off = if c.align64 { running.div_ceil(64) * 64 } else { running };
            running = off + c.size;
            running
        } else {
            c.offset + c.size
        };
        size = size.max(end);
    }
    size
}

/// Extended components of `mask` in increasing standard offset (the kernel's copy order).
pub fn components_in_order(host: &HostFacts, mask: u64) -> Vec<&Component> {
    let mut v: Vec<&Component> = host.components.iter().filter(|c| c.bit >= 2 && mask & (1u64 << c.bit) != 0).collect();
    v.sort_by_key(|c| c.offset);
    v
}

/// Read a little-endian u64.
pub fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Read a little-endian u32.
pub fn le32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

/// Write a little-endian value of `bytes.len()` bytes if it fits.
pub fn put(b: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(s) = b.get_mut(off..off + bytes.len()) {
        s.copy_from_slice(bytes);
    }
}

/// Size of `struct kvm_fpu` (`KVM_GET_FPU`/`KVM_SET_FPU`).
pub const KVM_FPU_SIZE: usize = 416;
/// `kvm_fpu.fpr[8][16]`: ST0..7, 16 bytes each (the FXSAVE layout of bytes 32..159).
pub const FPU_FPR: usize = 0;
/// `kvm_fpu.fcw`; `fsw`, `ftwx`, `pad1`, `last_opcode`, `last_ip` and `last_dp` follow in
/// the FXSAVE order of bytes 0..23.
pub const FPU_FCW: usize = 128;
/// `kvm_fpu.xmm[16][16]` (the FXSAVE layout of bytes 160..415).
pub const FPU_XMM: usize = 152;
/// `kvm_fpu.mxcsr`.
pub const FPU_MXCSR: usize = 408;
/// `kvm_fpu.pad2`.
pub const FPU_PAD2: usize = 412;

/// Where byte `off` of an XSAVE legacy area lives in a `struct kvm_fpu`, if it does.
pub fn legacy_to_fpu(off: usize) -> Option<usize> {
    match off {
        0..=23 => Some(FPU_FCW + off),
        24..=27 => Some(FPU_MXCSR + off - MXCSR),
        32..=159 => Some(off - ST),
        160..=415 => Some(FPU_XMM + off - XMM),
        _ => None,
    }
}

/// The `struct kvm_fpu` view of an XSAVE legacy area (`pad1`, `pad2` zero): what a GET_FPU
/// that agrees with GET_XSAVE returns.
pub fn fpu_from_legacy(legacy: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; KVM_FPU_SIZE];
    for (off, &b) in legacy.iter().enumerate().take(LEGACY_SIZE) {
        if let Some(o) = legacy_to_fpu(off) {
            out[o] = b;
        }
    }
    out[FPU_FCW + 5] = 0;
    out
}

/// Name of the `struct kvm_fpu` field holding byte `off` (for diffs and reports).
pub fn fpu_region_name(off: usize) -> String {
    match off {
        0..=127 => format!("kvm_fpu.fpr[{}] (ST{})", off / 16, off / 16),
        128..=129 => "kvm_fpu.fcw".into(),
        130..=131 => "kvm_fpu.fsw".into(),
        132 => "kvm_fpu.ftwx".into(),
        133 => "kvm_fpu.pad1".into(),
        134..=135 => "kvm_fpu.last_opcode".into(),
        136..=143 => "kvm_fpu.last_ip".into(),
        144..=151 => "kvm_fpu.last_dp".into(),
        152..=407 => format!("kvm_fpu.xmm[{}]", (off - FPU_XMM) / 16),
        408..=411 => "kvm_fpu.mxcsr".into(),
        412..=415 => "kvm_fpu.pad2".into(),
        _ => "beyond kvm_fpu".into(),
    }
}

/// Name of the XSAVE-buffer region holding byte `off` on `host` (for diffs and reports).
pub fn region_name(host: &HostFacts, off: usize) -> String {
    let legacy: &[(usize, usize, &str)] = &[
        (0, 2, "FCW"),
        (2, 4, "FSW"),
        (4, 5, "FTW"),
        (5, 6, "FTW reserved byte"),
        (6, 8, "FOP"),
        (8, 16, "FIP"),
        (16, 24, "FDP"),
        (24, 28, "MXCSR"),
        (28, 32, "MXCSR_MASK"),
    ];
    for &(s, e, n) in legacy {
        if (s..e).contains(&off) {
            return n.to_string();
        }
    }
    match off {
        32..=159 => format!("ST{}", (off - ST) / 16),
        160..=415 => format!("XMM{}", (off - XMM) / 16),
        416..=463 => "legacy padding".to_string(),
        464..=511 => "sw_reserved".to_string(),
        512..=519 => "XSTATE_BV".to_string(),
        520..=527 => "XCOMP_BV".to_string(),
        528..=575 => "header reserved".to_string(),
        _ => {
            for c in &host.components {
                let (s, e) = (c.offset as usize, (c.offset + c.size) as usize);
                if (s..e).contains(&off) {
                    return format!("{} (bit {}) @{}", xfeatures::name(c.bit), c.bit, c.offset);
                }
            }
            "beyond components".to_string()
        }
    }
}
