//! The registry intake owns: streets, communities, grids (with boundaries) and categories. Loaded
//! from a catalogue file at start, changed by `ImportGrids`, held in memory by every replica and
//! reloaded when the registry version in the database moves.

use crate::config::CatalogueConfig;
use crate::domain::{CategoryCode, GridCode};
use crate::geometry::{AreaIndex, Boundary, Position};
use crate::storage::{boundary, category, community, grid, registry_version, street};
use sea_orm::sea_query::{Expr, ExprTrait as _, OnConflict};
use sea_orm::{
    ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, TransactionTrait,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Deserialize)]
struct CatalogueFile {
    #[serde(default)]
    districts: Vec<District>,
    #[serde(default)]
    streets: Vec<Street>,
    #[serde(default)]
    communities: Vec<Community>,
    #[serde(default)]
    grids: Vec<Grid>,
    #[serde(default)]
    categories: Vec<Category>,
}

#[derive(Debug, Deserialize)]
struct District {
    code: String,
    city_code: String,
}

#[derive(Debug, Deserialize)]
struct Street {
    code: String,
    slug: String,
    district_code: String,
    name: String,
    /// WKT, WGS-84, x = longitude.
    #[serde(default)]
    boundary: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Community {
    code: String,
    street_code: String,
    name: String,
    #[serde(default)]
    boundary: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Grid {
    code: String,
    community_code: String,
    name: String,
    #[serde(default)]
    boundary: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Category {
    code: String,
    kind: String,
    major_name: String,
    name: String,
}

/// The level of an area, from the length of its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Street,
    Community,
    Grid,
}

impl Level {
    pub fn of_code(code: &str) -> Option<Self> {
        if !code.bytes().all(|byte| byte.is_ascii_digit()) {
            return None;
        }
        match code.len() {
            9 => Some(Self::Street),
            12 => Some(Self::Community),
            15 => Some(Self::Grid),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Street => "street",
            Self::Community => "community",
            Self::Grid => "grid",
        }
    }
}

/// A catalogue file read and checked, ready to store.
#[derive(Debug, Default)]
pub struct CheckedCatalogue {
    streets: Vec<street::ActiveModel>,
    communities: Vec<community::ActiveModel>,
    grids: Vec<grid::ActiveModel>,
    boundaries: Vec<(String, Level, Boundary)>,
    categories: Vec<category::ActiveModel>,
}

/// Reads `file` and upserts its streets, communities, grids, boundaries and categories; refuses
/// the whole file when one entry is malformed, naming it.
pub async fn load(
    db: &DatabaseConnection,
    file: &Path,
    config: &CatalogueConfig,
    now_ms: i64,
) -> anyhow::Result<()> {
    let checked = check(file, config)?;
    store(db, checked, now_ms).await
}

fn parse_boundary(
    code: &str,
    text: &Option<String>,
    config: &CatalogueConfig,
) -> anyhow::Result<Option<Boundary>> {
    text.as_deref()
        .filter(|text| !text.trim().is_empty())
        .map(|text| {
            Boundary::parse(text, config.max_boundary_points)
                .map_err(|reason| anyhow::anyhow!("{code}: boundary: {reason}"))
        })
        .transpose()
}

/// Reads and checks a catalogue file without touching a database (also done at start, so a
/// malformed file is a configuration error found before any migration).
pub fn check(file: &Path, config: &CatalogueConfig) -> anyhow::Result<CheckedCatalogue> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| anyhow::anyhow!("cannot read catalogue {}: {error}", file.display()))?;
    let catalogue: CatalogueFile = serde_json::from_str(&text)
        .map_err(|error| anyhow::anyhow!("catalogue {} is malformed: {error}", file.display()))?;

