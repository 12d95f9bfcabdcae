//! Who may call which `EvaluationService` method (docs/security.md). The authentication layer in
//! platform applies this table to every call.

use whistle_platform::auth::{Access, Caller, Role};
use whistle_proto::evaluation::Rater;

const RATERS: &[Role] = &[Role::StreetOperator, Role::CommunityWorker];
const CALLBACKS: &[Role] = &[Role::CallbackOperator];
const READERS: &[Role] = &[Role::Supervisor, Role::StreetOperator];
const ADMIN: &[Role] = &[Role::Admin];

/// The method table.
pub fn access(method: &str) -> Option<Access> {
    let roles = match method {
        "RateCooperation" => RATERS,
        "RecordSatisfaction" => CALLBACKS,
        "GetScorecard" | "GetRanking" | "ExplainScore" => READERS,
        "ClosePeriod" => ADMIN,
        _ => return None,
    };
    Some(Access::Roles(roles))
}

/// A street operator rates as the street, a community worker as the community.
pub fn check_rater(caller: &Caller, rater: i32) -> Result<(), tonic::Status> {
    let expected = match caller.role {
        Role::StreetOperator => Rater::Street,
        Role::CommunityWorker => Rater::Community,
        _ => return Ok(()),
    };
    if !caller.checked || rater == expected as i32 || rater == Rater::Unspecified as i32 {
        return Ok(());
    }
    Err(tonic::Status::permission_denied(format!(
        "rater: a {} rates as {}",
        caller.role,
        expected.as_str_name()
    )))
}
