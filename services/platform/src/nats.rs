//! Connecting to NATS and provisioning the JetStream streams every service relies on.

use crate::config::{ConfigError, NatsConfig, redact_url};
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
        let (servers, credentials) = split_credentials(&config.url);
        let mut options = async_nats::ConnectOptions::new()
            .name(client_name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        if let Some(seed) = config.nkey_seed()? {
            options = options.nkey(seed);
        } else if let Some((user, password)) = credentials {
            options = options.user_and_password(user, password);
        }
        match options.connect(servers.as_str()).await {
            Ok(client) => return Ok(client),
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::Authentication
                ) =>
            {
                // waiting does not fix a refused login
                anyhow::bail!(
                    "cannot reach nats at {}: the server refused the login of {client_name}: {error} (check nats.nkey_seed_file or the user in nats.url)",
                    redact_url(&config.url)
                )
            }
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(url = %redact_url(&config.url), %error, "nats not reachable yet, retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(error) => {
                anyhow::bail!(
                    "cannot reach nats at {} after {}s: {error}",
                    redact_url(&config.url),
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
    // a server that is busy or still recovering its streams answers late: asked again until
    // `nats.connect_timeout_secs` has passed, as connecting is
    let deadline = Instant::now() + Duration::from_secs(config.connect_timeout_secs);
    for (name, subjects) in [
        (CASES_STREAM, "case.v1.>"),
        (WHISTLES_STREAM, "whistle.v1.>"),
        (EVALUATION_STREAM, "evaluation.v1.>"),
    ] {
        let stream_config = stream::Config {
            name: name.to_string(),
            subjects: vec![subjects.to_string()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(config.stream_max_age_days * 86_400),
            duplicate_window: Duration::from_secs(config.duplicate_window_secs),
            num_replicas: config.stream_replicas,
            ..Default::default()
        };
        let mut wait = Duration::from_millis(100);
        let created = loop {
            match jetstream.get_or_create_stream(stream_config.clone()).await {
                Err(error)
                    if matches!(
                        error.kind(),
                        jetstream::context::CreateStreamErrorKind::TimedOut
                            | jetstream::context::CreateStreamErrorKind::JetStreamUnavailable
                    ) && Instant::now() < deadline =>
                {
                    tracing::warn!(stream = name, %error, "jetstream not answering yet, retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                // another service created it between our look and our create (nats-server
                // answers that race with "subjects overlap with an existing stream"): it is there
                Err(error) if jetstream.get_stream(name).await.is_ok() => {
                    tracing::debug!(stream = name, %error, "stream created meanwhile by another service");
                    break Ok(());
                }
                result => break result.map(|_| ()),
            }
        };
        created.map_err(|error| {
                let message = error.to_string();
                if config.stream_replicas > 1
                    && (message.contains("replicas") || message.contains("insufficient resources"))
                {
                    // the server cannot hold the replicas asked for: the configuration's fault
                    anyhow::Error::new(ConfigError::Invalid(format!(
                        "nats.stream_replicas = {} but the nats server cannot create stream {name} with that many replicas: {message}",
                        config.stream_replicas
                    )))
                } else {
                    anyhow::anyhow!("cannot create stream {name}: {message}")
                }
            })?;
    }
    Ok(())
}

/// Refuses to start when an event as large as `max_event_bytes` (our limit) would not fit in one
/// NATS message (the server's `max_payload`): such an event could never be published.
pub fn check_max_payload(
    client: &async_nats::Client,
    max_event_bytes: usize,
) -> Result<(), ConfigError> {
    let server_max = client.server_info().max_payload;
    if server_max > 0 && max_event_bytes > server_max {
        return Err(ConfigError::Invalid(format!(
            "limits.max_event_bytes = {max_event_bytes} exceeds the nats server's max_payload = {server_max}; lower the limit or raise max_payload on the server"
        )));
    }
    Ok(())
}

/// Splits `nats://user:password@host:4222[,nats://…]` into the server list without credentials and
/// the first user and password found (the NATS client does not read them from the URL).
pub fn split_credentials(url: &str) -> (String, Option<(String, String)>) {
    let mut credentials = None;
    let servers: Vec<String> = url
        .split(',')
        .map(|server| {
            let server = server.trim();
            let Some((scheme, rest)) = server.split_once("://") else {
                return server.to_string();
            };
            match rest.rsplit_once('@') {
                Some((user_info, host)) => {
                    if credentials.is_none() {
                        let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
                        credentials = Some((user.to_string(), password.to_string()));
                    }
                    format!("{scheme}://{host}")
                }
                None => server.to_string(),
            }
        })
        .collect();
    (servers.join(","), credentials)
}

#[cfg(test)]
mod tests {
    use super::split_credentials;

    #[test]
    fn credentials_leave_the_url() {
        assert_eq!(
            split_credentials(
                "nats://dispatch:s3cret@nats-0:4222,nats://dispatch:s3cret@nats-1:4222"
            ),
            (
                "nats://nats-0:4222,nats://nats-1:4222".to_string(),
                Some(("dispatch".to_string(), "s3cret".to_string()))
            )
        );
        assert_eq!(
            split_credentials("nats://127.0.0.1:4222"),
            ("nats://127.0.0.1:4222".to_string(), None)
        );
    }
}
