//! A stage's scoped Docker endpoint (`docker: true`): a Unix socket in a
//! folder mounted into the stage's container (`DOCKER_HOST`), served by
//! this process, which answers an allowlist of Docker API calls through the
//! executor's own engine connection — ping, version, build, tag, push,
//! pull, inspect and list of *this run's* images — and refuses everything
//! else with a 403 naming what it allows ([`rules`]). Builds are forced to
//! the stage's network (never the host's), refuse remote contexts and extra
//! hosts, carry the run's labels, and may not start `FROM` a private image
//! another run pulled; a tag may not move a name off an image the run does
//! not own; registry credentials are the run's, added here, never the
//! stage's. Images made through it and not pushed are removed when the run
//! ends. No privileged container is involved.

mod build;
mod rules;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::query_parameters::{
    CreateImageOptions, ListImagesOptions, PushImageOptions, TagImageOptions,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use sentinel_api::RunId;
use sentinel_engine::exec::RegistryAuth;
use tokio_util::sync::CancellationToken;

use crate::build::credentials;
use crate::{DockerExecutor, LABEL_KIND, LABEL_RUN};

use rules::Route;

/// The `dev.sentinel.kind` of images built through an endpoint.
pub const KIND_ENDPOINT: &str = "endpoint";
/// Where a stage's container sees the endpoint's folder.
pub const MOUNT: &str = "/run/sentinel/docker";
/// `DOCKER_HOST` inside the container.
pub const DOCKER_HOST: &str = "unix:///run/sentinel/docker/docker.sock";

type Body = BoxBody<Bytes, Infallible>;

/// What each run pushed through its endpoints.
#[derive(Debug, Default)]
pub(crate) struct Images {
    /// Image ids a run pushed (kept when the run ends).
    pushed: HashMap<RunId, HashSet<String>>,
}

/// The repository of the tags marking an image private to a run:
/// `sentinel-private/<run>:<id>`. A tag lives on the engine, so every
/// Sentinel process using it (a restarted server, another project's run)
/// sees the mark, and it goes when the image goes.
pub const PRIVATE_REPO: &str = "sentinel-private";

/// Marks image `id` private to `run` (pulled with its credentials).
pub(crate) async fn mark_private(docker: &bollard::Docker, id: &str, run: &RunId) {
    let opts = TagImageOptions {
        repo: Some(format!(
            "{PRIVATE_REPO}/{}",
            run.as_str().to_ascii_lowercase()
        )),
        tag: Some(id.trim_start_matches("sha256:").chars().take(12).collect()),
    };
    if let Err(e) = docker.tag_image(id, Some(opts)).await {
        tracing::warn!("cannot mark image {id} private to run {run}: {e}");
    }
}

/// A running endpoint; [`Endpoint::stop`] removes its socket.
pub(crate) struct Endpoint {
    /// The folder to mount at [`MOUNT`].
    pub dir: PathBuf,
    spool: PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

struct Ctx {
    ex: DockerExecutor,
    run: RunId,
    /// The network builds get (`none` or the engine's default).
    network: &'static str,
    spool: PathBuf,
    auth: Vec<RegistryAuth>,
    api_version: String,
}

/// Starts the endpoint of `stage` of `run` in `dir` (made afresh; `spool`
/// is a folder of this machine that no container sees).
pub(crate) async fn start(
    ex: &DockerExecutor,
    run: &RunId,
    dir: &Path,
    spool: &Path,
    network_none: bool,
) -> Result<Endpoint, String> {
    let _ = tokio::fs::remove_dir_all(dir).await;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("cannot make the Docker endpoint's folder: {e}"))?;
    tokio::fs::create_dir_all(spool)
        .await
        .map_err(|e| format!("cannot make the Docker endpoint's spool: {e}"))?;
    let socket = dir.join("docker.sock");
    let listener = tokio::net::UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    // The stage's user connects: the folder is its alone (mounted read-only).
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [(dir, 0o755), (socket.as_path(), 0o666)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("cannot open {} to the stage: {e}", p.display()))?;
    }
    let api_version = ex
        .docker
        .version()
        .await
        .ok()
        .and_then(|v| v.api_version)
        .unwrap_or_else(|| "1.41".into());
    let ctx = Arc::new(Ctx {
        ex: ex.clone(),
        run: run.clone(),
        network: if network_none { "none" } else { "default" },
        spool: spool.to_path_buf(),
        auth: ex.registry_auth(run).await,
        api_version,
    });
    let stop = CancellationToken::new();
    let task = {
        let stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let ctx = ctx.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, Infallible>(handle(ctx, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        })
    };
    Ok(Endpoint {
        dir: dir.to_path_buf(),
        spool: spool.to_path_buf(),
        stop,
        task,
    })
}

