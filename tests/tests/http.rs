//! End-to-end tests of the HTTP API: the server runs in this process against a private
//! `redis-server`, and every request goes over a real socket as raw HTTP/1.1 bytes, so the tests
//! see exactly what a client would (status, headers, JSON body), including for requests no
//! well-behaved client library would send.
//!
//! The route tests walk `wasm_runner::api::ROUTES`, so a new route without a case here fails
//! them rather than going untested.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use serde_json::{Value, json};
use wasm_runner::api::ROUTES;
use wasm_runner::queue::{Queue, Quotas, Registry};
use wasm_runner_tests::http::{Request, Response, TestApi};
use wasm_runner_tests::openapi::{OpenApi, fill_template};
use wasm_runner_tests::{InProcessWorker, TestRedis, guest_bytes};

/// The queue the tests enqueue to; not `default`, so nothing passes by falling back to it.
const QUEUE: &str = "orders";

/// The OpenAPI document the server must match.
const OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");

/// A job id no job has.
const MISSING_JOB: &str = "0190a5b0-0000-7000-8000-000000000000";

/// How long a job may take to reach a state when a worker runs it. Generous: the first run
/// of a task compiles it, and the machine is shared.
const JOB_WAIT: Duration = Duration::from_secs(30);

// ----------------------------------------------------------------------------------------------
// Fixtures

/// A created tenant and its API token.
#[derive(Debug, Clone)]
struct Tenant {
    name: String,
    token: String,
}

/// A private Redis, the API in front of it, and the tenant registry.
struct World {
    // Field order is drop order: the server goes before the Redis it talks to.
    api: TestApi,
    registry: Registry,
    redis: TestRedis,
}

impl World {
    async fn start() -> anyhow::Result<World> {
        let redis = TestRedis::start()?;
        let api = TestApi::start(&redis).await?;
        let registry = Registry::new(api.conn().clone());
        Ok(World {
            api,
            registry,
            redis,
        })
    }

    async fn tenant(&self, name: &str, quotas: Quotas) -> anyhow::Result<Tenant> {
        let (_, token) = self.registry.create(name, quotas).await?;
        Ok(Tenant {
            name: name.to_owned(),
            token: token.expose().to_owned(),
        })
    }

    /// The library's handle for `tenant`, for setting up state without going through the API.
    async fn queue(&self, tenant: &Tenant) -> anyhow::Result<Queue> {
        let record = self.registry.resolve(&tenant.name).await?;
        Queue::for_tenant(self.api.conn().clone(), &record)
    }

    async fn send(&self, request: Request) -> anyhow::Result<Response> {
        self.api.send(&request).await
    }

    /// Uploads guest `package` as task `name`, with `query` (e.g. `?timeout=5s`) appended.
    async fn upload(
        &self,
        token: &str,
        name: &str,
        package: &str,
        query: &str,
    ) -> anyhow::Result<Response> {
        let request = Request::post(&format!("/v1/tasks/{name}{query}"))
            .bearer(token)
            .header("Content-Type", "application/wasm")
            .body(guest_bytes(package));
        self.send(request).await
    }

    /// Uploads `package` as `name` and returns the new version's JSON, failing unless 201.
    async fn upload_ok(
        &self,
        token: &str,
        name: &str,
        package: &str,
        query: &str,
    ) -> anyhow::Result<Value> {
        let response = self.upload(token, name, package, query).await?;
        ensure!(
            response.status == 201,
            "uploading {package} as {name}: {response}"
        );
        response.json()
    }

    async fn enqueue(&self, token: &str, queue: &str, body: &Value) -> anyhow::Result<Response> {
        let request = Request::post(&format!("/v1/queues/{queue}/jobs"))
            .bearer(token)
            .json(body);
        self.send(request).await
    }

