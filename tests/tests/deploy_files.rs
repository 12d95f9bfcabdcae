//! Files under deploy/ that must agree with the code.

use std::path::Path;

fn repository_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&full)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", full.display()))
}

/// kustomize cannot reach files outside its folder, so the Kubernetes base carries a copy of the
/// demo catalogue; it must not drift from the one `whistle up` and the tests use.
#[test]
fn the_kubernetes_catalogue_is_the_demo_catalogue() {
    assert_eq!(
        repository_file("deploy/k8s/base/catalogue.json"),
        repository_file("deploy/demo/catalogue.json"),
        "copy deploy/demo/catalogue.json to deploy/k8s/base/catalogue.json"
    );
}

/// Every department of the catalogue is a valid NATS subject token, as subjects require.
#[test]
fn catalogue_codes_are_subject_tokens() {
    let catalogue: serde_json::Value =
        serde_json::from_str(&repository_file("deploy/demo/catalogue.json")).expect("json");
    let departments = catalogue["departments"].as_array().expect("departments");
    assert!(!departments.is_empty());
    for department in departments {
        let code = department["code"].as_str().expect("code");
        assert!(
            whistle_platform::envelope::is_subject_token(code),
            "department code {code:?}"
        );
    }
    for street in catalogue["streets"].as_array().expect("streets") {
        let slug = street["slug"].as_str().expect("slug");
        assert!(
            whistle_platform::envelope::is_subject_token(slug),
            "street slug {slug:?}"
        );
    }
}
