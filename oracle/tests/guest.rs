//! The guest-run rules (spec §7 as the project's docs/CONTRACT-RUN.md states them): one test per
//! rule, on the worked-example host (XCR0 0x207, YMM at 576, PKRU at 2432).

mod common;
use common::*;
use xsave_oracle::abi::{le64, put};
use xsave_oracle::case::*;
use xsave_oracle::diff::diff;
use xsave_oracle::guest::{Exit, GuestAction as A, GuestProgram};
use xsave_oracle::host::Quirk;
use xsave_oracle::model::{predict, Contract, ModelConfig};
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::{Ret, Trace, EINVAL};
use xsave_oracle::verdict::Verdict;

fn run(actions: Vec<A>) -> Op {
    Op::RunGuest(GuestProgram { actions })
}

fn full_avx() -> Config {
    Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: !0, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: Some(0x7),
    }
}

fn exit(r: &xsave_oracle::OpResult) -> Exit {
    match r.ret {
        Ret::Ok(v) => Exit::from_code(v).expect("exit code"),
        e => panic!("run failed: {e:?}"),
    }
}

/// run.entry.load + guest.xsave: the guest sees exactly what SET loaded.
#[test]
fn guest_sees_the_loaded_state() {
    let h = host207();
    let t = v3(&h, full_avx(), vec![Op::SetXsave(img(0x7)), run(vec![A::Xsave])]);
    let r = last(&t);
    assert_eq!(exit(r), Exit::End);
    assert!(r.rules.contains(&Rule::RunEntryLoad) && r.rules.contains(&Rule::GuestXsave) && r.rules.contains(&Rule::RunEnd));
    let set = img(0x7).render(&h, 4096);
    assert_eq!(&r.data[160..416], &set[160..416], "XMM as loaded");
    assert_eq!(&r.data[576..832], &set[576..832], "YMM upper halves as loaded");
    assert_eq!(&r.data[0..2], &set[0..2], "FCW as loaded");
    assert_eq!(bv(&r.data) & 0x7, 0x7);
}

/// run.saved + get.mask.v3: guest-written YMM is saved and reported within the guest CPUID.
#[test]
fn guest_writes_are_saved_and_reported() {
    let h = host207();
    let t = v3(&h, full_avx(), vec![run(vec![A::Ymm { seed: 3 }]), Op::GetXsave]);
    let g = ok(last(&t));
    let input = A::Ymm { seed: 3 }.input();
    assert_eq!(&g[576..592], &input[16..32]);
    assert_eq!(&g[160..176], &input[0..16]);
    assert_eq!(bv(g) & 0x6, 0x6);
    assert!(t.results[2].rules.contains(&Rule::RunSaved));
}

/// run.xinuse.free: a component back at its init value may be saved with its bit set or
/// clear; both observations agree, any other bit does not.
#[test]
fn xinuse_is_the_processors_choice() {
    let h = host207();
    let case = Case { config: full_avx(), ops: vec![run(vec![A::Ymm { seed: 3 }, A::Vzeroupper]), Op::GetXsave] };
    let cfg = ModelConfig::default();
    let exp = predict(&case, &h, &cfg);
    let get = last(&exp);
    assert!(get.rules.contains(&Rule::RunXinuseFree));
    for observed_bv in [bv(&get.data), bv(&get.data) & !0x4] {
        let mut obs = exp.clone();
        for r in &mut obs.results {
            r.rules.clear();
            r.allowed.clear();
        }
        let n = obs.results.len() - 1;
        put(&mut obs.results[n].data, 512, &observed_bv.to_le_bytes());
        assert_eq!(diff(&case, &h, &cfg, &exp, &obs), Verdict::Agree, "bit 2 clear or set");
    }
    // SSE holds the pattern's low halves: its bit is not free.
    let mut obs = exp.clone();
    let n = obs.results.len() - 1;
    put(&mut obs.results[n].data, 512, &(bv(&get.data) & !0x2).to_le_bytes());
    assert!(matches!(diff(&case, &h, &cfg, &exp, &obs), Verdict::Diverge(_)));
}

