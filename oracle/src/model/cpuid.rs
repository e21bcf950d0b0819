//! `KVM_SET_CPUID2` and `KVM_GET_CPUID2` (spec §6): validation, guest_supported_xcr0, the
//! runtime-owned fields, the frozen table after a run, and quirk `pvm-cpuid-rewrite` (§8).

use super::{ret_err, ret_ok, Contract, Model, NOT_SIGNIFICANT};
use crate::abi::cpuid::{cpuid2_trace, cpuid2_trace_reg_offset, find_entry, CpuidEntry, CPUID_FLAG_SIGNIFICANT_INDEX, MAX_CPUID_ENTRIES};
use crate::abi::xstate_required_size;
use crate::case::Origin;
use crate::host::Quirk;
use crate::rules::Rule;
use crate::trace::{Allowed, OpResult, Ret, E2BIG, EINVAL, EPERM};
use crate::xfeatures::*;

impl Model<'_> {
    pub(super) fn set_cpuid2(&mut self, origin: Origin, mut entries: Vec<CpuidEntry>) -> OpResult {
        let mut rules = Vec::with_capacity(4);
        if entries.len() > MAX_CPUID_ENTRIES {
            return ret_err(origin, E2BIG, vec![Rule::CpuidRejectE2big]);
        }
        if self.vcpu.ran && self.contract() >= Contract::V1 && !self.force_accept {
            let mut scratch = Vec::new();
            let stored = self.runtime_table(&mut scratch);
            let saved = std::mem::replace(&mut self.vcpu.cpuid, entries);
            let incoming = self.runtime_table(&mut scratch);
            self.vcpu.cpuid = saved;
            let equal = self.contract() > Contract::V1 && stored == incoming;
            return if equal { ret_ok(origin, 0, vec![Rule::RunCpuidFrozen]) } else { ret_err(origin, EINVAL, vec![Rule::RunCpuidFrozen]) };
        }
        if let Some(i) = find_entry(&entries, 0x8000_0008, NOT_SIGNIFICANT) {
            let bits = (entries[i].eax >> 8) & 0xff;
            if bits != 0 && bits != 48 && bits != 57 && !self.force_accept {
                return ret_err(origin, EINVAL, vec![Rule::CpuidRejectVaddr]);
            }
        }
        let mut amx = false;
        // The dynamic-feature (AMX) check arrived with KVM_CAP_XSAVE2 in 5.17.
        if let (true, Some(i)) = (self.contract().has_xsave2(), find_entry(&entries, 0xd, Some(0))) {
            let x = entries[i].eax as u64 | ((entries[i].edx as u64) << 32);
            if x & USER_DYNAMIC != 0 {
                if self.host.guest_perm & USER_DYNAMIC == 0 && !self.force_accept {
                    return ret_err(origin, EPERM, vec![Rule::CpuidRejectAmxPerm]);
                }
                amx = true;
            }
        }
        if amx {
            rules.push(Rule::CpuidAmxEnabled);
            let perm_size = xstate_required_size(&self.host.components, self.host.guest_perm, false) as usize;
            self.vcpu.uabi_size = self.vcpu.uabi_size.max(perm_size);
            self.vcpu.user_xfeatures |= XTILE_DATA;
            let need = self.vcpu.uabi_size.max(self.vcpu.kbuf.len());
            self.vcpu.kbuf.resize(need, 0);
        }
        rules.push(Rule::CpuidAccept);
        self.vcpu.cpuid_set = true;
        let mut unpredicted = Vec::new();
        let gsx_source = if self.quirk(Quirk::PvmCpuidRewrite) {
            self.pvm_rewrite(&mut entries, &mut unpredicted, &mut rules)
        } else {
            find_entry(&entries, 0xd, Some(0)).map(|i| entries[i].eax as u64 | ((entries[i].edx as u64) << 32))
        };
        self.vcpu.cpuid = entries;
        self.vcpu.cpuid_unpredicted = unpredicted;
        match gsx_source {
            Some(x) => {
                self.vcpu.gsx = x & self.host.supported_xcr0;
                rules.push(Rule::CpuidGsxFirstMatch);
            }
            None => {
                self.vcpu.gsx = 0;
                rules.push(Rule::CpuidGsxNone);
            }
        }
        match self.contract() {
            Contract::V2a => {
                self.vcpu.user_xfeatures = self.vcpu.gsx;
                rules.push(Rule::CpuidV2UserXfeatures);
            }
            Contract::V2b => {
                self.vcpu.user_xfeatures = self.vcpu.gsx | FPSSE;
                rules.push(Rule::CpuidV2UserXfeatures);
            }
            _ => {}
        }
        ret_ok(origin, 0, rules)
    }

    /// Quirk `pvm-cpuid-rewrite` (spec §8, re-measured on this rig's hosts): see [`Quirk`].
    ///
    /// Returns the EDX:EAX guest_supported_xcr0 is derived from (before masking with the
    /// supported set): the host derives it between two rewrite passes. The first pass writes
    /// the raw host CPUID.0xD.i (i < 20, XFEATURE_MAX) into the first match of each (0xD, i);
    /// the second (the table that reads back) is described on [`Quirk::PvmCpuidRewrite`].
    pub(super) fn pvm_rewrite(
        &self,
        entries: &mut Vec<CpuidEntry>,
        unpredicted: &mut Vec<(usize, u8, Rule)>,
        rules: &mut Vec<Rule>,
    ) -> Option<u64> {
        let host = self.host;
        let raw = |i: u32| host.host_cpuid_0xd.iter().find(|e| e.index == i).copied();
        let before = entries.len();
        entries.retain(|e| !host.pvm_dropped_leaves.contains(&e.function));
        if entries.len() != before {
            rules.push(Rule::QuirkPvmDrop);
        }
        if find_entry(entries, 1, Some(0)).is_some() && find_entry(entries, 0xd, Some(0)).is_none() {
            rules.push(Rule::QuirkPvmInject);
            for i in 0..64u32 {
                let wanted = i < 2 || host.supported_xcr0 & (1u64 << i) != 0;
                if let (true, Some(e)) = (wanted, raw(i)) {
                    entries.push(CpuidEntry { flags: CPUID_FLAG_SIGNIFICANT_INDEX, ..e });
                }
            }
        }
        let mut first_pass = entries.clone();
        for i in 0..20u32 {
            if let Some(k) = find_entry(&first_pass, 0xd, Some(i)) {
                let r = raw(i).map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
                let e = &mut first_pass[k];
                (e.eax, e.ebx, e.ecx, e.edx) = (r[0], r[1], r[2], r[3]);
            }
        }
        let gsx_source = find_entry(&first_pass, 0xd, Some(0)).map(|d| first_pass[d].eax as u64 | ((first_pass[d].edx as u64) << 32));
        let sup = host.supported_xcr0;
        // Subleaves i >= 2 get host values only when the first (0xD, 0) match is a true
        // index-0 entry (significant-index flag set); an unflagged 0xD entry matches every
        // subleaf lookup and ends with the last (zero) write. This is the rule that explains
        // every table measured on kvm_pvm hosts (oracle/tests/quirk.rs).
        let true_d0 = find_entry(entries, 0xd, Some(0)).is_some_and(|d| entries[d].flags & CPUID_FLAG_SIGNIFICANT_INDEX != 0);
        for i in 0..64u32 {
            let Some(k) = find_entry(entries, 0xd, Some(i)) else { continue };
            let regs = match i {
                0 => [sup as u32, entries[k].ebx, xstate_required_size(&host.components, sup, false), (sup >> 32) as u32],
                1 => [raw(1).map_or(0, |e| e.eax & 0x7), entries[k].ebx, 0, 0],
                _ if true_d0 && sup & (1u64 << i) != 0 => raw(i).map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]),
                _ => [0; 4],
            };
            let e = &mut entries[k];
            (e.eax, e.ebx, e.ecx, e.edx) = (regs[0], regs[1], regs[2], regs[3]);
            rules.push(Rule::QuirkPvmRewrite);
        }
        let rule = Rule::QuirkPvmHostOwned;
        for (k, e) in entries.iter().enumerate() {
            match e.function {
                1 => unpredicted.push((k, 0b1100, rule)),
                7 => unpredicted.push((k, 0b1111, rule)),
                _ => continue,
            }
            rules.push(rule);
        }
        gsx_source
    }

    /// The stored table with runtime-owned fields applied (spec §6.3, corrected: APIC set).
    pub(super) fn runtime_table(&self, rules: &mut Vec<Rule>) -> Vec<CpuidEntry> {
        let mut t = self.vcpu.cpuid.clone();
        if let Some(i) = find_entry(&t, 1, NOT_SIGNIFICANT) {
            t[i].ecx = (t[i].ecx & !(1 << 27)) | ((self.vcpu.cr4_osxsave as u32) << 27);
            t[i].edx |= 1 << 9;
            rules.extend([Rule::CpuidRuntimeOsxsave, Rule::CpuidRuntimeApic]);
        }
        if let Some(i) = find_entry(&t, 7, Some(0)) {
            t[i].ecx = (t[i].ecx & !(1 << 4)) | ((self.vcpu.cr4_pke as u32) << 4);
            rules.push(Rule::CpuidRuntimeOspke);
        }
        if self.vcpu.ran {
            rules.push(Rule::RunCr4Runtime);
        }
        if self.host.cpuid_sgx_xfrm_masked {
            if let Some(i) = find_entry(&t, 0x12, Some(1)) {
                t[i].ecx = (t[i].ecx & self.vcpu.gsx as u32) | FPSSE as u32;
                t[i].edx &= (self.vcpu.gsx >> 32) as u32;
                rules.push(Rule::CpuidSgxXfrm);
            }
        }
        if let Some(i) = find_entry(&t, 0xd, Some(0)) {
            t[i].ebx = xstate_required_size(&self.host.components, self.vcpu.xcr0, false);
            rules.push(Rule::CpuidRuntimeXsaveSize);
        }
        if let Some(i) = find_entry(&t, 0xd, Some(1)) {
            if t[i].eax & (0x2 | 0x8) != 0 {
                t[i].ebx = xstate_required_size(&self.host.components, self.vcpu.xcr0, true);
                rules.push(Rule::CpuidRuntimeXsavecSize);
            }
        }
        t
    }

    pub(super) fn get_cpuid2(&self, origin: Origin, capacity: usize) -> OpResult {
        let n = self.vcpu.cpuid.len();
        if capacity < n {
            return ret_err(origin, E2BIG, vec![Rule::CpuidGetE2big]);
        }
        let mut rules = vec![Rule::CpuidGetTable];
        let t = self.runtime_table(&mut rules);
        let shown = if self.host.get_cpuid2_keeps_nent {
            rules.push(Rule::CpuidGetCallerNent);
            capacity
        } else {
            n
        };
        // The caller's buffer is zeroed; entries the kernel did not write stay zero.
        let data = cpuid2_trace(shown as u32, &t, shown);
        let mut unpredicted = Vec::new();
        for &(k, regs, _) in &self.vcpu.cpuid_unpredicted {
            for r in 0..4 {
                if regs & (1 << r) != 0 {
                    let s = cpuid2_trace_reg_offset(k, r) as u32;
                    unpredicted.push((s, s + 4));
                }
            }
        }
        // The rule pvm_rewrite left the fields unpredicted under (every entry has a register).
        if let Some(&(_, _, rule)) = self.vcpu.cpuid_unpredicted.first() {
            rules.push(rule);
        }
        let mut allowed = Vec::new();
        if self.vcpu.cr4_free {
            let ecx_of = |k: usize| cpuid2_trace_reg_offset(k, 2) as u32;
            if let Some(k) = find_entry(&t, 1, NOT_SIGNIFICANT) {
                allowed.push(Allowed::FreeBits { at: ecx_of(k), mask: 1 << 27, rule: Rule::RunShutdownInit });
            }
            if let Some(k) = find_entry(&t, 7, Some(0)) {
                allowed.push(Allowed::FreeBits { at: ecx_of(k), mask: 1 << 4, rule: Rule::RunShutdownInit });
            }
            rules.push(Rule::RunShutdownInit);
        }
        OpResult { origin, ret: Ret::Ok(0), data, unpredicted, rules, allowed }
    }
}
