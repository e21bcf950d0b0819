//! Guests that fault, loop or never reach their end, on real KVM: each run is stopped (a short
//! `--guest-timeout` bound), gets the exit the oracle predicts with an agreeing verdict, and
//! 10 000 such cases leak nothing (descriptors, KVM VMs, threads; peak RSS flat after the first
//! 1 000). Its own test binary: it counts the process's threads and descriptors, which other
//! tests running beside it would change. Where `/dev/kvm` does not work it prints one
//! `SKIPPED(kvm)` line and passes (unless `XSAVE_RIG_REQUIRE_KVM=1`).

use arbitrary::Unstructured;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use xsave_oracle::case::*;
use xsave_oracle::gen;
use xsave_oracle::guest::{Exit, GuestAction, GuestProgram};
use xsave_oracle::judge::judge;
use xsave_oracle::trace::Ret;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::xfeatures::PKRU;
use xsave_oracle::{HostFacts, ModelConfig};
use xsave_runner::guest::WALL_TIMEOUT;
use xsave_runner::kvm::KvmBackend;
use xsave_runner::probe::probe;
use xsave_runner::Backend;
use xsave_testkit::kvm_or_skip;

const CASES: u32 = 10_000;
const WARM_UP: u32 = 50;
/// The short run bound (the CLI's minimum is 1 ms). It counts the vCPU thread's CPU time from
/// the first KVM_RUN of a fresh VM, KVM's own entry work included: on this shared, nested
/// (kvm_pvm) host under load, bounds of 2 and 5 ms each once stopped a run before the guest
/// executed its first instruction (a timeout where #UD was due; a GET without the registers
/// the program wrote before its `jmp .`), about 1 run in 10 000.
const BOUND: Duration = Duration::from_millis(10);
/// Peak-RSS growth allowed between case 1 000 and case 10 000: a leak of one guest memory
/// (148 KiB) per case would add over 1 GiB; allocator noise stays well below this.
const RSS_SLACK_KIB: u64 = 4096;

/// How a case's guest is meant to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `ud2`: #UD.
    Ud,
    /// `ldmxcsr` of reserved bits: #GP.
    Gp,
    /// A store to page 0: #PF.
    Pf,
    /// `wrpkru` disabling key 0: #UD without CR4.PKE (no PKU), else #PF at the next store (the
    /// end marker).
    PkruBlocksEnd,
    /// `jmp .`: stopped by the watchdog.
    Spin,
    /// `jmp .` before a store and a `ud2` that never run.
    SpinBeforeMore,
}

/// The mix: one case in six loops (each costs the whole bound), the others fault.
const KINDS: [Kind; 12] = [
    Kind::Ud,
    Kind::Gp,
    Kind::Pf,
    Kind::PkruBlocksEnd,
    Kind::Spin,
    Kind::Ud,
    Kind::Gp,
    Kind::Pf,
    Kind::PkruBlocksEnd,
    Kind::Ud,
    Kind::Pf,
    Kind::SpinBeforeMore,
];

impl Kind {
    fn tail(self) -> Vec<GuestAction> {
        match self {
            Kind::Ud => vec![GuestAction::Ud2],
            Kind::Gp => vec![GuestAction::Ldmxcsr { value: 0xffff_ffff }],
            Kind::Pf => vec![GuestAction::StoreNull],
            Kind::PkruBlocksEnd => vec![GuestAction::Wrpkru { value: 3 }],
            Kind::Spin => vec![GuestAction::Spin],
            Kind::SpinBeforeMore => vec![GuestAction::Spin, GuestAction::Xsave, GuestAction::Ud2],
        }
    }

    fn exit(self) -> Exit {
        match self {
            Kind::Spin | Kind::SpinBeforeMore => Exit::Timeout,
            _ => Exit::Shutdown,
        }
    }
}

fn config(h: &HostFacts) -> Config {
    let table =
        CpuidTable { base: CpuidBase::Supported { xcr0_mask: u64::MAX, drop_leaves: Vec::new() }, entries: Vec::new(), reverse: false };
    Config { cpuid: Some(table), xcr0: Some(h.supported_xcr0) }
}

