//! A tiny hand-encoded x86-64 emitter for [`GuestProgram`]s.
//!
//! [`assemble`] prefixes `mov esi, input; mov edi, output`, encodes each action with
//! `[rsi+disp32]` operands (loads from the action's own slice of the input area) or
//! `[rdi+disp32]` (the XSAVE store at output offset 0), and ends with a 4-byte store of
//! [`END_MARKER`] to [`Layout::mmio_exit`]: mapped in the page tables but backed by no memory
//! slot, so KVM reports `KVM_EXIT_MMIO`.

use super::Layout;
use xsave_oracle::guest::{GuestAction, GuestProgram};

/// Value the program stores to the MMIO exit address at its end.
pub const END_MARKER: u32 = 0x600D_E0D5;

/// Alignment of each action's input slice.
pub const INPUT_ALIGN: u32 = 64;

/// An assembled program: its code and the bytes the host writes into the input area.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assembled {
    /// Machine code, loaded at [`Layout::code`].
    pub code: Vec<u8>,
    /// (offset in the input area, bytes): each action's [`GuestAction::input`].
    pub inputs: Vec<(u32, Vec<u8>)>,
}

/// Base register of a memory operand.
#[derive(Clone, Copy)]
enum Base {
    /// RSI = input area.
    In = 6,
    /// RDI = output area.
    Out = 7,
}

const EAX: u8 = 0;
const EDX: u8 = 2;
const ESI: u8 = 6;
const EDI: u8 = 7;

struct Asm {
    b: Vec<u8>,
}

impl Asm {
    fn bytes(&mut self, b: &[u8]) {
        self.b.extend_from_slice(b);
    }
    fn imm32(&mut self, v: u32) {
        self.b.extend_from_slice(&v.to_le_bytes());
    }
    /// ModRM with mod=10 (disp32), `reg` (low 3 bits), rm = base register; then disp32.
    fn mem(&mut self, reg: u8, base: Base, disp: u32) {
        self.b.push(0x80 | ((reg & 7) << 3) | base as u8);
        self.imm32(disp);
    }
    /// `mov r32, imm32` (B8+r).
    fn mov_imm(&mut self, reg: u8, v: u32) {
        self.b.push(0xB8 + (reg & 7));
        self.imm32(v);
    }
    /// Legacy SSE `F3 [REX.R] 0F 6F /r`: movdqu xmm, m128.
    fn movdqu(&mut self, xmm: u8, disp: u32) {
        self.b.push(0xF3);
        if xmm >= 8 {
            self.b.push(0x44); // REX.R
        }
        self.bytes(&[0x0F, 0x6F]);
        self.mem(xmm, Base::In, disp);
    }
    /// `vmovdqu ymm, m256`: two-byte VEX `C5 [R̄ 1111 L=1 pp=F3] 6F /r`.
    fn vmovdqu256(&mut self, ymm: u8, disp: u32) {
        let r_bar = u8::from(ymm < 8) << 7;
        self.bytes(&[0xC5, r_bar | (0xF << 3) | 0x04 | 0b10, 0x6F]);
        self.mem(ymm, Base::In, disp);
    }
    /// `vmovdqu64 zmm, m512`: EVEX.512.F3.0F.W1 6F /r.
    fn vmovdqu64(&mut self, zmm: u8, disp: u32) {
        let r_bar = u8::from(zmm & 8 == 0) << 7;
        let r2_bar = u8::from(zmm & 16 == 0) << 4;
        let p0 = r_bar | 0x40 /* X̄ */ | 0x20 /* B̄ */ | r2_bar | 0x01 /* map 0F */;
        let p1 = 0x80 /* W1 */ | (0xF << 3) /* vvvv̄ */ | 0x04 | 0x02 /* pp = F3 */;
        let p2 = (0b10 << 5) /* L'L = 512 */ | 0x08 /* V̄' */;
        self.bytes(&[0x62, p0, p1, p2, 0x6F]);
        self.mem(zmm, Base::In, disp);
    }
    /// `kmovq k, m64`: VEX.L0.0F.W1 90 /r.
    fn kmovq(&mut self, k: u8, disp: u32) {
        self.bytes(&[0xC4, 0xE1, 0xF8, 0x90]);
        self.mem(k, Base::In, disp);
    }
}

