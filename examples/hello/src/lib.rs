//! Greets the name in its JSON payload: `{"name": "Ada"}` becomes
//! `{"greeting": "Hello, Ada!"}`. The smallest complete JSON task.

use wasm_runner_guest::serde::{Deserialize, Serialize};
use wasm_runner_guest::{Context, TaskError, export_json_task, json, log};

#[derive(Debug, Deserialize)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Input {
    name: String,
}

#[derive(Debug, Serialize, PartialEq)]
#[serde(crate = "wasm_runner_guest::serde")]
struct Output {
    greeting: String,
}

fn greet(ctx: &Context, input: Input) -> Result<Output, TaskError> {
    let name = input.name.trim();
    if name.is_empty() {
        // The same code as a payload serde rejects: either way the input is unusable.
        return Err(TaskError::permanent("`name` must not be empty").code(json::INVALID_PAYLOAD));
    }

    // Log the name's length, not the name: payload contents stay out of logs.
    let name_chars = name.chars().count();
    log::info_with(
        "greeting",
        &[("name_chars", &name_chars), ("attempt", &ctx.attempt)],
    );
    Ok(Output {
        greeting: format!("Hello, {name}!"),
    })
}

export_json_task!(greet);

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Context {
        Context {
            job_id: "job-1".into(),
            attempt: 1,
            max_attempts: 3,
            task_name: "hello".into(),
            tenant: "default".into(),
        }
    }

    #[test]
    fn greets_trimmed_name() {
        let out = greet(
            &ctx(),
            Input {
                name: " Ada ".into(),
            },
        )
        .unwrap();
        assert_eq!(out.greeting, "Hello, Ada!");
    }

    #[test]
    fn rejects_blank_name_permanently() {
        let err = greet(&ctx(), Input { name: "  ".into() }).unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.error_code(), Some(json::INVALID_PAYLOAD));
    }
}
