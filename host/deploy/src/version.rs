//! Versions as deploy markers name them, ordered part by part: a version is
//! split into runs of digits and runs of letters (anything else separates),
//! numbers compare as numbers, words as text (case aside), a number before a
//! word, and a version that is a prefix of another is older. So
//! `1.0.1-21 < 1.0.1-22 < 1.0.2` and `1.0.1 < 1.0.1-21`: the build number
//! after `-` counts up, as in the monitor's examples — not semver's rule,
//! which would put `1.0.1-21` before `1.0.1`.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// One part of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Number(u128),
    Word(String),
}

impl Ord for Part {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Part::Number(a), Part::Number(b)) => a.cmp(b),
            (Part::Number(_), Part::Word(_)) => Ordering::Less,
            (Part::Word(_), Part::Number(_)) => Ordering::Greater,
            (Part::Word(a), Part::Word(b)) => a
                .to_ascii_lowercase()
                .cmp(&b.to_ascii_lowercase())
                .then_with(|| a.cmp(b)),
        }
    }
}

impl PartialOrd for Part {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A version (`1.0.1-22`).
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    parts: Vec<Part>,
}

/// A text that is not a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a version: it needs a digit or a letter, and only letters, digits, `.`, `-`, `_` and `+`"
)]
pub struct VersionError(String);

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+');
        if s.is_empty() || s.len() > 128 || !s.chars().all(ok) {
            return Err(VersionError(s.to_string()));
        }
        let mut parts = Vec::new();
        let mut run = String::new();
        let flush = |run: &mut String, parts: &mut Vec<Part>| {
            if run.is_empty() {
                return;
            }
            let part = match run.parse::<u128>() {
                Ok(n) if run.bytes().all(|b| b.is_ascii_digit()) => Part::Number(n),
                _ => Part::Word(run.clone()),
            };
            parts.push(part);
            run.clear();
        };
        let mut digits = None;
        for c in s.chars() {
            if !c.is_ascii_alphanumeric() {
                flush(&mut run, &mut parts);
                digits = None;
                continue;
            }
            let d = c.is_ascii_digit();
            if digits.is_some_and(|was| was != d) {
                flush(&mut run, &mut parts);
            }
            digits = Some(d);
            run.push(c);
        }
        flush(&mut run, &mut parts);
        if parts.is_empty() {
            return Err(VersionError(s.to_string()));
        }
        Ok(Self {
            text: s.to_string(),
            parts,
        })
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.parts.cmp(&other.parts)
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Version {
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn build_numbers_count_up() {
        let ordered = [
            "0.9",
            "1.0",
            "1.0.0",
            "1.0.1",
            "1.0.1-2",
            "1.0.1-10",
            "1.0.1-21",
            "1.0.1-22",
            "1.0.2",
            "1.0.10",
            "1.1",
            "2",
            "2.0.0-rc1",
            "2.0.0-rc2",
            "10.0",
        ];
        for w in ordered.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
            assert!(v(w[1]) > v(w[0]));
        }
        assert_eq!(v("1.0.1-22"), v("1.0.1_22"), "separators do not matter");
        assert_eq!(v("1.0.01"), v("1.0.1"), "numbers compare as numbers");
        assert!(v("1.0a") < v("1.0b") && v("1.0.1") < v("1.0.1a"));
        assert_eq!(v("1.0.1-22").to_string(), "1.0.1-22");
    }

    #[test]
    fn what_is_not_a_version() {
        for bad in ["", "..", "-", "1.0/2", "../1", "1 0", "v1;rm"] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
        assert!(
            "99999999999999999999999999999999999999999999"
                .parse::<Version>()
                .is_ok()
        );
    }
}
