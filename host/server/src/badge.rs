//! `/badge/<pipeline>.svg`: the status of a pipeline's newest run as a
//! small SVG, public, for READMEs. Unknown pipelines get a grey "unknown".

use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use sentinel_api::RunStatus;

use crate::ApiError;
use crate::runs::St;

/// How far back to look for the pipeline's newest run.
const SCAN: usize = 5000;

fn colour(status: Option<RunStatus>) -> &'static str {
    match status {
        Some(RunStatus::Succeeded) => "#2da44e",
        Some(RunStatus::Failed | RunStatus::Interrupted) => "#cf222e",
        Some(RunStatus::Running | RunStatus::Queued) => "#bf8700",
        _ => "#6e7781",
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The badge's SVG.
pub fn svg(label: &str, status: Option<RunStatus>) -> String {
    let value = status.map_or("unknown", |s| s.as_str());
    // About 6.5 px per character of an 11 px sans-serif font.
    let w = |t: &str| 10 + (t.chars().count() as u32 * 13).div_ceil(2);
    let (lw, vw) = (w(label), w(value));
    let total = lw + vw;
    let (label, value_e) = (escape(label), escape(value));
    let fill = colour(status);
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{total}" height="20" role="img" aria-label="{label}: {value_e}"><title>{label}: {value_e}</title><rect width="{lw}" height="20" fill="#555"/><rect x="{lw}" width="{vw}" height="20" fill="{fill}"/><g fill="#fff" text-anchor="middle" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11"><text x="{lx}" y="14">{label}</text><text x="{vx}" y="14">{value_e}</text></g></svg>"##,
        lx = lw / 2,
        vx = lw + vw / 2,
    )
}

pub(crate) async fn badge(State(s): St, Path(file): Path<String>) -> Result<Response, ApiError> {
    let name = file
        .strip_suffix(".svg")
        .ok_or_else(|| ApiError::not_found("badges are /badge/<pipeline>.svg"))?
        .to_string();
    let store = s.store.clone();
    let n = name.clone();
    let last = tokio::task::spawn_blocking(move || store.last_run_of(&n, SCAN))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let mut res = svg(&name, last.map(|r| r.status)).into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("image/svg+xml"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0"),
    );
    Ok(res)
}
