//! `#/schedules`: a live server's schedules — cron, time zone, next firing
//! and the run the last firing queued (a static site has none to show).

use chrono::{DateTime, Utc};
use leptos::prelude::*;
use serde::Deserialize;

use super::{ErrorBox, Refresh};
use crate::fetch::{self, FetchError};
use crate::source::{Mode, Source};
use crate::status;

/// A schedule as `GET /api/v1/schedules` gives it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Schedule {
    name: String,
    repo: String,
    branch: String,
    cron: String,
    timezone: String,
    enabled: bool,
    catch_up: String,
    next: Option<DateTime<Utc>>,
    last_firing: Option<DateTime<Utc>>,
    last_run: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
struct Answer {
    schedules: Vec<Schedule>,
}

fn at(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|| "–".into())
}

#[component]
pub fn Schedules() -> impl IntoView {
    let source = expect_context::<Source>();
    let Refresh(refresh) = expect_context::<Refresh>();
    status::show_in_tab("Schedules", None);
    let crumbs =
        view! { <nav class="crumbs"><a href="#/">"Runs"</a>" / "<span>"Schedules"</span></nav> };
    if source.mode != Mode::Live {
        return view! {
            {crumbs}
            <h1>"Schedules"</h1>
            <p class="empty">"A live server (sentinel serve) shows its schedules here; a static site has none."</p>
        }
        .into_any();
    }
    let url = format!("{}/schedules", source.api.clone().unwrap_or_default());
    let list = RwSignal::new(None::<Vec<Schedule>>);
    let error = RwSignal::new(None::<FetchError>);
    Effect::new(move |_| {
        refresh.track();
        let url = url.clone();
        leptos::task::spawn_local(async move {
            match fetch::json::<Answer>(&url).await {
                Ok(a) => {
                    list.set(Some(a.schedules));
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    });
    view! {
        {crumbs}
        <h1>"Schedules"</h1>
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || match list.get() {
            None => view! { <p class="loading">"Loading…"</p> }.into_any(),
            Some(l) if l.is_empty() => view! {
                <p class="empty">"No schedules: [schedules.NAME] in the server's config adds one."</p>
            }.into_any(),
            Some(l) => view! {
                <table class="schedules">
                    <thead><tr><th>"Schedule"</th><th>"Repository"</th><th>"Cron"</th><th>"Time zone"</th><th>"Next"</th><th>"Last firing"</th><th>"Missed firings"</th></tr></thead>
                    <tbody>
                        {l.into_iter().map(|s| view! {
                            <tr class="schedule" data-schedule=s.name.clone()>
                                <td>{s.name.clone()}</td>
                                <td>{format!("{}@{}", s.repo, s.branch)}</td>
                                <td><code>{s.cron.clone()}</code></td>
                                <td>{s.timezone.clone()}</td>
                                <td class="next">{if s.enabled { at(s.next) } else { "disabled".into() }}</td>
                                <td>
                                    {at(s.last_firing)}
                                    {s.last_run.clone().map(|r| view! { " " <a href=format!("#/run/{r}")>"run"</a> })}
                                </td>
                                <td>{s.catch_up.clone()}</td>
                            </tr>
                        }).collect_view()}
                    </tbody>
                </table>
            }.into_any(),
        }}
    }
    .into_any()
}
