//! Sync a campaign workdir with the hub: push what it found, pull what other hosts found.
//!
//! Over 600 lines with its tests: the outbox, ledger and pull cursor are one protocol whose
//! crash-safety arguments need to be read together.
//!
//! `WORKDIR/hub/` holds `identity.json` (host id, campaign id), `ledger.json` (what was
//! delivered and the pull cursor), `outbox/` (heartbeats not yet delivered), `pulled/`
//! (validated cases from other hosts) and `skipped.log` (hub entries refused, with why).

use crate::{io, sha256_hex, Hub, HubError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use xsave_oracle::{Case, Contract, HostFacts, ModelConfig, Quirk};
use xsave_runner::store::write_atomic;

/// Who is pushing: the host and this workdir's campaign.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Identity {
    /// Host id (`--hub-host`, or `<hostname>-<hash of the fingerprint>`).
    pub host_id: String,
    /// Campaign id (random, one per workdir).
    pub campaign: String,
    /// The `probe --json` fingerprint.
    #[serde(skip)]
    pub fingerprint: serde_json::Value,
    /// Kernel release (the fingerprint's, or `unknown`).
    #[serde(skip)]
    pub kernel: String,
    /// Contract (a model backend's, else the probe's).
    #[serde(skip)]
    pub contract: String,
    /// Quirks the probe found.
    #[serde(skip)]
    pub quirks: Vec<String>,
    /// Backend name.
    #[serde(skip)]
    pub backend: String,
}

fn hub_dir(workdir: &Path) -> PathBuf {
    workdir.join("hub")
}

fn random_hex() -> String {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b)).is_err() {
        let t = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b = ((t as u64) ^ (u64::from(std::process::id()) << 32)).to_le_bytes();
    }
    xsave_oracle::hexnum::to_hex(&b)
}

impl Identity {
    /// The identity of `workdir`'s campaign: stored in `WORKDIR/hub/identity.json` on first
    /// use (so a resumed campaign keeps it); `host` overrides the host id.
    pub fn for_workdir(workdir: &Path, fingerprint: &serde_json::Value, backend: &str, host: Option<&str>) -> Result<Identity, HubError> {
        let dir = hub_dir(workdir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = workdir.join(xsave_runner::stamp::IDENTITY_FILE);
        let stored: Option<Identity> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
        let host_id = match (host, &stored) {
            (Some(h), _) => h.to_string(),
            (None, Some(s)) => s.host_id.clone(),
            (None, None) => xsave_runner::stamp::default_host_id(fingerprint),
        };
        if host_id.is_empty() || host_id.len() > 200 || host_id.chars().any(|c| c.is_control()) {
            return Err(HubError::Invalid(format!("bad hub host id {host_id:?}")));
        }
        let campaign = stored.as_ref().map_or_else(random_hex, |s| s.campaign.clone());
        let s = |k: &str| fingerprint.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let id = Identity {
            host_id,
            campaign,
            fingerprint: fingerprint.clone(),
            kernel: s("kernel_release").unwrap_or_else(|| "unknown".into()),
            contract: s("model_backend").or_else(|| s("contract")).unwrap_or_else(|| "unknown".into()),
            quirks: fingerprint
                .get("quirks")
                .and_then(|q| q.as_array())
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            backend: backend.to_string(),
        };
        if stored.as_ref().is_none_or(|s| s.host_id != id.host_id) {
            let bytes = serde_json::to_vec_pretty(&id).map_err(|e| HubError::Invalid(e.to_string()))?;
            write_atomic(&path, &bytes).map_err(io(&path))?;
        }
        Ok(id)
    }
}

/// What was delivered, and where pulling continues.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Local corpus files delivered (or refused locally), by file name.
    pub cases: BTreeSet<String>,
    /// Findings delivered: signature → whether the delivered case was the minimized one.
    pub findings: BTreeMap<String, bool>,
    /// Occurrence counts delivered, by signature.
    pub counts: BTreeMap<String, u64>,
    /// Hub case ids below this are all seen.
    pub cursor: i64,
    /// Hub cases received or refused (content hashes).
    pub pulled: BTreeSet<String>,
}

