//! The `rules!` table names, for every rule id, the one function that decides it
//! (`Rule::decided_by`): this test reads the oracle's source and checks that the named function
//! exists and names the rule, so from an id the deciding code is one hop away. Rules still named
//! in more than one function are listed here and may only shrink.
//!
//! The deciding code is the model (`model/`) and the guest-program model (`guest.rs`): the
//! functions that put a rule into a prediction. Code that only reads a prediction's rules (the
//! diff's classifier, root causes, group titles, the known-issue registry) decides none and is
//! not scanned.

use std::collections::{BTreeMap, BTreeSet};
use xsave_oracle::rules::Rule;

const SOURCES: [(&str, &str); 8] = [
    ("model", include_str!("../src/model/mod.rs")),
    ("model::cpuid", include_str!("../src/model/cpuid.rs")),
    ("model::fpu", include_str!("../src/model/fpu.rs")),
    ("model::replay", include_str!("../src/model/replay.rs")),
    ("model::run", include_str!("../src/model/run.rs")),
    ("model::xcrs", include_str!("../src/model/xcrs.rs")),
    ("model::xsave", include_str!("../src/model/xsave.rs")),
    ("guest", include_str!("../src/guest.rs")),
];

/// Rules still named in more than one deciding function: the remaining work of "one function
/// per rule" (none left; the test fails when one appears).
const SHARED: [&str; 0] = [];

/// `module::function` → the rule variants its body names (a function runs until the next `fn`).
fn functions() -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, text) in SOURCES {
        let mut cur: Option<String> = None;
        for line in text.lines() {
            let t = line.trim_start();
            let t = ["pub(crate) ", "pub(super) ", "pub "].iter().find_map(|p| t.strip_prefix(*p)).unwrap_or(t);
            if let Some(rest) = t.strip_prefix("fn ") {
                let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                cur = Some(format!("{module}::{name}"));
                out.entry(format!("{module}::{name}")).or_default();
            }
            let Some(f) = &cur else { continue };
            for part in line.split("Rule::").skip(1) {
                let v: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
                if v.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                    out.entry(f.clone()).or_default().insert(v);
                }
            }
        }
    }
    out
}

#[test]
fn every_rule_names_the_function_that_decides_it() {
    let fns = functions();
    let mut bad = Vec::new();
    for r in Rule::ALL {
        let variant = format!("{r:?}");
        match fns.get(r.decided_by()) {
            None => bad.push(format!("{}: decided_by {} does not exist", r.id(), r.decided_by())),
            Some(names) if !names.contains(&variant) => bad.push(format!("{}: {} does not name Rule::{variant}", r.id(), r.decided_by())),
            Some(_) => {}
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn rules_named_in_several_functions_do_not_grow() {
    let fns = functions();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for names in fns.values() {
        for n in names {
            *count.entry(n.clone()).or_default() += 1;
        }
    }
    let shared: Vec<&String> = count.iter().filter(|(_, n)| **n > 1).map(|(v, _)| v).collect();
    let new: Vec<&&String> = shared.iter().filter(|v| !SHARED.contains(&v.as_str())).collect();
    assert!(new.is_empty(), "rules now named in several functions: {new:?} (decide each in one function)");
    let stale: Vec<&&str> = SHARED.iter().filter(|v| !shared.iter().any(|s| s == *v)).collect();
    assert!(stale.is_empty(), "now decided in one function, remove from SHARED: {stale:?}");
}
