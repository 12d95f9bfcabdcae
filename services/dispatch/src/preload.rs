//! Preloading a history of finished cases (`whistle bench --preload`), before the service starts:
//! each `case.reported` opens its case ([`CaseRecord::open`]), the catalogue's route whistles it,
//! every assignment is acknowledged (报到), checked in (到场) when the route requires it, and
//! resolved (办结), and the community's verification passes (核查, the case CLOSED): the aggregate's
//! own commands, saved by [`storage::save`] with assignments, timeline and outbox, and each
//! department action recorded under its id as `RecordDepartmentAction` does. The outbox rows are
//! read back (what the other services consume), marked sent and purged as the relay would have;
//! the `case.*` events are recorded in the inbox of dispatch's consumer. Closed cases keep no
//! deadline clock rows.

use crate::config::DispatchConfig;
use crate::domain::{
    self, ActionRules, Command, DeadlinePolicy, DepartmentAction, Route, WhistleTarget,
};
use crate::error::DispatchError;
use crate::storage::{self, CaseRecord, Migrator, action, assignment, case, clock, timeline};
use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    PaginatorTrait, QueryFilter, TransactionTrait,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use whistle_platform::clock::{from_proto_timestamp, to_millis};
use whistle_platform::envelope::{Event, Payload};
use whistle_platform::inbox::record_batch_once;
use whistle_platform::{db, outbox};

/// Opens, works and closes preloaded cases in dispatch's database.
pub struct Preloader {
    policy: Arc<dyn DeadlinePolicy>,
    rules: ActionRules,
    routes: HashMap<String, Vec<Route>>,
    /// The departments each route whistles (assignment ids are made fresh per case).
    targets: HashMap<String, Vec<WhistleTarget>>,
    relay: outbox::HistoryRelay,
}

