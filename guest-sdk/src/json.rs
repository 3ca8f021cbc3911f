//! JSON payloads and results, with failures already turned into permanent `TaskError`s.
//!
//! [`export_json_task!`](crate::export_json_task) uses these two functions around the task
//! function; call them directly when a task wants to decode its payload itself.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TaskError;

/// Error code for a payload that is not valid JSON for the task's input type.
pub const INVALID_PAYLOAD: &str = "invalid-payload";

/// Error code for a task result that cannot be serialised to JSON.
pub const INVALID_OUTPUT: &str = "invalid-output";

/// Decodes a JSON payload into `T`.
///
/// # Errors
///
/// A permanent error with code [`INVALID_PAYLOAD`] when `payload` is not JSON or does not
/// match `T`. The message is serde's, which names the line and column of the problem. It is
/// permanent because the same payload fails the same way on every attempt.
pub fn parse<T: DeserializeOwned>(payload: &[u8]) -> Result<T, TaskError> {
    serde_json::from_slice(payload).map_err(|err| {
        TaskError::permanent(format!("invalid JSON payload: {err}")).code(INVALID_PAYLOAD)
    })
}

/// Encodes `value` as compact JSON.
///
/// # Errors
///
/// A permanent error with code [`INVALID_OUTPUT`] when `value` cannot be represented as JSON,
/// for example a map whose keys are not strings, or a `Serialize` impl that fails. Retrying
/// would produce the same value, so the error is permanent.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, TaskError> {
    serde_json::to_vec(value).map_err(|err| {
        TaskError::permanent(format!("task output is not valid JSON: {err}")).code(INVALID_OUTPUT)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Input {
        name: String,
    }

    #[test]
    fn parses_matching_payload() {
        let input: Input = parse(br#"{"name": "Ada"}"#).unwrap();
        assert_eq!(input, Input { name: "Ada".into() });
    }

    #[test]
    fn malformed_payload_is_permanent_with_position() {
        let err = parse::<Input>(b"{\n  \"name\": }").unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.error_code(), Some(INVALID_PAYLOAD));
        assert!(err.message().contains("line 2 column"), "{}", err.message());
    }

    #[test]
    fn payload_of_wrong_shape_is_invalid() {
        let err = parse::<Input>(br#"{"nom": "Ada"}"#).unwrap_err();
        assert_eq!(err.error_code(), Some(INVALID_PAYLOAD));
        assert!(
            err.message().contains("missing field `name`"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn encodes_compact_json() {
        let out = to_vec(&BTreeMap::from([("greeting", "hi")])).unwrap();
        assert_eq!(out, br#"{"greeting":"hi"}"#);
    }

    #[test]
    fn unrepresentable_output_is_invalid_output() {
        // JSON object keys must be strings; serde_json rejects a tuple key.
        let err = to_vec(&BTreeMap::from([((1, 2), "x")])).unwrap_err();
        assert!(err.is_permanent());
        assert_eq!(err.error_code(), Some(INVALID_OUTPUT));
    }
}
