//! Registries of the machine: `[registries.NAME]` in the server's
//! configuration and in the user's config file
//! (`$XDG_CONFIG_HOME/sentinel/config.toml`, else
//! `~/.config/sentinel/config.toml`) for `sentinel run`. Each names a host
//! and where its password comes from — an environment variable, or (on a
//! server) a secret of its store — never the password itself.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use sentinel_engine::exec::RegistryAuth;

/// One `[registries.NAME]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// `host[:port]`, as image names write it.
    pub host: String,
    pub username: String,
    /// The variable of this process's environment holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// The server's stored secret holding it (`sentinel secret set NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<String>,
}

/// The user's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
}

/// Where the user's config file is.
pub fn user_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("sentinel/config.toml"))
}

/// Checks each entry names one source for its password.
pub fn check(list: &BTreeMap<String, RegistryConfig>, secrets_allowed: bool) -> Result<(), String> {
    for (name, r) in list {
        match (&r.password_env, &r.password_secret) {
            (Some(_), Some(_)) => {
                return Err(format!(
                    "registry `{name}`: give `password_env` or `password_secret`, not both"
                ));
            }
            (None, None) => {
                return Err(format!(
                    "registry `{name}`: `password_env` (a variable holding the password){} is missing",
                    if secrets_allowed {
                        " or `password_secret` (a stored secret)"
                    } else {
                        ""
                    }
                ));
            }
            (None, Some(_)) if !secrets_allowed => {
                return Err(format!(
                    "registry `{name}`: `password_secret` is for a server's stored secrets; use `password_env` here"
                ));
            }
            _ => {}
        }
        if r.host.is_empty() || r.host.contains("://") || r.host.contains('/') {
            return Err(format!(
                "registry `{name}`: `{}` is not `host[:port]`",
                r.host
            ));
        }
    }
    Ok(())
}

/// The user's registries with their passwords, for `sentinel run`; none
/// when there is no config file.
pub fn user_registries() -> anyhow::Result<Vec<RegistryAuth>> {
    let Some(path) = user_config_path() else {
        return Ok(Vec::new());
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let config: UserConfig =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    check(&config.registries, false).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    resolve(&config.registries, |_| None).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The entries with their passwords: from the environment, or from
/// `secret` (a server's store).
pub fn resolve(
    list: &BTreeMap<String, RegistryConfig>,
    secret: impl Fn(&str) -> Option<String>,
) -> Result<Vec<RegistryAuth>, String> {
    list.iter()
        .map(|(name, r)| {
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
                host: r.host.clone(),
                username: r.username.clone(),
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
        assert!(check(&both, true).unwrap_err().contains("not both"));
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
