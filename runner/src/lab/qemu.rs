//! QEMU: one guest per run under `qemu-system-x86_64 -accel tcg -cpu max`, always reaped
//! ([`Qemu`] kills and waits on drop), each run in its own scratch directory ([`Scratch`]);
//! results come back as a tar stream over the virtio-serial port `org.xsave-rig.results`.

use super::initramfs::{self, sh_quote};
use super::{cache_dir, io, need, Kernel, LabError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A run's own scratch directory (initramfs, console log, results): by default
/// `runs/<kernel>/<pid>-<n>` under the cache, so parallel runs of one kernel never share one.
/// [`Scratch::clean`] removes everything but the console log once a run succeeded.
#[derive(Clone, Debug)]
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// A fresh directory for one run of `kernel` under the cache.
    pub fn fresh(kernel: &Kernel) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Scratch { dir: cache_dir().join("runs").join(&kernel.id).join(format!("{}-{n}", std::process::id())) }
    }

    /// The directory `dir`, as the user named it.
    pub fn at(dir: &Path) -> Scratch {
        Scratch { dir: dir.to_path_buf() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The console log's path.
    pub fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// After a successful run: remove everything but the console log (which stays small).
    pub fn clean(&self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == "console.log") {
                continue;
            }
            let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        }
    }
}

/// A running QEMU; dropping it kills and reaps the process.
pub(super) struct Qemu {
    child: Child,
    start: Instant,
    console: PathBuf,
}

