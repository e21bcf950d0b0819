//! The one place with `unsafe`: raw ioctls kvm-ioctls does not offer (or distorts: it refuses
//! CPUID buffers above 256 entries before the kernel sees them), and two host queries
//! (`arch_prctl`, FXSAVE). Every block states why it is sound.

use std::os::fd::{AsRawFd, RawFd};

const KVMIO: u32 = 0xAE;
const fn ioc(dir: u32, nr: u32, size: u32) -> u32 {
    (dir << 30) | (size << 16) | (KVMIO << 8) | nr
}
const W: u32 = 1;
const R: u32 = 2;
/// `KVM_GET_DEVICE_ATTR` (system fd on x86).
pub const KVM_GET_DEVICE_ATTR: u32 = ioc(W, 0xe2, 24);
/// `KVM_SET_CPUID2`.
pub const KVM_SET_CPUID2: u32 = ioc(W, 0x90, 8);
/// `KVM_GET_CPUID2`.
pub const KVM_GET_CPUID2: u32 = ioc(R | W, 0x91, 8);
/// `KVM_GET_XSAVE`.
pub const KVM_GET_XSAVE: u32 = ioc(R, 0xa4, 4096);
/// `KVM_SET_XSAVE`.
pub const KVM_SET_XSAVE: u32 = ioc(W, 0xa5, 4096);
/// `KVM_GET_XSAVE2`.
pub const KVM_GET_XSAVE2: u32 = ioc(R, 0xcf, 4096);
/// `KVM_X86_XCOMP_GUEST_SUPP` attribute of group 0.
pub const KVM_X86_XCOMP_GUEST_SUPP: u64 = 0;

/// Result of a raw ioctl: the return value or the errno.
pub type IoResult = Result<i64, i32>;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// An owned, 64-byte aligned, zero-initialised byte buffer for ioctl structs.
pub struct AlignedBuf {
    words: Vec<u64>,
    len: usize,
}

impl AlignedBuf {
    /// `len` zero bytes.
    pub fn new(len: usize) -> AlignedBuf {
        AlignedBuf { words: vec![0u64; len.div_ceil(8).max(1)], len }
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        let all: &[u8] = bytemuck_bytes(&self.words);
        &all[..self.len]
    }
    /// The bytes, mutable.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        let all: &mut [u8] = bytemuck_bytes_mut(&mut self.words);
        &mut all[..len]
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Never empty in practice.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Grow (zero-filled) to at least `len` bytes.
    pub fn ensure(&mut self, len: usize) {
        if len > self.len {
            self.words.resize(len.div_ceil(8), 0);
            self.len = len;
        }
    }
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }
}

fn bytemuck_bytes(w: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding and any byte pattern is a valid u8; the slice covers exactly
    // the memory of `w` and inherits its lifetime.
    unsafe { std::slice::from_raw_parts(w.as_ptr().cast(), std::mem::size_of_val(w)) }
}

fn bytemuck_bytes_mut(w: &mut [u64]) -> &mut [u8] {
    // SAFETY: as above; the exclusive borrow of `w` is transferred to the returned slice.
    unsafe { std::slice::from_raw_parts_mut(w.as_mut_ptr().cast(), std::mem::size_of_val(w)) }
}

/// An ioctl whose argument is a buffer the kernel reads and/or writes.
///
/// The caller guarantees `buf` is at least as large as what the kernel accesses for `req`
/// (each wrapper below checks it).
fn ioctl_buf(fd: RawFd, req: u32, buf: &mut AlignedBuf) -> IoResult {
    // SAFETY: `buf` is a live, exclusively borrowed allocation of `buf.len()` bytes; the
    // wrappers only pass requests whose kernel accesses stay within that length.
    let r = unsafe { libc::ioctl(fd, req as libc::c_ulong, buf.as_mut_ptr()) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(r as i64)
    }
}

/// `KVM_GET_DEVICE_ATTR(group 0, KVM_X86_XCOMP_GUEST_SUPP)` on the system fd.
pub fn xcomp_guest_supp(kvm: &impl AsRawFd) -> Result<u64, i32> {
    let mut value = 0u64;
    let attr: [u64; 3] = [0, KVM_X86_XCOMP_GUEST_SUPP, std::ptr::addr_of_mut!(value) as u64];
    // SAFETY: `attr` is a valid `struct kvm_device_attr` (flags 0, group 0, attr, addr) whose
    // `addr` points at `value`, a live u64 the kernel writes 8 bytes to.
    let r = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_DEVICE_ATTR as libc::c_ulong, attr.as_ptr()) };
    if r < 0 {
        Err(errno())
    } else {
        Ok(value)
    }
}

