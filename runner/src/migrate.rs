//! Migration pre-flight: will a state saved on one host load on another, and is anything lost?
//! Pure predictions from two host fingerprints (`xsave-rig probe --json`): each names a
//! contract version, quirks and host facts.

use serde::Serialize;
use xsave_oracle::abi::{self, le64};
use xsave_oracle::case::*;
use xsave_oracle::model::{Contract, Model, ModelConfig};
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::Ret;
use xsave_oracle::xfeatures::{describe, FPSSE};
use xsave_oracle::{predict, HostFacts, Quirk};

/// A host as the pre-flight sees it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label (file name).
    pub name: String,
    /// Host facts.
    pub host: HostFacts,
    /// Contract version and quirks from the fingerprint.
    pub model: ModelConfig,
}

impl Target {
    /// From a `probe --json` fingerprint (or `{"host": …, "contract": …}`).
    pub fn from_fingerprint(name: &str, v: &serde_json::Value) -> Result<Target, String> {
        let host: HostFacts = serde_json::from_value(v.get("host").cloned().ok_or("no \"host\" object (not a probe --json fingerprint)")?)
            .map_err(|e| format!("bad host facts: {e}"))?;
        let c = v.get("contract").and_then(|c| c.as_str()).ok_or("no \"contract\"")?;
        let contract = Contract::parse(c).ok_or_else(|| format!("contract {c:?} is not a known version: the host cannot be predicted"))?;
        let quirks = match v.get("quirks") {
            Some(q) => serde_json::from_value::<Vec<Quirk>>(q.clone()).map_err(|e| format!("bad quirks: {e}"))?,
            None => host.quirks.clone(),
        };
        Ok(Target { name: name.to_string(), host, model: ModelConfig::new(contract, quirks) })
    }
}

/// What a target does with a saved state: serialized and shown as `loads`,
/// `loads-with-loss`, `refused` or `config-refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoadVerdict {
    /// Accepted and read back unchanged.
    Loads,
    /// Accepted, but some of it does not come back (masked, or placed differently).
    LoadsWithLoss,
    /// `KVM_SET_XSAVE` refuses it.
    Refused,
    /// The guest configuration itself is refused by the target.
    ConfigRefused,
}

impl LoadVerdict {
    /// The verdict's name: `loads`, `loads-with-loss`, `refused` or `config-refused`.
    pub fn name(self) -> &'static str {
        match self {
            LoadVerdict::Loads => "loads",
            LoadVerdict::LoadsWithLoss => "loads-with-loss",
            LoadVerdict::Refused => "refused",
            LoadVerdict::ConfigRefused => "config-refused",
        }
    }
}

impl std::fmt::Display for LoadVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The predicted fate of one saved state on a target.
#[derive(Clone, Debug, Serialize)]
pub struct StateCheck {
    /// What the target does with the state.
    pub verdict: LoadVerdict,
    /// KVM_SET_XSAVE's predicted return.
    pub set_ret: String,
    /// The rule that decided it.
    pub rule: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// XSTATE_BV of the state.
    pub state_xstate_bv: String,
    /// XSTATE_BV KVM_GET_XSAVE would report afterwards (when loaded).
    pub restored_xstate_bv: Option<String>,
    /// Features whose data would not come back.
    pub lost: Vec<String>,
    /// Components of the state whose offset or size differ between the two layouts.
    pub layout_mismatch: Vec<String>,
    /// The image KVM_GET_XSAVE would return (hex), when loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get_after: Option<String>,
}

/// A state as an image of raw bytes (the escape hatch, in 4 KiB patches).
pub fn raw_image(state: &[u8]) -> XsaveImage {
    let mut img = XsaveImage::init(0);
    img.fcw = 0;
    img.mxcsr = 0;
    img.patches = state.chunks(4096).enumerate().map(|(i, c)| Patch { offset: (i * 4096) as u16, bytes: c.to_vec() }).collect();
    img
}

fn names(mask: u64) -> Vec<String> {
    if mask == 0 {
        Vec::new()
    } else {
        describe(mask).split('|').map(str::to_string).collect()
    }
}

