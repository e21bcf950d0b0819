//! Every rule of spec §3–§6 under V3, and each worked example of §11, on the examples' host
//! (XCR0 0x207, YMM at 576, PKRU at 2432). Rules are checked by their effect on the
//! predicted bytes and errnos, and by the rule ids the prediction records.

mod common;
use common::*;
use xsave_oracle::abi::{le32, le64};
use xsave_oracle::case::*;
use xsave_oracle::host::{Component, HostFacts};
use xsave_oracle::model::Contract;
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::{Ret, E2BIG, EINVAL, EPERM};
use xsave_oracle::xfeatures::*;

const YMM_OFF: usize = 576;
const PKRU_OFF: usize = 2432;

#[test]
fn example1_fresh_vcpu_get() {
    let h = host207();
    let t = v3(&h, no_cpuid(), vec![Op::GetXsave]);
    let d = ok(last(&t));
    assert_eq!(d.len(), 4096);
    assert_eq!(bv(d), 0);
    assert_eq!(fcw(d), 0x037f);
    assert_eq!(mxcsr(d), (0x1f80, 0xffff));
    assert_eq!(le64(d, 464), 0x207, "sw_reserved word 0 = host XCR0");
    let nonzero: Vec<usize> =
        (0..4096).filter(|&i| d[i] != 0 && !(0..2).contains(&i) && !(24..32).contains(&i) && !(464..472).contains(&i)).collect();
    assert!(nonzero.is_empty(), "unexpected non-zero bytes at {nonzero:?}");
    for r in [
        Rule::GetMaskV3,
        Rule::GetFpInit,
        Rule::GetMxcsrInit,
        Rule::GetSseZero,
        Rule::GetPaddingZero,
        Rule::GetSwReserved,
        Rule::GetHeaderZero,
    ] {
        assert!(last(&t).rules.contains(&r), "{r:?} not recorded");
    }
}

#[test]
fn example2_set_everything_without_cpuid_is_masked() {
    let h = host207();
    let t = v3(&h, no_cpuid(), vec![Op::SetXsave(img(0x207)), Op::GetXsave]);
    assert!(t.results[0].rules.contains(&Rule::SetAccept));
    assert!(t.results[0].rules.contains(&Rule::SetPkruUpdated));
    let d = ok(&t.results[1]);
    assert_eq!(bv(d), FPSSE);
    assert!(d[YMM_OFF..YMM_OFF + 256].iter().all(|&b| b == 0), "YMM reported while masked");
    assert!(d[PKRU_OFF..PKRU_OFF + 8].iter().all(|&b| b == 0), "PKRU reported while masked");
    assert_eq!(&d[160..416], &filled(8, 256)[..], "XMM as supplied");
}

#[test]
fn example3_hidden_state_revealed_by_cpuid() {
    let h = host207();
    let t = v3(
        &h,
        no_cpuid(),
        vec![Op::SetXsave(img(0x207)), Op::GetXsave, set_cpuid(vec![CpuidEntry::new(0xd, 0, 1, [0x207, 0, 0, 0])]), Op::GetXsave],
    );
    let d = ok(&t.results[3]);
    assert_eq!(bv(d), 0x207);
    assert_eq!(&d[YMM_OFF..YMM_OFF + 256], &filled(10, 256)[..]);
    assert_eq!(le32(d, PKRU_OFF), 0xdead_beec);
    assert_eq!(le32(d, PKRU_OFF + 4), 0, "PKRU pad bytes zero");
    assert!(t.results[3].rules.contains(&Rule::GetHiddenRevealed));
    assert!(t.results[3].rules.contains(&Rule::GetPkruFromVcpu));
    assert!(t.results[3].rules.contains(&Rule::GetComponentCopied));
}

#[test]
fn example4_unsupported_bit_rejected_whatever_cpuid() {
    let h = host207();
    for config in [no_cpuid(), cpuid_xcr0(0x207), cpuid_xcr0(!(1 << 18))] {
        let t = v3(&h, config, vec![Op::SetXsave(img(FPSSE | OPMASK))]);
        assert_eq!(err(last(&t)), EINVAL);
        assert_eq!(last(&t).rules, vec![Rule::SetRejectUnsupported]);
    }
}

