//! The stage graph: finalizer edges, a topological order (or the cycle), and
//! sensitivity carried along the edges.

use std::collections::BTreeSet;

use sentinel_api::StageName;

use crate::plan::{Action, StagePlan};
use crate::template::Ref;

/// A finalizer (a `when: always | on_failure` stage with no dependencies of
/// its own) comes after every stage that is not itself a finalizer.
pub(super) fn add_finalizer_edges(stages: &mut [StagePlan]) {
    let regular: Vec<StageName> = stages
        .iter()
        .filter(|s| !s.finalizer)
        .map(|s| s.name.clone())
        .collect();
    for s in stages.iter_mut().filter(|s| s.finalizer) {
        s.needs = regular.clone();
        s.needs.sort();
    }
}

/// Orders stages so each comes after its needs (file order among the
/// ready ones); on a cycle returns the cycle's path and its first stage.
pub(super) fn topo_sort(
    stages: Vec<StagePlan>,
) -> Result<Vec<StagePlan>, (Vec<StageName>, StageName)> {
    let mut done: BTreeSet<StageName> = BTreeSet::new();
    let mut left = stages;
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let before = left.len();
        let mut i = 0;
        while i < left.len() {
            if left[i].needs.iter().all(|n| done.contains(n)) {
                let s = left.remove(i);
                done.insert(s.name.clone());
                out.push(s);
            } else {
                i += 1;
            }
        }
        if left.len() == before {
            return Err(find_cycle(&left));
        }
    }
    Ok(out)
}

fn find_cycle(left: &[StagePlan]) -> (Vec<StageName>, StageName) {
    // Every stage left has a need among the stages left: walk until a repeat.
    let pending: BTreeSet<&StageName> = left.iter().map(|s| &s.name).collect();
    let mut path: Vec<StageName> = vec![left[0].name.clone()];
    loop {
        let current = path.last().cloned().unwrap_or_else(|| left[0].name.clone());
        let stage = left.iter().find(|s| s.name == current).unwrap_or(&left[0]);
        let Some(next) = stage.needs.iter().find(|n| pending.contains(n)) else {
            return (path, left[0].name.clone());
        };
        if let Some(start) = path.iter().position(|p| p == next) {
            // Report the cycle in the direction "runs before": a → b means b is after a.
            let mut cycle: Vec<StageName> = path[start..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0].clone());
            let first = cycle[0].clone();
            return (cycle, first);
        }
        path.push(next.clone());
    }
}

/// A step's output is a value taken from its inputs: a step that reads a
/// sensitive stage's output is itself sensitive (a plucked key is a secret).
/// Stages are in topological order, so one pass sees every source first.
pub(super) fn derive_sensitivity(mut stages: Vec<StagePlan>) -> Vec<StagePlan> {
    let mut sensitive: BTreeSet<StageName> = BTreeSet::new();
    for s in stages.iter_mut() {
        let reads_sensitive = s
            .templates()
            .flat_map(|t| t.refs())
            .filter_map(Ref::stage)
            .any(|n| sensitive.contains(n));
        if matches!(s.action, Action::Step(_)) && reads_sensitive {
            s.sensitive = true;
        }
        if s.sensitive {
            sensitive.insert(s.name.clone());
        }
    }
    stages
}