/// `KVM_SET_CPUID2` with `nent` and raw 40-byte entries already in `buf` (header at 0).
pub fn set_cpuid2(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    let nent = u32::from_le_bytes([buf.bytes()[0], buf.bytes()[1], buf.bytes()[2], buf.bytes()[3]]) as usize;
    // The kernel reads nent entries only when nent <= 256; make room for what it may read.
    buf.ensure(8 + nent.min(256) * 40);
    ioctl_buf(vcpu.as_raw_fd(), KVM_SET_CPUID2, buf)
}

/// `KVM_GET_CPUID2` with room for `capacity` entries; `buf` receives header and entries.
pub fn get_cpuid2(vcpu: &impl AsRawFd, buf: &mut AlignedBuf, capacity: u32) -> IoResult {
    buf.ensure(8 + capacity as usize * 40);
    buf.bytes_mut()[..8 + capacity as usize * 40].fill(0);
    buf.bytes_mut()[..4].copy_from_slice(&capacity.to_le_bytes());
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_CPUID2, buf)
}

/// `KVM_SET_XSAVE`: the kernel reads the vCPU's uabi_size bytes, which `buf` must cover
/// (callers size it to max(4096, KVM_CAP_XSAVE2)).
pub fn set_xsave(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= 4096, "XSAVE buffer below 4096 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_SET_XSAVE, buf)
}

/// `KVM_GET_XSAVE` (writes exactly 4096 bytes).
pub fn get_xsave(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= 4096, "XSAVE buffer below 4096 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_XSAVE, buf)
}

/// `KVM_GET_XSAVE2` (writes uabi_size bytes, at most KVM_CAP_XSAVE2, which `buf` covers).
pub fn get_xsave2(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= 4096, "XSAVE buffer below 4096 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_XSAVE2, buf)
}

const ARCH_GET_XCOMP_SUPP: libc::c_ulong = 0x1021;
const ARCH_GET_XCOMP_GUEST_PERM: libc::c_ulong = 0x1024;

fn arch_prctl_get(code: libc::c_ulong) -> Option<u64> {
    let mut v = 0u64;
    // SAFETY: these arch_prctl codes write one u64 through the pointer, which points at `v`.
    let r = unsafe { libc::syscall(libc::SYS_arch_prctl, code, std::ptr::addr_of_mut!(v)) };
    (r == 0).then_some(v)
}

/// `ARCH_GET_XCOMP_SUPP`: the host's user XCR0 (`fpu_user_cfg.max_features`), 5.16+.
pub fn xcomp_supp() -> Option<u64> {
    arch_prctl_get(ARCH_GET_XCOMP_SUPP)
}

/// `ARCH_GET_XCOMP_GUEST_PERM`: xfeatures this process may expose to guests, 5.17+.
pub fn xcomp_guest_perm() -> Option<u64> {
    arch_prctl_get(ARCH_GET_XCOMP_GUEST_PERM)
}

#[repr(C, align(64))]
struct FxArea([u8; 512]);

/// The host CPU's FXSAVE MXCSR_MASK.
pub fn fxsave_mxcsr_mask() -> u32 {
    let mut area = FxArea([0; 512]);
    // SAFETY: FXSAVE writes 512 bytes to a 16-byte aligned area; `area` is 512 bytes, 64-byte
    // aligned and exclusively borrowed. fxsr is part of the x86_64 baseline.
    unsafe { core::arch::x86_64::_fxsave64(area.0.as_mut_ptr()) };
    u32::from_le_bytes([area.0[28], area.0[29], area.0[30], area.0[31]])
}

/// Ask the kernel to send SIGTERM to this process when its parent dies (parallel campaign
/// workers must not outlive a killed parent).
pub fn die_with_parent() {
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
    }
}

/// Send SIGTERM to process `pid` (a parallel campaign's worker).
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid and a signal number touches no memory of ours.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}
