//! Loading intake's part of a catalogue file: streets, grids and categories.

use crate::domain::{CategoryCode, GridCode};
use crate::storage::{category, grid, street};
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct CatalogueFile {
    #[serde(default)]
    districts: Vec<District>,
    #[serde(default)]
    streets: Vec<Street>,
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
}

#[derive(Debug, Deserialize)]
struct Grid {
    code: String,
    community_code: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct Category {
    code: String,
    kind: String,
    major_name: String,
    name: String,
}

/// A catalogue file read and checked, ready to store.
#[derive(Debug)]
pub struct CheckedCatalogue {
    streets: Vec<street::ActiveModel>,
    grids: Vec<grid::ActiveModel>,
    categories: Vec<category::ActiveModel>,
}

/// Reads `file` and upserts its streets, grids and categories; refuses the whole file when one
/// entry is malformed, naming it.
pub async fn load(db: &DatabaseConnection, file: &Path) -> anyhow::Result<()> {
    let checked = check(file)?;
    store(db, checked).await
}

/// Reads and checks a catalogue file without touching a database (also done at start, so a
/// malformed file is a configuration error found before any migration).
pub fn check(file: &Path) -> anyhow::Result<CheckedCatalogue> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| anyhow::anyhow!("cannot read catalogue {}: {error}", file.display()))?;
    let catalogue: CatalogueFile = serde_json::from_str(&text)
        .map_err(|error| anyhow::anyhow!("catalogue {} is malformed: {error}", file.display()))?;

    let mut streets = Vec::new();
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
        if entry.code.len() != 9 || !entry.code.starts_with(&district.code) {
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
        streets.push(street::ActiveModel {
            code: Set(entry.code.clone()),
            slug: Set(entry.slug.clone()),
            name: Set(entry.name.clone()),
            district_code: Set(district.code.clone()),
            city_code: Set(district.city_code.clone()),
        });
    }
    let mut grids = Vec::new();
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
        grids.push(grid::ActiveModel {
            code: Set(entry.code.clone()),
            community_code: Set(entry.community_code.clone()),
            street_code: Set(code.street_code().to_string()),
            name: Set(entry.name.clone()),
        });
    }
    let mut categories = Vec::new();
    for entry in &catalogue.categories {
        CategoryCode::parse(&entry.code)
            .map_err(|reason| anyhow::anyhow!("category {}: {reason}", entry.code))?;
        if !matches!(entry.kind.as_str(), "component" | "event") {
            anyhow::bail!("category {}: kind must be component or event", entry.code);
        }
        categories.push(category::ActiveModel {
            code: Set(entry.code.clone()),
            kind: Set(entry.kind.clone()),
            major_name: Set(entry.major_name.clone()),
            name: Set(entry.name.clone()),
        });
    }
    Ok(CheckedCatalogue {
        streets,
        grids,
        categories,
    })
}

async fn store(db: &DatabaseConnection, checked: CheckedCatalogue) -> anyhow::Result<()> {
    let CheckedCatalogue {
        streets,
        grids,
        categories,
    } = checked;
    let counts = (streets.len(), grids.len(), categories.len());
    let transaction = db.begin().await?;
    for model in streets {
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
            .exec_without_returning(&transaction)
            .await?;
    }
    for model in grids {
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
            .exec_without_returning(&transaction)
            .await?;
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
    transaction.commit().await?;
    tracing::info!(
        streets = counts.0,
        grids = counts.1,
        categories = counts.2,
        "catalogue loaded"
    );
    Ok(())
}

/// The grid/street registry and the category catalogue in memory: every report needs them, and they
/// change only when a catalogue is loaded at start.
#[derive(Debug, Default)]
pub struct Registry {
    categories: std::collections::HashSet<String>,
    grids: std::collections::HashMap<String, (grid::Model, street::Model)>,
}

impl Registry {
    /// Reads the registry from the database.
    pub async fn load(db: &DatabaseConnection) -> Result<Self, sea_orm::DbErr> {
        let streets: std::collections::HashMap<String, street::Model> = street::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|model| (model.code.clone(), model))
            .collect();
        let mut grids = std::collections::HashMap::new();
        for model in grid::Entity::find().all(db).await? {
            match streets.get(&model.street_code) {
                Some(street) => {
                    grids.insert(model.code.clone(), (model, street.clone()));
                }
                None => {
                    tracing::warn!(grid = %model.code, street = %model.street_code, "grid without a street is ignored")
                }
            }
        }
        let categories = category::Entity::find()
            .all(db)
            .await?
            .into_iter()
            .map(|model| model.code)
            .collect();
        Ok(Self { categories, grids })
    }

    pub fn has_category(&self, code: &str) -> bool {
        self.categories.contains(code)
    }

    /// A grid and its street.
    pub fn grid(&self, code: &str) -> Option<(&grid::Model, &street::Model)> {
        self.grids.get(code).map(|(grid, street)| (grid, street))
    }
}
