//! Who may call the prediction endpoints, and how much: bearer-token auth, a per-key request
//! rate limit, a limit on concurrent inference requests, and CORS. Health, metrics and docs stay
//! open. Tokens are compared in constant time and never logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, Method, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::{
    error::{ApiError, ErrorCode},
    listener::Lane,
    server::AppState,
};

/// Access settings, built once at start.
pub struct Access {
    tokens: Option<Vec<Vec<u8>>>,
    rate: Option<RateLimiter>,
    concurrency: Option<Arc<Semaphore>>,
    max_concurrency: usize,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("Access")
            .field("tokens", &self.tokens.as_ref().map(Vec::len))
            .field("rate_limited", &self.rate.is_some())
            .field("max_concurrency", &self.max_concurrency)
            .finish()
    }
}

impl Access {
    /// `tokens`: comma-separated list; `tokens_file`: one token per line (`#` comments).
    pub fn new(
        tokens: Option<&str>,
        tokens_file: Option<&std::path::Path>,
        rate_rps: Option<f64>,
        rate_burst: Option<f64>,
        max_concurrency: usize,
    ) -> Result<Access, String> {
        let mut list: Vec<Vec<u8>> = Vec::new();
        if let Some(t) = tokens {
            list.extend(t.split(',').map(str::trim).filter(|t| !t.is_empty()).map(|t| t.as_bytes().to_vec()));
        }
        if let Some(path) = tokens_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read KINFER_AUTH_TOKENS_FILE {}: {e}", path.display()))?;
            list.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|t| t.as_bytes().to_vec()),
            );
            if list.is_empty() {
                return Err(format!("KINFER_AUTH_TOKENS_FILE {} holds no token", path.display()));
            }
        }
        let rate = match rate_rps {
            Some(r) if r > 0.0 && r.is_finite() => Some(RateLimiter::new(r, rate_burst.unwrap_or(r).max(1.0))),
            Some(r) if r != 0.0 => return Err(format!("KINFER_RATE_LIMIT_RPS must be positive, got {r}")),
            _ => None,
        };
        Ok(Access {
            tokens: (!list.is_empty()).then_some(list),
            rate,
            concurrency: (max_concurrency > 0).then(|| Arc::new(Semaphore::new(max_concurrency))),
            max_concurrency,
        })
    }

    pub fn auth_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    fn authorized(&self, presented: Option<&[u8]>) -> bool {
        match (&self.tokens, presented) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(list), Some(p)) => list.iter().fold(false, |ok, t| ok | ct_eq(t, p)),
        }
    }
}

/// Constant-time equality (length leaks, contents do not).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Token buckets per API key.
struct RateLimiter {
    rps: f64,
    burst: f64,
    buckets: Mutex<HashMap<Vec<u8>, (f64, Instant)>>,
}

