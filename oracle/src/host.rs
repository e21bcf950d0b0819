//! Host facts: everything the contract leaves to the host (layout, supported features, MXCSR
//! mask, ...). They are inputs to the model, measured by the runner's probe or loaded from a
//! saved fingerprint; nothing here assumes one vendor's layout.

pub use crate::abi::Component;
use crate::abi::{self, CpuidEntry};
use crate::hexnum::{u32_hex, u64_hex};
use crate::xfeatures;
use serde::{Deserialize, Serialize};

/// A named, measured departure of a host from every upstream contract version.
///
/// The oracle models a quirk only when asked ([`crate::ModelConfig::quirks`]); every report
/// names the quirks it modelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Quirk {
    /// `KVM_SET_CPUID2` succeeds but the stored table is rewritten: for every subleaf i in
    /// 0..=63 the first entry matching (0xD, i) gets the host's values (0xD.0 EAX/EDX =
    /// supported XCR0, so guest XCR0 cannot be narrowed), leaf 1 ECX/EDX and leaf 7 are
    /// replaced by host-derived values, a table with leaf 1 but no 0xD.0 gets the host's
    /// 0xD subleaves appended, and some leaves ([`HostFacts::pvm_dropped_leaves`]) are
    /// dropped. Seen on `kvm_pvm` builds.
    #[serde(rename = "pvm-cpuid-rewrite")]
    PvmCpuidRewrite,
    /// While the guest runs, hardware XCR0 stays the host's whatever the guest's XCR0 is (and
    /// CR4.OSXSAVE is accepted without XSAVE in guest CPUID): guest code can use AVX with guest
    /// XCR0 = 1, and its XSAVE covers the host's XCR0. Seen on `kvm_pvm` (spec §8.4); the probe
    /// finds it by running a VMOVDQU with guest XCR0 = FP.
    #[serde(rename = "pvm-hw-xcr0")]
    PvmHwXcr0,
    /// Today's `KVM_GET_FPU`/`KVM_SET_FPU` (every kernel measured, 5.10 to 7.3): SET_FPU
    /// writes the legacy area but leaves XSTATE_BV unchanged, GET_FPU copies the legacy area
    /// whatever XSTATE_BV says, GET_FPU never fills `mxcsr` and SET_FPU ignores it. Not a host
    /// quirk the probe assumes: the departure from the contract is a finding
    /// (`docs/findings/kvm-set-fpu-xstate-bv.md`); this models it so detection tests run
    /// without KVM (`--backend model:V3+kvm-fpu-legacy`).
    #[serde(rename = "kvm-fpu-legacy")]
    KvmFpuLegacy,
    /// QEMU's TCG (the lab's processor, a nested guest's too): its XSAVE never stores FOP, so
    /// after a guest run the saved FOP is whatever the kernel's save area held before: the
    /// value the last `KVM_SET_XSAVE` with FP (or `KVM_SET_FPU`) wrote, else 0. Real
    /// processors store FOP (or zero it, AMD without FSW.ES). The probe finds it by a run that
    /// clears FOP (FNINIT) and keeps x87 in use (FLDCW) after a SET with a non-zero FOP.
    #[serde(rename = "tcg-xsave-fop")]
    TcgXsaveFop,
    /// QEMU's TCG: an unmasked x87 exception left pending by a load (FSW.ES from the image) is
    /// not delivered on the next waiting x87 instruction (FLDCW runs instead of raising #MF).
    /// The probe finds it by a SET with FSW.IE|ES and FCW 0, and a guest FLDCW that runs.
    #[serde(rename = "tcg-x87-no-mf")]
    TcgX87NoMf,
}

impl Quirk {
    /// Every quirk the rig knows.
    pub const ALL: &'static [Quirk] =
        &[Quirk::PvmCpuidRewrite, Quirk::PvmHwXcr0, Quirk::KvmFpuLegacy, Quirk::TcgXsaveFop, Quirk::TcgX87NoMf];

    /// Stable name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Quirk::PvmCpuidRewrite => "pvm-cpuid-rewrite",
            Quirk::PvmHwXcr0 => "pvm-hw-xcr0",
            Quirk::KvmFpuLegacy => "kvm-fpu-legacy",
            Quirk::TcgXsaveFop => "tcg-xsave-fop",
            Quirk::TcgX87NoMf => "tcg-x87-no-mf",
        }
    }

    /// Parse a stable name.
    pub fn from_name(s: &str) -> Option<Quirk> {
        Quirk::ALL.iter().copied().find(|q| q.name() == s)
    }
}

