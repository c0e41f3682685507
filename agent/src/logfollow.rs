//! `Follower`: what `agentctl logs -f` reads — the last lines of each
//! instance's log, then every line appended after them, across rotation
//! and across a switch to another release's log file.
//!
//! ```text
//! start(current, n) ─▶ last n complete lines per slot; a cursor (open fd,
//!                      offset, unfinished line) on each live file
//! poll(current)     ─▶ lines appended since:
//!   cursor ── read its fd to EOF ─▶ still NAME.log? done until the next poll
//!                                 └ rotated away: the next newer file
//!                                   (NAME.log.k-1 … NAME.log), from its start
//!   a new NAME.log.1 while on NAME.log (copy + truncate, see
//!   supervisor::logs) ─▶ NAME.log.1 from our offset, then NAME.log from 0
//!   path no longer current ─▶ read to its end, then only remembered
//!                             (file identity + offset)
//!   path newly current     ─▶ from where it was last seen (a switch back
//!                             to an older release's file), else from 0
//! ```
//!
//! Synchronous and free of policy: the caller runs it on the blocking pool
//! and decides when to poll, which files are current and where lines go.
//!
//! Must never: write, create or rename a file (the supervisor's pump owns
//! the logs); hand out a line twice, or a line before its newline while its
//! file is still written; replay an old release's log from its start when
//! a service switches back to that release; or read more than a bounded
//! number of bytes per file per poll.
//!
//! Limits: the supervisor rotates by copy + truncate; a poll that falls
//! between its truncate and its rename of the copy waits for the next poll.
//! A file rotated more than `keep` times between two polls loses
//! the files in between (the supervisor deleted them); with `keep = 0` the
//! supervisor truncates in place, which is noticed only while the file is
//! shorter than the offset already read.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Bytes read from one file per poll: a chatty instance cannot hold the
/// others back, and a poll's batch stays small. The caller polls again at
/// once while [`Batch::more`] is set.
pub const READ_BUDGET: u64 = 64 * 1024;
/// A line longer than this is handed out in pieces of this size: gRPC
/// refuses messages over 4 MiB, and a log line this long is not read by a
/// person anyway.
pub const MAX_LINE: usize = 64 * 1024;
/// Read size when scanning backwards for the first lines.
const TAIL_CHUNK: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("cannot read log file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot list log directory {path}: {source}")]
    List {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// One line of one instance's log, without its newline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub slot: u32,
    pub line: String,
}

/// What one poll found.
#[derive(Debug, Default)]
pub struct Batch {
    pub lines: Vec<LogLine>,
    /// Some file has more than [`READ_BUDGET`] unread: poll again at once.
    pub more: bool,
}

/// Which file a path or an fd is, across renames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Where reading a file that is not followed now would resume.
#[derive(Debug, Clone, Copy)]
struct Mark {
    id: FileId,
    offset: u64,
}

/// A followed instance log.
#[derive(Debug)]
struct Cursor {
    slot: u32,
    /// The live path (`NAME.log`), whichever file it names now.
    path: PathBuf,
    /// The file being read: the live one, or one rotated away from under
    /// us that still has unread bytes.
    file: File,
    id: FileId,
    offset: u64,
    /// Bytes after the last newline read.
    partial: Vec<u8>,
    /// `NAME.log.1` as last seen while reading the live file: a different
    /// one means the live file was copied there and truncated.
    rotated: Option<FileId>,
}

/// Follows the log files of a service's instances.
#[derive(Debug)]
pub struct Follower {
    keep: u32,
    cursors: Vec<Cursor>,
    marks: HashMap<PathBuf, Mark>,
}

