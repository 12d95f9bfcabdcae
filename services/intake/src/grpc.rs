//! `IntakeService` over gRPC: a thin adapter over the use cases in `service.rs`.

use crate::policy;
use crate::service::Intake;
use tonic::{Request, Response, Status};
use whistle_platform::auth::Caller;
use whistle_proto::intake::intake_service_server::IntakeService;
use whistle_proto::intake::{
    AttachEvidenceRequest, AttachEvidenceResponse, GetReportRequest, ImportGridsRequest,
    ImportGridsResponse, ListCategoriesRequest, ListCategoriesResponse, ListReportsRequest,
    ListReportsResponse, LocateGridRequest, LocateGridResponse, Report, SplitReportRequest,
    SplitReportResponse, SubmitReportRequest, SubmitReportResponse,
};

pub use crate::service::{SOURCE, largest_event_bytes, largest_report};

/// The gRPC face of intake.
#[derive(Debug, Clone)]
pub struct IntakeGrpc {
    pub intake: Intake,
}

#[tonic::async_trait]
impl IntakeService for IntakeGrpc {
    async fn submit_report(
        &self,
        request: Request<SubmitReportRequest>,
    ) -> Result<Response<SubmitReportResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        // reporter_id names the person who reported the problem: a hotline operator enters the
        // resident's; when absent it is the credential's subject
        if caller.checked && request.reporter_id.is_empty() {
            request.reporter_id = caller.subject.clone();
        }
        if caller.checked {
            // the report's grid, named or found from the position, must lie in the caller's region
            let place = request.place.clone().unwrap_or_default();
            let grid_code = if place.grid_code.is_empty() {
                self.intake
                    .locate(LocateGridRequest {
                        lat: place.lat,
                        lng: place.lng,
                        datum: request.datum,
                    })
                    .ok()
                    .and_then(|located| located.region)
                    .map(|region| policy::region_code(&region).to_string())
            } else {
                Some(place.grid_code.clone())
            };
            if let Some(grid_code) = grid_code {
                caller.require_region("the report's place", &grid_code)?;
            }
        }
        Ok(Response::new(self.intake.submit(request).await?))
    }

    async fn get_report(
        &self,
        request: Request<GetReportRequest>,
    ) -> Result<Response<Report>, Status> {
        let caller = Caller::of(&request)?;
        let report = self.intake.report(request.into_inner()).await?;
        let code = report
            .region
            .as_ref()
            .map(policy::region_code)
            .unwrap_or_default();
        caller.require_region(&format!("report {}", report.report_id), code)?;
        Ok(Response::new(report))
    }

    async fn list_categories(
        &self,
        request: Request<ListCategoriesRequest>,
    ) -> Result<Response<ListCategoriesResponse>, Status> {
        Ok(Response::new(
            self.intake.categories(request.into_inner()).await?,
        ))
    }

    async fn locate_grid(
        &self,
        request: Request<LocateGridRequest>,
    ) -> Result<Response<LocateGridResponse>, Status> {
        Ok(Response::new(self.intake.locate(request.into_inner())?))
    }

    async fn import_grids(
        &self,
        request: Request<ImportGridsRequest>,
    ) -> Result<Response<ImportGridsResponse>, Status> {
        let caller = Caller::of(&request)?;
        for area in &request.get_ref().areas {
            caller.require_region(&format!("area {}", area.code), &area.code)?;
        }
        Ok(Response::new(
            self.intake.import(request.into_inner()).await?,
        ))
    }

    async fn list_reports(
        &self,
        request: Request<ListReportsRequest>,
    ) -> Result<Response<ListReportsResponse>, Status> {
        let caller = Caller::of(&request)?;
        // only the reports inside the caller's region, chosen by the query (full pages)
        let prefix = caller
            .checked
            .then(|| whistle_platform::auth::region_prefix(&caller.region));
        if prefix == Some("") {
            // a credential without a region covers nothing
            return Ok(Response::new(ListReportsResponse::default()));
        }
        let listed = self
            .intake
            .list_reports(request.into_inner(), prefix)
            .await?;
        Ok(Response::new(listed))
    }

    async fn split_report(
        &self,
        request: Request<SplitReportRequest>,
    ) -> Result<Response<SplitReportResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        request.operator_id = caller.actor("operator_id", &request.operator_id)?;
        if caller.checked && !request.report_id.is_empty() {
            let report = self
                .intake
                .report(GetReportRequest {
                    report_id: request.report_id.clone(),
                })
                .await?;
            let code = report
                .region
                .as_ref()
                .map(policy::region_code)
                .unwrap_or_default();
            caller.require_region(&format!("report {}", report.report_id), code)?;
        }
        Ok(Response::new(self.intake.split(request).await?))
    }

    async fn attach_evidence(
        &self,
        request: Request<AttachEvidenceRequest>,
    ) -> Result<Response<AttachEvidenceResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        if request.community_code.is_empty() {
            if caller.checked && request.reporter_id.is_empty() {
                request.reporter_id = caller.subject.clone();
            }
        } else {
            caller.require_region("community_code", &request.community_code)?;
        }
        Ok(Response::new(self.intake.attach_evidence(request).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::requests::check_report;
    use chrono::{DateTime, Utc};
    use whistle_platform::validation::LimitsConfig;

    fn latest_instant() -> DateTime<Utc> {
        DateTime::from_timestamp(i64::from(i32::MAX), 999_999_999).unwrap_or_default()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_790_000_000, 0).expect("now")
    }

    #[test]
    fn the_largest_report_is_valid_and_its_event_fits_with_room_to_spare() {
        let limits = LimitsConfig::default();
        let request = largest_report(&limits);
        check_report(&request, latest_instant(), &limits).expect("the largest report is allowed");
        let bytes = largest_event_bytes(&limits).expect("bytes");
        println!(
            "largest case.reported: {bytes} bytes of {} allowed",
            limits.max_event_bytes
        );
        assert!(
            bytes <= limits.max_event_bytes / 2,
            "case.reported of {bytes} bytes leaves too little room under {}",
            limits.max_event_bytes
        );
    }

    #[test]
    fn one_character_over_any_limit_is_refused_naming_the_field() {
        let limits = LimitsConfig::default();
        let over = |chars: usize| "x".repeat(chars + 1);
        type Mutation = Box<dyn Fn(&mut SubmitReportRequest)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("request_id", Box::new(move |r| r.request_id = over(128))),
            ("reporter_id", Box::new(move |r| r.reporter_id = over(128))),
            (
                "category_code",
                Box::new(move |r| r.category_code = over(64)),
            ),
            ("description", Box::new(move |r| r.description = over(2000))),
            (
                "place.grid_code",
                Box::new(move |r| r.place.as_mut().expect("place").grid_code = over(64)),
            ),
            (
                "place.address",
                Box::new(move |r| r.place.as_mut().expect("place").address = over(500)),
            ),
            (
                "attachments",
                Box::new(|r| {
                    let first = r.attachments[0].clone();
                    r.attachments.push(first);
                }),
            ),
            (
                "attachments[9].uri",
                Box::new(move |r| r.attachments[9].uri = format!("a://{}", over(2044))),
            ),
            (
                "attachments[2].media_type",
                Box::new(move |r| r.attachments[2].media_type = format!("a/{}", over(125))),
            ),
            (
                "attachments[0].sha256",
                Box::new(|r| r.attachments[0].sha256 = "F".repeat(64)),
            ),
            (
                "observed_at",
                Box::new(|r| {
                    r.observed_at = Some(prost_types::Timestamp {
                        seconds: 946_684_799,
                        nanos: 0,
                    })
                }),
            ),
            (
                "observed_at",
                Box::new(|r| {
                    r.observed_at = Some(prost_types::Timestamp {
                        seconds: 1_790_000_301,
                        nanos: 0,
                    })
                }),
            ),
        ];
        for (field, mutate) in cases {
            let mut request = largest_report(&limits);
            request.observed_at = None;
            mutate(&mut request);
            let error = check_report(&request, now(), &limits).expect_err(field);
            assert_eq!(error.field, field, "{error}");
        }
    }

    #[test]
    fn limits_that_leave_no_valid_report_are_named() {
        let limits = LimitsConfig {
            code_chars: 10,
            ..LimitsConfig::default()
        };
        let error = largest_event_bytes(&limits).expect_err("no grid code fits");
        assert_eq!(error.field, "place.grid_code");
    }
}

