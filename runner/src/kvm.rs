//! The real-KVM backend: executes a case on `/dev/kvm`.
//!
//! VM and vCPU lifetime goes through kvm-ioctls; the XSAVE and CPUID ioctls go through
//! [`crate::sys`] with reused, aligned buffers so every byte (and oversized `nent`) reaches the
//! kernel unchanged. With pooling on, one vCPU is reused across cases after a reset sequence
//! that provably changes no observation (see [`KvmBackend::reset`] and the
//! `pooled_equals_fresh` test).
//!
//! `Op::RunGuest` sets up a [`GuestVm`] on the current VM at its first run, then runs the
//! program under the backend's watchdog ([`crate::guest`]). A vCPU that ran cannot be brought
//! back by the pool (`KVM_SET_CPUID2` fails after a run), so it is replaced by a fresh VM for
//! the next case; its guest memory goes with it.

use crate::guest::GuestVm;
use crate::sys::{self, AlignedBuf, Watchdog};
use crate::{Backend, BackendError};
use kvm_bindings::{kvm_xcr, kvm_xcrs};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xsave_oracle::abi::cpuid::{cpuid2_entry_offset, cpuid2_nent, cpuid2_trace, find_entry, read_cpuid2, write_cpuid2, MAX_CPUID_ENTRIES};
use xsave_oracle::abi::ioctl::KVM_CAP_XSAVE2;
use xsave_oracle::abi::xcrs::{KvmXcr, KvmXcrs};
use xsave_oracle::abi::{self, put};
use xsave_oracle::case::{Case, Op, XcrsImage, XsaveImage};
use xsave_oracle::guest::GuestProgram;
use xsave_oracle::trace::{OpResult, Ret, Trace};
use xsave_oracle::xfeatures::{PKRU, XTILE_DATA};
use xsave_oracle::HostFacts;

/// Bytes the backend pre-fills XSAVE2 buffers with, to see how many bytes the kernel wrote.
pub const CANARY: u8 = abi::CANARY;

struct Vm {
    /// The guest of this VM (memory slot, sregs), set up by its first run. Declared first so
    /// it is dropped (memory slot deleted, memory unmapped) before the descriptors close.
    guest: Option<GuestVm>,
    vm: VmFd,
    vcpu: VcpuFd,
    /// A case enabled a feature whose effect cannot be undone (AMX uabi growth), or the vCPU
    /// ran a guest (KVM refuses `KVM_SET_CPUID2` after a run).
    tainted: bool,
    /// State a SET was attempted on since the last reset (failed SETs included, so an
    /// atomicity bug in the kernel cannot leak state into the next case).
    dirty_cpuid: bool,
    dirty_xcr0: bool,
    dirty_xsave: bool,
}

/// Count and in-kernel time of one ioctl kind.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct IoctlStat {
    /// Calls.
    pub count: u64,
    /// Nanoseconds spent in the calls.
    pub nanos: u64,
}

fn timed<T>(stats: &mut BTreeMap<&'static str, IoctlStat>, name: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    let e = stats.entry(name).or_default();
    e.count += 1;
    e.nanos += t.elapsed().as_nanos() as u64;
    r
}

/// Executes cases on this host's `/dev/kvm`.
pub struct KvmBackend {
    kvm: Kvm,
    host: HostFacts,
    pool: bool,
    /// A pooled vCPU whose CPUID was set is reset with an empty KVM_SET_CPUID2 (the kernel
    /// treats that like a vCPU that never had one); otherwise it is not reused.
    empty_cpuid_resets: bool,
    cur: Option<Vm>,
    xbuf: AlignedBuf,
    cbuf: AlignedBuf,
    xsave_size: usize,
    stats: BTreeMap<&'static str, IoctlStat>,
    last_get: Option<Vec<u8>>,
    /// Interrupts runs that exceed `guest_timeout`; created at the first run.
    watchdog: Option<Watchdog>,
    /// CPU-time bound of one guest run ([`crate::guest::DEFAULT_TIMEOUT`] unless set with
    /// [`KvmBackend::with_guest_timeout`]).
    guest_timeout: Duration,
    last_cr4: Option<u64>,
    /// The kernel log, read after each case (the second oracle); `None` where unreadable.
    kmsg: Option<crate::kmsg::Kmsg>,
    /// Cases executed, and the one during which `XSAVE_RIG_TEST_KMSG_AT` injects a splat line.
    executed: u64,
    inject_at: Option<u64>,
}

