//! The case format: the decoder never panics, binary and JSON round-trip, bounds hold.

use arbitrary::{Arbitrary, Unstructured};
use rand::{rngs::SmallRng, Rng, RngCore, SeedableRng};
use xsave_oracle::case::{Case, DecodeError, FORMAT_VERSION, MAGIC};

fn generated(seed: u64) -> Case {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut bytes = vec![0u8; 2048];
    rng.fill_bytes(&mut bytes);
    Case::arbitrary(&mut Unstructured::new(&bytes)).expect("generation")
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = SmallRng::seed_from_u64(7);
    for i in 0..100_000u32 {
        let n = rng.random_range(0..512);
        let mut b = vec![0u8; n];
        rng.fill_bytes(&mut b);
        if i % 2 == 0 && n >= 5 {
            b[..4].copy_from_slice(MAGIC);
            b[4] = FORMAT_VERSION;
        }
        let _ = Case::decode(&b);
        let _ = Case::from_json(&String::from_utf8_lossy(&b));
    }
}

#[test]
fn mutated_valid_cases_never_panic() {
    let mut rng = SmallRng::seed_from_u64(8);
    for s in 0..5_000u64 {
        let mut b = generated(s).encode();
        for _ in 0..rng.random_range(1..8) {
            let i = rng.random_range(5..b.len().max(6));
            if i < b.len() {
                b[i] = rng.random();
            }
        }
        if rng.random_bool(0.2) {
            b.truncate(rng.random_range(0..b.len()));
        }
        if let Ok(c) = Case::decode(&b) {
            assert!(c.check_limits().is_ok());
            // Anything that decodes re-encodes to something that decodes to the same case.
            assert_eq!(Case::decode(&c.encode()).expect("re-decode"), c);
        }
    }
}

#[test]
fn binary_and_json_round_trip() {
    for s in 0..5_000u64 {
        let c = generated(s);
        let bin = c.encode();
        assert_eq!(Case::decode(&bin).expect("decode"), c, "binary round-trip, seed {s}");
        let json = c.to_json();
        let back = Case::from_json(&json).expect("json");
        assert_eq!(back, c, "JSON round-trip, seed {s}");
        assert_eq!(back.encode(), bin, "JSON → binary gives the same bytes");
    }
}

#[test]
fn header_errors_are_named() {
    assert!(matches!(Case::decode(b"nope"), Err(DecodeError::NoMagic)));
    assert!(matches!(Case::decode(b"XSRC"), Err(DecodeError::Version(0))));
    assert!(matches!(Case::decode(b"XSRC\x09"), Err(DecodeError::Version(9))));
    let mut b = generated(1).encode();
    b.push(0);
    assert!(matches!(Case::decode(&b), Err(DecodeError::Body(_))));
    let too_many = Case { ops: vec![xsave_oracle::Op::GetXsave; 65], ..Case::default() };
    assert!(matches!(Case::decode(&too_many.encode()), Err(DecodeError::Limit(_))));
    assert!(matches!(Case::from_json("{\"ops\": [\"get_xsave\"], \"config\": {\"xcr0\": \"0xzz\"}}"), Err(DecodeError::Json(_))));
}

#[test]
fn json_accepts_hex_and_decimal() {
    let c = Case::from_json(r#"{"config": {"xcr0": 7}, "ops": ["get_xsave", {"get_cpuid2": {"capacity": 4}}]}"#).expect("json");
    assert_eq!(c.config.xcr0, Some(7));
    assert!(c.to_json().contains("\"0x7\""));
}

#[test]
fn generation_is_deterministic() {
    for s in 0..100 {
        assert_eq!(generated(s), generated(s));
    }
}

#[test]
fn model_invariants_hold_on_generated_cases() {
    for s in 0..3_000u64 {
        xsave_oracle::invariants::check(&generated(s));
        xsave_oracle::case::check_round_trip(&generated(s).encode());
    }
}

#[test]
fn mutations_stay_valid_cases() {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut bytes = generated(3).encode();
    for i in 0..20_000u32 {
        let mut entropy = [0u8; 64];
        rng.fill_bytes(&mut entropy);
        bytes = xsave_oracle::mutate::mutate_bytes(&bytes, &entropy);
        let c = Case::decode(&bytes).unwrap_or_else(|e| panic!("mutation {i} produced an undecodable case: {e}"));
        assert!(!c.ops.is_empty());
        if i % 500 == 0 {
            bytes = generated(i as u64).encode();
        }
    }
    // libFuzzer's in-place form respects max_size.
    let mut buf = vec![0u8; 64];
    let n = xsave_oracle::mutate::mutate_in_place(&mut buf, 0, 64, 7);
    assert!(n <= 64);
}
