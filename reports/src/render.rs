//! Renderings of a [`Report`]: Markdown, SARIF 2.1.0 and one self-contained HTML page.

use crate::report::{xsave_regions, FindingReport, Report};
use std::fmt::Write;
use xsave_oracle::hexnum::to_hex;
use xsave_oracle::verdict::Class;

/// A number for people: integers as they are, other values rounded to 2 decimals (whole
/// numbers from 1000 on).
fn num(n: &serde_json::Number) -> String {
    match (n.as_u64(), n.as_i64(), n.as_f64()) {
        (Some(u), _, _) => u.to_string(),
        (_, Some(i), _) => i.to_string(),
        (_, _, Some(f)) if f.abs() >= 1000.0 => format!("{f:.0}"),
        (_, _, Some(f)) => {
            let t = format!("{f:.2}");
            let t = t.trim_end_matches('0').trim_end_matches('.');
            if t.is_empty() || t == "-" {
                "0".into()
            } else {
                t.to_string()
            }
        }
        _ => n.to_string(),
    }
}

/// A JSON value as readable text: strings bare, numbers rounded, lists comma-separated,
/// objects as `key: value` pairs.
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(x) => x.clone(),
        serde_json::Value::Number(n) => num(n),
        serde_json::Value::Null => "?".into(),
        serde_json::Value::Bool(b) => b.to_string(),
        serde_json::Value::Array(a) if a.is_empty() => "none".into(),
        serde_json::Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        serde_json::Value::Object(m) if m.is_empty() => "none".into(),
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| format!("{k}: {}", text(v))).collect::<Vec<_>>().join(", "),
    }
}

/// Field `k` of `v` as readable text ([`text`]); `?` when absent.
fn s(v: &serde_json::Value, k: &str) -> String {
    v.get(k).map_or_else(|| "?".into(), text)
}

/// Field `k` of `v` as an HTML table cell body: nested objects become `key: value` lists.
fn cell(v: &serde_json::Value, k: &str) -> String {
    match v.get(k) {
        Some(serde_json::Value::Object(m)) if !m.is_empty() => {
            let items: String = m.iter().map(|(k, v)| format!("<li>{}: {}</li>", esc(k), esc(&text(v)))).collect();
            format!("<ul class=\"kv\">{items}</ul>")
        }
        _ => esc(&s(v, k)),
    }
}

fn is_xsave(f: &FindingReport) -> bool {
    f.divergence.op.starts_with("KVM_GET_XSAVE") && f.expected_data.len() >= 576 && f.expected_data.len() == f.observed_data.len()
}