/// Starts the endpoint of a `docker: true` stage in its run's folder: its
/// folder joins `binds` (read-only, at [`MOUNT`]) and `DOCKER_HOST` (with
/// `DOCKER_BUILDKIT=0`) its environment.
pub(crate) async fn for_stage(
    ex: &DockerExecutor,
    job: &mut sentinel_engine::exec::StageJob,
    ws: &sentinel_engine::exec::LocalWorkspace,
    binds: &mut Vec<String>,
) -> Result<Endpoint, String> {
    let run_dir = ws.dir.parent().unwrap_or(&ws.dir).to_path_buf();
    let dir = run_dir.join(format!("docker-{}", job.stage));
    let spool = run_dir.join(format!("docker-{}-spool", job.stage));
    let none = job.limits.network == sentinel_pipeline::Network::None;
    let ep = start(ex, &job.run_id, &dir, &spool, none).await?;
    binds.push(format!("{}:{MOUNT}:ro", ep.dir.display()));
    for (k, v) in [("DOCKER_HOST", DOCKER_HOST), ("DOCKER_BUILDKIT", "0")] {
        job.env.retain(|e| e.name != k);
        job.env.push(sentinel_engine::exec::Var::plain(k, v));
    }
    Ok(ep)
}

impl Endpoint {
    /// Stops serving and removes the socket and the spool.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
        let _ = tokio::fs::remove_dir_all(&self.dir).await;
        let _ = tokio::fs::remove_dir_all(&self.spool).await;
    }
}

/// Removes the images `run` built through endpoints and did not push.
pub(crate) async fn end_run(ex: &DockerExecutor, run: &RunId) {
    let pushed = ex
        .images
        .lock()
        .await
        .pushed
        .remove(run)
        .unwrap_or_default();
    // A private image stays private to the run that pulled it while it is
    // on this host, whether or not that run has ended.
    let filters = HashMap::from([(
        "label".to_string(),
        vec![
            format!("{LABEL_RUN}={run}"),
            format!("{LABEL_KIND}={KIND_ENDPOINT}"),
        ],
    )]);
    let opts = ListImagesOptions {
        filters: Some(filters),
        ..Default::default()
    };
    let Ok(list) = ex.docker.list_images(Some(opts)).await else {
        return;
    };
    for img in list {
        if !pushed.contains(&img.id) {
            let opts = bollard::query_parameters::RemoveImageOptions {
                force: true,
                ..Default::default()
            };
            if let Err(e) = ex.docker.remove_image(&img.id, Some(opts), None).await {
                tracing::warn!("cannot remove image {} the run {run} built: {e}", img.id);
            }
        }
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .expect("a response")
}

fn json(status: StatusCode, v: &impl serde::Serialize) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::to_vec(v).unwrap_or_default(),
    )
}

fn refused(msg: impl Into<String>) -> Response<Body> {
    let msg = msg.into();
    let msg = if msg.starts_with(rules::REFUSES) {
        msg
    } else {
        format!("{} {msg}", rules::REFUSES)
    };
    tracing::info!("docker endpoint: {msg}");
    json(
        StatusCode::FORBIDDEN,
        &serde_json::json!({ "message": msg }),
    )
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "message": msg.into() }))
}

