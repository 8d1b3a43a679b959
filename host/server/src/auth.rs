//! Who is calling: a bearer token (checked in constant time by the store),
//! or — for reads only — the session cookie a browser got from
//! `POST /api/v1/session`, so an `EventSource` (which cannot send headers)
//! streams logs without a token in its URL. Each token has its own rate
//! limit (a token bucket).

use std::num::NonZeroU32;

use axum::http::{HeaderMap, header};
use governor::{DefaultKeyedRateLimiter, Quota};
use sentinel_store::tokens::{Scope, TokenInfo};

use crate::{ApiError, AppState, RateLimit};

/// The cookie that carries a browser's token (HttpOnly, SameSite=Strict).
pub const SESSION_COOKIE: &str = "sentinel_session";

/// The caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token used; none for a public read.
    pub token: Option<TokenInfo>,
}

impl Caller {
    /// A name for the records (`Trigger.by`).
    pub fn name(&self) -> Option<String> {
        self.token.as_ref().map(|t| format!("token:{}", t.name))
    }
}

/// Rate limits, one bucket per token id.
pub(crate) struct Limiter {
    inner: DefaultKeyedRateLimiter<String>,
    per_second: u32,
}

impl Limiter {
    pub(crate) fn new(rate: RateLimit) -> Self {
        let per_second = NonZeroU32::new(rate.per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            inner: governor::RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            per_second: rate.per_second.max(1),
        }
    }

    fn check(&self, token_id: &str) -> Result<(), ApiError> {
        if self.inner.check_key(&token_id.to_string()).is_ok() {
            return Ok(());
        }
        Err(ApiError::too_many(format!(
            "token `{token_id}` is over its rate limit ({} requests per second)",
            self.per_second
        )))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The session cookie's token, if the request has one.
fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.trim())
}

impl AppState {
    /// Checks the caller against the scope `need` and its rate limit.
    pub fn authorize(&self, headers: &HeaderMap, need: Scope) -> Result<Caller, ApiError> {
        let presented = match bearer(headers) {
            Some(t) => Some(t),
            // A cookie rides along with any request the browser makes, so it
            // is good for reads only: a forged form cannot trigger a run.
            None if need == Scope::Read => cookie(headers),
            None => None,
        };
        let Some(token) = presented else {
            if need == Scope::Read && self.config.public_read {
                return Ok(Caller { token: None });
            }
            return Err(ApiError::unauthorized("a bearer token is required"));
        };
        let info = self
            .store
            .verify_token(token)
            .map_err(ApiError::internal)?
            .ok_or_else(|| ApiError::unauthorized("the token is not valid"))?;
        if info.scope < need {
            return Err(ApiError::forbidden(format!(
                "token `{}` has scope {:?}; this needs {need:?}",
                info.id, info.scope
            )));
        }
        self.limiter.check(&info.id)?;
        Ok(Caller { token: Some(info) })
    }
}
