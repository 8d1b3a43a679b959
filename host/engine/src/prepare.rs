//! What a run and each of its stages need before they start: the preflight
//! (host variables and secrets present, secrets long enough to mask), the
//! services' environment, and a stage's [`StageRun`] — its environment,
//! its inputs (`out/` files, volumes with the files they carry) and where
//! its created files are kept for a re-run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sentinel_api::{RunId, StageName};
use sentinel_pipeline::{EnvValue, Plan, Ref, StagePlan};

use crate::env::{EnvError, EnvInputs, StageEnv, resolve, stage_env};
use crate::exec::{Inputs, Var, VolumeInput};
use crate::masker::SecretSet;
use crate::record::Recorder;
use crate::run::{PreflightError, RunRequest};

/// Checks what a run needs from the host, before anything is created, and
/// builds the secret set from the run's secrets.
pub fn preflight(req: &RunRequest) -> Result<Arc<SecretSet>, PreflightError> {
    let plan = &req.plan;
    let pipeline_vars = plan
        .env
        .iter()
        .filter(|(_, v)| matches!(v, EnvValue::FromHost))
        .map(|(k, _)| k.as_str());
    let stage_vars = plan.stages.iter().flat_map(|s| s.host_vars());
    let missing: BTreeSet<&str> = pipeline_vars
        .chain(stage_vars)
        .filter(|name| !req.host_env.contains_key(*name))
        .collect();
    if let Some(name) = missing.first() {
        let users: Vec<&str> = plan
            .stages
            .iter()
            .filter(|s| s.host_vars().any(|v| v == *name))
            .map(|s| s.name.as_str())
            .collect();
        let by = match users.as_slice() {
            [] => "the pipeline's `env:` takes".to_string(),
            [one] => format!("stage `{one}` takes"),
            many => format!("stages `{}` take", many.join("`, `")),
        };
        let more = match missing.len() {
            1 => String::new(),
            n => format!(
                " (nor {}: {} more)",
                missing
                    .iter()
                    .skip(1)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                n - 1
            ),
        };
        return Err(PreflightError::Missing(format!(
            "environment variable `{name}` is not set{more}; {by} it from the environment sentinel runs in"
        )));
    }
    let used = plan
        .stages
        .iter()
        .flat_map(|s| s.templates())
        .chain(plan.services.iter().flat_map(|s| s.env.values()))
        .flat_map(|t| t.refs())
        .filter_map(|r| match r {
            Ref::Secret(n) => Some(n.clone()),
            _ => None,
        });
    for name in used {
        // Withheld: the stages that need it are skipped instead.
        if !req.secrets.contains_key(&name) && req.withheld.is_none() {
            return Err(PreflightError::Missing(format!(
                "secret `{name}` is not set (export {name}=… in the environment sentinel runs in)"
            )));
        }
    }
    let mut set = SecretSet::new();
    for name in &plan.secrets {
        if let Some(v) = req.secrets.get(name) {
            set = set
                .with([v.as_bytes()])
                .map_err(|source| PreflightError::Secret {
                    name: name.clone(),
                    source,
                })?;
        }
    }
    Ok(Arc::new(set))
}

/// A service variable that could not be resolved.
#[derive(Debug, thiserror::Error)]
#[error("service `{service}`: {source}")]
pub struct ServiceEnvError {
    pub service: String,
    #[source]
    pub source: EnvError,
}

/// What references resolve against when a run starts (no stage ran).
fn start_inputs<'a>(
    req: &'a RunRequest,
    run_id: &'a RunId,
    no_outputs: &'a BTreeMap<StageName, (String, BTreeMap<String, String>)>,
) -> EnvInputs<'a> {
    EnvInputs {
        plan: &req.plan,
        run_id,
        git: req.git.as_ref(),
        deploy: req.deploy.as_ref(),
        upstream: req.upstream.as_ref(),
        trigger_values: &req.trigger_values,
        host_env: &req.host_env,
        secrets: &req.secrets,
        outputs: no_outputs,
        sensitive: &[],
        run_status: "running",
        failed_stages: String::new(),
    }
}

/// The pipeline's registry credentials, resolved (a registry without
/// credentials has none to give).
pub fn registry_auth(
    req: &RunRequest,
    run_id: &RunId,
) -> Result<Vec<crate::exec::RegistryAuth>, String> {
    let empty = BTreeMap::new();
    let inputs = start_inputs(req, run_id, &empty);
    let mut list = Vec::new();
    for r in &req.plan.registries {
        let (Some(u), Some(p)) = (&r.username, &r.password) else {
            continue;
        };
        let render = |t: &sentinel_pipeline::Template| {
            t.render(|x| resolve(&inputs, x))
                .map_err(|e| format!("registry `{}`: {e}", r.name))
        };
        list.push(crate::exec::RegistryAuth {
            host: r.host.clone(),
            username: render(u)?,
            password: render(p)?,
        });
    }
    // The machine's credentials serve the hosts the pipeline does not name.
    for m in &req.registries {
        if !list.iter().any(|r| r.host == m.host) {
            list.push(m.clone());
        }
    }
    Ok(list)
}

