//! `xsave-rig lab …`: the kernel lab (fetch, build, run, exec, matrix, migrate), and `--backend lab:K`, which runs
//! the whole command inside the lab guest.

use crate::common::*;
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::time::Duration;
use xsave_oracle::Case;
use xsave_runner::lab;
use xsave_runner::probe::{self, ProbeReport};
use xsave_runner::store::caps;

#[derive(Subcommand)]
pub enum LabCmd {
    /// Download and prepare a kernel: debian:5.10, debian:6.1, debian:6.12, debian:7 or an
    /// exact Debian linux-image-amd64 version; or --kernel-image PATH [--modules DIR].
    Fetch {
        /// Kernel spec.
        kernel: Option<String>,
        /// A kernel image of your own (bzImage).
        #[arg(long)]
        kernel_image: Option<PathBuf>,
        /// Its modules directory (lib/modules/<release>), unless KVM is built in.
        #[arg(long)]
        modules: Option<PathBuf>,
    },
    /// Build a kernel from Debian's linux-source-X.Y package (resolved through the lab's apt
    /// configuration, newest version), with patches and a config fragment, configured as
    /// `make tinyconfig` plus the lab's base fragment (runner/src/lab/build.config: 64-bit,
    /// virtio-pci, virtio console, KVM_AMD, KALLSYMS, all built in) plus --config. Cached by source
    /// version, every patch in its order, fragments: prints the kernel id (build-X.Y-<hash12>)
    /// that `lab run --kernel` and `--backend lab:ID` accept.
    Build {
        /// The source: debian:X.Y (e.g. debian:6.12).
        #[arg(long)]
        source: String,
        /// A patch to apply with `patch -p1 --fuzz=0` (e.g. a `git format-patch` file). May
        /// be given more than once: the patches are applied in the order given (a later one
        /// sees the earlier ones' changes), and the order is part of the cache key.
        #[arg(long = "patch")]
        patches: Vec<PathBuf>,
        /// A kernel config fragment (CONFIG_X=y lines) merged over the lab's base fragment.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Parallel make jobs (default: the number of CPUs).
        #[arg(long)]
        jobs: Option<usize>,
    },
    /// Run PROGRAM ARGS and exit with its status: for programs shipped into a lab guest, e.g.
    /// a compiled C reproducer: `lab run --kernel K --input ./repro -- lab exec ./repro`.
    Exec {
        /// The program and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        program: Vec<String>,
    },
    /// Boot a kernel and run `xsave-rig ARGS` inside; results come back to the host.
    Run {
        /// Kernel: debian:X, a cached id, or an image path.
        #[arg(long)]
        kernel: String,
        /// Seconds before the guest counts as hung.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        /// Where the initramfs, console log and results go (default: a fresh directory
        /// runs/<kernel>/<pid>-<n> under the cache, cleaned but for the console log on success).
        #[arg(long)]
        scratch: Option<PathBuf>,
        /// A file or directory the command reads: shipped into the guest at the same path
        /// (the guest runs in this working directory, so relative paths work). Repeatable;
        /// nothing else is shipped.
        #[arg(long)]
        input: Vec<PathBuf>,
        /// A directory the command writes (e.g. its --workdir): copied back to the same path.
        /// Repeatable.
        #[arg(long)]
        output: Vec<PathBuf>,
        /// Internal (for testing failure handling): replace the guest's /init with this script.
        #[arg(long)]
        init_script: Option<PathBuf>,
        /// The xsave-rig subcommand and its arguments.
        #[arg(last = true, required = true)]
        args: Vec<String>,
    },
    /// The same cases on several kernels (and this host): per-kernel verdicts and the cases
    /// whose behaviour differs between kernels.
    Matrix {
        /// Comma-separated kernels (debian:5.10,debian:6.1,…, cached ids or image paths).
        #[arg(long, value_delimiter = ',', required = true)]
        kernels: Vec<String>,
        /// Also run the cases on this host's /dev/kvm.
        #[arg(long)]
        host: bool,
        #[command(flatten)]
        source: crate::args::CaseSource,
        /// Where cases, per-kernel results and matrix.{json,md} go.
        #[arg(long, default_value = "xsave-matrix")]
        workdir: PathBuf,
        /// Seconds per guest before it counts as hung.
        #[arg(long, default_value_t = 1800)]
        timeout: u64,
        /// Print the matrix as JSON instead of Markdown.
        #[arg(long)]
        json: bool,
    },
    /// Migration executed between two kernels: each case runs on the source kernel's guest
    /// KVM, the last state it saved (GET_XSAVE/GET_XSAVE2) is loaded with SET_XSAVE into a
    /// fresh vCPU of the destination's (same guest CPUID and XCR0) and read back; both sides
    /// are judged by their own contracts, and every fate is compared with `migrate`'s
    /// simulated pre-flight. Exit status 1 when a load is refused or lossy, or either side
    /// diverges.
    Migrate(super::lab_migrate::Args),
}

