//! The service's own database through sea-orm: SQLite (embedded, the default) or PostgreSQL.

use crate::config::{DatabaseConfig, redact_url};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use sea_orm_migration::MigratorTrait;
use std::time::Duration;

/// Opens the pool. For SQLite the file and its folder are created when missing, the journal is WAL
/// with `synchronous=NORMAL`, and the pool holds one connection: SQLite has a single writer, and one
/// connection turns lock contention into queueing instead of `SQLITE_BUSY` errors. Its temporary
/// storage is memory (`temp_store=MEMORY`): a multi-row statement inside a transaction keeps the
/// pages it changes in a statement journal, and SQLite writes any journal past 64 KiB to a temporary
/// file — a page and a syscall for every page a batch's `UPDATE` touches (docs/benchmarks.md,
/// eighteenth session).
pub async fn connect(config: &DatabaseConfig) -> Result<DatabaseConnection, DbErr> {
    let statement_cache = config.statement_cache;
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30));
    if config.url.starts_with("sqlite:") {
        if let Some(folder) = sqlite_path(&config.url).and_then(|path| {
            std::path::Path::new(&path)
                .parent()
                .map(std::path::Path::to_path_buf)
        }) && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(&folder).map_err(|error| {
                DbErr::Custom(format!(
                    "cannot create database folder {}: {error}",
                    folder.display()
                ))
            })?;
        }
        options
            .max_connections(1)
            .min_connections(1)
            // the one writer is kept for the life of the service (sqlx would replace it every 30
            // minutes, and its prepared statements with it)
            .max_lifetime(None)
            .idle_timeout(None)
            .map_sqlx_sqlite_opts(move |sqlite| {
                sqlite
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
                    .pragma("temp_store", "MEMORY")
                    .statement_cache_capacity(statement_cache)
            });
    } else {
        options
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
            .map_sqlx_postgres_opts(move |postgres| {
                postgres.statement_cache_capacity(statement_cache)
            });
        preflight_postgres(&config.url).await?;
    }
    Database::connect(options).await.map_err(|error| {
        DbErr::Custom(format!(
            "cannot open database {}: {error}",
            redact_url(&config.url)
        ))
    })
}

/// The pool for reads that may take long: scorecards over a whole period, exports. On a SQLite
/// file it is up to `database.read_connections` (when not 0) read-only connections to the same file: in WAL
/// mode they see every committed write, and the single writer (consumers, commands) neither waits
/// for them nor makes them wait. On PostgreSQL, and on an in-memory SQLite database (which a second
/// pool could not see), it is `writer` itself.
pub async fn connect_reader(
    config: &DatabaseConfig,
    writer: &DatabaseConnection,
) -> Result<DatabaseConnection, DbErr> {
    if config.read_connections == 0
        || !config.url.starts_with("sqlite:")
        || sqlite_path(&config.url).is_none()
    {
        return Ok(writer.clone());
    }
    let mut options = ConnectOptions::new(config.url.clone());
    options
        .sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .max_connections(config.read_connections)
        .min_connections(0)
        .map_sqlx_sqlite_opts(|sqlite| sqlite.read_only(true).busy_timeout(Duration::from_secs(5)));
    Database::connect(options).await.map_err(|error| {
        DbErr::Custom(format!(
            "cannot open database {} for reading: {error}",
            redact_url(&config.url)
        ))
    })
}