/// `report.md`.
pub fn markdown(r: &Report) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# xsave-rig report\n");
    let _ = writeln!(o, "| host | |\n|---|---|");
    for k in ["kernel_release", "kvm_module", "contract", "supported_xcr0", "xsave_size"] {
        let _ = writeln!(o, "| {k} | {} |", s(&r.host, k));
    }
    let _ = writeln!(o, "| quirks | {} |\n", s(&r.host, "quirks"));
    let _ = writeln!(o, "| campaign | |\n|---|---|");
    for k in ["backend", "contract", "quirks", "seed", "execs", "execs_per_sec", "divergent_cases", "findings", "seconds"] {
        let _ = writeln!(o, "| {k} | {} |", s(&r.campaign, k));
    }
    let groups = r.groups();
    let hits = r.signature_hits();
    if !groups.is_empty() {
        let _ = writeln!(o, "\n## Root causes ({})\n", groups.len());
        let _ = writeln!(o, "One group per violated contract rule, ioctl and class; its signatures (symptoms) below it.\n");
        let _ = writeln!(o, "| root cause | rule | hits | first seen | last seen | signatures (hits) |\n|---|---|---|---|---|---|");
        for g in &groups {
            let sigs = g
                .signatures
                .iter()
                .map(|s| format!("[`{s}`](#{s}){}", hits.get(s).map(|h| format!(" ({})", h.hits)).unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(", ");
            let (first, last) = seen_cells(g);
            let _ = writeln!(o, "| {} | `{}` | {} | {first} | {last} | {sigs} |", g.title, g.rule, g.cases);
        }
    }
    let _ = writeln!(o, "\n## Findings ({})\n", r.findings.len());
    let host = r.host_facts();
    for f in &r.findings {
        let d = &f.divergence;
        let _ = writeln!(o, "### {}\n", d.title);
        if let Some(g) = crate::report::group_of(&groups, &f.signature) {
            let _ = writeln!(o, "- root cause: {} (group `{}`)", g.title, g.key);
        }
        if let Some(h) = hits.get(&f.signature) {
            let _ = writeln!(o, "- hits: {}, first seen {}, last seen {}", h.hits, h.first_seen.text(), h.last_seen.text());
        }
        let _ = writeln!(
            o,
            "- signature `{}`, class `{}` (symptom `{}`), judged under {} with quirks [{}]",
            f.signature,
            d.class.name(),
            d.symptom_class.name(),
            d.contract,
            d.quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")
        );
        let _ = writeln!(
            o,
            "- first divergence at step {} ({}): `{}` returned {} where {} was expected",
            d.step, d.origin, d.op, d.observed_ret, d.expected_ret
        );
        if let Some(q) = d.explained_by {
            let _ = writeln!(o, "- explained by host quirk `{}`", q.name());
        }
        if f.unreproduced {
            let _ = writeln!(
                o,
                "- **unreproduced**: the case did not diverge again when it was written (nondeterministic); kept as found, not minimized"
            );
        }
        if let Some(k) = d.known_issue.as_deref().and_then(xsave_oracle::known::by_id) {
            let _ = writeln!(o, "- **known issue `{}`** (not new): {} — {}", k.id, k.title, k.reference);
        }
        if f.minimize.is_none() && !f.unreproduced {
            let _ = writeln!(o, "- not minimized yet: the case as found (the campaign, or its `--resume`, minimizes it)");
        }
        if let Some(m) = &f.minimize {
            let _ = writeln!(
                o,
                "- minimized from {} to {} steps ({} to {} bytes)",
                s(m, "steps_before"),
                s(m, "steps_after"),
                s(m, "bytes_before"),
                s(m, "bytes_after")
            );
        }
        let _ = writeln!(o, "- rules: {}\n", d.rules.iter().map(|r| format!("`{}`", r.id())).collect::<Vec<_>>().join(", "));
        let _ = writeln!(o, "| step | origin | ioctl | expected | observed |\n|---|---|---|---|---|");
        for st in &f.steps {
            let mark = if st.index == d.step { " **←**" } else { "" };
            let _ = writeln!(o, "| {} | {} | {} | {} | {}{mark} |", st.index, st.origin, st.op, st.expected, st.observed);
        }
        let rows = match (&host, is_xsave(f)) {
            (Some(h), true) => xsave_regions(h, &f.expected_data, &f.observed_data),
            _ => d.bytes.clone(),
        };
        if !rows.is_empty() {
            let _ = writeln!(o, "\n| region | bytes | expected | observed |\n|---|---|---|---|");
            for b in rows {
                let _ = writeln!(
                    o,
                    "| {} | {}..{} | `{}` | `{}` |",
                    b.region,
                    b.start,
                    b.end,
                    trunc(&to_hex(&b.expected)),
                    trunc(&to_hex(&b.observed))
                );
            }
        }
        if !f.guest_runs.is_empty() {
            let _ = writeln!(
                o,
                "\n#### Guest runs\n\nHow each run ended and what the guest saw (its own XSAVE image), apart from the GETs' bytes above.\n"
            );
            let _ = writeln!(o, "| step | exit expected | exit observed | guest's image |\n|---|---|---|---|");
            for g in &f.guest_runs {
                let _ = writeln!(o, "| {} | {} | {} | {} |", g.step, g.expected_exit, g.observed_exit, guest_image(g));
            }
            for g in f.guest_runs.iter().filter(|g| !g.regions.is_empty()) {
                let _ = writeln!(
                    o,
                    "\nStep {}: the guest's image, by region\n\n| region | bytes | expected | observed |\n|---|---|---|---|",
                    g.step
                );
                for b in &g.regions {
                    let (e, ob) = (trunc(&to_hex(&b.expected)), trunc(&to_hex(&b.observed)));
                    let _ = writeln!(o, "| {} | {}..{} | `{e}` | `{ob}` |", b.region, b.start, b.end);
                }
            }
        }
        let _ =
            writeln!(o, "\nMinimized case (`xsave-rig replay findings/{}/case.bin`):\n\n```json\n{}\n```\n", f.signature, f.case.to_json());
    }
    for sk in &r.skipped {
        let _ = writeln!(o, "- skipped: {sk}");
    }
    o
}

/// A group's first and last hit as text (`?` in states written before hits were timed).
fn seen_cells(g: &xsave_runner::campaign::Group) -> (String, String) {
    let t = |s: Option<xsave_runner::campaign::Seen>| s.map_or_else(|| "?".to_string(), |s| s.text());
    (t(g.first_seen), t(g.last_seen))
}

/// A guest run's image in a few words: none stored, a length difference, the regions that
/// differ, or as predicted.
fn guest_image(g: &crate::report::GuestRunView) -> String {
    let differing = g.regions.iter().filter(|b| b.expected != b.observed).count();
    match (g.expected_len, g.observed_len) {
        (0, 0) => "none stored".into(),
        (e, o) if e != o => format!("{o} bytes, expected {e}"),
        _ if differing > 0 => format!("{differing} regions differ"),
        (e, _) => format!("{e} bytes as predicted"),
    }
}

fn trunc(h: &str) -> String {
    if h.len() > 64 {
        format!("{}…", &h[..64])
    } else {
        h.to_string()
    }
}

const CLASSES: &[Class] = &[
    Class::Errno,
    Class::Header,
    Class::LegacyArea,
    Class::ComponentData,
    Class::Pkru,
    Class::Size,
    Class::HiddenState,
    Class::CpuidConfig,
    Class::Xcr0,
    Class::GuestView,
    Class::KernelSplat,
];

fn class_help(c: Class) -> &'static str {
    match c {
        Class::Errno => {
            "An XSAVE ioctl succeeded or failed differently from the contract (e.g. SET rejecting guest-unsupported host features)."
        }
        Class::Header => "GET reported a different XSTATE_BV, XCOMP_BV or reserved header bytes (masked save).",
        Class::LegacyArea => "GET's legacy area (x87 fields, MXCSR, padding, sw_reserved) differs from the contract.",
        Class::ComponentData => "Extended component bytes differ (stale data, gap zeroing, layout).",
        Class::Pkru => "PKRU value or its pad bytes differ.",
        Class::Size => "Bytes written, KVM_CAP_XSAVE2 or buffer size rules differ.",
        Class::HiddenState => "State accepted while masked did (not) reappear after a CPUID change.",
        Class::CpuidConfig => "KVM_SET_CPUID2/KVM_GET_CPUID2 handling or guest_supported_xcr0 derivation differs.",
        Class::Xcr0 => "XCR0 value or KVM_SET_XCRS rules differ.",
        Class::GuestView => "What the guest itself saw differs: how its run ended, or its own XSAVE image of the state KVM loaded.",
        Class::KernelSplat => "The kernel logged a WARN, BUG, KASAN/UBSAN report or a kvm error while the case ran.",
    }
}

