//! `wasm-runner upload`: checks a component and stores it as a new version of a task.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use clap::Args;

use super::CommandError;
use super::common::{PolicyArgs, RedisArgs, block_on, usage_or_host};
use crate::config::{Limits, format_duration, parse_duration, parse_size};
use crate::queue::{TaskDefaults, check_name};
use crate::runtime::{EngineOptions, Executor};
use crate::scheduler::RetryPolicy;

/// Check a task component and store it in Redis as the newest version of a task.
///
/// Uploading a name again makes a new version; jobs already enqueued keep running the version
/// they were enqueued against.
#[derive(Debug, Args)]
pub struct UploadCommand {
    /// The component, built with `cargo build --target wasm32-wasip2`.
    component: PathBuf,

    /// The task's name (letters, digits, `_`, `-`, `.`).
    #[arg(long, value_name = "NAME")]
    name: String,

    #[command(flatten)]
    policy: PolicyArgs,

    /// Default wall-clock limit per attempt.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,

    /// Default memory limit per attempt.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    memory: u64,

    #[command(flatten)]
    redis: RedisArgs,
}

impl UploadCommand {
    /// Validates and stores the component; prints the new version.
    ///
    /// # Errors
    ///
    /// A usage error for an invalid name, policy, limit or component; a host error when Redis
    /// fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        check_name("task", &self.name).map_err(|msg| CommandError::Usage(anyhow!(msg)))?;
        let policy = self
            .policy
            .apply(RetryPolicy::default())
            .map_err(|msg| CommandError::Usage(anyhow!(msg)))?;
        Limits {
            memory_bytes: self.memory,
            timeout: self.timeout,
            fuel: None,
        }
        .validate()
        .map_err(|msg| CommandError::Usage(anyhow!(msg)))?;
        let wasm = std::fs::read(&self.component)
            .with_context(|| format!("failed to read component `{}`", self.component.display()))
            .map_err(CommandError::Usage)?;

        // The same checks as `run`, so a task that uploads is a task a worker can run.
        let executor = Executor::new(EngineOptions {
            max_concurrent: 1,
            ..EngineOptions::default()
        })
        .map_err(CommandError::Host)?;
        executor.load(&wasm).map_err(|err| {
            CommandError::Usage(anyhow!(
                "cannot upload `{}`: {err}",
                self.component.display()
            ))
        })?;

        let defaults = TaskDefaults {
            policy,
            timeout_ms: self.timeout.as_millis() as u64,
            memory_bytes: self.memory,
        };
        let version = block_on(async {
            let queue = self.redis.open().await?;
            queue
                .upload(&self.name, &wasm, &defaults)
                .await
                .map_err(usage_or_host)
        })?;
        println!(
            "uploaded {} version {} (sha256 {}, {}): {}, timeout {}, memory {}",
            version.name,
            version.version,
            &version.digest[..16],
            bytesize::ByteSize(version.size_bytes),
            version.defaults.policy,
            format_duration(Duration::from_millis(version.defaults.timeout_ms)),
            bytesize::ByteSize(version.defaults.memory_bytes),
        );
        Ok(ExitCode::SUCCESS)
    }
}
