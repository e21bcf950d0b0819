//! Shared helpers for the oracle tests.
#![allow(dead_code)]

use xsave_oracle::abi::{le32, le64};
use xsave_oracle::case::*;
use xsave_oracle::host::{Component, HostFacts};
use xsave_oracle::model::{predict, Contract, ModelConfig};
use xsave_oracle::trace::{OpResult, Ret, Trace};

/// The worked examples' host (spec §11): XCR0 0x207, AMD-style dense layout (PKRU at 2432),
/// MXCSR mask 0xFFFF.
pub fn host207() -> HostFacts {
    let components =
        vec![Component { bit: 2, offset: 576, size: 256, align64: false }, Component { bit: 9, offset: 2432, size: 8, align64: false }];
    HostFacts {
        supported_xcr0: 0x207,
        host_xcr0: 0x207,
        guest_perm: 0x207,
        mxcsr_feature_mask: 0xffff,
        init_mxcsr_mask: 0xffff,
        components,
        host_cpuid_0xd: vec![
            CpuidEntry::new(0xd, 0, 1, [0x207, 2440, 2440, 0]),
            CpuidEntry::new(0xd, 1, 1, [0xf, 0, 0, 0]),
            CpuidEntry::new(0xd, 2, 1, [256, 576, 0, 0]),
            CpuidEntry::new(0xd, 9, 1, [8, 2432, 0, 0]),
        ],
        supported_cpuid: vec![
            CpuidEntry::new(1, 0, 0, [0xa0f11, 0x800, (1 << 26) | (1 << 28), 0x178bfbff]),
            CpuidEntry::new(7, 0, 1, [0, 0x219c07ab, 0x0040_068c | (1 << 3), 0]),
            CpuidEntry::new(0xd, 0, 1, [0x207, 2440, 2440, 0]),
            CpuidEntry::new(0xd, 1, 1, [0xf, 0, 0, 0]),
            CpuidEntry::new(0xd, 2, 1, [256, 576, 0, 0]),
            CpuidEntry::new(0xd, 9, 1, [8, 2432, 0, 0]),
            CpuidEntry::new(0x8000_0001, 0, 0, [0, 0, 0x121, 0x2c10_0800]),
            CpuidEntry::new(0x8000_0008, 0, 0, [0x3030, 0, 0, 0]),
        ],
        quirks: vec![],
        get_cpuid2_keeps_nent: false,
        cpuid_sgx_xfrm_masked: false,
        pvm_dropped_leaves: vec![],
    }
}

pub fn cfg(c: Contract) -> ModelConfig {
    ModelConfig::new(c, vec![])
}

pub fn run(host: &HostFacts, c: Contract, config: Config, ops: Vec<Op>) -> Trace {
    predict(&Case { config, ops }, host, &cfg(c))
}

pub fn v3(host: &HostFacts, config: Config, ops: Vec<Op>) -> Trace {
    run(host, Contract::V3, config, ops)
}

pub fn no_cpuid() -> Config {
    Config::default()
}

pub fn cpuid_xcr0(eax: u32) -> Config {
    Config { cpuid: Some(table(vec![CpuidEntry::new(0xd, 0, 1, [eax, 0, 0, 0])])), xcr0: None }
}

pub fn table(entries: Vec<CpuidEntry>) -> CpuidTable {
    CpuidTable { base: CpuidBase::Empty, entries, reverse: false }
}

pub fn set_cpuid(entries: Vec<CpuidEntry>) -> Op {
    Op::SetCpuid2(table(entries))
}

/// An image with recognisable data in every area.
pub fn img(bv: u64) -> XsaveImage {
    let mut i = XsaveImage::init(bv);
    i.fcw = 0x027f;
    i.fsw = 0x1234;
    i.ftw = [0x81, 0x5a];
    i.fip = 0x1111_2222_3333_4444;
    i.mxcsr = 0x1f81;
    i.mxcsr_mask = 0xffff;
    i.st_seed = 7;
    i.xmm_seed = 8;
    i.pad_seed = 9;
    i.components = vec![
        ComponentData { bit: 2, seed: 10 },
        ComponentData { bit: 5, seed: 11 },
        ComponentData { bit: 6, seed: 12 },
        ComponentData { bit: 7, seed: 13 },
    ];
    i.pkru = 0xdead_beec;
    i
}

pub fn filled(seed: u32, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill(seed, &mut v);
    v
}

pub fn ok(r: &OpResult) -> &[u8] {
    assert_eq!(r.ret, Ret::Ok(0), "expected success, got {:?} (rules {:?})", r.ret, r.rules);
    &r.data
}

pub fn err(r: &OpResult) -> i32 {
    match r.ret {
        Ret::Err(e) => e,
        other => panic!("expected an error, got {other:?} (rules {:?})", r.rules),
    }
}

pub fn bv(d: &[u8]) -> u64 {
    le64(d, 512)
}

pub fn mxcsr(d: &[u8]) -> (u32, u32) {
    (le32(d, 24), le32(d, 28))
}

pub fn fcw(d: &[u8]) -> u16 {
    u16::from_le_bytes([d[0], d[1]])
}

pub fn last(t: &Trace) -> &OpResult {
    t.results.last().expect("a step")
}
