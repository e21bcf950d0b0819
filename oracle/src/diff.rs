//! The differential verdict: op-by-op comparison of a prediction with an observation.
//!
//! The diff never knows which side is the kernel: both are [`Trace`]s. The first differing
//! step decides the verdict; its class follows spec §12, its signature deduplicates findings
//! across runs, hosts and engines.

use crate::abi::cpuid::{CPUID2_TRACE_HDR, CPUID_ENTRY_SIZE};
use crate::abi::region::{CpuidField, Region};
use crate::abi::{self, le32};
use crate::case::{Case, Op, Origin};
use crate::hash::content_hash;
use crate::hexnum::bytes_hex;
use crate::host::{HostFacts, Quirk};
use crate::model::{Model, ModelConfig};
use crate::rules::Rule;
use crate::trace::{OpResult, Ret, Trace};
use crate::xfeatures::{self, FPSSE};
use serde::{Deserialize, Serialize};

/// Divergence classes (spec §12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Class {
    /// Success vs failure, or another errno.
    Errno,
    /// Reported XSTATE_BV, XCOMP_BV or reserved header bytes.
    Header,
    /// Legacy area: x87 fields, MXCSR, padding, sw_reserved.
    LegacyArea,
    /// Extended component bytes.
    ComponentData,
    /// PKRU value or pad.
    Pkru,
    /// Sizes: bytes written, KVM_CAP_XSAVE2, GET_XSAVE refusal.
    Size,
    /// State accepted while masked re-appears (or not) after a CPUID change.
    HiddenState,
    /// CPUID table handling (stored table, guest_supported_xcr0 derivation).
    CpuidConfig,
    /// XCR0 value and SET_XCRS rules.
    Xcr0,
    /// What the guest itself sees after a load (its exit, and its own XSAVE image).
    GuestView,
    /// The kernel logged a WARN, BUG, KASAN/UBSAN report or a kvm error while the case ran.
    KernelSplat,
}

impl Class {
    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Class::Errno => "errno",
            Class::Header => "header",
            Class::LegacyArea => "legacy-area",
            Class::ComponentData => "component-data",
            Class::Pkru => "pkru",
            Class::Size => "size",
            Class::HiddenState => "hidden-state",
            Class::CpuidConfig => "cpuid-config",
            Class::Xcr0 => "xcr0",
            Class::GuestView => "guest-view",
            Class::KernelSplat => "kernel-splat",
        }
    }
}

/// One run of differing bytes within one named region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteDiff {
    /// First differing byte.
    pub start: u32,
    /// One past the last.
    pub end: u32,
    /// Region name (field, header word, component name and offset, CPUID entry register).
    pub region: String,
    /// Expected bytes (at most 64 shown).
    #[serde(with = "bytes_hex")]
    pub expected: Vec<u8>,
    /// Observed bytes (at most 64 shown).
    #[serde(with = "bytes_hex")]
    pub observed: Vec<u8>,
}

/// A disagreement between prediction and observation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Divergence {
    /// Root-cause class (the quirk's class when a modelled quirk explains the case).
    pub class: Class,
    /// Class of the first differing step itself.
    pub symptom_class: Class,
    /// Index into the executed steps ([`Case::steps`]).
    pub step: usize,
    /// Where the step came from.
    pub origin: Origin,
    /// The ioctl.
    pub op: String,
    /// Contract the prediction was made under.
    pub contract: String,
    /// Quirks modelled in the prediction.
    pub quirks: Vec<Quirk>,
    /// Predicted return.
    pub expected_ret: Ret,
    /// Observed return.
    pub observed_ret: Ret,
    /// Differing byte runs (when both returned data of the same length).
    pub bytes: Vec<ByteDiff>,
    /// Predicted and observed data lengths when they differ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lengths: Option<(usize, usize)>,
    /// Rules behind the prediction of this step.
    pub rules: Vec<Rule>,
    /// A known host quirk that explains the whole case (the prediction with it agrees).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explained_by: Option<Quirk>,
    /// The publicly known issue this divergence is ([`crate::known`]): labelled in every
    /// report, not counted as new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_issue: Option<String>,
    /// One-line human title.
    pub title: String,
    /// Stable deduplication signature: `<class>-<16 hex digits>`.
    pub signature: String,
    /// Kernel log lines (class `kernel-splat`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<String>,
    /// The contract rule the observation violates at this step (the root cause; one of
    /// `rules` or the rule the prediction's acceptance rests on): [`crate::cause::violated_rule`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violated: Option<Rule>,
    /// Later steps that differ from the prediction only because of this divergence: they
    /// agree with the prediction re-synchronised on the kernel's result here
    /// ([`crate::cause::resync`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consequences: Vec<usize>,
    /// Later steps that still differ from the re-synchronised prediction: symptoms of their
    /// own, each with the rule it violates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub further: Vec<crate::cause::Further>,
}

