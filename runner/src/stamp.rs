//! Who and when: the host id and the wall-clock time stamped on what a campaign reports
//! (`stats.jsonl` rows, the plain log lines of a campaign whose stderr is not a terminal, the
//! metrics file), and the default host id of the fleet hub. One definition: the hub's
//! identity (`WORKDIR/hub/identity.json`, `--hub-host`) and a campaign without a hub name a
//! host the same way.

use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where a workdir keeps the hub identity it synced under (host id, campaign id).
pub const IDENTITY_FILE: &str = "hub/identity.json";

/// The default id of the host a fingerprint (`probe --json`) describes:
/// `<hostname>-<first 8 hex digits of the SHA-256 of the fingerprint>`, the fingerprint
/// without `rig_version` (so an upgrade of the rig keeps the id).
pub fn default_host_id(fingerprint: &serde_json::Value) -> String {
    let mut fp = fingerprint.clone();
    if let Some(o) = fp.as_object_mut() {
        o.remove("rig_version");
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let name = if name.is_empty() { "host".to_string() } else { name };
    let hash = Sha256::digest(fp.to_string().as_bytes());
    format!("{name}-{}", &xsave_oracle::hexnum::to_hex(&hash)[..8])
}

/// The host id of `workdir`'s campaign: the one it synced with the hub under (stored in
/// [`IDENTITY_FILE`], e.g. from `--hub-host`), else [`default_host_id`].
pub fn host_id(workdir: &Path, fingerprint: &serde_json::Value) -> String {
    std::fs::read(workdir.join(IDENTITY_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("host_id").and_then(|h| h.as_str()).map(str::to_string))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| default_host_id(fingerprint))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// `unix` seconds as RFC 3339 UTC to the second (`2026-12-02T11:44:40Z`).
pub fn rfc3339(unix: f64) -> String {
    let secs = unix.max(0.0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (days in 400-year eras of
/// 146 097 days, years counted from March so that the leap day ends the year).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199.9), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(4_102_444_800.0), "2100-01-01T00:00:00Z");
    }

    #[test]
    fn host_id_prefers_the_hub_identity() {
        let dir = xsave_testkit::tempdir();
        let fp = serde_json::json!({"kernel_release": "k", "rig_version": "1"});
        assert_eq!(host_id(dir.path(), &fp), default_host_id(&fp));
        assert_eq!(default_host_id(&fp), default_host_id(&serde_json::json!({"kernel_release": "k", "rig_version": "2"})));
        assert_ne!(default_host_id(&fp), default_host_id(&serde_json::json!({"kernel_release": "k2"})));
        std::fs::create_dir_all(dir.path().join("hub")).expect("mkdir");
        std::fs::write(dir.path().join(IDENTITY_FILE), br#"{"host_id":"rack-7","campaign":"c"}"#).expect("write");
        assert_eq!(host_id(dir.path(), &fp), "rack-7");
    }
}