impl Follower {
    /// Opens the `current` (slot, live path) files of `service` and returns
    /// the last `n` complete lines of each, oldest first, slot by slot. A
    /// line still being written is not among them: it comes with the poll
    /// that sees its end. `keep` is the number of rotated files
    /// (`NAME.log.1` …) the supervisor keeps. Every other log of `service`
    /// in `log_dir` is remembered at its current end, so that switching back
    /// to an older release does not replay that release's old log.
    pub fn start(
        service: &str,
        log_dir: &Path,
        current: &[(u32, PathBuf)],
        n: usize,
        keep: u32,
    ) -> Result<(Self, Vec<LogLine>), FollowError> {
        let mut marks = scan(service, log_dir)?;
        let mut follower = Self {
            keep,
            cursors: Vec::with_capacity(current.len()),
            marks: HashMap::new(),
        };
        let mut lines = Vec::new();
        for (slot, path) in current {
            marks.remove(path);
            let Some((file, meta)) = open(path)? else {
                // Not there yet: a later poll reads it from its start.
                continue;
            };
            let end = meta.len();
            let (tail, partial) = tail(&file, end, path, keep, n)?;
            lines.extend(tail.into_iter().map(|line| LogLine { slot: *slot, line }));
            let mut cursor = Cursor {
                slot: *slot,
                path: path.clone(),
                file,
                id: FileId::of(&meta),
                offset: end,
                partial: Vec::new(),
                rotated: file_id(&rotated(path, 1))?,
            };
            // An unfinished line longer than MAX_LINE: its full pieces now.
            cursor.extend(&partial, &mut lines);
            follower.cursors.push(cursor);
        }
        follower.marks = marks;
        Ok((follower, lines))
    }

    /// The lines appended since the last call. `current` is the service's
    /// (slot, live path) list now: a path that left it is read to its end
    /// (its last unfinished line included) and then only remembered; a new
    /// one is opened. Lines of files that left come first.
    pub fn poll(&mut self, current: &[(u32, PathBuf)]) -> Result<Batch, FollowError> {
        let mut batch = Batch::default();
        let is_current = |c: &Cursor| current.iter().any(|(_, p)| *p == c.path);
        // Retiring files first: their lines were written before the
        // switch that replaced them finished.
        self.cursors.sort_by_key(|c| (is_current(c), c.slot));
        let mut kept = Vec::with_capacity(self.cursors.len());
        for mut cursor in std::mem::take(&mut self.cursors) {
            let more = advance(&mut cursor, self.keep, &mut batch.lines)?;
            batch.more |= more;
            if more || is_current(&cursor) {
                kept.push(cursor);
            } else {
                if !cursor.partial.is_empty() {
                    batch.lines.push(cursor.take_line());
                }
                self.marks.insert(
                    cursor.path,
                    Mark {
                        id: cursor.id,
                        offset: cursor.offset,
                    },
                );
            }
        }
        self.cursors = kept;
        for (slot, path) in current {
            if self.cursors.iter().any(|c| c.path == *path) {
                continue;
            }
            let Some((file, meta)) = open(path)? else {
                continue;
            };
            let id = FileId::of(&meta);
            let offset = match self.marks.remove(path) {
                Some(mark) if mark.id == id && mark.offset <= meta.len() => mark.offset,
                _ => 0,
            };
            let mut cursor = Cursor {
                slot: *slot,
                path: path.clone(),
                file,
                id,
                offset,
                partial: Vec::new(),
                rotated: file_id(&rotated(path, 1))?,
            };
            batch.more |= advance(&mut cursor, self.keep, &mut batch.lines)?;
            self.cursors.push(cursor);
        }
        Ok(batch)
    }
}

impl Cursor {
    fn take_line(&mut self) -> LogLine {
        LogLine {
            slot: self.slot,
            line: String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned(),
        }
    }

    /// Adds bytes to the unfinished line, handing out every line they end
    /// and every [`MAX_LINE`] piece of an overlong one.
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<LogLine>) {
        let mut pieces = bytes.split(|&b| b == b'\n');
        // The first piece continues the unfinished line; each later one
        // follows a newline.
        if let Some(first) = pieces.next() {
            self.extend(first, out);
        }
        for piece in pieces {
            out.push(self.take_line());
            self.extend(piece, out);
        }
    }

    /// Adds bytes without a newline to the unfinished line.
    fn extend(&mut self, mut bytes: &[u8], out: &mut Vec<LogLine>) {
        while !bytes.is_empty() {
            let room = MAX_LINE.saturating_sub(self.partial.len());
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.partial.extend_from_slice(now);
            bytes = rest;
            if self.partial.len() >= MAX_LINE {
                out.push(self.take_line());
            }
        }
    }
}

