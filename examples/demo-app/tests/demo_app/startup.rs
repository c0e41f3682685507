//! Refusing to start: unknown keys, missing config, fail_at_start, port in use.

use std::net::TcpListener;

use crate::helper::AppBuilder;

#[test]
fn unknown_key_exits_78_naming_key_line_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.toml");
    std::fs::write(
        &path,
        "version = \"2.0\"\nmessage_prefix = \"\"\nmetrics_endpoint = \"http://metrics:9000\"\n\
         [faults]\nexplode = true\n",
    )
    .unwrap();
    let (status, stderr) = AppBuilder::new()
        .arg("--config")
        .arg(path.to_str().unwrap())
        .run_to_exit();
    assert_eq!(status.code(), Some(78), "stderr: {stderr}");
    let expected = format!(
        "demo-app: config {}: unknown key `metrics_endpoint` (line 3)",
        path.display()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert!(
        stderr.contains("unknown key `faults.explode` (line 5)"),
        "every unknown key is named: {stderr}"
    );
}

#[test]
fn missing_config_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let (status, stderr) = AppBuilder::new()
        .arg("--config")
        .arg(path.to_str().unwrap())
        .run_to_exit();
    assert_eq!(status.code(), Some(78), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("config {}: cannot read file", path.display())),
        "{stderr}"
    );
}

#[test]
fn bad_value_exits_78() {
    let (status, stderr) = AppBuilder::new()
        .config("listen = \"nowhere\"\n")
        .run_to_exit();
    assert_eq!(status.code(), Some(78), "stderr: {stderr}");
    assert!(
        stderr.contains("`listen` = \"nowhere\" (line 1)"),
        "{stderr}"
    );
}

#[test]
fn fail_at_start_in_config_exits_1() {
    let (status, stderr) = AppBuilder::new()
        .config("[faults]\nfail_at_start = true\n")
        .run_to_exit();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("fail_at_start"), "{stderr}");
}

#[test]
fn fail_at_start_flag_exits_1() {
    let (status, stderr) = AppBuilder::new().arg("--fail-at-start").run_to_exit();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}

#[test]
fn port_in_use_exits_71_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (status, stderr) = AppBuilder::new()
        .config(&format!("listen = \"{addr}\"\n"))
        .without_listen_flag()
        .run_to_exit();
    assert_eq!(status.code(), Some(71), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "demo-app: cannot listen on {addr}: Address already in use"
        )),
        "{stderr}"
    );
}

#[test]
fn fail_at_start_while_exists_refuses_only_while_the_file_is_there() {
    let marker = tempfile::NamedTempFile::new().unwrap();
    let path = marker.path().display().to_string();
    let (status, stderr) = AppBuilder::new()
        .arg("--fail-at-start-while-exists")
        .arg(&path)
        .run_to_exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fail_at_start_while_exists"), "{stderr}");
    drop(marker);
    let app = AppBuilder::new()
        .config(&format!(
            "[faults]\nfail_at_start_while_exists = {path:?}\n"
        ))
        .spawn();
    app.wait_healthy();
}
