//! Guest observations are a report section of their own: for a case with guest runs, each
//! run's exit (expected and observed) and the guest's own XSAVE image by region, apart from the
//! GETs' byte diff.

use xsave_oracle::{predict, HostFacts, ModelConfig};
use xsave_reports::report::guest_runs;
use xsave_runner::seeds::seed_corpus;

fn seed(name: &str) -> xsave_oracle::Case {
    seed_corpus().into_iter().find(|(n, _)| n == name).map(|(_, c)| c).expect("seed")
}

#[test]
fn a_run_shows_its_exit_and_the_guests_image_by_region() {
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let case = seed("guest-touch-save-restore-readback");
    let exp = predict(&case, &host, &ModelConfig::default());
    // The same case observed as predicted: every run listed, nothing differs.
    let same = guest_runs(&case, Some(&host), &exp, &exp);
    let run_steps: Vec<usize> = case
        .steps()
        .iter()
        .enumerate()
        .filter(|(_, (_, op))| matches!(op.as_ref(), xsave_oracle::Op::RunGuest(_)))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(same.iter().map(|r| r.step).collect::<Vec<_>>(), run_steps);
    assert!(same.iter().all(|r| r.regions.is_empty() && r.expected_exit == "end" && r.observed_exit == "end"), "{same:?}");
    // The guest reads XMM1 back differently in its own image at the first run, and a later
    // GET differs too: the run's section names XMM1 (with XSTATE_BV for context) and nothing
    // of the GET.
    let k = run_steps[0];
    let mut obs = exp.clone();
    let data = &mut obs.results[k].data;
    assert!(data.len() >= 576, "the program stores its XSAVE image");
    data[176] ^= 0x5a; // XMM1 starts at 160 + 16
    if let Some(get) = (k + 1..obs.results.len()).find(|&g| obs.results[g].data.len() >= 576) {
        obs.results[get].data[200] ^= 1;
    }
    let runs = guest_runs(&case, Some(&host), &exp, &obs);
    let first = runs.iter().find(|r| r.step == k).expect("first run");
    let differing: Vec<&str> = first.regions.iter().filter(|b| b.expected != b.observed).map(|b| b.region.as_str()).collect();
    assert_eq!(differing, ["XMM1"], "{first:?}");
    assert!(first.regions.iter().any(|b| b.region.contains("XSTATE_BV")), "context row: {first:?}");
    assert!(runs.iter().filter(|r| r.step != k).all(|r| r.regions.is_empty()), "only the run that differs: {runs:?}");
    // A run that faulted where the end was expected.
    obs.results[k].ret = xsave_oracle::Ret::Ok(xsave_oracle::guest::Exit::Shutdown as i64);
    let runs = guest_runs(&case, Some(&host), &exp, &obs);
    assert_eq!(runs.iter().find(|r| r.step == k).map(|r| r.observed_exit.as_str()), Some("shutdown"));
}

/// A finding directory whose case runs the guest, with the guest's XMM1 observed differently:
/// report.md and report.html show a "Guest runs" section naming the run's exits and XMM1.
#[test]
fn report_md_and_html_have_a_guest_runs_section() {
    let dir = xsave_testkit::tempdir();
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let case = seed("guest-touch-save-restore-readback");
    let model = ModelConfig::default();
    let exp = predict(&case, &host, &model);
    let run = case.steps().iter().position(|(_, op)| matches!(op.as_ref(), xsave_oracle::Op::RunGuest(_))).expect("run");
    assert!(exp.results[run].data.len() >= 576, "the program stores its XSAVE image");
    let mut obs = exp.clone();
    obs.results[run].data[176] ^= 0x5a;
    let (expected, verdict) = xsave_oracle::judge::judge(&case, &host, &model, &obs);
    let sig = match &verdict {
        xsave_oracle::verdict::Verdict::Diverge(d) => d.signature.clone(),
        v => panic!("diverges: {v:?}"),
    };
    let f = xsave_runner::campaign::Finding {
        verdict,
        backend: "kvm".into(),
        seed: 0,
        worker: 0,
        iteration: 0,
        expected,
        observed: obs,
        unreproduced: false,
    };
    let fd = dir.path().join("findings").join(&sig);
    std::fs::create_dir_all(&fd).expect("mkdir");
    std::fs::write(fd.join("case.bin"), case.encode()).expect("case");
    std::fs::write(fd.join("verdict.json"), serde_json::to_vec(&f).expect("json")).expect("verdict");
    let state = xsave_runner::campaign::Summary { backend: "kvm".into(), contract: "V3".into(), ..Default::default() };
    std::fs::write(dir.path().join("campaign.json"), serde_json::to_vec(&state).expect("json")).expect("state");
    std::fs::write(dir.path().join("host.json"), serde_json::to_vec(&serde_json::json!({ "host": host })).expect("json")).expect("host");
    let r = xsave_reports::report::load(dir.path()).expect("report");
    assert_eq!(r.findings.len(), 1, "{:?}", r.skipped);
    let md = xsave_reports::render::markdown(&r);
    let section = &md[md.find("#### Guest runs").expect("guest section")..];
    assert!(section.contains("| end | end |") && section.contains("| XMM1 |"), "{section}");
    let html = xsave_reports::render::html(&r);
    assert!(html.contains("<h4>Guest runs</h4>") && html.contains("<td>XMM1</td>"), "guest section in HTML");
}
