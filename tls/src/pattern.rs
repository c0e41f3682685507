//! `NamePattern`: a certificate name, or a glob over names (`ops-*`,
//! `*.agents.lockstep`), as operators write them in role tables.
//!
//! Owns matching only: `*` stands for any run of characters (none
//! included), everything else matches itself, case-insensitively as DNS
//! names do.
//!
//! Must never: decide what a match allows (callers map patterns to roles).

use std::fmt;

/// What is wrong with a pattern as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("a name pattern must not be empty")]
    Empty,
    #[error(
        "name pattern {pattern:?} has a character other than letters, digits, '-', '.', '_' and '*'"
    )]
    BadCharacter { pattern: String },
}

/// A name or a glob over names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    /// Lowercase, split at each `*`: `ops-*` is `["ops-", ""]`.
    parts: Vec<String>,
    shown: String,
}

impl NamePattern {
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*');
        if !text.chars().all(allowed) {
            return Err(PatternError::BadCharacter {
                pattern: text.to_owned(),
            });
        }
        let lower = text.to_ascii_lowercase();
        Ok(Self {
            parts: lower.split('*').map(str::to_owned).collect(),
            shown: text.to_owned(),
        })
    }

    /// Whether `name` matches (case-insensitive).
    pub fn matches(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let Some((first, rest)) = self.parts.split_first() else {
            return false;
        };
        let Some(mut tail) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            // No `*`: the whole name.
            return tail.is_empty();
        };
        for part in middle {
            match tail.find(part.as_str()) {
                Some(at) => tail = &tail[at + part.len()..],
                None => return false,
            }
        }
        tail.ends_with(last.as_str())
    }
}

impl fmt::Display for NamePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(pattern: &str, name: &str) -> bool {
        NamePattern::parse(pattern).unwrap().matches(name)
    }

    #[test]
    fn a_plain_name_matches_only_itself_in_any_case() {
        assert!(matches("alice", "alice"));
        assert!(matches("Alice", "ALICE"));
        assert!(!matches("alice", "alice2"));
        assert!(!matches("alice", "malice"));
    }

    #[test]
    fn a_star_matches_any_run_of_characters() {
        assert!(matches("ops-*", "ops-1"));
        assert!(matches("ops-*", "ops-"));
        assert!(!matches("ops-*", "op-1"));
        assert!(matches("*.agents.lockstep", "web-1.agents.lockstep"));
        assert!(!matches("*.agents.lockstep", "web-1.agents.lockstep.evil"));
        assert!(matches("a*b*c", "a-b-b-c"));
        assert!(!matches("a*b*c", "a-c"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn odd_patterns_are_refused() {
        assert_eq!(NamePattern::parse(""), Err(PatternError::Empty));
        assert!(matches!(
            NamePattern::parse("ops team"),
            Err(PatternError::BadCharacter { .. })
        ));
    }
}
