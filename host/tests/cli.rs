//! Tests of the `wasm-runner` command line: exit codes, output, and the message for each kind of
//! bad input.

use std::path::Path;
use std::process::{Command, Output};

use wasm_runner::commands::{EXIT_OK, EXIT_PERMANENT, EXIT_TRANSIENT, EXIT_USAGE};
use wasm_runner_tests::guest;

fn wasm_runner(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wasm-runner"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("wasm-runner starts")
}

fn run_guest(package: &str, extra: &[&str]) -> Output {
    let path = guest(package);
    let mut args = vec!["run", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    wasm_runner(args.as_slice())
}

fn code(output: &Output) -> u8 {
    output.status.code().expect("exited normally") as u8
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A successful job prints its output on stdout and exits 0.
#[test]
fn ok_prints_output_and_exits_zero() {
    let output = run_guest("example-hello", &["--payload", r#"{"name": "Ada"}"#]);
    assert_eq!(code(&output), EXIT_OK, "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("Hello, Ada!"), "{stdout}");
    assert!(
        stderr(&output).starts_with("[info"),
        "the task's log is shown first"
    );
}

/// Transient and permanent failures have their own exit codes.
#[test]
fn failures_exit_with_their_class() {
    let output = run_guest("example-flaky", &["--attempt", "1"]);
    assert_eq!(code(&output), EXIT_TRANSIENT, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("would retry (attempt 1 of 3)"),
        "{}",
        stderr(&output)
    );

    let output = run_guest("example-flaky", &["--attempt", "3"]);
    assert_eq!(code(&output), EXIT_OK, "{}", stderr(&output));

    let output = run_guest("example-panic", &[]);
    assert_eq!(code(&output), EXIT_PERMANENT, "{}", stderr(&output));

    let output = run_guest("example-spin", &["--timeout", "100ms"]);
    assert_eq!(code(&output), EXIT_TRANSIENT, "{}", stderr(&output));
    assert!(stderr(&output).contains("timed_out"), "{}", stderr(&output));

    let output = run_guest("example-hog", &["--memory", "16MiB"]);
    assert_eq!(code(&output), EXIT_PERMANENT, "{}", stderr(&output));
    assert!(
        stderr(&output).contains("memory_limit"),
        "{}",
        stderr(&output)
    );
}

/// `--json` prints one machine-readable report.
#[test]
fn json_report_is_machine_readable() {
    let output = run_guest(
        "example-rate-limited",
        &["--payload", r#"{"retry_after_ms": 2500}"#, "--json"],
    );
    assert_eq!(code(&output), EXIT_TRANSIENT, "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    assert_eq!(report["outcome"]["class"], "transient");
    assert_eq!(report["outcome"]["retry_after_ms"], 2500);
    assert_eq!(report["outcome"]["code"], "rate-limited");
    assert_eq!(report["retry_class"], "retry");
    assert_eq!(report["context"]["attempt"], 1);
}

/// `--payload-file` passes raw bytes and `--output` writes the result to a file.
#[test]
fn payload_and_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload.json");
    std::fs::write(&payload, r#"{"name": "File"}"#).unwrap();
    let result = dir.path().join("out.json");
    let output = run_guest(
        "example-hello",
        &[
            "--payload-file",
            payload.to_str().unwrap(),
            "--output",
            result.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&output), EXIT_OK, "{}", stderr(&output));
    let written = std::fs::read_to_string(&result).unwrap();
    assert!(written.contains("Hello, File!"), "{written}");
}

fn assert_usage_error(output: &Output, expected: &str) {
    assert_eq!(code(output), EXIT_USAGE, "{}", stderr(output));
    let message = stderr(output);
    assert!(
        message.contains(expected),
        "expected {expected:?} in {message:?}"
    );
}

/// Each kind of bad input gets a one-line error saying what is wrong, and exit code 2.
#[test]
fn bad_inputs_get_specific_errors() {
    let dir = tempfile::tempdir().unwrap();
    let text_file = dir.path().join("notes.wasm");
    std::fs::write(&text_file, "just some text").unwrap();
    let core_module = dir.path().join("core.wasm");
    std::fs::write(&core_module, b"\0asm\x01\0\0\0").unwrap();
    let text = text_file.to_str().unwrap();

    assert_usage_error(&wasm_runner(&["run", text]), "is not WebAssembly");
    assert_usage_error(
        &wasm_runner(&["run", core_module.to_str().unwrap()]),
        "core WebAssembly module, not a component",
    );
    assert_usage_error(
        &wasm_runner(&["run", "does/not/exist.wasm"]),
        "failed to read component `does/not/exist.wasm`",
    );
    assert_usage_error(&run_guest("guest-no-run", &[]), "has no `run` export");
    assert_usage_error(&run_guest("guest-wrong-signature", &[]), "wrong type");

    let hello = guest("example-hello");
    let hello = hello.to_str().unwrap();
    assert_usage_error(
        &wasm_runner(&["run", hello, "--payload-file", "missing.json"]),
        "failed to read payload file `missing.json`",
    );
    assert_usage_error(
        &wasm_runner(&["run", hello, "--payload", "{oops"]),
        "--payload is not valid JSON",
    );
    assert_usage_error(
        &wasm_runner(&["run", hello, "--timeout", "30"]),
        "has no unit",
    );
    assert_usage_error(
        &wasm_runner(&["run", hello, "--memory", "512KiB"]),
        "out of range",
    );
    assert_usage_error(
        &wasm_runner(&["run", hello, "--attempt", "4", "--max-attempts", "3"]),
        "attempt 4 is out of range",
    );
    assert_usage_error(
        &wasm_runner(&["run", hello, "--fuel", "0"]),
        "fuel budget of 0",
    );

    for output in [
        wasm_runner(&["run", text]),
        wasm_runner(&["run", "nope.wasm"]),
    ] {
        let lines = stderr(&output).trim_end().lines().count();
        assert_eq!(lines, 1, "one line: {}", stderr(&output));
    }
    assert!(Path::new(text).exists(), "bad input is never deleted");
}
