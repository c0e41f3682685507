//! Per-instance log files with size-based rotation.
//!
//! Owns the instance's log file: the app's stdout and stderr arrive on one
//! pipe that an agent task copies into the file ([`LogFile::pump`]); the
//! agent rotates by size (`NAME.log` → `NAME.log.1` → … → `NAME.log.K`,
//! the oldest dropped) and answers `tail(n)` across the rotated files.
//!
//! ```text
//! app stdout ─┐                  ┌─▶ NAME.log (≤ max_bytes) ─rotate─▶ NAME.log.1 … .K
//! app stderr ─┴─ pipe ─▶ pump ───┤
//! supervisor notes ([lockstep]) ─┘
//! ```
//!
//! Must never: let the child write the file itself (it could not rotate it),
//! block the child on a full disk for longer than one write, or keep reading
//! after the pipe is closed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Rotate past 8 MiB: a few hours of a chatty app, small enough to page
/// through and to read the tail of quickly.
pub const LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Rotated files kept: with the live one, 32 MiB per instance at most, a
/// bound a host with 50 instances can afford.
pub const LOG_KEEP: u32 = 3;
/// Read size from the pipe.
const PUMP_CHUNK: usize = 16 * 1024;
/// Read size when scanning a file backwards for `tail`.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Log size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogConfig {
    pub max_bytes: u64,
    pub keep: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            max_bytes: LOG_MAX_BYTES,
            keep: LOG_KEEP,
        }
    }
}

/// Why a log file could not be opened, written or read.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot create log directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open log file {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write log file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot rotate log file {path}")]
    Rotate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read log file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
struct Writer {
    file: File,
    size: u64,
    /// The last byte written ends a line (or nothing was written).
    at_line_start: bool,
}

/// One instance's log; clones share the file.
#[derive(Debug, Clone)]
pub struct LogFile {
    path: Arc<PathBuf>,
    config: LogConfig,
    writer: Arc<Mutex<Writer>>,
}

