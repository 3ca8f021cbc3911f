//! Retry policies and the CLI/API value parsers: `Backoff::parse`, `parse_jitter`,
//! `parse_duration`, `parse_size`, a `RetryPolicy` read from JSON, and `decide` on the result.
//!
//! Policies come from users (CLI flags, API query strings, stored JSON), and `decide` runs on
//! the worker for every failed attempt, so the interesting failures are a panic or an
//! arithmetic overflow in the delay computation for huge attempt numbers or factors, and a
//! delay outside what the policy allows.
//!
//! Input layout: the first `HEADER` bytes give the numbers (attempt, random, outcome, and a
//! raw policy built without validation); the rest, when it is UTF-8, is the text handed to
//! every parser. Inputs shorter than the header read zeros for the missing numbers.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use wasm_runner::config::{format_duration, parse_duration, parse_size};
use wasm_runner::job::MAX_ATTEMPTS_LIMIT;
use wasm_runner::outcome::{Outcome, RetryClass, TrapKind};
use wasm_runner::scheduler::{
    Backoff, Decision, FailReason, MAX_RETRY_DELAY, RetryPolicy, UNCHARGED_RETRY_DELAY, decide,
    parse_jitter,
};

const HEADER: usize = 80;

/// The numbers a run of `decide` needs besides the policy.
#[derive(Debug)]
struct Call {
    attempt: u32,
    random: f64,
    outcome: Outcome,
}

fuzz_target!(|data: &[u8]| {
    let (header, text) = data.split_at(data.len().min(HEADER));
    let mut numbers = Unstructured::new(header);
    let call = read_call(&mut numbers);
    let raw = read_raw_policy(&mut numbers);

    // Fields are public, so a caller can hand `decide` a policy that was never validated; its
    // documentation promises an answer, never a panic, for those too.
    check_any_policy(&raw, &call);

    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    check_text_parsers(text);

    if let Ok(backoff) = Backoff::parse(text) {
        check_parsed_backoff(&backoff);
        // The raw numbers, folded into their valid ranges, so that most parsed backoffs make
        // a valid policy to run `decide` on; the JSON path below reaches the invalid ones.
        let ceiling_ms = MAX_RETRY_DELAY.as_millis() as u64;
        let policy = RetryPolicy::builder()
            .max_attempts(1 + raw.max_attempts % MAX_ATTEMPTS_LIMIT)
            .jitter_percent(raw.jitter_percent % 101)
            .hint_ceiling(Duration::from_millis(
                raw.hint_ceiling.as_secs() % (ceiling_ms + 1),
            ))
            .backoff(backoff)
            .build()
            .expect("a parsed backoff with in-range fields makes a valid policy");
        check_valid_policy(&policy, &call);
    }

    if let Ok(policy) = serde_json::from_str::<RetryPolicy>(text) {
        // Deserializing validates, so whatever was read back must pass `validate` again.
        policy
            .validate()
            .unwrap_or_else(|err| panic!("deserialized policy {policy:?} is invalid: {err}"));
        check_valid_policy(&policy, &call);
    }
});

fn read_call(numbers: &mut Unstructured<'_>) -> Call {
    let attempt = numbers.arbitrary::<u32>().unwrap_or_default();
    // From raw bits, so NaN, infinities and negative values are all reachable.
    let random = f64::from_bits(numbers.arbitrary::<u64>().unwrap_or_default());
    let kind = numbers.arbitrary::<u8>().unwrap_or_default();
    let number = numbers.arbitrary::<u64>().unwrap_or_default();
    let hint = numbers.arbitrary::<Option<u64>>().unwrap_or_default();
    let outcome = match kind % 9 {
        0 => Outcome::Ok,
        1 => Outcome::Transient {
            message: "busy".to_owned(),
            retry_after_ms: hint,
            code: Some("rate-limited".to_owned()),
        },
        2 => Outcome::Permanent {
            message: "bad".to_owned(),
            code: None,
        },
        3 => Outcome::TimedOut { timeout_ms: number },
        4 => Outcome::MemoryLimit {
            limit_bytes: number,
        },
        5 => Outcome::FuelExhausted { fuel: number },
        6 => Outcome::Trap {
            kind: TrapKind::Other,
            message: "trap".to_owned(),
        },
        7 => Outcome::HostError {
            message: "host".to_owned(),
        },
        _ => Outcome::Aborted {
            reason: "shutdown".to_owned(),
        },
    };
    Call {
        attempt,
        random,
        outcome,
    }
}

