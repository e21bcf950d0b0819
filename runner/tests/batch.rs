//! Batched execution ([`Backend::execute_batch`]) changes nothing a campaign produces: the same
//! summary, findings and corpus, byte for byte, as one case at a time, including where an
//! observation takes a hardware choice the plain prediction did not (the campaign's
//! speculative feedback is then undone and the cases after it generated again).

use std::path::Path;
use xsave_oracle::trace::Allowed;
use xsave_oracle::{predict, Case, Contract, HostFacts, ModelConfig, Trace};
use xsave_runner::campaign::{run, CampaignConfig, Summary};
use xsave_runner::{Backend, BackendError, Executed};
use xsave_testkit::tempdir;

/// The model under `contract`, taking the other side of every hardware choice the prediction
/// allows (free bits set, the first alternative bytes), batching `batch` cases at a time.
struct Chooser {
    host: HostFacts,
    cfg: ModelConfig,
    batch: usize,
    /// Cases executed, and the sizes of the batches asked for.
    executed: u64,
    batches: Vec<usize>,
}

impl Chooser {
    fn observe(&self, case: &Case) -> Trace {
        let mut t = predict(case, &self.host, &self.cfg);
        for r in &mut t.results {
            for a in std::mem::take(&mut r.allowed) {
                match a {
                    Allowed::FreeBits { at, mask, .. } => {
                        let at = at as usize;
                        if let Some(w) = r.data.get_mut(at..at + 8) {
                            let v = u64::from_le_bytes(w.try_into().expect("8 bytes")) ^ mask;
                            w.copy_from_slice(&v.to_le_bytes());
                        }
                    }
                    Allowed::OneOf { start, values, .. } => {
                        let (s, v) = (start as usize, values.first().cloned().unwrap_or_default());
                        if let Some(d) = r.data.get_mut(s..s + v.len()) {
                            d.copy_from_slice(&v);
                        }
                    }
                    Allowed::Unless { .. } => {}
                }
            }
            r.rules.clear();
            r.unpredicted.clear();
        }
        t
    }
}

impl Backend for Chooser {
    fn name(&self) -> String {
        "chooser".into()
    }
    fn host(&self) -> &HostFacts {
        &self.host
    }
    fn execute(&mut self, case: &Case) -> Result<Trace, BackendError> {
        self.executed += 1;
        Ok(self.observe(case))
    }
    fn execute_batch(&mut self, cases: &[Case]) -> Vec<Result<Executed, BackendError>> {
        self.batches.push(cases.len());
        cases.iter().map(|c| self.execute(c).map(|trace| Executed { trace, kernel_log: Vec::new() })).collect()
    }
    fn batch_size(&self) -> usize {
        self.batch
    }
}

/// Every file under `dir` (relative path, bytes), sorted, but the state with its timings and
/// the lock files (a process id).
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n != "campaign.json" && n != "stats.jsonl" && !n.to_string_lossy().ends_with(".lock")) {
                let rel = p.strip_prefix(dir).expect("prefix").display().to_string();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn campaign(contract: Contract, batch: usize, dir: &Path) -> (Summary, Chooser) {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut be =
        Chooser { host, cfg: ModelConfig { contract, quirks: vec![], ..ModelConfig::default() }, batch, executed: 0, batches: Vec::new() };
    let cfg =
        CampaignConfig { workdir: Some(dir.to_path_buf()), feedback: true, minimize_budget: 200, ..CampaignConfig::new(9, Some(1500)) };
    let s = run(&mut be, cfg).expect("campaign");
    (s, be)
}

/// The summary's deterministic part (no timings, no wall-clock stamps).
fn outcome(s: &Summary) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                for k in ["seconds", "execs_per_sec", "resources", "ioctls", "unix", "minimize_seconds"] {
                    m.remove(k);
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(s).expect("json");
    strip(&mut v);
    v
}

#[test]
fn batched_campaigns_match_unbatched_byte_for_byte() {
    for contract in [Contract::V3, Contract::V2b] {
        let (one, many) = (tempdir(), tempdir());
        let (a, be1) = campaign(contract, 1, one.path());
        let (b, be7) = campaign(contract, 7, many.path());
        assert!(be1.batches.iter().all(|&n| n == 1));
        assert!(be7.batches.iter().filter(|&&n| n == 7).count() > 100, "{contract:?}: the campaign really batched");
        assert_eq!(outcome(&a), outcome(&b), "{contract:?}: summaries differ");
        assert!(a.corpus > 10, "{contract:?}: feedback grew a corpus ({})", a.corpus);
        let (x, y) = (files(one.path()), files(many.path()));
        let names = |v: &[(String, Vec<u8>)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(&x), names(&y), "{contract:?}: findings or corpus entries differ");
        for ((n, a), (_, b)) in x.iter().zip(&y) {
            assert!(a == b, "{contract:?}: {n} differs");
        }
        // The choices the backend takes do change what some cases cover: speculation was
        // undone and cases generated again (executed, but not counted).
        assert!(be7.executed > be1.executed, "{contract:?}: no speculation was undone ({} vs {})", be7.executed, be1.executed);
        if contract == Contract::V2b {
            assert!(a.findings > 0, "V2b diverges from V3");
        }
    }
}
