//! `xsave-rig fuzz`: a fuzz campaign (and `--jobs N`, its worker processes).

use crate::args::*;
use crate::common::*;
use anyhow::{bail, Context, Result};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;
use xsave_oracle::ModelConfig;
use xsave_runner::campaign::{self, CampaignConfig, Summary};
use xsave_runner::jobs;
use xsave_runner::store::escape;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    oracle: OracleArgs,
    /// Total cases of the campaign (default 10000 when no --duration; on --resume the
    /// stored total, unless given again).
    #[arg(long, conflicts_with = "duration")]
    iterations: Option<u64>,
    /// Total run time of the campaign, e.g. 60s, 1m30s, 2h, or `forever` (until SIGINT or
    /// SIGTERM); kept on --resume unless given again.
    #[arg(long, value_parser = parse_run_time)]
    duration: Option<Duration>,
    /// Generator seed (default: a random one drawn from the OS, recorded in campaign.json and
    /// the summary, so fleet hosts do not all run the same cases; with --resume, the stored
    /// campaign's, which a different --seed may not change). Give it for a reproducible run.
    #[arg(long)]
    seed: Option<u64>,
    /// Workdir for state and findings (findings/<signature>/).
    #[arg(long, default_value = "xsave-work")]
    workdir: PathBuf,
    /// Continue the campaign stored in --workdir (an error if there is none, or if its
    /// backend, contract, quirks or seed differ from this command's).
    #[arg(long)]
    resume: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Executions the minimizer may spend on each new finding (0: no minimization). A new
    /// finding is written raw at once; minimization takes at most 20 % of the campaign's time
    /// and replaces it when done; pending ones are finished at the end, or by --resume after
    /// an interrupt.
    #[arg(long, default_value_t = 2000)]
    minimize_budget: u64,
    /// Give every case a guest CPUID strictly narrower than the host's supported set.
    #[arg(long)]
    narrow_cpuid: bool,
    /// Pure random generation: no contract-coverage feedback, no corpus.
    #[arg(long)]
    no_feedback: bool,
    /// Generate no guest runs (KVM_RUN of guest programs that write registers and store the
    /// guest's own XSAVE image): only the userspace-buffer ioctls, as before version 2.
    #[arg(long)]
    no_guest: bool,
    /// Generate no legacy FPU ops (KVM_GET_FPU/KVM_SET_FPU).
    #[arg(long)]
    no_fpu: bool,
    /// Worker processes sharing the workdir's findings and corpus (each resumable).
    #[arg(long, default_value_t = 1)]
    jobs: u64,
    /// Internal (set by --jobs for its worker processes): run as worker K of N (`K/N`).
    #[arg(long)]
    worker: Option<String>,
    #[command(flatten)]
    hub: crate::cmd::hub::FuzzHubArgs,
    /// Keep a Prometheus textfile-collector file here (execs, exec rate, rules covered/total,
    /// coverage points, corpus, findings by class), rewritten atomically every status period
    /// and at exit.
    #[arg(long, value_name = "FILE")]
    metrics: Option<PathBuf>,
    /// Status period, e.g. 10s, 1m: when stderr is not a terminal (journald, CI), a plain
    /// timestamped status line is printed this often (and one line per new finding at once);
    /// the --metrics file is rewritten as often.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    status_every: Duration,
}

/// What a campaign reports while it runs, besides the terminal's progress line: plain
/// timestamped status lines when stderr is not a terminal, and the `--metrics` file.
struct StatusOut {
    plain: bool,
    metrics: Option<PathBuf>,
    host: String,
    every: Duration,
    last: Option<std::time::Instant>,
}

impl StatusOut {
    /// Report `s` if a status period has passed since the last report (or `force`).
    fn tick(&mut self, s: &Summary, force: bool) {
        if !force && self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let now = xsave_runner::stamp::unix_now();
        if self.plain {
            eprintln!("{}", xsave_reports::status::status_line(now, s));
        }
        if let Err(e) = self.write_metrics(s, now) {
            eprintln!("xsave-rig: {e:#}");
        }
    }

    fn write_metrics(&self, s: &Summary, now: f64) -> Result<()> {
        let Some(p) = &self.metrics else { return Ok(()) };
        let text = xsave_reports::status::metrics(s, &self.host, now);
        xsave_runner::store::write_atomic(p, text.as_bytes()).with_context(|| format!("cannot write --metrics {}", p.display()))
    }
}

