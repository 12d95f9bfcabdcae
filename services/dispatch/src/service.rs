//! Dispatch's use cases. Each loads a case (locked to change it), gives the aggregate a command,
//! and saves the case with its events (through the outbox) in the caller's transaction. What a
//! command needs from elsewhere (the department registry, routes, fallback owners) is looked up
//! here, so the aggregate stays pure.

use crate::domain::{self, Command, DeadlinePolicy, Fallback, Limits, Role, WhistleTarget};
use crate::error::DispatchError;
use crate::storage::{self, CaseRecord, Lock, case};
use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, ConnectionTrait, EntityTrait};
use std::collections::HashMap;
use whistle_platform::clock::to_millis;
use whistle_platform::envelope::{Event, Payload};
use whistle_proto::events::CaseReported;

pub use crate::events::SOURCE;

/// What applying an event did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// False when the event changed nothing new (a replayed `case.reported`).
    pub applied: bool,
    /// The category of each case this flagged recurrent, for the counter recorded once committed.
    pub flagged_recurrent: Vec<String>,
}

/// Applies `case.reported`: opens the case, routes it, and whistles at once when the route says
/// so; then applies the news about it that arrived first. `applied` is false when the case
/// already existed (a replay).
pub async fn open_reported_case<C: ConnectionTrait>(
    connection: &C,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    event: &Event,
    reported: &CaseReported,
) -> Result<Applied, DispatchError> {
    if case::Entity::find_by_id(event.case_id.as_str())
        .one(connection)
        .await?
        .is_some()
    {
        return Ok(Applied::default());
    }
    let catalogue = OpeningCatalogue::read(connection, [reported.category_code.as_str()]).await?;
    let record = open_record(now, policy, event, reported, &catalogue)?;
    storage::save(connection, record, now).await?;
    let flagged_recurrent = apply_pending_news(connection, now, policy, &event.case_id).await?;
    Ok(Applied {
        applied: true,
        flagged_recurrent,
    })
}

/// What opening reported cases reads from the catalogue: the routes of their categories and the
/// department registry. Read once for a batch of cases.
#[derive(Debug, Default)]
pub struct OpeningCatalogue {
    routes: HashMap<String, Vec<domain::Route>>,
    registry: Vec<domain::Department>,
}

impl OpeningCatalogue {
    /// The routes of `categories` and the registry, two statements.
    pub async fn read<'a, C: ConnectionTrait>(
        connection: &C,
        categories: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, DispatchError> {
        let categories: Vec<&str> = categories.into_iter().collect();
        if categories.is_empty() {
            return Ok(Self::default());
        }
        Ok(Self {
            routes: storage::routes_for_categories(connection, &categories).await?,
            registry: storage::departments(connection).await?,
        })
    }
}

/// Opens a reported case in memory: routes it by `catalogue` and whistles it at once when the
/// route says so. A route naming a department the registry does not know (or an inactive one)
/// leaves the case waiting for the street, as does a category without a route. Its events carry
/// the current span's trace, whichever task saves them.
pub fn open_record(
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    event: &Event,
    reported: &CaseReported,
    catalogue: &OpeningCatalogue,
) -> Result<CaseRecord, DispatchError> {
    let mut record = CaseRecord::open(event, reported, now);
    let routes = catalogue
        .routes
        .get(&record.row.category_code)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some(route) =
        domain::select_route(routes, &record.row.category_code, &record.row.grid_code)
    else {
        tracing::info!(case_id = %record.row.case_id, category = %record.row.category_code, "no route matches, waiting for the street");
        return Ok(record);
    };
    record.row.route_id = route.route_id.clone();
    if !route.auto_whistle {
        return Ok(record);
    }
    match targets_in(
        &catalogue.registry,
        &route.lead_department_code,
        &route.co_department_codes,
    ) {
        Ok(targets) => {
            record.execute_in_trace(
                Command::Whistle {
                    by: format!("route:{}", route.route_id),
                    targets,
                    limits: route.limits.apply(record.case.severity.default_limits()),
                    requires_on_site: route.requires_on_site,
                },
                now,
                policy,
                whistle_platform::telemetry::current_traceparent().as_deref(),
            )?;
        }
        Err(error) => {
            tracing::warn!(case_id = %record.row.case_id, route_id = %route.route_id, %error, "the route names a department the registry does not know or that is inactive; the case waits for the street");
        }
    }
    Ok(record)
}