#[test]
fn example5_header_validation() {
    let h = host207();
    let mut x = img(FPSSE);
    x.xcomp_bv = 1;
    let t = v3(&h, no_cpuid(), vec![Op::SetXsave(x)]);
    assert_eq!(err(last(&t)), EINVAL);
    assert_eq!(last(&t).rules, vec![Rule::SetRejectXcompBv]);
    for idx in [0u8, 17, 47] {
        let mut x = img(FPSSE);
        x.hdr_reserved = vec![(idx, 0x40)];
        let t = v3(&h, no_cpuid(), vec![Op::SetXsave(x)]);
        assert_eq!(err(last(&t)), EINVAL);
        assert_eq!(last(&t).rules, vec![Rule::SetRejectHdrReserved]);
    }
}

#[test]
fn example6_mxcsr_checked_only_with_fp_sse_ymm() {
    let h = host207();
    for b in [YMM, FP, SSE] {
        let mut x = img(b);
        x.mxcsr = 0x10000;
        let t = v3(&h, no_cpuid(), vec![Op::SetXsave(x)]);
        assert_eq!(err(last(&t)), EINVAL, "bv {b:#x}");
        assert_eq!(last(&t).rules, vec![Rule::SetRejectMxcsr]);
    }
    for b in [PKRU, 0] {
        let mut x = img(b);
        x.mxcsr = 0x10000;
        let t = v3(&h, no_cpuid(), vec![Op::SetXsave(x)]);
        ok(last(&t));
        assert!(last(&t).rules.contains(&Rule::SetMxcsrUnchecked));
    }
    // MXCSR_MASK itself is never validated.
    let mut x = img(FPSSE);
    x.mxcsr_mask = 0xffff_ffff;
    ok(last(&v3(&h, no_cpuid(), vec![Op::SetXsave(x)])));
}

#[test]
fn example7_xcrs_rules() {
    let h = host207();
    let t = v3(&h, no_cpuid(), vec![Op::SetXcrs(XcrsImage::xcr0(7))]);
    assert_eq!(err(last(&t)), EINVAL);
    assert!(last(&t).rules.contains(&Rule::Xcr0RejectUnsupported));
    let after = |x: XcrsImage| v3(&h, cpuid_xcr0(0x207), vec![Op::SetXcrs(x), Op::GetXcrs]);
    let t = after(XcrsImage::xcr0(0x207));
    ok(&t.results[1]);
    assert_eq!(le64(ok(&t.results[2]), 16), 0x207);
    assert_eq!(err(&after(XcrsImage::xcr0(0x205)).results[1]), EINVAL);
    assert!(after(XcrsImage::xcr0(0x205)).results[1].rules.contains(&Rule::Xcr0RejectYmmSse));
    assert!(after(XcrsImage::xcr0(0x206)).results[1].rules.contains(&Rule::Xcr0RejectFp));
    let t = after(XcrsImage { nr_xcrs: 1, flags: 0, xcrs: vec![Xcr { xcr: 1, reserved: 0, value: 7 }], padding_seed: 0 });
    ok(&t.results[1]);
    assert_eq!(t.results[1].rules, vec![Rule::XcrsNoXcr0]);
    assert_eq!(le64(ok(&t.results[2]), 16), 1, "XCR0 unchanged");
    let t = after(XcrsImage { nr_xcrs: 17, ..XcrsImage::xcr0(7) });
    assert_eq!(t.results[1].rules, vec![Rule::XcrsRejectNr]);
    let t = after(XcrsImage { flags: 1, ..XcrsImage::xcr0(7) });
    assert_eq!(t.results[1].rules, vec![Rule::XcrsRejectFlags]);
}

