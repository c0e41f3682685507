//! Analysis gates: PromQL queries a strategy declares (`[[strategy.analysis]]`),
//! which the coordinator runs against its configured Prometheus while a
//! batch is stable and during the bake.
//!
//! Owns the pure parts: parsing and validating a declaration (bounded
//! query, known placeholders only inside double-quoted strings), the success
//! condition (`result < 0.01`: one comparison, no expressions), filling the
//! placeholders with escaped label values, judging one measurement (value
//! or canary-vs-baseline), and the verdict over a run's measurements.
//! Must never: do IO, read a clock, or evaluate anything but one comparison.
//!
//! ```text
//!  query ─fill(bindings)─► PromQL ──(coordinator: /api/v1/query every interval)──► Sample
//!  Sample ─Analysis::measure─► Measurement ─┐
//!                               Tally::add ─┴─► Pending | Passed | Failed | Inconclusive
//! ```

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::DurationMs;

/// A query longer than this is refused: an analysis is one expression,
/// and the query string travels in every deployment record.
pub const MAX_QUERY_BYTES: usize = 4096;
/// `success` is one comparison; anything longer is not one.
pub const MAX_CONDITION_BYTES: usize = 64;
/// Bounds one run: `count` measurements `interval` apart.
pub const MAX_COUNT: u32 = 100;
/// Shortest interval: Prometheus scrapes every few seconds at best, so
/// querying faster measures the same samples again.
pub const MIN_INTERVAL: DurationMs = DurationMs(500);
/// Longest interval between two measurements.
pub const MAX_INTERVAL: DurationMs = DurationMs::mins(10);
/// One query may take this long (Prometheus is told so too); past it the
/// measurement is inconclusive.
pub const QUERY_TIMEOUT: DurationMs = DurationMs::secs(10);
/// Five measurements tell a steady error rate from a blip, at the cost of
/// five intervals per gated batch.
pub const DEFAULT_COUNT: u32 = 5;
/// Measure every 10 s: two or more scrapes at common scrape intervals.
pub const DEFAULT_INTERVAL: DurationMs = DurationMs::secs(10);
/// One failed or inconclusive measurement fails or halts the run: a gate
/// that shrugs off bad evidence is no gate.
pub const DEFAULT_LIMIT: u32 = 0;
/// Bounds the number of analyses a strategy may declare.
pub const MAX_ANALYSES: usize = 16;
/// The placeholders a query may use.
pub const PLACEHOLDERS: [&str; 4] = ["$service", "$cluster", "$hosts", "$release"];

/// One run of an analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AnalysisRunId(pub u64);

/// Where in a deployment an analysis runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// After the canary batch's stable period (each canary pass).
    Canary,
    /// After each cluster batch's stable period.
    Clusters,
    /// During `bake_time`, over every host.
    Bake,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Canary => "canary",
            Phase::Clusters => "clusters",
            Phase::Bake => "bake",
        })
    }
}

/// What an inconclusive run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnInconclusive {
    /// Stop and wait for an operator (rollback or abort); never passes.
    Halt,
    /// Roll back as for a failure.
    Rollback,
}

/// A comparison operator of a success condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    /// Whether a lower value is the better one.
    fn lower_is_better(self) -> bool {
        matches!(self, Op::Lt | Op::Le)
    }
}

/// `result < 0.01`: the only grammar a success condition has.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// The comparison.
    pub op: Op,
    /// Its right-hand side, a finite number.
    pub threshold: f64,
}

impl Eq for Condition {}

