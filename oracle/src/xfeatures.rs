//! XSAVE feature (xfeature) bit numbers and masks.

/// x87 state (legacy bytes 0..159).
pub const FP: u64 = 1 << 0;
/// SSE state (XMM registers, legacy bytes 160..415).
pub const SSE: u64 = 1 << 1;
/// Upper halves of the YMM registers.
pub const YMM: u64 = 1 << 2;
/// MPX bound registers.
pub const BNDREGS: u64 = 1 << 3;
/// MPX bound configuration.
pub const BNDCSR: u64 = 1 << 4;
/// AVX-512 opmask registers.
pub const OPMASK: u64 = 1 << 5;
/// Upper halves of ZMM0..15.
pub const ZMM_HI256: u64 = 1 << 6;
/// ZMM16..31.
pub const HI16_ZMM: u64 = 1 << 7;
/// Protection keys register.
pub const PKRU: u64 = 1 << 9;
/// AMX tile configuration.
pub const XTILE_CFG: u64 = 1 << 17;
/// AMX tile data (dynamic, permission-gated).
pub const XTILE_DATA: u64 = 1 << 18;

/// FP | SSE.
pub const FPSSE: u64 = FP | SSE;
/// All three AVX-512 components.
pub const AVX512: u64 = OPMASK | ZMM_HI256 | HI16_ZMM;
/// Both MPX components.
pub const MPX: u64 = BNDREGS | BNDCSR;
/// Both AMX components.
pub const XTILE: u64 = XTILE_CFG | XTILE_DATA;
/// `KVM_SUPPORTED_XCR0`: the compile-time set KVM may ever support.
pub const KVM_SUPPORTED_XCR0: u64 = 0x602FF;
/// Dynamic user features (`XFEATURE_MASK_USER_DYNAMIC`).
pub const USER_DYNAMIC: u64 = XTILE_DATA;
/// PKRU bit number.
pub const PKRU_BIT: u8 = 9;

/// Architectural name of xfeature `bit`.
pub fn name(bit: u8) -> &'static str {
    match bit {
        0 => "FP",
        1 => "SSE",
        2 => "YMM_Hi128",
        3 => "BNDREGS",
        4 => "BNDCSR",
        5 => "OPMASK",
        6 => "ZMM_Hi256",
        7 => "Hi16_ZMM",
        8 => "PT",
        9 => "PKRU",
        10 => "PASID",
        11 => "CET_U",
        12 => "CET_S",
        13 => "HDC",
        14 => "UINTR",
        15 => "LBR",
        16 => "HWP",
        17 => "XTILE_CFG",
        18 => "XTILE_DATA",
        19 => "APX",
        _ => "unknown",
    }
}

/// Human readable list of the features in `mask`, e.g. `FP|SSE|YMM_Hi128`.
pub fn describe(mask: u64) -> String {
    if mask == 0 {
        return "none".to_string();
    }
    (0..64u8)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| match name(b) {
            "unknown" => format!("bit{b}"),
            n => n.to_string(),
        })
        .collect::<Vec<_>>()
        .join("|")
}
