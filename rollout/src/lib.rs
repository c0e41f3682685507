//! The rollout engine: a pure state machine that sequences one deployment.
//!
//! Owns the plan (waves of canary and clusters, in batches) and the decisions:
//! `Engine::step(event) -> Vec<Action>`.
//!
//! Must never: read a clock, sleep, draw randomness, touch a network or etcd,
//! or depend on tokio. Time and failures arrive as events, so a simulator can
//! drive it deterministically.
