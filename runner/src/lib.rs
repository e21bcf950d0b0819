//! # xsave-runner
//!
//! Backends that execute [`Case`]s ([`kvm::KvmBackend`] on this host's `/dev/kvm`,
//! [`ModelBackend`] on the oracle under another contract version), the host [`probe`], and
//! fuzz [`campaign`]s that write findings atomically ([`store`]).

pub mod bench;
pub mod campaign;
pub mod kvm;
pub mod probe;
pub mod store;
pub mod sys;

use xsave_oracle::{predict, Case, HostFacts, ModelConfig, Trace};

/// Why a backend could not produce an observation (not a divergence: the rig's own failure).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// `/dev/kvm` missing or unusable.
    #[error("cannot open /dev/kvm: {0}")]
    NoKvm(String),
    /// Creating a VM or vCPU failed.
    #[error("KVM setup failed: {0}")]
    Setup(String),
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
}

/// Open `/dev/kvm`, with a one-line reason when that is impossible.
pub fn open_kvm() -> Result<kvm_ioctls::Kvm, BackendError> {
    match std::fs::metadata("/dev/kvm") {
        Err(e) => return Err(BackendError::NoKvm(e.to_string())),
        Ok(_) => {}
    }
    kvm_ioctls::Kvm::new().map_err(|e| BackendError::NoKvm(e.to_string()))
}

/// Why `/dev/kvm` cannot be used here, or `None` when it can (tests use this to skip).
pub fn kvm_unavailable() -> Option<String> {
    open_kvm().err().map(|e| e.to_string())
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
        format!("model:{}", self.cfg.contract)
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
