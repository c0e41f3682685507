//! What an operator reads when a command or daemon fails: the error and
//! every cause, each once.

/// Reproduces #12 deliver 1 / #14 item 8 (errors that hide or repeat the
/// cause): `lockstep-agent --config /missing` printed "No such file or
/// directory (os error 2)" twice (`{:#}` on an error that prints its source
/// inline and also returns it from `source()`). Every binary's last line
/// must name the cause exactly once.
#[tokio::test]
async fn a_fatal_error_names_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    for (binary, args) in [
        ("lockstep-agent", vec!["--config", missing]),
        ("lockstep-agent", vec!["check-config", missing]),
        ("lockstep-coordinator", vec!["--config", missing]),
    ] {
        let output = tokio::process::Command::new(lockstep_tests::workspace_bin(binary).unwrap())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .unwrap();
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{binary} {args:?}: {said}");
        assert!(said.contains(missing), "{binary} {args:?}: {said}");
        assert_eq!(
            said.matches("No such file or directory").count(),
            1,
            "{binary} {args:?}: {said}"
        );
    }
}
