//! Corpus tools: merge (dedup by content), minimize (smallest set with the same contract
//! coverage), pack/unpack (one archive with a manifest). Every file that is not a valid case
//! is reported by name and skipped; nothing panics on bad input.

use crate::store::{caps, read_bounded, write_atomic};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use xsave_oracle::coverage::points;
use xsave_oracle::hash::{content_hash, content_name};
use xsave_oracle::rules::Rule;
use xsave_oracle::{predict, Case, HostFacts, ModelConfig};

/// Archive format name in the manifest.
pub const PACK_FORMAT: &str = "xsave-rig-corpus";
/// Archive format version.
pub const PACK_VERSION: u32 = 1;

/// Corpus tool errors.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    /// I/O.
    #[error("{path}: {err}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        err: std::io::Error,
    },
    /// Not a corpus archive.
    #[error("{path}: not an xsave-rig corpus archive: {why}")]
    Archive {
        /// Path.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CorpusError + '_ {
    move |err| CorpusError::Io { path: path.to_path_buf(), err }
}

/// A corpus member: file name, bytes, decoded case.
pub type Member = (String, Vec<u8>, Case);

/// A directory's valid cases (raw fuzzer inputs included when read structurally), the files
/// skipped with the reason, and the names of the raw inputs.
pub type Scan = (Vec<Member>, Vec<String>, Vec<String>);

/// Valid cases of `dir` and the files skipped, with the reason.
pub fn read_dir(dir: &Path) -> Result<(Vec<Member>, Vec<String>), CorpusError> {
    scan(dir, false).map(|(ok, skipped, _)| (ok, skipped))
}

fn scan(dir: &Path, structural: bool) -> Result<Scan, CorpusError> {
    // Everything but directories: FIFOs, devices and sockets are named and skipped below.
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).map_err(io(dir))?.flatten().map(|e| e.path()).filter(|p| !p.is_dir()).collect();
    files.sort();
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    let mut raw = Vec::new();
    for f in files {
        let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("?").to_string();
        if name.starts_with('.') {
            continue;
        }
        match read_bounded(&f, caps::CASE) {
            Err(e) => skipped.push(format!("{}: {e}", f.display())),
            Ok(b) => match Case::decode(&b) {
                Ok(c) => ok.push((name, b, c)),
                Err(_) if structural && is_raw_input(&b) => {
                    let c = xsave_oracle::case::from_fuzz_input(&b);
                    raw.push(name.clone());
                    ok.push((name, b, c));
                }
                Err(e) => skipped.push(format!("{}: {e}", f.display())),
            },
        }
    }
    Ok((ok, skipped, raw))
}

/// Whether `bytes` are a raw byte-level fuzzer input (libFuzzer/honggfuzz): not empty, not a
/// case file (no `XSRC` magic) and not JSON (text starting with `{` or `[`). Such inputs are
/// read the way the fuzz harnesses read them ([`xsave_oracle::case::from_fuzz_input`]).
pub fn is_raw_input(bytes: &[u8]) -> bool {
    let json = std::str::from_utf8(bytes).is_ok_and(|t| t.trim_start().starts_with(['{', '[']));
    !bytes.is_empty() && !bytes.starts_with(xsave_oracle::case::MAGIC) && !json
}

/// Like [`read_dir`], but raw byte-level fuzzer inputs ([`is_raw_input`]) are read
/// structurally instead of skipped; their names are returned as the third element.
pub fn read_dir_structural(dir: &Path) -> Result<Scan, CorpusError> {
    scan(dir, true)
}