/// Run the command; returns the exit status.
pub fn run(args: Args) -> Result<i32> {
    let Args {
        backend,
        oracle,
        iterations,
        duration,
        seed,
        workdir,
        resume,
        json,
        minimize_budget,
        narrow_cpuid,
        no_feedback,
        no_guest,
        no_fpu,
        jobs,
        worker,
        hub,
        metrics,
        status_every,
    } = args;
    let (mut be, host, fingerprint) = open_backend(&backend, &oracle)?;
    let model = model_config(&oracle, &host)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).context("cannot install signal handler")?;
    }
    // One owner per workdir: the campaign (the parent of a parallel one) holds
    // WORKDIR/lock; each worker holds WORKDIR/workers/<k>/lock.
    let mut _locks = Vec::new();
    let mut stored = None;
    if worker.is_none() {
        if resume && !workdir.join("campaign.json").exists() && !workdir.join("workers").exists() {
            check_resume(&workdir, resume, &be.name(), &model, seed, jobs)?;
        }
        std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
        _locks.push(lock_workdir(&workdir.join("lock"), &workdir, Duration::ZERO, &stop)?);
        stored = check_resume(&workdir, resume, &be.name(), &model, seed, jobs)?;
        // Workers of an earlier run (their parent killed) may still be finishing:
        // wait for them before touching the shared directories.
        if let Ok(d) = std::fs::read_dir(workdir.join("workers")) {
            for e in d.flatten().filter(|e| e.path().is_dir()) {
                lock_workdir(&e.path().join("lock"), &workdir, Duration::from_secs(30), &stop)?;
            }
        }
        for line in campaign::recover(&workdir) {
            eprintln!("xsave-rig: {}", escape(&line));
        }
    }
    // Totals for the campaign: as given, else as stored (on resume), else 10000 cases.
    let (iterations, duration) = match (iterations, duration, &stored) {
        (None, None, Some(old)) => (old.iterations, old.duration_secs.map(Duration::from_secs_f64)),
        (i, d, _) => (i, d),
    };
    let (iterations, duration) = match (iterations, duration) {
        (None, None) => (Some(10_000), None),
        (i, d) => (i, d),
    };
    // Given, else the stored campaign's (on resume), else a fresh one from the OS.
    let seed = match (seed, &stored) {
        (Some(s), _) => s,
        (None, Some(old)) => old.seed,
        (None, None) => campaign::random_seed().context("cannot draw a random seed from /dev/urandom")?,
    };
    std::fs::create_dir_all(&workdir).with_context(|| format!("cannot create {}", workdir.display()))?;
    let fp_path = workdir.join("host.json");
    if !fp_path.exists() {
        xsave_runner::store::write_atomic(&fp_path, &serde_json::to_vec_pretty(&fingerprint)?)
            .with_context(|| format!("cannot write {}", fp_path.display()))?;
    }
    let mut sync = match worker {
        None => crate::cmd::hub::start_fuzz_sync(&hub, &workdir, &fingerprint, &be.name(), &host, &model, jobs <= 1)?,
        Some(_) => None,
    };
    let inbox = sync.as_mut().and_then(|s| s.inbox.take());
    // The host id stamped on stats.jsonl and the metrics: the hub's, else derived from the
    // fingerprint the workdir was started with (the same for every worker of --jobs).
    let stored_fp: serde_json::Value =
        std::fs::read(&fp_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_else(|| fingerprint.clone());
    let host_id = xsave_runner::stamp::host_id(&workdir, &stored_fp);
    let plain = !std::io::stderr().is_terminal();
    let status = StatusOut { plain: plain && worker.is_none(), metrics, host: host_id.clone(), every: status_every, last: None };
    if worker.is_none() {
        // A --metrics path that cannot be written fails now, not at the first period.
        let mut first = stored.clone().unwrap_or_default();
        first.backend = be.name();
        first.rules_total = xsave_oracle::coverage::rule_count();
        status.write_metrics(&first, xsave_runner::stamp::unix_now())?;
    }
    if jobs > 1 && worker.is_none() {
        let mut main = stored.unwrap_or_else(|| Summary {
            backend: be.name(),
            contract: model.contract.name().to_string(),
            quirks: quirk_list(&model.quirks),
            seed,
            jobs: Some(jobs),
            corpus_order: Some(campaign::corpus_names(&workdir.join("corpus"))),
            ..Summary::default()
        });
        main.iterations = iterations;
        main.duration_secs = duration.map(|d| d.as_secs_f64());
        let state = workdir.join("campaign.json");
        xsave_runner::store::write_atomic(&state, &serde_json::to_vec_pretty(&main)?)
            .with_context(|| format!("cannot write {}", state.display()))?;
        // The workers open backends of their own (a lab guest each).
        drop(be);
        let code = run_jobs(jobs, &workdir, json, &stop, oracle.host_facts.is_none(), &main, status);
        if let Some(s) = sync {
            eprintln!("{}", crate::cmd::hub::summary_line(&s.finish()));
        }
        return code;
    }
    let worker = match worker.as_deref().map(jobs::parse_worker) {
        None => None,
        Some(Some((k, n))) if k < n => {
            jobs::die_with_parent();
            let dir = workdir.join("workers").join(k.to_string());
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            _locks.push(lock_workdir(&dir.join("lock"), &workdir, Duration::from_secs(30), &stop)?);
            Some((k, n))
        }
        Some(_) => bail!("--worker takes K/N with K < N"),
    };
    let tty = !plain && !json;
    let status = std::rc::Rc::new(std::cell::RefCell::new(status));
    let ticker = std::rc::Rc::clone(&status);
    let progress: Option<campaign::Progress> = Some(Box::new(move |s: &Summary| {
        if tty {
            eprint!(
                "\r[{:>6.0}s] execs {:>9}  {:>7.0}/s  rules {}/{}  corpus {:>5}  divergent {:>6}  findings {:>4}   ",
                s.seconds, s.execs, s.execs_per_sec, s.rules_covered, s.rules_total, s.corpus, s.divergent_cases, s.findings
            )
        }
        ticker.borrow_mut().tick(s, false);
    }));
    // Not a terminal: each new finding is a plain line the moment it is found (by the
    // parent of --jobs workers, which sees the shared findings/).
    let on_finding: Option<campaign::FindingNote> = if plain && worker.is_none() {
        Some(Box::new(|d: &xsave_oracle::verdict::Divergence| {
            eprintln!("{}", xsave_reports::status::finding_line(xsave_runner::stamp::unix_now(), d))
        }))
    } else {
        None
    };
    let total = iterations;
    // A parallel campaign's workers start from the corpus view the parent recorded.
    let initial_corpus = match worker {
        Some(_) => campaign::load_state(&workdir.join("campaign.json"))?.corpus_order,
        None => None,
    };
    let cfg = CampaignConfig {
        initial_corpus,
        seed,
        iterations: match (total, worker) {
            (Some(t), Some((k, n))) => Some(t.saturating_sub(k).div_ceil(n)),
            (t, _) => t,
        },
        duration,
        workdir: Some(workdir),
        resume,
        model,
        stop,
        progress,
        minimize_budget,
        narrow_cpuid,
        feedback: !no_feedback,
        stop_on_class: None,
        worker,
        guest: !no_guest,
        fpu: !no_fpu,
        inbox,
        host_id: Some(host_id),
        on_finding,
    };
    let s = campaign::run(be.as_mut(), cfg);
    let hub_stats = sync.map(|x| x.finish());
    let s = s?;
    if tty {
        eprintln!();
    }
    status.borrow_mut().tick(&s, true);
    let code = exit_status(&s);
    if json {
        let mut v = serde_json::to_value(&s)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("corpus_order");
            o.remove("own_signatures");
        }
        v["exit_status"] = serde_json::json!(code);
        if let Some(h) = &hub_stats {
            v["hub"] = serde_json::to_value(h)?;
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print_summary(&s);
        if let Some(h) = &hub_stats {
            println!("{}", crate::cmd::hub::summary_line(h));
        }
        println!("{}", result_line(&s, code));
    }
    Ok(code)
}

