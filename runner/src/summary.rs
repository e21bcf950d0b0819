//! A campaign's persistent state (`campaign.json`) and the summary printed at its end
//! ([`Summary`]): its schema check ([`Summary::validate`], which `--resume` and every save run)
//! and the merge of a parallel campaign's workers ([`Summary::merge`]). The campaign engine
//! ([`crate::campaign`]) fills it; `crate::campaign` re-exports it, so older paths keep working.

use crate::groups::{merge_groups, Group, Hits};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Persistent state (`campaign.json`) and the summary printed at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Backend name.
    pub backend: String,
    /// Contract the oracle predicted under.
    pub contract: String,
    /// Quirks modelled by the oracle.
    pub quirks: Vec<String>,
    /// Generator seed.
    pub seed: u64,
    /// Next iteration to run.
    pub next_iteration: u64,
    /// Cases executed (all sessions).
    pub execs: u64,
    /// Distinct findings (signatures) in the workdir.
    pub findings: u64,
    /// Diverging cases (including duplicates of known signatures).
    pub divergent_cases: u64,
    /// Guest runs executed (`KVM_RUN` steps).
    #[serde(default)]
    pub guest_runs: u64,
    /// Guest runs by how they ended (`end`, `shutdown`, ...), as observed.
    #[serde(default)]
    pub guest_exits: BTreeMap<String, u64>,
    /// Agreeing cases whose prediction left some bytes unpredicted (host-owned fields under a
    /// modelled quirk): counted apart from cases that agree on every byte.
    #[serde(default)]
    pub agree_unpredicted: u64,
    /// Diverging cases per class.
    pub by_class: BTreeMap<String, u64>,
    /// Diverging cases per signature (all sessions): what the fleet hub counts per host.
    #[serde(default)]
    pub by_signature: BTreeMap<String, u64>,
    /// Diverging cases a known host quirk explains.
    pub explained_by_quirk: u64,
    /// Diverging cases that are a publicly known issue ([`xsave_oracle::known`]).
    #[serde(default)]
    pub known_issue_cases: u64,
    /// Signatures found that are known issues, in order of discovery (this session): kept
    /// out of `new_signatures`, so they never count as new.
    #[serde(default)]
    pub known_signatures: Vec<String>,
    /// Seconds spent (all sessions).
    pub seconds: f64,
    /// Cases per second.
    pub execs_per_sec: f64,
    /// ioctls issued by the backend in this session.
    pub ioctls: u64,
    /// Contract rules reached so far (of [`xsave_oracle::coverage::rule_count`]).
    #[serde(default)]
    pub rules_covered: usize,
    /// Rules there are.
    #[serde(default)]
    pub rules_total: usize,
    /// Coverage points (rules and per-ioctl outcomes) reached.
    #[serde(default)]
    pub coverage_points: usize,
    /// Cases kept in the feedback corpus.
    #[serde(default)]
    pub corpus: usize,
    /// Execs and seconds at the first divergence of `stop_on_class`, when it was hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_hit: Option<(u64, f64)>,
    /// Whether every case had a guest CPUID narrower than the host.
    #[serde(default)]
    pub narrow_cpuid: bool,
    /// Whether this session resumed an earlier one.
    pub resumed: bool,
    /// Whether the run was interrupted (SIGINT/SIGTERM).
    pub interrupted: bool,
    /// Signatures found, in order of discovery (this session). In the merged summary of a
    /// parallel campaign: sorted and deduplicated over the workers.
    pub new_signatures: Vec<String>,
    /// Worker processes of a parallel campaign (`fuzz --jobs N`): set in the merged
    /// `campaign.json` the parent writes, absent for a single campaign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<u64>,
    /// Process resources at the start and end of this session.
    pub resources: Resources,
    /// Total cases of the campaign (a worker's state: its share), kept on resume unless
    /// given again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u64>,
    /// Total run time of the campaign in seconds, kept on resume unless given again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// The feedback corpus as this campaign sees it, in order of discovery (content names
    /// without `.case`), checkpointed together with the counters: a resume continues from
    /// exactly this view, not from whatever `corpus/` holds by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corpus_order: Option<Vec<String>>,
    /// Signatures this campaign (this worker) found itself, checkpointed with the counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_signatures: Option<Vec<String>>,
    /// Raw findings this session left to minimize (on disk, minimized by `--resume`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub minimize_pending: u64,
    /// Seconds this session's minimizer took (at most [`crate::minqueue::SHARE`] of the campaign's time while
    /// it fuzzed, plus the end's drain of the queue).
    #[serde(default)]
    pub minimize_seconds: f64,
    /// Findings grouped by root cause (violated rule, ioctl, class of the first divergence):
    /// one group per kernel defect, its signatures below it. Added on top of signatures.
    #[serde(default)]
    pub groups: Vec<Group>,
    /// Per signature: hit count (diverging cases, re-hits of stored findings included) and
    /// first and last hit, all sessions ([`Hits`]; `by_signature` keeps the bare counts).
    #[serde(default)]
    pub signature_hits: BTreeMap<String, Hits>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The largest counter value a state file may hold (far beyond any real campaign).
