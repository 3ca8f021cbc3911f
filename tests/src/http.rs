//! A tiny raw HTTP/1.1 client and an in-process HTTP API server, for the API's end-to-end tests.
//!
//! The client writes whatever bytes a test asks for (lying `Content-Length`, truncated or
//! garbage bodies, bad header bytes), always with `Connection: close`, and reads one response
//! within a deadline. It writes and reads at the same time, so a server that answers before
//! reading a huge body is still heard.
//!
//! - [`Request`]: a request to send, built step by step.
//! - [`Response`]: status, headers and body of what came back.
//! - [`send`], [`try_send`]: send a request to an address.
//! - [`TestApi`]: the API served on `127.0.0.1:0` against a [`TestRedis`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::TestRedis;

/// How long a response may take unless the request says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest response the client reads; the API never sends anything near this.
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// How the request's body is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` is the body's real length (sent only when there is a body, or for
    /// methods that usually carry one).
    Exact,
    /// `Content-Length` says this, whatever the body's real length.
    Claimed(u64),
    /// No `Content-Length`: the body is sent as it stands (e.g. with a hand-made
    /// `Transfer-Encoding: chunked`).
    Raw,
}

/// An HTTP/1.1 request to send as raw bytes.
#[derive(Debug, Clone)]
pub struct Request {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    framing: Framing,
    half_close: bool,
    timeout: Duration,
}

impl Request {
    /// A request with `method` for `target` (path and query), no body and no headers beyond
    /// `Host` and `Connection: close`.
    pub fn new(method: &str, target: &str) -> Self {
        Request {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            framing: Framing::Exact,
            half_close: false,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A `GET` of `target`.
    pub fn get(target: &str) -> Self {
        Request::new("GET", target)
    }

    /// A `POST` to `target`.
    pub fn post(target: &str) -> Self {
        Request::new("POST", target)
    }

    /// The method, as sent.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The target (path and query), as sent.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Adds `Authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Self {
        self.header("Authorization", format!("Bearer {token}"))
    }

    /// Adds a header with any value bytes, even ones HTTP does not allow.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Sets the body; `Content-Length` is its length.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// Sets a JSON body with `Content-Type: application/json`.
    pub fn json(self, value: &serde_json::Value) -> Self {
        self.header("Content-Type", "application/json")
            .body(value.to_string())
    }

    /// Sends `Content-Length: length` whatever the body really is, to lie about it.
    pub fn claim_length(mut self, length: u64) -> Self {
        self.framing = Framing::Claimed(length);
        self
    }

    /// Sends no `Content-Length` at all; the body goes out as set, for hand-made framing.
    pub fn raw_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self.framing = Framing::Raw;
        self
    }

    /// Shuts down the write side once everything is sent, as a client that gives up
    /// half-way through its body would.
    pub fn close_after_body(mut self) -> Self {
        self.half_close = true;
        self
    }

    /// How long to wait for the response.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The request as it goes on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        head.extend_from_slice(b"Host: 127.0.0.1\r\nConnection: close\r\n");
        for (name, value) in &self.headers {
            head.extend_from_slice(name.as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        let length = match self.framing {
            Framing::Exact => {
                let carries_body = matches!(self.method.as_str(), "POST" | "PUT" | "PATCH");
                (carries_body || !self.body.is_empty()).then_some(self.body.len() as u64)
            }
            Framing::Claimed(length) => Some(length),
            Framing::Raw => None,
        };
        if let Some(length) = length {
            head.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(&self.body);
        head
    }
}

/// One HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The headers in the order received, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    ///
    /// When the body is not JSON; the message shows the status and the body.
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the {} response's body is not JSON: {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as text, lossily, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Display for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut text = self.text();
        if text.len() > 500 {
            let mut cut = 500;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        write!(f, "{} {text}", self.status)
    }
}

/// Sends `request` to `addr` and reads the response.
///
/// # Errors
///
/// When the connection fails, the server closes it without a complete response, or no
/// response comes within the request's timeout.
pub async fn send(addr: SocketAddr, request: &Request) -> anyhow::Result<Response> {
    try_send(addr, request).await?.ok_or_else(|| {
        anyhow!(
            "{} {}: the server closed the connection without a response",
            request.method,
            request.target
        )
    })
}

/// Sends `request` to `addr` and reads the response, or `None` when the server closed the
/// connection (or reset it) before sending a single byte, which is a fair answer to a request
/// the client abandoned.
///
/// # Errors
///
/// When the connection cannot be made, the response is malformed or cut off half-way, or
/// nothing at all happens within the request's timeout (a hung server).
pub async fn try_send(addr: SocketAddr, request: &Request) -> anyhow::Result<Option<Response>> {
    let what = format!("{} {}", request.method, request.target);
    exchange(
        addr,
        request.to_bytes(),
        request.half_close,
        request.timeout,
    )
    .await
    .with_context(|| what)
}

/// Sends `bytes` to `addr` as they are (not even a request line is added) and reads the
/// response, as [`try_send`].
///
/// # Errors
///
/// As [`try_send`].
pub async fn try_send_bytes(
    addr: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
) -> anyhow::Result<Option<Response>> {
    exchange(addr, bytes.to_vec(), true, timeout).await
}

async fn exchange(
    addr: SocketAddr,
    bytes: Vec<u8>,
    half_close: bool,
    timeout: Duration,
) -> anyhow::Result<Option<Response>> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .context("connecting timed out")?
        .with_context(|| format!("cannot connect to {addr}"))?;
    let (mut reader, mut writer) = stream.into_split();