#[test]
fn example8_amx_without_permission_is_eperm() {
    let h = host207();
    let t =
        v3(&h, no_cpuid(), vec![set_cpuid(vec![CpuidEntry::new(0xd, 0, 1, [0x207 | (1 << 18), 0, 0, 0])]), Op::GetCpuid2 { capacity: 8 }]);
    assert_eq!(err(&t.results[0]), EPERM);
    assert_eq!(t.results[0].rules, vec![Rule::CpuidRejectAmxPerm]);
    assert_eq!(le32(ok(&t.results[1]), 0), 0, "table unchanged (empty)");
}

#[test]
fn get_legacy_field_sources() {
    let h = host207();
    // SSE only: x87 fields init, MXCSR and XMM from the vCPU.
    let t = v3(&h, no_cpuid(), vec![Op::SetXsave(img(SSE)), Op::GetXsave]);
    let d = ok(&t.results[1]);
    assert_eq!(fcw(d), 0x037f);
    assert!(d[2..24].iter().all(|&b| b == 0) && d[32..160].iter().all(|&b| b == 0));
    assert_eq!(mxcsr(d), (0x1f81, 0xffff));
    assert_eq!(&d[160..416], &filled(8, 256)[..]);
    assert!(t.results[0].rules.contains(&Rule::SetMxcsrWithoutFp));
    // FP only: MXCSR is stored but reported as init (the asymmetry of §4).
    let t = v3(&h, no_cpuid(), vec![Op::SetXsave(img(FP)), Op::GetXsave]);
    let d = ok(&t.results[1]);
    assert_eq!(fcw(d), 0x027f);
    assert_eq!(&d[4..6], &[0x81, 0x5a], "FTW and its reserved byte round-trip with FP");
    assert_eq!(mxcsr(d), (0x1f80, 0xffff));
    assert_eq!(&d[32..160], &filled(7, 128)[..]);
    assert!(d[160..416].iter().all(|&b| b == 0));
    assert!(t.results[1].rules.contains(&Rule::GetFpReported) && t.results[1].rules.contains(&Rule::GetMxcsrInit));
    // YMM only (guest has YMM): MXCSR from the buffer although FP is clear.
    let mut x = img(YMM);
    x.mxcsr = 0x1234 & 0xffbf;
    let t = v3(&h, cpuid_xcr0(0x7), vec![Op::SetXsave(x), Op::GetXsave]);
    let d = ok(&t.results[2]);
    assert_eq!(bv(d), YMM);
    assert_eq!(mxcsr(d).0, 0x1234 & 0xffbf);
    assert!(t.results[2].rules.contains(&Rule::GetMxcsrKernel));
}

#[test]
fn padding_sw_reserved_gaps_and_tail() {
    let h = host207();
    let mut x = img(0x207);
    // Garbage between YMM and PKRU, in the PKRU pad and after the last component.
    x.patches = vec![
        Patch { offset: 900, bytes: vec![0xee; 16] },
        Patch { offset: 2436, bytes: vec![0xee; 4] },
        Patch { offset: 4000, bytes: vec![0xee; 8] },
    ];
    let t = v3(&h, cpuid_xcr0(0x207), vec![Op::SetXsave(x), Op::GetXsave]);
    let d = ok(&t.results[2]);
    assert!(d[416..464].iter().all(|&b| b == 0), "padding zero");
    assert_eq!(le64(d, 464), 0x207);
    assert!(d[472..512].iter().all(|&b| b == 0), "sw_reserved words 1..5 zero");
    assert!(d[520..576].iter().all(|&b| b == 0), "XCOMP_BV and reserved zero");
    assert!(d[832..2432].iter().all(|&b| b == 0), "gap zero");
    assert_eq!(le32(d, 2436), 0, "PKRU pad zero");
    assert!(d[2440..].iter().all(|&b| b == 0), "tail zero");
}

