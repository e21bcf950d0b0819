//! The rig finds the KVM_SET_FPU/XSTATE_BV inconsistency by itself (issue 14): a campaign from
//! an empty corpus, judged by the contract, yields a new finding at KVM_GET_XSAVE or
//! KVM_GET_FPU after a KVM_SET_FPU; the mxcsr departure is labelled as the known issue. On the
//! model of today's kernels (`kvm-fpu-legacy`, no KVM needed) and on this host's KVM.

use std::time::Instant;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{Case, Contract, HostFacts, ModelConfig, Op, Quirk};
use xsave_runner::campaign::{run, CampaignConfig, Summary};
use xsave_runner::{Backend, ModelBackend};
use xsave_testkit::{kvm_or_skip, tempdir};

fn campaign(be: &mut dyn Backend, model: ModelConfig, n: u64, dir: &std::path::Path) -> Summary {
    let cfg = CampaignConfig { workdir: Some(dir.to_path_buf()), model, ..CampaignConfig::new(14, Some(n)) };
    run(be, cfg).expect("campaign")
}

/// The findings of a workdir: (case, verdict).
fn findings(dir: &std::path::Path) -> Vec<(Case, Verdict)> {
    std::fs::read_dir(dir.join("findings"))
        .expect("findings dir")
        .flatten()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("verdict.json")).expect("verdict")).expect("json");
            let case = Case::decode(&std::fs::read(e.path().join("case.bin")).expect("case")).expect("decode");
            (case, serde_json::from_value(v["verdict"].clone()).expect("verdict parses"))
        })
        .collect()
}

/// A new (not known) finding at GET_XSAVE/GET_FPU with a SET_FPU before it.
fn set_fpu_finding(f: &[(Case, Verdict)]) -> Option<&(Case, Verdict)> {
    f.iter().find(|(c, v)| {
        let Verdict::Diverge(d) = v else { return false };
        let steps = c.steps();
        d.known_issue.is_none()
            && d.explained_by.is_none()
            && matches!(d.op.as_str(), "KVM_GET_XSAVE" | "KVM_GET_XSAVE2" | "KVM_GET_FPU")
            && steps[..d.step].iter().any(|(_, op)| matches!(**op, Op::SetFpu(_)))
    })
}