impl Ledger {
    /// `WORKDIR/hub/ledger.json`, or an empty ledger.
    pub fn load(workdir: &Path) -> Result<Ledger, HubError> {
        let p = hub_dir(workdir).join("ledger.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| HubError::Invalid(format!("{}: corrupt hub ledger: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(HubError::Io { path: p, err: e }),
        }
    }
    fn save(&self, workdir: &Path) -> Result<(), HubError> {
        let dir = hub_dir(workdir);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let p = dir.join("ledger.json");
        let b = serde_json::to_vec(self).map_err(|e| HubError::Invalid(e.to_string()))?;
        write_atomic(&p, &b).map_err(io(&p))
    }
}

/// A campaign's progress as its state files show it (summed over `--jobs` workers).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Sequence (milliseconds since the epoch when spooled).
    pub seq: i64,
    /// Seconds since the epoch.
    pub at: f64,
    /// Execs.
    pub execs: i64,
    /// Exec rate.
    pub execs_per_sec: f64,
    /// Coverage points.
    pub coverage_points: i32,
    /// Contract rules covered.
    pub rules_covered: i32,
    /// Corpus size.
    pub corpus: i32,
    /// Findings.
    pub findings: i64,
}

fn now_secs() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The campaign states in `workdir`: the workers' when it is a `--jobs` campaign.
fn summaries(workdir: &Path) -> Vec<xsave_runner::campaign::Summary> {
    let mut files = vec![];
    if let Ok(d) = std::fs::read_dir(workdir.join("workers")) {
        files.extend(d.flatten().map(|e| e.path().join("campaign.json")));
    }
    if files.is_empty() {
        files.push(workdir.join("campaign.json"));
    }
    files.iter().filter_map(|f| std::fs::read(f).ok()).filter_map(|b| serde_json::from_slice(&b).ok()).collect()
}

/// Write a heartbeat of `workdir`'s campaign to the outbox (atomically).
pub fn spool_heartbeat(workdir: &Path) -> Result<(), HubError> {
    let ss = summaries(workdir);
    if ss.is_empty() {
        return Ok(());
    }
    let at = now_secs();
    let hb = Heartbeat {
        seq: (at * 1000.0) as i64,
        at,
        execs: ss.iter().map(|s| s.execs as i64).sum(),
        execs_per_sec: ss.iter().map(|s| s.execs_per_sec).sum(),
        coverage_points: ss.iter().map(|s| s.coverage_points as i32).max().unwrap_or(0),
        rules_covered: ss.iter().map(|s| s.rules_covered as i32).max().unwrap_or(0),
        corpus: ss.iter().map(|s| s.corpus as i32).max().unwrap_or(0),
        findings: ss.iter().map(|s| s.findings as i64).max().unwrap_or(0),
    };
    let dir = hub_dir(workdir).join("outbox");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let p = dir.join(format!("hb-{:016}.json", hb.seq));
    let b = serde_json::to_vec(&hb).map_err(|e| HubError::Invalid(e.to_string()))?;
    write_atomic(&p, &b).map_err(io(&p))
}

/// The oracle context a push computes the contract points of cases under.
#[derive(Clone)]
pub struct PointsCtx {
    /// Host facts.
    pub host: HostFacts,
    /// Model.
    pub model: ModelConfig,
}