impl Condition {
    /// Parses `result OP NUMBER` (whitespace between the parts optional).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        if text.len() > MAX_CONDITION_BYTES {
            return Err("longer than 64 bytes; write one comparison such as \"result < 0.01\"");
        }
        let rest = text
            .trim()
            .strip_prefix("result")
            .ok_or("must start with \"result\", as in \"result < 0.01\"")?
            .trim_start();
        let (op, number) = if let Some(n) = rest.strip_prefix("<=") {
            (Op::Le, n)
        } else if let Some(n) = rest.strip_prefix(">=") {
            (Op::Ge, n)
        } else if let Some(n) = rest.strip_prefix('<') {
            (Op::Lt, n)
        } else if let Some(n) = rest.strip_prefix('>') {
            (Op::Gt, n)
        } else {
            return Err("expected one of <, <=, >, >= after \"result\"");
        };
        let threshold: f64 = number
            .trim()
            .parse()
            .map_err(|_| "expected a number after the comparison, as in \"result < 0.01\"")?;
        if !threshold.is_finite() {
            return Err("the number must be finite");
        }
        Ok(Self { op, threshold })
    }

    /// Whether `value` satisfies it. NaN satisfies nothing.
    pub fn holds(&self, value: f64) -> bool {
        match self.op {
            Op::Lt => value < self.threshold,
            Op::Le => value <= self.threshold,
            Op::Gt => value > self.threshold,
            Op::Ge => value >= self.threshold,
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "result {} {}", self.op.as_str(), self.threshold)
    }
}

/// The canary-vs-baseline form: the same query over the hosts still on
/// the previous release, and how much worse the new release may be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// A measurement fails when the new value is worse than the baseline's
    /// by more than this (in the query's unit; "worse" is the direction
    /// the success condition calls bad).
    pub margin: f64,
}

impl Eq for Baseline {}

/// A validated analysis, as a strategy declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    /// Shown in plans, events and reasons.
    pub name: String,
    /// PromQL with placeholders.
    pub query: String,
    /// What a good measurement satisfies; with `baseline`, also the
    /// direction in which a value is worse.
    pub success: Condition,
    /// The canary-vs-baseline form, if set.
    #[serde(default)]
    pub baseline: Option<Baseline>,
    /// Time between measurements (the first is taken one interval in).
    pub interval: DurationMs,
    /// Measurements per run.
    pub count: u32,
    /// More failed measurements than this fail the run.
    pub failure_limit: u32,
    /// More inconclusive measurements (Prometheus unreachable, an error, no
    /// data) than this make the run inconclusive.
    pub inconclusive_limit: u32,
    /// Where it runs.
    pub phases: Vec<Phase>,
    /// What an inconclusive run does.
    pub on_inconclusive: OnInconclusive,
}

impl Analysis {
    /// How long a run may take before the engine calls it inconclusive:
    /// every measurement at its interval, each query at its timeout, and
    /// one interval's slack for the driver.
    pub fn deadline(&self) -> DurationMs {
        let per = self.interval.0.saturating_add(QUERY_TIMEOUT.0);
        DurationMs(
            per.saturating_mul(u64::from(self.count))
                .saturating_add(self.interval.0)
                .saturating_add(QUERY_TIMEOUT.0),
        )
    }

    /// Whether it runs in `phase`.
    pub fn runs_in(&self, phase: Phase) -> bool {
        self.phases.contains(&phase)
    }

    /// Judges one measurement from the query's answer (and, in the
    /// baseline form, the baseline query's).
    pub fn measure(&self, value: Sample, baseline: Option<Sample>) -> Measurement {
        let value = match value {
            Sample::Value(v) if v.is_nan() => {
                return Measurement::Inconclusive("the query returned NaN (no traffic?)".into());
            }
            Sample::Value(v) => v,
            Sample::Empty => {
                return Measurement::Inconclusive("the query returned no data".into());
            }
            Sample::Error(why) => return Measurement::Inconclusive(why),
        };
        if !self.success.holds(value) {
            return Measurement::Failed(format!("{value} does not satisfy {}", self.success));
        }
        let Some(b) = self.baseline else {
            return Measurement::Good(format!("{value}"));
        };
        let base = match baseline {
            Some(Sample::Value(v)) if !v.is_nan() => v,
            Some(Sample::Value(_)) => {
                return Measurement::Inconclusive("the baseline query returned NaN".into());
            }
            Some(Sample::Empty) | None => {
                return Measurement::Inconclusive("the baseline query returned no data".into());
            }
            Some(Sample::Error(why)) => {
                return Measurement::Inconclusive(format!("baseline: {why}"));
            }
        };
        let worse_by = if self.success.op.lower_is_better() {
            value - base
        } else {
            base - value
        };
        if worse_by > b.margin {
            Measurement::Failed(format!(
                "{value} is worse than the baseline's {base} by {worse_by} (margin {})",
                b.margin
            ))
        } else {
            Measurement::Good(format!("{value} (baseline {base})"))
        }
    }
}

