//! `ReleaseFetcher` and `Host::accept_apply` against the fake coordinator.

use std::sync::Arc;
use std::time::Duration;

use agent::config::CoordinatorSettings;
use agent::fetch::{FetchError, ReleaseFetcher};
use agent::host::{Host, HostError};
use release::{Store, TrustedKeys, UnpackLimits};

use crate::helper::{self, Fake, Serve};

struct Setup {
    dir: tempfile::TempDir,
    store: Store,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path().join("releases"),
            UnpackLimits::default(),
            TrustedKeys::none(),
        )
        .unwrap();
        Self { dir, store }
    }

    fn fetcher(&self, urls: &[&str]) -> ReleaseFetcher {
        let settings = CoordinatorSettings {
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            fetch_timeout: Duration::from_secs(30),
        };
        ReleaseFetcher::new(&settings, self.incoming(), self.store.clone())
    }

    fn incoming(&self) -> std::path::PathBuf {
        self.dir.path().join("incoming")
    }

    fn bundle(&self) -> helper::Bundle {
        helper::bundle(&self.dir.path().join("build"))
    }
}

#[tokio::test]
async fn a_fetched_bundle_ends_in_the_store_under_its_digest() {
    let setup = Setup::new();
    let bundle = setup.bundle();
    let coordinator = helper::serve(Fake::new(&bundle, Serve::Whole)).await;
    // The first coordinator is down: the fetch moves on to the next.
    let dead = helper::dead_url().await;
    let fetcher = setup.fetcher(&[&dead, &coordinator.url]);

    fetcher.fetch(&bundle.digest).await.unwrap();

    let stored = setup.store.get(&bundle.digest).unwrap().expect("stored");
    assert_eq!(stored.digest, bundle.digest);
    assert_eq!(stored.manifest.service().as_str(), "demo");
    assert_eq!(coordinator.fake.offsets(), [0]);
    assert!(
        helper::files_under(&setup.incoming()).is_empty(),
        "partial left: {:?}",
        helper::files_under(&setup.incoming())
    );
    // Present now: a second fetch asks nobody.
    fetcher.fetch(&bundle.digest).await.unwrap();
    assert_eq!(coordinator.fake.offsets(), [0]);
}

#[tokio::test]
async fn a_broken_stream_resumes_where_it_broke() {
    let setup = Setup::new();
    let bundle = setup.bundle();
    let coordinator = helper::serve(Fake::new(&bundle, Serve::BreakFirstAttempt)).await;
    let fetcher = setup.fetcher(&[&coordinator.url]);

    fetcher.fetch(&bundle.digest).await.unwrap();

    let offsets = coordinator.fake.offsets();
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert_eq!(offsets[0], 0);
    assert!(offsets[1] > 0, "the second request restarted at 0");
    assert_eq!(
        offsets[1],
        helper::CHUNK as u64,
        "resumed at the wrong offset"
    );
    assert!(setup.store.contains(&bundle.digest));
    assert!(helper::files_under(&setup.incoming()).is_empty());
}

#[tokio::test]
async fn wrong_bytes_are_refused_and_leave_nothing_behind() {
    let setup = Setup::new();
    let bundle = setup.bundle();
    let coordinator = helper::serve(Fake::new(&bundle, Serve::Corrupt)).await;
    let fetcher = setup.fetcher(&[&coordinator.url]);

    let err = fetcher.fetch(&bundle.digest).await.unwrap_err();

    assert!(
        matches!(&err, FetchError::DigestMismatch { expected, .. } if *expected == bundle.digest),
        "{err}"
    );
    assert!(err.to_string().contains("discarded"), "{err}");
    assert!(setup.store.list().unwrap().is_empty());
    let in_store = helper::files_under(setup.store.root());
    assert!(in_store.is_empty(), "store not empty: {in_store:?}");
    let partial = helper::files_under(&setup.incoming());
    assert!(partial.is_empty(), "partial left: {partial:?}");
}

#[tokio::test]
async fn a_release_no_coordinator_has_says_to_push_it() {
    let setup = Setup::new();
    let bundle = setup.bundle();
    let first = helper::serve(Fake::new(&bundle, Serve::NotFound)).await;
    let second = helper::serve(Fake::new(&bundle, Serve::NotFound)).await;
    let fetcher = setup.fetcher(&[&first.url, &second.url]);

    let err = fetcher.fetch(&bundle.digest).await.unwrap_err().to_string();

    assert!(err.contains("no coordinator has release"), "{err}");
    assert!(err.contains("lockstep release push"), "{err}");
    assert_eq!(first.fake.offsets(), [0]);
    assert_eq!(second.fake.offsets(), [0]);
}