impl PointsCtx {
    /// From a workdir's `host.json` and `campaign.json` (for `hub push WORKDIR`).
    pub fn from_workdir(workdir: &Path) -> Result<PointsCtx, HubError> {
        let hp = workdir.join("host.json");
        let fp: serde_json::Value = std::fs::read(&hp)
            .map_err(io(&hp))
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| HubError::Invalid(format!("{}: {e}", hp.display()))))?;
        let host: HostFacts = serde_json::from_value(fp.get("host").cloned().unwrap_or(serde_json::Value::Null))
            .map_err(|e| HubError::Invalid(format!("{}: not a host fingerprint: {e}", hp.display())))?;
        let s = summaries(workdir)
            .into_iter()
            .next()
            .ok_or_else(|| HubError::Invalid(format!("{}: no campaign state (campaign.json)", workdir.display())))?;
        let contract = Contract::parse(&s.contract)
            .ok_or_else(|| HubError::Invalid(format!("{}: unknown contract {}", workdir.display(), s.contract)))?;
        let quirks = s.quirks.iter().filter_map(|q| Quirk::from_name(q)).collect();
        Ok(PointsCtx { host, model: ModelConfig { contract, quirks } })
    }
}

/// What one push delivered.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PushStats {
    /// Corpus entries sent (new in the hub or already there).
    pub cases: u64,
    /// Findings sent (new or updated).
    pub findings: u64,
    /// Occurrence counts sent.
    pub occurrences: u64,
    /// Heartbeats sent.
    pub heartbeats: u64,
    /// Local files that are not valid cases (named, not sent).
    pub local_skipped: Vec<String>,
}

