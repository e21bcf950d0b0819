//! Migration pre-flight on synthetic fingerprints: V3 → V2b refuses a state carrying a
//! guest-unsupported host feature with EINVAL; V1 → V3 flags the unmasked save; V3 → V3 on
//! identical hosts loads cleanly.

use xsave_oracle::case::*;
use xsave_oracle::xfeatures::*;
use xsave_oracle::HostFacts;
use xsave_runner::campaign::case_for;
use xsave_runner::migrate::{check_state, migrate_case, LoadVerdict, Target};
use xsave_testkit::{tempdir, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

fn fingerprint(contract: &str) -> serde_json::Value {
    serde_json::json!({ "contract": contract, "quirks": [], "host": HostFacts::synthetic(0x2e7, 0xffff) })
}

fn target(contract: &str) -> Target {
    Target::from_fingerprint(contract, &fingerprint(contract)).expect("fingerprint")
}

/// A guest exposing only FP|SSE, with a saved state that carries YMM and PKRU.
fn narrow_guest_state() -> (Vec<Op>, Vec<u8>) {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut img = XsaveImage::init(FPSSE | YMM | PKRU);
    img.xmm_seed = 3;
    img.components = vec![ComponentData { bit: 2, seed: 4 }];
    img.pkru = 0x5555_5554;
    let setup = vec![Op::SetCpuid2(CpuidTable {
        base: CpuidBase::Subset { leaves: vec![0xd], xcr0_mask: FPSSE },
        entries: vec![],
        reverse: false,
    })];
    (setup, img.render(&host, 4096))
}

#[test]
fn v2b_target_refuses_guest_unsupported_feature() {
    let (setup, state) = narrow_guest_state();
    let r = check_state(&state, &setup, &target("V2b"), None);
    assert_eq!(r.verdict, LoadVerdict::Refused);
    assert_eq!(r.set_ret, "-EINVAL");
    assert_eq!(r.rule.as_deref(), Some("set.reject.user_xfeatures"));
    assert!(r.reason.contains("not exposed to the guest"), "{}", r.reason);
    // The V3 target accepts it (permissive load); the masked features do not read back.
    let r = check_state(&state, &setup, &target("V3"), None);
    assert_eq!(r.set_ret, "0");
    assert_eq!(r.verdict, LoadVerdict::LoadsWithLoss);
    assert_eq!(r.lost, vec!["YMM_Hi128".to_string(), "PKRU".to_string()]);
}

#[test]
fn v3_source_never_refused_by_v2b_and_v3_to_v3_loads_cleanly() {
    let (v3, v2b) = (target("V3"), target("V2b"));
    let mut saved = 0;
    for i in 0..2000 {
        let case = case_for(8, i);
        if let Some(m) = migrate_case("c", &case, &v3, &v3) {
            saved += 1;
            assert_eq!(m.check.verdict, LoadVerdict::Loads, "V3 → V3 case {i}: {m:?}");
            assert!(m.unmasked.is_empty());
        }
        if let Some(m) = migrate_case("c", &case, &v3, &v2b) {
            assert_ne!(m.check.verdict, LoadVerdict::Refused, "masked save never carries guest-unsupported features: {m:?}");
        }
    }
    assert!(saved > 1000);
}

#[test]
fn v1_source_unmasked_save_is_flagged() {
    let (v1, v3, v2b) = (target("V1"), target("V3"), target("V2b"));
    let (mut flagged, mut refused) = (0, 0);
    for i in 0..2000 {
        let case = case_for(9, i);
        if let Some(m) = migrate_case("c", &case, &v1, &v3) {
            if !m.unmasked.is_empty() {
                flagged += 1;
                assert_ne!(m.check.verdict, LoadVerdict::Refused, "V3 loads permissively: {m:?}");
            }
        }
        if let Some(m) = migrate_case("c", &case, &v1, &v2b) {
            refused += usize::from(m.check.verdict == LoadVerdict::Refused);
        }
    }
    assert!(flagged > 0 && refused > 0, "flagged {flagged} refused {refused}");
}

#[test]
fn check_state_cli() {
    let dir = tempdir();
    let (setup, state) = narrow_guest_state();
    let st = dir.path().join("state.bin");
    std::fs::write(&st, &state).expect("state");
    let fp = dir.path().join("v2b.json");
    std::fs::write(&fp, fingerprint("V2b").to_string()).expect("fp");
    let Op::SetCpuid2(t) = &setup[0] else { unreachable!() };
    let cpuid = dir.path().join("cpuid.json");
    std::fs::write(&cpuid, serde_json::to_string(t).expect("json")).expect("cpuid");
    let o = RIG.command().arg("check-state").arg(&st).arg("--target").arg(&fp).arg("--guest-cpuid").arg(&cpuid).output().expect("run");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("-EINVAL") && out.contains("not exposed to the guest"), "{out}");
    std::fs::write(dir.path().join("short.bin"), [0u8; 100]).expect("short");
    let o = RIG.command().arg("check-state").arg(dir.path().join("short.bin")).arg("--target").arg(&fp).output().expect("run");
    assert_eq!(o.status.code(), Some(2));
    let unknown = dir.path().join("unknown.json");
    std::fs::write(&unknown, fingerprint("unknown").to_string()).expect("fp");
    let o = RIG.command().arg("check-state").arg(&st).arg("--target").arg(&unknown).output().expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot be predicted"));
}
