//! Which events start a pipeline (`on = { … }` on a repository or a named
//! pipeline in the server's config): the kinds of event, and for a push the
//! branches and tags (globs, with `_ignore` lists) and the changed paths
//! that matter. A push that matches nothing is answered and recorded as
//! ignored, with the reason.
//!
//! Refs follow the usual CI rule: with neither `branches` nor `tags` every
//! push runs; with only one of them, pushes of the other kind do not. Path
//! filters look at the files the push's commits added, changed or removed,
//! as GitHub's payload lists them; when that list cannot be complete (a new
//! branch, or more commits than the payload carries) the push runs.

use globset::{GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};

/// A kind of event that may start a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Push,
    PullRequest,
    Schedule,
    Upstream,
    /// The API and `sentinel trigger`.
    Manual,
    /// A deploy marker or a promotion.
    Deploy,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Push => "push",
            Self::PullRequest => "pull_request",
            Self::Schedule => "schedule",
            Self::Upstream => "upstream",
            Self::Manual => "manual",
            Self::Deploy => "deploy",
        }
    }
}

/// `on = { … }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct On {
    /// The kinds of event that start it (default: every kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Event>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches_ignore: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags_ignore: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths_ignore: Vec<String>,
}

/// What a push changed, as far as its payload tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Every file its commits added, changed or removed.
    Files(Vec<String>),
    /// Not known completely (the reason): path filters let it run.
    Unknown(&'static str),
}

fn set(field: &str, globs: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = globset::GlobBuilder::new(g)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{field}: `{g}` is not a glob: {e}"))?;
        b.add(glob);
    }
    b.build().map_err(|e| format!("{field}: {e}"))
}

fn first<'a>(globs: &'a [String], set: &GlobSet, what: &str) -> Option<&'a str> {
    set.matches(what).first().map(|i| globs[*i].as_str())
}

impl On {
    /// Checks every glob.
    pub fn check(&self) -> Result<(), String> {
        for (field, globs) in [
            ("branches", &self.branches),
            ("branches_ignore", &self.branches_ignore),
            ("tags", &self.tags),
            ("tags_ignore", &self.tags_ignore),
            ("paths", &self.paths),
            ("paths_ignore", &self.paths_ignore),
        ] {
            set(field, globs)?;
        }
        if self.events.as_ref().is_some_and(Vec::is_empty) {
            return Err("events is empty: nothing would start the pipeline".into());
        }
        Ok(())
    }

