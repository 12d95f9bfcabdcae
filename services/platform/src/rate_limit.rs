//! Per-caller request rate: a token bucket per caller in front of every service's routes; a caller
//! over its rate gets RESOURCE_EXHAUSTED with a retry hint (`retry-after-ms` metadata and the
//! message) and is counted in `whistle_grpc_rate_limited_total`. Health and reflection are exempt.
//!
//! Who "the caller" is lives in one function, [`caller_key`]: the credential it presents (a digest
//! of its `authorization` metadata: a department token, a person's or service's bearer token), or
//! else its connection (peer address and port), bounded in number by `grpc.max_connections`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Buckets kept at most; beyond it full (idle) buckets are forgotten, which loses nothing.
const MAX_BUCKETS: usize = 100_000;

/// The per-caller limit: `per_second` calls sustained, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by caller key.
#[derive(Debug, Clone)]
pub struct CallerBuckets {
    rate: Rate,
    buckets: Arc<Mutex<HashMap<u64, Bucket>>>,
}

impl CallerBuckets {
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Takes one call from `caller`'s bucket at `now`: `Ok` when allowed, else how long until the
    /// next call would be.
    pub fn take(&self, caller: u64, now: Instant) -> Result<(), Duration> {
        let Rate { per_second, burst } = self.rate;
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&caller) {
            buckets.retain(|_, bucket| {
                let refilled = bucket.tokens
                    + now.saturating_duration_since(bucket.updated).as_secs_f64() * per_second;
                refilled < burst
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(caller).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
    }
}

/// The caller of a request, as a key: its credential when it presents one, else its connection.
/// The one place to change when authentication gives callers a subject.
pub fn caller_key<B>(request: &http::Request<B>) -> u64 {
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    let mut hasher = KEYS
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    if let Some(credential) = request.headers().get(http::header::AUTHORIZATION) {
        "credential".hash(&mut hasher);
        credential.as_bytes().hash(&mut hasher);
    } else if let Some(peer) = request
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .or_else(|| {
            request
                    .extensions()
                    .get::<tonic::transport::server::TlsConnectInfo<
                        tonic::transport::server::TcpConnectInfo,
                    >>()
                    .and_then(|info| info.get_ref().remote_addr())
        })
    {
        "connection".hash(&mut hasher);
        peer.hash(&mut hasher);
    } else {
        "unknown".hash(&mut hasher);
    }
    hasher.finish()
}

/// The tower layer of [`CallerBuckets`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    pub inner: S,
    pub buckets: Option<CallerBuckets>,
}

impl<S, B> tower::Service<http::Request<B>> for RateLimit<S>
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
        let limited = match &self.buckets {
            Some(buckets) if !request.uri().path().starts_with("/grpc.") => {
                buckets.take(caller_key(&request), Instant::now()).err()
            }
            _ => None,
        };
        let Some(wait) = limited else {
            return futures::future::Either::Left(self.inner.call(request));
        };
        let retry_ms = wait.as_millis().max(1);
        crate::metrics::metrics().grpc_rate_limited.add(
            1,
            &[crate::metrics::attribute(
                "rpc",
                request.uri().path().to_string(),
            )],
        );
        let mut status = tonic::Status::resource_exhausted(format!(
            "too many requests from this caller (grpc.rate_per_second); retry after {retry_ms} ms"
        ));
        if let Ok(value) = retry_ms.to_string().parse() {
            status.metadata_mut().insert("retry-after-ms", value);
        }
        futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let buckets = CallerBuckets::new(Rate {
            per_second: 10.0,
            burst: 3.0,
        });
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(buckets.take(1, start), Ok(()));
        }
        let wait = buckets.take(1, start).expect_err("over the burst");
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::ZERO,
            "{wait:?}"
        );
        // another caller has its own bucket
        assert_eq!(buckets.take(2, start), Ok(()));
        // a tenth of a second later one more call is allowed, not two
        let later = start + Duration::from_millis(100);
        assert_eq!(buckets.take(1, later), Ok(()));
        assert!(buckets.take(1, later).is_err());
    }

    #[test]
    fn credentials_and_connections_are_different_callers() {
        let with = |token: &str| {
            http::Request::builder()
                .header("authorization", token)
                .body(())
                .expect("request")
        };
        assert_eq!(caller_key(&with("Bearer a")), caller_key(&with("Bearer a")));
        assert_ne!(caller_key(&with("Bearer a")), caller_key(&with("Bearer b")));
    }
}