impl std::fmt::Debug for Preloader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Preloader")
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl Preloader {
    /// Migrates the database and loads the catalogue (as the service does at start), with the
    /// default configuration's deadline policy and action rules.
    pub async fn new(
        db: &DatabaseConnection,
        catalogue_file: &Path,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Self> {
        db::migrate::<Migrator>(db).await?;
        let config = DispatchConfig::default();
        crate::catalogue::load(db, catalogue_file, &config.limits, to_millis(now)).await?;
        Ok(Self {
            policy: config.deadline_policy()?,
            rules: ActionRules {
                check_in_radius_meters: config.dispatch.check_in_radius_meters,
                evidence_per_assignment: config.limits.evidence_per_assignment,
            },
            routes: HashMap::new(),
            targets: HashMap::new(),
            relay: outbox::HistoryRelay::default(),
        })
    }

    async fn route_for(
        &mut self,
        transaction: &DatabaseTransaction,
        category_code: &str,
        grid_code: &str,
    ) -> anyhow::Result<(Route, Vec<WhistleTarget>)> {
        if !self.routes.contains_key(category_code) {
            let routes = storage::routes_for_category(transaction, category_code).await?;
            self.routes.insert(category_code.to_string(), routes);
        }
        let route = domain::select_route(&self.routes[category_code], category_code, grid_code)
            .filter(|route| route.auto_whistle)
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no auto-whistled route for category {category_code} in grid {grid_code}"
                )
            })?;
        if !self.targets.contains_key(&route.route_id) {
            let targets = crate::service::whistle_targets(
                transaction,
                &route.lead_department_code,
                &route.co_department_codes,
            )
            .await?;
            self.targets.insert(route.route_id.clone(), targets);
        }
        let targets = self.targets[&route.route_id]
            .iter()
            .map(|target| WhistleTarget {
                assignment_id: uuid::Uuid::now_v7().to_string(),
                ..target.clone()
            })
            .collect();
        Ok((route, targets))
    }

    /// Takes the cases of `reported` (intake's `case.reported` events) through their whole
    /// lifecycle in one transaction; returns every event dispatch published about them, with its
    /// subject, oldest first per case.
    pub async fn apply(
        &mut self,
        db: &DatabaseConnection,
        reported: &[(String, Event)],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<(String, Event)>> {
        let now_ms = to_millis(now);
        let transaction = db.begin().await?;
        let ids: Vec<&str> = reported
            .iter()
            .map(|(_, event)| event.event_id.as_str())
            .collect();
        record_batch_once(&transaction, crate::consumer::CONSUMER, &ids, now_ms).await?;
        let mut actions = Vec::new();
        for (_, event) in reported {
            let Some(Payload::CaseReported(report)) = &event.payload else {
                anyhow::bail!("preloaded event {} is not case.reported", event.event_id);
            };
            let reported_at = event
                .occurred_at
                .as_ref()
                .and_then(from_proto_timestamp)
                .ok_or_else(|| anyhow::anyhow!("case.reported without occurred_at"))?;
            let mut at = reported_at + Duration::seconds(2);
            let mut record = CaseRecord::open(event, report, at);
            let (route, targets) = self
                .route_for(
                    &transaction,
                    &record.row.category_code,
                    &record.row.grid_code,
                )
                .await?;
            record.row.route_id = route.route_id.clone();
            let limits = route.limits.apply(record.case.severity.default_limits());
            record
                .execute(
                    Command::Whistle {
                        by: format!("route:{}", route.route_id),
                        targets,
                        limits,
                        requires_on_site: route.requires_on_site,
                    },
                    at,
                    self.policy.as_ref(),
                )
                .map_err(DispatchError::from)?;
            let assignments: Vec<(String, String, bool)> = record
                .case
                .assignments
                .iter()
                .map(|assignment| {
                    (
                        assignment.assignment_id.clone(),
                        assignment.department_code.clone(),
                        assignment.requires_on_site,
                    )
                })
                .collect();
            let (lat, lng) = (record.case.lat, record.case.lng);
            // 报到 within minutes, 到场 within the hour, 办结 within hours: every deadline met
            let steps: [(i64, &str); 3] = [(12, "acknowledge"), (45, "check_in"), (240, "resolve")];
            for (minutes, kind) in steps {
                for (index, (assignment_id, department_code, on_site)) in
                    assignments.iter().enumerate()
                {
                    let action = match kind {
                        "acknowledge" => DepartmentAction::Acknowledge {
                            responsible_person: "值班员".into(),
                            contact_phone: "0719-8000000".into(),
                            promised_at: None,
                        },
                        "check_in" if *on_site => DepartmentAction::CheckIn {
                            lat,
                            lng,
                            person: "网格员".into(),
                        },
                        "check_in" => continue,
                        _ => DepartmentAction::Resolve {
                            resolution: "已处置".into(),
                            evidence: Vec::new(),
                        },
                    };
                    at = reported_at + Duration::minutes(minutes + index as i64);
                    let action_id = format!("preload-{kind}-{assignment_id}");
                    actions.push(action::ActiveModel {
                        department_code: Set(department_code.clone()),
                        action_id: Set(action_id),
                        assignment_id: Set(assignment_id.clone()),
                        kind: Set(action.name().to_string()),
                        at_ms: Set(to_millis(at)),
                    });
                    record
                        .execute(
                            Command::Act {
                                assignment_id: assignment_id.clone(),
                                department_code: department_code.clone(),
                                action,
                                rules: self.rules,
                            },
                            at,
                            self.policy.as_ref(),
                        )
                        .map_err(DispatchError::from)?;
                }
            }
            at = reported_at + Duration::minutes(300);
            record
                .execute(
                    Command::Verify {
                        by: record.row.community_code.clone(),
                        passed: true,
                        note: "核查通过".into(),
                        failed_assignment_ids: Vec::new(),
                    },
                    at,
                    self.policy.as_ref(),
                )
                .map_err(DispatchError::from)?;
            if record.case.status != domain::CaseStatus::Closed {
                anyhow::bail!(
                    "preloaded case {} ended {:?}, not CLOSED",
                    record.row.case_id,
                    record.case.status
                );
            }
            storage::save(&transaction, record, at).await?;
        }
        // 5 values a row
        for chunk in actions.chunks(5_000) {
            action::Entity::insert_many(chunk.to_vec())
                .exec_without_returning(&transaction)
                .await?;
        }
        let published = self.relay.relay(&transaction, now_ms).await?;
        // on NATS 2.9 dispatch's consumer on `case.v1.>` is given its own case events too (and
        // skips them); recorded as applied, a replay of the history skips them either way
        let own: Vec<&str> = published
            .iter()
            .filter(|(subject, _)| subject.starts_with("case.v1."))
            .map(|(_, event)| event.event_id.as_str())
            .collect();
        record_batch_once(&transaction, crate::consumer::CONSUMER, &own, now_ms).await?;
        transaction.commit().await?;
        Ok(published)
    }
}

/// Rows in dispatch's tables of cases, assignments, timeline, actions, clocks, inbox and outbox.
pub async fn row_counts(db: &DatabaseConnection) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    counts.insert(
        "dispatch_cases".to_string(),
        case::Entity::find().count(db).await?,
    );
    counts.insert(
        "dispatch_cases_closed".to_string(),
        case::Entity::find()
            .filter(case::Column::Status.eq(domain::CaseStatus::Closed.as_str()))
            .count(db)
            .await?,
    );
    counts.insert(
        "dispatch_assignments".to_string(),
        assignment::Entity::find().count(db).await?,
    );
    counts.insert(
        "dispatch_timeline".to_string(),
        timeline::Entity::find().count(db).await?,
    );
    counts.insert(
        "dispatch_department_actions".to_string(),
        action::Entity::find().count(db).await?,
    );
    counts.insert(
        "dispatch_clocks".to_string(),
        clock::Entity::find().count(db).await?,
    );
    counts.insert(
        "whistle_inbox".to_string(),
        whistle_platform::inbox::entity::Entity::find()
            .count(db)
            .await?,
    );
    counts.insert(
        "whistle_outbox_unsent".to_string(),
        outbox::entity::Entity::find()
            .filter(outbox::entity::Column::SentAtMs.is_null())
            .count(db)
            .await?,
    );
    Ok(counts)
}
