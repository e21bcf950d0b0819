//! The report model (`report.json`, schema version [`SCHEMA_VERSION`]) and its loading from a
//! campaign workdir.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use xsave_oracle::abi::Region;
use xsave_oracle::trace::Trace;
use xsave_oracle::verdict::{ByteDiff, Divergence, Verdict};
use xsave_oracle::{Case, HostFacts};
use xsave_runner::store::{caps, read_bounded, read_bounded_string};

/// Version of the `report.json` schema; bumped on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Why a workdir could not be reported.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file could not be read.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// The campaign state is unreadable or out of range (the message names the file).
    #[error("{0}")]
    State(String),
    /// A file is not what it should be.
    #[error("{path}: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn read(path: &Path) -> Result<Vec<u8>, ReportError> {
    let cap = if path.extension().is_some_and(|e| e == "bin") { caps::CASE } else { caps::JSON };
    read_bounded(path, cap).map_err(|err| ReportError::Io { path: path.to_path_buf(), err })
}

fn json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ReportError> {
    serde_json::from_slice(&read(path)?).map_err(|e| ReportError::Corrupt { path: path.to_path_buf(), why: e.to_string() })
}

/// One sample of `stats.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct StatPoint {
    /// Seconds since the campaign started.
    pub seconds: f64,
    /// Cases executed.
    pub execs: u64,
    /// Cases per second in the last interval.
    pub execs_per_sec: f64,
    /// Distinct findings so far.
    pub findings: u64,
    /// Contract rules reached so far (absent in workdirs written before it was recorded).
    #[serde(default)]
    pub rules_covered: usize,
    /// Wall-clock time of the sample, RFC 3339 UTC (absent in older workdirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// Wall-clock time of the sample, Unix seconds (absent in older workdirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<f64>,
    /// The host id ([`xsave_runner::stamp::host_id`]; absent in older workdirs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// One executed step as the report shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepView {
    /// Index.
    pub index: usize,
    /// Where it came from.
    pub origin: String,
    /// The ioctl.
    pub op: String,
    /// Predicted return.
    pub expected: String,
    /// Observed return.
    pub observed: String,
}

/// One guest run of a finding's case (`KVM_RUN` of a guest program), apart from the GETs'
/// byte diff: how the run ended, and what the guest itself saw (its own XSAVE image of the
/// state, when the program stores one) where it differs from the prediction, by region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GuestRunView {
    /// Step index.
    pub step: usize,
    /// Predicted exit (`end`, `shutdown`, ...) or error.
    pub expected_exit: String,
    /// Observed exit or error.
    pub observed_exit: String,
    /// Bytes of the guest's image predicted and observed (0: the program stores none).
    pub expected_len: usize,
    /// Observed length.
    pub observed_len: usize,
    /// Differing regions of the guest's image (the prediction's allowed hardware choices
    /// resolved against the observation first), plus XSTATE_BV for context when any differs.
    pub regions: Vec<ByteDiff>,
}

/// The guest runs of `case` with their observations ([`GuestRunView`]).
pub fn guest_runs(case: &Case, host: Option<&HostFacts>, expected: &Trace, observed: &Trace) -> Vec<GuestRunView> {
    let exit = |r: &xsave_oracle::trace::OpResult| match r.ret {
        xsave_oracle::Ret::Ok(v) => xsave_oracle::guest::Exit::from_code(v).map_or_else(|| format!("exit {v}"), |e| e.name().to_string()),
        e => e.to_string(),
    };
    case.steps()
        .iter()
        .enumerate()
        .filter(|(_, (_, op))| matches!(**op, xsave_oracle::Op::RunGuest(_)))
        .filter_map(|(k, _)| {
            let (e, o) = (expected.results.get(k)?, observed.results.get(k)?);
            let (e, _) = e.resolve(o);
            let regions = match host {
                Some(h) if e.data.len() == o.data.len() && e.data.len() >= 576 && e.data != o.data => xsave_regions(h, &e.data, &o.data),
                _ => Vec::new(),
            };
            Some(GuestRunView {
                step: k,
                expected_exit: exit(&e),
                observed_exit: exit(o),
                expected_len: e.data.len(),
                observed_len: o.data.len(),
                regions,
            })
        })
        .collect()
}

