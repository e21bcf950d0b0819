//! The one place with `unsafe`: raw ioctls kvm-ioctls does not offer (or distorts: it refuses
//! CPUID buffers above 256 entries before the kernel sees them), two host queries
//! (`arch_prctl`, FXSAVE), and what guest programs need: guest memory (an anonymous mapping
//! registered as a KVM memory slot, [`GuestMemory`]) and the per-thread watchdog timer that
//! interrupts `KVM_RUN` ([`Watchdog`]). Every block states why it is sound.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::time::Duration;

use xsave_oracle::abi::cpuid::{cpuid2_entry_offset, cpuid2_nent, MAX_CPUID_ENTRIES};
use xsave_oracle::abi::fpu::KVM_FPU_SIZE;
use xsave_oracle::abi::ioctl::{
    KVM_GET_CPUID2, KVM_GET_DEVICE_ATTR, KVM_GET_FPU, KVM_GET_XSAVE, KVM_GET_XSAVE2, KVM_SET_CPUID2, KVM_SET_FPU,
    KVM_SET_USER_MEMORY_REGION, KVM_SET_XSAVE, KVM_X86_XCOMP_GUEST_SUPP,
};
use xsave_oracle::abi::KVM_XSAVE_SIZE;

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
    let nent = cpuid2_nent(buf.bytes()) as usize;
    // The kernel reads nent entries only when nent <= 256; make room for what it may read.
    buf.ensure(cpuid2_entry_offset(nent.min(MAX_CPUID_ENTRIES)));
    ioctl_buf(vcpu.as_raw_fd(), KVM_SET_CPUID2, buf)
}

/// `KVM_GET_CPUID2` with room for `capacity` entries; `buf` receives header and entries.
pub fn get_cpuid2(vcpu: &impl AsRawFd, buf: &mut AlignedBuf, capacity: u32) -> IoResult {
    let len = cpuid2_entry_offset(capacity as usize);
    buf.ensure(len);
    buf.bytes_mut()[..len].fill(0);
    buf.bytes_mut()[..4].copy_from_slice(&capacity.to_le_bytes());
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_CPUID2, buf)
}

/// `KVM_SET_XSAVE`: the kernel reads the vCPU's uabi_size bytes, which `buf` must cover
/// (callers size it to max(4096, KVM_CAP_XSAVE2)).
pub fn set_xsave(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= KVM_XSAVE_SIZE, "XSAVE buffer below 4096 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_SET_XSAVE, buf)
}

/// `KVM_GET_XSAVE` (writes exactly 4096 bytes).
pub fn get_xsave(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= KVM_XSAVE_SIZE, "XSAVE buffer below 4096 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_XSAVE, buf)
}

/// `KVM_GET_XSAVE2` (writes uabi_size bytes, at most KVM_CAP_XSAVE2, which `buf` covers).
pub fn get_xsave2(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= KVM_XSAVE_SIZE, "XSAVE buffer below 4096 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_XSAVE2, buf)
}

/// `KVM_SET_FPU`: the kernel reads the 416-byte `struct kvm_fpu` at the start of `buf`.
pub fn set_fpu(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= KVM_FPU_SIZE, "kvm_fpu buffer below 416 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_SET_FPU, buf)
}

