//! The kernel lab: stock Debian kernels (or a user's own) under QEMU TCG with `-cpu max`
//! (SVM, XSAVE, AVX, PKU), KVM loaded inside, and xsave-rig itself running there against the
//! guest kernel's `/dev/kvm`. Results come back over a virtio-serial port as a tar stream
//! (never scraped from the console); the console is saved to a log for failures.
//!
//! Cache layout (`$XDG_CACHE_HOME/xsave-rig`, else `~/.cache/xsave-rig`):
//! `apt/` (a private apt configuration: the system's sources are never touched),
//! `kernels/<id>/{vmlinuz, modules/*.ko, modules.order, kernel.json}`.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

const SUITES: &[(&str, &str)] = &[
    ("debian", "bullseye"),
    ("debian-security", "bullseye-security"),
    ("debian", "bookworm"),
    ("debian", "bookworm-backports"),
    ("debian-security", "bookworm-security"),
    ("debian", "trixie"),
    ("debian", "trixie-backports"),
    ("debian-security", "trixie-security"),
];

/// The Debian archive the lab downloads from: `$XSAVE_RIG_APT_MIRROR`, default
/// `http://deb.debian.org` (suites under `<mirror>/debian` and `<mirror>/debian-security`).
pub fn apt_mirror() -> String {
    std::env::var("XSAVE_RIG_APT_MIRROR")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "http://deb.debian.org".into())
        .trim_end_matches('/')
        .to_string()
}

/// apt options that bound every download: no retries, 10 s to connect or stall.
const APT_BOUNDS: &str = "Acquire::Retries \"0\";\nAcquire::http::Timeout \"10\";\nAcquire::https::Timeout \"10\";\n";

/// The first line of apt output saying the archive could not be reached (apt-get update
/// warns and may still exit 0), reduced to its cause.
fn apt_unreachable(output: &str) -> Option<String> {
    let markers = [
        "Failed to fetch",
        "Could not connect",
        "Unable to connect",
        "Temporary failure resolving",
        "Could not resolve",
        "Connection failed",
        "Connection timed out",
    ];
    let line = output.lines().find(|l| markers.iter().any(|m| l.contains(m)))?;
    let line = line.trim().trim_start_matches("W: ").trim_start_matches("E: ").trim_start_matches("Err:").trim();
    // "Failed to fetch <url>  <cause>": keep the cause.
    let cause = match line.strip_prefix("Failed to fetch ") {
        Some(rest) => rest.split_once("  ").map_or(rest, |(_, c)| c).trim(),
        None => line,
    };
    Some(cause.to_string())
}

/// The private apt configuration (created, and `apt-get update`d once a day per mirror).
fn apt_conf() -> Result<PathBuf, LabError> {
    need("apt-get", "the lab downloads Debian kernel packages with apt-get")?;
    let d = cache_dir().join("apt");
    for sub in ["lists/partial", "cache/archives/partial", "state", "etc"] {
        std::fs::create_dir_all(d.join(sub)).map_err(io(&d))?;
    }
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    if !Path::new(keyring).exists() {
        return Err(LabError::Missing { tool: keyring.into(), hint: "apt-get install debian-archive-keyring".into() });
    }
    let mirror = apt_mirror();
    let sources: String = SUITES.iter().map(|(arch, s)| format!("deb [signed-by={keyring}] {mirror}/{arch} {s} main\n")).collect();
    std::fs::write(d.join("etc/sources.list"), sources).map_err(io(&d))?;
    let status = d.join("state/status");
    if !status.exists() {
        std::fs::write(&status, "").map_err(io(&status))?;
    }
    let conf = d.join("etc/apt.conf");
    let text = format!(
        "Dir::State \"{s}\";\nDir::State::Lists \"{l}\";\nDir::State::status \"{st}\";\nDir::Cache \"{c}\";\nDir::Etc::SourceList \"{src}\";\nDir::Etc::SourceParts \"/nonexistent\";\nAPT::Architecture \"amd64\";\nAPT::Architectures \"amd64\";\nAcquire::Languages \"none\";\nAPT::Sandbox::User \"root\";\n{APT_BOUNDS}",
        s = d.join("state").display(),
        l = d.join("lists").display(),
        st = status.display(),
        c = d.join("cache").display(),
        src = d.join("etc/sources.list").display()
    );
    std::fs::write(&conf, text).map_err(io(&conf))?;
    let stamp = d.join("lists/.updated");
    let fresh = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|e| e < Duration::from_secs(86400))
        && std::fs::read_to_string(&stamp).is_ok_and(|m| m.trim() == mirror);
    if !fresh {
        let what = format!("apt-get update of the Debian archive {mirror} (looking for linux-image-amd64)");
        let out = Command::new("apt-get")
            .arg("-c")
            .arg(&conf)
            .args(["-q", "-o", "Acquire::http::Timeout=10", "-o", "Acquire::Retries=0", "update"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LabError::Command { what: what.clone(), detail: e.to_string() })?;
        let all = format!("{}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
        if let Some(cause) = apt_unreachable(&all) {
            return Err(LabError::Kernel(format!("cannot reach the Debian archive {mirror} to look up linux-image-amd64: {cause}")));
        }
        if !out.status.success() {
            let tail: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).rev().take(3).collect();
            return Err(LabError::Command { what, detail: tail.into_iter().rev().collect::<Vec<_>>().join(" / ") });
        }
        std::fs::write(&stamp, &mirror).map_err(io(&stamp))?;
    }
    Ok(conf)
}