/// One finding.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FindingReport {
    /// Signature (directory name).
    pub signature: String,
    /// The divergence of the minimized case.
    pub divergence: Divergence,
    /// The minimized case.
    pub case: Case,
    /// Its executed steps with both returns.
    pub steps: Vec<StepView>,
    /// Minimization figures, if the campaign minimized it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimize: Option<serde_json::Value>,
    /// Predicted output of the diverging step (XSAVE images for the byte view).
    #[serde(with = "xsave_oracle::hexnum::bytes_hex")]
    pub expected_data: Vec<u8>,
    /// Observed output of the diverging step.
    #[serde(with = "xsave_oracle::hexnum::bytes_hex")]
    pub observed_data: Vec<u8>,
    /// The case did not diverge again when the campaign wrote it (nondeterministic): kept as
    /// found, not minimized.
    #[serde(default)]
    pub unreproduced: bool,
    /// The case's guest runs and what the guest saw, apart from the GETs' bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_runs: Vec<GuestRunView>,
}

/// A whole report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// xsave-rig version that wrote it.
    pub generated_by: String,
    /// Host fingerprint (`host.json`: a probe report, or host facts).
    pub host: serde_json::Value,
    /// Campaign summary (`campaign.json`).
    pub campaign: serde_json::Value,
    /// Samples over time (`stats.jsonl`).
    pub stats: Vec<StatPoint>,
    /// Findings, by signature.
    pub findings: Vec<FindingReport>,
    /// Files that could not be used (named, never silently dropped).
    pub skipped: Vec<String>,
    /// The workdir, absolute: the base SARIF artifact URIs are relative to.
    #[serde(default)]
    pub workdir: String,
}

/// The group of `groups` a signature belongs to.
pub fn group_of<'a>(groups: &'a [xsave_runner::campaign::Group], signature: &str) -> Option<&'a xsave_runner::campaign::Group> {
    groups.iter().find(|g| g.signatures.iter().any(|s| s == signature))
}

impl Report {
    /// The campaign's root-cause groups, largest first (none in workdirs written before groups).
    pub fn groups(&self) -> Vec<xsave_runner::campaign::Group> {
        let mut g: Vec<xsave_runner::campaign::Group> =
            self.campaign.get("groups").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
        g.sort_by(|a, b| b.cases.cmp(&a.cases).then_with(|| a.key.cmp(&b.key)));
        g
    }

    /// Per-signature hit counts and first/last hits (empty in states written before them).
    pub fn signature_hits(&self) -> std::collections::BTreeMap<String, xsave_runner::campaign::Hits> {
        self.campaign.get("signature_hits").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default()
    }

    /// The host facts, if the fingerprint carries them.
    pub fn host_facts(&self) -> Option<HostFacts> {
        serde_json::from_value(self.host.get("host")?.clone()).ok()
    }
}