impl Divergence {
    /// The ioctl of the step (a restore is a KVM_SET_XSAVE).
    pub fn ioctl(&self) -> &str {
        self.op.split('(').next().unwrap_or(&self.op)
    }

    /// The group this divergence belongs to: violated rule, ioctl, class
    /// ([`crate::cause::group_key`]).
    pub fn group_key(&self) -> String {
        crate::cause::group_key(self.violated, self.ioctl(), self.class)
    }

    /// The group's title in plain words.
    pub fn group_title(&self) -> String {
        crate::cause::group_title(self.violated, self.ioctl(), self.class)
    }
}

/// A kernel splat logged while `case` ran: the kernel's own signal, a finding whatever the
/// oracle said. The signature keeps the splat's words, not its numbers (addresses, PIDs, line
/// offsets), so the same WARN from two runs is one finding.
pub fn kernel_splat(case: &Case, cfg: &ModelConfig, log: Vec<String>) -> Divergence {
    let first = log.first().cloned().unwrap_or_default();
    let shape: String = first.split_whitespace().filter(|w| !w.chars().any(|c| c.is_ascii_digit())).collect::<Vec<_>>().join(" ");
    let steps = case.steps().len();
    Divergence {
        class: Class::KernelSplat,
        symptom_class: Class::KernelSplat,
        step: steps.saturating_sub(1),
        origin: Origin::Op(case.ops.len().saturating_sub(1)),
        op: "kernel log".to_string(),
        contract: cfg.contract.name().to_string(),
        quirks: cfg.quirks.clone(),
        expected_ret: Ret::Ok(0),
        observed_ret: Ret::Ok(0),
        bytes: Vec::new(),
        lengths: None,
        rules: Vec::new(),
        explained_by: None,
        title: format!("kernel splat while the case ran: {first}"),
        signature: signature("kernel-splat", &format!("splat|{shape}")),
        log,
        violated: None,
        consequences: Vec::new(),
        further: Vec::new(),
        known_issue: None,
    }
}

/// The outcome of comparing two traces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every step agrees.
    Agree,
    /// The first differing step.
    Diverge(Box<Divergence>),
}

impl Verdict {
    /// The divergence, if any.
    pub fn divergence(&self) -> Option<&Divergence> {
        match self {
            Verdict::Agree => None,
            Verdict::Diverge(d) => Some(d),
        }
    }
}

/// What a prediction deliberately left unpredicted (host-owned fields under a modelled quirk):
/// a verdict never claims more than was compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpredicted {
    /// Bytes not compared, over all steps.
    pub bytes: u32,
    /// The regions they fall in, e.g. `CPUID leaf 0x1 ECX/EDX`.
    pub regions: Vec<String>,
}

impl std::fmt::Display for Unpredicted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes not predicted: {}", self.bytes, self.regions.join(", "))
    }
}

