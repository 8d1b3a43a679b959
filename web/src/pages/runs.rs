//! The runs: the index, newest first (its chunks, or the pages an older
//! Sentinel wrote), filtered by status and branch and searched by pipeline,
//! id or commit; older runs on demand (`?limit=N` preloads N runs). Live,
//! the runs accepted but not started (in no index yet) come from the API and
//! lead the list.

use leptos::prelude::*;
use sentinel_api::index::{
    CHUNKS, ChunkList, IndexChunk, IndexDoc, ROOT, decode_root, extend_unique, schema_of,
};
use sentinel_api::{IndexPage, RunSummary, keys};

use super::{ErrorBox, Refresh};
use crate::fetch::{self, FetchError};
use crate::route::Route;
use crate::source::{Mode, Source};
use crate::status;

fn wanted() -> usize {
    web_sys::window()
        .and_then(|w| w.location().search().ok())
        .and_then(|s| web_sys::UrlSearchParams::new_with_str(&s).ok())
        .and_then(|p| p.get("limit"))
        .and_then(|l| l.parse().ok())
        .unwrap_or(keys::INDEX_PAGE_SIZE)
}

/// The index's parts still to read, in order (chunk or page keys).
type Pending = Vec<String>;

/// Reads one part of the index: the chunk list (which names the chunks), a
/// chunk, or a page of an older layout (which names the next).
async fn part(source: &Source, key: &str) -> Result<(Vec<RunSummary>, Pending), FetchError> {
    let url = source.url(key);
    let Some(text) = fetch::text_opt(&url).await? else {
        return Ok((Vec::new(), Vec::new()));
    };
    let wrap = |e: sentinel_api::SchemaError| FetchError {
        url: url.clone(),
        what: e.to_string(),
    };
    match schema_of(text.as_bytes(), key).map_err(wrap)? {
        1 => {
            let page: IndexPage = sentinel_api::decode(text.as_bytes(), key, &[1]).map_err(wrap)?;
            Ok((page.runs, page.next.into_iter().collect()))
        }
        _ if key == CHUNKS => {
            let list: ChunkList = sentinel_api::decode(text.as_bytes(), key, &[2]).map_err(wrap)?;
            Ok((Vec::new(), list.chunks.into_iter().map(|c| c.key).collect()))
        }
        _ => {
            let chunk: IndexChunk =
                sentinel_api::decode(text.as_bytes(), key, &[2]).map_err(wrap)?;
            Ok((chunk.runs, Vec::new()))
        }
    }
}

/// Loads the index until `want` runs (or its end); returns what is left to read.
async fn load(source: &Source, want: usize) -> Result<(Vec<RunSummary>, Pending), FetchError> {
    let url = source.url(ROOT);
    let Some(text) = fetch::text_opt(&url).await? else {
        return Err(FetchError {
            url,
            what: "HTTP 404: 404 Not Found — no runs index at this address (is the results prefix right?)".into(),
        });
    };
    let root = decode_root(text.as_bytes()).map_err(|e| FetchError {
        url: url.clone(),
        what: e.to_string(),
    })?;
    let (mut runs, mut pending) = match root {
        IndexDoc::Chunks(root) => {
            let more = (root.chunks > 0).then(|| CHUNKS.to_string());
            (root.head, more.into_iter().collect())
        }
        IndexDoc::Pages(page) => (page.runs, page.next.into_iter().collect::<Pending>()),
    };
    while runs.len() < want && !pending.is_empty() {
        let key = pending.remove(0);
        let (more, after) = part(source, &key).await?;
        extend_unique(&mut runs, more);
        pending.splice(0..0, after);
    }
    Ok((runs, pending))
}

