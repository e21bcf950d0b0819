//! The control channel between [`super::LabBackend`] (host) and [`super::serve`] (guest):
//! length-prefixed frames (`u32` little-endian length of what follows, one tag byte, the
//! payload) on the virtio-serial port `org.xsave-rig.ctl`.
//!
//! Guest → host: `H` hello (the guest's probe report, JSON), `R` ready, `T` a case's result
//! (postcard [`Done`]), `E` the guest's own failure (UTF-8 text). Host → guest: `S` start (JSON
//! [`Start`]), `B` a batch of cases to execute in order ([`encode_batch`]), answered by one
//! `T` or `E` frame per case, in order, each sent as its case finishes.
//!
//! Results are postcard, not JSON: serialising a trace's images as JSON hex took the guest
//! (under TCG) about as long as a tenth of the case itself. A batch saves the round trip per
//! case: the guest goes from one case to the next without waiting for the host.

use crate::probe::ProbeReport;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use xsave_oracle::case::Origin;
use xsave_oracle::{Case, HostFacts, OpResult, Ret, Trace};

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
/// Execute a batch of cases.
pub(super) const BATCH: u8 = b'B';

/// Largest frame either side accepts (a trace of a long case with XSAVE2 images is far smaller).
const MAX_FRAME: u32 = 64 << 20;

/// How the guest runs cases: with these host facts, pooled or not.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Start {
    /// The facts cases are rendered with.
    pub host: HostFacts,
    /// Reuse one vCPU across cases.
    pub pool: bool,
    /// CPU-time bound of one guest run, in microseconds (none: the default).
    #[serde(default)]
    pub guest_timeout_us: Option<u64>,
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
    /// Guest microseconds the case took on the guest's KVM (the floor of the case rate).
    pub micros: u64,
}

/// The `T` frame: [`Done`] with each step as (origin, return, bytes). Observations never carry
/// a prediction's rules, unpredicted ranges or allowed sets, and postcard (not self-describing)
/// cannot skip fields the way [`OpResult`]'s serde attributes do.
#[derive(Serialize, Deserialize)]
struct DoneFrame {
    results: Vec<(Origin, Ret, Vec<u8>)>,
    splats: Vec<String>,
    ioctls: u64,
    micros: u64,
}

impl Done {
    /// The `T` frame's payload.
    pub(super) fn encode(&self) -> Vec<u8> {
        let results = self.trace.results.iter().map(|r| (r.origin, r.ret, r.data.clone())).collect();
        let frame = DoneFrame { results, splats: self.splats.clone(), ioctls: self.ioctls, micros: self.micros };
        // postcard serialization of plain data into a Vec cannot fail.
        postcard::to_stdvec(&frame).unwrap_or_default()
    }

    /// A `T` frame's payload.
    pub(super) fn decode(payload: &[u8]) -> Result<Done, String> {
        let f: DoneFrame = postcard::from_bytes(payload).map_err(|e| format!("unreadable result frame: {e}"))?;
        let results = f.results.into_iter().map(|(origin, ret, data)| OpResult { data, ..OpResult::new(origin, ret) }).collect();
        Ok(Done { trace: Trace { results }, splats: f.splats, ioctls: f.ioctls, micros: f.micros })
    }
}

/// A `B` frame's payload: the cases in the binary case format.
pub(super) fn encode_batch(cases: &[Case]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = cases.iter().map(Case::encode).collect();
    postcard::to_stdvec(&encoded).unwrap_or_default()
}

/// The cases of a `B` frame.
pub(super) fn decode_batch(payload: &[u8]) -> Result<Vec<Case>, String> {
    let encoded: Vec<Vec<u8>> = postcard::from_bytes(payload).map_err(|e| format!("batch frame: {e}"))?;
    encoded.iter().map(|b| Case::decode(b).map_err(|e| format!("case in a batch frame: {e}"))).collect()
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
        super::send(&mut buf, super::BATCH, b"case").expect("send");
        super::send(&mut buf, super::READY, b"").expect("send");
        let mut r = buf.as_slice();
        assert_eq!(super::recv(&mut r).expect("recv"), Some((super::BATCH, b"case".to_vec())));
        assert_eq!(super::recv(&mut r).expect("recv"), Some((super::READY, Vec::new())));
        assert_eq!(super::recv(&mut r).expect("recv"), None);
        let mut bad: &[u8] = &[0, 0, 0, 0];
        assert!(super::recv(&mut bad).is_err());
        let mut short: &[u8] = &[9, 0, 0, 0, b'T'];
        assert!(super::recv(&mut short).is_err());
    }

    #[test]
    fn batches_and_results_round_trip() {
        use xsave_oracle::trace::{OpResult, Ret};
        let cases: Vec<xsave_oracle::Case> = (0..5).map(|i| crate::campaign::case_for(7, i)).collect();
        let back = super::decode_batch(&super::encode_batch(&cases)).expect("batch");
        assert_eq!(
            back.iter().map(xsave_oracle::Case::encode).collect::<Vec<_>>(),
            cases.iter().map(xsave_oracle::Case::encode).collect::<Vec<_>>()
        );
        assert!(super::decode_batch(b"\xff\xff").is_err());
        let trace = xsave_oracle::Trace {
            results: vec![OpResult { data: vec![1, 2, 0xff], ..OpResult::new(cases[0].steps()[0].0, Ret::Err(22)) }],
        };
        let done = super::Done { trace, splats: vec!["WARNING: x".into()], ioctls: 9, micros: 1234 };
        let got = super::Done::decode(&done.encode()).expect("done");
        assert_eq!((got.trace, got.splats, got.ioctls, got.micros), (done.trace, done.splats, done.ioctls, done.micros));
        assert!(super::Done::decode(b"").is_err());
    }
}