fn apt_show(conf: &Path, pkg: &str) -> Result<String, LabError> {
    run_cmd(&format!("apt-cache show {pkg}"), Command::new("apt-cache").arg("-c").arg(conf).args(["show", pkg]))
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

/// Compare Debian versions with `dpkg --compare-versions`.
fn newer(a: &str, b: &str) -> bool {
    Command::new("dpkg").args(["--compare-versions", a, "gt", b]).status().is_ok_and(|s| s.success())
}

/// Resolve `debian:5.10|6.1|6.12|7` or an exact Debian version of linux-image-amd64.
fn resolve_version(conf: &Path, spec: &str) -> Result<String, LabError> {
    let want = spec.strip_prefix("debian:").unwrap_or(spec);
    let out = run_cmd(
        "apt-cache madison linux-image-amd64",
        Command::new("apt-cache").arg("-c").arg(conf).args(["madison", "linux-image-amd64"]),
    )?;
    let versions: Vec<String> = out.lines().filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string())).collect();
    if versions.iter().any(|v| v == want) {
        return Ok(want.to_string());
    }
    let prefix = format!("{want}.");
    let mut best: Option<String> = None;
    for v in versions.iter().filter(|v| v.starts_with(&prefix)) {
        if best.as_ref().is_none_or(|b| newer(v, b)) {
            best = Some(v.clone());
        }
    }
    best.ok_or_else(|| {
        LabError::Kernel(format!(
            "no Debian kernel matches {spec:?}: the archive serves linux-image-amd64 versions {}",
            if versions.is_empty() { "(none)".to_string() } else { versions.join(", ") }
        ))
    })
}

/// The exact packages (image, binary, modules) behind metapackage version `ver`.
fn packages_for(conf: &Path, ver: &str) -> Result<Vec<(String, String)>, LabError> {
    let mut todo = vec![("linux-image-amd64".to_string(), ver.to_string())];
    let mut out = Vec::new();
    while let Some((pkg, v)) = todo.pop() {
        let show = apt_show(conf, &format!("{pkg}={v}"))?;
        let meta = ["linux-image-amd64", "linux-modules-amd64", "linux-base-amd64"].contains(&pkg.as_str());
        let real = !meta && ["linux-image-", "linux-binary-", "linux-modules-", "linux-base-"].iter().any(|p| pkg.starts_with(p));
        if real {
            out.push((pkg.clone(), v.clone()));
        }
        for dep in field(&show, "Depends").unwrap_or_default().split(',') {
            let dep = dep.split('|').next().unwrap_or("").trim();
            let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
            // linux-base-<abi> holds modules.builtin from 7.x on (the bare linux-base is an unrelated tool package).
            let interesting = ["linux-image-", "linux-binary-", "linux-modules-", "linux-base-"].iter().any(|p| name.starts_with(p));
            if let (true, Some(dv)) = (interesting, rest.trim().strip_prefix("(= ").and_then(|r| r.strip_suffix(')'))) {
                if !out.iter().any(|(p, _)| p == name) {
                    todo.push((name.to_string(), dv.to_string()));
                }
            }
        }
    }
    if out.is_empty() {
        return Err(LabError::Kernel(format!("linux-image-amd64 {ver} names no kernel package")));
    }
    Ok(out)
}

