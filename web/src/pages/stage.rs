//! A stage: its status, failure reason, outputs, artifacts and log — ANSI
//! colours rendered, every line linkable, searchable, downloadable; while
//! it runs (live mode) the log follows its tail, until the reader scrolls up.
//! A job's log is one collapsible section per step, each step in the steps
//! table linking to its section.

use leptos::html::Div;
use leptos::prelude::*;
use sentinel_api::{RunId, StageDoc, StageName, keys};

use std::sync::Arc;

use super::{ErrorBox, Refresh, Token};
use crate::fetch::{self, FetchError};
use crate::live;
use crate::route::Route;
use crate::source::{Mode, Source};
use crate::{ansi, status};

/// From this many lines on, a log is shown a window at a time.
const PAGED_LINES: usize = 20_000;
/// The height of a line of a paged log (its CSS says the same).
const LINE_PX: f64 = 18.0;
/// Lines of a paged log in the page at once.
const WINDOW: usize = 400;

/// A long log, whole in memory, shown a window of lines at a time: the
/// page holds spacers for the rest, so a million lines scroll and link
/// like a short log.
struct Paged {
    text: String,
    /// Where each line starts.
    starts: Vec<usize>,
}

impl Paged {
    fn new(text: String) -> Self {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1)
                .filter(|i| *i < text.len()),
        );
        Self { text, starts }
    }

    fn lines(&self) -> usize {
        self.starts.len()
    }

    /// Lines `from..to` (0-based), as text.
    fn slice(&self, from: usize, to: usize) -> &str {
        let a = self.starts.get(from).copied().unwrap_or(self.text.len());
        let b = self.starts.get(to).copied().unwrap_or(self.text.len());
        &self.text[a..b]
    }
}

