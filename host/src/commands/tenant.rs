//! `wasm-runner tenant`: create, list, update, rotate the token of, and delete tenants.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::anyhow;
use clap::{Args, Subcommand};

use super::CommandError;
use super::common::{block_on, print_json, usage_or_host};
use crate::config::{parse_duration, parse_size};
use crate::queue::{DEFAULT_TENANT, Queue, Quotas, Registry, check_name};

/// Manage tenants: each has its own tasks, queues and jobs, an API token and quotas.
#[derive(Debug, Args)]
pub struct TenantCommand {
    #[command(subcommand)]
    action: Action,

    /// The Redis server, or `cluster:URL,URL,...` for any nodes of a Redis Cluster.
    #[arg(
        long,
        global = true,
        env = "WASM_RUNNER_REDIS",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    redis: String,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Create a tenant and print its API token. The token is shown only this once; Redis keeps
    /// only its hash. Quotas left out are unlimited (payload 1MiB and component 64MiB by
    /// default).
    Create {
        /// The tenant's name (letters, digits, `_`, `-`, `.`).
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// List the tenants and their quotas.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Change a tenant's quotas; a flag set to `unlimited` removes that quota. Workers apply
    /// the change within a second.
    Update {
        /// The tenant.
        name: String,
        #[command(flatten)]
        quotas: QuotaArgs,
    },
    /// Replace a tenant's API token and print the new one; the old one stops working at once.
    RotateToken {
        /// The tenant.
        name: String,
    },
    /// Delete a tenant with all its tasks, jobs and results, and revoke its token. Refuses
    /// while it has jobs waiting or running, unless forced.
    Delete {
        /// The tenant.
        name: String,
        /// Delete even with jobs waiting or running; running guests are stopped by their
        /// workers when their lease renewal is refused.
        #[arg(long)]
        force: bool,
    },
}

/// A quota flag's value: a limit, or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit<T> {
    Set(T),
    Unlimited,
}

impl<T> Limit<T> {
    fn into_option(self) -> Option<T> {
        match self {
            Limit::Set(value) => Some(value),
            Limit::Unlimited => None,
        }
    }
}

fn limit<T>(text: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Limit<T>, String> {
    if matches!(text.trim(), "unlimited" | "none") {
        Ok(Limit::Unlimited)
    } else {
        parse(text).map(Limit::Set)
    }
}

fn count<T: FromStr>(text: &str) -> Result<T, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a whole number; write e.g. `10` or `unlimited`"))
}

fn limit_count_u32(text: &str) -> Result<Limit<u32>, String> {
    limit(text, count::<u32>)
}

fn limit_count_u64(text: &str) -> Result<Limit<u64>, String> {
    limit(text, count::<u64>)
}

fn limit_size(text: &str) -> Result<Limit<u64>, String> {
    limit(text, parse_size)
}

fn limit_duration(text: &str) -> Result<Limit<Duration>, String> {
    limit(text, parse_duration)
}

/// The quota flags of `tenant create` and `tenant update`.
#[derive(Debug, Clone, Default, Args)]
struct QuotaArgs {
    /// The most of the tenant's jobs running at once, across all workers.
    #[arg(long, value_name = "N", value_parser = limit_count_u32)]
    max_running: Option<Limit<u32>>,

    /// The most of the tenant's jobs waiting (queued or scheduled) at once.
    #[arg(long, value_name = "N", value_parser = limit_count_u64)]
    max_queued: Option<Limit<u64>>,

    /// The largest payload, e.g. `256KiB` (default 1MiB).
    #[arg(long, value_name = "SIZE", value_parser = limit_size)]
    max_payload: Option<Limit<u64>>,

    /// The largest component, e.g. `16MiB` (default 64MiB).
    #[arg(long, value_name = "SIZE", value_parser = limit_size)]
    max_component_size: Option<Limit<u64>>,

    /// The most memory one attempt may ask for, e.g. `128MiB`.
    #[arg(long, value_name = "SIZE", value_parser = limit_size)]
    max_memory: Option<Limit<u64>>,

    /// The longest timeout one attempt may ask for, e.g. `5m`.
    #[arg(long, value_name = "DURATION", value_parser = limit_duration)]
    max_timeout: Option<Limit<Duration>>,

    /// The fuel each attempt may burn (enforced by workers run with `--fuel-metering`).
    #[arg(long, value_name = "N", value_parser = limit_count_u64)]
    fuel: Option<Limit<u64>>,
}

impl QuotaArgs {
    /// Applies the flags given to `quotas`, leaving the others as they are.
    fn apply(&self, quotas: &mut Quotas) {
        fn set<T: Copy>(field: &mut Option<T>, flag: Option<Limit<T>>) {
            if let Some(value) = flag {
                *field = value.into_option();
            }
        }
        set(&mut quotas.max_running, self.max_running);
        set(&mut quotas.max_queued, self.max_queued);
        set(&mut quotas.max_payload_bytes, self.max_payload);
        set(&mut quotas.max_component_bytes, self.max_component_size);
        set(&mut quotas.max_memory_bytes, self.max_memory);
        set(
            &mut quotas.max_timeout_ms,
            self.max_timeout.map(|limit| match limit {
                Limit::Set(duration) => Limit::Set(duration.as_millis() as u64),
                Limit::Unlimited => Limit::Unlimited,
            }),
        );
        set(&mut quotas.fuel_per_attempt, self.fuel);
    }
}

