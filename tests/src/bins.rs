//! The workspace's binaries, as the test command built them: the
//! fixtures run `lockstep-coordinator`, `lockstep`, `lockstep-agent`,
//! `agentctl`, `demo-app` and `lockstep-nodesim` (`NodesimFixture`), all
//! built by `cargo build --workspace --bins`.

use std::path::PathBuf;

use crate::HarnessError;

/// `target/<profile>/<name>`, found next to the running test binary
/// (`target/<profile>/deps/…`). `cargo nextest run` builds only the
/// binaries of packages with integration tests, so `scripts/test` builds
/// them all first (CI once failed on a missing `lockstep-nodesim`).
pub fn workspace_bin(name: &str) -> Result<PathBuf, HarnessError> {
    let exe = std::env::current_exe().map_err(|source| HarnessError::Binary {
        name: name.to_owned(),
        detail: source.to_string(),
    })?;
    let profile_dir =
        exe.parent()
            .and_then(|deps| deps.parent())
            .ok_or_else(|| HarnessError::Binary {
                name: name.to_owned(),
                detail: format!("cannot find the target dir above {}", exe.display()),
            })?;
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(HarnessError::Binary {
            name: name.to_owned(),
            detail: format!(
                "{} is missing; run `cargo build --workspace --bins` first",
                path.display()
            ),
        })
    }
}
