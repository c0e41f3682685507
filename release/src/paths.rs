//! Paths inside a release root: `RelativePath` (cannot escape the root) and
//! the symlink resolver that decides whether a link stays inside.
//!
//! Must never: touch anything outside the root it is given (it only lstat()s
//! and readlink()s paths below the root, never follows a link out of it).

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Most symlinks followed while resolving one path (Linux's own limit).
pub const MAX_SYMLINK_HOPS: usize = 40;

/// Why a path is not a safe relative path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path `{0}` is absolute; it must be relative to the release root")]
    Absolute(String),
    #[error("path `{0}` contains `..`; it must stay inside the release root")]
    ParentDir(String),
    #[error("path `{0}` contains a NUL byte")]
    Nul(String),
    #[error("path is empty")]
    Empty,
}

/// A path relative to a release root with only normal components: no `/`
/// prefix, no `..`; `.` and empty components are dropped. The empty path is
/// the root itself (printed as `.`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelativePath(PathBuf);

impl RelativePath {
    /// Parses raw path bytes (a tar entry name or a manifest value).
    pub fn from_bytes(raw: &[u8]) -> Result<Self, PathError> {
        let shown = || String::from_utf8_lossy(raw).into_owned();
        if raw.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if raw.first() == Some(&b'/') {
            return Err(PathError::Absolute(shown()));
        }
        let mut out = PathBuf::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err(PathError::ParentDir(shown())),
                p => out.push(OsStr::from_bytes(p)),
            }
        }
        Ok(Self(out))
    }

    /// Like [`RelativePath::from_bytes`] but the root itself (`.`, empty) is refused.
    pub fn non_empty_from_bytes(raw: &[u8]) -> Result<Self, PathError> {
        let p = Self::from_bytes(raw)?;
        if p.is_root() {
            return Err(PathError::Empty);
        }
        Ok(p)
    }

    /// The root itself.
    pub fn root() -> Self {
        Self(PathBuf::new())
    }

    pub fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    /// The path as a relative `Path` (empty for the root).
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// `root/self`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(&self.0)
    }

    /// Normal components, in order.
    pub fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.iter()
    }

    /// The parent's components (empty at top level).
    pub fn parent_components(&self) -> Vec<OsString> {
        let mut v: Vec<OsString> = self.0.iter().map(OsStr::to_owned).collect();
        v.pop();
        v
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_root() {
            f.write_str(".")
        } else {
            write!(f, "{}", self.0.display())
        }
    }
}

impl fmt::Debug for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelativePath({self})")
    }
}

/// Why a link target leaves the root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("target is absolute")]
    Absolute,
    #[error("target climbs above the release root")]
    Escapes,
    #[error("more than {MAX_SYMLINK_HOPS} symlinks on the way")]
    TooManyLinks,
    #[error("cannot read link: {0}")]
    Io(String),
}

/// Resolves `target` as the kernel would for a symlink living in directory
/// `dir` (components relative to `root`), following symlinks found on disk
/// but treating `root` as `/`-like: any step above it is an escape. Missing
/// components are resolved lexically (nothing below them can be a link).
pub fn resolve_within(root: &Path, dir: &[OsString], target: &Path) -> Result<(), ResolveError> {
    let mut stack: Vec<OsString> = dir.to_vec();
    let mut pending: Vec<OsString> = Vec::new(); // reversed: pop() gives the next component
    push_target(&mut pending, target)?;
    let mut hops = 0usize;
    while let Some(part) = pending.pop() {
        if part == ".." {
            if stack.pop().is_none() {
                return Err(ResolveError::Escapes);
            }
            continue;
        }
        stack.push(part);
        let here: PathBuf = stack.iter().fold(root.to_path_buf(), |p, c| p.join(c));
        match here.symlink_metadata() {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(ResolveError::TooManyLinks);
                }
                let next =
                    std::fs::read_link(&here).map_err(|e| ResolveError::Io(e.to_string()))?;
                stack.pop();
                push_target(&mut pending, &next)?;
            }
            _ => {}
        }
    }
    Ok(())
}

fn push_target(pending: &mut Vec<OsString>, target: &Path) -> Result<(), ResolveError> {
    let mut parts = Vec::new();
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err(ResolveError::Absolute),
            Component::CurDir => {}
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::Normal(n) => parts.push(n.to_owned()),
        }
    }
    pending.extend(parts.into_iter().rev());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn relative_path_normalises_and_refuses_escapes() {
        assert_eq!(
            RelativePath::from_bytes(b"./a//b/").unwrap().to_string(),
            "a/b"
        );
        assert!(RelativePath::from_bytes(b".").unwrap().is_root());
        assert!(matches!(
            RelativePath::from_bytes(b"/etc/passwd"),
            Err(PathError::Absolute(_))
        ));
        assert!(matches!(
            RelativePath::from_bytes(b"a/../../x"),
            Err(PathError::ParentDir(_))
        ));
        assert!(matches!(
            RelativePath::from_bytes(b"a\0b"),
            Err(PathError::Nul(_))
        ));
        assert_eq!(
            RelativePath::non_empty_from_bytes(b"./"),
            Err(PathError::Empty)
        );
    }

    #[test]
    fn resolver_follows_links_on_disk() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("lib")).unwrap();
        // Inside: ../lib from bin/ stays in the root.
        assert_eq!(
            resolve_within(r, &["bin".into()], Path::new("../lib/x")),
            Ok(())
        );
        assert_eq!(
            resolve_within(r, &[], Path::new("../x")),
            Err(ResolveError::Escapes)
        );
        assert_eq!(
            resolve_within(r, &[], Path::new("/etc")),
            Err(ResolveError::Absolute)
        );
        // `here` -> `.`: lexically `here/..` is the root, physically it is its parent.
        symlink(".", r.join("here")).unwrap();
        assert_eq!(
            resolve_within(r, &[], Path::new("here/..")),
            Err(ResolveError::Escapes)
        );
        symlink("loop", r.join("loop")).unwrap();
        assert_eq!(
            resolve_within(r, &[], Path::new("loop")),
            Err(ResolveError::TooManyLinks)
        );
    }
}
