//! `/v1/tasks`: uploading task components and listing their versions.

use std::time::Duration;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::ApiState;
use super::auth::Tenant;
use super::error::ApiError;
use super::extract::{MAX_UPLOAD_BYTES, Oversize, Params, PathParams, read_limited};
use super::params::{self, PolicyParams};
use crate::config::Limits;
use crate::queue::{Quotas, TaskDefaults, TaskVersion, check_name};
use crate::scheduler::RetryPolicy;

/// The timeout a task gets when the upload names none and the tenant has no lower ceiling.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The memory limit a task gets when the upload names none and the tenant has no lower ceiling.
const DEFAULT_MEMORY_BYTES: u64 = 64 << 20;

/// `GET /v1/tasks`.
#[derive(Debug, Serialize)]
pub(crate) struct TaskList {
    tasks: Vec<TaskVersion>,
}

/// `GET /v1/tasks/{name}`.
#[derive(Debug, Serialize)]
pub(crate) struct TaskDetail {
    task: TaskVersion,
    versions: Vec<TaskVersion>,
}

/// The query string of `POST /v1/tasks/{name}`: the task's defaults, all as text.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UploadParams {
    timeout: Option<String>,
    memory: Option<String>,
    max_attempts: Option<String>,
    intervals: Option<String>,
    backoff: Option<String>,
    jitter: Option<String>,
}

/// `GET /v1/tasks`: the newest version of every task of the tenant.
pub(crate) async fn list(tenant: Tenant) -> Result<Json<TaskList>, ApiError> {
    let tasks = tenant.queue.tasks().await?;
    Ok(Json(TaskList { tasks }))
}

/// `GET /v1/tasks/{name}`: the newest version and every version, oldest first.
pub(crate) async fn show(
    tenant: Tenant,
    PathParams(name): PathParams<String>,
) -> Result<Json<TaskDetail>, ApiError> {
    let Some(task) = tenant.queue.task(&name).await? else {
        return Err(ApiError::not_found(format!(
            "there is no task `{name}`; upload it with `POST /v1/tasks/{name}`"
        )));
    };

    let versions = tenant.queue.versions(&name).await?;
    Ok(Json(TaskDetail { task, versions }))
}

/// `POST /v1/tasks/{name}`: checks the component in the body and stores it as the task's
/// newest version.
pub(crate) async fn upload(
    tenant: Tenant,
    State(state): State<ApiState>,
    PathParams(name): PathParams<String>,
    Params(query): Params<UploadParams>,
    request: Request,
) -> Result<(StatusCode, Json<TaskVersion>), ApiError> {
    // Everything that needs no body is checked first, so a mistake costs no upload.
    check_name("task", &name).map_err(ApiError::invalid)?;
    let defaults = query.defaults(tenant.queue.quotas())?;

    let wasm = read_component(request, &tenant).await?;

    // Compiling takes milliseconds to seconds of CPU; keep it off the async workers.
    let executor = state.executor().clone();
    let bytes = wasm.clone();
    let loaded = tokio::task::spawn_blocking(move || executor.load(&bytes).map(drop))
        .await
        .map_err(|err| ApiError::internal(format!("checking the component failed: {err}")))?;
    loaded.map_err(|err| ApiError::invalid(format!("cannot upload task `{name}`: {err}")))?;

    let version = tenant.queue.upload(&name, &wasm, &defaults).await?;
    tracing::info!(
        tenant = %tenant.name,
        task = %version.name,
        version = version.version,
        size_bytes = version.size_bytes,
        "task uploaded"
    );
    Ok((StatusCode::CREATED, Json(version)))
}

