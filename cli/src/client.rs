//! Client commands: report as a grid worker, act as a department, look at cases and scores.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use whistle_proto::dispatch::dispatch_service_client::DispatchServiceClient;
use whistle_proto::evaluation::evaluation_service_client::EvaluationServiceClient;
use whistle_proto::gateway::department_gateway_client::DepartmentGatewayClient;
use whistle_proto::intake::intake_service_client::IntakeServiceClient;

/// A channel that adds the bearer token of the CLI's identity to each call.
pub type AuthedChannel = whistle_platform::auth::WithBearer<Channel>;

/// Who the CLI calls as: one token for every call (`--as`), or else the demo people's tokens,
/// each call made by the person whose role may make it ([`persona_for_call`]).
#[derive(Debug, Clone, Default)]
pub struct Identity {
    pub token: Option<String>,
    pub personas: BTreeMap<String, String>,
}

static IDENTITY: std::sync::RwLock<Option<Identity>> = std::sync::RwLock::new(None);

/// Sets who the CLI calls as (read at each call).
pub fn set_identity(identity: Identity) {
    if let Ok(mut current) = IDENTITY.write() {
        *current = Some(identity);
    }
}

/// The demo person who makes a call by default: the street operator for dispatch's street work and
/// reads, a community worker to verify, the grid worker to report, the administrator for the
/// catalogue, the call-back operator for satisfaction, the supervisor for scores; none for the
/// department gateway (departments send their own token).
pub fn persona_for_call(path: &str) -> Option<&'static str> {
    let (service, method) = path.trim_start_matches('/').split_once('/')?;
    if service.starts_with("whistle.gateway.") {
        return None;
    }
    Some(match method {
        "VerifyCase" => "community",
        "SubmitReport" | "AttachEvidence" => "reporter",
        "PutRoute" | "ImportGrids" | "ClosePeriod" => "admin",
        "RecordSatisfaction" => "callback",
        "GetScorecard" | "GetRanking" | "ExplainScore" => "supervisor",
        _ => "street",
    })
}

/// The token of a demo person of the CLI's identity (`street`, `community:<code>`, ...).
pub fn persona_token(name: &str) -> Option<String> {
    let identity = IDENTITY.read().ok()?.clone()?;
    identity.personas.get(name).cloned()
}

fn bearer() -> whistle_platform::auth::BearerLayer {
    whistle_platform::auth::BearerLayer::per_call(std::sync::Arc::new(|path: &str| {
        let identity = IDENTITY.read().ok()?.clone()?;
        if let Some(token) = identity.token {
            return Some(token);
        }
        identity.personas.get(persona_for_call(path)?).cloned()
    }))
}

async fn authed(url: &str, service: &str) -> anyhow::Result<AuthedChannel> {
    Ok(tower::Layer::layer(&bearer(), channel(url, service).await?))
}

/// A request carrying a bearer token of its own (it wins over the CLI's identity).
pub fn as_person<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    with_token(message, token)
}

/// Endpoints of the four services.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub intake: String,
    pub dispatch: String,
    pub gateway: String,
    pub evaluation: String,
}

async fn channel(url: &str, service: &str) -> anyhow::Result<Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|error| anyhow::anyhow!("{service} url {url:?} is invalid: {error}"))?
        .connect()
        .await
        .map_err(|error| {
            anyhow::anyhow!("cannot reach {service} at {url}: {error} (is `whistle up` running?)")
        })
}

impl Endpoints {
    pub async fn intake(&self) -> anyhow::Result<IntakeServiceClient<AuthedChannel>> {
        Ok(IntakeServiceClient::new(
            authed(&self.intake, "intake").await?,
        ))
    }

    pub async fn dispatch(&self) -> anyhow::Result<DispatchServiceClient<AuthedChannel>> {
        Ok(DispatchServiceClient::new(
            authed(&self.dispatch, "dispatch").await?,
        ))
    }

    pub async fn gateway(&self) -> anyhow::Result<DepartmentGatewayClient<Channel>> {
        Ok(DepartmentGatewayClient::new(
            channel(&self.gateway, "department-gateway").await?,
        ))
    }

    pub async fn evaluation(&self) -> anyhow::Result<EvaluationServiceClient<AuthedChannel>> {
        Ok(EvaluationServiceClient::new(
            authed(&self.evaluation, "evaluation").await?,
        ))
    }
}

/// A request carrying a department's bearer token.
pub fn with_token<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    let value: MetadataValue<_> = format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the token contains characters that cannot be sent"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Where the department tokens of a running `whistle up` are: `--credentials` when given, else
/// `<data-dir>/demo-credentials.json`.
pub fn credentials_path(data_dir: &Path, credentials: Option<&Path>) -> PathBuf {
    match credentials {
        Some(path) => path.to_path_buf(),
        None => data_dir.join("demo-credentials.json"),
    }
}

/// The department tokens in a credentials file, with an error naming where it looked.
pub fn read_credentials(path: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let shown = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let text = std::fs::read_to_string(path).map_err(|error| {
        anyhow::anyhow!(
            "cannot read the department credentials at {}: {error}; `whistle up` writes them to \
             <data-dir>/demo-credentials.json: start it, or point --data-dir (or --credentials) \
             at the folder of the running one",
            shown.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|error| {
        anyhow::anyhow!(
            "{} is not a credentials file (a JSON object of department code to token): {error}",
            shown.display()
        )
    })
}

/// A department's token: given directly, or read from a credentials file.
pub fn department_token(
    department: &str,
    token: Option<&str>,
    credentials_file: &Path,
) -> anyhow::Result<String> {
    if let Some(token) = token {
        return Ok(token.to_string());
    }
    let tokens = read_credentials(credentials_file)?;
    tokens.get(department).cloned().ok_or_else(|| {
        anyhow::anyhow!(
            "{} has no token for department {department}",
            credentials_file.display()
        )
    })
}

/// A gRPC status as a one-line error.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
