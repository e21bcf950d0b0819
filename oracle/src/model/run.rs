//! `KVM_RUN` of a guest program (spec §7): the rig's set-up (CR4), entry load, the program's
//! actions and faults, the guest's own XSAVE, and the kernel's save when the run returns, with
//! the processor's choices (XINUSE, FIP, FCW, FSW, x87 pointers) as allowed sets.

use super::{ret_err, user_xfeatures, Contract, Model, NOT_SIGNIFICANT};
use crate::abi::cpuid::find_entry;
use crate::abi::{self, le32, le64, put};
use crate::case::Origin;
use crate::host::Quirk;
use crate::rules::Rule;
use crate::trace::{Allowed, OpResult, Ret, EINVAL};
use crate::xfeatures::*;

impl Model<'_> {
    /// Hardware XCR0 while the guest runs.
    pub(super) fn hw_xcr0(&self) -> u64 {
        if self.quirk(Quirk::PvmHwXcr0) {
            self.host.host_xcr0
        } else {
            self.vcpu.xcr0
        }
    }

    /// CR4.OSXSAVE and CR4.PKE as `KVM_SET_SREGS` accepts them now: OSXSAVE needs XSAVE in the
    /// guest CPUID, PKE needs PKU there (and the host's PKRU) — except under `pvm-hw-xcr0`, and
    /// on V0 before the first `KVM_SET_CPUID2`: 5.10's `kvm_valid_cr4` tests
    /// `vcpu->arch.cr4_guest_rsvd_bits`, which only `kvm_vcpu_after_set_cpuid` computes
    /// (`__cr4_reserved_bits(guest_cpuid_has, vcpu)`) and which is zero until then.
    pub(super) fn cr4_accepted(&self, rules: &mut Vec<Rule>) -> (bool, bool) {
        let t = &self.vcpu.cpuid;
        let leaf1 = find_entry(t, 1, NOT_SIGNIFICANT).map_or(0, |i| t[i].ecx);
        let leaf7 = find_entry(t, 7, Some(0)).map_or(0, |i| t[i].ecx);
        let pvm = self.quirk(Quirk::PvmHwXcr0);
        let v0 = self.contract() == Contract::V0;
        let lax = pvm || (v0 && !self.vcpu.cpuid_set);
        rules.push(match (pvm, v0) {
            (true, _) => Rule::QuirkPvmHwXcr0,
            (false, true) => Rule::RunV0Cr4Rsvd,
            (false, false) => Rule::RunCr4Osxsave,
        });
        (lax || leaf1 & (1 << 26) != 0, self.host.supported_xcr0 & PKRU != 0 && (lax || leaf7 & (1 << 3) != 0))
    }

    /// The CR4 bits the rig's first guest set-up loads (it drops a bit KVM refuses).
    pub(super) fn setup_cr4(&mut self, rules: &mut Vec<Rule>) {
        (self.vcpu.cr4_osxsave, self.vcpu.cr4_pke) = self.cr4_accepted(rules);
    }

    /// V0 on an AMD (SVM) host: a shutdown leaves its event queued (`run.v0.shutdown.requeued`).
    pub(super) fn shutdown_requeues(&self) -> bool {
        self.contract() == Contract::V0 && self.host.vendor_amd() && !self.quirk(Quirk::PvmHwXcr0)
    }

    /// `KVM_RUN`. Under quirk `kvm-fpu-legacy`, a `KVM_SET_FPU` that wrote FP or SSE state while
    /// the last hardware save left that XSTATE_BV bit to the processor (the component was at
    /// init: XINUSE may have been clear) is loaded only if the bit was saved set:
    /// `kvm_arch_vcpu_ioctl_set_fpu` writes the legacy area and never `xfeatures`, and the
    /// entry's `kvm_load_guest_fpu` → `fpu_swap_kvm_fpstate` → `restore_fpregs_from_fpstate`
    /// XRSTOR(S) initialises every component whose bit is clear (rule `quirk.fpu.run_init`).
    /// The run is predicted with the bit set; the bit-clear run's bytes (the guest's XSAVE, and
    /// the legacy area later GETs report) are allowed, and adopted once an observation shows
    /// them. A case whose two runs end differently (exit code) is predicted with the bit set.
    pub(super) fn kvm_run(&mut self, origin: Origin, prog: &crate::guest::GuestProgram) -> OpResult {
        let unsure = self.vcpu.fpu_unsure & self.vcpu.kbv_free & self.vcpu.kbv;
        self.vcpu.fpu_unsure = 0;
        if unsure == 0 {
            return self.run_guest(origin, prog);
        }
        let mut clear = self.vcpu.clone();
        clear.kbv &= !unsure;
        clear.kbv_free &= !unsure;
        let set = std::mem::replace(&mut self.vcpu, clear);
        let b = self.run_guest(origin, prog);
        let b_vcpu = std::mem::replace(&mut self.vcpu, set);
        let mut r = self.run_guest(origin, prog);
        if b.ret != r.ret || b.data.len() != r.data.len() || matches!(r.ret, Ret::Err(_)) {
            return r;
        }
        let rule = Rule::QuirkFpuRunInit;
        for (s, e) in differing_chunks(&r.data, &b.data) {
            r.allowed.push(Allowed::OneOf { start: s as u32, values: vec![b.data[s..e].to_vec()], rule });
        }
        r.allowed.extend(b.allowed);
        r.rules.push(rule);
        let v = &mut self.vcpu;
        for (s, e) in differing_chunks(&v.kbuf[..abi::LEGACY_SIZE], &b_vcpu.kbuf[..abi::LEGACY_SIZE]) {
            let under = match s {
                abi::MXCSR..abi::ST => SSE | YMM,
                abi::XMM.. => SSE,
                _ => FP,
            };
            v.legacy_alts.push((s, vec![b_vcpu.kbuf[s..e].to_vec()], rule, under));
        }
        v.kbv_free |= b_vcpu.kbv_free & FPSSE & v.kbv;
        v.run_alt = Some((Box::new(b_vcpu), rule));
        r
    }

    /// One run of the program on the vCPU as it is.
    fn run_guest(&mut self, origin: Origin, prog: &crate::guest::GuestProgram) -> OpResult {
        use crate::guest::{faults, output_size, Exit, GuestAction, Regs};
        let host = self.host;
        let mut rules = vec![Rule::RunEntryLoad];
        if !self.vcpu.ran {
            // The rig's long-mode set-up (KVM_SET_SREGS with EFER.LME|LMA) needs LM in the
            // guest CPUID upstream; PVM does not consult it.
            let t = &self.vcpu.cpuid;
            let lm = find_entry(t, 0x8000_0001, NOT_SIGNIFICANT).is_some_and(|i| t[i].edx & (1 << 29) != 0);
            // Measured boundary, not a pinned commit: 5.10 (V0) accepts EFER.LME without LM
            // in KVM_SET_SREGS, 6.1 and later refuse it.
            if !lm && !self.quirk(Quirk::PvmHwXcr0) && self.contract() != Contract::V0 {
                return ret_err(origin, EINVAL, vec![Rule::RunSetupLongMode]);
            }
            self.setup_cr4(&mut rules);
        } else if self.vcpu.reload {
            // After a run that did not end at its marker the rig loads its set-up's sregs again,
            // same CR4; a KVM_SET_CPUID2 since (V0 accepts one after a run) may now reserve
            // OSXSAVE or PKE: KVM_SET_SREGS fails with EINVAL and the vCPU does not run.
            rules.push(Rule::RunSetupReload);
            let (osxsave, pke) = self.cr4_accepted(&mut rules);
            if (self.vcpu.cr4_osxsave && !osxsave) || (self.vcpu.cr4_pke && !pke) {
                return ret_err(origin, EINVAL, rules);
            }
        }
        let hw = if self.vcpu.cr4_osxsave { self.hw_xcr0() } else { FP | SSE };
        if !self.quirk(Quirk::PvmHwXcr0) {
            rules.push(Rule::RunHwXcr0Guest);
        }
        // Entry: the image is loaded; components whose bit is clear enter at init.
        let mut regs = Regs { image: self.vcpu.kbuf.clone(), pkru: self.vcpu.upkru };
        let k = self.vcpu.kbv;
        if k & FP == 0 {
            regs.image[..abi::MXCSR].fill(0);
            put(&mut regs.image, abi::FCW, &abi::FCW_INIT.to_le_bytes());
            for i in 0..8 {
                regs.image[abi::ST + 16 * i..abi::ST + 16 * i + 10].fill(0);
            }
        }
        if k & SSE == 0 {
            regs.image[abi::XMM..abi::XMM_END].fill(0);
        }
        // FCW's reserved bits after the load are the processor's choice (run.fcw.reserved).
        let stored_mxcsr = regs.image[abi::MXCSR..abi::MXCSR + 4].to_vec();
        if k & (SSE | YMM) == 0 {
            // Neither SSE nor YMM in XSTATE_BV: MXCSR enters at init (a compacted XRSTORS);
            // with SSE clear the processor may load the stored value or initialise it.
            put(&mut regs.image, abi::MXCSR, &abi::MXCSR_INIT.to_le_bytes());
        }
        let entry_mxcsr = regs.image[abi::MXCSR..abi::MXCSR + 4].to_vec();
        let carried = self.vcpu.mxcsr_alt.take().map(|(alt, _)| alt);
        let mxcsr_alt = if k & SSE == 0 {
            let other = if entry_mxcsr == stored_mxcsr { abi::MXCSR_INIT.to_le_bytes().to_vec() } else { stored_mxcsr.clone() };
            (other != entry_mxcsr).then_some(other)
        } else {
            carried
        };
        for c in host.components.iter().filter(|c| c.bit != PKRU_BIT && k & (1u64 << c.bit) == 0) {
            if let Some(r) = regs.image.get_mut(c.offset as usize..(c.offset + c.size) as usize) {
                r.fill(0);
            }
        }
        let mut out = Vec::new();
        let mut allowed = Vec::new();
        let mut exit = Exit::End;
        let stores = prog.actions.contains(&GuestAction::Xsave);
        if stores {
            out = vec![0u8; output_size(host)];
        }
        // V0 on AMD: the event a shutdown left queued is injected at entry; with no IDT its
        // delivery triple-faults before the program's first instruction.
        let requeued = self.vcpu.event_queued;
        if requeued {
            exit = Exit::Shutdown;
            rules.push(Rule::RunV0ShutdownRequeued);
        }
        for a in prog.actions.iter().filter(|_| !requeued) {
            let xsave_fault = *a == GuestAction::Xsave && !self.vcpu.cr4_osxsave;
            let pending_mf = !self.quirk(Quirk::TcgX87NoMf);
            if !pending_mf && matches!(a, GuestAction::Fldcw { .. }) && crate::guest::x87_pending(&regs.image) {
                rules.push(Rule::QuirkTcgX87NoMf);
            }
            if xsave_fault || faults(host, &regs, a, hw, self.vcpu.cr4_pke, pending_mf) {
                exit = Exit::Shutdown;
                rules.push(Rule::RunFault);
                break;
            }
            if *a == GuestAction::Spin {
                // The guest loops until the rig's watchdog stops it: a timeout whatever the
                // bound; the registers keep what the actions before it wrote.
                exit = Exit::Timeout;
                rules.push(Rule::RunTimeout);
                break;
            }
            if *a == GuestAction::Xsave {
                allowed = self.guest_xsave(&regs, hw, &mut out);
                if let (Some(alt), true) = (&mxcsr_alt, regs.image[abi::MXCSR..abi::MXCSR + 4] == entry_mxcsr[..]) {
                    allowed.push(Allowed::OneOf { start: abi::MXCSR as u32, values: vec![alt.clone()], rule: Rule::RunEntryMxcsr });
                }
                rules.push(Rule::GuestXsave);
                rules.extend(allowed.iter().map(Allowed::rule));
            } else {
                regs.apply(host, a);
            }
        }
        if exit == Exit::End && crate::guest::pkru_blocks(regs.pkru, self.vcpu.cr4_pke, false, true) {
            // The end marker is a store: a PKRU that blocks key-0 writes ends the run in a fault.
            exit = Exit::Shutdown;
            rules.push(Rule::RunFault);
        }
        if exit == Exit::End {
            rules.push(Rule::RunEnd);
        }
        self.save_after_run(&regs, &mut rules);
        self.vcpu.cr4_free = exit == Exit::Shutdown;
        self.vcpu.reload = exit != Exit::End;
        if exit == Exit::Shutdown && self.shutdown_requeues() {
            self.vcpu.event_queued = true;
        }
        if let (Some(alt), true) = (mxcsr_alt, regs.image[abi::MXCSR..abi::MXCSR + 4] == entry_mxcsr[..]) {
            self.vcpu.legacy_alts.push((abi::MXCSR, vec![alt.clone()], Rule::RunEntryMxcsr, SSE | YMM));
            self.vcpu.mxcsr_alt = Some((alt, Rule::RunEntryMxcsr));
        }
        self.vcpu.ran = true;
        OpResult { origin, ret: Ret::Ok(exit as i64), data: out, unpredicted: Vec::new(), rules, allowed }
    }

    /// The guest's own `xsave64` with EDX:EAX = all ones into a zeroed area.
    pub(super) fn guest_xsave(&self, regs: &crate::guest::Regs, rfbm: u64, out: &mut [u8]) -> Vec<Allowed> {
        let host = self.host;
        let mut allowed = Vec::new();
        let (must, free) = xinuse(host, regs, rfbm);
        if rfbm & FP != 0 {
            out[..abi::MXCSR].copy_from_slice(&regs.image[..abi::MXCSR]);
            out[abi::FTW_RSVD] = 0;
            for i in 0..8 {
                let o = abi::ST + 16 * i;
                out[o..o + 10].copy_from_slice(&regs.image[o..o + 10]);
            }
            if free & FP != 0 {
                // Not in use: written as its init values (predicted) or left unwritten (zero).
                allowed.push(Allowed::OneOf { start: 0, values: vec![vec![0; abi::MXCSR]], rule: Rule::GuestXsaveFpSkipped });
            }
            allowed.push(fip_choice(&regs.image));
            allowed.push(fsw_choice(abi::FCW));
            for (start, values, rule) in x87_choices(&regs.image) {
                allowed.push(Allowed::OneOf { start: start as u32, values, rule });
            }
        }
        if rfbm & (SSE | YMM) != 0 {
            out[abi::MXCSR..abi::MXCSR + 4].copy_from_slice(&regs.image[abi::MXCSR..abi::MXCSR + 4]);
            put(out, abi::MXCSR_MASK, &host.init_mxcsr_mask.to_le_bytes());
        }
        if rfbm & SSE != 0 {
            out[abi::XMM..abi::XMM_END].copy_from_slice(&regs.image[abi::XMM..abi::XMM_END]);
        }
        for c in host.components_in_order(rfbm) {
            let (s, e) = (c.offset as usize, (c.offset + c.size) as usize);
            if c.bit == PKRU_BIT {
                put(out, s, &regs.pkru.to_le_bytes());
            } else if let (Some(dst), Some(src)) = (out.get_mut(s..e), regs.image.get(s..e)) {
                dst.copy_from_slice(src);
            }
        }
        put(out, abi::XSTATE_BV, &(must | free).to_le_bytes());
        if let Some(choice) = xinuse_choice(free) {
            allowed.insert(0, choice);
        }
        allowed
    }

    /// The kernel saves the guest's registers when the run returns to userspace.
    pub(super) fn save_after_run(&mut self, regs: &crate::guest::Regs, rules: &mut Vec<Rule>) {
        let host = self.host;
        let xf = host.default_user_xfeatures() | (user_xfeatures(&self.vcpu, self.contract()) & host.supported_xcr0);
        let fop_kept = self.quirk(Quirk::TcgXsaveFop);
        let v = &mut self.vcpu;
        let old = v.kbuf.clone();
        let n = v.kbuf.len().min(regs.image.len());
        v.kbuf[..n].copy_from_slice(&regs.image[..n]);
        // Bytes outside any register keep what the image had (padding, header).
        v.kbuf[abi::PAD..abi::EXT].copy_from_slice(&old[abi::PAD..abi::EXT]);
        put(&mut v.kbuf, abi::MXCSR_MASK, &host.init_mxcsr_mask.to_le_bytes());
        v.upkru = regs.pkru;
        let (must, free) = xinuse(host, regs, xf);
        v.kbv = must | free;
        v.kbv_free = free;
        let old_fpu = abi::fpu_from_legacy(&old[..abi::LEGACY_SIZE]);
        for (bit, alts, range) in [(FP, &mut v.raw_fp, 0..abi::FPU_XMM), (SSE, &mut v.raw_sse, abi::FPU_XMM..abi::FPU_MXCSR)] {
            if v.raw_free & bit == 0 {
                alts.clear();
            }
            if free & bit == 0 {
                alts.clear();
            } else if !alts.contains(&old_fpu[range.clone()].to_vec()) {
                alts.push(old_fpu[range].to_vec());
            }
        }
        v.raw_free = free & FPSSE;
        // Legacy bytes the processor's save may rewrite: FTW's reserved byte and ST reserved
        // bytes (zero or unchanged), FIP (canonicalised).
        v.legacy_alts.clear();
        v.legacy_alts.push((abi::FTW_RSVD, vec![vec![0]], Rule::RunReservedZero, FP));
        for (start, values, rule) in x87_choices(&regs.image) {
            v.legacy_alts.push((start, values, rule, FP));
        }
        for i in 0..8 {
            let o = abi::ST + 16 * i + 10;
            v.legacy_alts.push((o, vec![vec![0; 6]], Rule::RunReservedZero, FP));
        }
        if let Allowed::OneOf { start, values, rule } = fip_choice(&old) {
            v.legacy_alts.push((start as usize, values, rule, FP));
        }
        if fop_kept {
            v.legacy_alts.push((abi::FOP, vec![v.mem_fop.to_vec()], Rule::QuirkTcgXsaveFop, FP));
            rules.push(Rule::QuirkTcgXsaveFop);
        } else {
            v.mem_fop = [v.kbuf[abi::FOP], v.kbuf[abi::FOP + 1]];
        }
        v.fsw_derived = true;
        rules.extend([Rule::RunSaved, Rule::RunMxcsrMaskHw]);
        if let Some(choice) = xinuse_choice(free) {
            rules.push(choice.rule());
        }
        self.vcpu.hidden = self.vcpu.kbv & !self.get_mask();
    }
}

