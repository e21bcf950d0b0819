//! What a judgement says: the verdict, the divergence and its parts (class, byte runs,
//! signature, group key). Plain data, shared by the diff that finds a divergence
//! ([`crate::diff`]) and the judging that explains it (`crate::judge`, `crate::cause`,
//! `crate::known`); it imports neither.

use crate::case::Origin;
use crate::hash::content_hash;
use crate::hexnum::bytes_hex;
use crate::host::Quirk;
use crate::rules::Rule;
use crate::trace::Ret;
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
    /// `rules` or the rule the prediction's acceptance rests on): `crate::cause::violated_rule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violated: Option<Rule>,
    /// Later steps that differ from the prediction only because of this divergence: they
    /// agree with the prediction re-synchronised on the kernel's result here
    /// (`crate::cause::resync`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consequences: Vec<usize>,
    /// Later steps that still differ from the re-synchronised prediction: symptoms of their
    /// own, each with the rule it violates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub further: Vec<Further>,
}

impl Divergence {
    /// The ioctl of the step (a restore is a KVM_SET_XSAVE).
    pub fn ioctl(&self) -> &str {
        self.op.split('(').next().unwrap_or(&self.op)
    }

    /// The ioctl and class the divergence's group is filed under: the step's own, except for
    /// a rule decided by an earlier op whose violation only shows at a later step
    /// ([`DEFERRED`]), which is filed under that op, whatever step shows it.
    pub fn group_site(&self) -> (&str, Class) {
        match DEFERRED.iter().find(|(r, _, _)| Some(*r) == self.violated) {
            Some((_, ioctl, class)) => (ioctl, *class),
            None => (self.ioctl(), self.class),
        }
    }

    /// The group this divergence belongs to: violated rule, ioctl, class
    /// ([`group_key`], at [`Self::group_site`]).
    pub fn group_key(&self) -> String {
        let (ioctl, class) = self.group_site();
        group_key(self.violated, ioctl, class)
    }

    /// The group's title in plain words.
    pub fn group_title(&self) -> String {
        let (ioctl, class) = self.group_site();
        group_title(self.violated, ioctl, class)
    }
}

/// A later differing step the cause does not explain: it still differs from the prediction
/// re-synchronised on every earlier divergence.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Further {
    /// Step index.
    pub step: usize,
    /// The ioctl.
    pub op: String,
    /// The rule it violates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub violated: Option<Rule>,
}

/// The kind of a verdict, without its divergence: `agree` or `diverge`, the `verdict` tag of a
/// serialized [`Verdict`] and the word records and summaries store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// Every step agrees.
    Agree,
    /// A step differs.
    Diverge,
}

impl VerdictKind {
    /// Stable name (the serialized form).
    pub fn name(self) -> &'static str {
        match self {
            VerdictKind::Agree => "agree",
            VerdictKind::Diverge => "diverge",
        }
    }
}

impl std::fmt::Display for VerdictKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
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
    /// Its kind.
    pub fn kind(&self) -> VerdictKind {
        match self {
            Verdict::Agree => VerdictKind::Agree,
            Verdict::Diverge(_) => VerdictKind::Diverge,
        }
    }

    /// The divergence, if any.
    pub fn divergence(&self) -> Option<&Divergence> {
        match self {
            Verdict::Agree => None,
            Verdict::Diverge(d) => Some(d),
        }
    }
}

/// A finding signature: `<class>-<content hash of key>`.
pub fn signature(class: &str, key: &str) -> String {
    format!("{class}-{}", content_hash(key.as_bytes()))
}

/// Rules an op decides for the steps after it, whose violation shows only at a later step:
/// the ioctl and class their group is filed under. `set_fpu.xfeatures`: a KVM_SET_FPU that
/// leaves XSTATE_BV alone shows as a GET reporting init state, or a run loading it; one
/// defect, one group.
pub const DEFERRED: &[(Rule, &str, Class)] = &[(Rule::SetFpuXfeatures, "KVM_SET_FPU", Class::LegacyArea)];

