//! Builds with secrets, through the engine's BuildKit: a build session
//! (`POST /session`, upgraded to HTTP/2, where this process serves gRPC to
//! the engine) answers the Dockerfile's `RUN --mount=type=secret,id=…`
//! with the stage's secret values, and registry credentials for `FROM`
//! pulls; `POST /build?version=2&session=…` sends the context as a tar.
//! The values travel only over that session: never a build argument, a
//! layer, the image's history or a log line. BuildKit's progress (base64
//! protobuf in the build stream) becomes the stage's log.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
    health_check_response,
};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard_buildkit_proto::moby::buildkit::v1::StatusResponse;
use bollard_buildkit_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard_buildkit_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use prost::Message as _;
use sentinel_engine::exec::RegistryAuth;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The engine's socket (`DOCKER_HOST=unix://…`, else the usual one).
pub(crate) fn socket_path() -> Result<std::path::PathBuf, String> {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => Ok(h.trim_start_matches("unix://").into()),
        Ok(h) if !h.is_empty() => Err(format!(
            "a build with secrets talks to the engine's BuildKit over a Unix socket; DOCKER_HOST is `{h}`"
        )),
        _ => Ok("/var/run/docker.sock".into()),
    }
}

struct Answers {
    secrets: HashMap<String, Vec<u8>>,
    auth: Vec<RegistryAuth>,
}

struct SecretsService(std::sync::Arc<Answers>);

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secret(
        &self,
        request: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, tonic::Status> {
        let id = request.into_inner().id;
        match self.0.secrets.get(&id) {
            Some(v) => Ok(tonic::Response::new(GetSecretResponse { data: v.clone() })),
            None => Err(tonic::Status::not_found(format!(
                "the build asked for secret `{id}`, which the stage's `build: secrets:` does not give"
            ))),
        }
    }
}

struct AuthService(std::sync::Arc<Answers>);

#[tonic::async_trait]
impl Auth for AuthService {
    async fn credentials(
        &self,
        request: tonic::Request<CredentialsRequest>,
    ) -> Result<tonic::Response<CredentialsResponse>, tonic::Status> {
        let host = request.into_inner().host;
        let found = self.0.auth.iter().find(|a| a.host == host);
        Ok(tonic::Response::new(CredentialsResponse {
            username: found.map(|a| a.username.clone()).unwrap_or_default(),
            secret: found.map(|a| a.password.clone()).unwrap_or_default(),
        }))
    }

    async fn fetch_token(
        &self,
        _: tonic::Request<FetchTokenRequest>,
    ) -> Result<tonic::Response<FetchTokenResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fetch_token"))
    }

    async fn get_token_authority(
        &self,
        _: tonic::Request<GetTokenAuthorityRequest>,
    ) -> Result<tonic::Response<GetTokenAuthorityResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("get_token_authority"))
    }

    async fn verify_token_authority(
        &self,
        _: tonic::Request<VerifyTokenAuthorityRequest>,
    ) -> Result<tonic::Response<VerifyTokenAuthorityResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("verify_token_authority"))
    }
}

struct HealthService;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(HealthCheckResponse {
            status: health_check_response::ServingStatus::Serving as i32,
        }))
    }

    async fn list(
        &self,
        _: tonic::Request<HealthListRequest>,
    ) -> Result<tonic::Response<HealthListResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("list"))
    }

    type WatchStream =
        Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, tonic::Status>> + Send + 'static>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("watch"))
    }
}

/// The upgraded session connection, as tonic serves it.
struct SessionIo(TokioIo<hyper::upgrade::Upgraded>);

