//! What a running campaign tells its operator when nobody watches a terminal: one plain,
//! timestamped line per new finding and a periodic status line (for journald and CI logs),
//! and a Prometheus textfile-collector file (`fuzz --metrics FILE`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use xsave_oracle::verdict::Divergence;
use xsave_runner::campaign::Summary;
use xsave_runner::stamp::rfc3339;
use xsave_runner::store::escape;

/// `<time> finding <signature> [<class>] <title>`: one line per new signature.
pub fn finding_line(unix: f64, d: &Divergence) -> String {
    let known = d.known_issue.as_deref().map(|k| format!(" (known issue {k})")).unwrap_or_default();
    format!("{} finding {} [{}] {}{known}", rfc3339(unix), d.signature, d.class.name(), escape(&d.title))
}

/// The [`finding_line`] of the finding stored in `dir` (`findings/<signature>/`), read from
/// its `verdict.json`; `None` when it holds no readable divergence.
pub fn finding_line_of_dir(unix: f64, dir: &std::path::Path) -> Option<String> {
    let bytes = xsave_runner::store::read_bounded(&dir.join("verdict.json"), xsave_runner::store::caps::JSON).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    match serde_json::from_value(v.get("verdict")?.clone()).ok()? {
        xsave_oracle::verdict::Verdict::Diverge(d) => Some(finding_line(unix, &d)),
        xsave_oracle::verdict::Verdict::Agree => None,
    }
}

/// `<time> status execs N rate R/s rules C/T points P corpus K findings F`: the periodic line.
pub fn status_line(unix: f64, s: &Summary) -> String {
    format!(
        "{} status execs {} rate {:.0}/s rules {}/{} points {} corpus {} findings {} divergent {}",
        rfc3339(unix),
        s.execs,
        s.execs_per_sec,
        s.rules_covered,
        s.rules_total,
        s.coverage_points,
        s.corpus,
        s.findings,
        s.divergent_cases
    )
}

/// A label value in the Prometheus text format: backslash, double quote and newline escaped.
pub fn label_value(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// Distinct signatures by class, from the summary's groups (each signature counted once).
pub fn findings_by_class(s: &Summary) -> BTreeMap<String, usize> {
    let mut by: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for g in &s.groups {
        by.entry(g.class.clone()).or_default().extend(g.signatures.iter().map(String::as_str));
    }
    by.into_iter().map(|(c, sigs)| (c, sigs.len())).collect()
}

/// The Prometheus text exposition (version 0.0.4) of a campaign's state, for the textfile
/// collector: every family with `# HELP` and `# TYPE`, every sample labelled with `host` and
/// `backend` (and `class` for the per-class families), at `unix` seconds.
pub fn metrics(s: &Summary, host: &str, unix: f64) -> String {
    let base = format!("host=\"{}\",backend=\"{}\"", label_value(host), label_value(&s.backend));
    let mut o = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for (extra, v) in samples {
            let _ = writeln!(o, "{name}{{{base}{extra}}} {v}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    let class = |c: &str| format!(",class=\"{}\"", label_value(c));
    family("xsave_rig_execs_total", "counter", "Cases executed by the campaign (all sessions).", &one(s.execs.to_string()));
    family("xsave_rig_exec_rate", "gauge", "Cases per second over the last status period.", &one(format!("{:.3}", s.execs_per_sec)));
    family("xsave_rig_rules_covered", "gauge", "Contract rules reached by the campaign.", &one(s.rules_covered.to_string()));
    family("xsave_rig_rules_total", "gauge", "Contract rules there are to reach.", &one(s.rules_total.to_string()));
    family("xsave_rig_coverage_points", "gauge", "Contract coverage points reached.", &one(s.coverage_points.to_string()));
    family("xsave_rig_corpus_cases", "gauge", "Cases in the campaign's corpus.", &one(s.corpus.to_string()));
    family("xsave_rig_findings", "gauge", "Distinct findings (signatures) in the workdir.", &one(s.findings.to_string()));
    let by: Vec<(String, String)> = findings_by_class(s).iter().map(|(c, n)| (class(c), n.to_string())).collect();
    family("xsave_rig_findings_by_class", "gauge", "Distinct findings (signatures) by divergence class.", &by);
    let cases: Vec<(String, String)> = s.by_class.iter().map(|(c, n)| (class(c), n.to_string())).collect();
    family("xsave_rig_divergent_cases_total", "counter", "Diverging cases by divergence class (duplicates included).", &cases);
    family("xsave_rig_last_update_seconds", "gauge", "When this file was written (Unix time).", &one(format!("{unix:.3}")));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(label_value("x\ny"), "x\\ny");
    }

    #[test]
    fn findings_by_class_counts_each_signature_once() {
        let g = |class: &str, sigs: &[&str]| xsave_runner::campaign::Group {
            class: class.into(),
            signatures: sigs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let s = Summary { groups: vec![g("errno", &["a", "b"]), g("errno", &["b", "c"]), g("header", &["d"])], ..Summary::default() };
        let by = findings_by_class(&s);
        assert_eq!(by.get("errno"), Some(&3));
        assert_eq!(by.get("header"), Some(&1));
    }
}
