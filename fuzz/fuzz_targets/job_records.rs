//! The JSON records the queue keeps in Redis, decoded the way the host reads them back:
//! `AttemptRecord`, `TenantRecord`, `Quotas`, `TaskVersion`, stored outcomes through
//! `stored_outcome` / `describe_outcome`, and job state names through `JobState::parse`.
//!
//! Redis content is written by this host, by the Lua scripts (with cjson) and possibly by an
//! older or newer version, so reading it must refuse bad input with an error, never panic; and
//! what the host writes it must be able to read back as the same record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use wasm_runner::queue::model::{describe_outcome, stored_outcome};
use wasm_runner::queue::{AttemptRecord, JobState, Quotas, TaskVersion, TenantRecord};

fuzz_target!(|data: &[u8]| {
    if let Some(record) = round_trip::<AttemptRecord>(data) {
        check_outcome_value(&record.outcome);
    }
    let _ = round_trip::<TenantRecord>(data);
    let _ = round_trip::<Quotas>(data);
    if let Some(version) = round_trip::<TaskVersion>(data) {
        // The policy inside validates while it is read, so whatever was read must be valid.
        let policy = &version.defaults.policy;
        policy
            .validate()
            .unwrap_or_else(|err| panic!("decoded task version has invalid policy: {err}"));
    }

    if let Ok(value) = serde_json::from_slice::<Value>(data) {
        check_outcome_value(&value);
        // Records keep their outcome under "outcome"; an input shaped like a record but not
        // decodable as one still gets its outcome checked.
        check_outcome_value(&value["outcome"]);
    }

    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(state) = JobState::parse(text)
    {
        assert_eq!(state.as_str(), text);
    }
});

/// Decodes `data` as `T`; when that works, writes the record and checks that it reads back as
/// the same record, as it must for anything the host stores.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) -> Option<T> {
    let record = serde_json::from_slice::<T>(data).ok()?;
    let written = serde_json::to_string(&record).expect("a decoded record serializes");
    let back = serde_json::from_str::<T>(&written)
        .unwrap_or_else(|err| panic!("written record {written} does not read back: {err}"));
    let before = serde_json::to_value(&record).expect("a decoded record converts to a value");
    let after = serde_json::to_value(&back).expect("a decoded record converts to a value");
    assert!(same_json(&before, &after), "{before} read back as {after}");
    Some(record)
}

/// JSON equality that allows a float one ulp away: without serde_json's `float_roundtrip`
/// feature (which the host does not enable) a written float may read back that far off, which
/// is serde_json's documented precision, not a bug in the records.
fn same_json(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() || b.is_f64() => {
            match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => (a - b).abs() <= a.abs().max(b.abs()) * 1e-15,
                _ => false,
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same_json(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(key, a)| b.get(key).is_some_and(|b| same_json(a, b)))
        }
        _ => left == right,
    }
}

/// Any stored value gets a description without panicking; one that is an outcome reads back
/// as the same outcome after being written, and is described under its own name.
fn check_outcome_value(value: &Value) {
    let description = describe_outcome(value);
    let Some(outcome) = stored_outcome(value) else {
        return;
    };
    let written = serde_json::to_value(&outcome).expect("an outcome converts to a value");
    assert_eq!(
        stored_outcome(&written).as_ref(),
        Some(&outcome),
        "{written}"
    );
    assert!(
        description.starts_with(outcome.name()),
        "{value} described as `{description}`"
    );
}
