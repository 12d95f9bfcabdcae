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

/// Prometheus in deploy/compose scrapes each service on the admin port that compose configures,
/// which is the service's default; Grafana there provisions the dashboards of deploy/grafana.
#[test]
fn compose_scrapes_the_admin_ports_and_provisions_the_dashboards() {
    let compose = repository_file("deploy/compose/compose.yaml");
    let prometheus = repository_file("deploy/compose/prometheus.yml");
    for (service, prefix, port) in [
        ("intake", "WHISTLE_INTAKE", 9101),
        ("dispatch", "WHISTLE_DISPATCH", 9102),
        ("department-gateway", "WHISTLE_DEPARTMENT_GATEWAY", 9103),
        ("evaluation", "WHISTLE_EVALUATION", 9104),
    ] {
        assert!(
            compose.contains(&format!("{prefix}__ADMIN__LISTEN: 0.0.0.0:{port}")),
            "compose: {service} admin port {port}"
        );
        assert!(
            prometheus.contains(&format!("targets: [\"{service}:{port}\"]")),
            "prometheus.yml scrapes {service}:{port}"
        );
        assert!(
            prometheus.contains(&format!("job_name: whistle-{service}")),
            "prometheus.yml job whistle-{service}"
        );
    }
    assert!(compose.contains("../grafana:/var/lib/grafana/dashboards/whistle:ro"));
    let provider = repository_file("deploy/compose/grafana/dashboards/whistle.yaml");
    assert!(provider.contains("path: /var/lib/grafana/dashboards/whistle"));
    for dashboard in ["whistle-operations.json", "whistle-supervision.json"] {
        let text = repository_file(&format!("deploy/grafana/{dashboard}"));
        let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard json");
        assert!(json["uid"].is_string(), "{dashboard} has a uid");
        assert!(
            !text.to_lowercase().contains("planned"),
            "{dashboard} has a planned panel"
        );
    }
}