/// `fuzz --jobs N`: this command N times as workers ([`jobs::run`]), sharing the workdir;
/// prints the merged summary. Exit status as for one campaign.
fn run_jobs(
    jobs: u64,
    workdir: &Path,
    json: bool,
    stop: &AtomicBool,
    pass_host: bool,
    main: &Summary,
    mut status: StatusOut,
) -> Result<i32> {
    let exe = std::env::current_exe().context("cannot find own executable")?;
    let host_json = workdir.join("host.json");
    let host_facts = (pass_host && host_json.exists()).then_some(host_json.as_path());
    let args = jobs::worker_args(std::env::args().skip(1), main, host_facts);
    let tty = std::io::stderr().is_terminal() && !json;
    let mut seen: std::collections::BTreeSet<String> = jobs::finding_names(workdir).into_iter().collect();
    let mut show = |p: &jobs::Progress| {
        let secs = p.elapsed.as_secs_f64();
        if tty {
            eprint!(
                "\r[{:>6.0}s] {jobs} workers  execs {:>9}  {:>7.0}/s  findings {:>4}   ",
                secs,
                p.execs,
                p.execs as f64 / secs.max(1e-3),
                p.findings
            );
        }
        show_new_findings(&status, &mut seen, workdir);
        if status.last.is_none_or(|t| t.elapsed() >= status.every) {
            status.tick(&jobs::current(workdir, jobs), true);
        }
    };
    let total = jobs::run(&exe, &args, jobs, workdir, main, stop, Some(&mut show));
    if tty {
        eprintln!();
    }
    let total = total?;
    status.tick(&total, true);
    let code = exit_status(&total);
    if json {
        let mut v = serde_json::to_value(&total)?;
        if let Some(o) = v.as_object_mut() {
            o.remove("corpus_order");
        }
        v["exit_status"] = serde_json::json!(code);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("workers          {jobs}");
        print_summary(&total);
        println!("{}", result_line(&total, code));
    }
    Ok(code)
}

