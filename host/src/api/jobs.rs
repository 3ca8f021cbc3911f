//! `/v1/queues`: enqueueing jobs, looking at them, requeueing and cancelling them, and queue
//! stats.

use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::auth::Tenant;
use super::error::ApiError;
use super::extract::{JsonBody, Params, PathParams};
use super::params::{self, PolicyParams};
use crate::queue::{
    Canceled, EnqueueRequest, JobState, JobSummary, JobView, QueueStats, check_name,
};
use crate::scheduler::RetryPolicy;

/// How recently a worker must have been seen to count in the stats.
const ALIVE_WITHIN: Duration = Duration::from_secs(60);
/// How many jobs a listing returns unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;
/// The most jobs one listing returns.
const MAX_LIMIT: usize = 1000;

/// `GET /v1/queues`.
#[derive(Debug, Serialize)]
pub(crate) struct QueueList {
    queues: Vec<String>,
}

/// The response to an enqueue.
#[derive(Debug, Serialize)]
pub(crate) struct EnqueuedBody {
    id: String,
    created: bool,
}

/// `GET /v1/queues/{queue}/jobs`.
#[derive(Debug, Serialize)]
pub(crate) struct JobList {
    jobs: Vec<JobSummary>,
}

/// The response to a requeue.
#[derive(Debug, Serialize)]
pub(crate) struct Requeued {
    id: String,
    state: JobState,
}

/// The response to a cancel.
#[derive(Debug, Serialize)]
pub(crate) struct CanceledBody {
    id: String,
    canceled: bool,
    previous_state: JobState,
}

/// The body of `POST /v1/queues/{queue}/jobs`. Durations and sizes are text, as on the CLI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnqueueBody {
    task: String,
    /// Any JSON value, `null` included; absent means `{}`.
    #[serde(default, deserialize_with = "present")]
    payload: Option<serde_json::Value>,
    payload_text: Option<String>,
    timeout: Option<String>,
    memory: Option<String>,
    max_attempts: Option<u32>,
    intervals: Option<String>,
    backoff: Option<String>,
    jitter: Option<String>,
    delay: Option<String>,
    at_ms: Option<u64>,
    idempotency_key: Option<String>,
}

/// Deserializes a field that is present, so that an explicit `null` is `Some(Null)` rather
/// than the same as leaving the field out.
fn present<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

/// The query string of `GET /v1/queues/{queue}/jobs`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListParams {
    state: Option<String>,
    task: Option<String>,
    limit: Option<String>,
}

/// The query string of `POST /v1/queues/{queue}/jobs/{id}/requeue`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequeueParams {
    latest: Option<String>,
}

/// `GET /v1/queues`: the tenant's queues, sorted.
pub(crate) async fn queues(tenant: Tenant) -> Result<Json<QueueList>, ApiError> {
    let queues = tenant.queue.queues().await?;
    Ok(Json(QueueList { queues }))
}

/// `POST /v1/queues/{queue}/jobs`: 201 for a new job, 200 when the idempotency key named an
/// earlier one.
pub(crate) async fn enqueue(
    tenant: Tenant,
    PathParams(queue): PathParams<String>,
    JsonBody(body): JsonBody<EnqueueBody>,
) -> Result<(StatusCode, Json<EnqueuedBody>), ApiError> {
    let policy = body.policy_params();
    let policy = if policy.is_empty() {
        None
    } else {
        // Overrides refine the task's own policy. An unknown task is reported by the enqueue
        // itself, with the message every client gets for it.
        let base = tenant
            .queue
            .task(&body.task)
            .await?
            .map_or_else(RetryPolicy::default, |task| task.defaults.policy);
        Some(policy.apply(base)?)
    };
    let request = body.into_request(policy)?;

    // The tenant's payload limit applies inside the queue; the API adds none of its own.
    let enqueued = tenant.queue.enqueue(&queue, &request, usize::MAX).await?;
    let status = if enqueued.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(EnqueuedBody {
            id: enqueued.id,
            created: enqueued.created,
        }),
    ))
}

/// `GET /v1/queues/{queue}/jobs?state=...`: up to `limit` jobs in one state.
pub(crate) async fn list(
    tenant: Tenant,
    PathParams(queue): PathParams<String>,
    Params(query): Params<ListParams>,
) -> Result<Json<JobList>, ApiError> {
    let (state, task, limit) = query.parse()?;

    let jobs = tenant.queue.jobs(&queue, state, task, limit).await?;
    Ok(Json(JobList { jobs }))
}

/// `GET /v1/queues/{queue}/jobs/{id}`: the job with its attempts.
pub(crate) async fn show(
    tenant: Tenant,
    PathParams((queue, id)): PathParams<(String, String)>,
) -> Result<Json<JobView>, ApiError> {
    check_job_path(&queue, &id)?;

    match tenant.queue.job(&queue, &id).await? {
        Some(job) => Ok(Json(job)),
        None => Err(no_such_job(&queue, &id)),
    }
}

