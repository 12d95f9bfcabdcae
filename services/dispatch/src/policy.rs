//! Who may call which `DispatchService` method (docs/security.md). The authentication layer in
//! platform applies this table to every call; handlers then check the case's region against the
//! caller's ([`whistle_platform::auth::Caller::require_region`]).

use whistle_platform::auth::{Access, Caller, Role};

const READERS: &[Role] = &[
    Role::StreetOperator,
    Role::CommunityWorker,
    Role::CallbackOperator,
    Role::Supervisor,
];
const STREET: &[Role] = &[Role::StreetOperator];
const VERIFIERS: &[Role] = &[Role::CommunityWorker];
const ADMIN: &[Role] = &[Role::Admin];
const ROUTE_READERS: &[Role] = &[Role::Admin, Role::StreetOperator, Role::Supervisor];
const SERVICES: &[Role] = &[Role::Service];

/// The one service identity that may record department actions.
pub const GATEWAY_SUBJECT: &str = "department-gateway";

/// The method table.
pub fn access(method: &str) -> Option<Access> {
    let roles = match method {
        "GetCase" | "ListCases" => READERS,
        "AcceptCase" | "RejectCase" | "WhistleCase" | "ResolveLocally" | "DecideExtension"
        | "DecideReturn" | "DeferCase" | "ResumeCase" => STREET,
        "VerifyCase" => VERIFIERS,
        "PutRoute" => ADMIN,
        "ListRoutes" => ROUTE_READERS,
        "RecordDepartmentAction" | "RecordDepartmentActions" => SERVICES,
        _ => return None,
    };
    Some(Access::Roles(roles))
}

/// Only the gateway's service identity records department actions.
pub fn require_gateway(caller: &Caller) -> Result<(), tonic::Status> {
    if !caller.checked || caller.subject == GATEWAY_SUBJECT {
        return Ok(());
    }
    Err(tonic::Status::permission_denied(format!(
        "department actions need the service identity {GATEWAY_SUBJECT}; the credential is {}",
        caller.subject
    )))
}

/// The most specific code of a case's region: what a caller's region must cover.
pub fn case_region_code(region: &whistle_proto::types::Region) -> &str {
    [
        &region.grid_code,
        &region.community_code,
        &region.street_code,
        &region.district_code,
        &region.city_code,
    ]
    .into_iter()
    .find(|code| !code.is_empty())
    .map(String::as_str)
    .unwrap_or_default()
}
