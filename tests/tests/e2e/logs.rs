//! `agentctl logs -f`: a real agent, a real follower process, new lines
//! from restarts, a switch to another release and the app itself.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_tests::http::request;
use lockstep_tests::{AgentFixture, DemoRelease, free_loopback_port, wait_for, workspace_bin};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const DEADLINE: Duration = Duration::from_secs(60);

/// `agentctl logs demo -f -n 5`, its stdout collected line by line.
struct Follow {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Follow {
    fn start(agent: &AgentFixture) -> Self {
        let mut child = Command::new(workspace_bin("agentctl").unwrap())
            .arg("--socket")
            .arg(agent.socket())
            .args(["logs", "demo", "-f", "-n", "5"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = tokio::spawn({
            let lines = lines.clone();
            async move {
                let mut stdout = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = stdout.next_line().await {
                    lines.lock().unwrap().push(line);
                }
            }
        });
        Self {
            child,
            lines,
            reader,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a printed line containing `needle`; returns its index.
    async fn wait_line(&self, needle: &str) -> usize {
        wait_for(
            &format!("a followed line with `{needle}`"),
            DEADLINE,
            || async {
                let lines = self.lines();
                lines
                    .iter()
                    .position(|l| l.contains(needle))
                    .ok_or_else(|| {
                        format!("{} lines so far, last: {:?}", lines.len(), lines.last())
                    })
            },
        )
        .await
        .unwrap()
    }
}

async fn pid(agent: &AgentFixture) -> i64 {
    let status: Value = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    status["services"][0]["instances"][0]["pid"]
        .as_i64()
        .unwrap()
}

async fn ok(agent: &AgentFixture, args: &[&str]) {
    let output = agent.agentctl(args).await.unwrap();
    assert!(
        output.status.success(),
        "agentctl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn follow_prints_new_lines_across_restart_and_switch_until_the_client_goes() {
    let agent = AgentFixture::start("logs-1", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    let v2 = DemoRelease::new("2.0.0", port).build(agent.dir()).unwrap();
    ok(&agent, &["install", v1.to_str().unwrap()]).await;
    let first_pid = pid(&agent).await;

    let mut follow = Follow::start(&agent);
    // The last lines first: the supervisor's note of the start.
    follow
        .wait_line(&format!("[0] [lockstep] started pid {first_pid}"))
        .await;
    assert!(follow.lines().len() <= 5, "{:?}", follow.lines());

    // A restart writes to the same file.
    ok(&agent, &["restart", "demo"]).await;
    let restarted = pid(&agent).await;
    assert_ne!(restarted, first_pid);
    let at_restart = follow.wait_line(&format!("started pid {restarted}")).await;

    // A switch to another release writes to another file.
    ok(&agent, &["install", v2.to_str().unwrap()]).await;
    let switched = pid(&agent).await;
    let at_switch = follow.wait_line(&format!("started pid {switched}")).await;
    assert!(at_switch > at_restart);
    // The old instance's last notes, from the old file, came too.
    follow
        .wait_line(&format!("sent SIGTERM to process group {restarted}"))
        .await;

    // The app's own output, in the new file.
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let (status, body) = request(addr, "POST", "/publish?delay_ms=1", "hello")
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    follow.wait_line("publish: holding the request").await;

    // Every line once.
    let lines = follow.lines();
    let starts = lines
        .iter()
        .filter(|l| l.contains(&format!("started pid {switched}")))
        .count();
    assert_eq!(starts, 1, "{lines:#?}");

    // The client goes away: its follower ends, the agent serves on.
    follow.child.kill().await.unwrap();
    follow.reader.await.unwrap();
    wait_for("the agent to end the follow", DEADLINE, || async {
        if agent.log_text().contains("log follow ended") {
            Ok(())
        } else {
            Err("no `log follow ended` in the agent's log")
        }
    })
    .await
    .unwrap();
    let status: Value = agent.agentctl_json(&["status", "demo"]).await.unwrap();
    assert_eq!(
        status["services"][0]["instances"][0]["ready"], true,
        "{status}"
    );
    assert_eq!(pid(&agent).await, switched);
}

#[tokio::test]
async fn a_follower_does_not_hold_up_the_agents_shutdown() {
    let mut agent = AgentFixture::start("logs-2", "eu-1").await.unwrap();
    let port = free_loopback_port().unwrap();
    let v1 = DemoRelease::new("1.0.0", port).build(agent.dir()).unwrap();
    ok(&agent, &["install", v1.to_str().unwrap()]).await;
    let follow = Follow::start(&agent);
    follow.wait_line("[lockstep] started pid").await;

    let began = Instant::now();
    agent.stop().await.unwrap();
    // The app's stop_timeout is 10 s; the follower must add nothing like it.
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "the agent took {:?} to stop",
        began.elapsed()
    );
    let output = tokio::time::timeout(DEADLINE, follow.child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{output:?}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}
