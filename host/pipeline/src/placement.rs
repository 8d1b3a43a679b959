//! Placement constraints (`node.labels.arch == arm64`): Swarm's syntax,
//! parsed to check a pipeline and to let the local executor tell whether
//! this machine meets them.

use std::collections::BTreeMap;

/// One constraint: a node attribute, `==` or `!=`, a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub key: String,
    pub equal: bool,
    pub value: String,
}

/// The attributes a node offers to constraints.
#[derive(Debug, Clone, Default)]
pub struct NodeFacts {
    pub id: String,
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// Docker's names: `linux`; `x86_64`, `aarch64`.
    pub os: String,
    pub arch: String,
    /// `node.labels.*` (the swarm's labels of the node).
    pub labels: BTreeMap<String, String>,
    /// `engine.labels.*` (the daemon's own labels).
    pub engine_labels: BTreeMap<String, String>,
}

impl Constraint {
    /// Parses `KEY == VALUE` or `KEY != VALUE`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (key, equal, value) = if let Some((k, v)) = text.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = text.split_once("!=") {
            (k, false, v)
        } else {
            return Err(format!("placement `{text}` has no `==` or `!=`"));
        };
        let (key, value) = (key.trim(), value.trim());
        let known = matches!(
            key,
            "node.id" | "node.hostname" | "node.role" | "node.platform.os" | "node.platform.arch"
        ) || key
            .strip_prefix("node.labels.")
            .or_else(|| key.strip_prefix("engine.labels."))
            .is_some_and(|k| !k.is_empty());
        if !known {
            return Err(format!(
                "placement `{text}`: `{key}` is not a node attribute (node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.KEY, engine.labels.KEY)"
            ));
        }
        if value.is_empty() {
            return Err(format!("placement `{text}` has no value"));
        }
        Ok(Self {
            key: key.to_string(),
            equal,
            value: value.to_string(),
        })
    }

    /// Whether a node with `facts` meets it.
    pub fn holds(&self, facts: &NodeFacts) -> bool {
        let got = match self.key.as_str() {
            "node.id" => Some(facts.id.as_str()),
            "node.hostname" => Some(facts.hostname.as_str()),
            "node.role" => Some(facts.role.as_str()),
            "node.platform.os" => Some(facts.os.as_str()),
            "node.platform.arch" => Some(facts.arch.as_str()),
            k => k
                .strip_prefix("node.labels.")
                .map(|l| facts.labels.get(l).map(String::as_str))
                .or_else(|| {
                    k.strip_prefix("engine.labels.")
                        .map(|l| facts.engine_labels.get(l).map(String::as_str))
                })
                .flatten(),
        };
        // Swarm compares case-insensitively; a missing label is unequal.
        let same = got.is_some_and(|g| g.eq_ignore_ascii_case(&self.value));
        same == self.equal
    }
}

/// The first of `constraints` a node with `facts` does not meet.
pub fn unmet<'a>(constraints: &'a [String], facts: &NodeFacts) -> Option<&'a str> {
    constraints
        .iter()
        .map(String::as_str)
        .find(|c| Constraint::parse(c).map_or(true, |k| !k.holds(facts)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_parse_and_hold() {
        let facts = NodeFacts {
            hostname: "ci-1".into(),
            role: "manager".into(),
            os: "linux".into(),
            arch: "x86_64".into(),
            labels: BTreeMap::from([("arch".into(), "arm64".into())]),
            ..Default::default()
        };
        let c = Constraint::parse("node.labels.arch == arm64").unwrap();
        assert!(c.holds(&facts));
        assert!(
            !Constraint::parse("node.labels.arch != arm64")
                .unwrap()
                .holds(&facts)
        );
        assert!(
            !Constraint::parse("node.labels.gpu == yes")
                .unwrap()
                .holds(&facts)
        );
        assert!(
            Constraint::parse("node.labels.gpu != yes")
                .unwrap()
                .holds(&facts)
        );
        assert!(
            Constraint::parse("node.platform.arch == X86_64")
                .unwrap()
                .holds(&facts)
        );
        assert!(Constraint::parse("node.arch = x").is_err());
        assert!(Constraint::parse("node.colour == red").is_err());
        assert_eq!(
            unmet(
                &[
                    "node.role == manager".into(),
                    "node.hostname == ci-2".into()
                ],
                &facts
            ),
            Some("node.hostname == ci-2")
        );
    }
}
