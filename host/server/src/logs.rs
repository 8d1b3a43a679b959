//! Stage logs and live streams: the full log (`…/log`, the published file,
//! or what a running stage wrote so far), a stage's log as Server-Sent
//! Events (`…/log/stream`: `log` events holding whole lines as a JSON
//! string, then one `end` event with the stage's status) and a run's events
//! (`…/events`: a `snapshot`, then `stage` and `run` events).

use std::convert::Infallible;
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use sentinel_api::{RunId, StageName, StageStatus, keys};
use sentinel_engine::ports::Store;
use sentinel_store::tokens::Scope;

use crate::live::{LogEvent, RunEvent};
use crate::runs::{St, parse_run_id};
use crate::{ApiError, AppState};

/// The most bytes of log lines in one event.
const CHUNK: usize = 64 * 1024;

fn parse_stage(s: &str) -> Result<StageName, ApiError> {
    s.parse().map_err(|e| ApiError::bad_request(format!("{e}")))
}

impl AppState {
    /// The published log of an ended stage: its bytes, or none when it
    /// printed nothing or has not ended. A stage that ended a moment ago is
    /// waited for until its files are published.
    async fn published_log(
        &self,
        run: &RunId,
        stage: &StageName,
    ) -> Result<Option<Vec<u8>>, ApiError> {
        self.live.published(run, stage).await;
        let doc = self
            .store
            .get_stages(run)
            .await
            .map_err(ApiError::internal)?
            .into_iter()
            .find(|d| &d.name == stage);
        let Some(doc) = doc else {
            return match self.store.get_run(run).await.map_err(ApiError::internal)? {
                Some(_) => Ok(None),
                None => Err(ApiError::not_found(format!("no run {run}"))),
            };
        };
        if doc.log.is_none() {
            return Ok(None);
        }
        let Some(dir) = &self.results_dir else {
            return Err(ApiError::not_found(
                "this server keeps no local results: read the log from the results bucket",
            ));
        };
        let path: PathBuf = dir.join(keys::stage_log(run, stage));
        match tokio::fs::read(&path).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::not_found(
                format!("the log of {run}/{stage} is not in the results folder"),
            )),
            Err(e) => Err(ApiError::internal(e)),
        }
    }
}

