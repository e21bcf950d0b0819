//! Crash-safe files: write to a temporary name, fsync, rename, fsync the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// The directory holding `path`: its parent, or `.` for a bare relative name (whose
/// `Path::parent()` is the empty path, which cannot be opened).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` atomically. An existing directory at `path` is an error (one
/// line), and a failure leaves neither `path` changed nor a temporary file behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory, not a file"));
    }
    let dir = parent_dir(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Build a temporary directory holding `files`, every file and the directory fsynced.
pub fn build_dir(tmp: &Path, files: &[(&str, &[u8])]) -> io::Result<()> {
    fs::create_dir(tmp)?;
    for (fname, bytes) in files {
        let mut f = File::create(tmp.join(fname))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    sync_dir(tmp)
}

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create directory `dest` holding `files` atomically: build it under a temporary name,
/// then rename. Returns `Ok(false)` if `dest` already exists (nothing written).
pub fn create_dir_atomic(dest: &Path, files: &[(&str, &[u8])]) -> io::Result<bool> {
    if dest.exists() {
        return Ok(false);
    }
    let parent = parent_dir(dest);
    fs::create_dir_all(parent)?;
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("dir");
    let tmp = parent.join(format!(".{name}.tmp.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    if let Err(e) = build_dir(&tmp, files) {
        // Disk full or the like: no half-built directory stays behind.
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, dest) {
        Ok(()) => {
            sync_dir(parent)?;
            Ok(true)
        }
        Err(_) if dest.exists() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Size caps for the files the rig reads.
pub mod caps {
    /// A case file (binary or JSON).
    pub const CASE: u64 = 4 << 20;
    /// A JSON document the rig wrote or a user gives (host facts, fingerprints, CPUID tables,
    /// verdicts, campaign state).
    pub const JSON: u64 = 32 << 20;
    /// A corpus archive.
    pub const ARCHIVE: u64 = 64 << 20;
    /// A saved `kvm_xsave` image.
    pub const STATE: u64 = 1 << 20;
    /// `stats.jsonl`.
    pub const STATS: u64 = 64 << 20;
}

/// What kind of file `ft` is, for a one-line refusal.
fn kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading without blocking (`O_NONBLOCK`: a FIFO never waits for a writer)
/// and refuse anything that is not a regular file.
pub fn open_regular(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path).map_err(|e| match e.raw_os_error() {
        // open(2) of a socket file.
        Some(libc::ENXIO) => io::Error::new(io::ErrorKind::InvalidInput, "not a regular file (a socket or a device without a driver)"),
        _ => e,
    })?;
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a regular file ({})", kind(&ft))));
    }
    Ok(f)
}

/// Read a whole regular file of at most `cap` bytes: non-blocking open, non-regular files
/// refused, the size checked from the metadata before reading, and the read itself capped
/// (a file growing while it is read is refused too).
pub fn read_bounded(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let f = open_regular(path)?;
    let len = f.metadata()?.len();
    let too_big = |n: u64| io::Error::new(io::ErrorKind::InvalidData, format!("{n} bytes or more, over the limit of {cap} bytes"));
    if len > cap {
        return Err(too_big(len));
    }
    let mut buf = Vec::with_capacity(len as usize);
    f.take(cap + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > cap {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_bounded_string(path: &Path, cap: u64) -> io::Result<String> {
    String::from_utf8(read_bounded(path, cap)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
}

/// `text` safe to print on a terminal: control characters (ESC, CR, BEL, C1 controls, …)
/// and bidirectional overrides become `\u{..}` escapes; everything else is kept.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if (c.is_control() && c != '\n' && c != '\t') || bidi {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// An advisory lock (`flock`) held on a lock file for as long as the value lives; the file
/// names the holder: `pid P host H started S` (S in seconds since the Unix epoch).
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Try to take the lock at `path` (created if missing): `Ok(Err(holder))` if another process
/// holds it, with the holder line it wrote.
pub fn try_lock(path: &Path) -> io::Result<Result<Lock, String>> {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let text = read_bounded_string(path, 4096).unwrap_or_default();
            let holder = text.lines().next().unwrap_or("").trim().to_string();
            return Ok(Err(if holder.is_empty() { "another process (starting up)".into() } else { escape(&holder) }));
        }
        Err(fs::TryLockError::Error(e)) => return Err(e),
    }
    let host = fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown".into());
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    // Not fsynced: the line only names the holder to a process that finds the lock held, and
    // no lock outlives its holder (a crash releases it), so it is never read after one.
    writeln!(f, "pid {} host {host} started {started}", std::process::id())?;
    Ok(Ok(Lock { _file: f }))
}

/// [`try_lock`], retried every 20 ms for up to `wait` while `stop` is not set.
pub fn lock_waiting(path: &Path, wait: std::time::Duration, stop: &std::sync::atomic::AtomicBool) -> io::Result<Result<Lock, String>> {
    let start = std::time::Instant::now();
    loop {
        match try_lock(path)? {
            Ok(l) => return Ok(Ok(l)),
            Err(h) if start.elapsed() >= wait || stop.load(std::sync::atomic::Ordering::Relaxed) => return Ok(Err(h)),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
}