fn finding_dirs(workdir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(workdir.join("findings"))
        .map(|d| {
            d.flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.') && e.path().is_dir())
                .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Push everything in `workdir` the ledger does not list, in one transaction, then record it.
pub fn push(hub: &mut Hub, workdir: &Path, id: &Identity, ctx: &PointsCtx, ledger: &mut Ledger) -> Result<PushStats, HubError> {
    let mut st = PushStats::default();
    let ss = summaries(workdir);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for s in &ss {
        for (k, n) in &s.by_signature {
            *counts.entry(k.clone()).or_default() += n;
        }
    }
    // Corpus entries not yet sent.
    let cdir = workdir.join("corpus");
    // The corpus entries as the campaign itself lists them.
    let mut names: Vec<String> = xsave_runner::campaign::corpus_names(&cdir).into_iter().map(|n| format!("{n}.case")).collect();
    names.retain(|n| !ledger.cases.contains(n));
    // (file name, content hash, format version, bytes, contract points)
    type Entry = (String, String, i32, Vec<u8>, Vec<String>);
    let mut cases: Vec<Entry> = Vec::new();
    for n in &names {
        let p = cdir.join(n);
        match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| Case::decode(&b).map(|c| (b, c)).map_err(|e| e.to_string())) {
            Ok((b, c)) => {
                let exp = xsave_oracle::predict(&c, &ctx.host, &ctx.model);
                let pts: BTreeSet<String> = xsave_oracle::coverage::points(&c, &exp).iter().map(|p| p.to_string()).collect();
                let fv = i32::from(b.get(4).copied().unwrap_or(0));
                cases.push((n.clone(), sha256_hex(&b), fv, b, pts.into_iter().collect()));
            }
            Err(e) => st.local_skipped.push(format!("{}: {e}", p.display())),
        }
    }
    cases.sort_by(|a, b| a.1.cmp(&b.1));
    // Findings not yet sent, or sent raw and minimized since.
    struct F {
        sig: String,
        class: String,
        title: String,
        bytes: Vec<u8>,
        minimized: bool,
        verdict: serde_json::Value,
    }
    let mut finds: Vec<F> = Vec::new();
    let dirs = finding_dirs(workdir);
    for (sig, d) in &dirs {
        let minimized = d.join("minimize.json").exists();
        if matches!(ledger.findings.get(sig), Some(m) if *m || !minimized) {
            continue;
        }
        let read = || -> Result<F, String> {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(d.join("verdict.json")).map_err(|e| format!("verdict.json: {e}"))?)
                    .map_err(|e| format!("verdict.json: {e}"))?;
            let bytes = std::fs::read(d.join("case.bin")).map_err(|e| format!("case.bin: {e}"))?;
            Case::decode(&bytes).map_err(|e| format!("case.bin: {e}"))?;
            let g = |k: &str| v.get("verdict").and_then(|x| x.get(k)).and_then(|x| x.as_str()).unwrap_or("").to_string();
            Ok(F { sig: sig.clone(), class: g("class"), title: g("title"), bytes, minimized, verdict: v })
        };
        match read() {
            Ok(f) => finds.push(f),
            Err(e) => st.local_skipped.push(format!("{}: {e}", d.display())),
        }
    }
    let occ: Vec<(String, u64)> = dirs
        .iter()
        .map(|(sig, _)| (sig.clone(), counts.get(sig).copied().unwrap_or(1).max(1)))
        .filter(|(sig, n)| ledger.counts.get(sig) != Some(n))
        .filter(|(sig, _)| ledger.findings.contains_key(sig) || finds.iter().any(|f| f.sig == *sig))
        .collect();
    // Heartbeats spooled.
    let odir = hub_dir(workdir).join("outbox");
    let mut hbs: Vec<(PathBuf, Heartbeat)> = std::fs::read_dir(&odir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("hb-")))
                .filter_map(|p| std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok()).map(|h| (p, h)))
                .collect()
        })
        .unwrap_or_default();
    hbs.sort_by_key(|(_, h)| h.seq);

    let url = hub.url.clone();
    let err = |e: postgres::Error| HubError::Db { url: url.clone(), msg: crate::pg_msg(&e) };
    let mut tx = hub.client.transaction().map_err(err)?;
    tx.execute(
        "INSERT INTO hosts (host_id, fingerprint, kernel, contract, quirks, backend) VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (host_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, kernel = EXCLUDED.kernel,
           contract = EXCLUDED.contract, quirks = EXCLUDED.quirks, backend = EXCLUDED.backend, last_seen = now()",
        &[&id.host_id, &id.fingerprint, &id.kernel, &id.contract, &id.quirks, &id.backend],
    )
    .map_err(err)?;
    let ins_case = tx
        .prepare(
            "INSERT INTO cases (hash, format_version, bytes, contributor, points) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (hash) DO NOTHING",
        )
        .map_err(err)?;
    for (_, hash, fv, b, pts) in &cases {
        tx.execute(&ins_case, &[hash, fv, b, &id.host_id, pts]).map_err(err)?;
        st.cases += 1;
    }
    finds.sort_by(|a, b| a.sig.cmp(&b.sig));
    for f in &finds {
        let h = sha256_hex(&f.bytes);
        tx.execute(
            "INSERT INTO findings (signature, class, title, contributor, case_hash, case_bytes, minimized, verdict)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (signature) DO NOTHING",
            &[&f.sig, &f.class, &f.title, &id.host_id, &h, &f.bytes, &f.minimized, &f.verdict],
        )
        .map_err(err)?;
        if f.minimized {
            // Only the contributor's row, and only a raw one, is replaced (RLS enforces the
            // first condition for writers too).
            tx.execute(
                "UPDATE findings SET case_hash = $2, case_bytes = $3, minimized = true, verdict = $4
                 WHERE signature = $1 AND contributor = $5 AND NOT minimized",
                &[&f.sig, &h, &f.bytes, &f.verdict, &id.host_id],
            )
            .map_err(err)?;
        }
        st.findings += 1;
    }
    for (sig, n) in &occ {
        let n = *n as i64;
        tx.execute(
            "INSERT INTO occurrences (signature, host_id, campaign, kernel, count) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (signature, host_id, campaign) DO UPDATE SET
               last_seen = CASE WHEN EXCLUDED.count > occurrences.count THEN now() ELSE occurrences.last_seen END,
               count = GREATEST(occurrences.count, EXCLUDED.count), kernel = EXCLUDED.kernel",
            &[sig, &id.host_id, &id.campaign, &id.kernel, &n],
        )
        .map_err(err)?;
        st.occurrences += 1;
    }
    for (_, h) in &hbs {
        tx.execute(
            "INSERT INTO heartbeats (host_id, campaign, seq, at, execs, execs_per_sec, coverage_points, rules_covered, corpus, findings)
             VALUES ($1, $2, $3, to_timestamp($4), $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            &[
                &id.host_id,
                &id.campaign,
                &h.seq,
                &h.at,
                &h.execs,
                &h.execs_per_sec,
                &h.coverage_points,
                &h.rules_covered,
                &h.corpus,
                &h.findings,
            ],
        )
        .map_err(err)?;
        st.heartbeats += 1;
    }
    tx.commit().map_err(err)?;
    // Delivered: record it (a crash before this line re-sends; the upserts make that a no-op).
    ledger.cases.extend(cases.iter().map(|c| c.0.clone()));
    ledger.cases.extend(st.local_skipped.iter().filter_map(|l| {
        let n = l.split(": ").next().and_then(|p| Path::new(p).file_name()).map(|n| n.to_string_lossy().to_string())?;
        names.contains(&n).then_some(n)
    }));
    for f in &finds {
        ledger.findings.insert(f.sig.clone(), f.minimized);
    }
    for (sig, n) in &occ {
        ledger.counts.insert(sig.clone(), *n);
    }
    ledger.save(workdir)?;
    for (p, _) in &hbs {
        let _ = std::fs::remove_file(p);
    }
    Ok(st)
}