/// The masking rules a GET is predicted under (one per contract family).
pub const MASK_RULES: &[Rule] = &[Rule::GetMaskV3, Rule::GetMaskUser, Rule::GetMaskV0];

/// The group key of a divergence: violated rule, ioctl, class. Stable across hosts, layouts
/// and engines (none of them enters it).
pub fn group_key(rule: Option<Rule>, ioctl: &str, class: Class) -> String {
    format!("{}|{}|{}", rule.map_or("none", |r| r.id()), ioctl, group_class(rule, class).name())
}

/// The class a group is keyed on: the class of the first divergence, except that a GET whose
/// reported XSTATE_BV breaks the masking rule is a header difference whether or not hidden
/// state took part (hidden state is the same mask seen after a CPUID change).
pub fn group_class(rule: Option<Rule>, class: Class) -> Class {
    match (rule, class) {
        (Some(r), Class::HiddenState) if MASK_RULES.contains(&r) => Class::Header,
        _ => class,
    }
}

/// What a group's reports are about, in plain words: `ioctl` and the violated rule.
pub fn group_title(rule: Option<Rule>, ioctl: &str, class: Class) -> String {
    let Some(rule) = rule else {
        return format!("{ioctl}: {} divergence", class.name());
    };
    let what = match rule {
        Rule::GetMaskV3 | Rule::GetMaskUser | Rule::GetMaskV0 => {
            format!("{ioctl} reports xfeatures the contract masks out (not exposed by the guest CPUID, or outside user_xfeatures)")
        }
        Rule::GetHiddenRevealed => format!("{ioctl} does not reveal state accepted while masked once the guest CPUID widens"),
        Rule::SetAccept => format!("{ioctl} refuses a buffer the contract's permissive load accepts"),
        Rule::SetMxcsrUnchecked => format!("{ioctl} validates MXCSR although XSTATE_BV has no FP, SSE or YMM"),
        Rule::GetV0LegacyRaw | Rule::SetV0LegacyRaw => format!("{ioctl} legacy area departs from the V0 raw copy"),
        Rule::GetFpInit | Rule::GetMxcsrInit | Rule::GetSseZero => {
            format!("{ioctl} legacy area of an unreported component is not at its init value")
        }
        Rule::GetFpReported | Rule::GetMxcsrKernel | Rule::GetSseReported => {
            format!("{ioctl} legacy area of a reported component does not hold the vCPU's state")
        }
        r if r.id().starts_with("set.reject.") || r.id().starts_with("xcr0.reject.") || r.id().starts_with("cpuid.reject.") => {
            format!("{ioctl} accepts what the contract refuses: {}", r.describe())
        }
        r => format!("{ioctl} departs from: {}", r.describe()),
    };
    format!("{what} (violates {})", rule.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_key_ignores_hosts_and_folds_hidden_state_into_the_mask() {
        let a = group_key(Some(Rule::GetMaskV3), "KVM_GET_XSAVE", Class::HiddenState);
        assert_eq!(a, group_key(Some(Rule::GetMaskV3), "KVM_GET_XSAVE", Class::Header));
        assert_eq!(a, "get.mask.v3|KVM_GET_XSAVE|header");
        let t = group_title(Some(Rule::GetMaskV3), "KVM_GET_XSAVE", Class::Header);
        assert!(t.starts_with("KVM_GET_XSAVE reports xfeatures") && t.ends_with("(violates get.mask.v3)"), "{t}");
    }

    #[test]
    fn the_kind_is_the_serialized_tag() {
        let splat = crate::judge::kernel_splat(&crate::Case::default(), &crate::ModelConfig::default(), vec!["WARN".into()]);
        for (v, k) in [(Verdict::Agree, VerdictKind::Agree), (Verdict::Diverge(Box::new(splat)), VerdictKind::Diverge)] {
            assert_eq!(v.kind(), k);
            let j = serde_json::to_value(&v).expect("serializes");
            assert_eq!(j["verdict"], k.name());
            assert_eq!(serde_json::to_value(k).expect("serializes"), k.name());
        }
        assert_eq!(serde_json::from_str::<VerdictKind>("\"diverge\"").ok(), Some(VerdictKind::Diverge));
    }
}
