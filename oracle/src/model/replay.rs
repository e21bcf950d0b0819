//! Predicting a whole case: plainly, following the processor's choices an observation shows,
//! or re-synchronised on the kernel's results at chosen steps (`crate::cause::resync`).

use super::{Model, ModelConfig, Vcpu};
use crate::abi::{self, put};
use crate::case::{Case, Op};
use crate::host::{HostFacts, Quirk};
use crate::rules::Rule;
use crate::trace::{OpResult, Ret, Trace};

impl Model<'_> {
    /// Follow a processor choice an observation revealed (`used`: the rules of the choices the
    /// observation took): the state keeps what the processor chose.
    fn adopt(&mut self, used: &[Rule]) {
        if let Some((alt, _)) = self.vcpu.run_alt.take_if(|(_, rule)| used.contains(rule)) {
            self.vcpu = *alt;
        }
        if let Some((alt, _)) = self.vcpu.mxcsr_alt.take_if(|(_, rule)| used.contains(rule)) {
            put(&mut self.vcpu.kbuf, abi::MXCSR, &alt);
            self.vcpu.legacy_alts.retain(|a| a.0 != abi::MXCSR);
        }
    }
}

/// Predict every step of `case` on `host` under `cfg`.
pub fn predict(case: &Case, host: &HostFacts, cfg: &ModelConfig) -> Trace {
    let mut m = Model::new(host, cfg);
    let results = case.steps().iter().map(|(origin, op)| m.step(*origin, op)).collect();
    Trace { results }
}

/// Predict every step, taking each hardware choice as `observed` shows it where the prediction
/// allows it ([`OpResult::resolve`]), so later steps follow the choice the processor made:
/// a restore of a GET whose FIP the processor canonicalised restores the canonical FIP.
pub fn predict_following(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace) -> Trace {
    predict_synced(case, host, cfg, observed, &[])
}

/// [`predict_following`], and the quirks of `candidates` the prediction asked `cfg` about:
/// the model is deterministic and asks about quirks only through one accessor, so adding to
/// `cfg` quirks it never asked about gives the same prediction.
pub fn predict_following_consulting(
    case: &Case,
    host: &HostFacts,
    cfg: &ModelConfig,
    observed: &Trace,
    candidates: &[Quirk],
) -> (Trace, Vec<Quirk>) {
    let mut m = Model::new(host, cfg);
    let n = case.steps().len();
    let trace = Trace { results: run_synced(&mut m, case, observed, &[], n) };
    let asked = candidates.iter().copied().filter(|q| m.consulted(*q)).collect();
    (trace, asked)
}

/// [`predict_following`], and at each step in `sync` the model is also forced to follow the
/// kernel's observed result (a re-synchronised prediction): a SET the kernel refused is taken
/// as refused, one it accepted as accepted, a GET's observed bytes as the last GET. The
/// predicted result of a `sync` step itself is kept as predicted.
pub fn predict_synced(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace, sync: &[usize]) -> Trace {
    let mut m = Model::new(host, cfg);
    let n = case.steps().len();
    Trace { results: run_synced(&mut m, case, observed, sync, n) }
}

/// The buffer the SET at step `k` passes, in the re-synchronised replay of [`predict_synced`].
pub fn set_buffer(case: &Case, host: &HostFacts, cfg: &ModelConfig, observed: &Trace, sync: &[usize], k: usize) -> Option<Vec<u8>> {
    let mut m = Model::new(host, cfg);
    run_synced(&mut m, case, observed, sync, k);
    case.steps().get(k).and_then(|(_, op)| m.set_buffer(op))
}

pub(super) fn run_synced(m: &mut Model<'_>, case: &Case, observed: &Trace, sync: &[usize], upto: usize) -> Vec<OpResult> {
    let mut results = Vec::new();
    for (k, (origin, op)) in case.steps().iter().enumerate().take(upto) {
        let follow = sync.contains(&k);
        let before = follow.then(|| (m.vcpu.clone(), m.last_get.clone(), m.last_get_free));
        let r = m.step(*origin, op);
        let r = match observed.results.get(k) {
            Some(o) if !r.allowed.is_empty() => {
                let (resolved, used) = r.resolve(o);
                m.adopt(&used);
                if matches!(**op, Op::GetXsave | Op::GetXsave2) && resolved.ret == Ret::Ok(0) {
                    m.last_get = Some(resolved.data.clone());
                }
                resolved
            }
            _ => r,
        };
        if let (Some((vcpu, last_get, last_get_free)), Some(o)) = (before, observed.results.get(k)) {
            m.follow(op, &r, o, vcpu, last_get, last_get_free);
        }
        results.push(r);
    }
    results
}

impl Model<'_> {
    /// Force the model to the kernel's observed result `obs` of `op`, predicted as `r`, from
    /// the state before the step.
    fn follow(&mut self, op: &Op, r: &OpResult, obs: &OpResult, vcpu: Vcpu, last_get: Option<Vec<u8>>, last_get_free: u64) {
        let setter = matches!(op, Op::SetXsave(_) | Op::RestoreLast { .. } | Op::SetCpuid2(_) | Op::SetXcrs(_));
        match (r.ret, obs.ret) {
            (Ret::Ok(_), Ret::Err(_)) if setter => {
                // Refused by the kernel: nothing changed.
                (self.vcpu, self.last_get, self.last_get_free) = (vcpu, last_get, last_get_free);
            }
            (Ret::Err(_), Ret::Ok(_)) if setter => {
                (self.vcpu, self.last_get, self.last_get_free) = (vcpu, last_get, last_get_free);
                self.force_accept = true;
                self.step(obs.origin, op);
                self.force_accept = false;
            }
            (_, Ret::Ok(_)) if matches!(op, Op::GetXsave | Op::GetXsave2) => {
                self.last_get = Some(obs.data.clone());
                self.last_get_free = 0;
            }
            (Ret::Ok(_), Ret::Err(_)) if matches!(op, Op::GetXsave | Op::GetXsave2) => {
                (self.last_get, self.last_get_free) = (last_get, last_get_free);
            }
            _ => {}
        }
    }
}
