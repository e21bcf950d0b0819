//! # xsave-hub
//!
//! The fleet hub: what many fuzzing hosts share, kept in PostgreSQL. Each host fuzzes its own
//! kernel; the hub holds the hosts' fingerprints, a content-addressed corpus, the findings by
//! signature with their per-host/kernel occurrences, and campaign heartbeats.
//!
//! Delivery is exactly-once by construction: the workdir is the outbox (corpus entries and
//! findings are files written atomically by the campaign; heartbeats are spooled to
//! `WORKDIR/hub/outbox/`), every push is one transaction of idempotent upserts keyed by
//! content hash, signature+host+campaign, or heartbeat sequence, and `WORKDIR/hub/ledger.json`
//! (written atomically after the commit) records what was delivered. A push repeated after a
//! crash between commit and ledger changes nothing in the hub.
//!
//! Access is enforced in the database: writers insert, update only the rows of hosts their
//! role owns (row-level security on `hosts.owner = current_user`) and delete nothing; readers
//! select. Every statement with a value in it is parameterised; role names are quoted by the
//! server (`format('%I')`).

#![forbid(unsafe_code)]

pub mod fleet;
pub mod schema;
pub mod sync;

use postgres::{Client, NoTls};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use schema::SCHEMA_VERSION;

/// Hub errors: one line each, never holding the URL's password.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The database refused or failed a request.
    #[error("hub {url}: {msg}")]
    Db {
        /// The URL, password redacted.
        url: String,
        /// What failed.
        msg: String,
    },
    /// A bad argument or state.
    #[error("{0}")]
    Invalid(String),
    /// Workdir I/O.
    #[error("{path}: {err}")]
    Io {
        /// Path.
        path: PathBuf,
        /// Error.
        err: std::io::Error,
    },
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HubError + '_ {
    move |err| HubError::Io { path: path.to_path_buf(), err }
}

/// `url` with any password replaced by `***` (URL form `scheme://user:pass@…` and
/// key/value form `password=…`).
pub fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (auth, tail) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if let Some((cred, host)) = auth.rsplit_once('@') {
            let user = cred.split_once(':').map_or(cred, |(u, _)| u);
            let pw = if cred.contains(':') { ":***" } else { "" };
            let tail = redact_query(tail);
            return format!("{scheme}://{user}{pw}@{host}{tail}");
        }
        return format!("{scheme}://{}{}", auth, redact_query(tail));
    }
    url.split_whitespace()
        .map(|kv| if kv.to_ascii_lowercase().starts_with("password=") { "password=***".to_string() } else { kv.to_string() })
        .collect::<Vec<_>>()
        .join(" ")
}

fn redact_query(tail: &str) -> String {
    match tail.split_once('?') {
        None => tail.to_string(),
        Some((path, q)) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| if kv.to_ascii_lowercase().starts_with("password=") { "password=***".to_string() } else { kv.to_string() })
                .collect();
            format!("{path}?{}", q.join("&"))
        }
    }
}

/// A connection to a hub.
pub struct Hub {
    /// The client.
    pub client: Client,
    /// The URL, redacted (for messages).
    pub url: String,
}

/// One line for a database error: the server's message (with its detail) or the client's.
pub fn pg_msg(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => match d.detail() {
            Some(det) => format!("{}: {} ({det})", d.severity(), d.message()),
            None => format!("{}: {}", d.severity(), d.message()),
        },
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(x) = src {
                s.push_str(&format!(": {x}"));
                src = x.source();
            }
            s.replace('\n', " ")
        }
    }
}

impl Hub {
    /// Connect (5 s connect timeout, 60 s statement timeout).
    pub fn connect(url: &str) -> Result<Hub, HubError> {
        let shown = redact(url);
        let mut cfg: postgres::Config =
            url.parse().map_err(|e: postgres::Error| HubError::Invalid(format!("bad hub URL {shown}: {}", pg_msg(&e))))?;
        cfg.connect_timeout(Duration::from_secs(5));
        cfg.application_name("xsave-rig");
        cfg.options("-c statement_timeout=60000");
        let client = cfg.connect(NoTls).map_err(|e| HubError::Db { url: shown.clone(), msg: pg_msg(&e) })?;
        Ok(Hub { client, url: shown })
    }

    /// Check that `url` parses as a PostgreSQL URL (without connecting).
    pub fn check_url(url: &str) -> Result<(), HubError> {
        url.parse::<postgres::Config>().map(|_| ()).map_err(|e| HubError::Invalid(format!("bad hub URL {}: {}", redact(url), pg_msg(&e))))
    }

    /// A database error on this hub.
    pub fn err(&self, e: postgres::Error) -> HubError {
        HubError::Db { url: self.url.clone(), msg: pg_msg(&e) }
    }

    /// Fail unless the hub holds this build's schema version.
    pub fn check_schema(&mut self) -> Result<(), HubError> {
        let v = schema::version(&mut self.client).map_err(|e| self.err(e))?;
        match v {
            Some(v) if v == SCHEMA_VERSION => Ok(()),
            Some(v) => Err(HubError::Invalid(format!(
                "hub {}: schema version {v}, this build uses {SCHEMA_VERSION} (run `xsave-rig hub init` with a matching build)",
                self.url
            ))),
            None => Err(HubError::Invalid(format!("hub {}: no xsave-rig schema (run `xsave-rig hub init` first)", self.url))),
        }
    }
}

/// SHA-256 of `bytes`, lowercase hex: the hub's content address of a case.
pub fn sha256_hex(bytes: &[u8]) -> String {
    xsave_oracle::hexnum::to_hex(&Sha256::digest(bytes))
}

