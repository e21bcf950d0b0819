//! Migration pre-flight: will a state saved on one host load on another, and is anything lost?
//! Pure predictions from two host fingerprints (`xsave-rig probe --json`): each names a
//! contract version, quirks and host facts.

use serde::Serialize;
use xsave_oracle::abi::{self, le64};
use xsave_oracle::case::*;
use xsave_oracle::model::{Contract, Model, ModelConfig};
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::{Ret, Trace};
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

/// The case that loads `state` into a fresh vCPU of `target` set up by `setup` (its guest
/// CPUID and XCR0 operations, in order) and reads it back (`KVM_GET_XSAVE2` from V2a on).
pub fn load_case(state: &[u8], setup: &[Op], target: &Target) -> Case {
    let get = if target.model.contract >= Contract::V2a { Op::GetXsave2 } else { Op::GetXsave };
    let mut ops = setup.to_vec();
    ops.extend([Op::SetXsave(raw_image(state)), get]);
    Case { config: Config::default(), ops }
}

/// Predict loading `state` into a fresh vCPU of `target` set up by `setup` (its guest CPUID
/// and XCR0 operations, in order), then reading it back. `source` (the host that saved it) is
/// used to spot layout differences.
pub fn check_state(state: &[u8], setup: &[Op], target: &Target, source: Option<&HostFacts>) -> StateCheck {
    let case = load_case(state, setup, target);
    let t = predict(&case, &target.host, &target.model);
    classify(state, &case, &t, target, source)
}