/// Download (or reuse) a Debian kernel.
pub fn fetch_debian(spec: &str) -> Result<Kernel, LabError> {
    need("dpkg-deb", "apt-get install dpkg")?;
    let conf = apt_conf()?;
    let ver = resolve_version(&conf, spec)?;
    let id = format!("debian-{}", ver.replace(['~', '+', ':'], "_"));
    let dir = cache_dir().join("kernels").join(&id);
    if let Ok(k) = load_kernel(&dir) {
        return Ok(k);
    }
    let pkgs = packages_for(&conf, &ver)?;
    let debs = dir.join("debs");
    let root = dir.join("root");
    std::fs::create_dir_all(&debs).map_err(io(&debs))?;
    for (p, v) in &pkgs {
        run_cmd(
            &format!("apt-get download {p}={v}"),
            Command::new("apt-get")
                .arg("-c")
                .arg(&conf)
                .args(["-q", "-o", "Acquire::http::Timeout=10", "-o", "Acquire::Retries=0", "download", &format!("{p}={v}")])
                .stdin(Stdio::null())
                .current_dir(&debs),
        )?;
    }
    for e in std::fs::read_dir(&debs).map_err(io(&debs))?.flatten() {
        run_cmd("dpkg-deb -x", Command::new("dpkg-deb").arg("-x").arg(e.path()).arg(&root))?;
    }
    // The image is boot/vmlinuz-<release> (up to 6.12) or usr/lib/modules/<release>/vmlinuz (7.x).
    let in_boot = std::fs::read_dir(root.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")));
    let in_modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).into_iter().flatten().flatten())
        .map(|e| e.path().join("vmlinuz"))
        .find(|p| p.is_file());
    let image = in_boot.or(in_modules).ok_or_else(|| LabError::Kernel(format!("no vmlinuz in {}", root.display())))?;
    let release = match image.file_name().and_then(|n| n.to_str()) {
        Some("vmlinuz") => image.parent().and_then(|p| p.file_name()).and_then(|n| n.to_str()).unwrap_or("").to_string(),
        Some(n) => n.trim_start_matches("vmlinuz-").to_string(),
        None => String::new(),
    };
    let moddir = [root.join("lib/modules").join(&release), root.join("usr/lib/modules").join(&release)].into_iter().find(|p| p.is_dir());
    let k = install(&dir, &id, &release, pkgs.iter().map(|(p, v)| format!("{p}={v}")).collect(), &image, moddir.as_deref())?;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&debs);
    Ok(k)
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

/// Modules the lab loads (with their dependencies): KVM for AMD, and virtio-serial for the
/// result channel.
const WANTED: &[&str] = &["kvm_amd", "virtio_pci", "virtio_console"];

fn modname(p: &Path) -> String {
    let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let n = n.split(".ko").next().unwrap_or(n);
    n.replace('-', "_")
}

fn read_module(p: &Path) -> Result<Vec<u8>, LabError> {
    let name = p.to_string_lossy();
    if name.ends_with(".xz") {
        need("xz", "apt-get install xz-utils")?;
        let out = Command::new("xz").arg("-dc").arg(p).output().map_err(io(p))?;
        Ok(out.stdout)
    } else if name.ends_with(".zst") {
        need("zstd", "apt-get install zstd")?;
        let out = Command::new("zstd").arg("-dc").arg(p).output().map_err(io(p))?;
        Ok(out.stdout)
    } else if name.ends_with(".gz") {
        let out = Command::new("gzip").arg("-dc").arg(p).output().map_err(io(p))?;
        Ok(out.stdout)
    } else {
        std::fs::read(p).map_err(io(p))
    }
}