/// Predict loading `state` into a fresh vCPU of `target` set up by `setup` (its guest CPUID
/// and XCR0 operations, in order), then reading it back. `source` (the host that saved it) is
/// used to spot layout differences.
pub fn check_state(state: &[u8], setup: &[Op], target: &Target, source: Option<&HostFacts>) -> StateCheck {
    let bv = le64(state, abi::XSTATE_BV);
    let get = if target.model.contract >= Contract::V2a { Op::GetXsave2 } else { Op::GetXsave };
    let mut ops = setup.to_vec();
    ops.extend([Op::SetXsave(raw_image(state)), get]);
    let case = Case { config: Config::default(), ops };
    let steps = case.steps();
    let t = predict(&case, &target.host, &target.model);
    let mut base = StateCheck {
        verdict: LoadVerdict::Loads,
        set_ret: String::new(),
        rule: None,
        reason: String::new(),
        state_xstate_bv: format!("{bv:#x}"),
        restored_xstate_bv: None,
        lost: Vec::new(),
        layout_mismatch: Vec::new(),
        get_after: None,
    };
    if let Some(src) = source {
        for c in target.host.components.iter().filter(|c| bv & (1u64 << c.bit) != 0) {
            if src.component(c.bit).is_some_and(|s| s.offset != c.offset || s.size != c.size) {
                base.layout_mismatch.push(describe(1u64 << c.bit));
            }
        }
    }
    let nconf = steps.len() - 2;
    if let Some(r) = t.results[..nconf].iter().find(|r| matches!(r.ret, Ret::Err(_))) {
        return StateCheck {
            verdict: LoadVerdict::ConfigRefused,
            set_ret: r.ret.to_string(),
            rule: r.rules.last().map(|r| r.id().to_string()),
            reason: "the guest configuration itself is refused by the target".into(),
            ..base
        };
    }
    let set = &t.results[nconf];
    let rule = set.rules.iter().rev().find(|r| r.id().starts_with("set.reject") || r.id().starts_with("set.v0.reject")).copied();
    let mut m = Model::new(&target.host, &target.model);
    for (o, op) in steps.iter().take(nconf) {
        m.step(*o, op);
    }
    let gsx = m.guest_supported_xcr0();
    base.set_ret = set.ret.to_string();
    if let Ret::Err(_) = set.ret {
        let reason = match rule {
            Some(Rule::SetRejectUnsupported) => format!(
                "{} not supported by the target host (supported XCR0 {:#x})",
                describe(bv & !target.host.supported_xcr0),
                target.host.supported_xcr0
            ),
            Some(Rule::SetRejectUserXfeatures) if matches!(target.model.contract, Contract::V2a | Contract::V2b) => {
                format!("{} not exposed to the guest: the target's {} contract refuses guest-unsupported features (the ad856280ddea regression)", describe(bv & !(gsx | FPSSE)), target.model.contract)
            }
            Some(r) => r.describe().to_string(),
            None => "refused".into(),
        };
        return StateCheck { verdict: LoadVerdict::Refused, rule: rule.map(|r| r.id().to_string()), reason, ..base };
    }
    let out = &t.results[nconf + 1].data;
    let restored = le64(out, abi::XSTATE_BV);
    let mut lost = bv & !restored;
    let same = |a: usize, b: usize| state.get(a..b) == out.get(a..b);
    if bv & restored & xsave_oracle::xfeatures::FP != 0 && !(same(0, abi::MXCSR) && same(abi::ST, abi::FP_END)) {
        lost |= xsave_oracle::xfeatures::FP;
    }
    if bv & restored & xsave_oracle::xfeatures::SSE != 0 && !(same(abi::XMM, abi::XMM_END) && same(abi::MXCSR, abi::ST)) {
        lost |= xsave_oracle::xfeatures::SSE;
    }
    for c in target.host.components.iter().filter(|c| bv & restored & (1u64 << c.bit) != 0) {
        let (s, e) = (c.offset as usize, (c.offset + c.size) as usize);
        let n = if c.bit == xsave_oracle::xfeatures::PKRU_BIT { 4 } else { e - s };
        if state.get(s..s + n) != out.get(s..s + n) {
            lost |= 1u64 << c.bit;
        }
    }
    base.restored_xstate_bv = Some(format!("{restored:#x}"));
    base.get_after = Some(xsave_oracle::hexnum::to_hex(out));
    base.lost = names(lost);
    if lost != 0 || !base.layout_mismatch.is_empty() {
        base.verdict = LoadVerdict::LoadsWithLoss;
        base.reason = if lost != 0 {
            format!("{} accepted but not reported back (masked or placed differently on the target)", describe(lost))
        } else {
            "component layouts differ between source and target".into()
        };
    } else {
        base.reason = "accepted and read back unchanged".into();
    }
    base
}

