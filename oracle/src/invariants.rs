//! Properties every prediction must have, whatever the case: used by the `model_contracts`
//! fuzz target and by tests. Each check panics with the property's name on violation.

use crate::abi::{self, le32, le64};
use crate::case::{Case, Op};
use crate::diff::diff;
use crate::host::HostFacts;
use crate::model::{predict, Contract, ModelConfig};
use crate::trace::Ret;
use crate::verdict::Verdict;
use crate::xfeatures::PKRU_BIT;

/// Check the invariants of `case` on a synthetic Intel-layout host under every contract.
pub fn check(case: &Case) {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    for &c in Contract::ALL {
        let cfg = ModelConfig { contract: c, quirks: vec![] };
        let t = predict(case, &host, &cfg);
        assert_eq!(t, predict(case, &host, &cfg), "determinism under {c}");
        assert_eq!(diff(case, &host, &cfg, &t, &t), Verdict::Agree, "a prediction agrees with itself under {c}");
        assert_eq!(t.results.len(), case.steps().len(), "one result per step under {c}");
    }
    let t = predict(case, &host, &ModelConfig::default());
    let steps = case.steps();
    for (k, ((_, op), r)) in steps.iter().zip(&t.results).enumerate() {
        if !matches!(**op, Op::GetXsave | Op::GetXsave2) || r.ret != Ret::Ok(0) {
            continue;
        }
        let d = &r.data;
        assert!(d[abi::PAD..abi::SW].iter().all(|&b| b == 0), "V3 GET padding zero (step {k})");
        assert_eq!(le64(d, abi::SW), host.host_xcr0, "V3 GET sw_reserved word (step {k})");
        assert!(d[abi::XCOMP_BV..abi::EXT].iter().all(|&b| b == 0), "V3 GET header zero (step {k})");
        let h = le64(d, abi::XSTATE_BV);
        assert_eq!(h & !host.supported_xcr0, 0, "V3 GET reports only supported features (step {k})");
        if let Some(pk) = host.component(PKRU_BIT) {
            assert_eq!(le32(d, pk.offset as usize + 4), 0, "PKRU pad zero (step {k})");
        }
        // A GET right after an accepted SET returns the SET's bytes for every reported component.
        if let (Some((_, prev)), Some(pr)) = (k.checked_sub(1).and_then(|p| steps.get(p)), k.checked_sub(1).and_then(|p| t.results.get(p)))
        {
            if let (Op::SetXsave(img), Ret::Ok(0)) = (&**prev, pr.ret) {
                let buf = img.render(&host, abi::KVM_XSAVE_SIZE);
                for c in host.components_in_order(h) {
                    let (s, e) = (c.offset as usize, (c.offset + c.size) as usize);
                    let want = if c.bit == PKRU_BIT { &buf[s..s + 4] } else { &buf[s..e] };
                    assert_eq!(&d[s..s + want.len()], want, "SET then GET returns component {} (step {k})", c.bit);
                }
            }
        }
    }
}
