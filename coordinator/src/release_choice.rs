//! Which release an operator means: a name (version, digest or unique
//! digest prefix) resolved against the release index, and the release
//! `lockstep rollback` goes back to. Pure: the callers read the index,
//! history and fleet; these functions only decide.
//!
//! Must never: guess between several releases (an ambiguous name is an
//! error listing them), or pick a release whose deployment did not succeed
//! as a rollback target.

use std::fmt;

/// A digest prefix shorter than this (hex digits) is refused: it would
/// match by accident as the index grows.
pub const MIN_PREFIX: usize = 4;

/// A release as the index names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedRelease {
    pub digest: String,
    pub version: String,
}

impl fmt::Display for NamedRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.version, self.digest)
    }
}

/// Why a release name does not name exactly one release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("no release of {service} is named `{name}`{}; `lockstep release list --service {service}` shows them", known_list(.known))]
    Unknown {
        name: String,
        service: String,
        known: Vec<NamedRelease>,
    },
    #[error("`{name}` names {} releases of {service}: {}; give more of the digest", .candidates.len(), list(.candidates))]
    Ambiguous {
        name: String,
        service: String,
        candidates: Vec<NamedRelease>,
    },
    #[error(
        "`{name}` is too short to name a release: give a version, or at least {MIN_PREFIX} hex digits of the digest"
    )]
    TooShort { name: String },
}

fn list(releases: &[NamedRelease]) -> String {
    releases
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_list(known: &[NamedRelease]) -> String {
    if known.is_empty() {
        " (none is pushed)".to_owned()
    } else {
        format!(" (known: {})", list(known))
    }
}

/// The release of `service` that `name` names: an exact digest, a version,
/// or a unique prefix of a digest (with or without `sha256:`).
pub fn resolve<'a>(
    service: &str,
    name: &str,
    known: &'a [NamedRelease],
) -> Result<&'a NamedRelease, NameError> {
    let name = name.trim();
    if let Some(exact) = known.iter().find(|r| r.digest == name) {
        return Ok(exact);
    }
    let hex = name.strip_prefix("sha256:").unwrap_or(name);
    let is_hex = !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit());
    let by_version = known.iter().filter(|r| r.version == name);
    let by_prefix = known.iter().filter(|r| {
        is_hex
            && hex.len() >= MIN_PREFIX
            && r.digest
                .strip_prefix("sha256:")
                .is_some_and(|d| d.starts_with(&hex.to_ascii_lowercase()))
    });
    let mut candidates: Vec<&NamedRelease> = Vec::new();
    for r in by_version.chain(by_prefix) {
        if !candidates.iter().any(|c| c.digest == r.digest) {
            candidates.push(r);
        }
    }
    match candidates.as_slice() {
        [one] => Ok(one),
        [] if is_hex && hex.len() < MIN_PREFIX => Err(NameError::TooShort {
            name: name.to_owned(),
        }),
        [] => Err(NameError::Unknown {
            name: name.to_owned(),
            service: service.to_owned(),
            known: known.to_vec(),
        }),
        many => Err(NameError::Ambiguous {
            name: name.to_owned(),
            service: service.to_owned(),
            candidates: many.iter().map(|r| (*r).clone()).collect(),
        }),
    }
}

/// A finished deployment, as the rollback choice reads history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub deployment: String,
    pub succeeded: bool,
    pub release: NamedRelease,
}