#[component]
pub fn StagePage(run: String, stage: String, line: Option<usize>) -> impl IntoView {
    let source = expect_context::<Source>();
    let Refresh(refresh) = expect_context::<Refresh>();
    let ids = run
        .parse::<RunId>()
        .map_err(|e| e.to_string())
        .and_then(|r| {
            stage
                .parse::<StageName>()
                .map(|s| (r, s))
                .map_err(|e| e.to_string())
        });
    let (run_id, name) = match ids {
        Ok(x) => x,
        Err(what) => {
            let error = FetchError {
                url: Route::Stage { run, stage, line }.href(),
                what,
            };
            return view! { <ErrorBox error=error /> }.into_any();
        }
    };
    let doc = RwSignal::new(None::<StageDoc>);
    let log = RwSignal::new(String::new());
    let paged = RwSignal::new(None::<Arc<Paged>>);
    // The first line of a paged log's window (0-based).
    let window = RwSignal::new(0usize);
    let error = RwSignal::new(None::<FetchError>);
    let follow = RwSignal::new(true);
    let (search, set_search) = signal(String::new());
    let stream = StoredValue::new_local(None::<live::Stream>);
    let doc_url = source.url(&keys::stage_doc(&run_id, &name));
    let log_url = source.url(&keys::stage_log(&run_id, &name));
    let zip_url = source.url(&keys::stage_artifacts(&run_id, &name));
    let live_mode = source.mode == Mode::Live;
    let api = source.api.clone().unwrap_or_default();
    let stream_url = format!("{api}/runs/{run_id}/stages/{name}/log/stream");

    // The document (a running stage has none yet in the results: ask the run).
    let load = {
        let (doc_url, log_url, stream_url) = (doc_url.clone(), log_url.clone(), stream_url.clone());
        move || {
            let (doc_url, log_url, stream_url) =
                (doc_url.clone(), log_url.clone(), stream_url.clone());
            leptos::task::spawn_local(async move {
                match fetch::doc_opt::<StageDoc>(&doc_url, &[u64::from(sentinel_api::SCHEMA_VERSION)]).await {
                    Ok(Some(d)) => {
                        let has_log = d.log.is_some();
                        doc.set(Some(d));
                        error.set(None);
                        if has_log {
                            match fetch::text(&log_url).await {
                                Ok(t) if t.bytes().filter(|b| *b == b'\n').count() >= PAGED_LINES => {
                                    follow.set(false);
                                    paged.set(Some(Arc::new(Paged::new(t))));
                                }
                                Ok(t) => log.set(t),
                                Err(e) => error.set(Some(e)),
                            }
                        }
                    }
                    Ok(None) if live_mode => {
                        // Not ended: follow its log live.
                        let reload = move |_: String| {
                            // The stage ended: its document and full log are published.
                            if let Some(w) = web_sys::window() {
                                let _ = w.location().reload();
                            }
                        };
                        log.set(String::new());
                        let handlers: Vec<(&'static str, live::Handler)> = vec![
                            (
                                "log",
                                Box::new(move |data: String| {
                                    let text: String = serde_json::from_str(&data).unwrap_or(data);
                                    log.update(|l| {
                                        l.push_str(&text);
                                        if !text.ends_with('\n') {
                                            l.push('\n');
                                        }
                                    });
                                }),
                            ),
                            ("end", Box::new(reload)),
                        ];
                        stream.set_value(live::open(&stream_url, handlers));
                    }
                    Ok(None) => error.set(Some(FetchError {
                        url: doc_url.clone(),
                        what: "HTTP 404: the stage has no document (it has not ended, or the run has no such stage)".into(),
                    })),
                    Err(e) => error.set(Some(e)),
                }
            });
        }
    };
    Effect::new(move |_| {
        refresh.track();
        load();
    });
    on_cleanup(move || stream.set_value(None));

    let log_box = NodeRef::<Div>::new();
    // Follow the tail while the reader is at the bottom.
    Effect::new(move |_| {
        log.track();
        if follow.get_untracked()
            && let Some(el) = log_box.get()
        {
            request_animation_frame(move || el.set_scroll_top(el.scroll_height()));
        }
    });
    let on_scroll = move |_| {
        if let Some(el) = log_box.get() {
            let at_bottom = el.scroll_top() + el.client_height() >= el.scroll_height() - 8;
            follow.set(at_bottom && paged.with_untracked(Option::is_none));
            // A paged log: a new window once the view nears its edge.
            if paged.with_untracked(Option::is_some) {
                let top = (f64::from(el.scroll_top()) / LINE_PX) as usize;
                let first = top.saturating_sub(WINDOW / 4);
                let shown = window.get_untracked();
                let near_top = shown > 0 && top < shown + WINDOW / 8;
                let near_end = top + WINDOW / 2 > shown + WINDOW;
                if (near_top || near_end) && first != shown {
                    window.set(first);
                }
            }
        }
    };
    // A linked line: scrolled to and marked (in a paged log, its window
    // first).
    Effect::new(move |_| {
        log.track();
        if let Some(n) = line
            && let Some(el) = log_box.get_untracked()
            && paged.with(Option::is_some)
        {
            window.set(n.saturating_sub(1 + WINDOW / 4));
            el.set_scroll_top((n.saturating_sub(4) as f64 * LINE_PX) as i32);
        }
        if let Some(n) = line {
            request_animation_frame(move || {
                if let Some(el) = web_sys::window()
                    .and_then(|w| w.document())
                    .and_then(|d| d.get_element_by_id(&format!("L{n}")))
                {
                    let _ = el.class_list().add_1("target");
                    el.scroll_into_view();
                    follow.set(false);
                }
            });
        }
    });
    let (r, s) = (run_id.to_string(), name.to_string());
    let html = move || {
        let (r, s) = (r.clone(), s.clone());
        let href = move |n: usize| {
            Route::Stage {
                run: r.clone(),
                stage: s.clone(),
                line: Some(n),
            }
            .href()
        };
        if let Some(p) = paged.get() {
            let n = p.lines();
            let first = window.get().min(n.saturating_sub(1));
            let last = (first + WINDOW).min(n);
            let body =
                ansi::render_from(p.slice(first, last), first + 1, false, &href, &search.get());
            return format!(
                "<div class=\"spacer\" style=\"height:{}px\"></div>{body}<div class=\"spacer\" style=\"height:{}px\"></div>",
                first as f64 * LINE_PX,
                (n - last) as f64 * LINE_PX
            );
        }
        log.with(|l| ansi::render(l, &href, &search.get()))
    };
    let hits = move || {
        let q = search.get().to_lowercase();
        if q.is_empty() {
            return String::new();
        }
        let count = |text: &str| {
            text.lines()
                .filter(|l| ansi::plain(l).to_lowercase().contains(&q))
                .count()
        };
        let n = match paged.get() {
            Some(p) => count(&p.text),
            None => log.with(|l| count(l)),
        };
        format!("{n} matching line(s)")
    };
    let title_name = name.to_string();
    Effect::new(move |_| {
        let st = doc.get().map(|d| d.status.as_str()).unwrap_or("running");
        status::show_in_tab(
            &format!("{} {} · {}", status::symbol(st), title_name, st),
            Some(st),
        );
    });
    let run_href = Route::Run(run_id.to_string()).href();
    let file_name = format!("{}-{}.log", run_id, stage);
    view! {
        <nav class="crumbs"><a href="#/">"Runs"</a>" / "<a href=run_href>{run_id.to_string()}</a>" / "<span>{stage.clone()}</span></nav>
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || doc.get().map(|d| view! { <StageHead doc=d zip_url=zip_url.clone() log=log /> })}
        {move || (doc.get().is_none() && live_mode && error.get().is_none()).then(|| view! {
            <h1><span class="status status-running">"● running"</span>" "{stage.clone()}</h1>
        })}
        <div class="log-tools">
            <input type="search" placeholder="search the log" aria-label="search the log"
                on:input=move |ev| set_search.set(event_target_value(&ev)) />
            <span class="muted">{hits}</span>
            <a class="download" href=log_url.clone() download=file_name>"Download"</a>
            {move || (!follow.get() && paged.with(Option::is_none)).then(|| view! {
                <button on:click=move |_| {
                    follow.set(true);
                    if let Some(el) = log_box.get() { el.set_scroll_top(el.scroll_height()); }
                }>"Follow"</button>
            })}
        </div>
        <div class=move || if paged.with(Option::is_some) { "log paged" } else { "log" }
            node_ref=log_box on:scroll=on_scroll tabindex="0" aria-label="log" inner_html=html></div>
    }
    .into_any()
}

