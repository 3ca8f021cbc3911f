//! Never returns: with payload `stdout` it writes lines to stdout without end, ignoring every
//! error; with `log` it calls the host's log import without end; with `stderr-log` it does
//! both in turn. Tests that the timeout stops a guest whose loop is made of host calls and
//! that what the host keeps of its output stays bounded however long it runs.

use std::io::Write;

use wasm_runner_guest::{Context, TaskError, export_task, log};

fn run(_ctx: &Context, payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    let stdout = payload != b"log";
    let log = payload != b"stdout";
    let mut out = std::io::stdout().lock();
    let mut seq = 0_u64;
    loop {
        if stdout {
            // A refused write is ignored on purpose: this guest keeps trying.
            let _ = writeln!(out, "endless line {seq}");
        }
        if log {
            log::info_with("endless", &[("seq", &seq)]);
        }
        seq = seq.wrapping_add(1);
    }
}

export_task!(run);