/// Whether an event is news from intake about a reported case that dispatch applies.
pub fn is_report_news(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::CaseMerged(_)
            | Payload::ReportSplit(_)
            | Payload::CaseRecurrent(_)
            | Payload::CaseEvidenceAttached(_)
    )
}

/// Applies intake's news about a case (`case.merged`, `case.split`, `case.recurrent`,
/// `case.evidence_attached`): the case keeps it, and its open assignments are told (one
/// `whistle.*` notice each, clocks unchanged). News about a case not opened yet is kept pending
/// and applied when its `case.reported` arrives. Returns the category of the case when this
/// flagged it recurrent, for the counter recorded once committed.
pub async fn apply_report_news<C: ConnectionTrait>(
    connection: &C,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    event: &Event,
) -> Result<Option<String>, DispatchError> {
    let Some(mut record) = storage::load(connection, &event.case_id, Lock::ForUpdate).await? else {
        storage::pending::Entity::insert(storage::pending::ActiveModel {
            event_id: Set(event.event_id.clone()),
            case_id: Set(event.case_id.clone()),
            event: Set(prost::Message::encode_to_vec(event)),
            received_at_ms: Set(to_millis(now)),
        })
        .on_conflict_do_nothing_on([storage::pending::Column::EventId])
        .exec(connection)
        .await?;
        tracing::info!(case_id = %event.case_id, event_id = %event.event_id, "news about a case not reported yet, kept pending");
        return Ok(None);
    };
    let flagged = apply_news(&mut record, now, policy, event)?;
    storage::save(connection, record, now).await?;
    Ok(flagged)
}

/// Applies intake's news to a case in memory (loaded, or opened by the batch being applied); on
/// an error the case is unchanged. Returns the case's category when this flagged it recurrent.
pub fn apply_news(
    record: &mut CaseRecord,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    event: &Event,
) -> Result<Option<String>, DispatchError> {
    let was_recurrent = record.case.recurrent;
    apply_news_to(record, now, policy, event)?;
    Ok((!was_recurrent && record.case.recurrent).then(|| record.row.category_code.clone()))
}

