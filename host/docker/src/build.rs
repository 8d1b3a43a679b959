//! Image build stages (`build:`): the context folder of the workspace sent
//! as a tar (see [`crate::context`]), built by the Docker engine with the
//! stage's limits and network, labelled with the run, tagged, and pushed
//! with the run's registry credentials. The build log streams into the
//! stage log; a failed build, tag or push fails the stage with the engine's
//! own message. Outputs: `image` (the first tag), `image_id`, `tags`, and
//! for pushed tags `digest` (`repo@sha256:…` of the first) and
//! `digest_<n>` for the n-th pushed tag.

use std::collections::HashMap;
use std::time::Instant;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, PushImageOptions, TagImageOptions};
use bytes::Bytes;
use futures_util::StreamExt;
use sentinel_engine::exec::{
    BuildWork, Chunk, Outcome, RegistryAuth, StageJob, StageReport, Stream, Work,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{DockerExecutor, LABEL_RUN};

/// Splits `repo[:tag]` (a registry's port is part of the repository).
pub(crate) fn split_ref(to: &str) -> (&str, &str) {
    match to.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (to, "latest"),
    }
}

/// The engine's credentials for `auth`.
pub(crate) fn credentials(auth: &RegistryAuth) -> DockerCredentials {
    DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: Some(auth.host.clone()),
        ..Default::default()
    }
}

/// A registry's refusal in words a user acts on, with the engine's message.
pub(crate) fn registry_error(what: &str, image: &str, e: &str) -> String {
    let l = e.to_ascii_lowercase();
    let why = if l.contains("unauthorized")
        || l.contains("authentication required")
        || l.contains("denied")
        || l.contains("no basic auth credentials")
    {
        "unauthorised: the registry refused the credentials (or none were given; declare them in `registries:`)"
    } else if l.contains("no such host") || l.contains("server misbehaving") {
        "unknown host: the registry's name does not resolve"
    } else if l.contains("connection refused") || l.contains("i/o timeout") {
        "the registry does not answer"
    } else if l.contains("manifest unknown")
        || l.contains("not found")
        || l.contains("does not exist")
    {
        "missing: the registry has no such image or tag"
    } else {
        "the engine reported an error"
    };
    format!("cannot {what} `{image}`: {why} ({})", e.trim())
}

/// Writes to a channel in chunks: the tar streams to the engine while it
/// is made.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::other("the engine stopped reading the context"))
    }
}

impl Drop for ChannelWriter {
    fn drop(&mut self) {
        let _ = std::io::Write::flush(self);
    }
}

/// Sends a line of Sentinel's own to the stage log.
async fn say(job: &StageJob, line: String) {
    log(job, format!("{line}\n").into_bytes()).await;
}

/// Runs a build stage.
pub(crate) async fn run(
    ex: &DockerExecutor,
    job: StageJob,
    stop: CancellationToken,
) -> StageReport {
    let Work::Build(b) = &job.work else {
        return StageReport::of(Outcome::Error("not a build".into()));
    };
    let b = b.clone();
    tokio::select! {
        r = build(ex, &job, &b) => match r {
            Ok(report) => report,
            Err(outcome) => StageReport::of(outcome),
        },
        () = stop.cancelled() => StageReport::of(Outcome::Stopped),
    }
}

/// The context folder on this machine, checked to be inside the workspace.
fn context_dir(job: &StageJob, b: &BuildWork) -> Result<std::path::PathBuf, Outcome> {
    let ws = job.workspace.local().ok_or_else(|| {
        Outcome::StartFailed("an image build needs the run's workspace on this machine".into())
    })?;
    let root = ws
        .dir
        .canonicalize()
        .map_err(|e| Outcome::StartFailed(format!("cannot read the workspace: {e}")))?;
    let dir = root.join(&b.context);
    let real = dir.canonicalize().map_err(|e| {
        Outcome::StartFailed(format!(
            "the build context `{}` is not there ({e})",
            b.context
        ))
    })?;
    if !real.starts_with(&root) {
        return Err(Outcome::StartFailed(format!(
            "the build context `{}` leads outside the workspace",
            b.context
        )));
    }
    if !real.is_dir() {
        return Err(Outcome::StartFailed(format!(
            "the build context `{}` is not a folder",
            b.context
        )));
    }
    let df = real.join(&b.dockerfile);
    if !df.symlink_metadata().is_ok_and(|m| m.is_file()) {
        return Err(Outcome::StartFailed(format!(
            "the build context `{}` has no Dockerfile `{}`",
            b.context, b.dockerfile
        )));
    }
    Ok(real)
}

