//! Department actions (acknowledge, check in, resolve, …), recorded in batches: the gRPC handlers
//! queue each action, and a writer takes every action waiting, up to `dispatch.action_batch`, into
//! one transaction. A batch locks its cases in one statement (in the order of their ids), reads
//! their assignments and the action ids already used in two more, applies each action in memory in
//! the order it arrived, and saves the changed cases together (`storage::save_all`: one update per
//! changed case and assignment, a few statements for every insert). An action the case refuses
//! gets its own error and changes nothing; the others still commit.
//!
//! Under load this replaces ten round trips and a commit per action by about two per action and
//! eight per batch; and the two or three departments of one case acting at once no longer wait
//! for each other's commits, since their actions land in the same batch. With nothing else
//! waiting, a batch holds one action, as before.

use crate::domain::{ActionRules, Assignment, Command, DeadlinePolicy, DepartmentAction};
use crate::error::DispatchError;
use crate::service::retry_on_conflict;
use crate::storage::{self, CaseRecord, Lock, action};
use chrono::{DateTime, Utc};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ConnectionTrait, DatabaseConnection, TransactionTrait};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinSet;
use whistle_platform::clock::{SharedClock, to_millis};
use whistle_platform::outbox::OutboxSignal;

/// One department's action on one of its assignments, under the department's own `action_id`.
#[derive(Debug, Clone)]
pub struct ActionRequest {
    pub action_id: String,
    pub assignment_id: String,
    pub department_code: String,
    pub action: DepartmentAction,
    /// The trace of the call that asked for it (`traceparent`), which its events continue.
    pub traceparent: Option<String>,
}

/// The assignment after a department action, and whether the action had been recorded before.
#[derive(Debug, Clone)]
pub struct RecordedAction {
    pub assignment: Assignment,
    /// The department used this `action_id` before: nothing changed this time.
    pub repeated: bool,
}

/// Applies `requests` in the caller's transaction, in their order; each gets its own outcome. The
/// outer error (a database error, a concurrent change) is the batch's: nothing of it is kept, and
/// the caller runs it again. Idempotent on (department, `action_id`), as one action at a time was:
/// an id used before answers the assignment as it is, and nothing in an answer tells of another
/// department's actions.
pub async fn record_department_actions<C: ConnectionTrait>(
    connection: &C,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    rules: ActionRules,
    requests: &[ActionRequest],
) -> Result<Vec<Result<RecordedAction, DispatchError>>, DispatchError> {
    let mut assignment_ids: Vec<String> = requests
        .iter()
        .map(|request| request.assignment_id.clone())
        .collect();
    assignment_ids.sort_unstable();
    assignment_ids.dedup();
    // the cases are locked (on PostgreSQL) before the action ids are read, so a retry racing its
    // first attempt in another batch waits for it, then finds the id taken and answers as a repeat
    let mut records =
        storage::load_by_assignments(connection, &assignment_ids, Lock::ForUpdate).await?;
    let case_of: HashMap<String, usize> = records
        .iter()
        .enumerate()
        .flat_map(|(index, record)| {
            record
                .case
                .assignments
                .iter()
                .map(move |assignment| (assignment.assignment_id.clone(), index))
        })
        .collect();
    let keys: Vec<(String, String)> = requests
        .iter()
        .map(|request| (request.department_code.clone(), request.action_id.clone()))
        .collect();
    let mut recorded = storage::recorded_actions(connection, &keys).await?;
    let mut claims = Vec::new();
    let mut changed = vec![false; records.len()];
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        let outcome = match case_of.get(&request.assignment_id) {
            None => Err(DispatchError::NotFound(format!(
                "assignment {} not found",
                request.assignment_id
            ))),
            Some(&index) => {
                let applied = apply(
                    &mut records[index],
                    &mut recorded,
                    now,
                    policy,
                    rules,
                    request,
                );
                if let Ok(Applied::New(claim, _)) = &applied {
                    claims.push(claim.clone());
                    changed[index] = true;
                }
                applied.map(Applied::into_recorded)
            }
        };
        outcomes.push(outcome);
    }
    let expected = claims.len() as u64;
    let skip_taken =
        OnConflict::columns([action::Column::DepartmentCode, action::Column::ActionId])
            .do_nothing()
            .to_owned();
    let claimed = whistle_platform::db::insert_rows(connection, claims, Some(skip_taken)).await?;
    if claimed != expected {
        // another batch took one of these ids after they were read: run this batch again
        return Err(DispatchError::Conflict("an action id".into()));
    }
    let changed = records
        .into_iter()
        .zip(changed)
        .filter_map(|(record, changed)| changed.then_some(record))
        .collect();
    storage::save_all(connection, changed, now).await?;
    Ok(outcomes)
}

