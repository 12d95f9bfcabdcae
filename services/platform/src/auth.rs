//! Who is calling: signed bearer tokens (EdDSA/Ed25519 JWTs) for people and services, verified by
//! one tower layer on every service; the [`Caller`] a verified token puts into the request; the
//! roles every service's `policy.rs` maps its methods to; region containment by division code; and
//! the client side that attaches a token to outgoing calls.
//!
//! Services hold only public keys (`[auth] keys` / `keys_file`, each under its key id `kid`, so a
//! new key can be added before tokens signed with it appear and the old one removed after they
//! expired). Only the issuer (`whistle token issue`, `whistle up`) holds the private key.

use crate::config::ConfigError;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The roles of people and services (see docs/security.md for what each may do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A street dispatch centre operator (街道综合调度中心): accepts, whistles, decides; its street.
    StreetOperator,
    /// A community worker (社区): reports, verifies and rates cases of its community.
    CommunityWorker,
    /// A grid worker or hotline operator: reports in its region (one role for both).
    Reporter,
    /// A call-back operator: records residents' satisfaction on closed cases of its district.
    CallbackOperator,
    /// A district or city supervisor (督办): reads its region, no actions.
    Supervisor,
    /// The catalogue administrator: routes, registry, departments.
    Admin,
    /// A Whistle service calling another one (subject = the service, e.g. `department-gateway`).
    Service,
}

impl Role {
    /// Every role, for tables and tests.
    pub const ALL: [Role; 7] = [
        Role::StreetOperator,
        Role::CommunityWorker,
        Role::Reporter,
        Role::CallbackOperator,
        Role::Supervisor,
        Role::Admin,
        Role::Service,
    ];

    /// The name in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::StreetOperator => "street_operator",
            Role::CommunityWorker => "community_worker",
            Role::Reporter => "reporter",
            Role::CallbackOperator => "callback_operator",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    /// Parses a role name; `grid_worker` and `hotline_operator` are the reporter role.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "grid_worker" | "hotline_operator" => Some(Role::Reporter),
            other => Role::ALL.into_iter().find(|role| role.as_str() == other),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// The claims of a Whistle token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who: a person's id or a service's name; the actor recorded in events.
    pub sub: String,
    pub role: Role,
    /// Region scope: a division code (`420300` city, `420303` district) or a street, community or
    /// grid code; the caller acts on what lies inside it.
    pub region: String,
    /// A department code, for department systems' tokens if they ever use JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    /// Token id: what a revocation list names.
    pub jti: String,
}

/// The verified caller of a request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    pub role: Role,
    pub region: String,
    pub department: Option<String>,
    pub token_id: String,
    /// False only when `auth.enabled = false`: nobody was checked, every check lets it through and
    /// actors come from request fields as before.
    pub checked: bool,
}

impl Caller {
    /// The caller of a service whose authentication is switched off.
    pub fn unchecked() -> Self {
        Self {
            subject: String::new(),
            role: Role::Admin,
            region: String::new(),
            department: None,
            token_id: String::new(),
            checked: false,
        }
    }

    /// The caller the authentication layer put into `request`; UNAUTHENTICATED when none did
    /// (a server built without the layer fails closed).
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| tonic::Status::unauthenticated("no verified credential on this call"))
    }

    /// Whether `code` (a division, street, community or grid code) lies in the caller's region.
    pub fn covers(&self, code: &str) -> bool {
        !self.checked || region_covers(&self.region, code)
    }

    /// PERMISSION_DENIED naming both regions unless `code` lies in the caller's region; `what`
    /// says whose region it is (`case 0190…`).
    pub fn require_region(&self, what: &str, code: &str) -> Result<(), tonic::Status> {
        if self.covers(code) {
            return Ok(());
        }
        count_refusal("region", "");
        tracing::warn!(subject = %self.subject, role = %self.role, caller_region = %self.region, region = %code, "call refused: outside the caller's region");
        Err(tonic::Status::permission_denied(format!(
            "{what} is in region {code}, outside the credential's region {} (role {})",
            self.region, self.role
        )))
    }

    /// PERMISSION_DENIED unless the caller has one of `roles` (for checks that depend on the
    /// request, after the method-level policy let the call in).
    pub fn require_role(&self, what: &str, roles: &[Role]) -> Result<(), tonic::Status> {
        if !self.checked || roles.contains(&self.role) {
            return Ok(());
        }
        count_refusal("role", "");
        Err(tonic::Status::permission_denied(format!(
            "{what} needs role {}; the credential's role is {}",
            role_list(roles),
            self.role
        )))
    }

    /// The actor to record: the credential's subject. `field` is a request field that used to
    /// name the actor (deprecated): when given it must be the same subject, or PERMISSION_DENIED
    /// naming it. With authentication off the field is the actor, as before.
    pub fn actor(&self, field: &str, given: &str) -> Result<String, tonic::Status> {
        if !self.checked {
            return Ok(given.to_string());
        }
        if !given.is_empty() && given != self.subject {
            count_refusal("actor_mismatch", "");
            return Err(tonic::Status::permission_denied(format!(
                "{field} {given:?} does not match the credential's subject {:?} (leave it empty: the actor comes from the credential)",
                self.subject
            )));
        }
        Ok(self.subject.clone())
    }
}

