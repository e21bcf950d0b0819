//! Host probe: measures the host facts the oracle needs, detects named quirks by
//! set-and-read-back, and tells which contract version the host matches by judging a fixed
//! battery of probe cases under every version.
//!
//! About 600 lines: one measurement per named quirk and host fact, each with the evidence it
//! prints; they share the probe's vCPU helpers, and splitting them would scatter the quirk list.

use crate::kvm::KvmBackend;
use crate::{open_kvm, sys, Backend, BackendError};
use serde::{Deserialize, Serialize};
use xsave_oracle::abi::cpuid::{cpuid2_trace_entries, CPUID_FLAG_SIGNIFICANT_INDEX};
use xsave_oracle::abi::ioctl::{KVM_CAP_XCRS, KVM_CAP_XSAVE, KVM_CAP_XSAVE2};
use xsave_oracle::case::*;
use xsave_oracle::diff::diff;
use xsave_oracle::host::{Component, HostFacts, Quirk};
use xsave_oracle::judge::diff_explained;
use xsave_oracle::model::{predict, Contract, ModelConfig};
use xsave_oracle::trace::Ret;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::xfeatures::*;

/// Probe output (`xsave-rig probe --json`). Also a portable host fingerprint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeReport {
    /// Version of xsave-rig that wrote this.
    pub rig_version: String,
    /// `uname -r`.
    pub kernel_release: String,
    /// KVM vendor module(s) loaded (`kvm_intel`, `kvm_amd`, `kvm_pvm`, ...).
    pub kvm_module: String,
    /// The host processor (`/proc/cpuinfo` of its first CPU): part of the fingerprint a
    /// finding carries, since the XSAVE layout, XINUSE and FIP/FOP behaviour are the CPU's.
    #[serde(default)]
    pub cpu: Cpu,
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// `KVM_CHECK_EXTENSION` values of XSAVE (55), XCRS (56), XSAVE2 (208).
    pub capabilities: Capabilities,
    /// From `KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP)` (hex).
    pub supported_xcr0: String,
    /// From `KVM_GET_SUPPORTED_CPUID` leaf 0xD.0 (hex; permission-filtered).
    pub supported_xcr0_cpuid: String,
    /// `KVM_CAP_XSAVE2` size in bytes (at least 4096).
    pub xsave_size: u32,
    /// Standard-format layout of the host's extended components.
    pub components: Vec<Component>,
    /// Host MXCSR mask (hex).
    pub mxcsr_mask: String,
    /// Host user XCR0 (hex).
    pub host_xcr0: String,
    /// The newest contract version every probe case agrees with, or `unknown`.
    pub contract: String,
    /// Every version every probe case agrees with.
    pub contract_matches: Vec<String>,
    /// The contract that agrees on the most probe cases, and where the host departs from it
    /// (empty departures when it matches exactly): a diagnosis for a kernel matching none.
    #[serde(default)]
    pub nearest: Option<Nearest>,
    /// Named quirks found.
    pub quirks: Vec<Quirk>,
    /// What was measured to find them.
    pub quirk_evidence: Vec<String>,
    /// Guest execution: whether guest programs run, at which CPL, which components a guest can
    /// write, and whether hardware XCR0 follows the guest's.
    #[serde(default)]
    pub guest: Option<GuestProbe>,
    /// Per probe case, the versions it agrees with.
    pub probe_cases: Vec<ProbeCaseResult>,
    /// The facts the oracle uses (feed back with `--host-facts`).
    pub host: HostFacts,
}

/// `KVM_CHECK_EXTENSION` results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Capabilities {
    /// KVM_CAP_XSAVE.
    pub xsave: i32,
    /// KVM_CAP_XCRS.
    pub xcrs: i32,
    /// KVM_CAP_XSAVE2.
    pub xsave2: i32,
}

/// What the probe measured of guest execution (`probe --json` `guest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestProbe {
    /// A guest program ran to its end (the rig's long-mode set-up and its MMIO exit work).
    pub runs: bool,
    /// The privilege level the rig runs guest programs at (3: the only one kvm_pvm runs
    /// natively; stock KVM runs it too).
    pub cpl: u8,
    /// xfeatures guest programs wrote and then saw in-use in their own XSAVE (hex).
    pub writable: String,
    /// Hardware XCR0 follows the guest's XCR0 (false under quirk `pvm-hw-xcr0`).
    pub hw_xcr0_follows_guest: bool,
}

