//! `xsave-rig report`: versioned JSON, Markdown, SARIF valid against the 2.1.0 schema, and an
//! HTML page rendered by headless Chromium (screenshot plus DOM content checks). Corrupt
//! findings are reported by name, never a panic.

use xsave_testkit::{chromium, headless, sarif_results, tempdir, tool_or_skip, Rig, TempDir};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

/// Run xsave-rig; success, or (for `fuzz`) exit 1 meaning new findings.
fn rig(args: &[&str]) {
    let o = RIG.run(args);
    let ok = o.status.success() || (args[0] == "fuzz" && o.status.code() == Some(1));
    assert!(ok, "xsave-rig {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A workdir with findings (V2b model against the V3 oracle), one corrupt finding, reported.
fn reported() -> TempDir {
    let dir = tempdir();
    let wd = dir.path().to_str().expect("utf8").to_string();
    rig(&["fuzz", "--backend", "model:V2b", "--iterations", "2000", "--seed", "4", "--workdir", &wd]);
    let bad = dir.path().join("findings/errno-deadbeefdeadbeef");
    std::fs::create_dir_all(&bad).expect("mkdir");
    std::fs::write(bad.join("case.bin"), b"XSRC\x01garbage").expect("write");
    std::fs::write(bad.join("verdict.json"), b"{}").expect("write");
    rig(&["report", &wd]);
    dir
}

#[test]
fn json_and_markdown() {
    let dir = reported();
    let r = dir.path().join("report");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("report.json")).expect("json")).expect("parses");
    assert_eq!(v["schema_version"], xsave_reports::report::SCHEMA_VERSION);
    let rep: xsave_reports::report::Report = serde_json::from_value(v).expect("schema round-trips");
    assert!(!rep.findings.is_empty());
    assert_eq!(rep.skipped.len(), 1, "{:?}", rep.skipped);
    assert!(rep.skipped[0].contains("errno-deadbeefdeadbeef"), "corrupt finding named: {:?}", rep.skipped);
    let md = std::fs::read_to_string(r.join("report.md")).expect("md");
    for f in &rep.findings {
        assert!(md.contains(&f.divergence.title), "Markdown lacks {}", f.divergence.title);
    }
    assert!(md.contains("KVM_SET_XSAVE: -EINVAL where V3 accepts"));
}

#[test]
fn sarif_is_valid_2_1_0() {
    let dir = reported();
    let Some(n) = sarif_results(&dir.path().join("report/report.sarif")) else { return };
    assert!(n > 0);
}

