//! The guest's initramfs: a `newc` cpio writer and the archive every lab guest boots
//! (busybox, this binary and its shared libraries, the kernel's modules in load order, the
//! guest inputs, `/lab/run.sh` and `/init`).

use super::{io, Kernel, LabError};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A `newc` (070701) cpio archive being written.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    /// Directories already written (without the leading `/`).
    made: Vec<String>,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio { buf: Vec::new(), ino: 1, made: Vec::new() }
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
        self.made.push(name.to_string());
    }
    fn file(&mut self, name: &str, data: &[u8], exec: bool) {
        self.entry(name, if exec { 0o100755 } else { 0o100644 }, data);
    }
    /// The directories above `path` that are not written yet.
    fn parents(&mut self, path: &str) {
        let mut cur = String::new();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            cur = if cur.is_empty() { (*part).to_string() } else { format!("{cur}/{part}") };
            if !self.made.contains(&cur) {
                self.dir(&cur.clone());
            }
        }
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
        // Executables stay executable (a compiled reproducer run with `lab exec`).
        let exec = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(host).map_err(io(host))?.permissions()) & 0o111 != 0;
        cpio.file(guest, &std::fs::read(host).map_err(io(host))?, exec);
    }
    Ok(())
}

/// The guest's `/init`: mount, load the modules, find the result port, run `/lab/run.sh` with
/// its output in `/out`, send `/out` as a tar stream, power off.
pub(super) const INIT: &str = r#"#!/bin/busybox sh
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
# virtio_console adds ports, and names them, from its control queue after insmod returns:
# wait for the name (up to 30 s) rather than race it.
port=
i=0
while [ -z "$port" ] && [ $i -lt 300 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.xsave-rig.results ] && port=/dev/$(basename $p)
  done
  [ -n "$port" ] || { sleep 0.1; i=$((i+1)); }
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

/// `a` quoted for `sh`.
pub(super) fn sh_quote(a: &str) -> String {
    format!("'{}'", a.replace('\'', "'\\''"))
}

/// The initramfs for `kernel`: `inputs` (host path, guest path) copied in, `run_sh` as
/// `/lab/run.sh`, and `init` (default [`INIT`]) as `/init`.
pub(super) fn build(kernel: &Kernel, inputs: &[(PathBuf, String)], run_sh: &str, init: Option<&str>) -> Result<Vec<u8>, LabError> {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .ok_or(LabError::Missing { tool: "busybox".into(), hint: "apt-get install busybox-static".into() })?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let mut cpio = Cpio::new();
    for d in ["bin", "proc", "sys", "dev", "tmp", "out", "lab", "lab/in", "modules"] {
        cpio.dir(d);
    }
    cpio.file("bin/busybox", &std::fs::read(busybox).map_err(io(busybox))?, true);
    cpio.file("bin/xsave-rig", &std::fs::read(&exe).map_err(io(&exe))?, true);
    for lib in libs(&exe)? {
        let g = lib.to_string_lossy().trim_start_matches('/').to_string();
        cpio.parents(&g);
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
    for (host, guest) in inputs {
        let g = guest.trim_start_matches('/');
        cpio.parents(g);
        add_tree(&mut cpio, host, g)?;
    }
    cpio.file("lab/run.sh", run_sh.as_bytes(), true);
    cpio.file("init", init.unwrap_or(INIT).as_bytes(), true);
    Ok(cpio.finish())
}