/// run.fault + run.hw_xcr0.guest: AVX with guest XCR0 = FP faults on upstream KVM; under the
/// pvm-hw-xcr0 quirk hardware XCR0 is the host's and it runs.
#[test]
fn avx_with_xcr0_fp_faults_unless_hardware_xcr0_is_the_hosts() {
    let h = host207();
    let ops = vec![run(vec![A::Ymm { seed: 1 }])];
    let config = Config { xcr0: None, ..full_avx() };
    let up = v3(&h, config.clone(), ops.clone());
    assert_eq!(exit(last(&up)), Exit::Shutdown);
    assert!(last(&up).rules.contains(&Rule::RunFault) && last(&up).rules.contains(&Rule::RunHwXcr0Guest));
    let pvm = predict(&Case { config, ops }, &h, &ModelConfig::new(Contract::V3, vec![Quirk::PvmHwXcr0]));
    assert_eq!(exit(last(&pvm)), Exit::End);
    assert!(last(&pvm).rules.contains(&Rule::QuirkPvmHwXcr0));
}

/// run.cr4.osxsave: without XSAVE in the guest CPUID, CR4.OSXSAVE is refused and XSAVE faults.
#[test]
fn xsave_needs_osxsave_from_guest_cpuid() {
    let h = host207();
    let no_xsave = Config {
        cpuid: Some(CpuidTable {
            base: CpuidBase::Subset { leaves: vec![0x8000_0001, 0xd], xcr0_mask: !0 },
            entries: vec![],
            reverse: false,
        }),
        xcr0: None,
    };
    let t = v3(&h, no_xsave.clone(), vec![run(vec![A::Xmm { seed: 1 }, A::Xsave])]);
    assert_eq!(exit(last(&t)), Exit::Shutdown);
    assert!(last(&t).rules.contains(&Rule::RunCr4Osxsave));
    // Legacy SSE needs no OSXSAVE.
    let t = v3(&h, no_xsave, vec![run(vec![A::Xmm { seed: 1 }])]);
    assert_eq!(exit(last(&t)), Exit::End);
}

/// run.setup.long_mode: without LM in the guest CPUID the rig's long-mode set-up is refused
/// (EINVAL) and the vCPU has not run: its CPUID can still change. PVM does not check.
#[test]
fn long_mode_setup_needs_lm_in_guest_cpuid() {
    let h = host207();
    let t = v3(&h, Config::default(), vec![run(vec![A::Xmm { seed: 1 }]), set_cpuid(vec![CpuidEntry::new(0xd, 0, 1, [3, 0, 0, 0])])]);
    assert_eq!(err(&t.results[0]), EINVAL);
    assert!(t.results[0].rules.contains(&Rule::RunSetupLongMode));
    assert_eq!(last(&t).ret, Ret::Ok(0), "not frozen: the vCPU never ran");
    let pvm = predict(
        &Case { config: Config::default(), ops: vec![run(vec![A::Xmm { seed: 1 }])] },
        &h,
        &ModelConfig::new(Contract::V3, vec![Quirk::PvmHwXcr0]),
    );
    assert_eq!(exit(last(&pvm)), Exit::End);
}

/// run.fault: LDMXCSR of reserved bits is #GP.
#[test]
fn bad_mxcsr_faults() {
    let h = host207();
    let t = v3(&h, full_avx(), vec![run(vec![A::Ldmxcsr { value: 0xffff_ffff }])]);
    assert_eq!(exit(last(&t)), Exit::Shutdown);
}

/// run.cpuid.frozen: after a run only the identical table is accepted (V2a on); V0 accepts.
#[test]
fn cpuid_is_frozen_after_a_run() {
    let h = host207();
    let narrow = set_cpuid(vec![CpuidEntry::new(0xd, 0, 1, [0x3, 0, 0, 0])]);
    let t = v3(&h, full_avx(), vec![run(vec![]), narrow.clone()]);
    assert_eq!(err(last(&t)), EINVAL);
    assert!(last(&t).rules.contains(&Rule::RunCpuidFrozen));
    let same = Op::SetCpuid2(full_avx().cpuid.expect("table"));
    let t = v3(&h, full_avx(), vec![run(vec![]), same]);
    assert_eq!(last(&t).ret, Ret::Ok(0));
    let t = run_under(&h, Contract::V0, full_avx(), vec![run(vec![]), narrow]);
    assert_eq!(last(&t).ret, Ret::Ok(0));
}