fn action(a: &mut Asm, act: &GuestAction, at: u32) {
    match act {
        GuestAction::Xmm { .. } => (0..16u8).for_each(|i| a.movdqu(i, at + 16 * u32::from(i))),
        GuestAction::Ymm { .. } => (0..16u8).for_each(|i| a.vmovdqu256(i, at + 32 * u32::from(i))),
        GuestAction::Zmm { .. } => (0..32u8).for_each(|i| a.vmovdqu64(i, at + 64 * u32::from(i))),
        GuestAction::Opmask { .. } => (0..8u8).for_each(|k| a.kmovq(k, at + 8 * u32::from(k))),
        GuestAction::Vzeroupper => a.bytes(&[0xC5, 0xF8, 0x77]),
        GuestAction::Ldmxcsr { .. } => {
            a.bytes(&[0x0F, 0xAE]); // ldmxcsr m32 (0F AE /2)
            a.mem(2, Base::In, at);
        }
        GuestAction::Fldcw { .. } => {
            a.b.push(0xD9); // fldcw m16 (D9 /5)
            a.mem(5, Base::In, at);
        }
        GuestAction::Fninit => a.bytes(&[0xDB, 0xE3]),
        GuestAction::Wrpkru { .. } => {
            a.b.push(0x8B); // mov eax, [rsi+at]
            a.mem(EAX, Base::In, at);
            a.bytes(&[0x31, 0xC9, 0x31, 0xD2, 0x0F, 0x01, 0xEF]); // xor ecx,ecx; xor edx,edx; wrpkru
        }
        GuestAction::Xsave => {
            a.mov_imm(EAX, u32::MAX);
            a.mov_imm(EDX, u32::MAX);
            a.bytes(&[0x48, 0x0F, 0xAE]); // xsave64 [rdi+0] (REX.W 0F AE /4)
            a.mem(4, Base::Out, 0);
        }
        GuestAction::Spin => a.bytes(&[0xEB, 0xFE]), // jmp . (rel8 -2)
        GuestAction::Ud2 => a.bytes(&[0x0F, 0x0B]),
        GuestAction::StoreNull => a.bytes(&[0x89, 0x04, 0x25, 0, 0, 0, 0]), // mov [0], eax
    }
}

