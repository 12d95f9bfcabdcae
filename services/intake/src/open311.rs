//! Open311 GeoReport v2 over HTTP (axum), so a city's existing 311 clients report to intake. A
//! request posted here is a report like any other: the same checks, idempotency, grid lookup and
//! merging, through `service.rs`. XML is the default format (the spec's), JSON on request
//! (`.json` or `format=json`). Errors are the spec's arrays of `{code, description}`.

use crate::config::Open311Config;
use crate::error::IntakeError;
use crate::requests::datum_named;
use crate::service::{Intake, ReportView, attachments_of};
use crate::storage::{case, report};
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect, sea_query::Condition,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{from_millis, to_millis, to_proto_timestamp};
use whistle_proto::intake::{CaseState, SubmitReportRequest};
use whistle_proto::types::{Channel, Place, Severity};

const SPECIFICATION: &str = "http://wiki.open311.org/GeoReport_v2";
/// When this API last changed, for the discovery document.
const CHANGESET: &str = "2026-12-01T00:00:00Z";
/// The spec's default span of GET requests.
const DEFAULT_SPAN_DAYS: i64 = 90;

/// The API keys that may post requests, each with its client's name. Keys are kept as SHA-256
/// digests only.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<([u8; 32], String)>,
}

impl ApiKeys {
    /// One key per line, `<key>` or `<key> <client name>`; blank lines and `#` comments ignored.
    pub fn parse(text: &str) -> Self {
        let keys = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or_default().trim())
            .filter(|line| !line.is_empty())
            .map(|line| {
                let mut parts = line.splitn(2, char::is_whitespace);
                let key = parts.next().unwrap_or_default();
                let name = parts
                    .next()
                    .map(str::trim)
                    .filter(|name| !name.is_empty())
                    .unwrap_or("open311");
                (Sha256::digest(key.as_bytes()).into(), name.to_string())
            })
            .collect();
        Self { keys }
    }

    pub fn read(file: &Path) -> Result<Self, String> {
        std::fs::read_to_string(file)
            .map(|text| Self::parse(&text))
            .map_err(|error| format!("cannot read {}: {error}", file.display()))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The client a key belongs to.
    pub fn client(&self, key: &str) -> Option<&str> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.keys
            .iter()
            .find(|(known, _)| *known == digest)
            .map(|(_, name)| name.as_str())
    }
}

#[derive(Debug, Clone)]
struct Open311 {
    intake: Intake,
    keys: Arc<ApiKeys>,
    config: Open311Config,
}

/// Serves Open311 on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    intake: Intake,
    keys: ApiKeys,
    config: Open311Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, "open311 serving");
    axum::serve(listener, router(intake, keys, config))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// The Open311 routes, every one through one handler that reads the format from the path.
pub fn router(intake: Intake, keys: ApiKeys, config: Open311Config) -> Router {
    Router::new().fallback(handle).with_state(Open311 {
        intake,
        keys: Arc::new(keys),
        config,
    })
}

/// The two formats of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Xml,
    Json,
}

/// A response tree that renders as the spec's XML or its JSON (the Spark convention: lists are
/// arrays, an element of a list is named by the list).
#[derive(Debug, Clone, PartialEq)]
pub enum Node {
    Null,
    Text(String),
    Number(f64),
    Bool(bool),
    Object(Vec<(&'static str, Node)>),
    List {
        item: &'static str,
        items: Vec<Node>,
    },
}

fn text(value: impl Into<String>) -> Node {
    Node::Text(value.into())
}

fn text_or_null(value: &str) -> Node {
    if value.is_empty() {
        Node::Null
    } else {
        text(value)
    }
}

impl Node {
    fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null => Value::Null,
            Node::Text(value) => Value::String(value.clone()),
            // whole numbers (codes, orders) as integers, as XML shows them
            Node::Number(value) if value.fract() == 0.0 && value.abs() < 9.0e15 => {
                Value::Number((*value as i64).into())
            }
            Node::Number(value) => serde_json::Number::from_f64(*value)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Node::Bool(value) => Value::Bool(*value),
            Node::Object(fields) => Value::Object(
                fields
                    .iter()
                    .map(|(name, node)| ((*name).to_string(), node.to_json()))
                    .collect(),
            ),
            Node::List { items, .. } => Value::Array(items.iter().map(Node::to_json).collect()),
        }
    }