/// `POST /v1/queues/{queue}/jobs/{id}/requeue`: a failed job back to the queue with fresh
/// attempts; `latest=true` also moves it to its task's newest version.
pub(crate) async fn requeue(
    tenant: Tenant,
    PathParams((queue, id)): PathParams<(String, String)>,
    Params(query): Params<RequeueParams>,
) -> Result<Json<Requeued>, ApiError> {
    check_job_path(&queue, &id)?;
    let latest = query
        .latest
        .as_deref()
        .map(|text| params::boolean("latest", text))
        .transpose()?
        .unwrap_or(false);

    // The requeue script only says "no failed job with that id"; look first to tell a
    // missing job (404) from one in another state (409).
    let Some(job) = tenant.queue.job(&queue, &id).await? else {
        return Err(no_such_job(&queue, &id));
    };
    if job.state != JobState::Failed {
        return Err(not_failed(&id, job.state));
    }
    if latest && tenant.queue.task(&job.task).await?.is_none() {
        return Err(ApiError::conflict(format!(
            "job {id} runs task `{}`, which no longer exists, so there is no newest version to \
             move it to; upload the task again or requeue without `latest=true`",
            job.task
        )));
    }

    if !tenant.queue.requeue(&queue, &id, latest).await? {
        // It changed between the look and the requeue: report what it is now.
        return match tenant.queue.job(&queue, &id).await? {
            Some(job) => Err(not_failed(&id, job.state)),
            None => Err(no_such_job(&queue, &id)),
        };
    }
    tracing::info!(tenant = %tenant.name, queue = %queue, job = %id, latest, "job requeued");
    Ok(Json(Requeued {
        id,
        state: JobState::Queued,
    }))
}

/// `POST /v1/queues/{queue}/jobs/{id}/cancel`: stops a job that has not finished.
pub(crate) async fn cancel(
    tenant: Tenant,
    PathParams((queue, id)): PathParams<(String, String)>,
) -> Result<Json<CanceledBody>, ApiError> {
    check_job_path(&queue, &id)?;

    match tenant.queue.cancel(&queue, &id).await? {
        Canceled::Done(previous_state) => {
            tracing::info!(
                tenant = %tenant.name,
                queue = %queue,
                job = %id,
                previous_state = previous_state.as_str(),
                "job canceled"
            );
            Ok(Json(CanceledBody {
                id,
                canceled: true,
                previous_state,
            }))
        }
        Canceled::AlreadyFinished(state) => Err(ApiError::conflict(format!(
            "job {id} has already finished ({}); there is nothing to cancel",
            state.as_str()
        ))),
    }
}

/// `GET /v1/queues/{queue}/stats`: counts per state, per task, and the live workers.
pub(crate) async fn stats(
    tenant: Tenant,
    PathParams(queue): PathParams<String>,
) -> Result<Json<QueueStats>, ApiError> {
    let stats = tenant.queue.stats(&queue, ALIVE_WITHIN).await?;
    Ok(Json(stats))
}

/// Checks the names of a job route: an invalid queue name is 422, like on every queue route;
/// an id that breaks the naming rule is simply no job's (ids are UUIDs).
fn check_job_path(queue: &str, id: &str) -> Result<(), ApiError> {
    check_name("queue", queue).map_err(ApiError::invalid)?;

    // Ids are spliced into Redis keys, so one with other characters (`:` above all) could name
    // another key of a job, such as its attempt list.
    if check_name("job id", id).is_err() {
        return Err(no_such_job(queue, id));
    }
    Ok(())
}

fn no_such_job(queue: &str, id: &str) -> ApiError {
    ApiError::not_found(format!(
        "there is no job {id} in queue `{queue}`; list jobs with `GET /v1/queues/{queue}/jobs`"
    ))
}

fn not_failed(id: &str, state: JobState) -> ApiError {
    ApiError::conflict(format!(
        "job {id} is {}, not failed; only failed jobs can be requeued",
        state.as_str()
    ))
}

impl EnqueueBody {
    /// The retry-policy overrides the body asks for.
    fn policy_params(&self) -> PolicyParams<'_> {
        PolicyParams {
            max_attempts: self.max_attempts,
            intervals: self.intervals.as_deref(),
            backoff: self.backoff.as_deref(),
            jitter: self.jitter.as_deref(),
        }
    }

    /// The queue's request for this body, with `policy` already resolved.
    fn into_request(self, policy: Option<RetryPolicy>) -> Result<EnqueueRequest, ApiError> {
        let payload = match (self.payload, self.payload_text) {
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "`payload` and `payload_text` both give the job's input; send only one: \
                     `payload` for JSON, `payload_text` for a string stored as it is",
                ));
            }
            (Some(value), None) => value.to_string().into_bytes(),
            (None, Some(text)) => text.into_bytes(),
            (None, None) => b"{}".to_vec(),
        };
        if self.delay.is_some() && self.at_ms.is_some() {
            return Err(ApiError::invalid(
                "`delay` and `at_ms` both say when the job may run; send only one",
            ));
        }

        Ok(EnqueueRequest {
            policy,
            timeout: self
                .timeout
                .as_deref()
                .map(|text| params::duration("timeout", text))
                .transpose()?,
            memory_bytes: self
                .memory
                .as_deref()
                .map(|text| params::size("memory", text))
                .transpose()?,
            delay: self
                .delay
                .as_deref()
                .map(|text| params::duration("delay", text))
                .transpose()?,
            at_ms: self.at_ms,
            idempotency_key: self.idempotency_key,
            ..EnqueueRequest::new(self.task, payload)
        })
    }
}

