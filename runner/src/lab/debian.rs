//! Debian kernel packages: a private apt configuration in the cache (the system's sources are
//! never touched), version resolution of `debian:5.10|6.1|6.12|7` or an exact
//! `linux-image-amd64` version, and the download and unpacking of the image and its modules.

use super::modules::install;
use super::{cache_dir, io, load_kernel, need, run_cmd, Kernel, LabError};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// The lab's apt state (lists, package cache, extracted kernels) for one user at a time: held
/// while a kernel or source package is resolved, downloaded and unpacked. Two lab guests booted
/// at once (`lab migrate`) or two processes sharing the cache would otherwise read the package
/// lists while the other `apt-get update` rewrites them.
pub(super) struct AptLock(#[allow(dead_code)] std::fs::File);

/// Take [`AptLock`] (blocking).
pub(super) fn apt_lock() -> Result<AptLock, LabError> {
    let d = cache_dir().join("apt");
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let p = d.join(".lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&p).map_err(io(&p))?;
    f.lock().map_err(io(&p))?;
    Ok(AptLock(f))
}

/// The private apt configuration (created, and `apt-get update`d once a day per mirror).
pub(super) fn apt_conf() -> Result<PathBuf, LabError> {
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

/// `apt-get download pkg=ver` into `dir`, through the private configuration `conf`.
pub(super) fn download(conf: &Path, pkg: &str, ver: &str, dir: &Path) -> Result<(), LabError> {
    run_cmd(
        &format!("apt-get download {pkg}={ver}"),
        Command::new("apt-get")
            .arg("-c")
            .arg(conf)
            .args(["-q", "-o", "Acquire::http::Timeout=10", "-o", "Acquire::Retries=0", "download", &format!("{pkg}={ver}")])
            .stdin(Stdio::null())
            .current_dir(dir),
    )?;
    Ok(())
}

/// The newest version of `pkg` the archive serves (e.g. `linux-source-6.12` for `lab build`).
pub(super) fn newest(conf: &Path, pkg: &str) -> Result<String, LabError> {
    let out = run_cmd(&format!("apt-cache madison {pkg}"), Command::new("apt-cache").arg("-c").arg(conf).args(["madison", pkg]))?;
    let mut best: Option<String> = None;
    for v in out.lines().filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string())) {
        if best.as_ref().is_none_or(|b| newer(&v, b)) {
            best = Some(v);
        }
    }
    best.ok_or_else(|| LabError::Kernel(format!("the Debian archive {} serves no {pkg}", apt_mirror())))
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
    let _apt = apt_lock()?;
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
        download(&conf, p, v, &debs)?;
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
