//! End-to-end tests of the sandboxed executor against the real example and test guests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasm_runner::config::Limits;
use wasm_runner::job::JobContext;
use wasm_runner::outcome::{Outcome, TrapKind};
use wasm_runner::runtime::{EngineOptions, Executor, LoadError, RunReport, TaskComponent};
use wasm_runner_tests::guest_bytes;

fn executor() -> Executor {
    Executor::new(EngineOptions {
        max_concurrent: 4,
        ..EngineOptions::default()
    })
    .expect("executor starts")
}

fn fuel_executor() -> Executor {
    Executor::new(EngineOptions {
        max_concurrent: 1,
        fuel: true,
        ..EngineOptions::default()
    })
    .expect("executor starts")
}

fn load(executor: &Executor, package: &str) -> TaskComponent {
    executor
        .load(&guest_bytes(package))
        .unwrap_or_else(|err| panic!("{package} should load: {err}"))
}

fn context(attempt: u32) -> JobContext {
    JobContext {
        job_id: "job-1".into(),
        attempt,
        max_attempts: 5,
        task_name: "test".into(),
        tenant: "acme".into(),
    }
}

async fn run(executor: &Executor, package: &str, payload: Value, limits: &Limits) -> RunReport {
    let task = load(executor, package);
    let payload = serde_json::to_vec(&payload).unwrap();
    executor.run(&task, &context(1), &payload, limits).await
}

fn output_json(report: &RunReport) -> Value {
    assert_eq!(report.outcome, Outcome::Ok, "log: {:?}", report.log);
    serde_json::from_slice(report.output.as_ref().expect("ok has output")).expect("output is JSON")
}

/// `hello` turns a name into a greeting and logs through the host-log import.
#[tokio::test]
async fn hello_greets_and_logs() {
    let executor = executor();
    let report = run(
        &executor,
        "example-hello",
        json!({"name": "Ada"}),
        &Limits::default(),
    )
    .await;
    assert_eq!(output_json(&report)["greeting"], "Hello, Ada!");
    assert!(!report.log.records.is_empty(), "hello logs a record");
}

/// `noop` succeeds with an empty result whatever its payload, and leaves nothing in the log.
#[tokio::test]
async fn noop_succeeds_with_an_empty_result() {
    let executor = executor();
    let task = load(&executor, "example-noop");
    for payload in [&b""[..], b"{}", b"not json at all"] {
        let report = executor
            .run(&task, &context(1), payload, &Limits::default())
            .await;
        assert_eq!(report.outcome, Outcome::Ok, "log: {:?}", report.log);
        assert_eq!(report.output.as_deref(), Some(&b""[..]));
        assert!(report.log.records.is_empty());
        assert!(report.log.stdout.is_empty() && report.log.stderr.is_empty());
    }
}

