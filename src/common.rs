//! Helpers shared by the commands: input files, host facts, model configuration, backends.

use crate::args::*;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xsave_oracle::{Case, HostFacts, ModelConfig, Quirk};
use xsave_runner::kvm::KvmBackend;
use xsave_runner::probe;
use xsave_runner::store::caps;
pub use xsave_runner::{quirk_list, quirk_names};
use xsave_runner::{Backend, ModelBackend};

/// Write `bytes` to `path` atomically (temporary file, fsync, rename): a failure leaves
/// nothing half-written, and a directory where a file is expected is a one-line error.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    xsave_runner::store::write_atomic(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// A file given as input, read bounded and without blocking ([`xsave_runner::store::read_bounded`]).
pub fn read_input(path: &Path, cap: u64) -> Result<Vec<u8>> {
    xsave_runner::store::read_bounded(path, cap).with_context(|| format!("cannot read {}", path.display()))
}

/// [`read_input`] as UTF-8 text.
pub fn read_text(path: &Path, cap: u64) -> Result<String> {
    xsave_runner::store::read_bounded_string(path, cap).with_context(|| format!("cannot read {}", path.display()))
}

pub fn load_case(path: &Path) -> Result<Case> {
    let bytes = read_input(path, caps::CASE)?;
    let case = if bytes.starts_with(xsave_oracle::case::MAGIC) {
        Case::decode(&bytes)
    } else {
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{}: not a case file (neither XSRC binary nor JSON)", path.display()))?;
        Case::from_json(&text)
    };
    case.with_context(|| format!("{}: corrupt case", path.display()))
}

/// The label a raw fuzzer input gets wherever it is shown.
pub const RAW_LABEL: &str = "(raw fuzzer input, read structurally)";

/// A case file, or a raw libFuzzer/honggfuzz input (neither `XSRC` nor JSON, not empty) read
/// the way the fuzz harnesses read it; the flag says which. A corrupt `XSRC` file or a JSON
/// file that is not a case stays an error.
pub fn load_case_or_raw(path: &Path) -> Result<(Case, bool)> {
    let bytes = read_input(path, caps::CASE)?;
    let json_name = path.extension().is_some_and(|e| e == "json");
    if !json_name && xsave_runner::corpus::is_raw_input(&bytes) {
        return Ok((xsave_oracle::case::from_fuzz_input(&bytes), true));
    }
    if bytes.is_empty() {
        bail!("{}: empty file, not a case", path.display());
    }
    load_case(path).map(|c| (c, false))
}

/// Host facts, and the fingerprint they came from (a probe report, the file given, or a
/// synthetic host marked as such).
pub fn host_facts(o: &OracleArgs, need_kvm: bool) -> Result<(HostFacts, serde_json::Value)> {
    if let Some(p) = &o.host_facts {
        let text = read_text(p, caps::JSON)?;
        let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
        let host = v.get("host").cloned().unwrap_or_else(|| v.clone());
        let host: HostFacts = serde_json::from_value(host).with_context(|| format!("{}: not a probe report or host facts", p.display()))?;
        let fp = if v.get("host").is_some() { v } else { serde_json::json!({ "host": v }) };
        return Ok((host, fp));
    }
    match xsave_runner::kvm_unavailable() {
        Some(why) if need_kvm => bail!("{why}"),
        Some(_) => {
            let host = HostFacts::synthetic(0x2e7, 0xffff);
            let fp = serde_json::json!({ "synthetic": true, "contract": "V3", "host": host });
            Ok((host, fp))
        }
        None => {
            let r = probe::probe()?;
            Ok((r.host.clone(), serde_json::to_value(&r)?))
        }
    }
}

pub fn model_config(o: &OracleArgs, host: &HostFacts) -> Result<ModelConfig> {
    let quirks = match o.quirks.as_str() {
        "auto" => host.quirks.clone(),
        "none" => Vec::new(),
        list => list
            .split(',')
            .map(|n| Quirk::from_name(n.trim()).ok_or_else(|| anyhow::anyhow!("unknown quirk {n:?} (known: {})", quirk_names(Quirk::ALL))))
            .collect::<Result<Vec<_>>>()?,
    };
    Ok(ModelConfig::new(o.contract, quirks))
}

/// A backend under another name (`lab:K` for the guest's `kvm`).
pub struct Labelled {
    inner: Box<dyn Backend>,
    label: String,
}

impl Backend for Labelled {
    fn name(&self) -> String {
        self.label.clone()
    }
    fn host(&self) -> &HostFacts {
        self.inner.host()
    }
    fn execute(&mut self, case: &Case) -> Result<xsave_oracle::trace::Trace, xsave_runner::BackendError> {
        self.inner.execute(case)
    }
    fn ioctls(&self) -> u64 {
        self.inner.ioctls()
    }
    fn kernel_log(&mut self) -> Vec<String> {
        self.inner.kernel_log()
    }
    fn execute_batch(&mut self, cases: &[Case]) -> Vec<Result<xsave_runner::Executed, xsave_runner::BackendError>> {
        self.inner.execute_batch(cases)
    }
    fn batch_size(&self) -> usize {
        self.inner.batch_size()
    }
}

pub fn make_backend(b: &BackendArgs, host: &HostFacts) -> Result<Box<dyn Backend>> {
    let be = make_backend_unlabelled(b, host)?;
    Ok(match &b.backend_label {
        Some(label) => Box::new(Labelled { inner: be, label: label.clone() }),
        None => be,
    })
}