/// The part of a region code its sub-regions start with: a six-digit division code drops its
/// trailing `00` pairs (`420000` province → `42`, `420300` city → `4203`, `420303` district →
/// `420303`); street (9), community (12) and grid (15 digits) codes extend their parent's code,
/// so they are their own prefix.
pub fn region_prefix(scope: &str) -> &str {
    if scope.len() == 6 {
        if let Some(province) = scope.strip_suffix("0000") {
            return province;
        }
        if let Some(city) = scope.strip_suffix("00") {
            return city;
        }
    }
    scope
}

/// Whether `code` lies inside `scope` (both region codes as above). An empty scope covers nothing.
pub fn region_covers(scope: &str, code: &str) -> bool {
    let prefix = region_prefix(scope);
    !prefix.is_empty() && code.starts_with(prefix)
}

fn role_list(roles: &[Role]) -> String {
    if roles.is_empty() {
        return "(none: nobody may call it)".into();
    }
    roles
        .iter()
        .map(|role| role.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

fn count_refusal(reason: &'static str, service: &'static str) {
    crate::metrics::metrics().auth_refusals.add(
        1,
        &[
            crate::metrics::attribute("reason", reason),
            crate::metrics::attribute("service", service),
        ],
    );
}

/// `[auth]`: how a service verifies bearer tokens. On by default; a service refuses to start
/// with it on and no key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `false` serves every call unchecked (logs a warning at start): tests and trusted labs only.
    pub enabled: bool,
    /// The `iss` tokens must carry.
    pub issuer: String,
    /// The `aud` tokens must carry.
    pub audience: String,
    /// Clock skew allowed on `exp`, in seconds.
    pub leeway_secs: u64,
    /// Public keys by key id: base64url of the 32-byte Ed25519 public key (a JWK's `x`).
    pub keys: BTreeMap<String, String>,
    /// A file of more public keys, one `<kid> <public key>` a line, `#` starts a comment.
    pub keys_file: Option<PathBuf>,
    /// A file of revoked token ids (`jti`), one a line; read at start.
    pub revoked_tokens_file: Option<PathBuf>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
            leeway_secs: 30,
            keys: BTreeMap::new(),
            keys_file: None,
            revoked_tokens_file: None,
        }
    }
}

/// The issuer Whistle's own tools write into tokens.
pub const DEFAULT_ISSUER: &str = "whistle";
/// The audience Whistle's own tools write into tokens.
pub const DEFAULT_AUDIENCE: &str = "whistle";

impl AuthConfig {
    /// Authentication switched off (tests of a single service).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Checks the settings that need no files; [`Verifier::from_config`] checks the rest at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.issuer.trim().is_empty() {
            return Err(ConfigError::Invalid("auth.issuer must not be empty".into()));
        }
        if self.audience.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "auth.audience must not be empty".into(),
            ));
        }
        if self.leeway_secs > 600 {
            return Err(ConfigError::Invalid(format!(
                "auth.leeway_secs must be at most 600, got {}",
                self.leeway_secs
            )));
        }
        for (kid, key) in &self.keys {
            decode_public_key(&format!("auth.keys.{kid}"), key)?;
        }
        Ok(())
    }
}

