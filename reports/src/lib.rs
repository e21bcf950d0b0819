//! # xsave-reports
//!
//! Human-readable rendering of verdicts and campaign summaries.

#![forbid(unsafe_code)]

pub mod fleet;
pub mod render;
pub mod report;
pub mod repro;
pub mod status;

use std::fmt::Write;
use xsave_oracle::diff::unpredicted;
use xsave_oracle::hexnum::to_hex;
use xsave_oracle::trace::Trace;
use xsave_oracle::verdict::{Divergence, Verdict};
use xsave_oracle::{Case, HostFacts};

/// A multi-line text explanation of `verdict` for `case`.
///
/// An agreement that left bytes unpredicted says so, with the count and the regions
/// (`AGREE (8 bytes not predicted: CPUID leaf 0x1 ECX/EDX)`); it never claims more than was
/// compared.
pub fn verdict_text(case: &Case, host: &HostFacts, verdict: &Verdict, expected: &Trace, observed: &Trace) -> String {
    let mut s = String::new();
    match verdict {
        Verdict::Agree => match unpredicted(case, host, expected) {
            None => {
                let _ = writeln!(s, "AGREE: {} steps, every return value and byte as predicted", observed.results.len());
            }
            Some(u) => {
                let _ = writeln!(s, "AGREE ({u}): {} steps, every other return value and byte as predicted", observed.results.len());
            }
        },
        Verdict::Diverge(d) => divergence_text(&mut s, case, d, expected, observed),
    }
    s
}

fn divergence_text(s: &mut String, case: &Case, d: &Divergence, expected: &Trace, observed: &Trace) {
    let _ = writeln!(s, "DIVERGENCE [{}] {}", d.class.name(), d.title);
    let _ = writeln!(s, "  signature: {}", d.signature);
    let _ = writeln!(s, "  at step {} ({}): {}", d.step, d.origin, d.op);
    let _ =
        writeln!(s, "  predicted under {} with quirks [{}]", d.contract, d.quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", "));
    if let Some(q) = d.explained_by {
        let _ = writeln!(s, "  explained by host quirk {} (the prediction modelling it agrees)", q.name());
    }
    for l in &d.log {
        let _ = writeln!(s, "  kernel: {l}");
    }
    if let Some(k) = d.known_issue.as_deref().and_then(xsave_oracle::known::by_id) {
        let _ = writeln!(s, "  KNOWN ISSUE {} (not new): {}\n    reference: {}", k.id, k.title, k.reference);
    }
    let _ = writeln!(s, "  return: expected {} observed {}", d.expected_ret, d.observed_ret);
    if let Some((e, o)) = d.lengths {
        let _ = writeln!(s, "  length: expected {e} bytes observed {o}");
    }
    for b in &d.bytes {
        let _ =
            writeln!(s, "  bytes {}..{} {}: expected {} observed {}", b.start, b.end, b.region, to_hex(&b.expected), to_hex(&b.observed));
    }
    let _ = writeln!(s, "  rules: {}", d.rules.iter().map(|r| r.id()).collect::<Vec<_>>().join(", "));
    let _ = writeln!(s, "  steps:");
    for (k, (origin, op)) in case.steps().iter().enumerate() {
        let e = expected.results.get(k).map(|r| r.ret.to_string()).unwrap_or_default();
        let o = observed.results.get(k).map(|r| r.ret.to_string()).unwrap_or_default();
        let mark = if k == d.step { "  <== first divergence" } else { "" };
        let _ = writeln!(s, "    {k:>2} {:<28} {:<24} expected {e:<8} observed {o}{mark}", origin.to_string(), op.name());
    }
}
