//! The multi-tenant HTTP API over the queue: tenants upload tasks, enqueue jobs, look at them,
//! requeue and cancel them, with their API tokens.
//!
//! Every `/v1` route authenticates its `Authorization: Bearer <token>` header and works on a
//! [`Queue`](crate::queue::Queue) handle for the token's tenant, built per request over the
//! shared connection. Every response is JSON; every error is `{"error": "...", "status": N}`
//! with a message that says what to change. `docs/openapi.json` describes the routes in
//! [`ROUTES`].

mod auth;
mod error;
mod extract;
mod health;
mod jobs;
mod params;
mod tasks;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{Method, Uri};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::queue::{Conn, Registry};
use crate::runtime::Executor;

use auth::TenantSlot;
use error::ApiError;
use extract::MAX_JSON_BODY_BYTES;

/// Every (method, path template) the router serves, as in `docs/openapi.json`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/v1/tasks"),
    ("GET", "/v1/tasks/{name}"),
    ("POST", "/v1/tasks/{name}"),
    ("GET", "/v1/queues"),
    ("GET", "/v1/queues/{queue}/jobs"),
    ("POST", "/v1/queues/{queue}/jobs"),
    ("GET", "/v1/queues/{queue}/jobs/{id}"),
    ("POST", "/v1/queues/{queue}/jobs/{id}/requeue"),
    ("POST", "/v1/queues/{queue}/jobs/{id}/cancel"),
    ("GET", "/v1/queues/{queue}/stats"),
];

/// What every request handler shares: the Redis connection, the tenant registry and the
/// executor that checks uploaded components. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    registry: Registry,
    executor: Arc<Executor>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("conn", &self.inner.conn)
            .finish_non_exhaustive()
    }
}

impl ApiState {
    /// The state over `conn`, checking uploads with `executor` (a worker's own, when the API
    /// runs inside `serve`, so an upload that passes is one that worker can run).
    pub fn new(conn: Conn, executor: Arc<Executor>) -> Self {
        ApiState {
            inner: Arc::new(Inner {
                registry: Registry::new(conn.clone()),
                conn,
                executor,
            }),
        }
    }

    fn conn(&self) -> &Conn {
        &self.inner.conn
    }

    fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    fn executor(&self) -> &Arc<Executor> {
        &self.inner.executor
    }
}

/// The API's routes (see [`ROUTES`]) over `state`, with JSON answers for unknown routes (404)
/// and wrong methods (405), and a debug log line per request.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/tasks", get(tasks::list))
        .route("/v1/tasks/{name}", get(tasks::show).post(tasks::upload))
        .route("/v1/queues", get(jobs::queues))
        .route(
            "/v1/queues/{queue}/jobs",
            get(jobs::list).post(jobs::enqueue),
        )
        .route("/v1/queues/{queue}/jobs/{id}", get(jobs::show))
        .route("/v1/queues/{queue}/jobs/{id}/requeue", post(jobs::requeue))
        .route("/v1/queues/{queue}/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/queues/{queue}/stats", get(jobs::stats))
        .fallback(not_found)
        // Applies to the routes above only, so it must come after all of them.
        .method_not_allowed_fallback(method_not_allowed)
        // JSON bodies are capped here; uploads read their body under the tenant's own
        // component limit instead (see `tasks::upload`).
        .layer(DefaultBodyLimit::max(MAX_JSON_BODY_BYTES as usize))
        .layer(middleware::from_fn(log_request))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
///
/// # Errors
///
/// When the listener fails in a way the server cannot recover from.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = listener
        .local_addr()
        .context("the HTTP listener has no local address")?;

    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .with_context(|| format!("the HTTP API on {address} stopped with an error"))?;
    tracing::info!(address = %address, "api stopped");
    Ok(())
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!(
        "there is no route `{method} {}`; docs/openapi.json lists the routes this server has",
        uri.path()
    ))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "`{}` does not take {method}; the `Allow` header lists the methods it takes",
            uri.path()
        ),
    )
}

/// Logs every request at debug: method, path, status, tenant and time taken. The query
/// string and headers are left out, so a token can never reach the log.
async fn log_request(mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let slot = TenantSlot::default();
    request.extensions_mut().insert(slot.clone());
    let started = Instant::now();

    let response = next.run(request).await;

    tracing::debug!(
        method = %method,
        path = %path,
        status = response.status().as_u16(),
        tenant = slot.get(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

#[cfg(test)]
mod tests;
