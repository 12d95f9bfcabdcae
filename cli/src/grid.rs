//! `whistle grid`: load street, community and grid boundaries into intake's registry (GeoJSON or
//! CSV), find the grid of a position, and report a problem by position as a grid worker's app does.

use crate::client::{Endpoints, status_error};
use prost::Message;
use std::path::{Path, PathBuf};
use whistle_proto::intake::{Area, ImportGridsRequest, LocateGridRequest, SubmitReportRequest};
use whistle_proto::types::{Channel, Datum, Place, Severity};

/// `whistle grid …`
#[derive(Debug, clap::Subcommand)]
pub enum GridCommand {
    /// Load areas and their boundaries into intake's registry, used at once by every replica.
    ///
    /// GeoJSON: a FeatureCollection of Polygon/MultiPolygon features with properties `code`,
    /// `parent` (or `parent_code`) and `name`. CSV: a header `code,parent,name,wkt` and one area per
    /// row, the WKT quoted. Codes of 9 digits are streets (already in the catalogue), 12
    /// communities, 15 grids; coordinates are WGS-84 longitude, latitude.
    Import {
        file: PathBuf,
        /// `geojson` or `csv`; from the file's extension when absent.
        #[arg(long)]
        format: Option<String>,
    },
    /// The grid containing a position.
    Locate {
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lng: f64,
        /// wgs84, gcj02 (AMap, Tencent) or bd09 (Baidu).
        #[arg(long, default_value = "wgs84")]
        datum: String,
    },
    /// Report a problem at a position, as a grid worker's phone does: intake finds the grid.
    Report {
        #[arg(long, allow_hyphen_values = true)]
        lat: f64,
        #[arg(long, allow_hyphen_values = true)]
        lng: f64,
        #[arg(long, default_value = "wgs84")]
        datum: String,
        #[arg(long, default_value = "E-01-03")]
        category: String,
        #[arg(long, default_value = "垃圾满溢，堆到路面")]
        description: String,
        #[arg(long, default_value = "")]
        address: String,
        /// routine, urgent, emergency or complex.
        #[arg(long, default_value = "urgent")]
        severity: String,
        #[arg(long, default_value = "grid-worker")]
        reporter: String,
        /// Idempotency key; a fresh one when absent.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// A `--datum` value: wgs84, gcj02 or bd09 (case and `-`/`_` ignored).
pub fn datum(name: &str) -> anyhow::Result<Datum> {
    Ok(
        match name.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "wgs84" => Datum::Wgs84,
            "gcj02" => Datum::Gcj02,
            "bd09" => Datum::Bd09,
            other => anyhow::bail!("--datum must be wgs84, gcj02 or bd09, got {other:?}"),
        },
    )
}

fn severity(name: &str) -> anyhow::Result<Severity> {
    Ok(match name {
        "routine" => Severity::Routine,
        "urgent" => Severity::Urgent,
        "emergency" => Severity::Emergency,
        "complex" => Severity::Complex,
        other => {
            anyhow::bail!("--severity must be routine, urgent, emergency or complex, got {other:?}")
        }
    })
}

pub async fn run(endpoints: &Endpoints, command: GridCommand) -> anyhow::Result<()> {
    match command {
        GridCommand::Import { file, format } => {
            let areas = read_areas(&file, format.as_deref())?;
            let summary = import(endpoints, areas).await?;
            println!(
                "imported {} streets, {} communities, {} grids in {} request(s); registry version {}",
                summary.streets,
                summary.communities,
                summary.grids,
                summary.requests,
                summary.version
            );
        }
        GridCommand::Locate {
            lat,
            lng,
            datum: name,
        } => {
            let located = endpoints
                .intake()
                .await?
                .locate_grid(LocateGridRequest {
                    lat,
                    lng,
                    datum: datum(&name)? as i32,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let region = located.region.unwrap_or_default();
            println!(
                "grid {} {} (community {}, street {}) at {:.6}, {:.6} WGS-84",
                region.grid_code,
                located.grid_name,
                region.community_code,
                region.street_slug,
                located.lat,
                located.lng
            );
        }
        GridCommand::Report {
            lat,
            lng,
            datum: name,
            category,
            description,
            address,
            severity: level,
            reporter,
            request_id,
        } => {
            let answer = endpoints
                .intake()
                .await?
                .submit_report(SubmitReportRequest {
                    request_id: request_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                    channel: Channel::GridPatrol as i32,
                    reporter_id: reporter,
                    category_code: category,
                    severity: severity(&level)? as i32,
                    description,
                    place: Some(Place {
                        grid_code: String::new(),
                        lat,
                        lng,
                        address,
                    }),
                    datum: datum(&name)? as i32,
                    ..Default::default()
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let grid = answer
                .region
                .map(|region| region.grid_code)
                .unwrap_or_default();
            println!(
                "report {} -> case {} in grid {grid}{}{}",
                answer.report_id,
                answer.case_id,
                if answer.merged {
                    " (merged into an open case of the same problem)"
                } else {
                    ""
                },
                if answer.recurrent {
                    " (recurring problem)"
                } else {
                    ""
                }
            );
        }
    }
    Ok(())
}

/// What an import did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportSummary {
    pub streets: u32,
    pub communities: u32,
    pub grids: u32,
    pub requests: usize,
    pub version: u64,
}

/// Encoded bytes of one `ImportGrids` request, at most: below intake's default
/// `limits.max_request_bytes` (256 KiB).
const REQUEST_BYTES: usize = 200 * 1024;
/// Areas in one request, at most (intake's default `catalogue.max_import_areas` is 5000).
const REQUEST_AREAS: usize = 1000;

/// Sends `areas` to intake, streets first, then communities, then grids, in requests that fit its
/// limits. Each request is all or nothing; when one is refused the ones before it stay imported.
pub async fn import(endpoints: &Endpoints, mut areas: Vec<Area>) -> anyhow::Result<ImportSummary> {
    areas.sort_by_key(|area| area.code.len());
    let mut intake = endpoints.intake().await?;
    let mut summary = ImportSummary::default();
    for (index, chunk) in chunks(areas).into_iter().enumerate() {
        let first = chunk
            .first()
            .map(|area| area.code.clone())
            .unwrap_or_default();
        let answer = intake
            .import_grids(ImportGridsRequest { areas: chunk })
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "request {} (from area {first}) was refused, earlier ones are imported: {}",
                    index + 1,
                    status_error(status)
                )
            })?
            .into_inner();
        summary.streets += answer.streets;
        summary.communities += answer.communities;
        summary.grids += answer.grids;
        summary.requests += 1;
        summary.version = answer.registry_version;
    }
    Ok(summary)
}

fn chunks(areas: Vec<Area>) -> Vec<Vec<Area>> {
    let mut chunks = Vec::new();
    let mut current: Vec<Area> = Vec::new();
    let mut bytes = 0;
    for area in areas {
        let size = area.encoded_len() + 8;
        if !current.is_empty() && (bytes + size > REQUEST_BYTES || current.len() >= REQUEST_AREAS) {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(area);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Reads a GeoJSON or CSV file of areas.
pub fn read_areas(file: &Path, format: Option<&str>) -> anyhow::Result<Vec<Area>> {
    let format = format
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            file.extension()
                .and_then(|extension| extension.to_str())
                .map(str::to_ascii_lowercase)
        })
        .unwrap_or_default();
    let text = std::fs::read_to_string(file)
        .map_err(|error| anyhow::anyhow!("cannot read {}: {error}", file.display()))?;
    match format.as_str() {
        "geojson" | "json" => areas_from_geojson(&text),
        "csv" => areas_from_csv(&text),
        other => anyhow::bail!("--format must be geojson or csv, got {other:?}"),
    }
    .map_err(|error| anyhow::anyhow!("{}: {error:#}", file.display()))
}

/// Areas of a GeoJSON FeatureCollection: properties `code`, `parent` (or `parent_code`), `name`.
pub fn areas_from_geojson(text: &str) -> anyhow::Result<Vec<Area>> {
    use wkt::ToWkt;
    let collection: geojson::FeatureCollection = text
        .parse()
        .map_err(|error| anyhow::anyhow!("not a GeoJSON FeatureCollection: {error}"))?;
    let mut areas = Vec::with_capacity(collection.features.len());
    for (index, feature) in collection.features.iter().enumerate() {
        let property = |names: &[&str]| {
            names
                .iter()
                .find_map(|name| feature.property(name))
                .map(|value| match value {
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let code = property(&["code"]);
        if code.is_empty() {
            anyhow::bail!("feature {index}: property code is missing");
        }
        let boundary = match &feature.geometry {
            Some(geometry) => geo_types::Geometry::<f64>::try_from(&geometry.value)
                .map_err(|error| anyhow::anyhow!("feature {index} ({code}): {error}"))?
                .wkt_string(),
            None => String::new(),
        };
        areas.push(Area {
            parent_code: property(&["parent", "parent_code"]),
            name: property(&["name"]),
            boundary_wkt: boundary,
            code,
        });
    }
    Ok(areas)
}

#[derive(Debug, serde::Deserialize)]
struct CsvArea {
    code: String,
    parent: String,
    name: String,
    wkt: String,
}

/// Areas of a CSV file with the header `code,parent,name,wkt`.
pub fn areas_from_csv(text: &str) -> anyhow::Result<Vec<Area>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut areas = Vec::new();
    for (index, row) in reader.deserialize::<CsvArea>().enumerate() {
        let row = row.map_err(|error| anyhow::anyhow!("row {}: {error}", index + 2))?;
        areas.push(Area {
            code: row.code,
            parent_code: row.parent,
            name: row.name,
            boundary_wkt: row.wkt,
        });
    }
    Ok(areas)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geojson_features_become_areas() {
        let text = r#"{"type": "FeatureCollection", "features": [
            {"type": "Feature", "properties": {"code": "420303003004", "parent": "420303003", "name": "东岳社区"},
             "geometry": {"type": "Polygon", "coordinates": [[[110.807, 32.63], [110.815, 32.63], [110.815, 32.645], [110.807, 32.63]]]}},
            {"type": "Feature", "properties": {"code": 420303003004001, "parent_code": "420303003004", "name": "东岳小区"},
             "geometry": {"type": "MultiPolygon", "coordinates": [[[[110.807, 32.63], [110.81, 32.63], [110.81, 32.64], [110.807, 32.63]]]]}}
        ]}"#;
        let areas = areas_from_geojson(text).expect("areas");
        assert_eq!(areas.len(), 2);
        assert_eq!(areas[0].parent_code, "420303003");
        assert!(
            areas[0].boundary_wkt.starts_with("POLYGON((110.807 32.63"),
            "{}",
            areas[0].boundary_wkt
        );
        assert_eq!(
            areas[1].code, "420303003004001",
            "numbers are read as codes"
        );
        assert_eq!(areas[1].parent_code, "420303003004");
        assert!(areas[1].boundary_wkt.starts_with("MULTIPOLYGON"));
        assert!(areas_from_geojson(r#"{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, "geometry": null}]}"#)
            .expect_err("no code")
            .to_string()
            .contains("feature 0"));
    }

    #[test]
    fn csv_rows_become_areas() {
        let text = "code,parent,name,wkt\n420303003004,420303003,东岳社区,\"POLYGON ((110.807 32.63, 110.815 32.63, 110.815 32.645, 110.807 32.63))\"\n";
        let areas = areas_from_csv(text).expect("areas");
        assert_eq!(areas.len(), 1);
        assert_eq!(areas[0].name, "东岳社区");
        assert!(areas[0].boundary_wkt.starts_with("POLYGON ((110.807"));
        let error = areas_from_csv("code,parent\n1,2\n").expect_err("missing columns");
        assert!(error.to_string().contains("row 2"), "{error}");
    }

    #[test]
    fn large_imports_are_sent_in_requests_that_fit() {
        let area = |index: usize| Area {
            code: format!("420303003{index:06}"),
            parent_code: "420303003000".into(),
            name: "x".into(),
            boundary_wkt: "POLYGON ((0 0, 1 0, 1 1, 0 0))".repeat(30),
        };
        let chunks = chunks((0..3000).map(area).collect());
        assert!(chunks.len() >= 3);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 3000);
        for chunk in &chunks {
            let request = ImportGridsRequest {
                areas: chunk.clone(),
            };
            assert!(request.encoded_len() <= REQUEST_BYTES + 16);
            assert!(chunk.len() <= REQUEST_AREAS);
        }
    }
}