impl LogFile {
    /// Opens (appending) or creates `path`, creating its directory.
    pub fn open(path: &Path, config: LogConfig) -> Result<Self, LogError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LogError::CreateDir {
                path: dir.to_owned(),
                source,
            })?;
        }
        let file = open_append(path)?;
        let size = file
            .metadata()
            .map_err(|source| LogError::Open {
                path: path.to_owned(),
                source,
            })?
            .len();
        Ok(Self {
            path: Arc::new(path.to_owned()),
            config,
            writer: Arc::new(Mutex::new(Writer {
                file,
                size,
                at_line_start: true,
            })),
        })
    }

    /// The live file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rotated file number `n` (1 = the newest rotated).
    pub fn rotated_path(&self, n: u32) -> PathBuf {
        let mut s = self.path.as_os_str().to_owned();
        s.push(format!(".{n}"));
        PathBuf::from(s)
    }

    /// Appends bytes, rotating first when they would take the file past the limit.
    pub fn write(&self, bytes: &[u8]) -> Result<(), LogError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.write_locked(&mut w, bytes)
    }

    fn write_locked(&self, w: &mut Writer, bytes: &[u8]) -> Result<(), LogError> {
        // No file grows past max_bytes; a cut falls after a newline when the
        // room holds one, so lines rarely straddle two files.
        let mut rest = bytes;
        while !rest.is_empty() {
            let room = self.config.max_bytes.saturating_sub(w.size);
            if rest.len() as u64 <= room {
                self.append(w, rest)?;
                break;
            }
            let room = usize::try_from(room).unwrap_or(usize::MAX).min(rest.len());
            let cut = match rest[..room].iter().rposition(|&b| b == b'\n') {
                Some(i) => i + 1,
                // A line longer than a whole file: cut it.
                None if w.size == 0 => room.max(1),
                None => 0,
            };
            self.append(w, &rest[..cut])?;
            rest = &rest[cut..];
            self.rotate(w)?;
        }
        Ok(())
    }

    fn append(&self, w: &mut Writer, bytes: &[u8]) -> Result<(), LogError> {
        if bytes.is_empty() {
            return Ok(());
        }
        w.file.write_all(bytes).map_err(|source| LogError::Write {
            path: self.path.to_path_buf(),
            source,
        })?;
        w.size += bytes.len() as u64;
        w.at_line_start = bytes.last() == Some(&b'\n');
        Ok(())
    }

    /// Appends one supervisor line, marked `[lockstep]` so it cannot be
    /// mistaken for the app's own output.
    /// It starts on a line of its own even after a partial app line.
    pub fn note(&self, line: &str) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let sep = if w.at_line_start { "" } else { "\n" };
        let text = format!("{sep}[lockstep] {line}\n");
        if let Err(e) = self.write_locked(&mut w, text.as_bytes()) {
            tracing::warn!(error = %e, "cannot write supervisor note to the instance log");
        }
    }

    fn rotate(&self, w: &mut Writer) -> Result<(), LogError> {
        let err = |source| LogError::Rotate {
            path: self.path.to_path_buf(),
            source,
        };
        if self.config.keep == 0 {
            w.file.set_len(0).map_err(err)?;
            w.file.seek(SeekFrom::Start(0)).map_err(err)?;
            w.size = 0;
            return Ok(());
        }
        for n in (1..self.config.keep).rev() {
            let from = self.rotated_path(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated_path(n + 1)).map_err(err)?;
            }
        }
        std::fs::rename(self.path.as_path(), self.rotated_path(1)).map_err(err)?;
        w.file = open_append(&self.path)?;
        w.size = 0;
        Ok(())
    }

    /// Copies the pipe into the log until every writer has closed it.
    pub async fn pump(self, mut rx: pipe::Receiver) {
        let mut buf = vec![0u8; PUMP_CHUNK];
        loop {
            match rx.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if let Err(e) = self.write(&buf[..n]) {
                        // Keep draining: a full disk must not block the app on its pipe.
                        tracing::warn!(path = %self.path.display(), error = %e, "cannot write instance log");
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot read instance output pipe");
                    break;
                }
            }
        }
    }

    /// The last `n` lines across the live and the rotated files, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<String>, LogError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        // Bytes gathered newest-first, file by file; stop once they hold n
        // complete lines (n + 1 newlines, or n and the start of the oldest file).
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        let mut newlines = 0usize;
        let files: Vec<PathBuf> = std::iter::once(self.path.to_path_buf())
            .chain((1..=self.config.keep).map(|i| self.rotated_path(i)))
            .collect();
        'files: for path in files {
            let mut file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(source) => return Err(LogError::Read { path, source }),
            };
            let read_err = |source| LogError::Read {
                path: path.clone(),
                source,
            };
            let mut end = file.metadata().map_err(read_err)?.len();
            while end > 0 {
                let start = end.saturating_sub(TAIL_CHUNK);
                let mut buf = vec![0u8; (end - start) as usize];
                file.seek(SeekFrom::Start(start)).map_err(read_err)?;
                file.read_exact(&mut buf).map_err(read_err)?;
                newlines += buf.iter().filter(|&&b| b == b'\n').count();
                chunks.push(buf);
                end = start;
                if newlines > n {
                    break 'files;
                }
            }
        }
        let mut all = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
        for c in chunks.iter().rev() {
            all.extend_from_slice(c);
        }
        let text = String::from_utf8_lossy(&all);
        let mut lines: Vec<&str> = text.split('\n').collect();
        if lines.last() == Some(&"") {
            lines.pop();
        }
        let skip = lines.len().saturating_sub(n);
        Ok(lines[skip..].iter().map(|l| (*l).to_owned()).collect())
    }
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_k_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(
            &dir.path().join("a.log"),
            LogConfig {
                max_bytes: 100,
                keep: 2,
            },
        )
        .unwrap();
        for i in 0..40 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert!(std::fs::metadata(log.path()).unwrap().len() <= 100);
        assert!(log.rotated_path(1).exists());
        assert!(log.rotated_path(2).exists());
        assert!(!log.rotated_path(3).exists());
        assert_eq!(
            log.tail(3).unwrap(),
            vec!["line 0037", "line 0038", "line 0039"]
        );
        // Across files: 100 bytes hold 10 lines of 10 bytes.
        let t = log.tail(15).unwrap();
        assert_eq!(t.len(), 15);
        assert_eq!(t[0], "line 0025");
        assert_eq!(t[14], "line 0039");
    }

    #[test]
    fn tail_of_a_partial_last_line_and_of_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = LogFile::open(&dir.path().join("b.log"), LogConfig::default()).unwrap();
        assert!(log.tail(5).unwrap().is_empty());
        log.write(b"one\ntwo\nthree").unwrap();
        assert_eq!(log.tail(2).unwrap(), vec!["two", "three"]);
        assert_eq!(log.tail(10).unwrap(), vec!["one", "two", "three"]);
        log.note("exited");
        assert_eq!(log.tail(2).unwrap(), vec!["three", "[lockstep] exited"]);
    }

    #[test]
    fn reopening_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/c.log");
        LogFile::open(&p, LogConfig::default())
            .unwrap()
            .write(b"a\n")
            .unwrap();
        let log = LogFile::open(&p, LogConfig::default()).unwrap();
        log.write(b"b\n").unwrap();
        assert_eq!(log.tail(5).unwrap(), vec!["a", "b"]);
    }
}