fn run_under(h: &xsave_oracle::HostFacts, c: Contract, config: Config, ops: Vec<Op>) -> Trace {
    common::run(h, c, config, ops)
}

/// run.mxcsr_mask.hw: a hardware save writes the processor's MXCSR_MASK.
#[test]
fn mxcsr_mask_comes_from_hardware_after_a_run() {
    let h = host207();
    let mut i = img(0x7);
    i.mxcsr_mask = 0;
    let t = v3(&h, full_avx(), vec![Op::SetXsave(i), Op::GetXsave, run(vec![]), Op::GetXsave]);
    assert_eq!(mxcsr(ok(&t.results[3])).1, 0, "before the run: as SET");
    assert_eq!(mxcsr(ok(&t.results[5])).1, h.init_mxcsr_mask, "after the run: the processor's");
    assert!(t.results[4].rules.contains(&Rule::RunMxcsrMaskHw));
}

/// run.reserved.hw + run.fip.canonical: reserved legacy bytes may read zero, FIP may be
/// canonicalised; nothing else may change.
#[test]
fn legacy_bytes_the_processor_may_rewrite() {
    let h = host207();
    let mut i = img(0x7);
    i.fip = 0x1122_3344_5566_7788;
    i.patches = vec![Patch { offset: 42, bytes: vec![0xa5; 6] }];
    let case = Case { config: full_avx(), ops: vec![Op::SetXsave(i), run(vec![]), Op::GetXsave] };
    let cfg = ModelConfig::default();
    let exp = predict(&case, &h, &cfg);
    let n = exp.results.len() - 1;
    let mut obs = exp.clone();
    obs.results[n].data[42..48].fill(0);
    put(&mut obs.results[n].data, 8, &0xff22_3344_5566_7788u64.to_le_bytes());
    assert_eq!(diff(&case, &h, &cfg, &exp, &obs), Verdict::Agree);
    put(&mut obs.results[n].data, 8, &0x0022_3344_5566_7788u64.to_le_bytes());
    assert!(matches!(diff(&case, &h, &cfg, &exp, &obs), Verdict::Diverge(_)), "FIP truncated is not allowed");
    assert!(exp.results[n].rules.contains(&Rule::RunReservedZero) && exp.results[n].rules.contains(&Rule::RunFipCanonical));
}

/// run.cr4.cpuid: after a run GET_CPUID2 shows OSXSAVE set (the rig's CR4).
#[test]
fn osxsave_follows_cr4_after_a_run() {
    let h = host207();
    let t = v3(&h, full_avx(), vec![Op::GetCpuid2 { capacity: 64 }, run(vec![]), Op::GetCpuid2 { capacity: 64 }]);
    let leaf1_ecx = |d: &[u8]| {
        let k = (0..(d.len() - 4) / 40).find(|k| xsave_oracle::abi::le32(d, 4 + k * 40) == 1).expect("leaf 1");
        xsave_oracle::abi::le32(d, 4 + k * 40 + 20)
    };
    assert_eq!(leaf1_ecx(ok(&t.results[2])) & (1 << 27), 0);
    assert_ne!(leaf1_ecx(ok(&t.results[4])) & (1 << 27), 0);
    assert!(t.results[4].rules.contains(&Rule::RunCr4Runtime));
}

/// guest.xsave.fp_init: x87 at init may be written as init values or left unwritten.
#[test]
fn guest_xsave_of_init_x87() {
    let h = host207();
    let t = v3(&h, full_avx(), vec![run(vec![A::Xmm { seed: 5 }, A::Xsave])]);
    let r = last(&t);
    assert!(r.rules.contains(&Rule::GuestXsaveFpSkipped));
    assert_eq!(le64(&r.data, 512) & 1, 1, "predicted in use; the processor may clear it");
}

