//! Behaviour compatibility: what the rig says about a frozen set of case files, and the
//! findings of a seeded model campaign, must not change when the code is reshaped.
//!
//! `tests/data/compat/cases/` holds the seeds, findings of seeded model campaigns (V0, V1,
//! V2a, V2b, V3+kvm-fpu-legacy, all judged by V3) and findings of a lab campaign on a stock
//! kernel, each named `<host>--<origin>.case`, where `<host>` names the host facts in
//! `tests/data/compat/hosts/`. Every case is replayed on model backends V0, V1, V2b and V3,
//! judged by V3 with no quirks, and its verdict (kind, class, signature, rules, bytes), the
//! unpredicted bytes and a digest of both traces are compared with `expected.jsonl`.
//!
//! `scripts/compat-collect` re-baselines (only for a deliberate behaviour change);
//! `XSAVE_RIG_COMPAT_FREEZE=1` makes this test write its expectations instead of comparing.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use xsave_testkit::{tempdir, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

const BACKENDS: [&str; 4] = ["model:V0", "model:V1", "model:V2b", "model:V3"];

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compat")
}

fn freeze() -> bool {
    std::env::var("XSAVE_RIG_COMPAT_FREEZE").as_deref() == Ok("1")
}

/// FNV-1a, 64 bit: a digest that is fixed by this file, not by a library version.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

fn rig(args: &[&str], files: &[PathBuf]) -> Value {
    let out = RIG.command().args(args).args(files).output().expect("run xsave-rig");
    assert!(
        matches!(out.status.code(), Some(0) | Some(1)),
        "{args:?}: exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// What the build under test says about every frozen case, keyed `<case> @ <backend>`.
fn observe() -> BTreeMap<String, Value> {
    let mut by_host: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for e in std::fs::read_dir(data().join("cases")).expect("compat cases") {
        let p = e.expect("entry").path();
        let name = p.file_name().and_then(|n| n.to_str()).expect("name").to_string();
        let host = name.split_once("--").expect("<host>--<origin>.case").0.to_string();
        by_host.entry(host).or_default().push(p);
    }
    let mut got = BTreeMap::new();
    for (host, mut files) in by_host {
        files.sort();
        let facts = data().join("hosts").join(format!("{host}.json"));
        let facts = facts.to_str().expect("utf-8 path");
        for b in BACKENDS {
            let args = ["replay", "--backend", b, "--contract", "V3", "--quirks", "none", "--host-facts", facts, "--json"];
            let Value::Array(rows) = rig(&args, &files) else { panic!("replay --json is not an array") };
            assert_eq!(rows.len(), files.len(), "one row per case");
            for (row, file) in rows.iter().zip(&files) {
                let name = file.file_name().and_then(|n| n.to_str()).expect("name");
                let compact = |k: &str| fnv(serde_json::to_string(&row[k]).expect("json").as_bytes());
                let rec = json!({
                    "verdict": row["verdict"],
                    "unpredicted": row["unpredicted"],
                    "raw_input": row["raw_input"],
                    "expected": compact("expected"),
                    "observed": compact("observed"),
                });
                got.insert(format!("{name} @ {b}"), rec);
            }
        }
    }
    got
}

#[test]
fn frozen_cases_keep_their_verdicts() {
    let got = observe();
    let path = data().join("expected.jsonl");
    if freeze() {
        let text: String = got.iter().map(|(k, v)| format!("{}\n", json!({"key": k, "got": v}))).collect();
        std::fs::write(&path, text).expect("write expected.jsonl");
        eprintln!("froze {} verdicts into {}", got.len(), path.display());
        return;
    }
    let text = std::fs::read_to_string(&path).expect("expected.jsonl (scripts/compat-collect)");
    let mut want = BTreeMap::new();
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).expect("expected.jsonl line");
        want.insert(v["key"].as_str().expect("key").to_string(), v["got"].clone());
    }
    assert!(want.len() >= 300, "the frozen set shrank to {}", want.len());
    let mut bad = Vec::new();
    for (k, w) in &want {
        match got.get(k) {
            None => bad.push(format!("{k}: no longer replayed")),
            Some(g) if g != w => bad.push(format!("{k}:\n  was {w}\n  now {g}")),
            Some(_) => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        bad.push(format!("{k}: not in expected.jsonl"));
    }
    assert!(bad.is_empty(), "{} of {} verdicts changed:\n{}", bad.len(), want.len(), bad.join("\n"));
}

const CAMPAIGN: [&str; 14] = [
    "fuzz",
    "--backend",
    "model:V2b",
    "--contract",
    "V3",
    "--quirks",
    "none",
    "--iterations",
    "20000",
    "--seed",
    "9",
    "--json",
    "--host-facts",
    "",
];

#[test]
fn seeded_model_campaign_finds_the_same_signatures() {
    let work = tempdir();
    let facts = data().join("hosts/synthetic.json");
    let mut args = CAMPAIGN.to_vec();
    args[13] = facts.to_str().expect("utf-8");
    let wd = work.path().join("w");
    args.extend(["--workdir", wd.to_str().expect("utf-8")]);
    let s = rig(&args, &[]);
    // When a group was first and last seen includes the wall-clock time: not frozen.
    let mut groups = s["groups"].clone();
    for g in groups.as_array_mut().into_iter().flatten() {
        if let Some(o) = g.as_object_mut() {
            o.remove("first_seen");
            o.remove("last_seen");
        }
    }
    let got = json!({
        "by_signature": s["by_signature"],
        "by_class": s["by_class"],
        "divergent_cases": s["divergent_cases"],
        "findings": s["findings"],
        "corpus": s["corpus"],
        "coverage_points": s["coverage_points"],
        "groups": groups,
    });
    let path = data().join("campaign-v2b.json");
    if freeze() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).expect("json") + "\n").expect("write");
        return;
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("campaign-v2b.json")).expect("json");
    assert!(want["findings"].as_u64().unwrap_or(0) > 0, "the frozen campaign found nothing");
    assert_eq!(got, want, "the seeded model:V2b campaign changed");
}
