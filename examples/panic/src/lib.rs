//! Logs a record and then panics. Guests are built with `panic = "abort"`, so the panic
//! message goes to the task's stderr and the attempt ends in a trap, which the runner treats
//! as a permanent failure: retrying would hit the same bug.

use wasm_runner_guest::{Context, TaskError, export_task, log};

fn run(ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    log::error_with("about to panic on purpose", &[("attempt", &ctx.attempt)]);
    panic!("example-panic panics on purpose to show how the runner reports a trap");
}

export_task!(run);
