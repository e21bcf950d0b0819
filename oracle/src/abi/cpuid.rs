//! `struct kvm_cpuid_entry2` and `struct kvm_cpuid2` (`KVM_SET_CPUID2`, `KVM_GET_CPUID2`), and
//! KVM's first-match lookup of an entry.

use super::le32;
use crate::hexnum::u32_hex;
use serde::{Deserialize, Serialize};

/// One `struct kvm_cpuid_entry2` (padding omitted; always written as zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct CpuidEntry {
    /// Leaf.
    #[serde(with = "u32_hex")]
    pub function: u32,
    /// Subleaf.
    #[serde(with = "u32_hex")]
    pub index: u32,
    /// `KVM_CPUID_FLAG_*` (bit 0: significant index).
    #[serde(with = "u32_hex")]
    pub flags: u32,
    /// EAX.
    #[serde(with = "u32_hex")]
    pub eax: u32,
    /// EBX.
    #[serde(with = "u32_hex")]
    pub ebx: u32,
    /// ECX.
    #[serde(with = "u32_hex")]
    pub ecx: u32,
    /// EDX.
    #[serde(with = "u32_hex")]
    pub edx: u32,
}

/// `KVM_CPUID_FLAG_SIGNIFCANT_INDEX`.
pub const CPUID_FLAG_SIGNIFICANT_INDEX: u32 = 1;
/// Size of one `kvm_cpuid_entry2` in bytes.
pub const CPUID_ENTRY_SIZE: usize = 40;
/// Size of the `struct kvm_cpuid2` header (`nent`, `padding`) before the entries.
pub const CPUID2_HDR: usize = 8;
/// Bytes before the first entry in a recorded `KVM_GET_CPUID2` result (a trace keeps `nent`
/// and the entries, not the header's padding word).
pub const CPUID2_TRACE_HDR: usize = 4;
/// `KVM_MAX_CPUID_ENTRIES`.
pub const MAX_CPUID_ENTRIES: usize = 256;

impl CpuidEntry {
    /// Build an entry from registers `[eax, ebx, ecx, edx]`.
    pub fn new(function: u32, index: u32, flags: u32, r: [u32; 4]) -> CpuidEntry {
        CpuidEntry { function, index, flags, eax: r[0], ebx: r[1], ecx: r[2], edx: r[3] }
    }
    /// The 40-byte `kvm_cpuid_entry2` encoding.
    pub fn to_bytes(&self) -> [u8; CPUID_ENTRY_SIZE] {
        let mut b = [0u8; CPUID_ENTRY_SIZE];
        for (i, v) in [self.function, self.index, self.flags, self.eax, self.ebx, self.ecx, self.edx].iter().enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b
    }
    /// Decode the 40-byte `kvm_cpuid_entry2` encoding (padding ignored).
    pub fn from_bytes(b: &[u8]) -> CpuidEntry {
        let r = |i: usize| le32(b, i * 4);
        CpuidEntry { function: r(0), index: r(1), flags: r(2), eax: r(3), ebx: r(4), ecx: r(5), edx: r(6) }
    }
}

/// Byte offset of entry `k` in a `struct kvm_cpuid2`.
pub fn cpuid2_entry_offset(k: usize) -> usize {
    CPUID2_HDR + k * CPUID_ENTRY_SIZE
}

/// Byte offset of register `reg` (0..4 = EAX..EDX) of entry `k` in a recorded
/// `KVM_GET_CPUID2` result ([`cpuid2_trace`]).
pub fn cpuid2_trace_reg_offset(k: usize, reg: usize) -> usize {
    CPUID2_TRACE_HDR + k * CPUID_ENTRY_SIZE + 12 + reg * 4
}

/// Write a `struct kvm_cpuid2` with `entries` (and `nent` = their number) into `out`, which
/// must hold [`cpuid2_entry_offset`]`(entries.len())` bytes; returns false when it does not.
pub fn write_cpuid2(out: &mut [u8], entries: &[CpuidEntry]) -> bool {
    let Some(b) = out.get_mut(..cpuid2_entry_offset(entries.len())) else { return false };
    b[..CPUID2_HDR].fill(0);
    b[..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    for (k, e) in entries.iter().enumerate() {
        b[cpuid2_entry_offset(k)..cpuid2_entry_offset(k + 1)].copy_from_slice(&e.to_bytes());
    }
    true
}

/// `nent` of a `struct kvm_cpuid2`.
pub fn cpuid2_nent(b: &[u8]) -> u32 {
    le32(b, 0)
}

/// A `KVM_GET_CPUID2` result as a trace records it: `nent` (4 bytes), then `shown` entries
/// (40 bytes each, padding zero; missing entries zero).
pub fn cpuid2_trace(nent: u32, entries: &[CpuidEntry], shown: usize) -> Vec<u8> {
    let mut d = Vec::with_capacity(CPUID2_TRACE_HDR + shown * CPUID_ENTRY_SIZE);
    d.extend_from_slice(&nent.to_le_bytes());
    for e in entries.iter().take(shown) {
        d.extend_from_slice(&e.to_bytes());
    }
    d.resize(CPUID2_TRACE_HDR + shown * CPUID_ENTRY_SIZE, 0);
    d
}

/// The entries of a recorded `KVM_GET_CPUID2` result ([`cpuid2_trace`]); a partial entry at
/// the end is ignored.
pub fn cpuid2_trace_entries(d: &[u8]) -> Vec<CpuidEntry> {
    d.get(CPUID2_TRACE_HDR..).unwrap_or_default().chunks_exact(CPUID_ENTRY_SIZE).map(CpuidEntry::from_bytes).collect()
}

/// The `shown` first entries of a `struct kvm_cpuid2` the kernel wrote.
pub fn read_cpuid2(b: &[u8], shown: usize) -> Vec<CpuidEntry> {
    (0..shown).map(|k| CpuidEntry::from_bytes(b.get(cpuid2_entry_offset(k)..).unwrap_or_default())).collect()
}

/// First entry matching `(function, index)`; `index == None` is KVM_CPUID_INDEX_NOT_SIGNIFICANT,
/// which matches the first entry of the function whatever its flags (spec §6.1).
pub fn find_entry(table: &[CpuidEntry], function: u32, index: Option<u32>) -> Option<usize> {
    table.iter().position(|e| {
        e.function == function
            && match index {
                None => true,
                Some(i) => e.flags & CPUID_FLAG_SIGNIFICANT_INDEX == 0 || e.index == i,
            }
    })
}
