//! The coordinator's hands: `AgentDialer` (one lazily connected gRPC channel
//! per agent address; with `[tls]` over https, presenting the coordinator's
//! certificate and accepting only agents whose certificate chains to
//! `tls.ca` and names the address dialled) and `run_check` (a named check
//! from coordinator.toml as a child process with a timeout, in a clean
//! environment: `PATH`, the check's `env` and `LOCKSTEP_*`).
//!
//! Must never: decide anything: callers feed every result back to the
//! engine as an event.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proto::v1::agent_service_client::AgentServiceClient;
use tokio::io::AsyncReadExt;
use tonic::transport::{Channel, Endpoint};

use crate::checks::CheckCommand;

/// How long a connection attempt to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// gRPC channels to agents, by address; one unused for [`IDLE_CHANNEL`]
/// is dropped (and its connection closed once no call holds it), and at
/// most [`MAX_CHANNELS`] are kept (the least recently used goes first),
/// so the coordinator does not keep a connection to every host it
/// deployed to, nor one to every address a host ever had. Each is an
/// HTTP/2 connection of about 40 KB: dialling all 10,000 hosts of a
/// deployment added 405 MB (nodesim_rollout's RSS after the first
/// install). A dropped channel is dialled again when next needed.
#[derive(Debug)]
pub struct AgentDialer {
    channels: Mutex<Channels>,
    /// The coordinator's `[tls]`; `None`: plain-text `http://`.
    tls: Option<tls::TlsMaterial>,
}

/// A channel not used for this long is dropped.
pub const IDLE_CHANNEL: Duration = Duration::from_secs(120);
/// Channels kept at most: a few batches' worth, and every host of a
/// fleet of up to this size.
pub const MAX_CHANNELS: usize = 1_000;
/// Idle channels are looked for at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Channels {
    /// Each channel with when it was last handed out.
    by_address: HashMap<String, (Channel, Instant)>,
    swept: Instant,
}

impl AgentDialer {
    pub fn new(tls: Option<tls::TlsMaterial>) -> Self {
        Self {
            channels: Mutex::new(Channels {
                by_address: HashMap::new(),
                swept: Instant::now(),
            }),
            tls,
        }
    }

    /// A client for the agent at `address` (`host:port`).
    pub fn client(&self, address: &str) -> Result<AgentServiceClient<Channel>, String> {
        self.client_at(address, Instant::now())
    }

    fn client_at(
        &self,
        address: &str,
        now: Instant,
    ) -> Result<AgentServiceClient<Channel>, String> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(channels.swept) >= SWEEP_EVERY {
            channels
                .by_address
                .retain(|_, (_, used)| now.saturating_duration_since(*used) < IDLE_CHANNEL);
            channels.swept = now;
        }
        if let Some((channel, used)) = channels.by_address.get_mut(address) {
            *used = now;
            return Ok(AgentServiceClient::new(channel.clone()));
        }
        if channels.by_address.len() >= MAX_CHANNELS {
            let oldest = channels
                .by_address
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(address, _)| address.clone());
            if let Some(oldest) = oldest {
                channels.by_address.remove(&oldest);
            }
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("agent address {address:?} is not usable: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint
                .tls_config(tls.client_config())
                .map_err(|e| format!("cannot set up TLS for agent {address}: {e}"))?;
        }
        let channel = endpoint.connect_lazy();
        channels
            .by_address
            .insert(address.to_owned(), (channel.clone(), now));
        Ok(AgentServiceClient::new(channel))
    }

    /// How many channels are kept now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_address
            .len()
    }
}

/// What a synthetic check is told about the rollout it gates.
#[derive(Debug, Clone)]
pub struct CheckContext {
    pub cluster: String,
    pub service: String,
    pub release: String,
    pub deployment: String,
}

