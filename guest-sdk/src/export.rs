//! The export macros, and the adapters they expand to, between the generated `Guest` trait and
//! a plain Rust task function.
//!
//! A task crate has one `export_task!` or `export_json_task!` line. The macro defines a hidden
//! type implementing the generated `Guest` trait whose `run` calls one of the adapters below,
//! then invokes wit-bindgen's own export macro, which emits the `run` symbol the component
//! model expects.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Context, TaskError, bindings, json};

/// Exports `task` as the component's `run` function, with the payload and result as raw bytes.
///
/// `task` is any function or closure of type
/// `fn(&Context, Vec<u8>) -> Result<Vec<u8>, TaskError>`. Use it once per crate, in a crate
/// built as a `cdylib` for `wasm32-wasip2`:
///
/// ```
/// use wasm_runner_guest::{Context, TaskError, export_task};
///
/// /// Reverses the payload's bytes.
/// fn reverse(_ctx: &Context, mut payload: Vec<u8>) -> Result<Vec<u8>, TaskError> {
///     if payload.is_empty() {
///         return Err(TaskError::permanent("nothing to reverse").code("empty-payload"));
///     }
///     payload.reverse();
///     Ok(payload)
/// }
///
/// export_task!(reverse);
/// # fn main() {}
/// ```
///
/// For JSON in and out, [`export_json_task!`](crate::export_json_task) does the decoding and
/// encoding.
#[macro_export]
macro_rules! export_task {
    ($task:expr $(,)?) => {
        $crate::__export_run!($crate::__private::run_bytes, $task);
    };
}

/// Exports `task` as the component's `run` function, decoding the payload from JSON and
/// encoding the result as JSON.
///
/// `task` is any function or closure of type `fn(&Context, In) -> Result<Out, TaskError>`
/// where `In: serde::de::DeserializeOwned` and `Out: serde::Serialize`:
///
/// - a payload that is not valid JSON for `In` fails the attempt with a permanent error, code
///   [`json::INVALID_PAYLOAD`](crate::json::INVALID_PAYLOAD), without calling `task`; the
///   message is serde's and names the line and column;
/// - an `Out` that cannot be encoded fails with a permanent error, code
///   [`json::INVALID_OUTPUT`](crate::json::INVALID_OUTPUT).
///
/// ```
/// use wasm_runner_guest::serde::{Deserialize, Serialize};
/// use wasm_runner_guest::{Context, TaskError, export_json_task};
///
/// #[derive(Deserialize)]
/// #[serde(crate = "wasm_runner_guest::serde")]
/// struct Sum {
///     numbers: Vec<i64>,
/// }
///
/// #[derive(Serialize)]
/// #[serde(crate = "wasm_runner_guest::serde")]
/// struct Total {
///     total: i64,
/// }
///
/// fn sum(_ctx: &Context, input: Sum) -> Result<Total, TaskError> {
///     let total = input.numbers.iter().try_fold(0_i64, |acc, n| acc.checked_add(*n));
///     let total = total.ok_or_else(|| TaskError::permanent("sum overflows").code("overflow"))?;
///     Ok(Total { total })
/// }
///
/// export_json_task!(sum);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! export_json_task {
    ($task:expr $(,)?) => {
        $crate::__export_run!($crate::__private::run_json, $task);
    };
}

/// Shared expansion of the two export macros; `$adapter` is one of the functions below.
#[doc(hidden)]
#[macro_export]
macro_rules! __export_run {
    ($adapter:path, $task:expr) => {
        const _: () = {
            struct WasmRunnerTask;

            impl $crate::bindings::Guest for WasmRunnerTask {
                fn run(
                    ctx: $crate::bindings::JobContext,
                    payload: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::bindings::TaskError>
                {
                    $adapter(ctx, payload, $task)
                }
            }

    $crate::bindings::export!(WasmRunnerTask with_types_in $crate::bindings);
        };
    };
}

/// Runs a byte-level task function for [`export_task!`].
#[doc(hidden)]
pub fn run_bytes<F>(
    ctx: bindings::JobContext,
    payload: Vec<u8>,
    task: F,
) -> Result<Vec<u8>, bindings::TaskError>
where
    F: FnOnce(&Context, Vec<u8>) -> Result<Vec<u8>, TaskError>,
{
    let ctx = Context::from(ctx);
    task(&ctx, payload).map_err(bindings::TaskError::from)
}

/// Runs a JSON task function for [`export_json_task!`].
#[doc(hidden)]
pub fn run_json<In, Out, F>(
    ctx: bindings::JobContext,
    payload: Vec<u8>,
    task: F,
) -> Result<Vec<u8>, bindings::TaskError>
where
    In: DeserializeOwned,
    Out: Serialize,
    F: FnOnce(&Context, In) -> Result<Out, TaskError>,
{
    let ctx = Context::from(ctx);
    decode_call_encode(&ctx, &payload, task).map_err(bindings::TaskError::from)
}

fn decode_call_encode<In, Out, F>(
    ctx: &Context,
    payload: &[u8],
    task: F,
) -> Result<Vec<u8>, TaskError>
where
    In: DeserializeOwned,
    Out: Serialize,
    F: FnOnce(&Context, In) -> Result<Out, TaskError>,
{
    let input = json::parse(payload)?;
    let output = task(ctx, input)?;
    json::to_vec(&output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wit_context(attempt: u32) -> bindings::JobContext {
        bindings::JobContext {
            job_id: "job-1".into(),
            attempt,
            max_attempts: 3,
            task_name: "test".into(),
            tenant: "acme".into(),
        }
    }

    fn double(_ctx: &Context, n: i64) -> Result<i64, TaskError> {
        n.checked_mul(2)
            .ok_or_else(|| TaskError::permanent("too big").code("overflow"))
    }

    #[test]
    fn bytes_adapter_passes_context_and_payload() {
        let out = run_bytes(wit_context(2), b"abc".to_vec(), |ctx, payload| {
            Ok(format!("{}:{}", ctx.attempt, payload.len()).into_bytes())
        });
        assert_eq!(out.unwrap(), b"2:3");
    }

    #[test]
    fn json_adapter_decodes_calls_and_encodes() {
        let out = run_json(wit_context(1), b"21".to_vec(), double).unwrap();
        assert_eq!(out, b"42");
    }

    #[test]
    fn json_adapter_rejects_bad_payload_before_calling_task() {
        let never_called = |_: &Context, _: i64| -> Result<i64, TaskError> {
            panic!("the task must not run on an undecodable payload")
        };
        let out = run_json(wit_context(1), b"\"x\"".to_vec(), never_called);
        let Err(bindings::TaskError::Permanent(err)) = out else {
            panic!("expected a permanent error, got {out:?}");
        };
        assert_eq!(err.code.as_deref(), Some(json::INVALID_PAYLOAD));
    }

    #[test]
    fn json_adapter_forwards_task_errors() {
        let out = run_json(wit_context(1), i64::MAX.to_string().into_bytes(), double);
        let Err(bindings::TaskError::Permanent(err)) = out else {
            panic!("expected a permanent error, got {out:?}");
        };
        assert_eq!(err.code.as_deref(), Some("overflow"));
    }
}
