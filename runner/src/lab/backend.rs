//! [`LabBackend`]: a [`Backend`] whose cases run on a lab guest's KVM. The guest is booted
//! once, with `xsave-rig lab-serve` ([`super::serve`]) as its command; the campaign, the
//! oracle and the findings stay on this host, and only case execution crosses the control
//! channel ([`super::wire`], a virtio-serial port backed by a Unix socket in the run's
//! scratch directory). A guest that dies, hangs (no answer within the case timeout) or
//! fails is a [`BackendError::Lab`] naming the console log; QEMU is always reaped.

use super::qemu::{Qemu, Scratch};
use super::serve::PORT;
use super::wire::{self, Hello, Start};
use super::{initramfs, io, need, Kernel, LabError};
use crate::probe::ProbeReport;
use crate::{Backend, BackendError, Executed};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use xsave_oracle::{Case, HostFacts, Trace};

/// How long the guest may take to boot and probe its KVM.
const BOOT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long one case may take in the guest before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);
/// Cases per `B` frame: enough that the round trip no longer shows in the case rate, few
/// enough that a campaign's speculation (see `campaign::run`) rarely throws work away.
const BATCH: usize = 32;

/// Options of a [`LabBackend`].
#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Host facts cases are rendered with (default: the guest's probe).
    pub host: Option<HostFacts>,
    /// Create a fresh VM for every case instead of resetting a pooled vCPU.
    pub no_pool: bool,
    /// Another `/init` (tests use it to make guests die or hang).
    pub init: Option<String>,
    /// How long the guest may take to boot and probe (default 600 s).
    pub boot_timeout: Option<Duration>,
    /// How long one case may take in the guest (default 120 s).
    pub case_timeout: Option<Duration>,
    /// CPU-time bound of one guest run on the guest's KVM (default
    /// [`crate::guest::DEFAULT_TIMEOUT`]).
    pub guest_timeout: Option<Duration>,
}

/// Cases executed on a lab guest's KVM.
pub struct LabBackend {
    name: String,
    kernel: Kernel,
    report: ProbeReport,
    host: HostFacts,
    chan: Channel,
    scratch: Scratch,
    splats: Vec<String>,
    ioctls: u64,
    cases: u64,
    /// Guest time the cases took on the guest's KVM.
    in_guest: Duration,
    boot: Duration,
    case_timeout: Duration,
}

/// The guest and its control channel.
struct Channel {
    qemu: Qemu,
    stream: UnixStream,
    console: PathBuf,
    /// Set once the guest died, hung or broke the protocol: every later case fails at once.
    dead: Option<String>,
}

impl LabBackend {
    /// Boot `spec` (`debian:6.12`, a cached id or an image path) and wait for the guest's
    /// probe report. The backend is named `lab:<spec>`, as the user wrote it.
    pub fn boot(spec: &str, opts: LabOptions) -> Result<LabBackend, LabError> {
        need("qemu-system-x86_64", "apt-get install qemu-system-x86")?;
        let kernel = super::kernel(spec)?;
        let boot_timeout = opts.boot_timeout.unwrap_or(BOOT_TIMEOUT);
        let case_timeout = opts.case_timeout.unwrap_or(CASE_TIMEOUT);
        let scratch = Scratch::fresh(&kernel);
        std::fs::create_dir_all(scratch.path()).map_err(io(scratch.path()))?;
        let mut sh = String::from("export XSAVE_RIG_CACHE=/tmp\n");
        // The kernel-log test hook reaches the guest's backend, which logs its splat line into
        // the guest kernel's log (not this host's).
        if let Some(n) = std::env::var("XSAVE_RIG_TEST_KMSG_AT").ok().and_then(|v| v.parse::<u64>().ok()) {
            sh.push_str(&format!("export XSAVE_RIG_TEST_KMSG_AT={n}\n"));
        }
        sh.push_str("exec /bin/xsave-rig lab-serve 2>/dev/console\n");
        let initrd = scratch.path().join("initrd.cpio");
        std::fs::write(&initrd, initramfs::build(&kernel, &[], &sh, opts.init.as_deref())?).map_err(io(&initrd))?;
        let sock = scratch.path().join("ctl.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).map_err(io(&sock))?;
        listener.set_nonblocking(true).map_err(io(&sock))?;
        let extra: Vec<String> = vec![
            "-chardev".into(),
            format!("socket,id=ctl,path={}", sock.display()),
            "-device".into(),
            format!("virtserialport,bus=vs.0,chardev=ctl,name={PORT}"),
        ];
        let mut qemu = Qemu::launch(&kernel, &initrd, &scratch, &scratch.path().join("results.tar"), &extra)?;
        let console = scratch.console();
        // QEMU connects to the socket as it starts.
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(LabError::Io { path: sock, err: e }),
            }
            if let Some(st) = qemu.exited()? {
                return Err(LabError::Command { what: "qemu-system-x86_64".into(), detail: format!("{st}: {}", qemu.stderr()) });
            }
            if qemu.elapsed() > boot_timeout {
                qemu.kill();
                return Err(LabError::Hang { secs: boot_timeout.as_secs(), log: console });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stream.set_nonblocking(false).map_err(io(&sock))?;
        stream.set_read_timeout(Some(boot_timeout)).map_err(io(&sock))?;
        let mut chan = Channel { qemu, stream, console, dead: None };
        let hello = chan.expect(wire::HELLO, boot_timeout)?;
        let hello: Hello = chan.json(&hello)?;
        let host = opts.host.unwrap_or_else(|| hello.report.host.clone());
        let start = serde_json::to_vec(&Start {
            host: host.clone(),
            pool: !opts.no_pool,
            guest_timeout_us: opts.guest_timeout.map(|d| d.as_micros() as u64),
        })
        .map_err(|e| LabError::Kernel(format!("start frame: {e}")))?;
        wire::send(&mut chan.stream, wire::START, &start).map_err(io(&sock))?;
        chan.expect(wire::READY, boot_timeout)?;
        chan.stream.set_read_timeout(Some(case_timeout)).map_err(io(&sock))?;
        Ok(LabBackend {
            name: format!("lab:{spec}"),
            kernel,
            report: hello.report,
            host,
            boot: chan.qemu.elapsed(),
            chan,
            scratch,
            splats: Vec::new(),
            ioctls: 0,
            cases: 0,
            in_guest: Duration::ZERO,
            case_timeout,
        })
    }

    /// The guest kernel's probe report (contract, quirks, host facts).
    pub fn probe_report(&self) -> &ProbeReport {
        &self.report
    }

    /// The kernel booted.
    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// The console log of this guest.
    pub fn console(&self) -> PathBuf {
        self.scratch.console()
    }
}

impl Channel {
    fn json<T: serde::de::DeserializeOwned>(&self, payload: &[u8]) -> Result<T, LabError> {
        serde_json::from_slice(payload)
            .map_err(|e| LabError::NoResults { why: format!("unreadable frame from the guest: {e}"), log: self.console.clone() })
    }

