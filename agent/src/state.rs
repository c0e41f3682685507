//! The agent's durable local state: per service, the current release, the
//! releases before it, the fencing-token high-water mark and a history of
//! switches.
//!
//! Written as one JSON file, atomically (temp file + fsync + rename + fsync
//! of the directory), so a crash leaves either the old state or the new one.
//! On start the agent reconciles: every service runs its current release.
//!
//! Must never: lower a fencing high-water mark, or be written in place.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The on-disk format; bumped only with a migration and a fixture of the
/// old format that must keep loading. Format 2 (#15) adds uninstalls: a
/// switch to "not installed" (`to` null, trigger `uninstall`); an agent
/// that reads only format 1 refuses such a file instead of misreading it.
pub const STATE_FORMAT: u32 = 2;
/// The formats this agent loads (and saves as `STATE_FORMAT`): format 1
/// is format 2 without uninstalls.
const LOADS_FORMATS: [u32; 2] = [1, STATE_FORMAT];
/// Releases remembered per service besides the current one.
pub const PREVIOUS_KEPT: usize = 10;
/// Switches remembered per service (`agentctl releases` shows them).
pub const HISTORY_KEPT: usize = 50;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentState {
    pub format: u32,
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceState {
    pub current: Option<ReleaseRecord>,
    /// Most recent first.
    #[serde(default)]
    pub previous: Vec<ReleaseRecord>,
    /// Highest fencing token accepted for this service.
    #[serde(default)]
    pub fencing_high_water: u64,
    /// Oldest first.
    #[serde(default)]
    pub history: Vec<SwitchRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRecord {
    /// `sha256:<hex>`.
    pub digest: String,
    pub version: String,
    pub since_unix_ms: i64,
}

/// What asked for a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Trigger {
    /// `agentctl install`.
    Install,
    /// The coordinator's `Apply`.
    Apply { deployment: String, token: u64 },
    /// `agentctl rollback` or the coordinator's `Rollback`.
    Rollback,
    /// `agentctl restart`.
    Restart { forced: bool, reason: String },
    /// The coordinator's `Uninstall` (rolling back a first install).
    Uninstall { deployment: String, token: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SwitchOutcome {
    Succeeded,
    /// The new release never became ready; the old one kept serving.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRecord {
    pub at_unix_ms: i64,
    pub from: Option<String>,
    /// `None`: to "not installed" (an uninstall).
    pub to: Option<String>,
    pub trigger: Trigger,
    pub outcome: SwitchOutcome,
}

/// A command's fencing token was older than one already accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "fencing token {offered} is older than {high_water}, already accepted for {service}: the sender has lost its lock"
)]
pub struct StaleToken {
    pub service: String,
    pub offered: u64,
    pub high_water: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read agent state {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "agent state {path} is not valid (keep it for inspection; the agent will not overwrite it): {source}"
    )]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("agent state {path} has format {found}; this agent reads formats {LOADS_FORMATS:?}")]
    Format { path: PathBuf, found: u32 },
    #[error("cannot write agent state {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ServiceState {
    /// Accepts `token` if it is not older than the high-water mark, raising
    /// the mark. Equal tokens pass: a coordinator re-issues its commands.
    pub fn admit(&mut self, service: &str, token: u64) -> Result<(), StaleToken> {
        if token < self.fencing_high_water {
            return Err(StaleToken {
                service: service.to_owned(),
                offered: token,
                high_water: self.fencing_high_water,
            });
        }
        self.fencing_high_water = token;
        Ok(())
    }

    /// Records a switch; on success `to` becomes current and the old current
    /// moves to the front of `previous`.
    pub fn record_switch(&mut self, to: ReleaseRecord, trigger: Trigger, outcome: SwitchOutcome) {
        let from = self.current.as_ref().map(|r| r.digest.clone());
        let record = SwitchRecord {
            at_unix_ms: to.since_unix_ms,
            from: from.clone(),
            to: Some(to.digest.clone()),
            trigger,
            outcome: outcome.clone(),
        };
        if outcome == SwitchOutcome::Succeeded && from.as_deref() != Some(to.digest.as_str()) {
            self.previous.retain(|r| r.digest != to.digest);
            if let Some(old) = self.current.replace(to) {
                self.previous.insert(0, old);
            }
            self.previous.truncate(PREVIOUS_KEPT);
        }
        self.remember(record);
    }

    /// Records an uninstall at `at_unix_ms`; on success nothing is current
    /// and the old current moves to the front of `previous` (its release
    /// stays pinned, for a later rollforward).
    pub fn record_uninstall(&mut self, at_unix_ms: i64, trigger: Trigger, outcome: SwitchOutcome) {
        let from = self.current.as_ref().map(|r| r.digest.clone());
        if outcome == SwitchOutcome::Succeeded {
            if let Some(old) = self.current.take() {
                self.previous.retain(|r| r.digest != old.digest);
                self.previous.insert(0, old);
                self.previous.truncate(PREVIOUS_KEPT);
            }
        }
        self.remember(SwitchRecord {
            at_unix_ms,
            from,
            to: None,
            trigger,
            outcome,
        });
    }

    fn remember(&mut self, record: SwitchRecord) {
        self.history.push(record);
        if self.history.len() > HISTORY_KEPT {
            let excess = self.history.len() - HISTORY_KEPT;
            self.history.drain(..excess);
        }
    }

    /// The token of the last uninstall if it supersedes a coordinator's
    /// Apply with `token`: an uninstall with token `u` (a first install
    /// rolled back) outranks every Apply with a token up to `u`, even one
    /// sent before it that reaches the actor after it (it was still
    /// fetching its release), so that Apply must not install the service
    /// again behind the coordinator's back.
    pub fn uninstalled_by(&self, token: u64) -> Option<u64> {
        self.history
            .iter()
            .rev()
            .find_map(|h| match (&h.trigger, &h.outcome) {
                (Trigger::Uninstall { token: u, .. }, SwitchOutcome::Succeeded) if *u >= token => {
                    Some(*u)
                }
                _ => None,
            })
    }

    /// Every digest this service may still need: current and previous.
    pub fn pinned(&self) -> impl Iterator<Item = &str> {
        self.current
            .iter()
            .chain(&self.previous)
            .map(|r| r.digest.as_str())
    }
}

