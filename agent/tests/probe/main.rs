//! Integration tests for `agent::probe` with real sockets and processes.

// A test binary: a panic is the failure report (clippy's allow-unwrap-in-tests
// does not reach the helper functions outside `#[test]`s).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod helper;

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use agent::probe::{NotifySocket, Probe, ProbeError, ProbeFailure};
use release::manifest::{HttpUrl, Readiness};

use helper::{ReleaseRoot, StatusServer, alive, command, free_port, shell, wait_for};

const NOWHERE: &str = "/nonexistent-release-root";

fn http(url: &str) -> Readiness {
    Readiness::Http {
        url: HttpUrl::parse(url).unwrap(),
    }
}

fn probe(readiness: &Readiness, timeout_ms: u64) -> Probe {
    Probe::new(readiness, Path::new(NOWHERE), None)
        .unwrap()
        .with_timeout(Duration::from_millis(timeout_ms))
}

// ---------------------------------------------------------------- http

#[tokio::test]
async fn http_probe_passes_on_2xx_and_fails_naming_the_status() {
    let server = StatusServer::start(200).await;
    let url = server.url("/healthz");
    let mut p = probe(&http(&url), 2000);
    p.check(1).await.unwrap();

    server.code.store(503, Ordering::SeqCst);
    let err = p.check(1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("http GET {url} answered 503 Service Unavailable")
    );

    server.code.store(204, Ordering::SeqCst);
    p.check(1).await.unwrap();
}

