//! `whistle grid import` of a GeoJSON and a CSV file against `whistle up` in-process: the new grids
//! are used for reports by position at once, without a restart.

use tokio_util::sync::CancellationToken;
use whistle::client::Endpoints;
use whistle::local::{LocalOptions, LocalPlatform};
use whistle_proto::intake::LocateGridRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_boundaries_locate_reports_at_once() {
    let folder = tempfile::tempdir().expect("tempdir");
    let mut platform = LocalPlatform::start(&LocalOptions {
        data_dir: folder.path().join("data"),
        intake_port: 0,
        dispatch_port: 0,
        gateway_port: 0,
        evaluation_port: 0,
        // free ports for the metrics too, so a `whistle up` running on the machine is no obstacle
        admin_ports: [0; 4],
        open311_port: 0,
        ..LocalOptions::default()
    })
    .await
    .expect("platform");
    platform.wait_ready().await.expect("ready");
    let endpoints = Endpoints {
        intake: format!("http://{}", platform.intake),
        dispatch: format!("http://{}", platform.dispatch),
        gateway: format!("http://{}", platform.gateway),
        evaluation: format!("http://{}", platform.evaluation),
    };

    let geojson = folder.path().join("dongyue.geojson");
    std::fs::write(
        &geojson,
        r#"{"type": "FeatureCollection", "features": [
          {"type": "Feature", "properties": {"code": "420303003004001", "parent": "420303003004", "name": "东岳小区"},
           "geometry": {"type": "Polygon", "coordinates": [[[110.807, 32.630], [110.815, 32.630], [110.815, 32.640], [110.807, 32.640], [110.807, 32.630]]]}},
          {"type": "Feature", "properties": {"code": "420303003004", "parent": "420303003", "name": "东岳社区"},
           "geometry": {"type": "Polygon", "coordinates": [[[110.807, 32.630], [110.815, 32.630], [110.815, 32.645], [110.807, 32.645], [110.807, 32.630]]]}}
        ]}"#,
    )
    .expect("write");
    let areas = whistle::grid::read_areas(&geojson, None).expect("read");
    let summary = whistle::grid::import(&endpoints, areas)
        .await
        .expect("import");
    assert_eq!(
        (summary.communities, summary.grids),
        (1, 1),
        "the community is sent first"
    );

    let csv = folder.path().join("dongyue.csv");
    std::fs::write(
        &csv,
        "code,parent,name,wkt\n420303003004002,420303003004,东岳花园,\"POLYGON ((110.807 32.640, 110.815 32.640, 110.815 32.645, 110.807 32.645, 110.807 32.640))\"\n",
    )
    .expect("write");
    let areas = whistle::grid::read_areas(&csv, None).expect("read");
    whistle::grid::import(&endpoints, areas)
        .await
        .expect("import");

    let mut intake = endpoints.intake().await.expect("intake");
    for (lat, grid) in [(32.635, "420303003004001"), (32.642, "420303003004002")] {
        let located = intake
            .locate_grid(LocateGridRequest {
                lat,
                lng: 110.810,
                datum: 0,
            })
            .await
            .expect("located")
            .into_inner();
        assert_eq!(located.region.expect("region").grid_code, grid);
    }
    let stop = CancellationToken::new();
    stop.cancel();
    platform.run_until(stop).await.expect("clean stop");
}
