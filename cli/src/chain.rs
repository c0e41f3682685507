//! How an error is told to a person: the error and every cause, on one line.

use std::error::Error;
use std::fmt;

/// `what failed: why: why that`, each cause once.
///
/// Errors in this workspace either print their cause inline (`…: {source}`)
/// or leave it to `source()`; a reader must see the cause either way, and
/// never twice. So a cause whose text the line already holds is skipped.
/// Use it wherever an error becomes text someone reads: a gRPC status
/// message, a command's last line, a log field.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut cause = self.0.source();
        while let Some(error) = cause {
            let text = error.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            cause = error.source();
        }
        f.write_str(&line)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error's chain as a `String` (for a gRPC status message).
pub fn chain(error: &(dyn Error + '_)) -> String {
    Chain(error).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}")]
    struct Hidden {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot load config: {source}")]
    struct Inline {
        #[source]
        source: Hidden,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("agent failed to start")]
    struct Top {
        #[source]
        source: Inline,
    }

    fn denied() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::PermissionDenied, "permission denied")
    }

    #[test]
    fn a_cause_left_to_source_is_shown() {
        let e = Hidden {
            path: "/etc/x",
            source: denied(),
        };
        assert_eq!(chain(&e), "cannot read /etc/x: permission denied");
    }

    #[test]
    fn a_cause_printed_inline_is_not_repeated() {
        let e = Top {
            source: Inline {
                source: Hidden {
                    path: "/etc/x",
                    source: denied(),
                },
            },
        };
        assert_eq!(
            chain(&e),
            "agent failed to start: cannot load config: cannot read /etc/x: permission denied"
        );
    }
}
