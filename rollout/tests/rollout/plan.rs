//! Plan validation messages and properties.

use proptest::prelude::{ProptestConfig, prop, prop_assert, prop_assert_eq, prop_oneof, proptest};
use proptest::strategy::Strategy as _;
use rollout::{
    ClusterName, ClusterOrder, Overlap, PlanError, PlanInput, Quantity, Strategy, WaveKind,
};

use crate::helper::*;

fn try_plan(
    f: &rollout::Fleet,
    s: &Strategy,
    overlap: Overlap,
) -> Result<rollout::Plan, rollout::PlanErrors> {
    rollout::plan(&PlanInput {
        fleet: f,
        strategy: s,
        target: &target(),
        previous: &previous(),
        overlap,
    })
}

#[test]
fn one_instance_cluster_with_floor_one_and_no_overlap_is_impossible() {
    let s = Strategy {
        capacity: rollout::Capacity {
            max_unavailable: Quantity::Count(1),
            min_healthy: Quantity::Count(1),
        },
        ..strategy()
    };
    let err = try_plan(&fleet(&[("solo", 1), ("big", 4)]), &s, Overlap::None).unwrap_err();
    assert_eq!(
        err.0,
        vec![PlanError::NoRoomToSwitch {
            cluster: ClusterName::parse("solo").unwrap(),
            size: 1,
            floor: 1,
        }]
    );
    let msg = err.to_string();
    assert!(
        msg.contains("cluster solo has 1 instance(s) and min_healthy 1 with overlap none"),
        "{msg}"
    );
    assert!(msg.contains("use overlap socket-handover"), "{msg}");
    // The same fleet is fine when the new process starts before the old stops.
    assert!(
        try_plan(
            &fleet(&[("solo", 1), ("big", 4)]),
            &s,
            Overlap::SocketHandover
        )
        .is_ok()
    );
}

#[test]
fn batches_never_exceed_the_hosts_own_disruption_budget() {
    let s = Strategy {
        capacity: rollout::Capacity {
            max_unavailable: Quantity::Count(4),
            min_healthy: Quantity::Count(0),
        },
        ..strategy()
    };
    let mut f = fleet(&[("big", 8)]);
    let batch_sizes = |p: &rollout::Plan| -> Vec<usize> {
        p.waves
            .iter()
            .filter(|w| matches!(w.kind, WaveKind::Cluster(_)))
            .flat_map(|w| w.batches.iter().map(Vec::len))
            .collect()
    };
    let unlimited = try_plan(&f, &s, Overlap::SocketHandover).unwrap();
    assert!(batch_sizes(&unlimited).contains(&4));
    f.clusters[0].max_disruptions = Some(2);
    let capped = try_plan(&f, &s, Overlap::SocketHandover).unwrap();
    assert!(batch_sizes(&capped).iter().all(|&n| n <= 2));
    assert_eq!(capped.clusters[0].budget, 2);
    f.clusters[0].max_disruptions = Some(0);
    let err = try_plan(&f, &s, Overlap::SocketHandover).unwrap_err();
    assert!(
        err.0.contains(&PlanError::NoDisruptionBudget {
            cluster: ClusterName::parse("big").unwrap()
        }),
        "{err}"
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let s = Strategy {
        canary: 1,
        order: ClusterOrder::Explicit(vec![ClusterName::parse("nope").unwrap()]),
        ..strategy()
    };
    let err = try_plan(&fleet(&[("a", 2)]), &s, Overlap::SocketHandover).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("strategy.order names cluster nope"), "{msg}");
    assert!(
        msg.contains("cluster a is missing from strategy.order"),
        "{msg}"
    );
}

