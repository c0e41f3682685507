//! Socket hand-over: the demo app serves on the agent's socket, sees the
//! systemd variables, and two instances share one socket.

use std::collections::BTreeSet;
use std::time::Duration;

use agent::supervisor::{Instance, InstanceState, ListenSockets, SocketError};
use release::manifest::{Listen, Overlap};

use crate::helper::*;

fn http_socket() -> (ListenSockets, std::net::SocketAddr) {
    let sockets = ListenSockets::bind(
        &[Listen {
            name: "http".into(),
            address: "127.0.0.1:0".parse().unwrap(),
        }],
        Overlap::SocketHandover,
    )
    .unwrap();
    let addr = sockets.get("http").unwrap().local_addr();
    (sockets, addr)
}

fn socket_inode(pid: u32, fd: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn the_demo_app_serves_on_the_handed_socket_with_listen_pid_its_own() {
    let f = Fixture::new();
    let (sockets, addr) = http_socket();
    let mut spec = f.spec(&["bin/demo-app"]);
    spec.sockets = sockets.clone();
    let inst = Instance::start(spec, Box::new(HttpReady(addr))).unwrap();
    let mut rx = inst.subscribe();
    let s = wait_status(&mut rx, DEADLINE, "ready", |s| {
        s.state == InstanceState::Ready
    })
    .await;
    let pid = s.pid.unwrap();
    let env = environ(pid);
    assert_eq!(env.get("LISTEN_PID"), Some(&pid.to_string()));
    assert_eq!(env.get("LISTEN_FDS").map(String::as_str), Some("1"));
    assert_eq!(env.get("LISTEN_FDNAMES").map(String::as_str), Some("http"));
    let body = http_get(addr, "/version").await.unwrap();
    assert!(
        body.contains(&format!("\"pid\":{pid}")) || body.contains(&format!("\"pid\": {pid}")),
        "{body}"
    );
    assert!(
        inst.log_tail(50)
            .iter()
            .any(|l| l.contains("socket=LISTEN_FDS"))
    );
    inst.stop().await.unwrap();
    // The agent still holds the socket: the port stays bound.
    assert!(std::net::TcpListener::bind(addr).is_err());
}

#[tokio::test]
async fn two_instances_share_one_socket_and_both_accept() {
    let f = Fixture::new();
    let (sockets, addr) = http_socket();
    let mut old = f.spec_for("app", 0, "sha256:0000000000000000", &["bin/demo-app"]);
    old.sockets = sockets.clone();
    let mut new = f.spec_for("app", 0, "sha256:1111111111111111", &["bin/demo-app"]);
    new.sockets = sockets.clone();
    assert_ne!(old.log_path(), new.log_path());
    let a = Instance::start(old, Box::new(HttpReady(addr))).unwrap();
    let b = Instance::start(new, Box::new(HttpReady(addr))).unwrap();
    let pa = wait_status(&mut a.subscribe(), DEADLINE, "a running", |s| {
        s.pid.is_some()
    })
    .await
    .pid
    .unwrap();
    let pb = wait_status(&mut b.subscribe(), DEADLINE, "b running", |s| {
        s.pid.is_some()
    })
    .await
    .pid
    .unwrap();
    for inst in [&a, &b] {
        wait_for(DEADLINE, "serving on the passed socket", || {
            inst.log_tail(50)
                .iter()
                .any(|l| l.contains("socket=LISTEN_FDS"))
        })
        .await;
    }
    let ours = sockets.get("http").unwrap().as_raw_fd();
    let agent_inode = socket_inode(std::process::id(), ours as u32);
    assert_eq!(socket_inode(pa, 3), agent_inode);
    assert_eq!(socket_inode(pb, 3), agent_inode);
    // Both accept on it: answers come from both pids.
    let mut seen = BTreeSet::new();
    for _ in 0..500 {
        let body = http_get(addr, "/version").await.unwrap();
        for p in [pa, pb] {
            if body.contains(&format!("\"pid\":{p}")) {
                seen.insert(p);
            }
        }
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.len(), 2, "only {seen:?} of {pa}, {pb} answered");
    // Start-before-stop: stopping the old one, the new one keeps serving, no refusal.
    let stop = tokio::spawn(a.stop());
    for _ in 0..50 {
        // /version answers 200 while draining too (healthz turns 503 `stopping`).
        http_get(addr, "/version").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.await.unwrap().unwrap();
    let body = http_get(addr, "/version").await.unwrap();
    assert!(body.contains(&pb.to_string()), "{body}");
    b.stop().await.unwrap();
}

#[tokio::test]
async fn a_port_in_use_is_a_clear_bind_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let err = ListenSockets::bind(
        &[Listen {
            name: "http".into(),
            address: addr,
        }],
        Overlap::SocketHandover,
    )
    .unwrap_err();
    assert!(matches!(err, SocketError::InUse { .. }));
    assert_eq!(
        err.to_string(),
        format!("cannot bind [[listen]] `http` on {addr}: address already in use")
    );
}
