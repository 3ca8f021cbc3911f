//! The `host-log` interface: records a task logs become part of its job's log.
//!
//! Records are bounded like stdout and stderr: each one is cut to a maximum length, and past a
//! maximum count the first and the most recent records are kept. They are also emitted as
//! tracing events under the `wasm_runner::guest` target.

use std::collections::VecDeque;
use std::time::Instant;

use crate::job::{LogLevel, LogRecord};
use crate::runtime::bindings::wasm_runner::task::host_log::{Host, Level};
use crate::runtime::state::JobState;

/// The longest message kept, in bytes; longer ones are cut at a character boundary.
const MAX_MESSAGE_BYTES: usize = 4 << 10;
/// The most fields kept per record.
const MAX_FIELDS: usize = 32;
/// The longest field key or value kept, in bytes.
const MAX_FIELD_BYTES: usize = 1 << 10;
/// How many records are kept from the start of the attempt and from its end.
const HEAD_RECORDS: usize = 200;
const TAIL_RECORDS: usize = 800;

/// The records of one attempt, bounded.
#[derive(Debug)]
pub(crate) struct LogBuffer {
    started: Instant,
    head: Vec<LogRecord>,
    tail: VecDeque<LogRecord>,
    dropped: u64,
}

impl LogBuffer {
    pub(crate) fn new(started: Instant) -> Self {
        LogBuffer {
            started,
            head: Vec::new(),
            tail: VecDeque::new(),
            dropped: 0,
        }
    }

    fn push(&mut self, record: LogRecord) {
        if self.head.len() < HEAD_RECORDS {
            self.head.push(record);
            return;
        }
        if self.tail.len() == TAIL_RECORDS {
            self.tail.pop_front();
            self.dropped += 1;
        }
        self.tail.push_back(record);
    }

    /// The kept records, oldest first, and how many were dropped.
    pub(crate) fn finish(self) -> (Vec<LogRecord>, u64) {
        let mut records = self.head;
        records.extend(self.tail);
        (records, self.dropped)
    }
}

impl Host for JobState {
    fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            Level::Trace => LogLevel::Trace,
            Level::Debug => LogLevel::Debug,
            Level::Info => LogLevel::Info,
            Level::Warn => LogLevel::Warn,
            Level::Error => LogLevel::Error,
        };
        let record = LogRecord {
            at_ms: self.log.started.elapsed().as_millis() as u64,
            level,
            message: truncate(message, MAX_MESSAGE_BYTES),
            fields: fields
                .into_iter()
                .take(MAX_FIELDS)
                .map(|(k, v)| (truncate(k, MAX_FIELD_BYTES), truncate(v, MAX_FIELD_BYTES)))
                .collect(),
        };
        tracing::debug!(
            target: "wasm_runner::guest",
            level = level.as_str(),
            message = %record.message,
            fields = ?record.fields,
        );
        self.log.push(record);
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize) -> LogRecord {
        LogRecord {
            at_ms: 0,
            level: LogLevel::Info,
            message: n.to_string(),
            fields: Vec::new(),
        }
    }

    #[test]
    fn keeps_first_and_latest_records() {
        let mut buffer = LogBuffer::new(Instant::now());
        let total = HEAD_RECORDS + TAIL_RECORDS + 50;
        for n in 0..total {
            buffer.push(record(n));
        }
        let (records, dropped) = buffer.finish();
        assert_eq!(dropped, 50);
        assert_eq!(records.len(), HEAD_RECORDS + TAIL_RECORDS);
        assert_eq!(records[0].message, "0");
        assert_eq!(
            records[HEAD_RECORDS].message,
            (HEAD_RECORDS + 50).to_string()
        );
        assert_eq!(records.last().unwrap().message, (total - 1).to_string());
    }

    #[test]
    fn truncates_at_a_character_boundary() {
        assert_eq!(truncate("héllo".to_owned(), 2), "h…");
        assert_eq!(truncate("short".to_owned(), 10), "short");
    }
}
