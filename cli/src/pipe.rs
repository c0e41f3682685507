//! A command-line tool whose reader goes away ends quietly.
//!
//! Rust ignores SIGPIPE, so `println!` into a closed pipe panics ("failed
//! printing to stdout: Broken pipe"). Restoring SIGPIPE's default would end
//! the tool as other Unix tools end, but also on any socket write to a peer
//! that closed (tokio writes sockets with writev, which raises it), so a
//! refused TLS handshake would kill the CLI without a word. Instead a panic
//! hook recognises that one panic and exits with 141 (128 + SIGPIPE, what
//! a shell shows for `ls | head`'s `ls`), printing nothing; every other
//! panic goes to the default hook.
//!
//! Must never: swallow any other panic.

use std::process;

/// The exit status of a tool ended by SIGPIPE, as shells report it.
pub const BROKEN_PIPE_EXIT: i32 = 128 + 13;

/// Installs the hook; call it first in `main`.
pub fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message.is_some_and(is_closed_stdout) {
            process::exit(BROKEN_PIPE_EXIT);
        }
        default(info);
    }));
}

/// Whether a panic message is `print!`'s on a closed stdout.
fn is_closed_stdout(message: &str) -> bool {
    message.starts_with("failed printing to stdout") && message.contains("Broken pipe")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prints_into_a_closed_pipe_are_recognised() {
        assert!(is_closed_stdout(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!is_closed_stdout(
            "failed printing to stdout: No space left on device (os error 28)"
        ));
        assert!(!is_closed_stdout("index out of bounds"));
    }
}
