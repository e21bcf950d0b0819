//! `KVM_GET_FPU` and `KVM_SET_FPU` (spec §10): the contract's view, and quirk
//! `kvm-fpu-legacy` (today's kernels, §10.3).

use super::run::{fsw_choice, xinuse_choice};
use super::{ret_err, ret_ok, Model};
use crate::abi::{self, le32, put};
use crate::case::{FpuImage, Origin};
use crate::host::Quirk;
use crate::rules::Rule;
use crate::trace::{Allowed, OpResult, Ret, EINVAL};
use crate::xfeatures::*;

impl Model<'_> {
    /// Quirk `kvm-fpu-legacy` (today's kernels, spec §10.3), when modelled: its two rules, for
    /// both FPU ioctls. `KVM_SET_FPU` leaves XSTATE_BV unchanged and ignores `mxcsr`;
    /// `KVM_GET_FPU` copies the stored legacy bytes whatever XSTATE_BV and returns `mxcsr` 0
    /// (`kvm_arch_vcpu_ioctl_set_fpu`/`_get_fpu` in arch/x86/kvm/x86.c).
    pub(super) fn legacy_fpu(&self) -> Option<[Rule; 2]> {
        self.quirk(Quirk::KvmFpuLegacy).then_some([Rule::QuirkFpuRaw, Rule::QuirkFpuMxcsr])
    }

    /// `KVM_SET_FPU`: the fields go into the legacy area (`kvm_arch_vcpu_ioctl_set_fpu`). The
    /// contract adds what the kernel's own `xfpregs_set` does: MXCSR validated and stored, FP
    /// and SSE marked in use. Quirk `kvm-fpu-legacy` is today's kernels.
    pub(super) fn set_fpu(&mut self, origin: Origin, img: &FpuImage) -> OpResult {
        let b = img.render();
        let legacy = self.legacy_fpu();
        let mxcsr = le32(&b, abi::FPU_MXCSR);
        if legacy.is_none() && mxcsr & !self.host.mxcsr_feature_mask != 0 {
            return ret_err(origin, EINVAL, vec![Rule::SetFpuRejectMxcsr]);
        }
        let v = &mut self.vcpu;
        for off in (0..abi::LEGACY_SIZE).filter(|o| !(abi::MXCSR..abi::ST).contains(o)) {
            if let Some(o) = abi::legacy_to_fpu(off) {
                v.kbuf[off] = b[o];
            }
        }
        // `fxsave->twd = fpu->ftwx`: the u16 store zeroes FTW's reserved byte.
        v.kbuf[abi::FTW_RSVD] = 0;
        v.mem_fop = [v.kbuf[abi::FOP], v.kbuf[abi::FOP + 1]];
        v.raw_free = 0;
        v.fsw_derived = false;
        let mut rules = vec![Rule::SetFpuStored];
        if let Some(quirk) = legacy {
            // XSTATE_BV is left as it is. A bit a hardware save left free (component at init:
            // XINUSE decides) stays free: the written state is reported and loaded only if the
            // processor saved the bit set. The model predicts "set" and allows "clear" at the
            // next GET (rule run.xinuse.free); a KVM_RUN before any GET resolves it is not
            // followed (a known limit: tests/fpu.rs).
            v.legacy_alts.retain(|a| a.0 == abi::MXCSR);
            v.fpu_unsure |= v.kbv_free & FPSSE;
            rules.extend(quirk);
        } else {
            put(&mut v.kbuf, abi::MXCSR, &mxcsr.to_le_bytes());
            v.legacy_alts.clear();
            v.mxcsr_alt = None;
            v.kbv |= FPSSE;
            v.kbv_free &= !FPSSE;
            rules.extend([Rule::SetFpuMxcsr, Rule::SetFpuXfeatures]);
            self.vcpu.hidden = self.vcpu.kbv & !self.get_mask();
        }
        ret_ok(origin, 0, rules)
    }

    /// `KVM_GET_FPU`: the 416-byte `struct kvm_fpu` (the kernel zero-allocates it).
    pub(super) fn get_fpu(&self, origin: Origin) -> OpResult {
        let v = &self.vcpu;
        let k = &v.kbuf;
        let quirk = self.legacy_fpu();
        let legacy = quirk.is_some();
        let mut img = vec![0u8; abi::LEGACY_SIZE];
        let mut rules = Vec::with_capacity(4);
        let unpredicted = Vec::new();
        let mut allowed = Vec::new();
        let shown = if let Some(quirk) = quirk {
            img.copy_from_slice(&k[..abi::LEGACY_SIZE]);
            put(&mut img, abi::MXCSR, &0u32.to_le_bytes());
            rules.extend(quirk);
            if let Some(rule) = xinuse_choice(v.raw_free).map(|c| c.rule()) {
                // Saved at init with XINUSE clear: written as init or left as it was.
                if v.raw_free & FP != 0 {
                    allowed.push(Allowed::OneOf { start: 0, values: v.raw_fp.clone(), rule });
                }
                if v.raw_free & SSE != 0 {
                    allowed.push(Allowed::OneOf { start: abi::FPU_XMM as u32, values: v.raw_sse.clone(), rule });
                }
                rules.push(rule);
            }
            FP | SSE
        } else {
            let h = v.kbv;
            if h & FP != 0 {
                img[..abi::MXCSR].copy_from_slice(&k[..abi::MXCSR]);
                img[abi::ST..abi::FP_END].copy_from_slice(&k[abi::ST..abi::FP_END]);
            } else {
                put(&mut img, abi::FCW, &abi::FCW_INIT.to_le_bytes());
            }
            let mxcsr = if h & (SSE | YMM) != 0 { le32(k, abi::MXCSR) } else { abi::MXCSR_INIT };
            put(&mut img, abi::MXCSR, &mxcsr.to_le_bytes());
            if h & SSE != 0 {
                img[abi::XMM..abi::XMM_END].copy_from_slice(&k[abi::XMM..abi::XMM_END]);
            }
            rules.extend([Rule::GetFpuView, Rule::GetFpuMxcsr]);
            h
        };
        let data = abi::fpu_from_legacy(&img);
        if shown & FP != 0 && v.fsw_derived {
            let choice = fsw_choice(abi::FPU_FCW);
            rules.push(choice.rule());
            allowed.push(choice);
        }
        for (start, values, rule, under) in &v.legacy_alts {
            let mxcsr = *start == abi::MXCSR;
            if *start == 5 || shown & under == 0 || (legacy && mxcsr) {
                continue;
            }
            if let Some(o) = abi::legacy_to_fpu(*start) {
                let values = values.iter().map(|x| x[..x.len().min(if mxcsr { 4 } else { x.len() })].to_vec()).collect();
                allowed.push(Allowed::OneOf { start: o as u32, values, rule: *rule });
                rules.push(*rule);
            }
        }
        OpResult { origin, ret: Ret::Ok(0), data, unpredicted, rules, allowed }
    }
}
