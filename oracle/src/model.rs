//! The vCPU model: predicts, for every step of a case, the errno or success and every output
//! byte, under a selectable contract version (spec §9) and optional named host quirks.
//!
//! Over 600 lines on purpose: the model is one state machine (the vCPU's fpstate image, CPUID
//! table, XCR0 and run state in [`Model`]), and its rules read and write the same private fields.
//! Split by ioctl it would need that state public across modules (docs/ARCHITECTURE.md).

use crate::abi::cpuid::{cpuid2_trace, cpuid2_trace_reg_offset, find_entry, CpuidEntry, CPUID_FLAG_SIGNIFICANT_INDEX, MAX_CPUID_ENTRIES};
use crate::abi::xcrs::{KvmXcr, KvmXcrs, MAX_XCRS};
use crate::abi::{self, le32, le64, put, xstate_required_size};
use crate::case::{Case, FpuImage, Op, Origin, XcrsImage};
use crate::host::{HostFacts, Quirk};
use crate::rules::Rule;
use crate::trace::{Allowed, OpResult, Ret, Trace, E2BIG, EINVAL, EPERM};
use crate::xfeatures::*;
use serde::{Deserialize, Serialize};

/// A contract version (spec §9.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Contract {
    /// ≤ 5.15: KVM's own fill_xsave/load_xsave; raw legacy area, no header validation.
    V0,
    /// 5.16: unmasked save (guest CPUID ignored), permissive load.
    V1,
    /// 5.17–5.19: user_xfeatures := guest CPUID; SET rejects guest-unsupported bits, even FP/SSE.
    V2a,
    /// 6.0–6.5: like V2a with FP|SSE always allowed (the ad856280ddea regression).
    V2b,
    /// 6.6+: masked save, permissive load.
    V3,
}

impl Contract {
    /// All versions, oldest first.
    pub const ALL: &'static [Contract] = &[Contract::V0, Contract::V1, Contract::V2a, Contract::V2b, Contract::V3];

    /// Parse `V0`, `v2b`, ...
    pub fn parse(s: &str) -> Option<Contract> {
        Contract::ALL.iter().copied().find(|c| c.name().eq_ignore_ascii_case(s))
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Contract::V0 => "V0",
            Contract::V1 => "V1",
            Contract::V2a => "V2a",
            Contract::V2b => "V2b",
            Contract::V3 => "V3",
        }
    }

    fn has_xsave2(self) -> bool {
        self >= Contract::V2a
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the model predicts under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Contract version.
    pub contract: Contract,
    /// Host quirks modelled (empty: strict upstream).
    pub quirks: Vec<Quirk>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig { contract: Contract::V3, quirks: Vec::new() }
    }
}

const NOT_SIGNIFICANT: Option<u32> = None;

/// Per-vCPU state (spec §11).
#[derive(Clone, Debug)]
struct Vcpu {
    /// Guest FPU image, kept in standard layout (the kernel's own format is invisible).
    kbuf: Vec<u8>,
    kbv: u64,
    upkru: u32,
    xcr0: u64,
    cpuid: Vec<CpuidEntry>,
    /// Fields of the stored table the model does not predict: (entry index, register mask
    /// bit 0..3 = EAX..EDX).
    cpuid_unpredicted: Vec<(usize, u8)>,
    gsx: u64,
    user_xfeatures: u64,
    uabi_size: usize,
    /// Bits accepted by the last SET while outside the GET mask (hidden state).
    hidden: u64,
    /// Bits of `kbv` whose component is at its init value after a hardware save: the
    /// processor may have saved them set or clear (rule `run.xinuse.free`).
    kbv_free: u64,
    /// Legacy-area bytes a hardware save may have rewritten: (offset, allowed values).
    /// (offset, allowed values, rule, the GET-mask bits under which the bytes are reported).
    legacy_alts: Vec<(usize, Vec<Vec<u8>>, Rule, u64)>,
    /// The vCPU has run (KVM_RUN).
    ran: bool,
    /// FSW.ES and FSW.B are the processor's (recomputed by a hardware load).
    fsw_derived: bool,
    /// The other MXCSR the processor may have loaded at the last run's entry (rule
    /// `run.entry.mxcsr`), while nothing has written MXCSR since; adopted when an observation
    /// shows the choice ([`predict_following`]).
    mxcsr_alt: Option<Vec<u8>>,
    /// The last run ended in a shutdown: AMD resets the vCPU (INIT, CR4 0) until the next
    /// run's set-up, Intel does not, so CR4's CPUID runtime bits are the vendor's choice.
    cr4_free: bool,
    /// CR4.OSXSAVE and CR4.PKE as the rig's guest set-up left them.
    cr4_osxsave: bool,
    cr4_pke: bool,
    /// A `KVM_SET_CPUID2` has succeeded on this vCPU: 5.10 (V0) computes the CR4 bits the
    /// guest CPUID reserves (`vcpu->arch.cr4_guest_rsvd_bits`) only then (rule
    /// `run.v0.cr4_rsvd`).
    cpuid_set: bool,
    /// The last run did not end at its end marker: the rig loads its set-up's sregs again
    /// (`KVM_SET_SREGS` with the same CR4) before the next run (rule `run.setup.reload`).
    reload: bool,
    /// V0 on AMD (SVM): a shutdown left the event being delivered queued in KVM
    /// (`svm_complete_interrupts` requeued EXITINTINFO; 5.10's `shutdown_interception` only
    /// re-initialises the VMCB), so every later run re-injects it and shuts down before the
    /// program's first instruction (rule `run.v0.shutdown.requeued`).
    event_queued: bool,
    /// FP/SSE bits whose raw legacy bytes are the processor's choice: saved after a run while
    /// at their init value (XINUSE clear: an XSAVES may leave the memory as it was). Only a raw
    /// view (quirk `kvm-fpu-legacy` GET_FPU) shows those bytes.
    raw_free: u64,
    /// What such a memory may still hold (`struct kvm_fpu` bytes 0..152 for FP, 152..408 for
    /// SSE): the bytes before each save in a row that left the component free.
    raw_fp: Vec<Vec<u8>>,
    raw_sse: Vec<Vec<u8>>,
    /// FOP as the kernel's save area holds it (quirk `tcg-xsave-fop`: a save that does not
    /// store FOP leaves this): written by SET_XSAVE with FP (V0: always) and SET_FPU.
    mem_fop: [u8; 2],
}

/// The model of one vCPU under one contract on one host.
pub struct Model<'a> {
    host: &'a HostFacts,
    cfg: &'a ModelConfig,
    vcpu: Vcpu,
    last_get: Option<Vec<u8>>,
    /// Free XSTATE_BV bits of the last GET (a restore of it carries them).
    last_get_free: u64,
    /// Accept whatever a SET passes (re-synchronising on a kernel that accepted it).
    force_accept: bool,
}