fn read_duration(numbers: &mut Unstructured<'_>) -> Duration {
    let secs = numbers.arbitrary::<u64>().unwrap_or_default();
    // `Duration::new` panics when carrying nanoseconds overflows the seconds; keep them below
    // a second so that any `secs`, up to `Duration::MAX`, can be built.
    let nanos = numbers.arbitrary::<u32>().unwrap_or_default() % 1_000_000_000;
    Duration::new(secs, nanos)
}

fn read_raw_policy(numbers: &mut Unstructured<'_>) -> RetryPolicy {
    let max_attempts = numbers.arbitrary::<u32>().unwrap_or_default();
    let jitter_percent = numbers.arbitrary::<u8>().unwrap_or_default();
    let hint_ceiling = read_duration(numbers);
    let exponential = numbers.arbitrary::<bool>().unwrap_or_default();
    let first = read_duration(numbers);
    let factor = f64::from_bits(numbers.arbitrary::<u64>().unwrap_or_default());
    let second = read_duration(numbers);
    let backoff = if exponential {
        Backoff::Exponential {
            base: first,
            factor,
            max: second,
        }
    } else {
        // The factor's low bits choose the list's length, so that the empty list (invalid,
        // documented to wait zero) is reached too.
        let delays = [first, second];
        let len = (factor.to_bits() % 3) as usize;
        Backoff::Intervals(delays[..len].to_vec())
    };
    RetryPolicy {
        max_attempts,
        backoff,
        jitter_percent,
        hint_ceiling,
    }
}

/// Anything a policy offers must answer without panicking, valid or not.
fn check_any_policy(policy: &RetryPolicy, call: &Call) {
    let decision = decide(policy, call.attempt, &call.outcome, call.random);
    check_class(policy, call, decision);
    let _ = policy.delay(call.attempt, call.random);
    let _ = policy.to_string();
    // Serializing an invalid policy is lossy by design (sub-millisecond parts are dropped,
    // durations past u64 milliseconds saturate), so only the absence of a panic is checked.
    let _ = serde_json::to_string(policy).expect("a policy always serializes");
    if policy.validate().is_ok() {
        check_valid_policy(policy, call);
    }
}

/// The decision follows the outcome's class as the scheduler's table says, whatever the
/// policy.
fn check_class(policy: &RetryPolicy, call: &Call, decision: Decision) {
    let expected = match call.outcome.retry_class() {
        RetryClass::Done => Some(Decision::Succeed),
        RetryClass::Fail => Some(Decision::Fail {
            reason: FailReason::Permanent,
        }),
        RetryClass::Uncharged => Some(Decision::Retry {
            delay: UNCHARGED_RETRY_DELAY,
            charged: false,
        }),
        RetryClass::Retry if call.attempt >= policy.max_attempts => Some(Decision::Fail {
            reason: FailReason::AttemptsExhausted,
        }),
        RetryClass::Retry => None,
    };
    match expected {
        Some(expected) => assert_eq!(decision, expected, "{call:?}"),
        None => assert!(
            matches!(decision, Decision::Retry { charged: true, .. }),
            "{call:?} gave {decision:?}"
        ),
    }
}