/// `KVM_GET_FPU` (writes exactly 416 bytes).
pub fn get_fpu(vcpu: &impl AsRawFd, buf: &mut AlignedBuf) -> IoResult {
    assert!(buf.len() >= KVM_FPU_SIZE, "kvm_fpu buffer below 416 bytes");
    ioctl_buf(vcpu.as_raw_fd(), KVM_GET_FPU, buf)
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

/// Swap two paths atomically (`renameat2(RENAME_EXCHANGE)`): both must exist; afterwards each
/// name refers to what the other did, and no reader ever sees either name missing.
pub fn rename_exchange(a: &std::path::Path, b: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: both pointers are NUL-terminated strings owned by `ca` and `cb`, alive for the
    // call; renameat2 only reads them.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Send SIGTERM to process `pid` (a parallel campaign's worker).
pub fn terminate(pid: u32) {
    // SAFETY: kill(2) with a pid and a signal number touches no memory of ours.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// End a group stop this process may still be in: send it SIGCONT. A process started by a
/// ptrace-based supervisor (honggfuzz on Linux: the child stops itself with SIGSTOP, the
/// parent seizes it and continues it with ptrace) stays group-stopped as far as the kernel's
/// signal state goes; an untraced thread created later, such as KVM's `kvm-nx-lpage-recovery`
/// vhost task (spawned at a VM's first KVM_RUN), then joins that stop and never runs, and
/// destroying the VM waits for it forever (`vhost_task_stop`). SIGCONT clears the stop; to a
/// process that is not stopped it does nothing.
pub fn continue_self() {
    // SAFETY: kill(2) with our own pid and a signal number touches no memory of ours.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGCONT);
    }
}

/// Guest physical memory: an anonymous private mapping registered as one KVM memory slot.
///
/// It keeps its own duplicate of the VM descriptor so that `Drop` deletes the memory slot
/// *before* unmapping: the VM never keeps a slot pointing at unmapped (or later re-used) host
/// memory, whatever the order the caller drops things in.
///
/// Concurrency invariant: the guest writes this memory only inside `KVM_RUN` of a vCPU of this
/// VM. The rig runs one vCPU, from the thread that owns this value, and the host-side copies
/// below take `&self`/`&mut self`, so they never overlap a guest write.
pub struct GuestMemory {
    ptr: *mut u8,
    len: usize,
    gpa: u64,
    slot: u32,
    vm: OwnedFd,
}

// SAFETY: the value exclusively owns its mapping and its descriptor; nothing in it is tied to
// the creating thread, so moving it to another thread is sound (it is not `Sync`).
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// Map `len` zeroed bytes (a multiple of 4 KiB) and register them as memory slot `slot` at
    /// guest-physical address `gpa` of the VM `vm`. The error is an errno.
    pub fn new(vm: &impl AsRawFd, slot: u32, gpa: u64, len: usize) -> Result<GuestMemory, i32> {
        if len == 0 || len & 0xfff != 0 || gpa & 0xfff != 0 {
            return Err(libc::EINVAL);
        }
        // SAFETY: `dup` of a descriptor borrowed for the call; the result is checked.
        let dup = unsafe { libc::dup(vm.as_raw_fd()) };
        if dup < 0 {
            return Err(errno());
        }
        // SAFETY: `dup` is a valid, open descriptor returned above and owned by nobody else.
        let vm = unsafe { OwnedFd::from_raw_fd(dup) };
        // SAFETY: a fresh anonymous private mapping at an address the kernel chooses: it
        // aliases no Rust object. The result is checked against MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(errno());
        }
        let mem = GuestMemory { ptr: ptr.cast(), len, gpa, slot, vm };
        mem.set_slot(len as u64)?;
        Ok(mem)
    }

    fn set_slot(&self, size: u64) -> Result<(), i32> {
        // struct kvm_userspace_memory_region { u32 slot, flags; u64 gpa, size, hva; }
        let region: [u64; 4] = [u64::from(self.slot), self.gpa, size, self.ptr as u64];
        // SAFETY: `self.vm` is a KVM VM descriptor and `region` a valid 32-byte
        // `kvm_userspace_memory_region` (slot, flags 0) the kernel only reads. The host range it
        // names is our own mapping of exactly `len` bytes, which stays mapped until `Drop`, and
        // `Drop` deletes the slot (size 0) before unmapping.
        let r = unsafe { libc::ioctl(self.vm.as_raw_fd(), KVM_SET_USER_MEMORY_REGION as libc::c_ulong, region.as_ptr()) };
        if r < 0 {
            Err(errno())
        } else {
            Ok(())
        }
    }

    fn check(&self, offset: usize, n: usize) {
        assert!(offset.checked_add(n).is_some_and(|end| end <= self.len), "guest memory access {offset:#x}+{n:#x} beyond {:#x}", self.len);
    }

    /// Copy `src` into guest memory at byte `offset`. Panics when out of bounds.
    pub fn write(&mut self, offset: usize, src: &[u8]) {
        self.check(offset, src.len());
        // SAFETY: bounds checked above, so the destination lies inside our live mapping; `src`
        // cannot overlap it (no Rust reference into the mapping is ever handed out), and no
        // guest write is concurrent (the type's invariant, `&mut self`).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.add(offset), src.len()) };
    }

    /// Set `n` bytes at `offset` to `byte`. Panics when out of bounds.
    pub fn fill(&mut self, offset: usize, n: usize, byte: u8) {
        self.check(offset, n);
        // SAFETY: bounds checked above; exclusive access as in `write`.
        unsafe { std::ptr::write_bytes(self.ptr.add(offset), byte, n) };
    }

    /// Copy `dst.len()` bytes at `offset` into `dst`. Panics when out of bounds.
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        self.check(offset, dst.len());
        // SAFETY: bounds checked above; the source lies inside our live mapping, all of it
        // initialised (anonymous memory is zero-filled); `dst` is a distinct Rust slice, and the
        // guest is not running (the type's invariant).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(offset), dst.as_mut_ptr(), dst.len()) };
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // Delete the slot first. If that fails, leak the mapping on purpose: unmapping it could
        // let the guest reach whatever the process maps there next.
        if self.set_slot(0).is_err() {
            return;
        }
        // SAFETY: exactly the mapping created in `new`; no Rust reference into it exists and
        // KVM no longer has it in a memory slot.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

extern "C" fn on_watchdog_signal(_: libc::c_int) {}

/// CPU time the calling thread has used (`CLOCK_THREAD_CPUTIME_ID`), guest execution inside
/// `KVM_RUN` included: what a run's time limit counts, so a loaded host (a thread waiting for
/// a CPU) does not look like a guest that never exits.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call; the clock id is
    // a constant the kernel supports for the calling thread.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// The signal the watchdog sends (a real-time signal nothing else in the process uses).
pub fn watchdog_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

fn install_watchdog_handler() -> Result<(), i32> {
    static RESULT: OnceLock<Result<(), i32>> = OnceLock::new();
    *RESULT.get_or_init(|| {
        // SAFETY: a zeroed `sigaction` is a valid "no flags, empty mask" value; the handler is
        // async-signal-safe (it does nothing); the pointers passed are valid for the call.
        let rc = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_watchdog_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0; // no SA_RESTART: KVM_RUN must come back with EINTR
            libc::sigaction(watchdog_signal(), &sa, std::ptr::null_mut())
        };
        if rc != 0 {
            Err(errno())
        } else {
            Ok(())
        }
    })
}