/// The `PATH` a check runs with; its `env` may set another.
const CHECK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs `command` (no shell) with its timeout, in an environment holding
/// only `PATH`, the check's own `env` and the `LOCKSTEP_*` context (the
/// coordinator's own environment is not passed on); `Err` carries why it
/// failed and the tail of its output.
pub async fn run_check(
    name: &str,
    command: &CheckCommand,
    context: &CheckContext,
) -> Result<(), String> {
    let timeout = command.timeout;
    let Some((program, args)) = command.argv.split_first() else {
        return Err(format!("check {name} has an empty argv"));
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", CHECK_PATH)
        .envs(&command.env)
        .env("LOCKSTEP_CLUSTER", &context.cluster)
        .env("LOCKSTEP_SERVICE", &context.service)
        .env("LOCKSTEP_RELEASE", &context.release)
        .env("LOCKSTEP_DEPLOYMENT", &context.deployment)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("check {name}: cannot run {program:?}: {e}"))?;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let outcome = tokio::time::timeout(timeout, async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let read_out = async {
            if let Some(s) = stdout.as_mut() {
                let _ = s.read_to_end(&mut out).await;
            }
        };
        let read_err = async {
            if let Some(s) = stderr.as_mut() {
                let _ = s.read_to_end(&mut err).await;
            }
        };
        let ((), (), status) = tokio::join!(read_out, read_err, child.wait());
        (status, out, err)
    })
    .await;
    match outcome {
        Err(_) => Err(format!(
            "check {name} timed out after {}s",
            timeout.as_secs_f64()
        )),
        Ok((Err(e), _, _)) => Err(format!("check {name}: waiting for it failed: {e}")),
        Ok((Ok(status), _, _)) if status.success() => Ok(()),
        Ok((Ok(status), out, err)) => {
            let mut text = String::from_utf8_lossy(&out).into_owned();
            text.push_str(&String::from_utf8_lossy(&err));
            let text = text.trim();
            let tail: String = text
                .char_indices()
                .rev()
                .nth(1000)
                .map_or(text, |(i, _)| &text[i..])
                .to_owned();
            Err(format!("check {name} failed ({status}): {tail}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> CheckContext {
        CheckContext {
            cluster: "eu".into(),
            service: "web".into(),
            release: "sha256:x".into(),
            deployment: "d1".into(),
        }
    }

    fn argv(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    fn command(script: &str, timeout: Duration) -> CheckCommand {
        CheckCommand {
            argv: argv(script),
            env: [("GREETING".to_owned(), "hi".to_owned())].into(),
            timeout,
        }
    }

    /// Issue #15 (10,000 hosts): a channel to every host ever dialled was
    /// kept for the coordinator's life. Now an idle one is dropped.
    #[tokio::test]
    async fn a_channel_unused_for_the_idle_time_is_dropped_and_a_used_one_kept() {
        let dialer = AgentDialer::new(None);
        let t0 = Instant::now();
        dialer.client_at("127.0.0.1:1", t0).unwrap();
        dialer.client_at("127.0.0.1:2", t0).unwrap();
        let later = t0 + IDLE_CHANNEL - SWEEP_EVERY;
        dialer.client_at("127.0.0.1:2", later).unwrap();
        assert_eq!(dialer.kept(), 2, "nothing idle long enough yet");
        dialer.client_at("127.0.0.1:3", t0 + IDLE_CHANNEL).unwrap();
        assert_eq!(dialer.kept(), 2, "the first, idle since t0, is dropped");
        dialer
            .client_at("127.0.0.1:3", later + IDLE_CHANNEL + SWEEP_EVERY)
            .unwrap();
        assert_eq!(dialer.kept(), 1, "only the one just used is kept");
        assert!(dialer.client_at("not an address", t0).is_err());
    }

    /// Issue #15 (10,000 hosts): dialling every host of a deployment kept
    /// 10,000 connections (405 MB). At most MAX_CHANNELS are kept; the
    /// least recently used goes.
    #[tokio::test]
    async fn at_most_max_channels_are_kept_and_the_least_recently_used_goes() {
        let dialer = AgentDialer::new(None);
        let t0 = Instant::now();
        let at = |n: usize| t0 + Duration::from_millis(u64::try_from(n).unwrap());
        for n in 0..MAX_CHANNELS {
            dialer
                .client_at(&format!("127.0.0.1:{}", 1000 + n), at(n))
                .unwrap();
        }
        // The first is used again: the second is now the least recent.
        dialer
            .client_at("127.0.0.1:1000", at(MAX_CHANNELS))
            .unwrap();
        dialer
            .client_at("127.0.0.1:9999", at(MAX_CHANNELS + 1))
            .unwrap();
        assert_eq!(dialer.kept(), MAX_CHANNELS);
        let kept = |address: &str| {
            dialer
                .channels
                .lock()
                .unwrap()
                .by_address
                .contains_key(address)
        };
        assert!(kept("127.0.0.1:1000") && kept("127.0.0.1:9999"));
        assert!(
            !kept("127.0.0.1:1001"),
            "the least recently used is dropped"
        );
    }

    #[tokio::test]
    async fn a_check_sees_its_context_and_passes_on_exit_zero() {
        let result = run_check(
            "env",
            &command(
                "test \"$LOCKSTEP_CLUSTER/$LOCKSTEP_SERVICE/$LOCKSTEP_RELEASE/$GREETING\" = eu/web/sha256:x/hi && test -z \"$HOME\"",
                Duration::from_secs(30),
            ),
            &context(),
        )
        .await;
        assert_eq!(result, Ok(()));
    }

    #[tokio::test]
    async fn a_failing_check_reports_status_and_output() {
        let err = run_check(
            "bad",
            &command("echo upstream 503; exit 3", Duration::from_secs(30)),
            &context(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("upstream 503") && err.contains("3"), "{err}");
    }

    #[tokio::test]
    async fn a_slow_check_times_out() {
        let err = run_check(
            "slow",
            &command("sleep 30", Duration::from_millis(200)),
            &context(),
        )
        .await
        .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
    }
}