/// Reads what `cursor` has not read, up to [`READ_BUDGET`], following
/// rotations. True when the budget ran out before the end of the live file.
fn advance(cursor: &mut Cursor, keep: u32, out: &mut Vec<LogLine>) -> Result<bool, FollowError> {
    let mut budget = READ_BUDGET;
    loop {
        let on_live = keep > 0 && file_id(&cursor.path)? == Some(cursor.id);
        if on_live {
            let first = rotated(&cursor.path, 1);
            let now = file_id(&first)?;
            if now.is_some() && now != cursor.rotated {
                // Copied to a new NAME.log.1 and truncated, once or more:
                // what we have not read is at the end of the oldest new
                // copy (just newer than the NAME.log.1 we last saw); then
                // the newer copies and the live file again, from their
                // starts (`newer_file` leads through them).
                let mut ids = Vec::with_capacity(keep as usize);
                for n in 1..=keep {
                    ids.push(file_id(&rotated(&cursor.path, n))?);
                }
                let last_seen = cursor
                    .rotated
                    .and_then(|seen| ids.iter().position(|id| *id == Some(seen)));
                let oldest_new = match last_seen {
                    Some(i) => i,
                    None => ids.iter().rposition(Option::is_some).map_or(1, |i| i + 1),
                };
                cursor.rotated = now;
                if let Some((file, meta)) = open(&rotated(&cursor.path, oldest_new.max(1) as u32))?
                {
                    cursor.file = file;
                    cursor.id = FileId::of(&meta);
                    if meta.len() < cursor.offset {
                        cursor.offset = meta.len();
                    }
                    continue;
                }
            }
        }
        let len = metadata(&cursor.file, &cursor.path)?.len();
        if len < cursor.offset && on_live {
            // Truncated, but the copy is not at NAME.log.1 yet: a rotation
            // in progress. The next poll finds the copy.
            return Ok(false);
        }
        if len < cursor.offset {
            // Truncated in place (rotation with keep = 0): start over.
            if !cursor.partial.is_empty() {
                out.push(cursor.take_line());
            }
            cursor.offset = 0;
        }
        if cursor.offset < len {
            if budget == 0 {
                return Ok(true);
            }
            let want = (len - cursor.offset).min(budget);
            let bytes = read_range(&cursor.file, cursor.offset, cursor.offset + want)
                .map_err(|source| read_err(&cursor.path, source))?;
            let got = bytes.len() as u64;
            cursor.offset += got;
            budget -= got;
            cursor.feed(&bytes, out);
            if got == 0 {
                // Shrunk under us: the next round sees the new length.
                return Ok(false);
            }
            continue;
        }
        // At the end of our file. Rotated away? (NAME.log.1 is looked at
        // first: a copy + truncate after this is noticed by the next round.)
        let rotated_before = file_id(&rotated(&cursor.path, 1))?;
        let Some((file, meta)) = newer_file(&cursor.path, cursor.id, keep)? else {
            return Ok(false);
        };
        // The writer appends and then renames: bytes it added after our
        // read above are there now, and nothing comes after them.
        if metadata(&cursor.file, &cursor.path)?.len() > cursor.offset {
            continue;
        }
        cursor.file = file;
        cursor.id = FileId::of(&meta);
        cursor.offset = 0;
        cursor.rotated = rotated_before;
        // An unfinished line carries over: only a line longer than a whole
        // file straddles two.
    }
}