/// The bytes `expected` leaves unpredicted, or `None` when every byte was predicted.
pub fn unpredicted(case: &Case, host: &HostFacts, expected: &Trace) -> Option<Unpredicted> {
    let steps = case.steps();
    let mut bytes = 0u32;
    let mut regions: Vec<(String, Vec<&'static str>)> = Vec::new();
    for (k, r) in expected.results.iter().enumerate() {
        let Some((_, op)) = steps.get(k) else { break };
        for &(s, e) in &r.unpredicted {
            bytes += e.saturating_sub(s);
            for i in (s as usize..e as usize).step_by(4) {
                let (name, field) = match **op {
                    Op::GetCpuid2 { .. } if i >= CPUID2_TRACE_HDR => {
                        let k = (i - CPUID2_TRACE_HDR) / CPUID_ENTRY_SIZE;
                        let field = CpuidField::of_word((i - CPUID2_TRACE_HDR) % CPUID_ENTRY_SIZE / 4).name();
                        (format!("CPUID leaf {:#x}", le32(&r.data, CPUID2_TRACE_HDR + k * CPUID_ENTRY_SIZE)), field)
                    }
                    _ => (region_at(op, host, i).label(), ""),
                };
                match regions.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, fields)) if !field.is_empty() && !fields.contains(&field) => fields.push(field),
                    Some(_) => {}
                    None => regions.push((name, if field.is_empty() { Vec::new() } else { vec![field] })),
                }
            }
        }
    }
    (bytes > 0).then(|| Unpredicted {
        bytes,
        regions: regions.into_iter().map(|(n, f)| if f.is_empty() { n } else { format!("{n} {}", f.join("/")) }).collect(),
    })
}

/// A finding signature: `<class>-<content hash of key>`.
fn signature(class: &str, key: &str) -> String {
    format!("{class}-{}", content_hash(key.as_bytes()))
}

fn covered(unpredicted: &[(u32, u32)], i: usize) -> bool {
    unpredicted.iter().any(|&(s, e)| (s as usize..e as usize).contains(&i))
}

/// The named region of byte `off` of the data step `op` returns on `host`.
fn region_at(op: &Op, host: &HostFacts, off: usize) -> Region {
    Region::at(op.buffer(), &host.components, off)
}

/// Differing byte runs of step `op` (after resolving the processor's choices), split at
/// region boundaries.
pub fn step_bytes(op: &Op, host: &HostFacts, exp: &OpResult, obs: &OpResult) -> Vec<ByteDiff> {
    byte_diffs(op, host, &exp.resolve(obs).0, obs)
}

/// Whether step `op` differs (return, length or a predicted byte), processor choices resolved.
pub fn step_differs(op: &Op, host: &HostFacts, exp: &OpResult, obs: &OpResult) -> bool {
    let (exp, _) = exp.resolve(obs);
    exp.ret != obs.ret || exp.data.len() != obs.data.len() || !byte_diffs(op, host, &exp, obs).is_empty()
}

/// Differing byte runs, split at region boundaries.
fn byte_diffs(op: &Op, host: &HostFacts, exp: &OpResult, obs: &OpResult) -> Vec<ByteDiff> {
    let mut out: Vec<ByteDiff> = Vec::new();
    let mut i = 0;
    let n = exp.data.len().min(obs.data.len());
    while i < n && out.len() < 32 {
        if exp.data[i] == obs.data[i] || covered(&exp.unpredicted, i) {
            i += 1;
            continue;
        }
        let region = region_at(op, host, i);
        let start = i;
        while i < n && exp.data[i] != obs.data[i] && !covered(&exp.unpredicted, i) && region_at(op, host, i) == region {
            i += 1;
        }
        let show = |d: &[u8]| d[start..i.min(start + 64)].to_vec();
        out.push(ByteDiff {
            start: start as u32,
            end: i as u32,
            region: region.label(),
            expected: show(&exp.data),
            observed: show(&obs.data),
        });
    }
    out
}

fn classify_bytes(op: &Op, host: &HostFacts, diffs: &[ByteDiff], rules: &[Rule]) -> Class {
    match op {
        Op::GetCpuid2 { .. } => return Class::CpuidConfig,
        Op::GetXcrs => return Class::Xcr0,
        Op::RunGuest(_) => return Class::GuestView,
        _ => {}
    }
    let pk = host.component(crate::xfeatures::PKRU_BIT).map(|c| c.offset);
    let in_header = diffs.iter().any(|d| (abi::HDR as u32..abi::EXT as u32).contains(&d.start));
    let in_legacy = diffs.iter().any(|d| d.start < abi::HDR as u32);
    let in_pkru = diffs.iter().any(|d| Some(d.start) >= pk && pk.is_some_and(|p| d.start < p + 8));
    if rules.contains(&Rule::GetHiddenRevealed) && !in_legacy {
        return Class::HiddenState;
    }
    if in_header {
        Class::Header
    } else if in_legacy {
        Class::LegacyArea
    } else if in_pkru {
        Class::Pkru
    } else {
        Class::ComponentData
    }
}

