//! Trusting published steps, end to end: signatures required by trusted
//! keys; basic auth against the htpasswd registry; bearer tokens through the
//! distribution token flow (a token server of the test's own issuing JWTs
//! the registry verifies) and as given; components moving both ways between
//! Sentinel and `wkg`; `step build` refusing components that import sockets,
//! or HTTP without declaring hosts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::steps::{
    OwnRegistry, Proj, digest_said, fails, greet, greet_at, ok, publish, publish_cmd,
    registry_config, scratch, sentinel, which,
};

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = ok(
        sentinel(&["step", "keygen", "--out"])
            .arg(&path)
            .output()
            .unwrap(),
        "keygen",
    );
    (path, out.trim().to_string())
}

#[test]
fn signatures_from_trusted_keys_are_required_when_asked() {
    let keys = scratch("keys-");
    let (trusted_key, trusted) = keygen(&keys, "trusted.key");
    let (other_key, other) = keygen(&keys, "other.key");
    assert!(trusted.starts_with("ed25519:") && trusted != other);
    let e = fails(
        sentinel(&["step", "keygen", "--out"])
            .arg(&trusted_key)
            .output()
            .unwrap(),
        "keygen over a key",
    );
    assert!(e.contains("never overwritten"), "{e}");
    let reg = scratch("signed-reg-");
    let cfg = registry_config(
        &format!("file://{}", reg.display()),
        &format!("trusted_keys = [\"{trusted}\"]\n"),
    );
    let run = |version: &str| {
        let p = Proj::new(&format!("greet@{version}"), &cfg);
        let out = p.run(&[]);
        (p, out)
    };
    let p = Proj::new("greet@1.0.0", &cfg);
    publish(&greet_at("1.0.0"), "r", &[], &p.config);
    publish(
        &greet_at("1.0.1"),
        "r",
        &["--sign", other_key.to_str().unwrap()],
        &p.config,
    );
    let said = publish(
        &greet_at("1.0.2"),
        "r",
        &["--sign", trusted_key.to_str().unwrap()],
        &p.config,
    );
    assert!(said.contains(&format!("signed:   {trusted}")), "{said}");
    let e = fails(run("1.0.0").1, "an unsigned step");
    assert!(e.contains("is refused") && e.contains("not signed"), "{e}");
    let e = fails(run("1.0.1").1, "a step signed by another key");
    assert!(e.contains(&other) && e.contains("not a trusted key"), "{e}");
    let (signed, out) = run("1.0.2");
    ok(out, "a step signed by the trusted key");
    assert_eq!(signed.stage()["status"], "succeeded");
    assert!(
        signed.lock().contains(&format!("signer = \"{trusted}\"")),
        "{}",
        signed.lock()
    );
    let shown = ok(
        signed
            .cmd(&["step", "show", "greet@1.0.2"])
            .output()
            .unwrap(),
        "step show",
    );
    assert!(shown.contains(&format!("signer:    {trusted}")), "{shown}");
    // What the step may do changed after it was signed: refused.
    let manifest = reg.join("greet/1.0.2/step.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        text.replace("http = []", "http = [\"*.example.com\"]"),
    )
    .unwrap();
    let e = fails(
        run("1.0.2").1,
        "a step whose manifest changed after signing",
    );
    assert!(e.contains("does not verify"), "{e}");
}

/// A step pulled while nothing was required sits in the cache; named by its
/// digest once keys are trusted, it is checked against them all the same.
#[test]
fn a_cached_step_named_by_its_digest_is_checked_against_the_keys_trusted_now() {
    let keys = scratch("keys-");
    let (_, trusted) = keygen(&keys, "trusted.key");
    let reg = scratch("digest-reg-");
    let url = format!("file://{}", reg.display());
    let p = Proj::new("greet@1.0.0", &registry_config(&url, ""));
    let digest = digest_said(&publish(greet(), "r", &[], &p.config));
    ok(p.run(&[]), "an unsigned step while none is required");
    std::fs::write(
        p.config.join("sentinel/config.toml"),
        registry_config(&url, &format!("trusted_keys = [\"{trusted}\"]\n")),
    )
    .unwrap();
    std::fs::write(
        p.dir.join("sentinel.yml"),
        format!(
            "version: 1\nstages:\n  hello:\n    step: greet@{digest}\n    with: {{who: world}}\n"
        ),
    )
    .unwrap();
    let e = fails(p.run(&[]), "the cached unsigned step by its digest");
    assert!(e.contains("is refused") && e.contains("not signed"), "{e}");
}

