//! How a service reports the error that stops it: what `main` prints before exiting.

use std::fmt;

/// The error a service's `main` returns. Printed as the error's message, then, under
/// "Caused by:", each cause that adds something to the message before it.
///
/// The services' error types put their source into their own message (`"API keys: {0}"`) so
/// that a log line or a gRPC status carries the whole story; `anyhow` would then print every
/// cause twice. No backtrace is printed: these errors are about configuration and the
/// environment (a port taken, a file missing, a database out of reach), not about the code.
pub struct Report(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Report {
    fn from(error: E) -> Report {
        Report(error.into())
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut above = self.0.to_string();
        let mut causes = Vec::new();
        for cause in self.0.chain().skip(1) {
            let text = cause.to_string();
            if !above.contains(&text) {
                causes.push(text.clone());
            }
            above = text;
        }
        match causes.as_slice() {
            [] => Ok(()),
            [cause] => write!(f, "\n\nCaused by:\n    {cause}"),
            causes => {
                write!(f, "\n\nCaused by:")?;
                for (i, cause) in causes.iter().enumerate() {
                    write!(f, "\n    {i}: {cause}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[derive(Debug, thiserror::Error)]
    enum Startup {
        #[error("API keys: {0}")]
        Keys(#[from] Unreadable),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Unreadable {
        path: &'static str,
        source: std::io::Error,
    }

    fn missing() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory")
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let error = Startup::from(Unreadable {
            path: "/etc/keys",
            source: missing(),
        });
        assert_eq!(
            format!("{:?}", Report::from(error)),
            "API keys: cannot read /etc/keys: No such file or directory"
        );
    }

    #[test]
    fn causes_that_add_something_are_listed_under_caused_by() {
        let one: anyhow::Result<()> = Err(missing()).context("cannot listen on 127.0.0.1:1");
        assert_eq!(
            format!("{:?}", Report::from(one.unwrap_err())),
            "cannot listen on 127.0.0.1:1\n\nCaused by:\n    No such file or directory"
        );
        let two = Err::<(), _>(missing())
            .context("opening the model")
            .context("model minilm-l6");
        assert_eq!(
            format!("{:?}", Report::from(two.unwrap_err())),
            "model minilm-l6\n\nCaused by:\n    0: opening the model\n    1: No such file or directory"
        );
    }
}
