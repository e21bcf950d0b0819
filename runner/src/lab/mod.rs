//! The kernel lab: stock Debian kernels (or a user's own) under QEMU TCG with `-cpu max`
//! (SVM, XSAVE, AVX, PKU), KVM loaded inside, and xsave-rig itself running there against the
//! guest kernel's `/dev/kvm`, in one of two ways:
//!
//! - [`run`]: one [`Job`] (an xsave-rig command line with its explicit input files and output
//!   directories) runs whole inside the guest; its results come back over a virtio-serial port
//!   as a tar stream (never scraped from the console). `lab run` and `lab matrix` use it.
//! - [`LabBackend`]: a [`crate::Backend`] whose guest is booted once with [`serve()`] inside;
//!   the campaign stays on the host and only cases and traces cross a second virtio-serial
//!   port. `--backend lab:K` for fuzz, replay, minimize and bench uses it.
//!
//! The console is saved to a log for failures; every run has its own [`Scratch`] directory.
//!
//! Cache layout (`$XDG_CACHE_HOME/xsave-rig`, else `~/.cache/xsave-rig`):
//! `apt/` (a private apt configuration: the system's sources are never touched),
//! `kernels/<id>/{vmlinuz, modules/*.ko, modules.order, kernel.json}` (built kernels:
//! `kernels/build-X.Y-<hash12>/{vmlinuz, kernel.json, config, build.json}`, their source
//! trees in `builds/<id>/` while building, the source packages in `builds/sources/`),
//! `runs/<id>/<pid>-<n>/`.
//!
//! Modules: `debian` (apt resolution and download), `build` (kernels built from Debian's
//! `linux-source` package with a patch and a config fragment: `lab build`), `modules` (the
//! module dependency closure), `initramfs` (the cpio the guest boots), `qemu` (launch,
//! reaping, jobs), `backend`, `serve` and `wire` (the lab backend and its control channel).

mod backend;
mod build;
mod debian;
mod initramfs;
mod modules;
mod qemu;
mod serve;
mod wire;

pub use backend::{LabBackend, LabOptions};
pub use build::{build_kernel, BuildRequest, Built, BASE_CONFIG};
pub use debian::{apt_mirror, fetch_debian};
pub use qemu::{passthrough, run, Job, RunOutput, Scratch};
pub use serve::serve;

use modules::install;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Lab failures, each with what a user needs to act.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A tool is missing.
    #[error("{tool} not found: {hint}")]
    Missing {
        /// The tool.
        tool: String,
        /// How to get it.
        hint: String,
    },
    /// A command failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// What ran.
        what: String,
        /// Its stderr (last lines).
        detail: String,
    },
    /// Bad kernel spec or files.
    #[error("{0}")]
    Kernel(String),
    /// The guest kernel panicked.
    #[error("guest kernel panicked (console log: {0})")]
    Panic(PathBuf),
    /// A module did not load in the guest.
    #[error("module {module} failed to load in the guest (console log: {log})")]
    Module {
        /// The module.
        module: String,
        /// Console log.
        log: PathBuf,
    },
    /// The guest ran past the timeout.
    #[error("guest hung: no result after {secs} s, QEMU killed (console log: {log})")]
    Hang {
        /// Timeout.
        secs: u64,
        /// Console log.
        log: PathBuf,
    },
    /// The guest produced no (complete) results.
    #[error("guest returned no complete results: {why} (console log: {log})")]
    NoResults {
        /// What is missing.
        why: String,
        /// Console log.
        log: PathBuf,
    },
    /// I/O.
    #[error("{path}: {err}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        err: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |err| LabError::Io { path: path.to_path_buf(), err }
}

/// The cache directory.
pub fn cache_dir() -> PathBuf {
    if let Ok(d) = std::env::var("XSAVE_RIG_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/tmp".into())).join(".cache"));
    base.join("xsave-rig")
}

fn run_cmd(what: &str, cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd.output().map_err(|e| LabError::Command { what: what.to_string(), detail: e.to_string() })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        return Err(LabError::Command { what: what.to_string(), detail: tail.into_iter().rev().collect::<Vec<_>>().join(" / ") });
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn need(tool: &str, hint: &str) -> Result<(), LabError> {
    let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
    if found {
        Ok(())
    } else {
        Err(LabError::Missing { tool: tool.into(), hint: hint.into() })
    }
}

/// A kernel ready to boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Kernel {
    /// Identifier (`debian-6.12.118-1`, or `local-…`).
    pub id: String,
    /// Kernel release (`uname -r` inside).
    pub release: String,
    /// Packages it came from.
    pub packages: Vec<String>,
    /// The image.
    pub image: PathBuf,
    /// Decompressed modules to load, in order (empty: KVM built in).
    pub modules: Vec<PathBuf>,
}

/// A user's own kernel image, with a modules directory (`lib/modules/<release>`) unless KVM is
/// built in.
pub fn local_kernel(image: &Path, modules: Option<&Path>) -> Result<Kernel, LabError> {
    if !image.is_file() {
        return Err(LabError::Kernel(format!("{}: no such kernel image", image.display())));
    }
    let meta = std::fs::metadata(image).map_err(io(image))?;
    let stamp = meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let id = format!("local-{}-{}-{stamp}", image.file_name().and_then(|n| n.to_str()).unwrap_or("kernel"), meta.len());
    let dir = cache_dir().join("kernels").join(&id);
    let release = modules.and_then(|m| m.file_name()).and_then(|n| n.to_str()).unwrap_or("unknown").to_string();
    install(&dir, &id, &release, vec![image.display().to_string()], image, modules)
}

fn load_kernel(dir: &Path) -> Result<Kernel, LabError> {
    let p = dir.join("kernel.json");
    let text = std::fs::read(&p).map_err(io(&p))?;
    let k: Kernel = serde_json::from_slice(&text).map_err(|e| LabError::Kernel(format!("{}: {e}", p.display())))?;
    if k.image.is_file() && k.modules.iter().all(|m| m.is_file()) {
        Ok(k)
    } else {
        Err(LabError::Kernel("incomplete cache entry".into()))
    }
}

/// Fetch `debian:…`/a version, or use a cached id (a downloaded or `lab build` kernel), or a
/// local image path.
pub fn kernel(spec: &str) -> Result<Kernel, LabError> {
    if Path::new(spec).is_file() {
        return local_kernel(Path::new(spec), None);
    }
    let cached = cache_dir().join("kernels").join(spec);
    if let Ok(k) = load_kernel(&cached) {
        return Ok(k);
    }
    if spec.starts_with("build-") {
        return Err(LabError::Kernel(format!(
            "kernel {spec} is not in the cache {}: build it with `xsave-rig lab build`",
            cache_dir().display()
        )));
    }
    fetch_debian(spec)
}
