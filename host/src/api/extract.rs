//! Extractors that turn axum's rejections into [`ApiError`]s, and body readers with limits.
//!
//! JSON bodies are parsed from the raw bytes whatever their `Content-Type`, so a request pasted
//! from the docs (`curl -d '{...}'`, which sends a form content type) works as it stands.

use std::pin::Pin;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use bytes::BytesMut;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// The most a JSON body may be before it is parsed. The tenant's payload limit, which is
/// smaller by default, applies after parsing.
pub(crate) const MAX_JSON_BODY_BYTES: u64 = 16 << 20;

/// The most a component upload may be, whatever the tenant's own limit says.
pub(crate) const MAX_UPLOAD_BYTES: u64 = 256 << 20;

/// A JSON request body parsed into `T`: 400 when it is not JSON, 422 when it is JSON of the
/// wrong shape, 413 when it is over [`MAX_JSON_BODY_BYTES`].
#[derive(Debug)]
pub(crate) struct JsonBody<T>(pub(crate) T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| ApiError::from_body(&rejection, MAX_JSON_BODY_BYTES))?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Parses `bytes` as a JSON object into `T`, telling a syntax error (400) from a shape error
/// (422).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object such as {\"task\": \"hello\"}",
        ));
    }

    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|err| {
        ApiError::bad_request(format!(
            "the request body is not valid JSON: {err}; send a JSON object such as \
             {{\"task\": \"hello\"}}"
        ))
    })?;
    // serde would also fill a struct from an array of its fields in order; a body like that is
    // almost surely a mistake, and accepting it would make the field order part of the API.
    if !value.is_object() {
        return Err(ApiError::invalid(
            "the request body is JSON but not an object; send an object such as \
             {\"task\": \"hello\"}",
        ));
    }
    serde_json::from_value(value).map_err(|err| {
        ApiError::invalid(format!(
            "the request body does not fit this route: {err}; see docs/openapi.json for its \
             fields"
        ))
    })
}

/// Query parameters parsed into `T`; anything that does not fit is 422.
#[derive(Debug)]
pub(crate) struct Params<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for Params<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(params)| Params(params))
            .map_err(|rejection| ApiError::from_query(&rejection))
    }
}

/// Path parameters parsed into `T`; a segment that cannot be decoded is 422.
#[derive(Debug)]
pub(crate) struct PathParams<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for PathParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(params)| PathParams(params))
            .map_err(|rejection| ApiError::from_path(&rejection))
    }
}

/// Why [`read_limited`] stopped short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Oversize {
    /// The body is this many bytes by its `Content-Length`; nothing was read.
    Declared(u64),
    /// The body ran past the limit while it was read.
    Streamed,
}

/// The most buffer reserved up front for a body, whatever its declared length.
const INITIAL_BODY_CAPACITY: usize = 1 << 20;

/// Reads `request`'s body, stopping as soon as it passes `limit` bytes, so an oversized upload
/// costs at most `limit` bytes of memory; a declared `Content-Length` over the limit is refused
/// before anything is read.
///
/// # Errors
///
/// `Ok(Err(_))` when the body is over `limit`; `Err` (400) when it cannot be read.
pub(crate) async fn read_limited(
    request: Request,
    limit: u64,
) -> Result<Result<Bytes, Oversize>, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if let Some(length) = declared
        && length > limit
    {
        return Ok(Err(Oversize::Declared(length)));
    }

    let mut body: Body = request.into_body();
    // Trust the declared length only so far: a client claiming 64 MiB and sending nothing
    // must not make the server set that much aside. The buffer grows as bytes arrive.
    let capacity = declared.map_or(0, |length| usize::try_from(length).unwrap_or(0));
    let capacity = capacity.min(INITIAL_BODY_CAPACITY);
    let mut buffer = BytesMut::with_capacity(capacity);
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|err| {
            ApiError::bad_request(format!(
                "failed to read the request body ({err}); send the request again"
            ))
        })?;
        // Trailers carry no data; only data frames count toward the limit.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if (buffer.len() + data.len()) as u64 > limit {
            return Ok(Err(Oversize::Streamed));
        }
        buffer.extend_from_slice(&data);
    }
    Ok(Ok(buffer.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        #[expect(dead_code, reason = "only parsed")]
        task: String,
    }

    #[test]
    fn json_syntax_errors_are_400_and_shape_errors_422() {
        assert!(parse_json::<Sample>(br#"{"task": "a"}"#).is_ok());
        let status = |body: &[u8]| parse_json::<Sample>(body).unwrap_err().status();
        assert_eq!(status(b"{not json"), StatusCode::BAD_REQUEST);
        assert_eq!(status(b"  "), StatusCode::BAD_REQUEST);
        assert_eq!(status(br#"{"task": "a""#), StatusCode::BAD_REQUEST);
        assert_eq!(status(br#"{"task": 5}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(br#"{}"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            status(br#"{"task": "a", "x": 1}"#),
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(status(b"[]"), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(br#"["a"]"#), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(status(b"[1,"), StatusCode::BAD_REQUEST);
    }

    fn request(body: &'static [u8], declared: Option<u64>) -> Request {
        let mut builder = Request::builder().method("POST").uri("/");
        if let Some(length) = declared {
            builder = builder.header(header::CONTENT_LENGTH, length);
        }
        builder.body(Body::from(body)).unwrap()
    }

    #[tokio::test]
    async fn reads_bodies_up_to_the_limit() {
        let read = read_limited(request(b"12345", None), 5).await.unwrap();
        assert_eq!(read, Ok(Bytes::from_static(b"12345")));
        let over = read_limited(request(b"123456", None), 5).await.unwrap();
        assert_eq!(over, Err(Oversize::Streamed));
        let declared = read_limited(request(b"1", Some(100)), 5).await.unwrap();
        assert_eq!(declared, Err(Oversize::Declared(100)));
    }
}