impl TenantCommand {
    /// Runs the chosen action.
    ///
    /// # Errors
    ///
    /// A usage error for a bad name, quota, unknown tenant or refused delete; a host error
    /// when Redis fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        let usage = |msg: String| CommandError::Usage(anyhow!(msg));
        crate::queue::Target::parse(&self.redis).map_err(CommandError::Usage)?;
        if let Action::Create { name, .. }
        | Action::Update { name, .. }
        | Action::RotateToken { name }
        | Action::Delete { name, .. } = &self.action
        {
            check_name("tenant", name).map_err(usage)?;
        }
        block_on(async {
            let conn = crate::queue::connect(&self.redis)
                .await
                .map_err(CommandError::Host)?;
            let registry = Registry::new(conn.clone());
            match &self.action {
                Action::Create { name, quotas } => {
                    let mut set = Quotas::default();
                    quotas.apply(&mut set);
                    let (record, token) =
                        registry.create(name, set).await.map_err(usage_or_host)?;
                    // The token alone on stdout, so `TOKEN=$(wasm-runner tenant create x)`
                    // works; the explanation on stderr.
                    println!("{}", token.expose());
                    eprintln!(
                        "created tenant {} ({}); the token above is shown only once",
                        record.name, record.quotas
                    );
                }
                Action::List { json } => {
                    let records = registry.list().await.map_err(CommandError::Host)?;
                    if *json {
                        let view: Vec<_> = records
                            .iter()
                            .map(|r| serde_json::json!({"name": r.name, "quotas": r.quotas}))
                            .collect();
                        print_json(&view)?;
                    } else {
                        for record in &records {
                            println!("{}: {}", record.name, record.quotas);
                        }
                        if !records.iter().any(|r| r.name == DEFAULT_TENANT) {
                            println!(
                                "{DEFAULT_TENANT}: {} (implicit; no token)",
                                Quotas::default()
                            );
                        }
                    }
                }
                Action::Update { name, quotas } => {
                    let record = registry
                        .update(name, |set| quotas.apply(set))
                        .await
                        .map_err(usage_or_host)?;
                    println!("updated tenant {}: {}", record.name, record.quotas);
                }
                Action::RotateToken { name } => {
                    let token = registry.rotate_token(name).await.map_err(usage_or_host)?;
                    println!("{}", token.expose());
                    eprintln!("the old token of tenant {name} no longer works");
                }
                Action::Delete { name, force } => {
                    delete(&registry, conn, name, *force).await?;
                }
            }
            Ok(())
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

async fn delete(
    registry: &Registry,
    conn: crate::queue::Conn,
    name: &str,
    force: bool,
) -> Result<(), CommandError> {
    let record = registry.resolve(name).await.map_err(usage_or_host)?;
    let queue = Queue::for_tenant(conn, &record).map_err(CommandError::Usage)?;
    let (waiting, running) = queue.active_jobs().await.map_err(CommandError::Host)?;
    if !force && waiting + running > 0 {
        return Err(CommandError::Usage(anyhow!(
            "tenant `{name}` still has {waiting} waiting and {running} running jobs; wait for \
             them, cancel them, or pass `--force` to delete them too"
        )));
    }
    // Revoke first, so nothing new arrives while the data goes.
    if registry
        .get(name)
        .await
        .map_err(CommandError::Host)?
        .is_some()
    {
        registry.remove(name).await.map_err(usage_or_host)?;
    }
    let keys = queue.purge().await.map_err(CommandError::Host)?;
    println!("deleted tenant {name} ({keys} keys)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_flags_set_clear_and_leave_alone() {
        let mut quotas = Quotas {
            max_running: Some(4),
            max_queued: Some(100),
            ..Quotas::default()
        };
        let flags = QuotaArgs {
            max_running: Some(Limit::Unlimited),
            max_memory: Some(limit_size("128MiB").unwrap()),
            max_timeout: Some(limit_duration("5m").unwrap()),
            ..QuotaArgs::default()
        };
        flags.apply(&mut quotas);
        assert_eq!(quotas.max_running, None);
        assert_eq!(quotas.max_queued, Some(100));
        assert_eq!(quotas.max_memory_bytes, Some(128 << 20));
        assert_eq!(quotas.max_timeout_ms, Some(300_000));
    }

    #[test]
    fn quota_values_are_parsed_with_units() {
        assert_eq!(limit_count_u32("8"), Ok(Limit::Set(8)));
        assert_eq!(limit_count_u32("unlimited"), Ok(Limit::Unlimited));
        assert!(limit_count_u32("-1").unwrap_err().contains("whole number"));
        assert!(limit_size("64").unwrap_err().contains("no unit"));
        assert!(limit_duration("30").unwrap_err().contains("no unit"));
    }
}
