//! Reports by position: the grid is found from the demo catalogue's boundaries, GCJ-02 and BD-09
//! positions are stored as WGS-84, a position in no grid is INVALID_ARGUMENT naming `place`, and
//! `ImportGrids` changes the registry of every replica without a restart.

mod common;

use common::{garbage_report, garbage_report_north, start};
use std::time::Duration;
use tonic::Code;
use tonic_types::StatusExt;
use whistle_platform::testing::serve;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::intake::{Area, GetReportRequest, ImportGridsRequest, LocateGridRequest};
use whistle_proto::types::Datum;

#[tokio::test]
async fn a_report_by_position_lands_in_its_grid_whatever_the_datum() {
    let mut harness = start(|_| {}).await;

    // 中岳路2号 by WGS-84 position only
    let answer = harness
        .client
        .submit_report(garbage_report_north("by-position", 0.0))
        .await
        .expect("located")
        .into_inner();
    let region = answer.region.expect("region");
    assert_eq!(region.grid_code, "420303003001001", "永福花园");
    assert_eq!(region.community_code, "420303003001");
    assert_eq!(region.street_slug, "chechenglu");

    // the same place as AMap (GCJ-02) and Baidu (BD-09) report it: a few hundred metres off in raw
    // numbers, stored as the WGS-84 position
    for (index, datum) in [Datum::Gcj02, Datum::Bd09].into_iter().enumerate() {
        let (lat, lng) = whistle_proto::datum::from_wgs84(datum, 32.6369, 110.7986);
        let mut request = garbage_report_north(&format!("by-{datum:?}"), 0.0);
        request.category_code = ["E-01-02", "C-03-02"][index].into();
        request.datum = datum as i32;
        let place = request.place.as_mut().expect("place");
        (place.lat, place.lng) = (lat, lng);
        let answer = harness
            .client
            .submit_report(request)
            .await
            .expect("located")
            .into_inner();
        assert_eq!(
            answer.region.expect("region").grid_code,
            "420303003001001",
            "{datum:?}"
        );
        let stored = harness
            .client
            .get_report(GetReportRequest {
                report_id: answer.report_id,
            })
            .await
            .expect("get")
            .into_inner()
            .place
            .expect("place");
        assert!(
            (stored.lat - 32.6369).abs() < 1e-6 && (stored.lng - 110.7986).abs() < 1e-6,
            "{datum:?} stored as {}, {}",
            stored.lat,
            stored.lng
        );
    }

    // the other demo places fall in their own grids
    for (lat, lng, grid) in [
        (32.6402, 110.8013, "420303003003001"),
        (32.6335, 110.7901, "420303003002001"),
    ] {
        let located = harness
            .client
            .locate_grid(LocateGridRequest { lat, lng, datum: 0 })
            .await
            .expect("locate")
            .into_inner();
        assert_eq!(located.region.expect("region").grid_code, grid);
    }

    // Beijing lies in no grid of the registry
    let mut far = garbage_report_north("in-beijing", 0.0);
    let place = far.place.as_mut().expect("place");
    (place.lat, place.lng) = (39.915, 116.404);
    let error = harness
        .client
        .submit_report(far)
        .await
        .expect_err("no grid");
    assert_eq!(error.code(), Code::InvalidArgument);
    let details = error.get_error_details();
    let violation = &details.bad_request().expect("bad request").field_violations[0];
    assert_eq!(violation.field, "place");
    assert!(
        violation.description.contains("lies in no grid"),
        "{}",
        violation.description
    );
    let error = harness
        .client
        .locate_grid(LocateGridRequest {
            lat: 32.6369,
            lng: 110.7986,
            datum: 7,
        })
        .await
        .expect_err("unknown datum");
    assert!(error.message().starts_with("datum:"), "{}", error.message());

    // a grid code still wins over the position
    let mut coded = garbage_report("coded");
    coded.category_code = "E-04-09".into();
    coded.place.as_mut().expect("place").grid_code = "420303003002002".into();
    let answer = harness
        .client
        .submit_report(coded)
        .await
        .expect("by code")
        .into_inner();
    assert_eq!(answer.region.expect("region").grid_code, "420303003002002");
    harness.served.stop().await;
}