/// One simulated migration.
#[derive(Clone, Debug, Serialize)]
pub struct Migration {
    /// Index or file of the case.
    pub case: String,
    /// XSTATE_BV the source saved.
    pub saved_xstate_bv: String,
    /// Features the source saved although its guest CPUID does not expose them (an unmasked
    /// save: what V1 kernels do).
    pub unmasked: Vec<String>,
    /// The target's fate for that state.
    pub check: StateCheck,
}

/// Simulate `case` on `src`, take the last state it saved (KVM_GET_XSAVE/2), and load it on
/// `dst` under the same guest configuration. `None` when the case saves nothing.
pub fn migrate_case(label: &str, case: &Case, src: &Target, dst: &Target) -> Option<Migration> {
    let steps = case.steps();
    let t = predict(case, &src.host, &src.model);
    let k = steps.iter().zip(&t.results).rposition(|((_, op), r)| matches!(**op, Op::GetXsave | Op::GetXsave2) && r.ret == Ret::Ok(0))?;
    let saved = &t.results[k].data;
    // The guest configuration in force at the save: the successful SET_CPUID2/SET_XCRS of the
    // vCPU that saved, replayed in order on the target.
    let start = steps[..k].iter().rposition(|(_, op)| **op == Op::NewVcpu).map_or(0, |i| i + 1);
    let setup: Vec<Op> = steps[start..k]
        .iter()
        .zip(&t.results[start..k])
        .filter(|((_, op), r)| matches!(**op, Op::SetCpuid2(_) | Op::SetXcrs(_)) && matches!(r.ret, Ret::Ok(_)))
        .map(|((_, op), _)| (**op).clone())
        .collect();
    let mut m = Model::new(&src.host, &src.model);
    for (o, op) in steps.iter().take(k) {
        m.step(*o, op);
    }
    let bv = le64(saved, abi::XSTATE_BV);
    let unmasked = bv & !(m.guest_supported_xcr0() | FPSSE);
    let state = &saved
        [..saved.len().min(abi::KVM_XSAVE_SIZE.max(src.host.components.iter().map(|c| (c.offset + c.size) as usize).max().unwrap_or(0)))];
    Some(Migration {
        case: label.to_string(),
        saved_xstate_bv: format!("{bv:#x}"),
        unmasked: names(unmasked),
        check: check_state(state, &setup, dst, Some(&src.host)),
    })
}

/// A migration pre-flight over many cases (`xsave-rig migrate`): every state the cases save
/// on the source, and its fate on the target.
#[derive(Clone, Debug)]
pub struct Preflight {
    /// Cases simulated.
    pub cases: usize,
    /// One migration per case that saved a state, in the cases' order.
    pub results: Vec<Migration>,
}

impl Preflight {
    /// Simulate every case of `cases` (label, case) on `src` and load its last saved state on
    /// `dst` ([`migrate_case`]).
    pub fn run(cases: &[(String, Case)], src: &Target, dst: &Target) -> Preflight {
        Preflight { cases: cases.len(), results: cases.iter().filter_map(|(l, c)| migrate_case(l, c, src, dst)).collect() }
    }

    /// States with verdict `v`.
    pub fn count(&self, v: LoadVerdict) -> usize {
        self.results.iter().filter(|m| m.check.verdict == v).count()
    }

    /// States the source saved with features its guest does not have.
    pub fn unmasked_saves(&self) -> usize {
        self.results.iter().filter(|m| !m.unmasked.is_empty()).count()
    }

    /// The first ten migrations worth showing: not a clean load, or an unmasked save.
    pub fn examples(&self) -> Vec<&Migration> {
        self.results.iter().filter(|m| m.check.verdict != LoadVerdict::Loads || !m.unmasked.is_empty()).take(10).collect()
    }

    /// Whether any state would be refused or lose data (the command's exit status 1).
    pub fn refused_or_lossy(&self) -> bool {
        self.count(LoadVerdict::Refused) + self.count(LoadVerdict::LoadsWithLoss) > 0
    }
}