#[test]
fn html_renders_in_headless_chromium() {
    let dir = reported();
    let Some(bin) = chromium() else {
        tool_or_skip("chromium", false);
        return;
    };
    let page = dir.path().join("report/report.html");
    let html = std::fs::read_to_string(&page).expect("html");
    assert!(!html.contains("<script src") && !html.contains("<link ") && !html.contains("url(http"), "self-contained page");
    let url = format!("file://{}", page.display());
    let shot = dir.path().join("report.png");
    let o = headless(bin, &dir.path().join("p1"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,2400")
        .arg(&url)
        .output()
        .expect("chromium");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "screenshot is a non-trivial PNG ({} bytes)", png.len());
    let dom = headless(bin, &dir.path().join("p2")).arg("--dump-dom").arg(&url).output().expect("chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    let rep: xsave_reports::report::Report =
        serde_json::from_slice(&std::fs::read(dir.path().join("report/report.json")).expect("json")).expect("report");
    for f in &rep.findings {
        assert!(dom.contains(&f.signature), "rendered page lacks finding {}", f.signature);
    }
    for needle in ["xsave-rig report", "XSTATE_BV", "YMM_Hi128", "execs/s", "<svg", "quirks modelled"] {
        assert!(dom.contains(needle), "rendered page lacks {needle:?}");
    }
    if let Ok(keep) = std::env::var("XSAVE_RIG_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("keep screenshot");
    }
}

/// Coverage over time is plotted from stats.jsonl, numbers are rounded and nested objects
/// (by_class) read as key: value lists, not raw JSON.
#[test]
fn html_plots_coverage_and_rounds_numbers() {
    let dir = tempdir();
    let wd = dir.path().to_str().expect("utf8").to_string();
    rig(&["fuzz", "--backend", "model:V2b", "--duration", "2.5s", "--seed", "4", "--minimize-budget", "20", "--workdir", &wd]);
    let stats = std::fs::read_to_string(dir.path().join("stats.jsonl")).expect("stats");
    assert!(stats.contains("rules_covered"));
    rig(&["report", &wd]);
    let html = std::fs::read_to_string(dir.path().join("report/report.html")).expect("html");
    assert!(!html.contains("not recorded yet"), "coverage is recorded");
    assert!(html.contains("contract rules reached"), "coverage plot");
    assert_eq!(html.matches("<svg").count(), 3);
    let campaign = html.split("<h2>Campaign</h2>").nth(1).and_then(|t| t.split("</table>").next()).expect("campaign table");
    assert!(!campaign.contains('{') && !campaign.contains("&quot;"), "raw JSON in {campaign}");
    assert!(campaign.contains("<ul class=\"kv\"><li>errno: "), "{campaign}");
    let eps = campaign.split("<th>execs_per_sec</th><td>").nth(1).and_then(|t| t.split('<').next()).expect("execs/s");
    assert!(eps.parse::<f64>().is_ok() && eps.split('.').nth(1).is_none_or(|d| d.len() <= 2), "{eps}");
    let secs = campaign.split("<th>seconds</th><td>").nth(1).and_then(|t| t.split('<').next()).expect("seconds");
    assert!(secs.split('.').nth(1).is_none_or(|d| d.len() <= 2), "{secs}");
}

/// Root-cause groups lead every format: Markdown and HTML list them before the findings, and
/// SARIF files each result under the contract rule it violates, with a run category per host
/// and kernel and artifact URIs relative to the workdir (`WORKDIR`).
#[test]
fn groups_lead_and_sarif_files_results_under_the_violated_rule() {
    let dir = reported();
    let r = dir.path().join("report");
    let md = std::fs::read_to_string(r.join("report.md")).expect("md");
    let (groups, findings) = (md.find("## Root causes").expect("groups section"), md.find("## Findings").expect("findings"));
    assert!(groups < findings, "groups come first");
    // V2b's refused permissive load is one root cause: rule set.accept.
    assert!(md[groups..findings].contains("`set.accept`"), "{}", &md[groups..findings]);
    assert!(std::fs::read_to_string(r.join("report.html")).expect("html").contains("<h2>Root causes"));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(r.join("report.sarif")).expect("sarif")).expect("json");
    let run = &s["runs"][0];
    let ids: Vec<&str> = run["tool"]["driver"]["rules"].as_array().expect("rules").iter().filter_map(|x| x["id"].as_str()).collect();
    assert!(ids.contains(&"set.accept"), "{ids:?}");
    let refused = run["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|x| x["message"]["text"].as_str().is_some_and(|t| t.contains("-EINVAL where V3 accepts")))
        .expect("the refused SET");
    assert_eq!(refused["ruleId"], "set.accept");
    assert_eq!(refused["locations"][0]["physicalLocation"]["artifactLocation"]["uriBaseId"], "WORKDIR");
    let base = run["originalUriBaseIds"]["WORKDIR"]["uri"].as_str().expect("base");
    assert!(base.starts_with("file:///") && base.ends_with('/'), "{base}");
    let cat = run["automationDetails"]["id"].as_str().expect("category");
    assert!(cat.starts_with("xsave-rig/") && cat.ends_with("/model:V2b/"), "{cat}");
    assert_eq!(run["invocations"][0]["executionSuccessful"], true);
}

/// Hit counts with first and last seen: every group and signature carries them in
/// `fuzz --json`, they add up to the diverging cases, survive `--resume` (first seen kept,
/// counts growing) across `--jobs 2` workers, and the report shows them.
#[test]
fn hits_with_first_and_last_seen_survive_resume_and_merge_across_jobs() {
    let dir = tempdir();
    let wd = dir.path().to_str().expect("utf8").to_string();
    let fuzz = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["fuzz", "--backend", "model:V2b", "--seed", "4", "--workdir", &wd, "--jobs", "2", "--json"];
        args.extend_from_slice(extra);
        let o = RIG.run(&args);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).expect("fuzz --json")
    };
    let check = |v: &serde_json::Value| -> (u64, Vec<(String, u64, u64)>) {
        let divergent = v["divergent_cases"].as_u64().expect("divergent_cases");
        let groups = v["groups"].as_array().expect("groups");
        assert!(!groups.is_empty());
        let cases: u64 = groups.iter().map(|g| g["cases"].as_u64().expect("cases")).sum();
        assert_eq!(cases, divergent, "group hits add up to the diverging cases");
        let hits = v["signature_hits"].as_object().expect("signature_hits");
        assert_eq!(hits.values().map(|h| h["hits"].as_u64().expect("hits")).sum::<u64>(), divergent);
        for g in groups {
            for sig in g["signatures"].as_array().expect("signatures") {
                assert!(hits.contains_key(sig.as_str().expect("sig")), "{sig} has hits");
            }
        }
        let seen = groups
            .iter()
            .map(|g| {
                let (f, l) = (&g["first_seen"], &g["last_seen"]);
                assert!(f["unix"].as_u64().expect("unix") <= l["unix"].as_u64().expect("unix"), "{g}");
                (g["key"].as_str().expect("key").to_string(), f["iteration"].as_u64().expect("it"), l["iteration"].as_u64().expect("it"))
            })
            .collect();
        (divergent, seen)
    };
    let (d1, s1) = check(&fuzz(&["--iterations", "600"]));
    let (d2, s2) = check(&fuzz(&["--resume", "--iterations", "1200"]));
    assert!(d2 > d1, "the resumed session adds hits ({d1} then {d2})");
    for (key, first, last) in &s1 {
        let (_, first2, last2) = s2.iter().find(|(k, ..)| k == key).expect("group kept");
        assert_eq!(first2, first, "{key}: first seen is kept across --resume");
        assert!(last2 >= last && *last2 < 1200, "{key}: last seen moves on");
    }
    assert!(s2.iter().any(|(_, _, last)| *last >= 600), "some group is hit again after the resume: {s2:?}");
    rig(&["report", &wd]);
    let md = std::fs::read_to_string(dir.path().join("report/report.md")).expect("md");
    assert!(md.contains("| root cause | rule | hits | first seen | last seen |"), "{md}");
    assert!(md.contains("- hits: "), "per-finding hits");
    let html = std::fs::read_to_string(dir.path().join("report/report.html")).expect("html");
    assert!(html.contains("<th>first seen</th>"));
}