/// One plain connection before the pool is built, retried for a while (a database that is still
/// starting), so a refused or rejected connection is reported with its cause rather than as a pool
/// timeout.
async fn preflight_postgres(url: &str) -> Result<(), DbErr> {
    use sea_orm::sqlx::Connection;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut wait = Duration::from_millis(100);
    loop {
        match sea_orm::sqlx::PgConnection::connect(url).await {
            Ok(connection) => {
                let _ = connection.close().await;
                return Ok(());
            }
            Err(error) if std::time::Instant::now() < deadline && is_retryable(&error) => {
                tracing::warn!(url = %redact_url(url), %error, "database not reachable yet, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(1));
            }
            Err(error) => {
                return Err(DbErr::Custom(format!(
                    "cannot connect to database {}: {error}",
                    redact_url(url)
                )));
            }
        }
    }
}

/// Connection refused or reset: the server may be starting. Authentication, a missing database
/// and the like are final.
fn is_retryable(error: &sea_orm::sqlx::Error) -> bool {
    matches!(
        error,
        sea_orm::sqlx::Error::Io(_) | sea_orm::sqlx::Error::PoolTimedOut
    )
}

/// Brings the schema up to date with the service's migrations.
pub async fn migrate<M: MigratorTrait>(db: &DatabaseConnection) -> Result<(), DbErr> {
    M::up(db, None).await
}

/// Whether the pool is PostgreSQL, where row claims use `FOR UPDATE SKIP LOCKED`.
pub fn is_postgres(db: &impl ConnectionTrait) -> bool {
    db.get_database_backend() == DbBackend::Postgres
}

/// Serialises the transactions that change what is kept under the same keys (a case, a period):
/// on PostgreSQL, a transaction-scoped advisory lock per key, taken in one global order (by a
/// stable hash) so two transactions locking overlapping sets never wait on each other in a cycle,
/// and released at commit or rollback. A consumer whose handler reads a row, merges an event into
/// it and writes it back takes these first, or two replicas (or two batches) applying events of
/// the same case at once would each merge into the row as it was and the later write would drop
/// the earlier one. On SQLite it does nothing: the pool's one connection already runs one
/// transaction at a time.
pub async fn lock_keys<'a, C: ConnectionTrait>(
    transaction: &C,
    keys: impl IntoIterator<Item = &'a str>,
) -> Result<(), DbErr> {
    if !is_postgres(transaction) {
        return Ok(());
    }
    let hashes: std::collections::BTreeSet<i64> = keys.into_iter().map(lock_key_hash).collect();
    if hashes.is_empty() {
        return Ok(());
    }
    // numbers only, so the list is written into the statement; unnest yields them in array order
    let list = hashes
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    transaction
        .execute_unprepared(&format!(
            "SELECT pg_advisory_xact_lock(k) FROM unnest('{{{list}}}'::bigint[]) AS k"
        ))
        .await?;
    Ok(())
}

/// The advisory-lock key of `key`: the first eight bytes of its SHA-256, the same in every
/// replica and every release.
fn lock_key_hash(key: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// Rows one multi-row statement writes, at most: with nine columns, well under PostgreSQL's 65,535
/// bound parameters and SQLite's 32,766.
pub const ROWS_PER_STATEMENT: usize = 256;

/// The sizes of the statements that write `rows` rows: powers of two, largest first, none above
/// [`ROWS_PER_STATEMENT`] (37 rows: 32, 4, 1). Each size is its own statement text, so each
/// connection's cache of prepared statements (sqlx keeps 100, least recently used out), and each
/// PostgreSQL session's, holds at most nine per table instead of one for every batch size seen,
/// and a statement is not parsed and planned again each time a batch size comes back.
pub fn statement_sizes(mut rows: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if rows == 0 {
            return None;
        }
        let size = if rows >= ROWS_PER_STATEMENT {
            ROWS_PER_STATEMENT
        } else {
            1 << rows.ilog2()
        };
        rows -= size;
        Some(size)
    })
}

/// Inserts `rows` with multi-row statements in the sizes of [`statement_sizes`], each with
/// `on_conflict` when given (a row that conflicts is skipped or merges, as it says). Returns how
/// many rows the statements wrote (a row skipped by `DO NOTHING` is not counted).
pub async fn insert_rows<A, C>(
    connection: &C,
    rows: impl IntoIterator<Item = A>,
    on_conflict: Option<sea_orm::sea_query::OnConflict>,
) -> Result<u64, DbErr>
where
    A: sea_orm::ActiveModelTrait,
    C: ConnectionTrait,
{
    use sea_orm::EntityTrait;
    let rows: Vec<A> = rows.into_iter().collect();
    let sizes = statement_sizes(rows.len());
    let mut rows = rows.into_iter();
    let mut written = 0;
    for size in sizes {
        let mut insert = A::Entity::insert_many(rows.by_ref().take(size));
        if let Some(on_conflict) = &on_conflict {
            insert = insert.on_conflict(on_conflict.clone());
        }
        written += insert.exec_without_returning(connection).await?;
    }
    Ok(written)
}

/// Appends the `number`th (from 1) bind parameter of a hand-written statement to `sql`: `$number`
/// on PostgreSQL, `?` on SQLite, which numbers its `?`s in the order they appear (so the caller
/// writes them in order). SQLite finds a `$number` by searching the statement's list of names from
/// the start, and sqlx asks it the name of every parameter it binds: a statement of n numbered
/// parameters cost O(n²) to bind (a multi-row `UPDATE` of 256 rows, 2,500 parameters), 1–4 % of
/// the services' CPU under load in `perf` (docs/benchmarks.md, sixteenth session).
pub fn push_placeholder(sql: &mut String, backend: DbBackend, number: usize) {
    use std::fmt::Write;
    match backend {
        DbBackend::Postgres => {
            let _ = write!(sql, "${number}");
        }
        _ => sql.push('?'),
    }
}

/// A row [`update_rows`] changes: its key, the version it must still have, and its new values, one
/// per column named.
#[derive(Debug, Clone)]
pub struct VersionedRow {
    pub key: sea_orm::Value,
    pub expected_version: i64,
    pub values: Vec<sea_orm::Value>,
}

