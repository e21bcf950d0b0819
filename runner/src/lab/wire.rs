//! The control channel between [`super::LabBackend`] (host) and [`super::serve`] (guest):
//! length-prefixed frames (`u32` little-endian length of what follows, one tag byte, the
//! payload) on the virtio-serial port `org.xsave-rig.ctl`.
//!
//! Guest → host: `H` hello (the guest's probe report, JSON), `R` ready, `T` a case's result
//! (JSON [`Done`]), `E` the guest's own failure (UTF-8 text). Host → guest: `S` start (JSON
//! [`Start`]), `X` execute (a case in the binary case format).

use crate::probe::ProbeReport;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use xsave_oracle::{HostFacts, Trace};

/// Hello: the guest's probe report.
pub(super) const HELLO: u8 = b'H';
/// The guest's backend is ready.
pub(super) const READY: u8 = b'R';
/// A case's result.
pub(super) const DONE: u8 = b'T';
/// The guest's own failure.
pub(super) const FAILED: u8 = b'E';
/// Start the guest's backend.
pub(super) const START: u8 = b'S';
/// Execute a case.
pub(super) const EXEC: u8 = b'X';

/// Largest frame either side accepts (a trace of a long case with XSAVE2 images is far smaller).
const MAX_FRAME: u32 = 64 << 20;

/// How the guest runs cases: with these host facts, pooled or not.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Start {
    /// The facts cases are rendered with.
    pub host: HostFacts,
    /// Reuse one vCPU across cases.
    pub pool: bool,
}

/// One case's result in the guest.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Done {
    /// What the guest's KVM did.
    pub trace: Trace,
    /// Kernel splat lines the guest kernel logged while the case ran.
    pub splats: Vec<String>,
    /// Ioctls the guest's backend issued so far.
    pub ioctls: u64,
}

/// The hello payload.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Hello {
    /// The guest's probe report.
    pub report: ProbeReport,
}

/// Write one frame.
pub(super) fn send(w: &mut impl Write, tag: u8, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len() + 1).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut frame = Vec::with_capacity(payload.len() + 5);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.push(tag);
    frame.extend_from_slice(payload);
    w.write_all(&frame)?;
    w.flush()
}

/// Read one frame; `Ok(None)` on a clean end of stream before a frame starts.
pub(super) fn recv(r: &mut impl Read) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            n => got += n,
        }
    }
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad frame length {len}")));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    let tag = buf.remove(0);
    Ok(Some((tag, buf)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_round_trip_and_reject_bad_lengths() {
        let mut buf = Vec::new();
        super::send(&mut buf, super::EXEC, b"case").expect("send");
        super::send(&mut buf, super::READY, b"").expect("send");
        let mut r = buf.as_slice();
        assert_eq!(super::recv(&mut r).expect("recv"), Some((super::EXEC, b"case".to_vec())));
        assert_eq!(super::recv(&mut r).expect("recv"), Some((super::READY, Vec::new())));
        assert_eq!(super::recv(&mut r).expect("recv"), None);
        let mut bad: &[u8] = &[0, 0, 0, 0];
        assert!(super::recv(&mut bad).is_err());
        let mut short: &[u8] = &[9, 0, 0, 0, b'T'];
        assert!(super::recv(&mut short).is_err());
    }
}
