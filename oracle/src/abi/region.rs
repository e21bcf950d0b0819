//! The named regions of the ioctl buffers: one typed table for the XSAVE image (legacy area,
//! header, the host's extended components) and the fields of `kvm_cpuid2`, `kvm_xcrs` and
//! `kvm_fpu`. The model, the diff and the reports all name bytes through it; the labels
//! ([`Region::label`]) are the ones verdicts have always carried (`"XSTATE_BV"`, `"ST3"`,
//! `"YMM_Hi128 (bit 2) @576"`, `"entry 4 EAX"`, ...).

use super::cpuid::{CPUID2_TRACE_HDR, CPUID_ENTRY_SIZE};
use super::fpu::{FPU_FCW, FPU_MXCSR, FPU_PAD2, FPU_XMM, KVM_FPU_SIZE};
use super::xcrs::{XCRS_PADDING, XCRS_XCRS, XCR_SIZE};
use super::{Component, EXT, HDR, HDR_RSVD, MXCSR, MXCSR_MASK, PAD, ST, SW, XCOMP_BV, XMM, XMM_END, XSTATE_BV};
use crate::xfeatures;

/// Which ioctl buffer a byte offset is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Buffer {
    /// A standard-format `struct kvm_xsave` image (also a guest's own XSAVE image).
    Xsave,
    /// `KVM_GET_CPUID2` output as a trace records it: `nent`, then 40-byte entries.
    Cpuid2,
    /// `struct kvm_xcrs`.
    Xcrs,
    /// `struct kvm_fpu`.
    Fpu,
}

/// A register (4-byte word) of a `kvm_cpuid_entry2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidField {
    /// Leaf.
    Function,
    /// Subleaf.
    Index,
    /// Flags.
    Flags,
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
    /// The three padding words.
    Padding,
}

impl CpuidField {
    /// The field of word `w` (0..10) of an entry.
    pub fn of_word(w: usize) -> CpuidField {
        use CpuidField::*;
        [Function, Index, Flags, Eax, Ebx, Ecx, Edx].get(w).copied().unwrap_or(Padding)
    }

    /// Name as verdicts print it.
    pub fn name(self) -> &'static str {
        match self {
            CpuidField::Function => "function",
            CpuidField::Index => "index",
            CpuidField::Flags => "flags",
            CpuidField::Eax => "EAX",
            CpuidField::Ebx => "EBX",
            CpuidField::Ecx => "ECX",
            CpuidField::Edx => "EDX",
            CpuidField::Padding => "padding",
        }
    }
}

/// A named region of one of the ioctl buffers ([`Buffer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// x87 control word (XSAVE bytes 0..2).
    Fcw,
    /// x87 status word (2..4).
    Fsw,
    /// Abridged tag word (4).
    Ftw,
    /// The reserved byte after it (5).
    FtwReserved,
    /// Last x87 opcode (6..8).
    Fop,
    /// x87 instruction pointer (8..16).
    Fip,
    /// x87 data pointer (16..24).
    Fdp,
    /// MXCSR (24..28).
    Mxcsr,
    /// MXCSR_MASK (28..32).
    MxcsrMask,
    /// ST0..7, 16 bytes each (32..160).
    St(u8),
    /// XMM0..15, 16 bytes each (160..416).
    Xmm(u8),
    /// Legacy padding KVM zeroes (416..464).
    LegacyPadding,
    /// Software-usable bytes (464..512).
    SwReserved,
    /// Header XSTATE_BV (512..520).
    XstateBv,
    /// Header XCOMP_BV (520..528).
    XcompBv,
    /// The 48 reserved header bytes (528..576).
    HeaderReserved,
    /// An extended component at its host offset.
    Component {
        /// xfeature bit.
        bit: u8,
        /// Standard-format offset.
        offset: u32,
        /// Size in bytes.
        size: u32,
    },
    /// XSAVE bytes past every component of the host.
    BeyondComponents,
    /// `kvm_cpuid2.nent` (the first 4 bytes of a recorded `KVM_GET_CPUID2`).
    CpuidNent,
    /// A field of entry `entry` of a recorded `KVM_GET_CPUID2`.
    CpuidEntry {
        /// Entry index.
        entry: usize,
        /// Register.
        field: CpuidField,
    },
    /// `kvm_xcrs.nr_xcrs`.
    NrXcrs,
    /// `kvm_xcrs.flags`.
    XcrsFlags,
    /// `kvm_xcrs.xcrs[entry].xcr`.
    XcrIndex(u8),
    /// `kvm_xcrs.xcrs[entry].reserved`.
    XcrReserved(u8),
    /// `kvm_xcrs.xcrs[entry].value`.
    XcrValue(u8),
    /// `kvm_xcrs.padding`.
    XcrsPadding,
    /// `kvm_fpu.fpr[k]` (STk).
    FpuFpr(u8),
    /// `kvm_fpu.fcw`.
    FpuFcw,
    /// `kvm_fpu.fsw`.
    FpuFsw,
    /// `kvm_fpu.ftwx`.
    FpuFtwx,
    /// `kvm_fpu.pad1`.
    FpuPad1,
    /// `kvm_fpu.last_opcode`.
    FpuLastOpcode,
    /// `kvm_fpu.last_ip`.
    FpuLastIp,
    /// `kvm_fpu.last_dp`.
    FpuLastDp,
    /// `kvm_fpu.xmm[k]`.
    FpuXmm(u8),
    /// `kvm_fpu.mxcsr`.
    FpuMxcsr,
    /// `kvm_fpu.pad2`.
    FpuPad2,
    /// Bytes past `struct kvm_fpu`.
    BeyondFpu,
}

