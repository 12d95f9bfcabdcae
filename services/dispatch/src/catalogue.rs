//! The responsibility catalogue: checking routes, storing them, loading them from a file with the
//! department registry and the fallback owners dispatch keeps.

use crate::domain::{Department, FallbackOwner, LimitOverrides, Route, check_department_code};
use crate::error::DispatchError;
use crate::storage::{department, fallback_owner, route};
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, EntityTrait, TransactionTrait,
};
use serde::Deserialize;
use std::path::Path;
use whistle_platform::validation::LimitsConfig;

/// Checks a route against the limits and the catalogue's rules, naming the bad field
/// (`route.area_code`, ...).
pub fn check_route(route: &Route, limits: &LimitsConfig) -> Result<(), DispatchError> {
    limits.check_code("route.route_id", &route.route_id)?;
    limits.check_code("route.category_code", &route.category_code)?;
    limits.check_code("route.area_code", &route.area_code)?;
    limits.check_code("route.lead_department_code", &route.lead_department_code)?;
    // the lead and the co-departments together are one whistle's departments
    LimitsConfig::check_items(
        "route.co_department_codes",
        route.co_department_codes.len(),
        limits.list_items.saturating_sub(1),
    )?;
    for (index, code) in route.co_department_codes.iter().enumerate() {
        limits.check_code(&format!("route.co_department_codes[{index}]"), code)?;
    }
    let valid_id = !route.route_id.is_empty()
        && route
            .route_id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if !valid_id {
        return Err(DispatchError::invalid(
            "route.route_id",
            "required: letters, digits, - or _",
        ));
    }
    let category = route.category_code.as_bytes();
    let valid_category = category.len() == 7
        && matches!(category[0], b'C' | b'E')
        && category[1] == b'-'
        && category[4] == b'-'
        && [2, 3, 5, 6]
            .iter()
            .all(|&index| category[index].is_ascii_digit());
    if !valid_category {
        return Err(DispatchError::invalid(
            "route.category_code",
            "must look like E-01-03",
        ));
    }
    let valid_area = matches!(route.area_code.len(), 6 | 9 | 12 | 15)
        && route.area_code.bytes().all(|byte| byte.is_ascii_digit());
    if !valid_area {
        return Err(DispatchError::invalid(
            "route.area_code",
            "must be a city/district (6 digits), street (9), community (12) or grid (15) code",
        ));
    }
    check_department_code(&route.lead_department_code)
        .map_err(|reason| DispatchError::invalid("route.lead_department_code", reason))?;
    for (index, code) in route.co_department_codes.iter().enumerate() {
        check_department_code(code).map_err(|reason| {
            DispatchError::invalid(format!("route.co_department_codes[{index}]"), reason)
        })?;
        if *code == route.lead_department_code || route.co_department_codes[..index].contains(code)
        {
            return Err(DispatchError::invalid(
                format!("route.co_department_codes[{index}]"),
                "names a department twice",
            ));
        }
    }
    route
        .limits
        .check()
        .map_err(|(name, reason)| DispatchError::invalid(format!("route.limits.{name}"), reason))?;
    Ok(())
}

/// Inserts or replaces a route; returns its new version.
pub async fn put_route<C: ConnectionTrait>(
    connection: &C,
    route: &Route,
    limits: &LimitsConfig,
) -> Result<i64, DispatchError> {
    check_route(route, limits)?;
    let version = route::Entity::find_by_id(route.route_id.as_str())
        .one(connection)
        .await?
        .map_or(1, |existing| existing.version + 1);
    let model = route::ActiveModel {
        route_id: Set(route.route_id.clone()),
        category_code: Set(route.category_code.clone()),
        area_code: Set(route.area_code.clone()),
        definition: Set(serde_json::to_string(route).map_err(DispatchError::unexpected)?),
        version: Set(version),
    };
    if version == 1 {
        route::Entity::insert(model)
            .exec_without_returning(connection)
            .await?;
    } else {
        route::Entity::update(model).exec(connection).await?;
    }
    Ok(version)
}

#[derive(Debug, Deserialize)]
struct CatalogueFile {
    #[serde(default)]
    routes: Vec<RouteEntry>,
    #[serde(default)]
    departments: Vec<DepartmentEntry>,
    #[serde(default)]
    fallback_owners: Vec<FallbackOwner>,
}

#[derive(Debug, Deserialize)]
struct DepartmentEntry {
    code: String,
    name: String,
    level: String,
    region_code: String,
    #[serde(default)]
    supervision_department_code: Option<String>,
    #[serde(default)]
    supervises: bool,
    #[serde(default = "active_by_default")]
    active: bool,
}

fn active_by_default() -> bool {
    true
}

/// What dispatch takes from a catalogue file.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub routes: Vec<Route>,
    pub departments: Vec<Department>,
    pub fallback_owners: Vec<FallbackOwner>,
}

#[derive(Debug, Deserialize)]
struct RouteEntry {
    route_id: String,
    category_code: String,
    area_code: String,
    lead_department_code: String,
    #[serde(default)]
    co_department_codes: Vec<String>,
    #[serde(default)]
    auto_whistle: bool,
    #[serde(default)]
    requires_on_site: bool,
    #[serde(default)]
    acknowledge_within_minutes: Option<i64>,
    #[serde(default)]
    on_site_within_minutes: Option<i64>,
    #[serde(default)]
    resolve_within_minutes: Option<i64>,
    #[serde(default)]
    acknowledge_escalate_after_minutes: Option<i64>,
    #[serde(default)]
    on_site_escalate_after_minutes: Option<i64>,
    #[serde(default)]
    resolve_escalate_after_minutes: Option<i64>,
}

