//! `#/steps`: the steps a live server knows (bundled, and pulled from its
//! registries by runs), each with what it may do — settings (required,
//! defaults, secret), hosts, workspace access — and what it is: size,
//! digest, source, signer. `#/steps/<name>` shows one step's versions; a
//! step stage's page links there. The answer (`sentinel_api::StepsDoc`) is
//! read as plain JSON: typed decoding cost the app's size budget more than
//! this page is worth.

use leptos::prelude::*;
use serde_json::Value;

use super::{ErrorBox, Refresh};
use crate::fetch::{self, FetchError};
use crate::source::{Mode, Source};
use crate::status;

fn size(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20))
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

fn text(v: &Value, key: &str) -> String {
    v[key].as_str().unwrap_or_default().to_string()
}

fn card(s: Value) -> impl IntoView {
    let (name, version) = (text(&s, "name"), text(&s, "version"));
    let hosts: Vec<&str> = s["http"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let facts = [
        (
            "Kind",
            "kind",
            if s["kind"] == "script" {
                "script step (a job's container)".to_string()
            } else {
                "WebAssembly component (sandboxed)".to_string()
            },
        ),
        (
            "Network",
            "hosts",
            if hosts.is_empty() {
                "none".to_string()
            } else {
                hosts.join(", ")
            },
        ),
        (
            "Workspace",
            "workspace",
            match s["workspace"].as_str() {
                Some("write") => "read and write".to_string(),
                other => other.unwrap_or("none").to_string(),
            },
        ),
        ("Size", "size", size(s["size"].as_u64().unwrap_or(0))),
        ("Digest", "digest", text(&s, "digest")),
        ("From", "source", text(&s, "source")),
        (
            "Signer",
            "signer",
            s["signer"].as_str().unwrap_or("unsigned").to_string(),
        ),
    ];
    // One line per setting: its key and variable, what it needs, what it is.
    let settings = s["settings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|st| {
            let mut need = Vec::new();
            if st["required"] == true {
                need.push("required".to_string());
            }
            if let Some(d) = st["default"].as_str() {
                need.push(format!("default {d}"));
            }
            let key = text(&st, "key");
            let secret = st["secret"] == true;
            if secret {
                need.push(String::new());
            }
            let flags: String = need.iter().map(|n| format!(" · {n}")).collect();
            let line = format!("{key} ({}){flags}", text(&st, "env"));
            let about = text(&st, "description");
            view! {
                <li class="setting" data-setting=key>
                    {line}<span class="secret">{if secret { "secret" } else { "" }}</span>
                    {(!about.is_empty()).then(|| format!(" — {about}"))}
                </li>
            }
        })
        .collect_view();
    let id = format!("step-{name}-{version}");
    view! {
        <section class="step" id=id data-step=name.clone() data-version=version.clone()>
            <h2><a href=format!("#/steps/{name}")>{name.clone()}</a>" "<span class="version">{version.clone()}</span></h2>
            <p>{text(&s, "description")}</p>
            <dl class="facts">
                {facts.into_iter().map(|(label, class, value)| view! {
                    <dt>{label}</dt><dd class=class>{value}</dd>
                }).collect_view()}
            </dl>
            <ul class="settings">{settings}</ul>
        </section>
    }
}

#[component]
pub fn Steps(name: Option<String>) -> impl IntoView {
    let source = expect_context::<Source>();
    let Refresh(refresh) = expect_context::<Refresh>();
    status::show_in_tab("Steps", None);
    let title = name.clone().unwrap_or_else(|| "Steps".into());
    let crumbs = match &name {
        Some(n) => view! { <nav class="crumbs"><a href="#/">"Runs"</a>" / "<a href="#/steps">"Steps"</a>" / "<span>{n.clone()}</span></nav> }.into_any(),
        None => view! { <nav class="crumbs"><a href="#/">"Runs"</a>" / "<span>"Steps"</span></nav> }.into_any(),
    };
    if source.mode != Mode::Live {
        return view! {
            {crumbs}
            <h1>{title}</h1>
            <p class="empty">"A live server (sentinel serve) lists its steps here; on this machine, `sentinel step list` and `sentinel step show NAME` say the same."</p>
        }
        .into_any();
    }
    let url = format!("{}/steps", source.api.clone().unwrap_or_default());
    let list = RwSignal::new(None::<Vec<Value>>);
    let error = RwSignal::new(None::<FetchError>);
    Effect::new(move |_| {
        refresh.track();
        let url = url.clone();
        leptos::task::spawn_local(async move {
            match fetch::json::<Value>(&url).await {
                Ok(d) => {
                    list.set(Some(d["steps"].as_array().cloned().unwrap_or_default()));
                    error.set(None);
                }
                Err(e) => error.set(Some(e)),
            }
        });
    });
    let wanted = name.clone();
    view! {
        {crumbs}
        <h1>{title}</h1>
        {move || error.get().map(|e| view! { <ErrorBox error=e /> })}
        {move || match list.get() {
            None => view! { <p class="loading">"Loading…"</p> }.into_any(),
            Some(l) => {
                let l: Vec<Value> = l
                    .into_iter()
                    .filter(|s| wanted.as_ref().is_none_or(|w| s["name"] == w.as_str()))
                    .collect();
                if l.is_empty() {
                    view! { <p class="empty">"No such step here."</p> }.into_any()
                } else {
                    view! { <div class="steps">{l.into_iter().map(card).collect_view()}</div> }.into_any()
                }
            }
        }}
    }
    .into_any()
}