async fn build(ex: &DockerExecutor, job: &StageJob, b: &BuildWork) -> Result<StageReport, Outcome> {
    let dir = context_dir(job, b)?;
    crate::process::say_started(&job.log).await;
    let first = b
        .tags
        .first()
        .cloned()
        .ok_or_else(|| Outcome::StartFailed("the build has no tag".into()))?;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let keep = vec![b.dockerfile.clone(), ".dockerignore".to_string()];
    let sending = tokio::task::spawn_blocking(move || {
        crate::context::write_tar(
            &dir,
            &keep,
            ChannelWriter {
                tx,
                buf: Vec::with_capacity(256 * 1024),
            },
        )
    });
    // The body owns the receiver: when the engine stops reading (a failed
    // build), dropping it ends the writer.
    let chunks =
        futures_util::stream::unfold(rx, |mut r| async move { r.recv().await.map(|c| (c, r)) });
    // The classic builder adds each label as a step of its own (a
    // container each) and a label whose value changes defeats the build
    // cache for that step: the run's id is the one label of Sentinel's
    // (what `images prune` and the reaper go by); the pipeline's labels
    // keep their cached steps while their values stay the same.
    let mut labels: HashMap<String, String> = b.labels.iter().cloned().collect();
    labels.insert(LABEL_RUN.into(), job.run_id.to_string());
    let cpus = job.limits.cpus;
    let opts = BuildImageOptions {
        dockerfile: b.dockerfile.clone(),
        t: Some(first.clone()),
        nocache: b.no_cache,
        pull: b.pull.then(|| "1".to_string()),
        rm: true,
        forcerm: true,
        memory: Some(i32::try_from(job.limits.memory).unwrap_or(i32::MAX)),
        cpuperiod: cpus.map(|_| 100_000),
        cpuquota: cpus.map(|c| (c * 100_000.0) as i32),
        buildargs: Some(b.args.iter().cloned().collect()),
        labels: Some(labels.clone()),
        networkmode: Some(match job.limits.network {
            sentinel_pipeline::Network::None => "none".into(),
            _ => "default".into(),
        }),
        target: b.target.clone().unwrap_or_default(),
        ..Default::default()
    };
    let t0 = Instant::now();
    say(
        job,
        format!("building {first} from {}/{}", b.context, b.dockerfile),
    )
    .await;
    // The classic builder shows `FROM ${BASE}` unexpanded: say the values
    // (never secrets: the validation refuses them in arguments).
    for (k, v) in &b.args {
        say(job, format!("  build argument {k}={v}")).await;
    }
    // Base images of private registries are pulled with the run's credentials.
    let auth = ex.registry_auth(&job.run_id).await;
    let creds: HashMap<String, DockerCredentials> = auth
        .iter()
        .map(|a| (a.host.clone(), credentials(a)))
        .collect();
    let (image_id, failure) = if b.secrets.is_empty() {
        classic(ex, job, opts, creds, chunks).await
    } else {
        say(
            job,
            format!(
                "with BuildKit: secret mounts {}",
                b.secrets
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .await;
        with_buildkit(ex, job, b, &opts, &labels, &auth, chunks).await
    };
    let sent = sending.await;
    if let Some(f) = failure {
        // The engine's message first; a context that could not be sent
        // says why too.
        let why = match &sent {
            Ok(Err(e)) => format!("{f} ({e})"),
            _ => f,
        };
        return Err(Outcome::StartFailed(format!(
            "the build failed: {}",
            why.trim()
        )));
    }
    let sent = match sent {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Outcome::StartFailed(format!("the build failed: {e}"))),
        Err(e) => return Err(Outcome::Error(format!("the context writer failed: {e}"))),
    };
    let image_id = match image_id {
        Some(id) => id,
        None => ex
            .docker
            .inspect_image(&first)
            .await
            .ok()
            .and_then(|i| i.id)
            .ok_or_else(|| Outcome::Error(format!("the build made no image `{first}`")))?,
    };
    say(
        job,
        format!(
            "built {image_id} in {:.1} s ({} files, {} bytes of context)",
            t0.elapsed().as_secs_f64(),
            sent.files,
            sent.bytes
        ),
    )
    .await;
    for t in &b.tags[1..] {
        let (repo, tag) = split_ref(t);
        let opts = TagImageOptions {
            repo: Some(repo.to_string()),
            tag: Some(tag.to_string()),
        };
        ex.docker
            .tag_image(&image_id, Some(opts))
            .await
            .map_err(|e| Outcome::StartFailed(format!("cannot tag the image as `{t}`: {e}")))?;
        say(job, format!("tagged {t}")).await;
    }
    let mut outputs = format!(
        "image={first}\nimage_id={image_id}\ntags={}\n",
        b.tags.join(" ")
    );
    for (n, t) in b.push.iter().enumerate() {
        let digest = push(ex, job, &auth, t).await?;
        let (repo, _) = split_ref(t);
        let pinned = format!("{repo}@{digest}");
        if n == 0 {
            outputs.push_str(&format!("digest={pinned}\n"));
        }
        outputs.push_str(&format!("digest_{}={pinned}\n", n + 1));
    }
    Ok(StageReport {
        outcome: Outcome::Exited { code: 0 },
        image_id: Some(image_id),
        outputs: Some(outputs),
        ..StageReport::default()
    })
}

/// Sends a piece of the build's output to the stage log.
async fn log(job: &StageJob, bytes: Vec<u8>) {
    if !bytes.is_empty() {
        let _ = job
            .log
            .send(Chunk {
                stream: Stream::Stdout,
                bytes,
            })
            .await;
    }
}

/// A build with the classic builder; the image id or why it failed.
async fn classic(
    ex: &DockerExecutor,
    job: &StageJob,
    opts: BuildImageOptions,
    creds: HashMap<String, DockerCredentials>,
    chunks: impl futures_util::Stream<Item = Bytes> + Send + 'static,
) -> (Option<String>, Option<String>) {
    let mut stream = ex.docker.build_image(
        opts,
        (!creds.is_empty()).then_some(creds),
        Some(bollard::body_stream(chunks)),
    );
    let (mut image_id, mut failure) = (None, None);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream {
                    log(job, text.into_bytes()).await;
                }
                if let Some(id) = info.aux.and_then(|a| a.id) {
                    image_id = Some(id);
                }
                if let Some(d) = info.error_detail.and_then(|d| d.message) {
                    failure = Some(d);
                }
            }
            Err(e) => {
                failure = Some(match e {
                    bollard::errors::Error::DockerStreamError { error } => error,
                    other => other.to_string(),
                });
                break;
            }
        }
    }
    (image_id, failure)
}

