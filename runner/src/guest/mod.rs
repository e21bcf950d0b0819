//! A minimal 64-bit CPL3 guest on the backend's vCPU, running [`GuestProgram`]s.
//!
//! [`GuestVm::new`] maps a small guest memory ([`Layout`]) and writes identity page tables, a
//! GDT and a TSS; [`GuestVm::load_sregs`] loads the segment and control registers
//! (`KVM_SET_SREGS`, which KVM checks against the guest CPUID: CR4.OSXSAVE needs XSAVE, CR4.PKE
//! needs PKU). [`GuestVm::run`] copies a program ([`asm::assemble`]) and its inputs in, zeroes
//! the output area, loads RIP/RSP/RFLAGS and runs the vCPU until the program's end marker (an
//! MMIO write), a shutdown (any exception: there is no IDT), another exit, or the watchdog
//! (the run's bound: [`DEFAULT_TIMEOUT`] unless the caller gives another, `--guest-timeout`).
//!
//! Nothing here touches the FPU/XSAVE state or XCR0: `KVM_GET_XSAVE` after a run shows what
//! the program did.

pub mod asm;

use crate::sys::{self, GuestMemory, Watchdog};
use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs, KVM_SYNC_X86_REGS};
use kvm_ioctls::{Cap, SyncReg, VcpuExit, VcpuFd, VmFd};
use std::time::{Duration, Instant};
use xsave_oracle::guest::{Exit, GuestProgram};

/// Guest-physical layout (identity-mapped, so also the guest's linear addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of guest memory (one memory slot at GPA 0).
    pub mem_size: u64,
    /// Page-map level 4 (CR3).
    pub pml4: u64,
    /// Page-directory-pointer table.
    pub pdpt: u64,
    /// Page directory.
    pub pd: u64,
    /// Page table mapping 0..2 MiB with 4 KiB user pages (page 0 not present).
    pub pt: u64,
    /// GDT.
    pub gdt: u64,
    /// 64-bit TSS (104 bytes).
    pub tss: u64,
    /// Initial RSP (top of the stack page).
    pub stack_top: u64,
    /// Code area (RIP at its start).
    pub code: u64,
    /// Code area size.
    pub code_size: u64,
    /// Input area: one 64-byte aligned slice per action ([`asm::assemble`]).
    pub input: u64,
    /// Input area size.
    pub input_size: u64,
    /// Output area (XSAVE at offset 0), zeroed before every run.
    pub output: u64,
    /// Output area size.
    pub output_size: u64,
    /// Mapped in the page tables, outside every memory slot: a store there ends the program.
    pub mmio_exit: u64,
}

impl Layout {
    /// 148 KiB of guest memory: tables, GDT and TSS in pages 1..5, stack page 6, 32 KiB code
    /// at 0x8000, 68 KiB input at 0x10000 (32 actions of 2048 bytes, plus slack), 16 KiB output
    /// at 0x21000 (a standard XSAVE image with AMX is 11 KiB); end-of-program MMIO at 1 MiB.
    pub const STANDARD: Layout = Layout {
        mem_size: 0x25000,
        pml4: 0x1000,
        pdpt: 0x2000,
        pd: 0x3000,
        pt: 0x4000,
        gdt: 0x5000,
        tss: 0x5100,
        stack_top: 0x7000,
        code: 0x8000,
        code_size: 0x8000,
        input: 0x10000,
        input_size: 0x11000,
        output: 0x21000,
        output_size: 0x4000,
        mmio_exit: 0x10_0000,
    };
}

/// GDT selectors (RPL included).
pub mod selector {
    /// Data, DPL 3: SS, DS, ES, FS, GS.
    pub const USER_DS: u16 = 0x18 | 3;
    /// 64-bit code, DPL 3: CS.
    pub const USER_CS: u16 = 0x20 | 3;
    /// 64-bit TSS (two slots).
    pub const TSS: u16 = 0x28;
}

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE.
pub const CR4_PAE: u64 = 1 << 5;
/// CR4.OSFXSR.
pub const CR4_OSFXSR: u64 = 1 << 9;
/// CR4.OSXMMEXCPT.
pub const CR4_OSXMMEXCPT: u64 = 1 << 10;
/// CR4.OSXSAVE (KVM refuses it unless the guest CPUID has XSAVE).
pub const CR4_OSXSAVE: u64 = 1 << 18;
/// CR4.PKE (KVM refuses it unless the guest CPUID has PKU).
pub const CR4_PKE: u64 = 1 << 22;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const PTE_P_RW_US: u64 = 0x7;