/// Merge `dirs` into `out`, one file per distinct case (content-named). With `structural`,
/// files that are not case files (a byte-level fuzzer's inputs) are read the way the fuzz
/// harnesses read them ([`xsave_oracle::case::from_fuzz_input`]) instead of being skipped.
/// Returns (added, skipped).
pub fn merge(dirs: &[PathBuf], out: &Path, structural: bool) -> Result<(usize, Vec<String>), CorpusError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut added = 0;
    let mut skipped = Vec::new();
    for d in dirs {
        let (mut cases, sk) = read_dir(d)?;
        if structural {
            for line in sk {
                let path = line.split(": ").next().unwrap_or_default();
                match read_bounded(Path::new(path), caps::CASE) {
                    Ok(b) => cases.push((path.to_string(), b.clone(), xsave_oracle::case::from_fuzz_input(&b))),
                    Err(_) => skipped.push(line),
                }
            }
        } else {
            skipped.extend(sk);
        }
        for (_, _, c) in cases {
            // Re-encode: the canonical bytes, so equal cases from different engines dedup.
            let bytes = c.encode();
            let p = out.join(content_name(&bytes));
            if !p.exists() {
                write_atomic(&p, &bytes).map_err(io(&p))?;
                added += 1;
            }
        }
    }
    Ok((added, skipped))
}

/// Points each case reaches under `model` on `host`.
pub fn coverage_of(cases: &[Member], host: &HostFacts, model: &ModelConfig) -> Vec<BTreeSet<String>> {
    cases.iter().map(|(_, _, c)| points(c, &predict(c, host, model)).iter().map(|p| p.to_string()).collect()).collect()
}

/// The contract coverage of a set of cases ([`coverage`]).
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// Every point reached (rule ids and per-ioctl outcomes), with the names of the cases that
    /// reach it, in the cases' order.
    pub reach: BTreeMap<String, Vec<String>>,
    /// Every rule of the contract, in table order, with the number of cases that reach it.
    pub rules: Vec<(&'static str, usize)>,
}

impl Coverage {
    /// The rules no case reaches, in table order.
    pub fn unreached(&self) -> Vec<&'static str> {
        self.rules.iter().filter(|(_, n)| *n == 0).map(|(id, _)| *id).collect()
    }
}

/// Which cases reach each contract rule and outcome under `model` on `host`, and the rules
/// none reaches (`xsave-rig corpus coverage`).
pub fn coverage(cases: &[Member], host: &HostFacts, model: &ModelConfig) -> Coverage {
    let mut reach: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ((name, _, _), points) in cases.iter().zip(coverage_of(cases, host, model)) {
        for p in points {
            reach.entry(p).or_default().push(name.clone());
        }
    }
    let rules = Rule::ALL.iter().map(|r| (r.id(), reach.get(r.id()).map_or(0, |v| v.len()))).collect();
    Coverage { reach, rules }
}

/// Greedy set cover: the names of a small subset with the same coverage.
pub fn minimize(cases: &[Member], cov: &[BTreeSet<String>]) -> Vec<String> {
    let all: BTreeSet<&String> = cov.iter().flatten().collect();
    let mut covered: BTreeSet<&String> = BTreeSet::new();
    let mut chosen = Vec::new();
    while covered.len() < all.len() {
        let best = (0..cases.len())
            .filter(|&i| !chosen.contains(&i))
            .map(|i| (cov[i].iter().filter(|p| !covered.contains(p)).count(), std::cmp::Reverse(cases[i].1.len()), std::cmp::Reverse(i)))
            .max();
        match best {
            Some((gain, _, std::cmp::Reverse(i))) if gain > 0 => {
                covered.extend(cov[i].iter());
                chosen.push(i);
            }
            _ => break,
        }
    }
    chosen.sort();
    chosen.into_iter().map(|i| cases[i].0.clone()).collect()
}

/// The manifest of a packed corpus.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    /// [`PACK_FORMAT`].
    pub format: String,
    /// [`PACK_VERSION`].
    pub format_version: u32,
    /// Case format version of the members.
    pub case_format_version: u8,
    /// xsave-rig version that packed it.
    pub rig_version: String,
    /// Host fingerprint (`probe --json`), if known.
    pub host: Option<serde_json::Value>,
    /// Contract the corpus was judged under.
    pub contract: String,
    /// Number of cases.
    pub cases: usize,
    /// Member names and content hashes.
    pub members: Vec<(String, String)>,
}

