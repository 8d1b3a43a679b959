//! Registries of the machine: `[registries.NAME]` in the server's
//! configuration and in the user's config file
//! (`$XDG_CONFIG_HOME/sentinel/config.toml`, else
//! `~/.config/sentinel/config.toml`) for `sentinel run`. Each names an
//! image registry's host, or where steps are published (`steps = "oci://…"`,
//! `file://…`, `s3://…`), or both, and where its password or token comes
//! from — an environment variable, or (on a server) a secret of its store —
//! never the password itself. `[steps]` names the default step registry and
//! the keys every registry step must be signed by.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use sentinel_engine::exec::RegistryAuth;

/// One `[registries.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host[:port]`, as image names write it (an image registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The variable of this process's environment holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The server's stored secret holding it (`sentinel secret set NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
    /// Where steps are published: `oci://host[:port]/namespace`,
    /// `file:///folder` or `s3://bucket/prefix` (a step registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<String>,
    /// A bearer token for an OCI step registry: the variable holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_env: Option<String>,
    /// … or the server's stored secret holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// Keys (`ed25519:…`) this registry's steps must be signed by.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
    /// An S3-compatible endpoint for an `s3://` step registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The region of an `s3://` step registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// `[steps]`: the default step registry and keys every registry step must
/// be signed by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepsSection {
    /// The registry a step name the local step folders lack is looked for in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_keys: Vec<String>,
}

/// The user's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
    #[serde(default)]
    pub steps: StepsSection,
}

/// Where the user's config file is.
pub fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("sentinel/config.toml"))
}

/// Checks each entry: an image registry (`host`) names its user and one
/// source for its password; a step registry's address is one Sentinel
/// reads; credentials come from one place; keys are keys.
pub fn check(list: &BTreeMap<String, RegistryConfig>, secrets_allowed: bool) -> Result<(), String> {
    for (name, r) in list {
        let sources = [
            &r.password_env,
            &r.password_secret,
            &r.token_env,
            &r.token_secret,
        ];
        if sources.iter().filter(|s| s.is_some()).count() > 1 {
            return Err(format!(
                "registry `{name}`: give one of `password_env`, `password_secret`, `token_env`, `token_secret`, not several"
            ));
        }
        if !secrets_allowed && (r.password_secret.is_some() || r.token_secret.is_some()) {
            return Err(format!(
                "registry `{name}`: `password_secret` and `token_secret` are for a server's stored secrets; use `password_env` or `token_env` here"
            ));
        }
        let password = r.password_env.is_some() || r.password_secret.is_some();
        match (&r.host, &r.steps) {
            (None, None) => {
                return Err(format!(
                    "registry `{name}`: give `host` (an image registry), `steps` (where steps are published), or both"
                ));
            }
            (Some(host), _) => {
                if r.username.is_none() || !password {
                    return Err(format!(
                        "registry `{name}`: an image registry needs `username` and `password_env` (a variable holding the password){}",
                        if secrets_allowed {
                            " or `password_secret` (a stored secret)"
                        } else {
                            ""
                        }
                    ));
                }
                if host.is_empty() || host.contains("://") || host.contains('/') {
                    return Err(format!("registry `{name}`: `{host}` is not `host[:port]`"));
                }
            }
            (None, Some(_)) => {
                if r.username.is_some() != password {
                    return Err(format!(
                        "registry `{name}`: `username` goes with `password_env`{}",
                        if secrets_allowed {
                            " or `password_secret`"
                        } else {
                            ""
                        }
                    ));
                }
            }
        }
        if let Some(url) = &r.steps {
            step_address(url).map_err(|e| format!("registry `{name}`: `steps`: {e}"))?;
        }
        for key in &r.trusted_keys {
            sentinel_registry::sign::parse_public(key)
                .map_err(|e| format!("registry `{name}`: `trusted_keys`: {e}"))?;
        }
    }
    Ok(())
}

/// What a step registry's address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAddress {
    Folder(PathBuf),
    S3(String),
    /// `host[:port]/namespace`.
    Oci(String),
}

