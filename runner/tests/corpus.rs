//! The committed seed corpus (`corpus/seed/*.case`) is exactly what the hand-written seeds
//! encode to; regenerate with `XSAVE_RIG_BLESS=1 cargo test -p xsave-runner --test corpus`.
//! Every seed is valid and agrees with the V3 oracle when the V3 model runs it.

use std::path::PathBuf;
use xsave_oracle::judge::judge;
use xsave_oracle::verdict::Verdict;
use xsave_oracle::{predict, Case, HostFacts, ModelConfig};
use xsave_runner::seeds::seed_corpus;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../corpus/seed")
}

#[test]
fn seed_corpus_is_current() {
    let seeds = seed_corpus();
    let bless = std::env::var("XSAVE_RIG_BLESS").as_deref() == Ok("1");
    if bless {
        let _ = std::fs::remove_dir_all(dir());
        std::fs::create_dir_all(dir()).expect("mkdir");
    }
    for (name, case) in &seeds {
        let path = dir().join(format!("{name}.case"));
        if bless {
            std::fs::write(&path, case.encode()).expect("write seed");
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (regenerate with XSAVE_RIG_BLESS=1)", path.display()));
        assert_eq!(Case::decode(&bytes).expect("seed decodes"), *case, "{} is stale (regenerate with XSAVE_RIG_BLESS=1)", path.display());
    }
    let on_disk = std::fs::read_dir(dir()).expect("corpus dir").count();
    assert_eq!(on_disk, seeds.len(), "files in corpus/seed/ that no seed produces");
}

#[test]
fn seeds_are_deterministic_and_agree_under_v3() {
    assert_eq!(seed_corpus(), seed_corpus());
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    for (name, case) in seed_corpus() {
        let obs = predict(&case, &host, &ModelConfig::default());
        assert_eq!(judge(&case, &host, &ModelConfig::default(), &obs).1, Verdict::Agree, "{name}");
    }
}

/// The seed corpus reaches every contract point that 5 000 generated cases reach (synthetic
/// Intel-layout host, V3).
#[test]
fn seed_corpus_covers_every_reachable_point() {
    use arbitrary::{Arbitrary, Unstructured};
    use rand::{rngs::SmallRng, RngCore, SeedableRng};
    use std::collections::BTreeSet;
    use xsave_oracle::coverage::points;
    let host = HostFacts::synthetic(0x2e7, 0xffff);
    let model = ModelConfig::default();
    let mut reachable = BTreeSet::new();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut bytes = vec![0u8; 2048];
    for _ in 0..5000 {
        rng.fill_bytes(&mut bytes);
        let Ok(c) = Case::arbitrary(&mut Unstructured::new(&bytes)) else { continue };
        reachable.extend(points(&c, &predict(&c, &host, &model)).into_iter().map(|p| p.to_string()));
    }
    let seeded: BTreeSet<String> =
        seed_corpus().iter().flat_map(|(_, c)| points(c, &predict(c, &host, &model)).into_iter().map(|p| p.to_string())).collect();
    let missing: Vec<&String> = reachable.difference(&seeded).collect();
    assert!(missing.is_empty(), "points generated cases reach but no seed does: {missing:?}");
}
