//! Named checks: the only commands a deployment's strategy can make the
//! coordinator run. Each is defined in coordinator.toml (`[[checks]]`:
//! name, argv, timeout, env, declared params); a strategy refers to one by
//! name and passes values for its declared params, each of which replaces
//! one whole argv element written `{param}`. No shell is involved, and a
//! value cannot start with `-`, so it cannot become an option either.
//!
//! ```text
//! coordinator.toml [[checks]] --parse--> CheckCatalog
//! strategy [[strategy.checks]] name, params --resolve (plan/deploy)--> refused with every problem, or timeouts filled in
//! driver RunCheck(name, params) --command--> argv, env, timeout --> effects::run_check
//! ```
//!
//! Must never: run anything that is not in the catalog, or pass a value
//! through a shell or into part of an argv element.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rollout::{Check, DurationMs, Strategy};

/// A value longer than this is refused: a URL or host name fits.
pub const MAX_PARAM_VALUE: usize = 1024;

/// One argv element: as written, or a declared parameter's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgvElement {
    Literal(String),
    Param(String),
}

/// A `[[checks]]` entry, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedCheck {
    pub name: String,
    /// The program (an absolute path) first.
    pub argv: Vec<ArgvElement>,
    pub timeout: Duration,
    /// Added to the check's environment, besides `LOCKSTEP_*`.
    pub env: BTreeMap<String, String>,
    pub params: BTreeSet<String>,
}

/// A command ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckCommand {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout: Duration,
}

/// Every named check of this coordinator.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CheckCatalog {
    checks: BTreeMap<String, NamedCheck>,
}

/// Whether `name` is usable as a check or parameter name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// The parameter an argv element stands for (`{url}` -> `url`), `None` for
/// a literal. `Err` for an element that mixes a placeholder with text.
pub fn placeholder(element: &str) -> Result<Option<&str>, String> {
    if let Some(name) = element.strip_prefix('{').and_then(|e| e.strip_suffix('}')) {
        if is_valid_name(name) {
            return Ok(Some(name));
        }
    }
    if element.contains('{') || element.contains('}') {
        return Err(format!(
            "{element:?}: a parameter must be a whole argv element written {{name}} (letters, digits, '-', '_')"
        ));
    }
    Ok(None)
}