fn decode_public_key(setting: &str, key: &str) -> Result<DecodingKey, ConfigError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(key.trim().trim_end_matches('='))
        .map_err(|error| {
            ConfigError::Invalid(format!(
                "{setting}: not base64url of an Ed25519 public key: {error}"
            ))
        })?;
    if bytes.len() != 32 {
        return Err(ConfigError::Invalid(format!(
            "{setting}: an Ed25519 public key has 32 bytes, got {}",
            bytes.len()
        )));
    }
    DecodingKey::from_ed_components(key.trim().trim_end_matches('=')).map_err(|error| {
        ConfigError::Invalid(format!("{setting}: not an Ed25519 public key: {error}"))
    })
}

/// Reads `<kid> <public key>` lines.
pub fn read_keys_file(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        ConfigError::Invalid(format!(
            "auth.keys_file {}: cannot read: {error}",
            path.display()
        ))
    })?;
    let mut keys = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let Some((kid, key)) = line.split_once(char::is_whitespace) else {
            return Err(ConfigError::Invalid(format!(
                "auth.keys_file {} line {}: expected `<kid> <public key>`",
                path.display(),
                number + 1
            )));
        };
        keys.insert(kid.to_string(), key.trim().to_string());
    }
    Ok(keys)
}

/// Why a call was refused: a short `reason` for logs and the refusal counter, and the message
/// the caller reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

impl Refusal {
    fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// Checks bearer tokens against the configured keys.
pub struct Verifier {
    enabled: bool,
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    revoked: HashSet<String>,
    /// Tokens whose signature and claims already verified, with their expiry: a client sends the
    /// same token on every call, and an Ed25519 check per call was ~4 % of dispatch's CPU.
    verified: std::sync::Mutex<HashMap<String, (Caller, u64)>>,
}

/// At most this many verified tokens are remembered; when full, the memory starts over.
const VERIFIED_TOKENS: usize = 4096;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Verifier")
            .field("enabled", &self.enabled)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .field("revoked", &self.revoked.len())
            .finish()
    }
}

