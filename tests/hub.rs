//! The fleet hub against a real PostgreSQL server (no mock): concurrent hosts with
//! overlapping findings, a hub outage mid-campaign, a campaign SIGKILLed mid-sync and
//! resumed, bad data in the hub, the writer/reader roles, and `report --hub` (the fleet report
//! read by the reader role, its signatures × kernels matrix checked in headless Chromium).
//!
//! The server: `$XSAVE_RIG_TEST_HUB` (a superuser URL; `./scripts/test` starts one with
//! `scripts/hub-db`), where each test makes its own database; otherwise, and always for the
//! outage test (which stops its server), a private cluster from `scripts/hub-db`. Without
//! PostgreSQL's binaries a test prints `SKIPPED(postgres) <test>: <reason>` and returns.
//!
//! Over 600 lines: every test here shares the cluster, database, fingerprint and workdir
//! helpers above; split, each part would need them again.

use postgres::{Client, NoTls};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use xsave_testkit::{chromium, headless, sarif_results, tempdir, tool_or_skip, Rig, TempDir};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

fn rig() -> Command {
    let mut c = RIG.command();
    c.env_remove("XSAVE_RIG_HUB");
    c
}

fn hub_db_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/hub-db")
}

/// A private cluster (stopped on drop).
struct Cluster {
    dir: TempDir,
    url: String,
}

impl Cluster {
    fn start(test: &str) -> Option<Cluster> {
        let dir = tempdir();
        // The postgres user (initdb refuses root) must reach the data directory.
        let _ = Command::new("chmod").arg("755").arg(dir.path()).status();
        let o = Command::new(hub_db_script()).arg("start").arg(dir.path().join("pg")).output().expect("run scripts/hub-db");
        match o.status.code() {
            Some(0) => Some(Cluster { url: String::from_utf8_lossy(&o.stdout).trim().to_string(), dir }),
            Some(3) => {
                println!("SKIPPED(postgres) {test}: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            _ => panic!("{test}: scripts/hub-db start failed: {}", String::from_utf8_lossy(&o.stderr)),
        }
    }
    fn ctl(&self, what: &str) {
        let o = Command::new(hub_db_script()).arg(what).arg(self.dir.path().join("pg")).output().expect("run scripts/hub-db");
        assert!(o.status.success(), "scripts/hub-db {what}: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(hub_db_script()).arg("stop").arg(self.dir.path().join("pg")).output();
    }
}

/// A fresh database for `test`: its URL, and the private cluster holding it (if any).
fn fresh_db(test: &str, private: bool) -> Option<(String, Option<Cluster>)> {
    let shared = std::env::var("XSAVE_RIG_TEST_HUB").ok().filter(|u| !u.is_empty() && !private);
    let (admin, cluster) = match shared {
        Some(u) => (u, None),
        None => {
            let c = Cluster::start(test)?;
            (c.url.clone(), Some(c))
        }
    };
    let name = format!("t_{test}_{}", std::process::id());
    let mut c = Client::connect(&admin, NoTls).expect("connect to the test server");
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).expect("drop database");
    c.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).expect("URL with a database");
    Some((format!("{base}/{name}"), cluster))
}

fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("{scheme}://{user}@{host}")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn init(url: &str) {
    ok(&rig().args(["hub", "init", "--url", url]).output().expect("hub init"));
}

/// A fingerprint file for host `n`: the synthetic host with its own kernel release.
fn facts(dir: &Path, n: usize, kernel: &str) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/synthetic-host.json")).expect("facts");
    let mut v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v["kernel_release"] = serde_json::json!(kernel);
    v["fleet_test_host"] = serde_json::json!(n);
    let p = dir.join(format!("host{n}.json"));
    std::fs::write(&p, serde_json::to_vec_pretty(&v).expect("json")).expect("write facts");
    p
}

/// `fuzz` on `backend` syncing with `hub` = (URL, interval).
fn fuzz(workdir: &Path, facts: &Path, backend: &str, seed: u64, duration: &str, hub: (&str, &str), extra: &[&str]) -> Command {
    let (url, interval) = hub;
    let mut c = rig();
    c.args(["fuzz", "--backend", backend, "--host-facts"])
        .arg(facts)
        .arg("--workdir")
        .arg(workdir)
        .args(["--seed", &seed.to_string(), "--duration", duration, "--hub", url, "--hub-interval", interval, "--json"])
        .args(extra);
    c
}