#[test]
fn failed_set_changes_nothing_and_pkru_kept() {
    let h = host207();
    let mut bad = img(0x207);
    bad.xcomp_bv = 5;
    let t = v3(
        &h,
        cpuid_xcr0(0x207),
        vec![Op::SetXsave(img(0x207)), Op::GetXsave, Op::SetXsave(bad), Op::GetXsave, Op::SetXsave(img(FPSSE)), Op::GetXsave],
    );
    assert_eq!(t.results[2].data, t.results[4].data, "failed SET left state unchanged");
    assert!(t.results[5].rules.contains(&Rule::SetPkruKept));
    let d = ok(&t.results[6]);
    assert_eq!(bv(d), FPSSE, "kbv replaced: YMM and PKRU now read as init");
    assert!(d[YMM_OFF..].iter().all(|&b| b == 0));
}

#[test]
fn restore_last_round_trips() {
    let h = host207();
    let t = v3(
        &h,
        cpuid_xcr0(0x207),
        vec![Op::SetXsave(img(0x207)), Op::GetXsave, Op::NewVcpu, Op::RestoreLast { force_xstate_bv: None }, Op::GetXsave],
    );
    assert_eq!(ok(&t.results[2]), ok(&t.results[6]));
}

#[test]
fn xcr0_dependency_rules_on_an_avx512_mpx_amx_host() {
    let mut h = HostFacts::synthetic(0x602ff, 0xffff);
    h.guest_perm = 0x602ff;
    let c = cpuid_xcr0(0x602ff);
    let want = |x: u64| v3(&h, c.clone(), vec![Op::SetXcrs(XcrsImage::xcr0(x))]).results[1].rules.last().copied();
    assert_eq!(want(FPSSE | BNDREGS), Some(Rule::Xcr0RejectMpx));
    assert_eq!(want(FPSSE | MPX), Some(Rule::Xcr0Accept));
    assert_eq!(want(FPSSE | AVX512), Some(Rule::Xcr0RejectAvx512));
    assert_eq!(want(FPSSE | YMM | OPMASK), Some(Rule::Xcr0RejectAvx512));
    assert_eq!(want(FPSSE | YMM | AVX512), Some(Rule::Xcr0Accept));
    assert_eq!(want(FPSSE | XTILE_CFG), Some(Rule::Xcr0RejectAmx));
}

#[test]
fn xcrs_first_xcr0_entry_and_zero_filled_entries() {
    let h = host207();
    let x = XcrsImage {
        nr_xcrs: 3,
        flags: 0,
        xcrs: vec![Xcr { xcr: 1, reserved: 9, value: 0 }, Xcr { xcr: 0, reserved: 0, value: 7 }, Xcr { xcr: 0, reserved: 0, value: 0 }],
        padding_seed: 3,
    };
    let t = v3(&h, cpuid_xcr0(0x207), vec![Op::SetXcrs(x), Op::GetXcrs]);
    ok(&t.results[1]);
    assert_eq!(le64(ok(&t.results[2]), 16), 7);
    // nr_xcrs beyond the entries given: the zeroed entries are {xcr 0, value 0} → no FP.
    let x = XcrsImage { nr_xcrs: 2, flags: 0, xcrs: vec![Xcr { xcr: 2, reserved: 0, value: 7 }], padding_seed: 0 };
    let t = v3(&h, cpuid_xcr0(0x207), vec![Op::SetXcrs(x)]);
    assert_eq!(t.results[1].rules, vec![Rule::XcrsFirstXcr0, Rule::Xcr0RejectFp]);
    // GET_XCRS layout: nr 1, flags 0, {0, 0, XCR0}, rest zero.
    let d = ok(last(&v3(&h, no_cpuid(), vec![Op::GetXcrs]))).to_vec();
    assert_eq!(d.len(), 392);
    assert_eq!((le32(&d, 0), le32(&d, 4), le32(&d, 8), le64(&d, 16)), (1, 0, 0, 1));
    assert!(d[24..].iter().all(|&b| b == 0));
}

