//! The module dependency closure: from the modules the lab needs ([`WANTED`]), every module
//! they depend on (read from each `.ko`'s `depends=` modinfo, skipping built-ins), decompressed
//! into the kernel's cache directory in load order, with `kernel.json` describing the result.

use super::{io, need, Kernel, LabError};
use std::path::{Path, PathBuf};
use std::process::Command;

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

pub(super) fn install(
    dir: &Path,
    id: &str,
    release: &str,
    packages: Vec<String>,
    image: &Path,
    moddir: Option<&Path>,
) -> Result<Kernel, LabError> {
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