fn summary(o: &Output) -> serde_json::Value {
    assert!(matches!(o.status.code(), Some(0 | 1)), "fuzz exit {:?}: {}", o.status.code(), String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("summary JSON")
}

/// What a workdir holds: corpus hashes, findings, per-signature counts.
struct Local {
    host: String,
    campaign: String,
    corpus: BTreeSet<String>,
    findings: BTreeSet<String>,
    counts: BTreeMap<String, u64>,
}

fn local(workdir: &Path) -> Local {
    let id: serde_json::Value = serde_json::from_slice(&std::fs::read(workdir.join("hub/identity.json")).expect("identity")).expect("json");
    let corpus = std::fs::read_dir(workdir.join("corpus"))
        .expect("corpus")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".case") && !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| xsave_hub::sha256_hex(&std::fs::read(e.path()).expect("case")))
        .collect();
    let findings = std::fs::read_dir(workdir.join("findings"))
        .expect("findings")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with('.'))
        .collect();
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(workdir.join("campaign.json")).expect("state")).expect("json");
    let counts =
        s["by_signature"].as_object().map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()).unwrap_or_default();
    Local {
        host: id["host_id"].as_str().expect("host id").to_string(),
        campaign: id["campaign"].as_str().expect("campaign").to_string(),
        corpus,
        findings,
        counts,
    }
}

/// Everything in `l` is in the hub exactly once, with the right occurrence counts.
fn check_delivered(db: &mut Client, l: &Local) {
    for h in &l.corpus {
        let n: i64 = db.query_one("SELECT count(*) FROM cases WHERE hash = $1", &[h]).expect("query").get(0);
        assert_eq!(n, 1, "host {}: corpus entry {h} in the hub {n} times", l.host);
    }
    for sig in &l.findings {
        let n: i64 = db.query_one("SELECT count(*) FROM findings WHERE signature = $1", &[sig]).expect("query").get(0);
        assert_eq!(n, 1, "host {}: finding {sig} in the hub {n} times", l.host);
        let rows = db
            .query("SELECT count FROM occurrences WHERE signature = $1 AND host_id = $2 AND campaign = $3", &[sig, &l.host, &l.campaign])
            .expect("query");
        assert_eq!(rows.len(), 1, "host {}: finding {sig}: {} occurrence rows", l.host, rows.len());
        let want = l.counts.get(sig).copied().unwrap_or(1).max(1) as i64;
        let got: i64 = rows[0].get(0);
        assert_eq!(got, want, "host {}: finding {sig}: count {got} in the hub, {want} in the workdir", l.host);
    }
}

