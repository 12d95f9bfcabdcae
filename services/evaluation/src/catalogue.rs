//! Loading evaluation's part of a catalogue file: the departments, with their level and region.

use crate::domain::{self, DepartmentLevel};
use crate::storage::{self, department};
use sea_orm::{DatabaseConnection, TransactionTrait};
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
/// naming it.
pub async fn load(db: &DatabaseConnection, file: &Path) -> anyhow::Result<()> {
    let models = check(file)?;
    let count = models.len();
    let transaction = db.begin().await?;
    for model in models {
        storage::save_department(&transaction, model).await?;
    }
    transaction.commit().await?;
    tracing::info!(departments = count, "catalogue loaded");
    Ok(())
}

/// Reads and checks the departments of a catalogue file without touching a database (also done
/// at start, so a malformed file is a configuration error found before any migration).
pub fn check(file: &Path) -> anyhow::Result<Vec<department::Model>> {
    let text = std::fs::read_to_string(file)
        .map_err(|error| anyhow::anyhow!("cannot read catalogue {}: {error}", file.display()))?;
    let catalogue: CatalogueFile = serde_json::from_str(&text)
        .map_err(|error| anyhow::anyhow!("catalogue {} is malformed: {error}", file.display()))?;
    let mut models = Vec::with_capacity(catalogue.departments.len());
    for entry in catalogue.departments {
        domain::parse_department_code(&entry.code)
            .map_err(|reason| anyhow::anyhow!("department {:?}: code {reason}", entry.code))?;
        let level = DepartmentLevel::parse(&entry.level)
            .map_err(|reason| anyhow::anyhow!("department {}: level {reason}", entry.code))?;
        match domain::parse_region_filter(&entry.region_code) {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("department {}: region_code is required", entry.code),
            Err(reason) => anyhow::bail!("department {}: region_code {reason}", entry.code),
        }
        models.push(department::Model {
            code: entry.code,
            name: entry.name,
            level: level.as_str().to_string(),
            region_code: entry.region_code,
        });
    }
    Ok(models)
}