/// The services' environment, resolved.
pub fn service_env(
    req: &RunRequest,
    run_id: &RunId,
) -> Result<Vec<(sentinel_pipeline::ServicePlan, Vec<Var>)>, ServiceEnvError> {
    let empty = BTreeMap::new();
    let inputs = start_inputs(req, run_id, &empty);
    req.plan
        .services
        .iter()
        .map(|svc| {
            let vars = svc
                .env
                .iter()
                .map(|(k, t)| {
                    let secret = t.refs().any(|r| matches!(r, Ref::Secret(_)));
                    t.render(|r| resolve(&inputs, r)).map(|value| Var {
                        name: k.clone(),
                        value,
                        secret,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| ServiceEnvError {
                    service: svc.name.clone(),
                    source,
                })?;
            Ok((svc.clone(), vars))
        })
        .collect()
}

/// Builds a stage's environment from the run so far.
pub fn env_of(
    req: &RunRequest,
    rec: &Recorder,
    plan: &Plan,
    stage: &StagePlan,
    cancelled: bool,
) -> Result<StageEnv, EnvError> {
    let outputs = rec.outputs();
    let sensitive = rec.sensitive();
    let inputs = EnvInputs {
        outputs: &outputs,
        sensitive: &sensitive,
        run_status: rec.status_so_far(cancelled),
        failed_stages: rec.failed_stages(),
        ..env_inputs(req, rec, plan)
    };
    stage_env(&inputs, stage)
}

/// What references resolve against before any stage ran.
fn env_inputs<'a>(req: &'a RunRequest, rec: &'a Recorder, plan: &'a Plan) -> EnvInputs<'a> {
    type Outputs = BTreeMap<StageName, (String, BTreeMap<String, String>)>;
    static NO_OUTPUTS: Outputs = BTreeMap::new();
    EnvInputs {
        plan,
        run_id: &rec.run_id,
        git: req.git.as_ref(),
        deploy: req.deploy.as_ref(),
        upstream: req.upstream.as_ref(),
        trigger_values: &req.trigger_values,
        host_env: &req.host_env,
        secrets: &req.secrets,
        outputs: &NO_OUTPUTS,
        sensitive: &[],
        run_status: "",
        failed_stages: String::new(),
    }
}

/// A stage's cache with its references resolved (file hashes are made
/// when it starts); `None` when the stage has none or the run uses no
/// cache.
pub fn cache_of(
    req: &RunRequest,
    rec: &Recorder,
    plan: &Plan,
    stage: &StagePlan,
) -> Option<crate::cache::StageCache> {
    use crate::cache::Piece;
    use sentinel_pipeline::KeyPart;
    let (c, access) = (stage.cache.as_ref()?, req.cache.as_ref()?);
    let inputs = env_inputs(req, rec, plan);
    let pieces = |k: &sentinel_pipeline::CacheKey| -> Result<Vec<Piece>, String> {
        k.0.iter()
            .map(|p| match p {
                KeyPart::Lit(t) => Ok(Piece::Text(t.clone())),
                KeyPart::Hash(files) => Ok(Piece::Hash(files.clone())),
                KeyPart::Ref(r) => crate::env::resolve(&inputs, r)
                    .map(Piece::Text)
                    .map_err(|e| e.to_string()),
            })
            .collect()
    };
    let built = (|| -> Result<_, String> {
        let key = pieces(&c.key)?;
        let restore_keys = c
            .restore_keys
            .iter()
            .map(&pieces)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((key, restore_keys))
    })();
    let (key, restore_keys) = match built {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(stage = %stage.name, "no cache: its key cannot be made: {e}");
            return None;
        }
    };
    let branch = req
        .git
        .as_ref()
        .and_then(|g| g.branch.clone())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| access.default_branch.clone());
    Some(crate::cache::StageCache {
        cache: access.cache.clone(),
        scope: crate::cache::Scope {
            project: access.project.clone(),
            branch,
            default_branch: access.default_branch.clone(),
            write: access.write,
        },
        key,
        restore_keys,
        paths: c.paths.clone(),
    })
}