/// A stream of JSON lines, as the engine streams progress.
fn lines(s: impl Stream<Item = serde_json::Value> + Send + Sync + 'static) -> Response<Body> {
    let body = StreamBody::new(s.map(|v| {
        let mut line = serde_json::to_vec(&v).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
    }));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("a response")
}

/// An error line of a progress stream.
fn error_line(e: bollard::errors::Error) -> serde_json::Value {
    let msg = match e {
        bollard::errors::Error::DockerStreamError { error } => error,
        other => other.to_string(),
    };
    serde_json::json!({ "errorDetail": { "message": msg }, "error": msg })
}

/// Who an image is: its id, the run its labels name, and the runs it is
/// private to (its `sentinel-private/<run>` tags).
pub(crate) struct Who {
    pub id: String,
    pub run: Option<String>,
    pub private_to: Vec<String>,
}

async fn whose(ctx: &Ctx, name: &str) -> Option<Who> {
    let i = ctx.ex.docker.inspect_image(name).await.ok()?;
    let run = i
        .config
        .and_then(|c| c.labels)
        .and_then(|l| l.get(LABEL_RUN).cloned());
    let prefix = format!("{PRIVATE_REPO}/");
    let private_to = i
        .repo_tags
        .unwrap_or_default()
        .iter()
        .filter_map(|t| t.strip_prefix(&prefix))
        .filter_map(|t| t.split(':').next().map(str::to_string))
        .collect();
    Some(Who {
        id: i.id.unwrap_or_default(),
        run,
        private_to,
    })
}

impl Ctx {
    fn owns(&self, run_label: &Option<String>) -> bool {
        run_label.as_deref() == Some(self.run.as_str())
    }

    /// True when runs pulled the image with their credentials and this
    /// run is not one of them.
    fn private_elsewhere(&self, who: &Who) -> bool {
        let ours = self.run.as_str().to_ascii_lowercase();
        !who.private_to.is_empty() && !who.private_to.contains(&ours)
    }

    /// Why a tag may not be set to name an image of this run, if it may not.
    async fn tag_problem(&self, target: &str) -> Option<String> {
        match whose(self, target).await {
            Some(who) if !self.owns(&who.run) => Some(format!(
                "the name `{target}` belongs to an image this run does not own; a build or tag here would move it"
            )),
            _ => None,
        }
    }
}