impl AgentState {
    pub fn new() -> Self {
        Self {
            format: STATE_FORMAT,
            services: BTreeMap::new(),
        }
    }

    /// Loads `path`, or an empty state if it does not exist yet. Blocking.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut state: Self =
            serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
                path: path.to_owned(),
                source,
            })?;
        if !LOADS_FORMATS.contains(&state.format) {
            return Err(StateError::Format {
                path: path.to_owned(),
                found: state.format,
            });
        }
        // Format 1 reads as format 2 unchanged; the next save says 2.
        state.format = STATE_FORMAT;
        Ok(state)
    }

    /// Writes the whole state atomically. Blocking.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write_err = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_err)?;
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        let mut temp = tempfile::NamedTempFile::new_in(dir).map_err(write_err)?;
        temp.write_all(&json).map_err(write_err)?;
        temp.as_file().sync_all().map_err(write_err)?;
        temp.persist(path).map_err(|e| write_err(e.error))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
        Ok(())
    }

    pub fn service_mut(&mut self, service: &str) -> &mut ServiceState {
        self.services.entry(service.to_owned()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(n: u8) -> ReleaseRecord {
        ReleaseRecord {
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            version: format!("1.0.{n}"),
            since_unix_ms: i64::from(n),
        }
    }

    #[test]
    fn a_stale_token_is_refused_and_the_mark_never_drops() {
        let mut service = ServiceState::default();
        service.admit("web", 7).unwrap();
        service.admit("web", 7).unwrap();
        let err = service.admit("web", 6).unwrap_err();
        assert_eq!(err.high_water, 7);
        assert!(err.to_string().contains("older than 7"), "{err}");
        service.admit("web", 9).unwrap();
        assert_eq!(service.fencing_high_water, 9);
    }

    #[test]
    fn a_successful_switch_moves_current_to_previous() {
        let mut service = ServiceState::default();
        service.record_switch(release(1), Trigger::Install, SwitchOutcome::Succeeded);
        service.record_switch(release(2), Trigger::Install, SwitchOutcome::Succeeded);
        assert_eq!(service.current, Some(release(2)));
        assert_eq!(service.previous, [release(1)]);
        assert_eq!(service.history.len(), 2);
    }

    #[test]
    fn a_failed_switch_changes_nothing_but_history() {
        let mut service = ServiceState::default();
        service.record_switch(release(1), Trigger::Install, SwitchOutcome::Succeeded);
        service.record_switch(
            release(2),
            Trigger::Install,
            SwitchOutcome::Failed {
                reason: "not ready".to_owned(),
            },
        );
        assert_eq!(service.current, Some(release(1)));
        assert!(service.previous.is_empty());
        assert_eq!(service.history.len(), 2);
    }

    #[test]
    fn save_then_load_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(AgentState::load(&path).unwrap(), AgentState::new());
        let mut state = AgentState::new();
        state.service_mut("web").record_switch(
            release(1),
            Trigger::Apply {
                deployment: "d-1".into(),
                token: 4,
            },
            SwitchOutcome::Succeeded,
        );
        state.save(&path).unwrap();
        assert_eq!(AgentState::load(&path).unwrap(), state);
        // Only the state file is left: no temp files beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_format_1_fixture_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, include_str!("../tests/fixtures/state-v1.json")).unwrap();
        let state = AgentState::load(&path).unwrap();
        let web = &state.services["web"];
        assert_eq!(web.fencing_high_water, 12);
        assert_eq!(web.previous.len(), 1);
        assert!(matches!(
            web.history[1].trigger,
            Trigger::Restart { forced: true, .. }
        ));
    }

    #[test]
    fn the_format_2_fixture_loads_an_uninstalled_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, include_str!("../tests/fixtures/state-v2.json")).unwrap();
        let state = AgentState::load(&path).unwrap();
        let web = &state.services["web"];
        assert_eq!(web.current, None);
        assert_eq!(web.previous.len(), 1);
        assert_eq!(web.history[0].to, None);
        assert_eq!(
            web.history[0].trigger,
            Trigger::Uninstall {
                deployment: "d-9".into(),
                token: 14
            }
        );
    }

    #[test]
    fn a_format_1_state_is_saved_as_format_2() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, include_str!("../tests/fixtures/state-v1.json")).unwrap();
        let state = AgentState::load(&path).unwrap();
        state.save(&path).unwrap();
        let again = AgentState::load(&path).unwrap();
        assert_eq!(again, state);
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["format"], 2);
    }

    #[test]
    fn an_unknown_format_is_refused_naming_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"format\": 3}").unwrap();
        let err = AgentState::load(&path).unwrap_err();
        assert!(matches!(err, StateError::Format { found: 3, .. }), "{err}");
        assert!(err.to_string().contains("[1, 2]"), "{err}");
    }

    #[test]
    fn an_uninstall_leaves_nothing_current_and_keeps_the_release_pinned() {
        let mut service = ServiceState::default();
        service.record_switch(release(1), Trigger::Install, SwitchOutcome::Succeeded);
        let trigger = Trigger::Uninstall {
            deployment: "d-1".into(),
            token: 3,
        };
        service.record_uninstall(9, trigger.clone(), SwitchOutcome::Succeeded);
        assert_eq!(service.current, None);
        assert_eq!(service.previous, [release(1)]);
        assert_eq!(service.pinned().collect::<Vec<_>>(), [release(1).digest]);
        let last = service.history.last().unwrap();
        assert_eq!((last.to.as_deref(), &last.trigger), (None, &trigger));
        // Again: nothing to move, recorded all the same.
        service.record_uninstall(10, trigger, SwitchOutcome::Succeeded);
        assert_eq!(service.previous, [release(1)]);
        assert_eq!(service.history.len(), 3);
    }

    /// Issue #15 deliver 1: an Apply of a first install, still fetching
    /// when the rollback's uninstall (same token) ran, must not install
    /// the service afterwards; a later deployment's (higher token) may.
    #[test]
    fn an_uninstall_outranks_applies_up_to_its_token() {
        let mut service = ServiceState::default();
        assert_eq!(service.uninstalled_by(7), None);
        let uninstall = |token| Trigger::Uninstall {
            deployment: "d-1".into(),
            token,
        };
        service.record_uninstall(1, uninstall(7), SwitchOutcome::Succeeded);
        assert_eq!(service.uninstalled_by(7), Some(7));
        assert_eq!(service.uninstalled_by(6), Some(7));
        assert_eq!(service.uninstalled_by(8), None);
        let failed = SwitchOutcome::Failed {
            reason: "no slot".into(),
        };
        service.record_uninstall(2, uninstall(9), failed);
        assert_eq!(service.uninstalled_by(9), None);
    }

    #[test]
    fn a_failed_uninstall_leaves_the_current_release() {
        let mut service = ServiceState::default();
        service.record_switch(release(1), Trigger::Install, SwitchOutcome::Succeeded);
        let failed = SwitchOutcome::Failed {
            reason: "no budget slot".into(),
        };
        service.record_uninstall(9, Trigger::Rollback, failed);
        assert_eq!(service.current, Some(release(1)));
        assert!(service.previous.is_empty());
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, b"{\"format\": 1, \"services\": ").unwrap();
        let err = AgentState::load(&path).unwrap_err();
        assert!(matches!(err, StateError::Parse { .. }), "{err}");
    }
}
