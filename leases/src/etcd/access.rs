//! How a client proves itself to etcd, from a config's `[etcd]` keys: TLS
//! (`ca` to check the members, `cert` and `key` for a client certificate,
//! which etcd's `--client-cert-auth` also takes as the user) and a user
//! with a password read from `password_file`.
//!
//! Checked in one place, so the agent's and the coordinator's configs (and
//! their `check-config`) accept exactly what `Etcd::connect_with` uses.
//!
//! Must never: show a password (Debug redacts it), take one from a file
//! others may read, or report only the first of several problems.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use etcd_client::ConnectOptions;

/// etcd's own limit on a user name is far higher; no real name comes close.
pub const MAX_USER_BYTES: usize = 128;
/// A password file larger than this is not a password file.
pub const MAX_PASSWORD_BYTES: u64 = 1024;

/// The `[etcd]` access keys of a config, as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccessKeys {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password_file: Option<PathBuf>,
}

/// An etcd user and its password.
#[derive(Clone, PartialEq, Eq)]
pub struct EtcdUser {
    name: String,
    password: String,
}

impl fmt::Debug for EtcdUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdUser")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl EtcdUser {
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            password: password.into(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn pair(&self) -> (String, String) {
        (self.name.clone(), self.password.clone())
    }
}

/// What a client presents to etcd. The default is nothing: plain http and
/// no user, for an etcd on a network only the fleet reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdAccess {
    tls: Option<tls::TlsMaterial>,
    user: Option<EtcdUser>,
}

impl EtcdAccess {
    pub fn new(tls: Option<tls::TlsMaterial>, user: Option<EtcdUser>) -> Self {
        Self { tls, user }
    }

    /// Whether requests go over TLS (endpoints must be `https://`).
    pub fn has_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn user(&self) -> Option<&EtcdUser> {
        self.user.as_ref()
    }

    /// Who etcd will take this client for, for logs: the user, else the
    /// client certificate's name, else nobody.
    pub fn describe(&self) -> String {
        match (&self.user, &self.tls) {
            (Some(user), _) => format!("user {:?}", user.name),
            (None, Some(tls)) => format!("certificate {}", tls.identity()),
            (None, None) => "no credentials".to_owned(),
        }
    }

    /// Checks a config's `[etcd]` access keys and loads what they name.
    /// Every problem goes to `problem(key, message)` (key as `etcd.ca`);
    /// `None` when there was one.
    pub fn from_config(
        keys: EtcdAccessKeys,
        mut problem: impl FnMut(&str, String),
    ) -> Option<Self> {
        let mut ok = true;
        let tls = if keys.ca.is_some() || keys.cert.is_some() || keys.key.is_some() {
            let paths = tls::TlsPaths::from_config(
                tls::TlsFileKeys {
                    ca: keys.ca,
                    cert: keys.cert,
                    key: keys.key,
                },
                "this client to etcd",
                "the etcd members'",
                |key, message| problem(&key.replacen("tls.", "etcd.", 1), message),
            );
            match paths.map(|p| tls::TlsMaterial::load(&p)) {
                Some(Ok(material)) => Some(material),
                Some(Err(err)) => {
                    problem("etcd", cli::chain(&err));
                    ok = false;
                    None
                }
                None => {
                    ok = false;
                    None
                }
            }
        } else {
            None
        };
        let user = match (keys.user, keys.password_file) {
            (None, None) => None,
            (Some(_), None) => {
                problem(
                    "etcd.password_file",
                    "required with etcd.user: the file holding its password".to_owned(),
                );
                ok = false;
                None
            }
            (None, Some(_)) => {
                problem(
                    "etcd.user",
                    "required with etcd.password_file: the etcd user it is the password of"
                        .to_owned(),
                );
                ok = false;
                None
            }
            (Some(name), Some(file)) => {
                let name = check_user(&name).map_err(|m| problem("etcd.user", m));
                let password = read_password(&file).map_err(|m| problem("etcd.password_file", m));
                match (name, password) {
                    (Ok(name), Ok(password)) => Some(EtcdUser { name, password }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
        };
        ok.then_some(Self { tls, user })
    }

    /// `options` with this access's TLS and user.
    pub(super) fn apply(&self, mut options: ConnectOptions, with_user: bool) -> ConnectOptions {
        if let Some(tls) = &self.tls {
            options = options.with_tls(tls.client_config());
        }
        if let (true, Some(user)) = (with_user, &self.user) {
            let (name, password) = user.pair();
            options = options
                .with_user(name, password)
                .with_auto_token_refresh(true);
        }
        options
    }
}

fn check_user(name: &str) -> Result<String, String> {
    if name.is_empty() || name.len() > MAX_USER_BYTES {
        return Err(format!("must be 1 to {MAX_USER_BYTES} bytes"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{:?} contains whitespace or control characters",
            name.escape_debug().to_string()
        ));
    }
    Ok(name.to_owned())
}

fn read_password(path: &Path) -> Result<String, String> {
    if !path.is_absolute() {
        return Err(format!("`{}` must be an absolute path", path.display()));
    }
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} may be read by others (mode {:o}): chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        ));
    }
    if meta.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "{} is {} bytes, over the {MAX_PASSWORD_BYTES}-byte limit for a password file",
            path.display(),
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(keys: EtcdAccessKeys) -> (Option<EtcdAccess>, Vec<String>) {
        let mut found = Vec::new();
        let access = EtcdAccess::from_config(keys, |k, m| found.push(format!("{k}: {m}")));
        (access, found)
    }

    #[test]
    fn nothing_given_is_no_access() {
        let (access, found) = problems(EtcdAccessKeys::default());
        assert_eq!(access, Some(EtcdAccess::default()));
        assert!(found.is_empty());
    }

    #[test]
    fn a_user_needs_a_private_password_file_and_vice_versa() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (access, found) = problems(EtcdAccessKeys {
            user: Some("agent-a".into()),
            password_file: Some(file.clone()),
            ..Default::default()
        });
        assert!(access.is_none());
        assert!(found[0].contains("chmod 600"), "{found:?}");

        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (access, found) = problems(EtcdAccessKeys {
            user: Some("agent-a".into()),
            password_file: Some(file),
            ..Default::default()
        });
        assert!(found.is_empty(), "{found:?}");
        let access = access.unwrap();
        assert_eq!(access.user(), Some(&EtcdUser::new("agent-a", "s3cret")));
        assert!(!format!("{access:?}").contains("s3cret"));

        let (_, found) = problems(EtcdAccessKeys {
            user: Some("agent-a".into()),
            ..Default::default()
        });
        assert!(
            found[0].starts_with("etcd.password_file: required"),
            "{found:?}"
        );
    }

    #[test]
    fn every_tls_problem_is_named_under_etcd() {
        let (access, found) = problems(EtcdAccessKeys {
            ca: Some("relative/ca.pem".into()),
            user: Some("bad name".into()),
            password_file: Some("/nonexistent/pw".into()),
            ..Default::default()
        });
        assert!(access.is_none());
        let all = found.join("\n");
        for key in [
            "etcd.ca:",
            "etcd.cert: required",
            "etcd.key: required",
            "etcd.user:",
            "etcd.password_file:",
        ] {
            assert!(all.contains(key), "{key} missing in\n{all}");
        }
    }
}
