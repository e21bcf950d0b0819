//! Test-case minimization: greedy delta debugging over operations, CPUID entries, XSAVE
//! buffer fields and bytes, toward init values, keeping the divergence's signature.
//! Deterministic: candidates are tried in a fixed order and the backend is deterministic.

use crate::{Backend, BackendError};
use serde::Serialize;
use xsave_oracle::case::*;
use xsave_oracle::judge::{judge_to, Depth};
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{HostFacts, ModelConfig};

/// Sizes before and after.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MinStats {
    /// Executed steps before.
    pub steps_before: usize,
    /// Executed steps after.
    pub steps_after: usize,
    /// Encoded bytes before.
    pub bytes_before: usize,
    /// Encoded bytes after.
    pub bytes_after: usize,
    /// Candidate executions spent.
    pub execs: u64,
    /// Whether the budget ran out before a fixpoint.
    pub budget_exhausted: bool,
}

/// The signature `case` diverges with on `backend`, if it diverges.
pub fn signature_of(backend: &mut dyn Backend, host: &HostFacts, model: &ModelConfig, case: &Case) -> Result<Option<String>, BackendError> {
    let obs = backend.execute(case)?;
    Ok(match judge_to(case, host, model, &obs, Depth::Signature).1 {
        Verdict::Diverge(d) => Some(d.signature),
        Verdict::Agree => None,
    })
}

/// Shrink `case` while it keeps diverging with `signature`; at most `budget` executions.
pub fn minimize(
    backend: &mut dyn Backend,
    host: &HostFacts,
    model: &ModelConfig,
    case: &Case,
    signature: &str,
    budget: u64,
) -> Result<(Case, MinStats), BackendError> {
    let mut m = Shrinker::new(case, signature, budget);
    while !m.step(backend, host, model)? {}
    Ok(m.finish())
}

/// [`minimize`] one candidate execution at a time, so a campaign can interleave it with its
/// own cases ([`crate::minqueue`]). Stepping to the end gives exactly [`minimize`]'s result.
#[derive(Clone, Debug)]
pub struct Shrinker {
    best: Case,
    candidates: Vec<Case>,
    next: usize,
    signature: String,
    budget: u64,
    stats: MinStats,
    done: bool,
}

impl Shrinker {
    /// A minimization of `case` keeping `signature`, within `budget` executions.
    pub fn new(case: &Case, signature: &str, budget: u64) -> Shrinker {
        Shrinker {
            best: case.clone(),
            candidates: candidates(case),
            next: 0,
            signature: signature.to_string(),
            budget,
            stats: MinStats { steps_before: case.steps().len(), bytes_before: case.encode().len(), ..MinStats::default() },
            done: false,
        }
    }

    /// Try the next candidate (one execution on `backend`); true when finished (a fixpoint:
    /// no candidate keeps the signature; or the budget is spent), then without executing.
    pub fn step(&mut self, backend: &mut dyn Backend, host: &HostFacts, model: &ModelConfig) -> Result<bool, BackendError> {
        if self.done {
            return Ok(true);
        }
        let Some(cand) = self.candidates.get(self.next) else {
            self.done = true;
            return Ok(true);
        };
        if self.stats.execs >= self.budget {
            self.stats.budget_exhausted = true;
            self.done = true;
            return Ok(true);
        }
        self.stats.execs += 1;
        if signature_of(backend, host, model, cand)?.as_deref() == Some(self.signature.as_str()) {
            self.best = cand.clone();
            self.candidates = candidates(&self.best);
            self.next = 0;
        } else {
            self.next += 1;
        }
        Ok(false)
    }

    /// The smallest case found so far and the figures.
    pub fn finish(self) -> (Case, MinStats) {
        let mut stats = self.stats;
        stats.steps_after = self.best.steps().len();
        stats.bytes_after = self.best.encode().len();
        (self.best, stats)
    }
}

