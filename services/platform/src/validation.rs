//! Request limits and field errors, the same for every service: one table of limits in
//! configuration (`[limits]`), one error type that names the field, travelling to clients as a
//! `google.rpc.BadRequest` detail so they read the field without parsing text.

use crate::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::fmt;
use tonic_types::{ErrorDetails, StatusExt};

/// A request field that breaks a rule of the contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's path in the request, e.g. `attachments[2].media_type`.
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// INVALID_ARGUMENT with the message `field: reason` and a `BadRequest` field violation.
    pub fn to_status(&self) -> tonic::Status {
        let mut details = ErrorDetails::new();
        details.add_bad_request_violation(self.field.clone(), self.reason.clone());
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, self.to_string(), details)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

impl From<FieldError> for tonic::Status {
    fn from(error: FieldError) -> Self {
        error.to_status()
    }
}

/// The lengths and counts every request field is held to. Strings are counted in characters
/// (Unicode scalar values), so a limit means the same for 中文 and ASCII; every event a request can
/// cause stays below [`LimitsConfig::max_event_bytes`], itself checked at start against the NATS
/// server's `max_payload`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Identifiers chosen by callers: `request_id`, `reporter_id`, person and operator ids.
    pub id_chars: usize,
    /// Codes: categories, departments, grids, regions, route ids.
    pub code_chars: usize,
    /// Names of people and places: responsible person, contact, a street name.
    pub name_chars: usize,
    /// Free text: description, resolution, reasons, notes, progress.
    pub text_chars: usize,
    /// A street address.
    pub address_chars: usize,
    /// An attachment's or evidence's URI.
    pub uri_chars: usize,
    /// An attachment's media type (`image/jpeg`).
    pub media_type_chars: usize,
    /// Attachments on one report, and evidence items on one department action.
    pub attachments: usize,
    /// Evidence items an assignment keeps over all its actions.
    pub evidence_per_assignment: usize,
    /// Departments named in one whistle (lead + co-departments), and items of any other list.
    pub list_items: usize,
    /// Largest page a list RPC returns.
    pub page_size: usize,
    /// Largest encoded gRPC request accepted (bytes); larger ones get RESOURCE_EXHAUSTED.
    pub max_request_bytes: usize,
    /// Largest event (payload and headers, bytes) a service publishes. Must not exceed the NATS
    /// server's `max_payload`, which is checked at start.
    pub max_event_bytes: usize,
    /// How far in the future a caller's timestamp (`observed_at`) may be, for clock skew.
    pub clock_skew_secs: i64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            id_chars: 128,
            code_chars: 64,
            name_chars: 100,
            text_chars: 2000,
            address_chars: 500,
            uri_chars: 2048,
            media_type_chars: 127,
            attachments: 10,
            evidence_per_assignment: 50,
            list_items: 20,
            page_size: 500,
            max_request_bytes: 256 * 1024,
            max_event_bytes: 512 * 1024,
            clock_skew_secs: 300,
        }
    }
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("limits.id_chars", self.id_chars),
            ("limits.code_chars", self.code_chars),
            ("limits.name_chars", self.name_chars),
            ("limits.text_chars", self.text_chars),
            ("limits.address_chars", self.address_chars),
            ("limits.uri_chars", self.uri_chars),
            ("limits.media_type_chars", self.media_type_chars),
            ("limits.list_items", self.list_items),
            ("limits.page_size", self.page_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1")));
            }
        }
        if self.max_request_bytes < 4096 {
            return Err(ConfigError::Invalid(
                "limits.max_request_bytes must be at least 4096".into(),
            ));
        }
        if self.max_event_bytes < 16 * 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_event_bytes must be at least 16384".into(),
            ));
        }
        if self.clock_skew_secs < 0 {
            return Err(ConfigError::Invalid(
                "limits.clock_skew_secs must not be negative".into(),
            ));
        }
        Ok(())
    }

    /// The worst-case bytes of `chars` characters of UTF-8 text.
    pub fn text_bytes(chars: usize) -> usize {
        chars.saturating_mul(4)
    }

    /// Checks a string against a limit of characters.
    pub fn check_chars(field: &str, value: &str, limit: usize) -> Result<(), FieldError> {
        // counting stops at the limit: a 10 MB string costs no more than a short one
        if value.chars().nth(limit).is_some() {
            return Err(FieldError::new(
                field,
                format!("at most {limit} characters"),
            ));
        }
        Ok(())
    }

    /// Checks a list against a limit of items.
    pub fn check_items(field: &str, count: usize, limit: usize) -> Result<(), FieldError> {
        if count > limit {
            return Err(FieldError::new(field, format!("at most {limit} items")));
        }
        Ok(())
    }

    pub fn check_id(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.id_chars)
    }

    pub fn check_code(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.code_chars)
    }

    pub fn check_name(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.name_chars)
    }

    pub fn check_text(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.text_chars)
    }

    pub fn check_address(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.address_chars)
    }

    pub fn check_uri(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.uri_chars)
    }

    pub fn check_media_type(&self, field: &str, value: &str) -> Result<(), FieldError> {
        Self::check_chars(field, value, self.media_type_chars)
    }

    /// A page size of 0 means the default page; above [`LimitsConfig::page_size`] is refused.
    pub fn check_page_size(&self, field: &str, requested: u32) -> Result<u64, FieldError> {
        if requested as usize > self.page_size {
            return Err(FieldError::new(
                field,
                format!("at most {}", self.page_size),
            ));
        }
        Ok(if requested == 0 {
            self.page_size.min(100) as u64
        } else {
            u64::from(requested)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_not_bytes_are_counted() {
        assert!(LimitsConfig::check_chars("f", "垃圾满溢", 4).is_ok());
        let error = LimitsConfig::check_chars("f", "垃圾满溢了", 4).expect_err("over");
        assert_eq!(error.field, "f");
        assert!(error.reason.contains("at most 4"), "{error}");
    }

    #[test]
    fn field_errors_travel_as_bad_request_details() {
        let status =
            FieldError::new("attachments[0].media_type", "at most 127 characters").to_status();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request").field_violations;
        assert_eq!(violations[0].field, "attachments[0].media_type");
        assert_eq!(
            status.message(),
            "attachments[0].media_type: at most 127 characters"
        );
    }

    #[test]
    fn page_sizes_default_and_cap() {
        let limits = LimitsConfig::default();
        assert_eq!(limits.check_page_size("page_size", 0), Ok(100));
        assert_eq!(limits.check_page_size("page_size", 7), Ok(7));
        assert!(limits.check_page_size("page_size", 501).is_err());
    }

    #[test]
    fn defaults_are_valid_and_zero_is_refused() {
        assert!(LimitsConfig::default().validate().is_ok());
        let zero = LimitsConfig {
            text_chars: 0,
            ..LimitsConfig::default()
        };
        assert!(
            zero.validate()
                .expect_err("zero")
                .to_string()
                .contains("limits.text_chars")
        );
    }
}