/// Run a `lab` subcommand; returns the exit status.
pub fn run(cmd: LabCmd) -> Result<i32> {
    match cmd {
        LabCmd::Fetch { kernel, kernel_image, modules } => {
            let k = match (kernel, kernel_image) {
                (_, Some(img)) => lab::local_kernel(&img, modules.as_deref())?,
                (Some(spec), None) => lab::kernel(&spec)?,
                (None, None) => bail!("lab fetch needs a kernel spec (debian:6.12, …) or --kernel-image PATH"),
            };
            println!("{}  release {}  {} modules  ({})", k.id, k.release, k.modules.len(), k.packages.join(", "));
            Ok(0)
        }
        LabCmd::Build { source, patches, config, jobs } => {
            let req = lab::BuildRequest { source, patches, config, jobs };
            let b = lab::build_kernel(&req, &mut |line| eprintln!("xsave-rig lab build: {line}"))?;
            eprintln!(
                "xsave-rig lab build: {} {} ({}, release {}) in {:.1} s",
                b.kernel.id,
                if b.cached { "from the cache" } else { "built" },
                b.source,
                b.kernel.release,
                b.seconds
            );
            println!("{}", b.kernel.id);
            Ok(0)
        }
        LabCmd::Exec { program } => {
            let (prog, rest) = program.split_first().context("lab exec needs a program")?;
            let st = std::process::Command::new(prog).args(rest).status().with_context(|| format!("cannot run {prog}"))?;
            Ok(st.code().unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)))
        }
        LabCmd::Run { kernel, timeout, scratch, init_script, input, output, args } => {
            let k = lab::kernel(&kernel)?;
            let init = match init_script {
                Some(p) => Some(read_text(&p, caps::JSON)?),
                None => None,
            };
            let scratch = scratch.map_or_else(|| lab::Scratch::fresh(&k), |s| lab::Scratch::at(&s));
            let job = lab::Job { args, inputs: input, outputs: output, init };
            run_in_lab(&k, &job, &scratch, Duration::from_secs(timeout))
        }
        LabCmd::Migrate(a) => super::lab_migrate::run(a),
        LabCmd::Matrix { kernels, host, source, workdir, timeout, json } => {
            let m = run_matrix(&kernels, host, &source, &workdir, Duration::from_secs(timeout))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print!("{}", xsave_runner::matrix::markdown(&m));
            }
            Ok(0)
        }
    }
}

/// Run `job` in `k`'s lab guest: print its output (its outputs are copied back), report
/// timings, and return the guest's exit status.
pub fn run_in_lab(k: &lab::Kernel, job: &lab::Job, scratch: &lab::Scratch, timeout: Duration) -> Result<i32> {
    let out = lab::run(k, job, scratch, timeout)?;
    lab::passthrough(&out.stdout);
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!(
        "xsave-rig lab: {} booted in {:.1} s, ran {:.1} s, {:.1} s wall; console log {}",
        k.id,
        out.boot_seconds,
        out.run_seconds,
        out.wall_seconds,
        out.console.display()
    );
    Ok(out.status)
}

pub fn read_records(dir: &Path) -> Result<(ProbeReport, Vec<xsave_runner::matrix::ExecRecord>)> {
    let p: ProbeReport = serde_json::from_slice(&read_input(&dir.join("probe.json"), caps::JSON)?)?;
    let text = read_text(&dir.join("records.jsonl"), caps::STATS)?;
    let recs = text
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("{}: corrupt records", dir.display()))?;
    Ok((p, recs))
}