/// Sets `columns` of each of `rows` in `table`, where the row's `key` column matches and its
/// `version` column still holds the expected version: one `UPDATE … FROM (VALUES …)` per
/// statement size of [`statement_sizes`] instead of one per row (PostgreSQL, and SQLite since
/// 3.33). Returns how many rows were updated; fewer than given means some changed meanwhile. The
/// caller's rows must have distinct keys.
pub async fn update_rows<C: ConnectionTrait>(
    connection: &C,
    table: &str,
    key: &str,
    version: &str,
    columns: &[&str],
    rows: Vec<VersionedRow>,
) -> Result<u64, DbErr> {
    let width = columns.len() + 2;
    // the columns of a VALUES list are named column1, column2, … in both databases
    let set = columns
        .iter()
        .enumerate()
        .map(|(index, column)| format!("{column} = v.column{}", index + 3))
        .collect::<Vec<_>>()
        .join(", ");
    let backend = connection.get_database_backend();
    let mut updated = 0;
    let mut rows = rows.into_iter();
    for size in statement_sizes(rows.len()) {
        let mut sql = format!("UPDATE {table} AS t SET {set} FROM (VALUES ");
        let mut values: Vec<sea_orm::Value> = Vec::with_capacity(size * width);
        for (index, row) in rows.by_ref().take(size).enumerate() {
            if row.values.len() != columns.len() {
                return Err(DbErr::Custom(format!(
                    "update of {table}: {} values for {} columns",
                    row.values.len(),
                    columns.len()
                )));
            }
            if index > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for column in 0..width {
                if column > 0 {
                    sql.push_str(", ");
                }
                push_placeholder(&mut sql, backend, index * width + column + 1);
            }
            sql.push(')');
            values.push(row.key);
            values.push(row.expected_version.into());
            values.extend(row.values);
        }
        sql.push_str(&format!(
            ") AS v WHERE t.{key} = v.column1 AND t.{version} = v.column2"
        ));
        let statement = sea_orm::Statement::from_sql_and_values(backend, sql, values);
        updated += connection.execute_raw(statement).await?.rows_affected();
    }
    Ok(updated)
}

/// `values` in lists of at most [`ROWS_PER_STATEMENT`], each padded to a power of two by repeating
/// its last value, for `IN (…)` queries: as with [`statement_sizes`], a few statement texts stay
/// prepared whatever the count (a repeated value changes nothing an `IN` list matches).
pub fn in_lists<T: Clone>(values: &[T]) -> impl Iterator<Item = Vec<T>> + '_ {
    values.chunks(ROWS_PER_STATEMENT).map(|chunk| {
        let mut list = chunk.to_vec();
        if let Some(last) = chunk.last() {
            list.resize(chunk.len().next_power_of_two(), last.clone());
        }
        list
    })
}

/// The file of a SQLite URL, if it names one.
pub fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    Some(path.to_string())
}

/// Migrations of the tables the platform owns inside every service database (outbox, inbox).
pub mod migrations {
    use sea_orm_migration::prelude::*;
    use sea_orm_migration::schema::{
        big_integer, big_integer_null, big_pk_auto, blob, integer, string, text, text_null,
    };