    /// The guest's next frame, which must carry `tag`; the guest's own failure, death or
    /// silence past `timeout` is an error naming the console log (QEMU is then killed).
    fn expect(&mut self, tag: u8, timeout: Duration) -> Result<Vec<u8>, LabError> {
        let log = self.console.clone();
        let got = wire::recv(&mut self.stream);
        let fail = |me: &mut Channel, e: LabError| {
            me.qemu.kill();
            me.dead = Some(e.to_string());
            Err(e)
        };
        match got {
            Ok(Some((t, p))) if t == tag => Ok(p),
            Ok(Some((wire::FAILED, p))) if tag == wire::DONE => {
                Err(LabError::Kernel(format!("the guest failed: {} (console log: {})", String::from_utf8_lossy(&p), log.display())))
            }
            Ok(Some((wire::FAILED, p))) => {
                let why = format!("the guest failed: {}", String::from_utf8_lossy(&p));
                fail(self, LabError::NoResults { why, log })
            }
            Ok(Some((t, _))) => fail(self, LabError::NoResults { why: format!("unexpected frame {t:#x} from the guest"), log }),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                fail(self, LabError::Hang { secs: timeout.as_secs(), log })
            }
            Ok(None) | Err(_) => {
                // The guest went away: give QEMU a moment to exit, then read why from the console.
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(5) && matches!(self.qemu.exited(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let e =
                    self.qemu.console_failure().unwrap_or(LabError::NoResults { why: "the guest closed the control channel".into(), log });
                fail(self, e)
            }
        }
    }
}

impl Backend for LabBackend {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn host(&self) -> &HostFacts {
        &self.host
    }
    fn execute(&mut self, case: &Case) -> Result<Trace, BackendError> {
        let done = self.execute_batch(std::slice::from_ref(case)).pop().unwrap_or_else(|| Err(BackendError::Lab("no result".into())))?;
        self.splats.extend(done.kernel_log);
        Ok(done.trace)
    }
    /// One `B` frame for the whole slice; the guest answers case by case, each answer read
    /// within the case timeout. A case the guest's KVM could not run is that case's error; a
    /// guest that died or hung fails the case it was on and every case after it.
    fn execute_batch(&mut self, cases: &[Case]) -> Vec<Result<Executed, BackendError>> {
        let chan = &mut self.chan;
        let mut out = Vec::with_capacity(cases.len());
        if chan.dead.is_none() && wire::send(&mut chan.stream, wire::BATCH, &wire::encode_batch(cases)).is_err() {
            // The guest is gone: find out why (and mark the channel dead).
            let e = chan.expect(wire::DONE, self.case_timeout).err();
            chan.dead = chan.dead.clone().or(e.map(|e| e.to_string())).or(Some("the guest closed the control channel".into()));
        }
        for _ in cases {
            if let Some(why) = &chan.dead {
                out.push(Err(BackendError::Lab(why.clone())));
                continue;
            }
            let done = chan
                .expect(wire::DONE, self.case_timeout)
                .and_then(|p| wire::Done::decode(&p).map_err(|why| LabError::NoResults { why, log: chan.console.clone() }))
                .map_err(|e| BackendError::Lab(e.to_string()));
            out.push(done.map(|d| {
                self.ioctls = d.ioctls;
                self.cases += 1;
                self.in_guest += Duration::from_micros(d.micros);
                Executed { trace: d.trace, kernel_log: d.splats }
            }));
        }
        out
    }
    fn batch_size(&self) -> usize {
        BATCH
    }
    fn ioctls(&self) -> u64 {
        self.ioctls
    }
    fn kernel_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.splats)
    }
}

impl Drop for LabBackend {
    /// Close the channel (the guest powers off), reap QEMU, and clean the scratch directory
    /// unless the guest failed; one line names the console log either way.
    fn drop(&mut self) {
        let chan = &mut self.chan;
        let _ = chan.stream.shutdown(std::net::Shutdown::Both);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) && matches!(chan.qemu.exited(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        chan.qemu.kill();
        let ran = chan.qemu.elapsed().saturating_sub(self.boot);
        eprintln!(
            "xsave-rig lab: {} booted in {:.1} s, ran {} cases in {:.1} s ({:.1} s of them on the guest's KVM); console log {}",
            self.kernel.id,
            self.boot.as_secs_f64(),
            self.cases,
            ran.as_secs_f64(),
            self.in_guest.as_secs_f64(),
            self.console().display()
        );
        if self.chan.dead.is_none() {
            self.scratch.clean();
        }
    }
}
