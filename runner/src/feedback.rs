//! A campaign's coverage feedback: the corpus the mutator draws from, the coverage points and
//! case shapes seen, and the corpus order a checkpoint records. A case that reaches a new point
//! or a new shape joins the corpus.
//!
//! Batched campaigns generate a batch before any of it runs, so they add each case's points
//! as the oracle's plain prediction gives them ([`Feedback::add`]) and check them against the
//! prediction that follows the observation ([`Added::points`]); where the two differ the
//! campaign [`Feedback::undo`]es the speculation and generates again, so a batched campaign
//! makes exactly the cases, corpus and findings of an unbatched one. Only [`Feedback::commit`]
//! touches the disk and the checkpointed order.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use xsave_oracle::{Case, Trace};

/// The feedback state.
#[derive(Default)]
pub struct Feedback {
    /// Coverage points seen.
    points: BTreeSet<String>,
    /// Case shapes seen.
    shapes: HashSet<u64>,
    /// The corpus, in the order entries joined (inbox cases from other workers included).
    pub corpus: Vec<Case>,
    /// Content names of the committed entries of this campaign's corpus, in order.
    pub order: Vec<String>,
}

/// What one case added to a [`Feedback`], to undo or commit it.
pub struct Added {
    /// The case's coverage points, as they were added.
    pub points: BTreeSet<String>,
    new_points: Vec<String>,
    new_shape: bool,
    entry: bool,
    /// Coverage points after the case.
    pub coverage_points: usize,
    /// Rule points after the case.
    pub rules_covered: usize,
    /// Corpus size after the case.
    pub corpus_len: usize,
}

impl Feedback {
    /// The coverage points of `case` under its prediction `expected`.
    pub fn points_of(case: &Case, expected: &Trace) -> BTreeSet<String> {
        xsave_oracle::coverage::points(case, expected).iter().map(|p| p.to_string()).collect()
    }

    /// A stored corpus entry (at start or resume): it joins whatever it covers.
    pub fn seed(&mut self, case: Case, name: String, expected: &Trace) {
        self.absorb(case, expected);
        self.order.push(name);
    }

    /// Another worker's corpus entry: it joins the corpus but not this campaign's order.
    pub fn absorb(&mut self, case: Case, expected: &Trace) {
        self.points.extend(Feedback::points_of(&case, expected));
        self.shapes.insert(xsave_oracle::coverage::shape(&case));
        self.corpus.push(case);
    }

    /// Add `case` with coverage `points`: it joins the corpus when it reaches a new point or a
    /// new shape.
    pub fn add(&mut self, case: &Case, points: BTreeSet<String>) -> Added {
        let new_points: Vec<String> = points.iter().filter(|p| self.points.insert((*p).clone())).cloned().collect();
        let new_shape = self.shapes.insert(xsave_oracle::coverage::shape(case));
        let entry = !new_points.is_empty() || new_shape;
        if entry {
            self.corpus.push(case.clone());
        }
        Added {
            points,
            new_points,
            new_shape,
            entry,
            coverage_points: self.points.len(),
            rules_covered: self.points.iter().filter(|p| xsave_oracle::rules::Rule::from_id(p).is_some()).count(),
            corpus_len: self.corpus.len(),
        }
    }

    /// Take back the last [`Feedback::add`] not yet undone (`a` must be that one: undo in
    /// reverse order of adding).
    pub fn undo(&mut self, case: &Case, a: Added) {
        for p in &a.new_points {
            self.points.remove(p);
        }
        if a.new_shape {
            self.shapes.remove(&xsave_oracle::coverage::shape(case));
        }
        if a.entry {
            self.corpus.pop();
        }
    }

    /// The case is judged: a new corpus entry is written to `dir` (atomically) and recorded in
    /// the order a checkpoint saves.
    pub fn commit(&mut self, case: &Case, a: &Added, dir: Option<&Path>) -> Result<(), (std::path::PathBuf, std::io::Error)> {
        if !a.entry {
            return Ok(());
        }
        let bytes = case.encode();
        if let Some(cd) = dir {
            let path = cd.join(xsave_oracle::hash::content_name(&bytes));
            crate::store::write_atomic(&path, &bytes).map_err(|e| (path, e))?;
        }
        self.order.push(xsave_oracle::hash::content_hash(&bytes));
        Ok(())
    }
}
