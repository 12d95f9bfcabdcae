//! Serving gRPC: the service's own routes plus `grpc.health.v1.Health` and server reflection, with
//! graceful shutdown, bounded connections and a port that opens only when the service is ready.
//!
//! Health has two names: `""` and each service name are *readiness* (SERVING while the service can
//! do its job: its database answers and, unless it can work without it, NATS is connected), and
//! [`LIVENESS_SERVICE`] is *liveness* (SERVING while the process serves at all). Kubernetes uses the
//! first for readinessProbe and the second for livenessProbe, so an outage of a dependency takes a
//! pod out of rotation without restarting it.

use crate::config::GrpcConfig;
use futures::Stream;
use sea_orm::DatabaseConnection;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The health service name of liveness: SERVING as long as the process serves gRPC.
pub const LIVENESS_SERVICE: &str = "whistle.liveness";

/// A gRPC address reserved at start and opened when the service is ready. Binding at start makes a
/// port in use a start-up error; listening only once the routes are served means a client is
/// refused at once (and retries) instead of waiting on a port that never answers.
#[derive(Debug)]
pub struct GrpcListener {
    socket: TcpSocket,
    address: SocketAddr,
}

impl GrpcListener {
    /// Binds `address` (port 0 picks a free port) without listening yet.
    pub fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(address)?;
        let address = socket.local_addr()?;
        Ok(Self { socket, address })
    }

    /// The bound address, with the port chosen when 0 was asked.
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

/// What the health check watches.
#[derive(Debug, Clone)]
pub struct HealthProbe {
    pub db: DatabaseConnection,
    pub nats: async_nats::Client,
    /// Fully qualified gRPC service names served, e.g. `whistle.intake.v1.IntakeService`.
    pub services: Vec<&'static str>,
    /// Whether the service can do its job while NATS is down. Intake can: its outbox keeps the
    /// reports and publishes them when NATS returns, so it stays SERVING through the outage.
    pub works_without_nats: bool,
}

impl HealthProbe {
    async fn database_up(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.db.ping())
            .await
            .is_ok_and(|ping| ping.is_ok())
    }

    fn nats_up(&self) -> bool {
        self.nats.connection_state() == async_nats::connection::State::Connected
    }
}

/// Serves `routes` on `listener` until `shutdown`, then lets in-flight calls finish. Every call
/// except health and reflection passes `auth` first (bearer token, the service's method table).
pub async fn serve(
    listener: GrpcListener,
    config: &GrpcConfig,
    routes: Routes,
    probe: HealthProbe,
    auth: crate::auth::AuthLayer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let database_up = Arc::new(AtomicBool::new(true));
    // readiness is decided before the port opens: NOT_SERVING until the first probe says otherwise
    for service in probe.services.iter().copied().chain([""]) {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    reporter
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;
    let served_services = probe.services.clone();
    let watcher = tokio::spawn(watch_health(
        reporter,
        probe,
        database_up.clone(),
        shutdown.clone(),
    ));
    // reflection lists and describes only what this port serves: its own services, their
    // dependencies, health and reflection
    let descriptors = descriptors_of(&served_services)?;
    let mut reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(descriptors.clone())
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1.ServerReflection");
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_file_descriptor_set(descriptors)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health")
        .with_service_name("grpc.reflection.v1alpha.ServerReflection");
    for service in &served_services {
        reflection_v1 = reflection_v1.with_service_name(*service);
        reflection_v1alpha = reflection_v1alpha.with_service_name(*service);
    }
    let reflection_v1 = reflection_v1.build_v1()?;
    let reflection_v1alpha = reflection_v1alpha.build_v1alpha()?;
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let address = listener.address;
    let tcp = listener
        .socket
        .listen(1024)
        .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))?;
    let incoming = BoundedIncoming {
        listener: tcp,
        permits: Arc::new(Semaphore::new(config.max_connections)),
        idle_timeout: Duration::from_secs(config.idle_timeout_secs),
        pending_permit: None,
    };
    let keepalive = Duration::from_secs(config.keepalive_interval_secs);
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let caller_buckets = config
        .caller_rate()
        .map(crate::rate_limit::CallerBuckets::new);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.server_config()?)
            .map_err(|error| anyhow::anyhow!("grpc.tls: {error}"))?;
    }
    let server = builder
        .http2_keepalive_interval(Some(keepalive))
        .http2_keepalive_timeout(Some(keepalive))
        .max_concurrent_streams(config.max_concurrent_streams)
        .layer(server_trace_layer())
        .layer(tower::layer::layer_fn(|inner| RpcMetrics { inner }))
        .layer(tower::layer::layer_fn(move |inner| {
            crate::rate_limit::RateLimit {
                inner,
                buckets: caller_buckets.clone(),
            }
        }))
        .layer(auth)
        .layer(tower::layer::layer_fn(move |inner| DatabaseGate {
            inner,
            database_up: database_up.clone(),
        }))
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming.into_stream(), shutdown.clone().cancelled_owned());
    // graceful: calls in flight finish and clients are told to go (GOAWAY); a client that never
    // lets go does not hold the process past the grace period
    let grace_over = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    let result = tokio::select! {
        result = server => result,
        () = grace_over => {
            tracing::warn!(grace_secs = grace.as_secs(), "connections still open after the shutdown grace period, closing them");
            Ok(())
        }
    };
    watcher.abort();
    result.map_err(Into::into)
}