#[tokio::test]
async fn http_probe_never_follows_a_redirect() {
    let server = StatusServer::start(302).await;
    let mut p = probe(&http(&server.url("/")), 2000);
    let err = p.check(1).await.unwrap_err();
    assert!(
        matches!(err, ProbeFailure::HttpStatus { code: 302, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn http_probe_reads_a_status_line_split_over_many_reads() {
    let (addr, task) =
        helper::dribble_server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let mut p = probe(&http(&format!("http://{addr}/")), 5000);
    p.check(1).await.unwrap();
    task.abort();

    let (addr, task) = helper::dribble_server(b"HTTP/1.1 500 Internal Server Error\r\n").await;
    let mut p = probe(&http(&format!("http://{addr}/")), 5000);
    assert!(matches!(
        p.check(1).await,
        Err(ProbeFailure::HttpStatus { code: 500, .. })
    ));
    task.abort();
}

#[tokio::test]
async fn http_probe_caps_what_it_reads() {
    let (addr, task) = helper::endless_server().await;
    let mut p = probe(&http(&format!("http://{addr}/")), 5000);
    let err = p.check(1).await.unwrap_err();
    assert!(
        matches!(&err, ProbeFailure::Http { detail, .. } if detail.contains("longer than")),
        "{err}"
    );
    task.abort();
}

#[tokio::test]
async fn http_probe_times_out_on_a_silent_server_and_fails_when_nobody_listens() {
    // Accepts (the kernel backlog does) but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let mut p = probe(&http(&url), 200);
    let started = tokio::time::Instant::now();
    let err = p.check(1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("http GET {url} timed out after 200ms")
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    let url = format!("http://127.0.0.1:{}/", free_port());
    let mut p = probe(&http(&url), 2000);
    let err = p.check(1).await.unwrap_err();
    assert!(
        matches!(&err, ProbeFailure::Http { detail, .. } if detail.contains("cannot connect")),
        "{err}"
    );
}

// ---------------------------------------------------------------- tcp

#[tokio::test]
async fn tcp_probe_passes_when_accepting_and_is_refused_otherwise() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut p = probe(&Readiness::Tcp { addr }, 2000);
    p.check(1).await.unwrap();

    drop(listener);
    let err = p.check(1).await.unwrap_err();
    assert_eq!(err, ProbeFailure::TcpRefused { addr });
    assert_eq!(err.to_string(), format!("tcp connect {addr} refused"));
}

// ---------------------------------------------------------------- exec

fn exec(root: &ReleaseRoot, argv: release::manifest::Command, timeout_ms: u64) -> Probe {
    Probe::new(&Readiness::Exec { argv }, root.path(), None)
        .unwrap()
        .with_timeout(Duration::from_millis(timeout_ms))
}

#[tokio::test]
async fn exec_probe_runs_from_the_release_root_and_wants_exit_0() {
    let root = ReleaseRoot::new();
    std::fs::write(root.file("marker"), "").unwrap();
    // A relative path only resolves if the working directory is the root.
    let mut p = exec(&root, shell("test -f marker"), 5000);
    p.check(1).await.unwrap();
    // No shell in between: the argument reaches the program verbatim.
    let mut p = exec(
        &root,
        command("sh", &["-c", "test \"$1\" = '$HOME;*'", "x", "$HOME;*"]),
        5000,
    );
    p.check(1).await.unwrap();
}

#[tokio::test]
async fn exec_probe_failure_carries_exit_code_and_stderr() {
    let root = ReleaseRoot::new();
    let mut p = exec(&root, shell("echo 'database   down' >&2; exit 1"), 5000);
    let err = p.check(1).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "exec ./sh exited with 1 (stderr: database down)"
    );

    let mut p = exec(&root, shell("kill -9 $$"), 5000);
    let err = p.check(1).await.unwrap_err();
    assert!(matches!(err, ProbeFailure::ExecSignal { .. }), "{err}");
    assert!(err.to_string().contains("SIGKILL"), "{err}");
}

#[tokio::test]
async fn exec_probe_keeps_only_a_little_stderr() {
    let root = ReleaseRoot::new();
    // 200 KiB of stderr: more than a pipe holds, so the probe must keep reading.
    let mut p = exec(
        &root,
        shell("i=0; while [ $i -lt 2000 ]; do printf '%0100d' 0 >&2; i=$((i+1)); done; exit 3"),
        10_000,
    );
    let err = p.check(1).await.unwrap_err();
    let ProbeFailure::ExecExit { code, stderr, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(*code, 3);
    assert!(
        stderr.len() <= agent::probe::exec::MAX_STDERR,
        "{}",
        stderr.len()
    );
}

#[tokio::test]
async fn exec_probe_of_a_missing_program_fails_to_start() {
    let root = ReleaseRoot::new();
    let mut p = exec(&root, command("bin/missing", &[]), 5000);
    let err = p.check(1).await.unwrap_err();
    assert!(matches!(err, ProbeFailure::ExecSpawn { .. }), "{err}");
    assert!(err.to_string().contains("bin/missing"), "{err}");
}

#[tokio::test]
async fn exec_probe_timeout_kills_and_reaps_the_whole_group() {
    let root = ReleaseRoot::new();
    let pids = root.file("pids");
    // The probe and a background child it starts both record their pids, then hang.
    let script = "echo $$ > pids.tmp; sleep 60 & echo $! >> pids.tmp; mv pids.tmp pids; wait";
    let mut p = exec(&root, shell(script), 1000);
    let started = tokio::time::Instant::now();
    let err = p.check(1).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(err, ProbeFailure::TimedOut { .. }), "{err}");
    assert_eq!(err.to_string(), "exec ./sh timed out after 1s");

    let listed =
        std::fs::read_to_string(&pids).expect("the probe ran long enough to list its pids");
    let pids: Vec<u32> = listed.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(pids.len(), 2, "{listed}");
    // The probe process itself is reaped before check returns: not even a zombie.
    assert!(
        !Path::new(&format!("/proc/{}", pids[0])).exists(),
        "probe process {} left behind",
        pids[0]
    );
    wait_for(
        "the background child to die",
        Duration::from_secs(5),
        || async { !alive(pids[1]) },
    )
    .await;
}

#[tokio::test]
async fn exec_probe_leaves_nothing_running_after_a_normal_exit() {
    let root = ReleaseRoot::new();
    let script = "sleep 60 & echo $! > pid.tmp; mv pid.tmp pid; exit 0";
    let mut p = exec(&root, shell(script), 5000);
    p.check(1).await.unwrap();
    let pid: u32 = std::fs::read_to_string(root.file("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the straggler to die", Duration::from_secs(5), || async {
        !alive(pid)
    })
    .await;
}

// ---------------------------------------------------------------- notify

fn send(path: &Path, msg: &str) {
    let s = UnixDatagram::unbound().unwrap();
    s.send_to(msg.as_bytes(), path).unwrap();
}

#[tokio::test]
async fn notify_socket_is_private_and_replaces_only_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instance-0.notify");
    let sock = NotifySocket::bind(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(sock.path(), path);
    // A stale socket (its owner is gone without cleaning up) is replaced.
    let stale = dir.path().join("stale.notify");
    drop(UnixDatagram::bind(&stale).unwrap());
    let again = NotifySocket::bind(&stale).unwrap();
    drop(again);
    assert!(!stale.exists(), "drop removes the socket file");
    // Anything else is left alone.
    let file = dir.path().join("file");
    std::fs::write(&file, "keep me").unwrap();
    assert!(matches!(
        NotifySocket::bind(&file),
        Err(ProbeError::NotASocket { .. })
    ));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    drop(sock);
    assert!(!path.exists());
}

#[tokio::test]
async fn notify_probe_follows_ready_status_and_stopping_from_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let sock = NotifySocket::bind(&path).unwrap();
    // The test process plays the instance.
    let me = std::process::id();
    sock.set_main_pid(me);
    let mut p = Probe::new(
        &Readiness::Notify,
        Path::new(NOWHERE),
        Some(sock.subscribe()),
    )
    .unwrap();
    assert!(p.check(me).await.is_err());

    send(&path, "STATUS=starting\nMAINPID=123");
    let mut rx = sock.subscribe();
    wait_for("STATUS=", Duration::from_secs(5), || {
        let s = rx.borrow_and_update().status.clone();
        async move { s.as_deref() == Some("starting") }
    })
    .await;
    assert_eq!(sock.state().main_pid, Some(123));
    assert_eq!(
        p.check(me).await.unwrap_err().to_string(),
        "no READY=1 yet (status: starting)"
    );

    send(&path, "READY=1\nSTATUS=serving");
    wait_for("READY=1", Duration::from_secs(5), || {
        let ready = sock.state().ready;
        async move { ready }
    })
    .await;
    p.check(me).await.unwrap();
    // The state is about `me`; a probe for another pid (a restarted instance) is not ready.
    assert!(p.check(me + 1).await.is_err());

    send(&path, "STOPPING=1\nSTATUS=draining");
    wait_for("STOPPING=1", Duration::from_secs(5), || {
        let stopping = sock.state().stopping;
        async move { stopping }
    })
    .await;
    assert_eq!(
        p.check(me).await.unwrap_err().to_string(),
        "instance sent STOPPING=1 (status: draining)"
    );
}

#[tokio::test]
async fn notify_ignores_senders_that_are_not_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let sock = NotifySocket::bind(&path).unwrap();
    // The instance is some other process (in the test's process group, not leading one).
    let mut other = tokio::process::Command::new("sleep")
        .arg("30")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let other_pid = other.id().unwrap();
    sock.set_main_pid(other_pid);
    let mut p = Probe::new(
        &Readiness::Notify,
        Path::new(NOWHERE),
        Some(sock.subscribe()),
    )
    .unwrap();

    send(&path, "READY=1\nSTATUS=forged");
    // Give the socket task every chance to (wrongly) apply it.
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!sock.state().ready, "a forged READY=1 was counted");
        assert_eq!(sock.state().status, None);
    }
    assert!(p.check(other_pid).await.is_err());

    // It was received and held back, not lost: once the test process *is*
    // the instance (the spawn race this ring exists for), it counts.
    let me = std::process::id();
    sock.set_main_pid(me);
    assert!(sock.state().ready);
    assert_eq!(sock.state().status.as_deref(), Some("forged"));
    p.check(me).await.unwrap();
    other.kill().await.unwrap();
}

