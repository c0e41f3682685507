//! `lockstep release push FILE`: uploads a bundle to the coordinator's
//! depot as a client stream (a header with the size and the digest
//! computed here, then 256 KiB chunks) and prints the digest last.
//!
//! Must never: send a bundle without the digest it was hashed to (the
//! coordinator refuses a mismatch, so a file changed mid-push never lands
//! under the wrong name), or print anything on stdout but the result.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use proto::v1::{PushReleaseChunk, PushReleaseHeader, PushReleaseResponse, push_release_chunk};
use release::BundleFile;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::client::{self, Coordinators, Failure};
use crate::{Output, json, print_json};

/// Well under gRPC's default 4 MiB message limit, big enough to stream fast.
const CHUNK_BYTES: usize = 256 * 1024;

pub async fn run(c: &mut Coordinators, file: &Path, output: Output) -> Result<(), Failure> {
    let path = file.to_owned();
    let bundle = tokio::task::spawn_blocking(move || BundleFile::open(&path))
        .await
        .map_err(|e| Failure::Local(format!("cannot hash {}: {e}", file.display())))?
        .map_err(|e| {
            Failure::Local(format!(
                "cannot push {}: {e}; check it with `lockstep release verify {}`",
                file.display(),
                file.display()
            ))
        })?;
    let header = PushReleaseHeader {
        total_size: bundle.file_len,
        expected_digest: bundle.digest.to_string(),
    };
    let bar = progress_bar(output, bundle.file_len);
    let deadline = client::push_deadline(c.timeout(), bundle.file_len);
    let response = c
        .call_within(deadline, |mut client| {
            let header = header.clone();
            let file = file.to_owned();
            let bar = bar.clone();
            async move {
                bar.set_position(0);
                let (tx, rx) = mpsc::channel(4);
                let upload = client.push_release(tokio_stream::wrappers::ReceiverStream::new(rx));
                let (sent, reply) = tokio::join!(feed(&file, header, tx, &bar), upload);
                // A read error explains a short upload better than the
                // coordinator's complaint about it.
                sent.map_err(tonic::Status::cancelled)?;
                reply
            }
        })
        .await;
    bar.finish_and_clear();
    let response = response?;
    print(&response, &bundle.digest.to_string(), output)
}

fn progress_bar(output: Output, total: u64) -> ProgressBar {
    if output != Output::Text {
        return ProgressBar::hidden();
    }
    // Draws on stderr, and not at all when stderr is not a terminal.
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "pushing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Sends the header, then the file in chunks, until the file ends or the
/// coordinator stops reading (its answer then says why).
async fn feed(
    file: &PathBuf,
    header: PushReleaseHeader,
    tx: mpsc::Sender<PushReleaseChunk>,
    bar: &ProgressBar,
) -> Result<(), String> {
    let read_err = |e: std::io::Error| format!("cannot read {}: {e}", file.display());
    let mut f = tokio::fs::File::open(file).await.map_err(read_err)?;
    let first = PushReleaseChunk {
        body: Some(push_release_chunk::Body::Header(header)),
    };
    if tx.send(first).await.is_err() {
        return Ok(());
    }
    loop {
        let mut chunk = vec![0; CHUNK_BYTES];
        let n = read_full(&mut f, &mut chunk).await.map_err(read_err)?;
        if n == 0 {
            return Ok(());
        }
        chunk.truncate(n);
        let message = PushReleaseChunk {
            body: Some(push_release_chunk::Body::Data(chunk)),
        };
        if tx.send(message).await.is_err() {
            return Ok(());
        }
        bar.inc(n as u64);
    }
}

/// Fills `buf` unless the file ends first, so chunks are full-sized.
async fn read_full(f: &mut tokio::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        let n = f.read(rest).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn print(
    response: &PushReleaseResponse,
    local_digest: &str,
    output: Output,
) -> Result<(), Failure> {
    if output == Output::Json {
        return print_json(&json::push_response(response));
    }
    let (service, version, digest) = response.release.as_ref().map_or_else(
        || ("?".to_owned(), "?".to_owned(), local_digest.to_owned()),
        |r| {
            let digest = if r.digest.is_empty() {
                local_digest.to_owned()
            } else {
                r.digest.clone()
            };
            (r.service.clone(), r.version.clone(), digest)
        },
    );
    let signed = if response.signed {
        "signed"
    } else {
        "unsigned"
    };
    if response.already_present {
        println!("already present: {service} {version} ({signed})");
    } else {
        println!("pushed {service} {version} ({signed})");
    }
    println!("{digest}");
    Ok(())
}
