//! Guest programs on real KVM (`Op::RunGuest`). They run wherever `/dev/kvm` works; elsewhere
//! they print one `SKIPPED(kvm)` line and pass (unless `XSAVE_RIG_REQUIRE_KVM=1`).

use std::sync::{Mutex, OnceLock};
use std::time::Instant;
use xsave_oracle::abi;
use xsave_oracle::case::*;
use xsave_oracle::guest::{output_size, GuestAction, GuestProgram};
use xsave_oracle::trace::{OpResult, Ret, Trace};
use xsave_oracle::xfeatures::*;
use xsave_oracle::HostFacts;
use xsave_runner::kvm::KvmBackend;
use xsave_runner::probe::host_facts;
use xsave_runner::Backend;
use xsave_testkit::kvm_or_skip;

/// The tests count this process's descriptors and mappings: run them one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

fn host() -> &'static HostFacts {
    static H: OnceLock<HostFacts> = OnceLock::new();
    H.get_or_init(|| host_facts().expect("host facts"))
}

fn config(h: &HostFacts) -> Config {
    let table =
        CpuidTable { base: CpuidBase::Supported { xcr0_mask: u64::MAX, drop_leaves: Vec::new() }, entries: Vec::new(), reverse: false };
    Config { cpuid: Some(table), xcr0: Some(h.supported_xcr0) }
}

fn prog(actions: Vec<GuestAction>) -> Op {
    Op::RunGuest(GuestProgram { actions })
}

/// Execute `ops` under the standard config; the results of the ops (config steps dropped).
fn exec(be: &mut KvmBackend, ops: Vec<Op>) -> Vec<OpResult> {
    let case = Case { config: config(be.host()), ops };
    let Trace { results } = be.execute(&case).expect("execute");
    results.into_iter().filter(|r| matches!(r.origin, Origin::Op(_))).collect()
}

fn component(h: &HostFacts, bit: u8) -> std::ops::Range<usize> {
    let c = h.component(bit).unwrap_or_else(|| panic!("host has no component {bit}"));
    c.offset as usize..(c.offset + c.size) as usize
}

fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn map_count() -> usize {
    std::fs::read_to_string("/proc/self/maps").map(|s| s.lines().count()).unwrap_or(0)
}

#[test]
fn xsave_in_guest_sees_the_set_image() {
    if !kvm_or_skip("xsave_in_guest_sees_the_set_image") {
        return;
    }
    let _s = serial();
    let h = host();
    assert_eq!(h.supported_xcr0 & (FPSSE | YMM), FPSSE | YMM, "test needs AVX");
    let mut be = KvmBackend::new(h.clone(), true).expect("backend");
    let img = XsaveImage { xmm_seed: 0x1234, components: vec![ComponentData { bit: 2, seed: 0x77 }], ..XsaveImage::init(FP | SSE | YMM) };
    let set = img.render(h, abi::KVM_XSAVE_SIZE);
    let r = exec(&mut be, vec![Op::SetXsave(img), prog(vec![GuestAction::Xsave]), Op::GetXsave]);
    assert_eq!(r[0].ret, Ret::Ok(0), "SET_XSAVE");
    assert_eq!(r[1].ret, Ret::Ok(0), "run: exit {:?}, CR4 {:x?}", r[1].ret, be.last_cr4());
    let cr4 = be.last_cr4().expect("a guest was set up");
    assert_ne!(cr4 & (1 << 18), 0, "CR4.OSXSAVE refused: the guest's XSAVE would fault");
    let out = &r[1].data;
    assert_eq!(out.len(), output_size(h));
    assert_eq!(out[abi::XMM..abi::XMM_END], set[abi::XMM..abi::XMM_END], "XMM in the guest's XSAVE");
    let ymm = component(h, 2);
    assert_eq!(out[ymm.clone()], set[ymm], "YMM_Hi128 in the guest's XSAVE");
    // Components out of their init state must be marked in use (an init one may read 0 or 1).
    assert_eq!(abi::le64(out, abi::XSTATE_BV) & (SSE | YMM), SSE | YMM, "XSTATE_BV of the guest's XSAVE");
    assert_eq!(r[2].ret, Ret::Ok(0), "GET_XSAVE after the run");
    assert_eq!(r[2].data[abi::XMM..abi::XMM_END], set[abi::XMM..abi::XMM_END]);
    let st = be.ioctl_stats();
    assert_eq!(st.get("KVM_RUN").map(|s| s.count), Some(1));
    eprintln!("guest CR4 {cr4:#x}; stats {:?}", st.keys().collect::<Vec<_>>());
}

