//! A kernel that matches no historical contract gets a diagnosis: the nearest version and the
//! probe cases (with rule ids) where it departs. Hybrid kernels are built from the model.

use xsave_oracle::case::{Case, Op};
use xsave_oracle::{predict, Contract, HostFacts, ModelConfig, Trace};
use xsave_runner::probe::match_contract;
use xsave_runner::{Backend, BackendError};

/// V3 everywhere except that `KVM_GET_XSAVE` behaves as `get_from` (e.g. V1's unmasked
/// save): a 6.1-like kernel (XSAVE2, permissive load) whose GET does not mask.
struct Hybrid {
    host: HostFacts,
    get_from: Contract,
}

impl Backend for Hybrid {
    fn name(&self) -> String {
        format!("hybrid:V3+{}-get", self.get_from)
    }
    fn host(&self) -> &HostFacts {
        &self.host
    }
    fn execute(&mut self, case: &Case) -> Result<Trace, BackendError> {
        let base = ModelConfig::new(Contract::V3, vec![]);
        let other = ModelConfig::new(self.get_from, vec![]);
        let mut t = predict(case, &self.host, &base);
        let o = predict(case, &self.host, &other);
        for (k, (_, op)) in case.steps().iter().enumerate() {
            if matches!(**op, Op::GetXsave) {
                t.results[k] = o.results[k].clone();
            }
        }
        for r in &mut t.results {
            r.rules.clear();
            r.unpredicted.clear();
        }
        Ok(t)
    }
}

#[test]
fn v3_with_unmasked_get_is_nearest_v3_and_departs_on_masking() {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let m = match_contract(&mut Hybrid { host: host.clone(), get_from: Contract::V1 }, &host, &[]).expect("probe");
    assert!(m.matches.is_empty(), "a hybrid matches no version: {:?}", m.matches);
    let n = m.nearest.expect("nearest");
    assert_eq!(n.contract, "V3");
    assert!(!n.departures.is_empty());
    for d in &n.departures {
        assert!(d.rules.iter().any(|r| r == "get.mask.v3"), "{d:?}");
        assert!(d.observed.starts_with("XSTATE_BV"), "{d:?}");
    }
    let text = n.to_string();
    assert!(text.starts_with("nearest V3, departs on: "), "{text}");
    assert!(text.contains("get.mask.v3"), "{text}");
}

#[test]
fn an_exact_match_has_no_departures() {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    for c in [Contract::V0, Contract::V3] {
        let mut be = xsave_runner::ModelBackend::new(host.clone(), ModelConfig::new(c, vec![]));
        let m = match_contract(&mut be, &host, &[]).expect("probe");
        assert_eq!(m.matches.last(), Some(&c));
        let n = m.nearest.expect("nearest");
        assert_eq!(n.contract, c.name());
        assert!(n.departures.is_empty(), "{n:?}");
    }
}