/// FIP as the processor may hold it after loading `img`: canonicalised to a 48- or 57-bit
/// linear address (rule `run.fip.canonical`), or zero (`run.x87_ptr.zero`).
pub(super) fn fip_choice(img: &[u8]) -> Allowed {
    let fip = le64(img, abi::FIP);
    let sext = |bits: u32| (((fip << (64 - bits)) as i64) >> (64 - bits)) as u64;
    let values = vec![sext(48).to_le_bytes().to_vec(), sext(57).to_le_bytes().to_vec(), vec![0; 8]];
    Allowed::OneOf { start: abi::FIP as u32, values, rule: Rule::RunFipCanonical }
}

/// x87 bytes whose saved value is the processor's choice after a load of `img`: FCW's reserved
/// bits may read as loaded or normalised (`run.fcw.reserved`), FOP reads as its 11 bits
/// (`run.fop.11bit`), and FOP, FIP and FDP may read zero (`run.x87_ptr.zero`: AMD saves them
/// only with FSW.ES, QEMU's TCG never).
pub(super) fn x87_choices(img: &[u8]) -> Vec<(usize, Vec<Vec<u8>>, Rule)> {
    let fcw = le32(img, abi::FCW) as u16;
    let mut v = vec![(abi::FCW, vec![((fcw & 0x1f3f) | 0x40).to_le_bytes().to_vec(), fcw.to_le_bytes().to_vec()], Rule::RunFcwReserved)];
    let fop = le32(img, abi::FOP) as u16;
    v.push((abi::FOP, vec![(fop & 0x7ff).to_le_bytes().to_vec()], Rule::RunFop11));
    v.push((abi::FOP, vec![vec![0; 2]], Rule::RunX87PtrEs));
    v.push((abi::FDP, vec![vec![0; 8]], Rule::RunX87PtrEs));
    v
}