/// The SARIF rule id of a finding: the contract rule it violates (its root cause), else
/// `class/<class>` for divergences no rule explains.
fn sarif_rule_id(f: &FindingReport) -> String {
    f.divergence.violated.map_or_else(|| format!("class/{}", f.divergence.class.name()), |r| r.id().to_string())
}

/// `report.sarif` (SARIF 2.1.0): one rule per violated contract rule (root cause), one result
/// per finding under it; a run category per host and kernel (`runAutomationDetails`), so uploads
/// from several hosts do not replace each other; artifact URIs relative to `WORKDIR`.
pub fn sarif(r: &Report) -> serde_json::Value {
    let mut ids: Vec<String> = r.findings.iter().map(sarif_rule_id).collect();
    ids.sort();
    ids.dedup();
    let rules: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| match xsave_oracle::rules::Rule::from_id(id) {
            Some(rule) => serde_json::json!({
                "id": id,
                "name": id,
                "shortDescription": { "text": format!("KVM XSAVE ABI: violates contract rule {id}") },
                "fullDescription": { "text": rule.describe() },
                "help": { "text": format!("Contract rule {id} (kvm-xsave-contract.md {}): {}. Replay a finding with `xsave-rig replay findings/<signature>/case.bin`; `xsave-rig repro --c` writes a standalone C reproducer.", rule.spec(), rule.describe()) },
                "defaultConfiguration": { "level": "error" }
            }),
            None => {
                let class = id.trim_start_matches("class/");
                let help = CLASSES.iter().find(|c| c.name() == class).map_or("", |c| class_help(*c));
                serde_json::json!({
                    "id": id,
                    "name": id,
                    "shortDescription": { "text": format!("KVM XSAVE ABI divergence: {class}") },
                    "fullDescription": { "text": help },
                    "help": { "text": format!("No single contract rule explains it. {help}") },
                    "defaultConfiguration": { "level": "error" }
                })
            }
        })
        .collect();
    let results: Vec<serde_json::Value> = r
        .findings
        .iter()
        .map(|f| {
            let d = &f.divergence;
            let id = sarif_rule_id(f);
            serde_json::json!({
                "ruleId": id,
                "ruleIndex": ids.iter().position(|i| *i == id).unwrap_or(0),
                "level": if d.explained_by.is_some() || d.known_issue.is_some() { "note" } else { "error" },
                "message": { "text": d.title },
                "locations": [{
                    "physicalLocation": { "artifactLocation": { "uri": format!("findings/{}/case.json", f.signature), "uriBaseId": "WORKDIR" }, "region": { "startLine": 1 } },
                    "logicalLocations": [{ "name": d.op, "kind": "function" }]
                }],
                "partialFingerprints": { "xsaveRigSignature/v1": f.signature, "xsaveRigGroup/v1": d.group_key() },
                "properties": { "signature": f.signature, "class": d.class.name(), "group": d.group_key(), "step": d.step, "contract": d.contract, "quirks": d.quirks, "explainedBy": d.explained_by, "knownIssue": d.known_issue }
            })
        })
        .collect();
    let host_part = |k: &str| r.host.get(k).and_then(|v| v.as_str()).unwrap_or("unknown").replace('/', "_");
    let backend = r.campaign.get("backend").and_then(|v| v.as_str()).unwrap_or("unknown").replace('/', "_");
    let category = format!("xsave-rig/{}/{}/{backend}/", host_part("kvm_module"), host_part("kernel_release"));
    let workdir = if r.workdir.ends_with('/') { r.workdir.clone() } else { format!("{}/", r.workdir) };
    serde_json::json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": { "name": "xsave-rig", "version": env!("CARGO_PKG_VERSION"), "informationUri": "https://www.kernel.org/doc/html/latest/virt/kvm/api.html", "rules": rules } },
            "automationDetails": { "id": category },
            "invocations": [{
                "executionSuccessful": !r.campaign.get("interrupted").and_then(|v| v.as_bool()).unwrap_or(false),
                "properties": {
                    "backend": r.campaign.get("backend"), "contract": r.campaign.get("contract"), "quirks": r.campaign.get("quirks"),
                    "seed": r.campaign.get("seed"), "execs": r.campaign.get("execs"), "seconds": r.campaign.get("seconds")
                }
            }],
            "originalUriBaseIds": { "WORKDIR": { "uri": format!("file://{workdir}") } },
            "results": results,
            "properties": { "host": r.host.get("kernel_release").cloned().unwrap_or(serde_json::Value::Null) }
        }]
    })
}

