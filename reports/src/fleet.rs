//! The fleet report (`xsave-rig report --hub URL`): the hub's hosts, findings by signature
//! (hosts, kernels, counts, first and last seen), the signatures × kernels matrix and per-host
//! campaign plots from the heartbeats, as JSON, Markdown, SARIF 2.1.0 and one self-contained
//! HTML page (inline SVG, no external assets).

use crate::render::{esc, plot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use xsave_hub::fleet::{Cell, Fleet};

/// `report.json` of a fleet.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FleetReport {
    /// Schema of this file.
    pub schema: String,
    /// The hub, its password redacted.
    pub hub: String,
    /// When the report was made (UTC, RFC 3339).
    pub generated_at: String,
    /// The rig that made it.
    pub generated_by: String,
    /// What the hub holds.
    #[serde(flatten)]
    pub fleet: Fleet,
}

impl FleetReport {
    /// A report of `fleet`, read from the hub at `hub` (already redacted).
    pub fn new(hub: &str, fleet: Fleet) -> FleetReport {
        FleetReport {
            schema: "xsave-rig-fleet-report/1".into(),
            hub: hub.to_string(),
            generated_at: xsave_runner::stamp::rfc3339(xsave_runner::stamp::unix_now()),
            generated_by: format!("xsave-rig {}", env!("CARGO_PKG_VERSION")),
            fleet,
        }
    }

    /// The matrix cell of (`signature`, `kernel`), if that kernel showed it.
    pub fn cell(&self, signature: &str, kernel: &str) -> Option<&Cell> {
        self.fleet.cells.iter().find(|c| c.signature == signature && c.kernel == kernel)
    }
}

/// The fleet in one sentence (numbers only, so the same text serves Markdown and HTML).
fn headline(f: &xsave_hub::fleet::Fleet) -> String {
    format!(
        "{} hosts ({} alive), fleet rate {:.0} execs/s, corpus {}, {} findings.",
        f.status.hosts.len(),
        f.status.hosts_alive,
        f.status.fleet_execs_per_sec,
        f.status.corpus,
        f.findings.len()
    )
}

/// `report.md` of a fleet.
pub fn markdown(r: &FleetReport) -> String {
    let f = &r.fleet;
    let mut o = String::new();
    let _ = writeln!(o, "# xsave-rig fleet report\n\nHub `{}`, {}; {}.\n", r.hub, r.generated_at, r.generated_by);
    let _ = writeln!(o, "{}\n", headline(f));
    let _ = writeln!(o, "## Hosts\n\n| host | kernel | contract | quirks | state | execs | execs/s |\n|---|---|---|---|---|---|---|");
    for h in &f.status.hosts {
        let _ = writeln!(
            o,
            "| `{}` | {} | {} | {} | {} | {} | {:.0} |",
            h.host_id,
            h.kernel,
            h.contract,
            h.quirks.join(", "),
            if h.alive { "alive" } else { "gone" },
            h.execs,
            h.execs_per_sec
        );
    }
    let _ = writeln!(o, "\n## Signatures × kernels\n\nDiverging cases per kernel, with the hosts that saw them; `-` where no host on that kernel showed it.\n");
    let _ = writeln!(o, "| signature | {} |\n|---|{}", f.kernels.join(" | "), "---|".repeat(f.kernels.len()));
    for row in &f.findings {
        let cells: Vec<String> = f
            .kernels
            .iter()
            .map(|k| r.cell(&row.signature, k).map_or("-".to_string(), |c| format!("{} ({})", c.count, c.hosts.join(", "))))
            .collect();
        let _ = writeln!(o, "| `{}` | {} |", row.signature, cells.join(" | "));
    }
    let _ = writeln!(o, "\n## Findings\n\n| signature | class | title | hosts | kernels | count | first seen | last seen |\n|---|---|---|---|---|---|---|---|");
    for row in &f.findings {
        let _ = writeln!(
            o,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            row.signature,
            row.class,
            row.title.replace('|', "\\|"),
            row.hosts.join(", "),
            row.kernels.join(", "),
            row.count,
            row.first_seen,
            row.last_seen
        );
    }
    o
}

/// `report.sarif` of a fleet: one result per signature (rule: its class), with the hosts,
/// kernels, count and first/last seen as properties and each kernel as a logical location.
pub fn sarif(r: &FleetReport) -> serde_json::Value {
    let f = &r.fleet;
    let mut classes: Vec<&str> = f.findings.iter().map(|x| x.class.as_str()).collect();
    classes.sort();
    classes.dedup();
    let rules: Vec<serde_json::Value> = classes
        .iter()
        .map(|c| {
            serde_json::json!({
                "id": format!("xsave-rig/{c}"),
                "name": format!("divergence-{c}"),
                "shortDescription": { "text": format!("KVM XSAVE ABI divergence of class {c}") },
                "defaultConfiguration": { "level": "error" }
            })
        })
        .collect();
    let results: Vec<serde_json::Value> = f
        .findings
        .iter()
        .map(|x| {
            serde_json::json!({
                "ruleId": format!("xsave-rig/{}", x.class),
                "ruleIndex": classes.iter().position(|c| *c == x.class).unwrap_or(0),
                "level": "error",
                "message": { "text": x.title },
                "locations": x.kernels.iter().map(|k| serde_json::json!({ "logicalLocations": [{ "name": k, "kind": "module" }] })).collect::<Vec<_>>(),
                "partialFingerprints": { "xsaveRigSignature/v1": x.signature },
                "properties": { "signature": x.signature, "class": x.class, "hosts": x.hosts, "kernels": x.kernels, "count": x.count, "firstSeen": x.first_seen, "lastSeen": x.last_seen }
            })
        })
        .collect();
    serde_json::json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": { "name": "xsave-rig", "version": env!("CARGO_PKG_VERSION"), "informationUri": "https://www.kernel.org/doc/html/latest/virt/kvm/api.html", "rules": rules } },
            "automationDetails": { "id": "xsave-rig/fleet/" },
            "results": results,
            "properties": { "hub": r.hub, "kernels": f.kernels, "hosts": f.status.hosts.iter().map(|h| &h.host_id).collect::<Vec<_>>() }
        }]
    })
}

