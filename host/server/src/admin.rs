//! Admin endpoints: tokens (`/api/v1/tokens`) and run secrets
//! (`/api/v1/secrets`, names only on the way out), plus the browser
//! session (`/api/v1/session`): a cookie holding the caller's token,
//! HttpOnly and SameSite=Strict (and Secure behind a TLS proxy that says
//! `X-Forwarded-Proto: https`), honoured for reads only.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use sentinel_store::tokens::Scope;

use crate::ApiError;
use crate::auth::SESSION_COOKIE;
use crate::runs::St;

/// A token's record without its hash.
fn view(t: &sentinel_store::tokens::TokenInfo) -> Value {
    json!({ "id": t.id, "name": t.name, "scope": t.scope, "created": t.created })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewToken {
    name: String,
    scope: Scope,
}

pub(crate) async fn list_tokens(State(s): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Admin)?;
    let tokens: Vec<Value> = s
        .store
        .tokens()
        .map_err(ApiError::internal)?
        .iter()
        .map(view)
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

pub(crate) async fn create_token(
    State(s): St,
    headers: HeaderMap,
    body: Result<Json<NewToken>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    s.authorize(&headers, Scope::Admin)?;
    let Json(req) = body?;
    let (token, info) = s
        .store
        .create_token(&req.name, req.scope)
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "info": view(&info) })),
    ))
}

pub(crate) async fn revoke_token(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.authorize(&headers, Scope::Admin)?;
    match s
        .store
        .revoke_token(&id)
        .await
        .map_err(ApiError::internal)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("no token {id}"))),
    }
}

pub(crate) async fn list_secrets(
    State(s): St,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Admin)?;
    let names = s.store.secret_names().map_err(ApiError::internal)?;
    Ok(Json(json!({ "secrets": names })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretValue {
    value: String,
}

pub(crate) async fn put_secret(
    State(s): St,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<SecretValue>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    s.authorize(&headers, Scope::Admin)?;
    crate::runs::check_name("secret", &name)?;
    let Json(v) = body?;
    let key = s.secrets_key.as_ref().ok_or_else(|| {
        ApiError::conflict(
            "this server has no secrets key (secrets_key_file or SENTINEL_SECRETS_KEY)",
        )
    })?;
    s.store
        .put_secret(key, &name, &v.value)
        .await
        .map_err(ApiError::internal)?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn delete_secret(
    State(s): St,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.authorize(&headers, Scope::Admin)?;
    match s
        .store
        .remove_secret(&name)
        .await
        .map_err(ApiError::internal)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found(format!("no secret {name}"))),
    }
}

/// `POST /api/v1/session`: the bearer token becomes a cookie.
pub(crate) async fn open_session(State(s): St, headers: HeaderMap) -> Result<Response, ApiError> {
    let caller = s.authorize(&headers, Scope::Read)?;
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|_| caller.token.is_some())
        .ok_or_else(|| ApiError::unauthorized("a bearer token is required"))?;
    // Behind a TLS proxy the cookie never travels in the clear. (A forged
    // header can only make the cookie stricter.)
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let cookie = format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200{}",
        if secure { "; Secure" } else { "" }
    );
    let mut res = (StatusCode::NO_CONTENT, ()).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).map_err(ApiError::internal)?,
    );
    Ok(res)
}

/// `DELETE /api/v1/session`: forgets the cookie.
pub(crate) async fn close_session() -> Response {
    let mut res = (StatusCode::NO_CONTENT, ()).into_response();
    res.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("sentinel_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    res
}