/// The stages to get ready now (at most `cap` made ready and not started
/// at a time): pending container stages that run on success, whose
/// dependencies are all running, done or themselves made ready, and whose
/// inputs do not depend on what those produce (no volume at a path of its
/// own), each with its container. Stages without dependencies start at
/// once and need none.
pub fn to_warm<'p>(
    plan: &'p Plan,
    rec: &Recorder,
    req: &RunRequest,
    warmed: &BTreeSet<StageName>,
    cap: usize,
) -> Vec<(&'p StagePlan, &'p sentinel_pipeline::ContainerAction)> {
    use sentinel_api::StageStatus as S;
    let pending = |n: &StageName| rec.state(n).status == S::Pending;
    let mut waiting = warmed.iter().filter(|n| pending(n)).count();
    let mut now: BTreeSet<&StageName> = BTreeSet::new();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for s in &plan.stages {
            if waiting >= cap {
                return out;
            }
            let ready_soon = |n: &StageName| {
                matches!(rec.state(n).status, S::Running | S::Succeeded)
                    || (pending(n) && (warmed.contains(n) || now.contains(n)))
            };
            // An image named by an earlier stage's output is not known yet;
            // a stage with a Docker endpoint gets it when its container is made.
            let sentinel_pipeline::Action::Container(action) = &s.action else {
                continue;
            };
            if action.image_ref.is_some()
                || action.docker
                || action.image_command
                || action.commit.is_some()
            {
                continue;
            }
            if pending(&s.name)
                && !warmed.contains(&s.name)
                && !now.contains(&s.name)
                && !s.needs.is_empty()
                && !s.finalizer
                && s.when == sentinel_pipeline::When::OnSuccess
                && s.volumes.iter().all(|v| v.path.is_none())
                && !req.reuse.contains_key(&s.name)
                && s.needs.iter().all(ready_soon)
            {
                now.insert(&s.name);
                out.push((s, action));
                waiting += 1;
            }
        }
        if out.len() == before {
            return out;
        }
    }
}

/// A stage's inputs: the `out/` files of the stages finished so far, and
/// its volumes with the files their stages left (when kept).
pub fn inputs_of(rec: &Recorder, stage: &StagePlan) -> Inputs {
    Inputs {
        outputs: rec.outs(),
        volumes: stage
            .volumes
            .iter()
            .map(|v| VolumeInput {
                volume: v.clone(),
                files: rec.files_of(&v.stage),
            })
            .collect(),
    }
}

/// Where the files of a run's stages are kept (`<state>/kept/<run>`).
pub fn kept_dir(state_dir: &Path, run: &RunId) -> PathBuf {
    state_dir.join("kept").join(run.as_str())
}

/// Where a stage's created files are kept, when it can change the
/// workspace at all (a step that may only read it changes nothing).
pub fn capture_of(state_dir: &Path, run: &RunId, stage: &StagePlan, keep: bool) -> Option<PathBuf> {
    let writes = stage.action.writes_workspace();
    (keep && writes).then(|| kept_dir(state_dir, run).join(stage.name.as_str()))
}

/// Keeps the files of the newest `keep` runs of a state folder and removes
/// older ones (their re-runs run those stages again, and say so).
pub fn prune_kept(state_dir: &Path, keep: usize, spare: &std::collections::BTreeSet<String>) {
    let root = state_dir.join("kept");
    let Ok(entries) = std::fs::read_dir(&root) else {
        return;
    };
    let mut runs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !spare.contains(e.file_name().to_string_lossy().as_ref()))
        .map(|e| e.path())
        .collect();
    runs.sort();
    let drop = runs.len().saturating_sub(keep);
    for old in runs.into_iter().take(drop) {
        let _ = std::fs::remove_dir_all(old);
    }
}

/// [`prune_kept`] in the background, sparing the runs paused at an
/// approval gate (their files wait with them); nothing is pruned when the
/// open runs cannot be listed.
pub async fn prune_kept_sparing(store: &dyn crate::ports::Store, config: &crate::EngineConfig) {
    let open = match store.open_runs().await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!("cannot list the open runs, so no kept files are pruned: {e}");
            return;
        }
    };
    let spare: std::collections::BTreeSet<String> = open
        .into_iter()
        .filter(|r| r.status == sentinel_api::RunStatus::WaitingApproval)
        .map(|r| r.id.to_string())
        .collect();
    let (state, keep) = (config.state_dir.clone(), config.keep_files);
    let _ = tokio::task::spawn_blocking(move || prune_kept(&state, keep, &spare)).await;
}

/// The first secret stage `s` needs, if it needs one.
pub fn secret_needed(s: &sentinel_pipeline::StagePlan) -> Option<String> {
    s.templates().flat_map(|t| t.refs()).find_map(|r| match r {
        Ref::Secret(n) => Some(n.clone()),
        _ => None,
    })
}

/// The stages whose files a re-run restores, in the plan's order.
pub fn restored(plan: &Plan, reuse: &BTreeMap<StageName, crate::run::Reused>) -> Vec<PathBuf> {
    plan.stages
        .iter()
        .filter_map(|s| reuse.get(&s.name))
        .filter_map(|r| r.files.as_ref().map(|f| f.dir.clone()))
        .collect()
}