/// Not a test on its own (hence ignored): run as a child process by
/// `notify_accepts_a_child_in_the_instance_process_group`, it sends
/// `$LOCKSTEP_TEST_MESSAGE` to `$NOTIFY_SOCKET`, like an app would.
#[test]
#[ignore = "a helper process, run by notify_accepts_a_child_in_the_instance_process_group"]
fn notify_sender_helper() {
    let (Some(path), Some(msg)) = (
        std::env::var_os("NOTIFY_SOCKET"),
        std::env::var_os("LOCKSTEP_TEST_MESSAGE"),
    ) else {
        return;
    };
    send(Path::new(&path), &msg.to_string_lossy());
    // Stay alive while the agent looks up our process group in /proc, as an
    // app would (a sender gone by then can only be matched by its own pid).
    std::thread::sleep(Duration::from_secs(2));
}

#[tokio::test]
async fn notify_accepts_a_child_in_the_instance_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let sock = NotifySocket::bind(&path).unwrap();
    let exe: OsString = std::env::current_exe().unwrap().into();
    // The instance: a shell leading its own process group, whose child (this
    // test binary, in helper mode) sends READY=1 with NOTIFY_SOCKET from its
    // environment. It may send before set_main_pid is called.
    let mut instance = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("\"$0\" notify_sender_helper --exact --ignored --test-threads=1 >/dev/null 2>&1; exec sleep 30")
        .arg(&exe)
        .env("NOTIFY_SOCKET", &path)
        .env("LOCKSTEP_TEST_MESSAGE", "READY=1\nSTATUS=from a child")
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = instance.id().unwrap();
    sock.set_main_pid(pid);
    let mut p = Probe::new(
        &Readiness::Notify,
        Path::new(NOWHERE),
        Some(sock.subscribe()),
    )
    .unwrap();
    wait_for(
        "READY=1 from the instance's child",
        Duration::from_secs(10),
        || {
            let ready = sock.state().ready;
            async move { ready }
        },
    )
    .await;
    p.check(pid).await.unwrap();
    assert_eq!(sock.state().status.as_deref(), Some("from a child"));
    instance.kill().await.unwrap();
}

