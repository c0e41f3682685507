//! Signals, graceful shutdown, sd_notify and socket activation.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::helper::{AppBuilder, DEADLINE, SOCKET_ACTIVATE, free_port, http, wait_for};

#[test]
fn sigterm_finishes_in_flight_request_and_exits_0() {
    let mut app = AppBuilder::new().spawn();
    app.wait_healthy();
    let port = app.port;
    let in_flight =
        std::thread::spawn(move || http(port, "POST", "/publish?delay_ms=1500", "in-flight"));
    wait_for("the request to be held", DEADLINE, || {
        app.stderr().contains("publish: holding the request")
    });
    app.signal(Signal::SIGTERM);
    let status = app.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "stderr: {}", app.stderr());
    let r = in_flight.join().unwrap().unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["published"], "in-flight");
}

#[test]
fn sigint_exits_0() {
    let mut app = AppBuilder::new().spawn();
    app.wait_healthy();
    app.signal(Signal::SIGINT);
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn shutdown_delay_keeps_serving_as_stopping_then_exits_0() {
    let mut app = AppBuilder::new()
        .arg("--shutdown-delay-ms")
        .arg("2000")
        .spawn();
    app.wait_healthy();
    let signalled = Instant::now();
    app.signal(Signal::SIGTERM);
    wait_for("/healthz to say stopping", DEADLINE, || {
        app.get("/healthz")
            .is_ok_and(|r| r.status == 503 && r.body == "stopping\n")
    });
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
    assert!(signalled.elapsed() >= Duration::from_millis(2000));
}

/// Reads datagrams until one contains `needle`; returns everything read.
fn recv_until(socket: &UnixDatagram, needle: &str) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    wait_for(&format!("{needle:?} on NOTIFY_SOCKET"), DEADLINE, || {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        seen.iter().any(|m| m.lines().any(|l| l == needle))
    });
    seen
}

#[test]
fn notify_socket_gets_ready_after_readiness_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut app = AppBuilder::new()
        .env("NOTIFY_SOCKET", path.to_str().unwrap())
        .arg("--ready-after-ms")
        .arg("1000")
        .spawn();
    let seen = recv_until(&socket, "READY=1");
    assert!(
        seen.iter().any(|m| m.starts_with("STATUS=starting")),
        "{seen:?}"
    );
    // READY=1 is only sent once /healthz would say so.
    assert_eq!(app.get("/healthz").unwrap().status, 200);
    assert!(app.spawned.elapsed() >= Duration::from_millis(1000));
    app.signal(Signal::SIGTERM);
    recv_until(&socket, "STOPPING=1");
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn notify_socket_in_the_abstract_namespace() {
    let name = format!("demo-app-test-{}-{}", std::process::id(), free_port());
    let socket =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
    let _app = AppBuilder::new()
        .env("NOTIFY_SOCKET", &format!("@{name}"))
        .spawn();
    recv_until(&socket, "READY=1");
}

fn require_socket_activate() {
    assert!(
        Path::new(SOCKET_ACTIVATE).exists(),
        "{SOCKET_ACTIVATE} is missing: install the `systemd` package; \
         the LISTEN_FDS tests cannot run without it"
    );
}

#[test]
fn listen_fds_socket_is_used_instead_of_binding() {
    require_socket_activate();
    let passed = free_port();
    let configured = free_port();
    let mut app = AppBuilder::new()
        .config(&format!(
            "version = \"sa\"\nlisten = \"127.0.0.1:{configured}\"\n"
        ))
        .wrapped_in(&[SOCKET_ACTIVATE, "-l", &format!("127.0.0.1:{passed}")])
        .spawn();
    // systemd-socket-activate execs the app on the first connection, in
    // place, so the app's pid is the child's.
    let mut version = None;
    wait_for("/version on the passed socket", DEADLINE, || {
        version = http(passed, "GET", "/version", "").ok();
        version.is_some()
    });
    let v = version.unwrap().json();
    assert_eq!(v["version"], "sa");
    assert_eq!(v["pid"], app.pid());
    assert!(
        http(configured, "GET", "/healthz", "").is_err(),
        "the configured address must not be bound when a socket is passed"
    );
    let log = app.stderr();
    assert!(log.contains("socket=LISTEN_FDS fd 3"), "{log}");
    app.signal(Signal::SIGTERM);
    assert_eq!(app.wait_exit(DEADLINE).code(), Some(0));
}

#[test]
fn listen_fds_socket_named_http_is_chosen() {
    require_socket_activate();
    let metrics = free_port();
    let web = free_port();
    let app = AppBuilder::new()
        .wrapped_in(&[
            SOCKET_ACTIVATE,
            "-l",
            &format!("127.0.0.1:{metrics}"),
            "-l",
            &format!("127.0.0.1:{web}"),
            "--fdname=metrics:http",
        ])
        .spawn();
    wait_for("/healthz 200 on the `http` socket", DEADLINE, || {
        http(web, "GET", "/healthz", "").is_ok_and(|r| r.status == 200)
    });
    let log = app.stderr();
    assert!(log.contains("socket=LISTEN_FDS fd 4 fd_name=http"), "{log}");
}
