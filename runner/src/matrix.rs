//! The cross-kernel differential: the same cases on several kernels (and this host), grouped
//! by identical behaviour, with the first differing step and bytes between groups.
//!
//! Pass 1 runs every case on every kernel and keeps, per case, each step's return and a
//! digest of its bytes plus the verdicts under V3 and under the kernel's own probed contract.
//! Pass 2 reruns only the cases whose behaviour differs, keeping full traces, so the table
//! can show bytes without shipping every image out of every guest.

use crate::kvm::KvmBackend;
use crate::probe::ProbeReport;
use crate::{Backend, BackendError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use xsave_oracle::diff::diff;
use xsave_oracle::hash::content_hash;
use xsave_oracle::judge::judge;
use xsave_oracle::trace::Trace;
use xsave_oracle::verdict::{Verdict, VerdictKind};
use xsave_oracle::{Case, Contract, ModelConfig};

/// One case's behaviour on one kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecRecord {
    /// Case name.
    pub case: String,
    /// Per step: return value and a digest of the output bytes.
    pub steps: Vec<(String, String)>,
    /// Digest of the whole trace.
    pub digest: String,
    /// The verdict under V3 (no quirks).
    pub v3: Outcome,
    /// The verdict under the kernel's probed contract and quirks.
    pub own: Outcome,
    /// The full trace (pass 2 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<Trace>,
}

/// A case's verdict in a record: agreement, or the divergence's signature. Stored as the
/// string `agree` ([`VerdictKind::Agree`]'s name) or the signature (`records.jsonl`, what lab guests send back).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Outcome {
    /// Kernel and oracle agree.
    Agree,
    /// They diverge, with this signature.
    Diverge(String),
}

impl Outcome {
    /// The outcome of a verdict.
    pub fn of(v: &Verdict) -> Outcome {
        match v {
            Verdict::Agree => Outcome::Agree,
            Verdict::Diverge(d) => Outcome::Diverge(d.signature.clone()),
        }
    }

    /// Whether kernel and oracle agree.
    pub fn agrees(&self) -> bool {
        *self == Outcome::Agree
    }
}

impl From<String> for Outcome {
    fn from(s: String) -> Outcome {
        if s == VerdictKind::Agree.name() {
            Outcome::Agree
        } else {
            Outcome::Diverge(s)
        }
    }
}

impl From<Outcome> for String {
    fn from(o: Outcome) -> String {
        match o {
            Outcome::Agree => VerdictKind::Agree.name().into(),
            Outcome::Diverge(sig) => sig,
        }
    }
}

/// Run named cases on this machine's KVM (inside a lab guest, or on the host) and record them.
pub fn exec_cases(report: &ProbeReport, cases: &[(String, Case)], full: bool) -> Result<Vec<ExecRecord>, BackendError> {
    let host = &report.host;
    let own = ModelConfig::new(Contract::parse(&report.contract).unwrap_or(Contract::V3), report.quirks.clone());
    let strict = ModelConfig::default();
    let mut be = KvmBackend::new(host.clone(), true)?;
    let mut out = Vec::with_capacity(cases.len());
    for (name, case) in cases {
        let t = be.execute(case)?;
        let steps: Vec<(String, String)> = t.results.iter().map(|r| (r.ret.to_string(), content_hash(&r.data))).collect();
        let all: String = steps.iter().map(|(r, d)| format!("{r}:{d};")).collect();
        out.push(ExecRecord {
            case: name.clone(),
            digest: content_hash(all.as_bytes()),
            steps,
            v3: Outcome::of(&judge(case, host, &strict, &t).1),
            own: Outcome::of(&judge(case, host, &own, &t).1),
            trace: full.then_some(t),
        });
    }
    Ok(out)
}

/// One column of the matrix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Column {
    /// Kernel id (or `host`).
    pub kernel: String,
    /// Probe verdict: contract version.
    pub contract: String,
    /// Quirks found.
    pub quirks: Vec<String>,
    /// Kernel release.
    pub release: String,
    /// Cases diverging from the V3 oracle.
    pub v3_divergences: usize,
    /// Cases diverging from the oracle under the kernel's own contract.
    pub own_divergences: usize,
    /// Guest boot seconds (lab) and run seconds.
    pub boot_seconds: f64,
    /// Seconds running the cases.
    pub run_seconds: f64,
}

