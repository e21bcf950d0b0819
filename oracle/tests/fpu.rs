//! `KVM_GET_FPU`/`KVM_SET_FPU` rules (§10): one test per rule, on the worked-example host, and
//! the `kvm-fpu-legacy` quirk that models today's kernels.

mod common;
use common::*;
use xsave_oracle::abi::{self, le32};
use xsave_oracle::case::*;
use xsave_oracle::guest::{GuestAction as A, GuestProgram};
use xsave_oracle::host::Quirk;
use xsave_oracle::model::{predict, Contract, ModelConfig};
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::{Trace, EINVAL};

fn fpu() -> FpuImage {
    FpuImage {
        fcw: 0x27f,
        ftwx: 0x81,
        pad1: 0xee,
        last_opcode: 0x123,
        mxcsr: 0x1fa0,
        pad2: 7,
        fpr_seed: 5,
        xmm_seed: 0x11,
        ..FpuImage::init()
    }
}

fn legacy(h: &xsave_oracle::HostFacts, config: Config, ops: Vec<Op>) -> Trace {
    predict(&Case { config, ops }, h, &ModelConfig::new(Contract::V3, vec![Quirk::KvmFpuLegacy]))
}

fn written() -> Vec<u8> {
    let mut w = fpu().render().to_vec();
    w[abi::FPU_FCW + 5] = 0; // pad1 is not stored
    w[abi::FPU_PAD2..].fill(0);
    w
}

/// set_fpu.stored + get_fpu.view + get_fpu.mxcsr: GET_FPU returns what SET_FPU wrote (pad
/// bytes zero, the abridged tag byte as given).
#[test]
fn get_fpu_returns_what_set_fpu_wrote() {
    let h = host207();
    let t = v3(&h, no_cpuid(), vec![Op::SetFpu(fpu()), Op::GetFpu]);
    assert!(t.results[0].rules.contains(&Rule::SetFpuStored));
    let g = ok(last(&t));
    assert_eq!(g.len(), abi::KVM_FPU_SIZE);
    assert_eq!(g, &written()[..]);
    assert_eq!(g[abi::FPU_FCW + 4], 0x81, "abridged FTW byte, no conversion");
    assert_eq!(le32(g, abi::FPU_MXCSR), 0x1fa0);
    assert!(last(&t).rules.contains(&Rule::GetFpuView) && last(&t).rules.contains(&Rule::GetFpuMxcsr));
}

/// set_fpu.xfeatures: GET_XSAVE after SET_FPU reports FP|SSE and the written values.
#[test]
fn set_fpu_marks_fp_and_sse_in_use() {
    let h = host207();
    let t = v3(&h, no_cpuid(), vec![Op::SetFpu(fpu()), Op::GetXsave]);
    assert!(t.results[0].rules.contains(&Rule::SetFpuXfeatures) && t.results[0].rules.contains(&Rule::SetFpuMxcsr));
    let g = ok(last(&t));
    assert_eq!(bv(g), 0x3);
    assert_eq!(fcw(g), 0x27f);
    assert_eq!(g[4..6], [0x81, 0], "FTW byte and its zeroed reserved neighbour");
    assert_eq!(mxcsr(g).0, 0x1fa0);
    assert_eq!(&g[abi::XMM..abi::XMM_END], &written()[abi::FPU_XMM..abi::FPU_MXCSR]);
}

/// set_fpu.reject.mxcsr: reserved MXCSR bits are refused, nothing changes.
#[test]
fn set_fpu_rejects_reserved_mxcsr() {
    let h = host207();
    let t = v3(&h, no_cpuid(), vec![Op::SetFpu(FpuImage { mxcsr: 1 << 20, ..fpu() }), Op::GetXsave]);
    assert_eq!(err(&t.results[0]), EINVAL);
    assert_eq!(t.results[0].rules, vec![Rule::SetFpuRejectMxcsr]);
    assert_eq!(bv(ok(last(&t))), 0);
}

