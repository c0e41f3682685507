//! `check-config` and the daemon's start agree (#14 deliver 8): each
//! config the daemon would fail with, check-config refuses too, naming the
//! key. The real binaries, run with a config file.

use std::path::Path;
use std::time::Duration;

use lockstep_tests::free_loopback_port;
use lockstep_tests::operator::text;

/// A daemon that refuses its config exits at once; one still running
/// after this long took the config (and is killed).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(60);

/// What `BIN ARGS` printed and its exit code; `None` when it was still
/// running at `REFUSAL_DEADLINE`.
async fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let path = lockstep_tests::workspace_bin(bin).unwrap();
    let output = tokio::process::Command::new(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(REFUSAL_DEADLINE, output).await {
        Ok(output) => {
            let output = output.unwrap();
            (output.status.code(), text(&output))
        }
        Err(_) => (None, format!("still running after {REFUSAL_DEADLINE:?}")),
    }
}

/// Runs `check-config FILE` and the daemon on FILE: both must exit 1
/// naming `key` and saying `why`.
async fn both_refuse(bin: &str, file: &Path, key: &str, why: &str) {
    let file = file.to_str().unwrap();
    for args in [vec!["check-config", file], vec!["--config", file]] {
        let (code, said) = run(bin, &args).await;
        assert_eq!(code, Some(1), "{bin} {args:?}: {said}");
        assert!(said.contains(key), "{bin} {args:?} names no {key}: {said}");
        assert!(
            said.contains(why),
            "{bin} {args:?} does not say {why:?}: {said}"
        );
    }
}

fn agent_toml(dir: &Path, tail: &str) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "id = \"cc-1\"\ncluster = \"eu-1\"\ndata_dir = \"{data}\"\n\n[control]\nsocket = \"{socket}\"\n\n[grpc]\nlisten = \"127.0.0.1:{port}\"\n{tail}",
            data = dir.join("data").display(),
            socket = dir.join("agent.sock").display(),
            port = free_loopback_port().unwrap(),
        ),
    )
    .unwrap();
    path
}

fn coordinator_toml(dir: &Path, tail: &str) -> std::path::PathBuf {
    let path = dir.join("coordinator.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstore_dir = \"{store}\"\n{tail}",
            port = free_loopback_port().unwrap(),
            store = dir.join("store").display(),
        ),
    )
    .unwrap();
    path
}

/// Reproduces #14 Seen 8 (check-config): "check-config says valid for a
/// missing trusted_keys, https:// etcd endpoints and a huge lease_ttl,
/// and the daemon then fails." Each case, for the agent and the
/// coordinator: check-config and the daemon both refuse, naming the key.
#[tokio::test]
async fn check_config_refuses_what_the_daemon_would_fail_with() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-release.pub");
    let keys = format!("\n[releases]\ntrusted_keys = [\"{}\"]\n", missing.display());
    let etcd_ok = "\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    let https = "\n[etcd]\nendpoints = [\"https://127.0.0.1:2379\"]\n";
    let huge = "\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl = \"100000000s\"\n";

    both_refuse(
        "lockstep-coordinator",
        &coordinator_toml(dir.path(), &format!("{etcd_ok}{keys}")),
        "releases.trusted_keys",
        &missing.display().to_string(),
    )
    .await;
    both_refuse(
        "lockstep-agent",
        &agent_toml(dir.path(), &keys),
        "releases.trusted_keys",
        &missing.display().to_string(),
    )
    .await;
    for bin in ["lockstep-coordinator", "lockstep-agent"] {
        let toml = |tail: &str| match bin {
            "lockstep-agent" => agent_toml(dir.path(), tail),
            _ => coordinator_toml(dir.path(), tail),
        };
        both_refuse(
            bin,
            &toml(https),
            "etcd.endpoints[0]",
            "has no ca, cert and key to speak TLS with",
        )
        .await;
        both_refuse(bin, &toml(huge), "etcd.lease_ttl", "too long").await;
    }
}

/// `[[notify]]` (#16 deliver 3): check-config and the daemon both refuse
/// an https webhook whose `ca_file` cannot be read (naming the key, the
/// path and why) and a secret file others can read.
#[tokio::test]
async fn check_config_refuses_a_webhook_ca_file_it_cannot_read_and_a_readable_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("notify.secret");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let etcd_ok = "\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n";
    let https = format!(
        "{etcd_ok}\n[[notify]]\nname = \"chat\"\nurl = \"https://hooks.example/x\"\nca_file = \"/nonexistent/hooks-ca.pem\"\nsecret_file = {secret:?}\n"
    );
    both_refuse(
        "lockstep-coordinator",
        &coordinator_toml(dir.path(), &https),
        "notify[0].ca_file",
        "ca_file /nonexistent/hooks-ca.pem: cannot read it: No such file or directory",
    )
    .await;
    let readable = format!(
        "{etcd_ok}\n[[notify]]\nname = \"chat\"\nurl = \"http://127.0.0.1:1/x\"\nsecret_file = {secret:?}\n"
    );
    let file = coordinator_toml(dir.path(), &readable);
    let (code, said) = run(
        "lockstep-coordinator",
        &["check-config", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, Some(0), "a 0600 secret is fine: {said}");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    both_refuse(
        "lockstep-coordinator",
        &file,
        "notify[0].secret_file",
        "readable by others",
    )
    .await;
}

/// `[web]` (#17): with `[tls]` the web view checks no client certificate,
/// so check-config and the daemon both refuse it off loopback, naming the
/// key; on loopback check-config says it is on and read-only.
#[tokio::test]
async fn check_config_refuses_a_web_view_off_loopback_under_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = lockstep_tests::TestPki::new("check-config").unwrap();
    let tls = pki.issue("coordinator.lockstep").unwrap();
    let base = format!(
        "\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\n[tls]\n{}{}",
        tls.toml_lines(),
        lockstep_tests::TEST_ROLES
    );
    let web = |host: &str| {
        format!(
            "{base}\n[web]\nlisten = \"{host}:{}\"\n",
            free_loopback_port().unwrap()
        )
    };
    both_refuse(
        "lockstep-coordinator",
        &coordinator_toml(dir.path(), &web("0.0.0.0")),
        "web.listen",
        "not a loopback address: with [tls] the web view checks no client certificate",
    )
    .await;
    let file = coordinator_toml(dir.path(), &web("127.0.0.1"));
    let (code, said) = run(
        "lockstep-coordinator",
        &["check-config", file.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, Some(0), "{said}");
    assert!(said.contains("(read-only)"), "{said}");
}