/// The seed scenarios show the divergences the historical contracts cause (judged by V3).
#[test]
fn historical_contracts_diverge_on_forced_load() {
    let h = host207();
    let mut i = img(0x7);
    i.components.retain(|c| c.bit == 2);
    let config = Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: 0x3, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: None,
    };
    let case = Case { config, ops: vec![Op::SetXsave(i), run(vec![A::Xsave]), Op::GetXsave] };
    let v3cfg = ModelConfig::default();
    let exp = predict(&case, &h, &v3cfg);
    let v2b = predict(&case, &h, &cfg(Contract::V2b));
    match diff(&case, &h, &v3cfg, &exp, &v2b) {
        Verdict::Diverge(d) => assert_eq!(d.op, "KVM_SET_XSAVE", "V2b refuses the forced load: {d:?}"),
        Verdict::Agree => panic!("V2b not caught"),
    }
    let v1 = predict(&case, &h, &cfg(Contract::V1));
    match diff(&case, &h, &v3cfg, &exp, &v1) {
        Verdict::Diverge(d) => assert_eq!(d.op, "KVM_GET_XSAVE", "V1 reports guest-unsupported YMM: {d:?}"),
        Verdict::Agree => panic!("V1 not caught"),
    }
}

/// The program decoder never panics on random bytes (version 2 bodies).
#[test]
fn decoding_random_version_2_bodies_never_panics() {
    let mut x = 0x1234_5678_9abc_def0u64;
    for n in 0..20_000usize {
        let mut b = b"XSRC\x02".to_vec();
        for _ in 0..(n % 200) {
            x = xsave_oracle::pattern::xorshift64(x);
            b.push(x as u8);
        }
        let _ = Case::decode(&b);
    }
}

/// run.fault: a PKRU that disables key 0 blocks the program's data accesses (every page the
/// rig maps has key 0), so the run faults at its next load or store, and later runs too.
#[test]
fn pkru_key0_blocks_the_program() {
    let h = host207();
    let t =
        v3(&h, full_avx(), vec![run(vec![A::Wrpkru { value: 0x1 }, A::Fninit]), run(vec![A::Fninit]), run(vec![A::Wrpkru { value: 0 }])]);
    assert_eq!(exit(&t.results[2]), Exit::Shutdown, "the end marker store is blocked");
    assert_eq!(exit(&t.results[3]), Exit::Shutdown, "PKRU persists into the next run");
    assert_eq!(exit(&t.results[4]), Exit::Shutdown, "WRPKRU's own input load is blocked");
    // WD0 only: loads work, the end store faults.
    let t = v3(&h, full_avx(), vec![run(vec![A::Wrpkru { value: 0x2 }, A::Xmm { seed: 1 }])]);
    assert_eq!(exit(last(&t)), Exit::Shutdown);
    assert!(last(&t).rules.contains(&Rule::RunFault));
}

/// Quirk `tcg-xsave-fop`: QEMU's TCG XSAVE never stores FOP, so after a run GET may show the
/// FOP the last SET wrote (`quirk.tcg.xsave_fop`); without the quirk that is a divergence.
#[test]
fn tcg_xsave_fop_allows_the_stale_fop_only_under_the_quirk() {
    use xsave_oracle::case::XsaveImage;
    use xsave_oracle::{diff, predict, Case, HostFacts, ModelConfig, Quirk, Verdict};
    let host = HostFacts::synthetic(0x207, 0xffff);
    let mut set = XsaveImage::init(0x3);
    set.fop = 0x393;
    let ops = vec![Op::SetXsave(set), run(vec![A::Fninit, A::Fldcw { value: 0x27f }]), Op::GetXsave];
    let case = Case { config: full_avx(), ops };
    let plain = ModelConfig::default();
    let tcg = ModelConfig { quirks: vec![Quirk::TcgXsaveFop], ..ModelConfig::default() };
    // What QEMU's TCG does: the predicted image with the SET's FOP left in place.
    let mut observed = predict(&case, &host, &plain);
    let get = observed.results.last_mut().expect("GET");
    assert_eq!(&get.data[6..8], &[0, 0], "FNINIT clears FOP");
    get.data[6..8].copy_from_slice(&0x393u16.to_le_bytes());
    for r in &mut observed.results {
        r.rules.clear();
        r.allowed.clear();
    }
    assert!(matches!(diff(&case, &host, &plain, &predict(&case, &host, &plain), &observed), Verdict::Diverge(_)));
    assert_eq!(diff(&case, &host, &tcg, &predict(&case, &host, &tcg), &observed), Verdict::Agree);
    // Any other FOP is still a divergence under the quirk.
    observed.results.last_mut().expect("GET").data[6] = 0x94;
    assert!(matches!(diff(&case, &host, &tcg, &predict(&case, &host, &tcg), &observed), Verdict::Diverge(_)));
}

