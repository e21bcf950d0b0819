//! Repository hygiene that a fresh clone depends on.

use std::path::Path;

/// Finds `N.N.N-N` (a Debian package revision such as a kernel's `<upstream>-<debian>`) in
/// `text`, returning the first match.
fn debian_revision(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let digits = |mut i: usize| {
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        (i > s).then_some(i)
    };
    for start in 0..b.len() {
        if start > 0 && (b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'.') {
            continue;
        }
        let mut i = start;
        let mut ok = true;
        for sep in [b'.', b'.', b'-'] {
            match digits(i) {
                Some(j) if j < b.len() && b[j] == sep => i = j + 1,
                _ => {
                    ok = false;
                    break;
                }
            }
        }
        if let (true, Some(end)) = (ok, digits(i)) {
            return Some(text[start..end].to_string());
        }
    }
    None
}

fn scan(dir: &Path, hits: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            scan(&p, hits);
        } else if let Ok(text) = std::fs::read_to_string(&p) {
            for (n, line) in text.lines().enumerate() {
                if let Some(m) = debian_revision(line) {
                    hits.push(format!("{}:{}: {m}", p.display(), n + 1));
                }
            }
        }
    }
}

/// The Debian archive drops old revisions within days: tests, scripts, CI and the README
/// assert on what `lab fetch` resolved, never on a literal revision.
#[test]
fn no_literal_debian_revision_in_tests_or_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut hits = Vec::new();
    for d in ["tests", "runner/tests", "oracle/tests", "scripts", ".ci"] {
        scan(&root.join(d), &mut hits);
    }
    if let Ok(text) = std::fs::read_to_string(root.join("README.md")) {
        for (n, line) in text.lines().enumerate() {
            if let Some(m) = debian_revision(line) {
                hits.push(format!("README.md:{}: {m}", n + 1));
            }
        }
    }
    assert!(hits.is_empty(), "literal Debian revisions:\n{}", hits.join("\n"));
}

#[test]
fn the_revision_scanner_finds_revisions() {
    let rev = ["6", "1", "192"].join(".") + "-3";
    assert_eq!(debian_revision(&format!("| debian-{rev} |")), Some(rev.clone()));
    assert_eq!(debian_revision(&format!("{rev}~bpo13+1")), Some(rev));
    assert_eq!(debian_revision("debian:6.12 and 0x207, 1.2.3"), None);
}

/// Fuzzer debris never lands in the tree.
#[test]
fn no_fuzzer_crash_files_committed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("git").args(["ls-files", "fuzz"]).current_dir(root).output();
    let Ok(out) = out else { return };
    let listed = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = listed
        .lines()
        .filter(|l| {
            let name = l.rsplit('/').next().unwrap_or(l);
            ["crash-", "leak-", "timeout-", "oom-", "slow-unit-"].iter().any(|p| name.starts_with(p)) || l.contains("hfuzz_workspace")
        })
        .collect();
    assert!(bad.is_empty(), "committed fuzzer artifacts: {bad:?}");
}
