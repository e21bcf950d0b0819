//! Judging: a prediction made, compared ([`crate::diff`]) and, when it diverges, explained.
//!
//! The explanation is everything the diff does not know: the model replayed to the differing
//! step (which xfeatures a refused buffer holds that the guest does not expose), the rule the
//! observation violates and the consequences of the first divergence ([`crate::cause`]), a
//! host quirk the model can be asked for that makes the case agree, and a publicly known
//! issue it matches ([`crate::known`]).
//!
//! [`judge`] works a divergence out in full; [`judge_to`] stops at a [`Depth`] (the signature
//! only, for a minimizer's candidates; triage, for the counts and groups a campaign keeps of
//! every diverging case), and [`complete`] adds the rest (the re-synchronised consequences,
//! the costliest part), so that a campaign pays for it once per new signature.

use crate::abi;
use crate::case::{Case, Origin};
use crate::cause;
use crate::diff::diff;
use crate::host::{HostFacts, Quirk};
use crate::model::{self, Model, ModelConfig};
use crate::trace::{OpResult, Ret, Trace};
use crate::verdict::{signature, Class, Divergence, Verdict};
use crate::xfeatures::{self, FPSSE};

/// A short reason: which xfeatures explain the difference at `step` (the model replayed up
/// to it).
fn reason(case: &Case, host: &HostFacts, cfg: &ModelConfig, step: usize, exp: &OpResult, obs: &OpResult) -> Option<String> {
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
    if matches!(**op, crate::case::Op::GetXsave | crate::case::Op::GetXsave2)
        && exp.data.len() == obs.data.len()
        && exp.data.len() >= abi::EXT
    {
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

/// Explain `d`, the divergence [`diff`] found between `expected` (predicted under `cfg`) and
/// `observed`: the rule the observation violates, and the title's reason (the model's
/// explanation, else the violated rule, else the rule that decided the return value). A
/// divergence in the number of steps has nothing to explain.
pub fn explain(case: &Case, host: &HostFacts, cfg: &ModelConfig, expected: &Trace, observed: &Trace, d: &mut Divergence) {
    let k = d.step;
    let steps = case.steps();
    let (Some(exp), Some(obs), Some((_, op))) = (expected.results.get(k), observed.results.get(k), steps.get(k)) else {
        return;
    };
    let (exp, _) = exp.resolve(obs);
    let bad_mxcsr = model::set_buffer(case, host, cfg, observed, &[], k).is_some_and(|b| cause::mxcsr_invalid(host, &b));
    d.violated = cause::violated_rule_of(op, host, &exp, obs, &d.bytes, bad_mxcsr);
    let why = if cause::set_fpu_unmarked(case, host, cfg, expected, observed, k, &d.bytes) {
        // The cause is an earlier step's: the title names it, not this step's symptom.
        d.violated = Some(crate::rules::Rule::SetFpuXfeatures);
        d.violated.map(|r| r.id().to_string())
    } else {
        reason(case, host, cfg, k, &exp, obs).or_else(|| d.violated.or(exp.rules.last().copied()).map(|r| r.id().to_string()))
    };
    if let Some(w) = why {
        d.title = format!("{} ({w})", d.title);
    }
}

/// [`diff`], and a divergence [`explain`]ed.
pub fn diff_explained(case: &Case, host: &HostFacts, cfg: &ModelConfig, expected: &Trace, observed: &Trace) -> Verdict {
    match diff(case, host, cfg, expected, observed) {
        Verdict::Diverge(mut d) => {
            explain(case, host, cfg, expected, observed, &mut d);
            Verdict::Diverge(d)
        }
        Verdict::Agree => Verdict::Agree,
    }
}

/// How much of a divergence [`judge_to`] works out. Each depth is the one before plus more;
/// the signature is the same at every depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// The verdict's class and signature (the diff, and the quirk that explains it if one
    /// does): what a minimizer needs to know whether a candidate keeps its finding.
    Signature,
    /// Also the explanation ([`explain`]: violated rule, title) and the known issue it
    /// matches: what a campaign counts and groups for every diverging case.
    Triage,
    /// Also the consequences and further symptoms ([`complete`]): what a stored finding holds.
    Full,
}

/// Predict `case` under `cfg`, compare with `observed`, and when they diverge try each quirk
/// the host is known to have but `cfg` does not model: if the prediction with that quirk
/// agrees, the divergence is attributed to it (class [`Class::CpuidConfig`]). The divergence
/// is worked out in full ([`Depth::Full`]).
pub fn judge(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace) -> (Trace, Verdict) {
    judge_to(case, host, cfg, observed, Depth::Full)
}

/// [`judge`], working a divergence out to `depth` only. `judge_to(.., Triage)` and then
/// [`complete`] give exactly what [`judge`] gives; a campaign completes only the divergences
/// whose signature it has not seen before.
pub fn judge_to(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace, depth: Depth) -> (Trace, Verdict) {
    let missing: Vec<Quirk> = host.quirks.iter().copied().filter(|q| !cfg.quirks.contains(q)).collect();
    let (expected, asked) = model::predict_following_consulting(case, host, cfg, observed, &missing);
    let Verdict::Diverge(mut d) = diff(case, host, cfg, &expected, observed) else {
        return (expected, Verdict::Agree);
    };
    if depth != Depth::Signature {
        explain(case, host, cfg, &expected, observed, &mut d);
    }
    // Each missing quirk alone, then all of them together.
    let mut tries: Vec<Vec<Quirk>> = missing.iter().map(|q| vec![*q]).collect();
    if missing.len() > 1 {
        tries.push(missing.clone());
    }
    for qs in tries {
        // A prediction that never asked about these quirks is the same with them modelled:
        // it diverges again.
        if !qs.iter().any(|q| asked.contains(q)) {
            continue;
        }
        let mut with = cfg.clone();
        with.quirks.extend(&qs);
        let alt = model::predict_following(case, host, &with, observed);
        if crate::diff::agrees(case, &alt, observed) {
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
    if depth != Depth::Signature && d.explained_by.is_none() {
        if let Some(k) = crate::known::matching(case, &d) {
            d.known_issue = Some(k.id.to_string());
            d.title = format!("{} [known issue {}]", d.title, k.id);
        }
    }
    if depth == Depth::Full {
        complete(case, host, cfg, &expected, observed, &mut d);
    }
    (expected, Verdict::Diverge(d))
}

/// Work a divergence judged to [`Depth::Triage`] out in full: the steps after the first
/// divergence that are its consequences and those that are further symptoms
/// ([`cause::resync`], the model re-run once per divergence: the costliest part of judging).
pub fn complete(case: &Case, host: &HostFacts, cfg: &ModelConfig, expected: &Trace, observed: &Trace, d: &mut Divergence) {
    if let Some((consequences, further)) = cause::resync(case, host, cfg, expected, observed, d.step) {
        d.consequences = consequences;
        d.further = further;
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