/// What one action did to the batch's copy of its case.
enum Applied {
    /// Applied now: the id's claim, to insert with the batch, and the assignment after it.
    New(action::ActiveModel, RecordedAction),
    /// The department used this id before (stored, or earlier in this batch).
    Repeated(RecordedAction),
}

impl Applied {
    fn into_recorded(self) -> RecordedAction {
        match self {
            Self::New(_, recorded) | Self::Repeated(recorded) => recorded,
        }
    }
}

fn apply(
    record: &mut CaseRecord,
    recorded: &mut HashMap<(String, String), action::Model>,
    now: DateTime<Utc>,
    policy: &dyn DeadlinePolicy,
    rules: ActionRules,
    request: &ActionRequest,
) -> Result<Applied, DispatchError> {
    let current = |record: &CaseRecord| {
        record
            .case
            .assignment(&request.assignment_id)
            .cloned()
            .ok_or_else(|| DispatchError::unexpected("assignment missing from its case"))
    };
    if current(record)?.department_code != request.department_code {
        return Err(DispatchError::PermissionDenied(format!(
            "assignment {} is not addressed to department {}",
            request.assignment_id, request.department_code
        )));
    }
    let kind = request.action.name();
    let key = (request.department_code.clone(), request.action_id.clone());
    if let Some(done) = recorded.get(&key) {
        // the department's own earlier action: naming it tells nothing new
        if done.assignment_id != request.assignment_id || done.kind != kind {
            return Err(DispatchError::invalid(
                "action_id",
                format!(
                    "already used for {} on assignment {}",
                    done.kind, done.assignment_id
                ),
            ));
        }
        return Ok(Applied::Repeated(RecordedAction {
            assignment: current(record)?,
            repeated: true,
        }));
    }
    // a refused command leaves the case as it was (the aggregate applies it to a copy)
    record.execute_in_trace(
        Command::Act {
            assignment_id: request.assignment_id.clone(),
            department_code: request.department_code.clone(),
            action: request.action.clone(),
            rules,
        },
        now,
        policy,
        request.traceparent.as_deref(),
    )?;
    let claim = action::Model {
        department_code: request.department_code.clone(),
        action_id: request.action_id.clone(),
        assignment_id: request.assignment_id.clone(),
        kind: kind.to_string(),
        at_ms: to_millis(now),
    };
    recorded.insert(key, claim.clone());
    Ok(Applied::New(
        action::ActiveModel {
            department_code: Set(claim.department_code),
            action_id: Set(claim.action_id),
            assignment_id: Set(claim.assignment_id),
            kind: Set(claim.kind),
            at_ms: Set(claim.at_ms),
        },
        RecordedAction {
            assignment: current(record)?,
            repeated: false,
        },
    ))
}

/// An action waiting for its batch, with where its outcome goes.
#[derive(Debug)]
struct Queued {
    request: ActionRequest,
    answer: oneshot::Sender<Result<RecordedAction, DispatchError>>,
}

