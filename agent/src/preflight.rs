//! The checks of a valid `agent.toml` against this host that the agent's
//! start runs: the control group exists, the trusted release keys load,
//! `data_dir` can be a directory and its state file (if any) reads.
//! `AgentConfig::load` runs them, so `lockstep-agent check-config` and the
//! daemon's start find the same problems, before anything starts.
//!
//! Must never: create, bind or write anything (check-config may run beside
//! a running agent).

use std::path::Path;

use crate::config::AgentConfig;
use crate::control::Access;
use crate::state::AgentState;
use cli::chain;

/// Every problem found, one line each (`  key: what`), in key order.
pub fn host_problems(config: &AgentConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(err) = Access::new(config.control_group.as_deref()) {
        problems.push(format!("  control.group: {}", chain(&err)));
    }
    if let Err(message) = data_dir_problem(&config.data_dir) {
        problems.push(format!("  data_dir: {message}"));
    } else if let Err(err) = AgentState::load(&config.state_file()) {
        problems.push(format!(
            "  data_dir: the agent's state {} does not load: {}",
            config.state_file().display(),
            chain(&err)
        ));
    }
    if let Err(err) = release::TrustedKeys::load(&config.trusted_keys) {
        problems.push(format!("  releases.trusted_keys: {}", chain(&err)));
    }
    problems
}

/// `data_dir` is a directory, or does not exist yet under one (the agent
/// creates it).
fn data_dir_problem(dir: &Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} exists and is not a directory", dir.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let mut parent = dir.parent();
            while let Some(p) = parent {
                match std::fs::metadata(p) {
                    Ok(meta) if meta.is_dir() => return Ok(()),
                    Ok(_) => {
                        return Err(format!(
                            "{} cannot be created: {} is not a directory",
                            dir.display(),
                            p.display()
                        ));
                    }
                    Err(_) => parent = p.parent(),
                }
            }
            Ok(())
        }
        Err(err) => Err(format!("cannot read {}: {err}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::data_dir_problem;

    #[test]
    fn a_data_dir_that_is_a_file_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(data_dir_problem(&file).is_err());
        assert!(data_dir_problem(&file.join("below")).is_err());
        assert!(data_dir_problem(dir.path()).is_ok());
        assert!(data_dir_problem(&dir.path().join("new/deeper")).is_ok());
    }
}