#[test]
fn four_concurrent_hosts_share_one_hub() {
    let Some((url, _cluster)) = fresh_db("concurrent", false) else { return };
    init(&url);
    let tmp = tempdir();
    let hosts = [("model:V2b", "6.1.0-fleet"), ("model:V2b", "6.6.0-fleet"), ("model:V1", "5.15.0-fleet"), ("model:V1", "6.1.0-fleet")];
    let children: Vec<(PathBuf, Child)> = hosts
        .iter()
        .enumerate()
        .map(|(n, (backend, kernel))| {
            let wd = tmp.path().join(format!("w{n}"));
            let f = facts(tmp.path(), n, kernel);
            let budget = if n % 2 == 0 { "0" } else { "100" };
            let child = fuzz(&wd, &f, backend, 10 + n as u64, "8s", (&url, "1s"), &["--minimize-budget", budget])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn fuzz");
            (wd, child)
        })
        .collect();
    let mut locals = Vec::new();
    let mut pulled = 0;
    for (wd, child) in children {
        let o = child.wait_with_output().expect("wait");
        let s = summary(&o);
        assert_eq!(s["hub"]["delivered_at_exit"], true, "{}", String::from_utf8_lossy(&o.stderr));
        pulled += s["hub"]["pulled"].as_u64().unwrap_or(0);
        locals.push(local(&wd));
    }
    assert!(pulled > 0, "no host pulled another host's corpus entries");
    let mut db = Client::connect(&url, NoTls).expect("connect");
    for l in &locals {
        check_delivered(&mut db, l);
    }
    // Nothing else: the hub's corpus is the union of the hosts' corpora, each entry once.
    let union: BTreeSet<&String> = locals.iter().flat_map(|l| &l.corpus).collect();
    let n: i64 = db.query_one("SELECT count(*) FROM cases", &[]).expect("query").get(0);
    assert_eq!(n as usize, union.len(), "hub corpus {n} entries, hosts hold {} distinct", union.len());
    let hosts_n: i64 = db.query_one("SELECT count(*) FROM hosts", &[]).expect("query").get(0);
    assert_eq!(hosts_n, 4);
    // The findings view: per signature, exactly the hosts (and their kernels) that found it.
    let o = rig().args(["hub", "findings", "--json", "--url", &url]).output().expect("hub findings");
    let rows: Vec<xsave_hub::FindingRow> = serde_json::from_str(&ok(&o)).expect("findings JSON");
    let all: BTreeSet<&String> = locals.iter().flat_map(|l| &l.findings).collect();
    assert_eq!(rows.len(), all.len(), "signatures stored once each");
    let mut shared = 0;
    for r in &rows {
        let want: BTreeSet<String> = locals.iter().filter(|l| l.findings.contains(&r.signature)).map(|l| l.host.clone()).collect();
        let got: BTreeSet<String> = r.hosts.iter().cloned().collect();
        assert_eq!(got, want, "{}: hosts", r.signature);
        let count: u64 =
            locals.iter().filter(|l| l.findings.contains(&r.signature)).map(|l| l.counts.get(&r.signature).copied().unwrap_or(1)).sum();
        assert_eq!(r.count as u64, count, "{}: count", r.signature);
        shared += usize::from(want.len() > 1);
    }
    assert!(shared > 0, "the model backends were chosen so that findings overlap");
    let st = ok(&rig().args(["hub", "status", "--json", "--url", &url]).output().expect("hub status"));
    let st: serde_json::Value = serde_json::from_str(&st).expect("status JSON");
    assert_eq!(st["hosts"].as_array().map(Vec::len), Some(4));
    assert_eq!(st["corpus"], serde_json::json!(union.len()));
    let text = ok(&rig().args(["hub", "findings", "--url", &url]).output().expect("hub findings"));
    assert!(text.contains("5.15.0-fleet") && text.contains("6.6.0-fleet"), "matrix columns: {text}");
}