impl CheckCatalog {
    pub fn new(checks: impl IntoIterator<Item = NamedCheck>) -> Self {
        Self {
            checks: checks.into_iter().map(|c| (c.name.clone(), c)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&NamedCheck> {
        self.checks.get(name)
    }

    /// How many checks are defined.
    pub fn len(&self) -> usize {
        self.checks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checks.is_empty()
    }

    /// Checks every check `strategy` refers to against the catalog and
    /// sets its timeout from it; every problem at once.
    pub fn resolve(&self, strategy: &mut Strategy) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        let lists = std::iter::once(("strategy.checks".to_owned(), &mut strategy.checks)).chain(
            strategy.clusters.iter_mut().filter_map(|(cluster, o)| {
                o.checks
                    .as_mut()
                    .map(|c| (format!("strategy.clusters.{cluster}.checks"), c))
            }),
        );
        for (key, checks) in lists {
            for check in checks.iter_mut() {
                match self.resolve_one(check) {
                    Ok(timeout) => check.timeout = timeout,
                    Err(why) => problems.push(format!("{key}: check {:?}: {why}", check.name)),
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn resolve_one(&self, check: &Check) -> Result<DurationMs, String> {
        let command = self.command(check)?;
        let millis = u64::try_from(command.timeout.as_millis()).unwrap_or(u64::MAX);
        Ok(DurationMs(millis))
    }

    /// The command `check` runs: its catalog entry with the strategy's
    /// values in place.
    pub fn command(&self, check: &Check) -> Result<CheckCommand, String> {
        let Some(named) = self.checks.get(&check.name) else {
            return Err(format!(
                "no such check in this coordinator's coordinator.toml ([[checks]]); defined: {}",
                self.defined()
            ));
        };
        let mut problems = Vec::new();
        for (param, value) in &check.params {
            if !named.params.contains(param) {
                problems.push(format!(
                    "parameter {param:?} is not declared (declared: {})",
                    list(&named.params)
                ));
            } else if let Err(why) = acceptable_value(value) {
                problems.push(format!("parameter {param:?}: {why}"));
            }
        }
        for param in &named.params {
            if !check.params.contains_key(param) {
                problems.push(format!("parameter {param:?} is required"));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let argv = named
            .argv
            .iter()
            .map(|element| match element {
                ArgvElement::Literal(text) => text.clone(),
                ArgvElement::Param(param) => check.params.get(param).cloned().unwrap_or_default(),
            })
            .collect();
        Ok(CheckCommand {
            argv,
            env: named.env.clone(),
            timeout: named.timeout,
        })
    }

    fn defined(&self) -> String {
        if self.checks.is_empty() {
            "none".to_owned()
        } else {
            self.checks.keys().cloned().collect::<Vec<_>>().join(", ")
        }
    }
}

fn list(items: &BTreeSet<String>) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

fn acceptable_value(value: &str) -> Result<(), String> {
    if value.starts_with('-') {
        return Err(format!(
            "{value:?} starts with '-' and could be taken for an option: refused"
        ));
    }
    if value.len() > MAX_PARAM_VALUE {
        return Err(format!(
            "{} bytes is longer than the limit of {MAX_PARAM_VALUE}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("contains a control character".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> CheckCatalog {
        CheckCatalog::new([NamedCheck {
            name: "http-smoke".to_owned(),
            argv: vec![
                ArgvElement::Literal("/usr/bin/curl".to_owned()),
                ArgvElement::Literal("-fsS".to_owned()),
                ArgvElement::Param("url".to_owned()),
            ],
            timeout: Duration::from_secs(7),
            env: BTreeMap::new(),
            params: BTreeSet::from(["url".to_owned()]),
        }])
    }

    fn check(name: &str, params: &[(&str, &str)]) -> Check {
        Check {
            name: name.to_owned(),
            params: params
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timeout: DurationMs(1),
        }
    }

    #[test]
    fn a_value_replaces_a_whole_element() {
        let command = catalog()
            .command(&check(
                "http-smoke",
                &[("url", "http://web/health; rm -rf /")],
            ))
            .unwrap();
        assert_eq!(
            command.argv,
            ["/usr/bin/curl", "-fsS", "http://web/health; rm -rf /"]
        );
        assert_eq!(command.timeout, Duration::from_secs(7));
    }

    #[test]
    fn unknown_names_undeclared_missing_and_option_like_values_are_refused() {
        let err = catalog().command(&check("steal", &[])).unwrap_err();
        assert!(
            err.contains("no such check") && err.contains("http-smoke"),
            "{err}"
        );
        let err = catalog()
            .command(&check("http-smoke", &[("url", "x"), ("output", "/etc/x")]))
            .unwrap_err();
        assert!(
            err.contains("\"output\" is not declared (declared: url)"),
            "{err}"
        );
        let err = catalog().command(&check("http-smoke", &[])).unwrap_err();
        assert!(err.contains("\"url\" is required"), "{err}");
        let err = catalog()
            .command(&check("http-smoke", &[("url", "--output=/etc/passwd")]))
            .unwrap_err();
        assert!(err.contains("starts with '-'"), "{err}");
    }

    #[test]
    fn resolving_a_strategy_names_every_problem_and_sets_timeouts() {
        let mut strategy = Strategy::from_toml(
            "[strategy]\n[[strategy.checks]]\nname = \"http-smoke\"\nparams = { url = \"http://a\" }\n[strategy.clusters.eu]\nchecks = [{ name = \"nope\" }]\n",
        )
        .unwrap();
        let problems = catalog().resolve(&mut strategy).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("strategy.clusters.eu.checks: check \"nope\""),
            "{problems:?}"
        );
        let mut strategy = Strategy::from_toml(
            "[strategy]\n[[strategy.checks]]\nname = \"http-smoke\"\nparams = { url = \"http://a\" }\n",
        )
        .unwrap();
        catalog().resolve(&mut strategy).unwrap();
        assert_eq!(strategy.checks[0].timeout, DurationMs::secs(7));
    }

    #[test]
    fn placeholders_are_whole_elements() {
        assert_eq!(placeholder("{url}"), Ok(Some("url")));
        assert_eq!(placeholder("-fsS"), Ok(None));
        assert!(placeholder("--url={url}").is_err());
        assert!(placeholder("{a b}").is_err());
    }
}