/// A hub case refused by a pulling host.
pub fn skip_line(hash: &str, contributor: &str, why: &str) -> String {
    format!("hub case {hash} from host {contributor}: {why}")
}

/// Fetch cases from the hub (`exclude`: a host whose own cases to leave out), validate
/// each exactly as `corpus unpack` validates archive members, and write the valid ones to
/// `out` under their content names. Returns the valid cases and the refused ones (one line
/// each, naming the case and its contributor). `ledger` tracks the cursor and what was seen.
pub fn pull(hub: &mut Hub, exclude: Option<&str>, out: &Path, ledger: &mut Ledger) -> Result<(Vec<Case>, Vec<String>), HubError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let rows = hub
        .client
        .query(
            "SELECT id, hash, format_version, bytes, contributor, added_at < now() - interval '60 seconds'
             FROM cases WHERE id > $1 AND contributor IS DISTINCT FROM $2 ORDER BY id LIMIT 2000",
            &[&ledger.cursor, &exclude],
        )
        .map_err(|e| hub.err(e))?;
    let mut ok = Vec::new();
    let mut skipped = Vec::new();
    let mut settled = true;
    for r in &rows {
        let id: i64 = r.get(0);
        let hash: String = r.get(1);
        let fv: i32 = r.get(2);
        let bytes: Vec<u8> = r.get(3);
        let contributor: String = r.get(4);
        let old: bool = r.get(5);
        settled &= old;
        if settled {
            ledger.cursor = id;
        }
        if ledger.pulled.contains(&hash) {
            continue;
        }
        let range = xsave_oracle::case::FORMAT_VERSION_MIN..=xsave_oracle::case::FORMAT_VERSION;
        let checked = if !u8::try_from(fv).is_ok_and(|v| range.contains(&v)) {
            Err(format!(
                "unsupported case format version {fv} (this build reads {} to {})",
                xsave_oracle::case::FORMAT_VERSION_MIN,
                xsave_oracle::case::FORMAT_VERSION
            ))
        } else if bytes.get(4).map(|b| i32::from(*b)) != Some(fv) {
            Err(format!("format version {fv} listed, the bytes say otherwise"))
        } else {
            let name = format!("{hash}.case");
            xsave_runner::corpus::validate_member(&name, Some(&hash), &sha256_hex(&bytes), &bytes)
        };
        match checked {
            Ok(c) => {
                let p = out.join(xsave_oracle::hash::content_name(&bytes));
                write_atomic(&p, &bytes).map_err(io(&p))?;
                ok.push(c);
            }
            Err(why) => skipped.push(skip_line(&hash, &contributor, &why)),
        }
        ledger.pulled.insert(hash);
    }
    Ok((ok, skipped))
}