fn apply_news_to(
    record: &mut CaseRecord,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    event: &Event,
) -> Result<(), DispatchError> {
    let Some(payload) = &event.payload else {
        return Ok(());
    };
    let at = event
        .occurred_at
        .as_ref()
        .and_then(whistle_platform::clock::from_proto_timestamp)
        .unwrap_or(now);
    let (command, note) = match payload {
        Payload::CaseMerged(merged) => {
            let known = merged.report_id == record.row.report_id
                || record
                    .case
                    .merged_reports
                    .iter()
                    .any(|report| report.report_id == merged.report_id);
            if known {
                return Ok(());
            }
            let place = merged.place.clone().unwrap_or_default();
            let report = domain::CaseReport {
                report_id: merged.report_id.clone(),
                reporter_id: merged.reporter_id.clone(),
                channel: merged.channel,
                description: merged.description.clone(),
                lat: place.lat,
                lng: place.lng,
                address: place.address,
                observed_at: merged
                    .observed_at
                    .as_ref()
                    .and_then(whistle_platform::clock::from_proto_timestamp),
                attachments: crate::convert::attachments_from_proto(&merged.attachments),
                severity: merged.severity,
            };
            (
                Command::MergeReport { report },
                Some((
                    "case.merged",
                    merged.reporter_id.clone(),
                    format!(
                        "report {} merged ({:.0} m away): {}",
                        merged.report_id, merged.distance_meters, merged.description
                    ),
                )),
            )
        }
        Payload::ReportSplit(split) => {
            let known = record
                .case
                .merged_reports
                .iter()
                .any(|report| report.report_id == split.report_id);
            if !known {
                return Ok(());
            }
            (
                Command::SplitReport {
                    report_id: split.report_id.clone(),
                },
                Some((
                    "case.split",
                    split.split_by.clone(),
                    format!(
                        "report {} split out to case {}: {}",
                        split.report_id, split.new_case_id, split.reason
                    ),
                )),
            )
        }
        Payload::CaseRecurrent(recurrent) => {
            if record.case.recurrent {
                return Ok(());
            }
            (
                Command::MarkRecurrent {
                    earlier_case_ids: recurrent.earlier_case_ids.clone(),
                },
                Some((
                    "case.recurrent",
                    SOURCE_INTAKE.to_string(),
                    format!(
                        "recurring problem (几经反复): earlier cases {}",
                        recurrent.earlier_case_ids.join(", ")
                    ),
                )),
            )
        }
        Payload::CaseEvidenceAttached(attached) => {
            // a photo already on the case is not news (replays, repeated attachments)
            let attachments: Vec<_> = crate::convert::attachments_from_proto(&attached.attachments)
                .into_iter()
                .filter(|item| {
                    !record
                        .case
                        .evidence
                        .iter()
                        .any(|known| known.uri == item.uri)
                })
                .collect();
            if attachments.is_empty() {
                return Ok(());
            }
            let count = attachments.len();
            (
                Command::AttachEvidence {
                    attached_by: attached.attached_by.clone(),
                    by_community: attached.by_community,
                    attachments,
                },
                Some((
                    "case.evidence_attached",
                    attached.attached_by.clone(),
                    format!("{count} photo(s) attached"),
                )),
            )
        }
        _ => return Ok(()),
    };
    record.execute_noted(
        command,
        now,
        policy,
        whistle_platform::telemetry::current_traceparent().as_deref(),
        note.map(|(kind, actor, detail)| storage::Note {
            at,
            kind,
            actor,
            detail,
        }),
    )?;
    Ok(())
}

/// Who the timeline names for intake's news without a person.
const SOURCE_INTAKE: &str = "whistle-intake";

/// Applies the news kept pending for open cases, at most `limit` cases, in one transaction: news
/// that arrived while another dispatch replica was opening its case, so that neither saw the other
/// (each read before the other committed). A case another transaction holds is left for the next
/// call. News applies once by content (a report already merged, a photo already attached, a
/// recurrence already flagged changes nothing), so two replicas sweeping at once apply it once.
/// Returns how many cases it changed and the categories it flagged recurrent.
pub async fn apply_stranded_news(
    db: &sea_orm::DatabaseConnection,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    limit: u64,
) -> Result<(usize, Vec<String>), DispatchError> {
    use sea_orm::TransactionTrait;
    let case_ids = storage::cases_with_stranded_news(db, limit).await?;
    if case_ids.is_empty() {
        return Ok((0, Vec::new()));
    }
    let transaction = db.begin().await?;
    let mut applied = 0;
    let mut flagged = Vec::new();
    for case_id in case_ids {
        if storage::load(&transaction, &case_id, Lock::SkipLocked)
            .await?
            .is_none()
        {
            continue;
        }
        tracing::warn!(%case_id, "news kept pending for an open case (opened by another replica meanwhile): applied now");
        flagged.extend(apply_pending_news(&transaction, now, policy, &case_id).await?);
        applied += 1;
    }
    transaction.commit().await?;
    Ok((applied, flagged))
}

