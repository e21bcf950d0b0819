//! `KVM_GET_XSAVE`, `KVM_GET_XSAVE2`, `KVM_SET_XSAVE` and `KVM_CAP_XSAVE2` (spec §1.2, §3, §4):
//! the GET mask, the legacy area as reported, the permissive load and its checks.

use super::run::{fsw_choice, xinuse_choice};
use super::{ret_err, ret_ok, Contract, Model, Vcpu};
use crate::abi::{self, le32, le64, put, xstate_required_size};
use crate::case::Origin;
use crate::rules::Rule;
use crate::trace::{Allowed, OpResult, Ret, EINVAL};
use crate::xfeatures::*;

impl Model<'_> {
    /// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` value under this contract.
    pub fn cap_xsave2(&self) -> i64 {
        if !self.contract().has_xsave2() {
            return 0;
        }
        let mut filtered = self.host.supported_xcr0;
        if filtered & XTILE_DATA != 0 {
            filtered &= self.host.guest_perm;
            if filtered & XTILE_DATA == 0 {
                filtered &= !XTILE_CFG;
            }
        }
        (xstate_required_size(&self.host.components, filtered, false) as i64).max(abi::KVM_XSAVE_SIZE as i64)
    }

    pub(super) fn check_xsave2(&self, origin: Origin) -> OpResult {
        let rule = if self.contract().has_xsave2() { Rule::CapXsave2Size } else { Rule::CapXsave2Absent };
        ret_ok(origin, self.cap_xsave2(), vec![rule])
    }

    pub(super) fn get_xsave(&mut self, origin: Origin, xsave2: bool) -> OpResult {
        let c = self.contract();
        if xsave2 && !c.has_xsave2() {
            return ret_err(origin, EINVAL, vec![Rule::GetXsave2Absent]);
        }
        if !xsave2 && self.vcpu.uabi_size > abi::KVM_XSAVE_SIZE {
            return ret_err(origin, EINVAL, vec![Rule::GetXsaveTooBig]);
        }
        let size = if xsave2 { self.vcpu.uabi_size } else { abi::KVM_XSAVE_SIZE };
        let mut rules = Vec::with_capacity(12);
        let mut out = vec![0u8; size];
        if xsave2 {
            // The caller's buffer is KVM_CAP_XSAVE2 bytes, pre-filled with a canary; the
            // kernel writes uabi_size bytes of it.
            out.resize(size.max(self.cap_xsave2() as usize), abi::CANARY);
        }
        let v = &self.vcpu;
        let k = &v.kbuf;
        rules.push(match c {
            Contract::V3 => Rule::GetMaskV3,
            Contract::V1 | Contract::V2a | Contract::V2b => Rule::GetMaskUser,
            Contract::V0 => Rule::GetMaskV0,
        });
        let h = v.kbv & self.get_mask();
        if c == Contract::V0 {
            out[..abi::LEGACY_SIZE].copy_from_slice(&k[..abi::LEGACY_SIZE]);
            rules.push(Rule::GetV0LegacyRaw);
        } else {
            if h & FP != 0 {
                out[..abi::MXCSR].copy_from_slice(&k[..abi::MXCSR]);
                out[abi::ST..abi::FP_END].copy_from_slice(&k[abi::ST..abi::FP_END]);
                rules.push(Rule::GetFpReported);
            } else {
                put(&mut out, abi::FCW, &abi::FCW_INIT.to_le_bytes());
                rules.push(Rule::GetFpInit);
            }
            if h & (SSE | YMM) != 0 {
                out[abi::MXCSR..abi::ST].copy_from_slice(&k[abi::MXCSR..abi::ST]);
                rules.push(Rule::GetMxcsrKernel);
            } else {
                put(&mut out, abi::MXCSR, &abi::MXCSR_INIT.to_le_bytes());
                put(&mut out, abi::MXCSR_MASK, &self.host.init_mxcsr_mask.to_le_bytes());
                rules.push(Rule::GetMxcsrInit);
            }
            if h & SSE != 0 {
                out[abi::XMM..abi::XMM_END].copy_from_slice(&k[abi::XMM..abi::XMM_END]);
                rules.push(Rule::GetSseReported);
            } else {
                rules.push(Rule::GetSseZero);
            }
            put(&mut out, abi::SW, &self.host.host_xcr0.to_le_bytes());
            rules.extend([Rule::GetPaddingZero, Rule::GetSwReserved]);
        }
        put(&mut out, abi::XSTATE_BV, &h.to_le_bytes());
        rules.push(Rule::GetHeaderZero);
        let mut copied = false;
        for comp in self.host.components_in_order(h) {
            let (s, e) = (comp.offset as usize, (comp.offset + comp.size) as usize);
            if e > size {
                continue;
            }
            if comp.bit == PKRU_BIT {
                put(&mut out, s, &v.upkru.to_le_bytes());
                rules.push(Rule::GetPkruFromVcpu);
            } else {
                out[s..e].copy_from_slice(&k[s..e]);
                copied = true;
            }
        }
        if copied {
            rules.push(Rule::GetComponentCopied);
        }
        if h & !FPSSE != v.kbv & !FPSSE {
            rules.push(Rule::GetComponentZero);
        }
        if h & v.hidden != 0 {
            rules.push(Rule::GetHiddenRevealed);
        }
        let allowed = self.get_choices(h, &mut rules);
        self.last_get_free = v_free(&self.vcpu, h);
        let last = self.last_get.get_or_insert_with(Vec::new);
        last.clear();
        last.extend_from_slice(&out);
        OpResult { origin, ret: Ret::Ok(0), data: out, unpredicted: Vec::new(), rules, allowed }
    }

    /// The hardware's choices a GET of reported features `h` may show after a run: XSTATE_BV
    /// bits of components at their init value, what GET writes when such a bit is clear, and
    /// legacy bytes a hardware save may rewrite.
    pub(super) fn get_choices(&self, h: u64, rules: &mut Vec<Rule>) -> Vec<Allowed> {
        let v = &self.vcpu;
        let mut allowed = Vec::new();
        let free = v_free(v, h);
        let legacy = self.contract() != Contract::V0;
        if let Some(choice) = xinuse_choice(free) {
            let rule = choice.rule();
            rules.push(rule);
            allowed.push(choice);
            let unless =
                |bits: u64, start: usize, alt: Vec<u8>| Allowed::Unless { at: abi::XSTATE_BV as u32, bits, start: start as u32, alt, rule };
            if legacy && free & FP != 0 {
                let mut head = vec![0u8; abi::MXCSR];
                put(&mut head, abi::FCW, &abi::FCW_INIT.to_le_bytes());
                allowed.push(unless(FP, 0, head));
                allowed.push(unless(FP, abi::ST, vec![0; abi::FP_END - abi::ST]));
            }
            let sy = h & (SSE | YMM);
            if legacy && sy != 0 && sy & !free == 0 {
                let mut m = abi::MXCSR_INIT.to_le_bytes().to_vec();
                m.extend_from_slice(&self.host.init_mxcsr_mask.to_le_bytes());
                allowed.push(unless(SSE | YMM, abi::MXCSR, m));
            }
            if legacy && free & SSE != 0 {
                allowed.push(unless(SSE, abi::XMM, vec![0; abi::XMM_END - abi::XMM]));
            }
            for c in self.host.components_in_order(free) {
                let size = if c.bit == PKRU_BIT { 8 } else { c.size as usize };
                allowed.push(unless(1u64 << c.bit, c.offset as usize, vec![0; size]));
            }
        }
        // V0 copies the legacy area raw, whatever XSTATE_BV says: the hardware's bytes show.
        let shown = |under: u64| !legacy || h & under != 0;
        if shown(FP) && v.fsw_derived {
            let choice = fsw_choice(abi::FCW);
            rules.push(choice.rule());
            allowed.push(choice);
        }
        {
            for (start, values, rule, _) in v.legacy_alts.iter().filter(|a| shown(a.3)) {
                allowed.push(Allowed::OneOf { start: *start as u32, values: values.clone(), rule: *rule });
                rules.push(*rule);
            }
        }
        allowed
    }

    pub(super) fn set_xsave(&mut self, origin: Origin, buf: &[u8]) -> OpResult {
        let c = self.contract();
        let bv = le64(buf, abi::XSTATE_BV);
        let mxcsr = le32(buf, abi::MXCSR);
        let mut rules = Vec::with_capacity(8);
        let f = self.force_accept;
        if c == Contract::V0 {
            if !f && bv & !self.host.supported_xcr0 != 0 {
                return ret_err(origin, EINVAL, vec![Rule::SetRejectUnsupported]);
            }
            if !f && mxcsr & !self.host.mxcsr_feature_mask != 0 {
                return ret_err(origin, EINVAL, vec![Rule::SetV0RejectMxcsr]);
            }
            let v = &mut self.vcpu;
            v.kbuf[..abi::LEGACY_SIZE].copy_from_slice(&buf[..abi::LEGACY_SIZE]);
            v.mem_fop = [buf[abi::FOP], buf[abi::FOP + 1]];
            v.raw_free = 0;
            rules.push(Rule::SetV0LegacyRaw);
            self.store_components(buf, bv, &mut rules);
            return self.accept(bv, rules, origin);
        }
        if !f && bv & !self.host.supported_xcr0 != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectUnsupported]);
        }
        if !f && bv & !self.vcpu.user_xfeatures != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectUserXfeatures]);
        }
        if !f && le64(buf, abi::XCOMP_BV) != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectXcompBv]);
        }
        if !f && buf[abi::HDR_RSVD..abi::EXT].iter().any(|&b| b != 0) {
            return ret_err(origin, EINVAL, vec![Rule::SetRejectHdrReserved]);
        }
        if bv & (FP | SSE | YMM) != 0 {
            if !f && mxcsr & !self.host.mxcsr_feature_mask != 0 {
                return ret_err(origin, EINVAL, vec![Rule::SetRejectMxcsr]);
            }
            if bv & FP == 0 {
                self.vcpu.kbuf[abi::MXCSR..abi::ST].copy_from_slice(&buf[abi::MXCSR..abi::ST]);
                rules.push(Rule::SetMxcsrWithoutFp);
            }
        } else {
            rules.push(Rule::SetMxcsrUnchecked);
        }
        if bv & FP != 0 {
            self.vcpu.kbuf[..abi::FP_END].copy_from_slice(&buf[..abi::FP_END]);
            self.vcpu.mem_fop = [buf[abi::FOP], buf[abi::FOP + 1]];
            self.vcpu.raw_free &= !FP;
            rules.push(Rule::SetFpCopied);
        }
        if bv & SSE != 0 {
            self.vcpu.kbuf[abi::XMM..abi::XMM_END].copy_from_slice(&buf[abi::XMM..abi::XMM_END]);
            self.vcpu.raw_free &= !SSE;
            rules.push(Rule::SetSseCopied);
        }
        self.store_components(buf, bv, &mut rules);
        self.accept(bv, rules, origin)
    }

    pub(super) fn accept(&mut self, bv: u64, mut rules: Vec<Rule>, origin: Origin) -> OpResult {
        self.vcpu.kbv = bv;
        self.vcpu.kbv_free = 0;
        if bv & FP != 0 || self.contract() == Contract::V0 {
            self.vcpu.legacy_alts.retain(|a| a.0 == abi::MXCSR);
            self.vcpu.fsw_derived = false;
        }
        if bv & (FP | SSE | YMM) != 0 || self.contract() == Contract::V0 {
            self.vcpu.legacy_alts.retain(|a| a.0 != abi::MXCSR);
            self.vcpu.mxcsr_alt = None;
        }
        self.vcpu.hidden = bv & !self.get_mask();
        rules.extend([Rule::SetKbvReplaced, Rule::SetAccept]);
        ret_ok(origin, 0, rules)
    }

    pub(super) fn store_components(&mut self, buf: &[u8], bv: u64, rules: &mut Vec<Rule>) {
        let mut copied = false;
        for comp in self.host.components_in_order(bv) {
            let (s, e) = (comp.offset as usize, (comp.offset + comp.size) as usize);
            if e > buf.len() || e > self.vcpu.kbuf.len() {
                continue;
            }
            if comp.bit == PKRU_BIT {
                self.vcpu.upkru = le32(buf, s);
                rules.push(Rule::SetPkruUpdated);
            } else {
                self.vcpu.kbuf[s..e].copy_from_slice(&buf[s..e]);
                copied = true;
            }
        }
        if copied {
            rules.push(Rule::SetComponentCopied);
        }
        if bv & PKRU == 0 && self.host.supported_xcr0 & PKRU != 0 {
            rules.push(Rule::SetPkruKept);
        }
    }
}

/// Free XSTATE_BV bits among the reported features `h`.
pub(super) fn v_free(v: &Vcpu, h: u64) -> u64 {
    v.kbv_free & h
}
