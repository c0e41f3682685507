//! The `lockstep release` CLI, run as a real binary.

// Test code: a panic is the failure report (as clippy.toml allows inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn lockstep(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn last_line(o: &Output) -> String {
    stdout(o).lines().last().unwrap_or_default().to_owned()
}

fn app(dir: &Path) {
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::create_dir_all(dir.join("config")).unwrap();
    fs::write(
        dir.join("release.toml"),
        "[release]\nservice = \"demo\"\nversion = \"1.2.3\"\n[run]\ncommand = [\"bin/demo\"]\n[readiness]\ntcp = \"127.0.0.1:9000\"\n",
    )
    .unwrap();
    fs::write(dir.join("bin/demo"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(dir.join("bin/demo"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join("config/demo.toml"), "port = 9000\n").unwrap();
}

#[test]
fn build_twice_prints_the_same_digest_last() {
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    let a = lockstep(&["release", "build", "app", "-o", "a.lsr"], t.path());
    let b = lockstep(&["release", "build", "app", "-o", "b.lsr"], t.path());
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(b.status.success());
    let da = last_line(&a);
    assert!(da.starts_with("sha256:") && da.len() == 71, "{da}");
    assert_eq!(da, last_line(&b));
    assert_eq!(
        fs::read(t.path().join("a.lsr")).unwrap(),
        fs::read(t.path().join("b.lsr")).unwrap()
    );
    // Default output name: SERVICE-VERSION.lsr
    let c = lockstep(&["release", "build", "app"], t.path());
    assert!(c.status.success());
    assert!(t.path().join("demo-1.2.3.lsr").exists());
}

#[test]
fn inspect_json_parses() {
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    let b = lockstep(&["release", "build", "app", "-o", "a.lsr"], t.path());
    let o = lockstep(
        &["release", "inspect", "a.lsr", "--output", "json"],
        t.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["digest"].as_str().unwrap(), last_line(&b));
    assert_eq!(v["manifest"]["release"]["service"], "demo");
    assert_eq!(v["manifest"]["readiness"]["tcp"], "127.0.0.1:9000");
    assert_eq!(v["signature"]["status"], "unsigned");
    let paths: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "bin",
            "bin/demo",
            "config",
            "config/demo.toml",
            "release.toml"
        ]
    );
}

#[test]
fn keygen_sign_verify_and_tamper() {
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    let k = lockstep(&["release", "keygen", "-o", "k.key"], t.path());
    assert!(k.status.success());
    let mode = fs::metadata(t.path().join("k.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // keygen refuses to overwrite.
    let again = lockstep(&["release", "keygen", "-o", "k.key"], t.path());
    assert!(!again.status.success());

    let b = lockstep(
        &["release", "build", "app", "-o", "s.lsr", "--sign", "k.key"],
        t.path(),
    );
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let digest = last_line(&b);
    let v = lockstep(
        &[
            "release",
            "verify",
            "s.lsr",
            "--key",
            "k.key.pub",
            "--digest",
            &digest,
        ],
        t.path(),
    );
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    assert_eq!(last_line(&v), digest);

    // Tampered: one byte of the stream flipped.
    let mut bytes = fs::read(t.path().join("s.lsr")).unwrap();
    bytes[60] ^= 0x01;
    fs::write(t.path().join("t.lsr"), &bytes).unwrap();
    let v = lockstep(
        &["release", "verify", "t.lsr", "--key", "k.key.pub"],
        t.path(),
    );
    assert!(!v.status.success());
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(err.contains("signature"), "{err}");

    // Unsigned bundle against a required key.
    lockstep(&["release", "build", "app", "-o", "u.lsr"], t.path());
    let v = lockstep(
        &["release", "verify", "u.lsr", "--key", "k.key.pub"],
        t.path(),
    );
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("not signed"));

    // Wrong expected digest.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let v = lockstep(
        &["release", "verify", "u.lsr", "--digest", &wrong],
        t.path(),
    );
    assert!(!v.status.success());
    assert!(String::from_utf8_lossy(&v.stderr).contains("digest mismatch"));
}

#[test]
fn build_reports_manifest_errors_with_key_and_line() {
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    fs::write(
        t.path().join("app/release.toml"),
        "[release]\nservice = \"demo\"\nversion = \"1\"\n[run]\ncommand = [\"bin/demo\"]\nstop_timeout = \"soon\"\n[readiness]\nnotify = true\n",
    )
    .unwrap();
    let o = lockstep(&["release", "build", "app", "-o", "x.lsr"], t.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("run.stop_timeout") && err.contains("line 6"),
        "{err}"
    );
    assert!(!t.path().join("x.lsr").exists());
}

#[test]
fn unknown_flag_is_a_clap_error() {
    let t = tempfile::tempdir().unwrap();
    let o = lockstep(&["release", "build", "app", "--frobnicate"], t.path());
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--frobnicate"));
}

/// Reproduces #12 item 10: `LOCKSTEP_KEY` was read both as the TLS client
/// key and as the release public key, so with it set for TLS, `release
/// verify` without `--key` tried to load the TLS key as a release key. The
/// TLS key is `--tls-key` / `LOCKSTEP_TLS_KEY` now; a left-over
/// `LOCKSTEP_KEY` is refused, naming what to set instead.
#[test]
fn the_tls_key_and_the_release_key_never_share_a_name() {
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    let built = lockstep(&["release", "build", "app", "-o", "u.lsr"], t.path());
    assert!(built.status.success());
    fs::write(t.path().join("tls.key"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
    let verify = |var: &str| {
        Command::new(env!("CARGO_BIN_EXE_lockstep"))
            .args(["release", "verify", "u.lsr"])
            .current_dir(t.path())
            .env_remove("LOCKSTEP_KEY")
            .env_remove("LOCKSTEP_TLS_KEY")
            .env(var, "tls.key")
            .output()
            .unwrap()
    };
    let v = verify("LOCKSTEP_TLS_KEY");
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    let v = verify("LOCKSTEP_KEY");
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(!v.status.success(), "{err}");
    assert!(!err.contains("cannot load --key"), "{err}");
    assert!(err.contains("LOCKSTEP_TLS_KEY"), "{err}");
}

/// Reproduces #14 Seen 8: "`release inspect` prints raw escape characters
/// from entry names": an entry named with a terminal escape sequence could
/// rewrite the operator's screen. Control characters are shown escaped.
#[test]
fn inspect_shows_control_characters_in_entry_names_escaped() {
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    fs::write(t.path().join("app/config/\x1b[2Jcleared"), "x").unwrap();
    let b = lockstep(&["release", "build", "app", "-o", "a.lsr"], t.path());
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let o = lockstep(&["release", "inspect", "a.lsr"], t.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown = stdout(&o);
    assert!(!shown.contains('\x1b'), "a raw escape reached the terminal");
    assert!(shown.contains("config/\\u{1b}[2Jcleared"), "{shown}");
}

/// Reproduces #14 Seen 8: "`agentctl status | head` panics on a broken
/// pipe" — `lockstep` did the same. A reader that is gone before the CLI
/// prints ends it quietly with 141, as SIGPIPE ends a Unix tool, never
/// with a panic.
#[test]
fn a_reader_that_goes_away_is_not_a_panic() {
    use std::process::Stdio;
    let t = tempfile::tempdir().unwrap();
    app(&t.path().join("app"));
    assert!(
        lockstep(&["release", "build", "app", "-o", "a.lsr"], t.path())
            .status
            .success()
    );
    // The read end is closed before the CLI starts: its first print fails.
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let output = Command::new(env!("CARGO_BIN_EXE_lockstep"))
        .args(["release", "inspect", "a.lsr"])
        .current_dir(t.path())
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr, "", "nothing on stderr");
    assert_eq!(output.status.code(), Some(141), "{:?}", output.status);
}