impl Verifier {
    /// Builds the verifier at start: keys from the settings and the keys file, the revocation
    /// list. A service with authentication on and no key refuses to start (exit 64).
    pub fn from_config(config: &AuthConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[config.issuer.as_str()]);
        validation.set_audience(&[config.audience.as_str()]);
        validation.leeway = config.leeway_secs;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        if !config.enabled {
            tracing::warn!(
                "AUTHENTICATION IS DISABLED (auth.enabled = false): every call is served unchecked, any caller can act as anyone"
            );
            return Ok(Self {
                enabled: false,
                keys: HashMap::new(),
                validation,
                revoked: HashSet::new(),
                verified: Default::default(),
            });
        }
        let mut configured = config.keys.clone();
        if let Some(file) = &config.keys_file {
            configured.extend(read_keys_file(file)?);
        }
        if configured.is_empty() {
            return Err(ConfigError::Invalid(
                "auth.keys: no verification key configured (set auth.keys.<kid> or auth.keys_file, or auth.enabled = false to serve unchecked)".into(),
            ));
        }
        let mut keys = HashMap::new();
        for (kid, key) in configured {
            let decoded = decode_public_key(&format!("auth key {kid}"), &key)?;
            keys.insert(kid, decoded);
        }
        let mut revoked = HashSet::new();
        if let Some(file) = &config.revoked_tokens_file {
            let text = std::fs::read_to_string(file).map_err(|error| {
                ConfigError::Invalid(format!(
                    "auth.revoked_tokens_file {}: cannot read: {error}",
                    file.display()
                ))
            })?;
            for line in text.lines() {
                let id = line.split('#').next().unwrap_or_default().trim();
                if !id.is_empty() {
                    revoked.insert(id.to_string());
                }
            }
        }
        tracing::info!(
            keys = keys.len(),
            revoked = revoked.len(),
            "bearer tokens checked"
        );
        Ok(Self {
            enabled: true,
            keys,
            validation,
            revoked,
            verified: Default::default(),
        })
    }

    /// Whether calls are checked at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The caller of an `authorization` header value, or why it is refused.
    pub fn verify(&self, authorization: Option<&str>) -> Result<Caller, Refusal> {
        if !self.enabled {
            return Ok(Caller::unchecked());
        }
        let Some(authorization) = authorization else {
            return Err(Refusal::new(
                "missing_token",
                "no credential: send the header `authorization: Bearer <token>`",
            ));
        };
        let Some(token) = authorization
            .strip_prefix("Bearer ")
            .or_else(|| authorization.strip_prefix("bearer "))
        else {
            return Err(Refusal::new(
                "malformed",
                "the authorization header must be `Bearer <token>`",
            ));
        };
        let token = token.trim();
        if let Some(caller) = self.remembered(token) {
            return Ok(caller);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            Refusal::new(
                "malformed",
                format!("the bearer token is not a JWT: {error}"),
            )
        })?;
        if header.alg != Algorithm::EdDSA {
            return Err(Refusal::new(
                "malformed",
                format!(
                    "the bearer token is signed with {:?}; only EdDSA is accepted",
                    header.alg
                ),
            ));
        }
        let Some(kid) = header.kid else {
            return Err(Refusal::new(
                "unknown_kid",
                "the bearer token names no key id (kid)",
            ));
        };
        let Some(key) = self.keys.get(&kid) else {
            return Err(Refusal::new(
                "unknown_kid",
                format!("the bearer token's key id {kid:?} is not a configured key"),
            ));
        };
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                match error.kind() {
                    ErrorKind::ExpiredSignature => {
                        Refusal::new("expired", "the bearer token has expired")
                    }
                    ErrorKind::InvalidSignature => Refusal::new(
                        "bad_signature",
                        "the bearer token's signature does not verify",
                    ),
                    ErrorKind::InvalidIssuer => Refusal::new(
                        "wrong_issuer",
                        "the bearer token's issuer (iss) is not accepted",
                    ),
                    ErrorKind::InvalidAudience => Refusal::new(
                        "wrong_audience",
                        "the bearer token's audience (aud) is not accepted",
                    ),
                    ErrorKind::ImmatureSignature => {
                        Refusal::new("not_yet_valid", "the bearer token is not valid yet")
                    }
                    ErrorKind::MissingRequiredClaim(claim) => Refusal::new(
                        "malformed",
                        format!("the bearer token lacks the claim {claim}"),
                    ),
                    _ => Refusal::new(
                        "malformed",
                        format!("the bearer token's claims are invalid: {error}"),
                    ),
                }
            })?;
        let claims = data.claims;
        if claims.sub.trim().is_empty() {
            return Err(Refusal::new("malformed", "the bearer token's sub is empty"));
        }
        if claims.region.trim().is_empty() {
            return Err(Refusal::new(
                "malformed",
                "the bearer token's region is empty",
            ));
        }
        if self.revoked.contains(&claims.jti) {
            return Err(Refusal::new(
                "revoked",
                format!("the bearer token {} is revoked", claims.jti),
            ));
        }
        let caller = Caller {
            subject: claims.sub,
            role: claims.role,
            region: claims.region,
            department: claims.department,
            token_id: claims.jti,
            checked: true,
        };
        self.remember(token, &caller, claims.exp);
        Ok(caller)
    }

    /// The caller of a token that verified before and has not expired since. The token string is
    /// the key: a different signature, key id or claim is a different string and verifies afresh.
    fn remembered(&self, token: &str) -> Option<Caller> {
        let verified = self.verified.lock().ok()?;
        let (caller, exp) = verified.get(token)?;
        // no leeway here: a remembered token ends at its `exp`, never later than a fresh check
        (now_secs() < *exp && !self.revoked.contains(&caller.token_id)).then(|| caller.clone())
    }

    fn remember(&self, token: &str, caller: &Caller, exp: u64) {
        if let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_TOKENS {
                verified.clear();
            }
            verified.insert(token.to_string(), (caller.clone(), exp));
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(u64::MAX)
}

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A verified bearer token with one of these roles.
    Roles(&'static [Role]),
    /// The service checks its own credential (the gateway's department tokens): no JWT here.
    OwnCredential,
}

/// A service's table: its gRPC method name (`AcceptCase`) → who may call it; `None` for a method
/// missing from the table, which nobody may call.
pub type MethodPolicy = fn(&str) -> Option<Access>;

/// The tower layer that authenticates every call except health and reflection and applies the
/// service's method table, putting the [`Caller`] into the request's extensions.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<Verifier>,
    service: &'static str,
    policy: MethodPolicy,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AuthLayer")
            .field("service", &self.service)
            .field("verifier", &self.verifier)
            .finish()
    }
}

impl AuthLayer {
    /// `service` names the service in logs and the refusal counter.
    pub fn new(verifier: Verifier, service: &'static str, policy: MethodPolicy) -> Self {
        Self {
            verifier: Arc::new(verifier),
            service,
            policy,
        }
    }