/// The worked-example host, vendor AMD (KVM on SVM, like the lab's QEMU TCG processor).
fn host207_amd() -> xsave_oracle::HostFacts {
    let mut h = host207();
    h.supported_cpuid.insert(0, CpuidEntry::new(0, 0, 0, [0xd, 0x6874_7541, 0x444d_4163, 0x6974_6e65]));
    h
}

/// run.v0.cr4_rsvd: 5.10 checks CR4.OSXSAVE/PKE against cr4_guest_rsvd_bits, which only a
/// KVM_SET_CPUID2 computes: a vCPU that never had one accepts both bits, one whose CPUID lacks
/// XSAVE/PKU refuses them (XSAVE and WRPKRU then fault). V3 checks the CPUID either way.
#[test]
fn v0_cr4_bits_are_checked_once_a_cpuid_is_set() {
    let h = host207();
    let progs = [vec![A::Xsave], vec![A::Wrpkru { value: 0x8 }]];
    for p in &progs {
        let t = run_under(&h, Contract::V0, Config::default(), vec![run(p.clone())]);
        assert_eq!(exit(last(&t)), Exit::End, "no KVM_SET_CPUID2: {p:?} runs");
        assert!(last(&t).rules.contains(&Rule::RunV0Cr4Rsvd));
        let t = run_under(&h, Contract::V0, Config { cpuid: Some(table(vec![])), xcr0: None }, vec![run(p.clone())]);
        assert_eq!(exit(last(&t)), Exit::Shutdown, "an empty CPUID reserves OSXSAVE and PKE: {p:?} faults");
        let t = run_under(&h, Contract::V0, full_avx(), vec![run(p.clone())]);
        assert_eq!(exit(last(&t)), Exit::End, "XSAVE and PKU in the CPUID: {p:?} runs");
    }
    // After the run a narrower table is accepted (V0), and the CPUID runtime bits still follow
    // the CR4 the set-up loaded: no OSPKE when an empty table before the run refused PKE.
    let leaf7 = set_cpuid(h.supported_cpuid.iter().filter(|e| e.function == 7).copied().collect());
    let t = run_under(
        &h,
        Contract::V0,
        Config { cpuid: Some(table(vec![])), xcr0: None },
        vec![run(vec![A::Fninit]), leaf7, Op::GetCpuid2 { capacity: 256 }],
    );
    let got = ok(last(&t));
    let ecx = xsave_oracle::abi::le32(got, xsave_oracle::abi::cpuid::cpuid2_trace_reg_offset(0, 2));
    assert_eq!(ecx & (1 << 4), 0, "OSPKE clear: CR4.PKE was refused");
}

/// run.setup.reload: after a shutdown the rig reloads its set-up's sregs; on V0 a KVM_SET_CPUID2
/// after the run can reserve the CR4 bits it loaded, so the reload (and the run) fail with
/// EINVAL. A run that ended at its marker needs no reload.
#[test]
fn v0_reload_after_a_shutdown_checks_the_new_cpuid() {
    let h = host207();
    let empty = Op::SetCpuid2(table(vec![]));
    let t =
        run_under(&h, Contract::V0, Config::default(), vec![run(vec![A::Ymm { seed: 1 }]), empty.clone(), run(vec![A::Xmm { seed: 2 }])]);
    assert_eq!(exit(&t.results[0]), Exit::Shutdown, "XCR0 = FP: VEX faults");
    assert_eq!(t.results[1].ret, Ret::Ok(0), "V0 accepts a new table after a run");
    assert_eq!(err(last(&t)), EINVAL);
    assert!(last(&t).rules.contains(&Rule::RunSetupReload));
    let t = run_under(&h, Contract::V0, Config::default(), vec![run(vec![A::Xmm { seed: 1 }]), empty, run(vec![A::Xmm { seed: 2 }])]);
    assert_eq!(exit(last(&t)), Exit::End, "no reload after an end-marker exit");
}