/// Case `i` (fixed seed): up to 4 actions from the rig's generator that cannot fault here (no
/// LDMXCSR or WRPKRU, only features the host supports, so the guest's XCR0 has them), then
/// the kind's tail; a GET after the run, and every fourth case a second run of the same vCPU
/// that ends normally.
fn case(h: &HostFacts, i: u32) -> (Kind, Case) {
    let kind = KINDS[i as usize % KINDS.len()];
    let mut bytes = vec![0u8; 512];
    fill(0x5709_0000 ^ i, &mut bytes);
    let mut u = Unstructured::new(&bytes);
    let n = u.int_in_range(0..=4usize).unwrap_or(0);
    let mut actions = Vec::new();
    while actions.len() < n {
        let Ok(a) = gen::guest_action(&mut u) else { break };
        if !matches!(a, GuestAction::Ldmxcsr { .. } | GuestAction::Wrpkru { .. }) && a.needs_host() & !h.supported_xcr0 == 0 {
            actions.push(a);
        }
    }
    actions.extend(kind.tail());
    let mut ops = vec![Op::RunGuest(GuestProgram { actions }), Op::GetXsave];
    if i.is_multiple_of(4) {
        ops.push(Op::RunGuest(GuestProgram { actions: vec![GuestAction::Xmm { seed: i | 1 }, GuestAction::Xsave] }));
    }
    (kind, Case { config: config(h), ops })
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// (descriptors, of which KVM VMs, threads).
fn resources() -> (usize, usize, usize) {
    let mut fds = 0;
    let mut vms = 0;
    for e in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").flatten() {
        fds += 1;
        if std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:kvm-vm") {
            vms += 1;
        }
    }
    let threads = std::fs::read_dir("/proc/self/task").expect("/proc/self/task").count();
    (fds, vms, threads)
}