#[test]
fn guest_loads_reach_its_xsave() {
    if !kvm_or_skip("guest_loads_reach_its_xsave") {
        return;
    }
    let _s = serial();
    let h = host();
    let mut be = KvmBackend::new(h.clone(), true).expect("backend");
    let ymm = GuestAction::Ymm { seed: 5 };
    let input = ymm.input();
    let r = exec(&mut be, vec![prog(vec![GuestAction::Xmm { seed: 9 }, ymm.clone(), GuestAction::Xsave]), Op::GetXsave]);
    assert_eq!(r[0].ret, Ret::Ok(0));
    let out = &r[0].data;
    let hi: Vec<u8> = (0..16).flat_map(|i| input[32 * i + 16..32 * i + 32].to_vec()).collect();
    let lo: Vec<u8> = (0..16).flat_map(|i| input[32 * i..32 * i + 16].to_vec()).collect();
    assert_eq!(out[component(h, 2)], hi[..], "YMM upper halves");
    assert_eq!(out[abi::XMM..abi::XMM_END], lo[..], "XMM = YMM lower halves (the Xmm action came first)");
    let get = &r[1].data;
    assert_eq!(get[component(h, 2)], hi[..], "KVM_GET_XSAVE shows the guest's YMM");

    // Actions of one kind read their own inputs: the second Xmm wins.
    let r = exec(&mut be, vec![prog(vec![GuestAction::Xmm { seed: 1 }, GuestAction::Xmm { seed: 2 }, GuestAction::Xsave])]);
    assert_eq!(r[0].ret, Ret::Ok(0));
    assert_eq!(r[0].data[abi::XMM..abi::XMM_END], GuestAction::Xmm { seed: 2 }.input()[..]);

    // A program without Xsave returns no data.
    let r = exec(&mut be, vec![prog(vec![GuestAction::Xmm { seed: 3 }])]);
    assert_eq!((r[0].ret, r[0].data.len()), (Ret::Ok(0), 0));

    if h.supported_xcr0 & AVX512 == AVX512 {
        let zmm = GuestAction::Zmm { seed: 0xabc };
        let input = zmm.input();
        let r = exec(&mut be, vec![prog(vec![zmm, GuestAction::Xsave])]);
        assert_eq!(r[0].ret, Ret::Ok(0));
        let out = &r[0].data;
        let hi256: Vec<u8> = (0..16).flat_map(|i| input[64 * i + 32..64 * i + 64].to_vec()).collect();
        assert_eq!(out[component(h, 6)], hi256[..], "ZMM_Hi256");
        assert_eq!(out[component(h, 7)], input[1024..2048], "Hi16_ZMM");
        let opm = GuestAction::Opmask { seed: 0x55 };
        let r = exec(&mut be, vec![prog(vec![opm.clone(), GuestAction::Xsave])]);
        assert_eq!(r[0].ret, Ret::Ok(0));
        assert_eq!(r[0].data[component(h, 5)], opm.input()[..], "k0..7");
    } else {
        eprintln!("host without AVX-512 (supported XCR0 {:#x}): Zmm not run", h.supported_xcr0);
    }
}

