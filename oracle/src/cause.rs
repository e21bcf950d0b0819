//! Root causes: which contract rule a divergence violates, and whether later differing steps
//! of the same case are only its consequences. (The group key that collects every symptom of
//! one violated rule into one report is [`crate::verdict::group_key`].)
//!
//! The violated rule is not the set of rules that took part in a prediction: it is the one
//! rule whose statement the observation contradicts, chosen from the prediction's rules by
//! what differs (the return, or the region of the first differing bytes): [`violated_rule`].

use crate::abi;
use crate::abi::region::Region;
use crate::case::{Case, Op};
use crate::host::{HostFacts, Quirk};
use crate::model::ModelConfig;
use crate::rules::Rule;
use crate::trace::{OpResult, Ret, Trace};
use crate::verdict::{ByteDiff, Further, MASK_RULES};

/// What differs at the first differing step, as far as the violated rule depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Difference {
    /// The kernel refused where the oracle accepts (or returned another value).
    Refused,
    /// The kernel accepted where the oracle refuses (or refused with another errno).
    Accepted,
    /// Both succeeded with different return values (CAP value, guest exit).
    Value,
    /// Both succeeded, with different data lengths.
    Length,
    /// Both succeeded with the same length; the first differing bytes are in this region
    /// kind (see [`region_family`]).
    Bytes(&'static str),
}

/// The family of a byte region for root causes: the header's XSTATE_BV apart from the rest
/// of the header, the x87, MXCSR and XMM parts of the legacy area, PKRU, other components.
pub fn region_family(region: Region) -> &'static str {
    use Region::*;
    match region {
        XstateBv => "xstate_bv",
        XcompBv | HeaderReserved => "header",
        r if r.is_x87() => "x87",
        Mxcsr | MxcsrMask | FpuMxcsr => "mxcsr",
        LegacyPadding => "padding",
        SwReserved => "sw_reserved",
        BeyondComponents => "tail",
        CpuidNent => "nent",
        Xmm(_) => "xmm",
        r if r.is_pkru() => "pkru",
        CpuidEntry { .. } => "cpuid-entry",
        NrXcrs | XcrsFlags | XcrIndex(_) | XcrReserved(_) | XcrValue(_) | XcrsPadding => "xcrs",
        _ => "component",
    }
}

/// The first of `candidates` among `rules`.
fn first_of(rules: &[Rule], candidates: &[Rule]) -> Option<Rule> {
    candidates.iter().copied().find(|c| rules.contains(c))
}