#[tokio::test]
async fn concurrent_applies_of_one_release_fetch_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = helper::bundle(&dir.path().join("build"));
    let coordinator = helper::serve(Fake::new(&bundle, Serve::Whole)).await;
    let data = dir.path().join("agent");
    let config = helper::agent_config(&data, &[&coordinator.url], "");
    let host: Arc<Host> = Host::open(config, "/nonexistent/shim".into())
        .await
        .unwrap();
    let digest = bundle.digest.to_string();

    let (a, b) = tokio::join!(
        host.accept_apply("demo", &digest, (1, 0), "d1"),
        host.accept_apply("demo", &digest, (1, 0), "d2")
    );

    // One is taken; the other finds the service's command lock held.
    let refused: Vec<_> = [&a, &b]
        .into_iter()
        .filter_map(|r| r.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 1, "{a:?} {b:?}");
    assert!(matches!(refused[0], HostError::Busy { .. }), "{refused:?}");
    assert_eq!(coordinator.fake.offsets(), [0], "fetched more than once");
    assert!(helper::files_under(&data.join("incoming")).is_empty());
    // The release is of `demo`: applying it to another service is refused.
    let err = host
        .accept_apply("billing", &digest, (1, 0), "d3")
        .await
        .unwrap_err();
    assert!(matches!(err, HostError::ReleaseUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("not of `billing`"), "{err}");
}

#[tokio::test]
async fn a_failed_fetch_refuses_the_apply_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let bundle = helper::bundle(&dir.path().join("build"));
    let coordinator = helper::serve(Fake::new(&bundle, Serve::NotFound)).await;
    let config = helper::agent_config(&dir.path().join("agent"), &[&coordinator.url], "");
    let host = Host::open(config, "/nonexistent/shim".into())
        .await
        .unwrap();

    let err = host
        .accept_apply("demo", &bundle.digest.to_string(), (1, 0), "d1")
        .await
        .unwrap_err();

    assert_eq!(err.refusal(), proto::v1::RefusalReason::ReleaseUnavailable);
    assert!(err.to_string().contains("lockstep release push"), "{err}");
}

fn bytes_under(dir: &std::path::Path) -> u64 {
    helper::files_under(dir)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .filter(std::fs::Metadata::is_file)
        .map(|m| m.len())
        .sum()
}

/// Reproduces #18 item 4 (free space): a release that did not fit was
/// downloaded until the disk was full, and its `.partial` stayed. A fetch
/// checks free space against the size the coordinator announces and fails
/// with a clear error before writing a byte.
#[tokio::test]
async fn a_release_that_does_not_fit_fails_before_anything_is_written() {
    let setup = Setup::new();
    let bundle = setup.bundle();
    let coordinator = helper::serve(Fake::new(&bundle, Serve::Oversized)).await;
    let fetcher = setup.fetcher(&[&coordinator.url]);

    let err = fetcher.fetch(&bundle.digest).await.unwrap_err();

    let said = err.to_string();
    assert!(said.contains("free"), "{said}");
    assert!(
        said.contains(&setup.incoming().display().to_string()),
        "{said}"
    );
    assert_eq!(bytes_under(&setup.incoming()), 0, "nothing written");
}

/// Reproduces #18 deliver 7, "failed fetch on a full disk" (found by the
/// fault lab's `a_release_too_big_for_an_agents_disk_rolls_back_…`): a
/// fetch refused for want of space wrote no byte, but left an empty
/// `.partial` in `incoming/`. A fetch that fails before its first byte
/// leaves no file.
#[tokio::test]
async fn a_release_that_does_not_fit_leaves_no_file_behind() {
    let setup = Setup::new();
    let bundle = setup.bundle();
    let coordinator = helper::serve(Fake::new(&bundle, Serve::Oversized)).await;
    let fetcher = setup.fetcher(&[&coordinator.url]);

    fetcher.fetch(&bundle.digest).await.unwrap_err();

    let left = helper::files_under(&setup.incoming());
    assert!(left.is_empty(), "left in incoming/: {left:?}");
}

/// Reproduces #18 item 4 (partials): the `.partial` of a release that
/// failed to download stayed in `incoming/` (only the same release's
/// partial was ever removed) and the next release failed for want of
/// space. Partials of other releases go before a new fetch starts.
#[tokio::test]
async fn partial_downloads_of_other_releases_are_removed_before_a_new_fetch() {
    let setup = Setup::new();
    std::fs::create_dir_all(setup.incoming()).unwrap();
    let other = release::ReleaseDigest::of_bytes(b"a release that never finished");
    let stale = setup.incoming().join(format!("{}.partial", other.hex()));
    std::fs::write(&stale, vec![0u8; 64 * 1024]).unwrap();
    let bundle = setup.bundle();
    let coordinator = helper::serve(Fake::new(&bundle, Serve::Whole)).await;
    let fetcher = setup.fetcher(&[&coordinator.url]);

    fetcher.fetch(&bundle.digest).await.unwrap();

    assert!(!stale.exists(), "the other release's partial is gone");
    assert_eq!(bytes_under(&setup.incoming()), 0);
}