#[test]
fn hub_outage_loses_and_duplicates_nothing() {
    let Some((url, cluster)) = fresh_db("outage", true) else { return };
    let cluster = cluster.expect("private cluster");
    init(&url);
    let tmp = tempdir();
    let wd = tmp.path().join("w");
    let f = facts(tmp.path(), 0, "6.1.0-outage");
    let child = fuzz(&wd, &f, "model:V2b", 7, "16s", (&url, "1s"), &["--minimize-budget", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fuzz");
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let before = count_local(&wd);
    cluster.ctl("stop");
    let stopped = t0.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(6));
    let during = count_local(&wd);
    cluster.ctl("restart");
    let restarted = t0.elapsed().as_secs_f64();
    let o = child.wait_with_output().expect("wait");
    let s = summary(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(s["hub"]["failures"].as_u64().unwrap_or(0) > 0, "the outage was not noticed: {err}");
    assert_eq!(s["hub"]["delivered_at_exit"], true, "{err}");
    assert!(err.contains("reachable again"), "{err}");
    let l = local(&wd);
    let mut db = Client::connect(&url, NoTls).expect("connect");
    check_delivered(&mut db, &l);
    let n: i64 = db.query_one("SELECT count(*) FROM cases", &[]).expect("query").get(0);
    assert_eq!(n as usize, l.corpus.len());
    assert!(std::fs::read_dir(wd.join("hub/outbox")).map(|d| d.count()).unwrap_or(0) == 0, "heartbeats left in the outbox");
    // Heartbeats spooled during the outage arrived too (one per second while the hub was down).
    let hb: i64 = db
        .query_one(
            "SELECT count(*) FROM heartbeats WHERE at > (SELECT min(at) FROM heartbeats) + make_interval(secs => $1)
               AND at < (SELECT min(at) FROM heartbeats) + make_interval(secs => $2)",
            &[&(stopped + 0.5), &(restarted - 0.5)],
        )
        .expect("query")
        .get(0);
    assert!(hb >= 3, "heartbeats from the outage: {hb}");
    // Fuzzing went on at full speed while the hub was down.
    let rates = rates(&wd, stopped, restarted);
    println!(
        "outage: hub down {:.1}s..{:.1}s; made during it: {} corpus entries, {} findings; all delivered once after restart \
         (hub holds {} corpus entries, {} findings, {} heartbeats in the window); exec rate before {:.0}/s, during {:.0}/s; sync failures {}",
        stopped,
        restarted,
        during.0 - before.0,
        during.1 - before.1,
        n,
        l.findings.len(),
        hb,
        rates.0,
        rates.1,
        s["hub"]["failures"]
    );
    assert!(during.0 > before.0 || during.1 > before.1, "nothing was made during the outage");
    assert!(rates.1 > 0.5 * rates.0, "the campaign slowed down while the hub was down: {rates:?}");
}

fn count_local(wd: &Path) -> (usize, usize) {
    let n = |d: &str| {
        std::fs::read_dir(wd.join(d))
            .map(|d| d.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count())
            .unwrap_or(0)
    };
    (n("corpus"), n("findings"))
}

/// Mean exec rate (stats.jsonl) before `a` seconds and between `a` and `b`.
fn rates(wd: &Path, a: f64, b: f64) -> (f64, f64) {
    let text = std::fs::read_to_string(wd.join("stats.jsonl")).unwrap_or_default();
    let rows: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| (v["seconds"].as_f64().unwrap_or(0.0), v["execs_per_sec"].as_f64().unwrap_or(0.0)))
        .filter(|(t, r)| *t > 1.0 && *r > 0.0)
        .collect();
    let mean = |lo: f64, hi: f64| {
        let v: Vec<f64> = rows.iter().filter(|(t, _)| *t >= lo && *t < hi).map(|(_, r)| *r).collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    (mean(0.0, a), mean(a + 1.0, b))
}

#[test]
fn sigkill_mid_sync_then_resume_loses_and_duplicates_nothing() {
    let Some((url, _cluster)) = fresh_db("sigkill", false) else { return };
    init(&url);
    let tmp = tempdir();
    let wd = tmp.path().join("w");
    let f = facts(tmp.path(), 0, "6.1.0-kill");
    // Syncing every 100 ms: the kill lands in or near a push.
    let mut child = fuzz(&wd, &f, "model:V2b", 5, "60s", (&url, "100ms"), &["--minimize-budget", "50"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fuzz");
    std::thread::sleep(Duration::from_millis(3300));
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    let killed = local(&wd);
    assert!(!killed.corpus.is_empty() && !killed.findings.is_empty(), "the campaign made nothing before the kill");
    let o = fuzz(&wd, &f, "model:V2b", 5, "3s", (&url, "100ms"), &["--minimize-budget", "50", "--resume"]).output().expect("resume");
    let s = summary(&o);
    assert_eq!(s["resumed"], true);
    assert_eq!(s["hub"]["delivered_at_exit"], true, "{}", String::from_utf8_lossy(&o.stderr));
    let l = local(&wd);
    assert_eq!(l.campaign, killed.campaign, "a resumed campaign keeps its id");
    assert!(killed.corpus.is_subset(&l.corpus));
    let mut db = Client::connect(&url, NoTls).expect("connect");
    check_delivered(&mut db, &l);
    let n: i64 = db.query_one("SELECT count(*) FROM cases", &[]).expect("query").get(0);
    assert_eq!(n as usize, l.corpus.len(), "corpus entries in the hub vs the workdir");
    let f_n: i64 = db.query_one("SELECT count(*) FROM findings", &[]).expect("query").get(0);
    assert_eq!(f_n as usize, l.findings.len());
    let occ: i64 = db.query_one("SELECT count(*) FROM occurrences", &[]).expect("query").get(0);
    assert_eq!(occ as usize, l.findings.len(), "one occurrence row per signature for one host and campaign");
    // Findings reach the hub raw and then minimized: after the resume finished the queue, each
    // row holds the workdir's minimized case.
    for sig in &l.findings {
        let row = db.query_one("SELECT minimized, case_bytes FROM findings WHERE signature = $1", &[sig]).expect("query");
        let (minimized, bytes): (bool, Vec<u8>) = (row.get(0), row.get(1));
        assert!(minimized, "{sig}: the hub still holds the raw case");
        assert_eq!(bytes, std::fs::read(wd.join("findings").join(sig).join("case.bin")).expect("case.bin"), "{sig}");
    }
}

#[test]
fn bad_hub_data_is_named_and_skipped_while_fuzzing_goes_on() {
    let Some((url, _cluster)) = fresh_db("baddata", false) else { return };
    init(&url);
    let mut db = Client::connect(&url, NoTls).expect("connect");
    db.execute(
        "INSERT INTO hosts (host_id, fingerprint, kernel, contract, quirks, backend) VALUES ('evil', '{}', 'x', 'V3', '{}', 'kvm')",
        &[],
    )
    .expect("host");
    let good = xsave_oracle::Case { ops: vec![xsave_oracle::Op::GetXsave], ..Default::default() }.encode();
    let mut corrupt = good.clone();
    corrupt.truncate(7);
    corrupt.extend_from_slice(b"\xff\xff\xff garbage");
    let mut future = good.clone();
    future[4] = 99;
    let mut lying = good.clone();
    lying.push(0);
    let rows: [(&[u8], String, i32); 4] = [
        (&good, xsave_hub::sha256_hex(&good), 1),
        (&corrupt, xsave_hub::sha256_hex(&corrupt), 1),
        (&future, xsave_hub::sha256_hex(&future), 99),
        (&lying, "0".repeat(64), 1),
    ];
    for (b, h, v) in &rows {
        db.execute("INSERT INTO cases (hash, format_version, bytes, contributor, points) VALUES ($1, $2, $3, 'evil', '{}')", &[h, v, b])
            .expect("case");
    }
    let tmp = tempdir();
    let wd = tmp.path().join("w");
    let f = facts(tmp.path(), 0, "6.1.0-bad");
    let o = fuzz(&wd, &f, "model:V2b", 3, "3s", (&url, "500ms"), &["--minimize-budget", "0"]).output().expect("fuzz");
    let s = summary(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(s["hub"]["pulled"], 1, "{err}");
    assert_eq!(s["hub"]["skipped"], 3, "{err}");
    assert!(s["execs"].as_u64().unwrap_or(0) > 100, "the campaign went on");
    for (needle, why) in [(&rows[1].1, "corrupt"), (&rows[2].1, "unsupported case format version 99"), (&rows[3].1, "does not match")] {
        let line = err.lines().find(|l| l.contains(needle.as_str())).unwrap_or_else(|| panic!("{needle} not named: {err}"));
        assert!(line.contains("from host evil"), "{line}");
        if why != "corrupt" {
            assert!(line.contains(why), "{line} lacks {why}");
        }
    }
    // Named once, not at every sync.
    assert_eq!(err.matches(rows[2].1.as_str()).count(), 1, "{err}");
    let log = std::fs::read_to_string(wd.join("hub/skipped.log")).expect("skipped.log");
    assert_eq!(log.lines().count(), 3);
    // `hub pull` names them too and writes the valid one.
    let out = tmp.path().join("pulled");
    let o = rig().args(["hub", "pull", "--url", &url, "-o"]).arg(&out).output().expect("hub pull");
    let text = ok(&o);
    let total: i64 = db.query_one("SELECT count(*) FROM cases", &[]).expect("query").get(0);
    assert!(text.contains(&format!("pulled {} cases", total - 3)) && text.contains("(3 skipped)"), "{text}");
    assert_eq!(std::fs::read_dir(&out).expect("pulled").count() as i64, total - 3);
    assert_eq!(String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.contains("from host evil")).count(), 3);
}

#[test]
fn writers_and_readers_are_limited_by_the_database() {
    let Some((url, _cluster)) = fresh_db("roles", false) else { return };
    let tag = std::process::id();
    let (w, r) = (format!("w_{tag}"), format!("r_{tag}"));
    ok(&rig().args(["hub", "init", "--roles", "--writer-role", &w, "--reader-role", &r, "--url", &url]).output().expect("init"));
    let (alice, bob, carol) = (format!("alice_{tag}"), format!("bob_{tag}"), format!("carol_{tag}"));
    for (login, group) in [(&alice, &w), (&bob, &w), (&carol, &r)] {
        ok(&rig().args(["hub", "add-login", login, "--in", group, "--url", &url]).output().expect("add-login"));
    }
    let tmp = tempdir();
    for (n, who, host) in [(0, &alice, "host-a"), (1, &bob, "host-b")] {
        let wd = tmp.path().join(format!("w{n}"));
        let f = facts(tmp.path(), n, "6.1.0-roles");
        let o =
            fuzz(&wd, &f, "model:V2b", n as u64 + 1, "2s", (&as_user(&url, who), "1s"), &["--minimize-budget", "0", "--hub-host", host])
                .output()
                .expect("fuzz");
        let s = summary(&o);
        assert_eq!(s["hub"]["delivered_at_exit"], true, "{}", String::from_utf8_lossy(&o.stderr));
    }
    let mut bob_db = Client::connect(&as_user(&url, &bob), NoTls).expect("bob");
    // Another host's rows: updates touch nothing (row-level security), deletes are refused.
    for q in [
        "UPDATE hosts SET kernel = 'rewritten' WHERE host_id = 'host-a'",
        "UPDATE occurrences SET count = 999999 WHERE host_id = 'host-a'",
        "UPDATE findings SET title = 'rewritten' WHERE contributor = 'host-a'",
    ] {
        assert_eq!(bob_db.execute(q, &[]).expect(q), 0, "{q}");
    }
    for q in ["DELETE FROM cases", "DELETE FROM hosts WHERE host_id = 'host-a'", "UPDATE cases SET bytes = '' ", "TRUNCATE heartbeats"] {
        let e = bob_db.execute(q, &[]).expect_err(q);
        assert!(e.as_db_error().is_some_and(|d| d.message().contains("permission denied")), "{q}: {e}");
    }
    // Inserting in another host's name is refused too.
    let e = bob_db
        .execute("INSERT INTO cases (hash, format_version, bytes, contributor, points) VALUES ('x', 1, 'x', 'host-a', '{}')", &[])
        .expect_err("insert as host-a");
    assert!(e.as_db_error().is_some_and(|d| d.message().contains("row-level security")), "{e}");
    // Bob's own rows stay his to update.
    assert_eq!(bob_db.execute("UPDATE hosts SET last_seen = now() WHERE host_id = 'host-b'", &[]).expect("own"), 1);
    // Claiming host-a's id through the CLI fails with one line.
    let wd = tmp.path().join("w1");
    let o = rig().args(["hub", "push", "--host", "host-a", "--url", &as_user(&url, &bob)]).arg(&wd).output().expect("push");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("row-level security") && err.lines().count() == 1, "{err}");
    // The reader reads, and writes nothing.
    let mut carol_db = Client::connect(&as_user(&url, &carol), NoTls).expect("carol");
    let n: i64 = carol_db.query_one("SELECT count(*) FROM hosts", &[]).expect("read").get(0);
    assert_eq!(n, 2);
    for q in [
        "INSERT INTO hosts (host_id, fingerprint, kernel, contract, quirks, backend) VALUES ('c', '{}', 'x', 'V3', '{}', 'kvm')",
        "UPDATE hosts SET kernel = 'x'",
        "DELETE FROM findings",
    ] {
        let e = carol_db.execute(q, &[]).expect_err(q);
        assert!(e.as_db_error().is_some_and(|d| d.message().contains("permission denied")), "{q}: {e}");
    }
    ok(&rig().args(["hub", "status", "--url", &as_user(&url, &carol)]).output().expect("status as reader"));
    // host-a is untouched.
    let mut admin = Client::connect(&url, NoTls).expect("admin");
    let k: String = admin.query_one("SELECT kernel FROM hosts WHERE host_id = 'host-a'", &[]).expect("q").get(0);
    assert_eq!(k, "6.1.0-roles");
}

#[test]
fn hub_url_password_is_never_printed() {
    let o = rig().args(["hub", "status", "--url", "postgres://someone:s3cret-pw@127.0.0.1:1/x"]).output().expect("status");
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("s3cret-pw") && err.contains("someone:***@127.0.0.1:1"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1);
    let o = rig().args(["hub", "status"]).env("XSAVE_RIG_HUB", "postgres://someone:s3cret-pw@127.0.0.1:1/x").output().expect("status");
    assert!(!String::from_utf8_lossy(&o.stderr).contains("s3cret-pw"));
    let o =
        rig().args(["hub", "status", "--help"]).env("XSAVE_RIG_HUB", "postgres://someone:s3cret-pw@127.0.0.1:1/x").output().expect("help");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("s3cret-pw"));
}

/// `report --hub` after hosts on three kernels pushed overlapping findings: as the reader
/// role, every format is written; each matrix cell (signature, kernel) holds exactly the
/// diverging cases and hosts the workdirs of that kernel's hosts recorded, a kernel whose host
/// found nothing is a column of clean cells, and the page renders in headless Chromium with
/// the matrix and per-host plots. stats.jsonl rows name the hub's host id.
#[test]
fn report_hub_shows_the_fleet_matrix() {
    let Some((url, _cluster)) = fresh_db("report", false) else { return };
    let tag = std::process::id();
    let (w, r) = (format!("w_{tag}"), format!("r_{tag}"));
    ok(&rig().args(["hub", "init", "--roles", "--writer-role", &w, "--reader-role", &r, "--url", &url]).output().expect("init"));
    let reader = format!("triage_{tag}");
    ok(&rig().args(["hub", "add-login", &reader, "--in", &r, "--url", &url]).output().expect("add-login"));
    let tmp = tempdir();
    // Two hosts on one kernel and one on another, all V2b (overlapping findings); a fourth on
    // a clean kernel (V3 under the V3 oracle).
    let hosts = [
        ("h-a", "6.1.0-fleet", "model:V2b"),
        ("h-b", "6.1.0-fleet", "model:V2b"),
        ("h-c", "6.12.0-fleet", "model:V2b"),
        ("h-d", "6.13.0-clean", "model:V3"),
    ];
    let mut expected: BTreeMap<(String, String), (i64, BTreeSet<String>)> = BTreeMap::new();
    for (n, (host, kernel, backend)) in hosts.iter().enumerate() {
        let wd = tmp.path().join(host);
        let f = facts(tmp.path(), n, kernel);
        let login = format!("{}_{tag}", host.replace('-', "_"));
        ok(&rig().args(["hub", "add-login", &login, "--in", &w, "--url", &url]).output().expect("add-login"));
        let o = fuzz(&wd, &f, backend, n as u64 + 1, "2s", (&as_user(&url, &login), "1s"), &["--minimize-budget", "0", "--hub-host", host])
            .output()
            .expect("fuzz");
        assert_eq!(summary(&o)["hub"]["delivered_at_exit"], true, "{}", String::from_utf8_lossy(&o.stderr));
        let l = local(&wd);
        assert_eq!(&l.host, host);
        for sig in &l.findings {
            let e = expected.entry((sig.clone(), kernel.to_string())).or_default();
            e.0 += l.counts.get(sig).copied().unwrap_or(1).max(1) as i64;
            e.1.insert(host.to_string());
        }
        let stats = std::fs::read_to_string(wd.join("stats.jsonl")).expect("stats");
        assert!(stats.lines().all(|row| serde_json::from_str::<serde_json::Value>(row).expect("row")["host"] == *host), "{stats}");
    }
    assert!(expected.values().any(|(_, h)| h.len() == 2), "overlapping findings on one kernel: {expected:?}");
    let out = tmp.path().join("fleet");
    let o = rig().args(["report", "--hub", &as_user(&url, &reader), "-o"]).arg(&out).output().expect("report --hub");
    ok(&o);
    let rep: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("json")).expect("json");
    let kernels: Vec<&str> = rep["kernels"].as_array().expect("kernels").iter().filter_map(|k| k.as_str()).collect();
    assert_eq!(kernels, ["6.1.0-fleet", "6.12.0-fleet", "6.13.0-clean"]);
    let cells: BTreeMap<(String, String), (i64, BTreeSet<String>)> = rep["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| {
            let s = |k: &str| c[k].as_str().expect("str").to_string();
            let hosts = c["hosts"].as_array().expect("hosts").iter().map(|h| h.as_str().expect("host").to_string()).collect();
            ((s("signature"), s("kernel")), (c["count"].as_i64().expect("count"), hosts))
        })
        .collect();
    assert_eq!(cells, expected, "matrix cells");
    let sigs: BTreeSet<&str> = rep["findings"].as_array().expect("findings").iter().filter_map(|f| f["signature"].as_str()).collect();
    assert_eq!(sigs, expected.keys().map(|(s, _)| s.as_str()).collect());
    assert_eq!(
        rep["series"].as_array().map(|s| s.iter().map(|x| x["host_id"].as_str().unwrap_or("")).collect::<BTreeSet<_>>().len()),
        Some(4)
    );
    let md = std::fs::read_to_string(out.join("report.md")).expect("md");
    assert!(md.contains("| signature | 6.1.0-fleet | 6.12.0-fleet | 6.13.0-clean |"), "{md}");
    if let Some(n) = sarif_results(&out.join("report.sarif")) {
        assert_eq!(n, sigs.len());
    }
    // The page, as a browser renders it: every cell of the matrix, hit or clean.
    let Some(bin) = chromium() else {
        tool_or_skip("chromium", false);
        return;
    };
    let page = out.join("report.html");
    let html = std::fs::read_to_string(&page).expect("html");
    assert!(!html.contains("<script") && !html.contains("<link ") && !html.contains("url(http"), "self-contained page");
    let d = headless(bin, &tmp.path().join("p")).arg("--dump-dom").arg(format!("file://{}", page.display())).output().expect("chromium");
    let dom = String::from_utf8_lossy(&d.stdout);
    let attr = |td: &str, k: &str| td.split(&format!(" {k}=\"")).nth(1).and_then(|t| t.split('"').next()).map(str::to_string);
    let (mut hit, mut clean) = (BTreeMap::new(), BTreeSet::new());
    for td in dom.split("<td ").skip(1).map(|t| t.split('>').next().unwrap_or("")) {
        let td = format!(" {td}");
        let (Some(sig), Some(k)) = (attr(&td, "data-sig"), attr(&td, "data-kernel")) else { continue };
        match attr(&td, "class").as_deref() {
            Some("hit") => {
                let n: i64 = attr(&td, "data-count").and_then(|n| n.parse().ok()).expect("count");
                let hosts = attr(&td, "data-hosts").unwrap_or_default().split(' ').map(str::to_string).collect();
                hit.insert((sig, k), (n, hosts));
            }
            Some("clean") => {
                clean.insert((sig, k));
            }
            c => panic!("matrix cell class {c:?}"),
        }
    }
    assert_eq!(hit, expected, "rendered matrix");
    assert_eq!(hit.len() + clean.len(), sigs.len() * kernels.len(), "one cell per signature and kernel");
    assert!(sigs.iter().all(|s| clean.contains(&(s.to_string(), "6.13.0-clean".to_string()))), "the clean kernel's column");
    for h in ["h-a", "h-b", "h-c", "h-d"] {
        assert!(dom.contains(&format!("id=\"host-{h}\"")), "no campaign plots for {h}");
    }
    assert!(dom.matches("<svg").count() >= 8 && dom.contains("execs/s"), "per-host plots");
}

#[test]
fn report_hub_never_prints_the_password() {
    let o = rig().args(["report", "--hub", "postgres://someone:s3cret-pw@127.0.0.1:1/x"]).output().expect("report");
    assert_eq!(o.status.code(), Some(2));
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(!all.contains("s3cret") && all.contains("***") && all.trim_end().lines().count() == 1, "{all}");
    let o = rig().env("XSAVE_RIG_HUB", "postgres://someone:s3cret-pw@127.0.0.1:1/x").arg("report").output().expect("report");
    assert_eq!(o.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("s3cret"));
    let o = rig().args(["report", "w", "--hub", "postgres://h/x"]).output().expect("report");
    assert_eq!(o.status.code(), Some(2));
}
