//! Rate limits per caller: GCRA in the key-value store (Redis, so every
//! gateway replica spends the same budget; in memory in `dev`). A route
//! either has its own limit (`gateway_rate_limits`) or spends the caller's
//! shared `*` budget. Every limited answer carries `RateLimit-Limit`,
//! `RateLimit-Remaining`, `RateLimit-Reset` and `RateLimit-Policy`; a refusal
//! is 429 with `Retry-After`. When the store cannot be reached requests
//! are let through: an outage of the limiter must not become an outage of
//! the API.

use http::{HeaderMap, HeaderValue};
use postmesh_kit::config::RateLimits;
use postmesh_kit::kv::{Kv, RateDecision, RateLimit};

use crate::errors::{GatewayError, retry_seconds};
use postmesh_transcoder::routes::Route;

/// Applies `gateway_rate_limits`.
pub struct Limiter {
    kv: Kv,
    limits: RateLimits,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy)]
pub struct Verdict {
    limit: RateLimit,
    decision: RateDecision,
}

impl Verdict {
    /// The `RateLimit-*` headers.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        let reset = retry_seconds(self.decision.reset_after).min(self.limit.period.as_secs().max(1));
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.decision.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(reset));
        if let Ok(policy) =
            HeaderValue::from_str(&format!("{};w={}", self.limit.limit, self.limit.period.as_secs().max(1)))
        {
            headers.insert("ratelimit-policy", policy);
        }
    }

    /// The 429 answer, when the request was refused.
    pub fn refusal(&self) -> Option<GatewayError> {
        if self.decision.allowed {
            return None;
        }
        let mut error = GatewayError::rate_limited(self.decision.retry_after);
        let mut headers = HeaderMap::new();
        self.write_headers(&mut headers);
        for (name, value) in &headers {
            error = error.with_header(name.clone(), value.clone());
        }
        Some(error)
    }
}

impl Limiter {
    /// A limiter over `kv`.
    pub fn new(kv: Kv, limits: RateLimits) -> Self {
        Self { kv, limits }
    }

    /// Spends one request of `principal`'s budget for `route`; `None` when
    /// the route is not limited (or the store is unreachable).
    pub async fn check(&self, route: &Route, principal: &str) -> Option<Verdict> {
        let (bucket, limit) = match self.limits.route(route.method.as_str(), route.template.as_str()) {
            Some(None) => return None,
            Some(Some(limit)) => (format!("{} {}", route.method, route.template.as_str()), limit),
            None => ("*".to_owned(), self.limits.default_limit()?),
        };
        let key = format!("gateway:ratelimit:{bucket}:{principal}");
        match self.kv.rate_limit(&key, limit).await {
            Ok(decision) => Some(Verdict { limit, decision }),
            Err(err) => {
                tracing::warn!(error = %err, "rate limiter unavailable; letting the request through");
                metrics::counter!("postmesh_gateway_rate_limiter_errors_total").increment(1);
                None
            }
        }
    }
}
