//! Guest programs: the vCPU runs, and its own instructions produce the state that `KVM_GET_XSAVE`
//! then reports (spec §7, the contract's "touch state in the guest" selftests).
//!
//! A program is data in the case ([`GuestProgram`]): a straight-line list of [`GuestAction`]s
//! that write registers from seeded patterns, put components back in their init state, and
//! store the guest's own view of its state (XSAVE) to guest memory. Every backend runs the same
//! program: the KVM backends assemble it into 64-bit CPL3 code ending in an MMIO write, the
//! model interprets it here. No I/O: this module only states what the architecture defines.
//!
//! The register file is kept in the standard (non-compacted) XSAVE layout of the host, so the
//! model's kernel image and the guest's registers share one geometry ([`crate::abi`]).

use crate::abi::{self, put};
use crate::hexnum::u32_hex;
use crate::host::HostFacts;
use crate::pattern::fill;
use crate::xfeatures::*;
use serde::{Deserialize, Serialize};

/// Most actions in one program.
pub const MAX_ACTIONS: usize = 32;

/// One guest action. Each reads its input from a seeded pattern ([`GuestAction::input`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, arbitrary::Arbitrary)]
#[serde(rename_all = "snake_case")]
pub enum GuestAction {
    /// Legacy-SSE `movdqu` into XMM0..15 (256 pattern bytes); the YMM upper halves are kept.
    Xmm {
        /// Pattern seed.
        #[serde(with = "u32_hex")]
        seed: u32,
    },
    /// VEX.256 `vmovdqu` into YMM0..15 (512 pattern bytes: XMM and the YMM upper halves).
    /// Needs XCR0.YMM in hardware.
    Ymm {
        /// Pattern seed.
        #[serde(with = "u32_hex")]
        seed: u32,
    },
    /// `vzeroupper`: YMM upper halves (and ZMM0..15 bits 511:256) back to zero.
    Vzeroupper,
    /// `ldmxcsr` (a value outside the host's MXCSR mask faults with #GP).
    Ldmxcsr {
        /// MXCSR.
        #[serde(with = "u32_hex")]
        value: u32,
    },
    /// `fldcw`.
    Fldcw {
        /// FCW.
        value: u16,
    },
    /// `fninit`: FCW 0x37F, FSW, FTW, FOP, FIP, FDP zero; ST registers keep their contents.
    Fninit,
    /// `kmovq` into k0..k7 (64 pattern bytes). Needs AVX-512 in hardware XCR0.
    Opmask {
        /// Pattern seed.
        #[serde(with = "u32_hex")]
        seed: u32,
    },
    /// `vmovdqu64` into ZMM0..31 (2048 pattern bytes). Needs AVX-512 in hardware XCR0.
    Zmm {
        /// Pattern seed.
        #[serde(with = "u32_hex")]
        seed: u32,
    },
    /// `wrpkru` (ECX = EDX = 0). Needs CR4.PKE, which the rig sets where the host has PKRU.
    Wrpkru {
        /// PKRU.
        #[serde(with = "u32_hex")]
        value: u32,
    },
    /// `xsave64` with EDX:EAX = all ones into the guest's output area: the guest's own view of
    /// its state, returned as the run's data.
    Xsave,
    /// `jmp .`: the guest never reaches its end (nor any later action); the rig's watchdog
    /// stops the run after its bound, whatever the bound (exit `timeout`, rule `run.timeout`).
    /// Never generated (each such run costs the whole bound); case files and tests use it.
    #[arbitrary(skip)]
    Spin,
    /// `ud2`: #UD on every processor (rule `run.fault`). Never generated (a run that only
    /// faults exercises no state); case files and the stopped-guest tests use it.
    #[arbitrary(skip)]
    Ud2,
    /// `mov [0], eax`: a store to page 0, which the rig never maps: #PF on every processor
    /// (rule `run.fault`). Never generated, like [`GuestAction::Ud2`].
    #[arbitrary(skip)]
    StoreNull,
}

/// A straight-line guest program: it ends with an MMIO write, unless an action faults or is a
/// [`GuestAction::Spin`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestProgram {
    /// Actions, in order.
    pub actions: Vec<GuestAction>,
}

/// How a guest run ended (the run step's return value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exit {
    /// The program's final MMIO write.
    End = 0,
    /// A fault with no handler (triple fault): `KVM_EXIT_SHUTDOWN`.
    Shutdown = 1,
    /// KVM could not emulate or enter the guest (`KVM_EXIT_INTERNAL_ERROR`, `FAIL_ENTRY`).
    Internal = 2,
    /// Stopped by the rig's watchdog.
    Timeout = 3,
    /// Any other exit reason.
    Other = 4,
}

impl Exit {
    /// From the run step's return value.
    pub fn from_code(v: i64) -> Option<Exit> {
        [Exit::End, Exit::Shutdown, Exit::Internal, Exit::Timeout, Exit::Other].into_iter().find(|e| *e as i64 == v)
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Exit::End => "end",
            Exit::Shutdown => "shutdown",
            Exit::Internal => "internal-error",
            Exit::Timeout => "timeout",
            Exit::Other => "other",
        }
    }
}

