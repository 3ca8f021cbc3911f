//! `/healthz` (the process is up) and `/readyz` (it can reach Redis), for load balancers and
//! orchestrators. Neither needs a token.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;

/// How long Redis gets to answer the readiness PING. Short, so a probe never hangs on a
/// Redis that is down or partitioned away.
const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /healthz`: always ok while the process serves requests; touches nothing else, so a
/// Redis outage does not get the API restarted.
pub(crate) async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: ready when Redis answers a PING within [`READY_TIMEOUT`].
pub(crate) async fn readyz(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let mut conn = state.conn().clone();
    let command = redis::cmd("PING");
    let ping = command.query_async::<String>(&mut conn);

    match tokio::time::timeout(READY_TIMEOUT, ping).await {
        Ok(Ok(_)) => Ok(Json(json!({"status": "ready"}))),
        Ok(Err(err)) => Err(ApiError::unavailable(format!(
            "Redis is unavailable ({err}); the API cannot serve requests until it answers"
        ))),
        Err(_) => Err(ApiError::unavailable(format!(
            "Redis did not answer a PING within {} ms; the API cannot serve requests until it \
             does",
            READY_TIMEOUT.as_millis()
        ))),
    }
}
