//! Structure-aware mutation of cases: decode, change one field the contract cares about,
//! re-encode. The built-in engine and the libFuzzer/honggfuzz mutators use the same function,
//! so every corpus file stays a valid case in the stable format.

use crate::abi::cpuid::CPUID_FLAG_SIGNIFICANT_INDEX;
use crate::case::*;
use crate::gen;
use crate::xfeatures::*;
use arbitrary::{Arbitrary, Result, Unstructured};

fn flip(x: u64, u: &mut Unstructured) -> Result<u64> {
    let bit = *u.choose(&[0u32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 17, 18, 19, 63])?;
    Ok(x ^ (1u64 << bit))
}

fn mutate_image(x: &mut XsaveImage, u: &mut Unstructured) -> Result<()> {
    match u.int_in_range(0..=9u8)? {
        0 | 1 => x.xstate_bv = flip(x.xstate_bv, u)?,
        2 => x.mxcsr = if bool::arbitrary(u)? { 0x1f80 } else { x.mxcsr ^ (1 << u.int_in_range(0..=31u32)?) },
        3 => x.xcomp_bv = if x.xcomp_bv == 0 { 1u64 << u.int_in_range(0..=63u32)? } else { 0 },
        4 => {
            if x.hdr_reserved.is_empty() {
                x.hdr_reserved.push((u.int_in_range(0..=47u8)?, 1));
            } else {
                x.hdr_reserved.clear();
            }
        }
        5 => {
            let bit = *u.choose(&[2u8, 3, 4, 5, 6, 7, 17, 18, 19])?;
            match x.components.iter().position(|c| c.bit == bit) {
                Some(i) => {
                    x.components.remove(i);
                }
                None => x.components.push(ComponentData { bit, seed: u32::arbitrary(u)? | 1 }),
            }
        }
        6 => x.pkru = u32::arbitrary(u)?,
        7 => {
            x.st_seed ^= u32::arbitrary(u)?;
            x.xmm_seed ^= u32::arbitrary(u)?;
        }
        8 => x.pad_seed = if x.pad_seed == 0 { u32::arbitrary(u)? | 1 } else { 0 },
        _ => x.fcw = if x.fcw == 0x37f { u16::arbitrary(u)? as u32 } else { 0x37f },
    }
    Ok(())
}

fn mutate_fpu(f: &mut FpuImage, u: &mut Unstructured) -> Result<()> {
    match u.int_in_range(0..=5u8)? {
        0 => f.mxcsr = if bool::arbitrary(u)? { 0x1f80 } else { f.mxcsr ^ (1 << u.int_in_range(0..=31u32)?) },
        1 => f.fcw = if f.fcw == 0x37f { u16::arbitrary(u)? as u32 } else { 0x37f },
        2 => f.ftwx = u8::arbitrary(u)?,
        3 => {
            f.fpr_seed ^= u32::arbitrary(u)?;
            f.xmm_seed ^= u32::arbitrary(u)?;
        }
        4 => (f.pad1, f.pad2) = if f.pad1 == 0 { (u8::arbitrary(u)? | 1, u32::arbitrary(u)?) } else { (0, 0) },
        _ => *f = gen::fpu_image(u)?,
    }
    Ok(())
}

fn mutate_table(t: &mut CpuidTable, u: &mut Unstructured) -> Result<()> {
    match u.int_in_range(0..=5u8)? {
        0 => match &mut t.base {
            CpuidBase::Supported { xcr0_mask, .. } | CpuidBase::Subset { xcr0_mask, .. } => *xcr0_mask = flip(*xcr0_mask, u)?,
            CpuidBase::Empty => t.base = CpuidBase::Subset { leaves: vec![0xd], xcr0_mask: gen::xfeature_set(u)? },
        },
        1 => t.entries.push(CpuidEntry::new(
            0xd,
            u.int_in_range(0..=19u32)?,
            if bool::arbitrary(u)? { 1 } else { 0 },
            [gen::xfeature_set(u)? as u32, 0, 0, 0],
        )),
        2 => {
            if !t.entries.is_empty() {
                let i = u.choose_index(t.entries.len())?;
                t.entries.remove(i);
            }
        }
        3 => {
            if let Some(e) = t.entries.first_mut() {
                e.flags ^= CPUID_FLAG_SIGNIFICANT_INDEX;
            }
        }
        4 => t.reverse = !t.reverse,
        _ => *t = gen::cpuid_table(u)?,
    }
    Ok(())
}

