//! Who may call which `EvaluationService` method (docs/security.md). The authentication layer in
//! platform applies this table to every call.

use whistle_platform::auth::{Access, Caller, Role};
use whistle_proto::evaluation::{GetRankingRequest, RateCooperationRequest, Rater};

const RATERS: &[Role] = &[Role::StreetOperator, Role::CommunityWorker];
const CALLBACKS: &[Role] = &[Role::CallbackOperator];
const READERS: &[Role] = &[Role::Supervisor, Role::StreetOperator];
const ADMIN: &[Role] = &[Role::Admin];
const SUPERVISORS: &[Role] = &[Role::Supervisor];
/// The period's whole set of cards, so that its SHA-256 can be checked: the filing office.
const PERIOD_READERS: &[Role] = &[Role::Supervisor, Role::Admin];

/// The method table.
pub fn access(method: &str) -> Option<Access> {
    let roles = match method {
        "RateCooperation" => RATERS,
        "RecordSatisfaction" => CALLBACKS,
        "GetScorecard" | "GetRanking" => READERS,
        // the explanation of a department's whole card: its supervisors (a street reads its
        // own view of the card with GetScorecard's region_code)
        "ExplainScore" => SUPERVISORS,
        "ClosePeriod" | "ReopenPeriod" => ADMIN,
        "GetPeriodScorecards" => PERIOD_READERS,
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

/// The rater of a cooperation rating is the caller's credential: a street operator rates as its
/// street, a community worker as its community, each identified by the credential's region code.
/// A `rater` or `rater_id` in the request must agree with it.
pub fn rater_from_credential(
    caller: &Caller,
    request: &mut RateCooperationRequest,
) -> Result<(), tonic::Status> {
    check_rater(caller, request.rater)?;
    if !caller.checked {
        return Ok(());
    }
    request.rater = match caller.role {
        Role::StreetOperator => Rater::Street as i32,
        Role::CommunityWorker => Rater::Community as i32,
        role => {
            return Err(tonic::Status::permission_denied(format!(
                "rater: a {role} does not rate cooperation"
            )));
        }
    };
    if !request.rater_id.is_empty() && request.rater_id != caller.region {
        return Err(tonic::Status::permission_denied(format!(
            "rater_id: you rate as {}, leave it empty or give that code",
            caller.region
        )));
    }
    request.rater_id = caller.region.clone();
    Ok(())
}

/// A ranking is read for a region the caller covers: the cases' region when given, else the
/// departments' seat region.
pub fn require_ranking_scope(
    caller: &Caller,
    request: &GetRankingRequest,
) -> Result<(), tonic::Status> {
    if !request.case_region_code.is_empty() {
        return caller.require_region("case_region_code", &request.case_region_code);
    }
    caller.require_region("region_code", &request.region_code)
}