/// Run the guest probes on `backend`: a program per component group, with guest XCR0 set to
/// the host's supported XCR0 (without AMX), each storing its own XSAVE image.
pub fn probe_guest(backend: &mut dyn Backend, quirks: &[Quirk]) -> Result<GuestProbe, BackendError> {
    use xsave_oracle::guest::{GuestAction as A, GuestProgram};
    let host = backend.host().clone();
    let config = Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: !0, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: Some(host.supported_xcr0 & !XTILE),
    };
    let programs = [
        vec![A::Fldcw { value: 0x27f }, A::Xmm { seed: 0x61 }, A::Ymm { seed: 0x62 }, A::Xsave],
        vec![A::Opmask { seed: 0x63 }, A::Zmm { seed: 0x64 }, A::Xsave],
        vec![A::Wrpkru { value: 0x4 }, A::Xsave],
    ];
    let (mut runs, mut writable) = (false, 0u64);
    for actions in programs {
        let case = Case { config: config.clone(), ops: vec![Op::RunGuest(GuestProgram { actions })] };
        let obs = backend.execute(&case)?;
        if let Some(r) = obs.results.last().filter(|r| r.ret == Ret::Ok(0)) {
            runs = true;
            writable |= xsave_oracle::abi::le64(&r.data, xsave_oracle::abi::XSTATE_BV);
        }
    }
    Ok(GuestProbe { runs, cpl: 3, writable: format!("{writable:#x}"), hw_xcr0_follows_guest: !quirks.contains(&Quirk::PvmHwXcr0) })
}

/// The nearest contract version and the probe cases where the host departs from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Nearest {
    /// The version whose departures have the fewest distinct causes (ioctl and deciding rule
    /// of the first differing step), then the newest.
    pub contract: String,
    /// Probe cases that disagree with it.
    pub departures: Vec<Departure>,
}

/// One probe case where the host departs from the nearest contract.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Departure {
    /// Probe case name.
    pub case: String,
    /// Rule ids behind the prediction of the first differing step.
    pub rules: Vec<String>,
    /// What the contract predicts there (return value or bytes).
    pub expected: String,
    /// What the host did.
    pub observed: String,
    /// The divergence title.
    pub title: String,
    /// The ioctl of the first differing step.
    pub op: String,
}

impl std::fmt::Display for Nearest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "nearest {}", self.contract)?;
        if self.departures.is_empty() {
            return Ok(());
        }
        write!(f, ", departs on: ")?;
        for (i, d) in self.departures.iter().enumerate() {
            let sep = if i > 0 { "; " } else { "" };
            write!(
                f,
                "{sep}{} ({}: {} where {} predicts {})",
                d.case,
                d.rules.first().map_or("", String::as_str),
                d.observed,
                self.contract,
                d.expected
            )?;
        }
        Ok(())
    }
}

/// The result of judging the probe battery under every contract version.
#[derive(Clone, Debug)]
pub struct ContractMatch {
    /// Versions every probe case agrees with, oldest first.
    pub matches: Vec<Contract>,
    /// The nearest version and the departures from it.
    pub nearest: Option<Nearest>,
    /// Per probe case, the versions it agrees with.
    pub cases: Vec<ProbeCaseResult>,
}

