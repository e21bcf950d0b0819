//! # xsave-runner
//!
//! Backends that execute [`Case`]s ([`kvm::KvmBackend`] on this host's `/dev/kvm`,
//! [`ModelBackend`] on the oracle under another contract version), the host [`probe`], and
//! fuzz [`campaign`]s that write findings atomically ([`store`]).
//!
//! `unsafe` lives in [`sys`] alone, behind safe functions, and every block there carries a
//! `SAFETY:` comment; the lints below enforce both.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod campaign;
pub mod corpus;
pub mod differential;
pub mod feedback;
pub mod findings;
pub mod groups;
pub mod guest;
pub mod jobs;
pub mod kmsg;
pub mod kvm;
pub mod lab;
pub mod matrix;
pub mod migrate;
pub mod minimize;
pub mod minqueue;
pub mod probe;
pub mod seeds;
pub mod stamp;
pub mod store;
pub mod summary;
#[allow(unsafe_code)]
pub mod sys;

use xsave_oracle::{predict, Case, HostFacts, ModelConfig, Quirk, Trace};

/// Why a backend could not produce an observation (not a divergence: the rig's own failure).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The KVM device is missing or unusable.
    #[error("cannot use KVM: {0}")]
    NoKvm(String),
    /// Creating a VM or vCPU failed.
    #[error("KVM setup failed: {0}")]
    Setup(String),
    /// A lab guest died, hung or failed (the message names its console log).
    #[error("lab guest: {0}")]
    Lab(String),
}

/// Something that executes a case and reports every step's result.
pub trait Backend {
    /// Short name for reports (`kvm`, `model:V2b`, ...).
    fn name(&self) -> String;
    /// The host facts cases are rendered with.
    fn host(&self) -> &HostFacts;
    /// Execute `case` from a fresh vCPU.
    fn execute(&mut self, case: &Case) -> Result<Trace, BackendError>;
    /// Number of ioctls issued so far (0 for backends without ioctls).
    fn ioctls(&self) -> u64 {
        0
    }
    /// Kernel splat lines (WARN, BUG, KASAN, ...) logged since the last call: the kernel's own
    /// signals, a second oracle (empty for backends without a kernel).
    fn kernel_log(&mut self) -> Vec<String> {
        Vec::new()
    }
    /// Execute `cases` in order, each exactly as [`Backend::execute`] would, with the kernel
    /// splat lines logged while each ran ([`Backend::kernel_log`]) kept with its case. A case
    /// that fails has its error in its place and the cases after it still run. Backends whose
    /// every case pays a round trip (the lab) send the whole slice at once; the default loops.
    fn execute_batch(&mut self, cases: &[Case]) -> Vec<Result<Executed, BackendError>> {
        cases.iter().map(|c| self.execute(c).map(|trace| Executed { trace, kernel_log: self.kernel_log() })).collect()
    }
    /// How many cases [`Backend::execute_batch`] should get at a time to pay off (1: batching
    /// gains nothing, and campaigns then generate each case after the previous one is judged).
    fn batch_size(&self) -> usize {
        1
    }
}

/// One case's result from [`Backend::execute_batch`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Executed {
    /// What the backend observed.
    pub trace: Trace,
    /// Kernel splat lines logged while the case ran.
    pub kernel_log: Vec<String>,
}

/// The KVM device node: `$XSAVE_RIG_DEV_KVM` or `/dev/kvm`.
pub fn kvm_path() -> String {
    std::env::var("XSAVE_RIG_DEV_KVM").unwrap_or_else(|_| "/dev/kvm".to_string())
}

/// Open the KVM device, with a one-line reason when that is impossible.
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, BackendError> {
    let path = kvm_path();
    if let Err(e) = std::fs::metadata(&path) {
        return Err(BackendError::NoKvm(format!("{path}: {e}")));
    }
    let c = std::ffi::CString::new(path.clone()).map_err(|_| BackendError::NoKvm(format!("{path}: invalid path")))?;
    let kvm = kvm_ioctls::Kvm::new_with_path(c).map_err(|e| BackendError::NoKvm(format!("{path}: {e}")))?;
    match kvm.get_api_version() {
        12 => Ok(kvm),
        v => Err(BackendError::NoKvm(format!("{path}: not a KVM device (KVM_GET_API_VERSION returned {v})"))),
    }
}

/// Why KVM cannot be used here, or `None` when it can.
pub fn kvm_unavailable() -> Option<String> {
    open_kvm().err().map(|e| e.to_string())
}

/// Quirk names, in order, as `campaign.json`, findings and matrix columns store them.
pub fn quirk_list(quirks: &[Quirk]) -> Vec<String> {
    quirks.iter().map(|q| q.name().to_string()).collect()
}

/// Quirk names joined with `, ` (empty for none): how summaries and messages show the quirks a
/// model is judged under (`quirks [a, b]`).
pub fn quirk_names(quirks: &[Quirk]) -> String {
    quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
}

/// Executes cases on the oracle itself under some contract: a stand-in for a historical
/// kernel, so the detection path is testable without a buggy kernel.
pub struct ModelBackend {
    host: HostFacts,
    cfg: ModelConfig,
}

impl ModelBackend {
    /// A model backend.
    pub fn new(host: HostFacts, cfg: ModelConfig) -> ModelBackend {
        ModelBackend { host, cfg }
    }
}

impl Backend for ModelBackend {
    fn name(&self) -> String {
        format!("model:{}", self.cfg.contract_label())
    }
    fn host(&self) -> &HostFacts {
        &self.host
    }
    fn execute(&mut self, case: &Case) -> Result<Trace, BackendError> {
        let mut t = predict(case, &self.host, &self.cfg);
        for r in &mut t.results {
            r.rules.clear();
            r.unpredicted.clear();
        }
        Ok(t)
    }
}
