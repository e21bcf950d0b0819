//! Standalone C reproducers: a program that needs only libc and `<linux/kvm.h>`, replays a
//! case's ioctls with the exact bytes the rig sends, prints each result next to the contract's
//! expectation, and exits 1 on divergence (0 otherwise, 2 if KVM cannot be set up).

use std::fmt::Write;
use xsave_oracle::abi::cpuid::CPUID_ENTRY_SIZE;
use xsave_oracle::abi::{CANARY, KVM_XSAVE_SIZE};
use xsave_oracle::case::{Case, Op};
use xsave_oracle::trace::{Ret, Trace};
use xsave_oracle::{HostFacts, ModelConfig};

fn ret_value(r: Ret) -> i64 {
    match r {
        Ret::Ok(v) => v,
        Ret::Err(e) => -(e as i64),
    }
}

/// Non-zero runs of `b` (gaps under 8 bytes merged) as C initializers `{offset, len, "\x.."}`.
fn runs(name: &str, b: &[u8], out: &mut String) {
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

/// The C source reproducing `case` on `host`, expecting `expected` (the oracle's prediction
/// under `model`).
pub fn c_reproducer(case: &Case, host: &HostFacts, model: &ModelConfig, expected: &Trace, title: &str) -> String {
    let mut data = String::new();
    let mut body = String::new();
    let quirks: Vec<&str> = model.quirks.iter().map(|q| q.name()).collect();
    for (k, ((origin, op), exp)) in case.steps().iter().zip(&expected.results).enumerate() {
        let want = ret_value(exp.ret);
        let label = format!("{} {}", origin, op.name());
        let _ = writeln!(body, "    /* step {k}: {label} */");
        match &**op {
            Op::NewVcpu => {
                let _ = writeln!(body, "    new_vcpu();");
            }
            Op::SetCpuid2(t) => {
                let entries = t.render(host);
                let _ = writeln!(body, "    {{\n        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + {} * sizeof(struct kvm_cpuid_entry2));\n        if (!c) exit(2);\n        c->nent = {};", entries.len().max(1), entries.len());
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
                runs(&format!("exp_{k}"), &exp.data, &mut data);
                dontcare(k, &exp.unpredicted, &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        struct kvm_cpuid2 *c = calloc(1, sizeof(*c) + {cap} * sizeof(struct kvm_cpuid_entry2));\n        if (!c) exit(2);\n        c->nent = {capacity};\n        long r = call(vcpu, KVM_GET_CPUID2, c);\n        check_ret({k}, \"KVM_GET_CPUID2\", r, {want});\n        if (r == 0) {{\n            size_t n = c->nent < {capacity} ? c->nent : {capacity};\n            unsigned char *got = calloc(1, 4 + n * {CPUID_ENTRY_SIZE});\n            if (!got) exit(2);\n            memcpy(got, &c->nent, 4);\n            for (size_t i = 0; i < n; i++) {{\n                memset(c->entries[i].padding, 0, sizeof(c->entries[i].padding));\n                memcpy(got + 4 + i * {CPUID_ENTRY_SIZE}, &c->entries[i], {CPUID_ENTRY_SIZE});\n            }}\n            check_bytes({k}, \"KVM_GET_CPUID2\", got, 4 + n * {CPUID_ENTRY_SIZE}, exp_{k}, NRUNS(exp_{k}), {elen}, dc_{k}, NDC(dc_{k}));\n            free(got);\n        }}\n        free(c);\n    }}",
                    cap = (*capacity as usize).max(1),
                    elen = exp.data.len()
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
                runs(&format!("exp_{k}"), &exp.data, &mut data);
                dontcare(k, &exp.unpredicted, &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        memset(xbuf, {fill}, {len});\n        long r = call(vcpu, {name}, xbuf);\n        check_ret({k}, \"{name}\", r, {want});\n        if (r == 0) {{\n            check_bytes({k}, \"{name}\", xbuf, {len}, exp_{k}, NRUNS(exp_{k}), {elen}, dc_{k}, NDC(dc_{k}));\n            memcpy(last, xbuf, {len});\n            last_len = {len};\n        }}\n    }}",
                    elen = exp.data.len()
                );
            }
            Op::SetXcrs(x) => {
                runs(&format!("in_{k}"), &x.render(), &mut data);
                let _ = writeln!(body, "    {{\n        struct kvm_xcrs x;\n        memset(&x, 0, sizeof(x));\n        apply((unsigned char *)&x, in_{k}, NRUNS(in_{k}));\n        check_ret({k}, \"KVM_SET_XCRS\", call(vcpu, KVM_SET_XCRS, &x), {want});\n    }}");
            }
            Op::GetXcrs => {
                runs(&format!("exp_{k}"), &exp.data, &mut data);
                dontcare(k, &exp.unpredicted, &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        struct kvm_xcrs x;\n        memset(&x, 0, sizeof(x));\n        long r = call(vcpu, KVM_GET_XCRS, &x);\n        check_ret({k}, \"KVM_GET_XCRS\", r, {want});\n        if (r == 0) check_bytes({k}, \"KVM_GET_XCRS\", (unsigned char *)&x, sizeof(x), exp_{k}, NRUNS(exp_{k}), {elen}, dc_{k}, NDC(dc_{k}));\n    }}",
                    elen = exp.data.len()
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
                runs(&format!("exp_{k}"), &exp.data, &mut data);
                dontcare(k, &exp.unpredicted, &mut data);
                let _ = writeln!(
                    body,
                    "    {{\n        struct kvm_fpu f;\n        memset(&f, 0, sizeof(f));\n        long r = call(vcpu, KVM_GET_FPU, &f);\n        check_ret({k}, \"KVM_GET_FPU\", r, {want});\n        if (r == 0) check_bytes({k}, \"KVM_GET_FPU\", (unsigned char *)&f, sizeof(f), exp_{k}, NRUNS(exp_{k}), {elen}, dc_{k}, NDC(dc_{k}));\n    }}",
                    elen = exp.data.len()
                );
            }
            Op::RunGuest(_) => {
                let _ = writeln!(
                    body,
                    "    fprintf(stderr, \"step {k}: KVM_RUN of a guest program is not reproduced in C yet; replay the case with xsave-rig replay\\n\");\n    return 3;"
                );
            }
        }
    }
    format!(
        r#"/*
 * Reproducer generated by xsave-rig {version}.
 * {title}
 * Expectations: contract {contract}, quirks [{quirks}], host supported XCR0 {sup:#x}.
 * Build: gcc -Wall -Werror -o repro repro.c    Run as a user with access to /dev/kvm.
 * Exit status: 0 every result as expected, 1 divergence, 2 KVM could not be set up,
 * 3 the case runs guest code, which this reproducer does not do yet.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include <linux/kvm.h>

struct run {{ unsigned off, len; const char *bytes; }};
#define NRUNS(r) (sizeof(r) / sizeof((r)[0]))
#define NDC(d) (sizeof(d) / sizeof((d)[0]))

#define MAYBE_UNUSED __attribute__((unused))

static int kvm = -1, vm = -1, vcpu = -1, diverged;
static unsigned char *xbuf, *last;
static size_t xsize = 4096;
static MAYBE_UNUSED size_t last_len;

static MAYBE_UNUSED void apply(unsigned char *b, const struct run *r, size_t n)
{{
    for (size_t i = 0; i < n; i++)
        memcpy(b + r[i].off, r[i].bytes, r[i].len);
}}

static MAYBE_UNUSED long call(int fd, unsigned long req, void *arg)
{{
    long r = ioctl(fd, req, arg);
    return r < 0 ? -errno : r;
}}

static void new_vcpu(void)
{{
    if (vcpu >= 0)
        close(vcpu);
    if (vm >= 0)
        close(vm);
    vm = ioctl(kvm, KVM_CREATE_VM, 0);
    vcpu = vm < 0 ? -1 : ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vm < 0 || vcpu < 0) {{
        perror("KVM_CREATE_VM/KVM_CREATE_VCPU");
        exit(2);
    }}
}}

static MAYBE_UNUSED void check_ret(int step, const char *name, long got, long want)
{{
    printf("step %2d %-28s returned %-6ld expected %-6ld %s\n", step, name, got, want, got == want ? "ok" : "DIVERGES");
    if (got != want)
        diverged = 1;
}}

static MAYBE_UNUSED void check_bytes(int step, const char *name, const unsigned char *got, size_t n, const struct run *r, size_t nr, size_t elen,
                        const unsigned (*dc)[2], size_t ndc)
{{
    unsigned char *want = calloc(1, elen + 1);
    size_t shown = 0;
    if (!want)
        exit(2);
    apply(want, r, nr);
    if (n != elen) {{
        printf("step %2d %-28s wrote %zu bytes, expected %zu DIVERGES\n", step, name, n, elen);
        diverged = 1;
    }}
    for (size_t i = 0; i < n && i < elen; i++) {{
        int skip = 0;
        for (size_t d = 0; d < ndc; d++)
            if (i >= dc[d][0] && i < dc[d][1])
                skip = 1;
        if (skip || got[i] == want[i])
            continue;
        size_t j = i;
        while (j < n && j < elen && got[j] != want[j] && j - i < 32)
            j++;
        if (shown++ < 16) {{
            printf("        bytes %zu..%zu: observed ", i, j);
            for (size_t k = i; k < j; k++)
                printf("%02x", got[k]);
            printf(" expected ");
            for (size_t k = i; k < j; k++)
                printf("%02x", want[k]);
            printf("\n");
        }}
        diverged = 1;
        i = j - 1;
    }}
    free(want);
}}

{data}
int main(void)
{{
    kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) {{
        perror("/dev/kvm");
        return 2;
    }}
    long cap = ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
    if (cap > (long)xsize)
        xsize = (size_t)cap;
    xbuf = calloc(1, xsize);
    last = calloc(1, xsize);
    if (!xbuf || !last)
        return 2;
    new_vcpu();
{body}
    printf("%s\n", diverged ? "DIVERGENCE: the kernel departs from the expectation" : "all results as expected");
    return diverged ? 1 : 0;
}}
"#,
        version = env!("CARGO_PKG_VERSION"),
        title = title.replace("*/", "* /"),
        contract = model.contract,
        quirks = quirks.join(", "),
        sup = host.supported_xcr0,
    )
}

fn dontcare(k: usize, ranges: &[(u32, u32)], out: &mut String) {
    let items: Vec<String> = ranges.iter().map(|(s, e)| format!("{{{s}, {e}}}")).collect();
    let items = if items.is_empty() { "{0, 0}".to_string() } else { items.join(", ") };
    let _ = writeln!(out, "static const unsigned dc_{k}[][2] = {{{items}}};");
}
