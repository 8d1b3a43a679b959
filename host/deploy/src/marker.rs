//! A deploy marker's key and the key of its payload.

use crate::version::Version;

/// A deploy request: `<prefix>/<app>/<version>.deploy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub app: String,
    pub version: Version,
}

/// True for an application name: letters, digits, `.`, `-`, `_`, not
/// starting with `.`.
pub fn app_ok(app: &str) -> bool {
    !app.is_empty()
        && app.len() <= 128
        && !app.starts_with('.')
        && app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl Marker {
    /// The marker a key under `prefix` names, or why it names none (a key
    /// that is not `<app>/<version>.deploy` right under the prefix).
    pub fn from_key(prefix: &str, key: &str) -> Result<Self, String> {
        let prefix = prefix.trim_matches('/');
        let rest = if prefix.is_empty() {
            key
        } else {
            key.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(|| format!("`{key}` is not under `{prefix}/`"))?
        };
        let (app, file) = rest
            .split_once('/')
            .ok_or_else(|| format!("`{key}` is not `<app>/<version>.deploy`"))?;
        let version = file
            .strip_suffix(".deploy")
            .ok_or_else(|| format!("`{key}` does not end in `.deploy`"))?;
        if !app_ok(app) || version.contains('/') {
            return Err(format!("`{key}` is not `<app>/<version>.deploy`"));
        }
        let version = version.parse().map_err(|e| format!("`{key}`: {e}"))?;
        Ok(Self {
            app: app.to_string(),
            version,
        })
    }

    /// The file name of its payload (and the folder it unpacks into, less
    /// `.tar.gz`): `<domain>-<environment>-<app>-<version>.tar.gz`.
    pub fn payload_name(&self, domain: &str, environment: &str) -> String {
        format!(
            "{domain}-{environment}-{}-{}.tar.gz",
            self.app, self.version
        )
    }

    /// The key of its payload under `prefix`.
    pub fn payload_key(&self, prefix: &str, domain: &str, environment: &str) -> String {
        let name = self.payload_name(domain, environment);
        match prefix.trim_matches('/') {
            "" => format!("{}/{name}", self.app),
            p => format!("{p}/{}/{name}", self.app),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_the_monitor_laid_them_out() {
        let m = Marker::from_key(
            "cluster-deploys-development",
            "cluster-deploys-development/video-mobile/1.0.1-22.deploy",
        )
        .unwrap();
        assert_eq!(m.app, "video-mobile");
        assert_eq!(m.version.as_str(), "1.0.1-22");
        assert_eq!(
            m.payload_key("cluster-payloads", "example.com", "development"),
            "cluster-payloads/video-mobile/example.com-development-video-mobile-1.0.1-22.tar.gz"
        );
        assert!(Marker::from_key("", "video-mobile/1.0.1.deploy").is_ok());
        for bad in [
            "other/video-mobile/1.deploy",
            "cluster-deploys-development/video-mobile/1.0.tar.gz",
            "cluster-deploys-development/video-mobile/x/1.deploy",
            "cluster-deploys-development/../1.deploy",
            "cluster-deploys-development/video-mobile/..deploy",
        ] {
            assert!(
                Marker::from_key("cluster-deploys-development", bad).is_err(),
                "{bad}"
            );
        }
    }
}