/// The server span of every call except health and reflection: continues the caller's
/// `traceparent`, named `<service>/<method>`, with the `rpc.*` semantic-convention attributes.
pub fn server_trace_layer() -> tonic_tracing_opentelemetry::middleware::server::OtelGrpcLayer {
    tonic_tracing_opentelemetry::middleware::server::OtelGrpcLayer::default()
        .filter(|path| !path.starts_with("/grpc."))
}

/// The client span of every call made through a channel wrapped in this layer: a child of the
/// current span, whose context goes to the server as `traceparent`.
pub fn client_trace_layer() -> tonic_tracing_opentelemetry::middleware::client::OtelGrpcLayer {
    tonic_tracing_opentelemetry::middleware::client::OtelGrpcLayer
}

/// The file descriptors that describe `services`: the files declaring them and every file those
/// import, transitively.
fn descriptors_of(services: &[&str]) -> anyhow::Result<prost_types::FileDescriptorSet> {
    use prost::Message;
    let all = prost_types::FileDescriptorSet::decode(whistle_proto::FILE_DESCRIPTOR_SET)?;
    let declares = |file: &prost_types::FileDescriptorProto, wanted: &str| {
        file.service
            .iter()
            .any(|service| format!("{}.{}", file.package(), service.name()) == wanted)
    };
    let mut needed: Vec<String> = all
        .file
        .iter()
        .filter(|file| services.iter().any(|wanted| declares(file, wanted)))
        .map(|file| file.name().to_string())
        .collect();
    let mut index = 0;
    while index < needed.len() {
        if let Some(file) = all.file.iter().find(|file| file.name() == needed[index]) {
            for dependency in &file.dependency {
                if !needed.contains(dependency) {
                    needed.push(dependency.clone());
                }
            }
        }
        index += 1;
    }
    Ok(prost_types::FileDescriptorSet {
        file: all
            .file
            .into_iter()
            .filter(|file| needed.iter().any(|name| name == file.name()))
            .collect(),
    })
}

/// Records `rpc.server.duration` (milliseconds to the response headers) for every call except
/// health and reflection, by service, method and gRPC status (the `grpc-status` of a trailers-only
/// answer, which is how a handler's error travels; 0 otherwise).
#[derive(Debug, Clone)]
struct RpcMetrics<S> {
    inner: S,
}

impl<S, B, ResponseBody> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_string();
        let future = self.inner.call(request);
        if path.starts_with("/grpc.") {
            return Box::pin(future);
        }
        let started = std::time::Instant::now();
        Box::pin(async move {
            let result = future.await;
            let status = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i64>().ok())
                    .unwrap_or(0),
                Err(_) => tonic::Code::Unknown as i64,
            };
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("", ""));
            crate::metrics::metrics().rpc_server_duration.record(
                started.elapsed().as_secs_f64() * 1000.0,
                &[
                    crate::metrics::attribute("rpc.system", "grpc"),
                    crate::metrics::attribute("rpc.service", service.to_string()),
                    crate::metrics::attribute("rpc.method", method.to_string()),
                    crate::metrics::attribute("rpc.grpc.status_code", status),
                ],
            );
            result
        })
    }
}

