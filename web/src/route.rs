//! Hash routes, so the app works from any static host (a bucket's website
//! cannot rewrite paths): `#/` the runs, `#/run/<id>` a run,
//! `#/run/<id>/<stage>` a stage, `#/run/<id>/<stage>/L<n>` a line of its log,
//! `#/deployments` what is deployed where, `#/schedules` a live server's
//! schedules, `#/steps` its steps (`#/steps/<name>` one of them).

use leptos::prelude::*;

/// A page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Runs,
    Deployments,
    Schedules,
    Steps(Option<String>),
    Run(String),
    Stage {
        run: String,
        stage: String,
        line: Option<usize>,
    },
}

impl Route {
    pub fn parse(hash: &str) -> Route {
        let path = hash.trim_start_matches('#').trim_start_matches('/');
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        match parts.as_slice() {
            ["deployments"] => Route::Deployments,
            ["schedules"] => Route::Schedules,
            ["steps"] => Route::Steps(None),
            ["steps", name] => Route::Steps(Some(name.to_string())),
            ["run", id] => Route::Run(id.to_string()),
            ["run", id, stage] => Route::Stage {
                run: id.to_string(),
                stage: stage.to_string(),
                line: None,
            },
            ["run", id, stage, line] => Route::Stage {
                run: id.to_string(),
                stage: stage.to_string(),
                line: line.strip_prefix('L').and_then(|n| n.parse().ok()),
            },
            _ => Route::Runs,
        }
    }

    pub fn href(&self) -> String {
        match self {
            Route::Runs => "#/".into(),
            Route::Deployments => "#/deployments".into(),
            Route::Schedules => "#/schedules".into(),
            Route::Steps(None) => "#/steps".into(),
            Route::Steps(Some(name)) => format!("#/steps/{name}"),
            Route::Run(id) => format!("#/run/{id}"),
            Route::Stage { run, stage, line } => match line {
                Some(n) => format!("#/run/{run}/{stage}/L{n}"),
                None => format!("#/run/{run}/{stage}"),
            },
        }
    }
}

fn current() -> Route {
    let hash = web_sys::window()
        .and_then(|w| w.location().hash().ok())
        .unwrap_or_default();
    Route::parse(&hash)
}

/// The current route, following `hashchange`.
pub fn use_route() -> ReadSignal<Route> {
    let (route, set_route) = signal(current());
    let handle = window_event_listener(leptos::ev::hashchange, move |_| set_route.set(current()));
    on_cleanup(move || handle.remove());
    route
}
