//! `xsave-rig hub …` and the hub options of `fuzz`: the fleet hub on PostgreSQL.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;
use xsave_hub::sync::{self, Identity, Ledger, PointsCtx, SyncConfig, SyncStats, Syncer};
use xsave_hub::Hub;
use xsave_oracle::{Case, HostFacts, ModelConfig};

/// The hub URL: `--url`, else `XSAVE_RIG_HUB` (its value is never shown in help or messages).
#[derive(clap::Args, Clone)]
pub struct UrlArg {
    /// PostgreSQL URL of the hub, e.g. postgres://user:pass@127.0.0.1:5432/xsave (default:
    /// $XSAVE_RIG_HUB). Messages show it with the password replaced by ***.
    #[arg(long, env = "XSAVE_RIG_HUB", hide_env_values = true)]
    url: String,
}

/// `fuzz` options for syncing with a hub.
#[derive(clap::Args, Clone)]
pub struct FuzzHubArgs {
    /// Sync with this fleet hub while fuzzing (default: $XSAVE_RIG_HUB if set): push new
    /// corpus entries, findings and heartbeats, pull other hosts' corpus entries. A hub that
    /// is down never stops the campaign; results wait in WORKDIR/hub/ and arrive once.
    #[arg(long, env = "XSAVE_RIG_HUB", hide_env_values = true)]
    hub: Option<String>,
    /// Time between syncs, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = crate::args::parse_duration)]
    hub_interval: Duration,
    /// This host's id in the hub (default: <hostname>-<hash of the fingerprint>, kept in
    /// WORKDIR/hub/identity.json).
    #[arg(long)]
    hub_host: Option<String>,
}

