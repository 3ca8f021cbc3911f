//! Who is calling: the `Authorization: Bearer <token>` header, resolved to a tenant.
//!
//! The tenant comes only from the token, never from the request, so a tenant can only ever
//! name its own tasks, queues and jobs; another tenant's are simply not found.

use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use super::ApiState;
use super::error::ApiError;
use crate::queue::Queue;

/// The authenticated caller: a queue handle under its tenant's quotas.
#[derive(Debug)]
pub(crate) struct Tenant {
    /// The tenant's name, for logs and messages.
    pub(crate) name: String,
    /// The tenant's handle; it sees only the tenant's own keys.
    pub(crate) queue: Queue,
}

/// Where the request log finds the tenant once the handler has authenticated it.
#[derive(Debug, Clone, Default)]
pub(crate) struct TenantSlot(Arc<OnceLock<String>>);

impl TenantSlot {
    /// The tenant, if the request got as far as authenticating.
    pub(crate) fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

impl FromRequestParts<ApiState> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let token = bearer_token(&parts.headers)?;

        let Some(record) = state.registry().authenticate(token).await? else {
            return Err(ApiError::unauthorized(
                "the API token is unknown or was revoked; use the token printed by \
                 `wasm-runner tenant create NAME` or `wasm-runner tenant rotate-token NAME`",
            ));
        };

        if let Some(slot) = parts.extensions.get::<TenantSlot>() {
            // Set once per request; a second extraction would carry the same name.
            let _ = slot.0.set(record.name.clone());
        }
        let queue = Queue::for_tenant(state.conn().clone(), &record)?;
        Ok(Tenant {
            name: record.name,
            queue,
        })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
///
/// # Errors
///
/// 401 when the header is missing, not text, or not a bearer credential.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "this route needs an API token; send it as `Authorization: Bearer <token>`",
        ));
    };
    let malformed = || {
        ApiError::unauthorized(
            "the Authorization header is not a bearer token; send `Authorization: Bearer \
             <token>` with the token of `wasm-runner tenant create NAME`",
        )
    };
    let text = value.to_str().map_err(|_| malformed())?;
    let (scheme, token) = text.trim().split_once(' ').ok_or_else(malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(malformed());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, StatusCode};

    fn headers(value: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn reads_bearer_tokens() {
        assert_eq!(
            bearer_token(&headers(Some("Bearer wrt_abc"))),
            Ok("wrt_abc")
        );
        assert_eq!(
            bearer_token(&headers(Some("bearer  wrt_abc "))),
            Ok("wrt_abc")
        );
    }

    #[test]
    fn refuses_missing_and_malformed_headers() {
        for value in [
            None,
            Some("wrt_abc"),
            Some("Basic dXNlcjpwYXNz"),
            Some("Bearer "),
        ] {
            let err = bearer_token(&headers(value)).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNAUTHORIZED, "{value:?}");
            assert!(err.message().contains("Bearer"), "{}", err.message());
        }
    }
}
