//! A consumer batch's working copy of the cases its events touch. The batch reads each case once
//! (its assignments with their tallies, the facts published about it, its state), its events merge
//! into the copy in memory, and just before the commit each touched case's tallies are decided
//! once and what changed is written in a few multi-row statements. Before, every event read its
//! assignment, wrote it back, and decided its whole case again: about nine statements per event.
//!
//! The batch's case keys are locked (`EvaluationEvents::before_batch`) before anything is read,
//! so no other consumer or replica changes these rows until the commit.

use crate::cells::{self, Deltas};
use crate::domain::{
    self, AssignmentFacts, AssignmentSnapshot, CaseFact, CaseRegion, Milestone, Tally,
};
use crate::storage::{self, case_state, milestone};
use sea_orm::{ConnectionTrait, DbErr};
use std::collections::{BTreeMap, HashMap};

/// What a batch has read and changed, per case.
#[derive(Debug, Default)]
pub struct CaseBatch {
    cases: HashMap<String, CaseView>,
    /// Every case an event named, with when this batch first saw it (kept for a case not known
    /// before).
    remembered: BTreeMap<String, i64>,
    milestones: Vec<milestone::Model>,
}

/// One case as the batch sees it.
#[derive(Debug, Default)]
pub struct CaseView {
    stored_state: Option<case_state::Model>,
    state: Option<case_state::Model>,
    assignments: BTreeMap<String, AssignmentView>,
    /// Every fact about the case: those stored, then those the batch added
    /// (`facts[stored_facts..]`).
    facts: Vec<CaseFact>,
    stored_facts: usize,
    /// Its tallies are decided again before the commit.
    retally: bool,
}

#[derive(Debug)]
struct AssignmentView {
    facts: AssignmentFacts,
    /// The tally as stored (`None`: never decided, or a new row).
    stored_tally: Option<Tally>,
    /// Its facts changed, so its row is written whatever its tally.
    changed: bool,
}

impl CaseBatch {
    /// Whether `case_id` was read into the batch.
    pub fn holds(&self, case_id: &str) -> bool {
        self.cases.contains_key(case_id)
    }

    /// Reads the given cases (each once; an unknown case is an empty view).
    pub async fn read<C: ConnectionTrait>(
        connection: &C,
        case_ids: &[String],
    ) -> Result<HashMap<String, CaseView>, DbErr> {
        let mut views: HashMap<String, CaseView> = case_ids
            .iter()
            .map(|case_id| (case_id.clone(), CaseView::default()))
            .collect();
        for (row, tally) in storage::assignments_of_cases(connection, case_ids).await? {
            if let Some(view) = views.get_mut(&row.case_id) {
                view.assignments.insert(
                    row.assignment_id.clone(),
                    AssignmentView {
                        facts: row,
                        stored_tally: tally,
                        changed: false,
                    },
                );
            }
        }
        for fact in storage::facts_on(connection, case_ids).await? {
            if let Some(view) = views.get_mut(&fact.case_id) {
                view.facts.push(fact);
            }
        }
        for state in storage::case_states(connection, case_ids).await? {
            if let Some(view) = views.get_mut(&state.case_id) {
                view.stored_state = Some(state.clone());
                view.state = Some(state);
            }
        }
        for view in views.values_mut() {
            view.stored_facts = view.facts.len();
        }
        Ok(views)
    }

    /// Adds views read by [`CaseBatch::read`]; a case already held keeps its view.
    pub fn hold(&mut self, views: HashMap<String, CaseView>) {
        for (case_id, view) in views {
            self.cases.entry(case_id).or_insert(view);
        }
    }

    fn view(&mut self, case_id: &str) -> Result<&mut CaseView, DbErr> {
        self.cases
            .get_mut(case_id)
            .ok_or_else(|| DbErr::Custom(format!("case {case_id} was not read into the batch")))
    }

    /// Notes that an event named the case.
    pub fn remember(&mut self, case_id: &str, now_ms: i64) {
        if !self.remembered.contains_key(case_id) {
            self.remembered.insert(case_id.to_string(), now_ms);
        }
    }