/// Read a campaign workdir.
pub fn load(dir: &Path) -> Result<Report, ReportError> {
    let state_path = dir.join("campaign.json");
    // The state is checked as a campaign would check it on resume: schema and ranges.
    let state = xsave_runner::campaign::load_state(&state_path).map_err(|e| ReportError::State(e.to_string()))?;
    let mut campaign = serde_json::to_value(&state).map_err(|e| ReportError::Corrupt { path: state_path, why: e.to_string() })?;
    if let Some(o) = campaign.as_object_mut() {
        o.remove("corpus_order");
        o.remove("own_signatures");
    }
    let host: serde_json::Value = if dir.join("host.json").exists() { json(&dir.join("host.json"))? } else { serde_json::json!({}) };
    let mut skipped = Vec::new();
    let stats_path = dir.join("stats.jsonl");
    let stats = match read_bounded_string(&stats_path, caps::STATS) {
        // A campaign appends to stats.jsonl while reports read it: a last line without its
        // newline is still being written, not corrupt, and is left for the next report.
        Ok(text) => text
            .split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(|l| l.trim_end_matches('\n'))
            .enumerate()
            .filter_map(|(n, l)| match serde_json::from_str(l) {
                Ok(p) => Some(p),
                Err(e) => {
                    skipped.push(format!("{}:{}: {e}", stats_path.display(), n + 1));
                    None
                }
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            skipped.push(format!("{}: {e}", stats_path.display()));
            Vec::new()
        }
    };
    let mut findings = Vec::new();
    let fdir = dir.join("findings");
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(&fdir) {
        Ok(d) => {
            d.flatten().map(|e| e.path()).filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'))).collect()
        }
        Err(_) => Vec::new(),
    };
    entries.sort();
    let facts: Option<HostFacts> = host.get("host").and_then(|h| serde_json::from_value(h.clone()).ok());
    for p in entries {
        match load_finding(&p, facts.as_ref()) {
            Ok(f) => findings.push(f),
            Err(e) => skipped.push(e.to_string()),
        }
    }
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        generated_by: format!("xsave-rig {}", env!("CARGO_PKG_VERSION")),
        host,
        campaign,
        stats,
        findings,
        skipped,
        workdir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string(),
    })
}

fn load_finding(p: &Path, host: Option<&HostFacts>) -> Result<FindingReport, ReportError> {
    let signature = p.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
    let case_path = p.join("case.bin");
    let case = Case::decode(&read(&case_path)?).map_err(|e| ReportError::Corrupt { path: case_path.clone(), why: e.to_string() })?;
    let vpath = p.join("verdict.json");
    let v: xsave_runner::campaign::Finding = json(&vpath)?;
    let Verdict::Diverge(d) = v.verdict else {
        return Err(ReportError::Corrupt { path: vpath, why: "verdict is not a divergence".into() });
    };
    let minimize = if p.join("minimize.json").exists() { Some(json(&p.join("minimize.json"))?) } else { None };
    let steps = case
        .steps()
        .iter()
        .enumerate()
        .map(|(i, (origin, op))| StepView {
            index: i,
            origin: origin.to_string(),
            op: op.name().to_string(),
            expected: v.expected.results.get(i).map(|r| r.ret.to_string()).unwrap_or_default(),
            observed: v.observed.results.get(i).map(|r| r.ret.to_string()).unwrap_or_default(),
        })
        .collect();
    let data = |t: &Trace| t.results.get(d.step).map(|r| r.data.clone()).unwrap_or_default();
    let guest_runs = guest_runs(&case, host, &v.expected, &v.observed);
    Ok(FindingReport {
        guest_runs,
        signature,
        expected_data: data(&v.expected),
        observed_data: data(&v.observed),
        divergence: *d,
        case,
        steps,
        minimize,
        unreproduced: v.unreproduced,
    })
}

/// Rows of the byte-level view of an XSAVE image diff: every region of the ABI's table
/// ([`Region::xsave_table`]) that differs, plus XSTATE_BV, each with expected and observed
/// bytes.
pub fn xsave_regions(host: &HostFacts, exp: &[u8], obs: &[u8]) -> Vec<ByteDiff> {
    let n = exp.len().min(obs.len());
    Region::xsave_table(&host.components)
        .into_iter()
        .filter_map(|r| r.xsave_span().map(|(s, e)| (s, e, r)))
        .filter(|&(s, e, r)| e <= n && (exp[s..e] != obs[s..e] || r == Region::XstateBv))
        .map(|(s, e, r)| ByteDiff {
            start: s as u32,
            end: e as u32,
            region: r.label(),
            expected: exp[s..e].to_vec(),
            observed: obs[s..e].to_vec(),
        })
        .collect()
}