#[test]
fn cpuid_checks_and_first_match() {
    let h = host207();
    let many = vec![CpuidEntry::new(0x4000_0000, 0, 0, [0; 4]); 257];
    assert_eq!(err(&v3(&h, no_cpuid(), vec![set_cpuid(many)]).results[0]), E2BIG);
    let t = v3(&h, no_cpuid(), vec![set_cpuid(vec![CpuidEntry::new(0x8000_0008, 0, 1, [0x2728, 0, 0, 0])])]);
    assert_eq!(t.results[0].rules, vec![Rule::CpuidRejectVaddr], "0x80000008 matched whatever its flags");
    for bits in [0u32, 48, 57] {
        ok(&v3(&h, no_cpuid(), vec![set_cpuid(vec![CpuidEntry::new(0x8000_0008, 0, 0, [bits << 8, 0, 0, 0])])]).results[0]);
    }
    // Duplicates: the first 0xD.0 wins.
    let dup = vec![CpuidEntry::new(0xd, 0, 1, [0x3, 0, 0, 0]), CpuidEntry::new(0xd, 0, 1, [0x207, 0, 0, 0])];
    let t = v3(&h, no_cpuid(), vec![set_cpuid(dup), Op::SetXsave(img(0x207)), Op::GetXsave]);
    assert_eq!(bv(ok(&t.results[2])), FPSSE);
    // An entry without the significant-index flag matches the index-0 lookup; a flagged
    // entry for index 1 does not.
    let t = v3(&h, no_cpuid(), vec![set_cpuid(vec![CpuidEntry::new(0xd, 5, 0, [0x207, 0, 0, 0])]), Op::SetXsave(img(0x207)), Op::GetXsave]);
    assert_eq!(bv(ok(&t.results[2])), 0x207);
    let t = v3(&h, no_cpuid(), vec![set_cpuid(vec![CpuidEntry::new(0xd, 1, 1, [0x207, 0, 0, 0])]), Op::SetXsave(img(0x207)), Op::GetXsave]);
    assert_eq!(bv(ok(&t.results[2])), FPSSE);
    assert!(t.results[0].rules.contains(&Rule::CpuidGsxNone));
    // gsx is limited to supported_xcr0.
    let t = v3(&h, cpuid_xcr0(0x2ff), vec![Op::SetXcrs(XcrsImage::xcr0(0x7 | OPMASK))]);
    assert_eq!(err(&t.results[1]), EINVAL);
}

#[test]
fn get_cpuid2_table_and_runtime_bits() {
    let h = host207();
    let entries = vec![
        CpuidEntry::new(1, 0, 0, [1, 2, (1 << 27) | 5, 0]),
        CpuidEntry::new(7, 0, 1, [0, 0, 1 << 4, 0]),
        CpuidEntry::new(0xd, 0, 1, [0x207, 0, 0, 0]),
        CpuidEntry::new(0xd, 1, 1, [0x2, 0, 0, 0]),
    ];
    let t = v3(
        &h,
        no_cpuid(),
        vec![
            set_cpuid(entries.clone()),
            Op::GetCpuid2 { capacity: 3 },
            Op::GetCpuid2 { capacity: 4 },
            Op::SetXcrs(XcrsImage::xcr0(0x207)),
            Op::GetCpuid2 { capacity: 256 },
        ],
    );
    assert_eq!(err(&t.results[1]), E2BIG);
    let d = ok(&t.results[2]);
    assert_eq!(le32(d, 0), 4, "nent written back");
    let e = |d: &[u8], k: usize| CpuidEntry::from_bytes(&d[4 + k * 40..4 + (k + 1) * 40]);
    assert_eq!(e(d, 0).ecx, 5, "OSXSAVE follows CR4 (clear)");
    assert_eq!(e(d, 0).edx, 1 << 9, "APIC set: apic_base is enabled after RESET");
    assert_eq!(e(d, 1).ecx, 0, "OSPKE follows CR4 (clear)");
    assert_eq!(e(d, 2).ebx, 576, "0xD.0 EBX = size of XCR0 1");
    assert_eq!(e(d, 3).ebx, 576, "0xD.1 EBX = compacted size (XSAVEC set)");
    let d = ok(&t.results[4]);
    assert_eq!(e(d, 2).ebx, 2440, "after XCR0 0x207");
    assert_eq!(e(d, 3).ebx, 576 + 256 + 8);
    assert_eq!((e(d, 2).eax, e(d, 2).ecx), (0x207, 0), "EAX/ECX never rewritten upstream");
    for r in [
        Rule::CpuidRuntimeOsxsave,
        Rule::CpuidRuntimeApic,
        Rule::CpuidRuntimeOspke,
        Rule::CpuidRuntimeXsaveSize,
        Rule::CpuidRuntimeXsavecSize,
    ] {
        assert!(t.results[4].rules.contains(&r), "{r:?}");
    }
}

