//! The deadline scanner: fires every due clock step (overdue at the deadline, escalation to
//! supervision a second interval later) exactly once. Each scan claims due clock rows (on
//! PostgreSQL `FOR UPDATE SKIP LOCKED`, so replicas take different rows and never wait on each
//! other), locks their cases the same way, runs the aggregate's `Tick` and saves the case with its
//! events in the outbox, all in one transaction. A crash before the commit fires nothing (the next
//! scan fires it); after it, the outbox publishes what was committed. Time comes from the injected
//! clock. After each scan it also applies news from intake kept pending for a case that is open
//! (`service::apply_stranded_news`: news that met another replica opening its case).

use crate::config::ScannerConfig;
use crate::domain::{CaseEvent, ClockKind, Command, DeadlinePolicy};
use crate::error::DispatchError;
use crate::storage::{self, Lock};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, TransactionTrait};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use whistle_platform::clock::{Clock, SharedClock};
use whistle_platform::metrics::{attribute, metrics};
use whistle_platform::outbox::OutboxSignal;

/// What one scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Clock rows claimed.
    pub claimed: usize,
    /// `whistle.overdue` events fired.
    pub overdue: usize,
    /// `case.escalated` events fired.
    pub escalated: usize,
}

impl ScanReport {
    pub fn fired(&self) -> usize {
        self.overdue + self.escalated
    }
}

/// One fired step, logged and counted once committed.
struct Fired {
    escalation: bool,
    case_id: String,
    assignment_id: String,
    clock: ClockKind,
    department_code: String,
    supervision_department_code: String,
    late_ms: i64,
}

/// Claims up to `batch_size` due clock rows and fires what is due on their cases, in one
/// transaction. Cases another transaction holds are left for the next scan.
pub async fn scan_once(
    db: &DatabaseConnection,
    clock: &dyn Clock,
    policy: &dyn DeadlinePolicy,
    batch_size: u64,
) -> Result<ScanReport, DispatchError> {
    let now = clock.now();
    let transaction = db.begin().await?;
    let due = storage::claim_due_clocks(&transaction, now, batch_size).await?;
    let mut report = ScanReport {
        claimed: due.len(),
        ..ScanReport::default()
    };
    let case_ids: BTreeSet<String> = due.into_iter().map(|row| row.case_id).collect();
    let mut fired = Vec::new();
    let mut ticked = Vec::new();
    for case_id in case_ids {
        let Some(mut record) = storage::load(&transaction, &case_id, Lock::SkipLocked).await?
        else {
            let exists = storage::case::Entity::find_by_id(case_id.as_str())
                .one(&transaction)
                .await?
                .is_some();
            if !exists {
                tracing::warn!(%case_id, "clocks of a case that does not exist, removed");
                storage::clock::Entity::delete_many()
                    .filter(storage::clock::Column::CaseId.eq(case_id.as_str()))
                    .exec(&transaction)
                    .await?;
            }
            continue;
        };
        record.execute(Command::Tick, now, policy)?;
        // the rows follow the aggregate, including rows that were stale
        record.rewrite_clocks();
        for emitted in record.emitted() {
            match &emitted.event {
                CaseEvent::Overdue {
                    assignment,
                    clock,
                    late_by,
                    ..
                } => fired.push(Fired {
                    escalation: false,
                    case_id: case_id.clone(),
                    assignment_id: assignment.assignment_id.clone(),
                    clock: *clock,
                    department_code: assignment.department_code.clone(),
                    supervision_department_code: String::new(),
                    late_ms: late_by.num_milliseconds(),
                }),
                CaseEvent::Escalated {
                    assignment,
                    clock,
                    supervision_department_code,
                    overdue_by,
                    ..
                } => fired.push(Fired {
                    escalation: true,
                    case_id: case_id.clone(),
                    assignment_id: assignment.assignment_id.clone(),
                    clock: *clock,
                    department_code: assignment.department_code.clone(),
                    supervision_department_code: supervision_department_code.clone(),
                    late_ms: overdue_by.num_milliseconds(),
                }),
                _ => {}
            }
        }
        ticked.push(record);
    }
    storage::save_all(&transaction, ticked, now).await?;
    transaction.commit().await?;
    for step in fired {
        if step.escalation {
            tracing::info!(case_id = %step.case_id, assignment_id = %step.assignment_id, department = %step.department_code, clock = step.clock.as_str(), supervision = %step.supervision_department_code, overdue_ms = step.late_ms, "case escalated");
            report.escalated += 1;
            metrics().cases_escalated.add(
                1,
                &[
                    attribute("department", step.department_code),
                    attribute("supervision", step.supervision_department_code),
                ],
            );
        } else {
            tracing::info!(case_id = %step.case_id, assignment_id = %step.assignment_id, department = %step.department_code, clock = step.clock.as_str(), late_ms = step.late_ms, "clock overdue");
            report.overdue += 1;
            metrics().assignments_overdue.add(
                1,
                &[
                    attribute("clock", step.clock.as_str()),
                    attribute("department", step.department_code),
                ],
            );
        }
    }
    Ok(report)
}

/// Scans every `interval_ms` until shut down; a full batch that fired something is followed by
/// the next at once.
#[derive(Debug, Clone)]
pub struct Scanner {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub policy: Arc<dyn DeadlinePolicy>,
    pub outbox_signal: OutboxSignal,
    pub config: ScannerConfig,
}

impl Scanner {
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.config.enabled {
            tracing::info!("deadline scanner disabled (scanner.enabled = false)");
            return;
        }
        let interval = Duration::from_millis(self.config.interval_ms);
        loop {
            // both sweeps answer Ok only once their transaction committed: what they enqueued is
            // handed to the relay then
            let scanned = self
                .outbox_signal
                .committing(scan_once(
                    &self.db,
                    self.clock.as_ref(),
                    self.policy.as_ref(),
                    self.config.batch_size,
                ))
                .await;
            match scanned {
                Ok(report) => {
                    if report.claimed as u64 >= self.config.batch_size && report.fired() > 0 {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(%error, "deadline scan failed, retrying"),
            }
            let stranded = self
                .outbox_signal
                .committing(crate::service::apply_stranded_news(
                    &self.db,
                    self.clock.now(),
                    self.policy.as_ref(),
                    self.config.batch_size,
                ))
                .await;
            match stranded {
                Ok((0, _)) => {}
                Ok((_, flagged)) => {
                    for category in flagged {
                        metrics()
                            .cases_recurrent
                            .add(1, &[attribute("category", category)]);
                    }
                }
                Err(error) => tracing::warn!(%error, "applying news kept pending failed, retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}