/// A case whose behaviour differs between kernels.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Difference {
    /// Case name.
    pub case: String,
    /// Kernels grouped by identical behaviour.
    pub groups: Vec<Vec<String>>,
    /// First step whose return or bytes differ between the first two groups.
    pub first_step: usize,
    /// The op there.
    pub op: String,
    /// Returns of the first two groups there.
    pub rets: (String, String),
    /// Differing regions and bytes (first group vs second), when full traces were fetched.
    pub bytes: Vec<xsave_oracle::verdict::ByteDiff>,
}

/// The whole matrix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Matrix {
    /// Cases run on every column.
    pub cases: usize,
    /// Columns.
    pub columns: Vec<Column>,
    /// Number of distinct behaviour groupings per case count (how many cases have 1, 2, … groups).
    pub group_histogram: BTreeMap<usize, usize>,
    /// Cases whose behaviour differs between kernels.
    pub differences: Vec<Difference>,
}

/// `n` generated cases from generator `seed`, named `000000.case`, … (with guest runs and FPU
/// ops only with `guest`; with `narrow`, a guest CPUID narrower than the lab's 0x207).
pub fn generated(n: u64, seed: u64, narrow: bool, opts: xsave_oracle::gen::GenOptions) -> Vec<(String, Case)> {
    (0..n)
        .map(|i| {
            let c = crate::campaign::case_for_with(seed, i, opts);
            let c = if narrow { crate::campaign::narrow(c, 0x207, i) } else { c };
            (format!("{i:06}.case"), c)
        })
        .collect()
}

/// Every kernel must get the same input bytes: render CPUID bases (which depend on each
/// kernel's KVM_GET_SUPPORTED_CPUID) against one fixed reference table ([`materialize`]).
pub fn materialized(cases: Vec<(String, Case)>) -> Vec<(String, Case)> {
    let reference = xsave_oracle::HostFacts::synthetic(0x207, 0xffff);
    cases.into_iter().map(|(n, c)| (n, materialize(c, &reference))).collect()
}

/// Replace every CPUID base by the explicit entries it renders to on `reference`.
pub fn materialize(mut case: Case, reference: &xsave_oracle::HostFacts) -> Case {
    use xsave_oracle::case::{CpuidBase, CpuidTable};
    let fix = |t: &CpuidTable| CpuidTable { base: CpuidBase::Empty, entries: t.render(reference), reverse: false };
    case.config.cpuid = case.config.cpuid.as_ref().map(fix);
    for op in &mut case.ops {
        if let xsave_oracle::Op::SetCpuid2(t) = op {
            *t = fix(t);
        }
    }
    case
}

/// A column from a kernel's probe report and pass-1 records (`boot` and `run` in seconds).
pub fn column(name: &str, p: &ProbeReport, recs: &[ExecRecord], boot: f64, run: f64) -> Column {
    Column {
        kernel: name.to_string(),
        contract: p.contract.clone(),
        quirks: crate::quirk_list(&p.quirks),
        release: p.kernel_release.clone(),
        v3_divergences: recs.iter().filter(|r| !r.v3.agrees()).count(),
        own_divergences: recs.iter().filter(|r| !r.own.agrees()).count(),
        boot_seconds: boot,
        run_seconds: run,
    }
}

/// The cases (at most 100, by name) whose pass-1 digests differ between columns: what pass 2
/// reruns with full traces.
pub fn differing(cases: &[(String, Case)], pass1: &[Vec<ExecRecord>]) -> Vec<String> {
    (0..cases.len())
        .filter(|&i| pass1.iter().filter_map(|r| r.get(i)).map(|r| &r.digest).collect::<std::collections::BTreeSet<_>>().len() > 1)
        .map(|i| cases[i].0.clone())
        .take(100)
        .collect()
}