/// The fixed part of the XSAVE table: legacy area and header, in offset order.
const FIXED: &[(usize, usize, Region)] = &[
    (0, 2, Region::Fcw),
    (2, 4, Region::Fsw),
    (4, 5, Region::Ftw),
    (5, 6, Region::FtwReserved),
    (6, 8, Region::Fop),
    (8, 16, Region::Fip),
    (16, 24, Region::Fdp),
    (MXCSR, MXCSR_MASK, Region::Mxcsr),
    (MXCSR_MASK, ST, Region::MxcsrMask),
    (PAD, SW, Region::LegacyPadding),
    (SW, HDR, Region::SwReserved),
    (XSTATE_BV, XCOMP_BV, Region::XstateBv),
    (XCOMP_BV, HDR_RSVD, Region::XcompBv),
    (HDR_RSVD, EXT, Region::HeaderReserved),
];

impl Region {
    /// The region of `buffer` holding byte `off`; `components` is the host's layout (XSAVE
    /// only; searched in the order given, first match wins).
    pub fn at(buffer: Buffer, components: &[Component], off: usize) -> Region {
        match buffer {
            Buffer::Xsave => Region::xsave_at(components, off),
            Buffer::Cpuid2 => Region::cpuid2_at(off),
            Buffer::Xcrs => Region::xcrs_at(off),
            Buffer::Fpu => Region::fpu_at(off),
        }
    }

    /// The XSAVE-image region holding byte `off`.
    pub fn xsave_at(components: &[Component], off: usize) -> Region {
        if let Some(&(_, _, r)) = FIXED.iter().find(|(s, e, _)| (*s..*e).contains(&off)) {
            return r;
        }
        match off {
            ST..XMM => Region::St(((off - ST) / 16) as u8),
            XMM..XMM_END => Region::Xmm(((off - XMM) / 16) as u8),
            _ => components
                .iter()
                .find(|c| (c.offset as usize..(c.offset + c.size) as usize).contains(&off))
                .map_or(Region::BeyondComponents, |c| Region::Component { bit: c.bit, offset: c.offset, size: c.size }),
        }
    }

    fn cpuid2_at(off: usize) -> Region {
        match off.checked_sub(CPUID2_TRACE_HDR) {
            None => Region::CpuidNent,
            Some(o) => Region::CpuidEntry { entry: o / CPUID_ENTRY_SIZE, field: CpuidField::of_word(o % CPUID_ENTRY_SIZE / 4) },
        }
    }

    fn xcrs_at(off: usize) -> Region {
        match off {
            0..4 => Region::NrXcrs,
            4..8 => Region::XcrsFlags,
            o @ XCRS_XCRS..XCRS_PADDING => {
                let k = ((o - XCRS_XCRS) / XCR_SIZE) as u8;
                match (o - XCRS_XCRS) % XCR_SIZE / 4 {
                    0 => Region::XcrIndex(k),
                    1 => Region::XcrReserved(k),
                    _ => Region::XcrValue(k),
                }
            }
            _ => Region::XcrsPadding,
        }
    }

