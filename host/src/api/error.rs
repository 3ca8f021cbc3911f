//! The one error type every handler returns, and how queue errors and axum's own rejections
//! become the JSON body `{"error": "<message>", "status": <code>}`.
//!
//! A client's mistake must never come back as a 500 or as axum's plain-text rejection, so every
//! way a request can fail passes through here.

use axum::Json;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::queue::Refusal;

/// A failed request: the status to answer with and a message that says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

/// The body of every error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    status: u16,
}

impl ApiError {
    /// An error with `status` and `message`.
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// 400: the request could not be read at all (e.g. a body that is not JSON).
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 401: no valid API token.
    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }

    /// 404: no such object for this tenant.
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// 409: the object is not in a state that allows the change.
    pub(crate) fn conflict(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, message)
    }

    /// 413: a body over a size limit.
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 422: the request was read but a value in it is not acceptable.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 503: Redis did not answer; the same request may work a moment later.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// 500: a bug in the server, never the client's doing.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The status code this error answers with.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// The message for the client.
    #[cfg(test)]
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// Maps a failed read of a request body: over the route's cap is 413, anything else (the
    /// client hung up, a broken chunked encoding) is 400.
    pub(crate) fn from_body(rejection: &BytesRejection, cap: u64) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::too_large(format!(
                "the request body is over {}, the most this route accepts; send a smaller body",
                bytesize::ByteSize(cap)
            ));
        }
        ApiError::bad_request(format!(
            "failed to read the request body ({}); send the request again",
            rejection.body_text()
        ))
    }

    /// Maps a path segment that could not be decoded (e.g. invalid UTF-8) to 422, like any
    /// other invalid name.
    pub(crate) fn from_path(rejection: &PathRejection) -> Self {
        if rejection.status().is_server_error() {
            return ApiError::internal(format!(
                "the route's path parameters do not match its handler ({}); this is a bug in \
                 wasm-runner, please report it",
                rejection.body_text()
            ));
        }
        ApiError::invalid(format!(
            "the URL path is not valid ({}); names use only letters, digits, `_`, `-` and `.`",
            rejection.body_text()
        ))
    }

    /// Maps a query string that does not fit the route's parameters to 422.
    pub(crate) fn from_query(rejection: &QueryRejection) -> Self {
        ApiError::invalid(format!(
            "the query string is not valid ({}); see docs/openapi.json for the parameters this \
             route takes",
            rejection.body_text()
        ))
    }
}

impl From<anyhow::Error> for ApiError {
    /// A [`Refusal`] is the client's mistake and keeps its message; a Redis failure is 503;
    /// anything else is a server bug and is logged as one.
    fn from(err: anyhow::Error) -> Self {
        if let Some(refusal) = Refusal::of(&err) {
            let status = match refusal {
                Refusal::NotFound(_) => StatusCode::NOT_FOUND,
                Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::Invalid(_) | Refusal::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
                Refusal::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
                Refusal::Conflict(_) => StatusCode::CONFLICT,
            };
            return ApiError::new(status, refusal.to_string());
        }

        if let Some(full) = err.downcast_ref::<crate::queue::RedisFull>() {
            tracing::warn!(error = %full, "Redis is out of memory");
            return ApiError::unavailable(full.to_string());
        }

        let from_redis = err
            .chain()
            .any(|cause| cause.downcast_ref::<redis::RedisError>().is_some());
        if from_redis {
            tracing::warn!(error = %format!("{err:#}"), "Redis failed during a request");
            return ApiError::unavailable(format!(
                "Redis is unavailable ({err:#}); retry the request in a few seconds"
            ));
        }

        tracing::error!(error = %format!("{err:#}"), "request failed on a server bug");
        ApiError::internal(format!(
            "the server failed ({err:#}); this is a bug in wasm-runner, please report it with \
             the request that caused it"
        ))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.message,
            status: self.status.as_u16(),
        };
        let mut response = (self.status, Json(body)).into_response();

        // RFC 6750: a 401 for a bearer-protected resource names the scheme to use.
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(err: anyhow::Error) -> StatusCode {
        ApiError::from(err).status()
    }

    #[test]
    fn refusals_map_to_client_error_codes() {
        let cases = [
            (Refusal::NotFound("gone".into()), StatusCode::NOT_FOUND),
            (
                Refusal::TooLarge("big".into()),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                Refusal::Invalid("bad".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (
                Refusal::Limit("over".into()),
                StatusCode::UNPROCESSABLE_ENTITY,
            ),
            (Refusal::Quota("full".into()), StatusCode::TOO_MANY_REQUESTS),
            (Refusal::Conflict("busy".into()), StatusCode::CONFLICT),
        ];
        for (refusal, status) in cases {
            let message = refusal.to_string();
            let err = ApiError::from(anyhow::Error::new(refusal));
            assert_eq!(err.status(), status);
            assert_eq!(err.message(), message);
        }
    }

    #[test]
    fn refusals_keep_their_code_under_context() {
        let err = anyhow::Error::new(Refusal::Quota("full".into())).context("while enqueueing");
        assert_eq!(status_of(err), StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn redis_failures_are_503_and_say_to_retry() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = anyhow::Error::new(redis::RedisError::from(io)).context("failed to list tasks");
        let mapped = ApiError::from(err);
        assert_eq!(mapped.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(mapped.message().contains("retry"), "{}", mapped.message());
    }

    #[test]
    fn other_errors_are_server_bugs() {
        let err = anyhow::anyhow!("Redis returned a malformed task version");
        assert_eq!(status_of(err), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn error_bodies_are_json_and_401_names_the_scheme() {
        let response = ApiError::unauthorized("no token").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE),
            Some(&HeaderValue::from_static("Bearer"))
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": "no token", "status": 401})
        );
    }
}