impl GuestAction {
    /// Bytes of input pattern the action reads.
    pub fn input_len(&self) -> usize {
        match self {
            GuestAction::Xmm { .. } => 256,
            GuestAction::Ymm { .. } => 512,
            GuestAction::Opmask { .. } => 64,
            GuestAction::Zmm { .. } => 2048,
            GuestAction::Ldmxcsr { .. } | GuestAction::Wrpkru { .. } => 4,
            GuestAction::Fldcw { .. } => 2,
            GuestAction::Vzeroupper
            | GuestAction::Fninit
            | GuestAction::Xsave
            | GuestAction::Spin
            | GuestAction::Ud2
            | GuestAction::StoreNull => 0,
        }
    }

    /// The input the action loads (pattern bytes, or the value little-endian).
    pub fn input(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.input_len()];
        match self {
            GuestAction::Xmm { seed } | GuestAction::Ymm { seed } | GuestAction::Opmask { seed } | GuestAction::Zmm { seed } => {
                fill(*seed, &mut v)
            }
            GuestAction::Ldmxcsr { value } | GuestAction::Wrpkru { value } => v.copy_from_slice(&value.to_le_bytes()),
            GuestAction::Fldcw { value } => v.copy_from_slice(&value.to_le_bytes()),
            GuestAction::Vzeroupper
            | GuestAction::Fninit
            | GuestAction::Xsave
            | GuestAction::Spin
            | GuestAction::Ud2
            | GuestAction::StoreNull => {}
        }
        v
    }

    /// The xfeatures hardware XCR0 must enable for the action not to fault with #UD.
    pub fn needs_xcr0(&self) -> u64 {
        match self {
            GuestAction::Ymm { .. } | GuestAction::Vzeroupper => SSE | YMM,
            GuestAction::Opmask { .. } | GuestAction::Zmm { .. } => SSE | YMM | AVX512,
            _ => 0,
        }
    }

    /// The host xfeatures (CPU features) without which the generator never emits the action.
    pub fn needs_host(&self) -> u64 {
        match self {
            GuestAction::Wrpkru { .. } => PKRU,
            a => a.needs_xcr0(),
        }
    }
}

/// The guest's architectural register state, in the host's standard XSAVE layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Regs {
    /// Standard-layout image of every component (header bytes unused).
    pub image: Vec<u8>,
    /// PKRU.
    pub pkru: u32,
}

/// Bytes of the x87 state that decide whether it is in its init configuration (spec §7.1):
/// FCW..FDP and the 80-bit parts of ST0..7.
fn fp_is_init(img: &[u8]) -> bool {
    let head_init = abi::le32(img, 0) & 0xffff == abi::FCW_INIT as u32 && img[2..abi::MXCSR].iter().all(|&b| b == 0) && img[4] == 0;
    head_init && (0..8).all(|i| img[abi::ST + 16 * i..abi::ST + 16 * i + 10].iter().all(|&b| b == 0))
}

impl Regs {
    /// Whether component `bit` is at its init value (XINUSE may then be 0 or 1).
    pub fn is_init(&self, host: &HostFacts, bit: u8) -> bool {
        let img = &self.image;
        match bit {
            0 => fp_is_init(img),
            1 => img[abi::XMM..abi::XMM_END].iter().all(|&b| b == 0),
            PKRU_BIT => self.pkru == 0,
            b => host
                .component(b)
                .and_then(|c| img.get(c.offset as usize..(c.offset + c.size) as usize))
                .is_none_or(|s| s.iter().all(|&x| x == 0)),
        }
    }

    fn comp_mut(&mut self, host: &HostFacts, bit: u8) -> Option<&mut [u8]> {
        let c = host.component(bit)?;
        self.image.get_mut(c.offset as usize..(c.offset + c.size) as usize)
    }

