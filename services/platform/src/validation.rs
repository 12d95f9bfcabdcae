//! Request limits and field errors, the same for every service: one table of limits in
//! configuration (`[limits]`), one error type that names the field, travelling to clients as a
//! `google.rpc.BadRequest` detail so they read the field without parsing text.

use crate::config::ConfigError;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use whistle_proto::types::Attachment;

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

    /// INVALID_ARGUMENT with the message `field: reason` and a `BadRequest` field violation, the
    /// same shape the gRPC codec gives a request it cannot decode.
    pub fn to_status(&self) -> tonic::Status {
        whistle_proto::codec::field_violation(&self.field, &self.reason)
    }

    /// The `google.rpc.BadRequest` detail naming the field.
    pub fn details(&self) -> tonic_types::ErrorDetails {
        tonic_types::ErrorDetails::with_bad_request_violation(&self.field, &self.reason)
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

/// Whether an attachment's `sha256`, `media_type` and `size_bytes` must be set (a report's
/// attachments) or may be left unset (a department's evidence, where only the URI is required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachmentContent {
    Required,
    Optional,
}

/// The earliest timestamp a caller may send (2000-01-01T00:00:00Z); earlier ones are unset
/// clocks or typos.
pub const EARLIEST_TIMESTAMP: DateTime<Utc> = match DateTime::from_timestamp(946_684_800, 0) {
    Some(at) => at,
    None => DateTime::UNIX_EPOCH,
};