/// No attempt can read memory an earlier attempt wrote, although every attempt here reuses the
/// same pool slot.
#[tokio::test]
async fn memory_is_fresh_for_every_attempt() {
    // One slot, so each attempt gets the memory the previous one used.
    let executor = Executor::new(EngineOptions {
        max_concurrent: 1,
        ..EngineOptions::default()
    })
    .expect("executor starts");
    let task = load(&executor, "guest-residue");
    let limits = Limits::default();
    for round in 0..3 {
        let written = executor
            .run(&task, &context(1), br#"{"write": true}"#, &limits)
            .await;
        let written = output_json(&written);
        assert_eq!(written["found"], 0, "round {round}: {written}");
        // The guest sees its own marker, so a 0 below is not a blind count.
        assert_eq!(written["after_write"], 1 << 20, "round {round}");

        let read = executor.run(&task, &context(2), b"{}", &limits).await;
        assert_eq!(output_json(&read)["found"], 0, "round {round}");
    }
}

/// `flaky` fails transiently on attempts 1 and 2 and succeeds on attempt 3.
#[tokio::test]
async fn flaky_succeeds_on_the_third_attempt() {
    let executor = executor();
    let task = load(&executor, "example-flaky");
    for attempt in 1..=3 {
        let report = executor
            .run(&task, &context(attempt), b"{}", &Limits::default())
            .await;
        if attempt < 3 {
            assert!(
                matches!(report.outcome, Outcome::Transient { .. }),
                "attempt {attempt}: {:?}",
                report.outcome
            );
        } else {
            assert_eq!(report.outcome, Outcome::Ok, "attempt {attempt}");
        }
    }
}

/// `validate` rejects invalid input with a permanent error and a code.
#[tokio::test]
async fn validate_rejects_bad_input_permanently() {
    let executor = executor();
    let bad = json!({"email": "not-an-email", "quantity": 1});
    let report = run(&executor, "example-validate", bad, &Limits::default()).await;
    let Outcome::Permanent { code, .. } = &report.outcome else {
        panic!("expected a permanent error, got {:?}", report.outcome);
    };
    assert!(code.is_some(), "validate names the problem with a code");

    let good = json!({"email": "ada@example.com", "quantity": 2});
    let report = run(&executor, "example-validate", good, &Limits::default()).await;
    assert_eq!(report.outcome, Outcome::Ok);
}

/// A payload that is not JSON is a permanent `invalid-payload` error from the SDK.
#[tokio::test]
async fn malformed_payload_is_a_permanent_error() {
    let executor = executor();
    let task = load(&executor, "example-hello");
    let report = executor
        .run(&task, &context(1), b"{not json", &Limits::default())
        .await;
    let Outcome::Permanent { code, .. } = report.outcome else {
        panic!("expected permanent, got {:?}", report.outcome);
    };
    assert_eq!(code.as_deref(), Some("invalid-payload"));
}

/// `rate-limited` returns a transient error carrying its retry-after hint and code.
#[tokio::test]
async fn rate_limited_carries_its_hint() {
    let executor = executor();
    let payload = json!({"retry_after_ms": 1500});
    let report = run(
        &executor,
        "example-rate-limited",
        payload,
        &Limits::default(),
    )
    .await;
    let Outcome::Transient {
        retry_after_ms,
        code,
        ..
    } = report.outcome
    else {
        panic!("expected transient, got {:?}", report.outcome);
    };
    assert_eq!(retry_after_ms, Some(1500));
    assert_eq!(code.as_deref(), Some("rate-limited"));
}

/// `spin` is stopped at the timeout, and the same executor then runs `hello` correctly.
#[tokio::test]
async fn timeout_stops_a_runaway_loop_and_leaves_no_state_behind() {
    let executor = executor();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let started = Instant::now();
    let report = run(&executor, "example-spin", json!({}), &limits).await;
    let took = started.elapsed();
    assert_eq!(report.outcome, Outcome::TimedOut { timeout_ms: 300 });
    assert!(
        took >= Duration::from_millis(300),
        "stopped early: {took:?}"
    );
    // One epoch tick is 10 ms; the margin allows for a loaded CI machine.
    assert!(took < Duration::from_millis(1300), "stopped late: {took:?}");

    let report = run(&executor, "example-hello", json!({"name": "Bo"}), &limits).await;
    assert_eq!(output_json(&report)["greeting"], "Hello, Bo!");
}

/// A guest blocked in a host call (sleeping) is stopped at the timeout too.
#[tokio::test]
async fn timeout_stops_a_guest_blocked_in_a_host_call() {
    let executor = executor();
    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let started = Instant::now();
    let report = run(&executor, "example-slow", json!({"ms": 5000}), &limits).await;
    assert_eq!(report.outcome, Outcome::TimedOut { timeout_ms: 200 });
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// `slow` finishes when its work fits in the timeout.
#[tokio::test]
async fn slow_finishes_within_its_timeout() {
    let executor = executor();
    let report = run(
        &executor,
        "example-slow",
        json!({"ms": 50}),
        &Limits::default(),
    )
    .await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert!(report.elapsed >= Duration::from_millis(50));
}

/// `hog` is stopped at the memory limit, which is told apart from a panic, and the executor
/// runs `hello` afterwards.
#[tokio::test]
async fn memory_limit_obeyed() {
    let executor = executor();
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let report = run(&executor, "example-hog", json!({}), &limits).await;
    assert_eq!(
        report.outcome,
        Outcome::MemoryLimit {
            limit_bytes: 32 << 20
        }
    );
    assert!(
        report.peak_memory_bytes <= 32 << 20,
        "peak {}",
        report.peak_memory_bytes
    );

    let report = run(&executor, "example-hello", json!({"name": "Cy"}), &limits).await;
    assert_eq!(output_json(&report)["greeting"], "Hello, Cy!");
}

/// A task well under its memory limit is not stopped.
#[tokio::test]
async fn memory_limit_not_violated_by_normal_tasks() {
    let executor = executor();
    let limits = Limits {
        memory_bytes: 4 << 20,
        ..Limits::default()
    };
    let report = run(&executor, "example-hello", json!({"name": "Di"}), &limits).await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert!(report.peak_memory_bytes > 0);
}

/// `panic` is a permanent trap whose message comes from the guest's stderr.
#[tokio::test]
async fn panic_is_a_trap_with_its_message() {
    let executor = executor();
    let report = run(&executor, "example-panic", json!({}), &Limits::default()).await;
    let Outcome::Trap { kind, message } = &report.outcome else {
        panic!("expected a trap, got {:?}", report.outcome);
    };
    assert_eq!(*kind, TrapKind::Panic);
    assert!(
        message.contains("src/lib.rs"),
        "panic location in {message:?}"
    );
}

/// Runaway recursion is stopped as a stack overflow.
#[tokio::test]
async fn stack_overflow_is_a_trap() {
    let executor = executor();
    let report = run(
        &executor,
        "guest-stack-overflow",
        json!({}),
        &Limits::default(),
    )
    .await;
    let Outcome::Trap { kind, .. } = report.outcome else {
        panic!("expected a trap, got {:?}", report.outcome);
    };
    assert_eq!(kind, TrapKind::StackOverflow);
}

/// A fuel budget stops a loop deterministically.
#[tokio::test]
async fn fuel_budget_stops_a_loop() {
    let executor = fuel_executor();
    let limits = Limits {
        fuel: Some(50_000_000),
        ..Limits::default()
    };
    let report = run(&executor, "example-spin", json!({}), &limits).await;
    assert_eq!(report.outcome, Outcome::FuelExhausted { fuel: 50_000_000 });
    assert!(report.fuel_consumed >= Some(50_000_000));

    let report = run(&executor, "example-hello", json!({"name": "Ed"}), &limits).await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert!(report.fuel_consumed.unwrap() < 50_000_000);
}

/// `wordfreq` does real work: counts words case-insensitively.
#[tokio::test]
async fn wordfreq_counts_words() {
    let executor = executor();
    let payload = json!({"text": "the cat and The dog and THE bird", "top": 2});
    let report = run(&executor, "example-wordfreq", payload, &Limits::default()).await;
    let output = output_json(&report);
    let text = output.to_string();
    assert!(text.contains("\"the\""), "{text}");
    assert_eq!(output["total_words"], 8, "{text}");
}

/// The sandbox gives a guest no files, no environment, no arguments and no network.
#[tokio::test]
async fn sandbox_denies_files_env_and_sockets() {
    let executor = executor();
    let report = run(&executor, "guest-escape", json!({}), &Limits::default()).await;
    let attempts = output_json(&report);
    let text = attempts.to_string();
    for probe in [
        "read_etc_passwd",
        "list_root_dir",
        "list_current_dir",
        "write_tmp_file",
        "spawn_process",
        "env_home",
        "tcp_connect",
        "resolve_host",
    ] {
        assert_eq!(
            attempts[probe]["ok"], false,
            "{probe} must be denied: {text}"
        );
    }
    assert_eq!(attempts["env_vars"]["value"]["count"], 0, "{text}");
    assert_eq!(attempts["args"]["value"]["count"], 0, "{text}");
}

/// Endless output does not kill the guest; the log keeps a bounded head and tail.
#[tokio::test]
async fn chatty_output_is_bounded_not_fatal() {
    let executor = executor();
    let report = run(&executor, "guest-chatty", json!({}), &Limits::default()).await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert!(
        report.log.stdout.len() < 128 << 10,
        "stdout kept {}",
        report.log.stdout.len()
    );
    assert!(report.log.stdout_dropped_bytes > 1 << 20);
    assert!(report.log.stderr_dropped_bytes > 1 << 20);
}

/// A guest that writes to stdout or calls the host log in an endless loop is stopped at its
/// timeout like any other runaway: its loop is made of host calls, where no epoch check runs
/// inside the guest's own code for long. What the host keeps of the output stays bounded.
#[tokio::test]
async fn endless_output_and_host_calls_are_stopped_at_the_timeout() {
    let executor = executor();
    let task = load(&executor, "guest-endless");
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    for mode in ["stdout", "log", "both"] {
        let started = Instant::now();
        let report = executor
            .run(&task, &context(1), mode.as_bytes(), &limits)
            .await;
        let took = started.elapsed();
        assert_eq!(
            report.outcome,
            Outcome::TimedOut { timeout_ms: 300 },
            "{mode}"
        );
        // The margin allows for a loaded CI machine, as for `spin`.
        assert!(
            took < Duration::from_millis(1300),
            "{mode}: stopped late: {took:?}"
        );
        assert!(
            report.log.stdout.len() < 128 << 10,
            "{mode}: kept {}",
            report.log.stdout.len()
        );
        assert!(report.log.records.len() <= 1000, "{mode}");
        if mode != "log" {
            assert!(
                report.log.stdout_dropped_bytes > 0,
                "{mode}: nothing was dropped"
            );
        }
        if mode != "stdout" {
            assert!(
                report.log.records_dropped > 0,
                "{mode}: no record was dropped"
            );
        }
    }
    let report = run(&executor, "example-hello", json!({"name": "Bo"}), &limits).await;
    assert_eq!(output_json(&report)["greeting"], "Hello, Bo!");
}

/// A task that grows its table without end has the growth refused and fails, without
/// taking the host's memory; the executor then runs the next task as usual.
#[tokio::test]
async fn endless_table_growth_is_refused() {
    let executor = executor();
    let task = executor
        .load(&wasm_runner_tests::wat::table_grower(10_000))
        .expect("the table grower loads");
    let report = executor
        .run(&task, &context(1), b"{}", &Limits::default())
        .await;
    assert!(
        matches!(report.outcome, Outcome::MemoryLimit { .. }),
        "{:?}",
        report.outcome
    );
    let report = run(
        &executor,
        "example-hello",
        json!({"name": "Bo"}),
        &Limits::default(),
    )
    .await;
    assert_eq!(output_json(&report)["greeting"], "Hello, Bo!");
}

/// A task that declares a table larger than the sandbox allows is refused when it is loaded,
/// with a message that names the table, not accepted and then failed on every attempt.
#[test]
fn huge_declared_table_is_refused_at_load() {
    let executor = executor();
    let Err(err) = executor.load(&wasm_runner_tests::wat::huge_table(50_000_000)) else {
        panic!("a 50-million-element table was accepted");
    };
    let message = err.to_string();
    eprintln!("refusal: {message}");
    assert!(message.contains("table"), "{message}");
    // A small table in the same shape loads, so the refusal is about the size.
    executor
        .load(&wasm_runner_tests::wat::huge_table(16))
        .expect("a 16-element table loads");
}

/// A flood of log records is bounded; the count of dropped records is kept.
#[tokio::test]
async fn log_flood_is_bounded() {
    let executor = executor();
    let report = run(&executor, "guest-log-flood", json!({}), &Limits::default()).await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert_eq!(report.log.records.len(), 1000);
    assert_eq!(report.log.records_dropped, 100_000 - 1000);
}

/// More concurrent attempts than pool slots wait their turn instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_attempts_beyond_the_pool_wait_for_a_slot() {
    let executor = Arc::new(executor());
    let task = Arc::new(load(&executor, "example-hello"));
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..12 {
        let (executor, task) = (executor.clone(), task.clone());
        runs.spawn(async move {
            let payload = br#"{"name": "Pool"}"#;
            executor
                .run(&task, &context(1), payload, &Limits::default())
                .await
        });
    }
    while let Some(report) = runs.join_next().await {
        assert_eq!(report.expect("run does not panic").outcome, Outcome::Ok);
    }
}

/// Each kind of bad file gets its own error.
#[test]
fn bad_files_get_specific_errors() {
    let executor = executor();
    assert_eq!(executor.load(b"").unwrap_err(), LoadError::Empty);
    assert_eq!(
        executor.load(b"#!/bin/sh\necho hi\n").unwrap_err(),
        LoadError::NotWasm
    );
    // The smallest valid core module: magic and version 1.
    assert_eq!(
        executor.load(b"\0asm\x01\0\0\0").unwrap_err(),
        LoadError::CoreModule
    );

    let mut truncated = guest_bytes("example-hello");
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        executor.load(&truncated),
        Err(LoadError::Invalid(_))
    ));

    let err = executor.load(&guest_bytes("guest-no-run")).unwrap_err();
    let LoadError::WrongWorld(message) = &err else {
        panic!("expected WrongWorld, got {err:?}");
    };
    assert!(message.contains("no `run` export"), "{message}");

    let err = executor
        .load(&guest_bytes("guest-wrong-signature"))
        .unwrap_err();
    let LoadError::WrongWorld(message) = &err else {
        panic!("expected WrongWorld, got {err:?}");
    };
    assert!(message.contains("wrong type"), "{message}");
}

