//! `xsave-rig check-state`: will a saved `kvm_xsave` image load on a target host.

use crate::common::*;
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use xsave_oracle::HostFacts;
use xsave_runner::store::caps;

#[derive(clap::Args)]
pub struct Args {
    /// The state: 4096 bytes or the XSAVE2 size, as a VMM writes it.
    state: PathBuf,
    /// Target host fingerprint (`xsave-rig probe --json`).
    #[arg(long)]
    target: PathBuf,
    /// Guest CPUID: a JSON CPUID table (as in a case) or a JSON array of entries.
    #[arg(long)]
    guest_cpuid: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args { state, target, guest_cpuid, json } = args;
    let bytes = read_input(&state, caps::STATE)?;
    let dst = load_target(&target)?;
    let xsave2 = xsave2_size(&dst.host);
    if bytes.len() != 4096 && bytes.len() != xsave2 {
        bail!("{}: {} bytes; a saved kvm_xsave image is 4096 bytes or the target's XSAVE2 size ({xsave2})", state.display(), bytes.len());
    }
    let cpuid = match guest_cpuid {
        None => None,
        Some(p) => {
            let text = read_text(&p, caps::JSON)?;
            let t = match serde_json::from_str::<xsave_oracle::case::CpuidTable>(&text) {
                Ok(t) => t,
                Err(_) => {
                    let entries: Vec<xsave_oracle::case::CpuidEntry> = serde_json::from_str(&text)
                        .with_context(|| format!("{}: neither a CPUID table nor an array of entries", p.display()))?;
                    xsave_oracle::case::CpuidTable { base: xsave_oracle::case::CpuidBase::Empty, entries, reverse: false }
                }
            };
            Some(t)
        }
    };
    let setup: Vec<xsave_oracle::Op> = cpuid.into_iter().map(xsave_oracle::Op::SetCpuid2).collect();
    let r = xsave_runner::migrate::check_state(&bytes, &setup, &dst, None);
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("target            {} ({} [{}])", target.display(), dst.model.contract, quirk_names(&dst.model.quirks));
        println!("state XSTATE_BV   {}", r.state_xstate_bv);
        println!("KVM_SET_XSAVE     {} ({})", r.set_ret, r.verdict);
        println!("reason            {}", r.reason);
        if let Some(rule) = &r.rule {
            println!("rule              {rule}");
        }
        if let Some(bv) = &r.restored_xstate_bv {
            println!("KVM_GET_XSAVE     XSTATE_BV {bv}");
        }
        if !r.lost.is_empty() {
            println!("lost              {}", r.lost.join(", "));
        }
    }
    Ok(if r.verdict == xsave_runner::migrate::LoadVerdict::Loads { 0 } else { 1 })
}

/// `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)` on a host: the standard-format size of the
/// xfeatures KVM supports (XTILE_DATA only with the guest permission), at least 4096.
pub fn xsave2_size(host: &HostFacts) -> usize {
    use xsave_oracle::xfeatures::{XTILE_CFG, XTILE_DATA};
    let mut filtered = host.supported_xcr0;
    if filtered & XTILE_DATA != 0 {
        filtered &= host.guest_perm;
        if filtered & XTILE_DATA == 0 {
            filtered &= !XTILE_CFG;
        }
    }
    (xsave_oracle::layout::xstate_required_size(&host.components, filtered, false) as usize).max(4096)
}
