//! Open311 GeoReport v2 conformance walk with plain HTTP against intake in-process: every endpoint
//! in JSON and XML, every error shape (400, 401, 403, 404, 405), idempotency, merging, status from
//! dispatch's events; and a property: arbitrary POST bodies never crash it and reach the outbox
//! (the only way to NATS) only when they are valid reports.

mod common;

use common::{API_KEY, HttpAnswer, form, http, start_on};
use proptest::prelude::*;
use std::net::SocketAddr;
use std::sync::Arc;
use whistle_platform::envelope::Payload;
use whistle_proto::events::CaseClosed;
use whistle_proto::intake::CaseState;

fn error_description(answer: &HttpAnswer, status: u16) -> String {
    assert_eq!(answer.status, status, "{}", answer.body);
    if answer.content_type.starts_with("application/json") {
        let errors = answer.json();
        let error = &errors.as_array().expect("an error array")[0];
        assert_eq!(error["code"], serde_json::json!(status), "{errors}");
        error["description"]
            .as_str()
            .expect("description")
            .to_string()
    } else {
        assert!(
            answer.content_type.starts_with("text/xml"),
            "{}",
            answer.content_type
        );
        let prefix = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><errors><error><code>{status}</code><description>"
        );
        assert!(answer.body.starts_with(&prefix), "{}", answer.body);
        answer.body[prefix.len()..]
            .split("</description>")
            .next()
            .expect("description")
            .to_string()
    }
}