/// Applies, in arrival order, the news kept pending for a case that has just opened; the
/// categories it flagged recurrent.
async fn apply_pending_news<C: ConnectionTrait>(
    connection: &C,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    case_id: &str,
) -> Result<Vec<String>, DispatchError> {
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder};
    let rows = storage::pending::Entity::find()
        .filter(storage::pending::Column::CaseId.eq(case_id))
        .order_by_asc(storage::pending::Column::ReceivedAtMs)
        .order_by_asc(storage::pending::Column::EventId)
        .all(connection)
        .await?;
    let mut flagged = Vec::new();
    for row in rows {
        let event: Event =
            prost::Message::decode(row.event.as_slice()).map_err(DispatchError::unexpected)?;
        flagged.extend(apply_report_news(connection, now, policy, &event).await?);
        storage::pending::Entity::delete_by_id(row.event_id)
            .exec(connection)
            .await?;
    }
    Ok(flagged)
}

/// The departments of a whistle, from the registry: each known and active (INVALID_ARGUMENT
/// naming the field otherwise), with its supervision department and a new assignment id.
pub async fn whistle_targets<C: ConnectionTrait>(
    connection: &C,
    lead_department_code: &str,
    co_department_codes: &[String],
) -> Result<Vec<WhistleTarget>, DispatchError> {
    let registry = storage::departments(connection).await?;
    targets_in(&registry, lead_department_code, co_department_codes)
}

/// [`whistle_targets`] from a registry already read.
fn targets_in(
    registry: &[domain::Department],
    lead_department_code: &str,
    co_department_codes: &[String],
) -> Result<Vec<WhistleTarget>, DispatchError> {
    let named = std::iter::once((
        "lead_department_code".to_string(),
        lead_department_code,
        Role::Lead,
    ))
    .chain(co_department_codes.iter().enumerate().map(|(index, code)| {
        (
            format!("co_department_codes[{index}]"),
            code.as_str(),
            Role::Co,
        )
    }));
    let mut targets = Vec::new();
    for (field, code, role) in named {
        targets.push(target(registry, &field, code, role)?);
    }
    Ok(targets)
}

fn target(
    registry: &[domain::Department],
    field: &str,
    code: &str,
    role: Role,
) -> Result<WhistleTarget, DispatchError> {
    let department = registry
        .iter()
        .find(|department| department.code == code)
        .ok_or_else(|| {
            DispatchError::invalid(
                field,
                format!("unknown department {code}: not in the registry"),
            )
        })?;
    if !department.active {
        return Err(DispatchError::invalid(
            field,
            format!("department {code} is inactive"),
        ));
    }
    let supervision_department_code =
        domain::supervisor_of(department, registry).unwrap_or_else(|| {
            tracing::warn!(department = %code, "no supervision department for escalations");
            String::new()
        });
    Ok(WhistleTarget {
        assignment_id: uuid::Uuid::now_v7().to_string(),
        department_code: code.to_string(),
        supervision_department_code,
        role,
    })
}

/// What a whistle of a case counts with: the operator's overrides over its route's, over the
/// severity's defaults; and whether on-site is required (the route's; yes without one).
pub async fn whistle_terms<C: ConnectionTrait>(
    connection: &C,
    row: &case::Model,
    overrides: &domain::LimitOverrides,
) -> Result<(Limits, bool), DispatchError> {
    let routes = storage::routes_for_category(connection, &row.category_code).await?;
    let route = domain::select_route(&routes, &row.category_code, &row.grid_code);
    let severity = crate::convert::severity_from_proto(row.severity)
        .unwrap_or(domain::Severity::Routine)
        .default_limits();
    Ok(match route {
        Some(route) => (
            overrides.or(&route.limits).apply(severity),
            route.requires_on_site,
        ),
        None => (overrides.apply(severity), true),
    })
}