#[test]
fn stopped_guests_get_their_exit_and_leak_nothing() {
    if !kvm_or_skip("stopped_guests_get_their_exit_and_leak_nothing") {
        return;
    }
    // The probe's host facts, with its quirks: quirks auto.
    let h = probe().expect("probe").host;
    let model = ModelConfig { quirks: h.quirks.clone(), ..ModelConfig::default() };
    let before_backend = resources();
    let mut be = KvmBackend::new(h.clone(), true).expect("backend").with_guest_timeout(BOUND);
    assert_eq!(be.guest_timeout(), BOUND);
    let mut exits: BTreeMap<(Kind, &str), u64> = BTreeMap::new();
    let mut spin_time = Duration::ZERO;
    let mut spins = 0u32;
    let mut longest_stop = Duration::ZERO;
    let mut longest_fault = Duration::ZERO;
    let mut most_cpu_fault = Duration::ZERO;
    let mut start = None;
    let mut hwm_1k = 0;
    let t0 = Instant::now();
    for i in 0..WARM_UP + CASES {
        if i == WARM_UP {
            start = Some((resources(), status_kib("VmRSS:"), Instant::now()));
        }
        let (kind, case) = case(&h, i);
        let t = Instant::now();
        let cpu = xsave_runner::sys::thread_cpu_time();
        let observed = be.execute(&case).unwrap_or_else(|e| panic!("case {i}: backend: {e}"));
        let took = t.elapsed();
        let cpu = xsave_runner::sys::thread_cpu_time().saturating_sub(cpu);
        let (expected, verdict) = judge(&case, &h, &model, &observed);
        if let Verdict::Diverge(d) = &verdict {
            panic!(
                "case {i} ({kind:?}): divergence {} at step {}: {}\nbytes {:x?}\ncase {}\nobserved {}",
                d.signature,
                d.step,
                d.title,
                d.bytes,
                serde_json::to_string(&case).unwrap_or_default(),
                serde_json::to_string(&observed).unwrap_or_default()
            );
        }
        // The first run's exit: the kind's, as the oracle predicts it and KVM gave it.
        let run = |tr: &xsave_oracle::Trace| tr.results.iter().find(|r| r.origin == Origin::Op(0)).map(|r| r.ret);
        let want = Ret::Ok(kind.exit() as i64);
        assert_eq!(run(&expected), Some(want), "case {i} ({kind:?}): the oracle's exit");
        assert_eq!(run(&observed), Some(want), "case {i} ({kind:?}): KVM's exit");
        if let Some(second) = observed.results.iter().find(|r| r.origin == Origin::Op(2)) {
            assert_eq!(second.ret, Ret::Ok(Exit::End as i64), "case {i}: a run after the stopped one");
        }
        *exits.entry((kind, kind.exit().name())).or_default() += 1;
        if kind.exit() == Exit::Shutdown {
            longest_fault = longest_fault.max(took);
            most_cpu_fault = most_cpu_fault.max(cpu);
        }
        if kind.exit() == Exit::Timeout {
            assert!(took >= BOUND, "case {i}: stopped after {took:?}, before its bound");
            longest_stop = longest_stop.max(took);
            if i >= WARM_UP && !i.is_multiple_of(4) {
                spin_time += took;
                spins += 1;
            }
        }
        if i + 1 == WARM_UP + 1000 {
            hwm_1k = status_kib("VmHWM:");
        }
    }
    let total = t0.elapsed();
    let Some(((fds, vms, threads), rss, t_start)) = start else { unreachable!("warm-up ran") };
    let secs = t_start.elapsed().as_secs_f64();
    let (fds2, vms2, threads2) = resources();
    let (rss2, hwm_10k) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
    eprintln!(
        "{CASES} stopped-guest cases (+{WARM_UP} warm-up) in {:.1} s ({:.0} cases/s), bound {BOUND:?}; \
         looping guests alone: {:.0} cases/s ({spins} timed, longest {longest_stop:?}); longest faulting case {longest_fault:?} ({most_cpu_fault:?} of CPU time)",
        secs,
        f64::from(CASES) / secs,
        f64::from(spins) / spin_time.as_secs_f64()
    );
    eprintln!("exits by kind: {exits:?}");
    eprintln!("before the backend: (fds, KVM VM fds, threads) {before_backend:?}");
    eprintln!("fds {fds} -> {fds2}, KVM VM fds {vms} -> {vms2}, threads {threads} -> {threads2}");
    eprintln!("RSS {rss} -> {rss2} KiB; peak RSS after 1000 cases {hwm_1k} KiB, after {CASES} {hwm_10k} KiB");
    eprintln!("total wall time {total:.1?}");
    assert!(longest_stop < WALL_TIMEOUT, "a stopped run took {longest_stop:?}");
    for k in KINDS {
        assert!(exits.get(&(k, k.exit().name())).is_some_and(|&n| n >= u64::from(CASES) / 13), "{k:?} under-represented: {exits:?}");
    }
    assert_eq!(fds2, fds, "descriptor leak");
    assert_eq!(vms2, vms, "KVM VM leak");
    // One VM at a time: its fd and the guest memory's duplicate (which deletes the slot on drop).
    assert!(vms <= before_backend.1 + 2, "the backend holds more than its current VM: {vms} KVM VM fds, {} before it", before_backend.1);
    assert_eq!(threads2, threads, "thread leak");
    assert!(hwm_10k <= hwm_1k + RSS_SLACK_KIB, "peak RSS grew from {hwm_1k} KiB (case 1000) to {hwm_10k} KiB (case {CASES})");
    let runs = be.ioctl_stats().get("KVM_RUN").map_or(0, |s| s.count);
    let want_runs: u64 = (0..WARM_UP + CASES).map(|i| if i.is_multiple_of(4) { 2 } else { 1 }).sum();
    assert_eq!(runs, want_runs, "KVM_RUN calls");
    drop(be);
    let after = resources();
    assert_eq!(after, before_backend, "(descriptors, KVM VMs, threads) before the backend and after it is dropped");
    if h.supported_xcr0 & PKRU == 0 {
        eprintln!("host without PKRU: the PKRU kind faulted with #UD (no CR4.PKE)");
    }
}
