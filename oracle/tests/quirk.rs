//! The `pvm-cpuid-rewrite` quirk model against tables measured on a kvm_pvm host
//! (6.18.44, supported XCR0 0xe7, host XCR0 0x600e7; spec §8 and the closing notes).
//! These pin the empirical model: they are observations, not the upstream contract.

mod common;
use common::*;
use xsave_oracle::abi::le32;
use xsave_oracle::case::*;
use xsave_oracle::host::{Component, HostFacts, Quirk};
use xsave_oracle::model::{predict, Contract, ModelConfig};

fn pvm_host() -> HostFacts {
    let comps = [(2u8, 576u32, 256u32), (5, 1088, 64), (6, 1152, 512), (7, 1664, 1024), (17, 2752, 64), (18, 2816, 8192)];
    let raw = [
        (0u32, [0x600e7u32, 0x2b00, 0x2b00, 0]),
        (1, [0x1f, 0x29c0, 0, 0]),
        (2, [0x100, 0x240, 0, 0]),
        (5, [0x40, 0x440, 0, 0]),
        (6, [0x200, 0x480, 0, 0]),
        (7, [0x400, 0x680, 0, 0]),
        (17, [0x40, 0xac0, 2, 0]),
        (18, [0x2000, 0xb00, 6, 0]),
    ];
    HostFacts {
        supported_xcr0: 0xe7,
        host_xcr0: 0x600e7,
        guest_perm: 0xe7,
        mxcsr_feature_mask: 0xffff,
        init_mxcsr_mask: 0xffff,
        components: comps.iter().map(|&(bit, offset, size)| Component { bit, offset, size, align64: bit >= 17 }).collect(),
        host_cpuid_0xd: raw.iter().map(|&(i, r)| CpuidEntry::new(0xd, i, 1, r)).collect(),
        supported_cpuid: vec![],
        quirks: vec![Quirk::PvmCpuidRewrite],
        get_cpuid2_keeps_nent: false,
        cpuid_sgx_xfrm_masked: false,
        pvm_dropped_leaves: vec![0x1d, 0x1e, 0x24],
    }
}

fn read_back(entries: Vec<CpuidEntry>) -> Vec<[u32; 7]> {
    let h = pvm_host();
    let case = Case { config: Config::default(), ops: vec![Op::SetCpuid2(table(entries)), Op::GetCpuid2 { capacity: 256 }] };
    let t = predict(&case, &h, &ModelConfig::new(Contract::V3, vec![Quirk::PvmCpuidRewrite]));
    let d = ok(&t.results[1]);
    (0..le32(d, 0) as usize)
        .map(|k| {
            let e = CpuidEntry::from_bytes(&d[4 + k * 40..4 + (k + 1) * 40]);
            [e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx]
        })
        .collect()
}

fn e(f: u32, i: u32, fl: u32, a: u32) -> CpuidEntry {
    CpuidEntry::new(f, i, fl, [a, 0, 0, 0])
}

#[test]
fn narrowed_leaf_0xd_reads_back_as_the_host_set() {
    assert_eq!(read_back(vec![e(0xd, 0, 1, 3)]), vec![[0xd, 0, 1, 0xe7, 0x240, 0xa80, 0]]);
    // Duplicates: only the first match is rewritten.
    assert_eq!(read_back(vec![e(0xd, 0, 1, 7), e(0xd, 0, 1, 3)]), vec![[0xd, 0, 1, 0xe7, 0x240, 0xa80, 0], [0xd, 0, 1, 3, 0, 0, 0]]);
}

#[test]
fn unflagged_entry_takes_every_subleaf_write() {
    assert_eq!(read_back(vec![e(0xd, 0, 0, 3)]), vec![[0xd, 0, 0, 0, 0x240, 0, 0]]);
    assert_eq!(read_back(vec![e(0xd, 0, 0, 3), e(0xd, 0, 1, 3)]), vec![[0xd, 0, 0, 0, 0x240, 0, 0], [0xd, 0, 1, 3, 0, 0, 0]]);
    assert_eq!(read_back(vec![e(0xd, 0, 1, 3), e(0xd, 0, 0, 3)]), vec![[0xd, 0, 1, 0xe7, 0x240, 0xa80, 0], [0xd, 0, 0, 0, 0, 0, 0]]);
    // Measured by the fuzzer: the subleaf before the unflagged entry ends up zero.
    assert_eq!(read_back(vec![e(0xd, 7, 1, 9), e(0xd, 0, 0, 0x9b)]), vec![[0xd, 7, 1, 0, 0, 0, 0], [0xd, 0, 0, 0, 0x240, 0, 0]]);
    assert_eq!(read_back(vec![e(0xd, 2, 1, 9), e(0xd, 0, 0, 0x157)])[0], [0xd, 2, 1, 0, 0, 0, 0]);
}

