//! `xsave-rig probe`: measure this host.

use crate::common::quirk_names;
use anyhow::Result;
use xsave_runner::probe::{self, ProbeReport};

#[derive(clap::Args)]
pub struct Args {
    /// Print one JSON object (a portable host fingerprint).
    #[arg(long)]
    json: bool,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { json } = args;
    let r = probe::probe()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_probe(&r);
    }
    Ok(0)
}

pub fn print_probe(r: &ProbeReport) {
    println!("kernel           {}", r.kernel_release);
    println!("kvm module       {}", r.kvm_module);
    println!("cpu              {} {} ({}, microcode {})", r.cpu.vendor, r.cpu.model_name, r.cpu.signature, r.cpu.microcode);
    println!("capabilities     XSAVE={} XCRS={} XSAVE2={}", r.capabilities.xsave, r.capabilities.xcrs, r.capabilities.xsave2);
    println!(
        "supported XCR0   {} (device attr)  {} (KVM_GET_SUPPORTED_CPUID)  [{}]",
        r.supported_xcr0,
        r.supported_xcr0_cpuid,
        xsave_oracle::xfeatures::describe(r.host.supported_xcr0)
    );
    println!("host XCR0        {}", r.host_xcr0);
    println!("XSAVE2 size      {}", r.xsave_size);
    println!("MXCSR mask       {}", r.mxcsr_mask);
    println!(
        "CPUID 0x12.1     {}",
        if r.host.cpuid_sgx_xfrm_masked { "masked by guest XCR0, FP|SSE forced (6.1-era)" } else { "stored as given" }
    );
    println!(
        "GET_CPUID2 nent  {}",
        if r.host.get_cpuid2_keeps_nent { "left as the caller's on success (before 6.5)" } else { "written back on success (6.5+)" }
    );
    for c in &r.components {
        println!(
            "component        bit {:>2} {:<10} offset {:>5} size {:>5}",
            c.bit,
            xsave_oracle::xfeatures::name(c.bit),
            c.offset,
            c.size
        );
    }
    if r.contract_matches.is_empty() {
        match &r.nearest {
            Some(n) => println!("contract         unknown; {n}"),
            None => println!("contract         unknown (matches: none)"),
        }
    } else {
        println!("contract         {} (matches: {})", r.contract, r.contract_matches.join(", "));
    }
    println!("quirks           {}", if r.quirks.is_empty() { "none".into() } else { quirk_names(&r.quirks) });
    if let Some(g) = &r.guest {
        println!(
            "guest            {} at CPL{}; guest-writable xfeatures {}; hardware XCR0 {}",
            if g.runs { "programs run" } else { "programs do not run" },
            g.cpl,
            g.writable,
            if g.hw_xcr0_follows_guest { "follows the guest's" } else { "stays the host's (pvm-hw-xcr0)" }
        );
    }
    for e in &r.quirk_evidence {
        println!("  evidence: {e}");
    }
}