/// One-step simplifications of `case`, biggest first.
pub fn candidates(case: &Case) -> Vec<Case> {
    let mut out = Vec::new();
    let n = case.ops.len();
    let mut size = n.div_ceil(2);
    while size >= 1 {
        for start in (0..n).step_by(size) {
            let mut c = case.clone();
            c.ops.drain(start..(start + size).min(n));
            if !c.ops.is_empty() {
                out.push(c);
            }
        }
        if size == 1 {
            break;
        }
        size = size.div_ceil(2);
    }
    if case.config.cpuid.is_some() {
        out.push(Case { config: Config { cpuid: None, ..case.config.clone() }, ..case.clone() });
    }
    if case.config.xcr0.is_some() {
        out.push(Case { config: Config { xcr0: None, ..case.config.clone() }, ..case.clone() });
    }
    if let Some(t) = &case.config.cpuid {
        for v in table_variants(t) {
            out.push(Case { config: Config { cpuid: Some(v), ..case.config.clone() }, ..case.clone() });
        }
    }
    if let Some(x) = case.config.xcr0 {
        for v in clear_bits(x) {
            out.push(Case { config: Config { xcr0: Some(v), ..case.config.clone() }, ..case.clone() });
        }
    }
    for (i, op) in case.ops.iter().enumerate() {
        for v in op_variants(op) {
            let mut c = case.clone();
            c.ops[i] = v;
            out.push(c);
        }
    }
    out
}

fn clear_bits(x: u64) -> Vec<u64> {
    (0..64).rev().filter(|b| x & (1u64 << b) != 0).map(|b| x & !(1u64 << b)).collect()
}

fn table_variants(t: &CpuidTable) -> Vec<CpuidTable> {
    let mut v = Vec::new();
    match &t.base {
        CpuidBase::Empty => {}
        CpuidBase::Supported { xcr0_mask, drop_leaves } => {
            v.push(CpuidTable { base: CpuidBase::Subset { leaves: vec![0xd], xcr0_mask: *xcr0_mask }, ..t.clone() });
            v.push(CpuidTable { base: CpuidBase::Empty, ..t.clone() });
            if !drop_leaves.is_empty() {
                v.push(CpuidTable { base: CpuidBase::Supported { xcr0_mask: *xcr0_mask, drop_leaves: vec![] }, ..t.clone() });
            }
            for m in clear_bits(*xcr0_mask) {
                v.push(CpuidTable { base: CpuidBase::Supported { xcr0_mask: m, drop_leaves: drop_leaves.clone() }, ..t.clone() });
            }
        }
        CpuidBase::Subset { leaves, xcr0_mask } => {
            v.push(CpuidTable { base: CpuidBase::Empty, ..t.clone() });
            for i in 0..leaves.len() {
                let mut l = leaves.clone();
                l.remove(i);
                v.push(CpuidTable { base: CpuidBase::Subset { leaves: l, xcr0_mask: *xcr0_mask }, ..t.clone() });
            }
            for m in clear_bits(*xcr0_mask) {
                v.push(CpuidTable { base: CpuidBase::Subset { leaves: leaves.clone(), xcr0_mask: m }, ..t.clone() });
            }
        }
    }
    if t.entries.len() > 1 {
        let half = t.entries.len() / 2;
        v.push(CpuidTable { entries: t.entries[..half].to_vec(), ..t.clone() });
        v.push(CpuidTable { entries: t.entries[half..].to_vec(), ..t.clone() });
    }
    v.extend(without_each(t, |y| &mut y.entries));
    for (i, e) in t.entries.iter().enumerate() {
        for r in [CpuidEntry { ebx: 0, ..*e }, CpuidEntry { ecx: 0, ..*e }, CpuidEntry { edx: 0, ..*e }, CpuidEntry { eax: 0, ..*e }] {
            if r != *e {
                let mut es = t.entries.clone();
                es[i] = r;
                v.push(CpuidTable { entries: es, ..t.clone() });
            }
        }
    }
    if t.reverse {
        v.push(CpuidTable { reverse: false, ..t.clone() });
    }
    v
}

