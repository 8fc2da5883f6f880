//! Finding and reporting what is wrong with a config file: every problem
//! at once, each with where it is (`server.listen`, `rule "api" limit`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use floodgate_core::duration::parse_duration;

/// Fields a section does not know, collected rather than fatal so one pass
/// finds every mistake.
pub(super) type Unknown = BTreeMap<String, toml::Value>;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: `server.listen`, `rule "api" limit`, ...
    pub at: String,
    /// What is wrong, and what would be right.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The file, when there is one.
    pub file: Option<PathBuf>,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_deref()
            .map_or_else(|| "config".to_owned(), |p| p.display().to_string());
        let n = self.problems.len();
        write!(f, "{file}: {n} problem{}", if n == 1 { "" } else { "s" })?;
        for p in &self.problems {
            write!(f, "\n  {file}: {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Collects problems while validating.
#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, at: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            at: at.into(),
            message: message.into(),
        });
    }

    pub(super) fn unknown(&mut self, section: &str, unknown: &Unknown, known: &[&str]) {
        for name in unknown.keys() {
            // A name TOML writes bare as it is; any other (empty, spaces,
            // newlines) quoted, so the place is never blank or split.
            let bare = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let name = if bare {
                name.clone()
            } else {
                format!("{name:?}")
            };
            let at = if section.is_empty() {
                name
            } else {
                format!("{section} {name}")
            };
            self.add(
                at,
                format!("unknown field (expected one of: {})", known.join(", ")),
            );
        }
    }

    pub(super) fn duration(
        &mut self,
        at: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) if !d.is_zero() => d,
            Some(Ok(_)) => {
                self.add(at, "must be longer than zero");
                default
            }
            Some(Err(e)) => {
                self.add(at, e);
                default
            }
        }
    }
}

/// `line L, column C` of byte `offset` in `text`, for TOML syntax errors.
pub(super) fn line_col(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    format!("line {line}, column {col}")
}

pub(super) fn parse_addr(p: &mut Problems, at: &str, text: &str) -> Option<SocketAddr> {
    match text.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.add(
                at,
                format!("{text:?} is not an address like \"127.0.0.1:8080\" or \"[::1]:8080\""),
            );
            None
        }
    }
}
