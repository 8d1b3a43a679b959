//! The shell: detects the source, shows errors, the header (a "static
//! snapshot" marker and refresh, or sign-in when live) and the page of the
//! current route.

mod deployments;
mod run;
mod runs;
mod schedules;
mod stage;
mod steps;

use leptos::prelude::*;

use crate::fetch::FetchError;
use crate::route::{Route, use_route};
use crate::source::{Mode, Source};

/// The signed-in token (live mode), kept for this tab only.
#[derive(Debug, Clone, Copy)]
pub struct Token(pub RwSignal<Option<String>>);

/// Bumped by the refresh button: pages reload their data.
#[derive(Debug, Clone, Copy)]
pub struct Refresh(pub RwSignal<u32>);

fn session() -> Option<web_sys::Storage> {
    web_sys::window()?.session_storage().ok().flatten()
}

#[component]
pub fn App() -> impl IntoView {
    let source = LocalResource::new(Source::detect);
    move || match source.get() {
        None => view! { <p class="loading">"Loading…"</p> }.into_any(),
        Some(Err(e)) => view! { <main><ErrorBox error=e /></main> }.into_any(),
        Some(Ok(src)) => view! { <Shell source=src /> }.into_any(),
    }
}

/// What failed, and where.
#[component]
pub fn ErrorBox(error: FetchError) -> impl IntoView {
    view! {
        <div class="error" role="alert">
            <strong>"Could not load "</strong>
            <code class="error-url">{error.url.clone()}</code>
            <p>{error.what.clone()}</p>
        </div>
    }
}

#[component]
fn Shell(source: Source) -> impl IntoView {
    let token = Token(RwSignal::new(
        session().and_then(|s| s.get_item("sentinel-token").ok().flatten()),
    ));
    let refresh = Refresh(RwSignal::new(0));
    provide_context(source.clone());
    provide_context(token);
    provide_context(refresh);
    let route = use_route();
    let is_static = source.mode == Mode::Static;
    let results = source.results.clone();
    view! {
        <header>
            <a class="brand" href="#/">"Sentinel"</a>
            <nav class="top"><a href="#/">"Runs"</a><a href="#/deployments">"Deployments"</a><a href="#/schedules">"Schedules"</a><a href="#/steps">"Steps"</a></nav>
            {is_static.then(|| view! {
                <span class="snapshot" title=format!("read from {results}")>"static snapshot"</span>
                <button on:click=move |_| refresh.0.update(|n| *n += 1)>"Refresh"</button>
            })}
            {(!is_static).then(|| view! { <span class="live-badge">"live"</span> <SignIn /> })}
        </header>
        <main>
            {move || match route.get() {
                Route::Runs => view! { <runs::Runs /> }.into_any(),
                Route::Deployments => view! { <deployments::Deployments /> }.into_any(),
                Route::Schedules => view! { <schedules::Schedules /> }.into_any(),
                Route::Steps(name) => view! { <steps::Steps name=name /> }.into_any(),
                Route::Run(id) => view! { <run::RunPage id=id /> }.into_any(),
                Route::Stage { run, stage, line } => {
                    view! { <stage::StagePage run=run stage=stage line=line /> }.into_any()
                }
            }}
        </main>
    }
}

/// Live mode: a token turns into the session cookie (reads, streams) and is
/// kept in this tab for cancel and re-run.
#[component]
fn SignIn() -> impl IntoView {
    let Token(token) = expect_context::<Token>();
    let source = expect_context::<Source>();
    let (draft, set_draft) = signal(String::new());
    let (error, set_error) = signal(None::<String>);
    let api = source.api.clone().unwrap_or_default();
    let sign_in = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let t = draft.get().trim().to_string();
        let url = format!("{api}/session");
        leptos::task::spawn_local(async move {
            match crate::fetch::post(&url, &t, None).await {
                Ok(_) => {
                    if let Some(s) = session() {
                        let _ = s.set_item("sentinel-token", &t);
                    }
                    set_error.set(None);
                    token.set(Some(t));
                    if let Some(w) = web_sys::window() {
                        let _ = w.location().reload();
                    }
                }
                Err(e) => set_error.set(Some(e.to_string())),
            }
        });
    };
    let api2 = source.api.clone().unwrap_or_default();
    let sign_out = move |_| {
        if let Some(s) = session() {
            let _ = s.remove_item("sentinel-token");
        }
        token.set(None);
        let url = format!("{api2}/session");
        leptos::task::spawn_local(async move {
            let _ = gloo_net::http::Request::delete(&url).send().await;
        });
    };
    move || match token.get() {
        Some(_) => view! { <button class="sign-out" on:click=sign_out.clone()>"Sign out"</button> }
            .into_any(),
        None => view! {
            <form class="sign-in" on:submit=sign_in.clone()>
                <label for="token">"Token"</label>
                <input id="token" type="password" autocomplete="off" placeholder="sentinel_…"
                    prop:value=move || draft.get()
                    on:input=move |ev| set_draft.set(event_target_value(&ev)) />
                <button type="submit">"Sign in"</button>
                {move || error.get().map(|e| view! { <span class="error-inline">{e}</span> })}
            </form>
        }
        .into_any(),
    }
}
