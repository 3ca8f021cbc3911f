//! `wasm-runner api`: serves the HTTP API until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::anyhow;
use clap::Args;

use super::CommandError;
use super::common::block_on;
use crate::api::{ApiState, serve_http};
use crate::queue::Target;
use crate::runtime::{EngineOptions, Executor};

/// Serve the HTTP API: tenants upload tasks and manage jobs with their API tokens.
///
/// Routes and shapes are in `docs/openapi.json`. Runs no jobs itself; start workers with
/// `wasm-runner serve`. Stops on SIGTERM or Ctrl-C after finishing the requests in flight.
#[derive(Debug, Args)]
pub struct ApiCommand {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    http: SocketAddr,

    /// The Redis server, or `cluster:URL,URL,...` for any nodes of a Redis Cluster.
    #[arg(
        long,
        env = "WASM_RUNNER_REDIS",
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    redis: String,
}

impl ApiCommand {
    /// Binds, connects to Redis and serves until a signal.
    ///
    /// # Errors
    ///
    /// A usage error for a bad Redis URL or an address that cannot be listened on; a host
    /// error when Redis does not answer at start or the server fails.
    pub fn execute(self) -> Result<ExitCode, CommandError> {
        Target::parse(&self.redis).map_err(CommandError::Usage)?;
        // Uploads are checked one at a time; the API runs no jobs, so one slot is plenty.
        let executor = Executor::new(EngineOptions {
            max_concurrent: 1,
            ..EngineOptions::default()
        })
        .map_err(CommandError::Host)?;

        block_on(async move {
            // Bind first: a taken port is the likelier mistake, and it needs no Redis to see.
            let listener = tokio::net::TcpListener::bind(self.http)
                .await
                .map_err(|err| bind_error(self.http, &err))?;
            let conn = crate::queue::connect(&self.redis)
                .await
                .map_err(CommandError::Host)?;
            let address = listener.local_addr().unwrap_or(self.http);
            tracing::info!(address = %address, "api listening");

            serve_http(
                listener,
                ApiState::new(conn, Arc::new(executor)),
                super::serve::shutdown_signal(),
            )
            .await
            .map_err(CommandError::Host)
        })?;
        Ok(ExitCode::SUCCESS)
    }
}

pub(super) fn bind_error(address: SocketAddr, err: &std::io::Error) -> CommandError {
    let message = match err.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("address {address} is in use; pick another with --http")
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("no permission to listen on {address}; pick a port above 1023 with --http")
        }
        _ => format!("cannot listen on {address} ({err}); pick another address with --http"),
    };
    CommandError::Usage(anyhow!(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_a_usage_error_that_names_the_flag() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap();
        let err = std::net::TcpListener::bind(address).unwrap_err();
        let err = bind_error(address, &err);
        assert_eq!(err.exit_code(), super::super::EXIT_USAGE);
        assert_eq!(
            err.to_string(),
            format!("address {address} is in use; pick another with --http")
        );
    }
}