    /// Enqueues `body` to [`QUEUE`] and returns the job id, failing unless 201.
    async fn enqueue_ok(&self, token: &str, body: &Value) -> anyhow::Result<String> {
        let response = self.enqueue(token, QUEUE, body).await?;
        ensure!(response.status == 201, "enqueueing {body}: {response}");
        let json = response.json()?;
        ensure!(json["created"] == true, "a new job says created: {json}");
        json["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("the enqueue answer has no id: {json}"))
    }

    async fn job(&self, token: &str, id: &str) -> anyhow::Result<Value> {
        let response = self
            .send(Request::get(&format!("/v1/queues/{QUEUE}/jobs/{id}")).bearer(token))
            .await?;
        ensure!(response.status == 200, "reading job {id}: {response}");
        response.json()
    }

    /// Polls job `id` until `done` holds for it, for at most `timeout`.
    async fn wait_for_job(
        &self,
        token: &str,
        id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self.job(token, id).await?;
            if done(&job) {
                return Ok(job);
            }
            if Instant::now() > deadline {
                bail!("job {id} is not {what} after {timeout:?}: {job:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Checks the server still serves: `/healthz` and an authenticated listing both answer 200.
    async fn assert_still_serving(&self, token: &str, after: &str) {
        assert!(self.api.is_running(), "the API task ended after {after}");
        let health = self.send(Request::get("/healthz")).await;
        let health = health.unwrap_or_else(|err| panic!("/healthz after {after}: {err:#}"));
        assert_eq!(health.status, 200, "/healthz after {after}: {health}");
        let tasks = self.send(Request::get("/v1/tasks").bearer(token)).await;
        let tasks = tasks.unwrap_or_else(|err| panic!("GET /v1/tasks after {after}: {err:#}"));
        assert_eq!(tasks.status, 200, "GET /v1/tasks after {after}: {tasks}");
    }
}

/// Asserts `response` is an error with `status` and the body `{"error": "...", "status": N}`,
/// and returns its message.
#[track_caller]
fn assert_error(response: &Response, status: u16, what: &str) -> String {
    assert_eq!(response.status, status, "{what}: {response}");
    assert_error_body(response, what)
}

/// Asserts `response`'s body is `{"error": "<non-empty>", "status": <its status>}` and returns
/// the message.
#[track_caller]
fn assert_error_body(response: &Response, what: &str) -> String {
    let body = response
        .json()
        .unwrap_or_else(|err| panic!("{what}: {err:#}"));
    let message = body["error"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty(),
        "{what}: the error body has no message: {response}"
    );
    assert_eq!(
        body["status"].as_u64(),
        Some(u64::from(response.status)),
        "{what}: the error body's status differs from the response's: {response}"
    );
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{what}: an error is served as {content_type:?}, not JSON"
    );
    message.to_owned()
}

/// Whether `body` mentions `needle` anywhere (a key, a string, part of a string).
fn mentions(body: &Value, needle: &str) -> bool {
    body.to_string().contains(needle)
}

/// `value` with every string equal to `from` replaced by `to`, to compare two answers that
/// differ only by a name.
fn rename(value: &Value, from: &str, to: &str) -> Value {
    match value {
        Value::String(text) if text == from => Value::String(to.to_owned()),
        Value::Array(items) => Value::Array(items.iter().map(|v| rename(v, from, to)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), rename(v, from, to)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Whether a route needs a token (everything under `/v1/`).
fn is_protected(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// The protected routes of `ROUTES`.
fn protected_routes() -> Vec<(&'static str, &'static str)> {
    ROUTES
        .iter()
        .copied()
        .filter(|(_, path)| is_protected(path))
        .collect()
}

// ----------------------------------------------------------------------------------------------
// Requests for every route

/// The objects a route's path and body refer to.
#[derive(Debug, Clone)]
struct Targets {
    task: String,
    queue: String,
    /// A queued job, for reads.
    job: String,
    /// A failed job, for requeue.
    failed_job: String,
    /// A queued job, for cancel.
    live_job: String,
}

impl Targets {
    /// Tenant `owner`'s task `hello` (uploaded here) and three jobs of it in [`QUEUE`]: one
    /// queued to read, one queued to cancel, and one canceled (so failed) to requeue.
    async fn create(world: &World, owner: &Tenant) -> anyhow::Result<Targets> {
        if world
            .send(Request::get("/v1/tasks/hello").bearer(&owner.token))
            .await?
            .status
            == 404
        {
            world
                .upload_ok(&owner.token, "hello", "example-hello", "")
                .await?;
        }
        let payload = json!({"task": "hello", "payload": {"name": "Ada"}});
        let job = world.enqueue_ok(&owner.token, &payload).await?;
        let live_job = world.enqueue_ok(&owner.token, &payload).await?;
        let failed_job = world.enqueue_ok(&owner.token, &payload).await?;
        world.queue(owner).await?.cancel(QUEUE, &failed_job).await?;
        Ok(Targets {
            task: "hello".to_owned(),
            queue: QUEUE.to_owned(),
            job,
            failed_job,
            live_job,
        })
    }

    /// The path of `template` filled with these objects.
    fn path(&self, template: &str) -> String {
        let id = match template.rsplit('/').next() {
            Some("requeue") => &self.failed_job,
            Some("cancel") => &self.live_job,
            _ => &self.job,
        };
        let values = [
            ("name", self.task.as_str()),
            ("queue", self.queue.as_str()),
            ("id", id.as_str()),
        ];
        fill_template(template, &values).unwrap_or_else(|err| {
            panic!("route {template} uses a path parameter the spec does not name: {err:#}")
        })
    }

    /// A valid request for route (`method`, `template`), without a token.
    fn request(&self, method: &str, template: &str) -> Request {
        let path = self.path(template);
        match (method, template) {
            ("POST", "/v1/tasks/{name}") => Request::post(&path)
                .header("Content-Type", "application/wasm")
                .body(guest_bytes("example-hello")),
            ("POST", "/v1/queues/{queue}/jobs") => {
                Request::post(&path).json(&json!({"task": self.task, "payload": {"name": "Ada"}}))
            }
            ("GET", "/v1/queues/{queue}/jobs") => Request::get(&format!("{path}?state=queued")),
            ("GET", _) => Request::get(&path),
            ("POST", _) => Request::post(&path),
            _ => panic!("no request for route {method} {template}; add one to this test"),
        }
    }
}

/// The status the owner gets for a valid request to each route (on [`Targets`]' objects, each
/// route called once).
fn owner_status(method: &str, template: &str) -> u16 {
    match (method, template) {
        ("POST", "/v1/tasks/{name}" | "/v1/queues/{queue}/jobs") => 201,
        ("GET" | "POST", _) => 200,
        _ => panic!("no expected status for route {method} {template}; add one to this test"),
    }
}

/// What another tenant gets on the owner's objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Foreign {
    /// 404: the object is not theirs, so it does not exist for them.
    NotFound,
    /// 200 with their own (empty) listing.
    EmptyListing,
    /// Creates the caller's own object; checked on its own at the end.
    CreatesOwn,
}

/// What another tenant gets from route (`method`, `template`) on the owner's objects.
fn foreign_expectation(method: &str, template: &str) -> Foreign {
    match (method, template) {
        ("GET", "/v1/tasks" | "/v1/queues" | "/v1/queues/{queue}/jobs")
        | ("GET", "/v1/queues/{queue}/stats") => Foreign::EmptyListing,
        ("POST", "/v1/tasks/{name}") => Foreign::CreatesOwn,
        // Another tenant's task name is unknown to the caller: enqueueing it is 404 too.
        ("POST", "/v1/queues/{queue}/jobs") => Foreign::NotFound,
        ("GET" | "POST", _) if template.contains("{id}") || template.contains("{name}") => {
            Foreign::NotFound
        }
        _ => panic!("no cross-tenant expectation for {method} {template}; add one to this test"),
    }
}

/// `Authorization` values that are not a valid bearer credential for anyone.
fn malformed_authorizations(valid: &str) -> Vec<(String, Vec<u8>)> {
    let unknown = format!("wrt_{}", "0".repeat(64));
    [
        ("bare scheme", b"Bearer".to_vec()),
        ("scheme and space", b"Bearer ".to_vec()),
        ("basic auth", b"Basic YWNtZTpzZWNyZXQ=".to_vec()),
        ("token without scheme", valid.as_bytes().to_vec()),
        ("garbage", b"garbage;;== !".to_vec()),
        ("another scheme", format!("Token {valid}").into_bytes()),
        (
            "token with a suffix",
            format!("Bearer {valid}x").into_bytes(),
        ),
        (
            "token cut short",
            format!("Bearer {}", &valid[..valid.len() - 1]).into_bytes(),
        ),
        ("unknown token", format!("Bearer {unknown}").into_bytes()),
        ("not a wrt_ token", b"Bearer abc.def.ghi".to_vec()),
        (
            "very long token",
            format!("Bearer wrt_{}", "a".repeat(8 << 10)).into_bytes(),
        ),
        ("non-UTF-8 token", b"Bearer wrt_\xff\xfe\x80".to_vec()),
    ]
    .into_iter()
    .map(|(what, value)| (what.to_owned(), value))
    .collect()
}

// ----------------------------------------------------------------------------------------------
// 1. Authorization

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_valid_token_and_tenants_never_see_each_other() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    let b = world.tenant("bravo", Quotas::default()).await?;
    let targets = Targets::create(&world, &a).await?;
    let hello_digest = task_digest(&world, &a).await?;
    let a_ids = [&targets.job, &targets.failed_job, &targets.live_job];
    let routes = protected_routes();
    assert!(!routes.is_empty(), "ROUTES has no /v1/ route");

    for &(method, template) in &routes {
        let route = format!("{method} {template}");
        let request = targets.request(method, template);

        // No token, then every malformed one.
        let response = world.send(request.clone()).await?;
        assert_error(&response, 401, &format!("{route} without a token"));
        assert_eq!(
            response
                .header("www-authenticate")
                .map(str::to_ascii_lowercase),
            Some("bearer".to_owned()),
            "{route}: a 401 names the scheme to use"
        );
        for (what, value) in malformed_authorizations(&a.token) {
            let response = world
                .send(request.clone().header("Authorization", &value))
                .await?;
            assert_error(&response, 401, &format!("{route} with {what}"));
        }

        // Tenant B on A's objects.
        let as_b = format!("{route} as another tenant");
        match foreign_expectation(method, template) {
            Foreign::NotFound => {
                let response = world.send(request.clone().bearer(&b.token)).await?;
                assert_error(&response, 404, &as_b);
            }
            Foreign::EmptyListing => {
                let response = world.send(request.clone().bearer(&b.token)).await?;
                assert_eq!(response.status, 200, "{as_b}: {response}");
                let body = response.json()?;
                for id in a_ids {
                    assert!(!mentions(&body, id), "{as_b} shows A's job {id}: {body}");
                }
                assert!(
                    !mentions(&body, &hello_digest),
                    "{as_b} shows A's task: {body}"
                );
                check_foreign_listing(&world, &b, template, &body).await?;
            }
            // Checked after the loop, so that B has no task while its 404s are checked.
            Foreign::CreatesOwn => {}
        }

        // A itself: the route's normal answer (an upload of the same bytes makes version 2).
        let response = world.send(request.clone().bearer(&a.token)).await?;
        let expected = owner_status(method, template);
        assert_eq!(
            response.status, expected,
            "{route} as the owner: {response}"
        );
        response
            .json()
            .with_context(|| format!("{route} as the owner"))?;
    }

    // B cancelled and requeued nothing: A's cancel found the job queued, A's requeue found it
    // failed, and the job B tried to read is still queued.
    let live = world.job(&a.token, &targets.live_job).await?;
    assert_eq!(live["state"], "failed", "A canceled it: {live}");
    let requeued = world.job(&a.token, &targets.failed_job).await?;
    assert_eq!(requeued["state"], "queued", "A requeued it: {requeued}");
    let read = world.job(&a.token, &targets.job).await?;
    assert_eq!(read["state"], "queued", "{read}");

    // B uploading a task with A's task's name makes B's own task; A's is untouched.
    let b_version = world
        .upload_ok(&b.token, "hello", "example-validate", "")
        .await?;
    assert_eq!(b_version["version"], 1, "B's first upload: {b_version}");
    assert_ne!(b_version["digest"], hello_digest.as_str());
    let a_task = world
        .send(Request::get("/v1/tasks/hello").bearer(&a.token))
        .await?
        .json()?;
    assert_eq!(a_task["task"]["digest"], hello_digest.as_str(), "{a_task}");
    let a_versions = a_task["versions"].as_array().context("versions")?;
    assert!(
        a_versions
            .iter()
            .all(|v| v["digest"] == hello_digest.as_str()),
        "every version of A's task is still A's component: {a_task}"
    );
    let b_task = world
        .send(Request::get("/v1/tasks/hello").bearer(&b.token))
        .await?
        .json()?;
    assert_eq!(b_task["task"]["digest"], b_version["digest"], "{b_task}");
    assert_eq!(
        b_task["versions"].as_array().map(Vec::len),
        Some(1),
        "{b_task}"
    );

    // A rotated token: the old one is refused everywhere, the new one works.
    let rotated = world.registry.rotate_token(&a.name).await?;
    let rotated = rotated.expose().to_owned();
    for &(method, template) in &routes {
        let request = targets.request(method, template).bearer(&a.token);
        let response = world.send(request).await?;
        assert_error(
            &response,
            401,
            &format!("{method} {template} with a rotated-out token"),
        );
    }
    let response = world
        .send(Request::get("/v1/tasks").bearer(&rotated))
        .await?;
    assert_eq!(response.status, 200, "the new token works: {response}");

    // A removed tenant: its current token is refused everywhere; B is unaffected.
    world.registry.remove(&a.name).await?;
    for &(method, template) in &routes {
        let request = targets.request(method, template).bearer(&rotated);
        let response = world.send(request).await?;
        assert_error(
            &response,
            401,
            &format!("{method} {template} with a removed tenant's token"),
        );
    }
    let response = world
        .send(Request::get("/v1/tasks").bearer(&b.token))
        .await?;
    assert_eq!(response.status, 200, "{response}");
    world.api.shutdown().await
}

/// The digest of `owner`'s task `hello`, as the API shows it.
async fn task_digest(world: &World, owner: &Tenant) -> anyhow::Result<String> {
    let response = world
        .send(Request::get("/v1/tasks/hello").bearer(&owner.token))
        .await?;
    ensure!(response.status == 200, "{response}");
    let body = response.json()?;
    body["task"]["digest"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no task digest in {body}"))
}

/// Checks another tenant's listing `body` of route `template` shows nothing of the owner.
async fn check_foreign_listing(
    world: &World,
    caller: &Tenant,
    template: &str,
    body: &Value,
) -> anyhow::Result<()> {
    match template {
        "/v1/tasks" => {
            let tasks = body["tasks"].as_array().context("`tasks` is a list")?;
            ensure!(tasks.is_empty(), "B has no tasks yet: {body}");
        }
        "/v1/queues" => {
            let queues = body["queues"].as_array().context("`queues` is a list")?;
            ensure!(
                !queues.iter().any(|q| mentions(q, QUEUE)),
                "B never used queue {QUEUE}: {body}"
            );
        }
        "/v1/queues/{queue}/jobs" => {
            let jobs = body["jobs"].as_array().context("`jobs` is a list")?;
            ensure!(jobs.is_empty(), "B has no jobs: {body}");
        }
        "/v1/queues/{queue}/stats" => {
            // B's stats of A's busy queue are those of a queue nobody ever used.
            let unused = world
                .send(Request::get("/v1/queues/unused/stats").bearer(&caller.token))
                .await?;
            ensure!(unused.status == 200, "{unused}");
            let unused = rename(&unused.json()?, "unused", QUEUE);
            ensure!(
                *body == unused,
                "B's stats of {QUEUE} differ from an empty queue's: {body} vs {unused}"
            );
        }
        other => bail!("no listing check for {other}"),
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// 2. Malformed, truncated and oversized bodies

/// One bad body, and what the enqueue and upload routes must answer to it.
struct BadBody {
    what: &'static str,
    request: Request,
    /// The client gives up before the end of its body, so the server may close without an
    /// answer.
    abandoned: bool,
    /// The status the enqueue route must answer (`None`: any 4xx).
    enqueue: Option<u16>,
    /// The status the upload route must answer (`None`: any 4xx).
    upload: Option<u16>,
}

/// Every bad body, for a request shaped like `base` (method, path, token).
fn bad_bodies(base: &Request, json_route: bool) -> Vec<BadBody> {
    let json = |body: &[u8]| {
        base.clone()
            .header("Content-Type", "application/json")
            .body(body.to_vec())
    };
    let mut huge_json = br#"{"task": "hello", "payload": {"name": ""#.to_vec();
    huge_json.resize(20 << 20, b'a');
    huge_json.extend_from_slice(br#""}}"#);
    let mut bodies = vec![
        BadBody {
            what: "garbage",
            request: json(b"\x00\x01not json at all {{{"),
            abandoned: false,
            enqueue: Some(400),
            upload: Some(422),
        },
        BadBody {
            what: "truncated JSON",
            request: json(br#"{"task": "hello", "payload": {"name": "#),
            abandoned: false,
            enqueue: Some(400),
            upload: Some(422),
        },
        BadBody {
            what: "a JSON array",
            request: json(br#"[{"task": "hello"}]"#),
            abandoned: false,
            enqueue: Some(422),
            upload: Some(422),
        },
        BadBody {
            // serde reads a struct from an array of its fields in order; the API must not.
            what: "a JSON array of the enqueue fields in order",
            request: json(
                br#"["hello", {"name": "Ada"}, null, null, null, null, null, null, null, null,
                    null, null]"#,
            ),
            abandoned: false,
            enqueue: Some(422),
            upload: Some(422),
        },
        BadBody {
            what: "a JSON number",
            request: json(b"42"),
            abandoned: false,
            enqueue: Some(422),
            upload: Some(422),
        },
        BadBody {
            what: "a JSON string",
            request: json(br#""hello""#),
            abandoned: false,
            enqueue: Some(422),
            upload: Some(422),
        },
        BadBody {
            what: "invalid UTF-8",
            request: json(b"{\"task\": \"hel\xff\xfelo\", \"payload\": {}}"),
            abandoned: false,
            enqueue: Some(400),
            upload: Some(422),
        },
        BadBody {
            what: "an empty body",
            request: json(b""),
            abandoned: false,
            enqueue: Some(400),
            upload: Some(422),
        },
        BadBody {
            what: "a Content-Length longer than the body, then a hang-up",
            request: json(br#"{"task": "hello", "pay"#)
                .claim_length(4096)
                .close_after_body(),
            abandoned: true,
            enqueue: None,
            upload: None,
        },
        BadBody {
            what: "a broken chunked encoding",
            request: base
                .clone()
                .header("Content-Type", "application/json")
                .header("Transfer-Encoding", "chunked")
                .raw_body(b"zz\r\n{\"task\"\r\n0\r\n\r\n".to_vec())
                .close_after_body(),
            abandoned: true,
            enqueue: None,
            upload: None,
        },
        BadBody {
            what: "300 MiB claimed, 4 KiB sent, then a hang-up",
            request: base
                .clone()
                .header("Content-Type", "application/octet-stream")
                .body(vec![b'x'; 4 << 10])
                .claim_length(300 << 20)
                .close_after_body(),
            abandoned: true,
            // The JSON route reads up to its cap and then finds the body cut off (400); the
            // upload route refuses on the declared length before reading (413).
            enqueue: None,
            upload: Some(413),
        },
    ];
    if json_route {
        bodies.push(BadBody {
            what: "a 20 MiB JSON body",
            request: json(&huge_json).timeout(Duration::from_secs(30)),
            abandoned: false,
            enqueue: Some(413),
            upload: Some(413),
        });
    }
    bodies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_truncated_and_oversized_bodies_get_json_4xx_and_the_server_carries_on()
-> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    let targets = Targets::create(&world, &a).await?;

    // Every bad body goes to every route, and every wrong answer is listed at the end.
    let mut failures = Vec::new();
    for &(method, template) in ROUTES {
        let route = format!("{method} {template}");
        let base = targets.request(method, template).bearer(&a.token);
        let json_route = template == "/v1/queues/{queue}/jobs" && method == "POST";
        let upload_route = template == "/v1/tasks/{name}" && method == "POST";
        for bad in bad_bodies(&base, json_route) {
            let what = format!("{route} with {}", bad.what);
            let response = world
                .api
                .try_send(&bad.request)
                .await
                .with_context(|| what.clone())?;
            let Some(response) = response else {
                if !bad.abandoned {
                    failures.push(format!("{what}: closed the connection without answering"));
                }
                continue;
            };
            let strict = if json_route {
                bad.enqueue
            } else if upload_route {
                bad.upload
            } else {
                None
            };
            if let Some(status) = strict {
                check_error(&mut failures, &what, &response, &[status]);
            } else if json_route || upload_route || response.status >= 400 {
                check_error(&mut failures, &what, &response, &[]);
            } else if let Err(err) = response.json() {
                // Routes that take no body ignore it and answer as usual, in JSON.
                failures.push(format!("{what}: {err:#}"));
            }
        }
        world.assert_still_serving(&a.token, &route).await;
    }
    assert!(
        failures.is_empty(),
        "{} bad bodies got a wrong answer:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Garbage that is not even HTTP, and a request line cut off before the headers.
    for (what, bytes) in [
        (
            "bytes that are not HTTP",
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        ),
        (
            "a request line without headers",
            b"GET /v1/tasks HTTP/1.1\r\nHost: x",
        ),
        (
            "a header without a colon",
            b"GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
        ),
    ] {
        let response = wasm_runner_tests::http::try_send_bytes(
            world.api.addr(),
            bytes,
            Duration::from_secs(10),
        )
        .await
        .with_context(|| what.to_owned())?;
        if let Some(response) = response {
            assert!(response.status < 500, "{what}: {response}");
        }
        world.assert_still_serving(&a.token, what).await;
    }
    world.api.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_that_are_not_tasks_are_refused_with_422() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    let hello = guest_bytes("example-hello");
    let cases = [
        (
            "a component without a run export",
            guest_bytes("guest-no-run"),
        ),
        (
            "a run export of the wrong signature",
            guest_bytes("guest-wrong-signature"),
        ),
        ("half a component", hello[..hello.len() / 2].to_vec()),
        ("a bare wasm header", b"\0asm\x01\0\0\0".to_vec()),
    ];
    for (what, bytes) in cases {
        let request = Request::post("/v1/tasks/broken")
            .bearer(&a.token)
            .body(bytes);
        let response = world.send(request).await?;
        assert_error(&response, 422, what);
    }
    let missing = world
        .send(Request::get("/v1/tasks/broken").bearer(&a.token))
        .await?;
    assert_error(&missing, 404, "a task whose every upload was refused");
    world.api.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_path_segments_and_queries_are_4xx_never_5xx() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    let targets = Targets::create(&world, &a).await?;
    // Every odd request is tried, and every wrong answer listed at the end.
    let mut failures = Vec::new();

    // Ids that are not job ids, including one that names another key beside a job's hash
    // (made here directly: ids with a colon are never issued).
    let job = &targets.job;
    let attempts =
        wasm_runner::queue::QueueKeys::new(&a.name, QUEUE).job(&format!("{job}:attempts"));
    let pushed = world.redis.command(&["RPUSH", &attempts, "{}"])?;
    assert_eq!(pushed.trim(), ":1", "RPUSH {attempts}");
    let odd_ids = [
        format!("{job}:attempts"),
        format!("{job}:x"),
        "%2E%2E".to_owned(),
        "%FF%FE".to_owned(),
        "a%00b".to_owned(),
        "%7Bacme%7D".to_owned(),
        "x".repeat(4096),
    ];
    for &(method, template) in ROUTES.iter().filter(|(_, t)| t.contains("{id}")) {
        for id in &odd_ids {
            let path = fill_template(template, &[("queue", QUEUE), ("id", id)])?;
            let response = world
                .send(Request::new(method, &path).bearer(&a.token))
                .await?;
            let what = format!("{method} {template} with id {id:.60}");
            // Anything that is not a job is not found, like any other missing job.
            let allowed: &[u16] = if id.starts_with(job.as_str()) {
                &[404]
            } else {
                &[]
            };
            check_error(&mut failures, &what, &response, allowed);
        }
    }

    // Names that break the naming rule, where a queue or task name goes.
    for name in ["bad%20name", "%7Bx%7D", "a:b", "%FF", &"n".repeat(65)] {
        for &(method, template) in ROUTES.iter().filter(|(_, t)| t.contains("{queue}")) {
            let mut path = fill_template(template, &[("queue", name), ("id", job)])?;
            if template.ends_with("/jobs") && method == "GET" {
                path.push_str("?state=queued");
            }
            let mut request = Request::new(method, &path).bearer(&a.token);
            if method == "POST" {
                request = request.json(&json!({"task": "hello"}));
            }
            let response = world.send(request).await?;
            check_error(
                &mut failures,
                &format!("{method} {path:.80}"),
                &response,
                &[422],
            );
        }
        for method in ["GET", "POST"] {
            let path = format!("/v1/tasks/{name}");
            let request = Request::new(method, &path)
                .bearer(&a.token)
                .body(guest_bytes("example-hello"));
            let response = world.send(request).await?;
            check_error(
                &mut failures,
                &format!("{method} {path:.80}"),
                &response,
                &[422],
            );
        }
    }

    // Query strings out of range or not understood.
    let jobs = format!("/v1/queues/{QUEUE}/jobs");
    for query in [
        "",
        "?state=",
        "?state=done",
        "?state=queued&limit=0",
        "?state=queued&limit=100000",
        "?state=queued&limit=-1",
        "?state=queued&limit=ten",
        "?state=queued&colour=red",
        "?state=queued&task=a:b",
        "?state=%FF",
    ] {
        let path = format!("{jobs}{query}");
        let response = world.send(Request::get(&path).bearer(&a.token)).await?;
        check_error(&mut failures, &format!("GET {path}"), &response, &[422]);
    }
    for query in [
        "?timeout=30",
        "?memory=64",
        "?max_attempts=0",
        "?jitter=200%25",
        "?x=1",
    ] {
        let path = format!("/v1/tasks/hello{query}");
        let request = Request::post(&path)
            .bearer(&a.token)
            .body(guest_bytes("example-hello"));
        let response = world.send(request).await?;
        check_error(&mut failures, &format!("POST {path}"), &response, &[422]);
    }

    assert!(
        failures.is_empty(),
        "{} odd requests got a wrong answer:\n{}",
        failures.len(),
        failures.join("\n")
    );
    world.assert_still_serving(&a.token, "odd paths").await;
    world.api.shutdown().await
}

/// Records in `failures` why `response` is not a JSON error with a status in `allowed` (any
/// 4xx when `allowed` is empty).
fn check_error(failures: &mut Vec<String>, what: &str, response: &Response, allowed: &[u16]) {
    let status_ok = if allowed.is_empty() {
        (400..500).contains(&response.status)
    } else {
        allowed.contains(&response.status)
    };
    if !status_ok {
        failures.push(format!(
            "{what}: expected {allowed:?} (or any 4xx if none): {response}"
        ));
        return;
    }
    let body_ok = response.json().is_ok_and(|body| {
        body["error"].as_str().is_some_and(|m| !m.is_empty())
            && body["status"].as_u64() == Some(u64::from(response.status))
    });
    if !body_ok {
        failures.push(format!("{what}: not a JSON error body: {response}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_repeat_answers_200_with_the_first_job() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    world
        .upload_ok(&a.token, "hello", "example-hello", "")
        .await?;
    let body = json!({"task": "hello", "payload": {"name": "Ada"}, "idempotency_key": "order-7"});

    let first = world.enqueue(&a.token, QUEUE, &body).await?;
    assert_eq!(first.status, 201, "{first}");
    let first = first.json()?;
    assert_eq!(first["created"], true, "{first}");
    let again = world.enqueue(&a.token, QUEUE, &body).await?;
    assert_eq!(again.status, 200, "{again}");
    assert_eq!(again.json()?, json!({"id": first["id"], "created": false}));

    let jobs = world
        .send(Request::get(&format!("/v1/queues/{QUEUE}/jobs?state=queued")).bearer(&a.token))
        .await?
        .json()?;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(1), "{jobs}");
    world.api.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_answer_json_errors() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;

    for path in [
        "/",
        "/v2/tasks",
        "/v1/nothing-here",
        "/v1/tasks/hello/extra/segments",
    ] {
        let response = world.send(Request::get(path).bearer(&a.token)).await?;
        assert_error(&response, 404, &format!("GET {path}"));
    }

    // Every route's template with a method it does not serve.
    let targets = Targets {
        task: "hello".into(),
        queue: QUEUE.into(),
        job: MISSING_JOB.into(),
        failed_job: MISSING_JOB.into(),
        live_job: MISSING_JOB.into(),
    };
    let served: BTreeSet<(&str, &str)> = ROUTES.iter().copied().collect();
    for &(_, template) in ROUTES {
        let path = targets.path(template);
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if served.contains(&(method, template)) {
                continue;
            }
            let request = Request::new(method, &path).bearer(&a.token).body("{}");
            let response = world.send(request).await?;
            assert_error(&response, 405, &format!("{method} {template}"));
        }
    }
    world.api.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_while_healthz_stays_up() -> anyhow::Result<()> {
    let mut world = World::start().await?;

    let ready = world.send(Request::get("/readyz")).await?;
    assert_eq!(ready.status, 200, "{ready}");
    assert_eq!(ready.json()?, json!({"status": "ready"}));
    let health = world.send(Request::get("/healthz")).await?;
    assert_eq!(health.status, 200, "{health}");
    assert_eq!(health.json()?, json!({"status": "ok"}));

    world.redis.kill();

    let not_ready = world.send(Request::get("/readyz")).await?;
    let message = assert_error(&not_ready, 503, "/readyz with Redis down");
    assert!(message.contains("Redis"), "{message}");
    let openapi = OpenApi::load(OPENAPI)?;
    openapi.check_response("GET", "/readyz", 503, &not_ready.json()?)?;
    let health = world.send(Request::get("/healthz")).await?;
    assert_eq!(
        health.status, 200,
        "/healthz does not depend on Redis: {health}"
    );

    // A request that needs Redis says it is unavailable rather than failing as a bug.
    let tasks = world
        .send(Request::get("/v1/tasks").bearer(&format!("wrt_{}", "0".repeat(64))))
        .await?;
    assert_error(&tasks, 503, "GET /v1/tasks with Redis down");
    openapi.check_response("GET", "/v1/tasks", 503, &tasks.json()?)?;
    world.api.shutdown().await
}

// ----------------------------------------------------------------------------------------------
// 3. OpenAPI conformance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_describes_every_answer() -> anyhow::Result<()> {
    let openapi = OpenApi::load(OPENAPI)?;
    let documented = openapi.operations();
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| (method.to_ascii_uppercase(), (*path).to_owned()))
        .collect();
    assert_eq!(
        documented, served,
        "docs/openapi.json and ROUTES list different operations"
    );

    // The schemas say something: no declared JSON answer accepts an empty object, so a wrong
    // body cannot pass the checks below for want of a schema.
    for (method, path) in &documented {
        let responses = openapi.operation(method, path)?["responses"]
            .as_object()
            .with_context(|| format!("{method} {path} declares no responses"))?;
        for code in responses.keys() {
            let status: u16 = code
                .parse()
                .with_context(|| format!("{method} {path}: status {code} is not a number"))?;
            let declared = openapi.response(method, path, status)?;
            let has_schema = declared["content"]["application/json"]["schema"].is_object();
            assert!(has_schema, "{method} {path} {status} has no JSON schema");
            assert!(
                openapi
                    .check_response(method, path, status, &json!({}))
                    .is_err(),
                "{method} {path} {status}: the schema accepts an empty object"
            );
        }
    }

    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    let tight = world
        .tenant(
            "tight",
            Quotas {
                max_queued: Some(1),
                max_payload_bytes: Some(64),
                max_memory_bytes: Some(32 << 20),
                ..Quotas::default()
            },
        )
        .await?;
    let targets = Targets::create(&world, &a).await?;
    world
        .upload_ok(&tight.token, "hello", "example-hello", "?memory=16MiB")
        .await?;
    // Only now, so that the upload above fits.
    world
        .registry
        .update(&tight.name, |q| q.max_component_bytes = Some(1024))
        .await?;
    let finished = world
        .enqueue_ok(
            &a.token,
            &json!({"task": "hello", "payload": {"name": "x"}}),
        )
        .await?;
    world.queue(&a).await?.cancel(QUEUE, &finished).await?;

    // Each route: the valid request, then the ways it can fail; every answer is checked.
    let mut failures = Vec::new();
    let mut exercised: BTreeSet<(u16, String)> = BTreeSet::new();
    for &(method, template) in ROUTES {
        let valid = targets.request(method, template);
        let mut cases: Vec<(String, Request)> = Vec::new();
        let auth = |request: Request| {
            if is_protected(template) {
                request.bearer(&a.token)
            } else {
                request
            }
        };
        cases.push(("a valid request".into(), auth(valid.clone())));
        if is_protected(template) {
            cases.push(("no token".into(), valid.clone()));
        }
        let missing = Targets {
            task: "no-such-task".into(),
            job: MISSING_JOB.into(),
            failed_job: MISSING_JOB.into(),
            live_job: MISSING_JOB.into(),
            ..targets.clone()
        };
        if template.contains("{id}") || (method == "GET" && template.contains("{name}")) {
            cases.push((
                "a missing object".into(),
                auth(missing.request(method, template)),
            ));
        }
        let path = targets.path(template);
        match (method, template) {
            ("POST", "/v1/tasks/{name}") => {
                cases.push((
                    "not a component".into(),
                    auth(Request::post(&path).body("not wasm")),
                ));
                cases.push((
                    "a component over the tenant's size limit".into(),
                    Request::post(&path)
                        .bearer(&tight.token)
                        .body(guest_bytes("example-hello")),
                ));
                cases.push((
                    "a memory default over the tenant's ceiling".into(),
                    Request::post(&format!("{path}?memory=1GiB"))
                        .bearer(&tight.token)
                        .body(vec![0; 8]),
                ));
            }
            ("POST", "/v1/queues/{queue}/jobs") => {
                cases.push((
                    "a body that is not JSON".into(),
                    auth(Request::post(&path).body("{")),
                ));
                cases.push((
                    "JSON of the wrong shape".into(),
                    auth(Request::post(&path).json(&json!({"task": 5}))),
                ));
                cases.push((
                    "an unknown field".into(),
                    auth(Request::post(&path).json(&json!({"task": "hello", "colour": "red"}))),
                ));
                cases.push((
                    "an unknown task".into(),
                    auth(Request::post(&path).json(&json!({"task": "no-such-task"}))),
                ));
                let tight_enqueue =
                    |body: Value| Request::post(&path).bearer(&tight.token).json(&body);
                cases.push((
                    "a payload over the tenant's limit".into(),
                    tight_enqueue(json!({"task": "hello", "payload": {"name": "x".repeat(100)}})),
                ));
                cases.push((
                    "a memory override over the tenant's ceiling".into(),
                    tight_enqueue(json!({"task": "hello", "memory": "1GiB"})),
                ));
                cases.push((
                    "the first job of a one-job quota".into(),
                    tight_enqueue(json!({"task": "hello", "payload": {"name": "x"}})),
                ));
                cases.push((
                    "a job over the queued quota".into(),
                    tight_enqueue(json!({"task": "hello", "payload": {"name": "x"}})),
                ));
                cases.push((
                    "an idempotency-key repeat (first)".into(),
                    auth(
                        Request::post(&path).json(
                            &json!({"task": "hello", "payload": {}, "idempotency_key": "k1"}),
                        ),
                    ),
                ));
                cases.push((
                    "an idempotency-key repeat (second)".into(),
                    auth(
                        Request::post(&path).json(
                            &json!({"task": "hello", "payload": {}, "idempotency_key": "k1"}),
                        ),
                    ),
                ));
            }
            ("GET", "/v1/queues/{queue}/jobs") => {
                cases.push(("no state".into(), auth(Request::get(&path))));
                cases.push((
                    "an unknown state".into(),
                    auth(Request::get(&format!("{path}?state=done"))),
                ));
                cases.push((
                    "failed jobs with a limit".into(),
                    auth(Request::get(&format!("{path}?state=failed&limit=1"))),
                ));
            }
            ("POST", template) if template.ends_with("/requeue") => {
                let queued = template
                    .replace("{queue}", QUEUE)
                    .replace("{id}", &targets.job);
                cases.push((
                    "a job that is not failed".into(),
                    auth(Request::post(&queued)),
                ));
            }
            ("POST", template) if template.ends_with("/cancel") => {
                let done = template
                    .replace("{queue}", QUEUE)
                    .replace("{id}", &finished);
                cases.push(("a finished job".into(), auth(Request::post(&done))));
            }
            _ => {}
        }

        for (what, request) in cases {
            let what = format!("{method} {template} with {what}");
            let response = match world.send(request).await {
                Ok(response) => response,
                Err(err) => {
                    failures.push(format!("{what}: {err:#}"));
                    continue;
                }
            };
            exercised.insert((response.status, format!("{method} {template}")));
            let body = match response.json() {
                Ok(body) => body,
                Err(err) => {
                    failures.push(format!("{what}: {err:#}"));
                    continue;
                }
            };
            if let Err(err) = openapi.check_response(method, template, response.status, &body) {
                failures.push(format!("{what}: {err:#}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} answers do not match docs/openapi.json:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // Each operation was seen answering with success and, if protected, with 401.
    for &(method, template) in ROUTES {
        let route = format!("{method} {template}");
        assert!(
            exercised.iter().any(|(s, r)| *r == route && *s < 300),
            "{route} never succeeded: {exercised:?}"
        );
        if is_protected(template) {
            assert!(exercised.contains(&(401, route.clone())), "{route}");
        }
    }
    // And every error the spec names came up somewhere.
    let statuses: BTreeSet<u16> = exercised.iter().map(|(status, _)| *status).collect();
    for status in [400, 401, 404, 409, 413, 422, 429] {
        assert!(
            statuses.contains(&status),
            "no request produced a {status}: {statuses:?}"
        );
    }
    world.api.shutdown().await
}

// ----------------------------------------------------------------------------------------------
// 4. Quotas

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_refuses_with_its_status_and_names_itself() -> anyhow::Result<()> {
    let world = World::start().await?;
    let limited = world
        .tenant(
            "limited",
            Quotas {
                max_queued: Some(2),
                max_payload_bytes: Some(100),
                max_memory_bytes: Some(64 << 20),
                max_timeout_ms: Some(10_000),
                ..Quotas::default()
            },
        )
        .await?;
    let hello = guest_bytes("example-hello");
    let tiny = world
        .tenant(
            "tiny",
            Quotas {
                max_component_bytes: Some(hello.len() as u64 - 1),
                ..Quotas::default()
            },
        )
        .await?;

    // Component size: one byte over is refused, and nothing is stored.
    let response = world
        .upload(&tiny.token, "hello", "example-hello", "")
        .await?;
    let message = assert_error(&response, 413, "a component one byte over the limit");
    assert!(message.contains("component"), "{message}");
    // The same without a Content-Length to refuse on: chunked, so the server must count.
    let mut chunked = Vec::new();
    for chunk in hello.chunks(16 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend_from_slice(chunk);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let request = Request::post("/v1/tasks/hello")
        .bearer(&tiny.token)
        .header("Transfer-Encoding", "chunked")
        .raw_body(chunked);
    let response = world.send(request).await?;
    let message = assert_error(
        &response,
        413,
        "a chunked component one byte over the limit",
    );
    assert!(message.contains("component"), "{message}");
    let tasks = world
        .send(Request::get("/v1/tasks").bearer(&tiny.token))
        .await?;
    assert_eq!(
        tasks.json()?["tasks"],
        json!([]),
        "a refused upload stores nothing"
    );

    // Ceilings on an upload's defaults.
    let over_memory = world
        .upload(
            &limited.token,
            "hello",
            "example-hello",
            "?memory=128MiB&timeout=5s",
        )
        .await?;
    let message = assert_error(
        &over_memory,
        422,
        "an upload asking for memory over the ceiling",
    );
    assert!(message.contains("memory"), "{message}");
    let over_timeout = world
        .upload(
            &limited.token,
            "hello",
            "example-hello",
            "?memory=32MiB&timeout=60s",
        )
        .await?;
    let message = assert_error(
        &over_timeout,
        422,
        "an upload asking for a timeout over the ceiling",
    );
    assert!(message.contains("timeout"), "{message}");
    let version = world
        .upload_ok(
            &limited.token,
            "hello",
            "example-hello",
            "?memory=64MiB&timeout=10s",
        )
        .await?;
    assert_eq!(version["defaults"]["memory_bytes"], 64 << 20, "{version}");
    assert_eq!(version["defaults"]["timeout_ms"], 10_000, "{version}");

    // Payload size: at the limit is fine, one byte over is refused.
    let at_limit = "x".repeat(100);
    world
        .enqueue_ok(
            &limited.token,
            &json!({"task": "hello", "payload_text": at_limit}),
        )
        .await?;
    let over = "x".repeat(101);
    let response = world
        .enqueue(
            &limited.token,
            QUEUE,
            &json!({"task": "hello", "payload_text": over}),
        )
        .await?;
    let message = assert_error(&response, 413, "a payload one byte over the limit");
    assert!(message.contains("payload"), "{message}");

    // Ceilings on an enqueue's overrides.
    for (field, value, needle) in [("memory", "65MiB", "memory"), ("timeout", "11s", "timeout")] {
        let body = json!({"task": "hello", "payload": {"name": "x"}, field: value});
        let response = world.enqueue(&limited.token, QUEUE, &body).await?;
        let message = assert_error(&response, 422, &format!("an enqueue with {field} {value}"));
        assert!(message.contains(needle), "{message}");
    }

    // Queued jobs: the second fills the quota of two, the third is refused, in any queue.
    world
        .enqueue_ok(
            &limited.token,
            &json!({"task": "hello", "payload": {"name": "x"}}),
        )
        .await?;
    let response = world
        .enqueue(
            &limited.token,
            "other",
            &json!({"task": "hello", "payload": {"name": "x"}}),
        )
        .await?;
    let message = assert_error(&response, 429, "a job over the queued quota");
    assert!(message.contains("quota"), "{message}");

    // None of the refusals wrote a job.
    let jobs = world
        .send(Request::get(&format!("/v1/queues/{QUEUE}/jobs?state=queued")).bearer(&limited.token))
        .await?
        .json()?;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");
    let queues = world
        .send(Request::get("/v1/queues").bearer(&limited.token))
        .await?
        .json()?;
    assert!(
        !mentions(&queues["queues"], "other"),
        "a refused enqueue made no queue: {queues}"
    );
    world.api.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_parameters_become_defaults_and_enqueue_fields_override_them() -> anyhow::Result<()>
{
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    let query = "?timeout=5s&memory=32MiB&max_attempts=5&intervals=1s,2s&jitter=0%25";
    let version = world
        .upload_ok(&a.token, "hello", "example-hello", query)
        .await?;
    assert_eq!(version["name"], "hello", "{version}");
    assert_eq!(version["version"], 1, "{version}");
    assert_eq!(
        version["size_bytes"],
        guest_bytes("example-hello").len(),
        "{version}"
    );
    assert!(version["uploaded_at_ms"].as_u64() > Some(0), "{version}");
    assert_eq!(version["defaults"]["timeout_ms"], 5_000, "{version}");
    assert_eq!(version["defaults"]["memory_bytes"], 32 << 20, "{version}");
    assert_eq!(
        version["defaults"]["policy"]["max_attempts"], 5,
        "{version}"
    );

    // The task's defaults apply when the enqueue names nothing...
    let plain = world
        .enqueue_ok(
            &a.token,
            &json!({"task": "hello", "payload": {"name": "Ada"}}),
        )
        .await?;
    let job = world.job(&a.token, &plain).await?;
    assert_eq!(job["max_attempts"], 5, "{job}");
    assert_eq!(job["state"], "queued", "{job}");
    assert_eq!(job["digest"], version["digest"], "{job}");

    // ...and the enqueue's own fields replace them.
    let body = json!({"task": "hello", "payload_text": "raw", "max_attempts": 2, "delay": "1h"});
    let delayed = world.enqueue_ok(&a.token, &body).await?;
    let job = world.job(&a.token, &delayed).await?;
    assert_eq!(job["max_attempts"], 2, "{job}");
    assert_eq!(job["state"], "scheduled", "a delayed job waits: {job}");
    assert_eq!(job["payload_bytes"], 3, "{job}");
    let enqueued = job["enqueued_at_ms"].as_u64().context("enqueued_at_ms")?;
    let due = job["due_at_ms"].as_u64().context("due_at_ms")?;
    assert!(due >= enqueued + 3_500_000, "due an hour later: {job}");

    let at = json!({"task": "hello", "at_ms": enqueued + 7_200_000});
    let later = world.enqueue_ok(&a.token, &at).await?;
    let job = world.job(&a.token, &later).await?;
    assert_eq!(job["state"], "scheduled", "{job}");
    assert_eq!(job["due_at_ms"], enqueued + 7_200_000, "{job}");

    // A bad override is refused and names its field.
    for (field, value) in [
        ("timeout", json!("30")),
        ("memory", json!("lots")),
        ("max_attempts", json!(0)),
        ("jitter", json!("150%")),
        ("intervals", json!("")),
        ("backoff", json!("linear:1s")),
        ("delay", json!("soon")),
    ] {
        let body = json!({"task": "hello", field: value});
        let response = world.enqueue(&a.token, QUEUE, &body).await?;
        let message = assert_error(&response, 422, &format!("an enqueue with {field} {value}"));
        assert!(
            message.contains(field) || message.contains(&field.replace('_', " ")),
            "{field}: {message}"
        );
    }
    world.api.shutdown().await
}

// ----------------------------------------------------------------------------------------------
// 5. Cancel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canceled_queued_job_fails_as_canceled_and_can_be_requeued() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    world
        .upload_ok(&a.token, "hello", "example-hello", "")
        .await?;
    let id = world
        .enqueue_ok(
            &a.token,
            &json!({"task": "hello", "payload": {"name": "Ada"}}),
        )
        .await?;

    let response = world
        .send(Request::post(&format!("/v1/queues/{QUEUE}/jobs/{id}/cancel")).bearer(&a.token))
        .await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(
        response.json()?,
        json!({"id": id, "canceled": true, "previous_state": "queued"})
    );
    let job = world.job(&a.token, &id).await?;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["outcome"]["class"], "canceled", "{job}");
    let failed = world
        .send(Request::get(&format!("/v1/queues/{QUEUE}/jobs?state=failed")).bearer(&a.token))
        .await?
        .json()?;
    assert!(mentions(&failed["jobs"], &id), "{failed}");

    // A second canceled job: `limit` bounds the listing, newest first.
    let other = world
        .enqueue_ok(
            &a.token,
            &json!({"task": "hello", "payload": {"name": "Bo"}}),
        )
        .await?;
    world.queue(&a).await?.cancel(QUEUE, &other).await?;
    let listed = |limit: u32| {
        let path = format!("/v1/queues/{QUEUE}/jobs?state=failed&limit={limit}");
        world.send(Request::get(&path).bearer(&a.token))
    };
    let one = listed(1).await?.json()?;
    assert_eq!(one["jobs"].as_array().map(Vec::len), Some(1), "{one}");
    assert_eq!(one["jobs"][0]["id"], other.as_str(), "{one}");
    let both = listed(2).await?.json()?;
    assert_eq!(both["jobs"].as_array().map(Vec::len), Some(2), "{both}");

    // Canceling again: it has finished (as failed).
    let again = world
        .send(Request::post(&format!("/v1/queues/{QUEUE}/jobs/{id}/cancel")).bearer(&a.token))
        .await?;
    assert_error(&again, 409, "canceling a canceled job");

    let requeued = world
        .send(Request::post(&format!("/v1/queues/{QUEUE}/jobs/{id}/requeue")).bearer(&a.token))
        .await?;
    assert_eq!(requeued.status, 200, "{requeued}");
    assert_eq!(requeued.json()?, json!({"id": id, "state": "queued"}));
    let job = world.job(&a.token, &id).await?;
    assert_eq!(job["state"], "queued", "{job}");

    // And a requeued job is a live one again: requeueing it twice is a conflict.
    let twice = world
        .send(Request::post(&format!("/v1/queues/{QUEUE}/jobs/{id}/requeue")).bearer(&a.token))
        .await?;
    assert_error(&twice, 409, "requeueing a queued job");
    let missing = world
        .send(
            Request::post(&format!("/v1/queues/{QUEUE}/jobs/{MISSING_JOB}/cancel"))
                .bearer(&a.token),
        )
        .await?;
    assert_error(&missing, 404, "canceling a job that does not exist");
    world.api.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_job_canceled_over_http_stops_and_never_succeeds() -> anyhow::Result<()> {
    let world = World::start().await?;
    let a = world.tenant("acme", Quotas::default()).await?;
    world
        .upload_ok(&a.token, "slow", "example-slow", "")
        .await?;
    world
        .upload_ok(&a.token, "hello", "example-hello", "")
        .await?;
    let worker =
        InProcessWorker::start(&world.redis, "http-test-worker", 2, Duration::from_secs(5))?;

    // A finished job cannot be canceled.
    let done = world
        .enqueue_ok(
            &a.token,
            &json!({"task": "hello", "payload": {"name": "Ada"}}),
        )
        .await?;
    let job = world
        .wait_for_job(&a.token, &done, "succeeded", JOB_WAIT, |job| {
            job["state"] == "succeeded"
        })
        .await?;
    assert!(mentions(&job["result"], "Hello, Ada!"), "{job}");
    let response = world
        .send(Request::post(&format!("/v1/queues/{QUEUE}/jobs/{done}/cancel")).bearer(&a.token))
        .await?;
    assert_error(&response, 409, "canceling a succeeded job");
    assert_eq!(world.job(&a.token, &done).await?["state"], "succeeded");

    // A running one is stopped.
    let id = world
        .enqueue_ok(
            &a.token,
            &json!({"task": "slow", "payload": {"ms": 5000}, "max_attempts": 1}),
        )
        .await?;
    world
        .wait_for_job(&a.token, &id, "running", JOB_WAIT, |job| {
            job["state"] == "running"
        })
        .await?;
    let canceled_at = Instant::now();
    let response = world
        .send(Request::post(&format!("/v1/queues/{QUEUE}/jobs/{id}/cancel")).bearer(&a.token))
        .await?;
    assert_eq!(response.status, 200, "{response}");
    assert_eq!(
        response.json()?,
        json!({"id": id, "canceled": true, "previous_state": "running"})
    );
    let job = world.job(&a.token, &id).await?;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["outcome"]["class"], "canceled", "{job}");

    // The worker lets go of it: nothing runs any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = world
            .send(Request::get(&format!("/v1/queues/{QUEUE}/stats")).bearer(&a.token))
            .await?
            .json()?;
        if running_count(&stats) == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the canceled job still runs: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past the moment the guest would have finished, it is still canceled, not succeeded.
    let finish_line = canceled_at + Duration::from_millis(5500);
    tokio::time::sleep_until(finish_line.into()).await;
    let job = world.job(&a.token, &id).await?;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["outcome"]["class"], "canceled", "{job}");
    assert!(
        job["result"].is_null(),
        "a canceled job has no result: {job}"
    );
    let succeeded = world
        .send(Request::get(&format!("/v1/queues/{QUEUE}/jobs?state=succeeded")).bearer(&a.token))
        .await?
        .json()?;
    assert!(!mentions(&succeeded, &id), "{succeeded}");

    worker.stop().await?;
    world.api.shutdown().await
}

/// The number of running jobs in a stats answer, from its `[state, count]` pairs.
fn running_count(stats: &Value) -> Option<u64> {
    stats["counts"]
        .as_array()?
        .iter()
        .find(|pair| pair[0] == "running")?[1]
        .as_u64()
}
