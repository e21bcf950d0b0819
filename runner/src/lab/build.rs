//! Kernels built from source for the lab (`lab build`): Debian's `linux-source-X.Y` package,
//! resolved and downloaded through the lab's private apt configuration, unpacked, patched
//! (each patch in the order given, `patch -p1 --fuzz=0`: the context must match, as for
//! `git apply`), configured as `make tinyconfig` plus the lab's base fragment (`build.config`
//! next to this file) plus the user's fragment, and built as a `bzImage` with everything the
//! lab needs built in (no modules).
//!
//! The result is cached as `kernels/build-X.Y-<hash12>/` like a downloaded kernel, the hash
//! covering the resolved source version, every patch's bytes in their order, the user's
//! fragment and the base fragment: a second build with the same inputs is a cache hit, and
//! the id boots anywhere a kernel id is accepted (`lab run --kernel`, `--backend lab:ID`).
//! The source tree lives in `builds/<id>/` while building and is removed once the image is
//! installed or the build failed (a failed build leaves `builds/<id>.log` and
//! `builds/<id>.config`); the kernel's directory keeps its `config` and `build.json` (the
//! patches' paths and hashes in order). The source package itself is kept in
//! `builds/sources/`.

use super::debian::{apt_conf, apt_lock, download, newest};
use super::modules::install;
use super::{cache_dir, io, load_kernel, need, run_cmd, Kernel, LabError};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

/// The lab's base configuration fragment (merged over `make tinyconfig`).
pub const BASE_CONFIG: &str = include_str!("build.config");

/// What `lab build` was asked for.
#[derive(Clone, Debug, Default)]
pub struct BuildRequest {
    /// `debian:X.Y`: Debian's `linux-source-X.Y` package, newest version the archive serves.
    pub source: String,
    /// Patches applied in this order, each with `patch -p1 --fuzz=0` (e.g. `git format-patch`
    /// files).
    pub patches: Vec<PathBuf>,
    /// A configuration fragment merged over the lab's base fragment.
    pub config: Option<PathBuf>,
    /// `make -j` (default: the available parallelism).
    pub jobs: Option<usize>,
}

/// A built (or cached) kernel.
#[derive(Clone, Debug)]
pub struct Built {
    /// The kernel, ready to boot.
    pub kernel: Kernel,
    /// Whether it came from the cache.
    pub cached: bool,
    /// Wall seconds of this call.
    pub seconds: f64,
    /// The source package and version built from.
    pub source: String,
}

/// `build.json` in the kernel's directory: what went into it.
#[derive(Serialize)]
struct BuildRecord<'a> {
    source: &'a str,
    /// The patches in the order applied: path and content hash.
    patches: Vec<PatchRecord>,
    config_hash: Option<String>,
    base_config_hash: String,
    seconds: f64,
    jobs: usize,
}

/// One applied patch in `build.json`.
#[derive(Serialize)]
struct PatchRecord {
    path: String,
    hash: String,
}

fn kerr(msg: String) -> LabError {
    LabError::Kernel(msg)
}

/// The series of a `debian:X.Y` source spec.
fn series(spec: &str) -> Result<&str, LabError> {
    let s = spec.strip_prefix("debian:").unwrap_or("");
    let ok = s.split('.').count() == 2 && s.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    if ok {
        Ok(s)
    } else {
        Err(kerr(format!("--source {spec:?}: expected debian:X.Y (Debian's linux-source-X.Y package), e.g. debian:6.12")))
    }
}

fn read_opt(p: Option<&Path>, what: &str) -> Result<Option<Vec<u8>>, LabError> {
    match p {
        Some(p) => std::fs::read(p).map(Some).map_err(|e| kerr(format!("{what} {}: {e}", p.display()))),
        None => Ok(None),
    }
}

/// The cache key of a build: length-prefixed fields (the patches as their count, then each
/// one in order), so no two inputs share a key.
fn key(version: &str, patches: &[Vec<u8>], config: Option<&[u8]>) -> String {
    let mut b = Vec::new();
    let field = |b: &mut Vec<u8>, f: Option<&[u8]>| match f {
        Some(f) => {
            b.extend_from_slice(&(f.len() as u64).to_le_bytes());
            b.extend_from_slice(f);
        }
        None => b.extend_from_slice(&u64::MAX.to_le_bytes()),
    };
    field(&mut b, Some(version.as_bytes()));
    b.extend_from_slice(&(patches.len() as u64).to_le_bytes());
    for p in patches {
        field(&mut b, Some(p));
    }
    field(&mut b, config);
    field(&mut b, Some(BASE_CONFIG.as_bytes()));
    xsave_oracle::hash::content_hash(&b)[..12].to_string()
}