// ------------------------------------------------ the demo app (optional)

#[tokio::test]
async fn demo_app_is_probed_over_http_and_notify() {
    // The workspace's demo-app, next to this test binary (target/<profile>/).
    let exe = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("demo-app");
    assert!(
        exe.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`)",
        exe.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, "").unwrap();
    let notify_path = dir.path().join("demo.notify");
    let sock = NotifySocket::bind(&notify_path).unwrap();
    let port = free_port();
    let mut app = tokio::process::Command::new(&exe)
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--ready-after-ms")
        .arg("300")
        .env("NOTIFY_SOCKET", &notify_path)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = app.id().unwrap();
    sock.set_main_pid(pid);

    let mut by_http = probe(&http(&format!("http://127.0.0.1:{port}/healthz")), 1000);
    let mut by_notify = Probe::new(
        &Readiness::Notify,
        Path::new(NOWHERE),
        Some(sock.subscribe()),
    )
    .unwrap();
    // Not ready at first: the app holds READY=1 and answers 503 for 300ms.
    assert!(by_notify.check(pid).await.is_err());
    assert!(by_http.check(pid).await.is_err());
    let mut http_ok = false;
    let mut notify_ok = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(http_ok && notify_ok) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "demo app never became ready"
        );
        http_ok = by_http.check(pid).await.is_ok();
        notify_ok = by_notify.check(pid).await.is_ok();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.kill().await.unwrap();
}

#[tokio::test]
async fn a_notify_probe_wakes_its_schedule_on_ready_and_only_on_ready() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.sock");
    let sock = NotifySocket::bind(&path).unwrap();
    let me = std::process::id();
    sock.set_main_pid(me);
    let mut p = Probe::new(
        &Readiness::Notify,
        Path::new(NOWHERE),
        Some(sock.subscribe()),
    )
    .unwrap();
    assert!(p.check(me).await.is_err());
    // A status line is not a reason to probe before the interval.
    send(&path, "STATUS=loading");
    let mut rx = sock.subscribe();
    wait_for("STATUS=", Duration::from_secs(5), || {
        let s = rx.borrow_and_update().status.clone();
        async move { s.as_deref() == Some("loading") }
    })
    .await;
    let mut woken = Box::pin(p.changed());
    assert!(
        futures_poll_once(woken.as_mut()).await.is_none(),
        "woke on STATUS= alone"
    );
    // READY=1 wakes it, and an attempt then passes.
    send(&path, "READY=1");
    tokio::time::timeout(Duration::from_secs(10), woken)
        .await
        .expect("READY=1 wakes the probe schedule");
    p.check(me).await.unwrap();
}

/// Polls `f` once: `Some` if it completed.
async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
    let mut f = f;
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}