    fn write_xml(&self, name: &str, out: &mut String) {
        match self {
            Node::Null => {
                out.push('<');
                out.push_str(name);
                out.push_str("/>");
            }
            Node::Text(value) => element(out, name, &escape_xml(value)),
            Node::Number(value) => element(out, name, &value.to_string()),
            Node::Bool(value) => element(out, name, if *value { "true" } else { "false" }),
            Node::Object(fields) => {
                out.push_str(&format!("<{name}>"));
                for (field, node) in fields {
                    node.write_xml(field, out);
                }
                out.push_str(&format!("</{name}>"));
            }
            Node::List { item, items } => {
                out.push_str(&format!("<{name}>"));
                for node in items {
                    node.write_xml(item, out);
                }
                out.push_str(&format!("</{name}>"));
            }
        }
    }

    /// The document: `<?xml …?>` and `root`, or the JSON of the tree.
    pub fn render(&self, format: Format, root: &str) -> String {
        match format {
            Format::Json => self.to_json().to_string(),
            Format::Xml => {
                let mut out = String::from("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
                self.write_xml(root, &mut out);
                out
            }
        }
    }
}

fn element(out: &mut String, name: &str, content: &str) {
    out.push_str(&format!("<{name}>{content}</{name}>"));
}

/// Text as XML character data; characters XML 1.0 cannot carry (most control characters) dropped.
pub fn escape_xml(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for character in value.chars() {
        match character {
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '&' => escaped.push_str("&amp;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&apos;"),
            '\t' | '\n' | '\r' => escaped.push(character),
            other if other.is_control() || other == '\u{FFFE}' || other == '\u{FFFF}' => {}
            other => escaped.push(other),
        }
    }
    escaped
}

fn document(status: StatusCode, format: Format, root: &str, node: &Node) -> Response {
    let content_type = match format {
        Format::Xml => "text/xml; charset=utf-8",
        Format::Json => "application/json; charset=utf-8",
    };
    (
        status,
        [(header::CONTENT_TYPE, content_type)],
        node.render(format, root),
    )
        .into_response()
}

/// An Open311 error: its HTTP status and the description in the spec's error array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open311Error {
    pub status: StatusCode,
    pub description: String,
}

impl Open311Error {
    fn new(status: StatusCode, description: impl Into<String>) -> Self {
        Self {
            status,
            description: description.into(),
        }
    }

    fn bad_request(description: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, description)
    }

    fn not_found(description: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, description)
    }

    fn respond(&self, format: Format) -> Response {
        let node = Node::List {
            item: "error",
            items: vec![Node::Object(vec![
                ("code", Node::Number(f64::from(self.status.as_u16()))),
                ("description", text(self.description.clone())),
            ])],
        };
        document(self.status, format, "errors", &node)
    }
}

/// The Open311 parameter a field of `SubmitReportRequest` came from.
fn parameter_of(field: &str) -> &str {
    match field {
        "request_id" => "Idempotency-Key",
        "reporter_id" => "account_id",
        "category_code" => "service_code",
        "severity" => "attribute[severity]",
        "place" => "lat/long",
        "place.lat" => "lat",
        "place.lng" => "long",
        "datum" => "attribute[datum]",
        "place.grid_code" => "address_id",
        "place.address" => "address_string",
        "observed_at" => "attribute[observed_at]",
        other => other,
    }
}

impl From<IntakeError> for Open311Error {
    fn from(error: IntakeError) -> Self {
        match error {
            IntakeError::InvalidArgument(field) => {
                Self::bad_request(format!("{}: {}", parameter_of(&field.field), field.reason))
            }
            IntakeError::NotFound(message) => Self::not_found(message),
            IntakeError::AlreadyExists(message) | IntakeError::FailedPrecondition(message) => {
                Self::bad_request(message)
            }
            other => {
                let status = match other {
                    IntakeError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                // logged and masked, as the gRPC mapping does
                let masked = tonic::Status::from(other);
                Self::new(status, masked.message().to_string())
            }
        }
    }
}

/// The resource a path names, and the format asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Discovery,
    Services,
    Service(String),
    Requests,
    Request(String),
    Token(String),
}