/// The host facts the model needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    /// `kvm_caps.supported_xcr0` (`KVM_GET_DEVICE_ATTR(KVM_X86_XCOMP_GUEST_SUPP)`).
    #[serde(with = "u64_hex")]
    pub supported_xcr0: u64,
    /// The host's user XCR0 (`fpu_user_cfg.max_features`, `ARCH_GET_XCOMP_SUPP`): written by
    /// GET into the first sw_reserved word.
    #[serde(with = "u64_hex")]
    pub host_xcr0: u64,
    /// Features this process may expose to a guest (`ARCH_GET_XCOMP_GUEST_PERM`): gates the
    /// dynamic XTILE_DATA feature.
    #[serde(with = "u64_hex")]
    pub guest_perm: u64,
    /// MXCSR bits the host accepts (`mxcsr_feature_mask`).
    #[serde(with = "u32_hex")]
    pub mxcsr_feature_mask: u32,
    /// MXCSR_MASK of the host's FXSAVE image (init value reported by GET).
    #[serde(with = "u32_hex")]
    pub init_mxcsr_mask: u32,
    /// Extended components (bit >= 2) of the host, in any order.
    pub components: Vec<Component>,
    /// The host's raw CPUID.0xD subleaves (as the CPUID instruction reports them).
    pub host_cpuid_0xd: Vec<CpuidEntry>,
    /// `KVM_GET_SUPPORTED_CPUID`: the base table a case can ask for.
    pub supported_cpuid: Vec<CpuidEntry>,
    /// Quirks the probe detected on this host (modelled only when asked).
    #[serde(default)]
    pub quirks: Vec<Quirk>,
    /// `KVM_GET_CPUID2` leaves the caller's `nent` on success (kernels before 6.5, commit
    /// ab322c43cce9); 6.5+ writes back the stored count. Measured by the probe.
    #[serde(default)]
    pub get_cpuid2_keeps_nent: bool,
    /// The stored CPUID.0x12.1 (SGX XFRM) is masked by guest_supported_xcr0 with FP|SSE forced
    /// on (seen on 6.1; not on 5.10, 6.12 or 7.x). Measured by the probe.
    #[serde(default)]
    pub cpuid_sgx_xfrm_masked: bool,
    /// Under [`Quirk::PvmCpuidRewrite`]: leaves the host silently drops from a
    /// `KVM_SET_CPUID2` table (measured by the probe, set and read back).
    #[serde(default)]
    pub pvm_dropped_leaves: Vec<u32>,
}

impl HostFacts {
    /// Whether the host is AMD (KVM on SVM): `KVM_GET_SUPPORTED_CPUID` leaf 0 passes the host's
    /// vendor string through ("AuthenticAMD").
    pub fn vendor_amd(&self) -> bool {
        self.supported_cpuid
            .iter()
            .find(|e| e.function == 0 && e.index == 0)
            .is_some_and(|e| [e.ebx, e.edx, e.ecx] == [0x6874_7541, 0x6974_6e65, 0x444d_4163])
    }

    /// The default user xfeatures of a guest fpstate: host user XCR0 minus dynamic features.
    pub fn default_user_xfeatures(&self) -> u64 {
        self.host_xcr0 & !xfeatures::USER_DYNAMIC
    }

    /// Extended components of `mask` in increasing standard offset (the kernel's copy order).
    pub fn components_in_order(&self, mask: u64) -> Vec<&Component> {
        abi::components_in_order(&self.components, mask)
    }

    /// The component for xfeature `bit`, if the host has one.
    pub fn component(&self, bit: u8) -> Option<&Component> {
        self.components.iter().find(|c| c.bit == bit)
    }

    /// A synthetic host with a given XCR0 and Intel's architectural offsets (for tests and
    /// for model-only campaigns without a probe).
    pub fn synthetic(xcr0: u64, mxcsr_mask: u32) -> HostFacts {
        const INTEL: &[(u8, u32, u32)] = &[
            (2, 576, 256),
            (3, 960, 64),
            (4, 1024, 64),
            (5, 1088, 64),
            (6, 1152, 512),
            (7, 1664, 1024),
            (9, 2688, 8),
            (17, 2752, 64),
            (18, 2816, 8192),
        ];
        let components: Vec<Component> = INTEL
            .iter()
            .filter(|(b, _, _)| xcr0 & (1u64 << b) != 0)
            .map(|&(bit, offset, size)| Component { bit, offset, size, align64: bit >= 17 })
            .collect();
        let supported = xcr0 & xfeatures::KVM_SUPPORTED_XCR0;
        let std_size = abi::xstate_required_size(&components, supported, false);
        let host_cpuid_0xd = std::iter::once(CpuidEntry::new(0xd, 0, 1, [xcr0 as u32, std_size, std_size, (xcr0 >> 32) as u32]))
            .chain(std::iter::once(CpuidEntry::new(0xd, 1, 1, [0xf, 0, 0, 0])))
            .chain(components.iter().map(|c| CpuidEntry::new(0xd, c.bit as u32, 1, [c.size, c.offset, if c.align64 { 2 } else { 0 }, 0])))
            .collect::<Vec<_>>();
        let filtered = supported & !xfeatures::XTILE;
        let fsize = abi::xstate_required_size(&components, filtered, false);
        let mut supported_cpuid = vec![
            CpuidEntry::new(0, 0, 0, [0xd, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            CpuidEntry::new(1, 0, 0, [0x000a_0671, 0x0000_0800, 0x8000_0000 | (1 << 26) | (1 << 28), 0x0789_fbff]),
            CpuidEntry::new(7, 0, 1, [0, 0, 0, 0]),
            CpuidEntry::new(0xd, 0, 1, [filtered as u32, fsize, fsize, (filtered >> 32) as u32]),
            CpuidEntry::new(0xd, 1, 1, [0x7, 0, 0, 0]),
            CpuidEntry::new(0x8000_0001, 0, 0, [0, 0, 0x121, 0x2c10_0800]),
        ];
        supported_cpuid.extend(
            components
                .iter()
                .filter(|c| filtered & (1u64 << c.bit) != 0)
                .map(|c| CpuidEntry::new(0xd, c.bit as u32, 1, [c.size, c.offset, 0, 0])),
        );
        HostFacts {
            supported_xcr0: supported,
            host_xcr0: xcr0,
            guest_perm: xcr0 & !xfeatures::USER_DYNAMIC,
            mxcsr_feature_mask: mxcsr_mask,
            init_mxcsr_mask: mxcsr_mask,
            components,
            host_cpuid_0xd,
            supported_cpuid,
            quirks: Vec::new(),
            get_cpuid2_keeps_nent: false,
            cpuid_sgx_xfrm_masked: false,
            pvm_dropped_leaves: Vec::new(),
        }
    }
}