/// One copy of `x` per element of the list `field` selects, with that element removed.
fn without_each<T: Clone, E>(x: &T, field: impl Fn(&mut T) -> &mut Vec<E>) -> Vec<T> {
    let n = field(&mut x.clone()).len();
    (0..n)
        .map(|i| {
            let mut y = x.clone();
            field(&mut y).remove(i);
            y
        })
        .collect()
}

fn image_variants(x: &XsaveImage) -> Vec<XsaveImage> {
    let mut v = Vec::new();
    let init = XsaveImage::init(x.xstate_bv);
    for i in 0..x.patches.len() {
        let mut y = x.clone();
        y.patches.remove(i);
        v.push(y);
        if x.patches[i].bytes.len() > 1 {
            let mut y = x.clone();
            let l = y.patches[i].bytes.len() / 2;
            y.patches[i].bytes.truncate(l);
            v.push(y);
        }
    }
    v.extend(without_each(x, |y| &mut y.components));
    v.extend(without_each(x, |y| &mut y.hdr_reserved));
    let fields: [fn(&mut XsaveImage, &XsaveImage); 13] = [
        |y, i| y.xcomp_bv = i.xcomp_bv,
        |y, i| y.st_seed = i.st_seed,
        |y, i| y.xmm_seed = i.xmm_seed,
        |y, i| y.pad_seed = i.pad_seed,
        |y, i| y.fcw = i.fcw,
        |y, i| y.fsw = i.fsw,
        |y, i| y.ftw = i.ftw,
        |y, i| y.fop = i.fop,
        |y, i| y.fip = i.fip,
        |y, i| y.fdp = i.fdp,
        |y, i| y.mxcsr = i.mxcsr,
        |y, i| y.mxcsr_mask = i.mxcsr_mask,
        |y, i| y.pkru = i.pkru,
    ];
    for f in fields {
        let mut y = x.clone();
        f(&mut y, &init);
        if y != *x {
            v.push(y);
        }
    }
    for c in 0..x.components.len() {
        if x.components[c].seed != 0 {
            let mut y = x.clone();
            y.components[c].seed = 0;
            v.push(y);
        }
    }
    for bv in clear_bits(x.xstate_bv) {
        v.push(XsaveImage { xstate_bv: bv, ..x.clone() });
    }
    v
}

fn xcrs_variants(x: &XcrsImage) -> Vec<XcrsImage> {
    let mut v = Vec::new();
    for i in 0..x.xcrs.len() {
        let mut y = x.clone();
        y.xcrs.remove(i);
        if y.nr_xcrs as usize > y.xcrs.len() && x.nr_xcrs as usize == x.xcrs.len() {
            y.nr_xcrs -= 1;
        }
        v.push(y);
    }
    for y in [
        XcrsImage { flags: 0, ..x.clone() },
        XcrsImage { padding_seed: 0, ..x.clone() },
        XcrsImage { nr_xcrs: x.xcrs.len() as u32, ..x.clone() },
    ] {
        if y != *x {
            v.push(y);
        }
    }
    for (i, e) in x.xcrs.iter().enumerate() {
        let mut y = x.clone();
        y.xcrs[i].reserved = 0;
        if y != *x {
            v.push(y);
        }
        for val in clear_bits(e.value) {
            let mut y = x.clone();
            y.xcrs[i].value = val;
            v.push(y);
        }
    }
    v
}

fn op_variants(op: &Op) -> Vec<Op> {
    match op {
        Op::SetCpuid2(t) => table_variants(t).into_iter().map(Op::SetCpuid2).collect(),
        Op::SetXsave(x) => image_variants(x).into_iter().map(Op::SetXsave).collect(),
        Op::SetXcrs(x) => xcrs_variants(x).into_iter().map(Op::SetXcrs).collect(),
        Op::RestoreLast { force_xstate_bv: Some(bv) } => {
            let mut v = vec![Op::RestoreLast { force_xstate_bv: None }];
            v.extend(clear_bits(*bv).into_iter().map(|b| Op::RestoreLast { force_xstate_bv: Some(b) }));
            v
        }
        Op::GetXsave2 => vec![Op::GetXsave],
        _ => Vec::new(),
    }
}
