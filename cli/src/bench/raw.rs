//! This machine's raw limits, measured in the same run on the same NATS server and the same database
//! server through the same driver (sea-orm over sqlx): what the pipeline is compared with.

use super::stats::rate;
use futures::StreamExt;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, TransactionTrait};
use serde::Serialize;
use std::time::{Duration, Instant};

/// How long the raw pull consumer may receive nothing before its pull stream is replaced.
const STALL: Duration = Duration::from_secs(10);

/// Raw figures, each per second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RawLimits {
    /// JetStream publish, waiting for each ack before the next (512 B).
    pub jetstream_publish_sync_per_second: f64,
    /// JetStream publish with 256 acks in flight (512 B).
    pub jetstream_publish_async_per_second: f64,
    /// A pull consumer receiving and acknowledging those messages.
    pub jetstream_consume_acked_per_second: f64,
    /// Transactions of one INSERT each, one after the other.
    pub insert_1_row_transactions_per_second: f64,
    /// Transactions of 100 single-row INSERT statements each, one after the other.
    pub insert_100_row_transactions_per_second: f64,
    /// The same, in rows per second.
    pub insert_100_row_transactions_rows_per_second: f64,
}

/// Message counts and transaction counts, scaled down for a short (smoke) run.
#[derive(Debug, Clone, Copy)]
pub struct RawSizes {
    pub sync_publishes: usize,
    pub async_publishes: usize,
    pub single_row_transactions: usize,
    pub hundred_row_transactions: usize,
}

/// JetStream sync and async publish, then pull-consume with acks, on a stream of its own.
pub async fn jetstream(
    client: async_nats::Client,
    sizes: RawSizes,
    limits: &mut RawLimits,
) -> anyhow::Result<()> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    let js = jetstream::new(client);
    let name = format!("BENCH_RAW_{}", uuid::Uuid::now_v7().simple());
    let subject = format!("benchraw.{}", uuid::Uuid::now_v7().simple());
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{subject}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let payload = bytes::Bytes::from(vec![b'x'; 512]);

    let started = Instant::now();
    for index in 0..sizes.sync_publishes {
        js.publish(format!("{subject}.sync.{index}"), payload.clone())
            .await?
            .await?;
    }
    limits.jetstream_publish_sync_per_second = rate(sizes.sync_publishes, started.elapsed());

    let started = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    for index in 0..sizes.async_publishes {
        in_flight.push_back(
            js.publish(format!("{subject}.async.{index}"), payload.clone())
                .await?,
        );
        if in_flight.len() >= 256
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
    }
    for ack in in_flight {
        ack.await?;
    }
    limits.jetstream_publish_async_per_second = rate(sizes.async_publishes, started.elapsed());

    let stream = js.get_stream(&name).await?;
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            // what a dropped pull stream had received but not handed out comes again soon
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await?;
    let total = sizes.sync_publishes + sizes.async_publishes;
    let started = Instant::now();
    let mut messages = consumer.messages().await?;
    // by stream sequence: a message delivered again after a resume counts once
    let mut seen = std::collections::HashSet::with_capacity(total);
    let mut resumes = 0;
    let mut stalled = Duration::ZERO;
    while seen.len() < total {
        let waited = Instant::now();
        let message = match tokio::time::timeout(STALL, messages.next()).await {
            Ok(Some(message)) => message.map_err(|error| anyhow::anyhow!(error))?,
            Ok(None) => anyhow::bail!("raw consumer ended"),
            // a pull stream now and then stops delivering (seen about once in twenty runs on
            // nats-server 2.9); the durable consumer keeps its place, so a new one carries on, and
            // the time lost is left out of the rate
            Err(_) if resumes < 3 => {
                resumes += 1;
                stalled += waited.elapsed();
                eprintln!(
                    "raw consumer: nothing for {STALL:?} after {} of {total}; resuming with a new pull stream",
                    seen.len()
                );
                messages = consumer.messages().await?;
                continue;
            }
            Err(_) => anyhow::bail!("raw consumer stalled after {} of {total}", seen.len()),
        };
        let sequence = message
            .info()
            .map_err(|error| anyhow::anyhow!(error))?
            .stream_sequence;
        message
            .ack()
            .await
            .map_err(|error| anyhow::anyhow!(error))?;
        seen.insert(sequence);
    }
    let elapsed = started.elapsed().saturating_sub(stalled);
    limits.jetstream_consume_acked_per_second = rate(total, elapsed);
    drop(messages);
    js.delete_stream(&name).await?;
    Ok(())
}

/// Single-row and 100-row insert transactions on `url`, opened the way the services open theirs.
pub async fn database(url: &str, sizes: RawSizes, limits: &mut RawLimits) -> anyhow::Result<()> {
    // the services' default pool (10; SQLite always one connection)
    let config = whistle_platform::config::DatabaseConfig::at(url, 10);
    let db = whistle_platform::db::connect(&config).await?;
    let result = inserts(&db, sizes, limits).await;
    db.close().await?;
    result
}

async fn inserts(
    db: &DatabaseConnection,
    sizes: RawSizes,
    limits: &mut RawLimits,
) -> anyhow::Result<()> {
    let backend = db.get_database_backend();
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS bench_raw (id TEXT PRIMARY KEY, payload TEXT NOT NULL)",
    )
    .await?;
    let payload = "x".repeat(512);
    let insert = |id: String| {
        Statement::from_sql_and_values(
            backend,
            "INSERT INTO bench_raw (id, payload) VALUES ($1, $2)",
            [id.into(), payload.clone().into()],
        )
    };
    let started = Instant::now();
    for _ in 0..sizes.single_row_transactions {
        let transaction = db.begin().await?;
        transaction
            .execute_raw(insert(uuid::Uuid::now_v7().to_string()))
            .await?;
        transaction.commit().await?;
    }
    limits.insert_1_row_transactions_per_second =
        rate(sizes.single_row_transactions, started.elapsed());

    let started = Instant::now();
    for _ in 0..sizes.hundred_row_transactions {
        let transaction = db.begin().await?;
        for _ in 0..100 {
            transaction
                .execute_raw(insert(uuid::Uuid::now_v7().to_string()))
                .await?;
        }
        transaction.commit().await?;
    }
    let elapsed = started.elapsed();
    limits.insert_100_row_transactions_per_second = rate(sizes.hundred_row_transactions, elapsed);
    limits.insert_100_row_transactions_rows_per_second =
        rate(sizes.hundred_row_transactions * 100, elapsed);
    db.execute_unprepared("DROP TABLE bench_raw").await?;
    Ok(())
}