#[test]
fn basic_auth_registry_publish_and_pull() {
    let dir =
        std::env::var("SENTINEL_REGISTRY_DIR").unwrap_or_else(|_| "/tmp/sentinel-registry".into());
    let password = std::fs::read_to_string(format!("{dir}/auth/password"))
        .unwrap_or_else(|e| panic!("no test registry ({dir}/auth/password: {e}); run scripts/registry.sh (the test command's set-up does)"));
    let ns = format!("steps-{}", ulid::Ulid::new().to_string().to_lowercase());
    let cfg = format!(
        "[registries.r]\nsteps = \"oci://127.0.0.1:5001/{ns}\"\nusername = \"sentinel\"\npassword_env = \"STEP_REGISTRY_PASSWORD\"\n[steps]\ndefault = \"r\"\n"
    );
    let p = Proj::new("greet@^1", &cfg);
    // Without the password the registry refuses.
    let e = fails(
        publish_cmd(greet(), "r", &p.config)
            .env("STEP_REGISTRY_PASSWORD", "wrong")
            .output()
            .unwrap(),
        "publish with a wrong password",
    );
    assert!(
        e.contains("unauthorised")
            || e.contains("401")
            || e.to_lowercase().contains("unauthorized"),
        "{e}"
    );
    ok(
        publish_cmd(greet(), "r", &p.config)
            .env("STEP_REGISTRY_PASSWORD", password.trim())
            .output()
            .unwrap(),
        "publish with basic auth",
    );
    ok(
        p.cmd(&["run"])
            .env("STEP_REGISTRY_PASSWORD", password.trim())
            .output()
            .unwrap(),
        "run pulling with basic auth",
    );
    assert_eq!(p.stage()["status"], "succeeded");
}

/// A step crate whose `main.rs` is `main`, with `deps` added.
fn crate_with(main: &str, deps: &str, hosts: &str) -> PathBuf {
    let dir = scratch("bad-step-").join("bad");
    ok(
        sentinel(&["step", "new", "bad", "--dir"])
            .arg(&dir)
            .output()
            .unwrap(),
        "step new",
    );
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    let cargo = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        cargo.replace("[dependencies]\n", &format!("[dependencies]\n{deps}")),
    )
    .unwrap();
    let toml = std::fs::read_to_string(dir.join("step.toml")).unwrap();
    std::fs::write(
        dir.join("step.toml"),
        toml.replace("http = []", &format!("http = [{hosts}]")),
    )
    .unwrap();
    dir
}

#[test]
fn step_build_refuses_sockets_and_http_without_hosts() {
    let sockets = crate_with(
        "fn main() {\n    let _ = std::net::TcpStream::connect(\"127.0.0.1:9\");\n}\n",
        "",
        "",
    );
    let e = fails(
        sentinel(&["step", "build"]).arg(&sockets).output().unwrap(),
        "a step importing sockets",
    );
    assert!(
        e.contains("imports wasi:sockets/") && e.contains("no sockets"),
        "{e}"
    );
    assert!(!sockets.join("step.wasm").exists());
    let http_main = "fn main() {\n    let _ = wasip2::http::types::Fields::new();\n}\n";
    let http = crate_with(http_main, "wasip2 = \"1\"\n", "");
    let e = fails(
        sentinel(&["step", "build"]).arg(&http).output().unwrap(),
        "a step importing HTTP, no hosts",
    );
    assert!(
        e.contains("imports wasi:http/") && e.contains("declares no hosts"),
        "{e}"
    );
    // Declaring its hosts, the same component builds.
    let declared = crate_with(http_main, "wasip2 = \"1\"\n", "\"api.example.com\"");
    let said = ok(
        sentinel(&["step", "build"])
            .arg(&declared)
            .output()
            .unwrap(),
        "a step importing HTTP, hosts declared",
    );
    assert!(said.contains("built bad 0.1.0"), "{said}");
}