fn ret_err(origin: Origin, e: i32, rules: Vec<Rule>) -> OpResult {
    OpResult { rules, ..OpResult::new(origin, Ret::Err(e)) }
}

fn ret_ok(origin: Origin, v: i64, rules: Vec<Rule>) -> OpResult {
    OpResult { rules, ..OpResult::new(origin, Ret::Ok(v)) }
}

impl<'a> Model<'a> {
    /// A model holding a fresh vCPU.
    pub fn new(host: &'a HostFacts, cfg: &'a ModelConfig) -> Model<'a> {
        Model { host, cfg, vcpu: Self::fresh(host, cfg), last_get: None, last_get_free: 0, force_accept: false }
    }

    fn fresh(host: &HostFacts, cfg: &ModelConfig) -> Vcpu {
        let full = xstate_required_size(&host.components, host.host_xcr0, false) as usize;
        let mut kbuf = vec![0u8; full.max(abi::KVM_XSAVE_SIZE)];
        put(&mut kbuf, abi::FCW, &abi::FCW_INIT.to_le_bytes());
        put(&mut kbuf, abi::MXCSR, &abi::MXCSR_INIT.to_le_bytes());
        let _ = cfg;
        Vcpu {
            kbuf,
            kbv: 0,
            upkru: 0,
            xcr0: FP,
            cpuid: Vec::new(),
            cpuid_unpredicted: Vec::new(),
            gsx: 0,
            user_xfeatures: host.default_user_xfeatures(),
            uabi_size: abi::KVM_XSAVE_SIZE,
            hidden: 0,
            kbv_free: 0,
            mem_fop: [0; 2],
            legacy_alts: Vec::new(),
            ran: false,
            fsw_derived: false,
            mxcsr_alt: None,
            cr4_free: false,
            cr4_osxsave: false,
            cr4_pke: false,
            cpuid_set: false,
            reload: false,
            event_queued: false,
            raw_free: 0,
            raw_fp: Vec::new(),
            raw_sse: Vec::new(),
        }
    }

    /// The vCPU's guest_supported_xcr0 (for explanations).
    pub fn guest_supported_xcr0(&self) -> u64 {
        self.vcpu.gsx
    }

    /// The XSTATE_BV a SET step would pass to the kernel.
    pub fn set_xstate_bv(&self, op: &Op) -> Option<u64> {
        match op {
            Op::SetXsave(img) => Some(img.render(self.host, self.vcpu.uabi_size)).map(|b| le64(&b, abi::XSTATE_BV)),
            Op::RestoreLast { force_xstate_bv: Some(bv) } => Some(*bv),
            Op::RestoreLast { force_xstate_bv: None } => Some(self.last_get.as_deref().map_or(0, |b| le64(b, abi::XSTATE_BV))),
            _ => None,
        }
    }

    /// The buffer a SET step would pass to the kernel.
    pub fn set_buffer(&self, op: &Op) -> Option<Vec<u8>> {
        match op {
            Op::SetXsave(img) => Some(img.render(self.host, self.vcpu.uabi_size)),
            Op::RestoreLast { force_xstate_bv } => {
                let mut buf = self.last_get.clone().unwrap_or_default();
                buf.resize(self.vcpu.uabi_size.max(abi::KVM_XSAVE_SIZE), 0);
                if let Some(bv) = force_xstate_bv {
                    put(&mut buf, abi::XSTATE_BV, &bv.to_le_bytes());
                }
                Some(buf)
            }
            _ => None,
        }
    }

    fn quirk(&self, q: Quirk) -> bool {
        self.cfg.quirks.contains(&q)
    }

    fn contract(&self) -> Contract {
        self.cfg.contract
    }

    /// Predict one step.
    pub fn step(&mut self, origin: Origin, op: &Op) -> OpResult {
        match op {
            Op::NewVcpu => {
                self.vcpu = Self::fresh(self.host, self.cfg);
                ret_ok(origin, 0, vec![Rule::VcpuFresh])
            }
            Op::SetCpuid2(t) => {
                let entries = t.render(self.host);
                self.set_cpuid2(origin, entries)
            }
            Op::GetCpuid2 { capacity } => self.get_cpuid2(origin, *capacity as usize),
            Op::SetXsave(img) => {
                let buf = img.render(self.host, self.vcpu.uabi_size);
                self.set_xsave(origin, &buf)
            }
            Op::RestoreLast { force_xstate_bv } => {
                let buf = self.set_buffer(op).unwrap_or_default();
                let carried = if force_xstate_bv.is_none() { self.last_get_free } else { 0 };
                let r = self.set_xsave(origin, &buf);
                if r.ret == Ret::Ok(0) {
                    self.vcpu.kbv_free = carried & self.vcpu.kbv;
                }
                r
            }
            Op::GetXsave => self.get_xsave(origin, false),
            Op::GetXsave2 => self.get_xsave(origin, true),
            Op::SetXcrs(x) => self.set_xcrs(origin, x),
            Op::GetXcrs => self.get_xcrs(origin),
            Op::CheckXsave2 => self.check_xsave2(origin),
            Op::RunGuest(p) => self.run_guest(origin, p),
            Op::SetFpu(img) => self.set_fpu(origin, img),
            Op::GetFpu => self.get_fpu(origin),
        }
    }

    /// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` value under this contract.
    pub fn cap_xsave2(&self) -> i64 {
        if !self.contract().has_xsave2() {
            return 0;
        }
        let mut filtered = self.host.supported_xcr0;
        if filtered & XTILE_DATA != 0 {
            filtered &= self.host.guest_perm;
            if filtered & XTILE_DATA == 0 {
                filtered &= !XTILE_CFG;
            }
        }
        (xstate_required_size(&self.host.components, filtered, false) as i64).max(abi::KVM_XSAVE_SIZE as i64)
    }

    fn check_xsave2(&self, origin: Origin) -> OpResult {
        let rule = if self.contract().has_xsave2() { Rule::CapXsave2Size } else { Rule::CapXsave2Absent };
        ret_ok(origin, self.cap_xsave2(), vec![rule])
    }

    // ---- CPUID (§6) ------------------------------------------------------------------------

    fn set_cpuid2(&mut self, origin: Origin, mut entries: Vec<CpuidEntry>) -> OpResult {
        let mut rules = Vec::with_capacity(4);
        if entries.len() > MAX_CPUID_ENTRIES {
            return ret_err(origin, E2BIG, vec![Rule::CpuidRejectE2big]);
        }
        if self.vcpu.ran && self.contract() >= Contract::V1 && !self.force_accept {
            let mut scratch = Vec::new();
            let stored = self.runtime_table(&mut scratch);
            let saved = std::mem::replace(&mut self.vcpu.cpuid, entries);
            let incoming = self.runtime_table(&mut scratch);
            self.vcpu.cpuid = saved;
            let equal = self.contract() > Contract::V1 && stored == incoming;
            return if equal { ret_ok(origin, 0, vec![Rule::RunCpuidFrozen]) } else { ret_err(origin, EINVAL, vec![Rule::RunCpuidFrozen]) };
        }
        if let Some(i) = find_entry(&entries, 0x8000_0008, NOT_SIGNIFICANT) {
            let bits = (entries[i].eax >> 8) & 0xff;
            if bits != 0 && bits != 48 && bits != 57 && !self.force_accept {
                return ret_err(origin, EINVAL, vec![Rule::CpuidRejectVaddr]);
            }
        }
        let mut amx = false;
        // The dynamic-feature (AMX) check arrived with KVM_CAP_XSAVE2 in 5.17.
        if let (true, Some(i)) = (self.contract().has_xsave2(), find_entry(&entries, 0xd, Some(0))) {
            let x = entries[i].eax as u64 | ((entries[i].edx as u64) << 32);
            if x & USER_DYNAMIC != 0 {
                if self.host.guest_perm & USER_DYNAMIC == 0 && !self.force_accept {
                    return ret_err(origin, EPERM, vec![Rule::CpuidRejectAmxPerm]);
                }
                amx = true;
            }
        }
        if amx {
            rules.push(Rule::CpuidAmxEnabled);
            let perm_size = xstate_required_size(&self.host.components, self.host.guest_perm, false) as usize;
            self.vcpu.uabi_size = self.vcpu.uabi_size.max(perm_size);
            self.vcpu.user_xfeatures |= XTILE_DATA;
            let need = self.vcpu.uabi_size.max(self.vcpu.kbuf.len());
            self.vcpu.kbuf.resize(need, 0);
        }
        rules.push(Rule::CpuidAccept);
        self.vcpu.cpuid_set = true;
        let mut unpredicted = Vec::new();
        let gsx_source = if self.quirk(Quirk::PvmCpuidRewrite) {
            self.pvm_rewrite(&mut entries, &mut unpredicted, &mut rules)
        } else {
            find_entry(&entries, 0xd, Some(0)).map(|i| entries[i].eax as u64 | ((entries[i].edx as u64) << 32))
        };
        self.vcpu.cpuid = entries;
        self.vcpu.cpuid_unpredicted = unpredicted;
        match gsx_source {
            Some(x) => {
                self.vcpu.gsx = x & self.host.supported_xcr0;
                rules.push(Rule::CpuidGsxFirstMatch);
            }
            None => {
                self.vcpu.gsx = 0;
                rules.push(Rule::CpuidGsxNone);
            }
        }
        match self.contract() {
            Contract::V2a => {
                self.vcpu.user_xfeatures = self.vcpu.gsx;
                rules.push(Rule::CpuidV2UserXfeatures);
            }
            Contract::V2b => {
                self.vcpu.user_xfeatures = self.vcpu.gsx | FPSSE;
                rules.push(Rule::CpuidV2UserXfeatures);
            }
            _ => {}
        }
        ret_ok(origin, 0, rules)
    }

    /// Quirk `pvm-cpuid-rewrite` (spec §8, re-measured on this rig's hosts): see [`Quirk`].
    ///
    /// Returns the EDX:EAX guest_supported_xcr0 is derived from (before masking with the
    /// supported set): the host derives it between two rewrite passes. The first pass writes
    /// the raw host CPUID.0xD.i (i < 20, XFEATURE_MAX) into the first match of each (0xD, i);
    /// the second (the table that reads back) is described on [`Quirk::PvmCpuidRewrite`].
    fn pvm_rewrite(&self, entries: &mut Vec<CpuidEntry>, unpredicted: &mut Vec<(usize, u8)>, rules: &mut Vec<Rule>) -> Option<u64> {
        let host = self.host;
        let raw = |i: u32| host.host_cpuid_0xd.iter().find(|e| e.index == i).copied();
        let before = entries.len();
        entries.retain(|e| !host.pvm_dropped_leaves.contains(&e.function));
        if entries.len() != before {
            rules.push(Rule::QuirkPvmDrop);
        }
        if find_entry(entries, 1, Some(0)).is_some() && find_entry(entries, 0xd, Some(0)).is_none() {
            rules.push(Rule::QuirkPvmInject);
            for i in 0..64u32 {
                let wanted = i < 2 || host.supported_xcr0 & (1u64 << i) != 0;
                if let (true, Some(e)) = (wanted, raw(i)) {
                    entries.push(CpuidEntry { flags: CPUID_FLAG_SIGNIFICANT_INDEX, ..e });
                }
            }
        }
        let mut first_pass = entries.clone();
        for i in 0..20u32 {
            if let Some(k) = find_entry(&first_pass, 0xd, Some(i)) {
                let r = raw(i).map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
                let e = &mut first_pass[k];
                (e.eax, e.ebx, e.ecx, e.edx) = (r[0], r[1], r[2], r[3]);
            }
        }
        let gsx_source = find_entry(&first_pass, 0xd, Some(0)).map(|d| first_pass[d].eax as u64 | ((first_pass[d].edx as u64) << 32));
        let sup = host.supported_xcr0;
        // Subleaves i >= 2 get host values only when the first (0xD, 0) match is a true
        // index-0 entry (significant-index flag set); an unflagged 0xD entry matches every
        // subleaf lookup and ends with the last (zero) write. This is the rule that explains
        // every table measured on kvm_pvm hosts (oracle/tests/quirk.rs).
        let true_d0 = find_entry(entries, 0xd, Some(0)).is_some_and(|d| entries[d].flags & CPUID_FLAG_SIGNIFICANT_INDEX != 0);
        for i in 0..64u32 {
            let Some(k) = find_entry(entries, 0xd, Some(i)) else { continue };
            let regs = match i {
                0 => [sup as u32, entries[k].ebx, xstate_required_size(&host.components, sup, false), (sup >> 32) as u32],
                1 => [raw(1).map_or(0, |e| e.eax & 0x7), entries[k].ebx, 0, 0],
                _ if true_d0 && sup & (1u64 << i) != 0 => raw(i).map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]),
                _ => [0; 4],
            };
            let e = &mut entries[k];
            (e.eax, e.ebx, e.ecx, e.edx) = (regs[0], regs[1], regs[2], regs[3]);
            rules.push(Rule::QuirkPvmRewrite);
        }
        for (k, e) in entries.iter().enumerate() {
            match e.function {
                1 => unpredicted.push((k, 0b1100)),
                7 => unpredicted.push((k, 0b1111)),
                _ => continue,
            }
            rules.push(Rule::QuirkPvmHostOwned);
        }
        gsx_source
    }

    /// The stored table with runtime-owned fields applied (spec §6.3, corrected: APIC set).
    fn runtime_table(&self, rules: &mut Vec<Rule>) -> Vec<CpuidEntry> {
        let mut t = self.vcpu.cpuid.clone();
        if let Some(i) = find_entry(&t, 1, NOT_SIGNIFICANT) {
            t[i].ecx = (t[i].ecx & !(1 << 27)) | ((self.vcpu.cr4_osxsave as u32) << 27);
            t[i].edx |= 1 << 9;
            rules.extend([Rule::CpuidRuntimeOsxsave, Rule::CpuidRuntimeApic]);
        }
        if let Some(i) = find_entry(&t, 7, Some(0)) {
            t[i].ecx = (t[i].ecx & !(1 << 4)) | ((self.vcpu.cr4_pke as u32) << 4);
            rules.push(Rule::CpuidRuntimeOspke);
        }
        if self.vcpu.ran {
            rules.push(Rule::RunCr4Runtime);
        }
        if self.host.cpuid_sgx_xfrm_masked {
            if let Some(i) = find_entry(&t, 0x12, Some(1)) {
                t[i].ecx = (t[i].ecx & self.vcpu.gsx as u32) | FPSSE as u32;
                t[i].edx &= (self.vcpu.gsx >> 32) as u32;
                rules.push(Rule::CpuidSgxXfrm);
            }
        }
        if let Some(i) = find_entry(&t, 0xd, Some(0)) {
            t[i].ebx = xstate_required_size(&self.host.components, self.vcpu.xcr0, false);
            rules.push(Rule::CpuidRuntimeXsaveSize);
        }
        if let Some(i) = find_entry(&t, 0xd, Some(1)) {
            if t[i].eax & (0x2 | 0x8) != 0 {
                t[i].ebx = xstate_required_size(&self.host.components, self.vcpu.xcr0, true);
                rules.push(Rule::CpuidRuntimeXsavecSize);
            }
        }
        t
    }

    fn get_cpuid2(&self, origin: Origin, capacity: usize) -> OpResult {
        let n = self.vcpu.cpuid.len();
        if capacity < n {
            return ret_err(origin, E2BIG, vec![Rule::CpuidGetE2big]);
        }
        let mut rules = vec![Rule::CpuidGetTable];
        let t = self.runtime_table(&mut rules);
        let shown = if self.host.get_cpuid2_keeps_nent {
            rules.push(Rule::CpuidGetCallerNent);
            capacity
        } else {
            n
        };
        // The caller's buffer is zeroed; entries the kernel did not write stay zero.
        let data = cpuid2_trace(shown as u32, &t, shown);
        let mut unpredicted = Vec::new();
        for &(k, regs) in &self.vcpu.cpuid_unpredicted {
            for r in 0..4 {
                if regs & (1 << r) != 0 {
                    let s = cpuid2_trace_reg_offset(k, r) as u32;
                    unpredicted.push((s, s + 4));
                }
            }
        }
        if !unpredicted.is_empty() {
            rules.push(Rule::QuirkPvmHostOwned);
        }
        let mut allowed = Vec::new();
        if self.vcpu.cr4_free {
            let ecx_of = |k: usize| cpuid2_trace_reg_offset(k, 2) as u32;
            if let Some(k) = find_entry(&t, 1, NOT_SIGNIFICANT) {
                allowed.push(Allowed::FreeBits { at: ecx_of(k), mask: 1 << 27, rule: Rule::RunShutdownInit });
            }
            if let Some(k) = find_entry(&t, 7, Some(0)) {
                allowed.push(Allowed::FreeBits { at: ecx_of(k), mask: 1 << 4, rule: Rule::RunShutdownInit });
            }
            rules.push(Rule::RunShutdownInit);
        }
        OpResult { origin, ret: Ret::Ok(0), data, unpredicted, rules, allowed }
    }

    // ---- XSAVE (§3, §4) --------------------------------------------------------------------

    fn get_xsave(&mut self, origin: Origin, xsave2: bool) -> OpResult {
        let c = self.contract();
        if xsave2 && !c.has_xsave2() {
            return ret_err(origin, EINVAL, vec![Rule::GetXsave2Absent]);
        }
        if !xsave2 && self.vcpu.uabi_size > abi::KVM_XSAVE_SIZE {
            return ret_err(origin, EINVAL, vec![Rule::GetXsaveTooBig]);
        }
        let size = if xsave2 { self.vcpu.uabi_size } else { abi::KVM_XSAVE_SIZE };
        let mut rules = Vec::with_capacity(12);
        let mut out = vec![0u8; size];
        if xsave2 {
            // The caller's buffer is KVM_CAP_XSAVE2 bytes, pre-filled with a canary; the
            // kernel writes uabi_size bytes of it.
            out.resize(size.max(self.cap_xsave2() as usize), abi::CANARY);
        }
        let v = &self.vcpu;
        let k = &v.kbuf;
        rules.push(match c {
            Contract::V3 => Rule::GetMaskV3,
            Contract::V1 | Contract::V2a | Contract::V2b => Rule::GetMaskUser,
            Contract::V0 => Rule::GetMaskV0,
        });
        let h = v.kbv & self.get_mask();
        if c == Contract::V0 {
            out[..abi::LEGACY_SIZE].copy_from_slice(&k[..abi::LEGACY_SIZE]);
            rules.push(Rule::GetV0LegacyRaw);
        } else {
            if h & FP != 0 {
                out[..abi::MXCSR].copy_from_slice(&k[..abi::MXCSR]);
                out[abi::ST..abi::FP_END].copy_from_slice(&k[abi::ST..abi::FP_END]);
                rules.push(Rule::GetFpReported);
            } else {
                put(&mut out, abi::FCW, &abi::FCW_INIT.to_le_bytes());
                rules.push(Rule::GetFpInit);
            }
            if h & (SSE | YMM) != 0 {
                out[abi::MXCSR..abi::ST].copy_from_slice(&k[abi::MXCSR..abi::ST]);
                rules.push(Rule::GetMxcsrKernel);
            } else {
                put(&mut out, abi::MXCSR, &abi::MXCSR_INIT.to_le_bytes());
                put(&mut out, abi::MXCSR_MASK, &self.host.init_mxcsr_mask.to_le_bytes());
                rules.push(Rule::GetMxcsrInit);
            }
            if h & SSE != 0 {
                out[abi::XMM..abi::XMM_END].copy_from_slice(&k[abi::XMM..abi::XMM_END]);
                rules.push(Rule::GetSseReported);
            } else {
                rules.push(Rule::GetSseZero);
            }
            put(&mut out, abi::SW, &self.host.host_xcr0.to_le_bytes());
            rules.extend([Rule::GetPaddingZero, Rule::GetSwReserved]);
        }
        put(&mut out, abi::XSTATE_BV, &h.to_le_bytes());
        rules.push(Rule::GetHeaderZero);
        let mut copied = false;
        for comp in self.host.components_in_order(h) {
            let (s, e) = (comp.offset as usize, (comp.offset + comp.size) as usize);
            if e > size {
                continue;
            }
            if comp.bit == PKRU_BIT {
                put(&mut out, s, &v.upkru.to_le_bytes());
                rules.push(Rule::GetPkruFromVcpu);
            } else {
                out[s..e].copy_from_slice(&k[s..e]);
                copied = true;
            }
        }
        if copied {
            rules.push(Rule::GetComponentCopied);
        }
        if h & !FPSSE != v.kbv & !FPSSE {
            rules.push(Rule::GetComponentZero);
        }
        if h & v.hidden != 0 {
            rules.push(Rule::GetHiddenRevealed);
        }
        let allowed = self.get_choices(h, &mut rules);
        self.last_get_free = v_free(&self.vcpu, h);
        let last = self.last_get.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&out);
        OpResult { origin, ret: Ret::Ok(0), data: out, unpredicted: Vec::new(), rules, allowed }
    }

    /// The hardware's choices a GET of reported features `h` may show after a run: XSTATE_BV
    /// bits of components at their init value, what GET writes when such a bit is clear, and
    /// legacy bytes a hardware save may rewrite.
    fn get_choices(&self, h: u64, rules: &mut Vec<Rule>) -> Vec<Allowed> {
        let v = &self.vcpu;
        let mut allowed = Vec::new();
        let free = v_free(v, h);
        let legacy = self.contract() != Contract::V0;
        if free != 0 {
            let rule = Rule::RunXinuseFree;
            rules.push(rule);
            allowed.push(Allowed::FreeBits { at: abi::XSTATE_BV as u32, mask: free, rule });
            let unless =
                |bits: u64, start: usize, alt: Vec<u8>| Allowed::Unless { at: abi::XSTATE_BV as u32, bits, start: start as u32, alt, rule };
            if legacy && free & FP != 0 {
                let mut head = vec![0u8; abi::MXCSR];
                put(&mut head, abi::FCW, &abi::FCW_INIT.to_le_bytes());
                allowed.push(unless(FP, 0, head));
                allowed.push(unless(FP, abi::ST, vec![0; abi::FP_END - abi::ST]));
            }
            let sy = h & (SSE | YMM);
            if legacy && sy != 0 && sy & !free == 0 {
                let mut m = abi::MXCSR_INIT.to_le_bytes().to_vec();
                m.extend_from_slice(&self.host.init_mxcsr_mask.to_le_bytes());
                allowed.push(unless(SSE | YMM, abi::MXCSR, m));
            }
            if legacy && free & SSE != 0 {
                allowed.push(unless(SSE, abi::XMM, vec![0; abi::XMM_END - abi::XMM]));
            }
            for c in self.host.components_in_order(free) {
                let size = if c.bit == PKRU_BIT { 8 } else { c.size as usize };
                allowed.push(unless(1u64 << c.bit, c.offset as usize, vec![0; size]));
            }
        }
        // V0 copies the legacy area raw, whatever XSTATE_BV says: the hardware's bytes show.
        let shown = |under: u64| !legacy || h & under != 0;
        if shown(FP) && v.fsw_derived {
            allowed.push(fsw_choice());
            rules.push(Rule::RunFswDerived);
        }
        {
            for (start, values, rule, _) in v.legacy_alts.iter().filter(|a| shown(a.3)) {
                allowed.push(Allowed::OneOf { start: *start as u32, values: values.clone(), rule: *rule });
                rules.push(*rule);
            }
        }
        allowed
    }

    // ---- KVM_RUN (§7) ----------------------------------------------------------------------

    /// Hardware XCR0 while the guest runs.
    fn hw_xcr0(&self) -> u64 {
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
    fn cr4_accepted(&self, rules: &mut Vec<Rule>) -> (bool, bool) {
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
    fn setup_cr4(&mut self, rules: &mut Vec<Rule>) {
        (self.vcpu.cr4_osxsave, self.vcpu.cr4_pke) = self.cr4_accepted(rules);
    }

    /// V0 on an AMD (SVM) host: a shutdown leaves its event queued (`run.v0.shutdown.requeued`).
    fn shutdown_requeues(&self) -> bool {
        self.contract() == Contract::V0 && self.host.vendor_amd() && !self.quirk(Quirk::PvmHwXcr0)
    }

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
        let carried = self.vcpu.mxcsr_alt.take();
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
            self.vcpu.mxcsr_alt = Some(alt);
        }
        self.vcpu.ran = true;
        OpResult { origin, ret: Ret::Ok(exit as i64), data: out, unpredicted: Vec::new(), rules, allowed }
    }

    /// The guest's own `xsave64` with EDX:EAX = all ones into a zeroed area.
    fn guest_xsave(&self, regs: &crate::guest::Regs, rfbm: u64, out: &mut [u8]) -> Vec<Allowed> {
        let host = self.host;
        let mut allowed = Vec::new();
        let mut must = 0;
        let mut free = 0;
        for bit in (0..64u8).filter(|b| rfbm & (1u64 << b) != 0) {
            if regs.is_init(host, bit) {
                free |= 1u64 << bit;
            } else {
                must |= 1u64 << bit;
            }
        }
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
            allowed.push(fsw_choice());
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
        if free != 0 {
            allowed.insert(0, Allowed::FreeBits { at: abi::XSTATE_BV as u32, mask: free, rule: Rule::RunXinuseFree });
        }
        allowed
    }

    /// The kernel saves the guest's registers when the run returns to userspace.
    fn save_after_run(&mut self, regs: &crate::guest::Regs, rules: &mut Vec<Rule>) {
        let host = self.host;
        let xf = host.default_user_xfeatures() | (self.vcpu.user_xfeatures & host.supported_xcr0);
        let v = &mut self.vcpu;
        let old = v.kbuf.clone();
        let n = v.kbuf.len().min(regs.image.len());
        v.kbuf[..n].copy_from_slice(&regs.image[..n]);
        // Bytes outside any register keep what the image had (padding, header).
        v.kbuf[abi::PAD..abi::EXT].copy_from_slice(&old[abi::PAD..abi::EXT]);
        put(&mut v.kbuf, abi::MXCSR_MASK, &host.init_mxcsr_mask.to_le_bytes());
        v.upkru = regs.pkru;
        let (mut must, mut free) = (0u64, 0u64);
        for bit in (0..64u8).filter(|b| xf & (1u64 << b) != 0) {
            if regs.is_init(host, bit) {
                free |= 1u64 << bit;
            } else {
                must |= 1u64 << bit;
            }
        }
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
        if let Allowed::OneOf { values, .. } = fip_choice(&old) {
            v.legacy_alts.push((8, values, Rule::RunFipCanonical, FP));
        }
        if self.cfg.quirks.contains(&Quirk::TcgXsaveFop) {
            v.legacy_alts.push((abi::FOP, vec![v.mem_fop.to_vec()], Rule::QuirkTcgXsaveFop, FP));
            rules.push(Rule::QuirkTcgXsaveFop);
        } else {
            v.mem_fop = [v.kbuf[abi::FOP], v.kbuf[abi::FOP + 1]];
        }
        v.fsw_derived = true;
        rules.extend([Rule::RunSaved, Rule::RunMxcsrMaskHw]);
        if free != 0 {
            rules.push(Rule::RunXinuseFree);
        }
        self.vcpu.hidden = self.vcpu.kbv & !self.get_mask();
    }

    fn set_xsave(&mut self, origin: Origin, buf: &[u8]) -> OpResult {
        let c = self.contract();
        let bv = le64(buf, abi::XSTATE_BV);
        let mxcsr = le32(buf, abi::MXCSR);
        let mut rules = Vec::with_capacity(8);
        let f = self.force_accept;
        if c == Contract::V0 {
            if !f && bv & !self.host.supported_xcr0 != 0 {
                return ret_err(origin, EINVAL, vec![Rule::SetRejectUnsupported]);
            }
            if !f && mxcsr & !self.host.mxcsr_feature_mask != 0 {
                return ret_err(origin, EINVAL, vec![Rule::SetV0RejectMxcsr]);
            }
            let v = &mut self.vcpu;
            v.kbuf[..abi::LEGACY_SIZE].copy_from_slice(&buf[..abi::LEGACY_SIZE]);
            v.mem_fop = [buf[abi::FOP], buf[abi::FOP + 1]];
            v.raw_free = 0;
            rules.push(Rule::SetV0LegacyRaw);
            self.store_components(buf, bv, &mut rules);
            return self.accept(bv, rules, origin);
        }
        if !f && bv & !self.host.supported_xcr0 != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectUnsupported]);
        }
        if !f && bv & !self.vcpu.user_xfeatures != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectUserXfeatures]);
        }
        if !f && le64(buf, abi::XCOMP_BV) != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectXcompBv]);
        }
        if !f && buf[abi::HDR_RSVD..abi::EXT].iter().any(|&b| b != 0) {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectHdrReserved]);
        }
        if bv & (FP | SSE | YMM) != 0 {
            if !f && mxcsr & !self.host.mxcsr_feature_mask != 0 {
                return ret_err(origin, EINVAL, vec![Rule::SetRejectMxcsr]);
            }
            if bv & FP == 0 {
                self.vcpu.kbuf[abi::MXCSR..abi::ST].copy_from_slice(&buf[abi::MXCSR..abi::ST]);
                rules.push(Rule::SetMxcsrWithoutFp);
            }
        } else {
            rules.push(Rule::SetMxcsrUnchecked);
        }
        if bv & FP != 0 {
            self.vcpu.kbuf[..abi::FP_END].copy_from_slice(&buf[..abi::FP_END]);
            self.vcpu.mem_fop = [buf[abi::FOP], buf[abi::FOP + 1]];
            self.vcpu.raw_free &= !FP;
            rules.push(Rule::SetFpCopied);
        }
        if bv & SSE != 0 {
            self.vcpu.kbuf[abi::XMM..abi::XMM_END].copy_from_slice(&buf[abi::XMM..abi::XMM_END]);
            self.vcpu.raw_free &= !SSE;
            rules.push(Rule::SetSseCopied);
        }
        self.store_components(buf, bv, &mut rules);
        self.accept(bv, rules, origin)
    }

    fn get_mask(&self) -> u64 {
        self.get_mask_of(&self.vcpu)
    }

    fn get_mask_of(&self, v: &Vcpu) -> u64 {
        match self.contract() {
            Contract::V3 => v.user_xfeatures & (v.gsx | FPSSE),
            Contract::V1 | Contract::V2a | Contract::V2b => v.user_xfeatures,
            Contract::V0 => v.gsx | FPSSE,
        }
    }

    fn accept(&mut self, bv: u64, mut rules: Vec<Rule>, origin: Origin) -> OpResult {
        self.vcpu.kbv = bv;
        self.vcpu.kbv_free = 0;
        if bv & FP != 0 || self.contract() == Contract::V0 {
            self.vcpu.legacy_alts.retain(|a| a.0 == abi::MXCSR);
            self.vcpu.fsw_derived = false;
        }
        if bv & (FP | SSE | YMM) != 0 || self.contract() == Contract::V0 {
            self.vcpu.legacy_alts.retain(|a| a.0 != abi::MXCSR);
            self.vcpu.mxcsr_alt = None;
        }
        self.vcpu.hidden = bv & !self.get_mask();
        rules.extend([Rule::SetKbvReplaced, Rule::SetAccept]);
        ret_ok(origin, 0, rules)
    }

    fn store_components(&mut self, buf: &[u8], bv: u64, rules: &mut Vec<Rule>) {
        let mut copied = false;
        for comp in self.host.components_in_order(bv) {
            let (s, e) = (comp.offset as usize, (comp.offset + comp.size) as usize);
            if e > buf.len() || e > self.vcpu.kbuf.len() {
                continue;
            }
            if comp.bit == PKRU_BIT {
                self.vcpu.upkru = le32(buf, s);
                rules.push(Rule::SetPkruUpdated);
            } else {
                self.vcpu.kbuf[s..e].copy_from_slice(&buf[s..e]);
                copied = true;
            }
        }
        if copied {
            rules.push(Rule::SetComponentCopied);
        }
        if bv & PKRU == 0 && self.host.supported_xcr0 & PKRU != 0 {
            rules.push(Rule::SetPkruKept);
        }
    }

    // ---- KVM_GET_FPU / KVM_SET_FPU (§10) ----------------------------------------------------

    /// `KVM_SET_FPU`: the fields go into the legacy area (`kvm_arch_vcpu_ioctl_set_fpu`). The
    /// contract adds what the kernel's own `xfpregs_set` does: MXCSR validated and stored, FP
    /// and SSE marked in use. Quirk `kvm-fpu-legacy` is today's kernels.
    fn set_fpu(&mut self, origin: Origin, img: &FpuImage) -> OpResult {
        let b = img.render();
        let legacy = self.quirk(Quirk::KvmFpuLegacy);
        let mxcsr = le32(&b, abi::FPU_MXCSR);
        if !legacy && mxcsr & !self.host.mxcsr_feature_mask != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetFpuRejectMxcsr]);
        }
        let v = &mut self.vcpu;
        for off in (0..abi::LEGACY_SIZE).filter(|o| !(abi::MXCSR..abi::ST).contains(o)) {
            if let Some(o) = abi::legacy_to_fpu(off) {
                v.kbuf[off] = b[o];
            }
        }
        // `fxsave->twd = fpu->ftwx`: the u16 store zeroes FTW's reserved byte.
        v.kbuf[abi::FTW_RSVD] = 0;
        v.mem_fop = [v.kbuf[abi::FOP], v.kbuf[abi::FOP + 1]];
        v.raw_free = 0;
        v.fsw_derived = false;
        let mut rules = vec![Rule::SetFpuStored];
        if legacy {
            // XSTATE_BV is left as it is. A bit a hardware save left free (component at init:
            // XINUSE decides) stays free: the written state is reported and loaded only if the
            // processor saved the bit set. The model predicts "set" and allows "clear" at the
            // next GET (rule run.xinuse.free); a KVM_RUN before any GET resolves it is not
            // followed (a known limit: tests/fpu.rs).
            v.legacy_alts.retain(|a| a.0 == abi::MXCSR);
            rules.extend([Rule::QuirkFpuRaw, Rule::QuirkFpuMxcsr]);
        } else {
            put(&mut v.kbuf, abi::MXCSR, &mxcsr.to_le_bytes());
            v.legacy_alts.clear();
            v.mxcsr_alt = None;
            v.kbv |= FPSSE;
            v.kbv_free &= !FPSSE;
            rules.extend([Rule::SetFpuMxcsr, Rule::SetFpuXfeatures]);
            self.vcpu.hidden = self.vcpu.kbv & !self.get_mask();
        }
        ret_ok(origin, 0, rules)
    }

    /// `KVM_GET_FPU`: the 416-byte `struct kvm_fpu` (the kernel zero-allocates it).
    fn get_fpu(&self, origin: Origin) -> OpResult {
        let v = &self.vcpu;
        let k = &v.kbuf;
        let legacy = self.quirk(Quirk::KvmFpuLegacy);
        let mut img = vec![0u8; abi::LEGACY_SIZE];
        let mut rules = Vec::with_capacity(4);
        let unpredicted = Vec::new();
        let mut allowed = Vec::new();
        let shown = if legacy {
            img.copy_from_slice(&k[..abi::LEGACY_SIZE]);
            put(&mut img, abi::MXCSR, &0u32.to_le_bytes());
            rules.extend([Rule::QuirkFpuRaw, Rule::QuirkFpuMxcsr]);
            if v.raw_free != 0 {
                // Saved at init with XINUSE clear: written as init or left as it was.
                let rule = Rule::RunXinuseFree;
                if v.raw_free & FP != 0 {
                    allowed.push(Allowed::OneOf { start: 0, values: v.raw_fp.clone(), rule });
                }
                if v.raw_free & SSE != 0 {
                    allowed.push(Allowed::OneOf { start: abi::FPU_XMM as u32, values: v.raw_sse.clone(), rule });
                }
                rules.push(rule);
            }
            FP | SSE
        } else {
            let h = v.kbv;
            if h & FP != 0 {
                img[..abi::MXCSR].copy_from_slice(&k[..abi::MXCSR]);
                img[abi::ST..abi::FP_END].copy_from_slice(&k[abi::ST..abi::FP_END]);
            } else {
                put(&mut img, abi::FCW, &abi::FCW_INIT.to_le_bytes());
            }
            let mxcsr = if h & (SSE | YMM) != 0 { le32(k, abi::MXCSR) } else { abi::MXCSR_INIT };
            put(&mut img, abi::MXCSR, &mxcsr.to_le_bytes());
            if h & SSE != 0 {
                img[abi::XMM..abi::XMM_END].copy_from_slice(&k[abi::XMM..abi::XMM_END]);
            }
            rules.extend([Rule::GetFpuView, Rule::GetFpuMxcsr]);
            h
        };
        let data = abi::fpu_from_legacy(&img);
        if shown & FP != 0 && v.fsw_derived {
            allowed.push(Allowed::FreeBits { at: abi::FPU_FCW as u32, mask: 0x8080 << 16, rule: Rule::RunFswDerived });
            rules.push(Rule::RunFswDerived);
        }
        for (start, values, rule, under) in &v.legacy_alts {
            let mxcsr = *start == abi::MXCSR;
            if *start == 5 || shown & under == 0 || (legacy && mxcsr) {
                continue;
            }
            if let Some(o) = abi::legacy_to_fpu(*start) {
                let values = values.iter().map(|x| x[..x.len().min(if mxcsr { 4 } else { x.len() })].to_vec()).collect();
                allowed.push(Allowed::OneOf { start: o as u32, values, rule: *rule });
                rules.push(*rule);
            }
        }
        OpResult { origin, ret: Ret::Ok(0), data, unpredicted, rules, allowed }
    }

    // ---- XCRS (§5) -------------------------------------------------------------------------

    fn set_xcrs(&mut self, origin: Origin, x: &XcrsImage) -> OpResult {
        let raw = KvmXcrs::from_bytes(&x.render());
        let (nr, flags) = (raw.nr_xcrs, raw.flags);
        let f = self.force_accept;
        if nr > MAX_XCRS && !f {
            return ret_err(origin, EINVAL, vec![Rule::XcrsRejectNr]);
        }
        if flags != 0 && !f {
            return ret_err(origin, EINVAL, vec![Rule::XcrsRejectFlags]);
        }
        for e in raw.xcrs.iter().take(nr.min(MAX_XCRS) as usize) {
            if e.xcr == 0 {
                let value = e.value;
                let mut rules = vec![Rule::XcrsFirstXcr0];
                return match self.check_xcr0(value) {
                    Err(r) if !f => {
                        rules.push(r);
                        ret_err(origin, EINVAL, rules)
                    }
                    _ => {
                        self.vcpu.xcr0 = value;
                        rules.push(Rule::Xcr0Accept);
                        ret_ok(origin, 0, rules)
                    }
                };
            }
        }
        ret_ok(origin, 0, vec![Rule::XcrsNoXcr0])
    }

    fn check_xcr0(&self, x: u64) -> Result<(), Rule> {
        if x & FP == 0 {
            return Err(Rule::Xcr0RejectFp);
        }
        if x & YMM != 0 && x & SSE == 0 {
            return Err(Rule::Xcr0RejectYmmSse);
        }
        let valid = match self.contract() {
            Contract::V2a => self.vcpu.user_xfeatures | FP,
            _ => self.vcpu.gsx | FP,
        };
        if x & !valid != 0 {
            return Err(if self.contract() == Contract::V2a { Rule::Xcr0V2aUserXfeatures } else { Rule::Xcr0RejectUnsupported });
        }
        if (x & BNDREGS == 0) != (x & BNDCSR == 0) {
            return Err(Rule::Xcr0RejectMpx);
        }
        if x & AVX512 != 0 && (x & YMM == 0 || x & AVX512 != AVX512) {
            return Err(Rule::Xcr0RejectAvx512);
        }
        if self.contract().has_xsave2() && x & XTILE != 0 && x & XTILE != XTILE {
            return Err(Rule::Xcr0RejectAmx);
        }
        Ok(())
    }

    fn get_xcrs(&self, origin: Origin) -> OpResult {
        let mut x = KvmXcrs { nr_xcrs: 1, ..KvmXcrs::default() };
        x.xcrs[0] = KvmXcr { xcr: 0, reserved: 0, value: self.vcpu.xcr0 };
        let data = x.to_bytes().to_vec();
        OpResult { origin, ret: Ret::Ok(0), data, unpredicted: Vec::new(), rules: vec![Rule::XcrsGet], allowed: Vec::new() }
    }
}

