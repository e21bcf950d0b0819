//! The differential: op-by-op comparison of two traces.
//!
//! The diff compares [`Trace`] × [`Trace`] and nothing else: it never knows which side is the
//! kernel, never runs the model and never attributes a cause. The first differing step decides
//! the verdict; its class follows spec §12, its signature deduplicates findings across runs,
//! hosts and engines. Why it differs (the model's explanation, the violated rule, a host quirk
//! or a known issue) is `crate::judge`'s.

use crate::abi::cpuid::{CPUID2_TRACE_HDR, CPUID_ENTRY_SIZE};
use crate::abi::region::{CpuidField, Region};
use crate::abi::{self, le32};
use crate::case::{Case, Op, Origin};
use crate::host::HostFacts;
use crate::model::ModelConfig;
use crate::rules::Rule;
use crate::trace::{OpResult, Ret, Trace};
use crate::verdict::{signature, ByteDiff, Class, Divergence, Verdict};
use serde::{Deserialize, Serialize};

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

/// Whether [`diff`] finds `expected` and `observed` agreeing for `case`, without building the
/// divergence (no byte runs, regions, class or signature): what a quirk try needs to know.
pub fn agrees(case: &Case, expected: &Trace, observed: &Trace) -> bool {
    let steps = case.steps().len();
    let compared = steps.min(expected.results.len()).min(observed.results.len());
    expected.results.iter().zip(&observed.results).take(compared).all(|(exp, obs)| {
        let (exp, _) = exp.resolve(obs);
        exp.ret == obs.ret
            && exp.data.len() == obs.data.len()
            && exp.data.iter().zip(&obs.data).enumerate().all(|(i, (e, o))| e == o || covered(&exp.unpredicted, i))
    }) && expected.results.len() == observed.results.len()
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

/// Compare `expected` with `observed` for `case` on `host`. `cfg` only labels the divergence
/// (the contract and quirks the prediction was made under); the title says what differs, and
/// `violated` is left for the judge.
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
        // What differs; why is the judge's (`crate::judge::explain` adds it to the title).
        let title = format!("{}: {}", ioctl_of(op), what);
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
            violated: None,
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