/// Default CPU-time bound of one run (the vCPU thread's, guest execution included): what
/// `--guest-timeout` sets. A run stopped at its bound is a `timeout` exit whatever the bound.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);

/// Wall-clock bound of a run, whatever CPU time it used (a guest that waits in KVM_RUN
/// without running, e.g. halted, uses none); a CPU-time bound above it raises it to that bound.
pub const WALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Period of the watchdog's signals after the first (at the bound): a run ends within one
/// period (at most 1 ms, at most the bound) of its thread's CPU time reaching the bound.
pub fn watchdog_period(timeout: Duration) -> Duration {
    timeout.min(Duration::from_millis(1))
}

/// A failed guest ioctl or system call: what, and the errno (the step's `Ret::Err`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestError {
    /// The call.
    pub what: &'static str,
    /// Its errno.
    pub errno: i32,
}

impl std::fmt::Display for GuestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, std::io::Error::from_raw_os_error(self.errno))
    }
}

fn err(what: &'static str) -> impl Fn(i32) -> GuestError {
    move |errno| GuestError { what, errno }
}

fn kerr(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> GuestError {
    move |e| GuestError { what, errno: e.errno() }
}

/// The thread's watchdog in `slot`, created on first use (or when `slot` holds one of another
/// thread).
pub fn watchdog(slot: &mut Option<Watchdog>) -> Result<&Watchdog, GuestError> {
    if slot.as_ref().is_none_or(|w| w.tid() != sys::current_tid()) {
        *slot = None;
        *slot = Some(Watchdog::for_current_thread().map_err(err("timer_create"))?);
    }
    slot.as_ref().ok_or(GuestError { what: "timer_create", errno: libc::EIO })
}

fn segment(selector: u16, type_: u8, dpl: u8, code64: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_,
        present: 1,
        dpl,
        db: u8::from(!code64),
        s: 1,
        l: u8::from(code64),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A legacy 8-byte code/data descriptor (flat, 4 KiB granular).
fn descriptor(access: u8, flags: u8) -> u64 {
    0xFFFF | 0xF << 48 | u64::from(access) << 40 | u64::from(flags) << 52
}

/// The guest of one VM: its memory (a memory slot of that VM) and the sregs it runs with.
/// Drop it with (or before) the VM.
pub struct GuestVm {
    mem: GuestMemory,
    layout: Layout,
    sregs: kvm_sregs,
    /// The sregs must be loaded before the next run (never loaded, or a run ended in a way
    /// that may have changed them: shutdown, internal error, timeout).
    sregs_stale: bool,
    last_code_len: usize,
    sync_regs: bool,
}

/// What [`GuestVm::run`] produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// How the run ended.
    pub exit: Exit,
    /// The `KVM_EXIT_*` reason (0 for a timeout).
    pub reason: u32,
}

impl GuestVm {
    /// Map the guest memory of `vm` (memory slot 0) and write the tables; read the vCPU's
    /// sregs as the base of the guest's (`KVM_GET_SREGS`). CR4 is loaded by
    /// [`GuestVm::load_sregs`].
    pub fn new(vm: &VmFd, vcpu: &VcpuFd) -> Result<GuestVm, GuestError> {
        let l = Layout::STANDARD;
        let mut mem = GuestMemory::new(vm, 0, 0, l.mem_size as usize).map_err(err("KVM_SET_USER_MEMORY_REGION"))?;
        write_tables(&mut mem, &l);
        let sregs = build_sregs(vcpu.get_sregs().map_err(kerr("KVM_GET_SREGS"))?, &l);
        let sync_regs = vm.check_extension_int(Cap::SyncRegs) & KVM_SYNC_X86_REGS as i32 != 0;
        Ok(GuestVm { mem, layout: l, sregs, sregs_stale: true, last_code_len: 0, sync_regs })
    }

    /// The layout in use.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The CR4 the guest runs with (the last one given to [`GuestVm::load_sregs`]).
    pub fn cr4(&self) -> u64 {
        self.sregs.cr4
    }

    /// `KVM_SET_SREGS` with the guest's registers and `cr4`; on success the guest keeps `cr4`.
    pub fn load_sregs(&mut self, vcpu: &VcpuFd, cr4: u64) -> Result<(), GuestError> {
        let s = kvm_sregs { cr4, ..self.sregs };
        vcpu.set_sregs(&s).map_err(kerr("KVM_SET_SREGS"))?;
        self.sregs = s;
        self.sregs_stale = false;
        Ok(())
    }

    /// Read `dst.len()` bytes at the start of the output area.
    pub fn read_output(&self, dst: &mut [u8]) {
        assert!(dst.len() as u64 <= self.layout.output_size, "output read beyond the output area");
        self.mem.read(self.layout.output as usize, dst);
    }

    /// Run `prog` from the start of the code area with its inputs written, a zeroed output
    /// area, RSP at the stack top, RFLAGS = 2 and the other GPRs 0, bounded by `timeout` of the
    /// thread's CPU time ([`DEFAULT_TIMEOUT`] by default; `watchdog` must belong to the calling
    /// thread). The error is a failed ioctl (KVM_RUN other than EINTR, SET_SREGS/SET_REGS) or a
    /// program that does not fit (`E2BIG`).
    pub fn run(
        &mut self,
        vcpu: &mut VcpuFd,
        prog: &GuestProgram,
        watchdog: &Watchdog,
        timeout: Duration,
    ) -> Result<RunOutcome, GuestError> {
        let l = self.layout;
        let a = asm::assemble(prog, &l).map_err(|_| GuestError { what: "assemble", errno: libc::E2BIG })?;
        for (off, bytes) in &a.inputs {
            self.mem.write(l.input as usize + *off as usize, bytes);
        }
        self.run_code(vcpu, &a.code, watchdog, timeout)
    }

    /// Run raw 64-bit `code` the way [`GuestVm::run`] runs an assembled program (tests of the
    /// watchdog run code no program assembles to, such as a loop).
    pub fn run_code(&mut self, vcpu: &mut VcpuFd, code: &[u8], watchdog: &Watchdog, timeout: Duration) -> Result<RunOutcome, GuestError> {
        let l = self.layout;
        if code.len() as u64 > l.code_size {
            return Err(GuestError { what: "assemble", errno: libc::E2BIG });
        }
        self.mem.write(l.code as usize, code);
        if self.last_code_len > code.len() {
            self.mem.fill(l.code as usize + code.len(), self.last_code_len - code.len(), 0);
        }
        self.last_code_len = code.len();
        self.mem.fill(l.output as usize, l.output_size as usize, 0);
        if self.sregs_stale {
            self.load_sregs(vcpu, self.sregs.cr4)?;
        }
        let regs = kvm_regs { rip: l.code, rsp: l.stack_top, rflags: 2, ..Default::default() };
        if self.sync_regs {
            // Applied by KVM at the start of KVM_RUN (the KVM_SET_REGS code path): one vCPU
            // ioctl less per run.
            vcpu.sync_regs_mut().regs = regs;
            vcpu.set_sync_dirty_reg(SyncReg::Register);
        } else {
            vcpu.set_regs(&regs).map_err(kerr("KVM_SET_REGS"))?;
        }
        let out = enter(vcpu, &l, watchdog, timeout)?;
        if out.exit != Exit::End {
            self.sregs_stale = true;
        }
        Ok(out)
    }
}

/// `KVM_RUN` under the watchdog; an `EINTR` before the deadline (a stray signal) resumes.
fn enter(vcpu: &mut VcpuFd, l: &Layout, watchdog: &Watchdog, timeout: Duration) -> Result<RunOutcome, GuestError> {
    let start = Instant::now();
    let cpu = crate::sys::thread_cpu_time();
    let wall = WALL_TIMEOUT.max(timeout);
    watchdog.arm(timeout, watchdog_period(timeout)).map_err(err("timer_settime"))?;
    let out = loop {
        let exit = match vcpu.run() {
            Ok(VcpuExit::MmioWrite(addr, data)) if addr == l.mmio_exit && data == END_MARKER_BYTES => Exit::End,
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::InternalError | VcpuExit::FailEntry(..)) => Exit::Internal,
            Ok(_) => Exit::Other,
            Err(e) if e.errno() == libc::EINTR => {
                // The limit is the thread's CPU time (guest execution included), so a host too
                // loaded to schedule the vCPU thread does not turn a run into a timeout.
                if crate::sys::thread_cpu_time().saturating_sub(cpu) >= timeout || start.elapsed() >= wall {
                    break Ok(RunOutcome { exit: Exit::Timeout, reason: 0 });
                }
                continue;
            }
            Err(e) => break Err(GuestError { what: "KVM_RUN", errno: e.errno() }),
        };
        break Ok(RunOutcome { exit, reason: vcpu.get_kvm_run().exit_reason });
    };
    watchdog.disarm().map_err(err("timer_settime"))?;
    out
}