/// Splits `/services/E-01-03.json` into the resource and the format its extension names (`None`
/// without an extension).
pub fn route(path: &str) -> Option<(Resource, Option<Format>)> {
    let path = path.trim_end_matches('/');
    let (stem, format) = if let Some(stem) = path.strip_suffix(".json") {
        (stem, Some(Format::Json))
    } else if let Some(stem) = path.strip_suffix(".xml") {
        (stem, Some(Format::Xml))
    } else {
        (path, None)
    };
    let segments: Vec<&str> = stem.trim_start_matches('/').split('/').collect();
    let resource = match segments.as_slice() {
        ["discovery"] => Resource::Discovery,
        ["services"] => Resource::Services,
        ["services", code] if !code.is_empty() => Resource::Service(decode(code)),
        ["requests"] => Resource::Requests,
        ["requests", id] if !id.is_empty() => Resource::Request(decode(id)),
        ["tokens", id] if !id.is_empty() => Resource::Token(decode(id)),
        _ => return None,
    };
    Some((resource, format))
}

fn decode(segment: &str) -> String {
    form_urlencoded::parse(format!("x={segment}").as_bytes())
        .next()
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default()
}

/// Form or query parameters: the last value of each name, and attribute[code] values.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parameters {
    values: BTreeMap<String, String>,
    attributes: BTreeMap<String, String>,
}

impl Parameters {
    pub fn parse(bytes: &[u8]) -> Self {
        let mut parameters = Self::default();
        for (name, value) in form_urlencoded::parse(bytes) {
            let value = value.trim().to_string();
            if let Some(code) = name
                .strip_prefix("attribute[")
                .and_then(|rest| rest.split(']').next())
            {
                parameters.attributes.insert(code.to_string(), value);
            } else {
                parameters.values.insert(name.into_owned(), value);
            }
        }
        parameters
    }

    /// A parameter, `None` when absent or empty ("optional" in the spec's sense).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }

    pub fn attribute(&self, code: &str) -> Option<&str> {
        self.attributes
            .get(code)
            .map(String::as_str)
            .filter(|value| !value.is_empty())
    }
}

async fn handle(
    State(state): State<Open311>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let query = Parameters::parse(uri.query().unwrap_or_default().as_bytes());
    let Some((resource, extension)) = route(uri.path()) else {
        let format = if uri.path().ends_with(".json") || query.get("format") == Some("json") {
            Format::Json
        } else {
            Format::Xml
        };
        return Open311Error::not_found(format!("no such resource: {}", uri.path()))
            .respond(format);
    };
    let format = extension.unwrap_or(match query.get("format") {
        Some(name) if name.eq_ignore_ascii_case("json") => Format::Json,
        _ => Format::Xml,
    });
    let outcome = state
        .answer(&method, resource, &query, &headers, body)
        .await;
    let status = match &outcome {
        Ok(_) => StatusCode::OK,
        Err(error) => error.status,
    };
    crate::metrics::metrics().open311_requests.add(
        1,
        &[
            whistle_platform::metrics::attribute("method", method.to_string()),
            whistle_platform::metrics::attribute("status", i64::from(status.as_u16())),
        ],
    );
    match outcome {
        Ok((root, node)) => document(StatusCode::OK, format, root, &node),
        Err(error) => error.respond(format),
    }
}