/// Run the probe battery on `backend` and judge every case under every contract version
/// (with `quirks` modelled): the versions that match, and the nearest one with the host's
/// departures from it.
pub fn match_contract(backend: &mut dyn Backend, host: &HostFacts, quirks: &[Quirk]) -> Result<ContractMatch, BackendError> {
    let mut matches: Vec<Contract> = Contract::ALL.to_vec();
    let mut cases = Vec::new();
    let mut runs = Vec::new();
    for (name, case) in probe_cases() {
        let obs = backend.execute(&case)?;
        let agrees: Vec<Contract> = Contract::ALL
            .iter()
            .copied()
            .filter(|c| {
                let cfg = ModelConfig::new(*c, quirks.to_vec());
                diff(&case, host, &cfg, &predict(&case, host, &cfg), &obs) == Verdict::Agree
            })
            .collect();
        matches.retain(|c| agrees.contains(c));
        cases.push(ProbeCaseResult { name: name.to_string(), agrees_with: agrees.iter().map(|c| c.name().to_string()).collect() });
        runs.push((name, case, obs, agrees));
    }
    // Nearest: the version whose departures have the fewest distinct causes (ioctl and
    // deciding rule of the first differing step: one defect breaks one rule, however many
    // probe cases show it; how many cases show it is an artifact of the battery), then the
    // newest.
    let nearest = Contract::ALL
        .iter()
        .map(|&c| {
            let cfg = ModelConfig::new(c, quirks.to_vec());
            let departures: Vec<Departure> = runs
                .iter()
                .filter(|r| !r.3.contains(&c))
                .filter_map(|(name, case, obs, _)| {
                    let exp = predict(case, host, &cfg);
                    let Verdict::Diverge(d) = diff_explained(case, host, &cfg, &exp, obs) else { return None };
                    let (expected, observed) = match d.bytes.first() {
                        Some(b) => (format!("{} {}", b.region, hex(&b.expected)), format!("{} {}", b.region, hex(&b.observed))),
                        None => (d.expected_ret.to_string(), d.observed_ret.to_string()),
                    };
                    Some(Departure {
                        case: name.to_string(),
                        rules: d.rules.iter().map(|r| r.id().to_string()).collect(),
                        expected,
                        observed,
                        title: d.title.clone(),
                        op: d.op.clone(),
                    })
                })
                .collect();
            let mut causes: Vec<(&str, Option<&String>)> = departures.iter().map(|d| (d.op.as_str(), d.rules.first())).collect();
            causes.sort();
            causes.dedup();
            let key = (std::cmp::Reverse(causes.len()), c);
            (key, Nearest { contract: c.name().to_string(), departures })
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, n)| n);
    Ok(ContractMatch { matches, nearest, cases })
}

/// Little-endian bytes of at most 8 as a hex number (`0x7` for `07 00 ...`), longer runs as
/// hex bytes, for departure summaries.
fn hex(b: &[u8]) -> String {
    if b.len() <= 8 {
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        format!("{:#x}", u64::from_le_bytes(a))
    } else {
        xsave_oracle::hexnum::to_hex(b)
    }
}

/// One probe case's agreement per contract version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeCaseResult {
    /// Name.
    pub name: String,
    /// Versions whose prediction agrees with the observation.
    pub agrees_with: Vec<String>,
}

/// The host processor as `/proc/cpuinfo` names it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cpu {
    /// `vendor_id` (GenuineIntel, AuthenticAMD, ...).
    pub vendor: String,
    /// `model name`.
    pub model_name: String,
    /// `cpu family`, `model`, `stepping` as `family.model.stepping` (decimal).
    pub signature: String,
    /// `microcode` revision.
    pub microcode: String,
}