pub fn make_backend_unlabelled(b: &BackendArgs, host: &HostFacts) -> Result<Box<dyn Backend>> {
    Ok(match &b.backend {
        BackendKind::Kvm => Box::new(KvmBackend::new(host.clone(), !b.no_pool)?.with_guest_timeout(b.guest_timeout)),
        BackendKind::Model(cfg) => Box::new(ModelBackend::new(host.clone(), cfg.clone())),
        BackendKind::Lab(k) => bail!("lab:{k}: the lab backend is opened with its host facts (internal error)"),
    })
}

/// The first difference between host facts `given` (from `--host-facts`) and this host's
/// measured ones: supported XCR0, host XCR0, component layout, MXCSR mask.
pub fn host_difference(given: &HostFacts, here: &HostFacts) -> Option<String> {
    if given.supported_xcr0 != here.supported_xcr0 {
        return Some(format!("supported_xcr0 {:#x} there, {:#x} here", given.supported_xcr0, here.supported_xcr0));
    }
    if given.host_xcr0 != here.host_xcr0 {
        return Some(format!("host_xcr0 {:#x} there, {:#x} here", given.host_xcr0, here.host_xcr0));
    }
    let sorted = |h: &HostFacts| {
        let mut c: Vec<(u8, u32, u32, bool)> = h.components.iter().map(|c| (c.bit, c.offset, c.size, c.align64)).collect();
        c.sort();
        c
    };
    let (a, b) = (sorted(given), sorted(here));
    if a != b {
        let d = a.iter().zip(&b).find(|(x, y)| x != y);
        return Some(match d {
            Some((x, y)) => {
                format!("component layout: bit {} offset {} size {} there, bit {} offset {} size {} here", x.0, x.1, x.2, y.0, y.1, y.2)
            }
            None => format!("component layout: {} components there, {} here", a.len(), b.len()),
        });
    }
    if given.mxcsr_feature_mask != here.mxcsr_feature_mask || given.init_mxcsr_mask != here.init_mxcsr_mask {
        return Some(format!(
            "mxcsr mask {:#x}/{:#x} there, {:#x}/{:#x} here",
            given.mxcsr_feature_mask, given.init_mxcsr_mask, here.mxcsr_feature_mask, here.init_mxcsr_mask
        ));
    }
    None
}

/// Host facts for a backend (a model backend has no host quirks) and their fingerprint.
/// `--host-facts` of another host on the kvm backend is refused unless `--force-host-facts`.
pub fn backend_host(b: &BackendArgs, o: &OracleArgs) -> Result<(HostFacts, serde_json::Value)> {
    let (mut host, mut fp) = host_facts(o, b.backend == BackendKind::Kvm)?;
    if let (BackendKind::Kvm, Some(p), false) = (&b.backend, &o.host_facts, o.force_host_facts) {
        if let Some(why) = xsave_runner::kvm_unavailable() {
            bail!("{why}");
        }
        let here = probe::host_facts()?;
        if let Some(d) = host_difference(&host, &here) {
            bail!(
                "--host-facts {} describes another host ({d}); pass --force-host-facts to run this host's KVM against it anyway",
                p.display()
            );
        }
    }
    if let BackendKind::Model(cfg) = &b.backend {
        host.quirks.clear();
        host.pvm_dropped_leaves.clear();
        fp["host"] = serde_json::to_value(&host)?;
        fp["model_backend"] = serde_json::json!(cfg.contract_label());
    }
    Ok((host, fp))
}

/// The backend, the host facts it renders cases with and their fingerprint. `lab:K` boots
/// K's guest once and takes its probe report (or `--host-facts`, checked against the guest's
/// unless `--force-host-facts`).
pub fn open_backend(b: &BackendArgs, o: &OracleArgs) -> Result<(Box<dyn Backend>, HostFacts, serde_json::Value)> {
    use xsave_runner::lab;
    let BackendKind::Lab(k) = &b.backend else {
        let (host, fp) = backend_host(b, o)?;
        return Ok((make_backend(b, &host)?, host, fp));
    };
    let given = if o.host_facts.is_some() { Some(host_facts(o, false)?) } else { None };
    let opts = lab::LabOptions {
        host: given.as_ref().map(|(h, _)| h.clone()),
        no_pool: b.no_pool,
        guest_timeout: Some(b.guest_timeout),
        ..lab::LabOptions::default()
    };
    let be = lab::LabBackend::boot(k, opts)?;
    let fp = match (given, &o.host_facts) {
        (Some((g, fp)), Some(p)) => {
            if let (Some(d), false) = (host_difference(&g, &be.probe_report().host), o.force_host_facts) {
                bail!(
                    "--host-facts {} describes another host than lab:{k} ({d}); pass --force-host-facts to run its KVM against it anyway",
                    p.display()
                );
            }
            fp
        }
        _ => serde_json::to_value(be.probe_report())?,
    };
    let host = be.host().clone();
    Ok((Box::new(be), host, fp))
}

pub fn read_case_dir(dir: &Path) -> Result<Vec<(String, Case)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.iter().map(|f| load_case(f).map(|c| (f.file_name().and_then(|n| n.to_str()).unwrap_or("case").to_string(), c))).collect()
}

pub fn load_target(p: &Path) -> Result<xsave_runner::migrate::Target> {
    let text = read_text(p, caps::JSON)?;
    let v: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", p.display()))?;
    xsave_runner::migrate::Target::from_fingerprint(&p.display().to_string(), &v).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
}