async fn watch_health(
    reporter: HealthReporter,
    probe: HealthProbe,
    database_up: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let database = probe.database_up().await;
        let nats = probe.nats_up();
        database_up.store(database, Ordering::Relaxed);
        crate::metrics::metrics().set_dependencies_up(database, nats);
        let ready = database && (nats || probe.works_without_nats);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            if ready {
                tracing::info!(database, nats, "health: serving");
            } else {
                tracing::warn!(database, nats, "health: not serving");
            }
            reporter.set_service_status("", status).await;
            for service in &probe.services {
                reporter.set_service_status(*service, status).await;
                crate::admin::set_ready(service, ready);
            }
            last = Some(status);
        }
        if !nats && probe.works_without_nats {
            tracing::debug!("nats unreachable; still serving, events wait in the outbox");
        }
        tokio::select! {
            _ = shutdown.cancelled() => {
                reporter.set_service_status("", ServingStatus::NotServing).await;
                for service in &probe.services {
                    reporter.set_service_status(*service, ServingStatus::NotServing).await;
                    crate::admin::set_ready(service, false);
                }
                return;
            }
            _ = tokio::time::sleep(Duration::from_secs(if ready { 2 } else { 1 })) => {}
        }
    }
}

/// Answers UNAVAILABLE at once while the last probe found the database unreachable, instead of
/// letting calls wait for a pooled connection until the caller's deadline. Health and reflection
/// pass through.
#[derive(Debug, Clone)]
struct DatabaseGate<S> {
    inner: S,
    database_up: Arc<AtomicBool>,
}

impl<S, B> tower::Service<http::Request<B>> for DatabaseGate<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        S::Future,
        std::future::Ready<Result<http::Response<tonic::body::Body>, S::Error>>,
    >;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let exempt = request.uri().path().starts_with("/grpc.");
        if !exempt && !self.database_up.load(Ordering::Relaxed) {
            let status = tonic::Status::unavailable("database unreachable, retry later");
            return futures::future::Either::Right(std::future::ready(Ok(status.into_http())));
        }
        futures::future::Either::Left(self.inner.call(request))
    }
}

/// Accepted connections with TCP_NODELAY (gRPC is request/response: Nagle plus delayed ACKs would
/// add up to 40 ms to a call), at most `permits` open at once, each closed after `idle_timeout`
/// without a byte from the client.
struct BoundedIncoming {
    listener: tokio::net::TcpListener,
    permits: Arc<Semaphore>,
    idle_timeout: Duration,
    pending_permit: Option<OwnedSemaphorePermit>,
}

impl BoundedIncoming {
    fn into_stream(self) -> impl Stream<Item = std::io::Result<ServedConnection>> {
        futures::stream::unfold(self, |mut incoming| async move {
            let permit = match incoming.pending_permit.take() {
                Some(permit) => permit,
                None => incoming.permits.clone().acquire_owned().await.ok()?,
            };
            loop {
                match incoming.listener.accept().await {
                    Ok((stream, _)) => {
                        if let Err(error) = stream.set_nodelay(true) {
                            tracing::debug!(%error, "cannot set TCP_NODELAY");
                        }
                        let connection = ServedConnection {
                            stream,
                            idle_timeout: incoming.idle_timeout,
                            idle: Box::pin(tokio::time::sleep(incoming.idle_timeout)),
                            _permit: permit,
                        };
                        return Some((Ok(connection), incoming));
                    }
                    // a connection reset before accept, too many open files: log, keep serving
                    Err(error) => {
                        tracing::warn!(%error, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        })
    }
}

/// One accepted connection: closed when the client has sent nothing for the idle timeout.
struct ServedConnection {
    stream: TcpStream,
    idle_timeout: Duration,
    idle: Pin<Box<tokio::time::Sleep>>,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for ServedConnection {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for ServedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buffer.filled().len();
        match Pin::new(&mut self.stream).poll_read(context, buffer) {
            Poll::Ready(result) => {
                if buffer.filled().len() > before {
                    let deadline = tokio::time::Instant::now() + self.idle_timeout;
                    self.idle.as_mut().reset(deadline);
                }
                Poll::Ready(result)
            }
            Poll::Pending => match self.idle.as_mut().poll(context) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for ServedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, buffer)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Binds a gRPC address, with an error that names the address.
pub fn bind(address: SocketAddr) -> anyhow::Result<GrpcListener> {
    GrpcListener::bind(address)
        .map_err(|error| anyhow::anyhow!("cannot listen on {address}: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_bound_port_refuses_until_served_and_is_in_use_for_others() {
        let listener = GrpcListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
        let address = listener.local_addr();
        // not listening yet: a client is refused at once instead of hanging
        let refused = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(address))
            .await
            .expect("answers at once");
        assert!(refused.is_err(), "connect must be refused before serve");
        // a server already listening makes bind fail
        let other = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("other");
        let taken = other.local_addr().expect("address");
        assert!(
            GrpcListener::bind(taken).is_err(),
            "a port in use must fail to bind"
        );
    }
}