async fn post(address: SocketAddr, path: &str, pairs: &[(&str, &str)]) -> HttpAnswer {
    http(
        address,
        "POST",
        path,
        &[(
            "Content-Type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )],
        &form(pairs),
    )
    .await
}

async fn get(address: SocketAddr, path: &str) -> HttpAnswer {
    http(address, "GET", path, &[], b"").await
}

#[tokio::test]
async fn a_georeport_v2_client_walks_every_endpoint() {
    let mut harness = start_on(None, true, |config| {
        config.open311.jurisdiction_id = Some("shiyan.gov.cn".into());
    })
    .await;
    let api = harness.open311.expect("open311");

    // discovery, XML by default
    let discovery = get(api, "/discovery").await;
    assert_eq!(discovery.status, 200);
    assert!(discovery.content_type.starts_with("text/xml"));
    assert!(
        discovery
            .body
            .contains("<specification>http://wiki.open311.org/GeoReport_v2</specification>"),
        "{}",
        discovery.body
    );
    let discovery = get(api, "/discovery.json").await.json();
    assert_eq!(
        discovery["endpoints"][0]["formats"],
        serde_json::json!(["text/xml", "application/json"])
    );
    assert_eq!(discovery["endpoints"][0]["url"], format!("http://{api}"));

    // service list, in both formats
    let services = get(api, "/services.json?jurisdiction_id=shiyan.gov.cn").await;
    assert!(services.content_type.starts_with("application/json"));
    let services = services.json();
    let garbage = services
        .as_array()
        .expect("array")
        .iter()
        .find(|service| service["service_code"] == "E-01-03")
        .expect("E-01-03");
    assert_eq!(garbage["service_name"], "垃圾满溢");
    assert_eq!(garbage["metadata"], true);
    assert_eq!(garbage["type"], "realtime");
    assert_eq!(garbage["group"], "市容环境");
    let xml = get(api, "/services.xml").await;
    assert!(
        xml.body.starts_with(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><services><service><service_code>"
        ),
        "{}",
        xml.body
    );
    let other_city = get(api, "/services.json?jurisdiction_id=beijing.gov.cn").await;
    assert!(error_description(&other_city, 404).contains("jurisdiction_id"));

    // service definition
    let definition = get(api, "/services/E-01-03.json").await.json();
    assert_eq!(definition["service_code"], "E-01-03");
    let codes: Vec<&str> = definition["attributes"]
        .as_array()
        .expect("attributes")
        .iter()
        .map(|attribute| attribute["code"].as_str().expect("code"))
        .collect();
    assert_eq!(codes, ["severity", "datum", "observed_at"]);
    assert_eq!(definition["attributes"][1]["values"][1]["key"], "GCJ02");
    let xml = get(api, "/services/E-01-03.xml").await;
    assert!(
        xml.body
            .contains("<attributes><attribute><variable>true</variable><code>severity</code>"),
        "{}",
        xml.body
    );
    assert!(error_description(&get(api, "/services/E-99-99.json").await, 404).contains("E-99-99"));
    assert!(error_description(&get(api, "/services/E-99-99.xml").await, 404).contains("E-99-99"));

    // POST errors, each in the spec's array shape
    let (lat, long) =
        whistle_proto::datum::from_wgs84(whistle_proto::types::Datum::Gcj02, 32.6369, 110.7986);
    let (lat, long) = (lat.to_string(), long.to_string());
    let valid: Vec<(&str, &str)> = vec![
        ("api_key", API_KEY),
        ("jurisdiction_id", "shiyan.gov.cn"),
        ("service_code", "E-01-03"),
        ("lat", &lat),
        ("long", &long),
        ("attribute[datum]", "GCJ02"),
        ("attribute[severity]", "urgent"),
        ("address_string", "中岳路2号"),
        ("account_id", "resident-88"),
        ("description", "垃圾桶满了，堆到路上"),
        ("media_url", "https://photos.example/1.jpg"),
    ];
    let without = |name: &str| -> Vec<(&str, &str)> {
        valid
            .iter()
            .copied()
            .filter(|(field, _)| *field != name)
            .collect()
    };
    let with = |name: &'static str, value: &'static str| -> Vec<(&str, &str)> {
        let mut pairs = without(name);
        pairs.push((name, value));
        pairs
    };
    let missing_key = post(api, "/requests.json", &without("api_key")).await;
    assert!(error_description(&missing_key, 401).contains("api_key"));
    let wrong_key = post(api, "/requests.xml", &with("api_key", "guess")).await;
    assert!(error_description(&wrong_key, 403).contains("Invalid api_key"));
    assert!(
        error_description(
            &post(api, "/requests.json", &without("service_code")).await,
            400
        )
        .contains("service_code")
    );
    assert!(
        error_description(
            &post(api, "/requests.json", &with("service_code", "E-99-99")).await,
            404
        )
        .contains("E-99-99")
    );
    assert!(
        error_description(
            &post(
                api,
                "/requests.json",
                &with("jurisdiction_id", "beijing.gov.cn")
            )
            .await,
            404
        )
        .contains("jurisdiction_id")
    );
    let mut nowhere = without("lat");
    nowhere.retain(|(field, _)| *field != "long");
    assert!(
        error_description(&post(api, "/requests.json", &nowhere).await, 400)
            .contains("address_string alone")
    );
    assert!(
        error_description(&post(api, "/requests.json", &without("long")).await, 400)
            .contains("together")
    );
    assert!(
        error_description(
            &post(api, "/requests.json", &without("description")).await,
            400
        )
        .starts_with("description:")
    );
    assert!(
        error_description(
            &post(api, "/requests.json", &with("attribute[datum]", "UTM")).await,
            400
        )
        .contains("attribute[datum]")
    );
    assert!(
        error_description(
            &post(api, "/requests.xml", &with("lat", "north")).await,
            400
        )
        .starts_with("lat:")
    );
    let beijing = post(
        api,
        "/requests.json",
        &[
            ("api_key", API_KEY),
            ("service_code", "E-01-03"),
            ("lat", "39.915"),
            ("long", "116.404"),
            ("description", "far away"),
        ],
    )
    .await;
    assert!(error_description(&beijing, 400).contains("lies in no grid"));

    // a valid request: GCJ-02 position from an AMap-based app, found in 永福花园
    let created = post(api, "/requests.json", &valid).await;
    assert_eq!(created.status, 200, "{}", created.body);
    let created = created.json();
    let id = created[0]["service_request_id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(created[0]["account_id"], "resident-88");
    assert!(
        created[0].get("token").is_none(),
        "realtime: an id, no token"
    );
    // the same form again (a double tap) is the same request
    let again = post(api, "/requests.json", &valid).await.json();
    assert_eq!(again[0]["service_request_id"], id.as_str());

    // a neighbour reports the same bin 15 m away with its own words: merged
    let (near_lat, near_long) = (
        (32.6369 + 15.0 / 111_195.0).to_string(),
        "110.7986".to_string(),
    );
    let neighbour = post(
        api,
        "/requests.xml",
        &[
            ("api_key", API_KEY),
            ("service_code", "E-01-03"),
            ("lat", &near_lat),
            ("long", &near_long),
            ("email", "li@example.cn"),
            ("description", "小区门口垃圾满溢"),
        ],
    )
    .await;
    assert_eq!(neighbour.status, 200, "{}", neighbour.body);
    assert!(
        neighbour
            .body
            .starts_with("<?xml version=\"1.0\" encoding=\"utf-8\"?><service_requests><request><service_request_id>"),
        "{}",
        neighbour.body
    );
    assert!(
        neighbour.body.contains("merged with an open report"),
        "{}",
        neighbour.body
    );
    assert!(
        neighbour.body.contains("<account_id/>"),
        "{}",
        neighbour.body
    );
    let neighbour_id = neighbour
        .body
        .split("<service_request_id>")
        .nth(1)
        .and_then(|rest| rest.split('<').next())
        .expect("id")
        .to_string();

    // by grid code alone (address_id), with a client-chosen Idempotency-Key
    let by_grid = http(
        api,
        "POST",
        "/requests.json",
        &[("Idempotency-Key", "app-7f3a-0001")],
        &form(&[
            ("api_key", API_KEY),
            ("service_code", "E-05-07"),
            ("address_id", "420303003003001"),
            ("description", "消防通道被车堵住"),
            ("attribute[severity]", "emergency"),
        ]),
    )
    .await;
    assert_eq!(by_grid.status, 200, "{}", by_grid.body);
    let by_grid_id = by_grid.json()[0]["service_request_id"]
        .as_str()
        .expect("id")
        .to_string();
    let reused = http(
        api,
        "POST",
        "/requests.json",
        &[("Idempotency-Key", "app-7f3a-0001")],
        &form(&[
            ("api_key", API_KEY),
            ("service_code", "E-05-07"),
            ("address_id", "420303003003001"),
            ("description", "another problem"),
        ]),
    )
    .await;
    assert!(error_description(&reused, 400).contains("already used"));

    // GET one request, JSON and XML
    let one = get(api, &format!("/requests/{id}.json")).await.json();
    let request = &one[0];
    assert_eq!(request["service_request_id"], id.as_str());
    assert_eq!(request["status"], "open");
    assert_eq!(request["service_code"], "E-01-03");
    assert_eq!(request["service_name"], "垃圾满溢");
    assert_eq!(request["address_id"], "420303003001001");
    assert_eq!(request["media_url"], "https://photos.example/1.jpg");
    let stored_lat = request["lat"].as_f64().expect("lat");
    assert!(
        (stored_lat - 32.6369).abs() < 1e-6,
        "WGS-84 out: {stored_lat}"
    );
    assert!(
        request["requested_datetime"]
            .as_str()
            .expect("time")
            .ends_with('Z')
    );
    let xml = get(api, &format!("/requests/{neighbour_id}.xml")).await;
    assert!(xml.body.contains("<status>open</status>"), "{}", xml.body);
    assert!(xml.body.contains("merged into case"), "{}", xml.body);
    assert!(xml.body.contains("<zipcode/>"), "{}", xml.body);
    assert!(error_description(&get(api, "/requests/nope.json").await, 404).contains("nope"));

    // tokens: the idempotency key of a request
    let token = get(api, "/tokens/app-7f3a-0001.json").await.json();
    assert_eq!(token[0]["service_request_id"], by_grid_id.as_str());
    assert_eq!(token[0]["token"], "app-7f3a-0001");
    let token = get(api, "/tokens/app-7f3a-0001.xml").await;
    assert!(
        token.body.contains("<token>app-7f3a-0001</token>"),
        "{}",
        token.body
    );
    assert!(error_description(&get(api, "/tokens/unknown.xml").await, 404).contains("unknown"));

    // GET requests: filters and paging
    let all = get(api, "/requests.json").await.json();
    assert_eq!(all.as_array().expect("array").len(), 3);
    let garbage = get(api, "/requests.json?service_code=E-01-03&status=open")
        .await
        .json();
    assert_eq!(garbage.as_array().expect("array").len(), 2);
    let page = get(api, "/requests.json?page_size=1&page=2").await.json();
    assert_eq!(page.as_array().expect("array").len(), 1);
    let chosen = get(
        api,
        &format!("/requests.json?service_request_id={id},{by_grid_id}&status=closed"),
    )
    .await
    .json();
    assert_eq!(
        chosen.as_array().expect("array").len(),
        2,
        "ids override the other filters"
    );
    assert!(
        error_description(
            &get(
                api,
                "/requests.json?start_date=2026-01-01T00:00:00Z&end_date=2026-06-01T00:00:00Z"
            )
            .await,
            400
        )
        .contains("90 days")
    );
    assert!(
        error_description(&get(api, "/requests.xml?start_date=yesterday").await, 400)
            .starts_with("start_date:")
    );
    assert!(
        error_description(&get(api, "/requests.json?status=pending").await, 400)
            .starts_with("status:")
    );

    // dispatch closes the case: both reports read closed, with a note
    let case_id = harness
        .client
        .get_report(whistle_proto::intake::GetReportRequest {
            report_id: id.clone(),
        })
        .await
        .expect("get")
        .into_inner()
        .case_id;
    harness
        .dispatch_publishes(&case_id, Payload::CaseClosed(CaseClosed {}))
        .await;
    harness.wait_case_state(&id, CaseState::Closed).await;
    let closed = get(api, "/requests.json?status=closed").await.json();
    let closed = closed.as_array().expect("array");
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed.iter().all(|request| request["status"] == "closed"));
    assert!(
        closed[0]["status_notes"]
            .as_str()
            .expect("notes")
            .contains("closed after verification")
    );

    // what HTTP allows but the spec does not
    assert_eq!(
        error_description(&http(api, "DELETE", "/requests.json", &[], b"").await, 405),
        "DELETE is not allowed here"
    );
    assert!(error_description(&get(api, "/reports.json").await, 404).contains("/reports.json"));

    // two cases, one merge on the stream: the retries published nothing
    let kinds = common::kinds(&harness.case_events().await);
    assert_eq!(
        kinds.iter().filter(|kind| *kind == "case.reported").count(),
        2,
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|kind| *kind == "case.merged").count(),
        1,
        "{kinds:?}"
    );
    harness.served.stop().await;
}

/// Form bodies as clients (and fuzzers) send them: a valid request with up to three fields
/// removed or replaced by a wrong or odd value (places inside and outside the grids, other datums,
/// texts with control characters), or raw bytes.
fn bodies() -> BoxedStrategy<Vec<u8>> {
    use whistle_platform::testing::arbitrary::text;
    const VALID: [(&str, &str); 8] = [
        ("api_key", API_KEY),
        ("service_code", "E-01-03"),
        ("lat", "32.6369"),
        ("long", "110.7986"),
        ("description", "垃圾满溢"),
        ("attribute[severity]", "urgent"),
        ("account_id", "resident-1"),
        ("address_string", "中岳路2号"),
    ];
    let replacement = prop_oneof![
        Just(("api_key", "guess".to_string())),
        Just(("service_code", "E-05-07".to_string())),
        Just(("service_code", "E-99-99".to_string())),
        Just(("lat", "32.64".to_string())),
        Just(("long", "110.80".to_string())),
        Just(("lat", "39.9".to_string())),
        Just(("lat", "NaN".to_string())),
        Just(("long", "-181".to_string())),
        Just(("address_id", "420303003003001".to_string())),
        Just(("address_id", "123".to_string())),
        Just(("attribute[datum]", "GCJ02".to_string())),
        Just(("attribute[datum]", "bd-09".to_string())),
        Just(("attribute[datum]", "UTM".to_string())),
        Just(("attribute[severity]", "meh".to_string())),
        Just((
            "attribute[observed_at]",
            "2026-11-01T08:00:00+08:00".to_string()
        )),
        Just(("attribute[observed_at]", "2999-01-01T00:00:00Z".to_string())),
        Just(("media_url", "https://p.example/1.jpg".to_string())),
        Just(("media_url", "p.jpg".to_string())),
        text(12).prop_map(|value| ("description", value)),
        text(140).prop_map(|value| ("account_id", value)),
        text(8).prop_map(|value| ("service_code", value)),
        text(8).prop_map(|value| ("lat", value)),
    ];
    let change = prop_oneof![
        1 => (0..VALID.len()).prop_map(Err),
        3 => replacement.prop_map(Ok),
    ];
    let form_body =
        (proptest::collection::vec(change, 0..4), 0u32..1000).prop_map(|(changes, salt)| {
            let mut fields: Vec<(&str, String)> = VALID
                .iter()
                .map(|(name, value)| (*name, value.to_string()))
                .collect();
            for change in changes {
                match change {
                    Err(removed) => {
                        let name = VALID[removed].0;
                        fields.retain(|(field, _)| *field != name);
                    }
                    Ok((name, value)) => {
                        fields.retain(|(field, _)| *field != name);
                        fields.push((name, value));
                    }
                }
            }
            // most bodies differ, so most valid ones are new reports rather than repeats
            fields.push(("device_id", format!("device-{salt}")));
            let mut serializer = form_urlencoded::Serializer::new(String::new());
            for (name, value) in &fields {
                serializer.append_pair(name, value);
            }
            serializer.finish().into_bytes()
        });
    prop_oneof![
        4 => form_body,
        1 => proptest::collection::vec(any::<u8>(), 0..300),
    ]
    .boxed()
}

#[test]
fn arbitrary_posts_never_crash_and_reach_nats_only_when_valid() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let harness = runtime.block_on(start_on(None, true, |_| {}));
    let api = harness.open311.expect("open311");
    let db = runtime.block_on(harness.db());
    let outbox_rows = || {
        runtime.block_on(async {
            use sea_orm::{EntityTrait, PaginatorTrait};
            whistle_platform::outbox::entity::Entity::find()
                .count(&db)
                .await
                .expect("count")
        })
    };
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 128,
        failure_persistence: None,
        ..Default::default()
    });
    let counted = accepted.clone();
    runner
        .run(&bodies(), |body| {
            let before = outbox_rows();
            let answer = runtime.block_on(http(
                api,
                "POST",
                "/requests.json",
                &[("Content-Type", "application/x-www-form-urlencoded")],
                &body,
            ));
            let after = outbox_rows();
            let json = answer.json();
            prop_assert!(json.is_array(), "{}", answer.body);
            match answer.status {
                200 => {
                    // a new report adds its event; a repeat of an accepted form adds none
                    prop_assert!(
                        after - before <= 1,
                        "{} events for one report",
                        after - before
                    );
                    prop_assert!(json[0]["service_request_id"].is_string());
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                400 | 401 | 403 | 404 | 413 => {
                    prop_assert_eq!(after, before, "a refused request reached the outbox");
                    prop_assert_eq!(&json[0]["code"], &serde_json::json!(answer.status));
                }
                other => prop_assert!(false, "unexpected status {other}: {}", answer.body),
            }
            Ok(())
        })
        .expect("property");
    let accepted = accepted.load(std::sync::atomic::Ordering::Relaxed);
    println!("{accepted} of 128 generated posts were valid reports");
    assert!(accepted > 0, "the generator never reached a valid report");
    runtime.block_on(harness.served.stop());
}