/// A finding row as `hub findings --json` lists it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct FindingRow {
    /// Signature.
    pub signature: String,
    /// Class.
    pub class: String,
    /// One-line title.
    pub title: String,
    /// Hosts it occurred on.
    pub hosts: Vec<String>,
    /// Kernel releases it occurred on.
    pub kernels: Vec<String>,
    /// Diverging cases with this signature over the fleet.
    pub count: i64,
    /// First seen (UTC, RFC 3339).
    pub first_seen: String,
    /// Last seen (UTC, RFC 3339).
    pub last_seen: String,
}

pub(crate) const TS: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS"Z"'"#;

/// Every finding with its hosts, kernels, count and times, by signature.
pub fn findings(hub: &mut Hub) -> Result<Vec<FindingRow>, HubError> {
    let q = format!(
        "SELECT f.signature, f.class, f.title,
                coalesce(array_agg(DISTINCT o.host_id) FILTER (WHERE o.host_id IS NOT NULL), '{{}}'),
                coalesce(array_agg(DISTINCT o.kernel) FILTER (WHERE o.kernel IS NOT NULL), '{{}}'),
                coalesce(sum(o.count), 0)::bigint,
                to_char(coalesce(min(o.first_seen), f.first_seen) AT TIME ZONE 'UTC', {TS}),
                to_char(coalesce(max(o.last_seen), f.first_seen) AT TIME ZONE 'UTC', {TS})
         FROM findings f LEFT JOIN occurrences o ON o.signature = f.signature
         GROUP BY f.signature ORDER BY f.signature"
    );
    let rows = hub.client.query(&q, &[]).map_err(|e| hub.err(e))?;
    Ok(rows
        .iter()
        .map(|r| FindingRow {
            signature: r.get(0),
            class: r.get(1),
            title: r.get(2),
            hosts: r.get(3),
            kernels: r.get(4),
            count: r.get(5),
            first_seen: r.get(6),
            last_seen: r.get(7),
        })
        .collect())
}

/// One host in `hub status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct HostRow {
    /// Host id.
    pub host_id: String,
    /// Kernel release.
    pub kernel: String,
    /// Contract.
    pub contract: String,
    /// Quirks.
    pub quirks: Vec<String>,
    /// Backend.
    pub backend: String,
    /// Seconds since it last synced.
    pub last_seen_secs_ago: f64,
    /// Alive: synced within the alive window.
    pub alive: bool,
    /// Execs of its latest heartbeat (summed over its campaigns).
    pub execs: i64,
    /// Exec rate of its latest heartbeat (summed over its campaigns).
    pub execs_per_sec: f64,
}

/// `hub status`: hosts, fleet exec rate, corpus size, findings.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    /// Schema version.
    pub schema_version: i32,
    /// Hosts.
    pub hosts: Vec<HostRow>,
    /// Hosts alive.
    pub hosts_alive: usize,
    /// Sum of the alive hosts' exec rates.
    pub fleet_execs_per_sec: f64,
    /// Cases in the shared corpus.
    pub corpus: i64,
    /// Distinct signatures.
    pub findings: i64,
    /// Kernels seen.
    pub kernels: Vec<String>,
}

/// `hub status`, with hosts alive when seen within `alive` seconds.
pub fn status(hub: &mut Hub, alive: f64) -> Result<Status, HubError> {
    hub.check_schema()?;
    let rows = hub
        .client
        .query(
            "SELECT h.host_id, h.kernel, h.contract, h.quirks, h.backend,
                    extract(epoch FROM now() - h.last_seen)::float8,
                    coalesce((SELECT sum(b.execs)::bigint FROM heartbeats b WHERE b.host_id = h.host_id
                              AND b.seq = (SELECT max(c.seq) FROM heartbeats c WHERE c.host_id = h.host_id AND c.campaign = b.campaign)), 0),
                    coalesce((SELECT sum(b.execs_per_sec) FROM heartbeats b WHERE b.host_id = h.host_id
                              AND b.seq = (SELECT max(c.seq) FROM heartbeats c WHERE c.host_id = h.host_id AND c.campaign = b.campaign)
                              AND b.at > now() - make_interval(secs => $1)), 0)::float8
             FROM hosts h ORDER BY h.host_id",
            &[&alive],
        )
        .map_err(|e| hub.err(e))?;
    let hosts: Vec<HostRow> = rows
        .iter()
        .map(|r| {
            let ago: f64 = r.get(5);
            HostRow {
                host_id: r.get(0),
                kernel: r.get(1),
                contract: r.get(2),
                quirks: r.get(3),
                backend: r.get(4),
                last_seen_secs_ago: ago,
                alive: ago <= alive,
                execs: r.get(6),
                execs_per_sec: r.get(7),
            }
        })
        .collect();
    let corpus: i64 = hub.client.query_one("SELECT count(*) FROM cases", &[]).map_err(|e| hub.err(e))?.get(0);
    let findings: i64 = hub.client.query_one("SELECT count(*) FROM findings", &[]).map_err(|e| hub.err(e))?.get(0);
    let mut kernels: Vec<String> = hosts.iter().map(|h| h.kernel.clone()).collect();
    kernels.sort();
    kernels.dedup();
    Ok(Status {
        schema_version: SCHEMA_VERSION,
        hosts_alive: hosts.iter().filter(|h| h.alive).count(),
        fleet_execs_per_sec: hosts.iter().filter(|h| h.alive).map(|h| h.execs_per_sec).sum::<f64>() + 0.0,
        hosts,
        corpus,
        findings,
        kernels,
    })
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:pw@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("postgres://h/db?user=u&password=pw"), "postgres://h/db?user=u&password=***");
        assert_eq!(redact("host=h user=u password=pw"), "host=h user=u password=***");
        assert_eq!(redact("postgres://u:p@ss@h/db"), "postgres://u:***@h/db");
    }
}