/// The violated rule of a difference at one step of kind `op`, given the prediction's `rules`.
/// `mxcsr_invalid`: a SET's buffer holds an MXCSR outside the host's feature mask (the MXCSR
/// check is then what a refusal of a buffer without FP/SSE/YMM is about).
///
/// One table: (op, what differs) → the rule. A refusal names the rule the oracle's acceptance
/// rests on; an acceptance names the reject rule the oracle applied; differing bytes name the
/// rule that predicts that region.
pub fn violated_rule(op: &Op, rules: &[Rule], what: Difference, mxcsr_invalid: bool) -> Option<Rule> {
    use Difference::*;
    let last = rules.last().copied();
    let r = match (op, what) {
        // The oracle refuses: the kernel broke the reject rule the oracle applied.
        (_, Accepted) => last,
        (Op::SetXsave(_) | Op::RestoreLast { .. }, Refused) if mxcsr_invalid && rules.contains(&Rule::SetMxcsrUnchecked) => {
            Some(Rule::SetMxcsrUnchecked)
        }
        (Op::SetXsave(_) | Op::RestoreLast { .. }, Refused) => Some(Rule::SetAccept),
        (Op::SetCpuid2(_), Refused) => first_of(rules, &[Rule::RunCpuidFrozen, Rule::CpuidAccept]),
        (Op::SetXcrs(_), Refused) => last,
        (Op::GetXsave, Refused) => Some(Rule::GetXsaveTooBig),
        (Op::GetXsave2, Refused) | (Op::GetXsave2, Length) => Some(Rule::CapXsave2Size),
        (Op::GetCpuid2 { .. }, Refused) => Some(Rule::CpuidGetE2big),
        (Op::RunGuest(_), Refused) => Some(Rule::RunSetupLongMode),
        (Op::RunGuest(_), Value) => first_of(rules, &[Rule::RunTimeout]).or(Some(Rule::RunFault)),
        (Op::RunGuest(_), Length) => Some(Rule::GuestXsave),
        (Op::RunGuest(_), Bytes("xstate_bv")) => Some(Rule::GuestXsave),
        (Op::RunGuest(_), Bytes("mxcsr")) => Some(first_of(rules, &[Rule::RunEntryMxcsr]).unwrap_or(Rule::RunEntryLoad)),
        (Op::RunGuest(_), Bytes(_)) => Some(Rule::RunEntryLoad),
        (Op::GetCpuid2 { .. }, Length | Bytes("nent")) => first_of(rules, &[Rule::CpuidGetCallerNent, Rule::CpuidGetTable]),
        (Op::GetCpuid2 { .. }, _) => Some(Rule::CpuidGetTable),
        (Op::GetXcrs, _) => Some(Rule::XcrsGet),
        // KVM_GET_FPU: its MXCSR word is one rule, everything else it reports is the view.
        (Op::GetFpu, Bytes("mxcsr")) => first_of(rules, &[Rule::GetFpuMxcsr]),
        (Op::GetFpu, Bytes(_)) => first_of(rules, &[Rule::GetFpuView]),
        (Op::GetXsave | Op::GetXsave2, Bytes(family)) => {
            let pick: &[Rule] = match family {
                "xstate_bv" => MASK_RULES,
                "header" => &[Rule::GetHeaderZero],
                // V0 copies the legacy area raw: every legacy byte is that one rule.
                "x87" => &[Rule::GetV0LegacyRaw, Rule::GetFpReported, Rule::GetFpInit],
                "mxcsr" => &[Rule::GetV0LegacyRaw, Rule::GetMxcsrKernel, Rule::GetMxcsrInit],
                "xmm" => &[Rule::GetV0LegacyRaw, Rule::GetSseReported, Rule::GetSseZero],
                "padding" => &[Rule::GetV0LegacyRaw, Rule::GetPaddingZero],
                "sw_reserved" => &[Rule::GetV0LegacyRaw, Rule::GetSwReserved],
                "pkru" => &[Rule::GetHiddenRevealed, Rule::GetPkruFromVcpu, Rule::GetComponentZero],
                "tail" => &[Rule::GetComponentZero],
                _ => &[Rule::GetHiddenRevealed, Rule::GetComponentCopied, Rule::GetComponentZero],
            };
            first_of(rules, pick)
        }
        _ => last,
    };
    r.or(last)
}

/// [`violated_rule`] of a differing step: what differs is read from the results.
pub fn violated_rule_of(
    op: &Op,
    host: &HostFacts,
    exp: &OpResult,
    obs: &OpResult,
    bytes: &[ByteDiff],
    mxcsr_invalid: bool,
) -> Option<Rule> {
    let what = match (exp.ret, obs.ret) {
        (a, b) if a == b && exp.data.len() != obs.data.len() => Difference::Length,
        (a, b) if a == b => {
            let regions: Vec<Region> = bytes.iter().map(|b| Region::at(op.buffer(), &host.components, b.start as usize)).collect();
            // XSTATE_BV decides everything a GET reports: when it differs, it is the cause.
            if regions.contains(&Region::XstateBv) {
                Difference::Bytes("xstate_bv")
            } else {
                Difference::Bytes(regions.first().map_or("component", |r| region_family(*r)))
            }
        }
        (Ret::Err(_), _) => Difference::Accepted,
        (Ret::Ok(_), Ret::Ok(_)) => Difference::Value,
        (Ret::Ok(_), Ret::Err(_)) => Difference::Refused,
    };
    violated_rule(op, &exp.rules, what, mxcsr_invalid)
}

