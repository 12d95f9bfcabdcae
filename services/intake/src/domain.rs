//! Intake's rules: what a valid report is. Pure: no I/O, no gRPC, no database.

use std::fmt;

/// A field the caller got wrong, named the way it is named in the request (`place.grid_code`).
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

/// A grid code: 6-digit district division code + 3-digit street + 3-digit community + 3-digit
/// sequence (the Beijing DB11 layout), e.g. `420303003002001`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GridCode(String);

impl GridCode {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("required".into());
        }
        if value.len() != 15 || !value.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(format!("must be 15 digits, got {value:?}"));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The city's division code: the first four digits followed by `00`.
    pub fn city_code(&self) -> String {
        format!("{}00", &self.0[..4])
    }

    pub fn district_code(&self) -> &str {
        &self.0[..6]
    }

    pub fn street_code(&self) -> &str {
        &self.0[..9]
    }

    pub fn community_code(&self) -> &str {
        &self.0[..12]
    }
}

/// A category code: `C` (component, 部件) or `E` (event, 事件), a two-digit major class and a
/// two-digit minor class, e.g. `E-01-03`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CategoryCode(String);

impl CategoryCode {
    pub fn parse(value: &str) -> Result<Self, String> {
        if value.is_empty() {
            return Err("required".into());
        }
        let bytes = value.as_bytes();
        let well_formed = bytes.len() == 7
            && matches!(bytes[0], b'C' | b'E')
            && bytes[1] == b'-'
            && bytes[4] == b'-'
            && [2, 3, 5, 6]
                .iter()
                .all(|&index| bytes[index].is_ascii_digit());
        if !well_formed {
            return Err(format!(
                "must look like E-01-03 (C or E, major, minor), got {value:?}"
            ));
        }
        Ok(Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client idempotency key.
pub fn parse_request_id(value: &str) -> Result<String, String> {
    bounded_text(value, 128)
}

/// Who reported.
pub fn parse_reporter_id(value: &str) -> Result<String, String> {
    bounded_text(value, 128)
}

/// The description, trimmed.
pub fn parse_description(value: &str) -> Result<String, String> {
    bounded_text(value.trim(), 4000)
}

fn bounded_text(value: &str, max_chars: usize) -> Result<String, String> {
    if value.is_empty() {
        return Err("required".into());
    }
    let length = value.chars().count();
    if length > max_chars {
        return Err(format!("at most {max_chars} characters, got {length}"));
    }
    if value
        .chars()
        .any(|character| character.is_control() && character != '\n')
    {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_string())
}

/// A WGS-84 position. `(0, 0)` is refused: it is what an unset position looks like on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coordinates {
    pub lat: f64,
    pub lng: f64,
}

impl Coordinates {
    /// Returns the error together with the field (`lat` or `lng`) it concerns.
    pub fn parse(lat: f64, lng: f64) -> Result<Self, (&'static str, String)> {
        if lat == 0.0 && lng == 0.0 {
            return Err(("lat", "required (lat and lng are both 0)".into()));
        }
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(("lat", format!("must be between -90 and 90, got {lat}")));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(("lng", format!("must be between -180 and 180, got {lng}")));
        }
        Ok(Self { lat, lng })
    }
}

/// Checks one attachment; returns the failing sub-field and why.
pub fn check_attachment(
    uri: &str,
    sha256: &str,
    media_type: &str,
    size_bytes: u64,
) -> Result<(), (&'static str, String)> {
    if uri.is_empty() || uri.len() > 2048 || !uri.contains("://") {
        return Err((
            "uri",
            "must be an absolute URI of at most 2048 bytes".into(),
        ));
    }
    if sha256.len() != 64
        || !sha256
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        return Err(("sha256", "must be 64 lowercase hex characters".into()));
    }
    let mut parts = media_type.split('/');
    let valid_media_type = matches!((parts.next(), parts.next(), parts.next()), (Some(kind), Some(sub), None) if !kind.is_empty() && !sub.is_empty());
    if !valid_media_type {
        return Err((
            "media_type",
            format!("must look like image/jpeg, got {media_type:?}"),
        ));
    }
    if size_bytes == 0 {
        return Err(("size_bytes", "must be greater than 0".into()));
    }
    Ok(())
}