    // Write in the background: a server may answer (and stop reading) before the body ends,
    // and then the write fails or blocks, which is not the test's business.
    let write = tokio::spawn(async move {
        let _ = writer.write_all(&bytes).await;
        if half_close {
            let _ = writer.shutdown().await;
        }
        // Keep the write half open (dropping it would half-close) until the read is done.
        std::future::pending::<()>().await;
        drop(writer);
    });

    let read = tokio::time::timeout(timeout, read_response(&mut reader)).await;
    write.abort();
    match read {
        Ok(result) => result,
        Err(_) => bail!("no complete response within {timeout:?}"),
    }
}

/// Reads one response; `None` when the connection ends before its first byte.
async fn read_response(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
) -> anyhow::Result<Option<Response>> {
    let mut buffer = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(response) = parse_response(&buffer)? {
            return Ok(Some(response));
        }
        let n = match reader.read(&mut chunk).await {
            Ok(n) => n,
            // A reset after the whole response is read is the server closing early; before
            // anything is read it is the server refusing the request outright.
            Err(err) if is_reset(&err) => 0,
            Err(err) => return Err(err).context("reading the response failed"),
        };
        if n == 0 {
            if buffer.is_empty() {
                return Ok(None);
            }
            // A response delimited by the end of the connection.
            return parse_until_eof(&buffer).map(Some);
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.len() > MAX_RESPONSE_BYTES {
            bail!("the response is over {MAX_RESPONSE_BYTES} bytes");
        }
    }
}

fn is_reset(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe
    )
}

/// The head of a response: status, headers, and where the body starts.
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
    body_start: usize,
}