    let mut checked = CheckedCatalogue::default();
    for entry in &catalogue.streets {
        let district = catalogue
            .districts
            .iter()
            .find(|district| district.code == entry.district_code)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "street {}: unknown district {}",
                    entry.code,
                    entry.district_code
                )
            })?;
        if Level::of_code(&entry.code) != Some(Level::Street)
            || !entry.code.starts_with(&district.code)
        {
            anyhow::bail!(
                "street {}: code must be its district code + 3 digits",
                entry.code
            );
        }
        if !whistle_platform::envelope::is_subject_token(&entry.slug) {
            anyhow::bail!(
                "street {}: slug {:?} must be letters, digits, - or _",
                entry.code,
                entry.slug
            );
        }
        checked.streets.push(street::ActiveModel {
            code: Set(entry.code.clone()),
            slug: Set(entry.slug.clone()),
            name: Set(entry.name.clone()),
            district_code: Set(district.code.clone()),
            city_code: Set(district.city_code.clone()),
        });
        if let Some(boundary) = parse_boundary(&entry.code, &entry.boundary, config)? {
            checked
                .boundaries
                .push((entry.code.clone(), Level::Street, boundary));
        }
    }
    for entry in &catalogue.communities {
        if Level::of_code(&entry.code) != Some(Level::Community)
            || !entry.code.starts_with(&entry.street_code)
        {
            anyhow::bail!(
                "community {}: code must be its street code {} + 3 digits",
                entry.code,
                entry.street_code
            );
        }
        checked.communities.push(community::ActiveModel {
            code: Set(entry.code.clone()),
            street_code: Set(entry.street_code.clone()),
            name: Set(entry.name.clone()),
        });
        if let Some(boundary) = parse_boundary(&entry.code, &entry.boundary, config)? {
            checked
                .boundaries
                .push((entry.code.clone(), Level::Community, boundary));
        }
    }
    for entry in &catalogue.grids {
        let code = GridCode::parse(&entry.code)
            .map_err(|reason| anyhow::anyhow!("grid {}: {reason}", entry.code))?;
        if code.community_code() != entry.community_code {
            anyhow::bail!(
                "grid {}: does not belong to community {}",
                entry.code,
                entry.community_code
            );
        }
        checked.grids.push(grid::ActiveModel {
            code: Set(entry.code.clone()),
            community_code: Set(entry.community_code.clone()),
            street_code: Set(code.street_code().to_string()),
            name: Set(entry.name.clone()),
        });
        if let Some(boundary) = parse_boundary(&entry.code, &entry.boundary, config)? {
            checked
                .boundaries
                .push((entry.code.clone(), Level::Grid, boundary));
        }
    }
    for entry in &catalogue.categories {
        CategoryCode::parse(&entry.code)
            .map_err(|reason| anyhow::anyhow!("category {}: {reason}", entry.code))?;
        if !matches!(entry.kind.as_str(), "component" | "event") {
            anyhow::bail!("category {}: kind must be component or event", entry.code);
        }
        checked.categories.push(category::ActiveModel {
            code: Set(entry.code.clone()),
            kind: Set(entry.kind.clone()),
            major_name: Set(entry.major_name.clone()),
            name: Set(entry.name.clone()),
        });
    }
    Ok(checked)
}

