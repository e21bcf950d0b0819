//! Detection without a buggy kernel: model backends under the historical contracts, judged
//! by the V3 oracle, must yield divergences of the expected class within a few thousand
//! cases (no /dev/kvm needed).

use xsave_oracle::verdict::Verdict;
use xsave_oracle::{Contract, HostFacts, ModelConfig};
use xsave_runner::campaign::{run, CampaignConfig};
use xsave_runner::ModelBackend;
use xsave_testkit::tempdir;

/// Run `contract` as the backend against the V3 oracle; return the verdicts of the findings.
fn findings(contract: Contract, iterations: u64) -> Vec<serde_json::Value> {
    let dir = tempdir();
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut be = ModelBackend::new(host, ModelConfig { contract, quirks: vec![] });
    let cfg = CampaignConfig {
        guest: false,
        workdir: Some(dir.path().to_path_buf()),
        minimize_budget: 500,
        ..CampaignConfig::new(42, Some(iterations))
    };
    let s = run(&mut be, cfg).expect("campaign");
    assert_eq!(s.execs, iterations);
    std::fs::read_dir(dir.path().join("findings"))
        .expect("findings dir")
        .flatten()
        .map(|e| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path().join("verdict.json")).expect("verdict")).expect("json");
            // Every finding is complete: its case decodes and replays to the same verdict.
            let case = xsave_oracle::Case::decode(&std::fs::read(e.path().join("case.bin")).expect("case")).expect("decode");
            let obs = xsave_oracle::predict(&case, &HostFacts::synthetic(0x2e7, 0xffff), &ModelConfig { contract, quirks: vec![] });
            let (_, again) = xsave_oracle::judge(&case, &HostFacts::synthetic(0x2e7, 0xffff), &ModelConfig::default(), &obs);
            let stored: Verdict = serde_json::from_value(v["verdict"].clone()).expect("verdict parses");
            assert_eq!(again, stored, "finding {} replays identically", e.path().display());
            v["verdict"].clone()
        })
        .collect()
}

fn has(f: &[serde_json::Value], class: &str, op: &str, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    f.iter().any(|v| v["class"] == class && v["op"] == op && pred(v))
}

#[test]
fn v2b_regression_found_as_set_xsave_einval() {
    let f = findings(Contract::V2b, 3000);
    assert!(
        has(&f, "errno", "KVM_SET_XSAVE", |v| v["observed_ret"]["Err"] == 22 && v["expected_ret"]["Ok"] == 0),
        "no SET_XSAVE EINVAL-where-V3-accepts finding: {f:#?}"
    );
}

#[test]
fn v2a_found_as_set_xsave_einval() {
    let f = findings(Contract::V2a, 3000);
    assert!(has(&f, "errno", "KVM_SET_XSAVE", |v| v["observed_ret"]["Err"] == 22));
}

#[test]
fn v1_found_as_unmasked_header() {
    let f = findings(Contract::V1, 3000);
    assert!(
        has(&f, "header", "KVM_GET_XSAVE", |v| v["bytes"].as_array().is_some_and(|b| b.iter().any(|b| b["region"] == "XSTATE_BV")))
            || has(&f, "hidden-state", "KVM_GET_XSAVE", |_| true)
    );
}

#[test]
fn v0_found_in_legacy_area_and_header_validation() {
    let f = findings(Contract::V0, 3000);
    assert!(has(&f, "legacy-area", "KVM_GET_XSAVE", |_| true), "V0 raw legacy area not detected");
    assert!(
        has(&f, "errno", "KVM_SET_XSAVE", |v| v["expected_ret"]["Err"] == 22 && v["observed_ret"]["Ok"] == 0),
        "V0 missing header validation not detected"
    );
}

#[test]
fn v3_model_agrees_with_v3_oracle() {
    assert!(findings(Contract::V3, 2000).is_empty());
}

