//! The `wasm-runner` subcommands. Each lives in its own file as a clap struct with an
//! `execute` method; this file holds the top-level parser and the exit codes.

mod api;
mod common;
mod enqueue;
mod inspect;
mod run;
mod serve;
mod tasks;
mod tenant;
mod upload;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use api::ApiCommand;
pub use common::{PolicyArgs, QueueArg, RedisArgs};
pub use enqueue::EnqueueCommand;
pub use inspect::{CancelCommand, JobCommand, JobsCommand, RequeueCommand, StatsCommand};
pub use run::RunCommand;
pub use serve::ServeCommand;
pub use tasks::TasksCommand;
pub use tenant::TenantCommand;
pub use upload::UploadCommand;

/// Exit code: the job succeeded.
pub const EXIT_OK: u8 = 0;
/// Exit code: bad flags or bad input (a file that is not a component, a missing payload file).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the host failed (not the task's fault).
pub const EXIT_HOST: u8 = 3;
/// Exit code: the task failed in a way worth retrying (transient error, timeout).
pub const EXIT_TRANSIENT: u8 = 10;
/// Exit code: the task failed for good (permanent error, trap, memory or fuel limit).
pub const EXIT_PERMANENT: u8 = 11;

/// Runs jobs as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wasm-runner", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Run(RunCommand),
    Upload(UploadCommand),
    Tasks(TasksCommand),
    Enqueue(EnqueueCommand),
    Serve(ServeCommand),
    Api(ApiCommand),
    Job(JobCommand),
    Jobs(JobsCommand),
    Requeue(RequeueCommand),
    Cancel(CancelCommand),
    Stats(StatsCommand),
    Tenant(TenantCommand),
}

/// Why a command failed, which decides its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The user's flags or files are wrong; exit code [`EXIT_USAGE`].
    #[error(transparent)]
    Usage(anyhow::Error),
    /// The host could not do its part; exit code [`EXIT_HOST`].
    #[error(transparent)]
    Host(anyhow::Error),
}

impl CommandError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            CommandError::Usage(_) => EXIT_USAGE,
            CommandError::Host(_) => EXIT_HOST,
        }
    }
}

impl Cli {
    /// Runs the chosen subcommand and returns the process exit code.
    ///
    /// # Errors
    ///
    /// Returns a [`CommandError`] whose message is meant for the user as it stands.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        match self.command {
            Command::Run(command) => command.execute(),
            Command::Upload(command) => command.execute(),
            Command::Tasks(command) => command.execute(),
            Command::Enqueue(command) => command.execute(),
            Command::Serve(command) => command.execute(),
            Command::Api(command) => command.execute(),
            Command::Job(command) => command.execute(),
            Command::Jobs(command) => command.execute(),
            Command::Requeue(command) => command.execute(),
            Command::Cancel(command) => command.execute(),
            Command::Stats(command) => command.execute(),
            Command::Tenant(command) => command.execute(),
        }
    }
}