/// What the stage's cache did: hit, partial or miss, what was restored
/// from where, what was saved, and why not.
fn cache_view(c: sentinel_api::CacheDoc) -> impl IntoView {
    let result = c.result.as_str();
    let size = |n: u64| match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    };
    let on = c
        .restored_branch
        .clone()
        .map(|b| format!(" (branch {b})"))
        .unwrap_or_default();
    let restored = c.restored_key.clone().map(|k| {
        let from = (k != c.key).then(|| view! { " from "<code>{k}</code> });
        view! { " · restored "{size(c.restored_bytes)}{from}{on} }
    });
    let saved = c.saved_bytes.map(|n| format!(" · saved {}", size(n)));
    let note = c
        .note
        .clone()
        .map(|n| view! { <span class="note">{format!(" · {n}")}</span> });
    view! {
        <span class=format!("cache-{result}")>{result}</span>" "<code>{c.key.clone()}</code>{restored}{saved}{note}
    }
}

#[component]
fn StageHead(doc: StageDoc, zip_url: String, log: RwSignal<String>) -> impl IntoView {
    let source = expect_context::<Source>();
    let Token(token) = expect_context::<Token>();
    let st = doc.status.as_str();
    let failed = matches!(st, "failed" | "cancelled" | "skipped" | "interrupted");
    let api = source.api.clone().unwrap_or_default();
    let (run, name) = (doc.run_id.to_string(), doc.name.to_string());
    let rerun_from = move |_| {
        let Some(t) = token.get() else { return };
        let url = format!("{api}/runs/{run}/rerun");
        let body = serde_json::json!({ "from": name });
        leptos::task::spawn_local(async move {
            match fetch::post(&url, &t, Some(body)).await {
                Ok(v) => {
                    if let (Some(id), Some(w)) = (v["id"].as_str(), web_sys::window()) {
                        let _ = w.location().set_hash(&Route::Run(id.to_string()).href());
                    }
                }
                Err(e) => {
                    if let Some(w) = web_sys::window() {
                        let _ = w.alert_with_message(&e.to_string());
                    }
                }
            }
        });
    };
    let live = source.mode == Mode::Live;
    let outputs = doc.outputs.clone();
    view! {
        <section class="stage-head">
            <h1><span class=status::class(st)>{format!("{} {st}", status::symbol(st))}</span>" "{doc.name.to_string()}</h1>
            {doc.reason.clone().map(|r| view! { <p class="reason">{r}</p> })}
            {(!doc.warnings.is_empty()).then(|| view! {
                <ul class="warnings">
                    {doc.warnings.clone().into_iter().map(|w| view! { <li>{w}</li> }).collect_view()}
                </ul>
            })}
            <dl class="facts">
                <dt>"Kind"</dt><dd>{serde_json::to_value(doc.kind).ok().and_then(|v| v.as_str().map(|s| s.replace('_', " "))).unwrap_or_default()}</dd>
                {doc.exit_code.map(|c| view! { <dt>"Exit code"</dt><dd>{c}</dd> })}
                <dt>"Took"</dt><dd>{status::duration(doc.duration_ms)}</dd>
                {doc.approval.as_ref().map(|g| view! { <dt>"Approval"</dt><dd class="approval">{gate_text(g)}</dd> })}
                {doc.inputs.image.clone().map(|i| view! { <dt>"Image"</dt><dd><code>{i}</code></dd> })}
                {doc.inputs.step.clone().map(|s| view! { <dt>"Step"</dt><dd>{step_link(&s)}</dd> })}
                {(doc.log_cut_bytes > 0).then(|| view! { <dt>"Log"</dt><dd>{format!("{} bytes cut from the middle", doc.log_cut_bytes)}</dd> })}
                {doc.cache.clone().map(|c| view! { <dt>"Cache"</dt><dd class="cache">{cache_view(c)}</dd> })}
            </dl>
            {(!doc.steps.is_empty()).then(|| view! {
                <h2>"Steps"</h2>
                <table class="steps">
                    {doc.steps.clone().into_iter().map(|s| {
                        let st = s.status.as_str();
                        let name = if s.after { format!("{} (after)", s.name) } else { s.name.clone() };
                        // The step's section of the log, once the log is there.
                        let (run, stage) = (doc.run_id.to_string(), doc.name.to_string());
                        let (step, after) = (s.name.clone(), s.after);
                        let href = move || {
                            log.with(|l| ansi::step_lines(l))
                                .into_iter()
                                .find(|(n, a, _)| *n == step && *a == after)
                                .map(|(_, _, line)| {
                                    Route::Stage { run: run.clone(), stage: stage.clone(), line: Some(line) }.href()
                                })
                        };
                        view! {
                            <tr>
                                <td><span class=status::class(st)>{format!("{} {st}", status::symbol(st))}</span></td>
                                <th>{move || match href() {
                                    Some(h) => view! { <a class="step-link" href=h>{name.clone()}</a> }.into_any(),
                                    None => view! { <span>{name.clone()}</span> }.into_any(),
                                }}</th>
                                <td>{s.exit_code.map(|c| format!("exit code {c}")).unwrap_or_default()}</td>
                                <td>{status::duration(s.duration_ms)}</td>
                                <td>{s.reason.clone().unwrap_or_default()}</td>
                            </tr>
                        }
                    }).collect_view()}
                </table>
            })}
            {(!doc.attempts.is_empty()).then(|| {
                let run_id = doc.run_id.clone();
                view! {
                <h2>"Attempts"</h2>
                <table class="attempts">
                    {doc.attempts.clone().into_iter().map(|a| {
                        let st = a.status.as_str();
                        let log = a.log.clone().map(|k| {
                            let url = source.url(&format!("run/{run_id}/{k}"));
                            view! { <a class="attempt-log" href=url>{format!("log ({} bytes)", a.log_bytes)}</a> }
                        });
                        let waited = a.waited_ms.map(|ms| format!("after {}", status::duration(Some(ms))));
                        view! {
                            <tr>
                                <th>{format!("#{}", a.attempt)}</th>
                                <td><span class=status::class(st)>{format!("{} {st}", status::symbol(st))}</span></td>
                                <td>{a.exit_code.map(|c| format!("exit code {c}")).unwrap_or_default()}</td>
                                <td>{status::duration(a.duration_ms)}</td>
                                <td>{waited.unwrap_or_default()}</td>
                                <td>{a.reason.clone().filter(|_| a.exit_code.is_none()).unwrap_or_default()}</td>
                                <td>{log}</td>
                            </tr>
                        }
                    }).collect_view()}
                </table>
                }
            })}
            {(!outputs.is_empty()).then(|| view! {
                <h2>"Outputs"</h2>
                <table class="outputs">
                    {outputs.into_iter().map(|(k, v)| view! { <tr><th>{k}</th><td><code>{v}</code></td></tr> }).collect_view()}
                </table>
            })}
            {doc.output.clone().filter(|o| !o.is_empty()).map(|o| {
                let text = o.lines().map(ansi::plain).collect::<Vec<_>>().join("\n");
                view! { <details><summary>"Output"</summary><pre>{text}</pre></details> }
            })}
            {doc.artifacts.is_some().then(|| view! { <p><a class="artifacts" href=zip_url>"Artifacts (zip)"</a></p> })}
            {(live && failed).then(|| view! {
                {move || token.get().is_some().then(|| view! {
                    <button class="rerun-from" on:click=rerun_from.clone()>"Re-run from this stage"</button>
                })}
            })}
        </section>
    }
}

/// An approval gate as one line: its environment and its answer.
fn gate_text(g: &sentinel_api::GateDoc) -> String {
    match &g.answer {
        None => format!("{}: waiting (deployment {})", g.environment, g.deployment),
        Some(a) => format!(
            "{}: {} by {} at {}{}",
            g.environment,
            if a.approved { "approved" } else { "refused" },
            a.by,
            a.at.format("%Y-%m-%d %H:%M:%S UTC"),
            a.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
    }
}

/// A step stage's `REF = NAME VERSION (digest)`, linked to the step's page.
fn step_link(recorded: &str) -> impl IntoView + use<> {
    let name = recorded
        .split_once(" = ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_default();
    view! { <a class="step-page" href=format!("#/steps/{name}")><code>{recorded.to_string()}</code></a> }
}
