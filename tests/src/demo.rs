//! Release bundles of the demo app, built the way operators build them.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::{HarnessError, workspace_bin};

/// What a demo release differs in.
#[derive(Debug, Clone)]
pub struct DemoRelease {
    pub version: String,
    /// The `[[listen]]` port every instance shares.
    pub port: u16,
    /// `socket-handover`, `reuseport` or `none`.
    pub overlap: &'static str,
    pub instances: u32,
    /// Extra lines for the app's `config.toml` (e.g. a key it refuses).
    pub extra_config: String,
    /// Bytes of incompressible filler (`payload.bin`) making the bundle
    /// that much bigger; 0: none.
    pub payload: usize,
}

impl DemoRelease {
    pub fn new(version: &str, port: u16) -> Self {
        Self {
            version: version.to_owned(),
            port,
            overlap: "socket-handover",
            instances: 1,
            extra_config: String::new(),
            payload: 0,
        }
    }

    /// `bytes` of incompressible filler, so the bundle is that much bigger
    /// than the app (e.g. too big for a host's disk).
    pub fn with_payload(mut self, bytes: usize) -> Self {
        self.payload = bytes;
        self
    }

    /// The incident's failure: a config key this version does not know.
    pub fn with_unknown_config_key(mut self) -> Self {
        self.extra_config
            .push_str("metrics_endpoint = \"http://metrics.internal:9090\"\n");
        self
    }

    pub fn with_overlap(mut self, overlap: &'static str) -> Self {
        self.overlap = overlap;
        self
    }

    pub fn with_config(mut self, lines: &str) -> Self {
        self.extra_config.push_str(lines);
        self
    }

    /// Builds `dir/demo-<version>.lsr` and returns its path.
    pub fn build(&self, dir: &Path) -> Result<PathBuf, HarnessError> {
        let io = |what: &str, e: std::io::Error| HarnessError::Fixture(format!("{what}: {e}"));
        let tree = dir.join(format!("tree-{}", self.version));
        std::fs::create_dir_all(tree.join("bin")).map_err(|e| io("create release tree", e))?;
        let app = tree.join("bin/demo-app");
        std::fs::copy(workspace_bin("demo-app")?, &app).map_err(|e| io("copy demo-app", e))?;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io("chmod demo-app", e))?;
        let manifest = format!(
            r#"[release]
service = "demo"
version = "{version}"

[run]
command = ["bin/demo-app", "--config", "config.toml"]
instances = {instances}
stop_timeout = "10s"

[[listen]]
name = "http"
address = "127.0.0.1:{port}"

[readiness]
notify = true
interval = "100ms"
timeout = "1s"
healthy_deadline = "20s"

[overlap]
mode = "{overlap}"
"#,
            version = self.version,
            instances = self.instances,
            port = self.port,
            overlap = self.overlap,
        );
        std::fs::write(tree.join("release.toml"), manifest)
            .map_err(|e| io("write release.toml", e))?;
        let config = format!(
            "version = \"{}\"\nlisten = \"127.0.0.1:{}\"\n{}",
            self.version, self.port, self.extra_config
        );
        std::fs::write(tree.join("config.toml"), config).map_err(|e| io("write config.toml", e))?;
        if self.payload > 0 {
            std::fs::write(tree.join("payload.bin"), filler(self.payload))
                .map_err(|e| io("write payload.bin", e))?;
        }
        let out = dir.join(format!("demo-{}.lsr", self.version));
        release::bundle::build_file(&tree, &out, None).map_err(|e| {
            HarnessError::Fixture(format!("build demo release {}: {e}", self.version))
        })?;
        Ok(out)
    }
}

/// `len` pseudo-random bytes (xorshift64*): zstd cannot shrink them, so a
/// bundle carrying them is at least that big.
fn filler(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}
