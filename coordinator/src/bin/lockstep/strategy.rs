//! `--strategy FILE`: read and checked locally so a typo fails before
//! anything is sent.
//!
//! Must never: interpret the strategy (the coordinator and the `rollout`
//! crate own its meaning); only check that the file is TOML with a
//! `[strategy]` table, and send its text unchanged.

use std::path::Path;

use crate::client::Failure;

/// The text to send as `strategy_toml`; empty means the service's defaults.
pub fn load(path: Option<&Path>) -> Result<String, Failure> {
    let Some(path) = path else {
        return Ok(String::new());
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::Local(format!(
            "cannot read strategy file {}: {e}; pass a readable TOML file with a [strategy] table",
            path.display()
        ))
    })?;
    check(&text).map_err(|why| Failure::Local(format!("{}: {why}", path.display())))?;
    Ok(text)
}

/// Whether `text` is TOML with a `[strategy]` table.
pub fn check(text: &str) -> Result<(), String> {
    let doc: toml::Table = toml::from_str(text)
        .map_err(|e| format!("not valid TOML ({}); fix the syntax", e.message()))?;
    match doc.get("strategy") {
        Some(toml::Value::Table(_)) => Ok(()),
        Some(_) => Err("`strategy` must be a table: write it as [strategy]".to_owned()),
        None => Err("no [strategy] table; put the strategy keys under [strategy]".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn strategy_needs_a_table() {
        assert!(check("[strategy]\nbatch = 2\n").is_ok());
        assert!(check("batch = 2\n").unwrap_err().contains("[strategy]"));
        assert!(check("strategy = 3\n").unwrap_err().contains("table"));
        assert!(check("[strategy\n").unwrap_err().contains("TOML"));
    }

    #[test]
    fn no_file_means_defaults() {
        assert_eq!(load(None).unwrap(), "");
        let missing = load(Some(Path::new("/nonexistent/strategy.toml"))).unwrap_err();
        assert!(missing.to_string().contains("cannot read strategy file"));
    }
}
