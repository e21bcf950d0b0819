//! The minimizer keeps the cause and drops what only the consequences need (issue 12): a
//! restrictive SET (V2b) refused where the contract accepts, followed by GETs that differ only
//! because the state was not loaded, shrinks to the refused SET alone.

use xsave_oracle::case::*;
use xsave_oracle::rules::Rule;
use xsave_oracle::{Contract, HostFacts, ModelConfig};
use xsave_runner::minimize::minimize;
use xsave_runner::{Backend, ModelBackend};

#[test]
fn minimizer_keeps_the_cause_and_drops_consequence_only_steps() {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let narrow = Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: 0x3, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: None,
    };
    // YMM outside the guest CPUID: V3 loads it (permissive load), V2b refuses the whole buffer;
    // every GET after it then differs from V3 only because of that refusal.
    let case = Case {
        config: narrow,
        ops: vec![Op::GetXsave, Op::SetXsave(XsaveImage::init(0x7)), Op::GetXsave, Op::GetFpu, Op::GetXsave2, Op::GetXsave],
    };
    let v3 = ModelConfig::default();
    let mut kernel = ModelBackend::new(host.clone(), ModelConfig::new(Contract::V2b, vec![]));
    let observed = kernel.execute(&case).expect("execute");
    let (_, v) = xsave_oracle::judge(&case, &host, &v3, &observed);
    let d = v.divergence().expect("V2b diverges from V3").clone();
    assert_eq!(d.op, "KVM_SET_XSAVE");
    assert_eq!(d.violated, Some(Rule::SetAccept), "{}", d.title);
    assert!(!d.consequences.is_empty(), "the GETs after the refusal are consequences: {d:?}");
    let (min, _) = minimize(&mut kernel, &host, &v3, &case, &d.signature, 2000).expect("minimize");
    let observed = kernel.execute(&min).expect("execute");
    let (_, v) = xsave_oracle::judge(&min, &host, &v3, &observed);
    let m = v.divergence().expect("the minimized case still diverges").clone();
    assert_eq!(m.signature, d.signature, "same signature");
    assert_eq!(m.step + 1, min.steps().len(), "nothing after the cause is kept: {}", min.to_json());
    assert!(m.consequences.is_empty(), "no consequence left: {:?}", m.consequences);
    assert!(min.ops.len() < case.ops.len());
}
