//! A fault-injection point for the fault lab (#18 deliver 7), compiled
//! only with the `fault-injection` feature: an Apply **held in transit**.
//!
//! ```text
//! driver: Apply built (its token) ──► hold armed for its release?
//!            no ──► sent now, as always
//!            yes ─► a transit task of its own: writes <hold>.held, waits
//!                   until <hold> is removed, then sends it and logs the
//!                   agent's verdict ("held Apply delivered")
//! ```
//!
//! With `LOCKSTEP_FAULT_HOLD_APPLY=<hold>` in the coordinator's
//! environment, every Apply of the release named in the file `<hold>` is
//! held while that file exists. The transit task is not the driver's: it
//! outlives a driver dropped with its leadership, as a request delayed in
//! the network outlives its sender's interest, so a test can make a real
//! old leader's Apply reach an agent after a standby took over with a
//! higher token.
//!
//! Must never: be built into a shipped binary (`scripts/package` builds
//! only the agent and coordinator packages, without this feature, and
//! fails if the variable's name is in the binary), or act without the
//! variable set.

use std::fmt::Debug;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

/// The environment variable naming the hold file.
pub const HOLD_APPLY_ENV: &str = "LOCKSTEP_FAULT_HOLD_APPLY";
/// How often a held Apply looks whether it is released.
const POLL: Duration = Duration::from_millis(100);
/// A hold nobody releases ends by itself: the Apply goes out after this.
const HOLD_LIMIT: Duration = Duration::from_secs(600);

/// The future that sends one Apply and answers with its result.
pub type Delivery<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The hold file named by [`HOLD_APPLY_ENV`], if set.
fn hold_file() -> Option<PathBuf> {
    std::env::var_os(HOLD_APPLY_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the hold file exists and names `release`.
fn holds(hold: &Path, release: &str) -> bool {
    std::fs::read_to_string(hold).is_ok_and(|text| text.trim() == release)
}

/// `deliver` as it is, or, when a hold is armed for `release`, held in a
/// transit task of its own until the hold file is removed. `lost` is the
/// result when the transit task ends without one (runtime shutdown).
pub fn maybe_hold<T>(
    instance: &str,
    release: &str,
    token: u64,
    deliver: Delivery<T>,
    lost: T,
) -> Delivery<T>
where
    T: Debug + Send + 'static,
{
    let Some(hold) = hold_file().filter(|hold| holds(hold, release)) else {
        return deliver;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (instance, release) = (instance.to_owned(), release.to_owned());
    tokio::spawn(async move {
        mark_held(&hold, &instance, &release, token);
        tracing::warn!(instance, release, token, hold = %hold.display(), "fault injection: Apply held until the hold file is removed");
        let released = tokio::time::timeout(HOLD_LIMIT, async {
            while hold.exists() {
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if released.is_err() {
            tracing::warn!(
                instance,
                release,
                token,
                "fault injection: hold not released in time; sending the Apply"
            );
        }
        let result = deliver.await;
        tracing::warn!(instance, release, token, result = ?result, "fault injection: held Apply delivered");
        // The driver that sent it may be gone: then only the log tells.
        let _ = tx.send(result);
    });
    Box::pin(async move { rx.await.unwrap_or(lost) })
}

/// Appends `instance release token` to `<hold>.held`, so a test knows the
/// Apply is held; a failure is logged (the test then times out saying so).
fn mark_held(hold: &Path, instance: &str, release: &str, token: u64) {
    let mut marker = hold.as_os_str().to_owned();
    marker.push(".held");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&marker)
        .and_then(|mut f| writeln!(f, "{instance} {release} {token}"));
    if let Err(err) = written {
        tracing::error!(path = ?marker, error = %err, "fault injection: cannot mark the Apply held");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_names_one_release() {
        let dir = tempfile::tempdir().unwrap();
        let hold = dir.path().join("hold");
        assert!(!holds(&hold, "sha256:a"), "no file, no hold");
        std::fs::write(&hold, "sha256:a\n").unwrap();
        assert!(holds(&hold, "sha256:a"));
        assert!(!holds(&hold, "sha256:b"));
    }
}