/// get_fpu.view: without FP/SSE in XSTATE_BV GET_FPU reports init values, like GET_XSAVE.
#[test]
fn get_fpu_reports_init_values_when_not_in_use() {
    let h = host207();
    let set = Op::SetXsave(XsaveImage { fcw: 0x7f, xmm_seed: 3, st_seed: 3, ..XsaveImage::init(0x3) });
    let t = v3(&h, no_cpuid(), vec![set, Op::SetXsave(XsaveImage::init(0)), Op::GetFpu]);
    let mut init = FpuImage::init().render().to_vec();
    init[abi::FPU_PAD2..].fill(0);
    assert_eq!(ok(last(&t)), &init[..]);
}

/// run.entry.load after SET_FPU: the guest sees the written state.
#[test]
fn guest_sees_what_set_fpu_wrote() {
    let h = host207();
    let config = Config { xcr0: Some(0x7), ..full_avx_config() };
    let run = Op::RunGuest(GuestProgram { actions: vec![A::Xsave] });
    let t = v3(&h, config.clone(), vec![Op::SetFpu(fpu()), run.clone()]);
    let g = ok(last(&t));
    assert_eq!(&g[abi::XMM..abi::XMM_END], &written()[abi::FPU_XMM..abi::FPU_MXCSR]);
    // Today's kernels: XSTATE_BV stays 0, the guest enters with init state.
    let t = legacy(&h, config, vec![Op::SetFpu(fpu()), run]);
    let g = ok(last(&t));
    assert!(g[abi::XMM..abi::XMM_END].iter().all(|&b| b == 0));
}

fn full_avx_config() -> Config {
    Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: !0, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: None,
    }
}

/// quirk.fpu.raw + quirk.fpu.mxcsr: today's kernels, the SET_FPU/XSAVE inconsistency.
#[test]
fn legacy_quirk_models_todays_kernels() {
    let h = host207();
    let t = legacy(&h, no_cpuid(), vec![Op::SetFpu(FpuImage { mxcsr: 1 << 20, ..fpu() }), Op::GetFpu, Op::GetXsave]);
    assert!(t.results[0].rules.contains(&Rule::QuirkFpuRaw), "accepted, MXCSR ignored");
    let f = ok(&t.results[1]);
    assert_eq!(le32(f, abi::FPU_MXCSR), 0, "mxcsr never filled");
    assert_eq!(&f[..abi::FPU_MXCSR], &written()[..abi::FPU_MXCSR]);
    let x = ok(last(&t));
    assert_eq!(bv(x), 0, "XSTATE_BV unchanged");
    assert_eq!(fcw(x), 0x37f);
    // The reverse: stale legacy bytes under XSTATE_BV 0 show through GET_FPU.
    let set = Op::SetXsave(XsaveImage { fcw: 0x7f, ..XsaveImage::init(0x3) });
    let t = legacy(&h, no_cpuid(), vec![set, Op::SetXsave(XsaveImage::init(0)), Op::GetFpu]);
    assert_eq!(ok(last(&t))[abi::FPU_FCW], 0x7f);
}

/// Format: the FPU ops are version 2, a case without them stays version 1; both round-trip.
#[test]
fn fpu_ops_are_format_version_2() {
    let c = Case { config: Config::default(), ops: vec![Op::SetFpu(fpu()), Op::GetFpu] };
    let b = c.encode();
    assert_eq!(b[4], 2);
    assert_eq!(Case::decode(&b).unwrap(), c);
    assert_eq!(Case::from_json(&c.to_json()).unwrap(), c);
    assert_eq!(Case { config: Config::default(), ops: vec![Op::GetXsave] }.encode()[4], 1);
}