/// `GET /api/v1/runs/{id}/stages/{stage}/log`: text.
pub(crate) async fn log(
    State(s): St,
    headers: HeaderMap,
    Path((id, stage)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let (run, stage) = (parse_run_id(&id)?, parse_stage(&stage)?);
    let (body, partial) = match s.live.tail(&run, &stage) {
        Some(t) => (t.so_far, true),
        None => (
            s.published_log(&run, &stage).await?.unwrap_or_default(),
            false,
        ),
    };
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if partial {
        h.insert("x-sentinel-log", HeaderValue::from_static("partial"));
    }
    Ok(res)
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type EventStream = Sse<axum::response::sse::KeepAliveStream<Events>>;

fn sse(rx: mpsc::Receiver<Event>) -> EventStream {
    let stream =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(Box::pin(stream) as Events).keep_alive(KeepAlive::default())
}

/// Sends whole lines of `carry` (all of it when `flush`) as `log` events;
/// false when the client left.
async fn send_lines(tx: &mpsc::Sender<Event>, carry: &mut Vec<u8>, flush: bool) -> bool {
    let end = if flush {
        carry.len()
    } else {
        match carry.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None => return true,
        }
    };
    let ready: Vec<u8> = carry.drain(..end).collect();
    for chunk in chunks(&ready) {
        let text = String::from_utf8_lossy(chunk);
        let Ok(event) = Event::default().event("log").json_data(text) else {
            continue;
        };
        if tx.send(event).await.is_err() {
            return false;
        }
    }
    true
}

/// Splits at line ends into pieces of at most about [`CHUNK`] bytes.
fn chunks(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() > CHUNK {
        let cut = rest[..CHUNK]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(CHUNK, |i| i + 1);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

fn end_event(status: Option<StageStatus>) -> Event {
    Event::default()
        .event("end")
        .json_data(json!({ "status": status }))
        .unwrap_or_default()
}

/// `GET /api/v1/runs/{id}/stages/{stage}/log/stream`: SSE.
pub(crate) async fn log_stream(
    State(s): St,
    headers: HeaderMap,
    Path((id, stage)): Path<(String, String)>,
) -> Result<EventStream, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let (run, stage) = (parse_run_id(&id)?, parse_stage(&stage)?);
    let (tx, rx) = mpsc::channel(64);
    match s.live.tail(&run, &stage) {
        Some(tail) => {
            tokio::spawn(async move {
                if tail.dropped > 0 {
                    let note = Event::default()
                        .event("cut")
                        .json_data(json!({ "bytes": tail.dropped }))
                        .unwrap_or_default();
                    let _ = tx.send(note).await;
                }
                let mut carry = tail.so_far;
                let mut rx = tail.rx;
                loop {
                    if !send_lines(&tx, &mut carry, false).await {
                        return;
                    }
                    match rx.recv().await {
                        Ok(LogEvent::Bytes(b)) => carry.extend_from_slice(&b),
                        Ok(LogEvent::End(status)) => {
                            send_lines(&tx, &mut carry, true).await;
                            let _ = tx.send(end_event(Some(status))).await;
                            return;
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            let note = Event::default()
                                .event("lagged")
                                .json_data(json!({ "events": n }))
                                .unwrap_or_default();
                            let _ = tx.send(note).await;
                        }
                        Err(broadcast::error::RecvError::Closed) => {
                            send_lines(&tx, &mut carry, true).await;
                            let _ = tx.send(end_event(None)).await;
                            return;
                        }
                    }
                }
            });
        }
        None => {
            let mut body = s.published_log(&run, &stage).await?.unwrap_or_default();
            let status = s
                .store
                .get_stages(&run)
                .await
                .map_err(ApiError::internal)?
                .into_iter()
                .find(|d| d.name == stage)
                .map(|d| d.status);
            tokio::spawn(async move {
                if send_lines(&tx, &mut body, true).await {
                    let _ = tx.send(end_event(status)).await;
                }
            });
        }
    }
    Ok(sse(rx))
}

/// `GET /api/v1/runs/{id}/events`: SSE of a run's stage and run events.
pub(crate) async fn run_events(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<EventStream, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let run = parse_run_id(&id)?;
    // Subscribed before the snapshot is read: no event falls between.
    let live = s.live.events(&run);
    let doc = s.store.get_run(&run).await.map_err(ApiError::internal)?;
    let stages = s.store.get_stages(&run).await.map_err(ApiError::internal)?;
    if doc.is_none() && live.is_none() {
        return Err(ApiError::not_found(format!(
            "no run {run} (a queued run has events once it starts)"
        )));
    }
    let (tx, rx) = mpsc::channel(64);
    let snapshot = Event::default()
        .event("snapshot")
        .json_data(json!({
            "run": doc.map(|d| crate::runs::with_stages(d, &stages)),
            "stages": stages,
        }))
        .unwrap_or_default();
    tokio::spawn(async move {
        if tx.send(snapshot).await.is_err() {
            return;
        }
        let Some(mut live) = live else {
            return;
        };
        loop {
            match live.recv().await {
                Ok(ev) => {
                    let last = matches!(ev, RunEvent::Run { .. });
                    let name = match ev {
                        RunEvent::Stage { .. } => "stage",
                        RunEvent::Run { .. } => "run",
                    };
                    let Ok(event) = Event::default().event(name).json_data(&ev) else {
                        continue;
                    };
                    if tx.send(event).await.is_err() || last {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(sse(rx))
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cut_at_line_ends() {
        let line = "x".repeat(1000) + "\n";
        let text = line.repeat(200);
        let parts = chunks(text.as_bytes());
        assert!(parts.len() >= 3);
        assert_eq!(parts.concat(), text.as_bytes());
        for p in &parts[..parts.len() - 1] {
            assert!(p.ends_with(b"\n") && p.len() <= super::CHUNK);
        }
    }
}