fn wkg(args: &[&str]) -> Output {
    let bin = which("wkg").unwrap_or_else(|| {
        panic!("wkg is not installed: run scripts/wkg.sh (the test command's set-up does)")
    });
    Command::new(bin).args(args).output().unwrap()
}

/// Media types and layout of the registry's manifest, as the CNCF Wasm OCI
/// artifact defines them.
fn manifest(addr: &str, repo: &str, tag: &str) -> serde_json::Value {
    let out = Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!("http://{addr}/v2/{repo}/manifests/{tag}"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn components_move_both_ways_between_sentinel_and_wkg() {
    let reg = OwnRegistry::start();
    let addr = reg.addr.clone();
    let cfg = Proj::new(
        "greet@^1",
        &registry_config(&format!("oci://{addr}/steps"), ""),
    );
    publish(greet(), "r", &[], &cfg.config);
    let m = manifest(&addr, "steps/greet", "1.0.0");
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(m["layers"].as_array().unwrap().len(), 1);
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");
    // Sentinel → wkg: the same bytes.
    let out = scratch("wkg-").join("greet.wasm");
    ok(
        wkg(&[
            "oci",
            "pull",
            &format!("{addr}/steps/greet:1.0.0"),
            "--insecure",
            &addr,
            "-o",
            out.to_str().unwrap(),
        ]),
        "wkg oci pull",
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(greet().join("step.wasm")).unwrap()
    );
    // wkg → Sentinel: a component with no manifest of Sentinel's runs,
    // granted nothing.
    let noop = sentinel_testkit::repo_root().join("steps/dist/guests/noop/step.wasm");
    ok(
        wkg(&[
            "oci",
            "push",
            &format!("{addr}/other/quiet:0.3.0"),
            noop.to_str().unwrap(),
            "--insecure",
            &addr,
        ]),
        "wkg oci push",
    );
    let p = Proj::new(&format!("oci://{addr}/other/quiet:0.3.0"), "");
    std::fs::write(
        p.dir.join("sentinel.yml"),
        format!("version: 1\nstages:\n  hello:\n    step: oci://{addr}/other/quiet:0.3.0\n"),
    )
    .unwrap();
    ok(p.run(&[]), "running a component wkg pushed");
    let doc = p.stage();
    assert_eq!(doc["status"], "succeeded", "{doc}");
    assert!(
        doc["inputs"]["step"]
            .as_str()
            .unwrap()
            .contains("= quiet 0.3.0"),
        "{doc}"
    );
    let shown = ok(
        p.cmd(&["step", "show", &format!("oci://{addr}/other/quiet:0.3.0")])
            .output()
            .unwrap(),
        "step show",
    );
    assert!(
        shown.contains("workspace: none") && shown.contains("network:   none"),
        "{shown}"
    );
    reg.stop();
}

/// A token server for the distribution token flow: checks basic
/// credentials, then issues a JWT (RS256, its certificate in `x5c`) granting
/// the scopes asked for. Counts the tokens it issued.
struct TokenServer {
    realm: String,
    issued: Arc<AtomicUsize>,
    dir: PathBuf,
}

const TOKEN_USER: &str = "sentinel";
const TOKEN_PASSWORD: &str = "token-flow-password-4711";

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    fn start() -> Self {
        let dir = scratch("tokens-");
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sentinel-test-tokens",
        ]);
        openssl(&[
            "x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der",
        ]);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = Arc::new(AtomicUsize::new(0));
        let (count, key_dir) = (issued.clone(), dir.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let _ = answer(conn, &key_dir, &count);
            }
        });
        Self { realm, issued, dir }
    }

    /// A token for `scope` (`repository:NAME:ACTIONS`), as a client would get one.
    fn token(&self, scope: &str) -> String {
        jwt(&self.dir, &[scope.to_string()])
    }
}

