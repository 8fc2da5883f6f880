//! The logs of the processes the tests start: the rules every floodgate
//! log holds to, and reading log files (counting a line, the last lines,
//! the warnings of each when a test fails).

use std::path::{Path, PathBuf};

/// What every log a floodgate process writes to a file must hold to: no
/// terminal escape codes, and JSON lines that are objects with each key
/// once (log pipelines keep one of two same-named keys, or reject the line).
pub(crate) fn check_log_lines(log: &str) -> Result<(), String> {
    for line in log.lines() {
        if line.contains('\u{1b}') {
            return Err(format!("terminal escape code in {line:?}"));
        }
        if line.starts_with('{') {
            serde_json::from_str::<StrictJson>(line).map_err(|e| format!("{e} in {line}"))?;
        }
    }
    Ok(())
}

/// Any JSON value, refused when an object names a key twice (serde_json's
/// own `Value` keeps the last one silently).
pub(crate) struct StrictJson;

impl<'de> serde::Deserialize<'de> for StrictJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictJson;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictJson, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("key {key:?} twice")));
            }
            map.next_value::<StrictJson>()?;
        }
        Ok(StrictJson)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictJson, A::Error> {
        while seq.next_element::<StrictJson>()?.is_some() {}
        Ok(StrictJson)
    }

    fn visit_bool<E>(self, _: bool) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_i64<E>(self, _: i64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_u64<E>(self, _: u64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_f64<E>(self, _: f64) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_str<E>(self, _: &str) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
    fn visit_unit<E>(self) -> Result<StrictJson, E> {
        Ok(StrictJson)
    }
}

/// How many times `needle` occurs in `file` (0 if it cannot be read).
pub(crate) fn count_in(file: &Path, needle: &str) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.matches(needle).count())
        .unwrap_or(0)
}

/// The last `lines` lines of `file`, headed by its name.
pub(crate) fn tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- {} (last {lines} lines)\n{}",
        file.display(),
        all[start..].join("\n")
    )
}

/// If the test is failing, prints each watched log's warnings and errors
/// (nginx's `[error]`, floodgate's `WARN`/`ERROR`) and its last lines.
#[derive(Default)]
pub(crate) struct LogsOnFailure(Vec<PathBuf>);

/// Fails the test unless every line of the log file at `path` passes
/// [`check_log_lines`].
pub(crate) fn assert_log_lines_clean(path: &std::path::Path) {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    assert!(!text.is_empty(), "{} is empty", path.display());
    if let Err(e) = check_log_lines(&text) {
        panic!("{}: {e}", path.display());
    }
}

impl LogsOnFailure {
    pub(crate) fn watch(&mut self, file: PathBuf) {
        self.0.push(file);
    }
}

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for f in &self.0 {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| {
                    [
                        "[error]", "[crit]", "[alert]", "[warn]", "WARN", "ERROR", "panicked",
                    ]
                    .iter()
                    .any(|w| l.contains(w))
                })
                .collect();
            eprintln!(
                "--- {}: {} warning/error lines (first 40)\n{}",
                f.display(),
                problems.len(),
                problems[..problems.len().min(40)].join("\n")
            );
            eprintln!("{}", tail(f, 15));
        }
    }
}
