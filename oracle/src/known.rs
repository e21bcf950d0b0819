//! Known issues: departures of today's kernels from the contract that are already public.
//! A divergence matching one is labelled with its id in every report and does not count as a
//! new finding. Each entry names the rule the kernel departs from, the ioctl, the matcher and
//! a public reference.

use crate::case::{Case, Op};
use crate::rules::Rule;
use crate::trace::Ret;
use crate::verdict::Divergence;

/// One publicly known departure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownIssue {
    /// Stable id, e.g. `kvm-fpu-mxcsr`.
    pub id: &'static str,
    /// One line: what the kernel does.
    pub title: &'static str,
    /// The contract rules the kernel departs from.
    pub rules: &'static [Rule],
    /// The ioctl the divergence shows at (for `kvm-fpu-mxcsr` also KVM_GET_XSAVE/XSAVE2 after
    /// a KVM_SET_FPU, when only MXCSR differs).
    pub ioctl: &'static str,
    /// The byte regions the divergence may cover (all of its differing bytes must be in
    /// them); empty: a return-value divergence.
    pub regions: &'static [&'static str],
    /// Where it was made public.
    pub reference: &'static str,
    /// Since when.
    pub since: &'static str,
}

/// The registry.
pub const KNOWN_ISSUES: &[KnownIssue] = &[KnownIssue {
    id: "kvm-fpu-mxcsr",
    title: "KVM_GET_FPU never fills kvm_fpu.mxcsr (reads 0) and KVM_SET_FPU ignores it (nor validates it)",
    rules: &[Rule::GetFpuMxcsr, Rule::SetFpuMxcsr, Rule::SetFpuRejectMxcsr],
    ioctl: "KVM_GET_FPU|KVM_SET_FPU",
    regions: &["kvm_fpu.mxcsr", "MXCSR"],
    reference: "https://github.com/firecracker-microvm/firecracker/issues/26 (2017-11-19: \"After trying to alter the mxcsr and fcw registers, the only one that gets set is the fcw\"); arch/x86/kvm/x86.c kvm_arch_vcpu_ioctl_get_fpu/set_fpu copy every field but mxcsr",
    since: "2017",
}];

impl KnownIssue {
    /// Whether `d`, a divergence of `case`, is this issue.
    pub fn matches(&self, case: &Case, d: &Divergence) -> bool {
        let get_xsave = matches!(d.op.as_str(), "KVM_GET_XSAVE" | "KVM_GET_XSAVE2");
        if get_xsave {
            // The MXCSR a KVM_SET_FPU did not store, read back through GET_XSAVE.
            let after_set_fpu = case.steps()[..d.step.min(case.steps().len())].iter().any(|(_, op)| matches!(**op, Op::SetFpu(_)));
            return after_set_fpu && !d.bytes.is_empty() && d.bytes.iter().all(|b| b.region == "MXCSR");
        }
        if !self.ioctl.split('|').any(|i| i == d.op) || !d.rules.iter().any(|r| self.rules.contains(r)) {
            return false;
        }
        if d.bytes.is_empty() {
            // A return-value divergence: SET_FPU accepted an MXCSR the contract refuses.
            return d.lengths.is_none()
                && d.expected_ret != d.observed_ret
                && matches!(d.observed_ret, Ret::Ok(_))
                && d.rules.last() == Some(&Rule::SetFpuRejectMxcsr);
        }
        d.bytes.iter().all(|b| self.regions.contains(&b.region.as_str()))
    }
}

/// The known issue `d` (a divergence of `case`) is, if any.
pub fn matching(case: &Case, d: &Divergence) -> Option<&'static KnownIssue> {
    KNOWN_ISSUES.iter().find(|k| k.matches(case, d))
}

/// Look up an id.
pub fn by_id(id: &str) -> Option<&'static KnownIssue> {
    KNOWN_ISSUES.iter().find(|k| k.id == id)
}
