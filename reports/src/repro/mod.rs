//! Standalone C reproducers: a program that needs only libc and `<linux/kvm.h>`, replays a
//! case's ioctls with the exact bytes the rig sends (guest runs included: memory, tables and
//! registers as the runner builds them, [`guest`]), checks each result against the contract's
//! expectation (allowed hardware choices resolved as the diff resolves them), and exits 1 on
//! divergence, 0 otherwise. Two modes, chosen at run time (`--plain`, `--bisect`), the default
//! chosen at generation ([`Options::bisect`]): plain lines and exit 2 when the test cannot run
//! here; or TAP (`1..N`, `ok`/`not ok` per step with its expectation) and exit 125 (skip) for
//! `git bisect run` and kselftest. The C runtime is `prelude.c` (and `guest.c` for cases with
//! guest runs).

mod guest;

use std::fmt::Write;
use xsave_oracle::abi::cpuid::CPUID_ENTRY_SIZE;
use xsave_oracle::abi::{CANARY, KVM_XSAVE_SIZE};
use xsave_oracle::case::{Case, Op};
use xsave_oracle::guest::Exit;
use xsave_oracle::trace::{Allowed, Ret, Trace};
use xsave_oracle::{HostFacts, ModelConfig};

fn ret_value(r: Ret) -> i64 {
    match r {
        Ret::Ok(v) => v,
        Ret::Err(e) => -(e as i64),
    }
}

/// Non-zero runs of `b` (gaps under 8 bytes merged) as C initializers `{offset, len, "\x.."}`.
pub(crate) fn runs(name: &str, b: &[u8], out: &mut String) {
    let mut items = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == 0 {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        while i < b.len() && (b[i] != 0 || b[i..b.len().min(i + 8)].iter().any(|&x| x != 0)) {
            if b[i] != 0 {
                end = i + 1;
            }
            i += 1;
        }
        let mut lit = String::new();
        for x in &b[start..end] {
            let _ = write!(lit, "\\x{x:02x}");
        }
        items.push(format!("    {{{start}, {}, \"{lit}\"}}", end - start));
    }
    if items.is_empty() {
        items.push("    {0, 0, \"\"}".into());
    }
    let _ = writeln!(out, "static const struct run {name}[] = {{\n{}\n}};", items.join(",\n"));
}

/// How the generated program behaves by default (both modes are always built in).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Default to bisect mode (TAP, exit 125 when the test cannot run here) instead of plain.
    pub bisect: bool,
}

/// The C source reproducing `case` on `host`, expecting `expected` (the oracle's prediction
/// under `model`), in plain mode by default.
pub fn c_reproducer(case: &Case, host: &HostFacts, model: &ModelConfig, expected: &Trace, title: &str) -> String {
    c_reproducer_with(case, host, model, expected, title, Options::default())
}