/// FIP as the processor may hold it after loading `img`: canonicalised to a 48- or 57-bit
/// linear address (rule `run.fip.canonical`), or zero (`run.x87_ptr.zero`).
fn fip_choice(img: &[u8]) -> Allowed {
    let fip = le64(img, abi::FIP);
    let sext = |bits: u32| (((fip << (64 - bits)) as i64) >> (64 - bits)) as u64;
    let values = vec![sext(48).to_le_bytes().to_vec(), sext(57).to_le_bytes().to_vec(), vec![0; 8]];
    Allowed::OneOf { start: abi::FIP as u32, values, rule: Rule::RunFipCanonical }
}

/// x87 bytes whose saved value is the processor's choice after a load of `img`: FCW's reserved
/// bits may read as loaded or normalised (`run.fcw.reserved`), and FOP, FIP and FDP may read
/// zero (`run.x87_ptr.zero`: AMD saves them only with FSW.ES, QEMU's TCG never).
fn x87_choices(img: &[u8]) -> Vec<(usize, Vec<Vec<u8>>, Rule)> {
    let fcw = le32(img, abi::FCW) as u16;
    let mut v = vec![(abi::FCW, vec![((fcw & 0x1f3f) | 0x40).to_le_bytes().to_vec(), fcw.to_le_bytes().to_vec()], Rule::RunFcwReserved)];
    v.push((abi::FOP, vec![vec![0; 2]], Rule::RunX87PtrEs));
    v.push((abi::FDP, vec![vec![0; 8]], Rule::RunX87PtrEs));
    v
}