/// One byte-region table (region, byte range, expected and observed bytes; differing rows
/// marked): the GETs' XSAVE diff and each guest run's image use it.
fn region_table(o: &mut String, rows: &[xsave_oracle::verdict::ByteDiff]) {
    let _ = write!(o, "<table><tr><th>region</th><th>bytes</th><th>expected</th><th>observed</th></tr>");
    for b in rows {
        let cls = if b.expected == b.observed { "same" } else { "diff" };
        let _ = write!(
            o,
            "<tr class=\"{cls}\"><td>{}</td><td>{}..{}</td><td class=\"exp hex\">{}</td><td class=\"obs hex\">{}</td></tr>",
            esc(&b.region),
            b.start,
            b.end,
            to_hex(&b.expected),
            to_hex(&b.observed)
        );
    }
    let _ = write!(o, "</table>");
}

pub(crate) fn esc(t: &str) -> String {
    t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An SVG line plot of `ys` against `xs`.
pub(crate) fn plot(title: &str, xs: &[f64], ys: &[f64], color: &str) -> String {
    let (w, h, pad) = (560.0, 180.0, 36.0);
    let xmax = xs.iter().cloned().fold(1e-9, f64::max);
    let ymax = ys.iter().cloned().fold(1e-9, f64::max);
    let pts: Vec<String> = xs
        .iter()
        .zip(ys)
        .map(|(x, y)| format!("{:.1},{:.1}", pad + x / xmax * (w - 2.0 * pad), h - pad - y / ymax * (h - 2.0 * pad)))
        .collect();
    format!(
        r##"<figure><svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" aria-label="{t}"><rect width="{w}" height="{h}" fill="#fbfbfd"/><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" stroke="#888"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{b}" stroke="#888"/><polyline fill="none" stroke="{color}" stroke-width="2" points="{p}"/><text x="{pad}" y="14" font-size="12">{t} (max {ymax:.0})</text><text x="{r}" y="{bt}" font-size="11" text-anchor="end">{xmax:.0} s</text></svg></figure>"##,
        t = esc(title),
        b = h - pad,
        r = w - pad,
        bt = h - 8.0,
        p = pts.join(" ")
    )
}

/// `report.html`: one self-contained page (no network).
pub fn html(r: &Report) -> String {
    let mut o = String::new();
    let host = r.host_facts();
    let _ = write!(
        o,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>xsave-rig report</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}} h1{{margin-top:0}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top;font-size:13px}}
