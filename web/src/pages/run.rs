//! A run: its status and reason, trigger and git context, the DAG, a
//! timeline of its stages; live updates over SSE when the server is the
//! source, and cancel / re-run for a signed-in user.

use leptos::prelude::*;
use sentinel_api::{RunDoc, keys};

use super::{ErrorBox, Refresh, Token};
use crate::dag::{Dag, Node};
use crate::fetch::{self, FetchError};
use crate::live;
use crate::route::Route;
use crate::source::{Mode, Source};
use crate::status;

/// Closes a stream once the current event is handled (a stream must not be
/// dropped from inside its own handler).
fn close_soon(stream: StoredValue<Option<live::Stream>, LocalStorage>) {
    set_timeout(move || stream.set_value(None), std::time::Duration::ZERO);
}

#[component]
pub fn RunPage(id: String) -> impl IntoView {
    let source = expect_context::<Source>();
    let Refresh(refresh) = expect_context::<Refresh>();
    let run = RwSignal::new(None::<RunDoc>);
    let error = RwSignal::new(None::<FetchError>);
    let run_id = match id.parse::<sentinel_api::RunId>() {
        Ok(r) => r,
        Err(e) => {
            let error = FetchError {
                url: Route::Run(id).href(),
                what: e.to_string(),
            };
            return view! { <ErrorBox error=error /> }.into_any();
        }
    };
    let url = source.url(&keys::run_doc(&run_id));
    let reload = {
        let url = url.clone();
        move || {
            let url = url.clone();
            leptos::task::spawn_local(async move {
                match fetch::doc::<RunDoc>(&url, &[u64::from(sentinel_api::SCHEMA_VERSION)]).await {
                    Ok(r) => {
                        // A read that started before the run ended must not
                        // undo what a live event already said.
                        run.update(|cur| {
                            let ended = cur.as_ref().is_some_and(|c| c.status.is_final());
                            if !ended || r.status.is_final() {
                                *cur = Some(r);
                            }
                        });
                        error.set(None);
                    }
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    {
        let reload = reload.clone();
        Effect::new(move |_| {
            refresh.track();
            reload();
        });
    }
    // Live: stage and run events while it goes.
    let stream = StoredValue::new_local(None::<live::Stream>);
    if source.mode == Mode::Live {
        let url = format!(
            "{}/runs/{id}/events",
            source.api.clone().unwrap_or_default()
        );
        let reload2 = reload.clone();
        let handlers = move || -> Vec<(&'static str, live::Handler)> {
            let reload2 = reload2.clone();
            vec![
                (
                    "stage",
                    Box::new(move |data: String| {
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
                            return;
                        };
                        run.update(|r| {
                            let Some(r) = r else { return };
                            if let Some(e) =
                                r.stages.iter_mut().find(|s| s.name.as_str() == v["name"])
                            {
                                if let Ok(s) = serde_json::from_value(v["status"].clone()) {
                                    e.status = s;
                                }
                                e.duration_ms = v["duration_ms"].as_u64().or(e.duration_ms);
                            }
                        });
                    }),
                ),
                (
                    "run",
                    Box::new(move |_| {
                        reload2();
                        close_soon(stream);
                    }),
                ),
                (
                    // The state when the stream opened: an ended run sends only this.
                    "snapshot",
                    Box::new(move |data: String| {
                        let Ok(v) = serde_json::from_str::<serde_json::Value>(&data) else {
                            return;
                        };
                        if let Ok(doc) = serde_json::from_value::<RunDoc>(v["run"].clone()) {
                            let ended = doc.status.is_final();
                            run.set(Some(doc));
                            if ended {
                                close_soon(stream);
                            }
                        }
                    }),
                ),
            ]
        };
        let open = move || stream.set_value(live::open(&url, handlers()));
        open();
        // A run still queued has no document and no events yet: look again
        // each second until it has, then follow it.
        let reload3 = reload.clone();
        let tick = set_interval_with_handle(
            move || {
                let now = run.get_untracked();
                let closed = stream.with_value(|s| s.as_ref().is_none_or(|s| s.is_closed()));
                if now.is_none() {
                    reload3();
                }
                if closed && now.as_ref().is_none_or(|r| !r.status.is_final()) {
                    open();
                }
            },
            std::time::Duration::from_secs(1),
        )
        .ok();
        on_cleanup(move || {
            if let Some(t) = tick {
                t.clear();
            }
            stream.set_value(None);
        });
    }
    Effect::new(move |_| {
        if let Some(r) = run.get() {
            let st = r.status.as_str();
            status::show_in_tab(
                &format!("{} {} · {}", status::symbol(st), r.pipeline, st),
                Some(st),
            );
        }
    });
    view! {
        <nav class="crumbs"><a href="#/">"Runs"</a>" / "<span>{id.clone()}</span></nav>
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || run.get().map(|r| view! { <RunView run=r /> })}
        {move || (run.get().is_none() && error.get().is_none()).then(|| view! { <p class="loading">"Loading…"</p> })}
    }
    .into_any()
}

#[component]
fn RunView(run: RunDoc) -> impl IntoView {
    let source = expect_context::<Source>();
    let Token(token) = expect_context::<Token>();
    let st = run.status.as_str();
    let id = run.id.to_string();
    let nodes: Vec<Node> = run
        .stages
        .iter()
        .map(|s| Node {
            name: s.name.to_string(),
            status: s.status.as_str().to_string(),
            needs: s.needs.iter().map(|n| n.to_string()).collect(),
            duration_ms: s.duration_ms,
        })
        .collect();
    let git = run.git.clone().unwrap_or_default();
    let trigger = format!(
        "{:?}{}",
        run.trigger.kind,
        run.trigger
            .by
            .as_ref()
            .map(|b| format!(" by {b}"))
            .unwrap_or_default()
    )
    .to_lowercase();
    // The timeline: each stage's span within the run.
    // A run going spans until now (this render; the next event redraws it).
    let t0 = run.started.unwrap_or(run.created);
    let now = (!run.status.is_final()).then(status::now);
    let end = run
        .stages
        .iter()
        .flat_map(|s| [s.started, s.finished])
        .flatten()
        .chain(run.finished)
        .chain(now)
        .max()
        .unwrap_or(t0)
        .max(t0);
    let total = ((end - t0).num_milliseconds().max(1)) as f64;
    let bars = run
        .stages
        .iter()
        .map(|s| {
            let name = s.name.to_string();
            let (left, width) = match s.started {
                Some(start) => {
                    let stop = s.finished.unwrap_or(end);
                    let l = (start - t0).num_milliseconds().max(0) as f64 / total * 100.0;
                    let w = ((stop - start).num_milliseconds().max(0) as f64 / total * 100.0).max(0.5);
                    (l, w)
                }
                None => (0.0, 0.0),
            };
            let href = Route::Stage {
                run: run.id.to_string(),
                stage: name.clone(),
                line: None,
            }
            .href();
            let sst = s.status.as_str();
            view! {
                <div class="tl-row">
                    <a class="tl-name" href=href>{name}</a>
                    <div class="tl-track">
                        <div class=format!("tl-bar status-{sst}")
                            style=format!("left:{left:.2}%;width:{width:.2}%;background:{}", status::colour(sst))
                            title=format!("{sst} {}", status::duration(s.duration_ms))></div>
                    </div>
                    <span class="tl-dur">{status::duration(s.duration_ms)}</span>
                </div>
            }
        })
        .collect_view();
    let live = source.mode == Mode::Live;
    let going = !run.status.is_final();
    let api = source.api.clone().unwrap_or_default();
    let action = move |what: &'static str| {
        let url = format!("{api}/runs/{id}/{what}");
        move |_| {
            let Some(t) = token.get() else { return };
            let url = url.clone();
            leptos::task::spawn_local(async move {
                match fetch::post(&url, &t, None).await {
                    Ok(v) => {
                        if let Some(new) = v["id"].as_str().filter(|_| what == "rerun")
                            && let Some(w) = web_sys::window()
                        {
                            let _ = w.location().set_hash(&Route::Run(new.to_string()).href());
                        }
                    }
                    Err(e) => {
                        if let Some(w) = web_sys::window() {
                            let _ = w.alert_with_message(&e.to_string());
                        }
                    }
                }
            });
        }
    };
    let cancel = action.clone()("cancel");
    let rerun = action("rerun");
    view! {
        <section class="run-head">
            <h1><span class=status::class(st)>{format!("{} {st}", status::symbol(st))}</span>" "{run.pipeline.clone()}</h1>
            {run.reason.clone().map(|r| view! { <p class="reason">{r}</p> })}
            {(st == "waiting_approval").then(|| view! {
                <p class="approval">"It goes on once answered: approve or reject it on the "<a href="#/deployments">"Deployments"</a>" page."</p>
            })}
            <dl class="facts">
                <dt>"Run"</dt><dd><code>{run.id.to_string()}</code></dd>
                <dt>"Trigger"</dt><dd>{trigger}</dd>
                {git.branch.clone().map(|b| view! { <dt>"Branch"</dt><dd>{b}</dd> })}
                {git.commit.clone().map(|c| view! { <dt>"Commit"</dt><dd><code>{c}</code></dd> })}
                {git.repo.clone().map(|r| view! { <dt>"Repository"</dt><dd>{r}</dd> })}
                <dt>"Created"</dt><dd>{run.created.format("%Y-%m-%d %H:%M:%S UTC").to_string()}</dd>
                <dt>"Took"</dt><dd>{status::duration(run.duration_ms)}</dd>
            </dl>
            {(live).then(|| view! {
                <div class="actions">
                    {move || token.get().is_some().then(|| view! {
                        {going.then(|| view! { <button class="cancel" on:click=cancel.clone()>"Cancel"</button> })}
                        {(!going).then(|| view! { <button class="rerun" on:click=rerun.clone()>"Re-run"</button> })}
                    })}
                </div>
            })}
        </section>
        <h2>"Stages"</h2>
        <div class="dag-wrap"><Dag run=run.id.to_string() nodes=nodes /></div>
        <h2>"Timeline"</h2>
        <div class="timeline">{bars}</div>
    }
}