fn jwt(dir: &Path, scopes: &[String]) -> String {
    use base64::Engine as _;
    let cert = std::fs::read(dir.join("cert.der")).unwrap();
    let header = serde_json::json!({
        "alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(cert)],
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let access: Vec<serde_json::Value> = scopes
        .iter()
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let claims = serde_json::json!({
        "iss": "sentinel-test-issuer", "sub": TOKEN_USER, "aud": "sentinel-test",
        "exp": now + 300, "nbf": now - 10, "iat": now, "jti": ulid::Ulid::new().to_string(),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut sign = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    sign.stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let sig = sign.wait_with_output().unwrap();
    assert!(sig.status.success());
    format!("{input}.{}", b64url(&sig.stdout))
}

fn answer(mut conn: std::net::TcpStream, dir: &Path, issued: &AtomicUsize) -> std::io::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            use base64::Engine as _;
            let want = base64::engine::general_purpose::STANDARD
                .encode(format!("{TOKEN_USER}:{TOKEN_PASSWORD}"));
            authorized = v.trim() == format!("Basic {want}");
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or_default();
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let scopes: Vec<String> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .map(|s| {
            s.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",")
                .replace('+', " ")
        })
        .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    if !authorized {
        return conn.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
    }
    issued.fetch_add(1, Ordering::SeqCst);
    let token = jwt(dir, &scopes);
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string();
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

#[test]
fn bearer_tokens_through_the_registry_token_flow() {
    let tokens = TokenServer::start();
    let reg = OwnRegistry::start_with(&format!(
        "auth:\n  token:\n    realm: {}\n    service: sentinel-test\n    issuer: sentinel-test-issuer\n    rootcertbundle: {}\n",
        tokens.realm,
        tokens.dir.join("cert.pem").display()
    ));
    let addr = reg.addr.clone();
    // User and password, traded for a bearer token by the client.
    let cfg = format!(
        "[registries.r]\nsteps = \"oci://{addr}/steps\"\nusername = \"{TOKEN_USER}\"\npassword_env = \"TOKEN_REGISTRY_PASSWORD\"\n[steps]\ndefault = \"r\"\n"
    );
    let p = Proj::new("greet@^1", &cfg);
    let publish_with = |password: &str| {
        publish_cmd(greet(), "r", &p.config)
            .env("TOKEN_REGISTRY_PASSWORD", password)
            .output()
            .unwrap()
    };
    let e = fails(
        publish_with("wrong"),
        "publishing with a password the token server refuses",
    );
    assert!(e.contains(&addr), "{e}");
    assert_eq!(tokens.issued.load(Ordering::SeqCst), 0);
    ok(
        publish_with(TOKEN_PASSWORD),
        "publishing through the token flow",
    );
    assert!(
        tokens.issued.load(Ordering::SeqCst) > 0,
        "the token server issued the tokens"
    );
    ok(
        p.cmd(&["run"])
            .env("TOKEN_REGISTRY_PASSWORD", TOKEN_PASSWORD)
            .output()
            .unwrap(),
        "a run pulling through the token flow",
    );
    assert_eq!(p.stage()["status"], "succeeded");
    // A bearer token given as is (`token_env`).
    let direct = Proj::new(
        "greet@1.0.0",
        &format!(
            "[registries.r]\nsteps = \"oci://{addr}/steps\"\ntoken_env = \"TOKEN_REGISTRY_TOKEN\"\n[steps]\ndefault = \"r\"\n"
        ),
    );
    let token = tokens.token("repository:steps/greet:pull");
    ok(
        direct
            .cmd(&["run"])
            .env("TOKEN_REGISTRY_TOKEN", &token)
            .output()
            .unwrap(),
        "a run pulling with a bearer token",
    );
    assert_eq!(direct.stage()["status"], "succeeded");
}