fn parse_head(buffer: &[u8]) -> anyhow::Result<Option<Head>> {
    let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(&buffer[..end]).context("the response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        bail!("malformed status line {status_line:?}");
    };
    if !version.starts_with("HTTP/1.") {
        bail!("not an HTTP/1 response: {status_line:?}");
    }
    let status = code
        .parse()
        .with_context(|| format!("malformed status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("malformed header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some(Head {
        status,
        headers,
        body_start: end + 4,
    }))
}

/// The response in `buffer` if it is complete by its own framing.
fn parse_response(buffer: &[u8]) -> anyhow::Result<Option<Response>> {
    let Some(head) = parse_head(buffer)? else {
        return Ok(None);
    };
    let rest = &buffer[head.body_start..];
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        match dechunk(rest)? {
            Some(body) => body,
            None => return Ok(None),
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length.parse().context("malformed Content-Length")?;
        if rest.len() < length {
            return Ok(None);
        }
        rest[..length].to_vec()
    } else if head.status == 204 || head.status == 304 || (100..200).contains(&head.status) {
        Vec::new()
    } else {
        // Delimited by the end of the connection.
        return Ok(None);
    };
    Ok(Some(Response {
        status: head.status,
        headers: head.headers,
        body,
    }))
}

fn parse_until_eof(buffer: &[u8]) -> anyhow::Result<Response> {
    let Some(head) = parse_head(buffer)? else {
        bail!(
            "the connection closed after a partial response: {:?}",
            String::from_utf8_lossy(&buffer[..buffer.len().min(200)])
        );
    };
    let delimited_by_close = !head
        .headers
        .iter()
        .any(|(n, _)| n == "content-length" || n == "transfer-encoding");
    if !delimited_by_close {
        bail!("the connection closed before the end of the response body");
    }
    Ok(Response {
        status: head.status,
        body: buffer[head.body_start..].to_vec(),
        headers: head.headers,
    })
}

/// The body of a chunked message, or `None` when it has not all arrived.
fn dechunk(mut rest: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&rest[..line_end]).context("malformed chunk size")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("malformed chunk size {line:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            // Trailers are not used by the API; the message ends at the blank line.
            return Ok(rest.windows(2).any(|w| w == b"\r\n").then_some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// The HTTP API served in this process on `127.0.0.1:0`, against a [`TestRedis`]. Stopped by
/// [`TestApi::shutdown`], or aborted when dropped.
#[derive(Debug)]
pub struct TestApi {
    addr: SocketAddr,
    conn: wasm_runner::queue::Conn,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApi {
    /// Connects to `redis` and serves the API on a free loopback port, on the current tokio
    /// runtime (use a multi-threaded one, so the server runs while a test waits).
    ///
    /// # Errors
    ///
    /// When Redis cannot be reached, the executor cannot start, or no port can be bound.
    pub async fn start(redis: &TestRedis) -> anyhow::Result<TestApi> {
        let conn = wasm_runner::queue::connect(&redis.url()).await?;
        let executor = Arc::new(wasm_runner::runtime::Executor::new(
            wasm_runner::runtime::EngineOptions {
                max_concurrent: 4,
                ..Default::default()
            },
        )?);
        let state = wasm_runner::api::ApiState::new(conn.clone(), executor);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind a loopback port")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(wasm_runner::api::serve_http(listener, state, async {
            let _ = stopped.await;
        }));
        Ok(TestApi {
            addr,
            conn,
            stop: Some(stop),
            handle,
        })
    }

    /// The address the API listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection to the same Redis, e.g. for a [`Registry`](wasm_runner::queue::Registry).
    pub fn conn(&self) -> &wasm_runner::queue::Conn {
        &self.conn
    }

    /// Sends `request` to the API (see [`send`]).
    ///
    /// # Errors
    ///
    /// As [`send`].
    pub async fn send(&self, request: &Request) -> anyhow::Result<Response> {
        send(self.addr, request).await
    }

    /// Sends `request` to the API (see [`try_send`]).
    ///
    /// # Errors
    ///
    /// As [`try_send`].
    pub async fn try_send(&self, request: &Request) -> anyhow::Result<Option<Response>> {
        try_send(self.addr, request).await
    }

    /// Whether the server task is still running (it has not returned or panicked).
    pub fn is_running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Stops the server gracefully and returns what `serve_http` returned.
    ///
    /// # Errors
    ///
    /// When the server failed or did not stop within ten seconds.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.handle)
            .await
            .context("the API did not stop within 10s of its shutdown signal")?
            .context("the API task panicked")?
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lying_content_length_is_sent_as_claimed() {
        let bytes = Request::post("/x").body("abc").claim_length(10).to_bytes();
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("Content-Length: 10\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nabc"), "{text}");
    }

    #[test]
    fn gets_without_a_body_carry_no_content_length() {
        let text = String::from_utf8(Request::get("/x").to_bytes()).unwrap();
        assert!(!text.contains("Content-Length"), "{text}");
        let post = String::from_utf8(Request::post("/x").to_bytes()).unwrap();
        assert!(post.contains("Content-Length: 0\r\n"), "{post}");
    }

    #[test]
    fn responses_are_parsed_by_length_and_by_chunks() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nX-A: b\r\n\r\n{}";
        let response = parse_response(plain).unwrap().unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.header("x-a"), Some("b"));
        assert_eq!(response.body, b"{}");
        assert!(parse_response(&plain[..plain.len() - 1]).unwrap().is_none());

        let chunked = b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n\
                        3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        let response = parse_response(chunked).unwrap().unwrap();
        assert_eq!(response.status, 404);
        assert_eq!(response.json().unwrap(), serde_json::json!({"a": 1}));
        assert!(
            parse_response(&chunked[..chunked.len() - 5])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_cut_off_response_is_an_error_not_a_response() {
        let cut = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}";
        assert!(parse_until_eof(cut).is_err());
        assert!(parse_until_eof(b"HTTP/1.1 20").is_err());
        let by_close = parse_until_eof(b"HTTP/1.1 200 OK\r\n\r\nhello").unwrap();
        assert_eq!(by_close.body, b"hello");
    }
}