    fn fpu_at(off: usize) -> Region {
        let f = FPU_FCW;
        match off {
            o if o < f => Region::FpuFpr((o / 16) as u8),
            o if o < f + 2 => Region::FpuFcw,
            o if o < f + 4 => Region::FpuFsw,
            o if o == f + 4 => Region::FpuFtwx,
            o if o == f + 5 => Region::FpuPad1,
            o if o < f + 8 => Region::FpuLastOpcode,
            o if o < f + 16 => Region::FpuLastIp,
            o if o < FPU_XMM => Region::FpuLastDp,
            o if o < FPU_MXCSR => Region::FpuXmm(((o - FPU_XMM) / 16) as u8),
            o if o < FPU_PAD2 => Region::FpuMxcsr,
            o if o < KVM_FPU_SIZE => Region::FpuPad2,
            _ => Region::BeyondFpu,
        }
    }

    /// The byte range of an XSAVE-image region (`None` for the open-ended tail and for the
    /// other buffers' fields).
    pub fn xsave_span(self) -> Option<(usize, usize)> {
        match self {
            Region::St(i) => Some((ST + 16 * i as usize, ST + 16 * (i as usize + 1))),
            Region::Xmm(i) => Some((XMM + 16 * i as usize, XMM + 16 * (i as usize + 1))),
            Region::Component { offset, size, .. } => Some((offset as usize, (offset + size) as usize)),
            r => FIXED.iter().find(|(_, _, f)| *f == r).map(|&(s, e, _)| (s, e)),
        }
    }

    /// Every XSAVE-image region of a host with `components`, in offset order: the legacy
    /// area, the header, then the components.
    pub fn xsave_table(components: &[Component]) -> Vec<Region> {
        let mut v: Vec<Region> = FIXED.iter().filter(|(s, _, _)| *s < ST).map(|&(_, _, r)| r).collect();
        v.extend((0..8).map(Region::St));
        v.extend((0..16).map(Region::Xmm));
        v.extend(FIXED.iter().filter(|(s, _, _)| *s >= PAD).map(|&(_, _, r)| r));
        let mut comps: Vec<&Component> = components.iter().collect();
        comps.sort_by_key(|c| c.offset);
        v.extend(comps.iter().map(|c| Region::Component { bit: c.bit, offset: c.offset, size: c.size }));
        v
    }

    /// The label verdicts, titles and reports print.
    pub fn label(self) -> String {
        match self {
            Region::Fcw => "FCW".into(),
            Region::Fsw => "FSW".into(),
            Region::Ftw => "FTW".into(),
            Region::FtwReserved => "FTW reserved byte".into(),
            Region::Fop => "FOP".into(),
            Region::Fip => "FIP".into(),
            Region::Fdp => "FDP".into(),
            Region::Mxcsr => "MXCSR".into(),
            Region::MxcsrMask => "MXCSR_MASK".into(),
            Region::St(i) => format!("ST{i}"),
            Region::Xmm(i) => format!("XMM{i}"),
            Region::LegacyPadding => "legacy padding".into(),
            Region::SwReserved => "sw_reserved".into(),
            Region::XstateBv => "XSTATE_BV".into(),
            Region::XcompBv => "XCOMP_BV".into(),
            Region::HeaderReserved => "header reserved".into(),
            Region::Component { bit, offset, .. } => format!("{} (bit {bit}) @{offset}", xfeatures::name(bit)),
            Region::BeyondComponents => "beyond components".into(),
            Region::CpuidNent => "nent".into(),
            Region::CpuidEntry { entry, field } => format!("entry {entry} {}", field.name()),
            Region::NrXcrs => "nr_xcrs".into(),
            Region::XcrsFlags => "flags".into(),
            Region::XcrIndex(k) => format!("xcrs[{k}].xcr"),
            Region::XcrReserved(k) => format!("xcrs[{k}].reserved"),
            Region::XcrValue(k) => format!("xcrs[{k}].value"),
            Region::XcrsPadding => "padding".into(),
            Region::FpuFpr(k) => format!("kvm_fpu.fpr[{k}] (ST{k})"),
            Region::FpuFcw => "kvm_fpu.fcw".into(),
            Region::FpuFsw => "kvm_fpu.fsw".into(),
            Region::FpuFtwx => "kvm_fpu.ftwx".into(),
            Region::FpuPad1 => "kvm_fpu.pad1".into(),
            Region::FpuLastOpcode => "kvm_fpu.last_opcode".into(),
            Region::FpuLastIp => "kvm_fpu.last_ip".into(),
            Region::FpuLastDp => "kvm_fpu.last_dp".into(),
            Region::FpuXmm(k) => format!("kvm_fpu.xmm[{k}]"),
            Region::FpuMxcsr => "kvm_fpu.mxcsr".into(),
            Region::FpuPad2 => "kvm_fpu.pad2".into(),
            Region::BeyondFpu => "beyond kvm_fpu".into(),
        }
    }

