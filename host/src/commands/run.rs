//! `wasm-runner run`: runs one job locally, with no Redis, and reports how it ended.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use clap::Args;

use super::{CommandError, EXIT_HOST, EXIT_OK, EXIT_PERMANENT, EXIT_TRANSIENT};
use crate::config::{Limits, parse_duration, parse_size};
use crate::job::{JobContext, JobLog};
use crate::outcome::RetryClass;
use crate::runtime::{EngineOptions, Executor, RunReport};

/// Run one job locally in the sandbox and print its output or its classified error.
///
/// Exit codes: 0 ok; 10 transient (would be retried: transient error or timeout); 11 permanent
/// (permanent error, trap, memory or fuel limit); 2 bad flags or input; 3 host error.
#[derive(Debug, Args)]
pub struct RunCommand {
    /// The task: a WebAssembly component built with `cargo build --target wasm32-wasip2`.
    component: PathBuf,

    /// The job's payload as JSON text.
    #[arg(long, value_name = "JSON", conflicts_with = "payload_file")]
    payload: Option<String>,

    /// Read the payload's raw bytes from a file (`-` for stdin). Default: an empty payload.
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,

    /// Which attempt to pretend this is, from 1.
    #[arg(long, default_value_t = 1, value_name = "N")]
    attempt: u32,

    /// The most attempts the job gets (the task sees it in its context).
    #[arg(long, default_value_t = 3, value_name = "N")]
    max_attempts: u32,

    /// Wall-clock limit for the attempt, e.g. `250ms`, `30s`.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,

    /// Memory limit for the attempt, summed over the task's memories, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    memory: u64,

    /// Optional fuel budget (roughly, WebAssembly instructions). Off by default.
    #[arg(long, value_name = "N")]
    fuel: Option<u64>,

    /// The job id the task sees. Default: `local-` and a timestamp.
    #[arg(long, value_name = "ID")]
    job_id: Option<String>,

    /// The task name the task sees. Default: the component's file name without `.wasm`.
    #[arg(long, value_name = "NAME")]
    task_name: Option<String>,

    /// The tenant the task sees.
    #[arg(long, default_value = "default", value_name = "NAME")]
    tenant: String,

    /// Write the output's raw bytes to this file instead of stdout.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,

    /// Print one JSON report on stdout instead of human-readable text.
    #[arg(long)]
    json: bool,
}

impl RunCommand {
    /// Runs the job and returns the exit code for its outcome.
    ///
    /// # Errors
    ///
    /// A usage error for bad flags, unreadable files, a payload that is not JSON or a file that
    /// is not a task; a host error when the engine cannot start.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let limits = Limits {
            memory_bytes: self.memory,
            timeout: self.timeout,
            fuel: self.fuel,
        };
        limits
            .validate()
            .map_err(|msg| CommandError::Usage(anyhow!(msg)))?;
        let ctx = self.job_context();
        ctx.validate()
            .map_err(|msg| CommandError::Usage(anyhow!(msg)))?;
        let payload = read_payload(self.payload.as_deref(), self.payload_file.as_deref())
            .map_err(CommandError::Usage)?;
        let wasm = std::fs::read(&self.component)
            .with_context(|| format!("failed to read component `{}`", self.component.display()))
            .map_err(CommandError::Usage)?;

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to start the async runtime")
            .map_err(CommandError::Host)?;
        let executor = Executor::new(EngineOptions {
            max_concurrent: 1,
            fuel: limits.fuel.is_some(),
            ..EngineOptions::default()
        })
        .map_err(CommandError::Host)?;
        let task = executor.load(&wasm).map_err(|err| {
            CommandError::Usage(anyhow!("cannot run `{}`: {err}", self.component.display()))
        })?;

        let report = runtime.block_on(executor.run(&task, &ctx, &payload, &limits));

        self.print(&ctx, &report).map_err(CommandError::Host)?;
        Ok(ExitCode::from(exit_code(&report)))
    }

    fn job_context(&self) -> JobContext {
        let job_id = self.job_id.clone().unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!("local-{}", now.as_millis())
        });
        let task_name = self
            .task_name
            .clone()
            .unwrap_or_else(|| task_name_of(&self.component));
        JobContext {
            job_id,
            attempt: self.attempt,
            max_attempts: self.max_attempts,
            task_name,
            tenant: self.tenant.clone(),
        }
    }

    fn print(&self, ctx: &JobContext, report: &RunReport) -> anyhow::Result<()> {
        if let (Some(path), Some(output)) = (&self.output, &report.output) {
            std::fs::write(path, output)
                .with_context(|| format!("failed to write output to `{}`", path.display()))?;
        }
        if self.json {
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut stdout, &json_report(ctx, report, &self.output))?;
            writeln!(stdout)?;
            return Ok(());
        }

        print_log(&report.log);
        if let Some(output) = report.output.as_ref().filter(|_| self.output.is_none()) {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(output)?;
            if std::io::stdout().is_terminal() && !output.ends_with(b"\n") {
                writeln!(stdout)?;
            }
            // Flush before the summary goes to stderr, so a terminal shows them in order.
            stdout.flush()?;
        }
        eprintln!("{}", summary_line(ctx, report));
        Ok(())
    }
}

