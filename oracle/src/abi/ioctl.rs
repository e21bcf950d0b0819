//! KVM ioctl request numbers (`_IOC` encodings of `<linux/kvm.h>`) and capability ids.

use super::fpu::KVM_FPU_SIZE;
use super::KVM_XSAVE_SIZE;

/// `KVMIO`: the ioctl type byte of every KVM request.
pub const KVMIO: u32 = 0xAE;
const W: u32 = 1;
const R: u32 = 2;
const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    (dir << 30) | ((size as u32) << 16) | (KVMIO << 8) | nr
}

/// `KVM_GET_DEVICE_ATTR` (system fd on x86; `struct kvm_device_attr`, 24 bytes).
pub const KVM_GET_DEVICE_ATTR: u32 = ioc(W, 0xe2, 24);
/// `KVM_SET_CPUID2` (`struct kvm_cpuid2` header, 8 bytes).
pub const KVM_SET_CPUID2: u32 = ioc(W, 0x90, 8);
/// `KVM_GET_CPUID2`.
pub const KVM_GET_CPUID2: u32 = ioc(R | W, 0x91, 8);
/// `KVM_GET_XSAVE` (`struct kvm_xsave`).
pub const KVM_GET_XSAVE: u32 = ioc(R, 0xa4, KVM_XSAVE_SIZE);
/// `KVM_SET_XSAVE`.
pub const KVM_SET_XSAVE: u32 = ioc(W, 0xa5, KVM_XSAVE_SIZE);
/// `KVM_GET_XSAVE2` (declared with `struct kvm_xsave`; writes `KVM_CAP_XSAVE2` bytes).
pub const KVM_GET_XSAVE2: u32 = ioc(R, 0xcf, KVM_XSAVE_SIZE);
/// `KVM_GET_FPU` (`struct kvm_fpu`, 416 bytes).
pub const KVM_GET_FPU: u32 = ioc(R, 0x8c, KVM_FPU_SIZE);
/// `KVM_SET_FPU`.
pub const KVM_SET_FPU: u32 = ioc(W, 0x8d, KVM_FPU_SIZE);
/// `KVM_SET_USER_MEMORY_REGION` (`struct kvm_userspace_memory_region`, 32 bytes).
pub const KVM_SET_USER_MEMORY_REGION: u32 = ioc(W, 0x46, 32);
/// `KVM_X86_XCOMP_GUEST_SUPP` attribute of device-attribute group 0.
pub const KVM_X86_XCOMP_GUEST_SUPP: u64 = 0;

/// `KVM_CAP_XSAVE`.
pub const KVM_CAP_XSAVE: u32 = 55;
/// `KVM_CAP_XCRS`.
pub const KVM_CAP_XCRS: u32 = 56;
/// `KVM_CAP_XSAVE2`: the `KVM_GET_XSAVE2` buffer size (0 before 5.17).
pub const KVM_CAP_XSAVE2: u32 = 208;
