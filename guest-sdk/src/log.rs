//! Logging into the job's log through the host's `host-log` import.
//!
//! Messages should be short and constant; put values in fields, which the host keeps apart
//! from the message so they can be searched:
//!
//! ```
//! use wasm_runner_guest::log;
//!
//! let rows = 42;
//! log::info("import finished");
//! log::info_with("rows imported", &[("rows", &rows), ("table", &"orders")]);
//! ```
//!
//! The host bounds how many records it keeps per job, so avoid logging inside hot loops.
//! When the SDK is compiled for anything other than WebAssembly, as in a task's native unit
//! tests, there is no host to call and records are written to stderr instead.

use std::fmt::{self, Display};

use crate::bindings::wasm_runner::task::host_log;

/// How important a log record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very detailed tracing output.
    Trace,
    /// Information useful when debugging the task.
    Debug,
    /// Normal progress worth keeping.
    Info,
    /// Something unexpected that the task handled.
    Warn,
    /// Something failed.
    Error,
}

impl Level {
    /// The level's lowercase name, as the WIT `level` enum spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

impl Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Level> for host_log::Level {
    fn from(level: Level) -> Self {
        match level {
            Level::Trace => host_log::Level::Trace,
            Level::Debug => host_log::Level::Debug,
            Level::Info => host_log::Level::Info,
            Level::Warn => host_log::Level::Warn,
            Level::Error => host_log::Level::Error,
        }
    }
}

/// Appends one record with key/value fields to the job's log.
///
/// Field values are formatted with [`Display`] before they are sent, so numbers, strings and
/// any type implementing `Display` can be mixed in one slice.
pub fn record(level: Level, message: &str, fields: &[(&str, &dyn Display)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(key, value)| ((*key).to_owned(), value.to_string()))
        .collect();
    emit(level, message, &fields);
}

#[cfg(target_arch = "wasm32")]
fn emit(level: Level, message: &str, fields: &[(String, String)]) {
    host_log::log(level.into(), message, fields);
}

// Natively the generated import has no host behind it and would abort, so native builds
// (a task's unit tests, mostly) print the record instead.
#[cfg(not(target_arch = "wasm32"))]
fn emit(level: Level, message: &str, fields: &[(String, String)]) {
    eprintln!("{}", format_line(level, message, fields));
}

#[cfg(not(target_arch = "wasm32"))]
fn format_line(level: Level, message: &str, fields: &[(String, String)]) -> String {
    let mut line = format!("[{level}] {message}");
    for (key, value) in fields {
        line.push_str(&format!(" {key}={value:?}"));
    }
    line
}

/// Logs `message` at [`Level::Trace`].
pub fn trace(message: &str) {
    record(Level::Trace, message, &[]);
}

/// Logs `message` at [`Level::Debug`].
pub fn debug(message: &str) {
    record(Level::Debug, message, &[]);
}

/// Logs `message` at [`Level::Info`].
pub fn info(message: &str) {
    record(Level::Info, message, &[]);
}

/// Logs `message` at [`Level::Warn`].
pub fn warn(message: &str) {
    record(Level::Warn, message, &[]);
}

/// Logs `message` at [`Level::Error`].
pub fn error(message: &str) {
    record(Level::Error, message, &[]);
}

/// Logs `message` with `fields` at [`Level::Trace`]; see [`record`].
pub fn trace_with(message: &str, fields: &[(&str, &dyn Display)]) {
    record(Level::Trace, message, fields);
}

/// Logs `message` with `fields` at [`Level::Debug`]; see [`record`].
pub fn debug_with(message: &str, fields: &[(&str, &dyn Display)]) {
    record(Level::Debug, message, fields);
}

/// Logs `message` with `fields` at [`Level::Info`]; see [`record`].
pub fn info_with(message: &str, fields: &[(&str, &dyn Display)]) {
    record(Level::Info, message, fields);
}

/// Logs `message` with `fields` at [`Level::Warn`]; see [`record`].
pub fn warn_with(message: &str, fields: &[(&str, &dyn Display)]) {
    record(Level::Warn, message, fields);
}

/// Logs `message` with `fields` at [`Level::Error`]; see [`record`].
pub fn error_with(message: &str, fields: &[(&str, &dyn Display)]) {
    record(Level::Error, message, fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_one_to_one_onto_wit_levels() {
        let pairs = [
            (Level::Trace, host_log::Level::Trace),
            (Level::Debug, host_log::Level::Debug),
            (Level::Info, host_log::Level::Info),
            (Level::Warn, host_log::Level::Warn),
            (Level::Error, host_log::Level::Error),
        ];
        for (ours, wit) in pairs {
            assert_eq!(host_log::Level::from(ours), wit);
        }
    }

    #[test]
    fn native_line_shows_level_message_and_quoted_fields() {
        let fields = vec![("rows".to_owned(), "42".to_owned())];
        let line = format_line(Level::Warn, "slow import", &fields);
        assert_eq!(line, r#"[warn] slow import rows="42""#);
    }

    #[test]
    fn record_accepts_mixed_field_types() {
        let rows = 3_u32;
        let table = String::from("orders");
        info_with("imported", &[("rows", &rows), ("table", &table)]);
    }
}