const END_MARKER_BYTES: [u8; 4] = asm::END_MARKER.to_le_bytes();

fn write_tables(mem: &mut GuestMemory, l: &Layout) {
    for (gpa, bytes) in tables(l) {
        mem.write(gpa as usize, &bytes);
    }
}

/// The bytes [`GuestVm::new`] writes into a fresh (zeroed) guest memory, as (guest-physical
/// address, bytes): identity page tables, the GDT and the TSS. The C reproducer embeds them.
pub fn tables(l: &Layout) -> Vec<(u64, Vec<u8>)> {
    let q = |v: u64| v.to_le_bytes().to_vec();
    let mut out = vec![(l.pml4, q(l.pdpt | PTE_P_RW_US)), (l.pdpt, q(l.pd | PTE_P_RW_US)), (l.pd, q(l.pt | PTE_P_RW_US))];
    // 4 KiB user pages over 0..2 MiB; page 0 stays not present so null accesses fault.
    let pt: Vec<u8> = (0..512u64).flat_map(|i| q(if i == 0 { 0 } else { i << 12 | PTE_P_RW_US })).collect();
    out.push((l.pt, pt));
    let tss_lo = 0x67 | (l.tss & 0xFF_FFFF) << 16 | 0x8B << 40 | (l.tss >> 24 & 0xFF) << 56;
    let gdt = [
        0,
        descriptor(0x9B, 0xA), // kernel code64 (unused)
        descriptor(0x93, 0xC), // kernel data (unused)
        descriptor(0xF3, 0xC), // user data, DPL 3
        descriptor(0xFB, 0xA), // user code64, DPL 3
        tss_lo,                // busy 64-bit TSS
        l.tss >> 32,
    ];
    let gdt: Vec<u8> = gdt.iter().flat_map(|d| d.to_le_bytes()).collect();
    out.push((l.gdt, gdt));
    // TSS: all stacks 0, I/O map base past the limit (no I/O bitmap).
    out.push((l.tss + 0x66, 0x68u16.to_le_bytes().to_vec()));
    out
}