/// The first CPU of `/proc/cpuinfo` (fields empty where absent).
pub fn cpu() -> Cpu {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let first = text.split("\n\n").next().unwrap_or("");
    let field = |k: &str| {
        first.lines().find_map(|l| l.split_once(':').filter(|(n, _)| n.trim() == k).map(|(_, v)| v.trim().to_string())).unwrap_or_default()
    };
    Cpu {
        vendor: field("vendor_id"),
        model_name: field("model name"),
        signature: format!("{}.{}.{}", field("cpu family"), field("model"), field("stepping")),
        microcode: field("microcode"),
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

fn kvm_modules() -> String {
    let mut v: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("kvm_") || n == "kvm-intel" || n == "kvm-amd")
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    if v.is_empty() {
        "kvm (built in or unknown vendor module)".into()
    } else {
        v.join(",")
    }
}

/// Measure the host facts (no quirk detection).
pub fn host_facts() -> Result<HostFacts, BackendError> {
    let kvm = open_kvm()?;
    let supported_cpuid: Vec<CpuidEntry> = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BackendError::Setup(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?
        .as_slice()
        .iter()
        .map(|e| CpuidEntry::new(e.function, e.index, e.flags, [e.eax, e.ebx, e.ecx, e.edx]))
        .collect();
    let d0 = supported_cpuid.iter().find(|e| e.function == 0xd && e.index == 0);
    let cpuid_xcr0 = d0.map_or(FPSSE, |e| e.eax as u64 | ((e.edx as u64) << 32));
    let supported_xcr0 = sys::xcomp_guest_supp(&kvm).unwrap_or(cpuid_xcr0);
    let raw0 = core::arch::x86_64::__cpuid_count(0xd, 0);
    let raw_xcr0 = raw0.eax as u64 | ((raw0.edx as u64) << 32);
    let host_xcr0 = sys::xcomp_supp().unwrap_or(raw_xcr0);
    let mut host_cpuid_0xd = Vec::new();
    let mut components = Vec::new();
    for i in 0..64u32 {
        let r = core::arch::x86_64::__cpuid_count(0xd, i);
        if i >= 2 && raw_xcr0 & (1u64 << i) != 0 && r.eax != 0 && r.ecx & 1 == 0 {
            components.push(Component { bit: i as u8, offset: r.ebx, size: r.eax, align64: r.ecx & 2 != 0 });
        }
        if i < 2 || r.eax != 0 {
            host_cpuid_0xd.push(CpuidEntry::new(0xd, i, CPUID_FLAG_SIGNIFICANT_INDEX, [r.eax, r.ebx, r.ecx, r.edx]));
        }
    }
    let mask = sys::fxsave_mxcsr_mask();
    Ok(HostFacts {
        supported_xcr0,
        host_xcr0,
        guest_perm: sys::xcomp_guest_perm().unwrap_or(host_xcr0 & !USER_DYNAMIC),
        mxcsr_feature_mask: if mask == 0 { 0xffbf } else { mask },
        init_mxcsr_mask: mask,
        components,
        host_cpuid_0xd,
        supported_cpuid,
        quirks: Vec::new(),
        get_cpuid2_keeps_nent: false,
        cpuid_sgx_xfrm_masked: false,
        pvm_dropped_leaves: Vec::new(),
    })
}

/// The CPUID table the quirk check sets: leaf 1 and 7 zeroed, 0xD.0 narrowed to FP|SSE.
fn quirk_case() -> Case {
    let table = CpuidTable {
        base: CpuidBase::Empty,
        entries: vec![
            CpuidEntry::new(1, 0, 0, [0x000a_0671, 0, 0, 0]),
            CpuidEntry::new(7, 0, CPUID_FLAG_SIGNIFICANT_INDEX, [0, 0, 0, 0]),
            CpuidEntry::new(0xd, 0, CPUID_FLAG_SIGNIFICANT_INDEX, [FPSSE as u32, 0, 0, 0]),
            CpuidEntry::new(0xd, 1, CPUID_FLAG_SIGNIFICANT_INDEX, [0, 0, 0, 0]),
        ],
        reverse: false,
    };
    Case { config: Config { cpuid: Some(table), xcr0: None }, ops: vec![Op::GetCpuid2 { capacity: 256 }] }
}

/// Does a successful `KVM_GET_CPUID2` leave the caller's `nent` (kernels before 6.5)?
pub fn measure_keeps_nent(backend: &mut dyn Backend) -> Result<bool, BackendError> {
    let table = CpuidTable { base: CpuidBase::Empty, entries: vec![CpuidEntry::new(0x4000_0000, 0, 0, [0; 4])], reverse: false };
    let case = Case { config: Config { cpuid: Some(table), xcr0: None }, ops: vec![Op::GetCpuid2 { capacity: 3 }] };
    let obs = backend.execute(&case)?;
    Ok(obs.results.last().is_some_and(|r| r.data.get(..4) == Some(&3u32.to_le_bytes()[..])))
}

/// Does `KVM_SET_CPUID2` mask CPUID.0x12.1 ECX/EDX with guest XCR0 (FP|SSE forced)?
pub fn measure_sgx_xfrm(backend: &mut dyn Backend) -> Result<bool, BackendError> {
    let table = CpuidTable {
        base: CpuidBase::Empty,
        entries: vec![
            CpuidEntry::new(0xd, 0, CPUID_FLAG_SIGNIFICANT_INDEX, [FPSSE as u32, 0, 0, 0]),
            CpuidEntry::new(0x12, 1, CPUID_FLAG_SIGNIFICANT_INDEX, [0, 0, !0, !0]),
        ],
        reverse: false,
    };
    let case = Case { config: Config { cpuid: Some(table), xcr0: None }, ops: vec![Op::GetCpuid2 { capacity: 64 }] };
    let obs = backend.execute(&case)?;
    let Some(d) = obs.results.last().map(|r| &r.data) else { return Ok(false) };
    let entries: Vec<CpuidEntry> = cpuid2_trace_entries(d);
    Ok(entries.iter().any(|e| e.function == 0x12 && e.index == 1 && e.ecx == FPSSE as u32))
}

/// Leaves the probe offers to find which ones a rewriting host drops.
pub fn candidate_leaves() -> Vec<u32> {
    (0..0x40u32).chain(0x4000_0000..0x4000_0010).chain(0x8000_0000..0x8000_0040).filter(|&f| f != 1 && f != 7 && f != 0xd).collect()
}

/// Under the rewrite quirk: which leaves does `KVM_SET_CPUID2` drop? (set, read back)
pub fn measure_dropped_leaves(backend: &mut dyn Backend) -> Result<Vec<u32>, BackendError> {
    let cands = candidate_leaves();
    let entries = cands.iter().map(|&f| CpuidEntry::new(f, 0, 0, [0, 0, 0, 0])).collect();
    let case = Case {
        config: Config { cpuid: Some(CpuidTable { base: CpuidBase::Empty, entries, reverse: false }), xcr0: None },
        ops: vec![Op::GetCpuid2 { capacity: 256 }],
    };
    let obs = backend.execute(&case)?;
    let Some(r) = obs.results.last() else {
        return Ok(Vec::new());
    };
    let present: Vec<u32> = cpuid2_trace_entries(&r.data).iter().map(|e| e.function).collect();
    Ok(cands.into_iter().filter(|f| !present.contains(f)).collect())
}

/// Detect quirks by set-and-read-back: a quirk is named when the strict upstream prediction
/// of the read-back table disagrees and the quirk's model agrees.
pub fn detect_quirks(backend: &mut dyn Backend) -> Result<(Vec<Quirk>, Vec<String>), BackendError> {
    let host = backend.host().clone();
    let case = quirk_case();
    let obs = backend.execute(&case)?;
    let strict = ModelConfig::default();
    let exp = predict(&case, &host, &strict);
    let mut evidence = Vec::new();
    let mut quirks = Vec::new();
    if let Verdict::Diverge(d) = diff(&case, &host, &strict, &exp, &obs) {
        for b in &d.bytes {
            evidence.push(format!(
                "KVM_SET_CPUID2 then KVM_GET_CPUID2: {} supplied/expected {} read back {}",
                b.region,
                hex(&b.expected),
                hex(&b.observed)
            ));
        }
        if d.bytes.is_empty() {
            evidence.push(format!("KVM_GET_CPUID2 after KVM_SET_CPUID2: {}", d.title));
        }
        let q = Quirk::PvmCpuidRewrite;
        let cfg = ModelConfig { quirks: vec![q], ..ModelConfig::default() };
        if diff(&case, &host, &cfg, &predict(&case, &host, &cfg), &obs) == Verdict::Agree {
            quirks.push(q);
            evidence.push(format!("the read-back table matches the model of quirk {}", q.name()));
        }
        if quirks.is_empty() {
            evidence.push("no known quirk explains the read-back table".into());
        }
    }
    // Hardware XCR0 while the guest runs: a fresh vCPU (guest XCR0 = FP) executes VMOVDQU.
    // Upstream this faults (#UD, shutdown); if it runs, hardware XCR0 is not the guest's.
    let case = hw_xcr0_case();
    let obs = backend.execute(&case)?;
    let ran = obs.results.last().map(|r| r.ret);
    match ran {
        Some(Ret::Ok(0)) => {
            quirks.push(Quirk::PvmHwXcr0);
            evidence.push("a guest with XCR0 = FP ran VMOVDQU ymm without #UD: hardware XCR0 is not the guest's (pvm-hw-xcr0)".into());
        }
        Some(Ret::Ok(1)) => {
            evidence.push("a guest with XCR0 = FP faulted on VMOVDQU ymm, as upstream: hardware XCR0 follows the guest".into())
        }
        other => evidence.push(format!("guest run with XCR0 = FP: unexpected result {other:?}")),
    }
    // FOP after a hardware save: SET FOP 0x1234, the guest clears it (FNINIT) and keeps x87 in
    // use (FLDCW), GET. A processor stores FOP 0; QEMU's TCG leaves the save area's 0x1234.
    let case = fop_case();
    let obs = backend.execute(&case)?;
    let n = obs.results.len();
    let run = obs.results.get(n.wrapping_sub(2)).map(|r| r.ret);
    let fop = obs.results.last().and_then(|r| r.data.get(xsave_oracle::abi::FOP..xsave_oracle::abi::FOP + 2));
    match (run, fop) {
        (Some(Ret::Ok(0)), Some([0x34, 0x12])) => {
            quirks.push(Quirk::TcgXsaveFop);
            evidence.push("after SET FOP 0x1234 and a guest FNINIT; FLDCW, GET shows FOP 0x1234: the processor's XSAVE does not store FOP (tcg-xsave-fop)".into());
        }
        (Some(Ret::Ok(0)), Some(f)) => {
            evidence.push(format!("after a guest FNINIT; FLDCW, GET shows FOP {}: the processor stores FOP", hex(f)))
        }
        other => evidence.push(format!("FOP probe run: unexpected result {other:?}")),
    }
    // A pending x87 exception: SET FSW.IE|ES with FCW 0 (unmasked), the guest runs FLDCW. A
    // processor raises #MF (no IDT: shutdown); QEMU's TCG runs on.
    let obs = backend.execute(&mf_case())?;
    let n = obs.results.len();
    match obs.results.get(n.wrapping_sub(2)).map(|r| r.ret) {
        Some(Ret::Ok(0)) => {
            quirks.push(Quirk::TcgX87NoMf);
            evidence.push("FLDCW ran with an unmasked x87 exception pending: no #MF (tcg-x87-no-mf)".into());
        }
        Some(Ret::Ok(1)) => evidence.push("FLDCW with an unmasked x87 exception pending faulted (#MF), as a processor does".into()),
        other => evidence.push(format!("pending-#MF probe run: unexpected result {other:?}")),
    }
    Ok((quirks, evidence))
}

/// The probe's pending-#MF run: SET FCW 0 and FSW IE|ES, a guest FLDCW 0x37f, GET.
pub fn mf_case() -> Case {
    use xsave_oracle::guest::{GuestAction, GuestProgram};
    let mut set = img(FPSSE);
    set.fcw = 0;
    set.fsw = 0x81;
    let mut c = fop_case();
    c.ops = vec![Op::SetXsave(set), Op::RunGuest(GuestProgram { actions: vec![GuestAction::Fldcw { value: 0x37f }] }), Op::GetXsave];
    c
}

/// The probe's FOP run: SET with FOP 0x1234, a guest FNINIT; FLDCW 0x27f, GET.
pub fn fop_case() -> Case {
    use xsave_oracle::guest::{GuestAction, GuestProgram};
    let mut set = img(FPSSE);
    set.fop = 0x1234;
    Case {
        config: Config {
            cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: !0, drop_leaves: vec![] }, entries: vec![], reverse: false }),
            xcr0: None,
        },
        ops: vec![
            Op::SetXsave(set),
            Op::RunGuest(GuestProgram { actions: vec![GuestAction::Fninit, GuestAction::Fldcw { value: 0x27f }] }),
            Op::GetXsave,
        ],
    }
}