/// `fuzz --jobs N` with stderr not a terminal: the workers share findings/, so the parent
/// names each new one once (a plain line from its verdict.json).
fn show_new_findings(status: &StatusOut, seen: &mut std::collections::BTreeSet<String>, workdir: &Path) {
    if !status.plain {
        return;
    }
    for name in jobs::finding_names(workdir) {
        if seen.insert(name.clone()) {
            let now = xsave_runner::stamp::unix_now();
            let line = xsave_reports::status::finding_line_of_dir(now, &workdir.join("findings").join(&name));
            eprintln!("{}", line.unwrap_or_else(|| format!("{} finding {name}", xsave_runner::stamp::rfc3339(now))));
        }
    }
}

/// `fuzz`'s exit status: 130 if interrupted (SIGINT/SIGTERM), else 1 with new findings, else 0.
pub fn exit_status(s: &Summary) -> i32 {
    if s.interrupted {
        130
    } else if s.new_signatures.is_empty() {
        0
    } else {
        1
    }
}

/// The summary's last line: what the exit status means.
pub fn result_line(s: &Summary, code: i32) -> String {
    let n = s.new_signatures.len();
    let found = match n {
        0 => "no new findings".to_string(),
        1 => "1 new finding".to_string(),
        n => format!("{n} new findings"),
    };
    if code == 130 {
        format!("result           interrupted, {found} (exit 130)")
    } else {
        format!("result           {found} (exit {code})")
    }
}