/// Live: the runs accepted but not started, newest first.
async fn queued(api: &str) -> Result<Vec<RunSummary>, FetchError> {
    let url = format!("{api}/runs?limit=1");
    let v = fetch::json::<serde_json::Value>(&url).await?;
    let mut out = v["queued"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|q| {
            serde_json::from_value::<RunSummary>(serde_json::json!({
                "id": q["id"],
                "pipeline": q["pipeline"],
                "status": "queued",
                "created": q["created"],
            }))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FetchError {
            url,
            what: format!("a queued run is not what was expected: {e}"),
        })?;
    out.reverse();
    Ok(out)
}

/// The index's runs and, live, the queued ones first.
async fn load_all(source: &Source, want: usize) -> Result<(Vec<RunSummary>, Pending), FetchError> {
    let (mut runs, next) = load(source, want).await?;
    if let (Mode::Live, Some(api)) = (source.mode, source.api.as_deref()) {
        let mut waiting = queued(api).await?;
        waiting.retain(|q| runs.iter().all(|r| r.id != q.id));
        waiting.append(&mut runs);
        runs = waiting;
    }
    Ok((runs, next))
}

fn mark_rendered() {
    if let Some(w) = web_sys::window() {
        let now = w.performance().map(|p| p.now()).unwrap_or_default();
        let _ = js_sys::Reflect::set(&w, &"sentinelRendered".into(), &now.into());
    }
}

#[component]
pub fn Runs() -> impl IntoView {
    let source = expect_context::<Source>();
    let Refresh(refresh) = expect_context::<Refresh>();
    let runs = RwSignal::new(Vec::<RunSummary>::new());
    let next = RwSignal::new(Pending::new());
    let error = RwSignal::new(None::<FetchError>);
    let loading = RwSignal::new(true);
    let (status_f, set_status_f) = signal(String::new());
    let (branch_f, set_branch_f) = signal(String::new());
    let (pipeline_f, set_pipeline_f) = signal(String::new());
    let (search, set_search) = signal(String::new());
    status::show_in_tab("Runs · Sentinel", None);

    let src = source.clone();
    Effect::new(move |_| {
        refresh.track();
        let src = src.clone();
        loading.set(true);
        leptos::task::spawn_local(async move {
            match load_all(&src, wanted()).await {
                Ok((r, n)) => {
                    runs.set(r);
                    next.set(n);
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
            loading.set(false);
        });
    });
    // Live: the index is refreshed while the page is open.
    if source.mode == Mode::Live {
        let handle = set_interval_with_handle(
            move || refresh.update(|n| *n += 1),
            std::time::Duration::from_secs(5),
        );
        if let Ok(h) = handle {
            on_cleanup(move || h.clear());
        }
    }
    let src = source.clone();
    let older = move |_| {
        let mut pending = next.get();
        if pending.is_empty() {
            return;
        }
        let key = pending.remove(0);
        let src = src.clone();
        leptos::task::spawn_local(async move {
            match part(&src, &key).await {
                Ok((more, after)) => {
                    runs.update(|r| extend_unique(r, more));
                    pending.splice(0..0, after);
                    next.set(pending);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    let branches = move || {
        let mut b: Vec<String> = runs
            .get()
            .iter()
            .filter_map(|r| r.git.as_ref().and_then(|g| g.branch.clone()))
            .collect();
        b.sort();
        b.dedup();
        b
    };
    let pipelines = move || {
        let mut p: Vec<String> = runs.get().iter().map(|r| r.pipeline.clone()).collect();
        p.sort();
        p.dedup();
        p
    };
    let shown = move || {
        let (s, b, q) = (status_f.get(), branch_f.get(), search.get().to_lowercase());
        let p = pipeline_f.get();
        runs.get()
            .into_iter()
            .filter(|r| s.is_empty() || r.status.as_str() == s)
            .filter(|r| p.is_empty() || r.pipeline == p)
            .filter(|r| {
                b.is_empty() || r.git.as_ref().and_then(|g| g.branch.as_deref()) == Some(b.as_str())
            })
            .filter(|r| {
                q.is_empty()
                    || r.pipeline.to_lowercase().contains(&q)
                    || r.id.as_str().to_lowercase().contains(&q)
                    || r.git
                        .as_ref()
                        .and_then(|g| g.commit.as_deref())
                        .is_some_and(|c| c.starts_with(&q))
            })
            .collect::<Vec<_>>()
    };
    Effect::new(move |_| {
        if !loading.get() {
            request_animation_frame(mark_rendered);
        }
    });
    view! {
        <h1>"Runs"</h1>
        <div class="filters" role="search">
            <label>"Status "
                <select on:change=move |ev| set_status_f.set(event_target_value(&ev))>
                    <option value="">"all"</option>
                    {["succeeded", "failed", "running", "queued", "waiting_approval", "cancelled", "interrupted"]
                        .into_iter()
                        .map(|s| view! { <option value=s>{s}</option> })
                        .collect_view()}
                </select>
            </label>
            <label>"Pipeline "
                <select class="pipeline-filter" on:change=move |ev| set_pipeline_f.set(event_target_value(&ev))>
                    <option value="">"all"</option>
                    {move || pipelines().into_iter().map(|p| view! { <option value=p.clone()>{p.clone()}</option> }).collect_view()}
                </select>
            </label>
            <label>"Branch "
                <select on:change=move |ev| set_branch_f.set(event_target_value(&ev))>
                    <option value="">"all"</option>
                    {move || branches().into_iter().map(|b| view! { <option value=b.clone()>{b.clone()}</option> }).collect_view()}
                </select>
            </label>
            <input type="search" placeholder="pipeline, run id or commit" aria-label="search runs"
                on:input=move |ev| set_search.set(event_target_value(&ev)) />
        </div>
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || (loading.get() && runs.get().is_empty() && error.get().is_none()).then(|| view! { <p class="loading">"Loading…"</p> })}
        {move || (!loading.get() && error.get().is_none() && runs.get().is_empty()).then(|| view! { <p class="empty">"No runs yet."</p> })}
        <table class="runs" class:hidden=move || runs.get().is_empty()>
            <thead><tr><th>"Status"</th><th>"Pipeline"</th><th>"Run"</th><th>"Branch"</th><th>"Commit"</th><th>"Started"</th><th>"Took"</th><th>"Stages"</th></tr></thead>
            <tbody>
                <For each=shown key=|r| (r.id.to_string(), r.status.as_str()) let:r>
                    <RunRow run=r />
                </For>
            </tbody>
        </table>
        {move || (!next.get().is_empty()).then(|| view! { <button class="older" on:click=older.clone()>"Older runs"</button> })}
    }
}

#[component]
fn RunRow(run: RunSummary) -> impl IntoView {
    let href = Route::Run(run.id.to_string()).href();
    let st = run.status.as_str();
    let branch = run
        .git
        .as_ref()
        .and_then(|g| g.branch.clone())
        .unwrap_or_default();
    let commit = run
        .git
        .as_ref()
        .and_then(|g| g.commit.clone())
        .map(|c| c.chars().take(10).collect::<String>())
        .unwrap_or_default();
    let stages = run
        .stages
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    view! {
        <tr class=format!("run-row status-{st}") data-run=run.id.to_string()>
            <td><span class=status::class(st)>{format!("{} {st}", status::symbol(st))}</span></td>
            <td>{run.pipeline.clone()}</td>
            <td><a href=href>{run.id.to_string()}</a></td>
            <td>{branch}</td>
            <td><code>{commit}</code></td>
            <td>{run.created.format("%Y-%m-%d %H:%M:%S").to_string()}</td>
            <td>{status::duration(run.duration_ms)}</td>
            <td class="muted">{stages}</td>
        </tr>
    }
}
