//! The gateway's rules: what a credential looks like, what the gateway checks in an action before
//! dispatch sees it, and how listings page. Pure: no I/O, no gRPC, no database.

use sha2::{Digest, Sha256};
use std::fmt;

/// A field the caller got wrong, named the way it is named in the request (`responsible_person`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
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
}

impl fmt::Display for FieldError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: {}", self.field, self.reason)
    }
}

/// Why a call carried no usable credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    Malformed,
}

impl fmt::Display for BearerError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => formatter
                .write_str("missing credentials: send metadata \"authorization: Bearer <token>\""),
            Self::Malformed => {
                formatter.write_str("malformed authorization metadata: expected \"Bearer <token>\"")
            }
        }
    }
}

/// Longest token accepted, so a huge header is refused before it is hashed.
pub const MAX_TOKEN_LENGTH: usize = 512;

/// The token of an `authorization` value `Bearer <token>` (scheme case-insensitive, RFC 6750).
pub fn bearer_token(authorization: Option<&str>) -> Result<&str, BearerError> {
    let value = authorization.ok_or(BearerError::Missing)?.trim();
    if value.is_empty() {
        return Err(BearerError::Missing);
    }
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = token.trim_start();
    if !is_token(token) {
        return Err(BearerError::Malformed);
    }
    Ok(token)
}

/// Whether a value can be a credential token: 1 to [`MAX_TOKEN_LENGTH`] visible ASCII characters.
pub fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_TOKEN_LENGTH
        && value.bytes().all(|byte| byte.is_ascii_graphic())
}

/// What the database keeps of a token: lowercase hex SHA-256, never the token itself.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// An id (`assignment_id`) the caller must send: 1..=128 characters, no control characters.
pub fn required_id(value: &str) -> Result<&str, String> {
    if value.is_empty() {
        return Err("required".into());
    }
    check_id_shape(value)?;
    Ok(value)
}

/// The optional idempotency key of an action: empty, or 1..=128 characters without control characters.
pub fn optional_request_id(value: &str) -> Result<Option<&str>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    check_id_shape(value)?;
    Ok(Some(value))
}

fn check_id_shape(value: &str) -> Result<(), String> {
    let length = value.chars().count();
    if length > MAX_ID_CHARS {
        return Err(format!("at most {MAX_ID_CHARS} characters, got {length}"));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(())
}

/// Longest `request_id` and `assignment_id`.
pub const MAX_ID_CHARS: usize = 128;

/// Free text the action cannot do without (a responsible person, a resolution, a reason).
pub fn required_text(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("required".into());
    }
    Ok(())
}

/// Page size when the caller sends none.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page; bigger requests are served this many.
pub const MAX_PAGE_SIZE: u64 = 500;

/// The page size served for a requested one: 0 means the default, above the maximum means the maximum.
pub fn page_size(requested: u32) -> u64 {
    match u64::from(requested) {
        0 => DEFAULT_PAGE_SIZE,
        size => size.min(MAX_PAGE_SIZE),
    }
}

/// The opaque token of the page after `last_assignment_id` (listings are ordered by assignment id).
pub fn encode_page_token(last_assignment_id: &str) -> String {
    format!("a{}", hex::encode(last_assignment_id.as_bytes()))
}

/// The assignment id a page token continues after; `None` for the first page.
pub fn decode_page_token(token: &str) -> Result<Option<String>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || "not a token from a previous ListAssignments response".to_string();
    let encoded = token.strip_prefix('a').ok_or_else(malformed)?;
    let bytes = hex::decode(encoded).map_err(|_| malformed())?;
    let last = String::from_utf8(bytes).map_err(|_| malformed())?;
    if last.is_empty() {
        return Err(malformed());
    }
    Ok(Some(last))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bearer_tokens_are_read_from_authorization() {
        assert_eq!(bearer_token(Some("Bearer abc123")), Ok("abc123"));
        assert_eq!(bearer_token(Some("bearer   abc123 ")), Ok("abc123"));
        assert_eq!(bearer_token(None), Err(BearerError::Missing));
        assert_eq!(bearer_token(Some("  ")), Err(BearerError::Missing));
        assert_eq!(bearer_token(Some("abc123")), Err(BearerError::Malformed));
        assert_eq!(bearer_token(Some("Basic abc")), Err(BearerError::Malformed));
        assert_eq!(bearer_token(Some("Bearer ")), Err(BearerError::Malformed));
        assert_eq!(
            bearer_token(Some("Bearer a b")),
            Err(BearerError::Malformed)
        );
        let huge = format!("Bearer {}", "x".repeat(MAX_TOKEN_LENGTH + 1));
        assert_eq!(bearer_token(Some(&huge)), Err(BearerError::Malformed));
    }

    #[test]
    fn digests_are_hex_sha256() {
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn ids_and_texts() {
        assert_eq!(required_id(""), Err("required".into()));
        assert_eq!(required_id("a-1"), Ok("a-1"));
        assert!(required_id(&"x".repeat(129)).is_err());
        assert!(required_id("a\u{0}b").is_err());
        assert_eq!(optional_request_id(""), Ok(None));
        assert_eq!(optional_request_id("r-1"), Ok(Some("r-1")));
        assert!(optional_request_id(&"好".repeat(128)).is_ok());
        assert!(optional_request_id(&"好".repeat(129)).is_err());
        assert!(required_text(" \n ").is_err());
        assert!(required_text("王师傅").is_ok());
    }

    #[test]
    fn page_sizes_are_clamped() {
        assert_eq!(page_size(0), 50);
        assert_eq!(page_size(7), 7);
        assert_eq!(page_size(501), 500);
        assert_eq!(page_size(u32::MAX), 500);
    }

    #[test]
    fn foreign_page_tokens_are_refused() {
        assert_eq!(decode_page_token(""), Ok(None));
        for bad in ["x", "a", "azz", "aff", "0123"] {
            assert!(decode_page_token(bad).is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn page_tokens_round_trip(last in "\\PC{1,64}") {
            prop_assert_eq!(decode_page_token(&encode_page_token(&last)), Ok(Some(last)));
        }

        #[test]
        fn any_visible_token_is_read_back(token in "[!-~]{1,200}", scheme in "(Bearer|bearer|BEARER)") {
            let header = format!("{scheme} {token}");
            prop_assert_eq!(bearer_token(Some(&header)), Ok(token.as_str()));
        }

        #[test]
        fn bearer_parsing_never_panics(header in "\\PC{0,80}") {
            let _ = bearer_token(Some(&header));
        }

        #[test]
        fn digests_differ_for_different_tokens(first in "[a-f0-9]{64}", second in "[a-f0-9]{64}") {
            prop_assume!(first != second);
            prop_assert_ne!(token_digest(&first), token_digest(&second));
            prop_assert_eq!(token_digest(&first).len(), 64);
        }

        #[test]
        fn page_sizes_stay_in_range(requested in any::<u32>()) {
            let size = page_size(requested);
            prop_assert!((1..=MAX_PAGE_SIZE).contains(&size));
        }
    }
}
