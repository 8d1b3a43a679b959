//! A run's DAG as SVG: stages in columns by depth (the longest path from a
//! stage with no dependency), each a box in its status's colour with its
//! duration, a link to its page (click or Enter); an edge from each dependency.

use leptos::prelude::*;

use crate::route::Route;
use crate::status;

const W: f64 = 170.0;
const H: f64 = 46.0;
const GAP_X: f64 = 50.0;
const GAP_Y: f64 = 16.0;

/// A stage as the DAG needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub name: String,
    pub status: String,
    pub needs: Vec<String>,
    pub duration_ms: Option<u64>,
}

/// Column and row of every node.
pub fn layout(nodes: &[Node]) -> Vec<(usize, usize)> {
    let index = |n: &str| nodes.iter().position(|x| x.name == n);
    let mut depth = vec![0usize; nodes.len()];
    // Stages come in a topological order; iterate to be safe anyway.
    for _ in 0..nodes.len() {
        let mut changed = false;
        for (i, n) in nodes.iter().enumerate() {
            for d in n.needs.iter().filter_map(|d| index(d)) {
                if depth[i] < depth[d] + 1 {
                    depth[i] = depth[d] + 1;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows = vec![0usize; nodes.len() + 1];
    depth
        .iter()
        .map(|&c| {
            let r = rows[c];
            rows[c] += 1;
            (c, r)
        })
        .collect()
}

#[component]
pub fn Dag(run: String, nodes: Vec<Node>) -> impl IntoView {
    let places = layout(&nodes);
    let cols = places.iter().map(|p| p.0).max().unwrap_or(0) + 1;
    let rows = places.iter().map(|p| p.1).max().unwrap_or(0) + 1;
    let width = cols as f64 * (W + GAP_X) - GAP_X + 4.0;
    let height = rows as f64 * (H + GAP_Y) - GAP_Y + 4.0;
    let at = |i: usize| {
        let (c, r) = places[i];
        (2.0 + c as f64 * (W + GAP_X), 2.0 + r as f64 * (H + GAP_Y))
    };
    let mut edges = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for d in &n.needs {
            if let Some(j) = nodes.iter().position(|x| &x.name == d) {
                let (x1, y1) = at(j);
                let (x2, y2) = at(i);
                let (sx, sy, ex, ey) = (x1 + W, y1 + H / 2.0, x2, y2 + H / 2.0);
                let mid = (sx + ex) / 2.0;
                edges.push(format!("M{sx},{sy} C{mid},{sy} {mid},{ey} {ex},{ey}"));
            }
        }
    }
    let boxes = nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let (x, y) = at(i);
            let href = Route::Stage {
                run: run.clone(),
                stage: n.name.clone(),
                line: None,
            }
            .href();
            let label = format!("{} {}", status::symbol(&n.status), n.name);
            let sub = format!("{} {}", n.status, status::duration(n.duration_ms));
            let fill = status::colour(&n.status);
            let aria = format!("stage {}: {}", n.name, sub.trim());
            let go = move || {
                if let Some(w) = web_sys::window() {
                    let _ = w.location().set_hash(&href);
                }
            };
            let go2 = go.clone();
            view! {
                <g class=format!("node status-{}", n.status) data-stage=n.name.clone() data-status=n.status.clone()
                    role="link" tabindex="0" aria-label=aria
                    on:click=move |_| go()
                    on:keydown=move |ev: leptos::ev::KeyboardEvent| if ev.key() == "Enter" { go2() }>
                    <rect x={x} y={y} width={W} height={H} rx="6" fill="var(--node-bg)" stroke={fill} stroke-width="2" />
                    <rect x={x} y={y} width="6" height={H} rx="3" fill={fill} />
                    <text x={x + 14.0} y={y + 19.0} class="node-name">{label}</text>
                    <text x={x + 14.0} y={y + 36.0} class="node-sub">{sub}</text>
                </g>
            }
        })
        .collect_view();
    view! {
        <svg class="dag" role="group" aria-label="stages of the run" width={width} height={height} viewBox={format!("0 0 {width} {height}")}>
            <g class="edges">
                {edges.into_iter().map(|d| view! { <path d={d} /> }).collect_view()}
            </g>
            {boxes}
        </svg>
    }
}
