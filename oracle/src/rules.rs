//! Stable rule ids. Every decision the model takes names the rule (spec section) behind it,
//! so coverage, minimization and reports can say which rule decided an outcome.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! rules {
    ($($name:ident = $id:literal, $spec:literal, $desc:literal;)*) => {
        /// A contract rule.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Rule { $(#[doc = $desc] $name,)* }
        impl Rule {
            /// Every rule, in declaration order.
            pub const ALL: &'static [Rule] = &[$(Rule::$name,)*];
            /// Stable id, e.g. `set.reject.unsupported`.
            pub fn id(self) -> &'static str { match self { $(Rule::$name => $id,)* } }
            /// Spec section.
            pub fn spec(self) -> &'static str { match self { $(Rule::$name => $spec,)* } }
            /// One-line description.
            pub fn describe(self) -> &'static str { match self { $(Rule::$name => $desc,)* } }
            /// Look up a stable id.
            pub fn from_id(s: &str) -> Option<Rule> { match s { $($id => Some(Rule::$name),)* _ => None } }
        }
    };
}

rules! {
    VcpuFresh = "vcpu.fresh", "§3.3", "fresh vCPU: kbv 0, FCW 0x37F, MXCSR 0x1F80, PKRU 0, XCR0 1, no CPUID";
    CapXsave2Size = "cap.xsave2.size", "§1.2", "KVM_CAP_XSAVE2 = max(4096, standard size of permission-filtered supported XCR0)";
    CapXsave2Absent = "cap.xsave2.absent", "§9", "kernels before 5.17 report 0 for KVM_CAP_XSAVE2";
    GetXsaveTooBig = "get.xsave.uabi_too_big", "§3.1", "KVM_GET_XSAVE refuses with EINVAL once uabi_size > 4096";
    GetXsave2Absent = "get.xsave2.absent", "§9", "kernels before 5.17 have no KVM_GET_XSAVE2 (EINVAL)";
    GetMaskV3 = "get.mask.v3", "§3.2", "reported XSTATE_BV = kbv & user_xfeatures & (guest_supported_xcr0 | FP|SSE)";
    GetMaskUser = "get.mask.user_xfeatures", "§9 V1/V2", "reported XSTATE_BV = kbv & user_xfeatures";
    GetMaskV0 = "get.mask.v0", "§9 V0", "reported XSTATE_BV = kbv & (guest_supported_xcr0 | FP|SSE)";
    GetFpReported = "get.fp.reported", "§3.2", "FP reported: bytes 0..23 and ST 32..159 from the vCPU";
    GetFpInit = "get.fp.init", "§3.2", "FP not reported: FCW 0x37F, other x87 fields and ST zero";
    GetMxcsrKernel = "get.mxcsr.kernel", "§3.2", "SSE or YMM reported: MXCSR and MXCSR_MASK from the vCPU";
    GetMxcsrInit = "get.mxcsr.init", "§3.2", "neither SSE nor YMM reported: MXCSR 0x1F80, MXCSR_MASK = host mask";
    GetSseReported = "get.sse.reported", "§3.2", "SSE reported: XMM 160..415 from the vCPU";
    GetSseZero = "get.sse.zero", "§3.2", "SSE not reported: XMM zero";
    GetPaddingZero = "get.padding.zero", "§3.2", "bytes 416..463 zero";
    GetSwReserved = "get.sw_reserved.host_xcr0", "§2.3", "bytes 464..471 = host user XCR0, 472..511 zero";
    GetHeaderZero = "get.header.zero", "§3.2", "XCOMP_BV and reserved header bytes zero";
    GetComponentCopied = "get.component.copied", "§3.2", "reported extended component copied at the host's standard offset";
    GetComponentZero = "get.component.zero", "§3.2", "unreported components, gaps and the tail zero-filled";
    GetPkruFromVcpu = "get.pkru.upkru", "§3.2", "reported PKRU = vcpu->arch.pkru, pad bytes zero";
    GetV0LegacyRaw = "get.v0.legacy_raw", "§9 V0", "V0: the 512 legacy bytes as last stored, whatever XSTATE_BV";
    GetHiddenRevealed = "get.hidden.revealed", "§3.2", "state accepted while masked is reported once CPUID widens the mask";
    SetRejectUnsupported = "set.reject.unsupported", "§4.3", "XSTATE_BV outside supported_xcr0: EINVAL";
    SetRejectUserXfeatures = "set.reject.user_xfeatures", "§4.4a", "XSTATE_BV outside user_xfeatures: EINVAL";
    SetRejectXcompBv = "set.reject.xcomp_bv", "§4.4b", "XCOMP_BV non-zero: EINVAL";
    SetRejectHdrReserved = "set.reject.hdr_reserved", "§4.4c", "reserved header byte non-zero: EINVAL";
    SetRejectMxcsr = "set.reject.mxcsr", "§4.5", "FP/SSE/YMM present and MXCSR outside mxcsr_feature_mask: EINVAL";
    SetMxcsrUnchecked = "set.mxcsr.unchecked", "§4.5", "no FP/SSE/YMM: MXCSR not validated";
    SetV0RejectMxcsr = "set.v0.reject.mxcsr", "§9 V0", "V0: MXCSR always validated";
    SetAccept = "set.accept", "§4.9", "SET accepted: permissive load (guest CPUID not consulted)";
    SetFpCopied = "set.fp.copied", "§4.6", "FP set: bytes 0..159 stored (incl. MXCSR/MXCSR_MASK)";
    SetMxcsrWithoutFp = "set.mxcsr.without_fp", "§4.5", "SSE or YMM without FP: MXCSR and MXCSR_MASK stored";
    SetSseCopied = "set.sse.copied", "§4.6", "SSE set: XMM stored";
    SetComponentCopied = "set.component.copied", "§4.6", "extended component stored from the host's standard offset";
    SetPkruUpdated = "set.pkru.updated", "§4.7", "PKRU set: vcpu->arch.pkru = the buffer's PKRU";
    SetPkruKept = "set.pkru.kept", "§4.7", "PKRU clear: vcpu->arch.pkru unchanged";
    SetKbvReplaced = "set.kbv.replaced", "§4.8", "kbv = XSTATE_BV; clear components keep stale bytes but read as init";
    SetV0LegacyRaw = "set.v0.legacy_raw", "§9 V0", "V0: the 512 legacy bytes stored raw, header not validated";
    XcrsGet = "xcrs.get", "§5.1", "GET_XCRS: nr_xcrs 1, xcrs[0] = {0, XCR0}, all else zero";
    XcrsRejectNr = "xcrs.reject.nr", "§5.2", "nr_xcrs > 16: EINVAL";
    XcrsRejectFlags = "xcrs.reject.flags", "§5.2", "flags non-zero: EINVAL";
    XcrsNoXcr0 = "xcrs.no_xcr0", "§5.2", "no xcr==0 entry among the first nr_xcrs: success, no-op";
    XcrsFirstXcr0 = "xcrs.first_xcr0", "§5.2", "the first xcr==0 entry is applied, the rest ignored";
    Xcr0RejectFp = "xcr0.reject.fp", "§5.3", "XCR0 without FP: EINVAL";
    Xcr0RejectYmmSse = "xcr0.reject.ymm_without_sse", "§5.3", "XCR0 with YMM but not SSE: EINVAL";
    Xcr0RejectUnsupported = "xcr0.reject.unsupported", "§5.3", "XCR0 outside guest_supported_xcr0 | FP: EINVAL";
    Xcr0RejectMpx = "xcr0.reject.mpx", "§5.3", "exactly one MPX bit: EINVAL";
    Xcr0RejectAvx512 = "xcr0.reject.avx512", "§5.3", "AVX-512 without YMM or not all three: EINVAL";
    Xcr0RejectAmx = "xcr0.reject.amx", "§5.3", "exactly one AMX bit: EINVAL";
    Xcr0Accept = "xcr0.accept", "§5.3", "XCR0 stored";
    Xcr0V2aUserXfeatures = "xcr0.v2a.user_xfeatures", "§9 V2a", "V2a: XCR0 validated against user_xfeatures | FP";
    CpuidRejectE2big = "cpuid.reject.e2big", "§6.2", "nent > 256: E2BIG";
    CpuidRejectVaddr = "cpuid.reject.vaddr", "§6.2", "0x80000008 EAX[15:8] not 0, 48 or 57: EINVAL";
    CpuidRejectAmxPerm = "cpuid.reject.amx_perm", "§6.2", "0xD.0 exposes XTILE_DATA without guest permission: EPERM";
    CpuidAmxEnabled = "cpuid.amx.enabled", "§6.2", "XTILE_DATA exposed with permission: uabi_size grows";
    CpuidAccept = "cpuid.accept", "§6.2", "table stored as given";
    CpuidGsxFirstMatch = "cpuid.gsx.first_match", "§6.1", "guest_supported_xcr0 from the first matching 0xD.0 entry & supported_xcr0";
    CpuidGsxNone = "cpuid.gsx.none", "§6.1", "no 0xD.0 entry: guest_supported_xcr0 = 0";
    CpuidV2UserXfeatures = "cpuid.v2.user_xfeatures", "§9 V2", "V2a/V2b: user_xfeatures := guest_supported_xcr0 (V2b: | FP|SSE)";
    CpuidGetE2big = "cpuid.get.e2big", "§6", "GET_CPUID2 with nent below the stored count: E2BIG";
    CpuidGetTable = "cpuid.get.table", "§6.1", "GET_CPUID2 returns the stored table in order, nent = count";
    CpuidGetCallerNent = "cpuid.get.caller_nent", "§6 (pre-6.5)", "before 6.5, a successful GET_CPUID2 leaves the caller's nent; entries beyond the table untouched";
    CpuidSgxXfrm = "cpuid.runtime.sgx_xfrm", "§6.3 (6.1)", "CPUID.0x12.1 ECX/EDX masked by guest_supported_xcr0, FP|SSE forced on";
    CpuidRuntimeOsxsave = "cpuid.runtime.osxsave", "§6.3", "leaf 1 ECX.OSXSAVE follows CR4.OSXSAVE (0)";
    CpuidRuntimeApic = "cpuid.runtime.apic", "§6.3", "leaf 1 EDX.APIC follows APIC-base enable";
    CpuidRuntimeOspke = "cpuid.runtime.ospke", "§6.3", "leaf 7 ECX.OSPKE follows CR4.PKE (0)";
    CpuidRuntimeXsaveSize = "cpuid.runtime.xsave_size", "§6.3", "0xD.0 EBX = standard size of XCR0";
    CpuidRuntimeXsavecSize = "cpuid.runtime.xsavec_size", "§6.3", "0xD.1 EBX = compacted size of XCR0|XSS when XSAVEC/XSAVES";
    QuirkPvmRewrite = "quirk.pvm.rewrite", "§8", "quirk pvm-cpuid-rewrite: first (0xD, i) matches get host values";
    QuirkPvmInject = "quirk.pvm.inject", "§8", "quirk pvm-cpuid-rewrite: leaf 1 without 0xD.0 gets host 0xD subleaves appended";
    QuirkPvmDrop = "quirk.pvm.drop", "§8", "quirk pvm-cpuid-rewrite: leaves the host does not keep are dropped from the table";
    QuirkPvmHostOwned = "quirk.pvm.host_owned", "§8", "quirk pvm-cpuid-rewrite: leaf 1 ECX/EDX and leaf 7 are host-derived (not predicted)";
    RunEntryLoad = "run.entry.load", "§7 R1", "KVM_RUN loads the vCPU image: components with their XSTATE_BV bit clear enter as init, MXCSR as stored";
    RunEnd = "run.end", "§7 R2", "a straight-line guest program ends with its MMIO write (KVM_EXIT_MMIO)";
    RunFault = "run.fault", "§7 R2", "an action the vCPU cannot execute (#UD: feature not in hardware XCR0 or CR4; #GP: bad MXCSR) ends the run in a shutdown";
    RunCr4Osxsave = "run.cr4.osxsave", "§7 R3", "CR4.OSXSAVE needs XSAVE in guest CPUID (else refused; VEX and XSAVE then fault)";
    RunHwXcr0Guest = "run.hw_xcr0.guest", "§7 R3", "while the guest runs, hardware XCR0 is the guest's XCR0";
    RunSaved = "run.saved", "§7 R4", "after the run the vCPU image holds the guest's registers; XSTATE_BV bit set for every component not at its init value";
    RunXinuseFree = "run.xinuse.free", "§7 R4", "a component at its init value may be saved with its XSTATE_BV bit set or clear (XINUSE is the processor's choice, SDM 13.6)";
    RunMxcsrMaskHw = "run.mxcsr_mask.hw", "§7 R5", "after a hardware save MXCSR_MASK is the processor's mask";
    RunReservedZero = "run.reserved.hw", "§7 R5", "after a hardware save the FTW reserved byte and ST reserved bytes are the processor's (zero or unchanged)";
    RunFipCanonical = "run.fip.canonical", "§7 R5", "after a hardware save FIP may be canonicalised to the linear-address width (sign-extended from bit 47 or 56)";
    RunSetupLongMode = "run.setup.long_mode", "§7 R3", "the rig's long-mode set-up (EFER.LME) is refused with EINVAL unless the guest CPUID has LM (0x80000001 EDX bit 29)";
    RunFcwReserved = "run.fcw.reserved", "§7 R5", "after a hardware load FCW's reserved bits read as loaded or normalised (7, 13..15 zero; 6 one)";
    RunX87PtrEs = "run.x87_ptr.zero", "§7 R5", "after a hardware load FOP, FIP and FDP may be saved as zero (AMD saves them only with FSW.ES; QEMU's TCG never saves them)";
    RunShutdownInit = "run.shutdown.init", "§7 R2", "after a shutdown AMD (SVM) resets the vCPU with INIT (CR4 0: CPUID OSXSAVE/OSPKE clear until the next set-up), Intel does not: those bits are the vendor's choice";
    RunFswDerived = "run.fsw.derived", "§7 R5", "after a hardware load FSW.ES and FSW.B are recomputed from the exception flags and masks";
    RunEntryMxcsr = "run.entry.mxcsr", "§7 R1", "with neither SSE nor YMM in XSTATE_BV, the kernel's compacted restore initialises MXCSR (a standard XRSTOR loads the stored value)";
    RunCpuidFrozen = "run.cpuid.frozen", "§7 R6", "after the first KVM_RUN, KVM_SET_CPUID2 succeeds only with the identical table (EINVAL otherwise)";
    RunV0Cr4Rsvd = "run.v0.cr4_rsvd", "§9 V0, §7 R3", "V0 (5.10): KVM_SET_SREGS checks CR4.OSXSAVE/PKE against the CR4 bits the guest CPUID reserves as the last KVM_SET_CPUID2 computed them (cr4_guest_rsvd_bits); before any KVM_SET_CPUID2 none are reserved";
    RunSetupReload = "run.setup.reload", "§7 R3", "after a run that did not end at its marker the rig reloads its set-up's sregs (same CR4); KVM_SET_SREGS refuses a CR4 bit the guest CPUID now reserves (EINVAL, the vCPU does not run)";
    RunV0ShutdownRequeued = "run.v0.shutdown.requeued", "§9 V0, §7 R2", "V0 on AMD (5.10 shutdown_interception re-initialises only the VMCB): the event being delivered at a shutdown stays queued, so every later KVM_RUN re-injects it and shuts down before the program's first instruction";
    RunCr4Runtime = "run.cr4.cpuid", "§6.3", "after a run CPUID.1 ECX.OSXSAVE and CPUID.7 ECX.OSPKE follow the CR4 the rig set";
    GuestXsave = "guest.xsave", "§7 R7", "guest XSAVE: XSTATE_BV = in-use components & hardware XCR0, each component in RFBM written with its value";
    GuestXsaveFpSkipped = "guest.xsave.fp_init", "§7 R7", "guest XSAVE of x87 state not in use writes its init values or leaves memory unwritten";
    SetFpuStored = "set_fpu.stored", "§10.1", "KVM_SET_FPU stores FCW, FSW, the abridged FTW byte (the FXSAVE tag byte, no conversion; its reserved neighbour zeroed), FOP, FIP, FDP, fpr[8][16] and xmm[16][16] into the legacy area";
    SetFpuXfeatures = "set_fpu.xfeatures", "§10.1", "KVM_SET_FPU marks FP and SSE in use (XSTATE_BV |= FP|SSE, as the kernel's xfpregs_set): every later GET_FPU/GET_XSAVE reports the written state and KVM_RUN loads it";
    SetFpuMxcsr = "set_fpu.mxcsr", "§10.1", "KVM_SET_FPU stores MXCSR";
    SetFpuRejectMxcsr = "set_fpu.reject.mxcsr", "§10.1", "KVM_SET_FPU with MXCSR outside mxcsr_feature_mask: EINVAL (xfpregs_set)";
    GetFpuView = "get_fpu.view", "§10.2", "KVM_GET_FPU reports the x87/SSE state GET_XSAVE reports (init values for FP or SSE not in XSTATE_BV; MXCSR 0x1F80 without SSE and YMM), pad1 and pad2 zero";
    GetFpuMxcsr = "get_fpu.mxcsr", "§10.2", "KVM_GET_FPU reports MXCSR";
    QuirkFpuRaw = "quirk.fpu.raw", "§10.3", "quirk kvm-fpu-legacy (today's kernels): KVM_SET_FPU leaves XSTATE_BV unchanged, KVM_GET_FPU copies the stored legacy bytes whatever XSTATE_BV";
    QuirkFpuMxcsr = "quirk.fpu.mxcsr", "§10.3", "quirk kvm-fpu-legacy (today's kernels): KVM_GET_FPU returns mxcsr 0, KVM_SET_FPU ignores mxcsr";
    QuirkTcgXsaveFop = "quirk.tcg.xsave_fop", "§7 R5", "quirk tcg-xsave-fop (QEMU TCG): a hardware save leaves FOP as the save area held it (the last SET's FOP, else 0)";
    QuirkTcgX87NoMf = "quirk.tcg.x87_no_mf", "§7", "quirk tcg-x87-no-mf (QEMU TCG): a pending unmasked x87 exception loaded from the image does not fault the next FLDCW";
    QuirkPvmHwXcr0 = "quirk.pvm.hw_xcr0", "§8.4", "quirk pvm-hw-xcr0: hardware XCR0 stays the host's while the guest runs, whatever the guest's XCR0";
}

impl Serialize for Rule {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id())
    }
}

impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rule, D::Error> {
        let s = String::deserialize(d)?;
        Rule::from_id(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown rule id {s:?}")))
    }
}
