//! `${…}` interpolation in `env:` and `with:` values: the parser of a value
//! into literal parts and references, and the closed set of references.

use std::fmt;

use sentinel_api::StageName;
use serde::{Serialize, Serializer};

/// What a `${…}` may name. Nothing else is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Ref {
    /// `${env.NAME}`: a variable of the pipeline's `env:`.
    Env(String),
    /// `${secrets.NAME}`: a declared secret.
    Secret(String),
    /// `${stages.X.output}`: the trimmed stdout of stage X.
    StageOutput(StageName),
    /// `${stages.X.outputs.KEY}`: a named output of stage X.
    StageNamedOutput(StageName, String),
    /// `${run.id}`.
    RunId,
    /// `${git.commit}`.
    GitCommit,
    /// `${git.branch}`.
    GitBranch,
    /// `${git.repo}`.
    GitRepo,
    /// `${deploy.FIELD}`: a fact of the deploy a run deploys.
    Deploy(DeployField),
    /// `${upstream.run.id}`: the run of another pipeline that started this one.
    UpstreamRunId,
    /// `${upstream.stages.X.output}`: stage X's output in that run.
    UpstreamOutput(StageName),
    /// `${upstream.stages.X.outputs.KEY}`: a named output of stage X there.
    UpstreamNamedOutput(StageName, String),
    /// `${trigger.version}`, `${trigger.previous_version}`: what a version
    /// watch saw.
    Trigger(TriggerField),
}

/// What a trigger tells its run (`${trigger.NAME}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TriggerField {
    Version,
    PreviousVersion,
}

impl TriggerField {
    /// Its name in `${trigger.NAME}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::PreviousVersion => "previous_version",
        }
    }
}

/// The facts of a deploy (`${deploy.app}`…), each also a `DEPLOY_*` variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeployField {
    App,
    Version,
    ImageVersion,
    Instances,
    Environment,
    Domain,
}

impl DeployField {
    /// Every field, in `${deploy.*}` order.
    pub const ALL: [Self; 6] = [
        Self::App,
        Self::Version,
        Self::ImageVersion,
        Self::Instances,
        Self::Environment,
        Self::Domain,
    ];

    /// Its name in `${deploy.NAME}`.
    pub fn name(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Version => "version",
            Self::ImageVersion => "image_version",
            Self::Instances => "instances",
            Self::Environment => "environment",
            Self::Domain => "domain",
        }
    }

    /// Its value in `facts`.
    pub fn of(self, facts: &sentinel_api::DeployFacts) -> String {
        match self {
            Self::App => facts.app.clone(),
            Self::Version => facts.version.clone(),
            Self::ImageVersion => facts.image_version.clone(),
            Self::Instances => facts.instances.to_string(),
            Self::Environment => facts.environment.clone(),
            Self::Domain => facts.domain.clone(),
        }
    }
}

impl Ref {
    /// The stage this reference reads from, if any.
    pub fn stage(&self) -> Option<&StageName> {
        match self {
            Self::StageOutput(s) | Self::StageNamedOutput(s, _) => Some(s),
            _ => None,
        }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "${{env.{n}}}"),
            Self::Secret(n) => write!(f, "${{secrets.{n}}}"),
            Self::StageOutput(s) => write!(f, "${{stages.{s}.output}}"),
            Self::StageNamedOutput(s, k) => write!(f, "${{stages.{s}.outputs.{k}}}"),
            Self::RunId => f.write_str("${run.id}"),
            Self::GitCommit => f.write_str("${git.commit}"),
            Self::GitBranch => f.write_str("${git.branch}"),
            Self::GitRepo => f.write_str("${git.repo}"),
            Self::Deploy(d) => write!(f, "${{deploy.{}}}", d.name()),
            Self::UpstreamRunId => f.write_str("${upstream.run.id}"),
            Self::Trigger(t) => write!(f, "${{trigger.{}}}", t.name()),
            Self::UpstreamOutput(s) => write!(f, "${{upstream.stages.{s}.output}}"),
            Self::UpstreamNamedOutput(s, k) => {
                write!(f, "${{upstream.stages.{s}.outputs.{k}}}")
            }
        }
    }
}

/// One piece of a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Lit(String),
    Ref(Ref),
}

/// A value with its references parsed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Template(pub Vec<Part>);

impl Template {
    /// A template with no references.
    pub fn literal(s: impl Into<String>) -> Self {
        Self(vec![Part::Lit(s.into())])
    }

    /// The references, in order.
    pub fn refs(&self) -> impl Iterator<Item = &Ref> {
        self.0.iter().filter_map(|p| match p {
            Part::Ref(r) => Some(r),
            Part::Lit(_) => None,
        })
    }

