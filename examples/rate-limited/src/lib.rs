//! Behaves like a client of a rate-limited API: until a given attempt it fails with a transient
//! error, code `rate-limited`, that asks the runner to wait before retrying.
//!
//! Payload (every field optional; an empty payload means all defaults):
//! `{"retry_after_ms": 1500, "succeed_on_attempt": 2}`.

use std::time::Duration;

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_task, json, log};

#[derive(Debug, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde", default)]
struct Input {
    /// The delay to ask for, in milliseconds.
    retry_after_ms: u64,
    /// The first attempt that gets through.
    succeed_on_attempt: u32,
}

impl Default for Input {
    fn default() -> Self {
        Self {
            retry_after_ms: 1500,
            succeed_on_attempt: 2,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    succeeded_on_attempt: u32,
}

fn run(ctx: &Context, payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
    // `wasm-runner run` without `--payload` sends no bytes; treat that as "use the defaults".
    let input: Input = if payload.is_empty() {
        Input::default()
    } else {
        json::parse(&payload)?
    };
    if input.succeed_on_attempt == 0 {
        let err = TaskError::permanent("`succeed_on_attempt` counts from 1");
        return Err(err.code(json::INVALID_PAYLOAD));
    }

    if ctx.attempt < input.succeed_on_attempt {
        log::warn_with(
            "rate limited",
            &[
                ("retry_after_ms", &input.retry_after_ms),
                ("attempt", &ctx.attempt),
            ],
        );
        return Err(
            TaskError::transient("too many requests to the simulated upstream")
                .code("rate-limited")
                .retry_after(Duration::from_millis(input.retry_after_ms)),
        );
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
            task_name: "rate-limited".into(),
            tenant: "default".into(),
        }
    }

    #[test]
    fn defaults_limit_only_the_first_attempt() {
        let err = run(&ctx(1), Vec::new()).unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.error_code(), Some("rate-limited"));
        assert_eq!(err.retry_hint(), Some(Duration::from_millis(1500)));
        assert!(run(&ctx(2), Vec::new()).is_ok());
    }

    #[test]
    fn payload_sets_delay_and_success_attempt() {
        let payload = br#"{"retry_after_ms": 20, "succeed_on_attempt": 4}"#;
        let err = run(&ctx(3), payload.to_vec()).unwrap_err();
        assert_eq!(err.retry_hint(), Some(Duration::from_millis(20)));
        assert_eq!(
            run(&ctx(4), payload.to_vec()).unwrap(),
            br#"{"succeeded_on_attempt":4}"#
        );
    }

    #[test]
    fn zero_success_attempt_is_invalid() {
        let err = run(&ctx(1), br#"{"succeed_on_attempt": 0}"#.to_vec()).unwrap_err();
        assert_eq!(err.error_code(), Some(json::INVALID_PAYLOAD));
    }
}
