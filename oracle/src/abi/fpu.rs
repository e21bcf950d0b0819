//! `struct kvm_fpu` (`KVM_GET_FPU`/`KVM_SET_FPU`) and its relation to the XSAVE legacy area.

use super::{FTW_RSVD, LEGACY_SIZE, MXCSR, ST, XMM};

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
    out[FPU_FCW + FTW_RSVD] = 0;
    out
}
