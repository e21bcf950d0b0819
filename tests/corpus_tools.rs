//! Corpus tools: merge is idempotent, minimize keeps contract coverage, pack/unpack
//! round-trips, and corrupt archives or members are named, never a panic.

use std::path::Path;
use xsave_testkit::{tempdir, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

const HOST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/synthetic-host.json");
const SEEDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/seed");

fn ok(args: &[&str]) -> String {
    let o = RIG.run(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d).expect("dir").flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

fn points(d: &Path) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_str(&ok(&["corpus", "coverage", "--json", "--host-facts", HOST, d.to_str().expect("utf8")])).expect("json");
    let mut p: Vec<String> =
        v["points"].as_array().expect("points").iter().map(|p| p["point"].as_str().expect("str").to_string()).collect();
    p.sort();
    serde_json::json!(p)
}

#[test]
fn merge_minimize_pack_unpack() {
    let t = tempdir();
    let d = |n: &str| t.path().join(n);
    let s = |p: &Path| p.to_str().expect("utf8").to_string();
    // A second corpus from a short feedback campaign (model backend).
    ok(&["fuzz", "--backend", "model:V3", "--host-facts", HOST, "--iterations", "1500", "--seed", "1", "--workdir", &s(&d("w"))]);
    ok(&["corpus", "merge", SEEDS, &s(&d("w/corpus")), "-o", &s(&d("merged"))]);
    let first = names(&d("merged"));
    let again = ok(&["corpus", "merge", SEEDS, &s(&d("w/corpus")), &s(&d("merged")), "-o", &s(&d("merged"))]);
    assert!(again.starts_with("0 new cases"), "merge is idempotent: {again}");
    assert_eq!(names(&d("merged")), first);
    ok(&["corpus", "minimize", &s(&d("merged")), "-o", &s(&d("min")), "--host-facts", HOST]);
    assert!(names(&d("min")).len() < first.len());
    assert_eq!(points(&d("min")), points(&d("merged")), "minimize keeps contract coverage");
    ok(&["corpus", "pack", &s(&d("min")), "-o", &s(&d("c.tar")), "--host-facts", HOST]);
    ok(&["corpus", "unpack", &s(&d("c.tar")), "-o", &s(&d("un"))]);
    assert_eq!(names(&d("un")), names(&d("min")), "pack/unpack round-trips");
    for n in names(&d("un")) {
        assert_eq!(std::fs::read(d("un").join(&n)).expect("a"), std::fs::read(d("min").join(&n)).expect("b"));
    }

    // Raw fuzzer inputs: skipped by default, imported with --structural.
    std::fs::create_dir_all(d("raw")).expect("mkdir");
    std::fs::write(d("raw/hfuzz-input"), b"\x07\x01\x02\x03 raw bytes from a byte-level fuzzer").expect("write");
    let o = RIG.run(&["corpus", "merge", &s(&d("raw")), "-o", &s(&d("raw-out"))]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("hfuzz-input"));
    assert_eq!(names(&d("raw-out")).len(), 0);
    ok(&["corpus", "merge", "--structural", &s(&d("raw")), "-o", &s(&d("raw-out"))]);
    assert_eq!(names(&d("raw-out")).len(), 1);

    // A corrupt member: named and skipped, the others unpacked.
    let mut tar = std::fs::read(d("c.tar")).expect("tar");
    let pos = tar.windows(4).rposition(|w| w == b"XSRC").expect("a member");
    tar[pos + 6] ^= 0xff;
    std::fs::write(d("bad-member.tar"), &tar).expect("write");
    let o = RIG.run(&["corpus", "unpack", &s(&d("bad-member.tar")), "-o", &s(&d("un2"))]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipped cases/") && err.contains("hash"), "{err}");
    assert_eq!(names(&d("un2")).len(), names(&d("min")).len() - 1);

    // A truncated archive and a foreign file: one-line errors.
    let tar = std::fs::read(d("c.tar")).expect("tar");
    std::fs::write(d("trunc.tar"), &tar[..700]).expect("write");
    std::fs::write(d("foreign.tar"), b"this is not a tar archive at all, just text....................").expect("write");
    for f in ["trunc.tar", "foreign.tar"] {
        let o = RIG.run(&["corpus", "unpack", &s(&d(f)), "-o", &s(&d("un3"))]);
        assert_eq!(o.status.code(), Some(2), "{f}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(f), "{err}");
    }
}
