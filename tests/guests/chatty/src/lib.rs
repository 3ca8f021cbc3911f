//! Writes about 10 MiB to stdout and then 10 MiB to stderr, in short lines, and returns
//! `done`. Tests that the runner bounds what it keeps of a task's output without failing the
//! task.

use std::io::{self, Write};

use wasm_runner_guest::{Context, TaskError, export_task, log};

/// How much to write to each stream.
const BYTES_PER_STREAM: usize = 10 * 1024 * 1024;

/// Each line is 64 bytes with its newline, so the streams split evenly into lines.
const LINE_BYTES: usize = 64;

fn run(_ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    let stdout = flood(&mut io::stdout().lock(), "stdout");
    let stderr = flood(&mut io::stderr().lock(), "stderr");
    log::info_with(
        "finished writing",
        &[("stdout_bytes", &stdout), ("stderr_bytes", &stderr)],
    );
    Ok(b"done".to_vec())
}

/// Writes up to `BYTES_PER_STREAM` bytes and returns how many were accepted.
///
/// A host may refuse writes once its buffer is full; that ends the flood on this stream
/// instead of failing the task, which is exactly what the runner must allow.
fn flood(out: &mut impl Write, stream: &str) -> usize {
    let mut written = 0;
    let mut line_no = 0_u64;
    while written < BYTES_PER_STREAM {
        let line = line(stream, line_no);
        if out.write_all(line.as_bytes()).is_err() {
            return written;
        }
        written += line.len();
        line_no += 1;
    }
    // An error here only means the tail of the output was lost.
    let _ = out.flush();
    written
}

fn line(stream: &str, line_no: u64) -> String {
    let mut line = format!("{stream} line {line_no:>10} ");
    line.extend(std::iter::repeat_n('.', LINE_BYTES - 1 - line.len()));
    line.push('\n');
    line
}

export_task!(run);
