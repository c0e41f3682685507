//! Per-instance log files with size-based rotation.
//!
//! Owns the instance's log file. The app's stdout and stderr are the file
//! itself, opened `O_APPEND` ([`LogFile::app_output`]); the agent adds its
//! `[lockstep]` notes the same way, rotates by size with copy + truncate
//! (`NAME.log` copied to `NAME.log.1`, … `NAME.log.K`, the oldest dropped,
//! then `NAME.log` truncated in place) and answers `tail(n)` across the
//! rotated files.
//!
//! ```text
//! app stdout ─┐   O_APPEND        ┌─▶ NAME.log ─copy+truncate (every ROTATE_CHECK)─▶ NAME.log.1 … .K
//! app stderr ─┼───────────────────┤
//! supervisor notes ([lockstep]) ──┘
//! ```
//!
//! Why the app writes the file, not a pipe to an agent task: an app must
//! keep serving while the agent restarts (ARCHITECTURE.md). A pipe's read
//! end lives only in the agent; when the agent exits the app's next write
//! gets EPIPE/SIGPIPE, and keeping the read end alive elsewhere (a helper
//! process per instance, systemd's fd store) still blocks a chatty app once
//! the pipe buffer fills while no agent reads it. A file needs no reader and
//! nothing to hand over: the restarted agent reopens it by name. The
//! trade-offs: rotation is copy + truncate, so a line written between the
//! copy and the truncate (microseconds) can be lost, and the live file can
//! pass `max_bytes` by what the app writes in one [`ROTATE_CHECK`] period.
//!
//! Must never: rename the live file (the app's descriptor would follow it),
//! or block the app: it never waits on the agent to write.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Rotate past 8 MiB: a few hours of a chatty app, small enough to page
/// through and to read the tail of quickly.
pub const LOG_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// Rotated files kept: with the live one, 32 MiB per instance at most, a
/// bound a host with 50 instances can afford.
pub const LOG_KEEP: u32 = 3;
/// How often the supervisor checks a live file's size: the app writes it
/// directly, so this bounds how far past `max_bytes` it can grow.
pub const ROTATE_CHECK: Duration = Duration::from_secs(1);
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
    /// The live file, read + append: notes append, and read its last byte.
    file: File,
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
        Ok(Self {
            path: Arc::new(path.to_owned()),
            config,
            writer: Arc::new(Mutex::new(Writer { file })),
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

    /// The app's stdout and stderr: the live file, opened `O_APPEND`, so
    /// that writes land at its end even after a truncate.
    pub fn app_output(&self) -> Result<(File, File), LogError> {
        let out = open_append(&self.path)?;
        let err = out.try_clone().map_err(|source| LogError::Open {
            path: self.path.to_path_buf(),
            source,
        })?;
        Ok((out, err))
    }

    /// Appends bytes, rotating first when they would take the file past
    /// the limit (the agent's own writes; the app's are checked by
    /// [`rotate_if_over`](Self::rotate_if_over)).
    pub fn write(&self, bytes: &[u8]) -> Result<(), LogError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let incoming = bytes.len() as u64;
        self.rotate_locked_if(&mut w, |size| {
            size > 0 && size + incoming > self.config.max_bytes
        })?;
        self.append(&mut w, bytes)
    }

    fn append(&self, w: &mut Writer, bytes: &[u8]) -> Result<(), LogError> {
        if bytes.is_empty() {
            return Ok(());
        }
        w.file.write_all(bytes).map_err(|source| LogError::Write {
            path: self.path.to_path_buf(),
            source,
        })
    }

    /// Appends one supervisor line, marked `[lockstep]` so it cannot be
    /// mistaken for the app's own output.
    /// It starts on a line of its own even after a partial app line.
    pub fn note(&self, line: &str) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let sep = if ends_line(&w.file) { "" } else { "\n" };
        let text = format!("{sep}[lockstep] {line}\n");
        if let Err(e) = self.append(&mut w, text.as_bytes()) {
            tracing::warn!(error = %e, "cannot write supervisor note to the instance log");
        }
    }

    /// Rotates when the live file has reached `max_bytes` (the supervisor
    /// calls this every [`ROTATE_CHECK`]; blocking: it may copy a file).
    /// Returns whether it rotated.
    pub fn rotate_if_over(&self) -> Result<bool, LogError> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.rotate_locked_if(&mut w, |size| size >= self.config.max_bytes)
    }

    /// Rotates when `due(size of the live file)`. The order matters to
    /// `logfollow`: copy to a hidden temp file, truncate the live file,
    /// shift `.1 … .K`, then rename the copy to `.1` — a new `.1` appears
    /// complete and only after the truncate, which is how a follower tells
    /// a rotation (a new `.1`) from one in progress (live file shorter, same `.1`).
    fn rotate_locked_if(
        &self,
        w: &mut Writer,
        due: impl Fn(u64) -> bool,
    ) -> Result<bool, LogError> {
        let err = |source| LogError::Rotate {
            path: self.path.to_path_buf(),
            source,
        };
        let size = w.file.metadata().map_err(err)?.len();
        if !due(size) {
            return Ok(false);
        }
        if self.config.keep == 0 {
            w.file.set_len(0).map_err(err)?;
            return Ok(true);
        }
        // Copied, never renamed: the app's descriptor stays on the live file.
        let copy = self.rotating_path();
        {
            let mut live = File::open(self.path.as_path()).map_err(err)?;
            let mut out = File::create(&copy).map_err(err)?;
            io::copy(&mut live, &mut out).map_err(err)?;
        }
        w.file.set_len(0).map_err(err)?;
        for n in (1..self.config.keep).rev() {
            let from = self.rotated_path(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated_path(n + 1)).map_err(err)?;
            }
        }
        std::fs::rename(&copy, self.rotated_path(1)).map_err(err)?;
        Ok(true)
    }

    /// `DIR/.NAME.rotating`: the copy being made (hidden from log listings).
    fn rotating_path(&self) -> PathBuf {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.path.with_file_name(format!(".{name}.rotating"))
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

/// The file is empty or its last byte is a newline.
fn ends_line(file: &File) -> bool {
    let Ok(len) = file.metadata().map(|m| m.len()) else {
        return true;
    };
    if len == 0 {
        return true;
    }
    let mut last = [0u8; 1];
    !matches!(file.read_at(&mut last, len - 1), Ok(1) if last[0] != b'\n')
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
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