fn classify_ret(op: &Op) -> Class {
    match op {
        Op::SetCpuid2(_) | Op::GetCpuid2 { .. } => Class::CpuidConfig,
        Op::SetXcrs(_) | Op::GetXcrs => Class::Xcr0,
        Op::CheckXsave2 => Class::Size,
        Op::RunGuest(_) => Class::GuestView,
        _ => Class::Errno,
    }
}

fn coarse(region: &str) -> String {
    // ST3 -> ST, XMM7 -> XMM, "entry 4 EAX" -> "entry EAX", "xcrs[2].value" -> "xcrs.value"
    let mut s = String::with_capacity(region.len());
    let mut skip_digits = false;
    for ch in region.chars() {
        if ch.is_ascii_digit() && skip_digits {
            continue;
        }
        if ch == '@' || ch == '(' {
            break;
        }
        skip_digits = ch.is_ascii_alphabetic() && ch.is_ascii_uppercase() || ch == '[' || ch == ' ';
        if ch != '[' && ch != ']' {
            s.push(ch);
        }
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The rule that decided the prediction's return value.
fn deciding_rule(rules: &[Rule]) -> Option<Rule> {
    rules.last().copied()
}

/// The kind of a region, for signatures: independent of the host's layout and of which
/// register or component carried the difference.
fn region_kind(region: Region) -> &'static str {
    use Region::*;
    match region {
        r if r.is_x87() => "x87",
        Mxcsr | MxcsrMask => "mxcsr",
        LegacyPadding => "padding",
        SwReserved => "sw_reserved",
        XstateBv | XcompBv | HeaderReserved => "header",
        BeyondComponents => "tail",
        Xmm(_) | FpuXmm(_) => "xmm",
        r if r.is_pkru() => "pkru",
        CpuidEntry { .. } => "cpuid-entry",
        NrXcrs | XcrsFlags | XcrIndex(_) | XcrReserved(_) | XcrValue(_) | XcrsPadding => "xcrs",
        CpuidNent => "cpuid-nent",
        FpuMxcsr => "fpu-mxcsr",
        FpuPad1 | FpuPad2 => "fpu-pad",
        FpuFpr(_) | FpuFcw | FpuFsw | FpuFtwx | FpuLastOpcode | FpuLastIp | FpuLastDp => "x87",
        _ => "component",
    }
}

/// The ioctl behind an op, for signatures (a restore is a KVM_SET_XSAVE).
fn ioctl_of(op: &Op) -> &'static str {
    match op {
        Op::RestoreLast { .. } => "KVM_SET_XSAVE",
        o => o.name(),
    }
}

/// A short reason for the title: which xfeatures explain the difference.
fn explain(case: &Case, host: &HostFacts, cfg: &ModelConfig, step: usize, exp: &OpResult, obs: &OpResult) -> Option<String> {
    let mut m = Model::new(host, cfg);
    let steps = case.steps();
    for (origin, op) in steps.iter().take(step) {
        m.step(*origin, op);
    }
    let (_, op) = steps.get(step)?;
    let gsx = m.guest_supported_xcr0() | FPSSE;
    if let Some(bv) = m.set_xstate_bv(op) {
        let hidden = bv & host.supported_xcr0 & !gsx;
        return match (exp.ret, obs.ret) {
            (Ret::Ok(_), Ret::Err(_)) if hidden != 0 => {
                Some(format!("{} supported by host, not exposed to guest", xfeatures::describe(hidden)))
            }
            (Ret::Ok(_), Ret::Err(_)) => Some(format!("XSTATE_BV {}", xfeatures::describe(bv))),
            (Ret::Err(_), Ret::Ok(_)) => exp.rules.last().map(|r| format!("{} ({})", r.describe(), r.id())),
            _ => None,
        };
    }
    if matches!(**op, Op::GetXsave | Op::GetXsave2) && exp.data.len() == obs.data.len() && exp.data.len() >= abi::EXT {
        let (e, o) = (abi::le64(&exp.data, abi::XSTATE_BV), abi::le64(&obs.data, abi::XSTATE_BV));
        if o & !e & !gsx != 0 {
            return Some(format!("{} reported although not exposed to guest", xfeatures::describe(o & !e)));
        }
        if e & !o != 0 {
            return Some(format!("{} not reported", xfeatures::describe(e & !o)));
        }
        if o & !e != 0 {
            return Some(format!("{} reported unexpectedly", xfeatures::describe(o & !e)));
        }
    }
    None
}

