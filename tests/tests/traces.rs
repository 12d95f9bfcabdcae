//! One trace per case: the four real binaries export spans over OTLP to a trace receiver inside
//! this test (a tonic server of the OTLP TraceService), and one case's spans, from SubmitReport
//! through the outbox relay, NATS, dispatch's consumer, the gateway's notice, the department's
//! Acknowledge (gateway -> dispatch gRPC) and evaluation, share one trace id with every parent
//! present in the trace.

use futures::StreamExt;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use whistle_e2e::{Platform, Storage};
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::gateway::{AcknowledgeRequest, Notice, SubscribeRequest};
use whistle_proto::intake::SubmitReportRequest;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;
use whistle_proto::types::{Channel, Place, Severity};

/// One exported span, as much of it as the assertions need.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: HashMap<String, String>,
}

#[derive(Debug, Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn text(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(Value::StringValue(text)) => text.clone(),
        Some(Value::IntValue(number)) => number.to_string(),
        Some(Value::BoolValue(flag)) => flag.to_string(),
        Some(Value::DoubleValue(number)) => number.to_string(),
        _ => String::new(),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .map(|attribute| text(attribute.value.as_ref()))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|attribute| {
                                (attribute.key.clone(), text(attribute.value.as_ref()))
                            })
                            .collect(),
                    });
                }
            }
        }
        self.spans.lock().expect("spans").extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn next_notice(notices: &mut tonic::Streaming<Notice>, kind: &str) -> Notice {
    loop {
        let notice = tokio::time::timeout(Duration::from_secs(30), notices.next())
            .await
            .unwrap_or_else(|_| panic!("no {kind} notice within 30s"))
            .expect("stream open")
            .expect("notice");
        if notice.kind == kind {
            return notice;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_case_is_one_trace_across_the_four_services() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind receiver");
    let receiver_address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut platform = Platform::prepare(Storage::Sqlite).await;
    for process in [
        &mut platform.intake,
        &mut platform.dispatch,
        &mut platform.gateway,
        &mut platform.evaluation,
    ] {
        process.set_env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("http://{receiver_address}"),
        );
        process.set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
        // logs as quiet as they get: spans must not depend on the log level
        process.set_env("RUST_LOG", "error");
    }
    platform.start_all().await;

    let tokens = platform.credentials().await;
    let fire = tokens
        .get("zw-fire-rescue")
        .expect("fire brigade token")
        .clone();
    let mut gateway = DepartmentGatewayClient::connect(platform.gateway.url())
        .await
        .expect("gateway");
    let mut subscribe = tonic::Request::new(SubscribeRequest { after_sequence: 0 });
    subscribe.metadata_mut().insert(
        "authorization",
        format!("Bearer {fire}").parse().expect("header"),
    );
    let mut notices = gateway
        .subscribe(subscribe)
        .await
        .expect("subscribe")
        .into_inner();

    // a blocked fire lane at 半山尚 (the demo's second case), whistled to the fire brigade
    let mut intake = IntakeServiceClient::new(platform.auth.channel(&platform.intake.url()));
    let submitted = intake
        .submit_report(SubmitReportRequest {
            request_id: "trace-1".into(),
            channel: Channel::Hotline12345 as i32,
            reporter_id: "hotline-operator-3".into(),
            category_code: "E-05-07".into(),
            severity: Severity::Emergency as i32,
            description: "半山尚小区消防通道被私家车堵死".into(),
            place: Some(Place {
                grid_code: "420303003003001".into(),
                lat: 32.6402,
                lng: 110.8013,
                address: "半山尚小区".into(),
            }),
            attachments: vec![],
            observed_at: None,
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    let issued = next_notice(&mut notices, "whistle.issued").await;
    assert_eq!(issued.case_id, submitted.case_id);
    let mut acknowledge = tonic::Request::new(AcknowledgeRequest {
        assignment_id: issued.assignment_id.clone(),
        responsible_person: "李队长".into(),
        ..Default::default()
    });
    acknowledge.metadata_mut().insert(
        "authorization",
        format!("Bearer {fire}").parse().expect("header"),
    );
    gateway.acknowledge(acknowledge).await.expect("acknowledge");

    // wait until the case's trace holds what every service does with it, every parent included
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (trace, root) = loop {
        let spans = receiver.spans.lock().expect("spans").clone();
        let root = spans.iter().find(|span| {
            span.service == "whistle-intake"
                && span.attributes.get("rpc.method").map(String::as_str) == Some("SubmitReport")
        });
        if let Some(root) = root {
            let trace: Vec<ReceivedSpan> = spans
                .iter()
                .filter(|span| span.trace_id == root.trace_id)
                .cloned()
                .collect();
            let has = |service: &str, predicate: &dyn Fn(&ReceivedSpan) -> bool| {
                trace
                    .iter()
                    .any(|span| span.service == service && predicate(span))
            };
            let consumed = |kind: &'static str| {
                move |span: &ReceivedSpan| {
                    span.name == "consume"
                        || span
                            .attributes
                            .get("messaging.destination.name")
                            .is_some_and(|subject| subject.ends_with(kind))
                }
            };
            let ids: BTreeSet<&Vec<u8>> = trace.iter().map(|span| &span.span_id).collect();
            let complete = has("whistle-dispatch", &consumed("reported"))
                && has("whistle-department-gateway", &consumed("issued"))
                && has("whistle-department-gateway", &|span| {
                    span.attributes.get("rpc.method").map(String::as_str)
                        == Some("RecordDepartmentActions")
                })
                && has("whistle-dispatch", &|span| {
                    span.attributes.get("rpc.method").map(String::as_str)
                        == Some("RecordDepartmentActions")
                })
                && has("whistle-dispatch", &|span| {
                    span.name == "forwarded_department_action"
                })
                && has("whistle-evaluation", &|span| {
                    span.attributes
                        .get("messaging.destination.name")
                        .is_some_and(|subject| subject.ends_with(".acknowledged"))
                })
                && trace.iter().all(|span| {
                    span.parent_span_id.is_empty() || ids.contains(&span.parent_span_id)
                });
            if complete {
                break (trace, root.clone());
            }
        }
        if tokio::time::Instant::now() > deadline {
            let mut summary: Vec<String> = spans
                .iter()
                .map(|span| {
                    format!(
                        "{} {} {} trace={} parent={} {:?}",
                        span.service,
                        span.name,
                        hex(&span.span_id),
                        hex(&span.trace_id),
                        hex(&span.parent_span_id),
                        span.attributes
                    )
                })
                .collect();
            summary.sort();
            panic!(
                "the case's trace was not complete within 60s; spans received:\n{}",
                summary.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    for span in &trace {
        eprintln!(
            "{:<28} {:<60} {} <- {}",
            span.service,
            span.name,
            hex(&span.span_id),
            hex(&span.parent_span_id)
        );
    }
    // one root: the SubmitReport server span; everything else hangs under it
    assert!(root.parent_span_id.is_empty(), "SubmitReport is the root");
    let roots: Vec<&ReceivedSpan> = trace
        .iter()
        .filter(|span| span.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root in the case's trace: {roots:?}");
    let services: BTreeSet<&str> = trace.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(
        services,
        BTreeSet::from([
            "whistle-department-gateway",
            "whistle-dispatch",
            "whistle-evaluation",
            "whistle-intake",
        ])
    );
    // the gRPC spans carry the rpc.* semantic conventions, the messaging spans the case and the
    // department
    let by_id: HashMap<&Vec<u8>, &ReceivedSpan> =
        trace.iter().map(|span| (&span.span_id, span)).collect();
    assert_eq!(
        root.attributes.get("rpc.system").map(String::as_str),
        Some("grpc")
    );
    assert_eq!(
        root.attributes.get("rpc.service").map(String::as_str),
        Some("whistle.intake.v1.IntakeService")
    );
    let published_reported = trace
        .iter()
        .find(|span| {
            span.service == "whistle-intake"
                && span
                    .attributes
                    .get("messaging.destination.name")
                    .is_some_and(|subject| subject.ends_with(".reported"))
        })
        .expect("intake's relay publishes case.reported in the trace");
    assert_eq!(
        published_reported.attributes.get("case_id"),
        Some(&submitted.case_id)
    );
    let dispatch_consumes = trace
        .iter()
        .find(|span| {
            span.service == "whistle-dispatch"
                && span
                    .attributes
                    .get("messaging.destination.name")
                    .is_some_and(|subject| subject.ends_with(".reported"))
                && span
                    .attributes
                    .contains_key("messaging.consumer.group.name")
        })
        .expect("dispatch consumes case.reported in the trace");
    assert_eq!(
        dispatch_consumes.parent_span_id, published_reported.span_id,
        "dispatch's consumer continues intake's publish"
    );
    // the gateway forwards actions in batches: the call belongs to the trace of its first action
    // (here the only one), and dispatch applies each action in a span of that action's own trace
    let dispatch_server = trace
        .iter()
        .find(|span| {
            span.service == "whistle-dispatch"
                && span.attributes.get("rpc.method").map(String::as_str)
                    == Some("RecordDepartmentActions")
        })
        .expect("dispatch serves RecordDepartmentActions in the trace");
    let gateway_client = by_id
        .get(&dispatch_server.parent_span_id)
        .expect("parent of dispatch's server span");
    assert_eq!(gateway_client.service, "whistle-department-gateway");
    let forwarding = by_id
        .get(&gateway_client.parent_span_id)
        .expect("parent of the gateway's client span");
    assert_eq!(forwarding.name, "forward_department_actions");
    let department_action = by_id
        .get(&forwarding.parent_span_id)
        .expect("parent of the gateway's forwarding span");
    let forwarded = trace
        .iter()
        .find(|span| {
            span.service == "whistle-dispatch" && span.name == "forwarded_department_action"
        })
        .expect("dispatch applies the action in the trace");
    assert_eq!(
        forwarded.parent_span_id, department_action.span_id,
        "dispatch's work on the action continues the department's action, not the batch"
    );
    assert_eq!(
        department_action
            .attributes
            .get("department")
            .map(String::as_str),
        Some("zw-fire-rescue")
    );
    let evaluation_consumes = trace
        .iter()
        .find(|span| {
            span.service == "whistle-evaluation"
                && span
                    .attributes
                    .get("messaging.destination.name")
                    .is_some_and(|subject| subject.ends_with(".acknowledged"))
        })
        .expect("evaluation consumes whistle.acknowledged in the trace");
    assert_eq!(
        evaluation_consumes.attributes.get("case_id"),
        Some(&submitted.case_id)
    );
    assert_eq!(
        evaluation_consumes
            .attributes
            .get("department")
            .map(String::as_str),
        Some("zw-fire-rescue")
    );

    platform.shutdown().await;
    server.abort();
}