/// Mutate `case` in place (one structural change). Keeps it within the decoder's limits.
pub fn mutate(case: &mut Case, u: &mut Unstructured) -> Result<()> {
    let n = case.ops.len();
    match u.int_in_range(0..=9u8)? {
        0 if n < LIMITS.ops => {
            let at = u.int_in_range(0..=n)?;
            case.ops.insert(at, gen::op(u)?);
        }
        1 if n > 1 => {
            let i = u.choose_index(n)?;
            case.ops.remove(i);
        }
        2 if n > 1 => {
            let (a, b) = (u.choose_index(n)?, u.choose_index(n)?);
            case.ops.swap(a, b);
        }
        3 => match &mut case.config.cpuid {
            Some(t) => mutate_table(t, u)?,
            None => case.config.cpuid = Some(gen::cpuid_table(u)?),
        },
        4 => {
            case.config.xcr0 = match case.config.xcr0 {
                Some(x) => Some(flip(x, u)?),
                None => Some(gen::xfeature_set(u)? | FP),
            }
        }
        _ if n > 0 => {
            let i = u.choose_index(n)?;
            match &mut case.ops[i] {
                Op::SetXsave(x) => mutate_image(x, u)?,
                Op::SetFpu(f) => mutate_fpu(f, u)?,
                Op::SetCpuid2(t) => mutate_table(t, u)?,
                Op::SetXcrs(x) => {
                    match u.int_in_range(0..=3u8)? {
                        0 => x.nr_xcrs = u.int_in_range(0..=17u32)?,
                        1 => x.flags ^= 1,
                        2 => {
                            if let Some(e) = x.xcrs.first_mut() {
                                e.value = flip(e.value, u)?;
                            }
                        }
                        _ => x.xcrs.push(Xcr { xcr: u.int_in_range(0..=2u32)?, reserved: 0, value: gen::xfeature_set(u)? | FP }),
                    }
                    x.xcrs.truncate(LIMITS.xcrs);
                }
                Op::RestoreLast { force_xstate_bv } => {
                    *force_xstate_bv = if force_xstate_bv.is_some() { None } else { Some(gen::xfeature_set(u)?) }
                }
                Op::GetCpuid2 { capacity } => *capacity = if *capacity == 256 { u.int_in_range(0..=8u16)? } else { 256 },
                other => *other = gen::op(u)?,
            }
        }
        5 if n < LIMITS.ops && bool::arbitrary(u)? => {
            let at = u.int_in_range(0..=n)?;
            case.ops.insert(at, if bool::arbitrary(u)? { Op::SetFpu(gen::fpu_image(u)?) } else { Op::GetFpu });
        }
        _ => case.ops.push(gen::op(u)?),
    }
    case.ops.truncate(LIMITS.ops);
    Ok(())
}

/// Mutate an encoded case (for libFuzzer/honggfuzz custom mutators): decode, mutate with
/// `entropy`, re-encode. Inputs that do not decode become a fresh generated case.
pub fn mutate_bytes(data: &[u8], entropy: &[u8]) -> Vec<u8> {
    let mut u = Unstructured::new(entropy);
    let mut case = match Case::decode(data) {
        Ok(c) => c,
        Err(_) => Case::arbitrary(&mut Unstructured::new(data)).unwrap_or_default(),
    };
    for _ in 0..u.int_in_range(1..=3u8).unwrap_or(1) {
        if mutate(&mut case, &mut u).is_err() {
            break;
        }
    }
    if case.ops.is_empty() {
        case.ops.push(Op::GetXsave);
    }
    case.encode()
}

/// A libFuzzer/honggfuzz custom-mutator step over `data[..size]` (capacity `max_size`):
/// returns the new size. Entropy comes from `seed`; an output larger than `max_size` leaves
/// the input unchanged.
pub fn mutate_in_place(data: &mut [u8], size: usize, max_size: usize, seed: u32) -> usize {
    let mut x = (seed as u64) ^ 0x9e37_79b9_7f4a_7c15;
    let mut entropy = [0u8; 128];
    for chunk in entropy.chunks_mut(8) {
        x = crate::pattern::xorshift64(x);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let size = size.min(data.len());
    let out = mutate_bytes(&data[..size], &entropy);
    if out.len() > max_size.min(data.len()) {
        return size;
    }
    data[..out.len()].copy_from_slice(&out);
    out.len()
}