/// Assemble `prog` for `layout`. Each action with input gets its own slice of the input area,
/// allocated in order and aligned to [`INPUT_ALIGN`]. Fails when the inputs or the code do not
/// fit the layout (never for programs within [`xsave_oracle::guest::MAX_ACTIONS`]).
pub fn assemble(prog: &GuestProgram, layout: &Layout) -> Result<Assembled, String> {
    let mut a = Asm { b: Vec::with_capacity(256) };
    let mut inputs = Vec::new();
    a.mov_imm(ESI, layout.input as u32);
    a.mov_imm(EDI, layout.output as u32);
    let mut next = 0u64;
    for act in &prog.actions {
        let n = act.input_len() as u64;
        let at = next;
        if n > 0 {
            next = (at + n).next_multiple_of(u64::from(INPUT_ALIGN));
            if at + n > layout.input_size {
                return Err(format!("guest program inputs exceed the input area ({:#x} bytes)", layout.input_size));
            }
            inputs.push((at as u32, act.input()));
        }
        action(&mut a, act, at as u32);
    }
    a.mov_imm(EAX, END_MARKER);
    a.bytes(&[0x89, 0x04, 0x25]); // mov [disp32], eax (SIB: no base, no index)
    a.imm32(layout.mmio_exit as u32);
    if a.b.len() as u64 > layout.code_size {
        return Err(format!("guest program of {} bytes exceeds the code area ({:#x})", a.b.len(), layout.code_size));
    }
    Ok(Assembled { code: a.b, inputs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xsave_oracle::guest::MAX_ACTIONS;

    fn one(act: GuestAction, at: u32) -> Vec<u8> {
        let mut a = Asm { b: Vec::new() };
        action(&mut a, &act, at);
        a.b
    }

    // Expected bytes cross-checked with GNU as/objdump.
    #[test]
    fn encodings() {
        let xmm = one(GuestAction::Xmm { seed: 0 }, 0);
        assert_eq!(&xmm[..8], &[0xF3, 0x0F, 0x6F, 0x86, 0, 0, 0, 0]); // movdqu xmm0,[rsi+0]
        assert_eq!(&xmm[8 * 8..8 * 8 + 9], &[0xF3, 0x44, 0x0F, 0x6F, 0x86, 0x80, 0, 0, 0]); // xmm8
        let ymm = one(GuestAction::Ymm { seed: 0 }, 0x100);
        assert_eq!(&ymm[..8], &[0xC5, 0xFE, 0x6F, 0x86, 0x00, 0x01, 0, 0]); // vmovdqu ymm0,[rsi+0x100]
        assert_eq!(&ymm[8 * 8..8 * 8 + 3], &[0xC5, 0x7E, 0x6F]); // ymm8
        let zmm = one(GuestAction::Zmm { seed: 0 }, 0x300);
        assert_eq!(&zmm[..10], &[0x62, 0xF1, 0xFE, 0x48, 0x6F, 0x86, 0x00, 0x03, 0, 0]);
        assert_eq!(&zmm[10 * 31..10 * 31 + 5], &[0x62, 0x61, 0xFE, 0x48, 0x6F]); // zmm31
        assert_eq!(&one(GuestAction::Opmask { seed: 0 }, 0)[..5], &[0xC4, 0xE1, 0xF8, 0x90, 0x86]);
        assert_eq!(one(GuestAction::Fninit, 0), vec![0xDB, 0xE3]);
        assert_eq!(one(GuestAction::Vzeroupper, 0), vec![0xC5, 0xF8, 0x77]);
        assert_eq!(one(GuestAction::Spin, 0), vec![0xEB, 0xFE]);
        assert_eq!(one(GuestAction::Ud2, 0), vec![0x0F, 0x0B]);
        assert_eq!(one(GuestAction::StoreNull, 0), vec![0x89, 0x04, 0x25, 0, 0, 0, 0]);
        assert_eq!(one(GuestAction::Ldmxcsr { value: 0 }, 0x40), vec![0x0F, 0xAE, 0x96, 0x40, 0, 0, 0]);
        assert_eq!(one(GuestAction::Fldcw { value: 0 }, 0x40), vec![0xD9, 0xAE, 0x40, 0, 0, 0]);
        assert_eq!(one(GuestAction::Wrpkru { value: 0 }, 0x80), vec![0x8B, 0x86, 0x80, 0, 0, 0, 0x31, 0xC9, 0x31, 0xD2, 0x0F, 0x01, 0xEF]);
        assert_eq!(
            one(GuestAction::Xsave, 0),
            vec![0xB8, 0xFF, 0xFF, 0xFF, 0xFF, 0xBA, 0xFF, 0xFF, 0xFF, 0xFF, 0x48, 0x0F, 0xAE, 0xA7, 0, 0, 0, 0]
        );
    }

    #[test]
    fn each_action_gets_its_own_input() {
        let l = Layout::STANDARD;
        let prog = GuestProgram {
            actions: vec![
                GuestAction::Xmm { seed: 1 },
                GuestAction::Xsave,
                GuestAction::Xmm { seed: 2 },
                GuestAction::Fldcw { value: 0x27f },
                GuestAction::Ymm { seed: 3 },
            ],
        };
        let a = assemble(&prog, &l).expect("assemble");
        let offs: Vec<u32> = a.inputs.iter().map(|(o, _)| *o).collect();
        assert_eq!(offs, vec![0, 256, 512, 576]);
        assert_eq!(a.inputs[1].1, GuestAction::Xmm { seed: 2 }.input());
        // The largest program fits.
        let big = GuestProgram { actions: vec![GuestAction::Zmm { seed: 9 }; MAX_ACTIONS] };
        let a = assemble(&big, &l).expect("32 x Zmm fits");
        assert_eq!(a.inputs.last().map(|(o, v)| *o as usize + v.len()), Some(MAX_ACTIONS * 2048));
        let too_big = GuestProgram { actions: vec![GuestAction::Zmm { seed: 9 }; MAX_ACTIONS + 3] };
        assert!(assemble(&too_big, &l).is_err());
    }
}
