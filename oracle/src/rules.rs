//! Stable rule ids. Every decision the model takes names the rule (spec section) behind it,
//! so coverage, minimization and reports can say which rule decided an outcome.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! rules {
    ($($name:ident = $id:literal, $spec:literal, $desc:literal, $decider:literal;)*) => {
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
            /// The one function that decides the rule (`module::function` in this crate):
            /// from an id, the deciding code is one hop away (`oracle/tests/rules_table.rs`
            /// checks that the function names the rule).
            pub fn decided_by(self) -> &'static str { match self { $(Rule::$name => $decider,)* } }
            /// Look up a stable id.
            pub fn from_id(s: &str) -> Option<Rule> { match s { $($id => Some(Rule::$name),)* _ => None } }
        }
    };
}

rules! {
    VcpuFresh = "vcpu.fresh", "§3.3", "fresh vCPU: kbv 0, FCW 0x37F, MXCSR 0x1F80, PKRU 0, XCR0 1, no CPUID", "model::step";
    CapXsave2Size = "cap.xsave2.size", "§1.2", "KVM_CAP_XSAVE2 = max(4096, standard size of permission-filtered supported XCR0)", "model::xsave::check_xsave2";
    CapXsave2Absent = "cap.xsave2.absent", "§9", "kernels before 5.17 report 0 for KVM_CAP_XSAVE2", "model::xsave::check_xsave2";
    GetXsaveTooBig = "get.xsave.uabi_too_big", "§3.1", "KVM_GET_XSAVE refuses with EINVAL once uabi_size > 4096", "model::xsave::get_xsave";
    GetXsave2Absent = "get.xsave2.absent", "§9", "kernels before 5.17 have no KVM_GET_XSAVE2 (EINVAL)", "model::xsave::get_xsave";
    GetMaskV3 = "get.mask.v3", "§3.2", "reported XSTATE_BV = kbv & user_xfeatures & (guest_supported_xcr0 | FP|SSE)", "model::xsave::get_xsave";
    GetMaskUser = "get.mask.user_xfeatures", "§9 V1/V2", "reported XSTATE_BV = kbv & user_xfeatures", "model::xsave::get_xsave";
    GetMaskV0 = "get.mask.v0", "§9 V0", "reported XSTATE_BV = kbv & (guest_supported_xcr0 | FP|SSE)", "model::xsave::get_xsave";
    GetFpReported = "get.fp.reported", "§3.2", "FP reported: bytes 0..23 and ST 32..159 from the vCPU", "model::xsave::get_xsave";
    GetFpInit = "get.fp.init", "§3.2", "FP not reported: FCW 0x37F, other x87 fields and ST zero", "model::xsave::get_xsave";
    GetMxcsrKernel = "get.mxcsr.kernel", "§3.2", "SSE or YMM reported: MXCSR and MXCSR_MASK from the vCPU", "model::xsave::get_xsave";
    GetMxcsrInit = "get.mxcsr.init", "§3.2", "neither SSE nor YMM reported: MXCSR 0x1F80, MXCSR_MASK = host mask", "model::xsave::get_xsave";
    GetSseReported = "get.sse.reported", "§3.2", "SSE reported: XMM 160..415 from the vCPU", "model::xsave::get_xsave";
    GetSseZero = "get.sse.zero", "§3.2", "SSE not reported: XMM zero", "model::xsave::get_xsave";
    GetPaddingZero = "get.padding.zero", "§3.2", "bytes 416..463 zero", "model::xsave::get_xsave";
    GetSwReserved = "get.sw_reserved.host_xcr0", "§2.3", "bytes 464..471 = host user XCR0, 472..511 zero", "model::xsave::get_xsave";
    GetHeaderZero = "get.header.zero", "§3.2", "XCOMP_BV and reserved header bytes zero", "model::xsave::get_xsave";
    GetComponentCopied = "get.component.copied", "§3.2", "reported extended component copied at the host's standard offset", "model::xsave::get_xsave";
    GetComponentZero = "get.component.zero", "§3.2", "unreported components, gaps and the tail zero-filled", "model::xsave::get_xsave";
    GetPkruFromVcpu = "get.pkru.upkru", "§3.2", "reported PKRU = vcpu->arch.pkru, pad bytes zero", "model::xsave::get_xsave";
    GetV0LegacyRaw = "get.v0.legacy_raw", "§9 V0", "V0: the 512 legacy bytes as last stored, whatever XSTATE_BV", "model::xsave::get_xsave";
    GetHiddenRevealed = "get.hidden.revealed", "§3.2", "state accepted while masked is reported once CPUID widens the mask", "model::xsave::get_xsave";
    SetRejectUnsupported = "set.reject.unsupported", "§4.3", "XSTATE_BV outside supported_xcr0: EINVAL", "model::xsave::set_xsave";
    SetRejectUserXfeatures = "set.reject.user_xfeatures", "§4.4a", "XSTATE_BV outside user_xfeatures: EINVAL", "model::xsave::set_xsave";
    SetRejectXcompBv = "set.reject.xcomp_bv", "§4.4b", "XCOMP_BV non-zero: EINVAL", "model::xsave::set_xsave";
    SetRejectHdrReserved = "set.reject.hdr_reserved", "§4.4c", "reserved header byte non-zero: EINVAL", "model::xsave::set_xsave";
    SetRejectMxcsr = "set.reject.mxcsr", "§4.5", "FP/SSE/YMM present and MXCSR outside mxcsr_feature_mask: EINVAL", "model::xsave::set_xsave";
    SetMxcsrUnchecked = "set.mxcsr.unchecked", "§4.5", "no FP/SSE/YMM: MXCSR not validated", "model::xsave::set_xsave";
    SetV0RejectMxcsr = "set.v0.reject.mxcsr", "§9 V0", "V0: MXCSR always validated", "model::xsave::set_xsave";
    SetAccept = "set.accept", "§4.9", "SET accepted: permissive load (guest CPUID not consulted)", "model::xsave::accept";
    SetFpCopied = "set.fp.copied", "§4.6", "FP set: bytes 0..159 stored (incl. MXCSR/MXCSR_MASK)", "model::xsave::set_xsave";
    SetMxcsrWithoutFp = "set.mxcsr.without_fp", "§4.5", "SSE or YMM without FP: MXCSR and MXCSR_MASK stored", "model::xsave::set_xsave";
    SetSseCopied = "set.sse.copied", "§4.6", "SSE set: XMM stored", "model::xsave::set_xsave";
    SetComponentCopied = "set.component.copied", "§4.6", "extended component stored from the host's standard offset", "model::xsave::store_components";
    SetPkruUpdated = "set.pkru.updated", "§4.7", "PKRU set: vcpu->arch.pkru = the buffer's PKRU", "model::xsave::store_components";
    SetPkruKept = "set.pkru.kept", "§4.7", "PKRU clear: vcpu->arch.pkru unchanged", "model::xsave::store_components";
    SetKbvReplaced = "set.kbv.replaced", "§4.8", "kbv = XSTATE_BV; clear components keep stale bytes but read as init", "model::xsave::accept";
    SetV0LegacyRaw = "set.v0.legacy_raw", "§9 V0", "V0: the 512 legacy bytes stored raw, header not validated", "model::xsave::set_xsave";
    XcrsGet = "xcrs.get", "§5.1", "GET_XCRS: nr_xcrs 1, xcrs[0] = {0, XCR0}, all else zero", "model::xcrs::get_xcrs";
    XcrsRejectNr = "xcrs.reject.nr", "§5.2", "nr_xcrs > 16: EINVAL", "model::xcrs::set_xcrs";
    XcrsRejectFlags = "xcrs.reject.flags", "§5.2", "flags non-zero: EINVAL", "model::xcrs::set_xcrs";
    XcrsNoXcr0 = "xcrs.no_xcr0", "§5.2", "no xcr==0 entry among the first nr_xcrs: success, no-op", "model::xcrs::set_xcrs";
    XcrsFirstXcr0 = "xcrs.first_xcr0", "§5.2", "the first xcr==0 entry is applied, the rest ignored", "model::xcrs::set_xcrs";
    Xcr0RejectFp = "xcr0.reject.fp", "§5.3", "XCR0 without FP: EINVAL", "model::xcrs::check_xcr0";
    Xcr0RejectYmmSse = "xcr0.reject.ymm_without_sse", "§5.3", "XCR0 with YMM but not SSE: EINVAL", "model::xcrs::check_xcr0";
    Xcr0RejectUnsupported = "xcr0.reject.unsupported", "§5.3", "XCR0 outside guest_supported_xcr0 | FP: EINVAL", "model::xcrs::check_xcr0";
    Xcr0RejectMpx = "xcr0.reject.mpx", "§5.3", "exactly one MPX bit: EINVAL", "model::xcrs::check_xcr0";
    Xcr0RejectAvx512 = "xcr0.reject.avx512", "§5.3", "AVX-512 without YMM or not all three: EINVAL", "model::xcrs::check_xcr0";
    Xcr0RejectAmx = "xcr0.reject.amx", "§5.3", "exactly one AMX bit: EINVAL", "model::xcrs::check_xcr0";
    Xcr0Accept = "xcr0.accept", "§5.3", "XCR0 stored", "model::xcrs::set_xcrs";
    Xcr0V2aUserXfeatures = "xcr0.v2a.user_xfeatures", "§9 V2a", "V2a: XCR0 validated against user_xfeatures | FP", "model::xcrs::check_xcr0";
    CpuidRejectE2big = "cpuid.reject.e2big", "§6.2", "nent > 256: E2BIG", "model::cpuid::set_cpuid2";
    CpuidRejectVaddr = "cpuid.reject.vaddr", "§6.2", "0x80000008 EAX[15:8] not 0, 48 or 57: EINVAL", "model::cpuid::set_cpuid2";
    CpuidRejectAmxPerm = "cpuid.reject.amx_perm", "§6.2", "0xD.0 exposes XTILE_DATA without guest permission: EPERM", "model::cpuid::set_cpuid2";
    CpuidAmxEnabled = "cpuid.amx.enabled", "§6.2", "XTILE_DATA exposed with permission: uabi_size grows", "model::cpuid::set_cpuid2";
    CpuidAccept = "cpuid.accept", "§6.2", "table stored as given", "model::cpuid::set_cpuid2";
    CpuidGsxFirstMatch = "cpuid.gsx.first_match", "§6.1", "guest_supported_xcr0 from the first matching 0xD.0 entry & supported_xcr0", "model::cpuid::set_cpuid2";
    CpuidGsxNone = "cpuid.gsx.none", "§6.1", "no 0xD.0 entry: guest_supported_xcr0 = 0", "model::cpuid::set_cpuid2";
    CpuidV2UserXfeatures = "cpuid.v2.user_xfeatures", "§9 V2", "V2a/V2b: user_xfeatures := guest_supported_xcr0 (V2b: | FP|SSE)", "model::cpuid::set_cpuid2";
    CpuidGetE2big = "cpuid.get.e2big", "§6", "GET_CPUID2 with nent below the stored count: E2BIG", "model::cpuid::get_cpuid2";
    CpuidGetTable = "cpuid.get.table", "§6.1", "GET_CPUID2 returns the stored table in order, nent = count", "model::cpuid::get_cpuid2";
    CpuidGetCallerNent = "cpuid.get.caller_nent", "§6 (pre-6.5)", "before 6.5, a successful GET_CPUID2 leaves the caller's nent; entries beyond the table untouched", "model::cpuid::get_cpuid2";
    CpuidSgxXfrm = "cpuid.runtime.sgx_xfrm", "§6.3 (6.1)", "CPUID.0x12.1 ECX/EDX masked by guest_supported_xcr0, FP|SSE forced on", "model::cpuid::runtime_table";
    CpuidRuntimeOsxsave = "cpuid.runtime.osxsave", "§6.3", "leaf 1 ECX.OSXSAVE follows CR4.OSXSAVE (0)", "model::cpuid::runtime_table";
    CpuidRuntimeApic = "cpuid.runtime.apic", "§6.3", "leaf 1 EDX.APIC follows APIC-base enable", "model::cpuid::runtime_table";
    CpuidRuntimeOspke = "cpuid.runtime.ospke", "§6.3", "leaf 7 ECX.OSPKE follows CR4.PKE (0)", "model::cpuid::runtime_table";
    CpuidRuntimeXsaveSize = "cpuid.runtime.xsave_size", "§6.3", "0xD.0 EBX = standard size of XCR0", "model::cpuid::runtime_table";
    CpuidRuntimeXsavecSize = "cpuid.runtime.xsavec_size", "§6.3", "0xD.1 EBX = compacted size of XCR0|XSS when XSAVEC/XSAVES", "model::cpuid::runtime_table";
    QuirkPvmRewrite = "quirk.pvm.rewrite", "§8", "quirk pvm-cpuid-rewrite: first (0xD, i) matches get host values", "model::cpuid::pvm_rewrite";
    QuirkPvmInject = "quirk.pvm.inject", "§8", "quirk pvm-cpuid-rewrite: leaf 1 without 0xD.0 gets host 0xD subleaves appended", "model::cpuid::pvm_rewrite";
    QuirkPvmDrop = "quirk.pvm.drop", "§8", "quirk pvm-cpuid-rewrite: leaves the host does not keep are dropped from the table", "model::cpuid::pvm_rewrite";
    QuirkPvmHostOwned = "quirk.pvm.host_owned", "§8", "quirk pvm-cpuid-rewrite: leaf 1 ECX/EDX and leaf 7 are host-derived (not predicted)", "model::cpuid::pvm_rewrite";
    RunEntryLoad = "run.entry.load", "§7 R1", "KVM_RUN loads the vCPU image: components with their XSTATE_BV bit clear enter as init, MXCSR as stored", "model::run::run_guest";
    RunEnd = "run.end", "§7 R2", "a straight-line guest program ends with its MMIO write (KVM_EXIT_MMIO)", "model::run::run_guest";
    RunFault = "run.fault", "§7 R2", "an action the vCPU cannot execute (#UD: feature not in hardware XCR0 or CR4, UD2; #GP: bad MXCSR; #PF: a store to page 0) ends the run in a shutdown", "model::run::run_guest";
    RunTimeout = "run.timeout", "§7 R2", "a guest that never reaches its end (a `jmp .`) is stopped by the rig's watchdog: exit timeout whatever the bound, with the registers the actions before it wrote", "model::run::run_guest";
    RunCr4Osxsave = "run.cr4.osxsave", "§7 R3", "CR4.OSXSAVE needs XSAVE in guest CPUID (else refused; VEX and XSAVE then fault)", "model::run::cr4_accepted";
    RunHwXcr0Guest = "run.hw_xcr0.guest", "§7 R3", "while the guest runs, hardware XCR0 is the guest's XCR0", "model::run::run_guest";
    RunSaved = "run.saved", "§7 R4", "after the run the vCPU image holds the guest's registers; XSTATE_BV bit set for every component not at its init value", "model::run::save_after_run";
    RunXinuseFree = "run.xinuse.free", "§7 R4", "a component at its init value may be saved with its XSTATE_BV bit set or clear (XINUSE is the processor's choice, SDM 13.6)", "model::run::xinuse_choice";
    RunMxcsrMaskHw = "run.mxcsr_mask.hw", "§7 R5", "after a hardware save MXCSR_MASK is the processor's mask", "model::run::save_after_run";
    RunReservedZero = "run.reserved.hw", "§7 R5", "after a hardware save the FTW reserved byte and ST reserved bytes are the processor's (zero or unchanged)", "model::run::save_after_run";
    RunFipCanonical = "run.fip.canonical", "§7 R5", "after a hardware save FIP may be canonicalised to the linear-address width (sign-extended from bit 47 or 56)", "model::run::fip_choice";
    RunSetupLongMode = "run.setup.long_mode", "§7 R3", "the rig's long-mode set-up (EFER.LME) is refused with EINVAL unless the guest CPUID has LM (0x80000001 EDX bit 29)", "model::run::run_guest";
    RunFcwReserved = "run.fcw.reserved", "§7 R5", "after a hardware load FCW's reserved bits read as loaded or normalised (7, 13..15 zero; 6 one)", "model::run::x87_choices";
    RunFop11 = "run.fop.11bit", "§7 R5", "FOP is an 11-bit register: after a hardware load it is saved with bits 15..11 zero (Intel SDM Vol. 1 8.1.9)", "model::run::x87_choices";
    RunX87PtrEs = "run.x87_ptr.zero", "§7 R5", "after a hardware load FOP, FIP and FDP may be saved as zero (AMD saves them only with FSW.ES; QEMU's TCG never saves them)", "model::run::x87_choices";
    RunShutdownInit = "run.shutdown.init", "§7 R2", "after a shutdown AMD (SVM) resets the vCPU with INIT (CR4 0: CPUID OSXSAVE/OSPKE clear until the next set-up), Intel does not: those bits are the vendor's choice", "model::cpuid::get_cpuid2";
    RunFswDerived = "run.fsw.derived", "§7 R5", "after a hardware load FSW.ES and FSW.B are recomputed from the exception flags and masks", "model::run::fsw_choice";
    RunEntryMxcsr = "run.entry.mxcsr", "§7 R1", "with neither SSE nor YMM in XSTATE_BV, the kernel's compacted restore initialises MXCSR (a standard XRSTOR loads the stored value)", "model::run::run_guest";
    RunCpuidFrozen = "run.cpuid.frozen", "§7 R6", "after the first KVM_RUN, KVM_SET_CPUID2 succeeds only with the identical table (EINVAL otherwise)", "model::cpuid::set_cpuid2";
    RunV0Cr4Rsvd = "run.v0.cr4_rsvd", "§9 V0, §7 R3", "V0 (5.10): KVM_SET_SREGS checks CR4.OSXSAVE/PKE against the CR4 bits the guest CPUID reserves as the last KVM_SET_CPUID2 computed them (cr4_guest_rsvd_bits); before any KVM_SET_CPUID2 none are reserved", "model::run::cr4_accepted";
    RunSetupReload = "run.setup.reload", "§7 R3", "after a run that did not end at its marker the rig reloads its set-up's sregs (same CR4); KVM_SET_SREGS refuses a CR4 bit the guest CPUID now reserves (EINVAL, the vCPU does not run)", "model::run::run_guest";
    RunV0ShutdownRequeued = "run.v0.shutdown.requeued", "§9 V0, §7 R2", "V0 on AMD (5.10 shutdown_interception re-initialises only the VMCB): the event being delivered at a shutdown stays queued, so every later KVM_RUN re-injects it and shuts down before the program's first instruction", "model::run::run_guest";
    RunCr4Runtime = "run.cr4.cpuid", "§6.3", "after a run CPUID.1 ECX.OSXSAVE and CPUID.7 ECX.OSPKE follow the CR4 the rig set", "model::cpuid::runtime_table";
    GuestXsave = "guest.xsave", "§7 R7", "guest XSAVE: XSTATE_BV = in-use components & hardware XCR0, each component in RFBM written with its value", "model::run::run_guest";
    GuestXsaveFpSkipped = "guest.xsave.fp_init", "§7 R7", "guest XSAVE of x87 state not in use writes its init values or leaves memory unwritten", "model::run::guest_xsave";
    SetFpuStored = "set_fpu.stored", "§10.1", "KVM_SET_FPU stores FCW, FSW, the abridged FTW byte (the FXSAVE tag byte, no conversion; its reserved neighbour zeroed), FOP, FIP, FDP, fpr[8][16] and xmm[16][16] into the legacy area", "model::fpu::set_fpu";
    SetFpuXfeatures = "set_fpu.xfeatures", "§10.1", "KVM_SET_FPU marks FP and SSE in use (XSTATE_BV |= FP|SSE, as the kernel's xfpregs_set): every later GET_FPU/GET_XSAVE reports the written state and KVM_RUN loads it", "model::fpu::set_fpu";
    SetFpuMxcsr = "set_fpu.mxcsr", "§10.1", "KVM_SET_FPU stores MXCSR", "model::fpu::set_fpu";
    SetFpuRejectMxcsr = "set_fpu.reject.mxcsr", "§10.1", "KVM_SET_FPU with MXCSR outside mxcsr_feature_mask: EINVAL (xfpregs_set)", "model::fpu::set_fpu";
    GetFpuView = "get_fpu.view", "§10.2", "KVM_GET_FPU reports the x87/SSE state GET_XSAVE reports (init values for FP or SSE not in XSTATE_BV; MXCSR 0x1F80 without SSE and YMM), pad1 and pad2 zero", "model::fpu::get_fpu";
    GetFpuMxcsr = "get_fpu.mxcsr", "§10.2", "KVM_GET_FPU reports MXCSR", "model::fpu::get_fpu";
    QuirkFpuRaw = "quirk.fpu.raw", "§10.3", "quirk kvm-fpu-legacy (today's kernels): KVM_SET_FPU leaves XSTATE_BV unchanged, KVM_GET_FPU copies the stored legacy bytes whatever XSTATE_BV", "model::fpu::legacy_fpu";
    QuirkFpuMxcsr = "quirk.fpu.mxcsr", "§10.3", "quirk kvm-fpu-legacy (today's kernels): KVM_GET_FPU returns mxcsr 0, KVM_SET_FPU ignores mxcsr", "model::fpu::legacy_fpu";
    QuirkFpuRunInit = "quirk.fpu.run_init", "§10.3", "quirk kvm-fpu-legacy: a KVM_SET_FPU onto FP/SSE whose XSTATE_BV bit the last hardware save left to the processor (XINUSE) is loaded by the next KVM_RUN only if the bit was saved set; else the component enters at init", "model::run::kvm_run";
    QuirkTcgXsaveFop = "quirk.tcg.xsave_fop", "§7 R5", "quirk tcg-xsave-fop (QEMU TCG): a hardware save leaves FOP as the save area held it (the last SET's FOP, else 0)", "model::run::save_after_run";
    QuirkTcgX87NoMf = "quirk.tcg.x87_no_mf", "§7", "quirk tcg-x87-no-mf (QEMU TCG): a pending unmasked x87 exception loaded from the image does not fault the next FLDCW", "model::run::run_guest";
    QuirkPvmHwXcr0 = "quirk.pvm.hw_xcr0", "§8.4", "quirk pvm-hw-xcr0: hardware XCR0 stays the host's while the guest runs, whatever the guest's XCR0", "model::run::cr4_accepted";
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
