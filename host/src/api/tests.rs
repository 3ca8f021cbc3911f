//! Router tests that need no Redis: the state points at a closed port, so anything that would
//! reach Redis fails fast with 503, and everything decided before that is checked as served.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tower::ServiceExt as _;

use super::*;
use crate::runtime::EngineOptions;

/// A state whose Redis is a loopback port nothing listens on; connects lazily, so building it
/// needs no server.
fn offline_state() -> ApiState {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(200)))
        .set_response_timeout(Some(Duration::from_millis(200)))
        .set_number_of_retries(0);
    let manager = ConnectionManager::new_lazy_with_config(client, config).unwrap();
    let executor = Executor::new(EngineOptions {
        max_concurrent: 1,
        ..EngineOptions::default()
    })
    .unwrap();
    ApiState::new(Conn::Single(manager), Arc::new(executor))
}

/// Sends one request and returns the status, the headers and the body as JSON.
async fn send(
    app: &Router,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|err| panic!("{method} {path}: body is not JSON ({err}): {bytes:?}"));
    (status, headers, body)
}

/// A concrete path for a template.
fn concrete(template: &str) -> String {
    template
        .replace("{name}", "hello")
        .replace("{queue}", "default")
        .replace("{id}", "0190a1b2-0000-7000-8000-000000000000")
}

fn assert_error_body(body: &serde_json::Value, status: StatusCode) {
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn healthz_answers_without_redis_or_token() {
    let app = router(offline_state());
    let (status, _, body) = send(&app, "GET", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_is_503_when_redis_is_down() {
    let app = router(offline_state());
    let (status, _, body) = send(&app, "GET", "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_body(&body, status);
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let app = router(offline_state());
    for path in ["/", "/v1", "/v1/nope", "/v1/queues/default/jobs/x/y/z"] {
        let (status, _, body) = send(&app, "GET", path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_error_body(&body, status);
    }
}

#[tokio::test]
async fn every_v1_route_needs_a_token() {
    let app = router(offline_state());
    for (method, template) in ROUTES.iter().filter(|(_, path)| path.starts_with("/v1/")) {
        let path = concrete(template);
        let (status, headers, body) = send(&app, method, &path, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
        assert_error_body(&body, status);

        // A token of the wrong form is refused without asking Redis.
        let (status, _, _) = send(&app, method, &path, Some("not-a-token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
}

#[tokio::test]
async fn a_redis_outage_during_auth_is_503() {
    let app = router(offline_state());
    let (status, _, body) = send(&app, "GET", "/v1/tasks", Some("wrt_0123")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_error_body(&body, status);
    assert!(
        body["error"].as_str().unwrap_or("").contains("Redis"),
        "{body}"
    );
}

#[tokio::test]
async fn methods_not_in_routes_are_405_json() {
    let app = router(offline_state());
    for (_, template) in ROUTES {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if ROUTES.contains(&(method, *template)) {
                continue;
            }
            let path = concrete(template);
            let (status, headers, body) = send(&app, method, &path, None).await;
            assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(headers.contains_key(header::ALLOW), "{method} {path}");
            assert_error_body(&body, status);
        }
    }
}

#[test]
fn routes_are_unique_and_well_formed() {
    for (index, (method, path)) in ROUTES.iter().enumerate() {
        assert!(matches!(*method, "GET" | "POST"), "{method}");
        assert!(path.starts_with('/'), "{path}");
        assert!(
            !ROUTES[..index].contains(&(*method, *path)),
            "{method} {path} twice"
        );
    }
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let spec: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    let mut documented: Vec<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            let methods = item.as_object().unwrap().keys();
            methods
                .filter(|key| matches!(key.as_str(), "get" | "post" | "put" | "patch" | "delete"))
                .map(|method| (method.to_uppercase(), path.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut served: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
}