/// What a valid policy promises beyond not panicking.
fn check_valid_policy(policy: &RetryPolicy, call: &Call) {
    let decision = decide(policy, call.attempt, &call.outcome, call.random);
    check_class(policy, call, decision);

    let retry = call.attempt.max(1);
    let base = policy.backoff.delay(retry);
    // Every configured delay is at most `MAX_RETRY_DELAY`, so before jitter no delay may be
    // longer; the worker adds it to a timestamp and relies on that bound.
    assert!(
        base <= MAX_RETRY_DELAY,
        "{policy:?} retry {retry}: {base:?}"
    );
    match &policy.backoff {
        Backoff::Intervals(delays) => assert!(delays.contains(&base), "{policy:?}: {base:?}"),
        Backoff::Exponential {
            base: first, max, ..
        } => {
            assert!(
                *first <= base && base <= *max,
                "{policy:?} retry {retry}: {base:?}"
            );
            // Delays never shrink from one retry to the next (factor >= 1).
            if let Some(next_retry) = retry.checked_add(1) {
                let next = policy.backoff.delay(next_retry);
                assert!(
                    base <= next,
                    "{policy:?}: retry {retry} {base:?} > {next:?}"
                );
            }
        }
    }

    // Jitter spreads by at most `jitter_percent` either side, plus rounding to the millisecond.
    let jittered = policy.delay(call.attempt, call.random);
    let spread = base.as_secs_f64() * f64::from(policy.jitter_percent) / 100.0;
    let slack = 0.001 + base.as_secs_f64() * 1e-12;
    let low = base.as_secs_f64() - spread - slack;
    let high = base.as_secs_f64() + spread + slack;
    assert!(
        (low..=high).contains(&jittered.as_secs_f64()),
        "{policy:?} {call:?}: {jittered:?} outside {low}..={high} s"
    );
    if policy.jitter_percent == 0 {
        assert_eq!(jittered, base, "{policy:?} {call:?}");
    }

    if let Decision::Retry {
        delay,
        charged: true,
    } = decision
    {
        // A hint may lengthen the delay up to the ceiling, itself at most `MAX_RETRY_DELAY`;
        // jitter at most doubles it.
        assert!(delay >= jittered, "{policy:?} {call:?}: {delay:?}");
        assert!(
            delay <= 2 * MAX_RETRY_DELAY,
            "{policy:?} {call:?}: {delay:?}"
        );
    }

    // A valid policy is stored as JSON and must read back, and as the same policy. Without
    // serde_json's `float_roundtrip` feature a factor may come back one ulp away, so factors
    // are compared with a relative tolerance.
    let json = serde_json::to_string(policy).expect("a valid policy serializes");
    let back = serde_json::from_str::<RetryPolicy>(&json)
        .unwrap_or_else(|err| panic!("stored policy {json} does not read back: {err}"));
    assert_same_policy(policy, &back, &json);
    let _ = policy.to_string();
}

fn assert_same_policy(left: &RetryPolicy, right: &RetryPolicy, context: &str) {
    assert_eq!(left.max_attempts, right.max_attempts, "{context}");
    assert_eq!(left.jitter_percent, right.jitter_percent, "{context}");
    assert_eq!(left.hint_ceiling, right.hint_ceiling, "{context}");
    match (&left.backoff, &right.backoff) {
        (Backoff::Intervals(a), Backoff::Intervals(b)) => assert_eq!(a, b, "{context}"),
        (
            Backoff::Exponential {
                base: base_a,
                factor: factor_a,
                max: max_a,
            },
            Backoff::Exponential {
                base: base_b,
                factor: factor_b,
                max: max_b,
            },
        ) => {
            assert_eq!((base_a, max_a), (base_b, max_b), "{context}");
            let relative = (factor_a - factor_b).abs() / factor_a.abs().max(1.0);
            assert!(
                relative <= 1e-15,
                "{context}: factor {factor_a} vs {factor_b}"
            );
        }
        _ => panic!("{context}: backoff kind changed: {left:?} vs {right:?}"),
    }
}

/// `Backoff::parse` promises a validated backoff, and `Display` writes the syntax it reads.
fn check_parsed_backoff(backoff: &Backoff) {
    backoff
        .validate()
        .unwrap_or_else(|err| panic!("parsed backoff {backoff:?} is invalid: {err}"));
    let written = backoff.to_string();
    let back = Backoff::parse(&written)
        .unwrap_or_else(|err| panic!("`{written}` ({backoff:?}) does not parse back: {err}"));
    assert_eq!(&back, backoff, "`{written}`");
}

fn check_text_parsers(text: &str) {
    if let Ok(percent) = parse_jitter(text) {
        assert!(percent <= 100, "`{text}` gave {percent}%");
        assert_eq!(
            parse_jitter(&format!("{percent}%")),
            Ok(percent),
            "`{text}`"
        );
    }
    if let Ok(duration) = parse_duration(text) {
        // `format_duration` is documented to write what `parse_duration` reads; the CLI shows
        // policies with it and users paste them back.
        let written = format_duration(duration);
        assert_eq!(
            parse_duration(&written),
            Ok(duration),
            "`{text}` -> `{written}`"
        );
    }
    let _ = parse_size(text);
}
