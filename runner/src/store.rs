//! Crash-safe files: write to a temporary name, fsync, rename, fsync the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Write `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
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
    let parent = dest.parent().unwrap_or(Path::new("."));
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