/// Compare `expected` with `observed` for `case` on `host`.
pub fn diff(case: &Case, host: &HostFacts, cfg: &ModelConfig, expected: &Trace, observed: &Trace) -> Verdict {
    let steps = case.steps();
    for (k, (origin, op)) in steps.iter().enumerate() {
        let (Some(exp), Some(obs)) = (expected.results.get(k), observed.results.get(k)) else {
            break;
        };
        let (exp, _) = exp.resolve(obs);
        let exp = &exp;
        let (class, bytes, lengths, what) = if exp.ret != obs.ret {
            let what = match (exp.ret, obs.ret) {
                (Ret::Ok(_), Ret::Err(_)) => format!("{} where {} accepts", obs.ret, cfg.contract),
                (Ret::Err(_), Ret::Ok(_)) => {
                    format!("accepted where {} returns {}", cfg.contract, exp.ret)
                }
                _ => format!("{} where {} returns {}", obs.ret, cfg.contract, exp.ret),
            };
            (classify_ret(op), Vec::new(), None, what)
        } else if exp.data.len() != obs.data.len() {
            (
                Class::Size,
                Vec::new(),
                Some((exp.data.len(), obs.data.len())),
                format!("{} bytes where {} writes {}", obs.data.len(), cfg.contract, exp.data.len()),
            )
        } else {
            let bytes = byte_diffs(op, host, exp, obs);
            if bytes.is_empty() {
                continue;
            }
            let mut regions: Vec<String> = bytes.iter().map(|b| coarse(&b.region)).collect();
            regions.dedup();
            let verb = if regions.len() == 1 { "differs" } else { "differ" };
            let what = format!("{} {verb} from {}", regions.join(", "), cfg.contract);
            (classify_bytes(op, host, &bytes, &exp.rules), bytes, None, what)
        };
        let rule = deciding_rule(&exp.rules);
        let mut kinds: Vec<&str> = bytes.iter().map(|b| region_kind(region_at(op, host, b.start as usize))).collect();
        kinds.sort();
        kinds.dedup();
        let key = format!(
            "{}|{}|{}|{}|{}|{}",
            class.name(),
            ioctl_of(op),
            exp.ret,
            obs.ret,
            kinds.join(","),
            if bytes.is_empty() { rule.map_or("", |r| r.id()) } else { "" }
        );
        let bad_mxcsr = crate::model::set_buffer(case, host, cfg, observed, &[], k).is_some_and(|b| crate::cause::mxcsr_invalid(host, &b));
        let violated = crate::cause::violated_rule_of(op, host, exp, obs, &bytes, bad_mxcsr);
        // The title says why: the model's explanation, else the rule the observation violates,
        // else the rule that decided the return value.
        let why = explain(case, host, cfg, k, exp, obs).or_else(|| violated.or(rule).map(|r| r.id().to_string()));
        let title = format!("{}: {}{}", ioctl_of(op), what, why.map(|w| format!(" ({w})")).unwrap_or_default());
        return Verdict::Diverge(Box::new(Divergence {
            class,
            symptom_class: class,
            step: k,
            origin: *origin,
            op: op.name().to_string(),
            contract: cfg.contract.name().to_string(),
            quirks: cfg.quirks.clone(),
            expected_ret: exp.ret,
            observed_ret: obs.ret,
            bytes,
            lengths,
            rules: exp.rules.clone(),
            explained_by: None,
            known_issue: None,
            title,
            signature: signature(class.name(), &key),
            log: Vec::new(),
            violated,
            consequences: Vec::new(),
            further: Vec::new(),
        }));
    }
    if expected.results.len() != observed.results.len() {
        let k = expected.results.len().min(observed.results.len());
        let key = format!("size|steps|{}|{}", expected.results.len(), observed.results.len());
        let (origin, op) = steps.get(k).map(|(o, op)| (*o, op.name())).unwrap_or((Origin::Op(k), "END"));
        return Verdict::Diverge(Box::new(Divergence {
            class: Class::Size,
            symptom_class: Class::Size,
            step: k,
            origin,
            op: op.to_string(),
            contract: cfg.contract.name().to_string(),
            quirks: cfg.quirks.clone(),
            expected_ret: Ret::Ok(0),
            observed_ret: Ret::Ok(0),
            bytes: Vec::new(),
            lengths: Some((expected.results.len(), observed.results.len())),
            rules: Vec::new(),
            explained_by: None,
            known_issue: None,
            title: format!("trace length: {} steps observed, {} predicted", observed.results.len(), expected.results.len()),
            signature: signature("size", &key),
            log: Vec::new(),
            violated: None,
            consequences: Vec::new(),
            further: Vec::new(),
        }));
    }
    Verdict::Agree
}

