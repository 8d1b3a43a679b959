//! Which Docker API calls a stage's endpoint serves: a request's method and
//! path (without the `/v1.xx` prefix) mapped to one allowed route, or the
//! reason it is refused. Pure, so every rule is tested on its own.

use std::collections::BTreeMap;

/// An allowed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    Ping,
    Version,
    Build,
    /// `POST /images/{name}/tag?repo=&tag=`.
    Tag(String),
    /// `POST /images/{name}/push?tag=`.
    Push(String),
    /// `POST /images/create?fromImage=&tag=`.
    Pull,
    /// `GET /images/{name}/json`.
    Inspect(String),
    /// `GET /images/{name}/history`.
    History(String),
    /// `GET /images/json`: this run's images only.
    List,
}

/// How every refusal starts.
pub(crate) const REFUSES: &str = "Sentinel's Docker endpoint for this stage refuses";

/// What the endpoint allows, said in every refusal.
pub(crate) const ALLOWED: &str =
    "it allows ping, version, build, tag, push, pull, inspect and list of this run's images";

/// The path without its API version prefix (`/v1.41/images/json` →
/// `/images/json`).
pub(crate) fn strip_version(path: &str) -> &str {
    if let Some(rest) = path.strip_prefix("/v")
        && let Some(i) = rest.find('/')
        && rest[..i]
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    {
        return &rest[i..];
    }
    path
}

/// The query's parameters (the last value of each name wins).
pub(crate) fn query(q: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Every value of parameter `name` (`t` may repeat).
pub(crate) fn query_all(q: Option<&str>, name: &str) -> Vec<String> {
    form_urlencoded::parse(q.unwrap_or_default().as_bytes())
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .collect()
}

/// The route of a call, or why it is refused.
pub(crate) fn route(
    method: &str,
    path: &str,
    q: &BTreeMap<String, String>,
) -> Result<Route, String> {
    let path = strip_version(path);
    let refuse = |what: &str| Err(format!("{REFUSES} {what} ({method} {path}): {ALLOWED}"));
    match (method, path) {
        ("GET" | "HEAD", "/_ping") => Ok(Route::Ping),
        ("GET", "/version") => Ok(Route::Version),
        ("POST", "/build") => {
            if q.get("remote").is_some_and(|r| !r.is_empty()) {
                return refuse("a build from a remote context");
            }
            if q.get("extrahosts").is_some_and(|h| !h.is_empty()) {
                return refuse("a build with extra hosts");
            }
            match q.get("networkmode").map(String::as_str) {
                None | Some("" | "default" | "bridge" | "none") => Ok(Route::Build),
                Some(other) => refuse(&format!("a build with the network `{other}`")),
            }
        }
        ("POST", "/images/create") => {
            if q.get("fromSrc").is_some_and(|s| !s.is_empty()) {
                return refuse("importing an image");
            }
            if q.get("fromImage").is_none_or(String::is_empty) {
                return refuse("a pull that names no image");
            }
            Ok(Route::Pull)
        }
        ("GET", "/images/json") => Ok(Route::List),
        ("POST", p) if p.starts_with("/images/") && p.ends_with("/tag") => {
            Ok(Route::Tag(name(p, "/tag")))
        }
        ("POST", p) if p.starts_with("/images/") && p.ends_with("/push") => {
            Ok(Route::Push(name(p, "/push")))
        }
        ("GET", p) if p.starts_with("/images/") && p.ends_with("/json") => {
            Ok(Route::Inspect(name(p, "/json")))
        }
        ("GET", p) if p.starts_with("/images/") && p.ends_with("/history") => {
            Ok(Route::History(name(p, "/history")))
        }
        (_, p) if p.starts_with("/containers") => {
            refuse("containers (creating, starting, inspecting or executing in them)")
        }
        (_, p) if p.starts_with("/exec") => refuse("executing in a container"),
        (_, p) if p.starts_with("/volumes") => refuse("volumes"),
        (_, p) if p.starts_with("/networks") => refuse("networks"),
        (_, p)
            if p.starts_with("/swarm")
                || p.starts_with("/services")
                || p.starts_with("/nodes")
                || p.starts_with("/tasks")
                || p.starts_with("/secrets")
                || p.starts_with("/configs") =>
        {
            refuse("swarm")
        }
        ("DELETE", p) if p.starts_with("/images/") => refuse("removing an image"),
        (_, p) if p.starts_with("/session") || p.starts_with("/grpc") => {
            refuse("BuildKit sessions (set DOCKER_BUILDKIT=0)")
        }
        _ => refuse("this call"),
    }
}

/// The image name of `/images/{name}{suffix}` (a name may hold `/`).
fn name(path: &str, suffix: &str) -> String {
    path.trim_start_matches("/images/")
        .trim_end_matches(suffix)
        .to_string()
}

/// The base images a Dockerfile builds `FROM` (not its own stages, not
/// `scratch`), with `ARG` defaults before the first `FROM` and the build's
/// arguments substituted.
pub(crate) fn from_images(dockerfile: &str, args: &BTreeMap<String, String>) -> Vec<String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut seen_from = false;
    // Continuation lines joined.
    let joined = dockerfile.replace("\\\n", " ");
    for line in joined.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(instr) = words.next() else { continue };
        let rest: Vec<&str> = words.collect();
        if instr.eq_ignore_ascii_case("ARG") && !seen_from {
            for a in rest {
                let (k, v) = a.split_once('=').unwrap_or((a, ""));
                let v = args
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| v.trim_matches('"').to_string());
                vars.insert(k.to_string(), v);
            }
        } else if instr.eq_ignore_ascii_case("FROM") {
            seen_from = true;
            let words: Vec<&str> = rest.into_iter().filter(|w| !w.starts_with("--")).collect();
            let Some(image) = words.first() else { continue };
            let image = substitute(image, &vars);
            if !image.eq_ignore_ascii_case("scratch")
                && !stages.iter().any(|s| s.eq_ignore_ascii_case(&image))
            {
                out.push(image);
            }
            if words.len() >= 3 && words[1].eq_ignore_ascii_case("AS") {
                stages.push(words[2].to_string());
            }
        }
    }
    out
}

