//! Schedules (`[schedules.NAME]` in the server's config): runs of a
//! repository's branch at the times of a cron expression (5 fields, or
//! `@daily`-style names) in an IANA time zone. Daylight-saving time: a
//! fixed time in the spring-forward gap fires at the first time after it,
//! the same day; one in the autumn's repeated hour fires once, at its
//! first occurrence. Each firing queues its run with an idempotency key
//! (the schedule and the firing's time), so a restart or two passes never
//! fire it twice; the next firing is stored. Firings missed while the
//! server was down follow `catch_up`: `latest` (the default) runs the
//! newest of them once, `none` runs none.

mod config;

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use sentinel_api::{Trigger, TriggerKind};
use sentinel_store::schedules::ScheduleState;
use sentinel_store::tokens::Scope;

pub use config::{CatchUp, Schedule, ScheduleConfig};

use crate::runs::{RunSpec, St};
use crate::{ApiError, AppState};

/// The most firings one pass looks through (a schedule down for longer
/// than this many firings still runs its newest once, under `latest`).
const MOST_FIRINGS: usize = 100_000;

/// Runs the schedules until `stop`: a pass every second (every 100 ms
/// while a test moves the clock).
pub async fn run(state: AppState, stop: tokio_util::sync::CancellationToken) {
    if state.schedules.is_empty() {
        return;
    }
    let started = crate::clock::now();
    let every = if crate::clock::is_test_clock() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    loop {
        let now = crate::clock::now();
        for s in state.schedules.iter().filter(|s| s.config.enabled) {
            if let Err(e) = pass(&state, s, started, now).await {
                tracing::warn!(schedule = %s.name, "{e}");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One look at schedule `s` at `now`: queues the firing due, if one is,
/// and stores the next. `started`: when this server started (a firing
/// before it was missed while the server was down).
pub async fn pass(
    state: &AppState,
    s: &Schedule,
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), String> {
    let pattern = s.pattern();
    let known = state
        .store
        .schedule_state(&s.name)
        .map_err(|e| e.to_string())?
        .filter(|st| st.pattern == pattern);
    let Some(known) = known else {
        // New (or changed): it fires from now on.
        let next = s.next_after(now).ok_or("its cron expression never fires")?;
        let st = ScheduleState {
            pattern,
            next,
            last_firing: None,
            last_run: None,
        };
        return state
            .store
            .put_schedule_state(&s.name, &st)
            .await
            .map_err(|e| e.to_string());
    };
    if known.next > now {
        return Ok(());
    }
    // The firings due: from the stored next one up to now.
    let mut due = vec![known.next];
    while due.len() < MOST_FIRINGS {
        match s.next_after(*due.last().unwrap_or(&known.next)) {
            Some(t) if t <= now => due.push(t),
            _ => break,
        }
    }
    let pick = match s.config.catch_up {
        CatchUp::Latest => due.last().copied(),
        CatchUp::None => due.iter().rev().find(|t| **t >= started).copied(),
    };
    let mut st = ScheduleState {
        next: s
            .next_after(now)
            .ok_or("its cron expression never fires again")?,
        ..known
    };
    if let Some(firing) = pick {
        st.last_run = Some(fire(state, s, firing).await?);
        st.last_firing = Some(firing);
    }
    let skipped = due.len() - usize::from(pick.is_some());
    if skipped > 0 {
        tracing::info!(schedule = %s.name, skipped, catch_up = ?s.config.catch_up, "firings missed while the server was down were not run");
    }
    state
        .store
        .put_schedule_state(&s.name, &st)
        .await
        .map_err(|e| e.to_string())
}

/// Queues the run of `s`'s firing at `firing`, once: its run's id.
async fn fire(
    state: &AppState,
    s: &Schedule,
    firing: DateTime<Utc>,
) -> Result<sentinel_api::RunId, String> {
    let spec = RunSpec {
        repo: s.config.repo.clone(),
        pipeline: s.config.pipeline.clone(),
        git_ref: s.config.branch.clone(),
        branch: Some(s.config.branch.clone()),
        env: s.config.env.clone(),
        ..RunSpec::default()
    };
    let at = firing.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let entry = state.entry(
        &spec,
        Trigger {
            kind: TriggerKind::Schedule,
            by: Some(format!("schedule {} at {at}", s.name)),
        },
    );
    let key = format!("schedule:{}:{at}", s.name);
    let (id, fresh) = state
        .store
        .enqueue_once(&key, &entry)
        .await
        .map_err(|e| e.to_string())?;
    if fresh {
        state.metrics.accepted(&id, entry.enqueued);
        state.control.queued();
        tracing::info!(schedule = %s.name, firing = %at, run = %id, "scheduled run queued");
    }
    Ok(id)
}

/// `GET /api/v1/schedules`: each schedule with its next firing and the
/// last one that queued a run.
pub(crate) async fn list(State(s): St, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    s.authorize(&headers, Scope::Read)?;
    let mut out = Vec::new();
    for sc in s.schedules.iter() {
        let st = s
            .store
            .schedule_state(&sc.name)
            .map_err(ApiError::internal)?;
        let st = st.filter(|st| st.pattern == sc.pattern());
        out.push(json!({
            "name": sc.name,
            "repo": sc.config.repo,
            "branch": sc.config.branch,
            "cron": sc.config.cron,
            "timezone": sc.config.timezone,
            "enabled": sc.config.enabled,
            "catch_up": sc.config.catch_up,
            "next": st.as_ref().map(|st| st.next),
            "last_firing": st.as_ref().and_then(|st| st.last_firing),
            "last_run": st.as_ref().and_then(|st| st.last_run.clone()),
        }));
    }
    Ok(Json(json!({ "schedules": out })))
}

/// The schedules of a server, checked.
pub type Schedules = Arc<Vec<Schedule>>;