/// The probe's guest run: full supported CPUID, guest XCR0 left at FP, one VMOVDQU ymm.
pub fn hw_xcr0_case() -> Case {
    use xsave_oracle::guest::{GuestAction, GuestProgram};
    Case {
        config: Config {
            cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: !0, drop_leaves: vec![] }, entries: vec![], reverse: false }),
            xcr0: None,
        },
        ops: vec![Op::RunGuest(GuestProgram { actions: vec![GuestAction::Ymm { seed: 0x61 }] })],
    }
}

fn img(bv: u64) -> XsaveImage {
    let mut i = XsaveImage::init(bv);
    i.xmm_seed = 0x51;
    i.st_seed = 0x52;
    i.components = vec![ComponentData { bit: 2, seed: 0x53 }];
    i.pkru = 0x5555_5554;
    i
}

/// The fixed battery of probe cases that separates the contract versions.
pub fn probe_cases() -> Vec<(&'static str, Case)> {
    let mut fp_only = img(FP);
    fp_only.mxcsr = 0x1234 & 0xffbf;
    let mut xcomp = img(FPSSE);
    xcomp.xcomp_bv = 1;
    let mut garbage_legacy = img(0);
    garbage_legacy.fcw = 0x1111;
    garbage_legacy.pad_seed = 0x5a;
    let narrow = |mask: u64| Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: mask, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: None,
    };
    let empty = Config { cpuid: Some(CpuidTable { base: CpuidBase::Empty, entries: vec![], reverse: false }), xcr0: None };
    vec![
        ("fresh vCPU GET", Case { config: Config::default(), ops: vec![Op::GetXsave] }),
        ("no CPUID: SET FP|SSE|YMM, GET", Case { config: Config::default(), ops: vec![Op::SetXsave(img(FPSSE | YMM)), Op::GetXsave] }),
        ("empty CPUID: SET FP|SSE|YMM, GET", Case { config: empty.clone(), ops: vec![Op::SetXsave(img(FPSSE | YMM)), Op::GetXsave] }),
        ("empty CPUID: SET FP|SSE", Case { config: empty, ops: vec![Op::SetXsave(img(FPSSE)), Op::GetXsave] }),
        ("CPUID FP|SSE: SET FP|SSE|YMM, GET", Case { config: narrow(FPSSE), ops: vec![Op::SetXsave(img(FPSSE | YMM)), Op::GetXsave] }),
        ("SET with XCOMP_BV=1", Case { config: Config::default(), ops: vec![Op::SetXsave(xcomp), Op::GetXsave] }),
        ("SET FP only, MXCSR 0x1234", Case { config: Config::default(), ops: vec![Op::SetXsave(fp_only), Op::GetXsave] }),
        ("SET bv=0 with legacy garbage", Case { config: Config::default(), ops: vec![Op::SetXsave(garbage_legacy), Op::GetXsave] }),
        (
            "fresh vCPU SET_XCRS(FP|SSE|YMM)",
            Case { config: Config::default(), ops: vec![Op::SetXcrs(XcrsImage::xcr0(FPSSE | YMM)), Op::GetXcrs] },
        ),
        ("KVM_CAP_XSAVE2 and GET_XSAVE2", Case { config: Config::default(), ops: vec![Op::CheckXsave2, Op::GetXsave2] }),
    ]
}

