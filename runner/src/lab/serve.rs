//! The guest side of [`super::LabBackend`]: inside a lab guest, `xsave-rig lab-serve` probes
//! the guest kernel's KVM once, sends the probe report, then executes every case the host
//! sends (in batches) on a [`KvmBackend`] and sends back, case by case, its trace, the kernel
//! splat lines logged meanwhile and the ioctl count, until the host closes the channel
//! ([`super::wire`]).

use super::wire::{self, Done, Hello, Start};
use super::{io, LabError};
use crate::kvm::KvmBackend;
use crate::Backend;
use std::path::{Path, PathBuf};

/// The name of the control port (a virtio-serial port).
pub(super) const PORT: &str = "org.xsave-rig.ctl";

/// The device of the virtio-serial port named `name` (`/dev/vportNpM`). virtio_console adds
/// and names its ports from its control queue, after the module has loaded: a busy guest may
/// not have named the port yet, so it is waited for (up to 30 s), never raced.
fn find_port(name: &str) -> Result<PathBuf, LabError> {
    let start = std::time::Instant::now();
    loop {
        for e in std::fs::read_dir("/sys/class/virtio-ports").into_iter().flatten().flatten() {
            if std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name) {
                return Ok(Path::new("/dev").join(e.file_name()));
            }
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            return Err(LabError::Kernel(format!("no virtio-serial port {name} in this guest")));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Serve cases on the control port until the host closes it. A failure of the guest's own
/// (probe, KVM setup, an undecodable case) is sent to the host as a failure frame before it
/// is returned.
pub fn serve() -> Result<(), LabError> {
    let path = find_port(PORT)?;
    let mut port = std::fs::OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
    let result = serve_on(&mut port, &path);
    if let Err(e) = &result {
        let _ = wire::send(&mut port, wire::FAILED, e.to_string().as_bytes());
    }
    result
}

fn serve_on(port: &mut std::fs::File, path: &Path) -> Result<(), LabError> {
    let guest = |e: crate::BackendError| LabError::Kernel(format!("guest KVM: {e}"));
    let report = crate::probe::probe().map_err(guest)?;
    let hello = serde_json::to_vec(&Hello { report }).map_err(|e| LabError::Kernel(format!("probe report: {e}")))?;
    wire::send(port, wire::HELLO, &hello).map_err(io(path))?;
    let mut backend: Option<KvmBackend> = None;
    while let Some((tag, payload)) = wire::recv(port).map_err(io(path))? {
        match (tag, backend.as_mut()) {
            (wire::START, _) => {
                let start: Start = serde_json::from_slice(&payload).map_err(|e| LabError::Kernel(format!("start frame: {e}")))?;
                let mut be = KvmBackend::new(start.host, start.pool).map_err(guest)?;
                if let Some(us) = start.guest_timeout_us {
                    be = be.with_guest_timeout(std::time::Duration::from_micros(us));
                }
                backend = Some(be);
                wire::send(port, wire::READY, &[]).map_err(io(path))?;
            }
            (wire::BATCH, Some(be)) => {
                let cases = wire::decode_batch(&payload).map_err(LabError::Kernel)?;
                for case in &cases {
                    let t = std::time::Instant::now();
                    match be.execute(case) {
                        Ok(trace) => {
                            let micros = t.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
                            let done = Done { trace, splats: be.kernel_log(), ioctls: be.ioctls(), micros };
                            wire::send(port, wire::DONE, &done.encode()).map_err(io(path))?;
                        }
                        Err(e) => wire::send(port, wire::FAILED, e.to_string().as_bytes()).map_err(io(path))?,
                    }
                }
            }
            (wire::BATCH, None) => return Err(LabError::Kernel("case frame before the start frame".into())),
            (t, _) => return Err(LabError::Kernel(format!("unknown frame tag {t:#x}"))),
        }
    }
    Ok(())
}
