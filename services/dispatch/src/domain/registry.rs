//! The department registry as dispatch knows it: who may be whistled, who supervises whom (督办),
//! and who owns a case nobody else is responsible for (the area's fallback owner).

use super::routing::{area_covers, area_specificity};
use serde::{Deserialize, Serialize};

/// A department of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Department {
    pub code: String,
    pub name: String,
    /// `city`, `district`, `property`, ... as in the catalogue.
    pub level: String,
    /// The division code of the department's region (city, district, or a community for a
    /// property company).
    pub region_code: String,
    /// Who receives this department's escalations, when the catalogue names one; otherwise the
    /// supervision department of its district (of its city for city departments).
    #[serde(default)]
    pub supervision_department_code: Option<String>,
    /// A supervision department (督办) of its region.
    #[serde(default)]
    pub supervises: bool,
    /// An inactive department is never whistled.
    #[serde(default = "active_by_default")]
    pub active: bool,
}

fn active_by_default() -> bool {
    true
}

/// The city division code of a region code (`420303003001` → `420300`).
pub fn city_of(region_code: &str) -> Option<String> {
    region_code.get(..4).map(|prefix| format!("{prefix}00"))
}

/// The district division code of a region code (`420303003001` → `420303`), when it names one.
pub fn district_of(region_code: &str) -> Option<&str> {
    let district = region_code.get(..6)?;
    (!district.ends_with("00")).then_some(district)
}

/// The supervision department of `department`: the one the catalogue names, else the active
/// supervision department of its district (district and property departments), else that of its
/// city (city departments, and districts without one). Never itself.
pub fn supervisor_of<'a>(
    department: &Department,
    registry: impl IntoIterator<Item = &'a Department> + Clone,
) -> Option<String> {
    if let Some(code) = &department.supervision_department_code {
        return Some(code.clone());
    }
    let supervising = |level: &str, region: &str| {
        registry
            .clone()
            .into_iter()
            .find(|candidate| {
                candidate.supervises
                    && candidate.active
                    && candidate.code != department.code
                    && candidate.level == level
                    && candidate.region_code == region
            })
            .map(|candidate| candidate.code.clone())
    };
    let district = (department.level != "city")
        .then(|| district_of(&department.region_code))
        .flatten()
        .and_then(|district| supervising("district", district));
    district
        .or_else(|| city_of(&department.region_code).and_then(|city| supervising("city", &city)))
}

/// Who is whistled for an area when nobody named by the route is responsible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackOwner {
    pub area_code: String,
    pub department_code: String,
}

/// The fallback owner whose area covers `grid_code` most specifically.
pub fn fallback_owner_for<'a>(
    owners: &'a [FallbackOwner],
    grid_code: &str,
) -> Option<&'a FallbackOwner> {
    owners
        .iter()
        .filter(|owner| area_covers(&owner.area_code, grid_code))
        .max_by_key(|owner| area_specificity(&owner.area_code))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn department(code: &str, level: &str, region: &str, supervises: bool) -> Department {
        Department {
            code: code.into(),
            name: code.into(),
            level: level.into(),
            region_code: region.into(),
            supervision_department_code: None,
            supervises,
            active: true,
        }
    }

    #[test]
    fn district_and_property_departments_escalate_to_the_district_city_ones_to_the_city() {
        let registry = vec![
            department("zw-sanitation", "district", "420303", false),
            department("pm-jinding", "property", "420303003002", false),
            department("sy-water", "city", "420300", false),
            department("zw-supervision", "district", "420303", true),
            department("sy-supervision", "city", "420300", true),
            department("ms-roads", "district", "420304", false),
        ];
        let of = |code: &str| {
            let department = registry.iter().find(|d| d.code == code).expect("known");
            supervisor_of(department, &registry)
        };
        assert_eq!(of("zw-sanitation").as_deref(), Some("zw-supervision"));
        assert_eq!(of("pm-jinding").as_deref(), Some("zw-supervision"));
        assert_eq!(of("sy-water").as_deref(), Some("sy-supervision"));
        // a district without its own supervision, and the district supervision itself: the city's
        assert_eq!(of("ms-roads").as_deref(), Some("sy-supervision"));
        assert_eq!(of("zw-supervision").as_deref(), Some("sy-supervision"));
        assert_eq!(of("sy-supervision"), None);
        let mut named = department("zw-fire-rescue", "district", "420303", false);
        named.supervision_department_code = Some("fire-supervision".into());
        assert_eq!(
            supervisor_of(&named, &registry).as_deref(),
            Some("fire-supervision")
        );
    }

    #[test]
    fn the_most_specific_fallback_owner_wins() {
        let owners = vec![
            FallbackOwner {
                area_code: "420300".into(),
                department_code: "sy-government".into(),
            },
            FallbackOwner {
                area_code: "420303".into(),
                department_code: "zw-government".into(),
            },
        ];
        let owner = |grid: &str| {
            fallback_owner_for(&owners, grid).map(|owner| owner.department_code.as_str())
        };
        assert_eq!(owner("420303003002001"), Some("zw-government"));
        assert_eq!(owner("420302001001001"), Some("sy-government"));
        assert_eq!(owner("110101001001001"), None);
    }
}