/// Run the full probe on this host's `/dev/kvm`.
pub fn probe() -> Result<ProbeReport, BackendError> {
    let mut host = host_facts()?;
    let kvm = open_kvm()?;
    let cap = |c: u32| kvm.check_extension_raw(c.into());
    let caps = Capabilities { xsave: cap(KVM_CAP_XSAVE), xcrs: cap(KVM_CAP_XCRS), xsave2: cap(KVM_CAP_XSAVE2) };
    let mut backend = KvmBackend::new(host.clone(), false)?.without_kernel_log();
    host.get_cpuid2_keeps_nent = measure_keeps_nent(&mut backend)?;
    host.cpuid_sgx_xfrm_masked = measure_sgx_xfrm(&mut backend)?;
    let mut backend = KvmBackend::new(host.clone(), false)?.without_kernel_log();
    let (quirks, mut quirk_evidence) = detect_quirks(&mut backend)?;
    host.quirks = quirks.clone();
    let guest = Some(probe_guest(&mut backend, &quirks)?);
    if quirks.contains(&Quirk::PvmCpuidRewrite) {
        host.pvm_dropped_leaves = measure_dropped_leaves(&mut backend)?;
        let list: Vec<String> = host.pvm_dropped_leaves.iter().map(|f| format!("{f:#x}")).collect();
        quirk_evidence.push(format!("KVM_SET_CPUID2 silently drops leaves [{}] (set, read back)", list.join(", ")));
    }
    let mut backend = KvmBackend::new(host.clone(), false)?.without_kernel_log();
    let m = match_contract(&mut backend, &host, &quirks)?;
    let d0 = host.supported_cpuid.iter().find(|e| e.function == 0xd && e.index == 0);
    Ok(ProbeReport {
        rig_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release: kernel_release(),
        kvm_module: kvm_modules(),
        cpu: cpu(),
        api_version: kvm.get_api_version(),
        capabilities: caps,
        supported_xcr0: format!("{:#x}", host.supported_xcr0),
        supported_xcr0_cpuid: format!("{:#x}", d0.map_or(0, |e| e.eax as u64 | ((e.edx as u64) << 32))),
        xsave_size: crate::kvm::xsave_buffer_size(&kvm) as u32,
        components: host.components.clone(),
        mxcsr_mask: format!("{:#x}", host.init_mxcsr_mask),
        host_xcr0: format!("{:#x}", host.host_xcr0),
        contract: m.matches.last().map_or("unknown".to_string(), |c| c.name().to_string()),
        contract_matches: m.matches.iter().map(|c| c.name().to_string()).collect(),
        nearest: m.nearest,
        quirks,
        quirk_evidence,
        guest,
        probe_cases: m.cases,
        host,
    })
}
