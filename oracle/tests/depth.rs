//! Judging to a depth: `judge_to(.., Triage)` then `complete` is exactly `judge`, and the
//! signature (and class) is the same at every depth. Campaigns rely on it: they triage every
//! diverging case and complete only new signatures; the minimizer checks signatures only.
//! And the quirk tries' `agrees` is exactly `diff(..) == Agree`, and the tries they skip (quirks
//! the prediction never asked about) would have predicted the same.

use arbitrary::Unstructured;
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use xsave_oracle::diff::{agrees, diff};
use xsave_oracle::gen::{case, GenOptions};
use xsave_oracle::host::{HostFacts, Quirk};
use xsave_oracle::judge::{complete, judge, judge_to, Depth};
use xsave_oracle::model::{predict, predict_following, predict_following_consulting, Contract, ModelConfig};
use xsave_oracle::verdict::Verdict;

#[test]
fn triage_then_complete_is_judge_and_every_depth_gives_the_same_signature() {
    let mut host = HostFacts::synthetic(0x2e7, 0xffff);
    // Quirks the host has but the strict oracle does not model: the quirk tries run too.
    host.quirks = vec![Quirk::PvmCpuidRewrite, Quirk::KvmFpuLegacy];
    let strict = ModelConfig::default();
    let mut rng = SmallRng::seed_from_u64(0xde97);
    let (mut diverged, mut completed, mut agreed) = (0, 0, 0);
    for contract in [Contract::V0, Contract::V1, Contract::V2a, Contract::V2b] {
        let kernel = ModelConfig::new(contract, vec![Quirk::KvmFpuLegacy]);
        for _ in 0..300 {
            let mut bytes = [0u8; 1536];
            rng.fill_bytes(&mut bytes);
            let Ok(c) = case(&mut Unstructured::new(&bytes), GenOptions::default()) else { continue };
            let observed = predict(&c, &host, &kernel);
            let (expected, full) = judge(&c, &host, &strict, &observed);
            let (e2, triaged) = judge_to(&c, &host, &strict, &observed, Depth::Triage);
            let (_, sig) = judge_to(&c, &host, &strict, &observed, Depth::Signature);
            assert_eq!(expected, e2);
            // The quirk tries' agreement check is diff's, without building the divergence.
            for quirks in [vec![], vec![Quirk::PvmCpuidRewrite], vec![Quirk::KvmFpuLegacy], host.quirks.clone()] {
                let with = ModelConfig::new(Contract::V3, quirks);
                let alt = predict(&c, &host, &with);
                let agree = diff(&c, &host, &with, &alt, &observed) == Verdict::Agree;
                assert_eq!(agrees(&c, &alt, &observed), agree, "{c:?}");
                agreed += usize::from(agree);
            }
            match (full, triaged, sig) {
                (Verdict::Agree, Verdict::Agree, Verdict::Agree) => {}
                (Verdict::Diverge(f), Verdict::Diverge(mut t), Verdict::Diverge(s)) => {
                    diverged += 1;
                    assert_eq!((&s.signature, s.class), (&f.signature, f.class));
                    assert_eq!((&t.signature, t.class, t.violated, &t.known_issue), (&f.signature, f.class, f.violated, &f.known_issue));
                    complete(&c, &host, &strict, &expected, &observed, &mut t);
                    completed += usize::from(!f.consequences.is_empty() || !f.further.is_empty());
                    assert_eq!(t, f);
                }
                other => panic!("depths disagree on whether {c:?} diverges: {other:?}"),
            }
        }
    }
    // The comparison covered divergences, and some whose completion adds something.
    assert!(diverged > 50 && completed > 0, "{diverged} divergences, {completed} with consequences");
    assert!(agreed > 50, "{agreed} agreeing predictions");
}

#[test]
fn a_quirk_the_prediction_never_asked_about_changes_nothing() {
    let all = [Quirk::PvmCpuidRewrite, Quirk::PvmHwXcr0, Quirk::KvmFpuLegacy, Quirk::TcgXsaveFop, Quirk::TcgX87NoMf];
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let mut rng = SmallRng::seed_from_u64(0x9a11);
    let (mut skipped, mut asked_n) = (0, 0);
    for contract in [Contract::V1, Contract::V2b, Contract::V3] {
        let cfg = ModelConfig::new(Contract::V3, vec![]);
        let kernel = ModelConfig::new(contract, vec![Quirk::PvmHwXcr0]);
        for _ in 0..300 {
            let mut bytes = [0u8; 1536];
            rng.fill_bytes(&mut bytes);
            let Ok(c) = case(&mut Unstructured::new(&bytes), GenOptions::default()) else { continue };
            let observed = predict(&c, &host, &kernel);
            let (base, asked) = predict_following_consulting(&c, &host, &cfg, &observed, &all);
            assert_eq!(base, predict_following(&c, &host, &cfg, &observed));
            for q in all {
                let with = ModelConfig::new(Contract::V3, vec![q]);
                if asked.contains(&q) {
                    asked_n += 1;
                } else {
                    skipped += 1;
                    assert_eq!(predict_following(&c, &host, &with, &observed), base, "{q:?} not asked about, yet it changes {c:?}");
                }
            }
        }
    }
    assert!(skipped > 100 && asked_n > 100, "{skipped} skipped, {asked_n} asked");
}