/// What a sync thread did over a campaign.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncStats {
    /// Host id.
    pub host_id: String,
    /// Successful syncs.
    pub syncs: u64,
    /// Failed attempts (hub down, refused, ...).
    pub failures: u64,
    /// Corpus entries pushed.
    pub pushed_cases: u64,
    /// Findings pushed.
    pub pushed_findings: u64,
    /// Heartbeats pushed.
    pub pushed_heartbeats: u64,
    /// Cases pulled into the mutation pool.
    pub pulled: u64,
    /// Hub cases refused.
    pub skipped: u64,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Whether everything was delivered at exit.
    pub delivered_at_exit: bool,
}

/// How a campaign syncs.
pub struct SyncConfig {
    /// Hub URL (kept out of every message).
    pub url: String,
    /// The campaign's workdir.
    pub workdir: PathBuf,
    /// Seconds between syncs.
    pub interval: Duration,
    /// Who is syncing.
    pub identity: Identity,
    /// Oracle context for case points.
    pub ctx: PointsCtx,
    /// Where pulled cases go (the running campaign's mutation pool), if anywhere.
    pub inbox: Option<Sender<Vec<Case>>>,
    /// One-line log sink (stderr in the CLI).
    pub log: Arc<dyn Fn(&str) + Send + Sync>,
}

/// A background sync thread.
pub struct Syncer {
    wake: Arc<(Mutex<bool>, Condvar)>,
    done: Receiver<SyncStats>,
    stopping: Arc<AtomicBool>,
}

impl Syncer {
    /// Start syncing in the background: at once, then every `interval`, retrying failures
    /// with backoff (1 s doubling up to the interval). Cases already pulled in earlier
    /// sessions are sent to the inbox first.
    pub fn start(cfg: SyncConfig) -> Syncer {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, done) = std::sync::mpsc::channel();
        let w = Arc::clone(&wake);
        let stop = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name("hub-sync".into())
            .spawn(move || {
                let st = sync_loop(cfg, &w, &stop);
                let _ = tx.send(st);
            })
            .map(|_| ())
            .unwrap_or(());
        Syncer { wake, done, stopping }
    }

    /// Stop: one last sync (heartbeat, corpus, findings), waiting at most `grace` for it.
    /// What could not be delivered stays in the workdir's outbox for the next session.
    pub fn finish(self, grace: Duration) -> SyncStats {
        self.stopping.store(true, Ordering::SeqCst);
        {
            let (m, c) = &*self.wake;
            if let Ok(mut g) = m.lock() {
                *g = true;
            }
            c.notify_all();
        }
        self.done
            .recv_timeout(grace)
            .unwrap_or_else(|_| SyncStats { last_error: Some("final sync timed out".into()), ..SyncStats::default() })
    }
}