/// Bytes of an XSAVE buffer on this host: `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`, at least
/// `sizeof(struct kvm_xsave)` (kernels before 5.17 report 0).
pub fn xsave_buffer_size(kvm: &Kvm) -> usize {
    (kvm.check_extension_raw(KVM_CAP_XSAVE2.into()).max(0) as usize).max(abi::KVM_XSAVE_SIZE)
}

fn ret(r: sys::IoResult) -> Ret {
    match r {
        Ok(v) => Ret::Ok(v),
        Err(e) => Ret::Err(e),
    }
}

impl KvmBackend {
    /// Open `/dev/kvm`. `host` are the facts the cases are rendered with (from the probe).
    pub fn new(host: HostFacts, pool: bool) -> Result<KvmBackend, BackendError> {
        let kvm = crate::open_kvm()?;
        let xsave_size = xsave_buffer_size(&kvm);
        let empty_cpuid_resets = pool && empty_cpuid_is_fresh(&kvm);
        Ok(KvmBackend {
            kvm,
            host,
            pool,
            empty_cpuid_resets,
            cur: None,
            xbuf: AlignedBuf::new(xsave_size),
            cbuf: AlignedBuf::new(cpuid2_entry_offset(MAX_CPUID_ENTRIES)),
            xsave_size,
            stats: BTreeMap::new(),
            last_get: None,
            watchdog: None,
            guest_timeout: crate::guest::DEFAULT_TIMEOUT,
            last_cr4: None,
            kmsg: crate::kmsg::Kmsg::open(),
            executed: 0,
            inject_at: std::env::var("XSAVE_RIG_TEST_KMSG_AT").ok().and_then(|v| v.parse().ok()),
        })
    }

    /// Whether a pooled vCPU whose CPUID was set is reused (reset with an empty table): where
    /// the kernel treats that like a fresh vCPU (not 5.10).
    pub fn reuses_cpuid_vcpus(&self) -> bool {
        self.empty_cpuid_resets
    }

    fn create(&mut self) -> Result<Vm, BackendError> {
        let kvm = &self.kvm;
        let vm =
            timed(&mut self.stats, "KVM_CREATE_VM", || kvm.create_vm()).map_err(|e| BackendError::Setup(format!("KVM_CREATE_VM: {e}")))?;
        let vcpu = timed(&mut self.stats, "KVM_CREATE_VCPU", || vm.create_vcpu(0))
            .map_err(|e| BackendError::Setup(format!("KVM_CREATE_VCPU: {e}")))?;
        Ok(Vm { guest: None, vm, vcpu, tainted: false, dirty_cpuid: false, dirty_xcr0: false, dirty_xsave: false })
    }