    /// The caller of a request with these path and authorization header, or the status refusing
    /// it (logged and counted).
    pub fn admit(&self, path: &str, authorization: Option<&str>) -> Result<Caller, tonic::Status> {
        let method = path.rsplit('/').next().unwrap_or_default();
        let access = (self.policy)(method);
        if access == Some(Access::OwnCredential) {
            return Ok(Caller::unchecked());
        }
        let caller = match self.verifier.verify(authorization) {
            Ok(caller) => caller,
            Err(refusal) => {
                count_refusal(refusal.reason, self.service);
                tracing::warn!(
                    service = self.service,
                    method,
                    reason = refusal.reason,
                    "call refused: {}",
                    refusal.message
                );
                return Err(tonic::Status::unauthenticated(refusal.message));
            }
        };
        if !caller.checked {
            return Ok(caller);
        }
        match access {
            Some(Access::Roles(roles)) if roles.contains(&caller.role) => Ok(caller),
            Some(Access::Roles(roles)) => {
                count_refusal("role", self.service);
                tracing::warn!(service = self.service, method, subject = %caller.subject, role = %caller.role, "call refused: role may not call it");
                Err(tonic::Status::permission_denied(format!(
                    "{method} needs role {}; the credential's role is {}",
                    role_list(roles),
                    caller.role
                )))
            }
            Some(Access::OwnCredential) => Ok(caller),
            None => {
                count_refusal("no_policy", self.service);
                tracing::warn!(
                    service = self.service,
                    method,
                    "call refused: the method is in no policy"
                );
                Err(tonic::Status::permission_denied(format!(
                    "{method} is open to no role"
                )))
            }
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind [`AuthLayer`].
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for Authenticated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<tonic::body::Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if path.starts_with("/grpc.") {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        match self.layer.admit(path, authorization) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Chooses the token for an outgoing call from its path (`/whistle.dispatch.v1.DispatchService/AcceptCase`).
pub type TokenChooser = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The client side: a tower layer that adds `authorization: Bearer <token>` to every outgoing
/// call that carries no authorization header yet.
#[derive(Clone)]
pub struct BearerLayer {
    choose: TokenChooser,
}

impl std::fmt::Debug for BearerLayer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("BearerLayer")
    }
}

impl BearerLayer {
    /// The same token on every call.
    pub fn new(token: impl Into<String>) -> Self {
        let token = token.into();
        Self {
            choose: Arc::new(move |_| Some(token.clone())),
        }
    }

    /// A token chosen per call (by its path); `None` sends none.
    pub fn per_call(choose: TokenChooser) -> Self {
        Self { choose }
    }

    /// No token at all.
    pub fn none() -> Self {
        Self {
            choose: Arc::new(|_| None),
        }
    }
}

impl<S> tower::Layer<S> for BearerLayer {
    type Service = WithBearer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithBearer {
            inner,
            choose: self.choose.clone(),
        }
    }
}

/// A client channel that adds a bearer token.
#[derive(Clone)]
pub struct WithBearer<S> {
    inner: S,
    choose: TokenChooser,
}

impl<S: std::fmt::Debug> std::fmt::Debug for WithBearer<S> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WithBearer")
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, B> tower::Service<http::Request<B>> for WithBearer<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if !request.headers().contains_key(http::header::AUTHORIZATION)
            && let Some(token) = (self.choose)(request.uri().path())
            && let Ok(value) = http::HeaderValue::try_from(format!("Bearer {token}"))
        {
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        self.inner.call(request)
    }
}