/// `expected` with every hardware choice taken as `observed` shows it where the prediction
/// allows it ([`OpResult::resolve`]).
pub fn resolve(expected: &Trace, observed: &Trace) -> Trace {
    Trace {
        results: expected
            .results
            .iter()
            .enumerate()
            .map(|(k, e)| observed.results.get(k).map_or_else(|| e.clone(), |o| e.resolve(o).0))
            .collect(),
    }
}

/// Predict `case` under `cfg`, compare with `observed`, and when they diverge try each quirk
/// the host is known to have but `cfg` does not model: if the prediction with that quirk
/// agrees, the divergence is attributed to it (class [`Class::CpuidConfig`]).
pub fn judge(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace) -> (Trace, Verdict) {
    let expected = crate::model::predict_following(case, host, cfg, observed);
    let verdict = diff(case, host, cfg, &expected, observed);
    let Verdict::Diverge(mut d) = verdict else {
        return (expected, Verdict::Agree);
    };
    if let Some((consequences, further)) = crate::cause::resync(case, host, cfg, &expected, observed, d.step) {
        d.consequences = consequences;
        d.further = further;
    }
    // Each missing quirk alone, then all of them together.
    let missing: Vec<Quirk> = host.quirks.iter().copied().filter(|q| !cfg.quirks.contains(q)).collect();
    let mut tries: Vec<Vec<Quirk>> = missing.iter().map(|q| vec![*q]).collect();
    if missing.len() > 1 {
        tries.push(missing.clone());
    }
    for qs in tries {
        let mut with = cfg.clone();
        with.quirks.extend(&qs);
        let alt = crate::model::predict_following(case, host, &with, observed);
        if diff(case, host, &with, &alt, observed) == Verdict::Agree {
            // The quirk that names the case: the CPUID rewrite when it alone explains it.
            let q = qs[0];
            d.explained_by = Some(q);
            d.class = match q {
                Quirk::PvmCpuidRewrite => Class::CpuidConfig,
                Quirk::PvmHwXcr0 | Quirk::TcgX87NoMf => Class::GuestView,
                Quirk::KvmFpuLegacy | Quirk::TcgXsaveFop => Class::LegacyArea,
            };
            let names: Vec<&str> = qs.iter().map(|q| q.name()).collect();
            let key = format!("quirk|{}|{}", names.join("+"), d.signature);
            d.signature = signature(d.class.name(), &key);
            d.title = format!("{} [explained by host quirk {}]", d.title, names.join(" + "));
            break;
        }
    }
    if d.explained_by.is_none() {
        if let Some(k) = crate::known::matching(case, &d) {
            d.known_issue = Some(k.id.to_string());
            d.title = format!("{} [known issue {}]", d.title, k.id);
        }
    }
    (expected, Verdict::Diverge(d))
}