/// FSW.ES (bit 7) and FSW.B (bit 15) are derived by the processor from the exception flags and
/// masks when it loads x87 state (rule `run.fsw.derived`).
fn fsw_choice() -> Allowed {
    Allowed::FreeBits { at: 0, mask: 0x8080 << 16, rule: Rule::RunFswDerived }
}

impl Model<'_> {
    /// Follow a processor choice an observation revealed (`used`: the rules of the choices the
    /// observation took): the state keeps what the processor chose.
    fn adopt(&mut self, used: &[Rule]) {
        if used.contains(&Rule::RunEntryMxcsr) {
            if let Some(alt) = self.vcpu.mxcsr_alt.take() {
                put(&mut self.vcpu.kbuf, abi::MXCSR, &alt);
                self.vcpu.legacy_alts.retain(|a| a.0 != abi::MXCSR);
            }
        }
    }
}

/// Free XSTATE_BV bits among the reported features `h`.
fn v_free(v: &Vcpu, h: u64) -> u64 {
    v.kbv_free & h
}

/// Predict every step of `case` on `host` under `cfg`.
pub fn predict(case: &Case, host: &HostFacts, cfg: &ModelConfig) -> Trace {
    let mut m = Model::new(host, cfg);
    let results = case.steps().iter().map(|(origin, op)| m.step(*origin, op)).collect();
    Trace { results }
}