/// The body of an upload, refused with 413 past the tenant's component limit (capped at
/// [`MAX_UPLOAD_BYTES`]) before more than that is buffered.
async fn read_component(request: Request, tenant: &Tenant) -> Result<axum::body::Bytes, ApiError> {
    let tenant_limit = tenant.queue.quotas().component_limit();
    let limit = tenant_limit.min(MAX_UPLOAD_BYTES);

    let oversize = match read_limited(request, limit).await? {
        Ok(bytes) => return Ok(bytes),
        Err(oversize) => oversize,
    };
    // Past the limit the full size is only known when the client declared it.
    let size = match oversize {
        Oversize::Declared(bytes) => format!("is {}, over", bytesize::ByteSize(bytes)),
        Oversize::Streamed => "is over".to_owned(),
    };
    if limit < tenant_limit {
        return Err(ApiError::too_large(format!(
            "the component {size} {}, the most this API takes in one upload; build it with \
             `--release` and `opt-level = \"s\"` to shrink it",
            bytesize::ByteSize(MAX_UPLOAD_BYTES)
        )));
    }
    Err(ApiError::too_large(format!(
        "the component {size} tenant `{}`'s limit of {}; build it with `--release` and \
         `opt-level = \"s\"`, or raise the limit with `wasm-runner tenant update {} \
         --max-component-size SIZE`",
        tenant.name,
        bytesize::ByteSize(tenant_limit),
        tenant.name
    )))
}

impl UploadParams {
    /// The task defaults these parameters ask for. A limit left out is 30s / 64MiB, or the
    /// tenant's ceiling when that is lower, so an upload that names no limits always fits.
    fn defaults(&self, quotas: &Quotas) -> Result<TaskDefaults, ApiError> {
        let timeout = match &self.timeout {
            Some(text) => params::duration("timeout", text)?,
            None => quotas.max_timeout_ms.map_or(DEFAULT_TIMEOUT, |ceiling| {
                DEFAULT_TIMEOUT.min(Duration::from_millis(ceiling))
            }),
        };
        let memory_bytes = match &self.memory {
            Some(text) => params::size("memory", text)?,
            None => quotas
                .max_memory_bytes
                .map_or(DEFAULT_MEMORY_BYTES, |ceiling| {
                    DEFAULT_MEMORY_BYTES.min(ceiling)
                }),
        };
        Limits {
            memory_bytes,
            timeout,
            fuel: None,
        }
        .validate()
        .map_err(ApiError::invalid)?;

        let max_attempts = self
            .max_attempts
            .as_deref()
            .map(|text| params::number("max_attempts", text))
            .transpose()?;
        let policy = PolicyParams {
            max_attempts,
            intervals: self.intervals.as_deref(),
            backoff: self.backoff.as_deref(),
            jitter: self.jitter.as_deref(),
        }
        .apply(RetryPolicy::default())?;

        Ok(TaskDefaults {
            policy,
            timeout_ms: timeout.as_millis() as u64,
            memory_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fall_to_the_tenants_ceilings() {
        let quotas = Quotas {
            max_memory_bytes: Some(16 << 20),
            max_timeout_ms: Some(5_000),
            ..Quotas::default()
        };
        let defaults = UploadParams::default().defaults(&quotas).unwrap();
        assert_eq!(defaults.memory_bytes, 16 << 20);
        assert_eq!(defaults.timeout_ms, 5_000);

        let defaults = UploadParams::default()
            .defaults(&Quotas::default())
            .unwrap();
        assert_eq!(defaults.memory_bytes, 64 << 20);
        assert_eq!(defaults.timeout_ms, 30_000);
        assert_eq!(defaults.policy, RetryPolicy::default());
    }

    #[test]
    fn given_values_are_parsed_and_checked() {
        let params = UploadParams {
            timeout: Some("2s".into()),
            memory: Some("32MiB".into()),
            max_attempts: Some("5".into()),
            intervals: Some("1s,2s".into()),
            ..UploadParams::default()
        };
        let defaults = params.defaults(&Quotas::default()).unwrap();
        assert_eq!(defaults.timeout_ms, 2_000);
        assert_eq!(defaults.memory_bytes, 32 << 20);
        assert_eq!(defaults.policy.max_attempts, 5);

        for bad in [
            UploadParams {
                timeout: Some("30".into()),
                ..UploadParams::default()
            },
            UploadParams {
                memory: Some("1KiB".into()),
                ..UploadParams::default()
            },
            UploadParams {
                max_attempts: Some("many".into()),
                ..UploadParams::default()
            },
        ] {
            let err = bad.defaults(&Quotas::default()).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        }
    }
}
