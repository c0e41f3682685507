//! `agentctl install BUNDLE`: the bundle is streamed to the agent, which
//! verifies, unpacks and switches to it. The agent never opens a path on
//! the caller's behalf.

use std::path::PathBuf;

use proto::v1::{InstallChunk, InstallHeader, install_chunk};
use tokio::io::AsyncReadExt;

use crate::connect::{Connected, Failure};
use crate::{Output, switch_reply};

/// Big enough to stream quickly, small enough to stay well under gRPC's
/// default 4 MiB message limit.
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A release bundle built by `lockstep release build`.
    bundle: PathBuf,
    /// Why, for the history.
    #[arg(long, default_value = "")]
    reason: String,
}

pub async fn run(mut c: Connected, args: Args, output: Output) -> Result<(), Failure> {
    let mut file = tokio::fs::File::open(&args.bundle).await.map_err(|e| {
        Failure::Local(format!("cannot read bundle {}: {e}", args.bundle.display()))
    })?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let header = InstallChunk {
        body: Some(install_chunk::Body::Header(InstallHeader {
            source: args.bundle.display().to_string(),
            reason: args.reason,
        })),
    };
    let bundle = args.bundle.clone();
    let reader = async move {
        tx.send(header)
            .await
            .map_err(|_| Failure::Local("the agent closed the upload".to_owned()))?;
        loop {
            let mut chunk = vec![0; CHUNK_BYTES];
            let n = file.read(&mut chunk).await.map_err(|e| {
                Failure::Local(format!("cannot read bundle {}: {e}", bundle.display()))
            })?;
            if n == 0 {
                return Ok::<(), Failure>(());
            }
            chunk.truncate(n);
            let message = InstallChunk {
                body: Some(install_chunk::Body::Data(chunk)),
            };
            if tx.send(message).await.is_err() {
                // The agent ended the call early; its answer says why.
                return Ok(());
            }
        }
    };
    crate::announce(output, &format!("installing {}", args.bundle.display()));
    let call = c
        .client
        .install(tokio_stream::wrappers::ReceiverStream::new(rx));
    let (read, reply) = tokio::join!(reader, call);
    read?;
    let reply = reply.map_err(|s| c.fail(&s))?.into_inner();
    switch_reply::print(&reply, output)
}
