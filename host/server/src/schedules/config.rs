//! A schedule as the server's configuration gives it, checked when the
//! configuration is loaded: its repository is configured, its cron
//! expression parses (5 fields or a `@daily`-style name), its time zone is
//! an IANA name.

use std::collections::BTreeMap;
use std::str::FromStr as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// `[schedules.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// The repository (of `[repos]`) to run.
    pub repo: String,
    /// Its pipeline, when it has several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// The branch to run.
    #[serde(default = "default_branch")]
    pub branch: String,
    /// When: 5 fields (minute hour day-of-month month day-of-week) or
    /// `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// The IANA time zone the expression is read in.
    #[serde(default = "default_zone")]
    pub timezone: String,
    /// Values for the pipeline's `NAME: ~` variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// What becomes of firings missed while the server was down.
    #[serde(default)]
    pub catch_up: CatchUp,
}

fn default_branch() -> String {
    "main".into()
}

fn default_zone() -> String {
    "UTC".into()
}

fn yes() -> bool {
    true
}

/// What becomes of firings missed while the server was down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// The newest of them runs, once.
    #[default]
    Latest,
    /// None runs.
    None,
}

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub config: ScheduleConfig,
    cron: croner::Cron,
    zone: chrono_tz::Tz,
}

impl ScheduleConfig {
    /// Checks schedule `name` against the configured repositories.
    pub fn check(
        &self,
        name: &str,
        repos: &BTreeMap<String, crate::RepoConfig>,
    ) -> Result<Schedule, String> {
        let at = |what: String| format!("[schedules.{name}]: {what}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(at(
                "the name may hold letters, digits, `.`, `-` and `_`".into()
            ));
        }
        crate::check_event(
            repos,
            &self.repo,
            self.pipeline.as_deref(),
            crate::filters::Event::Schedule,
        )
        .map_err(at)?;
        if self.branch.is_empty() || self.branch.starts_with('-') {
            return Err(at(format!("branch `{}` is not a branch", self.branch)));
        }
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Disallowed)
            .build()
            .parse(self.cron.trim())
            .map_err(|e| {
                at(format!(
                    "cron `{}`: {e} (5 fields: minute hour day-of-month month day-of-week, or @hourly, @daily, @weekly, @monthly, @yearly)",
                    self.cron
                ))
            })?;
        let zone = chrono_tz::Tz::from_str(self.timezone.trim()).map_err(|_| {
            at(format!(
                "timezone `{}` is not an IANA time zone (like `Europe/Berlin` or `UTC`)",
                self.timezone
            ))
        })?;
        Ok(Schedule {
            name: name.to_string(),
            config: self.clone(),
            cron,
            zone,
        })
    }
}

impl Schedule {
    /// Its first firing strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = t.with_timezone(&self.zone);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|n| n.with_timezone(&Utc))
    }

    /// What its firings are computed from: a changed one starts afresh.
    pub fn pattern(&self) -> String {
        format!("{} @ {}", self.config.cron.trim(), self.zone.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, zone: &str) -> Schedule {
        ScheduleConfig {
            repo: "r".into(),
            pipeline: None,
            branch: "main".into(),
            cron: cron.into(),
            timezone: zone.into(),
            env: BTreeMap::new(),
            enabled: true,
            catch_up: CatchUp::Latest,
        }
        .check("s", &repos())
        .unwrap()
    }

    fn repos() -> BTreeMap<String, crate::RepoConfig> {
        let r = crate::RepoConfig {
            url: "/r".into(),
            ..Default::default()
        };
        BTreeMap::from([("r".to_string(), r)])
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_bad_expression_zone_or_repo_is_refused_naming_the_schedule() {
        let base = ScheduleConfig {
            repo: "r".into(),
            pipeline: None,
            branch: "main".into(),
            cron: "0 2 * * *".into(),
            timezone: "UTC".into(),
            env: BTreeMap::new(),
            enabled: true,
            catch_up: CatchUp::Latest,
        };
        let bad = |c: ScheduleConfig| c.check("nightly", &repos()).unwrap_err();
        let e = bad(ScheduleConfig {
            cron: "0 2 * *".into(),
            ..base.clone()
        });
        assert!(e.starts_with("[schedules.nightly]: cron `0 2 * *`"), "{e}");
        let e = bad(ScheduleConfig {
            cron: "0 0 2 * * *".into(),
            ..base.clone()
        });
        assert!(e.contains("5 fields"), "{e}");
        let e = bad(ScheduleConfig {
            timezone: "Mars/Olympus".into(),
            ..base.clone()
        });
        assert!(e.contains("timezone `Mars/Olympus`"), "{e}");
        let e = bad(ScheduleConfig {
            repo: "nope".into(),
            ..base.clone()
        });
        assert!(e.contains("repo `nope` is not in [repos]"), "{e}");
        assert!(base.check("nightly", &repos()).is_ok());
        assert!(
            ScheduleConfig {
                cron: "@daily".into(),
                ..base
            }
            .check("nightly", &repos())
            .is_ok()
        );
    }

    #[test]
    fn daylight_saving_gaps_fire_after_the_gap_and_repeats_fire_once() {
        let s = schedule("30 2 * * *", "Europe/Berlin");
        // 2027-03-28: 02:00 CET jumps to 03:00 CEST; 02:30 does not exist.
        let spring = s.next_after(utc("2027-03-27T23:00:00Z")).unwrap();
        assert_eq!(spring, utc("2027-03-28T01:00:00Z"), "03:00 CEST");
        // 2027-10-31: 03:00 CEST falls back to 02:00 CET; 02:30 happens twice.
        let autumn = s.next_after(utc("2027-10-30T22:00:00Z")).unwrap();
        assert_eq!(autumn, utc("2027-10-31T00:30:00Z"), "02:30 CEST, the first");
        let after = s.next_after(autumn).unwrap();
        assert_eq!(after, utc("2027-11-01T01:30:00Z"), "not 02:30 CET again");
    }
}