#[test]
fn feedback_grows_a_corpus_and_reaches_more_rules() {
    let dir = tempdir();
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let run_with = |feedback: bool, wd: &std::path::Path| {
        let mut be = ModelBackend::new(host.clone(), ModelConfig::default());
        let cfg = CampaignConfig { guest: false, workdir: Some(wd.to_path_buf()), feedback, ..CampaignConfig::new(3, Some(3000)) };
        run(&mut be, cfg).expect("campaign")
    };
    let s = run_with(true, &dir.path().join("fb"));
    assert!(s.corpus > 10, "corpus {}", s.corpus);
    assert_eq!(std::fs::read_dir(dir.path().join("fb/corpus")).expect("corpus dir").count(), s.corpus);
    assert!(s.rules_covered > 30 && s.rules_covered <= s.rules_total, "{} / {}", s.rules_covered, s.rules_total);
    // Every corpus file is a valid case.
    for e in std::fs::read_dir(dir.path().join("fb/corpus")).expect("dir").flatten() {
        xsave_oracle::Case::decode(&std::fs::read(e.path()).expect("read")).expect("corpus entry decodes");
    }
    // Resuming reloads the corpus and continues.
    let again = run_with(true, &dir.path().join("fb2"));
    assert_eq!(again.execs, 3000);
}

#[test]
fn detection_benchmark_finds_all_four_historical_contracts() {
    let rows = xsave_runner::bench::detect(5, 20_000, None).expect("detect");
    assert_eq!(rows.len(), 4);
    for r in rows {
        assert_eq!(r.found, r.seeds, "{} not found by every seed: {r:?}", r.contract);
        assert!(r.median_execs.is_some_and(|e| e < 5000), "{r:?}");
    }
}

/// A backend whose divergence does not show again: V2b (which refuses the permissive load) on
/// its first executions, V3 (agreeing) after. Stands in for a nondeterministic kernel.
struct Flaky {
    v2b: ModelBackend,
    v3: ModelBackend,
    left: u32,
}

impl xsave_runner::Backend for Flaky {
    fn name(&self) -> String {
        "flaky".into()
    }
    fn host(&self) -> &HostFacts {
        self.v3.host()
    }
    fn execute(&mut self, case: &xsave_oracle::Case) -> Result<xsave_oracle::Trace, xsave_runner::BackendError> {
        if self.left == 0 {
            return self.v3.execute(case);
        }
        let t = self.v2b.execute(case)?;
        // Once the first divergence is seen, the backend turns well-behaved.
        let h = self.v3.host().clone();
        if xsave_oracle::diff(case, &h, &ModelConfig::default(), &xsave_oracle::predict(case, &h, &ModelConfig::default()), &t)
            != Verdict::Agree
        {
            self.left -= 1;
        }
        Ok(t)
    }
}

/// A finding that does not diverge again when the campaign writes it is kept as found (its
/// divergence, the original case, the finding run's traces) and marked `unreproduced`: never
/// written as an agreeing verdict.
#[test]
fn an_unreproduced_finding_is_kept_as_found() {
    let dir = tempdir();
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let model = |contract| ModelBackend::new(host.clone(), ModelConfig { contract, quirks: vec![] });
    let mut be = Flaky { v2b: model(Contract::V2b), v3: model(Contract::V3), left: 1 };
    let cfg =
        CampaignConfig { guest: false, workdir: Some(dir.path().to_path_buf()), minimize_budget: 0, ..CampaignConfig::new(42, Some(400)) };
    let s = run(&mut be, cfg).expect("campaign");
    assert_eq!(s.divergent_cases, 1, "one divergence, then none");
    let found: Vec<_> = std::fs::read_dir(dir.path().join("findings")).expect("findings").flatten().collect();
    assert_eq!(found.len(), 1);
    let d = found[0].path();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("verdict.json")).expect("verdict")).expect("json");
    assert_eq!(v["verdict"]["verdict"], "diverge", "{v}");
    assert_eq!(v["unreproduced"], true);
    assert_eq!(v["verdict"]["signature"].as_str(), found[0].file_name().to_str());
    assert_eq!(std::fs::read(d.join("case.bin")).expect("case"), std::fs::read(d.join("original.bin")).expect("original"));
}