/// The known-issues registry: the mxcsr departure is labelled, the XSTATE_BV one is not.
#[test]
fn known_issue_labels_only_the_mxcsr_departure() {
    let h = host207();
    let judge = |ops: Vec<Op>| {
        let case = Case { config: no_cpuid(), ops };
        let observed = predict(&case, &h, &ModelConfig::new(Contract::V3, vec![Quirk::KvmFpuLegacy]));
        let (_, v) = xsave_oracle::judge(&case, &h, &ModelConfig::default(), &observed);
        v.divergence().cloned().expect("diverges")
    };
    let get = judge(vec![Op::SetFpu(fpu()), Op::GetFpu]);
    assert_eq!(get.known_issue.as_deref(), Some("kvm-fpu-mxcsr"), "{}", get.title);
    let set = judge(vec![Op::SetFpu(FpuImage { mxcsr: 1 << 20, ..fpu() })]);
    assert_eq!(set.known_issue.as_deref(), Some("kvm-fpu-mxcsr"), "{}", set.title);
    let xsave = judge(vec![Op::SetFpu(fpu()), Op::GetXsave]);
    assert_eq!(xsave.known_issue, None, "{}", xsave.title);
    assert_eq!(xsave.op, "KVM_GET_XSAVE");
    let k = xsave_oracle::known::by_id("kvm-fpu-mxcsr").expect("registered");
    assert!(k.reference.contains("firecracker") && k.since == "2017");
}

/// The MXCSR SET_FPU ignored, read back through GET_XSAVE, is the same known issue.
#[test]
fn known_issue_covers_mxcsr_read_back_through_get_xsave() {
    let h = host207();
    let case = Case {
        config: no_cpuid(),
        ops: vec![Op::SetXsave(XsaveImage::init(0x3)), Op::SetFpu(FpuImage { mxcsr: 0x1fa0, ..FpuImage::init() }), Op::GetXsave],
    };
    let observed = predict(&case, &h, &ModelConfig::new(Contract::V3, vec![Quirk::KvmFpuLegacy]));
    let (_, v) = xsave_oracle::judge(&case, &h, &ModelConfig::default(), &observed);
    let d = v.divergence().expect("diverges");
    assert_eq!(d.op, "KVM_GET_XSAVE");
    assert_eq!(d.known_issue.as_deref(), Some("kvm-fpu-mxcsr"), "{}", d.title);
}

/// set_fpu.xfeatures is the violated rule wherever a kernel that leaves XSTATE_BV alone on
/// KVM_SET_FPU shows it (a GET_XSAVE or GET_XSAVE2 reporting init state), and its group is filed
/// under KVM_SET_FPU: one defect, one group. A GET that differs for another reason after a
/// KVM_SET_FPU (V1's unmasked GET) keeps its own rule and group.
#[test]
fn set_fpu_departure_is_one_group_under_set_fpu() {
    let h = host207();
    let judge = |ops: Vec<Op>, kernel: ModelConfig, config: Config| {
        let case = Case { config, ops };
        let observed = predict(&case, &h, &kernel);
        let (_, v) = xsave_oracle::judge(&case, &h, &ModelConfig::default(), &observed);
        v.divergence().cloned().expect("diverges")
    };
    let todays = || ModelConfig::new(Contract::V3, vec![Quirk::KvmFpuLegacy]);
    let mut keys = Vec::new();
    for get in [Op::GetXsave, Op::GetXsave2] {
        let d = judge(vec![Op::SetFpu(fpu()), get], todays(), no_cpuid());
        assert_eq!(d.violated, Some(Rule::SetFpuXfeatures), "{}", d.title);
        assert!(d.title.ends_with("(set_fpu.xfeatures)"), "{}", d.title);
        assert_eq!(d.group_site().0, "KVM_SET_FPU");
        keys.push(d.group_key());
    }
    assert_eq!(keys[0], keys[1], "both GETs show the one defect");
    assert_eq!(keys[0], "set_fpu.xfeatures|KVM_SET_FPU|legacy-area");
    // V1 reveals xfeatures the guest CPUID hides: a GET departure of its own, after a SET_FPU
    // that V1 marks like V3 does.
    let narrow = Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: 0x3, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: None,
    };
    let d =
        judge(vec![Op::SetXsave(XsaveImage::init(0x7)), Op::SetFpu(fpu()), Op::GetXsave], ModelConfig::new(Contract::V1, vec![]), narrow);
    assert_ne!(d.violated, Some(Rule::SetFpuXfeatures), "{}", d.title);
    assert_eq!(d.group_site().0, "KVM_GET_XSAVE");
}