/// Reads a payload given as JSON text or as a file of raw bytes (`-` for stdin); empty when
/// neither is given.
pub(crate) fn read_payload(json: Option<&str>, file: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Some(json) = json {
        serde_json::from_str::<serde_json::Value>(json).with_context(|| {
            "--payload is not valid JSON; quote it for your shell (e.g. '{\"name\": \"Ada\"}') \
             or pass raw bytes with --payload-file"
        })?;
        return Ok(json.as_bytes().to_vec());
    }
    let Some(path) = file else {
        return Ok(Vec::new());
    };
    if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("failed to read the payload from stdin")?;
        return Ok(bytes);
    }
    std::fs::read(path).with_context(|| format!("failed to read payload file `{}`", path.display()))
}

fn task_name_of(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_else(|| "task".to_owned())
}

fn exit_code(report: &RunReport) -> u8 {
    match report.outcome.retry_class() {
        RetryClass::Done => EXIT_OK,
        RetryClass::Retry => EXIT_TRANSIENT,
        RetryClass::Fail => EXIT_PERMANENT,
        RetryClass::Uncharged => EXIT_HOST,
    }
}

/// One line for people: the outcome, what a queue would do next, and the cost.
fn summary_line(ctx: &JobContext, report: &RunReport) -> String {
    let next = match report.outcome.retry_class() {
        RetryClass::Done => String::new(),
        RetryClass::Retry if ctx.attempt < ctx.max_attempts => {
            format!(
                "; would retry (attempt {} of {})",
                ctx.attempt, ctx.max_attempts
            )
        }
        RetryClass::Retry => format!(
            "; attempts exhausted ({} of {})",
            ctx.attempt, ctx.max_attempts
        ),
        RetryClass::Fail => "; would not retry".to_owned(),
        RetryClass::Uncharged => "; would retry without spending an attempt".to_owned(),
    };
    let detail = match report.outcome.retry_class() {
        RetryClass::Done => String::new(),
        _ => format!(": {}", report.outcome.describe()),
    };
    format!(
        "{}{detail}{next} [{} in {:.1?}, peak memory {}]",
        report.outcome.name(),
        ctx.task_name,
        report.elapsed,
        bytesize::ByteSize(report.peak_memory_bytes),
    )
}

fn print_log(log: &JobLog) {
    for record in &log.records {
        let fields: String = record
            .fields
            .iter()
            .map(|(k, v)| format!(" {k}={v}"))
            .collect();
        eprintln!(
            "[{} +{}ms] {}{fields}",
            record.level.as_str(),
            record.at_ms,
            record.message
        );
    }
    if log.records_dropped > 0 {
        eprintln!("[... {} log records dropped ...]", log.records_dropped);
    }
    for (name, text) in [("stdout", &log.stdout), ("stderr", &log.stderr)] {
        if !text.is_empty() {
            eprintln!("--- task {name} ---\n{}", text.trim_end());
        }
    }
}

fn json_report(
    ctx: &JobContext,
    report: &RunReport,
    output_file: &Option<PathBuf>,
) -> serde_json::Value {
    let mut json = serde_json::json!({
        "context": ctx,
        "outcome": report.outcome,
        "retry_class": report.outcome.retry_class(),
        "log": report.log,
        "elapsed_ms": report.elapsed.as_secs_f64() * 1000.0,
        "peak_memory_bytes": report.peak_memory_bytes,
        "fuel_consumed": report.fuel_consumed,
    });
    if let Some(output) = &report.output {
        json["output_bytes"] = output.len().into();
        if output_file.is_none() {
            // Text is shown as text; anything else only by size, with --output to get it.
            json["output"] = match std::str::from_utf8(output) {
                Ok(text) => text.into(),
                Err(_) => serde_json::Value::Null,
            };
        }
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Outcome;

    fn report(outcome: Outcome) -> RunReport {
        RunReport {
            outcome,
            output: None,
            log: JobLog::default(),
            elapsed: Duration::from_millis(3),
            peak_memory_bytes: 1 << 20,
            fuel_consumed: None,
        }
    }

    #[test]
    fn exit_codes_follow_retry_classes() {
        assert_eq!(exit_code(&report(Outcome::Ok)), EXIT_OK);
        assert_eq!(
            exit_code(&report(Outcome::TimedOut { timeout_ms: 1 })),
            EXIT_TRANSIENT
        );
        assert_eq!(
            exit_code(&report(Outcome::MemoryLimit { limit_bytes: 1 })),
            EXIT_PERMANENT
        );
        let host = Outcome::HostError {
            message: "x".into(),
        };
        assert_eq!(exit_code(&report(host)), EXIT_HOST);
    }

    #[test]
    fn task_name_defaults_to_the_file_stem() {
        assert_eq!(
            task_name_of(Path::new("target/x/example_hello.wasm")),
            "example_hello"
        );
    }
}
