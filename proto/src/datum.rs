//! Positions as they really arrive: Chinese map SDKs give GCJ-02 (AMap, Tencent) or BD-09 (Baidu),
//! GPS and GIS data WGS-84. Whistle keeps WGS-84 only; this is the one conversion every service
//! uses (intake for reports, dispatch for on-site check-ins), backed by the `coordtransform` crate.

use crate::types::Datum;

/// Converts `lat`/`lng` given in `datum` to WGS-84 (`(lat, lng)`). `Unspecified` is WGS-84.
/// Outside mainland China the offsets are zero, as the map SDKs apply none there. Pure; positions
/// that are not finite come back unchanged (callers range-check first).
pub fn to_wgs84(datum: Datum, lat: f64, lng: f64) -> (f64, f64) {
    let (lng, lat) = match datum {
        Datum::Unspecified | Datum::Wgs84 => (lng, lat),
        Datum::Gcj02 => coordtransform::gcj02_to_wgs84(lng, lat),
        Datum::Bd09 => coordtransform::bd09_to_wgs84(lng, lat),
    };
    (lat, lng)
}

/// Converts a WGS-84 position to `datum` (`(lat, lng)`), e.g. to show it on a GCJ-02 map.
pub fn from_wgs84(datum: Datum, lat: f64, lng: f64) -> (f64, f64) {
    let (lng, lat) = match datum {
        Datum::Unspecified | Datum::Wgs84 => (lng, lat),
        Datum::Gcj02 => coordtransform::wgs84_to_gcj02(lng, lat),
        Datum::Bd09 => coordtransform::wgs84_to_bd09(lng, lat),
    };
    (lat, lng)
}

/// The datum of a wire value; `None` for a number the enum does not know.
pub fn datum_of(value: i32) -> Option<Datum> {
    Datum::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: (f64, f64), expected: (f64, f64), tolerance: f64) {
        assert!(
            (actual.0 - expected.0).abs() <= tolerance
                && (actual.1 - expected.1).abs() <= tolerance,
            "{actual:?} is not within {tolerance} of {expected:?}"
        );
    }

    /// The vectors published with the reference implementation the crate ports
    /// (github.com/qichengzx/coordtransform, README: every conversion of 116.404, 39.915), written
    /// here as (lat, lng).
    #[test]
    fn published_vectors() {
        let (lng, lat) = (116.404, 39.915);
        close(
            from_wgs84(Datum::Gcj02, lat, lng),
            (39.91640428150164, 116.41024449916938),
            1e-9,
        );
        close(
            from_wgs84(Datum::Bd09, lat, lng),
            (39.922699552216216, 116.41662724378733),
            1e-6,
        );
        // the published one-step inverse is approximate (≈1 m); the crate refines it, so the
        // published answer is met within that metre, and the exact one within a micrometre
        close(
            to_wgs84(Datum::Gcj02, lat, lng),
            (39.91359571849836, 116.39775550083061),
            2e-5,
        );
        close(
            to_wgs84(Datum::Bd09, lat, lng),
            (39.907253214522164, 116.3913836995125),
            2e-5,
        );
    }

    #[test]
    fn round_trips_are_sub_millimetre_across_china() {
        // 中岳路2号 in Shiyan, Beijing, Shanghai, Urumqi, Sanya, Harbin
        for (lat, lng) in [
            (32.6369, 110.7986),
            (39.915, 116.404),
            (31.2304, 121.4737),
            (43.8256, 87.6168),
            (18.2528, 109.5119),
            (45.7567, 126.6424),
        ] {
            for datum in [Datum::Gcj02, Datum::Bd09] {
                let shifted = from_wgs84(datum, lat, lng);
                assert!(
                    (shifted.0 - lat).abs() + (shifted.1 - lng).abs() > 1e-4,
                    "{datum:?} moved ({lat}, {lng}) by less than ~10 m"
                );
                close(to_wgs84(datum, shifted.0, shifted.1), (lat, lng), 1e-8);
            }
        }
    }

    #[test]
    fn wgs84_and_positions_abroad_are_unchanged() {
        assert_eq!(to_wgs84(Datum::Unspecified, 32.6, 110.8), (32.6, 110.8));
        assert_eq!(to_wgs84(Datum::Wgs84, 32.6, 110.8), (32.6, 110.8));
        // Paris: no offset outside China
        assert_eq!(to_wgs84(Datum::Gcj02, 48.8566, 2.3522), (48.8566, 2.3522));
        assert_eq!(datum_of(2), Some(Datum::Gcj02));
        assert_eq!(datum_of(9), None);
    }
}