#[test]
fn faulting_program_shuts_down() {
    if !kvm_or_skip("faulting_program_shuts_down") {
        return;
    }
    let _s = serial();
    let h = host();
    let mut be = KvmBackend::new(h.clone(), true).expect("backend");
    let r = exec(
        &mut be,
        vec![
            prog(vec![GuestAction::Ldmxcsr { value: 0xffff_ffff }, GuestAction::Xsave]),
            // The same vCPU runs again after the shutdown.
            prog(vec![GuestAction::Ldmxcsr { value: 0x1f80 }, GuestAction::Xsave]),
        ],
    );
    assert_eq!(r[0].ret, Ret::Ok(1), "#GP without an IDT: shutdown");
    assert!(r[0].data.iter().all(|&b| b == 0), "the XSAVE after the fault never ran");
    assert_eq!(r[1].ret, Ret::Ok(0), "a run after a shutdown");
    assert_eq!(abi::le32(&r[1].data, abi::MXCSR), 0x1f80);
}

#[test]
fn runs_leak_nothing() {
    if !kvm_or_skip("runs_leak_nothing") {
        return;
    }
    let _s = serial();
    let h = host();
    let mut be = KvmBackend::new(h.clone(), true).expect("backend");
    let case =
        |i: u32| Case { config: config(h), ops: vec![prog(vec![GuestAction::Xmm { seed: i + 1 }, GuestAction::Xsave]), Op::GetXsave] };
    for i in 0..20 {
        be.execute(&case(i)).expect("warm-up");
    }
    let (fds, maps) = (fd_count(), map_count());
    let n = 2000u32;
    let t = Instant::now();
    for i in 0..n {
        let tr = be.execute(&case(i)).expect("execute");
        let run = tr.results.iter().find(|r| r.origin == Origin::Op(0)).expect("run step");
        assert_eq!(run.ret, Ret::Ok(0), "case {i}");
        assert_eq!(run.data[abi::XMM..abi::XMM_END], GuestAction::Xmm { seed: i + 1 }.input()[..], "case {i}");
    }
    let secs = t.elapsed().as_secs_f64();
    let (fds2, maps2) = (fd_count(), map_count());
    eprintln!("{n} cases with a run in {secs:.2} s: {:.0} runs/s; fds {fds} -> {fds2}, mappings {maps} -> {maps2}", n as f64 / secs);
    for (name, st) in be.ioctl_stats() {
        eprintln!("  {name:<36} {:>6} calls {:>9.1} us/call", st.count, st.nanos as f64 / 1e3 / st.count.max(1) as f64);
    }
    assert_eq!(fds2, fds, "descriptor leak");
    assert!(maps2 <= maps + 2, "mapping leak: {maps} -> {maps2}");
    let runs = be.ioctl_stats().get("KVM_RUN").map_or(0, |s| s.count);
    assert_eq!(runs, u64::from(n) + 20);
}

#[test]
fn guest_without_xsave_cpuid_still_runs() {
    if !kvm_or_skip("guest_without_xsave_cpuid_still_runs") {
        return;
    }
    let _s = serial();
    let h = host();
    let mut be = KvmBackend::new(h.clone(), false).expect("backend");
    let empty = CpuidTable { base: CpuidBase::Empty, entries: Vec::new(), reverse: false };
    for cpuid in [None, Some(empty)] {
        let case = Case {
            config: Config { cpuid: cpuid.clone(), xcr0: None },
            ops: vec![prog(vec![GuestAction::Xmm { seed: 4 }, GuestAction::Xsave])],
        };
        let tr = be.execute(&case).expect("execute");
        let run = tr.results.last().expect("run step");
        let cr4 = be.last_cr4().expect("guest set up");
        // Stock KVM refuses CR4.OSXSAVE without XSAVE in the guest CPUID: the backend then
        // drops it, and the guest's XSAVE faults (#UD, shutdown).
        let osxsave = cr4 & (1 << 18) != 0;
        eprintln!("cpuid {:?}: CR4 {cr4:#x}, run {:?}", cpuid.as_ref().map(|_| "empty"), run.ret);
        assert_eq!(run.ret, Ret::Ok(if osxsave { 0 } else { 1 }), "CR4 {cr4:#x}");
        assert_eq!(cr4 & (1 << 22), 0, "no PKE without PKU in the guest CPUID");
    }
}