    /// What an event says about a case: its region (kept once known) and, for a close or a
    /// reopening (`closed`), the status when its case version is newer than the one kept.
    pub fn note_state(
        &mut self,
        case_id: &str,
        region: Option<&CaseRegion>,
        closed: Option<(bool, u64)>,
    ) -> Result<(), DbErr> {
        let view = self.view(case_id)?;
        let state = view.state.get_or_insert_with(|| case_state::Model {
            case_id: case_id.to_string(),
            street_code: String::new(),
            community_code: String::new(),
            closed: false,
            status_version: 0,
        });
        if let Some(region) = region {
            if state.street_code.is_empty() {
                state.street_code.clone_from(&region.street_code);
            }
            if state.community_code.is_empty() {
                state.community_code.clone_from(&region.community_code);
            }
        }
        if let Some((closed, version)) = closed {
            let version = i64::try_from(version).unwrap_or(i64::MAX);
            if version > state.status_version {
                state.closed = closed;
                state.status_version = version;
            }
        }
        Ok(())
    }

    /// Stores a published fact (once per event and assignment, as redelivery would).
    pub fn add_fact(&mut self, fact: CaseFact) -> Result<(), DbErr> {
        let view = self.view(&fact.case_id)?;
        view.retally = true;
        if !view.facts.iter().any(|known| {
            known.event_id == fact.event_id && known.assignment_id == fact.assignment_id
        }) {
            view.facts.push(fact);
        }
        Ok(())
    }

    /// Merges an assignment's snapshot (with the verdict its event carries) into what is known of
    /// it; returns the merged facts.
    pub fn merge_assignment(
        &mut self,
        snapshot: &AssignmentSnapshot,
        verdict: Option<(Milestone, bool)>,
    ) -> Result<&AssignmentFacts, DbErr> {
        let view = self.view(&snapshot.case_id)?;
        view.retally = true;
        let assignment = match view.assignments.entry(snapshot.assignment_id.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => {
                let assignment = entry.into_mut();
                assignment.facts =
                    domain::merge_snapshot(Some(&assignment.facts), snapshot, verdict);
                assignment
            }
            std::collections::btree_map::Entry::Vacant(entry) => entry.insert(AssignmentView {
                facts: domain::merge_snapshot(None, snapshot, verdict),
                stored_tally: None,
                changed: true,
            }),
        };
        assignment.changed = true;
        Ok(&assignment.facts)
    }

    /// Notes the event that carried one of an assignment's milestones.
    pub fn add_milestone(&mut self, milestone: milestone::Model) {
        self.milestones.push(milestone);
    }

    /// Has every held case's tallies decided again (rows kept before tallies existed).
    pub fn retally_all(&mut self) {
        for view in self.cases.values_mut() {
            view.retally = true;
        }
    }

    /// Decides each touched case's tallies from its facts and writes what the batch changed: the
    /// cases it named, their states, facts and milestones, the assignments whose facts or tally
    /// changed, and what those tallies add to the cards.
    pub async fn write<C: ConnectionTrait>(self, connection: &C, now_ms: i64) -> Result<(), DbErr> {
        let mut deltas = Deltas::new();
        let mut assignments = Vec::new();
        let mut states = Vec::new();
        let mut facts = Vec::new();
        let mut cases: Vec<(String, CaseView)> = self.cases.into_iter().collect();
        cases.sort_by(|left, right| left.0.cmp(&right.0));
        for (_, view) in cases {
            if view.state != view.stored_state {
                states.extend(view.state);
            }
            for (_, mut assignment) in view.assignments {
                if view.retally {
                    assignment.facts.outcome =
                        domain::derive_outcome(&assignment.facts, &view.facts);
                }
                let tally = Tally::of(&assignment.facts);
                if view.retally && assignment.stored_tally != Some(tally) {
                    // an assignment's department and whistle time never change (dispatch fixes
                    // them when it whistles), so its old tally was counted in the same hour
                    let delta = deltas
                        .entry((
                            assignment.facts.department_code.clone(),
                            cells::hour_of(assignment.facts.whistled_at_ms),
                        ))
                        .or_default();
                    if let Some(old) = &assignment.stored_tally {
                        delta.count(old, -1);
                    }
                    delta.count(&tally, 1);
                    assignment.changed = true;
                }
                if assignment.changed {
                    assignments.push((assignment.facts, tally));
                }
            }
            facts.extend(view.facts.into_iter().skip(view.stored_facts));
        }
        storage::remember_cases(connection, &self.remembered).await?;
        storage::upsert_case_states(connection, states).await?;
        storage::insert_facts(connection, &facts).await?;
        storage::insert_milestones(connection, self.milestones).await?;
        storage::upsert_assignments(connection, &assignments, now_ms).await?;
        cells::record(connection, &deltas).await
    }
}