fn check(s: &Summary, f: &[(Case, Verdict)]) {
    let hit = set_fpu_finding(f);
    assert!(hit.is_some(), "no SET_FPU/XSAVE finding in {} cases: {:?}", s.execs, s.by_class);
    // One defect, one group: every symptom (a GET_XSAVE/GET_XSAVE2 reporting init state after
    // the SET_FPU) is filed under set_fpu.xfeatures at KVM_SET_FPU, none under the GET rules
    // its bytes would otherwise name.
    let keys: Vec<&str> = s.groups.iter().map(|g| g.key.as_str()).collect();
    assert_eq!(keys.iter().filter(|k| k.starts_with("set_fpu.xfeatures|")).count(), 1, "{keys:?}");
    assert!(keys.contains(&"set_fpu.xfeatures|KVM_SET_FPU|legacy-area"), "{keys:?}");
    // The attribution is confirmed by predicting without the marking (`kvm-fpu-legacy`). Where
    // that model has its documented gap (a KVM_SET_FPU after a run, or followed by runs that
    // end differently either way, or by a SET_XSAVE or second run: docs/CONTRACT-FPU.md) a symptom keeps the rule its bytes name; every other
    // new finding is either the SET_FPU group or KVM_GET_FPU ignoring XSTATE_BV (get_fpu.view).
    for (c, v) in f {
        let Verdict::Diverge(d) = v else { continue };
        if d.known_issue.is_some() || d.explained_by.is_some() {
            continue;
        }
        let rule = d.violated.map_or("none", |r| r.id());
        if matches!(rule, "set_fpu.xfeatures" | "get_fpu.view") {
            continue;
        }
        let steps = c.steps();
        // A KVM_SET_FPU with a run before it or after it (up to the diverging step).
        let run = |r: &[(xsave_oracle::case::Origin, std::borrow::Cow<'_, Op>)]| r.iter().any(|(_, op)| matches!(**op, Op::RunGuest(_)));
        let gap = (0..d.step).any(|j| matches!(*steps[j].1, Op::SetFpu(_)) && (run(&steps[..j]) || run(&steps[j..=d.step])));
        assert!(gap, "a new finding outside the SET_FPU group ({rule}) and outside the model's gap: {}\n{}", d.title, c.to_json());
    }
    assert!(s.known_issue_cases > 0, "the known mxcsr issue never showed");
    assert!(!s.known_signatures.iter().any(|k| s.new_signatures.contains(k)), "a known issue counted as new");
    for (_, v) in f {
        if let Verdict::Diverge(d) = v {
            assert_eq!(d.known_issue.is_some(), s.known_signatures.contains(&d.signature), "{}", d.title);
        }
    }
}

#[test]
fn model_of_todays_kernels_yields_the_set_fpu_finding() {
    let dir = tempdir();
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut be = ModelBackend::new(host, ModelConfig::new(Contract::V3, vec![Quirk::KvmFpuLegacy]));
    let s = campaign(&mut be, ModelConfig::default(), 1500, dir.path());
    check(&s, &findings(dir.path()));
}

#[test]
fn kvm_yields_the_set_fpu_finding() {
    if !kvm_or_skip("kvm_yields_the_set_fpu_finding") {
        return;
    }
    let host = xsave_runner::probe::probe().expect("probe").host;
    let dir = tempdir();
    let mut be = xsave_runner::kvm::KvmBackend::new(host.clone(), true).expect("backend");
    let t = Instant::now();
    let s = campaign(&mut be, ModelConfig { quirks: host.quirks.clone(), ..ModelConfig::default() }, 1500, dir.path());
    let f = findings(dir.path());
    check(&s, &f);
    eprintln!(
        "kvm: {} cases in {:.1}s, {} new signatures, {} known-issue signatures, {} divergent cases",
        s.execs,
        t.elapsed().as_secs_f64(),
        s.new_signatures.len(),
        s.known_signatures.len(),
        s.divergent_cases
    );
}

/// With the departure modelled, the FPU ops agree with KVM everywhere else, except where a
/// KVM_SET_FPU follows a KVM_RUN: whether the written x87/SSE state is then reported and
/// loaded depends on the XINUSE bits of the last hardware save (the processor's choice): the
/// model predicts the next run both ways (`quirk.fpu.run_init`), not a run that ends
/// differently either way nor what follows a SET_XSAVE or second run (docs/CONTRACT-FPU.md).
#[test]
fn kvm_agrees_with_todays_fpu_model() {
    if !kvm_or_skip("kvm_agrees_with_todays_fpu_model") {
        return;
    }
    let host = xsave_runner::probe::probe().expect("probe").host;
    let dir = tempdir();
    let mut be = xsave_runner::kvm::KvmBackend::new(host.clone(), true).expect("backend");
    let mut quirks = host.quirks.clone();
    quirks.push(Quirk::KvmFpuLegacy);
    let s = campaign(&mut be, ModelConfig { quirks, ..ModelConfig::default() }, 1500, dir.path());
    for (c, v) in findings(dir.path()) {
        let Verdict::Diverge(d) = v else { continue };
        let steps = c.steps();
        let ran = steps[..d.step].iter().position(|(_, op)| matches!(**op, Op::RunGuest(_)));
        let after = ran.is_some_and(|r| steps[r..d.step].iter().any(|(_, op)| matches!(**op, Op::SetFpu(_))));
        assert!(after, "divergence without SET_FPU after a run: {}\n{}", d.title, c.to_json());
    }
    eprintln!("kvm: {} divergent cases of {}, all with SET_FPU after a run", s.divergent_cases, s.execs);
}
