//! Running unattended (journald, CI): with stderr not a terminal, `fuzz` and `fuzz --jobs N`
//! print one timestamped line per new finding and periodic status lines while stdout stays
//! pure JSON; `stats.jsonl` rows carry the wall-clock time and the host id (and rows without
//! them still read); `--metrics FILE` is a valid Prometheus textfile, checked by a strict
//! parser of the text exposition format.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Output, Stdio};
use xsave_testkit::{tempdir, text, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));
const SYNTH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/synthetic-host.json");

fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// `fuzz` on model:V2b (it finds divergences within a few hundred cases), stderr piped.
fn fuzz(workdir: &Path, metrics: &Path, extra: &[&str]) -> Output {
    let o = RIG
        .command()
        .env_remove("XSAVE_RIG_HUB")
        .args(["fuzz", "--backend", "model:V2b", "--host-facts", SYNTH, "--seed", "1", "--json", "--status-every", "1s", "--workdir"])
        .arg(workdir)
        .arg("--metrics")
        .arg(metrics)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("fuzz");
    assert_eq!(o.status.code(), Some(1), "new findings expected; stderr: {}", text(&o.stderr));
    o
}

/// Checks a `YYYY-MM-DDTHH:MM:SSZ` stamp.
fn is_rfc3339(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 20
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The plain lines: (finding signatures with their class, status lines' fields).
fn plain_lines(err: &str) -> (BTreeMap<String, String>, Vec<BTreeMap<String, String>>) {
    let mut findings = BTreeMap::new();
    let mut status = Vec::new();
    for l in err.lines() {
        let mut w = l.splitn(3, ' ');
        let (t, kind, rest) = (w.next().unwrap_or(""), w.next().unwrap_or(""), w.next().unwrap_or(""));
        assert!(is_rfc3339(t), "line without a timestamp: {l:?}");
        match kind {
            "finding" => {
                let mut f = rest.splitn(3, ' ');
                let (sig, class, title) = (f.next().unwrap_or(""), f.next().unwrap_or(""), f.next().unwrap_or(""));
                assert!(class.starts_with('[') && class.ends_with(']') && !title.is_empty(), "{l:?}");
                assert!(sig.starts_with(&class[1..class.len() - 1]), "{l:?}");
                assert!(findings.insert(sig.to_string(), class[1..class.len() - 1].to_string()).is_none(), "finding twice: {l:?}");
            }
            "status" => {
                let words: Vec<&str> = rest.split(' ').collect();
                assert!(words.len().is_multiple_of(2), "{l:?}");
                status.push(words.chunks(2).map(|p| (p[0].to_string(), p[1].to_string())).collect());
            }
            _ => panic!("unexpected stderr line {l:?}"),
        }
    }
    (findings, status)
}

fn dir_names(d: &Path) -> BTreeSet<String> {
    std::fs::read_dir(d)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// A strict reader of the Prometheus text exposition format (0.0.4): every line is a
/// `# HELP`, a `# TYPE` (counter or gauge, before the family's samples, once per family) or a
/// sample `name{label="value",…} number` whose family is declared and whose samples are
/// contiguous; names and label names are valid; label values use only the three escapes;
/// the file ends with a newline. Returns (family, labels, value) per sample.
fn parse_prometheus(t: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    assert!(t.ends_with('\n'), "no final newline");
    let name_ok = |n: &str, colon: bool| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    };
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut samples = Vec::new();
    for l in t.lines() {
        if let Some(r) = l.strip_prefix("# HELP ") {
            let (n, h) = r.split_once(' ').expect("HELP text");
            assert!(name_ok(n, true) && !h.is_empty() && help.insert(n.to_string()), "{l:?}");
            continue;
        }
        if let Some(r) = l.strip_prefix("# TYPE ") {
            let (n, k) = r.split_once(' ').expect("TYPE kind");
            assert!(name_ok(n, true) && ["counter", "gauge"].contains(&k), "{l:?}");
            assert!(types.insert(n.to_string(), k.to_string()).is_none() && !done.contains(n), "TYPE twice or late: {l:?}");
            if let Some(c) = current.replace(n.to_string()) {
                done.insert(c);
            }
            continue;
        }
        assert!(!l.starts_with('#') && !l.is_empty(), "{l:?}");
        let (name, rest) = l.split_once('{').expect("labels");
        assert_eq!(current.as_deref(), Some(name), "sample outside its family: {l:?}");
        assert!(help.contains(name), "no HELP: {l:?}");
        let mut labels = BTreeMap::new();
        let mut chars = rest.chars().peekable();
        loop {
            let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != '}')).collect();
            if key.is_empty() {
                assert_eq!(chars.next(), Some('}'), "{l:?}");
                break;
            }
            assert!(name_ok(&key, false), "label name {key:?}: {l:?}");
            assert_eq!((chars.next(), chars.next()), (Some('='), Some('"')), "{l:?}");
            let mut v = String::new();
            loop {
                match chars.next().expect("unterminated label value") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => v.push('\\'),
                        Some('"') => v.push('"'),
                        Some('n') => v.push('\n'),
                        e => panic!("bad escape {e:?}: {l:?}"),
                    },
                    '\n' => panic!("raw newline: {l:?}"),
                    c => v.push(c),
                }
            }
            assert!(labels.insert(key, v).is_none(), "label twice: {l:?}");
            match chars.next() {
                Some(',') => {}
                Some('}') => break,
                c => panic!("{c:?} after a label: {l:?}"),
            }
        }
        let rest: String = chars.collect();
        let value = rest.strip_prefix(' ').expect("space before the value");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value {value:?}: {l:?}"));
        assert!(v.is_finite() && v >= 0.0, "{l:?}");
        samples.push((name.to_string(), labels, v));
    }
    samples
}