/// Whether a run of `prog` reads the output area back as the run step's data (the program
/// stores an XSAVE image there).
pub fn reads_output(prog: &GuestProgram) -> bool {
    prog.actions.contains(&xsave_oracle::guest::GuestAction::Xsave)
}

/// The CR4 values a guest set-up tries, in order, with their names: stock KVM refuses
/// CR4.OSXSAVE without XSAVE and CR4.PKE without PKU in the guest CPUID (EINVAL), each on its
/// own, so the set-up drops PKE, or OSXSAVE, or both, and keeps the first value KVM does not
/// refuse with EINVAL (the oracle's rule `run.cr4.osxsave` decides the two bits
/// independently). `pke`: the host has PKRU.
pub fn cr4_tries(pke: bool) -> Vec<(u64, &'static str)> {
    let base = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    if pke {
        vec![
            (base | CR4_OSXSAVE | CR4_PKE, "KVM_SET_SREGS(cr4 full)"),
            (base | CR4_OSXSAVE, "KVM_SET_SREGS(cr4 -PKE)"),
            (base | CR4_PKE, "KVM_SET_SREGS(cr4 -OSXSAVE)"),
            (base, "KVM_SET_SREGS(cr4 -PKE -OSXSAVE)"),
        ]
    } else {
        vec![(base | CR4_OSXSAVE, "KVM_SET_SREGS(cr4 full)"), (base, "KVM_SET_SREGS(cr4 -PKE -OSXSAVE)")]
    }
}

/// The fields of `kvm_sregs` the guest set-up replaces (all others keep what `KVM_GET_SREGS`
/// returned): segments, descriptor tables, CR0, CR3, CR4 and EFER, as [`build_sregs`] sets
/// them on `base`.
pub fn build_sregs(mut s: kvm_sregs, l: &Layout) -> kvm_sregs {
    s.cs = segment(selector::USER_CS, 0xB, 3, true);
    let ds = segment(selector::USER_DS, 0x3, 3, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (ds, ds, ds, ds, ds);
    s.tr = kvm_segment { base: l.tss, limit: 0x67, selector: selector::TSS, type_: 0xB, present: 1, ..Default::default() };
    s.ldt = kvm_segment { type_: 0x2, unusable: 1, ..Default::default() };
    s.gdt.base = l.gdt;
    s.gdt.limit = 7 * 8 - 1;
    s.idt.base = 0;
    s.idt.limit = 0; // no IDT: every exception escalates to a triple fault (shutdown)
    s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
    s.cr3 = l.pml4;
    s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    s.efer = EFER_LME | EFER_LMA;
    s
}
