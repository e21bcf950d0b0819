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
    fs::create_dir(&tmp)?;
    for (fname, bytes) in files {
        let mut f = File::create(tmp.join(fname))?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    sync_dir(&tmp)?;
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