#[derive(Subcommand)]
pub enum HubCmd {
    /// Create or migrate the hub's schema (and with --roles, its writer and reader roles).
    Init {
        #[command(flatten)]
        url: UrlArg,
        /// Also create the group roles: a writer (fuzzing hosts: insert, update only their own
        /// hosts' rows, delete nothing) and a reader (triage: select only).
        #[arg(long)]
        roles: bool,
        /// Name of the writer group role.
        #[arg(long, default_value = "xsave_writer")]
        writer_role: String,
        /// Name of the reader group role.
        #[arg(long, default_value = "xsave_reader")]
        reader_role: String,
    },
    /// Create a login role in the writer or reader group (password from
    /// $XSAVE_RIG_HUB_NEW_PASSWORD when set; none otherwise, e.g. for peer or trust auth).
    AddLogin {
        #[command(flatten)]
        url: UrlArg,
        /// The login role's name.
        login: String,
        /// The group: the writer or reader role created by `hub init --roles`.
        #[arg(long = "in", default_value = "xsave_writer")]
        group: String,
    },
    /// Push a campaign workdir's corpus, findings and a heartbeat (what it has not sent yet).
    Push {
        #[command(flatten)]
        url: UrlArg,
        /// The campaign's workdir.
        workdir: PathBuf,
        /// This host's id (default: the one the workdir used, or <hostname>-<fingerprint hash>).
        #[arg(long)]
        host: Option<String>,
    },
    /// Pull the hub's corpus into a directory (validated like `corpus unpack`; bad entries
    /// are named and skipped).
    Pull {
        #[command(flatten)]
        url: UrlArg,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// The fleet: hosts alive, their kernels and contracts, fleet exec rate, corpus size.
    Status {
        #[command(flatten)]
        url: UrlArg,
        /// A host is alive when it synced within this long.
        #[arg(long, default_value = "2m", value_parser = crate::args::parse_duration)]
        alive: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Signatures by kernel: which kernels show each divergence and which do not.
    Findings {
        #[command(flatten)]
        url: UrlArg,
        /// Print a JSON list of {signature, class, title, hosts, kernels, count, first_seen, last_seen}.
        #[arg(long)]
        json: bool,
    },
}

/// Run a `hub` subcommand.
pub fn run(cmd: HubCmd) -> Result<i32> {
    match cmd {
        HubCmd::Init { url, roles, writer_role, reader_role } => {
            let mut hub = Hub::connect(&url.url)?;
            let r = xsave_hub::schema::init(&mut hub, roles.then_some((writer_role.as_str(), reader_role.as_str())))?;
            if r.from == r.to {
                println!("hub {}: schema version {} (up to date)", hub.url, r.to);
            } else if r.from == 0 {
                println!("hub {}: schema version {} created", hub.url, r.to);
            } else {
                println!("hub {}: schema migrated from version {} to {}", hub.url, r.from, r.to);
            }
            if let Some((w, rd)) = r.roles {
                println!("roles: writer {w}, reader {rd} (add logins with `xsave-rig hub add-login NAME --in ROLE`)");
            }
            Ok(0)
        }
        HubCmd::AddLogin { url, login, group } => {
            let mut hub = Hub::connect(&url.url)?;
            let pw = std::env::var("XSAVE_RIG_HUB_NEW_PASSWORD").ok().filter(|p| !p.is_empty());
            let created = xsave_hub::schema::add_login(&mut hub, &login, &group, pw.as_deref())?;
            println!(
                "login {login} {} in {group}{}",
                if created { "created" } else { "exists; granted" },
                if pw.is_some() { " (password set)" } else { "" }
            );
            Ok(0)
        }
        HubCmd::Push { url, workdir, host } => {
            let fp_path = workdir.join("host.json");
            let fp: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&fp_path).with_context(|| format!("{}: not a campaign workdir (no host.json)", workdir.display()))?,
            )
            .with_context(|| format!("{}: not JSON", fp_path.display()))?;
            let backend = sync_backend(&workdir);
            let id = Identity::for_workdir(&workdir, &fp, &backend, host.as_deref())?;
            let ctx = PointsCtx::from_workdir(&workdir)?;
            let mut hub = Hub::connect(&url.url)?;
            hub.check_schema()?;
            sync::spool_heartbeat(&workdir)?;
            let mut ledger = Ledger::load(&workdir)?;
            let st = sync::push(&mut hub, &workdir, &id, &ctx, &mut ledger)?;
            for l in &st.local_skipped {
                eprintln!("xsave-rig: not sent (not a valid case): {l}");
            }
            println!(
                "pushed to {} as host {}: {} corpus entries, {} findings, {} occurrence counts, {} heartbeats",
                hub.url, id.host_id, st.cases, st.findings, st.occurrences, st.heartbeats
            );
            Ok(0)
        }
        HubCmd::Pull { url, output } => {
            let mut hub = Hub::connect(&url.url)?;
            hub.check_schema()?;
            let mut ledger = Ledger::default();
            let mut n = 0;
            let mut skipped = Vec::new();
            loop {
                let before = ledger.cursor;
                let (cases, sk) = sync::pull(&mut hub, None, &output, &mut ledger)?;
                n += cases.len();
                skipped.extend(sk);
                if ledger.cursor == before {
                    break;
                }
            }
            for s in &skipped {
                eprintln!("xsave-rig: skipped {s}");
            }
            println!("pulled {n} cases into {} ({} skipped)", output.display(), skipped.len());
            Ok(0)
        }
        HubCmd::Status { url, alive, json } => {
            let mut hub = Hub::connect(&url.url)?;
            let s = xsave_hub::status(&mut hub, alive.as_secs_f64())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(0);
            }
            println!("hub              {} (schema {})", hub.url, s.schema_version);
            println!("hosts            {} ({} alive)", s.hosts.len(), s.hosts_alive);
            println!("kernels          {}", s.kernels.join(", "));
            println!("fleet execs/s    {:.0}", s.fleet_execs_per_sec);
            println!("corpus           {}", s.corpus);
            println!("findings         {}", s.findings);
            for h in &s.hosts {
                println!(
                    "  {:<28} {:<5} kernel {:<24} contract {:<4} {:>8.0}/s  execs {:>10}  seen {:.0}s ago{}",
                    h.host_id,
                    if h.alive { "alive" } else { "gone" },
                    h.kernel,
                    h.contract,
                    h.execs_per_sec,
                    h.execs,
                    h.last_seen_secs_ago,
                    if h.quirks.is_empty() { String::new() } else { format!("  quirks {}", h.quirks.join(",")) }
                );
            }
            Ok(0)
        }
        HubCmd::Findings { url, json } => {
            let mut hub = Hub::connect(&url.url)?;
            hub.check_schema()?;
            let rows = xsave_hub::findings(&mut hub)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(0);
            }
            let st = xsave_hub::status(&mut hub, 120.0)?;
            print_matrix(&rows, &st.kernels);
            Ok(0)
        }
    }
}