/// FSW.ES (bit 7) and FSW.B (bit 15) are derived by the processor from the exception flags and
/// masks when it loads x87 state (rule `run.fsw.derived`): the choice for an image whose FCW
/// is at `fcw` (FSW follows it).
pub(super) fn fsw_choice(fcw: usize) -> Allowed {
    Allowed::FreeBits { at: fcw as u32, mask: 0x8080 << 16, rule: Rule::RunFswDerived }
}

/// The byte ranges where `a` and `b` differ, each a whole field group of the standard XSAVE
/// layout (x87 control and pointers, MXCSR, MXCSR_MASK, ST, XMM, the legacy padding, the header
/// word XSTATE_BV, then 64-byte blocks), so that each maps to one `struct kvm_fpu` range.
fn differing_chunks(a: &[u8], b: &[u8]) -> Vec<(usize, usize)> {
    let n = a.len().min(b.len());
    let fixed = [0, abi::MXCSR, abi::MXCSR_MASK, abi::ST, abi::XMM, abi::XMM_END, abi::LEGACY_SIZE, abi::XSTATE_BV + 8];
    let mut bounds: Vec<usize> =
        fixed.iter().copied().chain((abi::XSTATE_BV + 8..n).step_by(64).skip(1)).chain([n]).filter(|&x| x <= n).collect();
    bounds.dedup();
    bounds.windows(2).map(|w| (w[0], w[1])).filter(|&(s, e)| a[s..e] != b[s..e]).collect()
}

/// The XINUSE split of the components in `mask` for registers `regs` (SDM 13.6): those not at
/// their init value must be saved with their XSTATE_BV bit set, those at init are free
/// ([`xinuse_choice`]). Returns (must, free).
fn xinuse(host: &crate::host::HostFacts, regs: &crate::guest::Regs, mask: u64) -> (u64, u64) {
    let (mut must, mut free) = (0u64, 0u64);
    for bit in (0..64u8).filter(|b| mask & (1u64 << b) != 0) {
        if regs.is_init(host, bit) {
            free |= 1u64 << bit;
        } else {
            must |= 1u64 << bit;
        }
    }
    (must, free)
}

/// A save of components at their init value may store their XSTATE_BV bits set or clear
/// (XINUSE is the processor's, rule `run.xinuse.free`): the choice of the `free` bits in an
/// XSTATE_BV word, if any. Every view of such a save (the guest's XSAVE, GET_XSAVE, the raw
/// GET_FPU) builds its allowed bytes under this choice's rule.
pub(super) fn xinuse_choice(free: u64) -> Option<Allowed> {
    (free != 0).then_some(Allowed::FreeBits { at: abi::XSTATE_BV as u32, mask: free, rule: Rule::RunXinuseFree })
}
