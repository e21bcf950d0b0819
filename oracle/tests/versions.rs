//! Where the historical contracts V0, V1, V2a and V2b differ from V3 (spec §9).

mod common;
use common::*;
use xsave_oracle::abi::{le32, le64};
use xsave_oracle::case::*;
use xsave_oracle::model::Contract::{self, *};
use xsave_oracle::rules::Rule;
use xsave_oracle::trace::{Ret, EINVAL};
use xsave_oracle::xfeatures::*;

fn empty_cpuid() -> Config {
    Config { cpuid: Some(table(vec![])), xcr0: None }
}

#[test]
fn get_mask_per_version() {
    let h = host207();
    let reported = |c: Contract, config: Config| bv(ok(last(&run(&h, c, config, vec![Op::SetXsave(img(0x207)), Op::GetXsave])))).to_owned();
    // No CPUID: V1/V2 report what the host's user features allow, V0/V3 mask to FP|SSE.
    assert_eq!(reported(V3, no_cpuid()), FPSSE);
    assert_eq!(reported(V1, no_cpuid()), 0x207);
    assert_eq!(reported(V2a, no_cpuid()), 0x207, "before any SET_CPUID2 V2a behaves like V1");
    assert_eq!(reported(V2b, no_cpuid()), 0x207);
    assert_eq!(reported(V0, no_cpuid()), FPSSE);
    // Guest CPUID FP|SSE|YMM: V1 still unmasked.
    assert_eq!(reported(V1, cpuid_xcr0(0x7)), 0x207);
    assert_eq!(reported(V3, cpuid_xcr0(0x7)), 0x7);
}

#[test]
fn v2_rejects_guest_unsupported_bits_v3_accepts() {
    let h = host207();
    let set = |c: Contract, config: Config, b: u64| {
        run(&h, c, config, vec![Op::SetXsave(img(b))]).results.last().map(|r| (r.ret, r.rules.clone()))
    };
    // The ad856280ddea regression: a state with PKRU cannot be loaded into a guest without it.
    assert_eq!(set(V2b, cpuid_xcr0(0x7), 0x207), Some((Ret::Err(EINVAL), vec![Rule::SetRejectUserXfeatures])));
    assert_eq!(set(V2a, cpuid_xcr0(0x7), 0x207).map(|x| x.0), Some(Ret::Err(EINVAL)));
    assert_eq!(set(V3, cpuid_xcr0(0x7), 0x207).map(|x| x.0), Some(Ret::Ok(0)));
    assert_eq!(set(V1, cpuid_xcr0(0x7), 0x207).map(|x| x.0), Some(Ret::Ok(0)));
    // Empty CPUID: V2a rejects even FP|SSE, V2b allows FP|SSE only.
    assert_eq!(set(V2a, empty_cpuid(), FPSSE).map(|x| x.0), Some(Ret::Err(EINVAL)));
    assert_eq!(set(V2b, empty_cpuid(), FPSSE).map(|x| x.0), Some(Ret::Ok(0)));
    assert_eq!(set(V2b, empty_cpuid(), FPSSE | YMM).map(|x| x.0), Some(Ret::Err(EINVAL)));
    // state_test.c: SET of the supported set after an empty CPUID succeeds on V3 only.
    assert_eq!(set(V3, empty_cpuid(), 0x207).map(|x| x.0), Some(Ret::Ok(0)));
    let t = run(&h, V2b, empty_cpuid(), vec![]);
    assert!(t.results[0].rules.contains(&Rule::CpuidV2UserXfeatures));
}

#[test]
fn v2a_validates_xcr0_against_user_xfeatures() {
    let h = host207();
    let xcr = |c: Contract| run(&h, c, no_cpuid(), vec![Op::SetXcrs(XcrsImage::xcr0(0x7))]).results[0].ret;
    assert_eq!(xcr(V2a), Ret::Ok(0), "fresh V2a vCPU: user_xfeatures is the host default");
    for c in [V0, V1, V2b, V3] {
        assert_eq!(xcr(c), Ret::Err(EINVAL), "{c}");
    }
    let t = run(&h, V2a, empty_cpuid(), vec![Op::SetXcrs(XcrsImage::xcr0(0x7))]);
    assert_eq!(t.results[1].rules.last(), Some(&Rule::Xcr0V2aUserXfeatures));
}

#[test]
fn v0_legacy_area_is_raw() {
    let h = host207();
    let fresh = run(&h, V0, no_cpuid(), vec![Op::GetXsave]);
    let d = ok(last(&fresh));
    assert_eq!(mxcsr(d), (0x1f80, 0), "V0 fresh MXCSR_MASK is 0");
    assert_eq!(le64(d, 464), 0, "V0 does not write sw_reserved");
    assert!(last(&fresh).rules.contains(&Rule::GetV0LegacyRaw));
    let mut x = img(0);
    x.fcw = 0x1111;
    let t = run(&h, V0, no_cpuid(), vec![Op::SetXsave(x), Op::GetXsave]);
    let d = ok(last(&t));
    assert_eq!((bv(d), fcw(d)), (0, 0x1111));
    assert_eq!(&d[160..416], &filled(8, 256)[..], "XMM reported although SSE is clear");
    assert_eq!(&d[416..512], &filled(9, 96)[..], "padding and sw_reserved round-trip");
    let t = run(&h, V0, no_cpuid(), vec![Op::SetXsave(img(FP)), Op::GetXsave]);
    assert_eq!(mxcsr(ok(last(&t))).0, 0x1f81, "FP-only MXCSR reported raw");
}

#[test]
fn v0_header_not_validated_mxcsr_always_checked() {
    let h = host207();
    let mut x = img(FPSSE);
    x.xcomp_bv = 1;
    x.hdr_reserved = vec![(3, 3)];
    assert_eq!(run(&h, V0, no_cpuid(), vec![Op::SetXsave(x.clone())]).results[0].ret, Ret::Ok(0));
    assert_eq!(run(&h, V3, no_cpuid(), vec![Op::SetXsave(x)]).results[0].ret, Ret::Err(EINVAL));
    let mut x = img(PKRU);
    x.mxcsr = 0x11f80;
    let t = run(&h, V0, no_cpuid(), vec![Op::SetXsave(x.clone())]);
    assert_eq!(t.results[0].rules, vec![Rule::SetV0RejectMxcsr]);
    assert_eq!(run(&h, V3, no_cpuid(), vec![Op::SetXsave(x)]).results[0].ret, Ret::Ok(0));
}

#[test]
fn xsave2_exists_from_v2a() {
    let h = host207();
    for c in [V0, V1] {
        let t = run(&h, c, no_cpuid(), vec![Op::CheckXsave2, Op::GetXsave2]);
        assert_eq!(t.results[0].ret, Ret::Ok(0));
        assert_eq!(t.results[1].ret, Ret::Err(EINVAL));
    }
    for c in [V2a, V2b, V3] {
        let t = run(&h, c, no_cpuid(), vec![Op::CheckXsave2, Op::GetXsave2, Op::GetXsave]);
        assert_eq!(t.results[0].ret, Ret::Ok(4096));
        assert_eq!(ok(&t.results[1]), ok(&t.results[2]), "XSAVE2 equals XSAVE at 4096 bytes");
    }
    let _ = le32;
}