/// Kernel id of the calling thread.
pub fn current_tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// A POSIX timer sending [`watchdog_signal`] to the thread that created it: first at the
/// deadline, then periodically until disarmed, so a signal landing just before `KVM_RUN`
/// enters the guest (consumed by the no-op handler) is followed by one that interrupts the run
/// with `EINTR`.
#[derive(Debug)]
pub struct Watchdog {
    timer: libc::timer_t,
    tid: i32,
}

// SAFETY: a `timer_t` is a process-wide id usable from any thread, exclusively owned here.
// (After a move it still signals the creating thread; callers compare `tid`.)
unsafe impl Send for Watchdog {}

impl Watchdog {
    /// A timer bound to the calling thread. The error is an errno.
    pub fn for_current_thread() -> Result<Watchdog, i32> {
        install_watchdog_handler()?;
        let tid = current_tid();
        let mut timer: libc::timer_t = std::ptr::null_mut();
        // SAFETY: all-zero is a valid `sigevent`; the fields set are the documented ones for
        // SIGEV_THREAD_ID; `timer` is a valid out-pointer; the result is checked.
        let rc = unsafe {
            let mut sev: libc::sigevent = std::mem::zeroed();
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = watchdog_signal();
            sev.sigev_notify_thread_id = tid;
            libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer)
        };
        if rc != 0 {
            return Err(errno());
        }
        Ok(Watchdog { timer, tid })
    }

    /// The thread the timer signals.
    pub fn tid(&self) -> i32 {
        self.tid
    }

    fn settime(&self, first: Duration, every: Duration) -> Result<(), i32> {
        let ts = |d: Duration| libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: d.subsec_nanos() as libc::c_long };
        let spec = libc::itimerspec { it_interval: ts(every), it_value: ts(first) };
        // SAFETY: `self.timer` is live (created in `for_current_thread`, deleted only in Drop);
        // `spec` is a valid itimerspec; a null old-value pointer is allowed.
        if unsafe { libc::timer_settime(self.timer, 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(errno());
        }
        Ok(())
    }

    /// Fire after `after`, then every `every` until [`Watchdog::disarm`].
    pub fn arm(&self, after: Duration, every: Duration) -> Result<(), i32> {
        // A zero it_value would disarm the timer.
        self.settime(after.max(Duration::from_nanos(1)), every.max(Duration::from_micros(100)))
    }

    /// Stop the timer. A signal already generated goes to the no-op handler when this call
    /// returns to user space, so it cannot interrupt a later `KVM_RUN`.
    pub fn disarm(&self) -> Result<(), i32> {
        self.settime(Duration::ZERO, Duration::ZERO)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: created in `for_current_thread`, deleted exactly once.
        unsafe { libc::timer_delete(self.timer) };
    }
}