/// What deciding a return on this case needs besides the decision: the departments its route
/// names, and the area's fallback owner (known, active) as a whistle target.
pub async fn return_terms<C: ConnectionTrait>(
    connection: &C,
    row: &case::Model,
) -> Result<(Vec<String>, Option<Fallback>), DispatchError> {
    let route = if row.route_id.is_empty() {
        None
    } else {
        storage::route_by_id(connection, &row.route_id).await?
    };
    let route_departments = route
        .as_ref()
        .map(domain::Route::departments)
        .unwrap_or_default();
    let owners = storage::fallback_owners(connection).await?;
    let Some(owner) = domain::fallback_owner_for(&owners, &row.grid_code) else {
        return Ok((route_departments, None));
    };
    let registry = storage::departments(connection).await?;
    let target = match target(&registry, "fallback", &owner.department_code, Role::Lead) {
        Ok(target) => target,
        Err(error) => {
            tracing::warn!(area = %owner.area_code, %error, "the fallback owner cannot be whistled");
            return Ok((route_departments, None));
        }
    };
    let (limits, requires_on_site) =
        whistle_terms(connection, row, &domain::LimitOverrides::default()).await?;
    Ok((
        route_departments,
        Some(Fallback {
            target,
            limits,
            requires_on_site,
        }),
    ))
}

/// Runs `command` on a case locked for change, if `authorize` lets the caller change it, and saves
/// it. Answers `view` of the case as changed, taken before the save: what reading it again after
/// the commit would give, without the reads.
pub async fn change_case<C: ConnectionTrait, T>(
    connection: &C,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    case_id: &str,
    command: Command,
    authorize: impl FnOnce(&CaseRecord) -> Result<(), DispatchError>,
    view: impl FnOnce(&CaseRecord) -> T,
) -> Result<T, DispatchError> {
    let mut record = storage::load(connection, case_id, Lock::ForUpdate)
        .await?
        .ok_or_else(|| DispatchError::NotFound(format!("case {case_id} not found")))?;
    authorize(&record)?;
    record.execute(command, now, policy)?;
    let answer = view(&record);
    storage::save(connection, record, now).await?;
    Ok(answer)
}

/// Runs a use case (its own transaction: load, apply, save) and runs it again from the start when
/// it fails with [`DispatchError::Conflict`], at most `retries` more times, after a short jittered
/// pause that doubles each time (≈5 ms, 10 ms, … up to 200 ms), so callers acting on one case at
/// once see ABORTED only for a conflict that persists.
pub async fn retry_on_conflict<T, F, Fut>(retries: u32, mut use_case: F) -> Result<T, DispatchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, DispatchError>>,
{
    let mut retried = 0;
    loop {
        match use_case().await {
            Err(DispatchError::Conflict(what)) if retried < retries => {
                retried += 1;
                let ceiling_ms = (5u64 << (retried - 1).min(6)).min(200);
                let pause = std::time::Duration::from_micros(fastrand::u64(
                    ceiling_ms * 500..=ceiling_ms * 1000,
                ));
                tracing::debug!(%what, retried, pause_ms = pause.as_millis() as u64, "concurrent change, retrying");
                tokio::time::sleep(pause).await;
            }
            Err(DispatchError::Conflict(what)) => {
                tracing::warn!(%what, retried, "concurrent change persists, giving up");
                return Err(DispatchError::Conflict(what));
            }
            outcome => return outcome,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn conflicts_are_retried_until_they_clear_and_reported_when_they_persist() {
        let attempts = AtomicU32::new(0);
        let outcome = retry_on_conflict(5, || {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt < 3 {
                    Err(DispatchError::Conflict("case c1".into()))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await;
        assert_eq!(outcome.expect("cleared on the fourth run"), 3);

        let attempts = AtomicU32::new(0);
        let outcome: Result<(), _> = retry_on_conflict(2, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(DispatchError::Conflict("case c1".into())) }
        })
        .await;
        assert!(matches!(outcome, Err(DispatchError::Conflict(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "once and two retries");

        let attempts = AtomicU32::new(0);
        let outcome: Result<(), _> = retry_on_conflict(5, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            async { Err(DispatchError::FailedPrecondition("no".into())) }
        })
        .await;
        assert!(matches!(outcome, Err(DispatchError::FailedPrecondition(_))));
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            1,
            "only conflicts are retried"
        );
    }
}