/// Whether the divergence at step `k` (differing `bytes`) is an earlier KVM_SET_FPU that left
/// XSTATE_BV alone (rule `set_fpu.xfeatures`, violated there and shown here: a GET reporting
/// init state, or a run loading it). It is when an earlier KVM_SET_FPU on the same vCPU was
/// predicted to mark FP|SSE, the difference is not MXCSR alone (KVM_SET_FPU ignoring MXCSR is
/// the known issue `kvm-fpu-mxcsr`), and the prediction without the marking (the kernel's own
/// `kvm_arch_vcpu_ioctl_set_fpu`, modelled by `kvm-fpu-legacy`) agrees with the kernel up to
/// and including step `k`.
pub fn set_fpu_unmarked(
    case: &Case,
    host: &HostFacts,
    cfg: &ModelConfig,
    expected: &Trace,
    observed: &Trace,
    k: usize,
    bytes: &[ByteDiff],
) -> bool {
    let steps = case.steps();
    if cfg.quirks.contains(&Quirk::KvmFpuLegacy) || k >= steps.len() {
        return false;
    }
    let marked = (0..k)
        .rev()
        .take_while(|&j| !matches!(*steps[j].1, Op::NewVcpu))
        .any(|j| matches!(*steps[j].1, Op::SetFpu(_)) && expected.results.get(j).is_some_and(|r| r.rules.contains(&Rule::SetFpuXfeatures)));
    let op = &steps[k].1;
    // Only a step that reads the state shows it (a SET's own errno is that SET's).
    if !matches!(**op, Op::GetXsave | Op::GetXsave2 | Op::GetFpu | Op::RunGuest(_)) {
        return false;
    }
    let mxcsr_only = !bytes.is_empty()
        && bytes.iter().all(|b| matches!(Region::at(op.buffer(), &host.components, b.start as usize), Region::Mxcsr | Region::FpuMxcsr));
    if !marked || mxcsr_only {
        return false;
    }
    let mut without = cfg.clone();
    without.quirks.push(Quirk::KvmFpuLegacy);
    let alt = crate::model::predict_following(case, host, &without, observed);
    match crate::diff::diff(case, host, &without, &alt, observed) {
        crate::verdict::Verdict::Agree => true,
        crate::verdict::Verdict::Diverge(d) => d.step > k,
    }
}

/// Whether `buf` (a SET's buffer) holds an MXCSR outside the host's feature mask.
pub fn mxcsr_invalid(host: &HostFacts, buf: &[u8]) -> bool {
    buf.len() >= abi::MXCSR + 4 && abi::le32(buf, abi::MXCSR) & !host.mxcsr_feature_mask != 0
}

/// Follow the kernel at step `k` of `case`: whether the model can be forced to the observed
/// result there (a refused SET as refused, an accepted one as accepted, a GET's observed bytes
/// as the last GET; reads change nothing). A guest run cannot be followed: the registers the
/// guest left are not observed.
pub fn followable(case: &Case, k: usize) -> bool {
    case.steps().get(k).is_some_and(|(_, op)| !matches!(**op, Op::RunGuest(_) | Op::NewVcpu))
}

