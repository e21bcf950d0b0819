//! Composite models (`ModelConfig::families`): one contract per ioctl family, each family's
//! state derived from its own contract, so two versions' defects coexist without leaking.

mod common;
use common::*;
use xsave_oracle::case::*;
use xsave_oracle::model::Contract::{self, *};
use xsave_oracle::model::{predict, Family, FamilyContracts, ModelConfig};
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::{Ret, Trace, EINVAL};
use xsave_oracle::xfeatures::*;

fn composite(get: Option<Contract>, set: Option<Contract>) -> ModelConfig {
    ModelConfig { families: FamilyContracts { get, set }, ..ModelConfig::new(V3, vec![]) }
}

/// SET of 0x207 before any CPUID, a CPUID exposing FP|SSE|YMM, GET, SET of 0x207 again, XCR0
/// with PKRU, GET of the state the vCPU then holds.
fn sequence(cfg: &ModelConfig) -> Trace {
    let ops = vec![
        Op::SetXsave(img(0x207)),
        set_cpuid(vec![CpuidEntry::new(0xd, 0, 1, [0x7, 0, 0, 0])]),
        Op::GetXsave,
        Op::SetXsave(img(0x207)),
        Op::SetXsave(img(0x7)),
        Op::GetXsave,
    ];
    predict(&Case { config: no_cpuid(), ops }, &host207(), cfg)
}

#[test]
fn v1_get_and_v2b_set_each_follow_their_own_contract() {
    let t = sequence(&composite(Some(V1), Some(V2b)));
    // Before any CPUID V2b's user_xfeatures is the host default: the SET is accepted.
    assert_eq!(t.results[0].ret, Ret::Ok(0));
    // V1's GET is not masked by the guest CPUID: PKRU, outside it, is reported. (V2b's GET
    // mask, the CPUID's FP|SSE|YMM, must not leak into it.)
    assert_eq!(bv(ok(&t.results[2])), 0x207);
    assert!(t.results[2].rules.contains(&Rule::GetMaskUser));
    // V2b's SET checks the guest CPUID | FP|SSE: PKRU refused. (V1's would accept.)
    assert_eq!(err(&t.results[3]), EINVAL);
    assert_eq!(t.results[3].rules, vec![Rule::SetRejectUserXfeatures]);
    assert_eq!(t.results[4].ret, Ret::Ok(0));
    assert_eq!(bv(ok(&t.results[5])), 0x7);
    assert!(t.results[1].rules.contains(&Rule::CpuidV2UserXfeatures));
}

#[test]
fn each_family_alone_matches_its_version_there_and_v3_elsewhere() {
    let (v1, v2b, v3) = (sequence(&cfg(V1)), sequence(&cfg(V2b)), sequence(&cfg(V3)));
    let both = sequence(&composite(Some(V1), Some(V2b)));
    // The GET of step 2 comes before any SET disagreement: it is V1's, not V2b's or V3's.
    assert_eq!(both.results[2], v1.results[2]);
    assert_ne!(bv(ok(&v2b.results[2])), 0x207);
    assert_ne!(bv(ok(&v3.results[2])), 0x207);
    // The SETs are V2b's.
    for i in [0, 3, 4] {
        assert_eq!(both.results[i].ret, v2b.results[i].ret, "step {i}");
    }
    // One override only: the other family is V3's.
    let get_only = sequence(&composite(Some(V1), None));
    assert_eq!(get_only.results[2], v1.results[2]);
    assert_eq!(get_only.results[3].ret, v3.results[3].ret);
    let set_only = sequence(&composite(None, Some(V2b)));
    assert_eq!(set_only.results[2], v3.results[2]);
    assert_eq!(set_only.results[3].ret, v2b.results[3].ret);
    // No override is exactly the base contract.
    assert_eq!(sequence(&composite(None, None)), v3);
}

#[test]
fn v0_legacy_area_under_v3_keeps_the_xsave2_abi() {
    let c = composite(Some(V0), Some(V0));
    let ops = vec![Op::SetXsave(img(FPSSE)), Op::GetXsave, Op::CheckXsave2, Op::GetXsave2];
    let t = predict(&Case { config: no_cpuid(), ops: ops.clone() }, &host207(), &c);
    let v0 = predict(&Case { config: no_cpuid(), ops }, &host207(), &cfg(V0));
    assert_eq!(t.results[..2], v0.results[..2], "V0's SET and GET");
    assert!(t.results[1].rules.contains(&Rule::GetV0LegacyRaw));
    // KVM_CAP_XSAVE2 and KVM_GET_XSAVE2 are the base contract's (V3), absent under V0.
    assert!(matches!(t.results[2].ret, Ret::Ok(n) if n > 0));
    assert_eq!(t.results[3].ret, Ret::Ok(0));
    assert_eq!(v0.results[3].ret, Ret::Err(EINVAL));
}

#[test]
fn single_contract_configs_serialize_as_before_and_composites_round_trip() {
    let json = |c: &ModelConfig| serde_json::to_string(c).expect("serialize");
    assert_eq!(json(&ModelConfig::default()), r#"{"contract":"V3","quirks":[]}"#);
    let old: ModelConfig = serde_json::from_str(r#"{"contract":"V2b","quirks":[]}"#).expect("parse");
    assert_eq!(old, cfg(V2b));
    let c = composite(Some(V1), Some(V2b));
    assert_eq!(json(&c), r#"{"contract":"V3","quirks":[],"families":{"get":"V1","set":"V2b"}}"#);
    assert_eq!(serde_json::from_str::<ModelConfig>(&json(&c)).expect("parse"), c);
    assert_eq!(c.contract_label(), "V3+get=V1+set=V2b");
    assert_eq!(cfg(V2b).contract_label(), "V2b");
    assert_eq!((c.contract_for(Family::Get), c.contract_for(Family::Set)), (V1, V2b));
}
