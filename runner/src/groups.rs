//! Root-cause groups of a campaign and the hit counts of groups and signatures.
//!
//! A group collects every signature (symptom) of one violated contract rule, ioctl and class
//! ([`xsave_oracle::verdict::group_key`]). Each group and each signature carries its hit count
//! (diverging cases, re-hits after the finding was stored included) and when it was first and
//! last seen ([`Seen`]: wall-clock time and campaign iteration). They live in the campaign's
//! state (`campaign.json`), so they survive `--resume`, and [`merge_groups`] /
//! [`merge_hits`] combine the workers of `--jobs`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A moment of a campaign: wall-clock time (seconds since the Unix epoch, UTC) and the global
/// campaign iteration (the case's index in the seeded sequence, the same for every worker).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Seen {
    /// Seconds since the Unix epoch (UTC).
    pub unix: u64,
    /// The campaign iteration.
    pub iteration: u64,
}

impl Seen {
    /// Now, at campaign iteration `iteration`.
    pub fn now(iteration: u64) -> Seen {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Seen { unix, iteration }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` (UTC) and the iteration, for people.
    pub fn text(&self) -> String {
        format!("{} (iteration {})", utc(self.unix), self.iteration)
    }
}

/// Seconds since the epoch as an RFC 3339 UTC timestamp (proleptic Gregorian calendar).
pub fn utc(unix: u64) -> String {
    let (days, rem) = (unix / 86_400, unix % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem / 60 % 60, rem % 60)
}

/// How often, and between which moments, something was hit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hits {
    /// Diverging cases (re-hits included).
    pub hits: u64,
    /// The first hit.
    pub first_seen: Seen,
    /// The latest hit.
    pub last_seen: Seen,
}

impl Hits {
    /// One hit at `at`.
    pub fn one(at: Seen) -> Hits {
        Hits { hits: 1, first_seen: at, last_seen: at }
    }

    /// Count a hit at `at`.
    pub fn hit(&mut self, at: Seen) {
        self.add(&Hits::one(at));
    }

    /// Add another count of the same thing (another worker's, another session's): hits add
    /// up, the earliest first and the latest last moment win.
    pub fn add(&mut self, o: &Hits) {
        if self.hits == 0 {
            *self = *o;
            return;
        }
        self.hits = self.hits.saturating_add(o.hits);
        self.first_seen = self.first_seen.min(o.first_seen);
        self.last_seen = self.last_seen.max(o.last_seen);
    }
}

/// Add the per-signature hits `from` to `into` ([`Hits::add`] per signature).
pub fn merge_hits(into: &mut BTreeMap<String, Hits>, from: &BTreeMap<String, Hits>) {
    for (sig, h) in from {
        into.entry(sig.clone()).or_default().add(h);
    }
}

/// One root cause and the signatures (symptoms) it produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// `<rule>|<ioctl>|<class>`: stable across hosts, layouts and engines.
    pub key: String,
    /// The violated contract rule (`none` when no rule applies, e.g. a trace-length mismatch).
    pub rule: String,
    /// Class of the first divergence.
    pub class: String,
    /// The ioctl of the first divergence.
    pub ioctl: String,
    /// Plain-words title naming the rule.
    pub title: String,
    /// Member signatures, in order of discovery.
    pub signatures: Vec<String>,
    /// Diverging cases in the group: its hit count (re-hits of stored findings included).
    #[serde(default)]
    pub cases: u64,
    /// The signature of the group's smallest reproducer and its number of steps.
    #[serde(default)]
    pub smallest: Option<(String, usize)>,
    /// The group's first hit (absent in states written before hits were timed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<Seen>,
    /// The group's latest hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Seen>,
}

impl Group {
    fn seen(&mut self, first: Option<Seen>, last: Option<Seen>) {
        self.first_seen = match (self.first_seen, first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = self.last_seen.max(last);
    }
}

/// Add one diverging case (`steps` long) with divergence `d`, hit at `at`, to `groups`.
pub fn note_group(groups: &mut Vec<Group>, d: &xsave_oracle::verdict::Divergence, steps: usize, at: Seen) {
    let key = d.group_key();
    let (ioctl, class) = d.group_site();
    let g = match groups.iter().position(|g| g.key == key) {
        Some(i) => &mut groups[i],
        None => {
            groups.push(Group {
                key: key.clone(),
                rule: d.violated.map_or("none", |r| r.id()).to_string(),
                class: class.name().to_string(),
                ioctl: ioctl.to_string(),
                title: d.group_title(),
                ..Group::default()
            });
            groups.last_mut().expect("just pushed")
        }
    };
    g.cases += 1;
    g.seen(Some(at), Some(at));
    if !g.signatures.contains(&d.signature) {
        g.signatures.push(d.signature.clone());
    }
    if g.smallest.as_ref().is_none_or(|(_, n)| steps < *n) {
        g.smallest = Some((d.signature.clone(), steps));
    }
}

/// Merge the groups of several summaries (parallel workers): members and counts add up, the
/// smallest reproducer wins, the earliest first and the latest last hit win; sorted by key.
pub fn merge_groups<'a>(all: impl IntoIterator<Item = &'a [Group]>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    for gs in all {
        for g in gs {
            match out.iter_mut().find(|o| o.key == g.key) {
                None => out.push(g.clone()),
                Some(o) => {
                    o.cases += g.cases;
                    o.seen(g.first_seen, g.last_seen);
                    for sig in &g.signatures {
                        if !o.signatures.contains(sig) {
                            o.signatures.push(sig.clone());
                        }
                    }
                    if let Some((sig, n)) = &g.smallest {
                        if o.smallest.as_ref().is_none_or(|(_, m)| n < m) {
                            o.smallest = Some((sig.clone(), *n));
                        }
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// A finding of signature `sig` was minimized to `steps` steps: its group's smallest
/// reproducer is updated when that is smaller.
pub fn note_minimized(groups: &mut [Group], sig: &str, steps: usize) {
    if let Some(g) = groups.iter_mut().find(|g| g.signatures.iter().any(|x| x == sig)) {
        if g.smallest.as_ref().is_none_or(|(_, n)| steps < *n) {
            g.smallest = Some((sig.to_string(), steps));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn hits_add_counts_and_keep_the_extremes() {
        let s = |unix, iteration| Seen { unix, iteration };
        let mut a = Hits::one(s(100, 7));
        a.hit(s(105, 9));
        let b = Hits { hits: 3, first_seen: s(90, 2), last_seen: s(101, 8) };
        a.add(&b);
        assert_eq!(a, Hits { hits: 5, first_seen: s(90, 2), last_seen: s(105, 9) });
        let mut empty = Hits::default();
        empty.add(&b);
        assert_eq!(empty, b, "an empty count takes the other's moments, not the epoch");
    }

    #[test]
    fn merged_groups_keep_the_earliest_first_and_latest_last_hit() {
        let g = |cases, f: u64, l: u64| Group {
            key: "k".into(),
            cases,
            first_seen: Some(Seen { unix: f, iteration: f }),
            last_seen: Some(Seen { unix: l, iteration: l }),
            ..Group::default()
        };
        let old = Group { key: "k".into(), cases: 1, ..Group::default() };
        let m = merge_groups([&[g(2, 10, 20)][..], &[g(3, 5, 15)][..], &[old][..]]);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].cases, m[0].first_seen.map(|s| s.unix), m[0].last_seen.map(|s| s.unix)), (6, Some(5), Some(20)));
    }

    #[test]
    fn every_rule_s_group_title_fits_a_stored_state() {
        // The longest ioctl name a group is filed under, with every rule and class.
        let ioctl = "KVM_GET_SUPPORTED_CPUID";
        let groups: Vec<Group> = xsave_oracle::rules::Rule::ALL
            .iter()
            .map(|&r| Group {
                key: xsave_oracle::verdict::group_key(Some(r), ioctl, xsave_oracle::verdict::Class::Header),
                title: xsave_oracle::verdict::group_title(Some(r), ioctl, xsave_oracle::verdict::Class::Header),
                cases: 1,
                ..Group::default()
            })
            .collect();
        let s = crate::campaign::Summary { backend: "kvm".into(), contract: "V3".into(), groups, ..Default::default() };
        assert_eq!(s.validate(), Ok(()));
    }
}
