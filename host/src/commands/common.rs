//! Flags shared by the commands that talk to Redis, and the retry-policy flags shared by
//! `upload` and `enqueue`.

use std::future::Future;

use anyhow::{Context as _, anyhow};
use clap::Args;

use super::CommandError;
use crate::queue::{Conn, DEFAULT_QUEUE, DEFAULT_TENANT, Queue, Refusal, Registry, check_name};
use crate::scheduler::{Backoff, RetryPolicy, parse_jitter};

/// Where Redis is and whose data to use.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// The Redis server, or `cluster:URL,URL,...` for any nodes of a Redis Cluster.
    #[arg(
        long,
        env = "WASM_RUNNER_REDIS",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub redis: String,

    /// The tenant whose tasks and jobs to use. Single-user setups keep the default.
    #[arg(long, env = "WASM_RUNNER_TENANT", default_value = DEFAULT_TENANT, value_name = "NAME")]
    pub tenant: String,
}

impl RedisArgs {
    /// Connects and returns a handle for the tenant under its quotas, or says why not: a
    /// tenant other than `default` must have been created with `wasm-runner tenant create`.
    pub(crate) async fn open(&self) -> Result<Queue, CommandError> {
        check_name("tenant", &self.tenant).map_err(|msg| CommandError::Usage(anyhow!(msg)))?;
        let conn = self.connect().await?;
        let record = Registry::new(conn.clone())
            .resolve(&self.tenant)
            .await
            .map_err(usage_or_host)?;
        Queue::for_tenant(conn, &record).map_err(CommandError::Usage)
    }

    /// Connects, or says why not.
    pub(crate) async fn connect(&self) -> Result<Conn, CommandError> {
        crate::queue::Target::parse(&self.redis).map_err(CommandError::Usage)?;
        crate::queue::connect(&self.redis)
            .await
            .map_err(CommandError::Host)
    }
}

/// A refusal is the user's mistake (exit 2); anything else is the host's (exit 3).
pub(crate) fn usage_or_host(err: anyhow::Error) -> CommandError {
    if Refusal::of(&err).is_some() {
        CommandError::Usage(err)
    } else {
        CommandError::Host(err)
    }
}

/// The queue a command works on.
#[derive(Debug, Clone, Args)]
pub struct QueueArg {
    /// The queue.
    #[arg(long, default_value = DEFAULT_QUEUE, value_name = "NAME")]
    pub queue: String,
}

/// Retry-policy flags; each one left out keeps the value it overrides.
#[derive(Debug, Clone, Default, Args)]
pub struct PolicyArgs {
    /// The most attempts a job gets, including the first (1 to 1000).
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,

    /// Fixed delays before each retry, e.g. `10s,30s,60s`; the last one repeats.
    #[arg(long, value_name = "LIST", conflicts_with = "backoff")]
    pub intervals: Option<String>,

    /// Exponential backoff, e.g. `exponential:base=1s,factor=2,max=10m`.
    #[arg(long, value_name = "SPEC")]
    pub backoff: Option<String>,

    /// How far each delay is spread either way at random, e.g. `20%` (0% to 100%).
    #[arg(long, value_name = "PERCENT")]
    pub jitter: Option<String>,
}

impl PolicyArgs {
    /// Whether any policy flag was given.
    pub(crate) fn is_empty(&self) -> bool {
        self.max_attempts.is_none()
            && self.intervals.is_none()
            && self.backoff.is_none()
            && self.jitter.is_none()
    }

    /// `base` with the given flags applied, validated.
    pub(crate) fn apply(&self, base: RetryPolicy) -> Result<RetryPolicy, String> {
        let mut builder = RetryPolicy::builder()
            .max_attempts(self.max_attempts.unwrap_or(base.max_attempts))
            .backoff(base.backoff)
            .jitter_percent(base.jitter_percent)
            .hint_ceiling(base.hint_ceiling);
        if let Some(list) = &self.intervals {
            if list.trim().is_empty() {
                return Err(
                    "`--intervals` is empty; give at least one delay, e.g. `10s,30s,60s`"
                        .to_owned(),
                );
            }
            if list.contains(':') {
                return Err(format!(
                    "`--intervals {list}` is not a list of delays; for exponential backoff use \
                     `--backoff {list}`"
                ));
            }
            builder = builder.backoff(Backoff::parse(list)?);
        }
        if let Some(spec) = &self.backoff {
            builder = builder.backoff(Backoff::parse(spec)?);
        }
        if let Some(jitter) = &self.jitter {
            builder = builder.jitter_percent(parse_jitter(jitter)?);
        }
        builder.build()
    }
}

/// Runs `future` on a fresh runtime, for commands that are async inside.
pub(crate) fn block_on<T>(
    future: impl Future<Output = Result<T, CommandError>>,
) -> Result<T, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")
        .map_err(CommandError::Host)?
        .block_on(future)
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<(), CommandError> {
    let text = serde_json::to_string_pretty(value)
        .context("failed to encode JSON")
        .map_err(CommandError::Host)?;
    println!("{text}");
    Ok(())
}

/// Formats a millisecond timestamp as RFC 3339.
pub(crate) fn format_time_ms(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_flags_override_only_what_they_name() {
        let args = PolicyArgs {
            max_attempts: Some(5),
            ..PolicyArgs::default()
        };
        let policy = args.apply(RetryPolicy::default()).unwrap();
        assert_eq!(policy.max_attempts, 5);
        assert_eq!(policy.backoff, RetryPolicy::default().backoff);
    }

    #[test]
    fn bad_policy_flags_are_refused() {
        let empty = PolicyArgs {
            intervals: Some(" ".into()),
            ..PolicyArgs::default()
        };
        assert!(
            empty
                .apply(RetryPolicy::default())
                .unwrap_err()
                .contains("empty")
        );
        let zero = PolicyArgs {
            max_attempts: Some(0),
            ..PolicyArgs::default()
        };
        assert!(zero.apply(RetryPolicy::default()).is_err());
        let jitter = PolicyArgs {
            jitter: Some("150%".into()),
            ..PolicyArgs::default()
        };
        assert!(jitter.apply(RetryPolicy::default()).is_err());
    }
}