/// An Ed25519 signing key: the issuer's side.
#[derive(Clone)]
pub struct SigningKey {
    seed: [u8; 32],
    /// The key id tokens name: derived from the public key.
    pub kid: String,
    /// base64url of the 32-byte public key, as services configure it.
    pub public_key: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

/// PKCS#8 v1 prefix of an Ed25519 private key (RFC 8410): the seed follows.
const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

impl SigningKey {
    /// A new random key.
    pub fn generate() -> anyhow::Result<Self> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|error| anyhow::anyhow!("no randomness for a key: {error}"))?;
        Ok(Self::from_seed(seed))
    }

    /// The key of a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        use sha2::Digest;
        let public = ed25519_dalek::SigningKey::from_bytes(&seed)
            .verifying_key()
            .to_bytes();
        let digest = sha2::Sha256::digest(public);
        let kid = format!(
            "ed25519-{}",
            digest[..4]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        );
        Self {
            seed,
            kid,
            public_key: URL_SAFE_NO_PAD.encode(public),
        }
    }

    fn pkcs8_der(&self) -> Vec<u8> {
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&self.seed);
        der
    }

    /// The private key as a PKCS#8 PEM file (what `openssl genpkey -algorithm ed25519` writes).
    pub fn to_pem(&self) -> String {
        let body = STANDARD.encode(self.pkcs8_der());
        format!("-----BEGIN PRIVATE KEY-----\n{body}\n-----END PRIVATE KEY-----\n")
    }

    /// Reads a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(text: &str) -> anyhow::Result<Self> {
        let body: String = text
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD
            .decode(body)
            .map_err(|error| anyhow::anyhow!("not a PEM private key: {error}"))?;
        if der.len() != 48 || der[..16] != PKCS8_ED25519_PREFIX {
            anyhow::bail!("not a PKCS#8 Ed25519 private key");
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&der[16..]);
        Ok(Self::from_seed(seed))
    }

    /// Reads a private key file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| anyhow::anyhow!("cannot read key {}: {error}", path.display()))?;
        Self::from_pem(&text).map_err(|error| anyhow::anyhow!("key {}: {error}", path.display()))
    }

    /// Writes the private key file readable by its owner only (0600) and the public keys file
    /// beside it (`<kid> <public key>`).
    pub fn write(&self, private_path: &Path, public_keys_path: &Path) -> anyhow::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(private_path)?;
        file.write_all(self.to_pem().as_bytes())?;
        std::fs::write(
            public_keys_path,
            format!(
                "# Ed25519 public keys that verify Whistle bearer tokens: <kid> <base64url key>\n{} {}\n",
                self.kid, self.public_key
            ),
        )?;
        Ok(())
    }

    /// Signs a token for `subject` with `role` in `region`, valid for `ttl` from now.
    pub fn issue(&self, request: &TokenRequest) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: request.subject.clone(),
            role: request.role,
            region: request.region.clone(),
            department: request.department.clone(),
            iss: request.issuer.clone(),
            aud: request.audience.clone(),
            iat: now,
            exp: now.saturating_add(request.ttl.as_secs()),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        self.sign(&claims)
    }

    /// Signs any claims (tests make expired or odd tokens with it).
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        let key = EncodingKey::from_ed_der(&self.pkcs8_der());
        Ok(jsonwebtoken::encode(&header, claims, &key)?)
    }
}

/// What a token is for.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    pub subject: String,
    pub role: Role,
    pub region: String,
    pub department: Option<String>,
    pub ttl: Duration,
    pub issuer: String,
    pub audience: String,
}

impl TokenRequest {
    /// A token of Whistle's default issuer and audience.
    pub fn new(
        subject: impl Into<String>,
        role: Role,
        region: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            subject: subject.into(),
            role,
            region: region.into(),
            department: None,
            ttl,
            issuer: DEFAULT_ISSUER.into(),
            audience: DEFAULT_AUDIENCE.into(),
        }
    }
}

