//! Four services starting together on a fresh nats-server each create the streams. nats-server
//! answers the loser of that race with "subjects overlap with an existing stream" (seen as a
//! department gateway failing to start beside the others in `whistle bench`): every caller must
//! succeed, and the streams must be the ones asked for. Real nats-server, started per round.

use whistle_platform::config::NatsConfig;
use whistle_platform::local_nats::LocalNatsServer;
use whistle_platform::nats;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_creating_the_streams_at_once_all_start() {
    // the race is lost about once in twenty rounds on a 2-core machine
    for round in 0..40 {
        let dir = tempfile::tempdir().expect("temporary folder");
        let server = LocalNatsServer::start(&dir.path().join("nats")).expect("nats-server");
        let mut contexts = Vec::new();
        for _ in 0..4 {
            let client = async_nats::connect(server.url()).await.expect("client");
            contexts.push(async_nats::jetstream::new(client));
        }
        let config = NatsConfig::default();
        let results = futures::future::join_all(
            contexts
                .iter()
                .map(|jetstream| nats::ensure_streams(jetstream, &config)),
        )
        .await;
        for (service, result) in results.into_iter().enumerate() {
            if let Err(error) = result {
                panic!("round {round}, service {service}: {error:#}");
            }
        }
        for (name, subject) in [
            (nats::CASES_STREAM, "case.v1.>"),
            (nats::WHISTLES_STREAM, "whistle.v1.>"),
            (nats::EVALUATION_STREAM, "evaluation.v1.>"),
        ] {
            let mut stream = contexts[0].get_stream(name).await.expect("stream exists");
            let info = stream.info().await.expect("stream info");
            assert_eq!(info.config.subjects, vec![subject.to_string()], "{name}");
        }
    }
}
