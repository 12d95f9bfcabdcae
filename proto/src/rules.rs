//! The contract's shared rules, in one place every service uses: what a department code and a
//! region code look like. A rule that is copied drifts (three copies of the department-code rule
//! once disagreed about upper case).

/// A department code, the contract's one rule (every service uses it): 1 to 64 lowercase ASCII
/// letters, digits, `-` or `_`, so that it is one NATS subject token and compares byte for byte.
pub fn check_department_code(code: &str) -> Result<(), String> {
    if code.is_empty() {
        return Err("required".into());
    }
    let valid = code.len() <= 64
        && code.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'_'
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "must be lowercase letters, digits, - or _ (at most 64), got {code:?}"
        ))
    }
}

/// A region code of the administrative hierarchy: digits only, 6 (city, district), 9 (street),
/// 12 (community) or 15 (grid), the GB/T 2260 code and its extensions.
pub fn check_region_code(code: &str) -> Result<(), String> {
    if code.is_empty() {
        return Err("required".into());
    }
    if code.bytes().all(|byte| byte.is_ascii_digit()) && matches!(code.len(), 6 | 9 | 12 | 15) {
        Ok(())
    } else {
        Err(format!(
            "must be a region code of 6, 9, 12 or 15 digits, got {code:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn department_codes_have_one_rule() {
        assert!(check_department_code("zw-sanitation").is_ok());
        assert!(check_department_code("pm_jinding2").is_ok());
        assert!(check_department_code("").is_err());
        assert!(
            check_department_code("ZW-Sanitation").is_err(),
            "one case only"
        );
        assert!(
            check_department_code("zw.sanitation").is_err(),
            "a subject token"
        );
        assert!(check_department_code(&"a".repeat(65)).is_err());
    }

    #[test]
    fn region_codes_have_one_rule() {
        for code in ["420300", "420303003", "420303003001", "420303003001001"] {
            assert!(check_region_code(code).is_ok(), "{code}");
        }
        for code in ["", "4203", "42030300", "42030x", "4203030030010011"] {
            assert!(check_region_code(code).is_err(), "{code}");
        }
    }
}