async fn store(
    db: &DatabaseConnection,
    checked: CheckedCatalogue,
    now_ms: i64,
) -> anyhow::Result<()> {
    let CheckedCatalogue {
        streets,
        communities,
        grids,
        boundaries,
        categories,
    } = checked;
    let counts = (
        streets.len(),
        communities.len(),
        grids.len(),
        boundaries.len(),
        categories.len(),
    );
    let transaction = db.begin().await?;
    for model in streets {
        upsert_street(&transaction, model).await?;
    }
    for model in communities {
        upsert_community(&transaction, model).await?;
    }
    for model in grids {
        upsert_grid(&transaction, model).await?;
    }
    for (code, level, boundary) in boundaries {
        upsert_boundary(&transaction, &code, level, &boundary, now_ms).await?;
    }
    for model in categories {
        category::Entity::insert(model)
            .on_conflict(
                OnConflict::column(category::Column::Code)
                    .update_columns([
                        category::Column::Kind,
                        category::Column::MajorName,
                        category::Column::Name,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
    }
    bump_version(&transaction).await?;
    transaction.commit().await?;
    tracing::info!(
        streets = counts.0,
        communities = counts.1,
        grids = counts.2,
        boundaries = counts.3,
        categories = counts.4,
        "catalogue loaded"
    );
    Ok(())
}

pub(crate) async fn upsert_street<C: ConnectionTrait>(
    connection: &C,
    model: street::ActiveModel,
) -> Result<(), DbErr> {
    street::Entity::insert(model)
        .on_conflict(
            OnConflict::column(street::Column::Code)
                .update_columns([
                    street::Column::Slug,
                    street::Column::Name,
                    street::Column::DistrictCode,
                    street::Column::CityCode,
                ])
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

pub(crate) async fn upsert_community<C: ConnectionTrait>(
    connection: &C,
    model: community::ActiveModel,
) -> Result<(), DbErr> {
    community::Entity::insert(model)
        .on_conflict(
            OnConflict::column(community::Column::Code)
                .update_columns([community::Column::StreetCode, community::Column::Name])
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

pub(crate) async fn upsert_grid<C: ConnectionTrait>(
    connection: &C,
    model: grid::ActiveModel,
) -> Result<(), DbErr> {
    grid::Entity::insert(model)
        .on_conflict(
            OnConflict::column(grid::Column::Code)
                .update_columns([
                    grid::Column::CommunityCode,
                    grid::Column::StreetCode,
                    grid::Column::Name,
                ])
                .to_owned(),
        )
        .exec_without_returning(connection)
        .await?;
    Ok(())
}

pub(crate) async fn upsert_boundary<C: ConnectionTrait>(
    connection: &C,
    code: &str,
    level: Level,
    boundary: &Boundary,
    now_ms: i64,
) -> Result<(), DbErr> {
    boundary::Entity::insert(boundary::ActiveModel {
        code: Set(code.to_string()),
        level: Set(level.as_str().to_string()),
        wkt: Set(boundary.to_wkt()),
        updated_at_ms: Set(now_ms),
    })
    .on_conflict(
        OnConflict::column(boundary::Column::Code)
            .update_columns([
                boundary::Column::Level,
                boundary::Column::Wkt,
                boundary::Column::UpdatedAtMs,
            ])
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    Ok(())
}

/// Counts one more registry change; every replica reloads when it sees the number move.
pub(crate) async fn bump_version<C: ConnectionTrait>(connection: &C) -> Result<i64, DbErr> {
    registry_version::Entity::insert(registry_version::ActiveModel {
        id: Set(1),
        version: Set(1),
    })
    .on_conflict(
        OnConflict::column(registry_version::Column::Id)
            .value(
                registry_version::Column::Version,
                Expr::col((registry_version::Entity, registry_version::Column::Version)).add(1),
            )
            .to_owned(),
    )
    .exec_without_returning(connection)
    .await?;
    current_version(connection).await
}

async fn current_version<C: ConnectionTrait>(connection: &C) -> Result<i64, DbErr> {
    Ok(registry_version::Entity::find_by_id(1)
        .one(connection)
        .await?
        .map_or(0, |row| row.version))
}

/// A grid with everything a report needs of it.
#[derive(Debug, Clone)]
pub struct GridEntry {
    pub grid: grid::Model,
    pub street: street::Model,
}

/// Why a position found no grid: what it does lie in, for the caller's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlocated {
    /// Inside a community's boundary but no grid's (a gap in the grid layer).
    InCommunity(String),
    InStreet(String),
    Nowhere,
}

/// The grid/street registry and the category catalogue in memory: every report needs them.
#[derive(Debug, Default)]
pub struct Registry {
    categories: HashMap<String, category::Model>,
    grids: HashMap<String, GridEntry>,
    communities: HashMap<String, community::Model>,
    streets: HashMap<String, street::Model>,
    grid_index: Option<AreaIndex>,
    community_index: Option<AreaIndex>,
    street_index: Option<AreaIndex>,
    /// The registry version this was read at.
    pub version: i64,
}

impl Registry {
    /// Reads the registry from the database.
    pub async fn load(db: &impl ConnectionTrait) -> Result<Self, DbErr> {
        let version = current_version(db).await?;
        let streets: HashMap<String, street::Model> = street::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|model| (model.code.clone(), model))
            .collect();
        let mut grids = HashMap::new();
        for model in grid::Entity::find().all(db).await? {
            match streets.get(&model.street_code) {
                Some(street) => {
                    grids.insert(
                        model.code.clone(),
                        GridEntry {
                            grid: model,
                            street: street.clone(),
                        },
                    );
                }
                None => {
                    tracing::warn!(grid = %model.code, street = %model.street_code, "grid without a street is ignored")
                }
            }
        }
        let communities = community::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|model| (model.code.clone(), model))
            .collect();
        let mut by_level: HashMap<&'static str, Vec<(String, Boundary)>> = HashMap::new();
        for row in boundary::Entity::find().all(db).await? {
            // stored boundaries were valid when written; a limit lowered since does not drop them
            match Boundary::parse(&row.wkt, usize::MAX) {
                Ok(parsed) => {
                    let level = match row.level.as_str() {
                        "street" => "street",
                        "community" => "community",
                        _ => "grid",
                    };
                    if level == "grid" && !grids.contains_key(&row.code) {
                        continue;
                    }
                    by_level.entry(level).or_default().push((row.code, parsed));
                }
                Err(reason) => {
                    tracing::error!(code = %row.code, %reason, "stored boundary is unreadable, ignored")
                }
            }
        }
        let mut index = |level| {
            by_level
                .remove(level)
                .filter(|areas| !areas.is_empty())
                .map(AreaIndex::new)
        };
        let categories = category::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|model| (model.code.clone(), model))
            .collect();
        Ok(Self {
            grid_index: index("grid"),
            community_index: index("community"),
            street_index: index("street"),
            categories,
            grids,
            communities,
            streets,
            version,
        })
    }

    pub fn has_category(&self, code: &str) -> bool {
        self.categories.contains_key(code)
    }

    pub fn category(&self, code: &str) -> Option<&category::Model> {
        self.categories.get(code)
    }

    /// Every category, by code.
    pub fn categories(&self) -> Vec<&category::Model> {
        let mut all: Vec<_> = self.categories.values().collect();
        all.sort_by(|a, b| a.code.cmp(&b.code));
        all
    }

    /// A grid and its street.
    pub fn grid(&self, code: &str) -> Option<&GridEntry> {
        self.grids.get(code)
    }

    pub fn community(&self, code: &str) -> Option<&community::Model> {
        self.communities.get(code)
    }

    pub fn street(&self, code: &str) -> Option<&street::Model> {
        self.streets.get(code)
    }

    /// A position inside grid `code`'s boundary, when it has one.
    pub fn grid_position(&self, code: &str) -> Option<Position> {
        self.grid_index
            .as_ref()
            .and_then(|index| index.boundary(code))
            .and_then(Boundary::interior_position)
    }

    /// Grids with a boundary.
    pub fn located_grids(&self) -> usize {
        self.grid_index.as_ref().map_or(0, AreaIndex::len)
    }

    /// The grid whose boundary contains `position` (see [`AreaIndex::locate`] for borders).
    pub fn locate(&self, position: Position) -> Result<&GridEntry, Unlocated> {
        if let Some(code) = self
            .grid_index
            .as_ref()
            .and_then(|index| index.locate(position))
            && let Some(entry) = self.grids.get(code)
        {
            return Ok(entry);
        }
        let within = |index: &Option<AreaIndex>| {
            index
                .as_ref()
                .and_then(|index| index.locate(position))
                .map(str::to_string)
        };
        Err(
            match (within(&self.community_index), within(&self.street_index)) {
                (Some(community), _) => Unlocated::InCommunity(community),
                (None, Some(street)) => Unlocated::InStreet(street),
                (None, None) => Unlocated::Nowhere,
            },
        )
    }
}

/// The registry every request reads, swapped whole when it changes.
#[derive(Debug, Default)]
pub struct SharedRegistry {
    current: RwLock<Arc<Registry>>,
}

impl SharedRegistry {
    pub fn new(registry: Registry) -> Self {
        Self {
            current: RwLock::new(Arc::new(registry)),
        }
    }

    /// The registry as it is now; a reload meanwhile does not change the one returned.
    pub fn get(&self) -> Arc<Registry> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the registry again and swaps it in.
    pub async fn reload(&self, db: &impl ConnectionTrait) -> Result<i64, DbErr> {
        let fresh = Arc::new(Registry::load(db).await?);
        let version = fresh.version;
        match self.current.write() {
            Ok(mut current) => *current = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(version)
    }

    /// Reloads whenever another replica moved the registry version, looking every `interval`,
    /// until `shutdown`.
    pub async fn follow(
        self: Arc<Self>,
        db: DatabaseConnection,
        interval: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match current_version(&db).await {
                Ok(version) if version != self.get().version => match self.reload(&db).await {
                    Ok(version) => tracing::info!(version, "registry reloaded"),
                    Err(error) => tracing::warn!(%error, "registry reload failed, retrying"),
                },
                Ok(_) => {}
                Err(error) => tracing::debug!(%error, "registry version unreadable, retrying"),
            }
        }
    }
}