    /// Part of the x87 state of an XSAVE image: FCW..FDP (FTW's reserved byte included) and ST0..7.
    pub fn is_x87(self) -> bool {
        use Region::*;
        matches!(self, Fcw | Fsw | Ftw | FtwReserved | Fop | Fip | Fdp | St(_))
    }

    /// The PKRU component.
    pub fn is_pkru(self) -> bool {
        matches!(self, Region::Component { bit, .. } if bit == xfeatures::PKRU_BIT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The labels the rig printed before the table existed (region_name, fpu_region_name and
    /// the diff's CPUID/XCRS field names), frozen.
    #[test]
    fn labels_are_frozen() {
        let comps =
            [Component { bit: 2, offset: 576, size: 256, align64: false }, Component { bit: 9, offset: 2688, size: 8, align64: false }];
        let x = |o| Region::xsave_at(&comps, o).label();
        let want = [
            (0, "FCW"),
            (3, "FSW"),
            (4, "FTW"),
            (5, "FTW reserved byte"),
            (7, "FOP"),
            (15, "FIP"),
            (23, "FDP"),
            (24, "MXCSR"),
            (31, "MXCSR_MASK"),
            (32, "ST0"),
            (159, "ST7"),
            (160, "XMM0"),
            (415, "XMM15"),
            (416, "legacy padding"),
            (463, "legacy padding"),
            (464, "sw_reserved"),
            (511, "sw_reserved"),
            (512, "XSTATE_BV"),
            (520, "XCOMP_BV"),
            (528, "header reserved"),
            (575, "header reserved"),
            (576, "YMM_Hi128 (bit 2) @576"),
            (2688, "PKRU (bit 9) @2688"),
            (900, "beyond components"),
        ];
        for (o, l) in want {
            assert_eq!(x(o), l, "XSAVE byte {o}");
        }
        let c = |o| Region::at(Buffer::Cpuid2, &[], o).label();
        assert_eq!(
            (c(0), c(4), c(4 + 40 + 12), c(4 + 80 + 28), c(4 + 80 + 39)),
            ("nent".into(), "entry 0 function".into(), "entry 1 EAX".into(), "entry 2 padding".into(), "entry 2 padding".into())
        );
        let x = |o| Region::at(Buffer::Xcrs, &[], o).label();
        let want = [
            (0, "nr_xcrs"),
            (4, "flags"),
            (8, "xcrs[0].xcr"),
            (12, "xcrs[0].reserved"),
            (16, "xcrs[0].value"),
            (23, "xcrs[0].value"),
            (263, "xcrs[15].value"),
            (264, "padding"),
            (391, "padding"),
        ];
        for (o, l) in want {
            assert_eq!(x(o), l, "kvm_xcrs byte {o}");
        }
        let f = |o| Region::at(Buffer::Fpu, &[], o).label();
        let want = [
            (0, "kvm_fpu.fpr[0] (ST0)"),
            (127, "kvm_fpu.fpr[7] (ST7)"),
            (128, "kvm_fpu.fcw"),
            (130, "kvm_fpu.fsw"),
            (132, "kvm_fpu.ftwx"),
            (133, "kvm_fpu.pad1"),
            (134, "kvm_fpu.last_opcode"),
            (136, "kvm_fpu.last_ip"),
            (144, "kvm_fpu.last_dp"),
            (152, "kvm_fpu.xmm[0]"),
            (407, "kvm_fpu.xmm[15]"),
            (408, "kvm_fpu.mxcsr"),
            (412, "kvm_fpu.pad2"),
            (416, "beyond kvm_fpu"),
        ];
        for (o, l) in want {
            assert_eq!(f(o), l, "kvm_fpu byte {o}");
        }
    }

    #[test]
    fn table_spans_tile_the_legacy_area_and_header() {
        let comps = [Component { bit: 2, offset: 576, size: 256, align64: false }];
        let t = Region::xsave_table(&comps);
        let mut at = 0;
        for r in &t {
            let (s, e) = r.xsave_span().unwrap_or_else(|| panic!("{r:?} has a span"));
            assert_eq!(s, at, "{r:?} starts where the previous ends");
            assert_eq!(Region::xsave_at(&comps, s), *r);
            at = e;
        }
        assert_eq!(at, 832);
    }
}