fn metric(samples: &[(String, BTreeMap<String, String>, f64)], name: &str) -> f64 {
    let m: Vec<f64> = samples.iter().filter(|s| s.0 == name && !s.1.contains_key("class")).map(|s| s.2).collect();
    assert_eq!(m.len(), 1, "{name}: {m:?}");
    m[0]
}

/// Everything one unattended campaign reports, checked against its workdir and summary.
fn check_campaign(wd: &Path, metrics: &Path, o: &Output, started: f64) {
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).expect("stdout is pure JSON");
    let (found, status) = plain_lines(&text(&o.stderr));
    // One line per new finding, with its class, and none for anything else.
    assert_eq!(found.keys().cloned().collect::<BTreeSet<_>>(), dir_names(&wd.join("findings")));
    for (sig, class) in &found {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(wd.join("findings").join(sig).join("verdict.json")).expect("verdict")).expect("json");
        assert_eq!(v["verdict"]["class"].as_str(), Some(class.as_str()), "{sig}");
    }
    let execs: Vec<u64> = status.iter().map(|l| l["execs"].parse().expect("execs")).collect();
    assert!(execs.windows(2).all(|w| w[0] <= w[1]), "status lines go forward: {execs:?}");
    let last = status.last().expect("a status line at least at exit");
    assert_eq!(last["execs"], summary["execs"].to_string(), "{last:?}");
    assert_eq!(last["findings"], summary["findings"].to_string());
    assert!(last["rules"].contains('/') && last["rate"].ends_with("/s"), "{last:?}");
    // stats.jsonl (each worker's, with --jobs): wall-clock time and host id on every row.
    let files: Vec<std::path::PathBuf> = match std::fs::read_dir(wd.join("workers")) {
        Ok(d) => d.flatten().map(|e| e.path().join("stats.jsonl")).collect(),
        Err(_) => vec![wd.join("stats.jsonl")],
    };
    let stats: String = files.iter().map(|f| std::fs::read_to_string(f).expect("stats")).collect();
    assert!(!stats.is_empty());
    let mut hosts = BTreeSet::new();
    for row in stats.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).expect("row")) {
        let t = row["time"].as_str().expect("time");
        assert!(is_rfc3339(t), "{t}");
        let unix = row["unix"].as_f64().expect("unix");
        assert!(unix >= started.floor() && unix <= now() + 1.0, "{unix}");
        hosts.insert(row["host"].as_str().expect("host").to_string());
    }
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    // The metrics file agrees with the summary and names the same host.
    let samples = parse_prometheus(&std::fs::read_to_string(metrics).expect("metrics"));
    assert!(samples.iter().all(|s| hosts.contains(&s.1["host"]) && s.1["backend"] == "model:V2b"));
    assert_eq!(metric(&samples, "xsave_rig_execs_total"), summary["execs"].as_f64().expect("execs"));
    assert_eq!(metric(&samples, "xsave_rig_findings"), summary["findings"].as_f64().expect("findings"));
    assert_eq!(metric(&samples, "xsave_rig_rules_covered"), summary["rules_covered"].as_f64().expect("rules"));
    assert_eq!(metric(&samples, "xsave_rig_rules_total"), summary["rules_total"].as_f64().expect("rules"));
    assert_eq!(metric(&samples, "xsave_rig_corpus_cases"), summary["corpus"].as_f64().expect("corpus"));
    let by_class: f64 = samples.iter().filter(|s| s.0 == "xsave_rig_findings_by_class").map(|s| s.2).sum();
    assert_eq!(by_class, summary["findings"].as_f64().expect("findings"), "findings by class add up");
    let cases: BTreeMap<String, f64> =
        samples.iter().filter(|s| s.0 == "xsave_rig_divergent_cases_total").map(|s| (s.1["class"].clone(), s.2)).collect();
    for (c, n) in summary["by_class"].as_object().expect("by_class") {
        assert_eq!(cases.get(c), n.as_f64().as_ref(), "{c}");
    }
    assert!(!std::fs::read_dir(metrics.parent().expect("dir"))
        .expect("dir")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains(".tmp")));
}

