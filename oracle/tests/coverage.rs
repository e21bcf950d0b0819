//! Every rule id is reached by generated cases on some host and contract (`run.timeout` by a
//! case file: the generator never emits a spin): no rule is dead.

use arbitrary::Unstructured;
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use std::collections::BTreeSet;
use xsave_oracle::case::{CpuidBase, CpuidTable};
use xsave_oracle::host::{HostFacts, Quirk};
use xsave_oracle::model::{predict, Contract, ModelConfig};
use xsave_oracle::rules::Rule;

#[test]
fn every_rule_is_reachable() {
    let plain = HostFacts::synthetic(0x2e7, 0xffff);
    let mut amx = HostFacts::synthetic(0x602ff, 0xffff);
    amx.guest_perm = 0x602ff;
    let mut old = HostFacts::synthetic(0x2e7, 0xffff);
    old.get_cpuid2_keeps_nent = true;
    old.cpuid_sgx_xfrm_masked = true;
    // ... and AMD (SVM): vendor-specific rules (run.v0.shutdown.requeued).
    for e in old.supported_cpuid.iter_mut().filter(|e| e.function == 0) {
        (e.ebx, e.ecx, e.edx) = (0x6874_7541, 0x444d_4163, 0x6974_6e65);
    }
    assert!(old.vendor_amd());
    let mut pvm = HostFacts::synthetic(0x2e7, 0xffff);
    pvm.quirks = vec![Quirk::PvmCpuidRewrite, Quirk::PvmHwXcr0];
    pvm.pvm_dropped_leaves = vec![0x1d, 0x14];
    let mut seen = BTreeSet::new();
    let mut rng = SmallRng::seed_from_u64(5);
    let mut bytes = vec![0u8; 2048];
    for i in 0..20_000u32 {
        rng.fill_bytes(&mut bytes);
        let Ok(case) = xsave_oracle::gen::case(&mut Unstructured::new(&bytes), xsave_oracle::gen::GenOptions::default()) else {
            continue;
        };
        let c = Contract::ALL[i as usize % Contract::ALL.len()];
        for (host, quirks) in [
            (&plain, vec![]),
            (&amx, vec![]),
            (&old, vec![]),
            (&pvm, vec![Quirk::PvmCpuidRewrite, Quirk::PvmHwXcr0]),
            (&plain, vec![Quirk::KvmFpuLegacy, Quirk::TcgXsaveFop, Quirk::TcgX87NoMf]),
        ] {
            for r in predict(&case, host, &ModelConfig::new(c, quirks)).results {
                seen.extend(r.rules);
            }
        }
    }
    // run.timeout: the generator never emits a `spin` (each costs a campaign the whole run
    // bound); a case file reaches it.
    let spin = xsave_oracle::Case {
        config: xsave_oracle::case::Config {
            cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: !0, drop_leaves: vec![] }, entries: vec![], reverse: false }),
            xcr0: None,
        },
        ops: vec![xsave_oracle::Op::RunGuest(xsave_oracle::guest::GuestProgram { actions: vec![xsave_oracle::guest::GuestAction::Spin] })],
    };
    for r in predict(&spin, &plain, &ModelConfig::default()).results {
        seen.extend(r.rules);
    }
    let missing: Vec<&str> = Rule::ALL.iter().filter(|r| !seen.contains(r)).map(|r| r.id()).collect();
    assert!(missing.is_empty(), "rules no generated case reaches: {missing:?}");
}