/// Pack `dir` into one tar archive at `out`, with a manifest.
pub fn pack(dir: &Path, out: &Path, host: Option<serde_json::Value>, contract: &str) -> Result<(usize, Vec<String>), CorpusError> {
    let (cases, skipped) = read_dir(dir)?;
    let members: Vec<(String, String)> = cases.iter().map(|(_, b, _)| (content_name(b), content_hash(b))).collect();
    let manifest = Manifest {
        format: PACK_FORMAT.into(),
        format_version: PACK_VERSION,
        case_format_version: xsave_oracle::case::FORMAT_VERSION,
        rig_version: env!("CARGO_PKG_VERSION").into(),
        host,
        contract: contract.into(),
        cases: cases.len(),
        members: members.clone(),
    };
    let mut buf = Vec::new();
    {
        let mut tar = tar::Builder::new(&mut buf);
        let mut add = |name: &str, data: &[u8]| -> Result<(), CorpusError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            tar.append_data(&mut h, name, data).map_err(io(out))
        };
        add("manifest.json", &serde_json::to_vec_pretty(&manifest).unwrap_or_default())?;
        for ((_, b, _), (name, _)) in cases.iter().zip(&members) {
            add(&format!("cases/{name}"), b)?;
        }
        tar.finish().map_err(io(out))?;
    }
    write_atomic(out, &buf).map_err(io(out))?;
    Ok((cases.len(), skipped))
}

/// The checks every shared corpus member passes before it is used (`corpus unpack` and the
/// fleet hub's pull): a plain member name (no `/`, not hidden), listed by its sender
/// (`listed`: the hash the sender declared), content matching that hash (`actual`: the hash
/// of `data` computed here), and bytes that decode as a case of a format version this build
/// reads. The reason is one line, for the caller to name the member with.
pub fn validate_member(name: &str, listed: Option<&str>, actual: &str, data: &[u8]) -> Result<Case, String> {
    if name.contains('/') || name.starts_with('.') || name.is_empty() {
        return Err("not a corpus member".into());
    }
    match listed {
        None => Err("not listed in the manifest".into()),
        Some(h) if h != actual => Err("content does not match the manifest hash".into()),
        Some(_) => Case::decode(data).map_err(|e| e.to_string()),
    }
}

/// Unpack an archive into `out`: validates the manifest and every member. Returns the
/// manifest, the number of cases written, and the members skipped (with the reason).
pub fn unpack(file: &Path, out: &Path) -> Result<(Manifest, usize, Vec<String>), CorpusError> {
    let bytes = read_bounded(file, caps::ARCHIVE).map_err(io(file))?;
    let bad = |why: String| CorpusError::Archive { path: file.to_path_buf(), why };
    let mut archive = tar::Archive::new(&bytes[..]);
    let mut manifest: Option<Manifest> = None;
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in archive.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(format!("corrupt archive: {e}")))?;
        let name = entry.path().map_err(|e| bad(e.to_string()))?.to_string_lossy().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).map_err(|e| bad(format!("corrupt member {name}: {e}")))?;
        if name == "manifest.json" {
            manifest = Some(serde_json::from_slice(&data).map_err(|e| bad(format!("bad manifest: {e}")))?);
        } else {
            members.push((name, data));
        }
    }
    let m = manifest.ok_or_else(|| bad("no manifest.json".into()))?;
    if m.format != PACK_FORMAT || m.format_version != PACK_VERSION {
        return Err(bad(format!("format {} version {} (this build reads {PACK_FORMAT} {PACK_VERSION})", m.format, m.format_version)));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut written = 0;
    let mut skipped = Vec::new();
    for (name, data) in members {
        let short = name.strip_prefix("cases/").unwrap_or(&name).to_string();
        let listed = m.members.iter().find(|(n, _)| *n == short).map(|(_, h)| h.as_str());
        let hash = content_hash(&data);
        match validate_member(&short, listed, &hash, &data) {
            Err(why) => skipped.push(format!("{name}: {why}")),
            Ok(_) => {
                let p = out.join(&short);
                write_atomic(&p, &data).map_err(io(&p))?;
                written += 1;
            }
        }
    }
    Ok((m, written, skipped))
}
