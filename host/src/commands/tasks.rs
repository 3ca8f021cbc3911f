//! `wasm-runner tasks`: lists the tenant's tasks with their versions and digests.

use std::process::ExitCode;

use clap::Args;

use super::CommandError;
use super::common::{RedisArgs, block_on, format_time_ms, print_json};

/// List tasks: name, newest version, digest and default policy.
#[derive(Debug, Args)]
pub struct TasksCommand {
    /// Also list every earlier version of each task.
    #[arg(long)]
    all_versions: bool,

    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    redis: RedisArgs,
}

impl TasksCommand {
    /// Prints the list.
    ///
    /// # Errors
    ///
    /// A host error when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let versions = block_on(async {
            let queue = self.redis.open().await?;
            let latest = queue.tasks().await.map_err(CommandError::Host)?;
            if !self.all_versions {
                return Ok(latest);
            }
            let mut all = Vec::new();
            for task in latest {
                all.extend(
                    queue
                        .versions(&task.name)
                        .await
                        .map_err(CommandError::Host)?,
                );
            }
            Ok(all)
        })?;
        if self.json {
            print_json(&versions)?;
            return Ok(ExitCode::SUCCESS);
        }
        if versions.is_empty() {
            println!("no tasks yet; upload one with `wasm-runner upload FILE --name NAME`");
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<24} {:>7}  {:<16}  {:<24}  POLICY",
            "TASK", "VERSION", "DIGEST", "UPLOADED"
        );
        for task in versions {
            println!(
                "{:<24} {:>7}  {:<16}  {:<24}  {}",
                task.name,
                task.version,
                &task.digest[..16],
                format_time_ms(task.uploaded_at_ms),
                task.defaults.policy
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}