/// Predict every step, taking each hardware choice as `observed` shows it where the prediction
/// allows it ([`OpResult::resolve`]), so later steps follow the choice the processor made:
/// a restore of a GET whose FIP the processor canonicalised restores the canonical FIP.
pub fn predict_following(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace) -> Trace {
    predict_synced(case, host, cfg, observed, &[])
}

/// [`predict_following`], and at each step in `sync` the model is also forced to follow the
/// kernel's observed result (a re-synchronised prediction): a SET the kernel refused is taken
/// as refused, one it accepted as accepted, a GET's observed bytes as the last GET. The
/// predicted result of a `sync` step itself is kept as predicted.
pub fn predict_synced(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace, sync: &[usize]) -> Trace {
    let mut m = Model::new(host, cfg);
    let n = case.steps().len();
    Trace { results: run_synced(&mut m, case, observed, sync, n) }
}

/// The buffer the SET at step `k` passes, in the re-synchronised replay of [`predict_synced`].
pub fn set_buffer(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace, sync: &[usize], k: usize) -> Option<Vec<u8>> {
    let mut m = Model::new(host, cfg);
    run_synced(&mut m, case, observed, sync, k);
    case.steps().get(k).and_then(|(_, op)| m.set_buffer(op))
}

fn run_synced(m: &mut Model<'_>, case: &Case, observed: &Trace, sync: &[usize], upto: usize) -> Vec<OpResult> {
    let mut results = Vec::new();
    for (k, (origin, op)) in case.steps().iter().enumerate().take(upto) {
        let follow = sync.contains(&k);
        let before = follow.then(|| (m.vcpu.clone(), m.last_get.clone(), m.last_get_free));
        let r = m.step(*origin, op);
        let r = match observed.results.get(k) {
            Some(o) if !r.allowed.is_empty() => {
                let (resolved, used) = r.resolve(o);
                m.adopt(&used);
                if matches!(**op, Op::GetXsave | Op::GetXsave2) && resolved.ret == Ret::Ok(0) {
                    m.last_get = Some(resolved.data.clone());
                }
                resolved
            }
            _ => r,
        };
        if let (Some((vcpu, last_get, last_get_free)), Some(o)) = (before, observed.results.get(k)) {
            m.follow(op, &r, o, vcpu, last_get, last_get_free);
        }
        results.push(r);
    }
    results
}