/// When `path` no longer names the file `id`: the file written after it
/// (the one rotated just after, or the live one). None while `path` still
/// names it, or names nothing (between a rotation's rename and create).
fn newer_file(
    path: &Path,
    id: FileId,
    keep: u32,
) -> Result<Option<(File, std::fs::Metadata)>, FollowError> {
    match std::fs::metadata(path) {
        Ok(meta) if FileId::of(&meta) == id => return Ok(None),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_err(path, source)),
    }
    // Oldest first: NAME.log.keep … NAME.log.1, NAME.log.
    let chain: Vec<PathBuf> = (1..=keep)
        .rev()
        .map(|n| rotated(path, n))
        .chain(std::iter::once(path.to_owned()))
        .collect();
    let ours = chain
        .iter()
        .position(|p| std::fs::metadata(p).is_ok_and(|m| FileId::of(&m) == id));
    // Ours already deleted: every file left is newer.
    let after = ours.map_or(0, |i| i + 1);
    for candidate in &chain[after..] {
        if let Some(found) = open(candidate)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The last `n` complete lines before `end` in `live` and, when it holds
/// fewer, in the rotated files before it (long lines in [`MAX_LINE`]
/// pieces); plus the unfinished last line.
fn tail(
    live: &File,
    end: u64,
    path: &Path,
    keep: u32,
    n: usize,
) -> Result<(Vec<String>, Vec<u8>), FollowError> {
    // Chunks gathered newest first until they hold n complete lines and
    // the newline before them (n + 1 newlines: the last one ends the n-th
    // line, the unfinished line after it is not one of the n), or until
    // every file is read.
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut newlines = 0usize;
    let mut read_back = |file: &File, end: u64, path: &Path| -> Result<bool, FollowError> {
        let mut at = end;
        while at > 0 {
            let start = at.saturating_sub(TAIL_CHUNK);
            let buf = read_range(file, start, at).map_err(|source| read_err(path, source))?;
            newlines += buf.iter().filter(|&&b| b == b'\n').count();
            chunks.push(buf);
            at = start;
            if newlines > n {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut done = read_back(live, end, path)?;
    for k in 1..=keep {
        if done {
            break;
        }
        let older = rotated(path, k);
        let Some((file, meta)) = open(&older)? else {
            break;
        };
        done = read_back(&file, meta.len(), &older)?;
    }
    let mut all = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
    for chunk in chunks.iter().rev() {
        all.extend_from_slice(chunk);
    }
    let Some(last_newline) = all.iter().rposition(|&b| b == b'\n') else {
        return Ok((Vec::new(), all));
    };
    let partial = all[last_newline + 1..].to_vec();
    if n == 0 {
        return Ok((Vec::new(), partial));
    }
    // Without reaching the oldest file's start, the first piece is the end
    // of an earlier line; there are more than n pieces then.
    let lines: Vec<&[u8]> = all[..last_newline].split(|&b| b == b'\n').collect();
    let skip = lines.len().saturating_sub(n);
    let mut out = Vec::new();
    for line in &lines[skip..] {
        if line.is_empty() {
            out.push(String::new());
            continue;
        }
        out.extend(
            line.chunks(MAX_LINE)
                .map(|c| String::from_utf8_lossy(c).into_owned()),
        );
    }
    Ok((out, partial))
}

/// Every log of `service` in `log_dir` (`SERVICE-SLOT-DIGEST12.log`), at its
/// current end.
fn scan(service: &str, log_dir: &Path) -> Result<HashMap<PathBuf, Mark>, FollowError> {
    let list_err = |source| FollowError::List {
        path: log_dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(source) => return Err(list_err(source)),
    };
    let mut marks = HashMap::new();
    for entry in entries {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| is_log_of(n, service)) {
            continue;
        }
        match entry.metadata() {
            Ok(meta) if meta.is_file() => {
                marks.insert(
                    entry.path(),
                    Mark {
                        id: FileId::of(&meta),
                        offset: meta.len(),
                    },
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(read_err(&entry.path(), source)),
        }
    }
    Ok(marks)
}

/// `SERVICE-SLOT-DIGEST12.log` of this service (a service name may itself
/// contain `-`).
fn is_log_of(name: &str, service: &str) -> bool {
    let Some(stem) = name.strip_suffix(".log") else {
        return false;
    };
    let Some((rest, digest)) = stem.rsplit_once('-') else {
        return false;
    };
    let Some((owner, slot)) = rest.rsplit_once('-') else {
        return false;
    };
    owner == service
        && digest.len() == 12
        && digest.bytes().all(|b| b.is_ascii_hexdigit())
        && !slot.is_empty()
        && slot.parse::<u32>().is_ok()
}

/// `NAME.log.n`.
fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Which file `path` names now; None if it does not exist.
fn file_id(path: &Path) -> Result<Option<FileId>, FollowError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(FileId::of(&meta))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_err(path, source)),
    }
}

/// Opens `path` for reading; None if it does not exist.
fn open(path: &Path) -> Result<Option<(File, std::fs::Metadata)>, FollowError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(read_err(path, source)),
    };
    let meta = metadata(&file, path)?;
    Ok(Some((file, meta)))
}