/// `depends=` from a module's .modinfo strings.
fn depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    ko.windows(key.len())
        .position(|w| w == key)
        .map(|i| {
            let rest = &ko[i + key.len()..];
            let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
            String::from_utf8_lossy(&rest[..end]).split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_")).collect()
        })
        .unwrap_or_default()
}

fn install(dir: &Path, id: &str, release: &str, packages: Vec<String>, image: &Path, moddir: Option<&Path>) -> Result<Kernel, LabError> {
    let mdir = dir.join("modules");
    std::fs::create_dir_all(&mdir).map_err(io(&mdir))?;
    let vmlinuz = dir.join("vmlinuz");
    std::fs::copy(image, &vmlinuz).map_err(io(image))?;
    let mut modules = Vec::new();
    if let Some(md) = moddir {
        let builtin: Vec<String> =
            std::fs::read_to_string(md.join("modules.builtin")).unwrap_or_default().lines().map(|l| modname(Path::new(l))).collect();
        let mut index = std::collections::HashMap::new();
        let mut stack = vec![md.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io(&d))?.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.to_string_lossy().contains(".ko") {
                    index.insert(modname(&p), p);
                }
            }
        }
        // Depth-first: dependencies before dependents.
        let mut order: Vec<String> = Vec::new();
        fn visit(
            m: &str,
            index: &std::collections::HashMap<String, PathBuf>,
            builtin: &[String],
            order: &mut Vec<String>,
            seen: &mut Vec<String>,
        ) -> Result<(), LabError> {
            if seen.iter().any(|s| s == m) || builtin.iter().any(|b| b == m) {
                return Ok(());
            }
            seen.push(m.to_string());
            let p = index.get(m).ok_or_else(|| LabError::Kernel(format!("module {m} is neither built in nor in the modules directory")))?;
            for d in depends(&read_module(p)?) {
                visit(&d, index, builtin, order, seen)?;
            }
            order.push(m.to_string());
            Ok(())
        }
        let mut seen = Vec::new();
        for w in WANTED {
            visit(w, &index, &builtin, &mut order, &mut seen)?;
        }
        for m in order {
            let out = mdir.join(format!("{m}.ko"));
            std::fs::write(&out, read_module(&index[&m])?).map_err(io(&out))?;
            modules.push(out);
        }
    }
    let k = Kernel { id: id.to_string(), release: release.to_string(), packages, image: vmlinuz, modules };
    let p = dir.join("kernel.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&k).unwrap_or_default()).map_err(io(&p))?;
    Ok(k)
}

/// Fetch `debian:…`/a version, or use a cached id, or a local image path.
pub fn kernel(spec: &str) -> Result<Kernel, LabError> {
    if Path::new(spec).is_file() {
        return local_kernel(Path::new(spec), None);
    }
    let cached = cache_dir().join("kernels").join(spec);
    if let Ok(k) = load_kernel(&cached) {
        return Ok(k);
    }
    fetch_debian(spec)
}

// ---- initramfs -------------------------------------------------------------------------

struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio { buf: Vec::new(), ino: 1 }
    }
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        let namesz = name.len() + 1;
        let hdr = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            namesz,
            0
        );
        self.ino += 1;
        self.buf.extend_from_slice(hdr.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[]);
    }
    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, data);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.buf
    }
}

/// Shared libraries `exe` needs (from `ldd`).
fn libs(exe: &Path) -> Result<Vec<PathBuf>, LabError> {
    let out = Command::new("ldd").arg(exe).output().map_err(io(exe))?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split_whitespace().filter(|w| w.starts_with('/')).map(PathBuf::from).filter(|p| p.is_file()).collect())
}

/// Files to place under `/lab/in` (host path → guest path) and the rewritten arguments.
fn map_inputs(args: &[String]) -> (Vec<(PathBuf, String)>, Vec<String>) {
    let mut files = Vec::new();
    let mut out = Vec::new();
    let mut skip_next = false;
    for (i, a) in args.iter().enumerate() {
        if skip_next {
            skip_next = false;
            continue;
        }
        if a == "--workdir" {
            out.push(a.clone());
            out.push("/out/workdir".into());
            skip_next = true;
            continue;
        }
        let p = Path::new(a);
        if i > 0 && p.exists() {
            let guest = format!("/lab/in/{}/{}", files.len(), p.file_name().and_then(|n| n.to_str()).unwrap_or("x"));
            files.push((p.to_path_buf(), guest.clone()));
            out.push(guest);
        } else {
            out.push(a.clone());
        }
    }
    (files, out)
}

