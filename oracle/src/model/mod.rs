//! The vCPU model: predicts, for every step of a case, the errno or success and every output
//! byte, under a selectable contract version (spec §9) and optional named host quirks.
//!
//! One state machine, [`Model`] holding the vCPU's state ([`Vcpu`]: fpstate image, CPUID
//! table, XCR0, run state), split by ioctl family: each submodule adds the `Model` methods of
//! its ioctls, one function per rule, and reads and writes the `Vcpu` fields (private to this
//! module and its children).

mod cpuid;
mod fpu;
mod replay;
mod run;
mod xcrs;
mod xsave;

pub use replay::{predict, predict_following, predict_following_consulting, predict_synced, set_buffer};

use crate::abi::cpuid::CpuidEntry;
use crate::abi::{self, le64, put, xstate_required_size};
use crate::case::{Op, Origin};
use crate::host::{HostFacts, Quirk};
use crate::rules::Rule;
use crate::trace::{OpResult, Ret};
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

/// An ioctl family whose contract a composite model may take from another version
/// ([`FamilyContracts`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `KVM_GET_XSAVE`/`KVM_GET_XSAVE2`: the GET mask (incl. the `user_xfeatures` it is taken
    /// from) and the legacy area as reported.
    Get,
    /// `KVM_SET_XSAVE`: its validation (incl. the `user_xfeatures` it checks against) and load.
    Set,
}

/// Per-family contract overrides: a composite model carries several versions' defects at once,
/// e.g. V3 with V1's unmasked GET and V2b's restrictive SET (`model:V3+get=V1+set=V2b`). Each
/// family derives its state from its own contract; every other ioctl follows the base contract.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FamilyContracts {
    /// Contract of the GET family (none: the base contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<Contract>,
    /// Contract of the SET family (none: the base contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Contract>,
}

impl FamilyContracts {
    /// No override: a single-contract model.
    pub fn is_empty(&self) -> bool {
        self.get.is_none() && self.set.is_none()
    }
}

/// What the model predicts under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Contract version (the base one, for every family without an override).
    pub contract: Contract,
    /// Host quirks modelled (empty: strict upstream).
    pub quirks: Vec<Quirk>,
    /// Per-family overrides of `contract` (a composite model); absent from the serialized form
    /// when empty, so single-contract configurations serialize as before.
    #[serde(default, skip_serializing_if = "FamilyContracts::is_empty")]
    pub families: FamilyContracts,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig::new(Contract::V3, Vec::new())
    }
}

impl ModelConfig {
    /// A single-contract model with `quirks`.
    pub fn new(contract: Contract, quirks: Vec<Quirk>) -> ModelConfig {
        ModelConfig { contract, quirks, families: FamilyContracts::default() }
    }

    /// The contract `family` follows.
    pub fn contract_for(&self, family: Family) -> Contract {
        let o = match family {
            Family::Get => self.families.get,
            Family::Set => self.families.set,
        };
        o.unwrap_or(self.contract)
    }

    /// The contracts as a backend name shows them: `V3`, or `V3+get=V1+set=V2b` for a composite.
    pub fn contract_label(&self) -> String {
        let mut s = self.contract.name().to_string();
        for (name, c) in [("get", self.families.get), ("set", self.families.set)] {
            if let Some(c) = c {
                s.push_str(&format!("+{name}={c}"));
            }
        }
        s
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
    /// (entry index, register mask, the rule that leaves them unpredicted).
    cpuid_unpredicted: Vec<(usize, u8, Rule)>,
    gsx: u64,
    /// The host default `user_xfeatures`, with AMX once a CPUID enables it; what a contract
    /// makes of it: [`user_xfeatures`].
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
    /// `run.entry.mxcsr`, carried with it), while nothing has written MXCSR since; adopted when
    /// an observation shows the choice ([`predict_following`]).
    mxcsr_alt: Option<(Vec<u8>, Rule)>,
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
    /// Quirk `kvm-fpu-legacy`: FP/SSE bits a `KVM_SET_FPU` wrote while the last hardware save
    /// left their XSTATE_BV bit to the processor (`kbv_free`): the next run loads the written
    /// state only if the bit was saved set (rule `quirk.fpu.run_init`).
    fpu_unsure: u64,
    /// The vCPU as the last run left it had those bits been saved clear, with the rule; adopted
    /// when an observation shows it, forgotten at the next step that is not a read.
    run_alt: Option<(Box<Vcpu>, Rule)>,
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
    /// The quirks this model asked `cfg` about (one bit per [`Quirk`]): a prediction that never
    /// asked about a quirk is the same with that quirk modelled.
    consulted: std::cell::Cell<u32>,
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
        Model {
            host,
            cfg,
            vcpu: Self::fresh(host, cfg),
            last_get: None,
            last_get_free: 0,
            force_accept: false,
            consulted: std::cell::Cell::new(0),
        }
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
            fpu_unsure: 0,
            run_alt: None,
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

    /// Whether `cfg` models quirk `q`: the model's only way to ask (so that it knows which
    /// quirks a prediction depended on, [`Model::consulted`]).
    fn quirk(&self, q: Quirk) -> bool {
        self.consulted.set(self.consulted.get() | 1 << q as u32);
        self.cfg.quirks.contains(&q)
    }

    /// Whether this model asked about quirk `q` so far.
    pub(crate) fn consulted(&self, q: Quirk) -> bool {
        self.consulted.get() & 1 << q as u32 != 0
    }

    fn contract(&self) -> Contract {
        self.cfg.contract
    }

    fn contract_for(&self, family: Family) -> Contract {
        self.cfg.contract_for(family)
    }

    /// Predict one step.
    pub fn step(&mut self, origin: Origin, op: &Op) -> OpResult {
        if !matches!(op, Op::GetXsave | Op::GetXsave2 | Op::GetFpu | Op::GetXcrs | Op::GetCpuid2 { .. } | Op::CheckXsave2) {
            self.vcpu.run_alt = None;
        }
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
            Op::RunGuest(p) => self.kvm_run(origin, p),
            Op::SetFpu(img) => self.set_fpu(origin, img),
            Op::GetFpu => self.get_fpu(origin),
        }
    }

    fn get_mask(&self) -> u64 {
        self.get_mask_of(&self.vcpu)
    }

    fn get_mask_of(&self, v: &Vcpu) -> u64 {
        match self.contract_for(Family::Get) {
            Contract::V3 => v.user_xfeatures & (v.gsx | FPSSE),
            c @ (Contract::V1 | Contract::V2a | Contract::V2b) => user_xfeatures(v, c),
            Contract::V0 => v.gsx | FPSSE,
        }
    }
}

/// The fpstate's `user_xfeatures` under contract `c`: 5.17–6.5 (V2a, V2b) replace it with the
/// guest CPUID's XCR0 bits at each successful `KVM_SET_CPUID2` (V2b: with FP|SSE); the others
/// keep the host default (with AMX once the CPUID enables it), [`Vcpu::user_xfeatures`].
fn user_xfeatures(v: &Vcpu, c: Contract) -> u64 {
    match c {
        Contract::V2a if v.cpuid_set => v.gsx,
        Contract::V2b if v.cpuid_set => v.gsx | FPSSE,
        _ => v.user_xfeatures,
    }
}