/// How the writers apply batches.
#[derive(Clone)]
pub struct ActionWriters {
    pub db: DatabaseConnection,
    pub clock: SharedClock,
    pub policy: Arc<dyn DeadlinePolicy>,
    pub outbox_signal: OutboxSignal,
    pub rules: ActionRules,
    /// Most actions per transaction.
    pub batch: usize,
    /// Concurrent writers; each runs one batch at a time.
    pub writers: usize,
    pub conflict_retries: u32,
}

/// The queue the gRPC handlers put department actions on.
#[derive(Debug, Clone)]
pub struct ActionQueue {
    sender: mpsc::Sender<Queued>,
}

impl ActionQueue {
    /// Starts the writers. They stop once every clone of the queue is dropped and the actions
    /// still queued are written; the set ends with them.
    pub fn start(writers: ActionWriters) -> (Self, JoinSet<()>) {
        let (sender, receiver) = mpsc::channel(writers.batch * writers.writers * 4);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut tasks = JoinSet::new();
        for _ in 0..writers.writers {
            let receiver = receiver.clone();
            let writers = writers.clone();
            tasks.spawn(async move {
                while let Some(batch) = next_batch(&receiver, writers.batch).await {
                    writers.write(batch).await;
                }
            });
        }
        (Self { sender }, tasks)
    }

    /// Records one action with whatever else is waiting; answers once its batch is committed.
    pub async fn record(&self, request: ActionRequest) -> Result<RecordedAction, DispatchError> {
        let (answer, outcome) = oneshot::channel();
        self.sender
            .send(Queued { request, answer })
            .await
            .map_err(|_| DispatchError::unexpected("dispatch is shutting down"))?;
        outcome
            .await
            .map_err(|_| DispatchError::unexpected("the action's writer stopped"))?
    }
}

/// The next action, and every other one already waiting, up to `most`; `None` once the queue is
/// closed and empty.
async fn next_batch(receiver: &Mutex<mpsc::Receiver<Queued>>, most: usize) -> Option<Vec<Queued>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut batch = Vec::with_capacity(most);
    batch.push(first);
    while batch.len() < most {
        match receiver.try_recv() {
            Ok(queued) => batch.push(queued),
            Err(_) => break,
        }
    }
    Some(batch)
}

impl ActionWriters {
    /// Writes one batch and answers each of its actions. When the batch as a whole fails (a
    /// database error one action's write may have caused, or a conflict that outlasted the
    /// retries), each action is run again alone, so only its own failure reaches a caller.
    async fn write(&self, batch: Vec<Queued>) {
        let requests: Vec<ActionRequest> =
            batch.iter().map(|queued| queued.request.clone()).collect();
        whistle_platform::metrics::metrics()
            .action_batch_size
            .record(batch.len() as u64, &[]);
        match self.transaction(&requests).await {
            Ok(outcomes) => {
                for (queued, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = queued.answer.send(outcome);
                }
            }
            Err(error) if batch.len() == 1 => {
                if let Some(queued) = batch.into_iter().next() {
                    let _ = queued.answer.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(%error, actions = batch.len(), "a batch of department actions failed; running each alone");
                for queued in batch {
                    let outcome = match self
                        .transaction(std::slice::from_ref(&queued.request))
                        .await
                    {
                        Ok(mut outcomes) => outcomes
                            .pop()
                            .unwrap_or_else(|| Err(DispatchError::unexpected("no outcome"))),
                        Err(error) => Err(error),
                    };
                    let _ = queued.answer.send(outcome);
                }
            }
        }
    }

    async fn transaction(
        &self,
        requests: &[ActionRequest],
    ) -> Result<Vec<Result<RecordedAction, DispatchError>>, DispatchError> {
        // each attempt is its own transaction, handing its events to the relay once committed
        retry_on_conflict(self.conflict_retries, || {
            self.outbox_signal.committing(async {
                let transaction = self.db.begin().await?;
                let outcomes = record_department_actions(
                    &transaction,
                    self.clock.now(),
                    self.policy.as_ref(),
                    self.rules,
                    requests,
                )
                .await?;
                transaction.commit().await?;
                Ok(outcomes)
            })
        })
        .await
    }
}
