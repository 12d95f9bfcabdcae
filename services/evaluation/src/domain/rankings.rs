//! Ranking departments by composite; the not rated come last.

/// A department to rank.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingCandidate {
    pub department_code: String,
    pub composite: Option<f64>,
    pub whistled: u64,
}

/// A department's place in a ranking.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedDepartment {
    pub rank: u32,
    pub department_code: String,
    pub composite: Option<f64>,
    pub whistled: u64,
}

/// Ranks by composite, highest first; equal composites share a rank (1, 1, 3). Departments without
/// a composite (no whistles in the period) come last and share the rank after everyone else.
/// Ties are listed by department code.
pub fn rank(mut candidates: Vec<RankingCandidate>) -> Vec<RankedDepartment> {
    candidates.sort_by(|left, right| {
        let by_composite = match (left.composite, right.composite) {
            (Some(left), Some(right)) => right.total_cmp(&left),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        };
        by_composite.then_with(|| left.department_code.cmp(&right.department_code))
    });
    let mut ranked: Vec<RankedDepartment> = Vec::with_capacity(candidates.len());
    for (position, candidate) in candidates.into_iter().enumerate() {
        let rank = match ranked.last() {
            Some(previous) if same_composite(previous.composite, candidate.composite) => {
                previous.rank
            }
            _ => u32::try_from(position + 1).unwrap_or(u32::MAX),
        };
        ranked.push(RankedDepartment {
            rank,
            department_code: candidate.department_code,
            composite: candidate.composite,
            whistled: candidate.whistled,
        });
    }
    ranked
}

fn same_composite(left: Option<f64>, right: Option<f64>) -> bool {
    match (left, right) {
        (Some(left), Some(right)) => (left - right).abs() < 1e-9,
        (None, None) => true,
        _ => false,
    }
}