    /// Bring the pooled vCPU back to the observable state of a fresh one: empty CPUID table
    /// (gsx 0, `GET_CPUID2` nent 0), XCR0 1, PKRU 0 (if the host has PKRU), then XSTATE_BV 0
    /// (every component reads as init; stale kernel bytes are never reported because their
    /// bits are clear and MXCSR is reported only with SSE/YMM). Each part runs only if a SET
    /// touching it was attempted since the last reset. Returns false when a step failed, in
    /// which case the caller creates a fresh VM.
    fn reset(&mut self) -> bool {
        let Some(vm) = self.cur.as_mut() else { return false };
        if vm.tainted {
            return false;
        }
        // KVM_SET_CPUID2 with no entries gives back a vCPU that never had a CPUID table only
        // where the kernel treats both alike (measured at start, `empty_cpuid_is_fresh`): 5.10
        // keeps the CR4 bits an empty table reserves (rule run.v0.cr4_rsvd) where a fresh vCPU
        // reserves none. There a vCPU that had a KVM_SET_CPUID2 is not reused.
        if vm.dirty_cpuid && !self.empty_cpuid_resets {
            return false;
        }
        let vcpu = &vm.vcpu;
        let mut ok = true;
        if vm.dirty_cpuid {
            let cbuf = &mut self.cbuf;
            cbuf.bytes_mut()[..8].fill(0);
            ok &= timed(&mut self.stats, "KVM_SET_CPUID2", || sys::set_cpuid2(vcpu, cbuf)).is_ok();
        }
        if vm.dirty_xcr0 {
            let x = xcrs_struct(&XcrsImage::xcr0(1));
            ok &= timed(&mut self.stats, "KVM_SET_XCRS", || vcpu.set_xcrs(&x).map(|_| 0).map_err(|e| e.errno())).is_ok();
        }
        if vm.dirty_xsave {
            // Legacy bytes a SET_FPU (or a SET_XSAVE with FP/SSE) wrote stay in the kernel's
            // buffer under XSTATE_BV 0, and GET_FPU shows them: rewrite them as a fresh
            // vCPU's before clearing XSTATE_BV.
            let xbuf = &mut self.xbuf;
            XsaveImage::init(xsave_oracle::xfeatures::FPSSE).render_into(&self.host, xbuf.bytes_mut());
            ok &= timed(&mut self.stats, "KVM_SET_XSAVE", || sys::set_xsave(vcpu, xbuf)).is_ok();
            if self.host.supported_xcr0 & PKRU != 0 {
                let xbuf = &mut self.xbuf;
                XsaveImage::init(PKRU).render_into(&self.host, xbuf.bytes_mut());
                ok &= timed(&mut self.stats, "KVM_SET_XSAVE", || sys::set_xsave(vcpu, xbuf)).is_ok();
            }
            let xbuf = &mut self.xbuf;
            XsaveImage::init(0).render_into(&self.host, xbuf.bytes_mut());
            ok &= timed(&mut self.stats, "KVM_SET_XSAVE", || sys::set_xsave(vcpu, xbuf)).is_ok();
        }
        (vm.dirty_cpuid, vm.dirty_xcr0, vm.dirty_xsave) = (false, false, false);
        ok
    }

    /// Bound each guest run to `timeout` of the vCPU thread's CPU time (`--guest-timeout`). A
    /// run stopped there is a `timeout` exit whatever the bound (rule `run.timeout`), so the
    /// bound changes how long a looping guest costs, never a verdict.
    pub fn with_guest_timeout(mut self, timeout: Duration) -> KvmBackend {
        self.guest_timeout = timeout;
        self
    }

    /// The CPU-time bound of one guest run.
    pub fn guest_timeout(&self) -> Duration {
        self.guest_timeout
    }

    /// Without the kernel-log oracle (and its test hook): for the probe's own backends.
    pub fn without_kernel_log(mut self) -> KvmBackend {
        self.kmsg = None;
        self.inject_at = None;
        self
    }