    /// Builds the value, asking `resolve` for each reference.
    pub fn render<E>(
        &self,
        mut resolve: impl FnMut(&Ref) -> Result<String, E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Ref(r) => out.push_str(&resolve(r)?),
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                Part::Lit(s) => f.write_str(&s.replace("${", "$${"))?,
                Part::Ref(r) => write!(f, "{r}")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A reference that could not be parsed; `offset` is in bytes into the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub offset: usize,
    pub message: String,
    pub hint: Option<String>,
}

fn err(offset: usize, message: impl Into<String>, hint: Option<&str>) -> TemplateError {
    TemplateError {
        offset,
        message: message.into(),
        hint: hint.map(str::to_string),
    }
}

const HINT: &str = "references are ${env.X}, ${secrets.X}, ${stages.X.output}, ${stages.X.outputs.Y}, ${run.id}, ${git.commit}, ${git.branch}, ${git.repo}, ${deploy.X}, ${upstream.run.id}, ${upstream.stages.X.outputs.Y}, ${trigger.version}; write $${ for a literal ${";

/// Parses a value. `$${` is a literal `${`; a `$` not followed by `{` is literal.
pub fn parse(value: &str) -> Result<Template, TemplateError> {
    let mut parts = Vec::new();
    let mut lit = String::new();
    let mut rest = value;
    let mut offset = 0;
    while let Some(i) = rest.find('$') {
        lit.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(after_escape) = after.strip_prefix("$${") {
            lit.push_str("${");
            rest = after_escape;
            offset += i + 3;
        } else if let Some(body_start) = after.strip_prefix("${") {
            let Some(end) = body_start.find('}') else {
                return Err(err(offset + i, "unclosed `${`", Some(HINT)));
            };
            let body = &body_start[..end];
            let r = parse_ref(body.trim()).map_err(|(m, h)| err(offset + i, m, h))?;
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(Part::Ref(r));
            rest = &body_start[end + 1..];
            offset += i + 2 + end + 1;
        } else {
            lit.push('$');
            rest = &after[1..];
            offset += i + 1;
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() || parts.is_empty() {
        parts.push(Part::Lit(lit));
    }
    Ok(Template(parts))
}

fn ident_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_ref(body: &str) -> Result<Ref, (String, Option<&'static str>)> {
    let unknown = || (format!("unknown reference `${{{body}}}`"), Some(HINT));
    let segs: Vec<&str> = body.split('.').collect();
    match segs.as_slice() {
        ["env", name] if ident_ok(name) => Ok(Ref::Env(name.to_string())),
        ["secrets", name] if ident_ok(name) => Ok(Ref::Secret(name.to_string())),
        ["stages", stage, "output"] => Ok(Ref::StageOutput(stage_name(stage)?)),
        ["stages", stage, "outputs", key] if ident_ok(key) => {
            Ok(Ref::StageNamedOutput(stage_name(stage)?, key.to_string()))
        }
        ["run", "id"] => Ok(Ref::RunId),
        ["git", "commit"] => Ok(Ref::GitCommit),
        ["git", "branch"] => Ok(Ref::GitBranch),
        ["git", "repo"] => Ok(Ref::GitRepo),
        ["upstream", "run", "id"] => Ok(Ref::UpstreamRunId),
        ["trigger", "version"] => Ok(Ref::Trigger(TriggerField::Version)),
        ["trigger", "previous_version"] => Ok(Ref::Trigger(TriggerField::PreviousVersion)),
        ["upstream", "stages", stage, "output"] => Ok(Ref::UpstreamOutput(stage_name(stage)?)),
        ["upstream", "stages", stage, "outputs", key] if ident_ok(key) => Ok(
            Ref::UpstreamNamedOutput(stage_name(stage)?, key.to_string()),
        ),
        ["deploy", field] => DeployField::ALL
            .into_iter()
            .find(|d| d.name() == *field)
            .map(Ref::Deploy)
            .ok_or_else(unknown),
        _ => Err(unknown()),
    }
}

fn stage_name(s: &str) -> Result<StageName, (String, Option<&'static str>)> {
    s.parse()
        .map_err(|e: sentinel_api::IdError| (e.to_string(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_parts() {
        let t = parse("a ${env.X}-$${lit} $5 ${ stages.b.outputs.k }").unwrap();
        assert_eq!(
            t.0,
            vec![
                Part::Lit("a ".into()),
                Part::Ref(Ref::Env("X".into())),
                Part::Lit("-${lit} $5 ".into()),
                Part::Ref(Ref::StageNamedOutput("b".parse().unwrap(), "k".into())),
            ]
        );
        assert_eq!(t.to_string(), "a ${env.X}-$${lit} $5 ${stages.b.outputs.k}");
    }

    #[test]
    fn rejects_unknown() {
        assert!(parse("${foo.bar}").is_err());
        assert!(parse("${env.X").is_err());
        assert!(parse("${stages.x}").is_err());
        assert_eq!(parse("${secrets.K}x${oops}").unwrap_err().offset, 13);
    }

    #[test]
    fn deploy_facts_are_references() {
        let t = parse("${deploy.app}@${deploy.image_version}").unwrap();
        assert_eq!(
            t.refs().cloned().collect::<Vec<_>>(),
            vec![
                Ref::Deploy(DeployField::App),
                Ref::Deploy(DeployField::ImageVersion)
            ]
        );
        assert_eq!(t.to_string(), "${deploy.app}@${deploy.image_version}");
        assert!(parse("${deploy.nope}").is_err());
    }

    #[test]
    fn empty_is_literal() {
        assert_eq!(parse("").unwrap(), Template::literal(""));
    }
}
