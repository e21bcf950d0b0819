//! The fleet as one report (`xsave-rig report --hub`): hosts, findings by signature, the
//! signatures × kernels matrix and the hosts' campaign heartbeats over time. Read-only: the
//! reader role suffices; every value is a parameter.

use crate::{findings, status, FindingRow, Hub, HubError, Status, TS};
use serde::{Deserialize, Serialize};

/// One cell of the signatures × kernels matrix: a signature seen on a kernel release.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Cell {
    /// Signature.
    pub signature: String,
    /// Kernel release.
    pub kernel: String,
    /// Diverging cases with this signature on hosts running this kernel.
    pub count: i64,
    /// The hosts (sorted) that saw it on this kernel.
    pub hosts: Vec<String>,
    /// First seen on this kernel (UTC, RFC 3339).
    pub first_seen: String,
    /// Last seen on this kernel (UTC, RFC 3339).
    pub last_seen: String,
}

/// One heartbeat of a host's campaign.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Beat {
    /// When (Unix seconds).
    pub at: f64,
    /// Cases executed by the campaign so far.
    pub execs: i64,
    /// Exec rate at that time.
    pub execs_per_sec: f64,
    /// Contract rules reached.
    pub rules_covered: i32,
    /// Corpus size.
    pub corpus: i32,
    /// Findings.
    pub findings: i64,
}

/// A host's campaign as its heartbeats show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Series {
    /// Host id.
    pub host_id: String,
    /// Campaign id.
    pub campaign: String,
    /// Heartbeats, oldest first (the latest `max_beats` of the campaign).
    pub beats: Vec<Beat>,
}

/// Everything `report --hub` shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Fleet {
    /// Hosts, fleet rate, corpus size ([`status`]).
    pub status: Status,
    /// Kernel releases: the hosts' and any an occurrence was recorded under, sorted.
    pub kernels: Vec<String>,
    /// Findings by signature with hosts, kernels, counts, first and last seen.
    pub findings: Vec<FindingRow>,
    /// The matrix's non-empty cells, by signature then kernel.
    pub cells: Vec<Cell>,
    /// Campaign heartbeats, by host then campaign.
    pub series: Vec<Series>,
}

/// Read the fleet: hosts alive when seen within `alive` seconds; at most `max_beats` (the
/// latest) heartbeats per campaign.
pub fn fleet(hub: &mut Hub, alive: f64, max_beats: i64) -> Result<Fleet, HubError> {
    let status = status(hub, alive)?;
    let findings = findings(hub)?;
    let q = format!(
        "SELECT signature, kernel, sum(count)::bigint, array_agg(DISTINCT host_id ORDER BY host_id),
                to_char(min(first_seen) AT TIME ZONE 'UTC', {TS}), to_char(max(last_seen) AT TIME ZONE 'UTC', {TS})
         FROM occurrences GROUP BY signature, kernel ORDER BY signature, kernel"
    );
    let rows = hub.client.query(&q, &[]).map_err(|e| hub.err(e))?;
    let cells: Vec<Cell> = rows
        .iter()
        .map(|r| Cell {
            signature: r.get(0),
            kernel: r.get(1),
            count: r.get(2),
            hosts: r.get(3),
            first_seen: r.get(4),
            last_seen: r.get(5),
        })
        .collect();
    let rows = hub
        .client
        .query(
            "SELECT host_id, campaign, extract(epoch FROM at)::float8, execs, execs_per_sec, rules_covered, corpus, findings
             FROM (SELECT b.*, row_number() OVER (PARTITION BY host_id, campaign ORDER BY seq DESC) AS rn FROM heartbeats b) x
             WHERE rn <= $1 ORDER BY host_id, campaign, seq",
            &[&max_beats],
        )
        .map_err(|e| hub.err(e))?;
    let mut series: Vec<Series> = Vec::new();
    for r in &rows {
        let (host_id, campaign): (String, String) = (r.get(0), r.get(1));
        let beat =
            Beat { at: r.get(2), execs: r.get(3), execs_per_sec: r.get(4), rules_covered: r.get(5), corpus: r.get(6), findings: r.get(7) };
        match series.last_mut() {
            Some(s) if s.host_id == host_id && s.campaign == campaign => s.beats.push(beat),
            _ => series.push(Series { host_id, campaign, beats: vec![beat] }),
        }
    }
    let mut kernels: Vec<String> = status.kernels.iter().cloned().chain(cells.iter().map(|c| c.kernel.clone())).collect();
    kernels.sort();
    kernels.dedup();
    Ok(Fleet { status, kernels, findings, cells, series })
}