pub fn run_matrix(
    kernels: &[String],
    host: bool,
    source: &crate::args::CaseSource,
    workdir: &Path,
    timeout: Duration,
) -> Result<xsave_runner::matrix::Matrix> {
    use xsave_runner::matrix::{build, column, differing, exec_cases};
    let cdir = workdir.join("cases");
    let list: Vec<(String, Case)> = source.list()?;
    let _ = std::fs::remove_dir_all(&cdir);
    std::fs::create_dir_all(&cdir).with_context(|| format!("cannot create {}", cdir.display()))?;
    for (n, c) in &list {
        std::fs::write(cdir.join(n), c.encode())?;
    }
    // Pass 1: every case on every column.
    let mut columns = Vec::new();
    let mut hosts = Vec::new();
    let mut pass1 = Vec::new();
    let mut kernels_used = Vec::new();
    for spec in kernels {
        let k = lab::kernel(spec)?;
        let out = workdir.join("kernels").join(&k.id).join("pass1");
        let _ = std::fs::remove_dir_all(&out);
        let job = lab::Job {
            args: vec!["exec-cases".into(), cdir.display().to_string(), "--workdir".into(), out.display().to_string()],
            inputs: vec![cdir.clone()],
            outputs: vec![out.clone()],
            init: None,
        };
        let r = lab::run(&k, &job, &lab::Scratch::at(&workdir.join("kernels").join(&k.id).join("scratch")), timeout)?;
        if r.status != 0 {
            bail!(
                "{}: exec-cases exited {} in the guest: {} (console log {})",
                k.id,
                r.status,
                String::from_utf8_lossy(&r.stderr).trim(),
                r.console.display()
            );
        }
        let (p, recs) = read_records(&out)?;
        columns.push(column(&k.id, &p, &recs, r.boot_seconds, r.run_seconds));
        hosts.push(p.host.clone());
        pass1.push(recs);
        kernels_used.push(Some(k));
    }
    if host {
        let p = probe::probe()?;
        let t = std::time::Instant::now();
        let recs = exec_cases(&p, &list, false)?;
        columns.push(column("host", &p, &recs, 0.0, t.elapsed().as_secs_f64()));
        hosts.push(p.host.clone());
        pass1.push(recs);
        kernels_used.push(None);
    }
    // Pass 2: full traces of the cases that differ.
    let differing = differing(&list, &pass1);
    let mut full = std::collections::BTreeMap::new();
    if !differing.is_empty() {
        let only = workdir.join("differing.txt");
        std::fs::write(&only, differing.join("\n"))?;
        for (col, k) in columns.iter().zip(&kernels_used) {
            let recs = match k {
                Some(k) => {
                    let out = workdir.join("kernels").join(&k.id).join("pass2");
                    let _ = std::fs::remove_dir_all(&out);
                    let job = lab::Job {
                        args: vec![
                            "exec-cases".into(),
                            cdir.display().to_string(),
                            "--workdir".into(),
                            out.display().to_string(),
                            "--only".into(),
                            only.display().to_string(),
                            "--full".into(),
                        ],
                        inputs: vec![cdir.clone(), only.clone()],
                        outputs: vec![out.clone()],
                        init: None,
                    };
                    lab::run(k, &job, &lab::Scratch::at(&workdir.join("kernels").join(&k.id).join("scratch")), timeout)?;
                    read_records(&out)?.1
                }
                None => {
                    let sel: Vec<(String, Case)> = list.iter().filter(|(n, _)| differing.contains(n)).cloned().collect();
                    exec_cases(&probe::probe()?, &sel, true)?
                }
            };
            for r in recs {
                if let Some(t) = r.trace {
                    full.insert((col.kernel.clone(), r.case.clone()), t);
                }
            }
        }
    }
    let m = build(&list, columns, &hosts, &pass1, &full);
    xsave_runner::store::write_atomic(&workdir.join("matrix.json"), &serde_json::to_vec_pretty(&m)?)?;
    xsave_runner::store::write_atomic(&workdir.join("matrix.md"), xsave_runner::matrix::markdown(&m).as_bytes())?;
    Ok(m)
}
