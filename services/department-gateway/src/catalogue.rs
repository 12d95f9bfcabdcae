//! Loading the gateway's part of a catalogue file: the departments.

use crate::storage::department;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, DatabaseConnection, EntityTrait, TransactionTrait};
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Deserialize)]
struct CatalogueFile {
    #[serde(default)]
    departments: Vec<Department>,
}

#[derive(Debug, Deserialize)]
struct Department {
    code: String,
    name: String,
    level: String,
    region_code: String,
}

/// Reads `file` and upserts its departments; refuses the whole file when one entry is malformed,
/// naming it. Departments missing from the file are kept (their credentials stay valid).
pub async fn load(db: &DatabaseConnection, file: &Path, now_ms: i64) -> anyhow::Result<()> {
    let departments = check(file, now_ms)?;
    let count = departments.len();
    let transaction = db.begin().await?;
    for model in departments {
        department::Entity::insert(model)
            .on_conflict(
                OnConflict::column(department::Column::Code)
                    .update_columns([
                        department::Column::Name,
                        department::Column::Level,
                        department::Column::RegionCode,
                        department::Column::UpdatedAtMs,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&transaction)
            .await?;
    }
    transaction.commit().await?;
    tracing::info!(departments = count, "department catalogue loaded");
    Ok(())
}

/// Reads and checks the departments of a catalogue file without touching a database (also done
/// at start, so a malformed file is a configuration error found before any migration).
pub fn check(file: &Path, now_ms: i64) -> anyhow::Result<Vec<department::ActiveModel>> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| anyhow::anyhow!("cannot read catalogue {}: {error}", file.display()))?;
    let catalogue: CatalogueFile = serde_json::from_str(&text)
        .map_err(|error| anyhow::anyhow!("catalogue {} is malformed: {error}", file.display()))?;

    let mut departments = Vec::with_capacity(catalogue.departments.len());
    for entry in &catalogue.departments {
        if let Err(reason) = whistle_proto::rules::check_department_code(&entry.code) {
            anyhow::bail!("department {:?}: code {reason}", entry.code);
        }
        if entry.name.trim().is_empty() {
            anyhow::bail!("department {}: name is required", entry.code);
        }
        if entry.level.trim().is_empty() {
            anyhow::bail!("department {}: level is required", entry.code);
        }
        if entry.region_code.is_empty()
            || !entry.region_code.bytes().all(|byte| byte.is_ascii_digit())
        {
            anyhow::bail!(
                "department {}: region_code must be a division code of digits, got {:?}",
                entry.code,
                entry.region_code
            );
        }
        departments.push(department::ActiveModel {
            code: Set(entry.code.clone()),
            name: Set(entry.name.clone()),
            level: Set(entry.level.clone()),
            region_code: Set(entry.region_code.clone()),
            updated_at_ms: Set(now_ms),
        });
    }

    Ok(departments)
}
