//! http: one HTTP request — method, URL, headers, a body from a setting or
//! a workspace file, a bearer token — checked against the expected
//! statuses; the response body is the step's output (its stdout) and its
//! status the named output `status`. 5xx answers and connection errors are
//! tried again `retries` times; redirects are never followed (only the
//! URL's host and port are reachable anyway).

use sentinel_step::{Error, Step, fail, redirect_refused};
use serde::Deserialize;
use wstd::http::{Body, Client, HeaderName, HeaderValue, Method, Request};
use wstd::time::Duration;

#[derive(Deserialize)]
struct Settings {
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_file: Option<String>,
    #[serde(default)]
    expect: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    retries: Option<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Statuses accepted: `200,201`, `200-299`.
fn expected(spec: &str) -> Result<Vec<(u16, u16)>, Error> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|part| {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                (Ok(a), Ok(b)) if (100..=599).contains(&a) && a <= b && b <= 599 => Ok((a, b)),
                _ => Err(fail(format!(
                    "`expect`: `{part}` is not a status or a range of statuses"
                ))),
            }
        })
        .collect()
}

fn number(name: &str, v: Option<&str>, default: u64) -> Result<u64, Error> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| fail(format!("`{name}`: `{v}` is not a whole number"))),
    }
}

/// One attempt's request.
fn request(s: &Settings, method: &Method, body: &[u8]) -> Result<Request<Body>, Error> {
    let mut request = Request::builder()
        .method(method.clone())
        .uri(s.url.as_str())
        .body(Body::from(body.to_vec()))
        .map_err(|e| fail(format!("invalid request to `{}`: {e}", s.url)))?;
    let headers = request.headers_mut();
    headers.insert("User-Agent", HeaderValue::from_static("sentinel-http/1.0"));
    for line in s.headers.as_deref().unwrap_or("").lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| fail(format!("`headers`: `{line}` is not `Name: value`")))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| fail(format!("`headers`: `{}` is not a header name", name.trim())))?;
        let value = HeaderValue::from_str(value.trim()).map_err(|_| {
            fail(format!(
                "`headers`: the value of `{name}` is not a header value"
            ))
        })?;
        headers.append(name, value);
    }
    if let Some(token) = s.token.as_deref().filter(|t| !t.is_empty()) {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| fail("`token` holds characters a header cannot"))?;
        headers.insert("Authorization", value);
    }
    Ok(request)
}

async fn call(step: &Step) -> Result<(), Error> {
    let s: Settings = step.settings()?;
    let method_name = s
        .method
        .as_deref()
        .unwrap_or("GET")
        .trim()
        .to_ascii_uppercase();
    let method = match method_name.as_str() {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" => {
            Method::from_bytes(method_name.as_bytes())
                .map_err(|_| fail(format!("unknown method `{method_name}`")))?
        }
        other => {
            return Err(fail(format!(
                "unknown method `{other}`: use GET, POST, PUT, PATCH, DELETE or HEAD"
            )));
        }
    };
    let expect = expected(s.expect.as_deref().unwrap_or("200-299"))?;
    let timeout = number("timeout", s.timeout.as_deref(), 30)?;
    let retries = number("retries", s.retries.as_deref(), 0)?;
    let body = match s.body_file.as_deref().filter(|f| !f.is_empty()) {
        Some(f) => std::fs::read(step.workspace_path(f))
            .map_err(|e| fail(format!("`body_file`: cannot read `{f}`: {e}")))?,
        None => s.body.clone().unwrap_or_default().into_bytes(),
    };
    let mut client = Client::new();
    client.set_connect_timeout(Duration::from_secs(timeout));
    client.set_first_byte_timeout(Duration::from_secs(timeout));
    let mut attempt = 0;
    loop {
        let last = attempt >= retries;
        let answer = client.send(request(&s, &method, &body)?).await;
        let mut response = match answer {
            Ok(r) => r,
            Err(e) if !last => {
                step.log(format!("{method_name} {}: {e}; trying again", s.url));
                wstd::task::sleep(Duration::from_secs(1 << attempt.min(5))).await;
                attempt += 1;
                continue;
            }
            Err(e) => return Err(fail(format!("{method_name} {}: {e}", s.url))),
        };
        let status = response.status();
        if status.is_server_error() && !last {
            step.log(format!("{method_name} {}: {status}; trying again", s.url));
            wstd::task::sleep(Duration::from_secs(1 << attempt.min(5))).await;
            attempt += 1;
            continue;
        }
        let text = response
            .body_mut()
            .contents()
            .await
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .map_err(|e| {
                fail(format!(
                    "{method_name} {}: the answer could not be read: {e}",
                    s.url
                ))
            })?;
        step.set_output("status", status.as_str())?;
        if status.is_redirection() {
            let to = response
                .headers()
                .get("Location")
                .and_then(|l| l.to_str().ok());
            let who = format!("{method_name} {}", s.url);
            return Err(redirect_refused(&who, status, to));
        }
        let code = status.as_u16();
        if !expect.iter().any(|(a, b)| (*a..=*b).contains(&code)) {
            let head: String = text.chars().take(500).collect();
            return Err(fail(format!(
                "{method_name} {} answered {status}: {head}",
                s.url
            )));
        }
        print!("{text}");
        return Ok(());
    }
}

#[wstd::main]
async fn main() {
    let step = Step::current();
    if let Err(e) = call(&step).await {
        eprintln!("http: {e}");
        std::process::exit(1);
    }
}