fn valid_timestamp(
    field: &str,
    timestamp: &prost_types::Timestamp,
) -> Result<DateTime<Utc>, FieldError> {
    let at = u32::try_from(timestamp.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos))
        .ok_or_else(|| FieldError::new(field, "not a valid timestamp"))?;
    if at < EARLIEST_TIMESTAMP {
        return Err(FieldError::new(
            field,
            "must not be before 2000-01-01T00:00:00Z",
        ));
    }
    Ok(at)
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
    /// Largest encoded gRPC request accepted (bytes); larger ones get OUT_OF_RANGE (tonic's answer) before they are decoded.
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
        if self.evidence_per_assignment < self.attachments {
            return Err(ConfigError::Invalid(
                "limits.evidence_per_assignment must be at least limits.attachments".into(),
            ));
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

    /// Checks a list of attachments (a report's, an action's evidence): at most
    /// [`LimitsConfig::attachments`] items, each as [`LimitsConfig::check_attachment`] says, named
    /// with its index (`attachments[2].media_type`).
    pub fn check_attachments(
        &self,
        field: &str,
        attachments: &[Attachment],
        content: AttachmentContent,
    ) -> Result<(), FieldError> {
        Self::check_items(field, attachments.len(), self.attachments)?;
        for (index, attachment) in attachments.iter().enumerate() {
            self.check_attachment(&format!("{field}[{index}]"), attachment, content)?;
        }
        Ok(())
    }

    /// Checks one attachment reference against the contract (`whistle.types.v1.Attachment`): an
    /// absolute `uri` of at most [`LimitsConfig::uri_chars`], `sha256` as 64 lowercase hex digits,
    /// `media_type` like `image/jpeg` of at most [`LimitsConfig::media_type_chars`], `size_bytes`
    /// above 0. With [`AttachmentContent::Optional`] the last three may be left unset.
    pub fn check_attachment(
        &self,
        field: &str,
        attachment: &Attachment,
        content: AttachmentContent,
    ) -> Result<(), FieldError> {
        let sub_field = |name: &str| format!("{field}.{name}");
        self.check_uri(&sub_field("uri"), &attachment.uri)?;
        if attachment.uri.is_empty() {
            return Err(FieldError::new(sub_field("uri"), "required"));
        }
        if !attachment.uri.contains("://") {
            return Err(FieldError::new(
                sub_field("uri"),
                "must be an absolute URI such as https://host/path",
            ));
        }
        let optional = content == AttachmentContent::Optional;
        let hex_digest = attachment.sha256.len() == 64
            && attachment
                .sha256
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        let unset = optional && attachment.sha256.is_empty();
        if !(hex_digest || unset) {
            return Err(FieldError::new(
                sub_field("sha256"),
                "must be 64 lowercase hex characters",
            ));
        }
        self.check_media_type(&sub_field("media_type"), &attachment.media_type)?;
        let mut parts = attachment.media_type.split('/');
        let media_type = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(kind), Some(subtype), None) if !kind.is_empty() && !subtype.is_empty()
        );
        let unset = optional && attachment.media_type.is_empty();
        if !(media_type || unset) {
            return Err(FieldError::new(
                sub_field("media_type"),
                "must look like image/jpeg",
            ));
        }
        if attachment.size_bytes == 0 && !optional {
            return Err(FieldError::new(
                sub_field("size_bytes"),
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// Checks a caller's timestamp of something that already happened (`observed_at`): a valid
    /// timestamp, not before [`EARLIEST_TIMESTAMP`], not later than `now` plus
    /// [`LimitsConfig::clock_skew_secs`].
    pub fn check_past_timestamp(
        &self,
        field: &str,
        timestamp: &prost_types::Timestamp,
        now: DateTime<Utc>,
    ) -> Result<DateTime<Utc>, FieldError> {
        let at = valid_timestamp(field, timestamp)?;
        if at > now + chrono::Duration::seconds(self.clock_skew_secs) {
            return Err(FieldError::new(
                field,
                format!(
                    "must not be in the future (at most {} s of clock skew)",
                    self.clock_skew_secs
                ),
            ));
        }
        Ok(at)
    }

    /// Checks a caller's timestamp of something promised (`promised_at`): a valid timestamp, not
    /// in the past (beyond [`LimitsConfig::clock_skew_secs`]) and at most `horizon` ahead of `now`.
    pub fn check_future_timestamp(
        &self,
        field: &str,
        timestamp: &prost_types::Timestamp,
        now: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Result<DateTime<Utc>, FieldError> {
        let at = valid_timestamp(field, timestamp)?;
        if at < now - chrono::Duration::seconds(self.clock_skew_secs) {
            return Err(FieldError::new(field, "must not be in the past"));
        }
        if at > now + horizon {
            return Err(FieldError::new(
                field,
                format!("at most {} days ahead", horizon.num_days()),
            ));
        }
        Ok(at)
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
    use tonic_types::StatusExt;

    fn attachment() -> Attachment {
        Attachment {
            uri: "https://files.example/1.jpg".into(),
            sha256: "a".repeat(64),
            media_type: "image/jpeg".into(),
            size_bytes: 10,
        }
    }

    #[test]
    fn attachments_are_named_with_their_index() {
        let limits = LimitsConfig::default();
        let mut long_media_type = attachment();
        long_media_type.media_type = format!("image/{}", "j".repeat(200));
        let list = vec![attachment(), attachment(), long_media_type];
        let error = limits
            .check_attachments("attachments", &list, AttachmentContent::Required)
            .expect_err("too long");
        assert_eq!(error.field, "attachments[2].media_type");
        assert!(error.reason.contains("127"), "{error}");
        let too_many = vec![attachment(); limits.attachments + 1];
        let error = limits
            .check_attachments("evidence", &too_many, AttachmentContent::Optional)
            .expect_err("too many");
        assert_eq!(error.field, "evidence");
    }

    #[test]
    fn evidence_may_carry_only_a_uri() {
        let limits = LimitsConfig::default();
        let uri_only = Attachment {
            uri: "s3://bucket/key".into(),
            ..Attachment::default()
        };
        assert!(
            limits
                .check_attachment("evidence[0]", &uri_only, AttachmentContent::Optional)
                .is_ok()
        );
        let error = limits
            .check_attachment("attachments[0]", &uri_only, AttachmentContent::Required)
            .expect_err("report attachments need their digest");
        assert_eq!(error.field, "attachments[0].sha256");
        let relative = Attachment {
            uri: "photo.jpg".into(),
            ..Attachment::default()
        };
        let error = limits
            .check_attachment("evidence[0]", &relative, AttachmentContent::Optional)
            .expect_err("relative");
        assert_eq!(error.field, "evidence[0].uri");
    }

    #[test]
    fn timestamps_are_sane() {
        let limits = LimitsConfig::default();
        let now = DateTime::from_timestamp(1_790_000_000, 0).expect("now");
        let at = |seconds: i64, nanos: i32| prost_types::Timestamp { seconds, nanos };
        assert!(
            limits
                .check_past_timestamp("observed_at", &at(1_789_999_000, 0), now)
                .is_ok()
        );
        assert!(
            limits
                .check_past_timestamp("observed_at", &at(1_790_000_300, 0), now)
                .is_ok()
        );
        for (timestamp, reason) in [
            (at(1_790_000_301, 0), "future"),
            (at(946_684_799, 0), "2000"),
            (at(-62_135_596_800, 0), "2000"),
            (at(1_789_999_000, -1), "valid"),
            (at(1_789_999_000, 1_000_000_000), "valid"),
            (at(i64::MAX, 0), "valid"),
        ] {
            let error = limits
                .check_past_timestamp("observed_at", &timestamp, now)
                .expect_err("refused");
            assert_eq!(error.field, "observed_at");
            assert!(error.reason.contains(reason), "{timestamp:?}: {error}");
        }
        let year = chrono::Duration::days(366);
        assert!(
            limits
                .check_future_timestamp("promised_at", &at(1_790_003_600, 0), now, year)
                .is_ok()
        );
        assert!(
            limits
                .check_future_timestamp("promised_at", &at(1_789_990_000, 0), now, year)
                .is_err()
        );
        assert!(
            limits
                .check_future_timestamp("promised_at", &at(1_890_000_000, 0), now, year)
                .is_err()
        );
    }

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
