//! Fails with a transient error (code `flaky`) on attempts 1 and 2 and succeeds from attempt 3,
//! to show retries. The outcome depends on the attempt number alone, so every run of the same
//! attempt behaves the same. The payload is ignored.

use wasm_runner_guest::serde::Serialize;
use wasm_runner_guest::{Context, TaskError, export_task, json, log};

/// The first attempt that succeeds. The runner's default of 3 attempts is just enough.
const SUCCEEDS_ON_ATTEMPT: u32 = 3;

#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    succeeded_on_attempt: u32,
}

fn run(ctx: &Context, _payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    if ctx.attempt < SUCCEEDS_ON_ATTEMPT {
        log::warn_with("failing on purpose", &[("attempt", &ctx.attempt)]);
        let message = format!(
            "attempt {} fails on purpose; attempt {SUCCEEDS_ON_ATTEMPT} will succeed",
            ctx.attempt
        );
        return Err(TaskError::transient(message).code("flaky"));
    }
    json::to_vec(&Output {
        succeeded_on_attempt: ctx.attempt,
    })
}

export_task!(run);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(attempt: u32) -> Context {
        Context {
            job_id: "job-1".into(),
            attempt,
            max_attempts: 5,
            task_name: "flaky".into(),
            tenant: "default".into(),
        }
    }

    #[test]
    fn first_two_attempts_fail_transiently() {
        for attempt in [1, 2] {
            let err = run(&ctx(attempt), Vec::new()).unwrap_err();
            assert!(err.is_transient());
            assert_eq!(err.error_code(), Some("flaky"));
        }
    }

    #[test]
    fn third_and_later_attempts_succeed() {
        assert_eq!(
            run(&ctx(3), Vec::new()).unwrap(),
            br#"{"succeeded_on_attempt":3}"#
        );
        assert_eq!(
            run(&ctx(4), Vec::new()).unwrap(),
            br#"{"succeeded_on_attempt":4}"#
        );
    }
}
