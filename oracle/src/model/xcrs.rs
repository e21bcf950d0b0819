//! `KVM_GET_XCRS` and `KVM_SET_XCRS` (spec §5): the XCR0 checks.

use super::{ret_err, ret_ok, Contract, Model};
use crate::abi::xcrs::{KvmXcr, KvmXcrs, MAX_XCRS};
use crate::case::{Origin, XcrsImage};
use crate::rules::Rule;
use crate::trace::{OpResult, Ret, EINVAL};
use crate::xfeatures::*;

impl Model<'_> {
    pub(super) fn set_xcrs(&mut self, origin: Origin, x: &XcrsImage) -> OpResult {
        let raw = KvmXcrs::from_bytes(&x.render());
        let (nr, flags) = (raw.nr_xcrs, raw.flags);
        let f = self.force_accept;
        if nr > MAX_XCRS && !f {
            return ret_err(origin, EINVAL, vec![Rule::XcrsRejectNr]);
        }
        if flags != 0 && !f {
            return ret_err(origin, EINVAL, vec![Rule::XcrsRejectFlags]);
        }
        for e in raw.xcrs.iter().take(nr.min(MAX_XCRS) as usize) {
            if e.xcr == 0 {
                let value = e.value;
                let mut rules = vec![Rule::XcrsFirstXcr0];
                return match self.check_xcr0(value) {
                    Err(r) if !f => {
                        rules.push(r);
                        ret_err(origin, EINVAL, rules)
                    }
                    _ => {
                        self.vcpu.xcr0 = value;
                        rules.push(Rule::Xcr0Accept);
                        ret_ok(origin, 0, rules)
                    }
                };
            }
        }
        ret_ok(origin, 0, vec![Rule::XcrsNoXcr0])
    }

    pub(super) fn check_xcr0(&self, x: u64) -> Result<(), Rule> {
        if x & FP == 0 {
            return Err(Rule::Xcr0RejectFp);
        }
        if x & YMM != 0 && x & SSE == 0 {
            return Err(Rule::Xcr0RejectYmmSse);
        }
        let valid = match self.contract() {
            Contract::V2a => self.vcpu.user_xfeatures | FP,
            _ => self.vcpu.gsx | FP,
        };
        if x & !valid != 0 {
            return Err(if self.contract() == Contract::V2a { Rule::Xcr0V2aUserXfeatures } else { Rule::Xcr0RejectUnsupported });
        }
        if (x & BNDREGS == 0) != (x & BNDCSR == 0) {
            return Err(Rule::Xcr0RejectMpx);
        }
        if x & AVX512 != 0 && (x & YMM == 0 || x & AVX512 != AVX512) {
            return Err(Rule::Xcr0RejectAvx512);
        }
        if self.contract().has_xsave2() && x & XTILE != 0 && x & XTILE != XTILE {
            return Err(Rule::Xcr0RejectAmx);
        }
        Ok(())
    }

    pub(super) fn get_xcrs(&self, origin: Origin) -> OpResult {
        let mut x = KvmXcrs { nr_xcrs: 1, ..KvmXcrs::default() };
        x.xcrs[0] = KvmXcr { xcr: 0, reserved: 0, value: self.vcpu.xcr0 };
        let data = x.to_bytes().to_vec();
        OpResult { origin, ret: Ret::Ok(0), data, unpredicted: Vec::new(), rules: vec![Rule::XcrsGet], allowed: Vec::new() }
    }
}