/// The compile cache is written on first load and used on the next, by a new executor.
#[tokio::test]
async fn compile_cache_is_reused_across_executors() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = guest_bytes("example-hello");
    let first = executor();
    first
        .load_cached(&wasm, "digest-1", Some(dir.path()))
        .expect("loads");
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1, "one artifact written");
    let artifact = entries[0].as_ref().unwrap().path();
    let written = std::fs::metadata(&artifact).unwrap().modified().unwrap();

    let second = executor();
    let task = second
        .load_cached(&wasm, "digest-1", Some(dir.path()))
        .expect("loads");
    let report = second
        .run(
            &task,
            &context(1),
            br#"{"name": "Cache"}"#,
            &Limits::default(),
        )
        .await;
    assert_eq!(output_json(&report)["greeting"], "Hello, Cache!");
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        written
    );

    // A damaged artifact is replaced, not trusted.
    std::fs::write(&artifact, b"garbage").unwrap();
    let task = second
        .load_cached(&wasm, "digest-1", Some(dir.path()))
        .expect("recompiles");
    let report = second
        .run(
            &task,
            &context(1),
            br#"{"name": "Again"}"#,
            &Limits::default(),
        )
        .await;
    assert_eq!(report.outcome, Outcome::Ok);
    assert!(
        std::fs::read(&artifact).unwrap().len() > 1000,
        "artifact rewritten"
    );
}

/// Limits that the executor cannot honour are refused before anything runs.
#[test]
fn limits_beyond_the_executor_are_refused() {
    let executor = executor();
    let fuel = Limits {
        fuel: Some(10),
        ..Limits::default()
    };
    assert!(executor.check_limits(&fuel).unwrap_err().contains("fuel"));
}

/// Every guest that build.rs builds is used by some test, so none rots unnoticed.
#[test]
fn every_guest_is_used_by_a_test() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let mut sources = String::new();
    for dir in ["tests/tests", "host/tests", "host/benches"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            // Shared test modules live in folders (e.g. host/tests/support/mod.rs).
            let files = if path.is_dir() {
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|entry| entry.unwrap().path())
                    .collect()
            } else {
                vec![path]
            };
            for file in files {
                sources.push_str(&std::fs::read_to_string(file).unwrap());
            }
        }
    }
    let guests = wasm_runner_tests::all_guests();
    assert!(guests.len() >= 15, "guests found: {guests:?}");
    for guest in guests {
        assert!(
            sources.contains(&format!("\"{guest}\"")),
            "no test uses guest `{guest}`"
        );
    }
}
