//! The responsibility catalogue (责任清单): which route covers a case, and the rule for codes.

use super::limits::LimitOverrides;
use serde::{Deserialize, Serialize};

/// One entry of the responsibility catalogue (责任清单): category x area -> departments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub route_id: String,
    pub category_code: String,
    /// A prefix of grid codes: a city, district, street, community or grid code.
    pub area_code: String,
    pub lead_department_code: String,
    pub co_department_codes: Vec<String>,
    pub auto_whistle: bool,
    pub requires_on_site: bool,
    pub limits: LimitOverrides,
}

impl Route {
    /// Every department the route names, the lead first.
    pub fn departments(&self) -> Vec<String> {
        std::iter::once(self.lead_department_code.clone())
            .chain(self.co_department_codes.iter().cloned())
            .collect()
    }
}

/// The route for a case: same category, the longest area code that prefixes the grid code.
/// A city code like `420300` covers its districts through the first four digits.
pub fn select_route<'a>(
    routes: &'a [Route],
    category_code: &str,
    grid_code: &str,
) -> Option<&'a Route> {
    routes
        .iter()
        .filter(|route| {
            route.category_code == category_code && area_covers(&route.area_code, grid_code)
        })
        .max_by_key(|route| area_specificity(&route.area_code))
}

/// How specific an area code is, for "the longest match wins".
pub fn area_specificity(area_code: &str) -> (usize, usize) {
    (area_code.trim_end_matches("00").len(), area_code.len())
}

/// Whether an area code covers a grid code.
pub fn area_covers(area_code: &str, grid_code: &str) -> bool {
    if grid_code.starts_with(area_code) {
        return true;
    }
    // a city code (420300) covers every district of the city (4203xx)
    area_code.len() == 6 && area_code.ends_with("00") && grid_code.starts_with(&area_code[..4])
}

/// The contract's department-code rule (one home: `whistle_proto::rules`).
pub use whistle_proto::rules::check_department_code;

#[cfg(test)]
mod tests {
    use super::*;

    fn route(id: &str, category: &str, area: &str) -> Route {
        Route {
            route_id: id.into(),
            category_code: category.into(),
            area_code: area.into(),
            lead_department_code: "lead".into(),
            co_department_codes: vec![],
            auto_whistle: true,
            requires_on_site: true,
            limits: LimitOverrides::default(),
        }
    }

    #[test]
    fn the_most_specific_route_wins() {
        let routes = vec![
            route("city", "E-01-03", "420300"),
            route("district", "E-01-03", "420303"),
            route("community", "E-01-03", "420303003001"),
            route("other-category", "E-05-07", "420303003001"),
        ];
        let chosen = |grid: &str| {
            select_route(&routes, "E-01-03", grid).map(|route| route.route_id.as_str())
        };
        assert_eq!(chosen("420303003001001"), Some("community"));
        assert_eq!(chosen("420303003002001"), Some("district"));
        assert_eq!(chosen("420302001001001"), Some("city"));
        assert_eq!(chosen("110101001001001"), None);
        assert_eq!(select_route(&routes, "C-01-01", "420303003001001"), None);
    }
}
