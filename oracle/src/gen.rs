//! Structure-aware generation of cases with `arbitrary`: biased toward the values the contract
//! distinguishes (xfeature bits around the host's, valid and invalid MXCSR, odd headers, CPUID
//! tables that omit, duplicate and reorder leaf 0xD, XCRS with odd counts and indices).

use crate::abi::cpuid::CPUID_FLAG_SIGNIFICANT_INDEX;
use crate::case::*;
use crate::guest::{GuestAction, GuestProgram};
use crate::xfeatures::*;
use arbitrary::{Arbitrary, Result, Unstructured};

/// The xfeature bits worth trying: every bit KVM may support, supervisor and unknown bits.
pub const PALETTE: &[u64] =
    &[FP, SSE, YMM, BNDREGS, BNDCSR, OPMASK, ZMM_HI256, HI16_ZMM, 1 << 8, PKRU, 1 << 11, XTILE_CFG, XTILE_DATA, 1 << 19, 1 << 63];

fn chance(u: &mut Unstructured, percent: u8) -> Result<bool> {
    Ok(u.int_in_range(0..=99u8)? < percent)
}

/// A set of xfeature bits: mostly combinations of likely bits, sometimes anything.
pub fn xfeature_set(u: &mut Unstructured) -> Result<u64> {
    Ok(match u.int_in_range(0..=9u8)? {
        0 => u64::arbitrary(u)?,
        1 => FPSSE,
        2 => FPSSE | YMM,
        3 => FPSSE | YMM | AVX512,
        _ => {
            let mut m = 0;
            for &b in PALETTE {
                let p = if b <= YMM {
                    75
                } else if b <= PKRU {
                    35
                } else {
                    6
                };
                if chance(u, p)? {
                    m |= b;
                }
            }
            m
        }
    })
}

fn mxcsr(u: &mut Unstructured) -> Result<u32> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=5 => 0x1f80,
        6 | 7 => u32::arbitrary(u)? & 0xffbf,
        8 => 0x1f80 | (1 << u.int_in_range(16..=31u32)?),
        _ => u32::arbitrary(u)?,
    })
}

fn seed(u: &mut Unstructured) -> Result<u32> {
    Ok(if chance(u, 10)? { 0 } else { u32::arbitrary(u)? | 1 })
}

/// An XSAVE image.
pub fn xsave_image(u: &mut Unstructured) -> Result<XsaveImage> {
    let xstate_bv = xfeature_set(u)?;
    let mut img = XsaveImage::init(xstate_bv);
    if chance(u, 5)? {
        img.xcomp_bv = if chance(u, 50)? { 1u64 << 63 | xstate_bv } else { u64::arbitrary(u)? };
    }
    if chance(u, 5)? {
        img.hdr_reserved.push((u.int_in_range(0..=47u8)?, u8::arbitrary(u)? | 1));
    }
    img.fcw = if chance(u, 50)? { 0x037f } else { u16::arbitrary(u)? as u32 };
    img.fsw = u16::arbitrary(u)? as u32;
    img.ftw = [u8::arbitrary(u)?, if chance(u, 20)? { u8::arbitrary(u)? } else { 0 }];
    img.fop = u16::arbitrary(u)? as u32 & 0x7ff;
    img.fip = u64::arbitrary(u)?;
    img.fdp = u64::arbitrary(u)?;
    img.mxcsr = mxcsr(u)?;
    img.mxcsr_mask = match u.int_in_range(0..=3u8)? {
        0 => 0,
        1 => 0xffff,
        2 => 0x2ffff,
        _ => u32::arbitrary(u)?,
    };
    img.st_seed = seed(u)?;
    img.xmm_seed = seed(u)?;
    img.pad_seed = if chance(u, 30)? { seed(u)? } else { 0 };
    for &b in &PALETTE[2..] {
        if b != PKRU && b.trailing_zeros() < 20 && chance(u, 60)? {
            img.components.push(ComponentData { bit: b.trailing_zeros() as u8, seed: seed(u)? });
        }
    }
    img.pkru = if chance(u, 20)? { 0 } else { u32::arbitrary(u)? };
    if chance(u, 4)? {
        let offset = u.int_in_range(0..=4095u16)?;
        let len = u.int_in_range(1..=16usize)?;
        let bytes = (0..len).map(|_| u8::arbitrary(u)).collect::<Result<Vec<u8>>>()?;
        img.patches.push(Patch { offset, bytes });
    }
    Ok(img)
}

