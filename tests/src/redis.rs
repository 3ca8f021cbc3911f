//! A private `redis-server` for one test: on a free loopback port, in a temporary directory,
//! killed when dropped. Never touches port 6379 or any Redis the test did not start.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How long a fresh server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running private `redis-server`.
#[derive(Debug)]
pub struct TestRedis {
    child: Option<Child>,
    port: u16,
    aof: bool,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts a server with persistence off.
    ///
    /// # Errors
    ///
    /// When `redis-server` is not installed or does not come up within ten seconds.
    pub fn start() -> anyhow::Result<Self> {
        TestRedis::start_with(false)
    }

    /// Starts a server that writes an append-only file (fsync every second), so a restart
    /// keeps what was acknowledged.
    ///
    /// # Errors
    ///
    /// As [`TestRedis::start`].
    pub fn start_with_aof() -> anyhow::Result<Self> {
        TestRedis::start_with(true)
    }

    fn start_with(aof: bool) -> anyhow::Result<Self> {
        let mut last_error = None;
        // A free port found by binding port 0 can be taken by someone else before the server
        // binds it; try a few ports before giving up.
        for _ in 0..5 {
            let mut redis = TestRedis {
                child: None,
                port: free_port()?,
                aof,
                dir: tempfile::tempdir().context("failed to create a temporary directory")?,
            };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(err) => last_error = Some(err),
            }
        }
        Err(last_error.expect("the loop ran at least once"))
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .arg("--appendonly")
            .arg(if self.aof { "yes" } else { "no" })
            .args(["--appendfsync", "everysec"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = command.spawn().map_err(|err| {
            anyhow::anyhow!(
                "cannot start redis-server ({err}); install it (`apt-get install redis-server`) \
                 or run scripts/test, which installs it"
            )
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "redis-server exited at start ({status}): {}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "redis-server did not answer within {START_TIMEOUT:?}: {}",
            self.log_tail()
        )
    }

    /// The URL to connect to.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        self.stop();
    }

    /// Starts the server again on the same port and directory (with its AOF, if any).
    ///
    /// # Errors
    ///
    /// As [`TestRedis::start`].
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// Sends one command and returns the raw reply, for assertions on Redis itself (`INFO`,
    /// `DBSIZE`).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes())?;
        let mut reply = Vec::new();
        let mut buffer = [0u8; 16 << 10];
        // Read until the reply has stopped growing for a moment; enough for test assertions.
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        loop {
            match stream.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buffer[..n]),
                Err(_) if !reply.is_empty() => break,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(String::from_utf8_lossy(&reply).into_owned())
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_tail(&self) -> String {
        read_tail(&self.dir.path().join("redis.log"))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server log (port {}) ---\n{}",
                self.port,
                self.log_tail()
            );
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("failed to find a free port")?;
    Ok(listener.local_addr()?.port())
}

fn read_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(20).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}