/// Three fresh boundaries: a community and two grids beside the demo street (a hole in one of them),
/// imported through one replica and used by another that shares the database, within its reload
/// interval.
#[tokio::test]
async fn imported_grids_are_used_by_every_replica_without_a_restart() {
    let mut first = start(|config| config.catalogue.reload_interval_ms = 100).await;
    // a second replica on the same database and NATS
    let mut config = first.config.clone();
    config.catalogue.file = None;
    let clock = first.clock.clone();
    let second =
        serve(move |listener, shutdown| whistle_intake::run(config, listener, clock, shutdown))
            .await;
    let mut second_client = IntakeServiceClient::connect(second.url())
        .await
        .expect("connect");

    // east of the demo street: nobody knows it yet
    let east = LocateGridRequest {
        lat: 32.6370,
        lng: 110.8100,
        datum: 0,
    };
    let unknown = second_client.locate_grid(east).await.expect_err("not yet");
    assert_eq!(unknown.code(), Code::InvalidArgument);

    let square = |x0: f64, y0: f64, x1: f64, y1: f64| {
        format!("({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0})")
    };
    let areas = vec![
        Area {
            code: "420303003004".into(),
            parent_code: "420303003".into(),
            name: "东岳社区".into(),
            boundary_wkt: format!("POLYGON ({})", square(110.8070, 32.6300, 110.8150, 32.6450)),
        },
        Area {
            code: "420303003004001".into(),
            parent_code: "420303003004".into(),
            name: "东岳小区".into(),
            boundary_wkt: format!(
                "POLYGON ({}, {})",
                square(110.8070, 32.6300, 110.8150, 32.6400),
                // a school yard in the middle belongs to no grid
                square(110.8090, 32.6320, 110.8110, 32.6340)
            ),
        },
        Area {
            code: "420303003004002".into(),
            parent_code: "420303003004".into(),
            name: "东岳花园".into(),
            boundary_wkt: format!("POLYGON ({})", square(110.8070, 32.6400, 110.8150, 32.6450)),
        },
    ];
    // refused whole when one area is wrong, naming it
    let mut wrong = areas.clone();
    wrong[2].boundary_wkt =
        "POLYGON ((110.807 32.64, 110.815 32.645, 110.815 32.64, 110.807 32.645, 110.807 32.64))"
            .into();
    let error = first
        .client
        .import_grids(ImportGridsRequest { areas: wrong })
        .await
        .expect_err("self-intersecting");
    assert!(
        error.message().starts_with("areas[2].boundary_wkt:"),
        "{}",
        error.message()
    );
    let mut orphan = areas[1].clone();
    orphan.code = "420303003009001".into();
    orphan.parent_code = "420303003009".into();
    let error = first
        .client
        .import_grids(ImportGridsRequest {
            areas: vec![orphan],
        })
        .await
        .expect_err("unknown community");
    assert!(
        error.message().starts_with("areas[0].parent_code:"),
        "{}",
        error.message()
    );
    assert!(
        second_client.locate_grid(east).await.is_err(),
        "nothing was stored"
    );

    let imported = first
        .client
        .import_grids(ImportGridsRequest { areas })
        .await
        .expect("import")
        .into_inner();
    assert_eq!((imported.communities, imported.grids), (1, 2));
    // the importing replica uses it at once
    let here = first
        .client
        .locate_grid(east)
        .await
        .expect("located at once")
        .into_inner();
    assert_eq!(here.grid_name, "东岳小区");
    // the other replica within its reload interval
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let there = loop {
        match second_client.locate_grid(east).await {
            Ok(answer) => break answer.into_inner(),
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the second replica never reloaded: {error}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(there.region.expect("region").grid_code, "420303003004001");
    // the hole is in the community but in no grid
    let hole = second_client
        .locate_grid(LocateGridRequest {
            lat: 32.6330,
            lng: 110.8100,
            datum: 0,
        })
        .await
        .expect_err("the school yard");
    assert!(
        hole.message().contains("community 420303003004"),
        "{}",
        hole.message()
    );
    // and a report there by position opens a case in the new grid, on the second replica
    let mut report = garbage_report_north("east", 0.0);
    let place = report.place.as_mut().expect("place");
    (place.lat, place.lng) = (32.6420, 110.8100);
    let answer = second_client
        .submit_report(report)
        .await
        .expect("report")
        .into_inner();
    assert_eq!(answer.region.expect("region").grid_code, "420303003004002");
    second.stop().await;
    first.served.stop().await;
}