/// Most attachments one report may carry.
pub const MAX_ATTACHMENTS: usize = 20;

/// How far in the future `observed_at` may be (clock skew of the reporter's device).
pub const MAX_CLOCK_SKEW_SECS: i64 = 300;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grid_codes_split_into_region_codes() {
        let grid = GridCode::parse("420303003002001").expect("valid");
        assert_eq!(grid.city_code(), "420300");
        assert_eq!(grid.district_code(), "420303");
        assert_eq!(grid.street_code(), "420303003");
        assert_eq!(grid.community_code(), "420303003002");
    }

    #[test]
    fn malformed_grid_codes_are_refused() {
        assert_eq!(GridCode::parse(""), Err("required".into()));
        assert!(GridCode::parse("42030300300200").is_err());
        assert!(GridCode::parse("42030300300200x").is_err());
        assert!(GridCode::parse("4203030030020011").is_err());
    }

    #[test]
    fn category_codes() {
        assert!(CategoryCode::parse("E-01-03").is_ok());
        assert!(CategoryCode::parse("C-12-99").is_ok());
        for bad in ["", "X-01-03", "E-1-03", "E0103", "E-01-0a", "E-01-033"] {
            assert!(CategoryCode::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn coordinates() {
        assert!(Coordinates::parse(32.63, 110.79).is_ok());
        assert_eq!(
            Coordinates::parse(0.0, 0.0).map_err(|(field, _)| field),
            Err("lat")
        );
        assert_eq!(
            Coordinates::parse(91.0, 1.0).map_err(|(field, _)| field),
            Err("lat")
        );
        assert_eq!(
            Coordinates::parse(1.0, 181.0).map_err(|(field, _)| field),
            Err("lng")
        );
        assert_eq!(
            Coordinates::parse(f64::NAN, 1.0).map_err(|(field, _)| field),
            Err("lat")
        );
    }

    #[test]
    fn attachments() {
        let sha = "a".repeat(64);
        assert!(check_attachment("https://x/y.jpg", &sha, "image/jpeg", 10).is_ok());
        assert_eq!(
            check_attachment("y.jpg", &sha, "image/jpeg", 10).map_err(|e| e.0),
            Err("uri")
        );
        assert_eq!(
            check_attachment("https://x", "AB", "image/jpeg", 10).map_err(|e| e.0),
            Err("sha256")
        );
        assert_eq!(
            check_attachment("https://x", &sha, "jpeg", 10).map_err(|e| e.0),
            Err("media_type")
        );
        assert_eq!(
            check_attachment("https://x", &sha, "image/jpeg", 0).map_err(|e| e.0),
            Err("size_bytes")
        );
    }

    #[test]
    fn texts_are_bounded() {
        assert_eq!(parse_description("  garbage  "), Ok("garbage".into()));
        assert!(parse_description("   ").is_err());
        assert!(parse_request_id(&"x".repeat(129)).is_err());
        assert!(parse_reporter_id("grid\u{0007}worker").is_err());
    }

    proptest! {
        #[test]
        fn any_fifteen_digits_is_a_grid_code(digits in "[0-9]{15}") {
            let grid = GridCode::parse(&digits).expect("15 digits are valid");
            prop_assert!(grid.community_code().starts_with(grid.street_code()));
            prop_assert!(grid.street_code().starts_with(grid.district_code()));
        }

        #[test]
        fn grid_code_parsing_never_panics(input in ".*") {
            let parsed = GridCode::parse(&input);
            prop_assert_eq!(parsed.is_ok(), input.len() == 15 && input.bytes().all(|b| b.is_ascii_digit()));
        }

        #[test]
        fn category_code_parsing_never_panics(input in ".{0,12}") {
            let _ = CategoryCode::parse(&input);
        }

        #[test]
        fn valid_coordinates_are_accepted(lat in -90.0f64..=90.0, lng in -180.0f64..=180.0) {
            prop_assume!(!(lat == 0.0 && lng == 0.0));
            prop_assert!(Coordinates::parse(lat, lng).is_ok());
        }
    }
}