impl Open311 {
    async fn answer(
        &self,
        method: &Method,
        resource: Resource,
        query: &Parameters,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(&'static str, Node), Open311Error> {
        match (method, resource) {
            (&Method::GET, Resource::Discovery) => Ok(("discovery", self.discovery(headers))),
            (&Method::GET, Resource::Services) => {
                self.check_jurisdiction(query)?;
                Ok(("services", self.services()))
            }
            (&Method::GET, Resource::Service(code)) => {
                self.check_jurisdiction(query)?;
                Ok(("service_definition", self.service_definition(&code)?))
            }
            (&Method::POST, Resource::Requests) => {
                let limit = self.intake.config.limits.max_request_bytes;
                let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
                    Open311Error::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the request body exceeds {limit} bytes"),
                    )
                })?;
                let form = Parameters::parse(&bytes);
                self.check_jurisdiction(&form)?;
                Ok((
                    "service_requests",
                    self.post_request(&form, headers, &bytes).await?,
                ))
            }
            (&Method::GET, Resource::Requests) => {
                self.check_jurisdiction(query)?;
                Ok(("service_requests", self.requests(query).await?))
            }
            (&Method::GET, Resource::Request(id)) => {
                self.check_jurisdiction(query)?;
                Ok(("service_requests", self.request(&id).await?))
            }
            (&Method::GET, Resource::Token(token)) => {
                self.check_jurisdiction(query)?;
                Ok(("service_requests", self.token(&token).await?))
            }
            (method, _) => Err(Open311Error::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed here"),
            )),
        }
    }

    fn check_jurisdiction(&self, parameters: &Parameters) -> Result<(), Open311Error> {
        match (
            &self.config.jurisdiction_id,
            parameters.get("jurisdiction_id"),
        ) {
            (Some(ours), Some(theirs)) if ours != theirs => Err(Open311Error::not_found(format!(
                "jurisdiction_id {theirs:?} is not served here"
            ))),
            _ => Ok(()),
        }
    }

    fn discovery(&self, headers: &HeaderMap) -> Node {
        let url = self.config.public_url.clone().unwrap_or_else(|| {
            let host = headers
                .get(header::HOST)
                .and_then(|host| host.to_str().ok())
                .map(str::to_string)
                .unwrap_or_else(|| self.config.listen.to_string());
            format!("http://{host}")
        });
        Node::Object(vec![
            ("changeset", text(CHANGESET)),
            (
                "contact",
                text("the street dispatch centre (街道综合调度中心) that runs this Whistle"),
            ),
            (
                "key_service",
                text("API keys are issued by the operator of this Whistle (open311.api_keys_file)"),
            ),
            (
                "endpoints",
                Node::List {
                    item: "endpoint",
                    items: vec![Node::Object(vec![
                        ("specification", text(SPECIFICATION)),
                        ("url", text(url)),
                        ("changeset", text(CHANGESET)),
                        ("type", text("production")),
                        (
                            "formats",
                            Node::List {
                                item: "format",
                                items: vec![text("text/xml"), text("application/json")],
                            },
                        ),
                    ])],
                },
            ),
        ])
    }

    fn services(&self) -> Node {
        let registry = self.intake.registry.get();
        Node::List {
            item: "service",
            items: registry
                .categories()
                .into_iter()
                .map(|category| {
                    Node::Object(vec![
                        ("service_code", text(category.code.clone())),
                        ("service_name", text(category.name.clone())),
                        (
                            "description",
                            text(format!("{}: {}", category.major_name, category.name)),
                        ),
                        ("metadata", Node::Bool(true)),
                        ("type", text("realtime")),
                        (
                            "keywords",
                            text(format!(
                                "{}, {}, {}",
                                category.name, category.major_name, category.kind
                            )),
                        ),
                        ("group", text(category.major_name.clone())),
                    ])
                })
                .collect(),
        }
    }

    fn service_definition(&self, code: &str) -> Result<Node, Open311Error> {
        if !self.intake.registry.get().has_category(code) {
            return Err(Open311Error::not_found(format!(
                "service_code {code:?} not found"
            )));
        }
        let values = |pairs: &[(&str, &str)]| Node::List {
            item: "value",
            items: pairs
                .iter()
                .map(|(key, name)| Node::Object(vec![("key", text(*key)), ("name", text(*name))]))
                .collect(),
        };
        let attribute = |code: &str,
                         datatype: &str,
                         order: f64,
                         description: &str,
                         datatype_description: &str,
                         listed: Node| {
            Node::Object(vec![
                ("variable", Node::Bool(true)),
                ("code", text(code)),
                ("datatype", text(datatype)),
                ("required", Node::Bool(false)),
                ("datatype_description", text(datatype_description)),
                ("order", Node::Number(order)),
                ("description", text(description)),
                ("values", listed),
            ])
        };
        let none = || Node::List {
            item: "value",
            items: Vec::new(),
        };
        Ok(Node::Object(vec![
            ("service_code", text(code)),
            (
                "attributes",
                Node::List {
                    item: "attribute",
                    items: vec![
                        attribute(
                            "severity",
                            "singlevaluelist",
                            1.0,
                            "How urgent it is (default routine); it sets the departments' deadlines",
                            "",
                            values(&[
                                ("routine", "一般 routine"),
                                ("urgent", "急 urgent"),
                                ("emergency", "紧急 emergency"),
                                ("complex", "疑难 complex, needs coordination"),
                            ]),
                        ),
                        attribute(
                            "datum",
                            "singlevaluelist",
                            2.0,
                            "The datum of lat/long (default WGS84): GCJ02 for AMap/Tencent, BD09 for Baidu",
                            "",
                            values(&[
                                ("WGS84", "WGS-84 (GPS)"),
                                ("GCJ02", "GCJ-02 (AMap, Tencent)"),
                                ("BD09", "BD-09 (Baidu)"),
                            ]),
                        ),
                        attribute(
                            "observed_at",
                            "datetime",
                            3.0,
                            "When the problem was seen (default: now)",
                            "ISO 8601 with a timezone, e.g. 2026-12-01T08:30:00+08:00",
                            none(),
                        ),
                    ],
                },
            ),
        ]))
    }

    async fn post_request(
        &self,
        form: &Parameters,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Node, Open311Error> {
        let client = match form.get("api_key") {
            None => {
                return Err(Open311Error::new(
                    StatusCode::UNAUTHORIZED,
                    "api_key was not provided -- can't proceed with create_request",
                ));
            }
            Some(key) => self.keys.client(key).ok_or_else(|| {
                Open311Error::new(
                    StatusCode::FORBIDDEN,
                    "Invalid api_key received -- can't proceed with create_request",
                )
            })?,
        };
        let service_code = form
            .get("service_code")
            .ok_or_else(|| Open311Error::bad_request("service_code was not provided"))?;
        if !self.intake.registry.get().has_category(service_code) {
            return Err(Open311Error::not_found(format!(
                "service_code {service_code:?} not found"
            )));
        }
        let request = self.report_request(client, service_code, form, headers, body)?;
        let account_id = form.get("account_id").map(str::to_string);
        let answer = self.intake.submit(request).await?;
        let notice = if answer.merged {
            format!(
                "merged with an open report of the same problem nearby (case {}); the departments already on it are told",
                answer.case_id
            )
        } else if answer.recurrent {
            format!(
                "received as case {}; the problem recurs here ({} earlier cases closed recently), the street may call a joint meeting",
                answer.case_id,
                answer.earlier_case_ids.len()
            )
        } else {
            format!(
                "received as case {}; the street dispatch centre will whistle the departments responsible",
                answer.case_id
            )
        };
        Ok(Node::List {
            item: "request",
            items: vec![Node::Object(vec![
                ("service_request_id", text(answer.report_id)),
                ("service_notice", text(notice)),
                ("account_id", account_id.map_or(Node::Null, text)),
            ])],
        })
    }

    /// The report an Open311 POST stands for.
    fn report_request(
        &self,
        client: &str,
        service_code: &str,
        form: &Parameters,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<SubmitReportRequest, Open311Error> {
        let number = |name: &str| -> Result<Option<f64>, Open311Error> {
            form.get(name)
                .map(|value| {
                    value.parse::<f64>().map_err(|_| {
                        Open311Error::bad_request(format!("{name}: not a number: {value:?}"))
                    })
                })
                .transpose()
        };
        let (lat, long) = (number("lat")?, number("long")?);
        let address_id = form.get("address_id").unwrap_or_default().to_string();
        let (lat, lng) = match (lat, long) {
            (Some(lat), Some(long)) => (lat, long),
            (Some(_), None) | (None, Some(_)) => {
                return Err(Open311Error::bad_request(
                    "lat and long must be sent together",
                ));
            }
            (None, None) if !address_id.is_empty() => {
                // a grid code without a position: the grid stands for its own place
                let position = self
                    .intake
                    .registry
                    .get()
                    .grid_position(&address_id)
                    .ok_or_else(|| {
                        Open311Error::bad_request(format!(
                            "address_id: {address_id:?} is not a grid with a boundary; send lat and long"
                        ))
                    })?;
                (position.lat, position.lng)
            }
            (None, None) if form.get("address_string").is_some() => {
                return Err(Open311Error::bad_request(
                    "address_string alone cannot be located (no geocoder): send lat and long, or address_id (a 15-digit grid code)",
                ));
            }
            (None, None) => {
                return Err(Open311Error::bad_request(
                    "a location is required: lat and long, or address_id (a 15-digit grid code)",
                ));
            }
        };
        let datum = match form.attribute("datum") {
            None => whistle_proto::types::Datum::Wgs84,
            Some(name) => datum_named(name).ok_or_else(|| {
                Open311Error::bad_request(format!(
                    "attribute[datum]: {name:?} is not WGS84, GCJ02 or BD09"
                ))
            })?,
        };
        let severity = match form.attribute("severity").unwrap_or("routine") {
            "routine" => Severity::Routine,
            "urgent" => Severity::Urgent,
            "emergency" => Severity::Emergency,
            "complex" => Severity::Complex,
            other => {
                return Err(Open311Error::bad_request(format!(
                    "attribute[severity]: {other:?} is not routine, urgent, emergency or complex"
                )));
            }
        };
        let observed_at = form
            .attribute("observed_at")
            .map(|value| {
                DateTime::parse_from_rfc3339(value)
                    .map(|at| to_proto_timestamp(at.with_timezone(&Utc)))
                    .map_err(|_| {
                        Open311Error::bad_request(format!(
                            "attribute[observed_at]: {value:?} is not ISO 8601 with a timezone"
                        ))
                    })
            })
            .transpose()?;
        let person = ["account_id", "email", "device_id", "phone"]
            .into_iter()
            .find_map(|name| form.get(name))
            .unwrap_or("anonymous");
        let request_id = match headers.get("idempotency-key") {
            Some(value) => value
                .to_str()
                .map_err(|_| Open311Error::bad_request("Idempotency-Key: not visible ASCII"))?
                .to_string(),
            // the same client posting the same form twice (a double tap, a retry) is one report
            None => format!(
                "open311-{}",
                hex::encode(Sha256::digest([client.as_bytes(), b"\n", body].concat()))
            ),
        };
        Ok(SubmitReportRequest {
            request_id,
            channel: Channel::ResidentApp as i32,
            reporter_id: format!("open311:{client}:{person}"),
            category_code: service_code.to_string(),
            severity: severity as i32,
            description: form.get("description").unwrap_or_default().to_string(),
            place: Some(Place {
                grid_code: address_id,
                lat,
                lng,
                address: form.get("address_string").unwrap_or_default().to_string(),
            }),
            attachments: Vec::new(),
            observed_at,
            media_url: form.get("media_url").unwrap_or_default().to_string(),
            datum: datum as i32,
        })
    }

    fn service_request(&self, view: &ReportView) -> Node {
        let model = &view.report;
        let registry = self.intake.registry.get();
        let service_name = registry
            .category(&model.category_code)
            .map(|category| category.name.clone())
            .unwrap_or_default();
        let state = view
            .case
            .as_ref()
            .and_then(|case| CaseState::try_from(case.state).ok())
            .unwrap_or(CaseState::Open);
        let status = match state {
            CaseState::Closed | CaseState::Rejected => "closed",
            CaseState::Open | CaseState::Unspecified => "open",
        };
        let mut notes = Vec::new();
        if model.merged {
            notes.push(format!(
                "merged into case {} with {} reports",
                model.case_id,
                view.case.as_ref().map_or(1, |case| case.report_count)
            ));
        }
        if model.recurrent {
            notes.push("recurring problem (几经反复)".to_string());
        }
        if let Some(case) = &view.case
            && !case.state_note.is_empty()
        {
            notes.push(case.state_note.clone());
        }
        let updated_ms = view.case.as_ref().map_or(model.received_at_ms, |case| {
            case.state_changed_at_ms.max(model.received_at_ms)
        });
        let media_url = attachments_of(model)
            .into_iter()
            .map(|attachment| attachment.uri)
            .next()
            .unwrap_or_default();
        Node::Object(vec![
            ("service_request_id", text(model.report_id.clone())),
            ("status", text(status)),
            ("status_notes", text_or_null(&notes.join("; "))),
            ("service_name", text(service_name)),
            ("service_code", text(model.category_code.clone())),
            ("description", text(model.description.clone())),
            ("agency_responsible", Node::Null),
            ("service_notice", Node::Null),
            ("requested_datetime", text(w3c(model.received_at_ms))),
            ("updated_datetime", text(w3c(updated_ms))),
            ("expected_datetime", Node::Null),
            ("address", text_or_null(&model.address)),
            ("address_id", text(model.grid_code.clone())),
            ("zipcode", Node::Null),
            ("lat", Node::Number(model.lat)),
            ("long", Node::Number(model.lng)),
            ("media_url", text_or_null(&media_url)),
        ])
    }

    async fn request(&self, id: &str) -> Result<Node, Open311Error> {
        self.intake
            .config
            .limits
            .check_id("service_request_id", id)
            .map_err(|error| Open311Error::bad_request(error.to_string()))?;
        let view = self.intake.report_view(id).await?.ok_or_else(|| {
            Open311Error::not_found(format!("service_request_id {id:?} not found"))
        })?;
        Ok(Node::List {
            item: "request",
            items: vec![self.service_request(&view)],
        })
    }

    async fn token(&self, token: &str) -> Result<Node, Open311Error> {
        self.intake
            .config
            .limits
            .check_id("token", token)
            .map_err(|error| Open311Error::bad_request(error.to_string()))?;
        let model = self
            .intake
            .report_by_request_id(token)
            .await?
            .ok_or_else(|| Open311Error::not_found(format!("token {token:?} not found")))?;
        Ok(Node::List {
            item: "request",
            items: vec![Node::Object(vec![
                ("service_request_id", text(model.report_id)),
                ("token", text(token)),
            ])],
        })
    }

    async fn requests(&self, query: &Parameters) -> Result<Node, Open311Error> {
        let limits = &self.intake.config.limits;
        let list = |name: &str| -> Result<Vec<String>, Open311Error> {
            let values: Vec<String> = query
                .get(name)
                .map(|value| {
                    value
                        .split(',')
                        .map(|item| item.trim().to_string())
                        .filter(|item| !item.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            whistle_platform::validation::LimitsConfig::check_items(
                name,
                values.len(),
                limits.page_size,
            )
            .map_err(|error| Open311Error::bad_request(error.to_string()))?;
            for value in &values {
                limits
                    .check_id(name, value)
                    .map_err(|error| Open311Error::bad_request(error.to_string()))?;
            }
            Ok(values)
        };
        let number = |name: &str, default: u64| -> Result<u64, Open311Error> {
            query.get(name).map_or(Ok(default), |value| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|number| *number >= 1)
                    .ok_or_else(|| {
                        Open311Error::bad_request(format!("{name}: not a positive whole number"))
                    })
            })
        };
        let ids = list("service_request_id")?;
        let page_size = number("page_size", limits.page_size as u64)?;
        if page_size > limits.page_size as u64 {
            return Err(Open311Error::bad_request(format!(
                "page_size: at most {}",
                limits.page_size
            )));
        }
        let page = number("page", 1)?;
        let mut select = report::Entity::find()
            .join(JoinType::InnerJoin, report_case_relation())
            .order_by_desc(report::Column::ReceivedAtMs)
            .order_by_desc(report::Column::ReportId);
        if !ids.is_empty() {
            // "this overrides all other arguments"
            select = select.filter(report::Column::ReportId.is_in(ids));
        } else {
            let codes = list("service_code")?;
            if !codes.is_empty() {
                select = select.filter(report::Column::CategoryCode.is_in(codes));
            }
            let date = |name: &str| -> Result<Option<i64>, Open311Error> {
                query
                    .get(name)
                    .map(|value| {
                        DateTime::parse_from_rfc3339(value)
                            .map(|at| to_millis(at.with_timezone(&Utc)))
                            .map_err(|_| {
                                Open311Error::bad_request(format!(
                                    "{name}: {value:?} is not a w3c datetime such as 2026-12-01T00:00:00Z"
                                ))
                            })
                    })
                    .transpose()
            };
            let span_ms = DEFAULT_SPAN_DAYS * 86_400_000;
            let now_ms = to_millis(self.intake.clock.now());
            let (start, end) = match (date("start_date")?, date("end_date")?) {
                (Some(start), Some(end)) => (start, end),
                (Some(start), None) => (start, start.saturating_add(span_ms)),
                (None, Some(end)) => (end.saturating_sub(span_ms), end),
                (None, None) => (now_ms.saturating_sub(span_ms), now_ms),
            };
            if end < start {
                return Err(Open311Error::bad_request(
                    "end_date: must not be before start_date",
                ));
            }
            if end - start > span_ms {
                return Err(Open311Error::bad_request(
                    "start_date/end_date: may not span more than 90 days",
                ));
            }
            select = select
                .filter(report::Column::ReceivedAtMs.gte(start))
                .filter(report::Column::ReceivedAtMs.lte(end));
            let statuses = list("status")?;
            if !statuses.is_empty() {
                let mut states = Condition::any();
                for status in &statuses {
                    match status.as_str() {
                        "open" => {
                            states = states.add(case::Column::State.eq(CaseState::Open as i32))
                        }
                        "closed" => {
                            states = states.add(
                                case::Column::State
                                    .is_in([CaseState::Closed as i32, CaseState::Rejected as i32]),
                            )
                        }
                        other => {
                            return Err(Open311Error::bad_request(format!(
                                "status: {other:?} is not open or closed"
                            )));
                        }
                    }
                }
                select = select.filter(states);
            }
        }
        let reports = select
            .offset(page.saturating_sub(1).saturating_mul(page_size))
            .limit(page_size)
            .all(&self.intake.db)
            .await
            .map_err(IntakeError::from)?;
        let views = self.intake.with_cases(reports).await?;
        Ok(Node::List {
            item: "request",
            items: views
                .iter()
                .map(|view| self.service_request(view))
                .collect(),
        })
    }
}

/// Reports joined to their cases.
fn report_case_relation() -> sea_orm::RelationDef {
    report::Entity::belongs_to(case::Entity)
        .from(report::Column::CaseId)
        .to(case::Column::CaseId)
        .into()
}

/// A w3c datetime in UTC, e.g. `2026-12-01T08:30:00Z`.
fn w3c(millis: i64) -> String {
    from_millis(millis).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_resources_and_formats() {
        assert_eq!(
            route("/services.json"),
            Some((Resource::Services, Some(Format::Json)))
        );
        assert_eq!(route("/services"), Some((Resource::Services, None)));
        assert_eq!(
            route("/services/E-01-03.xml"),
            Some((Resource::Service("E-01-03".into()), Some(Format::Xml)))
        );
        assert_eq!(
            route("/requests/0190-ab.json"),
            Some((Resource::Request("0190-ab".into()), Some(Format::Json)))
        );
        assert_eq!(
            route("/tokens/open311-x.json"),
            Some((Resource::Token("open311-x".into()), Some(Format::Json)))
        );
        assert_eq!(
            route("/discovery.json"),
            Some((Resource::Discovery, Some(Format::Json)))
        );
        assert_eq!(route("/nothing.json"), None);
        assert_eq!(route("/requests/a/b.json"), None);
    }

    #[test]
    fn forms_keep_attributes_apart() {
        let form = Parameters::parse(
            b"api_key=k&service_code=E-01-03&lat=32.6&long=&attribute[datum]=GCJ02&attribute[severity]=urgent&description=%E5%9E%83%E5%9C%BE",
        );
        assert_eq!(form.get("api_key"), Some("k"));
        assert_eq!(form.get("long"), None, "empty is absent");
        assert_eq!(form.attribute("datum"), Some("GCJ02"));
        assert_eq!(form.attribute("severity"), Some("urgent"));
        assert_eq!(form.get("description"), Some("垃圾"));
    }

    #[test]
    fn keys_are_matched_by_digest() {
        let keys = ApiKeys::parse("# demo keys\nabc123 resident-app\n\nxyz  # comment\n");
        assert_eq!(keys.client("abc123"), Some("resident-app"));
        assert_eq!(keys.client("xyz"), Some("open311"));
        assert_eq!(keys.client("abc"), None);
        assert!(ApiKeys::parse("# nothing\n").is_empty());
    }

    #[test]
    fn one_tree_renders_as_the_specs_xml_and_json() {
        let node = Node::List {
            item: "request",
            items: vec![Node::Object(vec![
                ("service_request_id", text("r-1")),
                ("status_notes", Node::Null),
                ("description", text("a <b> & 'c'")),
                ("lat", Node::Number(32.6369)),
            ])],
        };
        assert_eq!(
            node.render(Format::Xml, "service_requests"),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><service_requests><request><service_request_id>r-1</service_request_id><status_notes/><description>a &lt;b&gt; &amp; &apos;c&apos;</description><lat>32.6369</lat></request></service_requests>"
        );
        let json: serde_json::Value =
            serde_json::from_str(&node.render(Format::Json, "service_requests")).expect("json");
        assert_eq!(
            json,
            serde_json::json!([{"service_request_id": "r-1", "status_notes": null, "description": "a <b> & 'c'", "lat": 32.6369}])
        );
        assert_eq!(escape_xml("bell\u{7}ok\n"), "bellok\n");
    }
}
