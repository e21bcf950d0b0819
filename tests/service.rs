//! The systemd unit of a fleet host (contrib/systemd): `systemd-analyze verify` accepts it,
//! it runs a resumable campaign forever with the hub, and a stop lets the campaign save.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use xsave_testkit::{tempdir, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn systemd_unit_verifies() {
    let unit = Path::new(ROOT).join("contrib/systemd/xsave-rig.service");
    let Ok(o) = Command::new("systemd-analyze").arg("verify").arg(&unit).output() else {
        println!("SKIPPED(systemd) systemd_unit_verifies: systemd-analyze not found (install the systemd package)");
        return;
    };
    assert!(o.status.success(), "systemd-analyze verify: {}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty() && o.stdout.is_empty(), "warnings: {}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&unit).expect("unit");
    for needle in ["--resume", "--duration forever", "Restart=on-failure", "KillSignal=SIGTERM", "TimeoutStopSec=", "EnvironmentFile="] {
        assert!(text.contains(needle), "the unit lacks {needle}");
    }
    let env = std::fs::read_to_string(Path::new(ROOT).join("contrib/systemd/xsave-rig.env")).expect("env file");
    assert!(env.contains("XSAVE_RIG_HUB=") && env.contains("XSAVE_RIG_ARGS="));
}

/// What the unit's stop does: SIGTERM to `fuzz --duration forever` saves and exits 130.
#[test]
fn forever_campaign_stops_on_sigterm_and_saves() {
    let dir = tempdir();
    let wd = dir.path().join("w");
    let child = RIG
        .command()
        .env_remove("XSAVE_RIG_HUB")
        .args(["fuzz", "--backend", "model:V2b", "--duration", "forever", "--minimize-budget", "0", "--host-facts"])
        .arg(Path::new(ROOT).join("tests/data/synthetic-host.json"))
        .arg("--workdir")
        .arg(&wd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(2500));
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", String::from_utf8_lossy(&o.stderr));
    let s: serde_json::Value = serde_json::from_slice(&std::fs::read(wd.join("campaign.json")).expect("state")).expect("json");
    assert!(s["execs"].as_u64().unwrap_or(0) > 0 && s["interrupted"] == true, "{s}");
}