pub const MAX_COUNTER: u64 = 1 << 48;

/// The longest group title a stored state may carry, bytes.
pub const MAX_TITLE: usize = 2000;

impl Summary {
    /// Add a parallel worker's summary `s` to this merged one ([`crate::jobs`]): counts,
    /// ioctls, exec rates, guest exits and classes add up; seconds, findings, coverage and the
    /// corpus size take the maximum; `resumed` and `interrupted` are set when any worker's is;
    /// signatures are appended (the pool sorts and deduplicates them at the end); groups merge
    /// ([`merge_groups`]), and so do per-signature counts and hits; the campaign's identity (backend, contract, quirks, seed, narrowing,
    /// rule total) is the worker's.
    pub fn merge(&mut self, s: Summary) {
        self.backend = s.backend;
        self.contract = s.contract;
        self.quirks = s.quirks;
        self.seed = s.seed;
        self.next_iteration += s.next_iteration;
        self.narrow_cpuid = s.narrow_cpuid;
        self.ioctls += s.ioctls;
        self.execs += s.execs;
        self.divergent_cases += s.divergent_cases;
        self.agree_unpredicted += s.agree_unpredicted;
        self.guest_runs += s.guest_runs;
        for (k, n) in &s.guest_exits {
            *self.guest_exits.entry(k.clone()).or_default() += n;
        }
        self.explained_by_quirk += s.explained_by_quirk;
        self.execs_per_sec += s.execs_per_sec;
        self.seconds = self.seconds.max(s.seconds);
        self.findings = self.findings.max(s.findings);
        self.rules_covered = self.rules_covered.max(s.rules_covered);
        self.rules_total = s.rules_total;
        self.coverage_points = self.coverage_points.max(s.coverage_points);
        self.corpus = self.corpus.max(s.corpus);
        self.resumed |= s.resumed;
        self.interrupted |= s.interrupted;
        self.new_signatures.extend(s.new_signatures);
        self.known_signatures.extend(s.known_signatures);
        self.known_issue_cases += s.known_issue_cases;
        self.minimize_pending += s.minimize_pending;
        self.minimize_seconds += s.minimize_seconds;
        self.resources.peak_rss_kib = self.resources.peak_rss_kib.max(s.resources.peak_rss_kib);
        self.groups = merge_groups([self.groups.as_slice(), s.groups.as_slice()]);
        crate::groups::merge_hits(&mut self.signature_hits, &s.signature_hits);
        for (sig, n) in s.by_signature {
            *self.by_signature.entry(sig).or_default() += n;
        }
        for (c, n) in s.by_class {
            *self.by_class.entry(c).or_default() += n;
        }
    }

