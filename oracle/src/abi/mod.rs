//! The KVM x86 XSAVE userspace ABI: every byte offset, size and constant the rig shares with
//! the kernel, in one leaf module (it imports nothing from the crate but [`crate::hexnum`]
//! and [`crate::xfeatures`]).
//!
//! - this module: the standard-format `struct kvm_xsave` geometry (legacy area, header,
//!   extended components, spec §2) and the little-endian byte helpers;
//! - [`region`]: the typed table of named XSAVE-buffer regions the model, the diff and the
//!   reports share, and the field names of the other ioctl buffers;
//! - [`fpu`]: `struct kvm_fpu`; [`xcrs`]: `struct kvm_xcrs`; [`cpuid`]: `struct
//!   kvm_cpuid_entry2` and `struct kvm_cpuid2`, and first-match lookup;
//! - [`ioctl`]: ioctl request numbers and capability ids.

pub mod cpuid;
pub mod fpu;
pub mod ioctl;
pub mod region;
pub mod xcrs;

pub use cpuid::CpuidEntry;
pub use fpu::*;
pub use region::Region;

use serde::{Deserialize, Serialize};

/// One extended xfeature's place in the standard (non-compacted) XSAVE layout, from the host's
/// CPUID.0xD.i (EBX = offset, EAX = size, ECX bit 1 = 64-byte alignment when compacted).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// xfeature bit number (>= 2).
    pub bit: u8,
    /// Standard-format offset in bytes.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
    /// Aligned to 64 bytes in the compacted format.
    #[serde(default)]
    pub align64: bool,
}

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
/// FSW offset.
pub const FSW: usize = 2;
/// FTW offset (the abridged tag byte, then a reserved byte).
pub const FTW: usize = 4;
/// FTW's reserved byte.
pub const FTW_RSVD: usize = 5;
/// FOP offset.
pub const FOP: usize = 6;
/// FIP offset.
pub const FIP: usize = 8;
/// FDP offset.
pub const FDP: usize = 16;
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
/// Number of reserved header bytes.
pub const HDR_RSVD_LEN: usize = EXT - HDR_RSVD;
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
pub fn components_in_order(components: &[Component], mask: u64) -> Vec<&Component> {
    let mut v: Vec<&Component> = components.iter().filter(|c| c.bit >= 2 && mask & (1u64 << c.bit) != 0).collect();
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
