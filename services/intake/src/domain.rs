//! Intake's rules: what a valid report is. Pure: no I/O, no gRPC, no database.

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

/// A caller's text that must be there (an id, the description): not blank, no control characters
/// other than line breaks. Its length is checked against the limits before, so an error never
/// echoes a long value.
pub fn required_text(value: &str) -> Result<&str, String> {
    if value.trim().is_empty() {
        return Err("required".into());
    }
    if value
        .chars()
        .any(|character| character.is_control() && character != '\n')
    {
        return Err("must not contain control characters".into());
    }
    Ok(value)
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
    fn required_texts() {
        assert_eq!(
            required_text("garbage\non the road"),
            Ok("garbage\non the road")
        );
        assert!(required_text("   ").is_err());
        assert!(required_text("grid\u{0007}worker").is_err());
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