/// Re-synchronised analysis of a diverging case: the prediction is made again, forced to
/// follow the kernel at each divergence in turn. Returns the steps that differed from the
/// first prediction but agree once the model follows the kernel (consequences) and the steps
/// that still differ (further, independent symptoms), or `None` when the first divergence
/// cannot be followed (then nothing after it is confirmed either way).
pub fn resync(
    case: &Case,
    host: &HostFacts,
    cfg: &ModelConfig,
    expected: &Trace,
    observed: &Trace,
    first: usize,
) -> Option<(Vec<usize>, Vec<Further>)> {
    let steps = case.steps();
    let differs = |t: &Trace, k: usize| match (t.results.get(k), observed.results.get(k)) {
        (Some(e), Some(o)) => crate::diff::step_differs(&steps[k].1, host, e, o),
        _ => false,
    };
    let originally: Vec<usize> = (first + 1..steps.len()).filter(|&k| differs(expected, k)).collect();
    let mut sync = vec![first];
    let mut further = Vec::new();
    let mut t;
    loop {
        if !followable(case, *sync.last().expect("non-empty")) {
            if sync.len() == 1 {
                return None;
            }
            // The rest after an unfollowable divergence is unconfirmed: neither kind.
            break;
        }
        t = crate::model::predict_synced(case, host, cfg, observed, &sync);
        let from = sync.last().copied().unwrap_or(first) + 1;
        match (from..steps.len()).find(|&k| differs(&t, k)) {
            Some(k) => {
                let (exp, obs) = (&t.results[k], &observed.results[k]);
                let bytes = crate::diff::step_bytes(&steps[k].1, host, exp, obs);
                let bad = crate::model::set_buffer(case, host, cfg, observed, &sync, k).is_some_and(|b| mxcsr_invalid(host, &b));
                let (exp, _) = exp.resolve(obs);
                further.push(Further {
                    step: k,
                    op: steps[k].1.name().to_string(),
                    violated: violated_rule_of(&steps[k].1, host, &exp, obs, &bytes, bad),
                });
                sync.push(k);
            }
            None => break,
        }
    }
    let consequences =
        originally.into_iter().filter(|k| !further.iter().any(|f| f.step == *k)).filter(|k| *k < unfollowed(&further, case)).collect();
    Some((consequences, further))
}

