//! What is deployed where: per environment, the current version of each
//! application and the run that deployed it, then the newest deployments
//! with their status and reason — read from `deployments/index.json` in the
//! results (the static site and the live server alike; live, it is read
//! again every few seconds). Live and signed in, a deploy that waits for an
//! approval has Approve and Reject buttons, which send the signed-in token
//! (it needs the `deploy` scope) as the run page's Cancel does.

use std::collections::BTreeMap;

use leptos::prelude::*;
use sentinel_api::{DeploymentDoc, DeploymentsDoc, keys};

use super::{ErrorBox, Refresh, Token};
use crate::fetch::{self, FetchError};
use crate::route::Route;
use crate::source::{Mode, Source};
use crate::status;

fn run_link(d: &DeploymentDoc) -> AnyView {
    match &d.run {
        Some(r) => {
            let href = Route::Run(r.to_string()).href();
            view! { <a href=href>{r.to_string()}</a> }.into_any()
        }
        None => view! { <span class="muted">"—"</span> }.into_any(),
    }
}

fn when(d: &DeploymentDoc) -> String {
    d.finished
        .unwrap_or(d.requested)
        .format("%Y-%m-%d %H:%M:%S")
        .to_string()
}

#[component]
pub fn Deployments() -> impl IntoView {
    let source = expect_context::<Source>();
    let Refresh(refresh) = expect_context::<Refresh>();
    let doc = RwSignal::new(None::<Option<DeploymentsDoc>>);
    let error = RwSignal::new(None::<FetchError>);
    let url = source.url(keys::DEPLOYMENTS);
    let load = move || {
        let url = url.clone();
        leptos::task::spawn_local(async move {
            match fetch::doc_opt::<DeploymentsDoc>(&url, &[u64::from(sentinel_api::SCHEMA_VERSION)])
                .await
            {
                Ok(d) => {
                    doc.set(Some(d));
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    };
    {
        let load = load.clone();
        Effect::new(move |_| {
            refresh.track();
            load();
        });
    }
    if source.mode == Mode::Live {
        let tick = set_interval_with_handle(load.clone(), std::time::Duration::from_secs(3)).ok();
        on_cleanup(move || {
            if let Some(t) = tick {
                t.clear();
            }
        });
    }
    status::show_in_tab("Deployments", None);
    let reload = Callback::new(move |()| load());
    view! {
        <nav class="crumbs"><a href="#/">"Runs"</a>" / "<span>"Deployments"</span></nav>
        <h1>"Deployments"</h1>
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || match doc.get() {
            None => view! { <p class="loading">"Loading…"</p> }.into_any(),
            Some(None) => view! {
                <p class="empty">"Nothing deployed yet: a deploy watcher or a promotion records its deployments here."</p>
            }.into_any(),
            Some(Some(d)) => view! { <Record doc=d reload=reload /> }.into_any(),
        }}
    }
}

/// Approve / Reject of a deploy that waits, for a signed-in user (live).
#[component]
fn Answer(id: String, reload: Callback<()>) -> impl IntoView {
    let source = expect_context::<Source>();
    let Token(token) = expect_context::<Token>();
    let live = source.mode == Mode::Live;
    let api = source.api.clone().unwrap_or_default();
    let send = move |what: &'static str| {
        let url = format!("{api}/deployments/{id}/{what}");
        move |_| {
            let Some(t) = token.get() else { return };
            let url = url.clone();
            leptos::task::spawn_local(async move {
                if let Err(e) = fetch::post(&url, &t, None).await
                    && let Some(w) = web_sys::window()
                {
                    let _ = w.alert_with_message(&e.to_string());
                }
                reload.run(());
            });
        }
    };
    let approve = send.clone()("approve");
    let reject = send("reject");
    move || {
        (live && token.get().is_some()).then(|| {
            view! {
                <button class="approve" on:click=approve.clone()>"Approve"</button>
                <button class="reject" on:click=reject.clone()>"Reject"</button>
            }
        })
    }
}

#[component]
fn Record(doc: DeploymentsDoc, reload: Callback<()>) -> impl IntoView {
    let mut by_env: BTreeMap<String, Vec<DeploymentDoc>> = BTreeMap::new();
    for d in doc.current {
        by_env.entry(d.environment.clone()).or_default().push(d);
    }
    let envs = by_env
        .into_iter()
        .map(|(env, mut apps)| {
            apps.sort_by(|a, b| a.app.cmp(&b.app));
            let rows = apps
                .into_iter()
                .map(|d| {
                    view! {
                        <tr class="current-row" data-app=d.app.clone()>
                            <td>{d.app.clone()}</td>
                            <td class="version"><code>{d.version.clone()}</code></td>
                            <td>{run_link(&d)}</td>
                            <td>{when(&d)}</td>
                        </tr>
                    }
                })
                .collect_view();
            let name = env.clone();
            view! {
                <section class="environment" data-environment=env>
                    <h2>{name}</h2>
                    <table class="deployments">
                        <thead><tr><th>"Application"</th><th>"Version"</th><th>"Run"</th><th>"Deployed"</th></tr></thead>
                        <tbody>{rows}</tbody>
                    </table>
                </section>
            }
        })
        .collect_view();
    let history = doc
        .recent
        .into_iter()
        .map(|d| {
            let st = d.status.as_str();
            let waits = d.status == sentinel_api::DeploymentStatus::WaitingApproval;
            let id = d.id.clone();
            view! {
                <tr class=format!("deployment-row status-{st}") data-deployment=d.id.clone()>
                    <td><span class=status::class(st)>{format!("{} {st}", status::symbol(st))}</span></td>
                    <td>{d.app.clone()}</td>
                    <td><code>{d.version.clone()}</code></td>
                    <td>{d.environment.clone()}</td>
                    <td>{run_link(&d)}</td>
                    <td>{when(&d)}</td>
                    <td class="muted">{d.reason.clone().unwrap_or_default()}</td>
                    <td class="actions">{waits.then(|| view! { <Answer id=id reload=reload /> })}</td>
                </tr>
            }
        })
        .collect_view();
    view! {
        {envs}
        <h2>"History"</h2>
        <table class="deployments history">
            <thead><tr><th>"Status"</th><th>"Application"</th><th>"Version"</th><th>"Environment"</th><th>"Run"</th><th>"When"</th><th>"Reason"</th><th></th></tr></thead>
            <tbody>{history}</tbody>
        </table>
    }
}