#[cfg(test)]
mod properties {
    use crate::requests::{check_get_report, check_list_categories, check_report};
    use chrono::{DateTime, Utc};
    use proptest::prelude::*;
    use prost::Message;
    use whistle_platform::clock::from_millis;
    use whistle_platform::testing::arbitrary::{attachment, mostly, text, timestamp, wire_bytes};
    use whistle_platform::testing::run_decoder_property;
    use whistle_platform::validation::LimitsConfig;
    use whistle_proto::intake::{GetReportRequest, ListCategoriesRequest, SubmitReportRequest};
    use whistle_proto::types::Place;

    /// Small limits, so generated values fall on both sides of every one.
    fn limits() -> LimitsConfig {
        LimitsConfig {
            id_chars: 6,
            code_chars: 16,
            text_chars: 8,
            address_chars: 7,
            uri_chars: 30,
            media_type_chars: 12,
            attachments: 2,
            ..LimitsConfig::default()
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).expect("now")
    }

    fn within(value: &str, limit: usize) -> bool {
        value.chars().count() <= limit
    }

    fn report() -> BoxedStrategy<SubmitReportRequest> {
        let place = (
            mostly(&["420303003001001"], 16),
            prop_oneof![4 => Just(32.6), 1 => Just(0.0), 1 => -100.0f64..100.0],
            prop_oneof![4 => Just(110.8), 1 => Just(0.0), 1 => -200.0f64..200.0],
            mostly(&["中岳路2号", ""], 7),
        )
            .prop_map(|(grid_code, lat, lng, address)| Place {
                grid_code,
                lat,
                lng,
                address,
            });
        (
            (
                mostly(&["r-1", "报告-7"], 6),
                prop_oneof![4 => Just(1), 1 => -1i32..7],
                mostly(&["gw-17"], 6),
                mostly(&["E-01-03"], 16),
            ),
            (
                prop_oneof![4 => Just(2), 1 => -1i32..6],
                mostly(&["垃圾满溢", "  trim "], 8),
                proptest::option::weighted(0.95, place),
            ),
            proptest::collection::vec(attachment(30), 0..4),
            prop_oneof![2 => Just(None), 1 => timestamp()],
            (
                mostly(&["", "https://p.example/1.jpg"], 30),
                prop_oneof![3 => Just(0), 1 => Just(2), 1 => -1i32..5],
            ),
        )
            .prop_map(
                |(
                    (request_id, channel, reporter_id, category_code),
                    (severity, description, place),
                    attachments,
                    observed_at,
                    (media_url, datum),
                )| SubmitReportRequest {
                    request_id,
                    channel,
                    reporter_id,
                    category_code,
                    severity,
                    description,
                    place,
                    attachments,
                    observed_at,
                    media_url,
                    datum,
                },
            )
            .boxed()
    }