/// Upserts the routes, departments and fallback owners of a catalogue file (unchanged routes keep
/// their version). Departments and fallback owners missing from the file are kept.
pub async fn load(
    db: &DatabaseConnection,
    file: &Path,
    limits: &LimitsConfig,
    now_ms: i64,
) -> anyhow::Result<()> {
    let catalogue = check(file, limits)?;
    let transaction = db.begin().await?;
    for route in &catalogue.routes {
        let unchanged = route::Entity::find_by_id(route.route_id.as_str())
            .one(&transaction)
            .await?
            .is_some_and(|existing| {
                serde_json::from_str::<Route>(&existing.definition)
                    .ok()
                    .as_ref()
                    == Some(route)
            });
        if unchanged {
            continue;
        }
        put_route(&transaction, route, limits)
            .await
            .map_err(|error| anyhow::anyhow!("catalogue route {}: {error}", route.route_id))?;
    }
    for entry in &catalogue.departments {
        department::Entity::insert(department::ActiveModel {
            code: Set(entry.code.clone()),
            definition: Set(serde_json::to_string(entry)?),
            updated_at_ms: Set(now_ms),
        })
        .on_conflict(
            OnConflict::column(department::Column::Code)
                .update_columns([
                    department::Column::Definition,
                    department::Column::UpdatedAtMs,
                ])
                .to_owned(),
        )
        .exec_without_returning(&transaction)
        .await?;
    }
    for owner in &catalogue.fallback_owners {
        fallback_owner::Entity::insert(fallback_owner::ActiveModel {
            area_code: Set(owner.area_code.clone()),
            department_code: Set(owner.department_code.clone()),
        })
        .on_conflict(
            OnConflict::column(fallback_owner::Column::AreaCode)
                .update_column(fallback_owner::Column::DepartmentCode)
                .to_owned(),
        )
        .exec_without_returning(&transaction)
        .await?;
    }
    transaction.commit().await?;
    tracing::info!(
        routes = catalogue.routes.len(),
        departments = catalogue.departments.len(),
        fallback_owners = catalogue.fallback_owners.len(),
        "catalogue loaded"
    );
    Ok(())
}

/// Reads and checks a catalogue file without touching a database (also done at start, so a
/// malformed file is a configuration error found before any migration).
pub fn check(file: &Path, limits: &LimitsConfig) -> anyhow::Result<Catalogue> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| anyhow::anyhow!("cannot read catalogue {}: {error}", file.display()))?;
    let catalogue: CatalogueFile = serde_json::from_str(&text)
        .map_err(|error| anyhow::anyhow!("catalogue {} is malformed: {error}", file.display()))?;
    let mut routes = Vec::with_capacity(catalogue.routes.len());
    for entry in catalogue.routes {
        let minutes = |value: Option<i64>| value.map(chrono::Duration::minutes);
        let route = Route {
            route_id: entry.route_id,
            category_code: entry.category_code,
            area_code: entry.area_code,
            lead_department_code: entry.lead_department_code,
            co_department_codes: entry.co_department_codes,
            auto_whistle: entry.auto_whistle,
            requires_on_site: entry.requires_on_site,
            limits: LimitOverrides {
                acknowledge_within: minutes(entry.acknowledge_within_minutes),
                on_site_within: minutes(entry.on_site_within_minutes),
                resolve_within: minutes(entry.resolve_within_minutes),
                acknowledge_escalate_after: minutes(entry.acknowledge_escalate_after_minutes),
                on_site_escalate_after: minutes(entry.on_site_escalate_after_minutes),
                resolve_escalate_after: minutes(entry.resolve_escalate_after_minutes),
            },
        };
        check_route(&route, limits)
            .map_err(|error| anyhow::anyhow!("catalogue route {}: {error}", route.route_id))?;
        routes.push(route);
    }
    let mut departments = Vec::with_capacity(catalogue.departments.len());
    for entry in catalogue.departments {
        check_department_code(&entry.code)
            .map_err(|reason| anyhow::anyhow!("department {:?}: code {reason}", entry.code))?;
        if entry.name.trim().is_empty() || entry.level.trim().is_empty() {
            anyhow::bail!("department {}: name and level are required", entry.code);
        }
        if entry.region_code.len() < 6
            || !entry.region_code.bytes().all(|byte| byte.is_ascii_digit())
        {
            anyhow::bail!(
                "department {}: region_code must be a division code of at least 6 digits, got {:?}",
                entry.code,
                entry.region_code
            );
        }
        if let Some(code) = &entry.supervision_department_code {
            check_department_code(code).map_err(|reason| {
                anyhow::anyhow!(
                    "department {}: supervision_department_code {reason}",
                    entry.code
                )
            })?;
        }
        departments.push(Department {
            code: entry.code,
            name: entry.name,
            level: entry.level,
            region_code: entry.region_code,
            supervision_department_code: entry.supervision_department_code,
            supervises: entry.supervises,
            active: entry.active,
        });
    }
    for owner in &catalogue.fallback_owners {
        let valid_area = matches!(owner.area_code.len(), 6 | 9 | 12 | 15)
            && owner.area_code.bytes().all(|byte| byte.is_ascii_digit());
        if !valid_area {
            anyhow::bail!(
                "fallback owner {:?}: area_code must be a city/district (6 digits), street (9), community (12) or grid (15) code",
                owner.area_code
            );
        }
        check_department_code(&owner.department_code).map_err(|reason| {
            anyhow::anyhow!(
                "fallback owner {}: department_code {reason}",
                owner.area_code
            )
        })?;
    }
    Ok(Catalogue {
        routes,
        departments,
        fallback_owners: catalogue.fallback_owners,
    })
}