/// Reads `oci://…`, `file://…` (or an absolute path) and `s3://…`.
pub fn step_address(url: &str) -> Result<StepAddress, String> {
    if let Some(rest) = url.strip_prefix("oci://") {
        if rest.is_empty() || rest.starts_with('/') {
            return Err(format!(
                "`{url}` names no host: oci://host[:port]/namespace"
            ));
        }
        return Ok(StepAddress::Oci(rest.trim_end_matches('/').to_string()));
    }
    if url.starts_with("s3://") {
        sentinel_s3::S3Config::from_url(url).map_err(|e| e.to_string())?;
        return Ok(StepAddress::S3(url.to_string()));
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if !path.starts_with('/') {
        return Err(format!(
            "`{url}` is not oci://host/namespace, s3://bucket/prefix or file:///absolute/folder"
        ));
    }
    Ok(StepAddress::Folder(PathBuf::from(path)))
}

/// The user's registries with their passwords, for `sentinel run`; none
/// when there is no config file.
pub fn user_registries() -> anyhow::Result<Vec<RegistryAuth>> {
    let config = user_config()?;
    resolve(&config.registries, |_| None)
        .map_err(|e| anyhow::anyhow!("{}: {e}", user_config_path().unwrap_or_default().display()))
}

/// The user's config file (empty when there is none), checked.
pub fn user_config() -> anyhow::Result<UserConfig> {
    let Some(path) = user_config_path() else {
        return Ok(UserConfig::default());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(UserConfig::default()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let config: UserConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    check(&config.registries, false).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    check_steps(&config.steps, &config.registries)
        .map_err(|e| anyhow::anyhow!("{}: [steps]: {e}", path.display()))?;
    Ok(config)
}

/// Checks `[steps]` against the registries it names.
pub fn check_steps(
    steps: &StepsSection,
    list: &BTreeMap<String, RegistryConfig>,
) -> Result<(), String> {
    if let Some(d) = &steps.default
        && list.get(d).is_none_or(|r| r.steps.is_none())
    {
        return Err(format!(
            "`default = \"{d}\"` names no step registry (a `[registries.{d}]` with `steps = \"…\"`)"
        ));
    }
    for key in &steps.trusted_keys {
        sentinel_registry::sign::parse_public(key).map_err(|e| format!("`trusted_keys`: {e}"))?;
    }
    Ok(())
}

/// The entries with their passwords: from the environment, or from
/// `secret` (a server's store).
pub fn resolve(
    list: &BTreeMap<String, RegistryConfig>,
    secret: impl Fn(&str) -> Option<String>,
) -> Result<Vec<RegistryAuth>, String> {
    list.iter()
        .filter_map(|(name, r)| Some((name, r, r.host.as_ref()?, r.username.as_ref()?)))
        .map(|(name, r, host, username)| {
            let password = match (&r.password_env, &r.password_secret) {
                (Some(var), _) => std::env::var(var).map_err(|_| {
                    format!("registry `{name}`: the variable `{var}` holding its password is not set")
                })?,
                (None, Some(s)) => secret(s).ok_or_else(|| {
                    format!("registry `{name}`: secret `{s}` is not set on this server (sentinel secret set {s})")
                })?,
                (None, None) => return Err(format!("registry `{name}` has no password source")),
            };
            Ok(RegistryAuth {
                host: host.clone(),
                username: username.clone(),
                password,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BTreeMap<String, RegistryConfig> {
        toml::from_str::<UserConfig>(text).unwrap().registries
    }

    #[test]
    fn entries_name_one_password_source() {
        let ok = parse(
            "[registries.a]\nhost = \"r.example.com\"\nusername = \"ci\"\npassword_env = \"R_PASSWORD\"\n",
        );
        assert!(check(&ok, false).is_ok());
        let both = parse(
            "[registries.a]\nhost = \"r\"\nusername = \"u\"\npassword_env = \"X\"\npassword_secret = \"Y\"\n",
        );
        assert!(check(&both, true).unwrap_err().contains("not several"));
        let secret_locally =
            parse("[registries.a]\nhost = \"r\"\nusername = \"u\"\npassword_secret = \"Y\"\n");
        assert!(
            check(&secret_locally, false)
                .unwrap_err()
                .contains("use `password_env`")
        );
        assert!(check(&secret_locally, true).is_ok());
        let url = parse(
            "[registries.a]\nhost = \"https://r/v2\"\nusername = \"u\"\npassword_env = \"X\"\n",
        );
        assert!(check(&url, true).unwrap_err().contains("not `host[:port]`"));
        assert!(
            toml::from_str::<UserConfig>(
                "[registries.a]\nhost = \"r\"\nusername = \"u\"\npassword = \"p\"\n"
            )
            .is_err()
        );
    }

    #[test]
    fn step_registries_are_checked() {
        let ok = parse(
            "[registries.s]\nsteps = \"oci://127.0.0.1:5000/steps\"\n[registries.f]\nsteps = \"file:///srv/steps\"\ntrusted_keys = []\n",
        );
        assert!(check(&ok, false).is_ok());
        assert_eq!(
            step_address("file:///srv/steps"),
            Ok(StepAddress::Folder("/srv/steps".into()))
        );
        assert_eq!(
            step_address("oci://r.example/ns"),
            Ok(StepAddress::Oci("r.example/ns".into()))
        );
        for (text, want) in [
            ("[registries.a]\n", "give `host`"),
            ("[registries.a]\nsteps = \"https://r/x\"\n", "`steps`"),
            (
                "[registries.a]\nsteps = \"oci://r/x\"\nusername = \"u\"\n",
                "`username` goes with",
            ),
            (
                "[registries.a]\nsteps = \"oci://r/x\"\ntrusted_keys = [\"rsa:x\"]\n",
                "`trusted_keys`",
            ),
            (
                "[registries.a]\nsteps = \"oci://r/x\"\ntoken_env = \"T\"\npassword_env = \"P\"\n",
                "not several",
            ),
        ] {
            let e = check(&parse(text), false).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let steps = StepsSection {
            default: Some("img".into()),
            trusted_keys: Vec::new(),
        };
        let img = parse("[registries.img]\nhost = \"r\"\nusername = \"u\"\npassword_env = \"X\"\n");
        assert!(
            check_steps(&steps, &img)
                .unwrap_err()
                .contains("names no step registry")
        );
    }

    #[test]
    fn a_missing_secret_or_variable_is_named() {
        let s =
            parse("[registries.a]\nhost = \"r\"\nusername = \"u\"\npassword_secret = \"REG\"\n");
        let e = resolve(&s, |_| None).unwrap_err();
        assert!(e.contains("secret `REG` is not set"), "{e}");
        let got = resolve(&s, |n| (n == "REG").then(|| "pw-123456".to_string())).unwrap();
        assert_eq!(got[0].password, "pw-123456");
        let v = parse(
            "[registries.a]\nhost = \"r\"\nusername = \"u\"\npassword_env = \"SENTINEL_TEST_SURELY_UNSET\"\n",
        );
        assert!(
            resolve(&v, |_| None)
                .unwrap_err()
                .contains("`SENTINEL_TEST_SURELY_UNSET`")
        );
    }
}