impl RateLimiter {
    fn new(rps: f64, burst: f64) -> Self {
        RateLimiter { rps, burst, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key`; `Err(seconds to wait)` when the bucket is empty.
    fn take(&self, key: &[u8]) -> Result<(), f64> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else { return Ok(()) };
        if buckets.len() > 100_000 {
            // Forget keys idle long enough to have refilled completely.
            let full = self.burst / self.rps;
            buckets.retain(|_, (_, last)| now.duration_since(*last).as_secs_f64() < full);
        }
        let (tokens, last) = buckets.entry(key.to_vec()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * self.rps).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((1.0 - *tokens) / self.rps)
        }
    }
}

/// Paths that need a token: model metadata, readiness and inference.
fn protected(path: &str) -> bool {
    path.starts_with("/v2/models")
        || path.starts_with("/v2/repository")
        || path.starts_with("/v1/models")
        || path == "/predict"
}

/// Why a request was refused, the limit that refused it (the `limit` label of
/// `kinfer_requests_rejected_total`), and how long the client should wait (rate limit only).
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    pub limit: Option<&'static str>,
    pub retry_after_s: Option<u64>,
}

impl Refusal {
    /// Counts the refusal in `kinfer_requests_rejected_total` when a limit refused it.
    pub fn count(&self, metrics: &crate::metrics::Metrics) {
        if let Some(limit) = self.limit {
            metrics.requests_rejected.with_label_values(&[limit]).inc();
        }
    }
}

impl Access {
    /// Auth, then the per-key rate limit. `token` is the bearer token presented, `api_key` the
    /// `x-api-key` (the rate-limit key when there is no token). Both servers (HTTP and gRPC) call
    /// this, so they refuse the same requests with the same messages.
    pub fn check(&self, token: Option<&[u8]>, api_key: Option<&[u8]>) -> Result<(), Refusal> {
        if !self.authorized(token) {
            let msg = if token.is_none() {
                "missing bearer token: send `Authorization: Bearer <token>`"
            } else {
                "invalid bearer token"
            };
            return Err(Refusal {
                error: ApiError::new(ErrorCode::Unauthorized, msg),
                limit: None,
                retry_after_s: None,
            });
        }
        if let Some(rate) = &self.rate {
            let key = token.or(api_key).unwrap_or(b"anonymous");
            if let Err(wait) = rate.take(key) {
                return Err(Refusal {
                    error: ApiError::new(
                        ErrorCode::RateLimited,
                        format!(
                            "rate limit of {} requests/s for this API key exceeded; retry in {:.2} s",
                            rate.rps, wait
                        ),
                    ),
                    limit: Some("rate_limit"),
                    retry_after_s: Some(wait.ceil().max(1.0) as u64),
                });
            }
        }
        Ok(())
    }

    /// An inference slot (the concurrency limit), taken only once the request's body is complete
    /// so a slow upload never holds one. The permit must be held until the request is answered.
    pub fn slot(&self) -> Result<Option<OwnedSemaphorePermit>, Refusal> {
        match &self.concurrency {
            Some(sem) => sem.clone().try_acquire_owned().map(Some).map_err(|_| Refusal {
                error: ApiError::new(
                    ErrorCode::RateLimited,
                    format!(
                        "server busy: {} inference requests in flight (KINFER_MAX_CONCURRENCY); retry later",
                        self.max_concurrency
                    ),
                ),
                limit: Some("max_concurrency"),
                retry_after_s: None,
            }),
            None => Ok(None),
        }
    }
}

/// A refusal as the HTTP response: the JSON error, with `WWW-Authenticate` or `Retry-After`.
fn refusal_response(refusal: Refusal) -> Response {
    let unauthorized = refusal.error.code == ErrorCode::Unauthorized;
    let mut resp = refusal.error.into_response();
    if unauthorized {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = refusal.retry_after_s {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// The bearer token of an `Authorization` header value (`Bearer <token>`).
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let rest = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer "))?;
    Some(rest.trim_ascii())
}

/// The middleware: the connection lane, auth, the per-key rate limit, the body (read in full
/// within its deadline), then the concurrency limit, so a slow upload never holds an inference
/// slot.
pub async fn guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let access = &st.access;
    if req.extensions().get::<Lane>() == Some(&Lane::Reserve) && !matches!(*req.method(), Method::GET | Method::HEAD) {
        st.metrics.requests_rejected.with_label_values(&["max_connections"]).inc();
        let mut resp = ApiError::new(
            ErrorCode::RateLimited,
            "server at its connection limit (KINFER_MAX_CONNECTIONS): connections over it answer only \
             GET requests such as health and metrics; retry later",
        )
        .into_response();
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        return resp;
    }
    if req.method() == Method::OPTIONS || !protected(req.uri().path()) {
        return next.run(req).await;
    }
    let token = req.headers().get(header::AUTHORIZATION).and_then(|v| bearer_token(v.as_bytes()));
    let api_key = req.headers().get("x-api-key").map(HeaderValue::as_bytes);
    if let Err(refusal) = access.check(token, api_key) {
        refusal.count(&st.metrics);
        return refusal_response(refusal);
    }
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let req = match read_body(req, st.max_body_bytes, st.body_timeout).await {
        Ok(req) => req,
        Err(e) => {
            let code = e.code;
            let mut resp = e.into_response();
            match code {
                ErrorCode::RequestTimeout => {
                    st.metrics.connections_shed.with_label_values(&["body_timeout"]).inc();
                    // The rest of the body may still come: the connection cannot be reused.
                    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                ErrorCode::PayloadTooLarge => {
                    st.metrics.requests_rejected.with_label_values(&["max_body_bytes"]).inc();
                }
                _ => {}
            }
            return resp;
        }
    };
    let _permit = match access.slot() {
        Ok(permit) => permit,
        Err(refusal) => {
            refusal.count(&st.metrics);
            return refusal_response(refusal);
        }
    };
    next.run(req).await
}

/// Reads the whole body (at most `max` bytes) within `deadline` and hands the request on with it.
pub(crate) async fn read_body(req: Request, max: usize, deadline: std::time::Duration) -> Result<Request, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body exceeds the limit of {max} bytes (KINFER_MAX_BODY_BYTES)"),
        )
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(deadline, Limited::new(body, max).collect()).await {
        Ok(Ok(collected)) => Ok(Request::from_parts(parts, Body::from(collected.to_bytes()))),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::invalid(format!("cannot read the request body: {e}"))),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request body did not arrive within {} ms (KINFER_BODY_TIMEOUT_MS); send the whole body \
                 at once, or raise the limit",
                deadline.as_millis()
            ),
        )),
    }
}

/// CORS for the configured origins (`*` or a comma-separated list); `None` when off.
pub fn cors_layer(origins: Option<&str>) -> Result<Option<CorsLayer>, String> {
    let Some(origins) = origins.map(str::trim).filter(|o| !o.is_empty()) else { return Ok(None) };
    let allow = if origins == "*" {
        AllowOrigin::any()
    } else {
        let list = origins
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(|o| HeaderValue::from_str(o).map_err(|_| format!("KINFER_CORS_ORIGINS: invalid origin {o:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("x-api-key"),
                header::HeaderName::from_static("inference-header-content-length"),
            ])
            .expose_headers([
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("inference-header-content-length"),
                header::HeaderName::from_static(crate::cache::HEADER),
            ])
            .max_age(std::time::Duration::from_secs(3600)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_from_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tokens");
        std::fs::write(&f, "# team tokens\nalpha\n\n beta \n").unwrap();
        let a = Access::new(Some("gamma, ,delta"), Some(&f), None, None, 0).unwrap();
        for t in ["alpha", "beta", "gamma", "delta"] {
            assert!(a.authorized(Some(t.as_bytes())), "{t}");
        }
        assert!(!a.authorized(Some(b"alph")));
        assert!(!a.authorized(None));
        assert!(Access::new(None, None, None, None, 0).unwrap().authorized(None));
        std::fs::write(&f, "# none\n").unwrap();
        assert!(Access::new(None, Some(&f), None, None, 0).unwrap_err().contains("holds no token"));
    }

    #[test]
    fn buckets_refill_per_key() {
        let r = RateLimiter::new(1000.0, 2.0);
        assert!(r.take(b"a").is_ok());
        assert!(r.take(b"a").is_ok());
        assert!(r.take(b"a").is_err());
        assert!(r.take(b"b").is_ok(), "keys are independent");
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(r.take(b"a").is_ok(), "refilled");
    }

    #[test]
    fn cors_origins_parse() {
        assert!(cors_layer(None).unwrap().is_none());
        assert!(cors_layer(Some("*")).unwrap().is_some());
        assert!(cors_layer(Some("https://a.example, https://b.example")).unwrap().is_some());
        assert!(cors_layer(Some("bad\norigin")).is_err());
    }
}