/// `error-rate: result < 0.05, 5 x 2s, failure_limit 0 [canary, bake]`.
impl fmt::Display for Analysis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}, {} x {}, failure_limit {}, inconclusive_limit {}",
            self.name,
            self.success,
            self.count,
            self.interval,
            self.failure_limit,
            self.inconclusive_limit
        )?;
        if let Some(b) = self.baseline {
            write!(f, ", vs baseline (margin {})", b.margin)?;
        }
        let phases: Vec<String> = self.phases.iter().map(ToString::to_string).collect();
        write!(
            f,
            " [{}], inconclusive: {}",
            phases.join(", "),
            match self.on_inconclusive {
                OnInconclusive::Halt => "halt",
                OnInconclusive::Rollback => "roll back",
            }
        )
    }
}

/// What one query answered, as the coordinator read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Sample {
    /// A scalar, or a vector of exactly one sample.
    Value(f64),
    /// An empty vector: no series matched.
    Empty,
    /// Unreachable, an error status, a malformed answer, or more than one
    /// series; says which.
    Error(String),
}

/// One measurement's judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Measurement {
    /// Satisfied the condition (and the margin); the values, for the record.
    Good(String),
    /// Did not; the values and the condition.
    Failed(String),
    /// No evidence either way; why.
    Inconclusive(String),
}

/// A run's verdict so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Needs more measurements.
    Pending,
    /// `count` measurements within both limits.
    Passed,
    /// More failures than `failure_limit`: the measurements that failed.
    Failed(String),
    /// More inconclusive measurements than `inconclusive_limit`: why.
    Inconclusive(String),
}

/// The measurements of one run so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    taken: u32,
    failed: Vec<String>,
    inconclusive: Vec<String>,
}

impl Tally {
    /// Adds one measurement and says where the run stands: a limit
    /// exceeded decides at once; otherwise it passes after `count`.
    pub fn add(&mut self, analysis: &Analysis, m: Measurement) -> Verdict {
        self.taken += 1;
        match m {
            Measurement::Good(_) => {}
            Measurement::Failed(d) => self.failed.push(d),
            Measurement::Inconclusive(d) => self.inconclusive.push(d),
        }
        if self.failed.len() > analysis.failure_limit as usize {
            return Verdict::Failed(format!(
                "{} of {} measurement(s) failed (failure_limit {}): {}",
                self.failed.len(),
                self.taken,
                analysis.failure_limit,
                self.failed.join("; ")
            ));
        }
        if self.inconclusive.len() > analysis.inconclusive_limit as usize {
            return Verdict::Inconclusive(format!(
                "{} of {} measurement(s) inconclusive (inconclusive_limit {}): {}",
                self.inconclusive.len(),
                self.taken,
                analysis.inconclusive_limit,
                self.inconclusive.join("; ")
            ));
        }
        if self.taken >= analysis.count {
            Verdict::Passed
        } else {
            Verdict::Pending
        }
    }
}

/// The values a query's placeholders take for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bindings {
    /// `$service`: the service's name.
    pub service: String,
    /// `$cluster`: the clusters of the hosts measured.
    pub clusters: Vec<String>,
    /// `$hosts`: the hosts measured.
    pub hosts: Vec<String>,
    /// `$release`: the release they run.
    pub release: String,
}

