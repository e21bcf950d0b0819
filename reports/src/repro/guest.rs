//! The guest-run part of a C reproducer: the guest memory image, page tables, GDT, TSS, sregs
//! and CR4 choices come from the runner's own builder ([`xsave_runner::guest`]) and each
//! program from the runner's own assembler ([`asm::assemble`]), embedded as byte arrays; the
//! C side (`guest.c`) only copies them in and runs the vCPU as `GuestVm::run` does.

use super::runs;
use kvm_bindings::{kvm_segment, kvm_sregs};
use std::fmt::Write;
use xsave_oracle::guest::GuestProgram;
use xsave_oracle::HostFacts;
use xsave_runner::guest::{asm, build_sregs, cr4_tries, tables, Layout, DEFAULT_TIMEOUT, WALL_TIMEOUT};

/// Whether the run step's data is the output area (see [`xsave_runner::guest::reads_output`]).
pub fn reads_output(prog: &GuestProgram) -> bool {
    xsave_runner::guest::reads_output(prog)
}

/// Bytes `(offset, bytes)` placed in one buffer (zero elsewhere).
fn flat(parts: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let len = parts.iter().map(|(o, b)| *o as usize + b.len()).max().unwrap_or(0);
    let mut out = vec![0u8; len];
    for (o, b) in parts {
        out[*o as usize..*o as usize + b.len()].copy_from_slice(b);
    }
    out
}

fn segment(name: &str, s: &kvm_segment) -> String {
    format!(
        "    s->{name} = (struct kvm_segment){{.base = {:#x}, .limit = {:#x}, .selector = {:#x}, .type = {}, .present = {}, .dpl = {}, .db = {}, .s = {}, .l = {}, .g = {}, .avl = {}, .unusable = {}}};\n",
        s.base, s.limit, s.selector, s.type_, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable
    )
}

/// The guest runtime: layout constants, the tables image, the sregs the set-up loads, the CR4
/// choices, then `guest.c`.
pub fn runtime(host: &HostFacts) -> String {
    let l = Layout::STANDARD;
    let mut o = String::new();
    let read = xsave_oracle::guest::output_size(host).min(l.output_size as usize);
    for (name, v) in [
        ("GUEST_MEM_SIZE", l.mem_size),
        ("GUEST_CODE", l.code),
        ("GUEST_STACK_TOP", l.stack_top),
        ("GUEST_INPUT", l.input),
        ("GUEST_OUTPUT", l.output),
        ("GUEST_OUTPUT_SIZE", l.output_size),
        ("GUEST_OUTPUT_READ", read as u64),
        ("GUEST_MMIO_EXIT", l.mmio_exit),
        ("GUEST_END_MARKER", u64::from(asm::END_MARKER)),
        ("GUEST_TIMEOUT_US", DEFAULT_TIMEOUT.as_micros() as u64),
        ("GUEST_WALL_TIMEOUT_S", WALL_TIMEOUT.as_secs()),
    ] {
        let _ = writeln!(o, "#define {name} {v:#x}UL");
    }
    runs("guest_tables", &flat(&tables(&l)), &mut o);
    // The fields the runner's builder sets, from the builder itself.
    let s: kvm_sregs = build_sregs(kvm_sregs::default(), &l);
    let _ = writeln!(o, "static void guest_sregs(struct kvm_sregs *s)\n{{");
    for (name, seg) in
        [("cs", &s.cs), ("ds", &s.ds), ("es", &s.es), ("fs", &s.fs), ("gs", &s.gs), ("ss", &s.ss), ("tr", &s.tr), ("ldt", &s.ldt)]
    {
        o.push_str(&segment(name, seg));
    }
    let _ = writeln!(
        o,
        "    s->gdt.base = {:#x};\n    s->gdt.limit = {:#x};\n    s->idt.base = {:#x};\n    s->idt.limit = {:#x};\n    s->cr0 = {:#x};\n    s->cr3 = {:#x};\n    s->cr4 = {:#x};\n    s->efer = {:#x};\n}}",
        s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit, s.cr0, s.cr3, s.cr4, s.efer
    );
    let pke = host.supported_xcr0 & xsave_oracle::xfeatures::PKRU != 0;
    let tries: Vec<String> = cr4_tries(pke).iter().map(|(v, name)| format!("    {v:#x}ULL, /* {name} */")).collect();
    let _ = writeln!(o, "static const uint64_t cr4_tries[] = {{\n{}\n}};", tries.join("\n"));
    o.push_str(include_str!("guest.c"));
    o
}

/// Step `k`, a run of `prog` expecting return `want`; `check` is the check of the output area
/// against the expectation, when the step returns data.
pub fn run_step(k: usize, prog: &GuestProgram, want: i64, check: Option<String>, data: &mut String, body: &mut String) {
    let l = Layout::STANDARD;
    let Ok(a) = asm::assemble(prog, &l) else {
        // The runner sets the guest up, then finds the program does not fit: E2BIG.
        let _ = writeln!(
            body,
            "    {{\n        long e = guest_ready ? 0 : guest_setup();\n        check_ret({k}, \"KVM_RUN\", e ? e : -E2BIG, {want});\n    }}"
        );
        return;
    };
    runs(&format!("code_{k}"), &a.code, data);
    let parts: Vec<(u64, Vec<u8>)> = a.inputs.iter().map(|(o, b)| (u64::from(*o), b.clone())).collect();
    runs(&format!("input_{k}"), &flat(&parts), data);
    let spans: Vec<String> = a.inputs.iter().map(|(o, b)| format!("{{{o}, {}}}", b.len())).collect();
    let spans = if spans.is_empty() { "{0, 0}".to_string() } else { spans.join(", ") };
    let _ = writeln!(data, "static const unsigned spans_{k}[][2] = {{{spans}}};");
    let chk = check.map(|c| format!("\n        if (r == 0)\n            {c};")).unwrap_or_default();
    let _ = writeln!(
        body,
        "    {{\n        long how = 0;\n        long r = guest_run(code_{k}, NRUNS(code_{k}), {len}, spans_{k}, NDC(spans_{k}), input_{k}, NRUNS(input_{k}), &how);\n        check_ret({k}, \"KVM_RUN\", r < 0 ? r : how, {want});{chk}\n    }}",
        len = a.code.len()
    );
}