/// The release `lockstep rollback` goes to: the newest release whose
/// deployment succeeded, other than the one every host already runs
/// (`fleet_on`, when the fleet is uniform). `history` is newest first.
/// A rolled-back, aborted or failed release is never chosen.
pub fn rollback_target<'a>(
    history: &'a [Finished],
    fleet_on: Option<&str>,
) -> Option<&'a Finished> {
    history
        .iter()
        .filter(|f| f.succeeded)
        .find(|f| Some(f.release.digest.as_str()) != fleet_on)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn digest(fill: char) -> String {
        format!("sha256:{}", fill.to_string().repeat(64))
    }

    fn release(version: &str, digest: &str) -> NamedRelease {
        NamedRelease {
            digest: digest.to_owned(),
            version: version.to_owned(),
        }
    }

    fn index() -> Vec<NamedRelease> {
        vec![
            release("1.0.0", &digest('a')),
            release("2.0.0", &format!("sha256:ab{}", "c".repeat(62))),
            release("3.0.0", &digest('d')),
        ]
    }

    #[test]
    fn a_version_an_exact_digest_or_a_unique_prefix_names_one_release() {
        let known = index();
        assert_eq!(resolve("web", "2.0.0", &known).unwrap().version, "2.0.0");
        assert_eq!(
            resolve("web", &digest('d'), &known).unwrap().version,
            "3.0.0"
        );
        assert_eq!(resolve("web", "dddd", &known).unwrap().version, "3.0.0");
        assert_eq!(
            resolve("web", "sha256:abcc", &known).unwrap().version,
            "2.0.0"
        );
        assert_eq!(resolve("web", " DDDD ", &known).unwrap().version, "3.0.0");
    }

    #[test]
    fn an_ambiguous_prefix_lists_its_candidates() {
        let known = index();
        let err = resolve("web", "sha256:ab", &known).unwrap_err();
        assert_eq!(
            err,
            NameError::TooShort {
                name: "sha256:ab".to_owned()
            }
        );
        let mut known = known;
        known.push(release("2.0.1", &format!("sha256:abcc{}", "e".repeat(60))));
        let err = resolve("web", "abcc", &known).unwrap_err();
        let NameError::Ambiguous { candidates, .. } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(candidates.len(), 2);
        let text = err.to_string();
        assert!(text.contains("names 2 releases of web"), "{text}");
        assert!(text.contains("2.0.0 (sha256:abcc"), "{text}");
        assert!(text.contains("2.0.1 (sha256:abcc"), "{text}");
    }

    #[test]
    fn two_releases_with_one_version_are_ambiguous() {
        let mut known = index();
        known.push(release("1.0.0", &digest('f')));
        assert!(matches!(
            resolve("web", "1.0.0", &known),
            Err(NameError::Ambiguous { .. })
        ));
    }

    #[test]
    fn an_unknown_name_says_what_is_known() {
        let err = resolve("web", "9.9.9", &index()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no release of web is named `9.9.9`"),
            "{text}"
        );
        assert!(text.contains("1.0.0 (sha256:aaaa"), "{text}");
        let none = resolve("web", "1.0.0", &[]).unwrap_err().to_string();
        assert!(none.contains("none is pushed"), "{none}");
    }

    fn finished(id: &str, succeeded: bool, version: &str, fill: char) -> Finished {
        Finished {
            deployment: id.to_owned(),
            succeeded,
            release: release(version, &digest(fill)),
        }
    }

    #[test]
    fn rollback_goes_to_the_last_release_that_succeeded() {
        // Newest first: 3.0.0 was rolled back, the fleet is back on 2.0.0.
        let history = [
            finished("d-3", false, "3.0.0", 'c'),
            finished("d-2", true, "2.0.0", 'b'),
            finished("d-1", true, "1.0.0", 'a'),
        ];
        // Every host on 2.0.0: going back means 1.0.0.
        let uniform = digest('b');
        assert_eq!(
            rollback_target(&history, Some(&uniform))
                .unwrap()
                .deployment,
            "d-1"
        );
        // A half-switched fleet (an abort): 2.0.0, never the aborted 3.0.0.
        assert_eq!(rollback_target(&history, None).unwrap().deployment, "d-2");
    }

    #[test]
    fn no_rollback_target_without_an_earlier_success() {
        let history = [
            finished("d-2", false, "2.0.0", 'b'),
            finished("d-1", true, "1.0.0", 'a'),
        ];
        assert_eq!(rollback_target(&history, Some(&digest('a'))), None);
        assert_eq!(rollback_target(&[], None), None);
    }
}