/// `$NAME` and `${NAME}` replaced by their values.
fn substitute(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = s.to_string();
    for (k, v) in vars {
        out = out
            .replace(&format!("${{{k}}}"), v)
            .replace(&format!("${k}"), v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(method: &str, path: &str, q: &str) -> Result<Route, String> {
        route(method, path, &query(Some(q)))
    }

    #[test]
    fn the_allowlist() {
        assert_eq!(strip_version("/v1.41/images/json"), "/images/json");
        assert_eq!(strip_version("/_ping"), "/_ping");
        assert_eq!(r("HEAD", "/_ping", ""), Ok(Route::Ping));
        assert_eq!(r("GET", "/v1.41/version", ""), Ok(Route::Version));
        assert_eq!(
            r("POST", "/v1.41/build", "t=a&networkmode=default"),
            Ok(Route::Build)
        );
        assert_eq!(
            r(
                "POST",
                "/v1.41/images/127.0.0.1:5001/team/app/push",
                "tag=1"
            ),
            Ok(Route::Push("127.0.0.1:5001/team/app".into()))
        );
        assert_eq!(
            r("POST", "/v1.41/images/app:1/tag", "repo=b&tag=2"),
            Ok(Route::Tag("app:1".into()))
        );
        assert_eq!(
            r("POST", "/v1.41/images/create", "fromImage=alpine&tag=3"),
            Ok(Route::Pull)
        );
        assert_eq!(r("GET", "/v1.41/images/json", ""), Ok(Route::List));
        assert_eq!(
            r("GET", "/v1.41/images/a/b:1/json", ""),
            Ok(Route::Inspect("a/b:1".into()))
        );
    }

    #[test]
    fn everything_else_is_refused_saying_what() {
        for (m, p, q, what) in [
            ("POST", "/v1.41/containers/create", "", "containers"),
            ("POST", "/v1.41/containers/abc/exec", "", "containers"),
            ("POST", "/v1.41/exec/abc/start", "", "executing"),
            ("POST", "/v1.41/volumes/create", "", "volumes"),
            ("POST", "/v1.41/swarm/init", "", "swarm"),
            ("GET", "/v1.41/services", "", "swarm"),
            ("DELETE", "/v1.41/images/abc", "", "removing"),
            (
                "POST",
                "/v1.41/build",
                "networkmode=host",
                "the network `host`",
            ),
            (
                "POST",
                "/v1.41/build",
                "remote=https://x/y.git",
                "remote context",
            ),
            (
                "POST",
                "/v1.41/build",
                "extrahosts=a:1.2.3.4",
                "extra hosts",
            ),
            ("POST", "/v1.41/images/create", "fromSrc=-", "importing"),
            ("GET", "/v1.41/info", "", "this call"),
        ] {
            let e = r(m, p, q).unwrap_err();
            assert!(e.contains(what) && e.contains(ALLOWED), "{m} {p}: {e}");
        }
    }

    #[test]
    fn base_images_of_a_dockerfile() {
        let df = "ARG BASE=alpine:3\nFROM $BASE AS build\nRUN make\nFROM --platform=linux/amd64 ${RUNNER} AS run\nCOPY --from=build /a /a\nFROM build\nFROM scratch\n";
        let args = BTreeMap::from([("RUNNER".to_string(), "debian:12".to_string())]);
        let mut vars = args.clone();
        vars.insert("RUNNER".into(), "debian:12".into());
        assert_eq!(from_images(df, &vars), vec!["alpine:3", "${RUNNER}"]);
        let df2 = "ARG RUNNER\nARG BASE=alpine:3\nFROM $BASE\nFROM ${RUNNER}\n";
        assert_eq!(from_images(df2, &args), vec!["alpine:3", "debian:12"]);
    }
}
