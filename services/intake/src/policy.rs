//! Who may call which `IntakeService` method (docs/security.md). The authentication layer in
//! platform applies this table to every call; the handlers check regions against the caller's.
//! Open311 is not here: it keeps its API keys on its own HTTP port.

use whistle_platform::auth::{Access, Role};

const REPORTERS: &[Role] = &[Role::Reporter, Role::CommunityWorker];
const READERS: &[Role] = &[
    Role::Reporter,
    Role::CommunityWorker,
    Role::StreetOperator,
    Role::CallbackOperator,
    Role::Supervisor,
];
const EVERYONE: &[Role] = &[
    Role::Reporter,
    Role::CommunityWorker,
    Role::StreetOperator,
    Role::CallbackOperator,
    Role::Supervisor,
    Role::Admin,
    Role::Service,
];
const STREET: &[Role] = &[Role::StreetOperator];
const ADMIN: &[Role] = &[Role::Admin];
const EVIDENCE: &[Role] = &[Role::Reporter, Role::CommunityWorker, Role::StreetOperator];

/// The method table.
pub fn access(method: &str) -> Option<Access> {
    let roles = match method {
        "SubmitReport" => REPORTERS,
        "GetReport" | "ListReports" => READERS,
        "ListCategories" | "LocateGrid" => EVERYONE,
        "ImportGrids" => ADMIN,
        "SplitReport" => STREET,
        "AttachEvidence" => EVIDENCE,
        _ => return None,
    };
    Some(Access::Roles(roles))
}

/// The most specific code of a region.
pub fn region_code(region: &whistle_proto::types::Region) -> &str {
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
