//! The kernel's own signals as a second oracle: `/dev/kmsg` read from a position taken before
//! each case. A WARN, BUG, KASAN/UBSAN report, general protection fault or a `kvm` error line
//! logged while a case runs is a finding of class `kernel-splat`. Inside the lab the rig reads
//! the guest kernel's `/dev/kmsg`, so the same code attributes lab splats to their case.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

/// Markers of a kernel splat in a message.
const SPLAT: &[&str] =
    &["WARNING:", "BUG:", "KASAN:", "UBSAN:", "general protection fault", "Oops:", "kernel BUG", "RIP: 0010:", "Call Trace:"];

/// An open `/dev/kmsg`, positioned after the records that existed when it was opened.
pub struct Kmsg {
    f: std::fs::File,
    buf: Vec<u8>,
}

impl Kmsg {
    /// Open `/dev/kmsg` non-blocking at its end; `None` where it cannot be read (not root, no
    /// device): the second oracle is then off, which `probe` reports.
    pub fn open() -> Option<Kmsg> {
        let mut f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open("/dev/kmsg").ok()?;
        f.seek(SeekFrom::End(0)).ok()?;
        Some(Kmsg { f, buf: vec![0u8; 8192] })
    }

    /// Every record logged since the last call, as `(priority, message)`.
    pub fn drain(&mut self) -> Vec<(u8, String)> {
        let mut out = Vec::new();
        loop {
            match self.f.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => {
                    let rec = String::from_utf8_lossy(&self.buf[..n]);
                    let (head, msg) = rec.split_once(';').unwrap_or(("", &rec));
                    let prio = head.split(',').next().and_then(|p| p.parse::<u32>().ok()).map_or(6, |p| (p & 7) as u8);
                    out.push((prio, msg.lines().next().unwrap_or("").to_string()));
                }
                // EPIPE: records were overwritten before we read them; keep reading.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(_) => break,
            }
        }
        out
    }

    /// The splat lines among the records logged since the last call.
    pub fn splats(&mut self) -> Vec<String> {
        self.drain().into_iter().filter(|(p, m)| is_splat(*p, m)).map(|(_, m)| m).collect()
    }

    /// Write a record (root only): the test hook that provokes a splat on purpose.
    pub fn inject(line: &str) -> std::io::Result<()> {
        std::fs::write("/dev/kmsg", line)
    }
}

/// Whether a record is a splat: one of the markers, or an error-level (or worse) `kvm` line.
pub fn is_splat(prio: u8, msg: &str) -> bool {
    SPLAT.iter().any(|m| msg.contains(m)) || (prio <= 3 && msg.to_ascii_lowercase().contains("kvm"))
}

#[cfg(test)]
mod tests {
    use super::is_splat;

    #[test]
    fn splat_lines() {
        assert!(is_splat(4, "WARNING: CPU: 1 PID: 42 at arch/x86/kvm/x86.c:5555 kvm_arch_vcpu_ioctl+0x1/0x2"));
        assert!(is_splat(3, "kvm: vcpu0, guest rIP: 0x0 unhandled rdmsr"));
        assert!(!is_splat(4, "kvm-pvm: triple fault delivering vec=8 err=0 cpl=3"), "a guest's own triple fault is not a splat");
        assert!(!is_splat(6, "kvm-pvm: deliver[1]: vec=8"));
    }
}