    #[test]
    fn whatever_submit_report_accepts_is_within_every_limit() {
        let limits = limits();
        run_decoder_property("SubmitReport", 512, wire_bytes(report()), |bytes| {
            let Ok(request) = SubmitReportRequest::decode(bytes) else {
                return Ok(false);
            };
            let Ok(checked) = check_report(&request, now(), &limits) else {
                return Ok(false);
            };
            let place = request.place.as_ref().expect("a report has a place");
            prop_assert!(within(&request.request_id, limits.id_chars));
            prop_assert!(within(&request.reporter_id, limits.id_chars));
            prop_assert!(within(&request.category_code, limits.code_chars));
            prop_assert!(within(&request.description, limits.text_chars));
            prop_assert!(within(&place.grid_code, limits.code_chars));
            prop_assert!(within(&place.address, limits.address_chars));
            prop_assert!(within(&request.media_url, limits.uri_chars));
            prop_assert!(checked.position.lat.is_finite() && checked.position.lng.is_finite());
            prop_assert!(whistle_proto::datum::datum_of(request.datum).is_some());
            prop_assert!(request.attachments.len() <= limits.attachments);
            for attachment in &request.attachments {
                prop_assert!(within(&attachment.uri, limits.uri_chars));
                prop_assert!(within(&attachment.media_type, limits.media_type_chars));
                prop_assert_eq!(attachment.sha256.len(), 64);
            }
            let observed = from_millis(checked.observed_at_ms);
            prop_assert!(observed >= whistle_platform::validation::EARLIEST_TIMESTAMP);
            prop_assert!(observed <= now() + chrono::Duration::seconds(limits.clock_skew_secs));
            Ok(true)
        });
    }