/// The settings a fragment asks for, last one winning: (`CONFIG_X`, value, the line), with
/// `n` for `# CONFIG_X is not set`.
fn settings(fragment: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = Vec::new();
    for line in fragment.lines().map(str::trim) {
        let parsed = if let Some(name) = line.strip_prefix("# ").and_then(|l| l.strip_suffix(" is not set")) {
            Some((name.to_string(), "n".to_string()))
        } else if line.starts_with("CONFIG_") {
            line.split_once('=').map(|(n, v)| (n.to_string(), v.to_string()))
        } else {
            None
        };
        if let Some((name, value)) = parsed {
            out.retain(|(n, _, _)| *n != name);
            out.push((name, value, line.to_string()));
        }
    }
    out
}

/// The first setting of `fragments` that `config` (a `.config`) does not hold.
fn unmet(config: &str, fragments: &[&str]) -> Option<String> {
    let have: Vec<&str> = config.lines().collect();
    let all: String = fragments.join("\n");
    settings(&all).into_iter().find_map(|(name, value, line)| {
        let set = have.iter().find_map(|l| l.strip_prefix(&format!("{name}=")));
        let holds = match value.as_str() {
            "n" => set.is_none_or(|v| v == "n"),
            v => set == Some(v),
        };
        (!holds).then_some(line)
    })
}

fn make(src: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("make");
    c.current_dir(src).arg("ARCH=x86_64").args(args).stdin(Stdio::null());
    c
}

/// The last lines of a log that say what went wrong.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errs: Vec<&str> = text.lines().filter(|l| l.contains("error") || l.contains("Error")).collect();
    let pick: Vec<&str> = if errs.is_empty() { text.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().collect() } else { errs };
    pick.iter().take(2).map(|l| l.trim()).collect::<Vec<_>>().join(" / ")
}

/// The source package's `.deb`, downloaded once into `builds/sources/` (builds with other
/// patches or fragments reuse it).
fn source_deb(conf: &Path, pkg: &str, version: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf, LabError> {
    let dir = cache_dir().join("builds").join("sources");
    let deb = dir.join(format!("{pkg}_{}.deb", version.replace(['~', '+', ':'], "_")));
    if deb.is_file() {
        return Ok(deb);
    }
    progress(&format!("downloading {pkg}={version}"));
    let tmp = dir.join(format!(".download-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    download(conf, pkg, version, &tmp)?;
    let got = std::fs::read_dir(&tmp)
        .map_err(io(&tmp))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| kerr(format!("apt-get download {pkg}={version} left no .deb in {}", tmp.display())))?;
    std::fs::rename(&got, &deb).map_err(io(&deb))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(deb)
}

/// Build (or reuse) the kernel `req` describes; `progress` receives one line per phase.
pub fn build_kernel(req: &BuildRequest, progress: &mut dyn FnMut(&str)) -> Result<Built, LabError> {
    let t = Instant::now();
    let series = series(&req.source)?;
    let patches = req
        .patches
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| kerr(format!("--patch {}: {e}", p.display()))))
        .collect::<Result<Vec<_>, _>>()?;
    let config = read_opt(req.config.as_deref(), "--config")?;
    let fragment = match &config {
        Some(c) => String::from_utf8(c.clone()).map_err(|_| kerr("--config: the fragment is not UTF-8 text".into()))?,
        None => String::new(),
    };
    let pkg = format!("linux-source-{series}");
    let apt = apt_lock()?;
    let conf = apt_conf()?;
    let version = newest(&conf, &pkg)?;
    let source = format!("{pkg}={version}");
    let id = format!("build-{series}-{}", key(&version, &patches, config.as_deref()));
    let dir = cache_dir().join("kernels").join(&id);
    if let Ok(kernel) = load_kernel(&dir) {
        return Ok(Built { kernel, cached: true, seconds: t.elapsed().as_secs_f64(), source });
    }
    for (tool, hint) in [
        ("make", "apt-get install make"),
        ("gcc", "apt-get install gcc"),
        ("patch", "apt-get install patch"),
        ("bison", "apt-get install bison"),
        ("flex", "apt-get install flex"),
        ("bc", "apt-get install bc"),
        ("xz", "apt-get install xz-utils"),
        ("dpkg-deb", "apt-get install dpkg"),
    ] {
        need(tool, &format!("{hint} (lab build compiles a kernel)"))?;
    }
    let builds = cache_dir().join("builds");
    std::fs::create_dir_all(&builds).map_err(io(&builds))?;
    // One build per id at a time: a second caller waits, then finds the first one's result.
    let lock_path = builds.join(format!("{id}.lock"));
    let lock = std::fs::OpenOptions::new().create(true).write(true).truncate(false).open(&lock_path).map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            progress(&format!("waiting for another build of {id}"));
            lock.lock().map_err(io(&lock_path))?;
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(LabError::Io { path: lock_path, err: e }),
    }
    if let Ok(kernel) = load_kernel(&dir) {
        return Ok(Built { kernel, cached: true, seconds: t.elapsed().as_secs_f64(), source });
    }
    let deb = source_deb(&conf, &pkg, &version, progress)?;
    drop(apt);
    let work = builds.join(&id);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let jobs = req.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let files = Files { work: &work, log: builds.join(format!("{id}.log")), config: builds.join(format!("{id}.config")) };
    let built = compile(&files, &deb, &source, &req.patches, &fragment, jobs, progress);
    let (image, release) = match built {
        Ok(b) => b,
        Err(e) => {
            // The tree is large: keep only the log and the .config the error names.
            let _ = std::fs::remove_dir_all(&work);
            return Err(e);
        }
    };
    let mut packages = vec![source.clone()];
    let applied: Vec<PatchRecord> = req
        .patches
        .iter()
        .zip(&patches)
        .map(|(p, b)| PatchRecord { path: p.display().to_string(), hash: xsave_oracle::hash::content_hash(b) })
        .collect();
    packages.extend(applied.iter().map(|p| format!("patch {} ({})", p.path, p.hash)));
    if let (Some(p), Some(b)) = (&req.config, &config) {
        packages.push(format!("config {} ({})", p.display(), xsave_oracle::hash::content_hash(b)));
    }
    let kernel = install(&dir, &id, &release, packages, &image, None)?;
    let seconds = t.elapsed().as_secs_f64();
    let record = BuildRecord {
        source: &source,
        patches: applied,
        config_hash: config.as_deref().map(xsave_oracle::hash::content_hash),
        base_config_hash: xsave_oracle::hash::content_hash(BASE_CONFIG.as_bytes()),
        seconds,
        jobs,
    };
    std::fs::rename(&files.config, dir.join("config")).map_err(io(&files.config))?;
    let rec = dir.join("build.json");
    std::fs::write(&rec, serde_json::to_vec_pretty(&record).unwrap_or_default()).map_err(io(&rec))?;
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_file(&files.log);
    Ok(Built { kernel, cached: false, seconds, source })
}