/// Whether `name` is a valid analysis name: 1 to 64 of `a-z0-9-_`, since
/// it appears in reasons, events and metric-free logs verbatim.
pub fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Fills `query`'s placeholders. `$service` and `$release` become the
/// value escaped for a PromQL double-quoted string (use with `=`);
/// `$hosts` and `$cluster` become an anchored alternation of the values,
/// each escaped as a regular expression and then as a string (use with
/// `=~`). So no name can end the string it sits in or widen the match.
pub fn fill(query: &str, b: &Bindings) -> String {
    let alternation = |values: &[String]| -> String {
        let alts: Vec<String> = values.iter().map(|v| escape_regex(v)).collect();
        escape_string(&alts.join("|"))
    };
    query
        .replace("$service", &escape_string(&b.service))
        .replace("$release", &escape_string(&b.release))
        .replace("$hosts", &alternation(&b.hosts))
        .replace("$cluster", &alternation(&b.clusters))
}

/// Escapes for the inside of a PromQL double-quoted string.
fn escape_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Escapes RE2 metacharacters so the value matches only itself.
fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Checks a query: bounded, not empty, and every `$word` a known
/// placeholder inside a double-quoted string (outside one, even an escaped
/// value would be PromQL syntax).
pub fn check_query(query: &str) -> Result<(), String> {
    if query.trim().is_empty() {
        return Err("query must not be empty".into());
    }
    if query.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "query is {} bytes; at most {MAX_QUERY_BYTES}",
            query.len()
        ));
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in query.char_indices() {
        if quoted && escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '$' => {
                let word: String = query[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let name = format!("${word}");
                if !PLACEHOLDERS.contains(&name.as_str()) {
                    return Err(format!(
                        "unknown placeholder {name:?} at byte {i}; known: {}",
                        PLACEHOLDERS.join(", ")
                    ));
                }
                if !quoted {
                    return Err(format!(
                        "placeholder {name} at byte {i} is outside a double-quoted string; write it as a label value, as in host=~\"$hosts\""
                    ));
                }
            }
            _ => {}
        }
    }
    if quoted {
        return Err("a double-quoted string is not closed".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn analysis(success: &str, baseline: Option<f64>) -> Analysis {
        Analysis {
            name: "error-rate".into(),
            query: "x".into(),
            success: Condition::parse(success).unwrap(),
            baseline: baseline.map(|margin| Baseline { margin }),
            interval: DurationMs::secs(1),
            count: 3,
            failure_limit: 1,
            inconclusive_limit: 0,
            phases: vec![Phase::Canary],
            on_inconclusive: OnInconclusive::Halt,
        }
    }

    #[test]
    fn conditions_parse_and_hold() {
        let c = Condition::parse("result < 0.01").unwrap();
        assert!(c.holds(0.005) && !c.holds(0.01) && !c.holds(f64::NAN));
        let c = Condition::parse("result<=5").unwrap();
        assert!(c.holds(5.0) && !c.holds(5.1));
        let c = Condition::parse("  result >  0.99 ").unwrap();
        assert!(c.holds(1.0) && !c.holds(0.99));
        assert!(Condition::parse("result >= 1e-3").unwrap().holds(0.001));
        assert_eq!(c.to_string(), "result > 0.99");
    }

    #[test]
    fn anything_but_one_comparison_is_refused() {
        for bad in [
            "",
            "value < 1",
            "result == 1",
            "result < ",
            "result < 1 && result > 0",
            "result < inf",
            "result < NaN",
            "result < 0.01; drop",
            &format!("result < {}", "1".repeat(80)),
        ] {
            assert!(Condition::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn placeholders_are_filled_escaped() {
        let b = Bindings {
            service: "web\"} or vector(1) #".into(),
            clusters: vec!["eu".into()],
            hosts: vec!["a.1".into(), "b|.*".into()],
            release: "sha256:ab".into(),
        };
        let q =
            r#"sum(x{service="$service",host=~"$hosts",cluster=~"$cluster",release="$release"})"#;
        assert_eq!(
            fill(q, &b),
            r#"sum(x{service="web\"} or vector(1) #",host=~"a\\.1|b\\|\\.\\*",cluster=~"eu",release="sha256:ab"})"#
        );
    }

    #[test]
    fn queries_are_checked() {
        assert!(check_query(r#"sum(x{host=~"$hosts"})"#).is_ok());
        assert!(check_query(r#"sum(x{a="\"$hosts"})"#).is_ok());
        let outside = check_query("sum(x) by ($hosts)").unwrap_err();
        assert!(
            outside.contains("outside a double-quoted string"),
            "{outside}"
        );
        let unknown = check_query(r#"x{a="$host"}"#).unwrap_err();
        assert!(
            unknown.contains("unknown placeholder \"$host\""),
            "{unknown}"
        );
        assert!(check_query(r#"x{a="b}"#).is_err());
        assert!(check_query("  ").is_err());
        assert!(check_query(&"x".repeat(MAX_QUERY_BYTES + 1)).is_err());
    }

    #[test]
    fn a_measurement_is_judged_by_its_value() {
        let a = analysis("result < 0.05", None);
        assert!(matches!(
            a.measure(Sample::Value(0.01), None),
            Measurement::Good(_)
        ));
        assert_eq!(
            a.measure(Sample::Value(0.2), None),
            Measurement::Failed("0.2 does not satisfy result < 0.05".into())
        );
        assert!(matches!(
            a.measure(Sample::Empty, None),
            Measurement::Inconclusive(_)
        ));
        assert!(matches!(
            a.measure(Sample::Value(f64::NAN), None),
            Measurement::Inconclusive(_)
        ));
        assert_eq!(
            a.measure(Sample::Error("connection refused".into()), None),
            Measurement::Inconclusive("connection refused".into())
        );
    }

    #[test]
    fn the_baseline_form_fails_when_the_new_release_is_worse_by_more_than_the_margin() {
        let lower = analysis("result < 1", Some(0.02));
        assert!(matches!(
            lower.measure(Sample::Value(0.05), Some(Sample::Value(0.04))),
            Measurement::Good(_)
        ));
        let Measurement::Failed(why) = lower.measure(Sample::Value(0.2), Some(Sample::Value(0.01)))
        else {
            panic!("a canary 0.19 worse passed");
        };
        assert!(why.contains("baseline's 0.01"), "{why}");
        assert!(matches!(
            lower.measure(Sample::Value(0.2), Some(Sample::Empty)),
            Measurement::Inconclusive(_)
        ));
        let higher = analysis("result > 0", Some(0.1));
        assert!(matches!(
            higher.measure(Sample::Value(0.5), Some(Sample::Value(0.9))),
            Measurement::Failed(_)
        ));
        assert!(matches!(
            higher.measure(Sample::Value(0.95), Some(Sample::Value(0.9))),
            Measurement::Good(_)
        ));
    }

    #[test]
    fn the_verdict_follows_count_and_limits() {
        let a = analysis("result < 1", None);
        let mut t = Tally::default();
        assert_eq!(t.add(&a, Measurement::Good("0".into())), Verdict::Pending);
        assert_eq!(t.add(&a, Measurement::Failed("2".into())), Verdict::Pending);
        assert_eq!(t.add(&a, Measurement::Good("0".into())), Verdict::Passed);

        let mut t = Tally::default();
        t.add(&a, Measurement::Failed("2 does not satisfy".into()));
        let Verdict::Failed(why) = t.add(&a, Measurement::Failed("3 does not satisfy".into()))
        else {
            panic!("two failures over a limit of one did not fail");
        };
        assert!(
            why.contains("2 of 2 measurement(s) failed (failure_limit 1)"),
            "{why}"
        );

        let mut t = Tally::default();
        let Verdict::Inconclusive(why) =
            t.add(&a, Measurement::Inconclusive("connection refused".into()))
        else {
            panic!("an inconclusive measurement over a limit of zero passed");
        };
        assert!(why.contains("connection refused"), "{why}");
    }

    #[test]
    fn a_runs_deadline_covers_every_measurement() {
        let a = analysis("result < 1", None);
        assert!(a.deadline().0 >= 3 * (1000 + QUERY_TIMEOUT.0));
    }
}