    /// Apply one non-storing action (the caller checked it does not fault).
    pub fn apply(&mut self, host: &HostFacts, a: &GuestAction) {
        let input = a.input();
        match a {
            GuestAction::Xmm { .. } => self.image[abi::XMM..abi::XMM_END].copy_from_slice(&input),
            GuestAction::Ymm { .. } => {
                for i in 0..16 {
                    put(&mut self.image, abi::XMM + 16 * i, &input[32 * i..32 * i + 16]);
                    if let Some(hi) = self.comp_mut(host, 2) {
                        hi[16 * i..16 * i + 16].copy_from_slice(&input[32 * i + 16..32 * i + 32]);
                    }
                }
                // A VEX.256 write zeroes the destination's bits MAXVL-1:256 (SDM 2.3.10.1).
                if let Some(c) = self.comp_mut(host, 6) {
                    c.fill(0);
                }
            }
            GuestAction::Vzeroupper => {
                for bit in [2u8, 6] {
                    if let Some(c) = self.comp_mut(host, bit) {
                        c.fill(0);
                    }
                }
            }
            GuestAction::Ldmxcsr { value } => put(&mut self.image, abi::MXCSR, &value.to_le_bytes()),
            // FCW bits 6, 7 and 13..15 are reserved: what they read is the processor's choice
            // (rule run.fcw.reserved, applied where the state is observed).
            GuestAction::Fldcw { value } => put(&mut self.image, abi::FCW, &value.to_le_bytes()),
            GuestAction::Fninit => {
                // TOP becomes 0, so ST(i) now names physical register i: the stack-ordered
                // image rotates by the old TOP.
                let top = (abi::le32(&self.image, 0) >> (16 + 11)) as usize & 7;
                let old: Vec<u8> = self.image[abi::ST..abi::FP_END].to_vec();
                for i in 0..8 {
                    let j = (i + 8 - top) % 8;
                    self.image[abi::ST + 16 * i..abi::ST + 16 * i + 10].copy_from_slice(&old[16 * j..16 * j + 10]);
                }
                put(&mut self.image, abi::FCW, &abi::FCW_INIT.to_le_bytes());
                self.image[2..abi::MXCSR].fill(0);
            }
            GuestAction::Opmask { .. } => {
                if let Some(k) = self.comp_mut(host, 5) {
                    let n = k.len().min(64);
                    k[..n].copy_from_slice(&input[..n]);
                }
            }
            GuestAction::Zmm { .. } => {
                for i in 0..16 {
                    let z = &input[64 * i..64 * i + 64];
                    put(&mut self.image, abi::XMM + 16 * i, &z[..16]);
                    if let Some(hi) = self.comp_mut(host, 2) {
                        hi[16 * i..16 * i + 16].copy_from_slice(&z[16..32]);
                    }
                    if let Some(hi) = self.comp_mut(host, 6) {
                        hi[32 * i..32 * i + 32].copy_from_slice(&z[32..64]);
                    }
                }
                if let Some(hi16) = self.comp_mut(host, 7) {
                    let n = hi16.len().min(1024);
                    hi16[..n].copy_from_slice(&input[1024..1024 + n]);
                }
            }
            GuestAction::Wrpkru { value } => self.pkru = *value,
            GuestAction::Xsave | GuestAction::Spin | GuestAction::Ud2 | GuestAction::StoreNull => {}
        }
    }
}

/// Whether an unmasked x87 exception is pending (FSW flags not masked by FCW): the next
/// waiting x87 instruction raises #MF.
pub fn x87_pending(img: &[u8]) -> bool {
    let w = abi::le32(img, 0);
    let (fcw, fsw) = (w & 0xffff, w >> 16);
    fsw & !fcw & 0x3f != 0
}

impl GuestAction {
    /// Whether the action reads guest memory (its input) and writes it (a store).
    pub fn memory(&self) -> (bool, bool) {
        match self {
            GuestAction::Vzeroupper | GuestAction::Fninit | GuestAction::Spin | GuestAction::Ud2 => (false, false),
            GuestAction::Xsave | GuestAction::StoreNull => (false, true),
            _ => (true, false),
        }
    }
}

impl GuestAction {
    /// Whether the action came with case format version 3 (`Spin`, `Ud2`, `StoreNull`).
    pub fn since_v3(&self) -> bool {
        matches!(self, GuestAction::Spin | GuestAction::Ud2 | GuestAction::StoreNull)
    }
}

/// Whether PKRU blocks the program's user-mode data accesses: every page the rig maps has
/// protection key 0, so with CR4.PKE, AD0 (bit 0) blocks reads and writes and WD0 (bit 1)
/// blocks writes (SDM 4.6.2). The end marker is a write.
pub fn pkru_blocks(pkru: u32, cr4_pke: bool, read: bool, write: bool) -> bool {
    cr4_pke && ((read || write) && pkru & 1 != 0 || write && pkru & 2 != 0)
}

/// Why an action faults (no handler: the run ends in a shutdown), given hardware XCR0.
/// `pending_mf`: a pending unmasked x87 exception faults the next waiting x87 instruction (as on
/// every processor; not under QEMU TCG, quirk `tcg-x87-no-mf`).
pub fn faults(host: &HostFacts, regs: &Regs, a: &GuestAction, hw_xcr0: u64, cr4_pke: bool, pending_mf: bool) -> bool {
    if a.needs_xcr0() & !hw_xcr0 != 0 {
        return true;
    }
    let (read, write) = a.memory();
    if pkru_blocks(regs.pkru, cr4_pke, read, write) {
        return true;
    }
    match a {
        GuestAction::Fldcw { .. } => pending_mf && x87_pending(&regs.image),
        GuestAction::Ldmxcsr { value } => value & !host.mxcsr_feature_mask != 0,
        GuestAction::Wrpkru { .. } => !cr4_pke,
        GuestAction::Ud2 | GuestAction::StoreNull => true,
        _ => false,
    }
}

/// Bytes of the guest's output area a run returns (the guest's own standard-format XSAVE
/// image): the standard size of the host's XCR0, at least 4096.
pub fn output_size(host: &HostFacts) -> usize {
    (abi::xstate_required_size(&host.components, host.host_xcr0, false) as usize).max(abi::KVM_XSAVE_SIZE)
}