#[test]
fn too_many_canaries_and_same_release_are_explained() {
    let s = Strategy {
        canary: 5,
        ..strategy()
    };
    let err = try_plan(&fleet(&[("a", 2), ("b", 2)]), &s, Overlap::SocketHandover).unwrap_err();
    assert!(
        err.to_string()
            .contains("strategy.canary = 5 but at most 2"),
        "{err}"
    );
    let err = rollout::plan(&PlanInput {
        fleet: &fleet(&[("a", 2)]),
        strategy: &strategy(),
        target: &target(),
        previous: &rollout::Installed::Release(target()),
        overlap: Overlap::SocketHandover,
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("target and previous are the same release")
    );
}

#[test]
fn render_shows_waves_batches_and_gates() {
    let s = Strategy {
        rehearse_rollback: true,
        pause_between_clusters: true,
        ..strategy()
    };
    let p = make_plan(
        &fleet(&[("big", 3), ("small", 1)]),
        &s,
        Overlap::SocketHandover,
    );
    let text = p.render();
    let expected = "\
deploy sha256:000000000000 to 4 instance(s) in 2 cluster(s), overlap socket-handover
rollback target: each instance's own previous release (default sha256:000000000000)
gates per batch: ready within 1m, stable for 10s, then checks; whole rollout within 1h
watched until the end: every switched instance; an exit, restart or lost readiness fails the deployment
on failure: stop, and roll every touched instance back in reverse order
wave 1: canary (rehearse rollback: target -> previous -> target)
  batch 1: small-0 (small)
  -- wait for `lockstep approve` --
wave 2: cluster big (3 instance(s), floor 0, max_unavailable 1, 1 at a time)
  batch 1: big-0
  batch 2: big-1
  batch 3: big-2
bake: watch all 4 instance(s) for 30s (bake_time), then succeed
";
    assert_eq!(text, expected);
}

fn arb_quantity(max: u32) -> impl proptest::strategy::Strategy<Value = Quantity> {
    prop_oneof![
        (0..=max).prop_map(Quantity::Count),
        prop::sample::select(vec![0u8, 10, 25, 34, 50, 75, 100]).prop_map(Quantity::Percent),
    ]
}

fn arb_overlap() -> impl proptest::strategy::Strategy<Value = Overlap> {
    prop::sample::select(vec![
        Overlap::SocketHandover,
        Overlap::Reuseport,
        Overlap::None,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_cover_every_instance_once_in_order_and_within_budgets(
        sizes in prop::collection::vec(1usize..30, 1..6),
        canary in 0u32..4,
        max_unavailable in arb_quantity(5),
        min_healthy in arb_quantity(6),
        overlap in arb_overlap(),
    ) {
        let names: Vec<String> = (0..sizes.len()).map(|k| format!("c{k}")).collect();
        let spec: Vec<(&str, usize)> = names.iter().map(String::as_str).zip(sizes.iter().copied()).collect();
        let f = fleet(&spec);
        let max_unavailable = match max_unavailable { Quantity::Count(0) => Quantity::Count(1), q => q };
        let s = Strategy {
            canary,
            capacity: rollout::Capacity { max_unavailable, min_healthy },
            ..strategy()
        };
        let Ok(p) = try_plan(&f, &s, overlap) else {
            // Only impossible capacity or canary requests may be refused.
            let err = try_plan(&f, &s, overlap).unwrap_err();
            for e in err.0 {
                prop_assert!(matches!(e, PlanError::NoRoomToSwitch { .. } | PlanError::FloorAboveSize { .. } | PlanError::CanaryTooLarge { .. }), "{e}");
            }
            return Ok(());
        };
        // Every instance exactly once.
        let mut seen = vec![0usize; p.instances.len()];
        for w in &p.waves { for b in &w.batches { for &ix in b { seen[ix] += 1; } } }
        prop_assert!(seen.iter().all(|&n| n == 1));
        prop_assert_eq!(p.instances.len(), f.len());
        // Smallest first, and cluster waves follow the cluster order.
        for pair in p.clusters.windows(2) {
            prop_assert!((pair[0].size, &pair[0].name) <= (pair[1].size, &pair[1].name));
        }
        let order: Vec<usize> = p.waves.iter().filter_map(|w| match w.kind { WaveKind::Cluster(c) => Some(c), WaveKind::Canary => None }).collect();
        prop_assert!(order.windows(2).all(|w| w[0] < w[1]));
        // Canary count honoured, and first.
        let canaries: usize = p.waves.iter().filter(|w| w.kind == WaveKind::Canary).map(|w| w.batches.iter().map(Vec::len).sum::<usize>()).sum();
        prop_assert_eq!(canaries, canary as usize);
        prop_assert!(p.waves.iter().skip(1).all(|w| w.kind != WaveKind::Canary));
        // Batches respect max_unavailable and, without overlap, the floor.
        for w in &p.waves {
            for b in &w.batches {
                prop_assert!(!b.is_empty());
                for (ci, c) in p.clusters.iter().enumerate() {
                    let n = b.iter().filter(|&&ix| p.instances[ix].cluster == ci).count();
                    prop_assert!(n <= c.max_unavailable);
                    prop_assert!(n <= c.budget);
                    if overlap == Overlap::None {
                        prop_assert!(c.size - n >= c.floor, "cluster {} would drop below its floor", c.name);
                    }
                }
            }
        }
    }
}

#[test]
fn render_names_each_check_with_its_parameters_on_every_wave_that_runs_it() {
    let s = Strategy {
        checks: vec![rollout::Check {
            name: "http-smoke".to_owned(),
            params: [("url".to_owned(), "http://web/health".to_owned())].into(),
            timeout: rollout::DurationMs::secs(30),
        }],
        ..strategy()
    };
    let text = make_plan(&fleet(&[("eu", 2)]), &s, Overlap::SocketHandover).render();
    let shown = "checks: http-smoke(url=http://web/health) within 30s";
    assert!(text.contains(&format!("wave 1: canary, {shown}")), "{text}");
    assert!(text.contains(&format!("at a time), {shown}")), "{text}");
}