    /// Creates a single-column index `(name, column)` on `table` for each pair, when missing.
    pub async fn create_column_indexes<T, C>(
        manager: &SchemaManager<'_>,
        table: T,
        indexes: impl IntoIterator<Item = (&str, C)>,
    ) -> Result<(), DbErr>
    where
        T: IntoTableRef + Clone,
        C: IntoIndexColumn,
    {
        for (name, column) in indexes {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(table.clone())
                        .col(column)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    /// A service's migrator list: the platform's tables first, then the service's own migrations.
    pub fn with_platform(service: Vec<Box<dyn MigrationTrait>>) -> Vec<Box<dyn MigrationTrait>> {
        let mut all: Vec<Box<dyn MigrationTrait>> =
            vec![Box::new(CreateOutboxAndInbox), Box::new(OutboxParking)];
        all.extend(service);
        all
    }

    /// Creates `whistle_outbox` and `whistle_inbox`; services get it through [`with_platform`].
    #[derive(Debug)]
    pub struct CreateOutboxAndInbox;

    impl MigrationName for CreateOutboxAndInbox {
        fn name(&self) -> &str {
            "m20261128_000000_platform_outbox_inbox"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for CreateOutboxAndInbox {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use crate::inbox::entity as inbox;
            use crate::outbox::entity as outbox;
            manager
                .create_table(
                    Table::create()
                        .table(outbox::Entity)
                        .if_not_exists()
                        .col(big_pk_auto(outbox::Column::Id))
                        .col(string(outbox::Column::EventId).unique_key())
                        .col(string(outbox::Column::Subject))
                        .col(blob(outbox::Column::Payload))
                        .col(text(outbox::Column::Headers))
                        .col(big_integer(outbox::Column::CreatedAtMs))
                        .col(big_integer_null(outbox::Column::SentAtMs))
                        .to_owned(),
                )
                .await?;
            manager
                .create_index(
                    Index::create()
                        .name("whistle_outbox_unsent")
                        .table(outbox::Entity)
                        .col(outbox::Column::SentAtMs)
                        .col(outbox::Column::Id)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
            manager
                .create_table(
                    Table::create()
                        .table(inbox::Entity)
                        .if_not_exists()
                        .col(string(inbox::Column::Consumer))
                        .col(string(inbox::Column::EventId))
                        .col(string(inbox::Column::Outcome))
                        .col(big_integer(inbox::Column::ProcessedAtMs))
                        .primary_key(
                            Index::create()
                                .col(inbox::Column::Consumer)
                                .col(inbox::Column::EventId),
                        )
                        .to_owned(),
                )
                .await
        }
    }

    /// Adds parking to the outbox: attempts, when an event was given up on, and why.
    #[derive(Debug)]
    pub struct OutboxParking;

    impl MigrationName for OutboxParking {
        fn name(&self) -> &str {
            "m20261129_000000_platform_outbox_parking"
        }
    }

    #[async_trait::async_trait]
    impl MigrationTrait for OutboxParking {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            use crate::outbox::entity as outbox;
            // SQLite alters one column per statement
            let columns = [
                integer(outbox::Column::Attempts).default(0).to_owned(),
                big_integer_null(outbox::Column::ParkedAtMs),
                text_null(outbox::Column::LastError),
            ];
            for column in columns {
                manager
                    .alter_table(
                        Table::alter()
                            .table(outbox::Entity)
                            .add_column(column)
                            .to_owned(),
                    )
                    .await?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ROWS_PER_STATEMENT, in_lists, push_placeholder, sqlite_path, statement_sizes};

    /// SQLite gets anonymous `?`s (bound in order, no name lookup), PostgreSQL its `$n`.
    #[test]
    fn placeholders_are_the_databases_own() {
        let write = |backend| {
            let mut sql = String::new();
            for number in 1..=3 {
                push_placeholder(&mut sql, backend, number);
                sql.push(' ');
            }
            sql
        };
        assert_eq!(write(sea_orm::DbBackend::Sqlite), "? ? ? ");
        assert_eq!(write(sea_orm::DbBackend::Postgres), "$1 $2 $3 ");
    }

    #[test]
    fn statements_are_powers_of_two_up_to_the_limit() {
        let sizes = |rows| statement_sizes(rows).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(37), vec![32, 4, 1]);
        assert_eq!(sizes(256), vec![256]);
        assert_eq!(sizes(600), vec![256, 256, 64, 16, 8]);
        for rows in 0..1_000 {
            let all = sizes(rows);
            assert_eq!(all.iter().sum::<usize>(), rows);
            assert!(
                all.iter()
                    .all(|size| size.is_power_of_two() && *size <= ROWS_PER_STATEMENT)
            );
        }
    }

    #[test]
    fn in_lists_are_padded_to_powers_of_two_and_keep_every_value() {
        let values: Vec<u32> = (0..600).collect();
        let lists: Vec<Vec<u32>> = in_lists(&values).collect();
        assert_eq!(
            lists.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![256, 256, 128]
        );
        assert_eq!(lists[2][87], 599);
        assert!(lists[2][88..].iter().all(|value| *value == 599));
        let mut seen: Vec<u32> = lists.concat();
        seen.dedup();
        assert_eq!(seen, values);
        assert_eq!(
            in_lists(&[7u32, 8, 9]).collect::<Vec<_>>(),
            vec![vec![7, 8, 9, 9]]
        );
        assert_eq!(in_lists::<u32>(&[]).count(), 0);
    }

    #[test]
    fn migration_order_is_stable() {
        let names: Vec<String> = super::migrations::with_platform(Vec::new())
            .iter()
            .map(|migration| migration.name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "m20261128_000000_platform_outbox_inbox",
                "m20261129_000000_platform_outbox_parking"
            ]
        );
    }

    #[test]
    fn sqlite_paths_are_found_in_urls() {
        assert_eq!(
            sqlite_path("sqlite://data/intake.sqlite?mode=rwc").as_deref(),
            Some("data/intake.sqlite")
        );
        assert_eq!(sqlite_path("sqlite:x.db").as_deref(), Some("x.db"));
        assert_eq!(sqlite_path("sqlite::memory:"), None);
    }
}
