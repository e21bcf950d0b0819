//! One-call differential check on this host's KVM, for fuzz targets: the backend, host facts
//! and oracle configuration are set up once per process (probe, quirks auto).

use crate::kvm::KvmBackend;
use crate::probe::probe;
use crate::Backend;
use std::sync::{Mutex, OnceLock};
use xsave_oracle::judge::judge;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{Case, Contract, HostFacts, ModelConfig};

struct Rig {
    backend: KvmBackend,
    host: HostFacts,
    model: ModelConfig,
}

fn rig() -> &'static Mutex<Rig> {
    static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();
    RIG.get_or_init(|| {
        let report = probe().unwrap_or_else(|e| panic!("differential_kvm needs KVM: {e}"));
        let host = report.host;
        // Today's kernels' KVM_SET_FPU departure (docs/findings/kvm-set-fpu-xstate-bv.md) is
        // modelled here, so the fuzz target crashes only on divergences not yet reported.
        let quirks = [host.quirks.clone(), vec![xsave_oracle::Quirk::KvmFpuLegacy]].concat();
        let model = ModelConfig { quirks, ..ModelConfig::default() };
        let backend = KvmBackend::new(host.clone(), true).unwrap_or_else(|e| panic!("{e}"));
        Mutex::new(Rig { backend, host, model })
    })
}

/// Run `case` on KVM and judge it; panics (a crash for libFuzzer) on a divergence or a
/// backend failure. Known issues (`xsave_oracle::known`) and the modelled KVM_SET_FPU
/// departure are not crashes.
pub fn check_on_kvm(case: &Case) {
    // The legacy FPU ioctls still depart from the contract on every kernel in ways not all
    // modelled yet: `quirk.fpu.run_init` models a SET_FPU after a guest run, but not a run that
    // ends differently either way nor a SET_XSAVE or second run after it (docs/CONTRACT-FPU.md;
    // 6 of 1500 cases of runner/tests/fpu.rs still diverge). Campaigns report those as
    // findings; this target checks the XSAVE ABI, so it drops FPU ops from its input.
    let stripped;
    let case = if case.ops.iter().any(|o| matches!(o, xsave_oracle::Op::SetFpu(_) | xsave_oracle::Op::GetFpu)) {
        stripped = Case {
            ops: case.ops.iter().filter(|o| !matches!(o, xsave_oracle::Op::SetFpu(_) | xsave_oracle::Op::GetFpu)).cloned().collect(),
            ..case.clone()
        };
        &stripped
    } else {
        case
    };
    let mut rig = rig().lock().unwrap_or_else(|p| p.into_inner());
    let Rig { backend, host, model } = &mut *rig;
    let observed = backend.execute(case).unwrap_or_else(|e| panic!("backend: {e}"));
    if let (_, Verdict::Diverge(d)) = judge(case, host, model, &observed) {
        if d.known_issue.is_none() {
            panic!("divergence {}: {}", d.signature, d.title);
        }
    }
}

/// For the detection benchmark's libFuzzer row: run `case` on the model of contract
/// `$XSAVE_RIG_DETECT_CONTRACT` (synthetic host) and panic when the V3 oracle sees a
/// divergence of class `$XSAVE_RIG_DETECT_CLASS`.
pub fn check_detect(case: &Case) {
    use xsave_oracle::verdict::Class;
    static CFG: OnceLock<(Contract, String)> = OnceLock::new();
    let (contract, class) = CFG.get_or_init(|| {
        let c = std::env::var("XSAVE_RIG_DETECT_CONTRACT").ok().and_then(|c| Contract::parse(&c)).unwrap_or(Contract::V2b);
        let k = std::env::var("XSAVE_RIG_DETECT_CLASS").unwrap_or_else(|_| Class::Errno.name().to_string());
        (c, k)
    });
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let observed = xsave_oracle::predict(case, &host, &ModelConfig { contract: *contract, quirks: vec![] });
    if let (_, Verdict::Diverge(d)) = judge(case, &host, &ModelConfig::default(), &observed) {
        if d.class.name() == class {
            panic!("detected {contract}: {}", d.title);
        }
    }
}