    /// Per-ioctl counts and time spent inside the kernel.
    pub fn ioctl_stats(&self) -> &BTreeMap<&'static str, IoctlStat> {
        &self.stats
    }

    /// CR4 the last guest setup loaded (`None` before any run): PAE, OSFXSR, OSXMMEXCPT, plus
    /// OSXSAVE unless KVM refused it (no XSAVE in the guest CPUID) and PKE where the host has
    /// PKRU and KVM accepted it (PKU in the guest CPUID).
    pub fn last_cr4(&self) -> Option<u64> {
        self.last_cr4
    }

    /// `Op::RunGuest`: set up the guest on the first run of this vCPU, then run `prog`.
    fn run_guest(&mut self, prog: &GuestProgram) -> Result<(Ret, Vec<u8>), BackendError> {
        let vm = self.cur.as_mut().ok_or_else(|| BackendError::Setup("no vCPU".into()))?;
        // Even a failed setup may have loaded sregs: never hand this vCPU to the next case.
        vm.tainted = true;
        let st = &mut self.stats;
        if vm.guest.is_none() {
            let mut g = match timed(st, "GUEST_SETUP(memslot,GET_SREGS)", || GuestVm::new(&vm.vm, &vm.vcpu)) {
                Ok(g) => g,
                Err(e) => return Ok((Ret::Err(e.errno), Vec::new())),
            };
            let mut res = Err(libc::EINVAL);
            for (cr4, name) in crate::guest::cr4_tries(self.host.supported_xcr0 & PKRU != 0) {
                res = timed(st, name, || g.load_sregs(&vm.vcpu, cr4)).map_err(|e| e.errno);
                if res != Err(libc::EINVAL) {
                    break;
                }
            }
            if let Err(errno) = res {
                return Ok((Ret::Err(errno), Vec::new()));
            }
            self.last_cr4 = Some(g.cr4());
            vm.guest = Some(g);
        }
        let Some(g) = vm.guest.as_mut() else { unreachable!("guest set up above") };
        let wd = match crate::guest::watchdog(&mut self.watchdog) {
            Ok(w) => w,
            Err(e) => return Err(BackendError::Setup(e.to_string())),
        };
        let vcpu = &mut vm.vcpu;
        let bound = self.guest_timeout;
        match timed(st, "KVM_RUN", || g.run(vcpu, prog, wd, bound)) {
            Ok(out) => {
                let data = if crate::guest::reads_output(prog) {
                    let n = xsave_oracle::guest::output_size(&self.host).min(g.layout().output_size as usize);
                    let mut d = vec![0u8; n];
                    g.read_output(&mut d);
                    d
                } else {
                    Vec::new()
                };
                Ok((Ret::Ok(out.exit as i64), data))
            }
            Err(e) => Ok((Ret::Err(e.errno), Vec::new())),
        }
    }

    fn fresh_vcpu(&mut self) -> Result<(), BackendError> {
        if self.pool && self.reset() {
            return Ok(());
        }
        self.cur = None;
        self.cur = Some(self.create()?);
        Ok(())
    }

    fn step(&mut self, op: &Op) -> Result<(Ret, Vec<u8>), BackendError> {
        if *op == Op::NewVcpu {
            self.fresh_vcpu()?;
            return Ok((Ret::Ok(0), Vec::new()));
        }
        if let Op::RunGuest(prog) = op {
            return self.run_guest(prog);
        }
        let vm = self.cur.as_ref().ok_or_else(|| BackendError::Setup("no vCPU".into()))?;
        let vcpu = &vm.vcpu;
        let mut taint = false;
        let st = &mut self.stats;
        let out = match op {
            Op::NewVcpu => (Ret::Ok(0), Vec::new()),
            Op::SetCpuid2(t) => {
                let entries = t.render(&self.host);
                let n = entries.len();
                self.cbuf.ensure(cpuid2_entry_offset(n));
                write_cpuid2(self.cbuf.bytes_mut(), &entries);
                let cbuf = &mut self.cbuf;
                let r = timed(st, "KVM_SET_CPUID2", || sys::set_cpuid2(vcpu, cbuf));
                if r.is_ok() {
                    let d0 = find_entry(&entries, 0xd, Some(0));
                    taint = d0.is_some_and(|i| entries[i].eax as u64 & XTILE_DATA != 0);
                }
                (ret(r), Vec::new())
            }
            Op::GetCpuid2 { capacity } => {
                let cbuf = &mut self.cbuf;
                let r = timed(st, "KVM_GET_CPUID2", || sys::get_cpuid2(vcpu, cbuf, *capacity as u32));
                let data = match r {
                    Ok(_) => {
                        let b = self.cbuf.bytes();
                        let nent = cpuid2_nent(b);
                        let shown = (nent as usize).min(*capacity as usize);
                        cpuid2_trace(nent, &read_cpuid2(b, shown), shown)
                    }
                    Err(_) => Vec::new(),
                };
                (ret(r), data)
            }
            Op::SetXsave(img) => {
                img.render_into(&self.host, self.xbuf.bytes_mut());
                let xbuf = &mut self.xbuf;
                (ret(timed(st, "KVM_SET_XSAVE", || sys::set_xsave(vcpu, xbuf))), Vec::new())
            }
            Op::RestoreLast { force_xstate_bv } => {
                let b = self.xbuf.bytes_mut();
                b.fill(0);
                if let Some(last) = &self.last_get {
                    let n = last.len().min(b.len());
                    b[..n].copy_from_slice(&last[..n]);
                }
                if let Some(bv) = force_xstate_bv {
                    put(b, abi::XSTATE_BV, &bv.to_le_bytes());
                }
                let xbuf = &mut self.xbuf;
                (ret(timed(st, "KVM_SET_XSAVE", || sys::set_xsave(vcpu, xbuf))), Vec::new())
            }
            Op::GetXsave | Op::GetXsave2 => {
                let xsave2 = *op == Op::GetXsave2;
                let len = if xsave2 { self.xsave_size } else { abi::KVM_XSAVE_SIZE };
                self.xbuf.bytes_mut()[..len].fill(if xsave2 { CANARY } else { 0 });
                let xbuf = &mut self.xbuf;
                let r = if xsave2 {
                    timed(st, "KVM_GET_XSAVE2", || sys::get_xsave2(vcpu, xbuf))
                } else {
                    timed(st, "KVM_GET_XSAVE", || sys::get_xsave(vcpu, xbuf))
                };
                match r {
                    Ok(v) => {
                        let data = self.xbuf.bytes()[..len].to_vec();
                        let last = self.last_get.get_or_insert_with(Vec::new);
                        last.clear();
                        last.extend_from_slice(&data);
                        (Ret::Ok(v), data)
                    }
                    Err(e) => (Ret::Err(e), Vec::new()),
                }
            }
            Op::SetXcrs(x) => {
                let x = xcrs_struct(x);
                (ret(timed(st, "KVM_SET_XCRS", || vcpu.set_xcrs(&x).map(|_| 0).map_err(|e| e.errno()))), Vec::new())
            }
            Op::GetXcrs => match timed(st, "KVM_GET_XCRS", || vcpu.get_xcrs()) {
                Ok(x) => (Ret::Ok(0), xcrs_bytes(&x)),
                Err(e) => (Ret::Err(e.errno()), Vec::new()),
            },
            Op::CheckXsave2 => {
                let v = timed(st, "KVM_CHECK_EXTENSION", || vm.vm.check_extension_raw(KVM_CAP_XSAVE2.into()));
                (Ret::Ok(v as i64), Vec::new())
            }
            Op::SetFpu(img) => {
                let b = self.xbuf.bytes_mut();
                b[..abi::KVM_FPU_SIZE].copy_from_slice(&img.render());
                let xbuf = &mut self.xbuf;
                (ret(timed(st, "KVM_SET_FPU", || sys::set_fpu(vcpu, xbuf))), Vec::new())
            }
            Op::GetFpu => {
                self.xbuf.bytes_mut()[..abi::KVM_FPU_SIZE].fill(0);
                let xbuf = &mut self.xbuf;
                match timed(st, "KVM_GET_FPU", || sys::get_fpu(vcpu, xbuf)) {
                    Ok(v) => (Ret::Ok(v), self.xbuf.bytes()[..abi::KVM_FPU_SIZE].to_vec()),
                    Err(e) => (Ret::Err(e), Vec::new()),
                }
            }
            Op::RunGuest(_) => unreachable!("handled by run_guest"),
        };
        if let Some(vm) = self.cur.as_mut() {
            vm.tainted |= taint;
            match op {
                Op::SetCpuid2(_) => vm.dirty_cpuid = true,
                Op::SetXcrs(_) => vm.dirty_xcr0 = true,
                Op::SetXsave(_) | Op::RestoreLast { .. } | Op::SetFpu(_) => vm.dirty_xsave = true,
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The kvm-ioctls struct for `x`: its ABI encoding ([`XcrsImage::render`]) field by field.
fn xcrs_struct(x: &XcrsImage) -> kvm_xcrs {
    let k = KvmXcrs::from_bytes(&x.render());
    let mut s = kvm_xcrs { nr_xcrs: k.nr_xcrs, flags: k.flags, padding: k.padding, ..Default::default() };
    for (d, e) in s.xcrs.iter_mut().zip(k.xcrs) {
        *d = kvm_xcr { xcr: e.xcr, reserved: e.reserved, value: e.value };
    }
    s
}

/// The ABI bytes of what `KVM_GET_XCRS` returned.
fn xcrs_bytes(x: &kvm_xcrs) -> Vec<u8> {
    let mut k = KvmXcrs { nr_xcrs: x.nr_xcrs, flags: x.flags, padding: x.padding, ..KvmXcrs::default() };
    for (d, e) in k.xcrs.iter_mut().zip(x.xcrs) {
        *d = KvmXcr { xcr: e.xcr, reserved: e.reserved, value: e.value };
    }
    k.to_bytes().to_vec()
}

impl Backend for KvmBackend {
    fn name(&self) -> String {
        if self.pool {
            "kvm".into()
        } else {
            "kvm(fresh)".into()
        }
    }

    fn host(&self) -> &HostFacts {
        &self.host
    }

    fn execute(&mut self, case: &Case) -> Result<Trace, BackendError> {
        self.fresh_vcpu()?;
        if let Some(l) = self.last_get.as_mut() {
            l.clear();
        }
        let steps = case.steps();
        let mut results = Vec::with_capacity(steps.len());
        for (origin, op) in &steps {
            let (ret, data) = self.step(op)?;
            results.push(OpResult { data, ..OpResult::new(*origin, ret) });
        }
        if self.inject_at == Some(self.executed) {
            // Test hook: a WARN-shaped record logged while this case runs.
            let _ = crate::kmsg::Kmsg::inject(&format!(
                "<4>WARNING: CPU: 0 PID: {} at arch/x86/kvm/x86.c:0 xsave-rig injected test splat (case {})\n",
                std::process::id(),
                self.executed
            ));
        }
        self.executed += 1;
        Ok(Trace { results })
    }

    fn ioctls(&self) -> u64 {
        self.stats.values().map(|s| s.count).sum()
    }

    fn kernel_log(&mut self) -> Vec<String> {
        self.kmsg.as_mut().map(|k| k.splats()).unwrap_or_default()
    }
}

/// Whether `KVM_SET_CPUID2` with no entries leaves a vCPU's CR4 checks as a fresh vCPU has them:
/// CR4.OSXSAVE is accepted by both or refused by both. 5.10 accepts it on a fresh vCPU and
/// refuses it after an empty table (rule run.v0.cr4_rsvd). Any failure to measure says no.
fn empty_cpuid_is_fresh(kvm: &kvm_ioctls::Kvm) -> bool {
    let accepts = |set_empty: bool| -> Option<bool> {
        let vm = kvm.create_vm().ok()?;
        let vcpu = vm.create_vcpu(0).ok()?;
        if set_empty {
            let mut cbuf = AlignedBuf::new(cpuid2_entry_offset(0));
            sys::set_cpuid2(&vcpu, &mut cbuf).ok()?;
        }
        let mut s = vcpu.get_sregs().ok()?;
        s.cr4 |= crate::guest::CR4_OSXSAVE;
        Some(vcpu.set_sregs(&s).is_ok())
    };
    matches!((accepts(false), accepts(true)), (Some(a), Some(b)) if a == b)
}
