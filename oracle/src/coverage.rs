//! Contract coverage: every rule id a prediction records is a point, and so is every
//! (ioctl, outcome) pair. Used as fuzzing feedback and by `xsave-rig corpus coverage`.

use crate::case::Case;
use crate::rules::Rule;
use crate::trace::{Ret, Trace};
use std::collections::BTreeSet;

/// A coverage point.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Point {
    /// A rule decided something.
    Rule(Rule),
    /// An ioctl ended with this outcome (`ok` or an errno name).
    Outcome(&'static str, String),
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Point::Rule(r) => f.write_str(r.id()),
            Point::Outcome(op, o) => write!(f, "{op} -> {o}"),
        }
    }
}

/// The points a predicted trace of `case` reaches.
pub fn points(case: &Case, predicted: &Trace) -> BTreeSet<Point> {
    let mut out = BTreeSet::new();
    for ((_, op), r) in case.steps().iter().zip(&predicted.results) {
        out.extend(r.rules.iter().copied().map(Point::Rule));
        let outcome = match r.ret {
            Ret::Ok(_) => "ok".to_string(),
            Ret::Err(e) => crate::trace::errno_name(e),
        };
        out.insert(Point::Outcome(op.name(), outcome));
    }
    out
}

/// The shape of a case: its first three ioctl names (a coarse, bounded proxy for op sequences).
pub fn shape(case: &Case) -> u64 {
    let names: String = case.steps().iter().take(3).map(|(_, op)| op.name()).collect::<Vec<_>>().join(",");
    crate::hash::fnv1a(names.as_bytes())
}

/// Number of rule points (the denominator of `rules X/Y`).
pub fn rule_count() -> usize {
    Rule::ALL.len()
}
