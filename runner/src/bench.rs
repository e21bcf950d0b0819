//! `xsave-rig bench`: raw ioctl throughput next to the rig's, measured in the same run.

use crate::campaign::case_for;
use crate::kvm::KvmBackend;
use crate::sys::{self, AlignedBuf};
use crate::{open_kvm, Backend, BackendError};
use serde::Serialize;
use std::time::{Duration, Instant};
use xsave_oracle::case::XsaveImage;
use xsave_oracle::diff::judge;
use xsave_oracle::xfeatures::FPSSE;
use xsave_oracle::{HostFacts, ModelConfig};

/// Bench result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// (a) raw `KVM_SET_XSAVE`+`KVM_GET_XSAVE` loop on one vCPU, ioctls/s.
    pub raw_ioctls_per_sec: f64,
    /// (b) the rig checking random cases, every ioctl it issues (case steps + vCPU resets)/s.
    pub rig_ioctls_per_sec: f64,
    /// rig / raw.
    pub ratio: f64,
    /// (b) counting only the ioctls of case steps (no resets), per second.
    pub rig_case_ioctls_per_sec: f64,
    /// Cases checked per second.
    pub cases_per_sec: f64,
    /// Share of the rig's wall time per phase: generate, execute (KVM), judge (oracle+diff).
    pub time_share: TimeShare,
    /// Seconds measured per side.
    pub seconds: f64,
}

/// Where the rig's time goes.
#[derive(Clone, Debug, Serialize)]
pub struct TimeShare {
    /// Generating cases.
    pub generate: f64,
    /// Executing on KVM (ioctls, buffer rendering).
    pub execute: f64,
    /// Predicting and diffing.
    pub judge: f64,
}

/// Run both loops for `seconds` each.
pub fn bench(
    host: &HostFacts,
    model: &ModelConfig,
    seconds: f64,
) -> Result<BenchReport, BackendError> {
    let dur = Duration::from_secs_f64(seconds);
    // (a) raw loop.
    let kvm = open_kvm()?;
    let vm = kvm
        .create_vm()
        .map_err(|e| BackendError::Setup(e.to_string()))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| BackendError::Setup(e.to_string()))?;
    let size = (kvm.check_extension_raw(208).max(0) as usize).max(4096);
    let mut buf = AlignedBuf::new(size);
    XsaveImage::init(FPSSE).render_into(host, buf.bytes_mut());
    let mut out = AlignedBuf::new(size);
    let start = Instant::now();
    let mut raw = 0u64;
    while start.elapsed() < dur {
        for _ in 0..256 {
            sys::set_xsave(&vcpu, &mut buf)
                .map_err(|e| BackendError::Setup(format!("KVM_SET_XSAVE errno {e}")))?;
            sys::get_xsave(&vcpu, &mut out)
                .map_err(|e| BackendError::Setup(format!("KVM_GET_XSAVE errno {e}")))?;
        }
        raw += 512;
    }
    let raw_rate = raw as f64 / start.elapsed().as_secs_f64();
    drop((vcpu, vm));
    // (b) the rig.
    let mut backend = KvmBackend::new(host.clone(), true)?;
    let (mut tg, mut te, mut tj) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut cases, mut steps) = (0u64, 0u64);
    let i0 = backend.ioctls();
    let start = Instant::now();
    while start.elapsed() < dur {
        let t0 = Instant::now();
        let case = case_for(0xbe4c, cases);
        let t1 = Instant::now();
        let obs = backend.execute(&case)?;
        let t2 = Instant::now();
        let _ = judge(&case, host, model, &obs);
        let t3 = Instant::now();
        tg += t1 - t0;
        te += t2 - t1;
        tj += t3 - t2;
        cases += 1;
        steps += case
            .steps()
            .iter()
            .filter(|(_, op)| *op != xsave_oracle::Op::NewVcpu)
            .count() as u64;
    }
    let el = start.elapsed().as_secs_f64();
    let rig_rate = (backend.ioctls() - i0) as f64 / el;
    let total = (tg + te + tj).as_secs_f64().max(1e-9);
    Ok(BenchReport {
        raw_ioctls_per_sec: raw_rate,
        rig_ioctls_per_sec: rig_rate,
        ratio: rig_rate / raw_rate,
        rig_case_ioctls_per_sec: steps as f64 / el,
        cases_per_sec: cases as f64 / el,
        time_share: TimeShare {
            generate: tg.as_secs_f64() / total,
            execute: te.as_secs_f64() / total,
            judge: tj.as_secs_f64() / total,
        },
        seconds,
    })
}