async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().map(str::to_string);
    let q = rules::query(raw_query.as_deref());
    let route = match rules::route(&method, &path, &q) {
        Ok(r) => r,
        Err(why) => {
            // Read what the client sends first: refusing mid-upload would
            // break its pipe before it reads the reason.
            drain(req.into_body()).await;
            return refused(why);
        }
    };
    match route {
        Route::Ping => Response::builder()
            .status(StatusCode::OK)
            .header("api-version", &ctx.api_version)
            .header("docker-experimental", "false")
            .header("ostype", "linux")
            .header("content-type", "text/plain; charset=utf-8")
            .body(if method == "HEAD" {
                Full::new(Bytes::new()).boxed()
            } else {
                Full::new(Bytes::from_static(b"OK")).boxed()
            })
            .expect("a response"),
        Route::Version => match ctx.ex.docker.version().await {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
        },
        Route::List => {
            let filters = HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_RUN}={}", ctx.run)],
            )]);
            let opts = ListImagesOptions {
                filters: Some(filters),
                ..Default::default()
            };
            match ctx.ex.docker.list_images(Some(opts)).await {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
            }
        }
        Route::Inspect(name) | Route::History(name) => {
            let history = path.ends_with("/history");
            match whose(&ctx, &name).await {
                None => error(StatusCode::NOT_FOUND, format!("No such image: {name}")),
                Some(who) if ctx.private_elsewhere(&who) => {
                    refused(format!("`{name}` is a private image another run pulled"))
                }
                Some(_) if history => match ctx.ex.docker.image_history(&name).await {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
                },
                Some(_) => match ctx.ex.docker.inspect_image(&name).await {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => error(StatusCode::BAD_GATEWAY, e.to_string()),
                },
            }
        }
        Route::Tag(name) => {
            let repo = q.get("repo").cloned().unwrap_or_default();
            let tag = q
                .get("tag")
                .cloned()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "latest".into());
            match whose(&ctx, &name).await {
                None => return error(StatusCode::NOT_FOUND, format!("No such image: {name}")),
                Some(who) if !ctx.owns(&who.run) => {
                    return refused(format!(
                        "tagging `{name}`: only this run's images may be tagged here"
                    ));
                }
                Some(_) => {}
            }
            if let Some(why) = ctx.tag_problem(&format!("{repo}:{tag}")).await {
                return refused(why);
            }
            let opts = TagImageOptions {
                repo: Some(repo),
                tag: Some(tag),
            };
            match ctx.ex.docker.tag_image(&name, Some(opts)).await {
                Ok(()) => full(StatusCode::CREATED, "text/plain", Bytes::new()),
                Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
            }
        }
        Route::Push(name) => {
            let tag = q
                .get("tag")
                .cloned()
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "latest".into());
            let full_ref = format!("{name}:{tag}");
            let id = match whose(&ctx, &full_ref).await {
                None => return error(StatusCode::NOT_FOUND, format!("No such image: {full_ref}")),
                Some(who) if !ctx.owns(&who.run) => {
                    return refused(format!(
                        "pushing `{full_ref}`: only this run's images may be pushed here"
                    ));
                }
                Some(who) => who.id,
            };
            ctx.ex
                .images
                .lock()
                .await
                .pushed
                .entry(ctx.run.clone())
                .or_default()
                .insert(id);
            let creds = RegistryAuth::for_image(&ctx.auth, &name).map(credentials);
            let opts = PushImageOptions {
                tag: Some(tag),
                ..Default::default()
            };
            let docker = ctx.ex.docker.clone();
            streamed(move |tx| async move {
                let mut s = docker.push_image(&name, Some(opts), creds);
                while let Some(r) = s.next().await {
                    let line = match r {
                        Ok(info) => serde_json::to_value(info).unwrap_or_default(),
                        Err(e) => error_line(e),
                    };
                    if tx.send(line).await.is_err() {
                        return;
                    }
                }
            })
        }
        Route::Pull => {
            let image = q.get("fromImage").cloned().unwrap_or_default();
            let tag = q.get("tag").cloned().filter(|t| !t.is_empty());
            let reference = match &tag {
                Some(t) if t.starts_with("sha256:") => format!("{image}@{t}"),
                Some(t) => format!("{image}:{t}"),
                None => image.clone(),
            };
            let creds = RegistryAuth::for_image(&ctx.auth, &reference).map(credentials);
            let private = creds.is_some();
            let opts = CreateImageOptions {
                from_image: Some(reference.clone()),
                ..Default::default()
            };
            let ctx = ctx.clone();
            streamed(move |tx| async move {
                let mut s = ctx.ex.docker.create_image(Some(opts), None, creds);
                while let Some(r) = s.next().await {
                    let line = match r {
                        Ok(info) => serde_json::to_value(info).unwrap_or_default(),
                        Err(e) => error_line(e),
                    };
                    let _ = tx.send(line).await;
                }
                // Pulled with the run's credentials: private to this run.
                if private && let Some(who) = whose(&ctx, &reference).await {
                    mark_private(&ctx.ex.docker, &who.id, &ctx.run).await;
                }
            })
        }
        Route::Build => build::build(&ctx, req, raw_query.as_deref(), &q).await,
    }
}

/// Reads a request's body to its end (at most 4 GiB), discarding it.
async fn drain(mut body: Incoming) {
    let mut seen = 0u64;
    while let Some(Ok(f)) = body.frame().await {
        seen += f.data_ref().map_or(0, |d| d.len() as u64);
        if seen > 4 << 30 {
            break;
        }
    }
}

/// A progress stream fed as `work` goes: its lines reach the client as
/// they come (a `docker build` or `push` in the stage shows them live).
fn streamed<F, Fut>(work: F) -> Response<Body>
where
    F: FnOnce(tokio::sync::mpsc::Sender<serde_json::Value>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(work(tx));
    lines(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|v| (v, rx))
    }))
}