/// The first further divergence that could not be followed (everything after it is
/// unconfirmed), or the case's length.
fn unfollowed(further: &[Further], case: &Case) -> usize {
    further.iter().find(|f| !followable(case, f.step)).map_or(usize::MAX, |f| f.step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::case::{Case, CpuidBase, CpuidTable, XsaveImage};
    use crate::model::{predict, Contract};
    use Difference::*;

    fn set() -> Op {
        Op::RestoreLast { force_xstate_bv: None }
    }

    #[test]
    fn table_maps_each_difference_to_one_rule() {
        let rs = |v: &[Rule]| v.to_vec();
        let get = rs(&[Rule::GetMaskV3, Rule::GetFpInit, Rule::GetMxcsrInit, Rule::GetSseZero, Rule::GetHeaderZero]);
        // A GET reporting what the mask hides: the masking rule it was predicted under.
        assert_eq!(violated_rule(&Op::GetXsave, &get, Bytes("xstate_bv"), false), Some(Rule::GetMaskV3));
        let v0 = rs(&[Rule::GetMaskV0, Rule::GetV0LegacyRaw]);
        assert_eq!(violated_rule(&Op::GetXsave2, &v0, Bytes("xstate_bv"), false), Some(Rule::GetMaskV0));
        let user = rs(&[Rule::GetMaskUser, Rule::GetHeaderZero]);
        assert_eq!(violated_rule(&Op::GetXsave, &user, Bytes("xstate_bv"), false), Some(Rule::GetMaskUser));
        // Legacy-area bytes: the rule of the region under the reported features.
        assert_eq!(violated_rule(&Op::GetXsave, &get, Bytes("mxcsr"), false), Some(Rule::GetMxcsrInit));
        assert_eq!(violated_rule(&Op::GetXsave, &get, Bytes("x87"), false), Some(Rule::GetFpInit));
        assert_eq!(violated_rule(&Op::GetXsave, &get, Bytes("header"), false), Some(Rule::GetHeaderZero));
        // A SET refused where the oracle accepts: the permissive load ...
        let ok = rs(&[Rule::SetFpCopied, Rule::SetKbvReplaced, Rule::SetAccept]);
        assert_eq!(violated_rule(&set(), &ok, Refused, false), Some(Rule::SetAccept));
        // ... unless only the MXCSR check explains the refusal.
        let nofp = rs(&[Rule::SetMxcsrUnchecked, Rule::SetKbvReplaced, Rule::SetAccept]);
        assert_eq!(violated_rule(&set(), &nofp, Refused, true), Some(Rule::SetMxcsrUnchecked));
        assert_eq!(violated_rule(&set(), &nofp, Refused, false), Some(Rule::SetAccept));
        // Accepted where the oracle refuses: the reject rule the oracle applied.
        assert_eq!(violated_rule(&set(), &[Rule::SetRejectXcompBv], Accepted, false), Some(Rule::SetRejectXcompBv));
        let x = Op::SetXcrs(crate::case::XcrsImage::xcr0(0x7));
        assert_eq!(
            violated_rule(&x, &[Rule::XcrsFirstXcr0, Rule::Xcr0RejectUnsupported], Accepted, false),
            Some(Rule::Xcr0RejectUnsupported)
        );
        // KVM_RUN: the run/guest rule of the region.
        let run = Op::RunGuest(Default::default());
        let rr = rs(&[Rule::RunEntryLoad, Rule::RunHwXcr0Guest, Rule::GuestXsave, Rule::RunEnd]);
        assert_eq!(violated_rule(&run, &rr, Bytes("xstate_bv"), false), Some(Rule::GuestXsave));
        assert_eq!(violated_rule(&run, &rr, Bytes("xmm"), false), Some(Rule::RunEntryLoad));
        assert_eq!(violated_rule(&run, &rr, Value, false), Some(Rule::RunFault));
        assert_eq!(violated_rule(&run, &[Rule::RunSetupLongMode], Accepted, false), Some(Rule::RunSetupLongMode));
        assert_eq!(violated_rule(&Op::GetXsave2, &get, Refused, false), Some(Rule::CapXsave2Size));
    }

    fn host() -> HostFacts {
        HostFacts::synthetic(0x2e7, 0xffff)
    }

    /// A case: a guest CPUID exposing FP|SSE only, a SET with YMM, a GET, a restore of it, a GET.
    fn case() -> Case {
        let mut c = Case::default();
        let base = CpuidBase::Supported { xcr0_mask: 0x3, drop_leaves: vec![] };
        c.config.cpuid = Some(CpuidTable { base, entries: vec![], reverse: false });
        c.ops.push(Op::SetXsave(XsaveImage::init(0x7)));
        c.ops.push(Op::GetXsave);
        c.ops.push(Op::RestoreLast { force_xstate_bv: None });
        c.ops.push(Op::GetXsave);
        c
    }

    #[test]
    fn a_get_after_a_refused_set_is_a_consequence() {
        // The kernel is V2a (restrictive SET): the SET of YMM is refused, so the GET after it
        // reports less than V3 predicts. Followed as refused, the GETs agree: consequences.
        let (h, c) = (host(), case());
        let v3 = ModelConfig::default();
        let obs = predict(&c, &h, &ModelConfig::new(Contract::V2a, vec![]));
        let (_, v) = crate::judge::judge(&c, &h, &v3, &obs);
        let d = v.divergence().expect("diverges");
        assert_eq!(c.steps()[d.step].1.name(), "KVM_SET_XSAVE", "{d:?}");
        assert_eq!(d.violated, Some(Rule::SetAccept));
        assert!(!d.consequences.is_empty(), "{d:?}");
        assert!(d.further.is_empty(), "{d:?}");
    }

    #[test]
    fn an_independent_later_divergence_is_not_a_consequence() {
        // The kernel is V1 (unmasked GET): the SET agrees, every GET reports what V3 masks.
        // Following the first GET's bytes does not make the second agree: it is further.
        let (h, c) = (host(), case());
        let v3 = ModelConfig::default();
        let obs = predict(&c, &h, &ModelConfig::new(Contract::V1, vec![]));
        let (_, v) = crate::judge::judge(&c, &h, &v3, &obs);
        let d = v.divergence().expect("diverges");
        assert_eq!(d.violated, Some(Rule::GetMaskV3), "{d:?}");
        assert!(d.consequences.is_empty(), "{d:?}");
        let last = c.steps().len() - 1;
        assert!(d.further.iter().any(|f| f.step == last && f.violated == Some(Rule::GetMaskV3)), "{d:?}");
    }
}