impl Model<'_> {
    /// Force the model to the kernel's observed result `obs` of `op`, predicted as `r`, from
    /// the state before the step.
    fn follow(&mut self, op: &Op, r: &OpResult, obs: &OpResult, vcpu: Vcpu, last_get: Option<Vec<u8>>, last_get_free: u64) {
        let setter = matches!(op, Op::SetXsave(_) | Op::RestoreLast { .. } | Op::SetCpuid2(_) | Op::SetXcrs(_));
        match (r.ret, obs.ret) {
            (Ret::Ok(_), Ret::Err(_)) if setter => {
                // Refused by the kernel: nothing changed.
                (self.vcpu, self.last_get, self.last_get_free) = (vcpu, last_get, last_get_free);
            }
            (Ret::Err(_), Ret::Ok(_)) if setter => {
                (self.vcpu, self.last_get, self.last_get_free) = (vcpu, last_get, last_get_free);
                self.force_accept = true;
                self.step(obs.origin, op);
                self.force_accept = false;
            }
            (_, Ret::Ok(_)) if matches!(op, Op::GetXsave | Op::GetXsave2) => {
                self.last_get = Some(obs.data.clone());
                self.last_get_free = 0;
            }
            (Ret::Ok(_), Ret::Err(_)) if matches!(op, Op::GetXsave | Op::GetXsave2) => {
                (self.last_get, self.last_get_free) = (last_get, last_get_free);
            }
            _ => {}
        }
    }
}