#[test]
fn unattended_campaign_logs_plain_lines_stamps_stats_and_writes_metrics() {
    let dir = tempdir();
    let (wd, m) = (dir.path().join("w"), dir.path().join("xsave.prom"));
    let started = now();
    let o = fuzz(&wd, &m, &["--iterations", "3000"]);
    check_campaign(&wd, &m, &o, started);
    // Old rows (before time and host were recorded) still read: report keeps every row.
    let stats = std::fs::read_to_string(wd.join("stats.jsonl")).expect("stats");
    let mut old: Vec<String> = Vec::new();
    for l in stats.lines() {
        let mut v: serde_json::Value = serde_json::from_str(l).expect("row");
        let o = v.as_object_mut().expect("object");
        for k in ["time", "unix", "host"] {
            o.remove(k);
        }
        old.push(v.to_string());
    }
    std::fs::write(wd.join("stats.jsonl"), format!("{}\n{}", old.join("\n"), stats)).expect("write");
    let out = dir.path().join("r");
    let r = RIG.command().arg("report").arg(&wd).arg("-o").arg(&out).output().expect("report");
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(!text(&r.stderr).contains("skipped"), "{}", text(&r.stderr));
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("json")).expect("json");
    let n = stats.lines().count();
    assert_eq!(rep["stats"].as_array().map(Vec::len), Some(2 * n));
    let first: serde_json::Value = serde_json::from_str(stats.lines().next().expect("row")).expect("row");
    assert_eq!(rep["stats"][n]["time"], first["time"]);
    assert!(rep["stats"][0].get("host").is_none() && rep["stats"][n]["host"].is_string());
}

#[test]
fn unattended_parallel_campaign_logs_each_finding_once() {
    let dir = tempdir();
    let (wd, m) = (dir.path().join("w"), dir.path().join("xsave.prom"));
    let started = now();
    let o = fuzz(&wd, &m, &["--iterations", "3000", "--jobs", "2"]);
    check_campaign(&wd, &m, &o, started);
}

#[test]
fn unwritable_metrics_path_is_a_one_line_error() {
    let dir = tempdir();
    let o = RIG
        .command()
        .args(["fuzz", "--backend", "model:V3", "--host-facts", SYNTH, "--iterations", "10", "--workdir"])
        .arg(dir.path().join("w"))
        .arg("--metrics")
        .arg(dir.path().join("no/such/dir/x.prom"))
        .output()
        .expect("fuzz");
    xsave_testkit::assert_one_line_error(&o, "--metrics");
}
