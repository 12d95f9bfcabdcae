//! The gateway's rules: what a credential looks like, what the gateway checks in an action before
//! dispatch sees it, and how listings page. Pure: no I/O, no gRPC, no database.

use sha2::{Digest, Sha256};
use std::fmt;
use whistle_platform::validation::{FieldError, LimitsConfig};

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

/// An id (`assignment_id`) the caller must send: 1 to `limits.id_chars` characters, no control
/// characters.
pub fn required_id<'a>(
    limits: &LimitsConfig,
    field: &str,
    value: &'a str,
) -> Result<&'a str, FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "required"));
    }
    check_id_shape(limits, field, value)?;
    Ok(value)
}

/// An optional id (the idempotency key `request_id`): empty, or as [`required_id`].
pub fn optional_id<'a>(
    limits: &LimitsConfig,
    field: &str,
    value: &'a str,
) -> Result<Option<&'a str>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    check_id_shape(limits, field, value)?;
    Ok(Some(value))
}

fn check_id_shape(limits: &LimitsConfig, field: &str, value: &str) -> Result<(), FieldError> {
    limits.check_id(field, value)?;
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Free text the action cannot do without (a responsible person, a resolution, a reason).
pub fn required_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.trim().is_empty() {
        return Err(FieldError::new(field, "required"));
    }
    Ok(())
}

/// Characters of a SHA-256 in hex, the longest `sha256` of an evidence item.
pub const SHA256_HEX_CHARS: usize = 64;

/// The `action_id` under which dispatch records a department's action: derived from the
/// department and its `request_id`, so the same request retried is the same action, and two
/// departments choosing the same `request_id` never meet (nor learn of each other's assignments).
pub fn action_id(department_code: &str, request_id: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(department_code.as_bytes());
    digest.update([0]);
    digest.update(request_id.as_bytes());
    format!("gw-{}", hex::encode(digest.finalize()))
}

/// The longest page token a listing hands out: one for an assignment id of `limits.id_chars`
/// characters of up to four bytes each.
pub fn max_page_token_chars(limits: &LimitsConfig) -> usize {
    1 + 2 * LimitsConfig::text_bytes(limits.id_chars)
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
        let limits = LimitsConfig::default();
        fn message(result: Result<&str, FieldError>) -> Result<&str, String> {
            result.map_err(|error| error.to_string())
        }
        assert_eq!(
            message(required_id(&limits, "assignment_id", "")),
            Err("assignment_id: required".into())
        );
        assert_eq!(required_id(&limits, "assignment_id", "a-1"), Ok("a-1"));
        assert_eq!(
            message(required_id(&limits, "assignment_id", &"x".repeat(129))),
            Err("assignment_id: at most 128 characters".into())
        );
        assert!(required_id(&limits, "assignment_id", "a\u{0}b").is_err());
        assert_eq!(optional_id(&limits, "request_id", ""), Ok(None));
        assert_eq!(optional_id(&limits, "request_id", "r-1"), Ok(Some("r-1")));
        assert!(optional_id(&limits, "request_id", &"好".repeat(128)).is_ok());
        assert!(optional_id(&limits, "request_id", &"好".repeat(129)).is_err());
        let tight = LimitsConfig {
            id_chars: 4,
            ..LimitsConfig::default()
        };
        assert!(optional_id(&tight, "request_id", "r-123").is_err());
        assert!(required_text("reason", " \n ").is_err());
        assert!(required_text("responsible_person", "王师傅").is_ok());
    }

    #[test]
    fn action_ids_are_per_department_and_stable() {
        let first = action_id("zw-sanitation", "ack-1");
        assert_eq!(first, action_id("zw-sanitation", "ack-1"));
        assert_ne!(first, action_id("zw-housing", "ack-1"));
        assert_ne!(action_id("a", "bc"), action_id("ab", "c"));
        assert_eq!(first.len(), 67, "fits dispatch's 128-character action_id");
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
        fn page_tokens_round_trip(last in "\\PC{1,128}") {
            let token = encode_page_token(&last);
            prop_assert!(token.chars().count() <= max_page_token_chars(&LimitsConfig::default()));
            prop_assert_eq!(decode_page_token(&token), Ok(Some(last)));
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
    }
}
