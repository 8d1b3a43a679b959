//! A build through a stage's endpoint: the context spooled so its
//! Dockerfile can be read first (no `FROM` a private image another run
//! pulled), then built with the stage's network, the run's labels and the
//! run's registry credentials, the extra names tagged after.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bollard::query_parameters::{BuildImageOptions, TagImageOptions};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;

use super::{Body, Ctx, KIND_ENDPOINT, drain, error, error_line, refused, rules, streamed, whose};
use crate::build::{credentials, split_ref};
use crate::{LABEL_KIND, LABEL_RUN};

/// The Dockerfile of a spooled context, if it is there.
fn dockerfile_of(spooled: &Path, name: &str) -> Option<String> {
    let want = name.trim_start_matches("./");
    let f = std::fs::File::open(spooled).ok()?;
    let mut archive = tar::Archive::new(f);
    for e in archive.entries().ok()? {
        let mut e = e.ok()?;
        let path = e
            .path()
            .ok()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if path == want {
            let mut text = String::new();
            use std::io::Read as _;
            e.by_ref().take(1 << 20).read_to_string(&mut text).ok()?;
            return Some(text);
        }
    }
    None
}

pub(super) async fn build(
    ctx: &Ctx,
    req: Request<Incoming>,
    raw_query: Option<&str>,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let tags = rules::query_all(raw_query, "t");
    for t in &tags {
        if let Some(why) = ctx.tag_problem(t).await {
            drain(req.into_body()).await;
            return refused(why);
        }
    }
    // The context, spooled: its Dockerfile is read before the engine builds.
    let spooled = ctx.spool.join(format!("context-{}.tar", ulid::Ulid::new()));
    let mut file = match tokio::fs::File::create(&spooled).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut body = req.into_body();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data()
                    && let Err(e) = file.write_all(&data).await
                {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    let _ = file.flush().await;
    drop(file);
    let args: BTreeMap<String, String> = q
        .get("buildargs")
        .and_then(|a| serde_json::from_str::<BTreeMap<String, Option<String>>>(a).ok())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect();
    let dockerfile_name = q
        .get("dockerfile")
        .cloned()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "Dockerfile".into());
    let spooled2 = spooled.clone();
    let df_name = dockerfile_name.clone();
    let dockerfile = tokio::task::spawn_blocking(move || dockerfile_of(&spooled2, &df_name))
        .await
        .ok()
        .flatten();
    if let Some(text) = &dockerfile {
        for base in rules::from_images(text, &args) {
            if let Some(who) = whose(ctx, &base).await
                && ctx.private_elsewhere(&who)
            {
                let _ = tokio::fs::remove_file(&spooled).await;
                return refused(format!(
                    "a build FROM `{base}`: a private image another run pulled"
                ));
            }
        }
    }
    let mut labels: HashMap<String, String> = q
        .get("labels")
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    labels.insert(LABEL_RUN.into(), ctx.run.to_string());
    labels.insert(LABEL_KIND.into(), KIND_ENDPOINT.into());
    let flag = |k: &str| q.get(k).is_some_and(|v| v == "1" || v == "true");
    let opts = BuildImageOptions {
        dockerfile: dockerfile_name,
        t: tags.first().cloned(),
        q: flag("q"),
        nocache: flag("nocache"),
        pull: q
            .get("pull")
            .cloned()
            .filter(|p| !p.is_empty() && p != "0" && p != "false"),
        rm: true,
        forcerm: true,
        buildargs: Some(args.into_iter().collect()),
        labels: Some(labels),
        networkmode: Some(ctx.network.to_string()),
        target: q.get("target").cloned().unwrap_or_default(),
        ..Default::default()
    };
    let creds: HashMap<String, bollard::auth::DockerCredentials> = ctx
        .auth
        .iter()
        .map(|a| (a.host.clone(), credentials(a)))
        .collect();
    let f = match tokio::fs::File::open(&spooled).await {
        Ok(f) => f,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let chunks = futures_util::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt as _;
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Bytes::from(buf), f))
            }
        }
    });
    let docker = ctx.ex.docker.clone();
    let more_tags: Vec<String> = tags.iter().skip(1).cloned().collect();
    streamed(move |tx| async_build(tx, docker, opts, creds, chunks, more_tags, spooled))
}

/// Runs the build, tags the extra names, removes the spool; the progress
/// lines go to `out` as they come.
async fn async_build(
    out: tokio::sync::mpsc::Sender<serde_json::Value>,
    docker: bollard::Docker,
    opts: BuildImageOptions,
    creds: HashMap<String, bollard::auth::DockerCredentials>,
    chunks: impl Stream<Item = Bytes> + Send + 'static,
    more_tags: Vec<String>,
    spooled: PathBuf,
) {
    let mut id = None;
    {
        let mut s = docker.build_image(
            opts,
            (!creds.is_empty()).then_some(creds),
            Some(bollard::body_stream(chunks)),
        );
        while let Some(r) = s.next().await {
            match r {
                Ok(info) => {
                    if let Some(i) = info.aux.as_ref().and_then(|a| a.id.clone()) {
                        id = Some(i.clone());
                        let _ = out.send(serde_json::json!({ "aux": { "ID": i } })).await;
                    }
                    if let Some(s) = info.stream {
                        let _ = out.send(serde_json::json!({ "stream": s })).await;
                    }
                    if let Some(s) = info.status {
                        let _ = out.send(serde_json::json!({ "status": s })).await;
                    }
                }
                Err(e) => {
                    let _ = out.send(error_line(e)).await;
                    id = None;
                    break;
                }
            }
        }
    }
    let _ = tokio::fs::remove_file(&spooled).await;
    if let Some(id) = id {
        for t in more_tags {
            let (repo, tag) = split_ref(&t);
            let o = TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(tag.to_string()),
            };
            let line = match docker.tag_image(&id, Some(o)).await {
                Ok(()) => serde_json::json!({ "stream": format!("Successfully tagged {t}\n") }),
                Err(e) => error_line(e),
            };
            let _ = out.send(line).await;
        }
    }
}
