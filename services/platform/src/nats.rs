//! Connecting to NATS and provisioning the JetStream streams every service relies on.

use crate::config::NatsConfig;
use async_nats::jetstream::{self, stream};
use std::time::{Duration, Instant};

/// Stream of `case.v1.>` events.
pub const CASES_STREAM: &str = "WHISTLE_CASES";
/// Stream of `whistle.v1.>` events.
pub const WHISTLES_STREAM: &str = "WHISTLE_WHISTLES";
/// Stream of `evaluation.v1.>` events.
pub const EVALUATION_STREAM: &str = "WHISTLE_EVALUATION";

/// Connects, retrying until `nats.connect_timeout_secs` has passed. After the first connection the
/// client reconnects by itself for as long as the process lives.
pub async fn connect(config: &NatsConfig, client_name: &str) -> anyhow::Result<async_nats::Client> {
    let deadline = Instant::now() + Duration::from_secs(config.connect_timeout_secs);
    let mut wait = Duration::from_millis(100);
    loop {
        let options = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        match options.connect(config.url.as_str()).await {
            Ok(client) => return Ok(client),
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(url = %config.url, %error, "nats not reachable yet, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                anyhow::bail!(
                    "cannot reach nats at {} after {}s: {error}",
                    config.url,
                    config.connect_timeout_secs
                )
            }
        }
    }
}

/// Creates the Whistle streams when they are missing (file storage, explicit acks by consumers,
/// de-duplication on `Nats-Msg-Id`). Existing streams are left as they are.
pub async fn ensure_streams(
    jetstream: &jetstream::Context,
    config: &NatsConfig,
) -> anyhow::Result<()> {
    for (name, subjects) in [
        (CASES_STREAM, "case.v1.>"),
        (WHISTLES_STREAM, "whistle.v1.>"),
        (EVALUATION_STREAM, "evaluation.v1.>"),
    ] {
        jetstream
            .get_or_create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![subjects.to_string()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                max_age: Duration::from_secs(config.stream_max_age_days * 86_400),
                duplicate_window: Duration::from_secs(config.duplicate_window_secs),
                num_replicas: config.stream_replicas,
                ..Default::default()
            })
            .await
            .map_err(|error| anyhow::anyhow!("cannot create stream {name}: {error}"))?;
    }
    Ok(())
}
