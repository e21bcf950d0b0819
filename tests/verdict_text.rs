//! Verdict text never claims more than was compared.

use xsave_testkit::{kvm_or_skip, Rig};

const RIG: Rig = Rig::new(env!("CARGO_BIN_EXE_xsave-rig"));

/// On a host with the `pvm-cpuid-rewrite` quirk, leaf 1 ECX/EDX are host-owned and left
/// unpredicted: the text verdict and the JSON both say so. Elsewhere (stock KVM) every byte
/// is predicted and the verdict is a plain AGREE.
#[test]
fn agree_names_unpredicted_bytes() {
    if !kvm_or_skip("agree_names_unpredicted_bytes") {
        return;
    }
    let case = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/leaf1-without-0xd.json");
    let probe: serde_json::Value = serde_json::from_slice(&RIG.run(&["probe", "--json"]).stdout).expect("probe json");
    let quirk = probe["quirks"].as_array().is_some_and(|q| q.iter().any(|q| q == "pvm-cpuid-rewrite"));
    let o = RIG.run(&["replay", case]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{text}{}", String::from_utf8_lossy(&o.stderr));
    let o = RIG.run(&["replay", case, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    if quirk {
        assert!(text.contains("AGREE (8 bytes not predicted: CPUID leaf 0x1 ECX/EDX)"), "{text}");
        assert!(!text.contains("every return value and byte as predicted"), "{text}");
        assert_eq!(v[0]["unpredicted"]["bytes"], 8, "{v}");
        assert_eq!(v[0]["unpredicted"]["regions"][0], "CPUID leaf 0x1 ECX/EDX");
    } else {
        assert!(text.contains("AGREE: 2 steps, every return value and byte as predicted"), "{text}");
        assert!(v[0]["unpredicted"].is_null(), "{v}");
    }
    // Under strict upstream rules nothing is left unpredicted, whatever the verdict.
    let o = RIG.run(&["replay", case, "--quirks", "none", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert!(v[0]["unpredicted"].is_null(), "{v}");
}
