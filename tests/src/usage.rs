//! `Usage`: what a process under test has cost so far, read from
//! `/proc` (Linux): CPU seconds and peak resident memory. For benches.

use crate::HarnessError;

/// A process's CPU time and peak RSS at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User + system CPU seconds since it started.
    pub cpu_seconds: f64,
    /// Its peak resident set (VmHWM), bytes.
    pub peak_rss_bytes: u64,
    /// Its resident set now (VmRSS), bytes.
    pub rss_bytes: u64,
}

impl Usage {
    /// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
    pub fn of(pid: u32) -> Result<Self, HarnessError> {
        let read = |file: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/{file}"))
                .map_err(|e| HarnessError::Fixture(format!("cannot read /proc/{pid}/{file}: {e}")))
        };
        let stat = read("stat")?;
        let status = read("status")?;
        let bad =
            |what: &str| HarnessError::Fixture(format!("/proc/{pid}/{what} is not as expected"));
        // After the command name (which may hold spaces and parentheses):
        // state first, utime the 12th field and stime the 13th.
        let after = stat.rsplit_once(')').ok_or_else(|| bad("stat"))?.1;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| -> Result<u64, HarnessError> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| bad("stat"))
        };
        let ticks = field(11)? + field(12)?;
        let kb = |key: &str| -> Result<u64, HarnessError> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("status"))
        };
        Ok(Self {
            cpu_seconds: ticks as f64 / clock_ticks_per_second(),
            peak_rss_bytes: kb("VmHWM:")? * 1024,
            rss_bytes: kb("VmRSS:")? * 1024,
        })
    }
}

/// USER_HZ: 100 on every Linux this runs on; `getconf` says for sure.
fn clock_ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}
