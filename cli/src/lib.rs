//! What every Lockstep binary's command line shares.
//!
//! **Docs.** Man pages and shell completions for a binary, from its clap
//! definition, so the packages' docs can never drift from the flags the
//! binary takes. Each binary calls [`generate_if_asked`] first thing in
//! `main`; run as
//! `BIN __generate-docs DIR` it writes
//!
//! ```text
//! DIR/man/BIN.1, DIR/man/BIN-SUBCOMMAND.1 …   (clap_mangen, one page per command)
//! DIR/completions/BIN.bash, _BIN, BIN.fish     (clap_complete)
//! ```
//!
//! and exits; otherwise it returns `None` and the binary runs as usual.
//! `scripts/package` calls it for every binary before `cargo deb`.
//!
//! **A reader that goes away** (`lockstep history | head`): the command-line
//! tools call [`end_quietly_when_stdout_closes`] first, so they end as a
//! Unix tool ends on SIGPIPE rather than with a panic (see `pipe`).
//!
//! **Errors told to people** ([`Chain`]): an error and its causes on one
//! line, each cause once, for every place an error becomes text someone
//! reads (a command's last line, a gRPC status message, a log field).
//!
//! Must never: run for any other argument list (it would shadow a real
//! command), or write outside DIR.

#![forbid(unsafe_code)]

mod chain;
mod pipe;

pub use chain::{Chain, chain};
pub use pipe::end_quietly_when_stdout_closes;

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The hidden first argument that asks for the docs.
pub const GENERATE_ARG: &str = "__generate-docs";

/// Shells whose completions the packages ship.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes the docs and returns the exit code when the process was run as
/// `BIN __generate-docs DIR`; `None` otherwise.
pub fn generate_if_asked(command: impl FnOnce() -> clap::Command) -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(GENERATE_ARG.as_ref()) {
        return None;
    }
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: BIN {GENERATE_ARG} DIR");
        return Some(ExitCode::from(2));
    };
    Some(match generate(command(), &dir) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cannot write docs to {}: {err}", dir.display());
            ExitCode::FAILURE
        }
    })
}

/// Writes every man page and completion file of `command` below `dir`.
pub fn generate(mut command: clap::Command, dir: &Path) -> io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    // `BIN help X` is `BIN X --help`: no page of its own.
    clap_mangen::generate_to(command.clone().disable_help_subcommand(true), &man)?;
    command.build();
    let name = command.get_name().to_owned();
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut command, &name, &completions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> clap::Command {
        clap::Command::new("sample")
            .about("a sample")
            .subcommand(clap::Command::new("run").about("runs"))
    }

    #[test]
    fn writes_a_page_per_command_and_a_completion_per_shell() -> io::Result<()> {
        let dir = tempdir()?;
        generate(sample(), &dir)?;
        for file in [
            "man/sample.1",
            "man/sample-run.1",
            "completions/sample.bash",
            "completions/_sample",
            "completions/sample.fish",
        ] {
            let text = std::fs::read_to_string(dir.join(file))?;
            assert!(text.contains("sample"), "{file} does not name the binary");
        }
        assert!(
            !dir.join("man/sample-help.1").exists(),
            "`help` is not a command of its own"
        );
        std::fs::remove_dir_all(&dir)
    }

    fn tempdir() -> io::Result<PathBuf> {
        let dir = std::env::temp_dir().join(format!("clidocs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