/// Reads a token file (a token, surrounding whitespace ignored).
pub fn read_token_file(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("cannot read token file {}: {error}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("token file {} is empty", path.display());
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier_for(key: &SigningKey) -> Verifier {
        let mut config = AuthConfig::default();
        config.keys.insert(key.kid.clone(), key.public_key.clone());
        Verifier::from_config(&config).expect("verifier")
    }

    #[test]
    fn region_codes_nest_by_division() {
        assert!(region_covers("420300", "420303"));
        assert!(region_covers("420300", "420302001"));
        assert!(region_covers("420303", "420303003001001"));
        assert!(!region_covers("420303", "420302001"));
        assert!(region_covers("420303003", "420303003002"));
        assert!(!region_covers("420303003", "420303004001"));
        assert!(region_covers("420000", "420303"));
        assert!(!region_covers("", "420303"));
        assert!(!region_covers("420300", "430300"));
    }

    #[test]
    fn a_signed_token_verifies_and_names_the_caller() {
        let key = SigningKey::generate().expect("key");
        let token = key
            .issue(&TokenRequest::new(
                "op-1",
                Role::StreetOperator,
                "420303003",
                Duration::from_secs(60),
            ))
            .expect("token");
        let caller = verifier_for(&key)
            .verify(Some(&format!("Bearer {token}")))
            .expect("verifies");
        assert_eq!(caller.subject, "op-1");
        assert_eq!(caller.role, Role::StreetOperator);
        assert_eq!(caller.region, "420303003");
        assert!(caller.checked);
    }

    #[test]
    fn refusals_name_what_is_wrong() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let verifier = verifier_for(&key);
        let reason = |header: Option<&str>| verifier.verify(header).expect_err("refused").reason;
        assert_eq!(reason(None), "missing_token");
        assert_eq!(reason(Some("Basic abc")), "malformed");
        assert_eq!(reason(Some("Bearer not-a-jwt")), "malformed");
        let request = TokenRequest::new("x", Role::Admin, "420300", Duration::from_secs(60));
        let foreign = other.issue(&request).expect("token");
        assert_eq!(reason(Some(&format!("Bearer {foreign}"))), "unknown_kid");
        // the right kid, the wrong key: a forged signature
        let mut forged_key = other.clone();
        forged_key.kid = key.kid.clone();
        let forged = forged_key.issue(&request).expect("token");
        assert_eq!(reason(Some(&format!("Bearer {forged}"))), "bad_signature");
        let now = jsonwebtoken::get_current_timestamp();
        let expired = key
            .sign(&Claims {
                sub: "x".into(),
                role: Role::Admin,
                region: "420300".into(),
                department: None,
                iss: DEFAULT_ISSUER.into(),
                aud: DEFAULT_AUDIENCE.into(),
                iat: now - 7200,
                exp: now - 3600,
                jti: "old".into(),
            })
            .expect("token");
        assert_eq!(reason(Some(&format!("Bearer {expired}"))), "expired");
    }

    #[test]
    fn a_remembered_token_ends_at_its_expiry_and_a_tampered_copy_is_checked_afresh() {
        let key = SigningKey::generate().expect("key");
        let verifier = verifier_for(&key);
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |exp: u64| Claims {
            sub: "op-1".into(),
            role: Role::StreetOperator,
            region: "420303003".into(),
            department: None,
            iss: DEFAULT_ISSUER.into(),
            aud: DEFAULT_AUDIENCE.into(),
            iat: now,
            exp,
            jti: format!("t-{exp}"),
        };
        // valid for about two more seconds (inside the default leeway once it has passed)
        let short = key.sign(&claims(now + 2)).expect("token");
        let header = format!("Bearer {short}");
        assert_eq!(
            verifier.verify(Some(&header)).expect("fresh").subject,
            "op-1"
        );
        assert_eq!(
            verifier.verify(Some(&header)).expect("remembered").subject,
            "op-1"
        );
        // a copy with its signature altered is another string: verified, and refused
        let mut tampered = short.clone();
        let last = tampered.pop().expect("char");
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(
            verifier
                .verify(Some(&format!("Bearer {tampered}")))
                .is_err()
        );
        std::thread::sleep(Duration::from_millis(3100));
        // past its exp the memory no longer answers; the full check (with its leeway) decides
        assert!(verifier.remembered(&short).is_none());
    }

    #[test]
    fn pem_round_trips_and_keeps_the_kid() {
        let key = SigningKey::generate().expect("key");
        let again = SigningKey::from_pem(&key.to_pem()).expect("pem");
        assert_eq!(again.kid, key.kid);
        assert_eq!(again.public_key, key.public_key);
    }

    #[test]
    fn no_key_with_auth_on_is_a_config_error_naming_the_setting() {
        let error = Verifier::from_config(&AuthConfig::default()).expect_err("no key");
        assert!(error.to_string().contains("auth.keys"), "{error}");
        let mut bad = AuthConfig::default();
        bad.keys.insert("k".into(), "short".into());
        let error = Verifier::from_config(&bad).expect_err("bad key");
        assert!(error.to_string().contains("auth.keys.k"), "{error}");
    }

    #[test]
    fn the_actor_comes_from_the_credential() {
        let caller = Caller {
            subject: "op-1".into(),
            role: Role::StreetOperator,
            region: "420303003".into(),
            department: None,
            token_id: "t".into(),
            checked: true,
        };
        assert_eq!(caller.actor("operator_id", "").expect("empty"), "op-1");
        assert_eq!(caller.actor("operator_id", "op-1").expect("same"), "op-1");
        let refused = caller.actor("operator_id", "op-2").expect_err("other");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(refused.message().contains("operator_id"));
    }
}