    /// Whether events of `kind` start it; the reason when not.
    pub fn takes(&self, kind: Event) -> Result<(), String> {
        match &self.events {
            Some(events) if !events.contains(&kind) => Err(format!(
                "it runs on {}, not on {}",
                events
                    .iter()
                    .map(|e| e.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                kind.as_str()
            )),
            _ => Ok(()),
        }
    }

    /// Whether a push of `git_ref` that changed `changed` starts it; the
    /// reason when not.
    pub fn push(&self, git_ref: &str, changed: &Changed) -> Result<(), String> {
        self.takes(Event::Push)?;
        let no_refs = self.branches.is_empty()
            && self.branches_ignore.is_empty()
            && self.tags.is_empty()
            && self.tags_ignore.is_empty();
        if let Some(tag) = git_ref.strip_prefix("refs/tags/") {
            if no_refs {
                return Ok(());
            }
            if self.tags.is_empty() && self.tags_ignore.is_empty() {
                return Err(format!("tag `{tag}`: only branches run it (no `tags`)"));
            }
            return self.matches("tags", &self.tags, &self.tags_ignore, "tag", tag);
        }
        let branch = git_ref.strip_prefix("refs/heads/").unwrap_or(git_ref);
        if !no_refs && self.branches.is_empty() && self.branches_ignore.is_empty() {
            return Err(format!(
                "branch `{branch}`: only tags run it (no `branches`)"
            ));
        }
        self.matches(
            "branches",
            &self.branches,
            &self.branches_ignore,
            "branch",
            branch,
        )?;
        self.paths_matter(changed)
    }

    /// Whether a pull request into `base` (`refs/heads/…`) starts it:
    /// `branches` read the branch it would merge into.
    pub fn base_branch(&self, base: &str) -> Result<(), String> {
        let branch = base.strip_prefix("refs/heads/").unwrap_or(base);
        self.matches(
            "branches",
            &self.branches,
            &self.branches_ignore,
            "base branch",
            branch,
        )
    }

    fn matches(
        &self,
        field: &str,
        include: &[String],
        ignore: &[String],
        what: &str,
        name: &str,
    ) -> Result<(), String> {
        let inc = set(field, include)?;
        let ign = set(&format!("{field}_ignore"), ignore)?;
        if !include.is_empty() && first(include, &inc, name).is_none() {
            return Err(format!(
                "{what} `{name}` matches none of {field} ({})",
                include.join(", ")
            ));
        }
        if let Some(g) = first(ignore, &ign, name) {
            return Err(format!("{what} `{name}` matches {field}_ignore `{g}`"));
        }
        Ok(())
    }

    fn paths_matter(&self, changed: &Changed) -> Result<(), String> {
        if self.paths.is_empty() && self.paths_ignore.is_empty() {
            return Ok(());
        }
        let Changed::Files(files) = changed else {
            return Ok(());
        };
        let inc = set("paths", &self.paths)?;
        let ign = set("paths_ignore", &self.paths_ignore)?;
        let counts = |f: &String| (self.paths.is_empty() || inc.is_match(f)) && !ign.is_match(f);
        if files.iter().any(counts) {
            return Ok(());
        }
        let shown: Vec<&str> = files.iter().take(5).map(String::as_str).collect();
        let more = files.len().saturating_sub(shown.len());
        Err(format!(
            "no changed path matters: {}{} (paths: {}; paths_ignore: {})",
            if shown.is_empty() {
                "nothing changed".to_string()
            } else {
                shown.join(", ")
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            },
            if self.paths.is_empty() {
                "any".to_string()
            } else {
                self.paths.join(", ")
            },
            if self.paths_ignore.is_empty() {
                "none".to_string()
            } else {
                self.paths_ignore.join(", ")
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(f: &[&str]) -> Changed {
        Changed::Files(f.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn branches_tags_and_paths_decide_a_push_with_the_reason() {
        let on = On {
            branches: vec!["main".into(), "release/*".into()],
            branches_ignore: vec!["release/old-*".into()],
            tags: vec!["v*".into()],
            paths: vec!["src/**".into(), "Cargo.*".into()],
            paths_ignore: vec!["src/**/*.md".into()],
            ..On::default()
        };
        on.check().unwrap();
        let src = files(&["src/lib.rs"]);
        assert!(on.push("refs/heads/main", &src).is_ok());
        assert!(on.push("refs/heads/release/2.0", &src).is_ok());
        let e = on.push("refs/heads/wip", &src).unwrap_err();
        assert!(e.contains("branch `wip` matches none of branches"), "{e}");
        let e = on.push("refs/heads/release/old-1", &src).unwrap_err();
        assert!(e.contains("matches branches_ignore `release/old-*`"), "{e}");
        // `*` does not cross `/` in branch names.
        assert!(on.push("refs/heads/release/a/b", &src).is_err());
        assert!(on.push("refs/tags/v1.2", &files(&["docs/x.md"])).is_ok());
        let e = on.push("refs/tags/nightly", &src).unwrap_err();
        assert!(e.contains("tag `nightly` matches none of tags"), "{e}");
        let e = on
            .push("refs/heads/main", &files(&["docs/a.md", "src/x/y.md"]))
            .unwrap_err();
        assert!(
            e.contains("no changed path matters: docs/a.md, src/x/y.md"),
            "{e}"
        );
        assert!(on.push("refs/heads/main", &files(&["Cargo.toml"])).is_ok());
        assert!(
            on.push("refs/heads/main", &Changed::Unknown("a new branch"))
                .is_ok()
        );
    }

    #[test]
    fn only_branches_or_only_tags_keep_the_other_kind_out() {
        let tags_only = On {
            tags: vec!["v*".into()],
            ..On::default()
        };
        let e = tags_only.push("refs/heads/main", &files(&[])).unwrap_err();
        assert!(e.contains("only tags run it"), "{e}");
        let branches_only = On {
            branches: vec!["main".into()],
            ..On::default()
        };
        let e = branches_only.push("refs/tags/v1", &files(&[])).unwrap_err();
        assert!(e.contains("only branches run it"), "{e}");
        assert!(On::default().push("refs/tags/v1", &files(&[])).is_ok());
    }

    #[test]
    fn events_and_bad_globs_are_checked() {
        let manual = On {
            events: Some(vec![Event::Manual]),
            ..On::default()
        };
        let e = manual.push("refs/heads/main", &files(&[])).unwrap_err();
        assert_eq!(e, "it runs on manual, not on push");
        assert!(manual.takes(Event::Manual).is_ok());
        let bad = On {
            paths: vec!["src/[".into()],
            ..On::default()
        };
        assert!(
            bad.check()
                .unwrap_err()
                .starts_with("paths: `src/[` is not a glob")
        );
    }
}
