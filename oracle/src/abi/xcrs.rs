//! `struct kvm_xcrs` (`KVM_GET_XCRS`, `KVM_SET_XCRS`): `nr_xcrs`, `flags`, 16 `struct kvm_xcr`
//! (`xcr`, `reserved`, `value`), then 16 padding words.

use super::{le32, le64, put};

/// Size of `struct kvm_xcrs`.
pub const KVM_XCRS_SIZE: usize = 392;
/// `KVM_MAX_XCRS`: entries in the array.
pub const MAX_XCRS: u32 = 16;
/// Offset of `xcrs[0]`.
pub const XCRS_XCRS: usize = 8;
/// Size of one `struct kvm_xcr`.
pub const XCR_SIZE: usize = 16;
/// Offset of `padding[16]` (u64 words).
pub const XCRS_PADDING: usize = XCRS_XCRS + MAX_XCRS as usize * XCR_SIZE;

/// One `struct kvm_xcr`, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmXcr {
    /// XCR index.
    pub xcr: u32,
    /// Reserved word.
    pub reserved: u32,
    /// Value.
    pub value: u64,
}

/// A `struct kvm_xcrs`, decoded field by field.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvmXcrs {
    /// `nr_xcrs`.
    pub nr_xcrs: u32,
    /// `flags`.
    pub flags: u32,
    /// The whole array (entries past `nr_xcrs` included).
    pub xcrs: [KvmXcr; MAX_XCRS as usize],
    /// Trailing `padding[16]`.
    pub padding: [u64; 16],
}

impl KvmXcrs {
    /// Decode the 392-byte struct (missing bytes read as zero).
    pub fn from_bytes(b: &[u8]) -> KvmXcrs {
        let mut s = KvmXcrs { nr_xcrs: le32(b, 0), flags: le32(b, 4), ..KvmXcrs::default() };
        for (i, x) in s.xcrs.iter_mut().enumerate() {
            let o = XCRS_XCRS + i * XCR_SIZE;
            *x = KvmXcr { xcr: le32(b, o), reserved: le32(b, o + 4), value: le64(b, o + 8) };
        }
        for (i, p) in s.padding.iter_mut().enumerate() {
            *p = le64(b, XCRS_PADDING + i * 8);
        }
        s
    }

    /// The 392-byte encoding.
    pub fn to_bytes(&self) -> [u8; KVM_XCRS_SIZE] {
        let mut b = [0u8; KVM_XCRS_SIZE];
        put(&mut b, 0, &self.nr_xcrs.to_le_bytes());
        put(&mut b, 4, &self.flags.to_le_bytes());
        for (i, x) in self.xcrs.iter().enumerate() {
            let o = XCRS_XCRS + i * XCR_SIZE;
            put(&mut b, o, &x.xcr.to_le_bytes());
            put(&mut b, o + 4, &x.reserved.to_le_bytes());
            put(&mut b, o + 8, &x.value.to_le_bytes());
        }
        for (i, p) in self.padding.iter().enumerate() {
            put(&mut b, XCRS_PADDING + i * 8, &p.to_le_bytes());
        }
        b
    }
}