    /// Check a stored state against its schema's ranges and invariants: one line on the
    /// first violation.
    pub fn validate(&self) -> Result<(), String> {
        let printable = |t: &str| !t.is_empty() && t.len() <= 200 && t.chars().all(|c| !c.is_control());
        // A group's title is a rule's statement with its ioctl: longer than a name.
        let title = |t: &str| !t.is_empty() && t.len() <= MAX_TITLE && t.chars().all(|c| !c.is_control());
        if !printable(&self.backend) {
            return Err("backend: not a backend name".into());
        }
        if xsave_oracle::Contract::parse(&self.contract).is_none() {
            return Err(format!("contract: {:?} is not a contract", crate::store::escape(&self.contract)));
        }
        if let Some(q) = self.quirks.iter().find(|q| xsave_oracle::Quirk::from_name(q).is_none()) {
            return Err(format!("quirks: {:?} is not a quirk", crate::store::escape(q)));
        }
        let counters = [
            ("next_iteration", self.next_iteration),
            ("execs", self.execs),
            ("findings", self.findings),
            ("divergent_cases", self.divergent_cases),
            ("guest_runs", self.guest_runs),
            ("agree_unpredicted", self.agree_unpredicted),
            ("explained_by_quirk", self.explained_by_quirk),
            ("known_issue_cases", self.known_issue_cases),
            ("ioctls", self.ioctls),
            ("rules_covered", self.rules_covered as u64),
            ("rules_total", self.rules_total as u64),
            ("coverage_points", self.coverage_points as u64),
            ("corpus", self.corpus as u64),
            ("iterations", self.iterations.unwrap_or(0)),
            ("jobs", self.jobs.unwrap_or(1)),
        ];
        if let Some((name, v)) = counters.iter().find(|(_, v)| *v > MAX_COUNTER) {
            return Err(format!("{name}: {v} is out of range (at most {MAX_COUNTER})"));
        }
        if self.execs != self.next_iteration {
            return Err(format!("execs {} differs from next_iteration {}", self.execs, self.next_iteration));
        }
        let sum = |m: &BTreeMap<String, u64>| m.values().try_fold(0u64, |a, v| a.checked_add(*v));
        if sum(&self.by_class) != Some(self.divergent_cases) {
            return Err(format!("by_class does not add up to divergent_cases {}", self.divergent_cases));
        }
        if self.by_class.keys().any(|k| !printable(k)) || self.guest_exits.keys().any(|k| !printable(k)) {
            return Err("by_class/guest_exits: bad key".into());
        }
        if sum(&self.guest_exits) != Some(self.guest_runs) {
            return Err(format!("guest_exits do not add up to guest_runs {}", self.guest_runs));
        }
        if self.divergent_cases > self.execs || self.agree_unpredicted > self.execs {
            return Err(format!("more divergent or partly agreeing cases than execs {}", self.execs));
        }
        if self.explained_by_quirk > self.divergent_cases || self.known_issue_cases > self.divergent_cases {
            return Err("explained_by_quirk or known_issue_cases exceeds divergent_cases".into());
        }
        if self.rules_covered > self.rules_total {
            return Err("rules_covered exceeds rules_total".into());
        }
        if self.jobs == Some(0) {
            return Err("jobs: 0".into());
        }
        let secs = |name: &str, v: f64| {
            if v.is_finite() && (0.0..=1e10).contains(&v) {
                Ok(())
            } else {
                Err(format!("{name}: {v} is not a duration in seconds"))
            }
        };
        secs("seconds", self.seconds)?;
        secs("execs_per_sec", self.execs_per_sec)?;
        secs("minimize_seconds", self.minimize_seconds)?;
        if let Some(d) = self.duration_secs {
            secs("duration_secs", d)?;
        }
        if let Some((e, t)) = self.first_hit {
            if e > self.execs {
                return Err("first_hit: after the last exec".into());
            }
            secs("first_hit", t)?;
        }
        if let Some(order) = &self.corpus_order {
            if order.iter().any(|n| !printable(n) || n.starts_with('.') || n.contains('/')) {
                return Err("corpus_order: not a list of content names".into());
            }
        }
        if self.groups.iter().any(|g| !printable(&g.key) || !title(&g.title) || g.cases > MAX_COUNTER) {
            return Err("groups: bad key, title or count".into());
        }
        if self.signature_hits.iter().any(|(k, h)| !printable(k) || h.hits > MAX_COUNTER || h.first_seen > h.last_seen)
            || self.groups.iter().any(|g| g.first_seen > g.last_seen)
        {
            return Err("signature_hits/groups: bad signature, count or first/last seen".into());
        }
        if let Some(sigs) = &self.own_signatures {
            if sigs.iter().any(|n| !printable(n) || n.starts_with('.') || n.contains('/')) {
                return Err("own_signatures: not a list of signatures".into());
            }
        }
        Ok(())
    }
}

/// Process resources (Linux `/proc/self`): to show a long campaign leaks nothing.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Resources {
    /// Open file descriptors at the start.
    pub fds_start: usize,
    /// Open file descriptors at the end.
    pub fds_end: usize,
    /// KVM VM file descriptors open at the end.
    pub kvm_vm_fds_end: usize,
    /// Peak resident set size (VmHWM), KiB.
    pub peak_rss_kib: u64,
}
