//! `X-Request-Id` on every response: the request's own when it sent a
//! usable one (1–128 visible ASCII characters), else a new ULID. Handling
//! runs inside a `request` span carrying it, so every log line a request
//! causes names it; a server error (5xx) is logged with it.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

/// The header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request's id, when it is one we keep as it is.
fn given(req: &Request<Body>) -> Option<String> {
    let v = req.headers().get(&X_REQUEST_ID)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| v.to_string())
}

/// The middleware.
pub async fn request_id(mut req: Request<Body>, next: Next) -> Response {
    let id = given(&req).unwrap_or_else(|| ulid::Ulid::new().to_string());
    let value = HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("invalid"));
    req.headers_mut().insert(X_REQUEST_ID, value.clone());
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status();
    if status.is_server_error() {
        tracing::warn!(parent: &span, status = status.as_u16(), "request failed");
    } else {
        tracing::debug!(parent: &span, status = status.as_u16(), "request");
    }
    res.headers_mut().insert(X_REQUEST_ID, value);
    res
}