/// run.v0.shutdown.requeued: on V0 with an AMD host, every run after a shutdown shuts down before
/// its first instruction (the registers keep what the first shutdown saved). Intel hosts and V3
/// (which INITs the vCPU on shutdown) run the program.
#[test]
fn v0_amd_runs_after_a_shutdown_shut_down_at_once() {
    let amd = host207_amd();
    assert!(amd.vendor_amd() && !host207().vendor_amd());
    let ops = vec![
        run(vec![A::Xmm { seed: 1 }, A::Ymm { seed: 2 }]),
        run(vec![A::Xmm { seed: 3 }, A::Xsave]),
        run(vec![A::Xmm { seed: 4 }]),
        Op::GetXsave,
    ];
    let t = run_under(&amd, Contract::V0, Config::default(), ops.clone());
    assert_eq!(exit(&t.results[0]), Exit::Shutdown);
    for r in &t.results[1..3] {
        assert_eq!(exit(r), Exit::Shutdown);
        assert!(r.rules.contains(&Rule::RunV0ShutdownRequeued));
    }
    assert!(t.results[1].data.iter().all(|&b| b == 0), "the guest's XSAVE never ran");
    assert_eq!(&ok(last(&t))[160..176], &A::Xmm { seed: 1 }.input()[..16], "XMM as the first run left it");
    let intel = run_under(&host207(), Contract::V0, Config::default(), ops.clone());
    assert_eq!(exit(&intel.results[1]), Exit::End);
    let v3 = run_under(&amd, Contract::V3, full_avx(), ops);
    assert_eq!(exit(&v3.results[1]), Exit::End);
}

/// run.fault: `ud2` (#UD) and a store to page 0 (#PF) fault on every processor and contract;
/// the actions after them never run (the Xsave leaves the output area zero).
#[test]
fn ud2_and_null_store_fault() {
    let h = host207();
    for a in [A::Ud2, A::StoreNull] {
        for c in [Contract::V0, Contract::V3] {
            let t = run_under(&h, c, full_avx(), vec![run(vec![A::Xmm { seed: 1 }, a.clone(), A::Xsave])]);
            let r = last(&t);
            assert_eq!(exit(r), Exit::Shutdown, "{a:?} under {c:?}");
            assert!(r.rules.contains(&Rule::RunFault) && !r.rules.contains(&Rule::RunEnd), "{a:?}: {:?}", r.rules);
            assert!(r.data.iter().all(|&b| b == 0), "{a:?}: the XSAVE after the fault ran");
        }
    }
}

/// run.timeout: a `spin` is stopped by the watchdog: exit timeout, the actions after it never
/// run, the registers the actions before it wrote are saved and reported, and the next run
/// starts normally.
#[test]
fn spin_times_out_and_keeps_what_came_before() {
    let h = host207();
    let ymm = A::Ymm { seed: 3 };
    let t = v3(&h, full_avx(), vec![run(vec![ymm.clone(), A::Spin, A::Xsave, A::Ud2]), Op::GetXsave, run(vec![A::Xsave])]);
    let r = &t.results[t.results.len() - 3];
    assert_eq!(exit(r), Exit::Timeout);
    assert!(r.rules.contains(&Rule::RunTimeout) && !r.rules.contains(&Rule::RunFault) && !r.rules.contains(&Rule::RunEnd));
    assert!(r.data.iter().all(|&b| b == 0), "the XSAVE after the spin ran");
    let input = ymm.input();
    let g = ok(&t.results[t.results.len() - 2]);
    assert_eq!(&g[576..592], &input[16..32], "YMM upper half written before the spin");
    assert_eq!(bv(g) & 0x6, 0x6);
    let next = last(&t);
    assert_eq!(exit(next), Exit::End);
    assert_eq!(&next.data[576..592], &input[16..32], "the next run sees the spun guest's registers");
}

/// Cases with the version-3 actions encode as version 3 and round-trip; others keep their
/// version.
#[test]
fn version_3_actions_encode_as_version_3() {
    for (actions, ver) in [(vec![A::Spin], 3u8), (vec![A::Xmm { seed: 1 }, A::Ud2], 3), (vec![A::StoreNull], 3), (vec![A::Xsave], 2)] {
        let case = Case { config: Config::default(), ops: vec![run(actions.clone())] };
        let bin = case.encode();
        assert_eq!(bin[4], ver, "{actions:?}");
        assert_eq!(Case::decode(&bin).expect("decode"), case);
        assert_eq!(Case::from_json(&case.to_json()).expect("json"), case);
    }
}