fn metadata(file: &File, path: &Path) -> Result<std::fs::Metadata, FollowError> {
    file.metadata().map_err(|source| read_err(path, source))
}

/// Bytes `start..end` of `file`, fewer if it ends before.
fn read_range(file: &File, start: u64, end: u64) -> io::Result<Vec<u8>> {
    let len = usize::try_from(end.saturating_sub(start)).unwrap_or(usize::MAX);
    let mut buf = vec![0u8; len];
    let mut filled = 0;
    while filled < len {
        match file.read_at(&mut buf[filled..], start + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(buf)
}

fn read_err(path: &Path, source: io::Error) -> FollowError {
    FollowError::Read {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::supervisor::{LogConfig, LogFile};

    const KEEP: u32 = 3;

    fn texts(lines: &[LogLine]) -> Vec<&str> {
        lines.iter().map(|l| l.line.as_str()).collect()
    }

    fn append(path: &Path, bytes: &[u8]) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap()
            .write_all(bytes)
            .unwrap();
    }

    fn log_path(dir: &Path, slot: u32, digest: &str) -> PathBuf {
        dir.join(format!("svc-{slot}-{digest}.log"))
    }

    /// Polls until nothing more is pending; every line in order.
    fn drain(f: &mut Follower, current: &[(u32, PathBuf)]) -> Vec<LogLine> {
        let mut all = Vec::new();
        loop {
            let batch = f.poll(current).unwrap();
            all.extend(batch.lines);
            if !batch.more {
                return all;
            }
        }
    }

    #[test]
    fn the_last_lines_then_each_appended_line_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        append(&p, b"one\ntwo\nthree\n");
        let current = vec![(0, p.clone())];
        let (mut f, first) = Follower::start("svc", dir.path(), &current, 2, KEEP).unwrap();
        assert_eq!(texts(&first), ["two", "three"]);
        assert!(f.poll(&current).unwrap().lines.is_empty());
        append(&p, b"four\nfive\n");
        assert_eq!(texts(&f.poll(&current).unwrap().lines), ["four", "five"]);
        assert!(f.poll(&current).unwrap().lines.is_empty());
        append(&p, b"\n");
        assert_eq!(texts(&f.poll(&current).unwrap().lines), [""]);
    }

    #[test]
    fn an_unfinished_line_comes_out_once_its_newline_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        append(&p, b"a\nb");
        let current = vec![(0, p.clone())];
        let (mut f, first) = Follower::start("svc", dir.path(), &current, 5, KEEP).unwrap();
        assert_eq!(texts(&first), ["a"]);
        append(&p, b"c");
        assert!(f.poll(&current).unwrap().lines.is_empty());
        append(&p, b"d\ne");
        assert_eq!(texts(&f.poll(&current).unwrap().lines), ["bcd"]);
        append(&p, b"\n");
        assert_eq!(texts(&f.poll(&current).unwrap().lines), ["e"]);
        // Nothing but an unfinished line, and zero lines wanted.
        let q = log_path(dir.path(), 1, "aaaaaaaaaaaa");
        append(&q, b"x");
        let current = vec![(1, q.clone())];
        let (mut g, first) = Follower::start("svc", dir.path(), &current, 0, KEEP).unwrap();
        assert!(first.is_empty());
        append(&q, b"y\n");
        let lines = g.poll(&current).unwrap().lines;
        assert_eq!(
            lines,
            [LogLine {
                slot: 1,
                line: "xy".to_owned()
            }]
        );
    }

    #[test]
    fn follows_the_supervisors_rotation_without_losing_or_repeating_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        let log = LogFile::open(
            &p,
            LogConfig {
                max_bytes: 100,
                keep: KEEP,
            },
        )
        .unwrap();
        for i in 0..15 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let current = vec![(0, p.clone())];
        // The tail reaches back into NAME.log.1.
        let (mut f, first) = Follower::start("svc", dir.path(), &current, 8, KEEP).unwrap();
        let want: Vec<String> = (7..15).map(|i| format!("line {i:04}")).collect();
        assert_eq!(texts(&first), want);
        // Two rotations between polls (10 lines per 100-byte file).
        for i in 15..40 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let want: Vec<String> = (15..40).map(|i| format!("line {i:04}")).collect();
        assert_eq!(texts(&drain(&mut f, &current)), want);
        // Then one more, polled line by line.
        for i in 40..55 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
            assert_eq!(
                texts(&f.poll(&current).unwrap().lines),
                [format!("line {i:04}")]
            );
        }
    }

    #[test]
    fn a_file_replaced_by_a_new_smaller_one_is_read_to_its_end_then_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        append(&p, b"a long first line\n");
        let current = vec![(0, p.clone())];
        let (mut f, first) = Follower::start("svc", dir.path(), &current, 10, KEEP).unwrap();
        assert_eq!(texts(&first), ["a long first line"]);
        append(&p, b"written before the rename\n");
        std::fs::rename(&p, rotated(&p, 1)).unwrap();
        append(&p, b"new\n");
        assert_eq!(
            texts(&f.poll(&current).unwrap().lines),
            ["written before the rename", "new"]
        );
        // Rotated again: the follower reads the file it is on (now .1) to
        // its end, then the new live one.
        std::fs::rename(rotated(&p, 1), rotated(&p, 2)).unwrap();
        append(&p, b"more\n");
        std::fs::rename(&p, rotated(&p, 1)).unwrap();
        append(&p, b"x\n");
        assert_eq!(texts(&f.poll(&current).unwrap().lines), ["more", "x"]);
    }

    #[test]
    fn the_supervisors_truncation_in_place_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        let log = LogFile::open(
            &p,
            LogConfig {
                max_bytes: 100,
                keep: 0,
            },
        )
        .unwrap();
        let current = vec![(0, p.clone())];
        let (mut f, _) = Follower::start("svc", dir.path(), &current, 10, 0).unwrap();
        for i in 0..10 {
            log.write(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert_eq!(f.poll(&current).unwrap().lines.len(), 10);
        log.write(b"line 0010\n").unwrap();
        assert_eq!(texts(&f.poll(&current).unwrap().lines), ["line 0010"]);
    }

    #[test]
    fn a_new_path_is_read_from_its_start_after_the_old_one_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let old = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        let new = log_path(dir.path(), 0, "bbbbbbbbbbbb");
        append(&old, b"old 1\n");
        let (mut f, first) =
            Follower::start("svc", dir.path(), &[(0, old.clone())], 10, KEEP).unwrap();
        assert_eq!(texts(&first), ["old 1"]);
        // The switch: the new release logs while the old one still does,
        // and the old one's last line has no newline.
        append(&new, b"new 1\n");
        append(&old, b"old 2\nold, unfinished");
        let current = vec![(0, new.clone())];
        assert_eq!(
            texts(&f.poll(&current).unwrap().lines),
            ["old 2", "old, unfinished", "new 1"]
        );
        append(&old, b"never shown\n");
        append(&new, b"new 2\n");
        assert_eq!(texts(&f.poll(&current).unwrap().lines), ["new 2"]);
        // A slot that only the new release has.
        let second = log_path(dir.path(), 1, "bbbbbbbbbbbb");
        append(&second, b"slot 1\n");
        let current = vec![(0, new.clone()), (1, second.clone())];
        assert_eq!(
            f.poll(&current).unwrap().lines,
            [LogLine {
                slot: 1,
                line: "slot 1".to_owned()
            }]
        );
    }

    #[test]
    fn switching_back_to_an_older_release_does_not_replay_its_old_log() {
        let dir = tempfile::tempdir().unwrap();
        let older = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        let current_path = log_path(dir.path(), 0, "bbbbbbbbbbbb");
        append(&older, b"from last week\n");
        append(&current_path, b"serving\n");
        // Another service's log with a similar name is not ours.
        append(&dir.path().join("svc-x-0-aaaaaaaaaaaa.log"), b"other\n");
        let (mut f, first) =
            Follower::start("svc", dir.path(), &[(0, current_path.clone())], 10, KEEP).unwrap();
        assert_eq!(texts(&first), ["serving"]);
        // Rollback: the older release starts again, appending to its log.
        append(&older, b"started again\n");
        let back = vec![(0, older.clone())];
        assert_eq!(texts(&f.poll(&back).unwrap().lines), ["started again"]);
        // And forward again: the newer file resumes where it was left.
        append(&current_path, b"logged while not current\n");
        let forward = vec![(0, current_path.clone())];
        assert_eq!(
            texts(&f.poll(&forward).unwrap().lines),
            ["logged while not current"]
        );
    }

    #[test]
    fn a_large_backlog_comes_in_bounded_polls() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        append(&p, b"");
        let current = vec![(0, p.clone())];
        let (mut f, _) = Follower::start("svc", dir.path(), &current, 10, KEEP).unwrap();
        let mut text = String::new();
        let mut count = 0;
        while (text.len() as u64) < 3 * READ_BUDGET {
            text.push_str(&format!("backlog line {count:06}\n"));
            count += 1;
        }
        append(&p, text.as_bytes());
        let mut polls = 0;
        let mut lines = Vec::new();
        loop {
            let batch = f.poll(&current).unwrap();
            polls += 1;
            lines.extend(batch.lines);
            if !batch.more {
                break;
            }
        }
        assert!(polls >= 3, "{polls} polls");
        assert_eq!(lines.len(), count);
        assert_eq!(
            lines[count - 1].line,
            format!("backlog line {:06}", count - 1)
        );
    }

    #[test]
    fn an_overlong_line_comes_in_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let p = log_path(dir.path(), 0, "aaaaaaaaaaaa");
        let mut long = vec![b'x'; 2 * MAX_LINE + 10];
        long.push(b'\n');
        append(&p, &long);
        append(&p, &vec![b'y'; MAX_LINE + 1]);
        let current = vec![(0, p.clone())];
        let (mut f, first) = Follower::start("svc", dir.path(), &current, 1, KEEP).unwrap();
        let sizes: Vec<usize> = first.iter().map(|l| l.line.len()).collect();
        // The tail's line in pieces, then the full piece of the unfinished one.
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, 10, MAX_LINE]);
        append(&p, b"\n");
        assert_eq!(texts(&drain(&mut f, &current)), ["y"]);
    }

    #[test]
    fn recognises_the_logs_of_one_service() {
        assert!(is_log_of("web-0-0123456789ab.log", "web"));
        assert!(is_log_of("my-web-12-0123456789ab.log", "my-web"));
        assert!(!is_log_of("my-web-12-0123456789ab.log", "web"));
        assert!(!is_log_of("web-0-0123456789ab.log.1", "web"));
        assert!(!is_log_of("web-x-0123456789ab.log", "web"));
        assert!(!is_log_of("web-0-0123.log", "web"));
    }
}