/// Where one build works: the source tree's parent, and the build log and final `.config`
/// (kept next to it, outside the tree, which is removed after a failure).
struct Files<'a> {
    work: &'a Path,
    log: PathBuf,
    config: PathBuf,
}

/// Unpack `deb`, apply `patches` in order, configure and build: the bzImage and the kernel
/// release.
fn compile(
    f: &Files,
    deb: &Path,
    source: &str,
    patches: &[PathBuf],
    fragment: &str,
    jobs: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<(PathBuf, String), LabError> {
    let root = f.work.join("deb");
    run_cmd("dpkg-deb -x", Command::new("dpkg-deb").arg("-x").arg(deb).arg(&root))?;
    let tarball = std::fs::read_dir(root.join("usr/src"))
        .map_err(io(&root))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".tar.xz"))
        .ok_or_else(|| kerr(format!("{source} holds no usr/src/*.tar.xz")))?;
    progress(&format!("unpacking {}", tarball.file_name().and_then(|n| n.to_str()).unwrap_or("the source")));
    run_cmd("tar -xf (kernel source)", Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(f.work))?;
    let _ = std::fs::remove_dir_all(&root);
    let src = std::fs::read_dir(f.work)
        .map_err(io(f.work))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").is_file())
        .ok_or_else(|| kerr(format!("no kernel tree with a Makefile under {}", f.work.display())))?;
    for p in patches {
        progress(&format!("applying {}", p.display()));
        let abs = std::fs::canonicalize(p).map_err(io(p))?;
        let out = Command::new("patch")
            .current_dir(&src)
            .args(["-p1", "--fuzz=0", "--batch", "--forward", "-i"])
            .arg(&abs)
            .stdin(Stdio::null())
            .output()
            .map_err(io(Path::new("patch")))?;
        if !out.status.success() {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let why = text
                .lines()
                .find(|l| l.contains("FAILED") || l.contains("malformed") || l.contains("Only garbage") || l.contains("Reversed"))
                .or_else(|| text.lines().find(|l| !l.trim().is_empty()))
                .unwrap_or("patch failed")
                .trim()
                .to_string();
            return Err(kerr(format!("patch {} does not apply to {source}: {why}", p.display())));
        }
    }
    progress("configuring: make tinyconfig + the lab's base fragment + --config");
    let base = src.join("xsave-rig-base.config");
    let user = src.join("xsave-rig-user.config");
    std::fs::write(&base, BASE_CONFIG).map_err(io(&base))?;
    std::fs::write(&user, fragment).map_err(io(&user))?;
    run_cmd("make tinyconfig", &mut make(&src, &["tinyconfig"]))?;
    run_cmd(
        "merge_config.sh",
        Command::new("sh").current_dir(&src).arg("scripts/kconfig/merge_config.sh").arg("-m").arg(".config").arg(&base).arg(&user),
    )?;
    run_cmd("make olddefconfig", &mut make(&src, &["olddefconfig"]))?;
    let dotconfig = src.join(".config");
    std::fs::copy(&dotconfig, &f.config).map_err(io(&dotconfig))?;
    let cfg = std::fs::read_to_string(&f.config).map_err(io(&f.config))?;
    if let Some(line) = unmet(&cfg, &[BASE_CONFIG, fragment]) {
        return Err(kerr(format!(
            "config: `{line}` does not hold after make olddefconfig (an unmet dependency or an unknown option); see {}",
            f.config.display()
        )));
    }
    progress(&format!("make -j{jobs} bzImage (log: {})", f.log.display()));
    let logf = std::fs::File::create(&f.log).map_err(io(&f.log))?;
    let errf = logf.try_clone().map_err(io(&f.log))?;
    let status = make(&src, &[&format!("-j{jobs}"), "bzImage"]).stdout(logf).stderr(errf).status().map_err(io(Path::new("make")))?;
    if !status.success() {
        return Err(LabError::Command {
            what: format!("make bzImage of {source}"),
            detail: format!("{} (log: {})", log_tail(&f.log), f.log.display()),
        });
    }
    let release = run_cmd("make kernelrelease", &mut make(&src, &["-s", "kernelrelease"]))?.trim().to_string();
    Ok((src.join("arch/x86/boot/bzImage"), release))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specs() {
        assert_eq!(series("debian:6.12").ok(), Some("6.12"));
        for bad in ["6.12", "debian:6", "debian:6.x", "debian:", "ubuntu:6.12"] {
            assert!(series(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_cover_every_input() {
        let v = |p: &[&[u8]]| p.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
        let k = key("1", &v(&[b"p"]), Some(b"c"));
        assert_eq!(k.len(), 12);
        assert_ne!(k, key("2", &v(&[b"p"]), Some(b"c")));
        assert_ne!(k, key("1", &v(&[b"q"]), Some(b"c")));
        assert_ne!(k, key("1", &v(&[b"p"]), None));
        assert_ne!(key("1", &[], Some(b"")), key("1", &v(&[b""]), None));
        assert_eq!(k, key("1", &v(&[b"p"]), Some(b"c")));
        // Every patch counts, in its order, and patch boundaries are part of the key.
        let two = key("1", &v(&[b"p", b"q"]), None);
        assert_ne!(two, key("1", &v(&[b"p"]), None));
        assert_ne!(two, key("1", &v(&[b"q", b"p"]), None));
        assert_ne!(two, key("1", &v(&[b"pq"]), None));
        assert_ne!(two, key("1", &v(&[b"p"]), Some(b"q")));
        assert_eq!(two, key("1", &v(&[b"p", b"q"]), None));
    }

    #[test]
    fn fragments_are_checked_against_the_config() {
        let cfg = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        assert_eq!(unmet(cfg, &["CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n"]), None);
        assert_eq!(unmet(cfg, &["CONFIG_B=y"]).as_deref(), Some("CONFIG_B=y"));
        assert_eq!(unmet(cfg, &["CONFIG_D=y"]).as_deref(), Some("CONFIG_D=y"));
        assert_eq!(unmet(cfg, &["# CONFIG_A is not set"]).as_deref(), Some("# CONFIG_A is not set"));
        // The user's fragment overrides the base.
        assert_eq!(unmet(cfg, &["CONFIG_B=y", "# CONFIG_B is not set"]), None);
        assert_eq!(unmet(&BASE_CONFIG.replace("CONFIG_KVM_AMD=y", ""), &[BASE_CONFIG]).as_deref(), Some("CONFIG_KVM_AMD=y"));
    }
}