fn add_tree(cpio: &mut Cpio, host: &Path, guest: &str) -> Result<(), LabError> {
    if host.is_dir() {
        cpio.dir(guest);
        let mut entries: Vec<PathBuf> = std::fs::read_dir(host).map_err(io(host))?.flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            let name = e.file_name().and_then(|n| n.to_str()).unwrap_or("x").to_string();
            add_tree(cpio, &e, &format!("{guest}/{name}"))?;
        }
    } else {
        cpio.file(guest, &std::fs::read(host).map_err(io(host))?, false);
    }
    Ok(())
}

fn parents(path: &str, cpio: &mut Cpio, made: &mut Vec<String>) {
    let mut cur = String::new();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        cur = if cur.is_empty() { (*part).to_string() } else { format!("{cur}/{part}") };
        if !made.contains(&cur) {
            cpio.dir(&cur);
            made.push(cur.clone());
        }
    }
}

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo "XSAVE-LAB: booted $(uname -r)"
while read m; do
  [ -n "$m" ] || continue
  if ! insmod /modules/$m.ko; then echo "XSAVE-LAB: insmod $m failed"; poweroff -f; fi
done < /modules/order
port=
for p in /sys/class/virtio-ports/*; do
  [ "$(cat $p/name 2>/dev/null)" = org.xsave-rig.results ] && port=/dev/$(basename $p)
done
[ -n "$port" ] || { echo "XSAVE-LAB: no result port"; poweroff -f; }
[ -c /dev/kvm ] || echo "XSAVE-LAB: /dev/kvm missing after module load"
mkdir -p /out
cut -d' ' -f1 /proc/uptime > /out/boot_seconds
cd /lab
sh /lab/run.sh > /out/stdout 2> /out/stderr
echo $? > /out/status
cut -d' ' -f1 /proc/uptime > /out/end_seconds
cd /out && tar -cf "$port" . && sync
echo "XSAVE-LAB: done"
sleep 1
poweroff -f
"#;

fn sh_quote(a: &str) -> String {
    format!("'{}'", a.replace('\'', "'\\''"))
}

/// What a lab run returns.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// The subcommand's exit status inside the guest.
    pub status: i32,
    /// Its stdout.
    pub stdout: Vec<u8>,
    /// Its stderr.
    pub stderr: Vec<u8>,
    /// Where `/out` was extracted on the host.
    pub outdir: PathBuf,
    /// Console log.
    pub console: PathBuf,
    /// Guest seconds from power-on to the command's start.
    pub boot_seconds: f64,
    /// Guest seconds the command ran.
    pub run_seconds: f64,
    /// Host wall seconds for the whole run.
    pub wall_seconds: f64,
}

/// Boot `kernel` and run `xsave-rig ARGS` inside; `scratch` holds the initramfs, the console
/// log and the extracted results (`scratch/out`).
pub fn run(kernel: &Kernel, args: &[String], scratch: &Path, timeout: Duration) -> Result<RunOutput, LabError> {
    run_with(kernel, args, scratch, timeout, None)
}

/// [`run`] with another `/init` script (tests use it to make guests panic or hang).
pub fn run_with(kernel: &Kernel, args: &[String], scratch: &Path, timeout: Duration, init: Option<&str>) -> Result<RunOutput, LabError> {
    need("qemu-system-x86_64", "apt-get install qemu-system-x86")?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(LabError::Missing { tool: "busybox".into(), hint: "apt-get install busybox-static".into() })?;
    std::fs::create_dir_all(scratch).map_err(io(scratch))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let (inputs, gargs) = map_inputs(args);
    let mut cpio = Cpio::new();
    let mut made: Vec<String> = Vec::new();
    for d in ["bin", "proc", "sys", "dev", "tmp", "out", "lab", "lab/in", "modules"] {
        cpio.dir(d);
        made.push(d.into());
    }
    cpio.file("bin/busybox", &std::fs::read(busybox).map_err(io(busybox))?, true);
    cpio.file("bin/xsave-rig", &std::fs::read(&exe).map_err(io(&exe))?, true);
    for lib in libs(&exe)? {
        let g = lib.to_string_lossy().trim_start_matches('/').to_string();
        parents(&g, &mut cpio, &mut made);
        cpio.file(&g, &std::fs::read(&lib).map_err(io(&lib))?, true);
    }
    let mut order = String::new();
    for m in &kernel.modules {
        let name = m.file_stem().and_then(|n| n.to_str()).unwrap_or("m").to_string();
        cpio.file(&format!("modules/{name}.ko"), &std::fs::read(m).map_err(io(m))?, false);
        order.push_str(&name);
        order.push('\n');
    }
    cpio.file("modules/order", order.as_bytes(), false);
    for (i, (host, guest)) in inputs.iter().enumerate() {
        cpio.dir(&format!("lab/in/{i}"));
        add_tree(&mut cpio, host, guest.trim_start_matches('/'))?;
    }
    let cmd =
        format!("export XSAVE_RIG_CACHE=/tmp\nexec /bin/xsave-rig {}\n", gargs.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" "));
    cpio.file("lab/run.sh", cmd.as_bytes(), true);
    cpio.file("init", init.unwrap_or(INIT).as_bytes(), true);
    let initrd = scratch.join("initrd.cpio");
    std::fs::write(&initrd, cpio.finish()).map_err(io(&initrd))?;
    let console = scratch.join("console.log");
    let results = scratch.join("results.tar");
    let _ = std::fs::remove_file(&results);
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1", "-display", "none", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 panic=-1 oops=panic loglevel=4"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-device", "virtio-serial-pci,id=vs"])
        .arg("-chardev")
        .arg(format!("file,id=results,path={}", results.display()))
        .args(["-device", "virtserialport,bus=vs.0,chardev=results,name=org.xsave-rig.results"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command { what: "qemu-system-x86_64".into(), detail: e.to_string() })?;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(io(Path::new("qemu-system-x86_64")))? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Hang { secs: timeout.as_secs(), log: console });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall_seconds = start.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&console).unwrap_or_default();
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        return Err(LabError::Command { what: "qemu-system-x86_64".into(), detail: format!("{status}: {}", err.trim()) });
    }
    if let Some(l) = log.lines().find(|l| l.contains("XSAVE-LAB: insmod")) {
        let module = l.split("insmod ").nth(1).unwrap_or("?").split_whitespace().next().unwrap_or("?").to_string();
        return Err(LabError::Module { module, log: console });
    }
    if log.contains("Kernel panic") {
        return Err(LabError::Panic(console));
    }
    let outdir = scratch.join("out");
    let _ = std::fs::remove_dir_all(&outdir);
    std::fs::create_dir_all(&outdir).map_err(io(&outdir))?;
    let tar = std::fs::File::open(&results)
        .map_err(|_| LabError::NoResults { why: "nothing arrived on the result port".into(), log: console.clone() })?;
    tar::Archive::new(tar)
        .unpack(&outdir)
        .map_err(|e| LabError::NoResults { why: format!("corrupt result stream: {e}"), log: console.clone() })?;
    let read = |n: &str| std::fs::read(outdir.join(n));
    let status_text =
        read("status").map_err(|_| LabError::NoResults { why: "no exit status in the results".into(), log: console.clone() })?;
    let num = |n: &str| read(n).ok().and_then(|b| String::from_utf8_lossy(&b).trim().parse::<f64>().ok()).unwrap_or(0.0);
    let (b, e) = (num("boot_seconds"), num("end_seconds"));
    Ok(RunOutput {
        status: String::from_utf8_lossy(&status_text).trim().parse().unwrap_or(-1),
        stdout: read("stdout").unwrap_or_default(),
        stderr: read("stderr").unwrap_or_default(),
        outdir,
        console,
        boot_seconds: b,
        run_seconds: (e - b).max(0.0),
        wall_seconds,
    })
}

/// Write `bytes` to stdout (for `lab run`).
pub fn passthrough(bytes: &[u8]) {
    let _ = std::io::stdout().write_all(bytes);
}