fn cpuid_entry(u: &mut Unstructured) -> Result<CpuidEntry> {
    let flags = if chance(u, 85)? { CPUID_FLAG_SIGNIFICANT_INDEX } else { 0 };
    Ok(match u.int_in_range(0..=9u8)? {
        0..=3 => {
            let x = xfeature_set(u)?;
            CpuidEntry::new(0xd, 0, flags, [x as u32, u32::arbitrary(u)?, u32::arbitrary(u)?, (x >> 32) as u32])
        }
        4 => CpuidEntry::new(0xd, 1, flags, [u32::arbitrary(u)? & 0x1f, 0, 0, 0]),
        5 => {
            let i = u.int_in_range(2..=19u32)?;
            CpuidEntry::new(0xd, i, flags, [u32::arbitrary(u)?, u32::arbitrary(u)?, 0, 0])
        }
        6 => CpuidEntry::new(1, 0, flags, [u32::arbitrary(u)?, u32::arbitrary(u)?, u32::arbitrary(u)?, u32::arbitrary(u)?]),
        7 => CpuidEntry::new(7, 0, CPUID_FLAG_SIGNIFICANT_INDEX, [0, u32::arbitrary(u)?, u32::arbitrary(u)?, u32::arbitrary(u)?]),
        8 => {
            let bits = *u.choose(&[0u32, 48, 57, 39, 64])?;
            CpuidEntry::new(0x8000_0008, 0, 0, [(bits << 8) | 0x2e, 0, 0, 0])
        }
        _ => CpuidEntry::new(u32::arbitrary(u)? & 0x8000_001f, 0, 0, [u32::arbitrary(u)?, 0, 0, 0]),
    })
}

/// A CPUID table.
pub fn cpuid_table(u: &mut Unstructured) -> Result<CpuidTable> {
    let base = match u.int_in_range(0..=9u8)? {
        0..=1 => CpuidBase::Empty,
        2..=6 => {
            let leaves = match u.int_in_range(0..=3u8)? {
                0 => vec![0xd],
                1 => vec![1, 0xd],
                2 => vec![1, 7, 0xd],
                _ => vec![0xd, 7, 1, 0x8000_0008],
            };
            CpuidBase::Subset { leaves, xcr0_mask: xfeature_set(u)? | if chance(u, 50)? { FPSSE } else { 0 } }
        }
        _ => {
            let mut drop_leaves = Vec::new();
            if chance(u, 10)? {
                drop_leaves.push(*u.choose(&[1u32, 7, 0xd])?);
            }
            CpuidBase::Supported { xcr0_mask: xfeature_set(u)? | if chance(u, 50)? { FPSSE } else { 0 }, drop_leaves }
        }
    };
    let n = if matches!(base, CpuidBase::Empty) { u.int_in_range(0..=4usize)? } else { u.int_in_range(0..=2usize)? };
    let mut entries = (0..n).map(|_| cpuid_entry(u)).collect::<Result<Vec<_>>>()?;
    if chance(u, 1)? {
        // More than KVM_MAX_CPUID_ENTRIES: E2BIG.
        entries = vec![cpuid_entry(u)?; 257];
    }
    Ok(CpuidTable { base, entries, reverse: chance(u, 5)? })
}

fn xcr0_value(u: &mut Unstructured) -> Result<u64> {
    Ok(if chance(u, 70)? { xfeature_set(u)? | FP } else { xfeature_set(u)? })
}

