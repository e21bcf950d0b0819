//! The hand-written seed corpus (`corpus/seed/`): the probe battery plus cases aimed at single
//! contract rules. `runner/tests/corpus.rs` checks the committed files match these (and writes
//! them with `XSAVE_RIG_BLESS=1`).

use crate::probe::probe_cases;
use xsave_oracle::abi::{HDR, PAD};
use xsave_oracle::case::*;
use xsave_oracle::xfeatures::*;

fn table(entries: Vec<CpuidEntry>) -> CpuidTable {
    CpuidTable { base: CpuidBase::Empty, entries, reverse: false }
}

fn d0(flags: u32, eax: u32) -> CpuidEntry {
    CpuidEntry::new(0xd, 0, flags, [eax, 0, 0, 0])
}

fn img(bv: u64) -> XsaveImage {
    let mut i = XsaveImage::init(bv);
    i.st_seed = 0x11;
    i.xmm_seed = 0x12;
    i.components = (2..20).map(|bit| ComponentData { bit, seed: 0x100 + bit as u32 }).collect();
    i.pkru = 0x5555_5554;
    i
}

/// Named seed cases, in a fixed order.
pub fn seed_corpus() -> Vec<(String, Case)> {
    let supported = |mask: u64| Config {
        cpuid: Some(CpuidTable { base: CpuidBase::Supported { xcr0_mask: mask, drop_leaves: vec![] }, entries: vec![], reverse: false }),
        xcr0: None,
    };
    let mut v: Vec<(String, Case)> = probe_cases().into_iter().map(|(n, c)| (format!("probe-{n}"), c)).collect();
    let mut bad_mxcsr = img(YMM);
    bad_mxcsr.mxcsr = 0x1_1f80;
    let mut pkru_bad_mxcsr = img(PKRU);
    pkru_bad_mxcsr.mxcsr = 0x1_1f80;
    let mut rsvd = img(FPSSE);
    rsvd.hdr_reserved = vec![(47, 1)];
    let mut patched = img(FPSSE | YMM);
    patched.patches = vec![Patch { offset: PAD as u16, bytes: vec![0xa5; HDR - PAD] }];
    use xsave_oracle::guest::{GuestAction as A, GuestProgram};
    let run = |actions: Vec<A>| Op::RunGuest(GuestProgram { actions });
    let avx = Config { xcr0: Some(FPSSE | YMM), ..supported(!0) };
    let avx512 = Config { xcr0: Some(FPSSE | YMM | AVX512), ..supported(!0) };
    let mut pre_run = img(FPSSE | YMM);
    pre_run.components.retain(|c| c.bit == 2);
    pre_run.fip = 0x1122_3344_5566_7788;
    pre_run.patches = vec![Patch { offset: 42, bytes: vec![0xa5; 6] }];
    let mut mxcsr_ymm = img(FP | YMM);
    mxcsr_ymm.components.retain(|c| c.bit == 2);
    mxcsr_ymm.mxcsr = 0x1f00;
    // The legacy FPU ioctls (issue: SET_FPU state on a fresh vCPU, docs/findings).
    let fpu_written = FpuImage { fcw: 0x27f, ftwx: 0x01, fpr_seed: 0x81, xmm_seed: 0x11, mxcsr: 0x1f00, ..FpuImage::init() };
    let fpu_bad_mxcsr = FpuImage { mxcsr: 0xffff_ffff, ..FpuImage::init() };
    let fpu: Vec<(&str, Case)> = vec![
        (
            "fpu-set-on-fresh-vcpu-then-get-fpu-and-xsave",
            Case { config: supported(!0), ops: vec![Op::SetFpu(fpu_written), Op::GetFpu, Op::GetXsave] },
        ),
        ("fpu-set-with-reserved-mxcsr-bits", Case { config: supported(!0), ops: vec![Op::SetFpu(fpu_bad_mxcsr), Op::GetFpu] }),
    ];
    let guest: Vec<(&str, Case)> = vec![
        (
            // The selftest "touch relevant XSAVE state in guest": the guest writes x87, SSE and
            // AVX state, the host saves it, restores it into a new vCPU, and the guest reads it.
            "guest-touch-save-restore-readback",
            Case {
                config: avx.clone(),
                ops: vec![
                    run(vec![
                        A::Fldcw { value: 0x27f },
                        A::Xmm { seed: 0x21 },
                        A::Ymm { seed: 0x22 },
                        A::Ldmxcsr { value: 0x1f00 },
                        A::Xsave,
                    ]),
                    Op::GetXsave,
                    Op::NewVcpu,
                    Op::RestoreLast { force_xstate_bv: None },
                    run(vec![A::Xsave]),
                    Op::GetXsave2,
                ],
            },
        ),
        (
            "guest-touch-avx512-save-restore-readback",
            Case {
                config: avx512,
                ops: vec![
                    run(vec![A::Opmask { seed: 0x31 }, A::Zmm { seed: 0x32 }, A::Xsave]),
                    Op::GetXsave,
                    Op::NewVcpu,
                    Op::RestoreLast { force_xstate_bv: None },
                    run(vec![A::Xsave]),
                    Op::GetXsave,
                ],
            },
        ),
        (
            // The selftest "load XSAVE state into untouched vCPU".
            "guest-load-into-untouched-vcpu",
            Case {
                config: avx.clone(),
                ops: vec![
                    Op::SetXsave(pre_run.clone()),
                    Op::GetXsave,
                    Op::NewVcpu,
                    Op::RestoreLast { force_xstate_bv: None },
                    run(vec![A::Xsave]),
                    Op::GetXsave,
                ],
            },
        ),
        (
            // The selftest "force load all supported XSAVE state": YMM forced in with a guest
            // CPUID of FP|SSE (permissive load; V2b refuses it), then the guest runs and GET
            // must keep YMM hidden (V1 reports it).
            "guest-force-load-beyond-guest-cpuid",
            Case { config: supported(FPSSE), ops: vec![Op::SetXsave(pre_run), run(vec![A::Xsave]), Op::GetXsave, Op::GetXsave2] },
        ),
        (
            // Components put back to init in the guest (the init optimisation), a fault, and the
            // CPUID table frozen after the first run.
            "guest-init-optimisation-fault-and-frozen-cpuid",
            Case {
                config: avx,
                ops: vec![
                    run(vec![A::Ymm { seed: 0x41 }, A::Vzeroupper, A::Fninit, A::Xmm { seed: 0 }, A::Xsave]),
                    Op::GetXsave,
                    Op::GetCpuid2 { capacity: 256 },
                    // AVX-512 with guest XCR0 = FP|SSE|YMM: #UD upstream; runs where hardware
                    // XCR0 is the host's and has AVX-512 (pvm-hw-xcr0).
                    run(vec![A::Opmask { seed: 0x42 }]),
                    Op::GetCpuid2 { capacity: 256 },
                    Op::SetCpuid2(table(vec![d0(1, 0x3)])),
                    Op::GetXsave,
                ],
            },
        ),
        (
            // MXCSR stored with SSE clear in XSTATE_BV: the processor may load it or initialise
            // it at entry (run.entry.mxcsr); the guest's view and the later GET must agree.
            "guest-mxcsr-entry-with-sse-clear",
            Case {
                config: supported(!0),
                ops: vec![Op::SetXsave(mxcsr_ymm), run(vec![A::Xsave]), Op::GetXsave, run(vec![A::Xsave]), Op::GetXsave],
            },
        ),
        (
            // No CPUID at all: upstream refuses the long-mode set-up (no LM), PVM runs it.
            "guest-setup-without-long-mode-in-cpuid",
            Case { config: Config::default(), ops: vec![run(vec![A::Xmm { seed: 0x71 }, A::Xsave]), Op::GetXsave] },
        ),
        (
            // A fresh vCPU has XCR0 = FP: AVX faults unless hardware XCR0 ignores the guest's.
            "guest-avx-with-xcr0-fp",
            Case { config: supported(!0), ops: vec![run(vec![A::Ymm { seed: 0x51 }, A::Xsave]), Op::GetXsave] },
        ),
        (
            // A run after a shutdown: the rig loads its set-up's sregs again (run.setup.reload);
            // 6.x INITs the vCPU on shutdown, 5.10 on AMD re-injects the fault (run.v0.shutdown.requeued).
            "guest-run-after-a-shutdown",
            Case {
                config: supported(!0),
                ops: vec![run(vec![A::Ymm { seed: 0x52 }, A::Xsave]), run(vec![A::Xmm { seed: 0x53 }, A::Xsave]), Op::GetXsave],
            },
        ),
    ];
    let extra: Vec<(&str, Case)> = vec![
        (
            "sse-or-ymm-without-fp",
            Case { config: supported(!0), ops: vec![Op::SetXsave(img(SSE)), Op::GetXsave, Op::SetXsave(img(YMM)), Op::GetXsave] },
        ),
        (
            "hidden-state-revealed",
            Case {
                config: Config::default(),
                ops: vec![
                    Op::SetXsave(img(FPSSE | YMM | PKRU)),
                    Op::GetXsave,
                    Op::SetCpuid2(table(vec![d0(1, 0xffff)])),
                    Op::GetXsave,
                    Op::GetXsave2,
                ],
            },
        ),
        (
            "state-test-save-restore",
            Case {
                config: supported(!0),
                ops: vec![
                    Op::SetXsave(img(FPSSE | YMM | AVX512 | PKRU)),
                    Op::GetXsave2,
                    Op::NewVcpu,
                    Op::RestoreLast { force_xstate_bv: None },
                    Op::GetXsave2,
                ],
            },
        ),
        (
            "state-test-forced-bv-empty-cpuid",
            Case {
                config: Config { cpuid: Some(table(vec![])), xcr0: None },
                ops: vec![Op::RestoreLast { force_xstate_bv: Some(0x2ff) }, Op::GetXsave],
            },
        ),
        (
            "set-unsupported-bit",
            Case {
                config: supported(!0),
                ops: vec![Op::SetXsave(img(FPSSE | (1 << 8))), Op::SetXsave(img(FPSSE | XTILE_DATA)), Op::GetXsave],
            },
        ),
        ("set-reserved-header-byte", Case { config: Config::default(), ops: vec![Op::SetXsave(rsvd), Op::GetXsave] }),
        (
            "mxcsr-checked-with-ymm-not-pkru",
            Case { config: supported(!0), ops: vec![Op::SetXsave(bad_mxcsr), Op::SetXsave(pkru_bad_mxcsr), Op::GetXsave] },
        ),
        ("padding-and-sw-reserved-ignored", Case { config: supported(!0), ops: vec![Op::SetXsave(patched), Op::GetXsave] }),
        (
            "cpuid-duplicate-and-unflagged-0xd",
            Case {
                config: Config::default(),
                ops: vec![
                    Op::SetCpuid2(table(vec![d0(0, 3), d0(1, 7), CpuidEntry::new(0xd, 1, 1, [2, 0, 0, 0])])),
                    Op::GetCpuid2 { capacity: 256 },
                    Op::SetXsave(img(FPSSE | YMM)),
                    Op::GetXsave,
                ],
            },
        ),
        (
            "cpuid-e2big-and-vaddr",
            Case {
                config: Config::default(),
                ops: vec![
                    Op::SetCpuid2(table(vec![CpuidEntry::new(0x4000_0000, 0, 0, [0; 4]); 257])),
                    Op::SetCpuid2(table(vec![CpuidEntry::new(0x8000_0008, 0, 1, [0x2728, 0, 0, 0])])),
                    Op::GetCpuid2 { capacity: 0 },
                ],
            },
        ),
        (
            "cpuid-amx-without-permission",
            Case { config: Config::default(), ops: vec![Op::SetCpuid2(table(vec![d0(1, 0x60007)])), Op::GetCpuid2 { capacity: 4 }] },
        ),
        (
            "get-cpuid2-too-small",
            Case { config: supported(FPSSE), ops: vec![Op::GetCpuid2 { capacity: 1 }, Op::GetCpuid2 { capacity: 256 }] },
        ),
        (
            "xcrs-odd-structs",
            Case {
                config: supported(!0),
                ops: vec![
                    Op::SetXcrs(XcrsImage {
                        nr_xcrs: 3,
                        flags: 0,
                        xcrs: vec![Xcr { xcr: 1, reserved: 7, value: 0 }, Xcr { xcr: 0, reserved: 0, value: 7 }],
                        padding_seed: 9,
                    }),
                    Op::GetXcrs,
                    Op::SetXcrs(XcrsImage { nr_xcrs: 17, ..XcrsImage::xcr0(7) }),
                    Op::SetXcrs(XcrsImage { flags: 1, ..XcrsImage::xcr0(7) }),
                    Op::SetXcrs(XcrsImage { nr_xcrs: 0, ..XcrsImage::xcr0(0) }),
                    Op::SetXcrs(XcrsImage::xcr0(5)),
                    Op::SetXcrs(XcrsImage::xcr0(6)),
                    Op::SetXcrs(XcrsImage::xcr0(0x27)),
                    Op::SetXcrs(XcrsImage::xcr0(0xb)),
                    Op::GetXcrs,
                    Op::GetCpuid2 { capacity: 256 },
                ],
            },
        ),
    ];
    v.extend(extra.into_iter().map(|(n, c)| (n.to_string(), c)));
    v.extend(guest.into_iter().map(|(n, c)| (n.to_string(), c)));
    v.extend(fpu.into_iter().map(|(n, c)| (n.to_string(), c)));
    v.into_iter().map(|(n, c)| (slug(&n), c)).collect()
}

fn slug(s: &str) -> String {
    let mut out = String::new();
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}