impl tonic::transport::server::Connected for SessionIo {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for SessionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SessionIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A request to the engine over its socket; `upgrade` keeps the connection
/// for an upgrade.
async fn send(
    req: hyper::Request<http_body_util::combinators::BoxBody<Bytes, std::io::Error>>,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let path = socket_path()?;
    let stream = tokio::net::UnixStream::connect(&path)
        .await
        .map_err(|e| format!("cannot reach the engine at {}: {e}", path.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("cannot talk to the engine: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("the engine did not answer: {e}"))
}

fn empty() -> http_body_util::combinators::BoxBody<Bytes, std::io::Error> {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A running build session; dropping it ends it.
pub(crate) struct Session {
    pub id: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/moby.buildkit.secrets.v1.Secrets/GetSecret",
    "/moby.filesync.v1.Auth/Credentials",
];

/// Opens a session answering `secrets` and `auth`.
pub(crate) async fn session(
    api: &str,
    secrets: &[(String, String)],
    auth: &[RegistryAuth],
) -> Result<Session, String> {
    let id = ulid::Ulid::new().to_string().to_ascii_lowercase();
    let mut req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://docker/v{api}/session"))
        .header("host", "docker")
        .header("connection", "Upgrade")
        .header("upgrade", "h2c")
        .header("x-docker-expose-session-uuid", &id)
        .header("x-docker-expose-session-name", "sentinel")
        .header("x-docker-expose-session-sharedkey", &id);
    for m in METHODS {
        req = req.header("x-docker-expose-session-grpc-method", *m);
    }
    let res = send(req.body(empty()).map_err(|e| e.to_string())?).await?;
    if res.status() != hyper::StatusCode::SWITCHING_PROTOCOLS {
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "the engine refused a build session ({status}): {}",
            String::from_utf8_lossy(&body).trim()
        ));
    }
    let upgraded = hyper::upgrade::on(res)
        .await
        .map_err(|e| format!("the build session did not start: {e}"))?;
    let answers = std::sync::Arc::new(Answers {
        secrets: secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect(),
        auth: auth.to_vec(),
    });
    let io = SessionIo(TokioIo::new(upgraded));
    let task = tokio::spawn(async move {
        let router = tonic::transport::Server::builder()
            .add_service(HealthServer::new(HealthService))
            .add_service(SecretsServer::new(SecretsService(answers.clone())))
            .add_service(AuthServer::new(AuthService(answers)));
        let _ = router
            .serve_with_incoming(futures_util::stream::iter(vec![Ok::<_, std::io::Error>(
                io,
            )]))
            .await;
    });
    Ok(Session { id, task })
}

/// What a line of BuildKit's build stream says.
#[derive(Debug, PartialEq)]
pub(crate) enum Line {
    /// Log text for the stage.
    Log(Vec<u8>),
    /// The image's id.
    Image(String),
    /// The build failed.
    Error(String),
    Nothing,
}

/// Reads one JSON line of the build stream: BuildKit's progress (base64
/// protobuf), the image id, or an error. Step names and their output go to
/// the log as `#n name` / output lines, the way the engine's plain
/// progress shows them.
pub(crate) fn line(v: &serde_json::Value, seen: &mut Vec<String>) -> Line {
    if let Some(msg) = v
        .get("errorDetail")
        .and_then(|d| d.get("message"))
        .and_then(|m| m.as_str())
    {
        return Line::Error(msg.to_string());
    }
    if let Some(msg) = v.get("error").and_then(|m| m.as_str()) {
        return Line::Error(msg.to_string());
    }
    match v.get("id").and_then(|i| i.as_str()) {
        Some("moby.image.id") => v
            .get("aux")
            .and_then(|a| a.get("ID"))
            .and_then(|i| i.as_str())
            .map_or(Line::Nothing, |i| Line::Image(i.to_string())),
        Some("moby.buildkit.trace") => {
            let Some(raw) = v
                .get("aux")
                .and_then(|a| a.as_str())
                .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            else {
                return Line::Nothing;
            };
            let Ok(status) = StatusResponse::decode(raw.as_slice()) else {
                return Line::Nothing;
            };
            let mut out = Vec::new();
            let number = |seen: &mut Vec<String>, digest: &str| match seen
                .iter()
                .position(|d| d == digest)
            {
                Some(i) => i + 1,
                None => {
                    seen.push(digest.to_string());
                    seen.len()
                }
            };
            for vx in &status.vertexes {
                let n = number(seen, &vx.digest);
                if vx.started.is_some() && vx.completed.is_none() {
                    out.extend(format!("#{n} {}\n", vx.name).into_bytes());
                }
                if vx.cached && vx.completed.is_some() {
                    out.extend(format!("#{n} CACHED {}\n", vx.name).into_bytes());
                }
                if !vx.error.is_empty() {
                    out.extend(format!("#{n} ERROR: {}\n", vx.error).into_bytes());
                }
            }
            for l in &status.logs {
                let n = number(seen, &l.vertex);
                for text in String::from_utf8_lossy(&l.msg).split_inclusive('\n') {
                    out.extend(format!("#{n} {text}").into_bytes());
                }
                if !out.ends_with(b"\n") {
                    out.push(b'\n');
                }
            }
            if out.is_empty() {
                Line::Nothing
            } else {
                Line::Log(out)
            }
        }
        _ => v
            .get("stream")
            .and_then(|s| s.as_str())
            .map_or(Line::Nothing, |s| Line::Log(s.as_bytes().to_vec())),
    }
}

/// Starts a BuildKit build: `query` is the build's query (with `version=2`
/// and the session), `body` the context tar; the response's JSON lines.
/// Registry logins go over the session, not in a header.
pub(crate) async fn build(
    api: &str,
    query: &str,
    body: impl Stream<Item = Bytes> + Send + Sync + 'static,
) -> Result<impl Stream<Item = Result<serde_json::Value, String>>, String> {
    let body = BodyExt::boxed(StreamBody::new(
        body.map(|b| Ok::<_, std::io::Error>(Frame::data(b))),
    ));
    let req = hyper::Request::builder()
        .method("POST")
        .uri(format!("http://docker/v{api}/build?{query}"))
        .header("host", "docker")
        .header("content-type", "application/x-tar");
    let res = send(req.body(body).map_err(|e| e.to_string())?).await?;
    if !res.status().is_success() {
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let msg = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(format!("the engine refused the build ({status}): {msg}"));
    }
    // JSON lines, possibly split across frames.
    let frames = res.into_body().into_data_stream();
    Ok(futures_util::stream::unfold(
        (frames, Vec::<u8>::new(), false),
        |(mut frames, mut buf, mut done)| async move {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    let line = String::from_utf8_lossy(&line).trim().to_string();
                    if line.is_empty() {
                        continue;
                    }
                    let v = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"));
                    return Some((v, (frames, buf, done)));
                }
                if done {
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        return None;
                    }
                    let line = String::from_utf8_lossy(&std::mem::take(&mut buf))
                        .trim()
                        .to_string();
                    let v = serde_json::from_str(&line).map_err(|e| format!("{e}: {line}"));
                    return Some((v, (frames, buf, done)));
                }
                match frames.next().await {
                    Some(Ok(b)) => buf.extend_from_slice(&b),
                    Some(Err(e)) => return Some((Err(e.to_string()), (frames, buf, true))),
                    None => done = true,
                }
            }
        },
    ))
}