#[test]
fn subleaves_follow_the_host_when_0xd0_is_present() {
    let t = read_back(vec![e(0xd, 0, 1, 3), e(0xd, 1, 1, 5), e(0xd, 2, 1, 0x77), e(0xd, 3, 1, 1)]);
    assert_eq!(t[1], [0xd, 1, 1, 7, 0x240, 0, 0]);
    assert_eq!(t[2], [0xd, 2, 1, 0x100, 0x240, 0, 0]);
    assert_eq!(t[3], [0xd, 3, 1, 0, 0, 0, 0], "unsupported subleaf zeroed");
    assert_eq!(read_back(vec![e(0xd, 5, 1, 1)]), vec![[0xd, 5, 1, 0, 0, 0, 0]], "no 0xD.0: subleaves zeroed");
    assert_eq!(read_back(vec![e(0xd, 64, 1, 1)]), vec![[0xd, 64, 1, 1, 0, 0, 0]], "subleaf 64 untouched");
}

#[test]
fn leaf1_without_0xd_injects_host_subleaves() {
    let t = read_back(vec![e(1, 0, 0, 0)]);
    let fns: Vec<[u32; 2]> = t.iter().map(|r| [r[0], r[1]]).collect();
    assert_eq!(fns, vec![[1, 0], [0xd, 0], [0xd, 1], [0xd, 2], [0xd, 5], [0xd, 6], [0xd, 7]]);
    assert_eq!(t[1], [0xd, 0, 1, 0xe7, 0x240, 0xa80, 0]);
    let t = read_back(vec![e(1, 0, 0, 0), e(0xd, 1, 1, 0)]);
    assert_eq!(t[1], [0xd, 1, 1, 7, 0x240, 0, 0], "the supplied 0xD.1 is the first match");
    assert_eq!(t[3], [0xd, 1, 1, 0x1f, 0x29c0, 0, 0], "the injected 0xD.1 keeps raw host values");
}

#[test]
fn dropped_leaves_vanish() {
    let t = read_back(vec![e(0x1d, 0, 0, 1), e(0xd, 5, 1, 1), e(0x14, 0, 0, 1)]);
    assert_eq!(t.iter().map(|r| r[0]).collect::<Vec<_>>(), vec![0xd, 0x14]);
}

/// guest_supported_xcr0 as SET then GET of every supported bit reveals it.
fn visible_gsx(entries: Vec<CpuidEntry>) -> u64 {
    let h = pvm_host();
    let case =
        Case { config: Config::default(), ops: vec![Op::SetCpuid2(table(entries)), Op::SetXsave(XsaveImage::init(0xe7)), Op::GetXsave] };
    let t = predict(&case, &h, &ModelConfig::new(Contract::V3, vec![Quirk::PvmCpuidRewrite]));
    bv(ok(&t.results[2]))
}

#[test]
fn guest_xcr0_comes_from_the_first_rewrite_pass() {
    // Measured: an unflagged 0xD entry whose last first-pass write is subleaf 17 (EAX 0x40)
    // gives guest XCR0 bit 6, although the table then reads back EAX 0.
    assert_eq!(visible_gsx(vec![e(0xd, 0x12, 1, 0), e(0xd, 0x13, 1, 0), e(0xd, 0, 0, 3)]), 0x43);
    assert_eq!(read_back(vec![e(0xd, 0x12, 1, 0), e(0xd, 0x13, 1, 0), e(0xd, 0, 0, 3)])[2], [0xd, 0, 0, 0, 0x240, 0, 0]);
    for others in [vec![], vec![e(0xd, 0x12, 1, 0)], vec![e(0xd, 0x13, 1, 0)], vec![e(0xd, 7, 1, 0)], vec![e(0xd, 0x3f, 1, 0)]] {
        let mut t = others.clone();
        t.push(e(0xd, 0, 0, 3));
        assert_eq!(visible_gsx(t), 3, "{others:?}");
    }
    assert_eq!(visible_gsx(vec![e(0xd, 0, 1, 3)]), 0xe7);
    assert_eq!(visible_gsx(vec![e(0xd, 1, 0, 0x1b)]), 3);
}