    #[test]
    fn whatever_get_report_and_list_categories_accept_is_within_every_limit() {
        let limits = limits();
        let get = text(6).prop_map(|report_id| GetReportRequest { report_id });
        run_decoder_property("GetReport", 256, wire_bytes(get), |bytes| {
            let Ok(request) = GetReportRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_get_report(&limits, &request).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.report_id, limits.id_chars));
            Ok(true)
        });
        let list = (-2i32..5).prop_map(|kind| ListCategoriesRequest { kind });
        run_decoder_property("ListCategories", 128, wire_bytes(list), |bytes| {
            let Ok(request) = ListCategoriesRequest::decode(bytes) else {
                return Ok(false);
            };
            Ok(check_list_categories(&request).is_ok())
        });
    }
}

/// The requests added with positions, imports, lists, splits and evidence: whatever their checks
/// accept is within every limit, whatever bytes arrive.
#[cfg(test)]
mod more_properties {
    use crate::config::{CatalogueConfig, EvidenceConfig};
    use crate::requests::{
        check_evidence, check_import, check_list_reports, check_locate, check_split,
    };
    use proptest::prelude::*;
    use prost::Message;
    use whistle_platform::testing::arbitrary::{mostly, text, wire_bytes};
    use whistle_platform::testing::run_decoder_property;
    use whistle_platform::validation::LimitsConfig;
    use whistle_proto::intake::{
        Area, AttachEvidenceRequest, ImportGridsRequest, ListReportsRequest, LocateGridRequest,
        SplitReportRequest,
    };
    use whistle_proto::types::Attachment;

    fn limits() -> LimitsConfig {
        LimitsConfig {
            id_chars: 8,
            code_chars: 16,
            name_chars: 6,
            text_chars: 8,
            uri_chars: 30,
            media_type_chars: 12,
            attachments: 2,
            page_size: 50,
            ..LimitsConfig::default()
        }
    }

    fn within(value: &str, limit: usize) -> bool {
        value.chars().count() <= limit
    }

    #[test]
    fn locate_and_split() {
        let locate = (
            prop_oneof![3 => Just(32.6369), 1 => -100.0f64..100.0],
            prop_oneof![3 => Just(110.7986), 1 => -200.0f64..200.0],
            prop_oneof![3 => 0i32..4, 1 => -2i32..9],
        )
            .prop_map(|(lat, lng, datum)| LocateGridRequest { lat, lng, datum });
        run_decoder_property("LocateGrid", 256, wire_bytes(locate), |bytes| {
            let Ok(request) = LocateGridRequest::decode(bytes) else {
                return Ok(false);
            };
            let Ok(position) = check_locate(&request) else {
                return Ok(false);
            };
            prop_assert!((-90.0..=90.0).contains(&position.lat));
            prop_assert!((-180.0..=180.0).contains(&position.lng));
            Ok(true)
        });
        let limits = limits();
        let split = (
            mostly(&["r-1"], 10),
            mostly(&["op-1"], 10),
            mostly(&["重复", " "], 10),
        )
            .prop_map(|(report_id, operator_id, reason)| SplitReportRequest {
                report_id,
                operator_id,
                reason,
            });
        run_decoder_property("SplitReport", 256, wire_bytes(split), |bytes| {
            let Ok(request) = SplitReportRequest::decode(bytes) else {
                return Ok(false);
            };
            if check_split(&request, &limits).is_err() {
                return Ok(false);
            }
            prop_assert!(within(&request.report_id, limits.id_chars));
            prop_assert!(within(&request.operator_id, limits.id_chars));
            prop_assert!(within(&request.reason, limits.text_chars));
            prop_assert!(!request.reason.trim().is_empty());
            Ok(true)
        });
    }

    #[test]
    fn list_reports() {
        let limits = limits();
        let list = (
            any::<bool>(),
            mostly(&["", "E-01-03"], 18),
            mostly(&["", "case-1"], 10),
            prop_oneof![3 => 0u32..60, 1 => any::<u32>()],
            mostly(&["", "1790000000000:r-9", "x"], 10),
        )
            .prop_map(
                |(recurrent_only, category_code, case_id, page_size, page_token)| {
                    ListReportsRequest {
                        recurrent_only,
                        category_code,
                        case_id,
                        page_size,
                        page_token,
                    }
                },
            );
        run_decoder_property("ListReports", 256, wire_bytes(list), |bytes| {
            let Ok(request) = ListReportsRequest::decode(bytes) else {
                return Ok(false);
            };
            let Ok(query) = check_list_reports(&request, &limits) else {
                return Ok(false);
            };
            prop_assert!(query.page_size >= 1 && query.page_size <= limits.page_size as u64);
            prop_assert!(within(&request.case_id, limits.id_chars));
            prop_assert!(within(&request.page_token, limits.id_chars));
            Ok(true)
        });
    }