impl Qemu {
    /// Boot `kernel` with `initrd`: console to `scratch/console.log`, the result port to
    /// `results`, and `extra` QEMU arguments (more ports).
    pub(super) fn launch(kernel: &Kernel, initrd: &Path, scratch: &Scratch, results: &Path, extra: &[String]) -> Result<Qemu, LabError> {
        let console = scratch.console();
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1", "-display", "none", "-no-reboot", "-monitor", "none"])
            .arg("-kernel")
            .arg(&kernel.image)
            .arg("-initrd")
            .arg(initrd)
            .args(["-append", "console=ttyS0 panic=-1 oops=panic loglevel=4"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-device", "virtio-serial-pci,id=vs"])
            .arg("-chardev")
            .arg(format!("file,id=results,path={}", results.display()))
            .args(["-device", "virtserialport,bus=vs.0,chardev=results,name=org.xsave-rig.results"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError::Command { what: "qemu-system-x86_64".into(), detail: e.to_string() })?;
        Ok(Qemu { child, start: Instant::now(), console })
    }

    /// Whether QEMU has exited (reaping it if so).
    pub(super) fn exited(&mut self) -> Result<Option<ExitStatus>, LabError> {
        self.child.try_wait().map_err(io(Path::new("qemu-system-x86_64")))
    }

    /// Seconds since launch.
    pub(super) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Wait until QEMU exits, killing it after `timeout` from launch ([`LabError::Hang`]).
    pub(super) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, LabError> {
        loop {
            if let Some(s) = self.exited()? {
                return Ok(s);
            }
            if self.start.elapsed() > timeout {
                self.kill();
                return Err(LabError::Hang { secs: timeout.as_secs(), log: self.console.clone() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill and reap QEMU.
    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// QEMU's own stderr (after it exited).
    pub(super) fn stderr(&mut self) -> String {
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        err.trim().to_string()
    }

    /// The guest's failure as read from the console log: a module that did not load, or a
    /// kernel panic.
    pub(super) fn console_failure(&self) -> Option<LabError> {
        let log = std::fs::read_to_string(&self.console).unwrap_or_default();
        if let Some(l) = log.lines().find(|l| l.contains("XSAVE-LAB: insmod")) {
            let module = l.split("insmod ").nth(1).unwrap_or("?").split_whitespace().next().unwrap_or("?").to_string();
            return Some(LabError::Module { module, log: self.console.clone() });
        }
        if log.contains("Kernel panic") {
            return Some(LabError::Panic(self.console.clone()));
        }
        if log.lines().any(|l| l.contains("XSAVE-LAB: no result port")) {
            return Some(LabError::NoResults { why: "the guest found no virtio-serial result port".into(), log: self.console.clone() });
        }
        None
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            self.kill();
        }
    }
}

/// One command for a lab guest: `xsave-rig ARGS`, run verbatim (never rewritten) in a guest
/// whose working directory mirrors this process's. The files it reads are listed in
/// `inputs` and the directories it writes that come back in `outputs`; both keep their
/// absolute host paths in the guest, so arguments naming them need no rewriting.
#[derive(Clone, Debug, Default)]
pub struct Job {
    /// The xsave-rig arguments.
    pub args: Vec<String>,
    /// Files or directories shipped into the guest (relative to the current directory).
    pub inputs: Vec<PathBuf>,
    /// Directories the guest command writes, copied back to the same paths on the host.
    pub outputs: Vec<PathBuf>,
    /// Another `/init` script (tests use it to make guests panic or hang).
    pub init: Option<String>,
}

/// Guest paths a shipped input may not take: mount points and the lab's own directories.
const RESERVED: &[&str] = &["/proc", "/sys", "/dev", "/bin", "/out", "/lab", "/modules", "/init"];

fn absolute(p: &Path) -> Result<PathBuf, LabError> {
    let cwd = std::env::current_dir().map_err(io(Path::new(".")))?;
    let abs = cwd.join(p);
    let s = abs.to_string_lossy();
    if RESERVED.iter().any(|r| s == *r || s.starts_with(&format!("{r}/"))) {
        return Err(LabError::Kernel(format!("{}: the lab guest reserves this path; copy it elsewhere first", abs.display())));
    }
    Ok(abs)
}

impl Job {
    /// The guest's `/lab/run.sh` and the inputs (host path, guest path) of this job.
    fn script(&self) -> Result<(String, Vec<(PathBuf, String)>), LabError> {
        let cwd = std::env::current_dir().map_err(io(Path::new(".")))?;
        let mut inputs = Vec::new();
        for p in &self.inputs {
            let abs = absolute(p)?;
            if !abs.exists() {
                return Err(LabError::Io { path: abs, err: std::io::Error::from(std::io::ErrorKind::NotFound) });
            }
            inputs.push((abs.clone(), abs.to_string_lossy().to_string()));
        }
        let q = |p: &Path| sh_quote(&p.to_string_lossy());
        let mut sh = format!("export XSAVE_RIG_CACHE=/tmp\nmkdir -p {c} && cd {c} || exit 125\n", c = q(&cwd));
        sh.push_str(&format!(
            "/bin/xsave-rig {}\nst=$?\nmkdir -p /out/outputs\n",
            self.args.iter().map(|a| sh_quote(a)).collect::<Vec<_>>().join(" ")
        ));
        for (i, o) in self.outputs.iter().enumerate() {
            let o = q(&absolute(o)?);
            sh.push_str(&format!("[ -e {o} ] && cp -a {o} /out/outputs/{i}\n"));
        }
        sh.push_str("exit $st\n");
        Ok((sh, inputs))
    }
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
    /// Console log.
    pub console: PathBuf,
    /// Guest seconds from power-on to the command's start.
    pub boot_seconds: f64,
    /// Guest seconds the command ran.
    pub run_seconds: f64,
    /// Host wall seconds for the whole run.
    pub wall_seconds: f64,
}

/// Copy `from` (file or tree) to `to`.
pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<(), LabError> {
    if from.is_dir() {
        std::fs::create_dir_all(to).map_err(io(to))?;
        for e in std::fs::read_dir(from).map_err(io(from))?.flatten() {
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
    } else {
        std::fs::copy(from, to).map_err(io(to))?;
    }
    Ok(())
}

/// Boot `kernel` and run `job` inside; `scratch` holds the initramfs, the console log and the
/// extracted results, and is cleaned (all but the console log) when the run succeeded. The
/// job's outputs are copied back before.
pub fn run(kernel: &Kernel, job: &Job, scratch: &Scratch, timeout: Duration) -> Result<RunOutput, LabError> {
    need("qemu-system-x86_64", "apt-get install qemu-system-x86")?;
    std::fs::create_dir_all(scratch.path()).map_err(io(scratch.path()))?;
    let (sh, inputs) = job.script()?;
    let initrd = scratch.path().join("initrd.cpio");
    std::fs::write(&initrd, initramfs::build(kernel, &inputs, &sh, job.init.as_deref())?).map_err(io(&initrd))?;
    let results = scratch.path().join("results.tar");
    let _ = std::fs::remove_file(&results);
    let mut qemu = Qemu::launch(kernel, &initrd, scratch, &results, &[])?;
    let status = qemu.wait(timeout)?;
    let wall_seconds = qemu.elapsed().as_secs_f64();
    let console = scratch.console();
    if !status.success() {
        return Err(LabError::Command { what: "qemu-system-x86_64".into(), detail: format!("{status}: {}", qemu.stderr()) });
    }
    if let Some(e) = qemu.console_failure() {
        return Err(e);
    }
    let outdir = scratch.path().join("out");
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
    for (i, o) in job.outputs.iter().enumerate() {
        let back = outdir.join("outputs").join(i.to_string());
        if back.exists() {
            copy_tree(&back, o)?;
        }
    }
    let out = RunOutput {
        status: String::from_utf8_lossy(&status_text).trim().parse().unwrap_or(-1),
        stdout: read("stdout").unwrap_or_default(),
        stderr: read("stderr").unwrap_or_default(),
        console,
        boot_seconds: b,
        run_seconds: (e - b).max(0.0),
        wall_seconds,
    };
    scratch.clean();
    Ok(out)
}

/// Write `bytes` to stdout (for `lab run`).
pub fn passthrough(bytes: &[u8]) {
    let _ = std::io::stdout().write_all(bytes);
}