/// A `kvm_xcrs`.
pub fn xcrs_image(u: &mut Unstructured) -> Result<XcrsImage> {
    if chance(u, 70)? {
        return Ok(XcrsImage::xcr0(xcr0_value(u)?));
    }
    let n = u.int_in_range(0..=4usize)?;
    let xcrs = (0..n)
        .map(|_| {
            Ok(Xcr {
                xcr: if chance(u, 60)? { 0 } else { u.int_in_range(0..=3u32)? },
                reserved: if chance(u, 10)? { u32::arbitrary(u)? } else { 0 },
                value: xcr0_value(u)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let nr_xcrs = match u.int_in_range(0..=9u8)? {
        0 => u.int_in_range(0..=20u32)?,
        1 => u32::arbitrary(u)?,
        _ => n as u32,
    };
    let flags = if chance(u, 8)? { u32::arbitrary(u)? | 1 } else { 0 };
    Ok(XcrsImage { nr_xcrs, flags, xcrs, padding_seed: if chance(u, 10)? { seed(u)? } else { 0 } })
}

/// One guest action, biased toward the register writes and stores that move state.
pub fn guest_action(u: &mut Unstructured) -> Result<GuestAction> {
    Ok(match u.int_in_range(0..=99u8)? {
        0..=14 => GuestAction::Xmm { seed: seed(u)? },
        15..=32 => GuestAction::Ymm { seed: seed(u)? },
        33..=39 => GuestAction::Vzeroupper,
        // Only architecturally valid values: QEMU's TCG (the lab's CPU) does not raise #GP for
        // reserved MXCSR bits, so the fault is exercised by unavailable features instead.
        40..=46 => GuestAction::Ldmxcsr { value: mxcsr(u)? & 0xffff },
        47..=52 => GuestAction::Fldcw { value: if chance(u, 50)? { 0x37f } else { u16::arbitrary(u)? | 0x3f } },
        53..=58 => GuestAction::Fninit,
        59..=66 => GuestAction::Opmask { seed: seed(u)? },
        67..=76 => GuestAction::Zmm { seed: seed(u)? },
        77..=80 => GuestAction::Wrpkru { value: u32::arbitrary(u)? },
        _ => GuestAction::Xsave,
    })
}

/// A guest program of 1 to 8 actions.
pub fn guest_program(u: &mut Unstructured) -> Result<GuestProgram> {
    let n = u.int_in_range(1..=8usize)?;
    Ok(GuestProgram { actions: (0..n).map(|_| guest_action(u)).collect::<Result<Vec<_>>>()? })
}

/// One operation.
pub fn op(u: &mut Unstructured) -> Result<Op> {
    Ok(match u.int_in_range(0..=99u8)? {
        0..=29 => Op::SetXsave(xsave_image(u)?),
        30..=54 => Op::GetXsave,
        55..=61 => Op::GetXsave2,
        62..=69 => Op::SetCpuid2(cpuid_table(u)?),
        70..=74 => Op::GetCpuid2 { capacity: if chance(u, 80)? { 256 } else { u.int_in_range(0..=64u16)? } },
        75..=82 => Op::SetXcrs(xcrs_image(u)?),
        83..=87 => Op::GetXcrs,
        88..=93 => Op::RestoreLast { force_xstate_bv: if chance(u, 50)? { Some(xfeature_set(u)?) } else { None } },
        94..=96 => Op::NewVcpu,
        _ => Op::CheckXsave2,
    })
}

/// A `struct kvm_fpu` image, biased toward values that differ from the init state.
pub fn fpu_image(u: &mut Unstructured) -> Result<FpuImage> {
    let mut f = FpuImage::init();
    f.fcw = if chance(u, 30)? { 0x037f } else { u16::arbitrary(u)? as u32 };
    f.fsw = if chance(u, 50)? { 0 } else { u16::arbitrary(u)? as u32 };
    f.ftwx = u8::arbitrary(u)?;
    f.pad1 = if chance(u, 10)? { u8::arbitrary(u)? } else { 0 };
    f.last_opcode = u16::arbitrary(u)? as u32 & 0x7ff;
    f.last_ip = u64::arbitrary(u)?;
    f.last_dp = u64::arbitrary(u)?;
    f.mxcsr = mxcsr(u)?;
    f.pad2 = if chance(u, 10)? { u32::arbitrary(u)? } else { 0 };
    f.fpr_seed = seed(u)?;
    f.xmm_seed = seed(u)?;
    Ok(f)
}

/// What generated cases may contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GenOptions {
    /// Guest runs ([`Op::RunGuest`]), drawn after everything else so a case without one is
    /// exactly the case generated without this option from the same bytes. On by default.
    pub guest: bool,
    /// `KVM_SET_FPU`/`KVM_GET_FPU`, drawn after the guest runs with the same property (and
    /// never from exhausted input). On by default.
    pub fpu: bool,
}

impl Default for GenOptions {
    fn default() -> Self {
        GenOptions { guest: true, fpu: true }
    }
}

/// A case (the [`Arbitrary`] impl is `case(u, GenOptions::default())`).
pub fn case(u: &mut Unstructured, opts: GenOptions) -> Result<Case> {
    let cpuid = if chance(u, 70)? { Some(cpuid_table(u)?) } else { None };
    let xcr0 = if cpuid.is_some() && chance(u, 40)? { Some(xcr0_value(u)?) } else { None };
    let n = u.int_in_range(1..=20usize)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        ops.push(op(u)?);
    }
    if opts.guest && chance(u, 45)? {
        for _ in 0..u.int_in_range(1..=3usize)? {
            let at = u.int_in_range(0..=ops.len())?;
            ops.insert(at, Op::RunGuest(guest_program(u)?));
        }
        if chance(u, 60)? {
            ops.push(if chance(u, 80)? { Op::GetXsave } else { Op::GetXsave2 });
        }
    }
    // `>=` so that exhausted input (which reads as 0) adds nothing.
    if opts.fpu && u.int_in_range(0..=99u8)? >= 60 {
        for _ in 0..u.int_in_range(1..=3usize)? {
            let at = u.int_in_range(0..=ops.len())?;
            ops.insert(at, if chance(u, 60)? { Op::SetFpu(fpu_image(u)?) } else { Op::GetFpu });
        }
        if chance(u, 70)? {
            ops.push(u.choose(&[Op::GetFpu, Op::GetXsave, Op::GetXsave2])?.clone());
        }
    }
    ops.truncate(LIMITS.ops);
    Ok(Case { config: Config { cpuid, xcr0 }, ops })
}

impl<'a> Arbitrary<'a> for Case {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Case> {
        case(u, GenOptions::default())
    }
}