/// Signatures × kernels: the count on each kernel that showed it, `-` where none did.
fn print_matrix(rows: &[xsave_hub::FindingRow], kernels: &[String]) {
    if rows.is_empty() {
        println!("no findings in the hub");
        return;
    }
    let w = kernels.iter().map(|k| k.len()).max().unwrap_or(6).max(6);
    print!("{:<32}", "signature");
    for k in kernels {
        print!(" {k:>w$}");
    }
    println!("  hosts  count  title");
    for r in rows {
        print!("{:<32}", r.signature);
        for k in kernels {
            print!(" {:>w$}", if r.kernels.contains(k) { "x" } else { "-" });
        }
        println!("  {:>5}  {:>5}  {}", r.hosts.len(), r.count, r.title);
    }
}

fn sync_backend(workdir: &Path) -> String {
    std::fs::read(workdir.join("campaign.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("backend").and_then(|b| b.as_str()).map(str::to_string))
        .unwrap_or_else(|| "unknown".into())
}

/// A running campaign's sync: the thread and the inbox the campaign polls.
pub struct FuzzSync {
    syncer: Syncer,
    /// Pulled cases for the campaign's mutation pool (with live pull).
    pub inbox: Option<Receiver<Vec<Case>>>,
}

/// Start syncing `workdir` with the hub (when `--hub` or `$XSAVE_RIG_HUB` is given). With
/// `live_pull`, pulled cases reach the campaign through the returned receiver.
#[allow(clippy::too_many_arguments)]
pub fn start_fuzz_sync(
    args: &FuzzHubArgs,
    workdir: &Path,
    fingerprint: &serde_json::Value,
    backend: &str,
    host: &HostFacts,
    model: &ModelConfig,
    live_pull: bool,
) -> Result<Option<FuzzSync>> {
    let Some(url) = args.hub.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    Hub::check_url(url)?;
    if args.hub_interval < Duration::from_millis(100) {
        bail!("--hub-interval must be at least 100ms");
    }
    let identity = Identity::for_workdir(workdir, fingerprint, backend, args.hub_host.as_deref())?;
    let (tx, rx) = if live_pull {
        let (tx, rx) = std::sync::mpsc::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let syncer = Syncer::start(SyncConfig {
        url: url.to_string(),
        workdir: workdir.to_path_buf(),
        interval: args.hub_interval,
        identity,
        ctx: PointsCtx { host: host.clone(), model: model.clone() },
        inbox: tx,
        log: Arc::new(|l: &str| eprintln!("xsave-rig: {l}")),
    });
    Ok(Some(FuzzSync { syncer, inbox: rx }))
}

impl FuzzSync {
    /// The last sync at exit (bounded), and what the sync did over the campaign.
    pub fn finish(self) -> SyncStats {
        let st = self.syncer.finish(Duration::from_secs(30));
        if !st.delivered_at_exit {
            eprintln!(
                "xsave-rig: hub: not everything was delivered at exit ({}); it waits in the workdir for the next sync or `hub push`",
                st.last_error.as_deref().unwrap_or("unknown error")
            );
        }
        st
    }
}

/// One summary line of a campaign's sync.
pub fn summary_line(st: &SyncStats) -> String {
    format!(
        "hub              host {}: {} syncs ({} failed), pushed {} corpus entries, {} findings, {} heartbeats; pulled {}, skipped {}",
        st.host_id, st.syncs, st.failures, st.pushed_cases, st.pushed_findings, st.pushed_heartbeats, st.pulled, st.skipped
    )
}