/// Build the matrix from pass-1 records (per column) and pass-2 full traces.
pub fn build(
    cases: &[(String, Case)],
    columns: Vec<Column>,
    hosts: &[xsave_oracle::HostFacts],
    pass1: &[Vec<ExecRecord>],
    full: &BTreeMap<(String, String), Trace>,
) -> Matrix {
    let mut hist = BTreeMap::new();
    let mut differences = Vec::new();
    for (ci, (name, case)) in cases.iter().enumerate() {
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (k, recs) in pass1.iter().enumerate() {
            let Some(r) = recs.get(ci) else { continue };
            match groups.iter_mut().find(|(d, _)| *d == r.digest) {
                Some((_, ks)) => ks.push(k),
                None => groups.push((r.digest.clone(), vec![k])),
            }
        }
        *hist.entry(groups.len()).or_default() += 1;
        if groups.len() < 2 {
            continue;
        }
        let (a, b) = (groups[0].1[0], groups[1].1[0]);
        let (ra, rb) = (&pass1[a][ci], &pass1[b][ci]);
        let first_step = ra.steps.iter().zip(&rb.steps).position(|(x, y)| x != y).unwrap_or(ra.steps.len().min(rb.steps.len()));
        let steps = case.steps();
        let op = steps.get(first_step).map(|(_, op)| op.name().to_string()).unwrap_or_else(|| "END".into());
        let rets = (
            ra.steps.get(first_step).map(|s| s.0.clone()).unwrap_or_default(),
            rb.steps.get(first_step).map(|s| s.0.clone()).unwrap_or_default(),
        );
        let bytes = match (full.get(&(columns[a].kernel.clone(), name.clone())), full.get(&(columns[b].kernel.clone(), name.clone()))) {
            (Some(ta), Some(tb)) => {
                // The diff does not care which side is "expected": compare kernel a with kernel b.
                let synthetic = xsave_oracle::HostFacts::synthetic(0x2ff, 0xffff);
                match diff(case, hosts.get(a).unwrap_or(&synthetic), &ModelConfig::default(), ta, tb) {
                    Verdict::Diverge(d) => d.bytes,
                    Verdict::Agree => Vec::new(),
                }
            }
            _ => Vec::new(),
        };
        differences.push(Difference {
            case: name.clone(),
            groups: groups.iter().map(|(_, ks)| ks.iter().map(|&k| columns[k].kernel.clone()).collect()).collect(),
            first_step,
            op,
            rets,
            bytes,
        });
    }
    Matrix { cases: cases.len(), columns, group_histogram: hist, differences }
}

/// Markdown rendering.
pub fn markdown(m: &Matrix) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "# xsave-rig kernel matrix\n\n{} cases on each column.\n", m.cases);
    let _ = writeln!(o, "| kernel | release | contract | quirks | diverging from V3 | diverging from own contract | boot s | run s |\n|---|---|---|---|---|---|---|---|");
    for c in &m.columns {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} |",
            c.kernel,
            c.release,
            c.contract,
            c.quirks.join(", "),
            c.v3_divergences,
            c.own_divergences,
            c.boot_seconds,
            c.run_seconds
        );
    }
    let _ = writeln!(
        o,
        "\nBehaviour groups per case: {}\n",
        m.group_histogram.iter().map(|(g, n)| format!("{n} cases with {g} group(s)")).collect::<Vec<_>>().join(", ")
    );
    let _ = writeln!(o, "## Cases whose behaviour differs between kernels ({})\n", m.differences.len());
    if !m.differences.is_empty() {
        let _ = writeln!(o, "| case | groups | first differing step | returns | bytes |\n|---|---|---|---|---|");
    }
    for d in m.differences.iter().take(200) {
        let groups: Vec<String> = d.groups.iter().map(|g| format!("{{{}}}", g.join(", "))).collect();
        let bytes: Vec<String> = d.bytes.iter().take(3).map(|b| format!("{} {}..{}", b.region, b.start, b.end)).collect();
        let _ = writeln!(
            o,
            "| {} | {} | {} {} | {} vs {} | {} |",
            d.case,
            groups.join(" "),
            d.first_step,
            d.op,
            d.rets.0,
            d.rets.1,
            bytes.join("; ")
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_keeps_its_record_format() {
        assert_eq!(serde_json::to_string(&Outcome::Agree).ok().as_deref(), Some("\"agree\""));
        assert_eq!(serde_json::from_str::<Outcome>("\"sig\"").ok(), Some(Outcome::Diverge("sig".into())));
    }

    #[test]
    fn materialized_cases_carry_no_cpuid_base() {
        use xsave_oracle::case::CpuidBase;
        let cases = materialized(generated(50, 7, true, xsave_oracle::gen::GenOptions { guest: false, fpu: false }));
        assert_eq!(cases.len(), 50);
        assert_eq!(cases[0].0, "000000.case");
        for (_, c) in &cases {
            assert!(c.config.cpuid.iter().all(|t| t.base == CpuidBase::Empty));
        }
    }
}
