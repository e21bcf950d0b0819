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