fn sync_loop(cfg: SyncConfig, wake: &(Mutex<bool>, Condvar), stopping: &AtomicBool) -> SyncStats {
    let mut st = SyncStats { host_id: cfg.identity.host_id.clone(), ..SyncStats::default() };
    let log = &cfg.log;
    let pulled_dir = hub_dir(&cfg.workdir).join("pulled");
    if let Some(tx) = &cfg.inbox {
        if let Ok((old, _)) = xsave_runner::corpus::read_dir(&pulled_dir) {
            if !old.is_empty() {
                let _ = tx.send(old.into_iter().map(|m| m.2).collect());
            }
        }
    }
    let mut ledger = match Ledger::load(&cfg.workdir) {
        Ok(l) => l,
        Err(e) => {
            log(&format!("hub: {e}; starting a new ledger (everything is re-sent, idempotently)"));
            Ledger::default()
        }
    };
    let mut hub: Option<Hub> = None;
    let mut backoff = Duration::from_secs(1);
    let mut down_since: Option<Instant> = None;
    let mut next = Instant::now();
    let mut last_spool = Instant::now() - cfg.interval;
    let mut final_tries = 0;
    loop {
        // Sleep until the next attempt or a stop.
        {
            let (m, c) = wake;
            let mut g = match m.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            while !*g && Instant::now() < next {
                let left = next.saturating_duration_since(Instant::now());
                g = match c.wait_timeout(g, left) {
                    Ok((g, _)) => g,
                    Err(p) => p.into_inner().0,
                };
            }
        }
        let last = stopping.load(Ordering::SeqCst);
        if (last && final_tries == 0) || last_spool.elapsed() >= cfg.interval {
            if let Err(e) = spool_heartbeat(&cfg.workdir) {
                log(&format!("hub: cannot spool a heartbeat: {e}"));
            }
            last_spool = Instant::now();
        }
        let attempt = (|| -> Result<(), HubError> {
            if hub.is_none() {
                let mut h = Hub::connect(&cfg.url)?;
                h.check_schema()?;
                hub = Some(h);
            }
            let h = hub.as_mut().ok_or_else(|| HubError::Invalid("no connection".into()))?;
            let p = push(h, &cfg.workdir, &cfg.identity, &cfg.ctx, &mut ledger)?;
            for l in &p.local_skipped {
                log(&format!("hub: not sent (not a valid case): {l}"));
            }
            st.pushed_cases += p.cases;
            st.pushed_findings += p.findings;
            st.pushed_heartbeats += p.heartbeats;
            if !last {
                if let Some(tx) = &cfg.inbox {
                    loop {
                        let before = ledger.cursor;
                        let (cases, skipped) = pull(h, Some(&cfg.identity.host_id), &pulled_dir, &mut ledger)?;
                        for s in &skipped {
                            log(&format!("hub: skipped {s}"));
                            append_skipped(&cfg.workdir, s);
                        }
                        st.skipped += skipped.len() as u64;
                        st.pulled += cases.len() as u64;
                        ledger.save(&cfg.workdir)?;
                        if !cases.is_empty() {
                            let _ = tx.send(cases);
                        }
                        if ledger.cursor == before {
                            break;
                        }
                    }
                }
            }
            Ok(())
        })();
        match attempt {
            Ok(()) => {
                st.syncs += 1;
                st.last_error = None;
                if let Some(t) = down_since.take() {
                    log(&format!("hub: reachable again after {:.0} s; the outbox is delivered", t.elapsed().as_secs_f64()));
                }
                backoff = Duration::from_secs(1);
                next = Instant::now() + cfg.interval;
                if last {
                    st.delivered_at_exit = true;
                }
            }
            Err(e) => {
                st.failures += 1;
                hub = None;
                let msg = e.to_string();
                if down_since.is_none() {
                    log(&format!("hub: sync failed ({msg}); fuzzing goes on, results wait in the outbox"));
                    down_since = Some(Instant::now());
                }
                st.last_error = Some(msg);
                next = Instant::now() + backoff;
                backoff = (backoff * 2).min(cfg.interval.max(Duration::from_secs(1)));
            }
        }
        if last {
            // The last sync: a few quick retries (a transient conflict), never a long wait.
            final_tries += 1;
            if st.delivered_at_exit || final_tries >= 3 || hub_unreachable(&st) {
                return st;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Whether the last failure was a connection failure (not worth retrying at exit).
fn hub_unreachable(st: &SyncStats) -> bool {
    st.last_error.as_deref().is_some_and(|e| e.contains("error connecting") || e.contains("connection closed") || e.contains("timed out"))
}

fn append_skipped(workdir: &Path, line: &str) {
    use std::io::Write;
    let p = hub_dir(workdir).join("skipped.log");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&p) {
        let _ = writeln!(f, "{line}");
    }
}