/// quirk.fpu.run_init: after a run that left x87/SSE at init (their XSTATE_BV bits the
/// processor's choice), today's kernels load a KVM_SET_FPU at the next run only if the bits were
/// saved set. An observation where they were saved clear (the guest and the GETs after it see
/// init state) agrees with the quirk's prediction; a third outcome does not.
#[test]
fn set_fpu_after_a_run_is_loaded_or_dropped_by_the_next_run() {
    let h = host207();
    let cfg = ModelConfig::new(Contract::V3, vec![Quirk::KvmFpuLegacy]);
    let config = Config { xcr0: Some(0x7), ..full_avx_config() };
    let idle = Op::RunGuest(GuestProgram { actions: vec![] });
    for second in [vec![A::Xsave], vec![]] {
        let run = Op::RunGuest(GuestProgram { actions: second.clone() });
        let case = Case { config: config.clone(), ops: vec![idle.clone(), Op::SetFpu(fpu()), run.clone(), Op::GetFpu, Op::GetXsave] };
        let predicted = predict(&case, &h, &cfg);
        // The configuration's steps come first: the second run is the third step from the end.
        let k = predicted.results.len() - 3;
        assert!(predicted.results[k].rules.contains(&Rule::QuirkFpuRunInit), "{:?}", predicted.results[k].rules);
        // The bits saved clear: as if a SET_XSAVE with XSTATE_BV 0 had cleared them.
        let cleared = Case {
            config: config.clone(),
            ops: vec![idle.clone(), Op::SetXsave(XsaveImage::init(0)), Op::SetFpu(fpu()), run, Op::GetFpu, Op::GetXsave],
        };
        let b = predict(&cleared, &h, &cfg);
        let mut observed = predicted.clone();
        observed.results.splice(k.., b.results[b.results.len() - 3..].iter().cloned());
        assert_ne!(observed.results[k + 1].data, predicted.results[k + 1].data, "the two outcomes differ ({second:?})");
        let (_, v) = xsave_oracle::judge(&case, &h, &cfg, &observed);
        assert_eq!(v, xsave_oracle::Verdict::Agree, "bits saved clear ({second:?})");
        let (_, v) = xsave_oracle::judge(&case, &h, &cfg, &predicted);
        assert_eq!(v, xsave_oracle::Verdict::Agree, "bits saved set ({second:?})");
        // Neither outcome: XMM0 the guest never had.
        let mut wrong = observed.clone();
        wrong.results[k + 1].data[abi::FPU_XMM] ^= 0x55;
        let (_, v) = xsave_oracle::judge(&case, &h, &cfg, &wrong);
        assert!(v.divergence().is_some_and(|d| d.op == "KVM_GET_FPU"), "{v:?}");
    }
}

/// Without a run before it, or with the contract's SET_FPU (which marks FP|SSE in use), there
/// is no choice: the rule is not applied.
#[test]
fn set_fpu_run_choice_only_after_a_run_under_the_quirk() {
    let h = host207();
    let config = Config { xcr0: Some(0x7), ..full_avx_config() };
    let run = Op::RunGuest(GuestProgram { actions: vec![A::Xsave] });
    let t = legacy(&h, config.clone(), vec![Op::SetFpu(fpu()), run.clone()]);
    assert!(!last(&t).rules.contains(&Rule::QuirkFpuRunInit));
    let t = v3(&h, config, vec![run.clone(), Op::SetFpu(fpu()), run]);
    assert!(!last(&t).rules.contains(&Rule::QuirkFpuRunInit));
}
