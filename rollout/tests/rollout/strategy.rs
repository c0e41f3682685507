//! `[strategy]` parsing: strict keys, every error at once, named defaults.

use rollout::strategy::{DEFAULT_HEALTHY_DEADLINE, DEFAULT_MIN_HEALTHY};
use rollout::{ClusterName, ClusterOrder, DurationMs, Quantity, Strategy};

#[test]
fn parses_a_full_table() {
    let s = Strategy::from_toml(
        r#"
        [service]
        name = "channels"   # other tables are not ours to judge

        [strategy]
        canary = 2
        order = ["eu", "us"]
        max_unavailable = "25%"
        min_healthy = 3
        healthy_deadline = "2m"
        min_healthy_time = "30s"
        progress_deadline = "2h"
        pause_between_clusters = true
        rehearse_rollback = true
        auto_rollback = false

        [[strategy.checks]]
        name = "delivery"
        params = { topic = "orders" }

        [strategy.clusters.eu]
        min_healthy = "75%"
        "#,
    )
    .unwrap();
    assert_eq!(s.canary, 2);
    assert_eq!(
        s.order,
        ClusterOrder::Explicit(vec![
            ClusterName::parse("eu").unwrap(),
            ClusterName::parse("us").unwrap()
        ])
    );
    assert_eq!(s.capacity.max_unavailable, Quantity::Percent(25));
    assert_eq!(s.capacity.min_healthy, Quantity::Count(3));
    assert_eq!(s.healthy_deadline, DurationMs::mins(2));
    assert_eq!(s.min_healthy_time, DurationMs::secs(30));
    assert_eq!(s.progress_deadline, DurationMs::mins(120));
    assert!(s.pause_between_clusters && s.rehearse_rollback && !s.auto_rollback);
    assert_eq!(s.checks[0].name, "delivery");
    assert_eq!(s.checks[0].params["topic"], "orders");
    let eu = ClusterName::parse("eu").unwrap();
    assert_eq!(s.capacity_for(&eu).min_healthy, Quantity::Percent(75));
    assert_eq!(s.capacity_for(&eu).max_unavailable, Quantity::Percent(25));
}

#[test]
fn empty_table_takes_the_defaults() {
    let s = Strategy::from_toml("[strategy]\n").unwrap();
    assert_eq!(s, Strategy::default());
    assert_eq!(s.order, ClusterOrder::SmallestFirst);
    assert_eq!(s.capacity.min_healthy, DEFAULT_MIN_HEALTHY);
    assert_eq!(s.healthy_deadline, DEFAULT_HEALTHY_DEADLINE);
}

#[test]
fn unknown_keys_are_errors_that_name_the_key() {
    let err = Strategy::from_toml("[strategy]\nmax_unavailible = 2\n").unwrap_err();
    assert!(err.to_string().contains("max_unavailible"), "{err}");
}

#[test]
fn every_bad_value_is_reported_at_once() {
    let err = Strategy::from_toml(
        r#"
        [strategy]
        canary = 0
        rehearse_rollback = true
        max_unavailable = "150%"
        healthy_deadline = 30
        min_healthy_time = "10 parsecs"
        order = "largest-first"
        "#,
    )
    .unwrap_err();
    let msg = err.to_string();
    for needle in [
        "strategy.max_unavailable = \"150%\"",
        "strategy.healthy_deadline = \"30\": give a unit",
        "strategy.min_healthy_time = \"10 parsecs\"",
        "strategy.order = \"largest-first\"",
        "rehearse_rollback = true needs canary >= 1",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in {msg}");
    }
    assert_eq!(err.0.len(), 5);
}

/// An operator who writes `canary = 0` means "no canary": the rehearsal,
/// which needs one, is then off unless asked for (and refused if asked).
#[test]
fn without_a_canary_the_rehearsal_defaults_off() {
    let s = Strategy::from_toml("[strategy]\ncanary = 0\n").unwrap();
    assert_eq!(s.canary, 0);
    assert!(!s.rehearse_rollback);
    let s = Strategy::from_toml("[strategy]\ncanary = 1\n").unwrap();
    assert!(s.rehearse_rollback);
}

#[test]
fn zero_budget_and_short_deadline_are_refused() {
    let err = Strategy::from_toml(
        "[strategy]\nmax_unavailable = 0\nprogress_deadline = \"1m\"\nhealthy_deadline = \"5m\"\n",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("strategy.max_unavailable = \"0\": must allow at least one instance"),
        "{msg}"
    );
    assert!(
        msg.contains("progress_deadline = 1m is shorter than"),
        "{msg}"
    );
}

#[test]
fn bake_time_defaults_to_a_multiple_of_min_healthy_time_and_zero_disables_it() {
    use rollout::strategy::BAKE_TIME_FACTOR;
    let s = Strategy::from_toml("[strategy]\nmin_healthy_time = \"4s\"\n").unwrap();
    assert_eq!(s.bake_time, DurationMs::secs(4 * BAKE_TIME_FACTOR));
    let s = Strategy::from_toml("[strategy]\nbake_time = \"2m\"\n").unwrap();
    assert_eq!(s.bake_time, DurationMs::mins(2));
    let s = Strategy::from_toml("[strategy]\nbake_time = \"0s\"\n").unwrap();
    assert_eq!(s.bake_time, DurationMs(0));
    let err = Strategy::from_toml("[strategy]\nbake_time = 30\n").unwrap_err();
    assert!(err.to_string().contains("bake_time"), "{err}");
}

/// Reproduces #14 Seen 1 at the parser: a strategy may not carry a
/// command (`argv`) or a timeout; checks are the coordinator's config.
#[test]
fn a_check_with_argv_or_a_timeout_is_refused_naming_coordinator_toml() {
    let err = Strategy::from_toml(
        "[strategy]\n[[strategy.checks]]\nname = \"steal\"\nargv = [\"/bin/sh\", \"-c\", \"cat /etc/shadow\"]\ntimeout = \"5s\"\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("strategy check \"steal\": argv is not accepted")
            && err.contains("coordinator.toml"),
        "{err}"
    );
    assert!(err.contains("timeout is not accepted"), "{err}");
}