impl ListParams {
    /// The state (required), the task filter and the limit.
    fn parse(&self) -> Result<(JobState, Option<&str>, usize), ApiError> {
        let Some(state) = &self.state else {
            return Err(ApiError::invalid(
                "`state` is required; add e.g. `?state=failed` (queued, scheduled, running, \
                 succeeded or failed)",
            ));
        };
        let state =
            JobState::parse(state).map_err(|msg| ApiError::invalid(format!("`state`: {msg}")))?;

        let task = self.task.as_deref();
        if let Some(task) = task {
            check_name("task", task).map_err(ApiError::invalid)?;
        }

        let limit = match &self.limit {
            Some(text) => params::number::<usize>("limit", text)?,
            None => DEFAULT_LIMIT,
        };
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "`limit` is {limit}; use 1 to {MAX_LIMIT}"
            )));
        }
        Ok((state, task, limit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> EnqueueBody {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn payloads_default_to_an_empty_object_and_keep_null() {
        let request = body(serde_json::json!({"task": "t"}))
            .into_request(None)
            .unwrap();
        assert_eq!(request.payload, b"{}");
        let request = body(serde_json::json!({"task": "t", "payload": null}))
            .into_request(None)
            .unwrap();
        assert_eq!(request.payload, b"null");
        let request = body(serde_json::json!({"task": "t", "payload": {"n": 1}}))
            .into_request(None)
            .unwrap();
        assert_eq!(request.payload, br#"{"n":1}"#);
        let request = body(serde_json::json!({"task": "t", "payload_text": "raw {"}))
            .into_request(None)
            .unwrap();
        assert_eq!(request.payload, b"raw {");
    }

    #[test]
    fn enqueue_fields_are_parsed() {
        let request = body(serde_json::json!({
            "task": "t",
            "timeout": "2s",
            "memory": "32MiB",
            "delay": "10s",
            "idempotency_key": "k1",
        }))
        .into_request(None)
        .unwrap();
        assert_eq!(request.timeout, Some(Duration::from_secs(2)));
        assert_eq!(request.memory_bytes, Some(32 << 20));
        assert_eq!(request.delay, Some(Duration::from_secs(10)));
        assert_eq!(request.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn conflicting_or_bad_enqueue_fields_are_422() {
        for json in [
            serde_json::json!({"task": "t", "payload": 1, "payload_text": "1"}),
            serde_json::json!({"task": "t", "delay": "1s", "at_ms": 5}),
            serde_json::json!({"task": "t", "timeout": "soon"}),
            serde_json::json!({"task": "t", "memory": "64"}),
        ] {
            let err = body(json.clone()).into_request(None).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{json}");
        }
    }

    #[test]
    fn job_paths_refuse_bad_queues_and_hide_odd_ids() {
        assert!(check_job_path("default", "0190a1b2-0000-7000-8000-000000000000").is_ok());
        let status = |queue: &str, id: &str| check_job_path(queue, id).unwrap_err().status();
        assert_eq!(status("bad q", "x"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status("default", "x:attempts"), StatusCode::NOT_FOUND);
        assert_eq!(status("default", &"x".repeat(65)), StatusCode::NOT_FOUND);
        assert_eq!(status("default", "{acme}"), StatusCode::NOT_FOUND);
    }

    #[test]
    fn listings_need_a_valid_state_and_limit() {
        let params = |state: Option<&str>, limit: Option<&str>| ListParams {
            state: state.map(str::to_owned),
            task: None,
            limit: limit.map(str::to_owned),
        };
        assert_eq!(
            params(Some("failed"), None).parse().unwrap(),
            (JobState::Failed, None, DEFAULT_LIMIT)
        );
        assert_eq!(
            params(Some("queued"), Some("1000")).parse().unwrap().2,
            1000
        );
        for bad in [
            params(None, None),
            params(Some("done"), None),
            params(Some("failed"), Some("0")),
            params(Some("failed"), Some("1001")),
            params(Some("failed"), Some("ten")),
        ] {
            let err = bad.parse().unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
        }
        let bad_task = ListParams {
            task: Some("a b".into()),
            ..params(Some("failed"), None)
        };
        assert!(bad_task.parse().is_err());
    }
}
