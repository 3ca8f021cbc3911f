//! Turning how a guest call ended into an [`Outcome`].
//!
//! wasmtime reports every stop as an error value; which limit or fault caused it is read from
//! the trap code, the limiter's flag, and the guest's stderr (where a Rust panic prints its
//! message before aborting).

use wasmtime::Trap;
use wasmtime_wasi::I32Exit;

use crate::config::Limits;
use crate::outcome::{Outcome, TrapKind};
use crate::runtime::bindings::TaskError;

/// The longest panic message kept, in bytes.
const MAX_PANIC_MESSAGE: usize = 2 << 10;

/// Where in the attempt an error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Instantiate,
    Call,
}

/// Maps the task's own error value.
pub(crate) fn task_error(error: TaskError) -> Outcome {
    match error {
        TaskError::Transient(e) => Outcome::Transient {
            message: e.message,
            retry_after_ms: e.retry_after_ms,
            code: e.code,
        },
        TaskError::Permanent(e) => Outcome::Permanent {
            message: e.message,
            code: e.code,
        },
    }
}

/// Maps an error from instantiating or calling the guest.
pub(crate) fn wasm_error(
    phase: Phase,
    err: &wasmtime::Error,
    limits: &Limits,
    memory_limit_hit: bool,
    stderr: &str,
) -> Outcome {
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            // The deadline is the only thing that interrupts a guest.
            Trap::Interrupt => Outcome::TimedOut {
                timeout_ms: limits.timeout.as_millis() as u64,
            },
            Trap::OutOfFuel => Outcome::FuelExhausted {
                fuel: limits.fuel.unwrap_or(0),
            },
            // A refused allocation shows up as whatever the guest did next (Rust aborts with
            // `unreachable`), so the limiter's flag decides.
            _ if memory_limit_hit => Outcome::MemoryLimit {
                limit_bytes: limits.memory_bytes,
            },
            Trap::StackOverflow => Outcome::Trap {
                kind: TrapKind::StackOverflow,
                message: "the task's call stack overflowed (runaway recursion?)".to_owned(),
            },
            Trap::UnreachableCodeReached => match panic_message(stderr) {
                Some(message) => Outcome::Trap {
                    kind: TrapKind::Panic,
                    message,
                },
                None => Outcome::Trap {
                    kind: TrapKind::Unreachable,
                    message: "the task executed `unreachable` (it aborted)".to_owned(),
                },
            },
            other => Outcome::Trap {
                kind: TrapKind::Other,
                message: other.to_string(),
            },
        };
    }
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Outcome::Trap {
            kind: TrapKind::Exit,
            message: format!(
                "the task called exit({}) instead of returning from `run`",
                exit.0
            ),
        };
    }
    if memory_limit_hit {
        return Outcome::MemoryLimit {
            limit_bytes: limits.memory_bytes,
        };
    }
    match phase {
        // Instantiation runs host code (allocating slots and memory) before any guest code;
        // a failure there that is not a trap or a limit is the host's.
        Phase::Instantiate => Outcome::HostError {
            message: format!("failed to instantiate the task: {err:#}"),
        },
        // During the call, a non-trap error comes from a host function the guest called with
        // bad arguments (e.g. too many open resources); that is the guest's fault.
        Phase::Call => Outcome::Trap {
            kind: TrapKind::Other,
            message: format!("{err:#}"),
        },
    }
}

/// Finds the last Rust panic message on stderr: "thread '...' panicked at FILE:LINE:COL:\nMSG".
pub(crate) fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")?;
    let rest = &stderr[start + "panicked at ".len()..];
    let (location, message) = rest.split_once(":\n").unwrap_or((rest.trim_end(), ""));
    let message: Vec<&str> = message
        .lines()
        .take_while(|line| !line.starts_with("note: "))
        .collect();
    let mut text = format!("{} (at {location})", message.join("\n").trim());
    if text.len() > MAX_PANIC_MESSAGE {
        let mut end = MAX_PANIC_MESSAGE;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_panic_message_and_location() {
        let stderr = "starting\nthread '<unnamed>' panicked at src/lib.rs:12:5:\nboom: bad input\n\
                      note: run with `RUST_BACKTRACE=1` environment variable to display a \
                      backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("boom: bad input (at src/lib.rs:12:5)")
        );
    }

    #[test]
    fn no_panic_message_without_a_panic() {
        assert_eq!(
            panic_message("memory allocation of 1048576 bytes failed\n"),
            None
        );
    }

    #[test]
    fn interrupt_is_a_timeout_and_fuel_is_fuel() {
        let limits = Limits {
            fuel: Some(10),
            ..Limits::default()
        };
        let interrupt = wasmtime::Error::from(Trap::Interrupt);
        assert_eq!(
            wasm_error(Phase::Call, &interrupt, &limits, false, ""),
            Outcome::TimedOut { timeout_ms: 30_000 }
        );
        let fuel = wasmtime::Error::from(Trap::OutOfFuel);
        assert_eq!(
            wasm_error(Phase::Call, &fuel, &limits, true, ""),
            Outcome::FuelExhausted { fuel: 10 }
        );
    }

    #[test]
    fn a_trap_after_a_refused_allocation_is_the_memory_limit() {
        let err = wasmtime::Error::from(Trap::UnreachableCodeReached);
        let outcome = wasm_error(Phase::Call, &err, &Limits::default(), true, "");
        assert_eq!(
            outcome,
            Outcome::MemoryLimit {
                limit_bytes: 64 << 20
            }
        );
    }

    #[test]
    fn non_trap_errors_blame_the_host_only_before_the_call() {
        let err = wasmtime::Error::msg("slot allocation failed");
        let limits = Limits::default();
        assert_eq!(
            wasm_error(Phase::Instantiate, &err, &limits, false, "").retry_class(),
            crate::outcome::RetryClass::Uncharged
        );
        assert_eq!(
            wasm_error(Phase::Call, &err, &limits, false, "").retry_class(),
            crate::outcome::RetryClass::Fail
        );
    }
}
