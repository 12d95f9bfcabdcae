//! The values requests carry: department levels, region filters, codes, identifiers, scores.

/// The administrative level of a department in the catalogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DepartmentLevel {
    City,
    District,
    Property,
}

impl DepartmentLevel {
    pub fn parse(value: &str) -> Result<Self, String> {
        match value {
            "city" => Ok(Self::City),
            "district" => Ok(Self::District),
            "property" => Ok(Self::Property),
            other => Err(format!(
                "must be \"city\", \"district\" or \"property\", got {other:?}"
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::City => "city",
            Self::District => "district",
            Self::Property => "property",
        }
    }
}

/// The level filter of a ranking: empty means every level.
pub fn parse_level_filter(value: &str) -> Result<Option<DepartmentLevel>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    DepartmentLevel::parse(value).map(Some)
}

/// A region filter of a ranking: an administrative division code prefix (`420303`), empty for all.
pub fn parse_region_filter(value: &str) -> Result<Option<String>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > 15 || !value.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!(
            "must be a division code of at most 15 digits such as \"420303\", got {value:?}"
        ));
    }
    Ok(Some(value.to_string()))
}

/// A department code, by the contract's one rule (`whistle_proto::rules`).
pub fn parse_department_code(value: &str) -> Result<String, String> {
    whistle_proto::rules::check_department_code(value)?;
    Ok(value.to_string())
}

/// An identifier the caller supplies (assignment, case, rater, call-back): not empty, no control
/// characters. Its length is held to `limits.id_chars` before.
pub fn parse_identifier(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("required".into());
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_string())
}

/// A cooperation score (配合度) given to one assignment.
pub fn parse_cooperation_score(score: u32) -> Result<u8, String> {
    match u8::try_from(score) {
        Ok(score @ 1..=5) => Ok(score),
        _ => Err(format!("must be between 1 and 5, got {score}")),
    }
}