fn amx_host(perm: bool) -> HostFacts {
    let mut h = HostFacts::synthetic(0x602e7, 0xffff);
    h.guest_perm = if perm { 0x602e7 } else { 0x2e7 };
    h
}

#[test]
fn cap_xsave2_and_amx_uabi_size() {
    let t = v3(&amx_host(false), no_cpuid(), vec![Op::CheckXsave2]);
    assert_eq!(last(&t).ret, Ret::Ok(4096), "no permission: AMX filtered out");
    let h = amx_host(true);
    let t = v3(&h, no_cpuid(), vec![Op::CheckXsave2]);
    assert_eq!(last(&t).ret, Ret::Ok(2816 + 8192));
    let t = v3(&h, cpuid_xcr0(0x602e7), vec![Op::GetXsave, Op::GetXsave2, Op::SetXsave(img(FPSSE | XTILE)), Op::GetXsave2]);
    assert!(t.results[0].rules.contains(&Rule::CpuidAmxEnabled));
    assert_eq!(err(&t.results[1]), EINVAL);
    assert_eq!(t.results[1].rules, vec![Rule::GetXsaveTooBig]);
    assert_eq!(ok(&t.results[2]).len(), 11008);
    assert_eq!(bv(ok(&t.results[4])), FPSSE | XTILE);
    // Without the CPUID exposure XTILE_DATA is not in user_xfeatures.
    let t = v3(&h, no_cpuid(), vec![Op::SetXsave(img(FPSSE | XTILE))]);
    assert_eq!(last(&t).rules, vec![Rule::SetRejectUserXfeatures]);
}

#[test]
fn xsave2_canary_beyond_uabi_size() {
    let h = amx_host(true);
    let t = v3(&h, no_cpuid(), vec![Op::GetXsave2]);
    let d = ok(last(&t));
    assert_eq!(d.len(), 11008, "the caller's buffer is KVM_CAP_XSAVE2 bytes");
    assert!(d[4096..].iter().all(|&b| b == xsave_oracle::abi::CANARY), "the kernel writes uabi_size (4096) bytes");
}

#[test]
fn layout_comes_from_host_facts() {
    // Same case, Intel layout: PKRU at 2688.
    let h = HostFacts::synthetic(0x2e7, 0xffff);
    let t = v3(&h, cpuid_xcr0(0x2e7), vec![Op::SetXsave(img(0x207)), Op::GetXsave]);
    let d = ok(&t.results[2]);
    assert_eq!(le32(d, 2688), 0xdead_beec);
    assert_eq!(le32(d, PKRU_OFF), 0);
    let c = h.components.iter().find(|c| c.bit == 9).cloned();
    assert_eq!(c, Some(Component { bit: 9, offset: 2688, size: 8, align64: false }));
}

#[test]
fn mxcsr_feature_mask_is_a_host_fact() {
    let mut h = host207();
    h.mxcsr_feature_mask = 0x2ffff;
    let mut x = img(FPSSE);
    x.mxcsr = 0x21f80;
    ok(last(&v3(&h, no_cpuid(), vec![Op::SetXsave(x.clone())])));
    x.mxcsr = 0x11f80;
    assert_eq!(err(last(&v3(&h, no_cpuid(), vec![Op::SetXsave(x)]))), EINVAL);
}

#[test]
fn contract_names_parse() {
    for c in Contract::ALL {
        assert_eq!(Contract::parse(c.name()), Some(*c));
    }
    assert_eq!(Contract::parse("v2B"), Some(Contract::V2b));
    assert_eq!(Contract::parse("V9"), None);
}