/// `fuzz --resume` must find a campaign in `workdir` run the same way (backend, contract,
/// quirks, seed if given, jobs); without `--resume` a stored campaign is refused. Returns the
/// stored state (checked against its schema) when resuming.
pub fn check_resume(
    workdir: &Path,
    resume: bool,
    backend: &str,
    model: &ModelConfig,
    seed: Option<u64>,
    jobs: u64,
) -> Result<Option<Summary>> {
    let main = workdir.join("campaign.json");
    let worker0 = workdir.join("workers").join("0").join("campaign.json");
    let state = [&main, &worker0].into_iter().find(|p| p.exists());
    let Some(state) = state else {
        if resume {
            bail!("--resume: {} holds no campaign to continue (no {})", workdir.display(), main.display());
        }
        return Ok(None);
    };
    if !resume {
        bail!("{} holds a campaign: pass --resume to continue it, or use another --workdir", workdir.display());
    }
    let old = campaign::load_state(state)?;
    let w = workdir.display();
    // `kvm` and `kvm(fresh)` (--no-pool) run the same kernel.
    let base = |b: &str| b.trim_end_matches("(fresh)").to_string();
    if base(&old.backend) != base(backend) {
        bail!("--resume: the campaign in {w} ran backend {}, not {backend}", old.backend);
    }
    if old.contract != model.contract.name() {
        bail!("--resume: the campaign in {w} ran contract {}, not {}", old.contract, model.contract.name());
    }
    let quirks = quirk_list(&model.quirks);
    if old.quirks != quirks {
        bail!("--resume: the campaign in {w} ran quirks [{}], not [{}]", old.quirks.join(", "), quirks.join(", "));
    }
    if let Some(seed) = seed.filter(|s| *s != old.seed) {
        bail!("--resume: the campaign in {w} ran seed {}, not {seed}", old.seed);
    }
    let old_jobs = if state == &worker0 { old.jobs.unwrap_or(2) } else { old.jobs.unwrap_or(1) };
    if state == &main && old_jobs != jobs {
        bail!("--resume: the campaign in {w} ran --jobs {old_jobs}, not {jobs}");
    }
    Ok(Some(old))
}

/// Take the lock at `path` (waiting up to `wait`), or fail with one line naming the holder.
pub fn lock_workdir(path: &Path, workdir: &Path, wait: Duration, stop: &AtomicBool) -> Result<xsave_runner::store::Lock> {
    match xsave_runner::store::lock_waiting(path, wait, stop).with_context(|| format!("cannot lock {}", path.display()))? {
        Ok(l) => Ok(l),
        Err(holder) => bail!("{} is in use by {holder} (lock {}); wait for it or use another --workdir", workdir.display(), path.display()),
    }
}

pub fn print_summary(s: &Summary) {
    if !s.groups.is_empty() {
        println!("groups           {} (one per violated rule, ioctl and class)", s.groups.len());
        for g in &s.groups {
            println!("  {}", g.title);
            println!("    key {}  cases {}", g.key, g.cases);
            if let (Some(f), Some(l)) = (g.first_seen, g.last_seen) {
                println!("    first seen {}  last seen {}", f.text(), l.text());
            }
            if let Some((sig, n)) = &g.smallest {
                println!("    smallest reproducer {sig} ({n} steps)");
            }
            for sig in &g.signatures {
                match s.signature_hits.get(sig) {
                    Some(h) => println!("      {sig}  hits {}  first {}  last {}", h.hits, h.first_seen.text(), h.last_seen.text()),
                    None => println!("      {sig}"),
                }
            }
        }
    }
    println!("backend          {}", s.backend);
    println!("oracle           {} quirks [{}]", s.contract, s.quirks.join(", "));
    println!("seed             {}", s.seed);
    println!("execs            {}{}", s.execs, if s.resumed { " (resumed)" } else { "" });
    println!("execs/s          {:.0}", s.execs_per_sec);
    println!("divergent cases  {}", s.divergent_cases);
    if s.guest_runs > 0 {
        let exits: Vec<String> = s.guest_exits.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("guest runs       {} ({})", s.guest_runs, exits.join(", "));
    }
    if s.agree_unpredicted > 0 {
        println!("agree, partly    {} (cases that agree but left host-owned bytes unpredicted)", s.agree_unpredicted);
    }
    for (c, n) in &s.by_class {
        println!("  {c:<15} {n}");
    }
    if s.explained_by_quirk > 0 {
        println!("  explained by a host quirk: {}", s.explained_by_quirk);
    }
    println!("findings         {} ({} new, {} known issues)", s.findings, s.new_signatures.len(), s.known_signatures.len());
    if s.known_issue_cases > 0 {
        println!("  known issues (not new): {} cases", s.known_issue_cases);
    }
    if s.corpus > 0 {
        println!(
            "contract rules   {}/{} reached, {} coverage points, corpus {}",
            s.rules_covered, s.rules_total, s.coverage_points, s.corpus
        );
    }
    if s.minimize_pending > 0 {
        println!("minimization     {} findings still raw (minimized by --resume)", s.minimize_pending);
    }
    if s.interrupted {
        println!("interrupted      yes (state saved; continue with --resume)");
    }
}