/// `report.html` of a fleet: one self-contained page.
pub fn html(r: &FleetReport) -> String {
    let f = &r.fleet;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>xsave-rig fleet report</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}} h1{{margin-top:0}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}}
th{{background:#f0f0f5}} code{{font-family:ui-monospace,monospace;font-size:12px}}
table.matrix td.hit{{background:#f8d7d3;text-align:center;font-weight:bold}} table.matrix td.clean{{background:#e3f4e3;text-align:center;color:#686}}
table.matrix small{{font-weight:normal;color:#555}} .plots{{display:flex;gap:16px;flex-wrap:wrap}}
</style></head><body><h1>xsave-rig fleet report</h1><p>Hub <code>{}</code>, {}.</p>"#,
        esc(&r.hub),
        esc(&r.generated_at)
    );
    let _ = write!(o, "<p>{}</p>", headline(f));
    let _ = write!(o, "<h2>Hosts</h2><table class=\"hosts\"><tr><th>host</th><th>kernel</th><th>contract</th><th>quirks</th><th>state</th><th>execs</th><th>execs/s</th></tr>");
    for h in &f.status.hosts {
        let _ = write!(
            o,
            "<tr><td><a href=\"#host-{id}\"><code>{id}</code></a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
            esc(&h.kernel),
            esc(&h.contract),
            esc(&h.quirks.join(", ")),
            if h.alive { "alive" } else { "gone" },
            h.execs,
            h.execs_per_sec,
            id = esc(&h.host_id)
        );
    }
    let _ = write!(o, "</table>");
    let _ = write!(
        o,
        "<h2>Signatures × kernels</h2><p>Each row a signature, each column a kernel release: a red cell gives the diverging cases on that kernel and the hosts that saw them; a green cell means no host on that kernel showed it.</p><table class=\"matrix\"><tr><th>signature</th><th>class</th>"
    );
    for k in &f.kernels {
        let _ = write!(o, "<th>{}</th>", esc(k));
    }
    let _ = write!(o, "</tr>");
    for row in &f.findings {
        let _ = write!(o, "<tr><td><a href=\"#sig-{s}\"><code>{s}</code></a></td><td>{}</td>", esc(&row.class), s = esc(&row.signature));
        for k in &f.kernels {
            match r.cell(&row.signature, k) {
                Some(c) => {
                    let _ = write!(
                        o,
                        "<td class=\"hit\" data-sig=\"{}\" data-kernel=\"{}\" data-count=\"{}\" data-hosts=\"{}\" title=\"{}\">{}<br><small>{} host{}</small></td>",
                        esc(&c.signature),
                        esc(k),
                        c.count,
                        esc(&c.hosts.join(" ")),
                        esc(&format!("{}; first {} last {}", c.hosts.join(", "), c.first_seen, c.last_seen)),
                        c.count,
                        c.hosts.len(),
                        if c.hosts.len() == 1 { "" } else { "s" }
                    );
                }
                None => {
                    let _ = write!(o, "<td class=\"clean\" data-sig=\"{}\" data-kernel=\"{}\">–</td>", esc(&row.signature), esc(k));
                }
            }
        }
        let _ = write!(o, "</tr>");
    }
    let _ = write!(o, "</table>");
    let _ = write!(o, "<h2>Findings ({})</h2><table class=\"findings\"><tr><th>signature</th><th>class</th><th>title</th><th>hosts</th><th>kernels</th><th>count</th><th>first seen</th><th>last seen</th></tr>", f.findings.len());
    for row in &f.findings {
        let _ = write!(
            o,
            "<tr id=\"sig-{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&row.signature),
            esc(&row.signature),
            esc(&row.class),
            esc(&row.title),
            esc(&row.hosts.join(", ")),
            esc(&row.kernels.join(", ")),
            row.count,
            esc(&row.first_seen),
            esc(&row.last_seen)
        );
    }
    let _ = write!(o, "</table><h2>Campaigns</h2>");
    let mut by_host: BTreeMap<&str, Vec<&xsave_hub::fleet::Series>> = BTreeMap::new();
    for s in &f.series {
        by_host.entry(s.host_id.as_str()).or_default().push(s);
    }
    for (host, series) in by_host {
        let _ = write!(o, "<section class=\"host\" id=\"host-{h}\"><h3>{h}</h3>", h = esc(host));
        for s in series {
            let t0 = s.beats.first().map_or(0.0, |b| b.at);
            let xs: Vec<f64> = s.beats.iter().map(|b| b.at - t0).collect();
            let _ = write!(
                o,
                "<p>campaign <code>{}</code>: {} heartbeats from {}</p><div class=\"plots\">{}{}</div>",
                esc(&s.campaign),
                s.beats.len(),
                esc(&xsave_runner::stamp::rfc3339(t0)),
                plot("execs", &xs, &s.beats.iter().map(|b| b.execs as f64).collect::<Vec<_>>(), "#8e44ad"),
                plot("execs/s", &xs, &s.beats.iter().map(|b| b.execs_per_sec).collect::<Vec<_>>(), "#2a6fdb")
            );
        }
        let _ = write!(o, "</section>");
    }
    let _ = write!(o, "<p>Generated by {}.</p></body></html>", esc(&r.generated_by));
    o
}