/// A build with the engine's BuildKit, answering the Dockerfile's secret
/// mounts (and registry logins) over a build session.
async fn with_buildkit(
    ex: &DockerExecutor,
    job: &StageJob,
    b: &BuildWork,
    opts: &BuildImageOptions,
    labels: &HashMap<String, String>,
    auth: &[RegistryAuth],
    chunks: impl futures_util::Stream<Item = Bytes> + Send + Sync + 'static,
) -> (Option<String>, Option<String>) {
    let v = ex.docker.client_version();
    let api = format!("{}.{}", v.major_version, v.minor_version);
    let session = match crate::buildkit::session(&api, &b.secrets, auth).await {
        Ok(s) => s,
        Err(e) => return (None, Some(e)),
    };
    let query = buildkit_query(b, &session.id, opts, labels);
    let mut lines = match crate::buildkit::build(&api, &query, chunks).await {
        Ok(l) => Box::pin(l),
        Err(e) => return (None, Some(e)),
    };
    let (mut image_id, mut failure) = (None, None);
    let mut seen = Vec::new();
    while let Some(item) = lines.next().await {
        match item.map(|v| crate::buildkit::line(&v, &mut seen)) {
            Ok(crate::buildkit::Line::Log(bytes)) => log(job, bytes).await,
            Ok(crate::buildkit::Line::Image(id)) => image_id = Some(id),
            Ok(crate::buildkit::Line::Error(e)) => failure = Some(e),
            Ok(crate::buildkit::Line::Nothing) => {}
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    drop(session);
    (image_id, failure)
}

/// The query of a BuildKit build (`version=2`, the session, every tag).
fn buildkit_query(
    b: &BuildWork,
    session: &str,
    opts: &BuildImageOptions,
    labels: &HashMap<String, String>,
) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("version", "2")
        .append_pair("session", session)
        .append_pair("dockerfile", &b.dockerfile)
        .append_pair("rm", "1")
        .append_pair("forcerm", "1");
    for t in &b.tags {
        q.append_pair("t", t);
    }
    let args: HashMap<&str, &str> = b
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    q.append_pair(
        "buildargs",
        &serde_json::to_string(&args).unwrap_or_default(),
    );
    q.append_pair("labels", &serde_json::to_string(labels).unwrap_or_default());
    if let Some(t) = &b.target {
        q.append_pair("target", t);
    }
    if b.no_cache {
        q.append_pair("nocache", "1");
    }
    if b.pull {
        q.append_pair("pull", "1");
    }
    if let Some(n) = &opts.networkmode {
        q.append_pair("networkmode", n);
    }
    if let Some(m) = opts.memory {
        q.append_pair("memory", &m.to_string());
    }
    if let (Some(p), Some(c)) = (opts.cpuperiod, opts.cpuquota) {
        q.append_pair("cpuperiod", &p.to_string())
            .append_pair("cpuquota", &c.to_string());
    }
    q.finish()
}

/// Pushes `tag` with the run's credentials for its registry; returns the
/// registry's digest of it.
async fn push(
    ex: &DockerExecutor,
    job: &StageJob,
    auth: &[RegistryAuth],
    tag: &str,
) -> Result<String, Outcome> {
    let (repo, t) = split_ref(tag);
    let creds = RegistryAuth::for_image(auth, tag).map(credentials);
    say(
        job,
        format!(
            "pushing {tag}{}",
            if creds.is_some() {
                " (with the registry's credentials)"
            } else {
                ""
            }
        ),
    )
    .await;
    let opts = PushImageOptions {
        tag: Some(t.to_string()),
        ..Default::default()
    };
    let mut stream = ex.docker.push_image(repo, Some(opts), creds);
    let mut digest = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| {
            let msg = match e {
                bollard::errors::Error::DockerStreamError { error } => error,
                other => other.to_string(),
            };
            Outcome::StartFailed(registry_error("push", tag, &msg))
        })?;
        if let Some(msg) = info.error_detail.and_then(|d| d.message) {
            return Err(Outcome::StartFailed(registry_error("push", tag, &msg)));
        }
        if let Some(d) = info
            .status
            .as_deref()
            .and_then(|s| s.split("digest: ").nth(1))
            .and_then(|s| s.split_whitespace().next())
        {
            digest = Some(d.to_string());
        }
    }
    let digest = digest.ok_or_else(|| {
        Outcome::StartFailed(format!("the push of `{tag}` ended without a digest"))
    })?;
    say(job, format!("pushed {tag}: {digest}")).await;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_at_the_tag() {
        assert_eq!(split_ref("app:1.2"), ("app", "1.2"));
        assert_eq!(
            split_ref("reg:5000/team/app"),
            ("reg:5000/team/app", "latest")
        );
        assert_eq!(split_ref("reg:5000/app:v1"), ("reg:5000/app", "v1"));
    }

    #[test]
    fn registry_errors_say_why() {
        let e = registry_error("push", "r/a:1", "unauthorized: authentication required");
        assert!(e.contains("unauthorised"), "{e}");
        let e = registry_error(
            "pull",
            "nohost.invalid/a",
            "Get \"https://nohost.invalid/v2/\": dial tcp: lookup nohost.invalid: no such host",
        );
        assert!(e.contains("unknown host"), "{e}");
        let e = registry_error("pull", "r/a:2", "manifest unknown: manifest unknown");
        assert!(e.contains("missing"), "{e}");
    }
}