/// [`c_reproducer`] with `opts`.
pub fn c_reproducer_with(case: &Case, host: &HostFacts, model: &ModelConfig, expected: &Trace, title: &str, opts: Options) -> String {
    let mut data = String::new();
    let mut body = String::new();
    let quirks: Vec<&str> = model.quirks.iter().map(|q| q.name()).collect();
    let steps = case.steps();
    let n = steps.len().min(expected.results.len());
    let _ = writeln!(body, "    if (bisect) {{\n        printf(\"1..{n}\\n\");\n        planned = 1;\n    }}");
    let mut runs_guest = false;
    let mut xcrs = false;
    for (k, ((origin, op), exp)) in steps.iter().zip(&expected.results).enumerate() {
        let want = ret_value(exp.ret);
        let label = format!("{} {}", origin, op.name());
        let _ = writeln!(body, "    /* step {k}: {label} */");
        // The check of returned bytes against the expectation of step `k`.
        let check = |name: &str, got: &str, len: &str, data: &mut String| {
            runs(&format!("exp_{k}"), &exp.data, data);
            dontcare(k, &exp.unpredicted, data);
            allowed(k, &exp.allowed, data);
            format!(
                "check_bytes({k}, \"{name}\", {got}, {len}, exp_{k}, NRUNS(exp_{k}), {elen}, dc_{k}, NDC(dc_{k}), al_{k}, NRUNS(al_{k}))",
                elen = exp.data.len()
            )
        };
        match &**op {
            Op::NewVcpu => {
                let _ = writeln!(body, "    new_vcpu();");
            }
            Op::SetCpuid2(t) => {
                let entries = t.render(host);
                let _ = writeln!(body, "    {{\n        struct kvm_cpuid2 *c = zalloc(sizeof(*c) + {} * sizeof(struct kvm_cpuid_entry2));\n        c->nent = {};", entries.len().max(1), entries.len());
                for (i, e) in entries.iter().enumerate() {
                    let _ = writeln!(
                        body,
                        "        c->entries[{i}] = (struct kvm_cpuid_entry2){{.function = {:#x}, .index = {:#x}, .flags = {:#x}, .eax = {:#x}, .ebx = {:#x}, .ecx = {:#x}, .edx = {:#x}}};",
                        e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx
                    );
                }
                let _ = writeln!(
                    body,
                    "        check_ret({k}, \"KVM_SET_CPUID2\", call(vcpu, KVM_SET_CPUID2, c), {want});\n        free(c);\n    }}"
                );
            }
            Op::GetCpuid2 { capacity } => {
                let chk = check("KVM_GET_CPUID2", "got", &format!("4 + n * {CPUID_ENTRY_SIZE}"), &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        struct kvm_cpuid2 *c = zalloc(sizeof(*c) + {cap} * sizeof(struct kvm_cpuid_entry2));\n        c->nent = {capacity};\n        long r = call(vcpu, KVM_GET_CPUID2, c);\n        check_ret({k}, \"KVM_GET_CPUID2\", r, {want});\n        if (r == 0) {{\n            size_t n = c->nent < {capacity} ? c->nent : {capacity};\n            unsigned char *got = zalloc(4 + n * {CPUID_ENTRY_SIZE});\n            memcpy(got, &c->nent, 4);\n            for (size_t i = 0; i < n; i++) {{\n                memset(c->entries[i].padding, 0, sizeof(c->entries[i].padding));\n                memcpy(got + 4 + i * {CPUID_ENTRY_SIZE}, &c->entries[i], {CPUID_ENTRY_SIZE});\n            }}\n            {chk};\n            free(got);\n        }}\n        free(c);\n    }}",
                    cap = (*capacity as usize).max(1),
                );
            }
            Op::SetXsave(img) => {
                let buf = img.render(host, KVM_XSAVE_SIZE);
                runs(&format!("in_{k}"), &buf, &mut data);
                let _ = writeln!(body, "    memset(xbuf, 0, xsize);\n    apply(xbuf, in_{k}, NRUNS(in_{k}));\n    check_ret({k}, \"KVM_SET_XSAVE\", call(vcpu, KVM_SET_XSAVE, xbuf), {want});");
            }
            Op::RestoreLast { force_xstate_bv } => {
                let _ = writeln!(body, "    memset(xbuf, 0, xsize);\n    memcpy(xbuf, last, last_len < xsize ? last_len : xsize);");
                if let Some(bv) = force_xstate_bv {
                    let _ = writeln!(body, "    {{ uint64_t bv = {bv:#x}ULL; memcpy(xbuf + 512, &bv, 8); }}");
                }
                let _ = writeln!(body, "    check_ret({k}, \"KVM_SET_XSAVE(restore)\", call(vcpu, KVM_SET_XSAVE, xbuf), {want});");
            }
            Op::GetXsave | Op::GetXsave2 => {
                let (name, len, fill) = if **op == Op::GetXsave {
                    ("KVM_GET_XSAVE", KVM_XSAVE_SIZE.to_string(), "0".to_string())
                } else {
                    ("KVM_GET_XSAVE2", "xsize".to_string(), format!("{CANARY:#04x}"))
                };
                let chk = check(name, "xbuf", &len, &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        memset(xbuf, {fill}, {len});\n        long r = call(vcpu, {name}, xbuf);\n        check_ret({k}, \"{name}\", r, {want});\n        if (r == 0) {{\n            {chk};\n            memcpy(last, xbuf, {len});\n            last_len = {len};\n        }}\n    }}",
                );
            }
            Op::SetXcrs(x) => {
                xcrs = true;
                runs(&format!("in_{k}"), &x.render(), &mut data);
                let _ = writeln!(body, "    {{\n        struct kvm_xcrs x;\n        memset(&x, 0, sizeof(x));\n        apply((unsigned char *)&x, in_{k}, NRUNS(in_{k}));\n        check_ret({k}, \"KVM_SET_XCRS\", call(vcpu, KVM_SET_XCRS, &x), {want});\n    }}");
            }
            Op::GetXcrs => {
                xcrs = true;
                let chk = check("KVM_GET_XCRS", "(unsigned char *)&x", "sizeof(x)", &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        struct kvm_xcrs x;\n        memset(&x, 0, sizeof(x));\n        long r = call(vcpu, KVM_GET_XCRS, &x);\n        check_ret({k}, \"KVM_GET_XCRS\", r, {want});\n        if (r == 0) {chk};\n    }}",
                );
            }
            Op::CheckXsave2 => {
                let _ = writeln!(body, "    check_ret({k}, \"KVM_CHECK_EXTENSION(XSAVE2)\", call(vm, KVM_CHECK_EXTENSION, (void *)(long)KVM_CAP_XSAVE2), {want});");
            }
            Op::SetFpu(img) => {
                runs(&format!("in_{k}"), &img.render(), &mut data);
                let _ = writeln!(body, "    {{\n        struct kvm_fpu f;\n        memset(&f, 0, sizeof(f));\n        apply((unsigned char *)&f, in_{k}, NRUNS(in_{k}));\n        check_ret({k}, \"KVM_SET_FPU\", call(vcpu, KVM_SET_FPU, &f), {want});\n    }}");
            }
            Op::GetFpu => {
                let chk = check("KVM_GET_FPU", "(unsigned char *)&f", "sizeof(f)", &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        struct kvm_fpu f;\n        memset(&f, 0, sizeof(f));\n        long r = call(vcpu, KVM_GET_FPU, &f);\n        check_ret({k}, \"KVM_GET_FPU\", r, {want});\n        if (r == 0) {chk};\n    }}",
                );
            }
            Op::RunGuest(prog) => {
                runs_guest = true;
                let chk = (!exp.data.is_empty() || guest::reads_output(prog))
                    .then(|| check("KVM_RUN", "gmem + GUEST_OUTPUT", "GUEST_OUTPUT_READ", &mut data));
                guest::run_step(k, prog, want, chk, &mut data, &mut body);
            }
        }
        let _ = writeln!(body, "    step_end({k}, \"{}\");", c_str(&expectation(&label, op, exp)));
    }
    let mut needs = String::new();
    if xcrs {
        let _ = writeln!(needs, "    need_cap(KVM_CAP_XCRS, \"KVM_CAP_XCRS\");");
    }
    let _ = writeln!(needs, "    check_xfeatures({:#x}ULL);", host.supported_xcr0);
    let guest_runtime = if runs_guest { guest::runtime(host) } else { "static void guest_reset(void)\n{\n}\n".to_string() };
    let prelude = include_str!("prelude.c")
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("@TITLE@", &title.replace("*/", "* /"))
        .replace("@CONTRACT@", &model.contract.to_string())
        .replace("@QUIRKS@", &quirks.join(", "))
        .replace("@SUP@", &format!("{:#x}", host.supported_xcr0))
        .replace("@DEFAULT_MODE@", if opts.bisect { "--bisect" } else { "--plain" })
        .replace("@BISECT@", if opts.bisect { "1" } else { "0" });
    format!(
        r##"{prelude}
{guest_runtime}
{data}
int main(int argc, char **argv)
{{
    setup(argc, argv);
{needs}    long cap = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    if (cap > (long)xsize)
        xsize = (size_t)cap;
    xbuf = zalloc(xsize);
    last = zalloc(xsize);
    new_vcpu();
{body}
    if (bisect)
        printf("# %s\n", diverged ? "DIVERGENCE: the kernel departs from the expectation" : "all results as expected");
    else
        printf("%s\n", diverged ? "DIVERGENCE: the kernel departs from the expectation" : "all results as expected");
    return diverged ? 1 : 0;
}}
"##
    )
}

/// What step `label` expects, in words: its return (a guest run: how it ends), the bytes it
/// returns, and the contract rules behind the prediction.
fn expectation(label: &str, op: &Op, exp: &xsave_oracle::trace::OpResult) -> String {
    let ret = match (op, exp.ret) {
        (Op::RunGuest(_), Ret::Ok(v)) => format!("the guest run ends with exit {}", Exit::from_code(v).map_or("other", |e| e.name())),
        (_, r) => format!("returns {r}"),
    };
    let bytes = if exp.data.is_empty() {
        String::new()
    } else if exp.allowed.is_empty() {
        format!(", {} bytes as predicted", exp.data.len())
    } else {
        format!(", {} bytes as predicted or as the allowed hardware choices permit", exp.data.len())
    };
    let mut rules: Vec<&str> = Vec::new();
    for r in &exp.rules {
        if !rules.contains(&r.id()) {
            rules.push(r.id());
        }
    }
    let rules = if rules.is_empty() { String::new() } else { format!(" [{}]", rules.join(", ")) };
    format!("{label} {ret}{bytes}{rules}")
}

/// `t` as the inside of a C string literal.
fn c_str(t: &str) -> String {
    t.chars()
        .map(|c| match c {
            '"' => "\\\"".to_string(),
            '\\' => "\\\\".to_string(),
            c if c.is_ascii_graphic() || c == ' ' => c.to_string(),
            _ => "?".to_string(),
        })
        .collect()
}

/// The allowed hardware choices of step `k`'s expectation as `al_<k>` ([`resolve`](Allowed)).
fn allowed(k: usize, al: &[Allowed], out: &mut String) {
    let lit = |b: &[u8]| {
        b.iter().fold(String::new(), |mut s, x| {
            let _ = write!(s, "\\x{x:02x}");
            s
        })
    };
    let mut items: Vec<String> = al
        .iter()
        .map(|a| match a {
            Allowed::FreeBits { at, mask, .. } => format!("    {{0, {at}, {mask:#x}ULL, 0, 0, 0, \"\"}}"),
            Allowed::Unless { at, bits, start, alt, .. } => {
                format!("    {{1, {at}, {bits:#x}ULL, {start}, {}, 1, \"{}\"}}", alt.len(), lit(alt))
            }
            Allowed::OneOf { start, values, .. } => {
                let len = values.first().map_or(0, Vec::len);
                format!("    {{2, 0, 0, {start}, {len}, {}, \"{}\"}}", values.len(), lit(&values.concat()))
            }
        })
        .collect();
    if items.is_empty() {
        items.push("    {-1, 0, 0, 0, 0, 0, \"\"}".into());
    }
    let _ = writeln!(out, "static const struct allowed al_{k}[] = {{\n{}\n}};", items.join(",\n"));
}

fn dontcare(k: usize, ranges: &[(u32, u32)], out: &mut String) {
    let items: Vec<String> = ranges.iter().map(|(s, e)| format!("{{{s}, {e}}}")).collect();
    let items = if items.is_empty() { "{0, 0}".to_string() } else { items.join(", ") };
    let _ = writeln!(out, "static const unsigned dc_{k}[][2] = {{{items}}};");
}
