//! Reading over HTTP with errors that say what failed and where: the URL
//! and the status (404, 403…), a network or CORS failure, or a document
//! that is not the JSON expected. Nothing is swallowed into an empty page.

use serde::de::DeserializeOwned;

/// A failed read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchError {
    pub url: String,
    pub what: String,
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.url, self.what)
    }
}

fn err(url: &str, what: impl Into<String>) -> FetchError {
    FetchError {
        url: url.to_string(),
        what: what.into(),
    }
}

fn status_text(code: u16) -> &'static str {
    match code {
        401 => "401 Unauthorized — sign in with a token",
        403 => "403 Forbidden — the bucket or server refuses to show it",
        404 => "404 Not Found",
        429 => "429 Too Many Requests",
        500..=599 => "a server error",
        _ => "an unexpected answer",
    }
}

/// GETs `url` as text; `Ok(None)` for a 404 when `missing_ok`.
async fn get(url: &str, missing_ok: bool) -> Result<Option<String>, FetchError> {
    // Never from the browser's cache: a document changes while a run goes,
    // and a heuristic freshness (or a revalidation by a modification time
    // that counts whole seconds) would show an ended run as still going.
    let res = gloo_net::http::Request::get(url)
        .cache(web_sys::RequestCache::NoStore)
        .send()
        .await
        .map_err(|e| {
            err(
                url,
                format!("the request failed (network, CORS or an unreachable host): {e}"),
            )
        })?;
    let code = res.status();
    if code == 404 && missing_ok {
        return Ok(None);
    }
    if !(200..300).contains(&code) {
        let mut what = format!("HTTP {code}: {}", status_text(code));
        if let Ok(body) = res.text().await
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
            && let Some(m) = v["error"].as_str()
        {
            what.push_str(&format!(" ({m})"));
        }
        return Err(err(url, what));
    }
    res.text()
        .await
        .map(Some)
        .map_err(|e| err(url, format!("the body could not be read: {e}")))
}

/// GETs and parses a JSON document.
pub async fn json<T: DeserializeOwned>(url: &str) -> Result<T, FetchError> {
    let text = get(url, false).await?.unwrap_or_default();
    parse(url, &text)
}

/// Like [`json`], with `None` for a 404.
pub async fn json_opt<T: DeserializeOwned>(url: &str) -> Result<Option<T>, FetchError> {
    match get(url, true).await? {
        Some(text) => parse(url, &text).map(Some),
        None => Ok(None),
    }
}

/// GETs a Sentinel document, checking its `schema` before anything else:
/// a document of a schema this app does not read is a clear error.
pub async fn doc<T: DeserializeOwned>(url: &str, reads: &[u64]) -> Result<T, FetchError> {
    let text = get(url, false).await?.unwrap_or_default();
    checked(url, &text, reads)
}

/// Like [`doc`], with `None` for a 404.
pub async fn doc_opt<T: DeserializeOwned>(
    url: &str,
    reads: &[u64],
) -> Result<Option<T>, FetchError> {
    match get(url, true).await? {
        Some(text) => checked(url, &text, reads).map(Some),
        None => Ok(None),
    }
}

/// GETs a text file, with `None` for a 404.
pub async fn text_opt(url: &str) -> Result<Option<String>, FetchError> {
    get(url, true).await
}

fn checked<T: DeserializeOwned>(url: &str, text: &str, reads: &[u64]) -> Result<T, FetchError> {
    sentinel_api::decode(text.as_bytes(), url, reads).map_err(|e| err(url, e.to_string()))
}

/// GETs a text file (a log).
pub async fn text(url: &str) -> Result<String, FetchError> {
    Ok(get(url, false).await?.unwrap_or_default())
}

fn parse<T: DeserializeOwned>(url: &str, text: &str) -> Result<T, FetchError> {
    serde_json::from_str(text).map_err(|e| err(url, format!("not the JSON expected: {e}")))
}

/// POSTs to the API with a bearer token; returns the JSON answer.
pub async fn post(
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, FetchError> {
    let req =
        gloo_net::http::Request::post(url).header("Authorization", &format!("Bearer {token}"));
    let sent = match body {
        Some(b) => {
            req.json(&b)
                .map_err(|e| err(url, e.to_string()))?
                .send()
                .await
        }
        None => req.send().await,
    }
    .map_err(|e| err(url, format!("the request failed: {e}")))?;
    let code = sent.status();
    let text = sent.text().await.unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    if !(200..300).contains(&code) {
        let m = v["error"].as_str().unwrap_or(status_text(code)).to_string();
        return Err(err(url, format!("HTTP {code}: {m}")));
    }
    Ok(v)
}
