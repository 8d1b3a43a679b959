//! notify: POSTs a JSON message about the run — pipeline, run id, status so
//! far, failed stages, a link — to a webhook. `format: slack` sends
//! `{"text": …}`; `generic` sends the fields. Redirects are not followed.

use sentinel_step::{Error, Step, fail, redirect_refused};
use serde::Deserialize;
use wstd::http::{Body, Client, HeaderValue, Request};

#[derive(Deserialize)]
struct Settings {
    url: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    link: Option<String>,
}

fn payload(step: &Step, s: &Settings) -> Result<serde_json::Value, Error> {
    let ctx = |k: &str| step.context(k).unwrap_or_default();
    let status = step
        .context("RUN_STATUS")
        .unwrap_or_else(|| "running".into());
    let failed: Vec<String> = ctx("FAILED_STAGES")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    let message = s.message.clone().filter(|m| !m.is_empty());
    let link = s.link.clone().filter(|l| !l.is_empty());
    match s.format.as_deref().unwrap_or("generic") {
        "generic" => Ok(serde_json::json!({
            "pipeline": ctx("PIPELINE"),
            "run_id": ctx("RUN_ID"),
            "status": status,
            "failed_stages": failed,
            "message": message,
            "link": link,
        })),
        "slack" => {
            let mut text = format!("*{}* run `{}`: {status}", ctx("PIPELINE"), ctx("RUN_ID"));
            if !failed.is_empty() {
                text.push_str(&format!(" (failed: {})", failed.join(", ")));
            }
            if let Some(m) = message {
                text.push_str(&format!("\n{m}"));
            }
            if let Some(l) = link {
                text.push_str(&format!("\n<{l}|results>"));
            }
            Ok(serde_json::json!({ "text": text }))
        }
        other => Err(fail(format!(
            "unknown format `{other}`: use `slack` or `generic`"
        ))),
    }
}

async fn notify(step: &Step) -> Result<(), Error> {
    let s: Settings = step.settings()?;
    let body = payload(step, &s)?;
    let mut request = Request::post(s.url.as_str())
        .body(Body::from_json(&body).map_err(|e| fail(e.to_string()))?)
        .map_err(|e| fail(format!("invalid webhook URL: {e}")))?;
    let headers = request.headers_mut();
    headers.insert("Content-Type", HeaderValue::from_static("application/json"));
    headers.insert(
        "User-Agent",
        HeaderValue::from_static("sentinel-notify/1.0"),
    );
    let response = Client::new()
        .send(request)
        .await
        .map_err(|e| fail(format!("the webhook could not be reached: {e}")))?;
    let status = response.status();
    if status.is_redirection() {
        let to = response
            .headers()
            .get("Location")
            .and_then(|l| l.to_str().ok());
        return Err(redirect_refused("the webhook", status, to));
    }
    if !status.is_success() {
        let mut body = response.into_body();
        let text = body
            .str_contents()
            .await
            .map(|t| t.chars().take(200).collect::<String>())
            .unwrap_or_default();
        return Err(fail(format!("the webhook answered {status}: {text}")));
    }
    println!("notified: {status}");
    Ok(())
}

#[wstd::main]
async fn main() {
    let step = Step::current();
    if let Err(e) = notify(&step).await {
        eprintln!("notify: {e}");
        std::process::exit(1);
    }
}