th{{background:#f0f0f5}} code,.hex{{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}}
.diff td.exp{{background:#e6ffe6}} .diff td.obs{{background:#ffe6e6}} .same td.exp,.same td.obs{{background:#fff}}
.finding{{border:1px solid #bbb;border-radius:6px;padding:12px;margin:16px 0}} .cls{{display:inline-block;background:#335;color:#fff;border-radius:4px;padding:1px 6px;font-size:12px}}
.plots{{display:flex;gap:16px;flex-wrap:wrap}} .mark{{font-weight:bold;color:#b00}} ul.kv{{margin:0;padding-left:16px}}
</style></head><body><h1>xsave-rig report</h1>"#
    );
    let _ = write!(o, "<h2>Host</h2><table>");
    for k in ["kernel_release", "kvm_module", "contract", "supported_xcr0", "host_xcr0", "xsave_size", "mxcsr_mask"] {
        let _ = write!(o, "<tr><th>{k}</th><td>{}</td></tr>", cell(&r.host, k));
    }
    let _ = write!(o, "<tr><th>quirks modelled</th><td>{}</td></tr></table>", cell(&r.campaign, "quirks"));
    let _ = write!(o, "<h2>Campaign</h2><table>");
    for k in ["backend", "contract", "seed", "execs", "execs_per_sec", "divergent_cases", "findings", "seconds", "by_class"] {
        let _ = write!(o, "<tr><th>{k}</th><td>{}</td></tr>", cell(&r.campaign, k));
    }
    let _ = write!(o, "</table>");
    let xs: Vec<f64> = r.stats.iter().map(|p| p.seconds).collect();
    let _ = write!(
        o,
        "<div class=\"plots\">{}{}{}</div>",
        plot("execs/s", &xs, &r.stats.iter().map(|p| p.execs_per_sec).collect::<Vec<_>>(), "#2a6fdb"),
        plot("findings", &xs, &r.stats.iter().map(|p| p.findings as f64).collect::<Vec<_>>(), "#c0392b"),
        plot("contract rules reached", &xs, &r.stats.iter().map(|p| p.rules_covered as f64).collect::<Vec<_>>(), "#27ae60")
    );
    let groups = r.groups();
    let hits = r.signature_hits();
    if !groups.is_empty() {
        let _ = write!(
            o,
            "<h2>Root causes ({})</h2><table><tr><th>root cause</th><th>rule</th><th>hits</th><th>first seen</th><th>last seen</th><th>signatures (hits)</th></tr>",
            groups.len()
        );
        for g in &groups {
            let sigs: String = g
                .signatures
                .iter()
                .map(|s| {
                    let n = hits.get(s).map(|h| format!(" ({})", h.hits)).unwrap_or_default();
                    format!("<a href=\"#{0}\"><code>{0}</code></a>{n} ", esc(s))
                })
                .collect();
            let (first, last) = seen_cells(g);
            let _ = write!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{sigs}</td></tr>",
                esc(&g.title),
                esc(&g.rule),
                g.cases,
                esc(&first),
                esc(&last)
            );
        }
        let _ = write!(o, "</table>");
    }
    let _ = write!(o, "<h2>Findings ({})</h2>", r.findings.len());
    for f in &r.findings {
        let d = &f.divergence;
        let _ = write!(o, "<section class=\"finding\" id=\"{sig}\"><h3>{}</h3><p><span class=\"cls\">{}</span> <code>{sig}</code> — judged under {} with quirks [{}]{}</p>", esc(&d.title), d.class.name(), esc(&d.contract), esc(&d.quirks.iter().map(|q| q.name()).collect::<Vec<_>>().join(", ")), d.explained_by.map(|q| format!("; explained by host quirk <b>{}</b>", q.name())).unwrap_or_default() + &d.known_issue.as_deref().map(|k| format!("; <b>known issue {}</b> (not new)", esc(k))).unwrap_or_default(), sig = esc(&f.signature));
        if let Some(h) = hits.get(&f.signature) {
            let _ = write!(o, "<p>hits {}, first seen {}, last seen {}</p>", h.hits, esc(&h.first_seen.text()), esc(&h.last_seen.text()));
        }
        let _ = write!(o, "<table><tr><th>step</th><th>origin</th><th>ioctl</th><th>expected</th><th>observed</th></tr>");
        for st in &f.steps {
            let mark = if st.index == d.step { " class=\"mark\"" } else { "" };
            let _ = write!(
                o,
                "<tr{mark}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                st.index,
                esc(&st.origin),
                esc(&st.op),
                esc(&st.expected),
                esc(&st.observed)
            );
        }
        let _ = write!(o, "</table>");
        let rows = match (&host, is_xsave(f)) {
            (Some(h), true) => xsave_regions(h, &f.expected_data, &f.observed_data),
            _ => d.bytes.clone(),
        };
        if !rows.is_empty() {
            region_table(&mut o, &rows);
        }
        if !f.guest_runs.is_empty() {
            let _ = write!(o, "<h4>Guest runs</h4><table class=\"guest\"><tr><th>step</th><th>exit expected</th><th>exit observed</th><th>guest's image</th></tr>");
            for g in &f.guest_runs {
                let mark = if g.expected_exit != g.observed_exit { " class=\"mark\"" } else { "" };
                let _ = write!(
                    o,
                    "<tr{mark}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    g.step,
                    esc(&g.expected_exit),
                    esc(&g.observed_exit),
                    esc(&guest_image(g))
                );
            }
            let _ = write!(o, "</table>");
            for g in f.guest_runs.iter().filter(|g| !g.regions.is_empty()) {
                let _ = write!(o, "<p>Step {}: the guest's image, by region</p>", g.step);
                region_table(&mut o, &g.regions);
            }
        }
        let _ =
            write!(o, "<details><summary>minimized case</summary><pre><code>{}</code></pre></details></section>", esc(&f.case.to_json()));
    }
    if !r.skipped.is_empty() {
        let _ = write!(o, "<h2>Skipped files</h2><ul>");
        for sk in &r.skipped {
            let _ = write!(o, "<li>{}</li>", esc(sk));
        }
        let _ = write!(o, "</ul>");
    }
    let _ = write!(o, "<p>Generated by {}.</p></body></html>", esc(&r.generated_by));
    o
}
