//! # xsave-oracle
//!
//! A pure (no I/O) reference model of the Linux KVM x86 XSAVE userspace ABI contract
//! (`KVM_SET_CPUID2`, `KVM_GET/SET_XSAVE`, `KVM_GET_XSAVE2`, `KVM_GET/SET_XCRS`,
//! `KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2)`), the [`case::Case`] format that drives it, and the
//! differential [`diff`] that compares a prediction with an observation, and the [`judge`]
//! that explains a divergence ([`verdict`] is what both say).
//!
//! The model is derived from the written contract (`shared/spec/kvm-xsave-contract.md`), one
//! function per rule; each rule has a stable id ([`rules::Rule`]) and every prediction records
//! the rules that decided it. Host facts ([`host::HostFacts`]) are inputs, never constants.
//! Host departures from upstream ([`host::Quirk`]) are modelled only when asked.

#![forbid(unsafe_code)]

pub mod abi;
pub mod case;
pub mod cause;
pub mod coverage;
pub mod diff;
pub mod gen;
pub mod guest;
pub mod hash;
pub mod hexnum;
pub mod host;
pub mod invariants;
pub mod judge;
pub mod known;
pub mod model;
pub mod mutate;
pub mod pattern;
pub mod rules;
pub mod trace;
pub mod verdict;
pub mod xfeatures;

/// The ABI module's name before it owned the whole KVM ABI: kept while callers outside the
/// library (the CLI) move to [`abi`].
#[doc(hidden)]
pub use abi as layout;
pub use case::{Case, Op};
pub use diff::diff;
pub use host::{HostFacts, Quirk};
pub use judge::judge;
pub use model::{predict, Contract, ModelConfig};
pub use trace::{OpResult, Ret, Trace};
pub use verdict::{Verdict, VerdictKind};