    #[test]
    fn attach_evidence() {
        let limits = limits();
        let evidence = EvidenceConfig::default();
        let request = (
            (mostly(&["e-1"], 10), mostly(&["case-1"], 10)),
            (
                mostly(&["grid-17", ""], 10),
                mostly(&["", "420303003001"], 14),
            ),
            proptest::collection::vec(
                (
                    prop_oneof![4 => Just("https://files.example/1.jpg".to_string()), 1 => text(32)],
                    prop_oneof![4 => Just("a".repeat(64)), 1 => text(66)],
                    prop_oneof![3 => Just("image/jpeg".to_string()), 1 => mostly(&["video/mp4", "application/pdf"], 12)],
                    prop_oneof![3 => 1u64..1_000_000, 1 => any::<u64>()],
                )
                    .prop_map(|(uri, sha256, media_type, size_bytes)| Attachment {
                        uri,
                        sha256,
                        media_type,
                        size_bytes,
                    }),
                0..4,
            ),
        )
            .prop_map(
                |((request_id, case_id), (reporter_id, community_code), attachments)| {
                    AttachEvidenceRequest {
                        request_id,
                        case_id,
                        reporter_id,
                        community_code,
                        attachments,
                    }
                },
            );
        run_decoder_property("AttachEvidence", 512, wire_bytes(request), |bytes| {
            let Ok(request) = AttachEvidenceRequest::decode(bytes) else {
                return Ok(false);
            };
            let Ok(checked) = check_evidence(&request, &limits, &evidence) else {
                return Ok(false);
            };
            prop_assert!(!checked.attachments.is_empty());
            prop_assert!(checked.attachments.len() <= limits.attachments);
            prop_assert!(request.reporter_id.is_empty() != request.community_code.is_empty());
            for attachment in &request.attachments {
                prop_assert!(within(&attachment.uri, limits.uri_chars));
                prop_assert!(attachment.size_bytes <= evidence.max_size_bytes);
                prop_assert!(
                    attachment.media_type.starts_with("image/")
                        || attachment.media_type.starts_with("video/")
                );
            }
            Ok(true)
        });
    }

    #[test]
    fn import_grids() {
        let limits = limits();
        let catalogue = CatalogueConfig {
            max_import_areas: 3,
            max_boundary_points: 8,
            ..CatalogueConfig::default()
        };
        let area = (
            prop_oneof![
                3 => prop::sample::select(vec![
                    ("420303003004", "420303003"),
                    ("420303003004001", "420303003004"),
                    ("420303003", "420303"),
                ]),
                1 => Just(("123", "420303")),
                1 => Just(("420303003004002", "420303003")),
            ],
            mostly(&["东岳社区", ""], 7),
            mostly(
                &[
                    "POLYGON ((110.807 32.63, 110.815 32.63, 110.815 32.64, 110.807 32.63))",
                    "",
                    "POINT (1 2)",
                    "POLYGON ((0 0, 2 2, 2 0, 0 2, 0 0))",
                ],
                40,
            ),
        )
            .prop_map(|((code, parent_code), name, boundary_wkt)| Area {
                code: code.to_string(),
                parent_code: parent_code.to_string(),
                name,
                boundary_wkt,
            });
        let request =
            proptest::collection::vec(area, 0..3).prop_map(|areas| ImportGridsRequest { areas });
        run_decoder_property("ImportGrids", 512, wire_bytes(request), |bytes| {
            let Ok(request) = ImportGridsRequest::decode(bytes) else {
                return Ok(false);
            };
            let Ok(areas) = check_import(&request, &limits, &catalogue) else {
                return Ok(false);
            };
            prop_assert!(!areas.is_empty() && areas.len() <= catalogue.max_import_areas);
            for (area, checked) in request.areas.iter().zip(&areas) {
                prop_assert!(within(&area.name, limits.name_chars));
                prop_assert!(area.code.starts_with(&area.parent_code));
                prop_assert!(matches!(area.code.len(), 9 | 12 | 15));
                prop_assert_eq!(
                    area.boundary_wkt.trim().is_empty(),
                    checked.boundary.is_none()
                );
            }
            Ok(true)
        });
    }
}