/// What `target` did with `state`, from the trace `t` of its [`load_case`] `case` (predicted,
/// or observed on a real kernel); the rules named are the target model's.
pub fn classify(state: &[u8], case: &Case, t: &Trace, target: &Target, source: Option<&HostFacts>) -> StateCheck {
    let bv = le64(state, abi::XSTATE_BV);
    let steps = case.steps();
    let predicted;
    let rules = if t.results.iter().any(|r| !r.rules.is_empty()) {
        t
    } else {
        predicted = predict(case, &target.host, &target.model);
        &predicted
    };
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
    if t.results.len() < steps.len() {
        return StateCheck { verdict: LoadVerdict::Refused, reason: "the load did not run to its end".into(), ..base };
    }
    if let Some((k, r)) = t.results[..nconf].iter().enumerate().find(|(_, r)| matches!(r.ret, Ret::Err(_))) {
        return StateCheck {
            verdict: LoadVerdict::ConfigRefused,
            set_ret: r.ret.to_string(),
            rule: rules.results.get(k).and_then(|r| r.rules.last()).map(|r| r.id().to_string()),
            reason: "the guest configuration itself is refused by the target".into(),
            ..base
        };
    }
    let set = &t.results[nconf];
    let rule =
        rules.results[nconf].rules.iter().rev().find(|r| r.id().starts_with("set.reject") || r.id().starts_with("set.v0.reject")).copied();
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

/// A state a case saved on the source: the bytes, and the guest configuration in force.
#[derive(Clone, Debug)]
pub struct Saved {
    /// The state (the source's XSAVE image, cut to its components' extent).
    pub state: Vec<u8>,
    /// The successful SET_CPUID2/SET_XCRS of the vCPU that saved, in order.
    pub setup: Vec<Op>,
    /// Features the source saved although its guest CPUID does not expose them.
    pub unmasked: u64,
}

/// The last state `case` saved (KVM_GET_XSAVE/2 that succeeded) in its trace `t` on `src`
/// (predicted, or observed on a real kernel). `None` when the case saves nothing.
pub fn saved_state(case: &Case, t: &Trace, src: &Target) -> Option<Saved> {
    let steps = case.steps();
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
    let end = saved.len().min(abi::KVM_XSAVE_SIZE.max(src.host.components.iter().map(|c| (c.offset + c.size) as usize).max().unwrap_or(0)));
    Some(Saved { state: saved[..end].to_vec(), setup, unmasked: bv & !(m.guest_supported_xcr0() | FPSSE) })
}

/// Simulate `case` on `src`, take the last state it saved (KVM_GET_XSAVE/2), and load it on
/// `dst` under the same guest configuration. `None` when the case saves nothing.
pub fn migrate_case(label: &str, case: &Case, src: &Target, dst: &Target) -> Option<Migration> {
    let saved = saved_state(case, &predict(case, &src.host, &src.model), src)?;
    Some(Migration::new(label, &saved, check_state(&saved.state, &saved.setup, dst, Some(&src.host))))
}

impl Migration {
    /// The migration of `saved`, with the target's fate `check`.
    pub fn new(label: &str, saved: &Saved, check: StateCheck) -> Migration {
        Migration {
            case: label.to_string(),
            saved_xstate_bv: format!("{:#x}", le64(&saved.state, abi::XSTATE_BV)),
            unmasked: names(saved.unmasked),
            check,
        }
    }
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

    /// The summary `migrate` and `lab migrate` print (`--json`): the two sides, the counts of
    /// each verdict and the examples worth showing.
    pub fn summary(&self, from: serde_json::Value, to: serde_json::Value) -> serde_json::Value {
        use LoadVerdict::*;
        serde_json::json!({
            "from": from, "to": to,
            "cases": self.cases, "saved_states": self.results.len(),
            "loads": self.count(Loads), "loads_with_loss": self.count(LoadsWithLoss), "refused": self.count(Refused),
            "config_refused": self.count(ConfigRefused),
            "unmasked_saves": self.unmasked_saves(),
            "examples": self.examples(),
        })
    }

    /// The summary's text lines after the header (counts and examples).
    pub fn text(&self) -> String {
        use LoadVerdict::*;
        let mut out = format!("cases {}  saved states {}\n", self.cases, self.results.len());
        out.push_str(&format!(
            "loads {}  loads with loss {}  refused {}  guest config refused {}\n",
            self.count(Loads),
            self.count(LoadsWithLoss),
            self.count(Refused),
            self.count(ConfigRefused)
        ));
        out.push_str(&format!("unmasked saves (source saved features its guest does not have): {}\n", self.unmasked_saves()));
        for m in self.examples() {
            out.push_str(&format!(
                "  {}: saved {} -> {} ({}){}\n",
                m.case,
                m.saved_xstate_bv,
                m.check.verdict,
                m.check.reason,
                if m.unmasked.is_empty() { String::new() } else { format!(" [unmasked save: {}]", m.unmasked.join("|")) }
            ));
        }
        out
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

/// A migration executed on two real kernels (`lab migrate`): each case runs on the source, the
/// last state it saved is loaded into a fresh vCPU of the destination under the same guest
/// configuration and read back, and every step on both sides is judged by that side's contract.
#[derive(Clone, Debug)]
pub struct Executed {
    /// The observed fates, as the pre-flight reports them.
    pub pre: Preflight,
    /// Cases whose run on the source diverged from the source's contract (label, signature).
    pub source_divergences: Vec<(String, String)>,
    /// Loads whose run on the destination diverged from the destination's contract.
    pub load_divergences: Vec<(String, String)>,
    /// States whose observed fate differs from the simulated pre-flight's (label, simulated).
    pub differs_from_simulation: Vec<(String, LoadVerdict)>,
}

fn divergence(case: &Case, t: &Target, ex: &crate::Executed) -> Option<String> {
    if !ex.kernel_log.is_empty() {
        return Some(xsave_oracle::judge::kernel_splat(case, &t.model, ex.kernel_log.clone()).signature);
    }
    match xsave_oracle::judge(case, &t.host, &t.model, &ex.trace).1 {
        xsave_oracle::Verdict::Diverge(d) => Some(d.signature),
        xsave_oracle::Verdict::Agree => None,
    }
}

fn execute_all(be: &mut dyn crate::Backend, cases: &[Case]) -> Result<Vec<crate::Executed>, crate::BackendError> {
    let mut out = Vec::with_capacity(cases.len());
    for chunk in cases.chunks(be.batch_size().max(1)) {
        for r in be.execute_batch(chunk) {
            out.push(r?);
        }
    }
    Ok(out)
}

impl Executed {
    /// Run `cases` (label, case) on `src` (its backend and what it is), load each saved state
    /// on `dst`, and judge both sides. A backend failure ends the run.
    pub fn run(
        cases: &[(String, Case)],
        src: (&mut dyn crate::Backend, &Target),
        dst: (&mut dyn crate::Backend, &Target),
    ) -> Result<Executed, crate::BackendError> {
        let ((sbe, st), (dbe, dt)) = (src, dst);
        let list: Vec<Case> = cases.iter().map(|(_, c)| c.clone()).collect();
        let ran = execute_all(sbe, &list)?;
        let mut out = Executed {
            pre: Preflight { cases: cases.len(), results: Vec::new() },
            source_divergences: Vec::new(),
            load_divergences: Vec::new(),
            differs_from_simulation: Vec::new(),
        };
        let mut saves = Vec::new();
        for ((label, case), ex) in cases.iter().zip(&ran) {
            if let Some(sig) = divergence(case, st, ex) {
                out.source_divergences.push((label.clone(), sig));
            }
            if let Some(saved) = saved_state(case, &ex.trace, st) {
                let load = load_case(&saved.state, &saved.setup, dt);
                saves.push((label, saved, load));
            }
        }
        let loads: Vec<Case> = saves.iter().map(|(_, _, l)| l.clone()).collect();
        let landed = execute_all(dbe, &loads)?;
        for ((label, saved, load), ex) in saves.into_iter().zip(&landed) {
            if let Some(sig) = divergence(&load, dt, ex) {
                out.load_divergences.push((label.clone(), sig));
            }
            let check = classify(&saved.state, &load, &ex.trace, dt, Some(&st.host));
            let simulated = check_state(&saved.state, &saved.setup, dt, Some(&st.host)).verdict;
            if simulated != check.verdict {
                out.differs_from_simulation.push((label.clone(), simulated));
            }
            out.pre.results.push(Migration::new(label, &saved, check));
        }
        Ok(out)
    }

    /// Whether anything needs a look: a refused or lossy load, a divergence on either side, or
    /// a fate the simulation did not predict (the command's exit status 1).
    pub fn notable(&self) -> bool {
        self.pre.refused_or_lossy()
            || !self.source_divergences.is_empty()
            || !self.load_divergences.is_empty()
            || !self.differs_from_simulation.is_empty()
    }
}
