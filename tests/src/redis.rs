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
        ping(self.port)
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

/// A private Redis Cluster of three masters on loopback, each a [`TestRedis`]-like process in
/// its own directory, with the slots spread across them. Killed when dropped.
#[derive(Debug)]
pub struct TestRedisCluster {
    nodes: Vec<Child>,
    ports: Vec<u16>,
    dir: tempfile::TempDir,
}

impl TestRedisCluster {
    /// Starts three nodes and joins them into a cluster.
    ///
    /// # Errors
    ///
    /// When `redis-server` or `redis-cli` is missing, or the cluster is not ready within ten
    /// seconds.
    pub fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("failed to create a temporary directory")?;
        let mut cluster = TestRedisCluster {
            nodes: Vec::new(),
            ports: Vec::new(),
            dir,
        };
        for index in 0..3 {
            // Each node also listens on port + 10000 for the cluster bus.
            let port = loop {
                let port = free_port()?;
                if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
                    break port;
                }
            };
            let node_dir = cluster.dir.path().join(format!("node{index}"));
            std::fs::create_dir_all(&node_dir)?;
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .arg("--logfile")
                .arg(node_dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context(
                    "cannot start redis-server; install it (`apt-get install redis-server`)",
                )?;
            cluster.nodes.push(child);
            cluster.ports.push(port);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        for port in &cluster.ports {
            while !ping(*port) {
                if Instant::now() > deadline {
                    bail!("cluster node on port {port} did not start");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        let addresses: Vec<String> = cluster
            .ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let output = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("cannot run redis-cli; it comes with the redis-server package")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        while !cluster.is_ready() {
            if Instant::now() > deadline {
                bail!("the cluster did not reach state ok within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(cluster)
    }

    /// The `--redis` value for this cluster: `cluster:` and every node's URL.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect();
        format!("cluster:{}", nodes.join(","))
    }

    /// The hash slot of `key`, as the cluster computes it.
    ///
    /// # Errors
    ///
    /// When the first node does not answer.
    pub fn keyslot(&self, key: &str) -> anyhow::Result<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.ports[0]))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let request = format!(
            "*3\r\n$7\r\nCLUSTER\r\n$7\r\nKEYSLOT\r\n${}\r\n{key}\r\n",
            key.len()
        );
        stream.write_all(request.as_bytes())?;
        let mut reply = [0u8; 32];
        let n = stream.read(&mut reply)?;
        let text = String::from_utf8_lossy(&reply[..n]);
        text.trim()
            .trim_start_matches(':')
            .parse()
            .context("CLUSTER KEYSLOT reply")
    }

    /// Picks one queue name of tenant `tenant` per master, each one's keys (hash tag
    /// `{tenant/queue}`) living on that master, in the order of the nodes in [`Self::url`]: so
    /// that a test on these queues uses every node.
    ///
    /// # Errors
    ///
    /// When a node does not answer, or no names among the first thousand cover every node.
    pub fn queues_on_every_node(&self, tenant: &str) -> anyhow::Result<Vec<String>> {
        let mut picked: Vec<Option<String>> = vec![None; self.ports.len()];
        for n in 0..1000 {
            let name = format!("q{n}");
            let node = self.node_of(&format!("wr:{{{tenant}/{name}}}:ready"))?;
            picked[node].get_or_insert(name);
            if picked.iter().all(Option::is_some) {
                return Ok(picked.into_iter().flatten().collect());
            }
        }
        bail!("no queue names of tenant `{tenant}` found for every node: {picked:?}")
    }

    /// The index (in [`Self::url`]'s order) of the master that holds `key`.
    ///
    /// Asks the first node whether the key exists: a node that does not own the key's slot
    /// answers with a `MOVED` redirection naming the owner, which is exact whatever slot
    /// ranges `redis-cli --cluster create` chose.
    fn node_of(&self, key: &str) -> anyhow::Result<usize> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.ports[0]))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let request = format!("*2\r\n$6\r\nEXISTS\r\n${}\r\n{key}\r\n", key.len());
        stream.write_all(request.as_bytes())?;
        let mut reply = [0u8; 128];
        let n = stream.read(&mut reply)?;
        let text = String::from_utf8_lossy(&reply[..n]);
        let owner = match text.trim().strip_prefix("-MOVED ") {
            // `-MOVED <slot> <host>:<port>`.
            Some(moved) => moved
                .rsplit(':')
                .next()
                .and_then(|port| port.parse::<u16>().ok())
                .with_context(|| format!("unexpected redirection for `{key}`: {text:?}"))?,
            None if text.starts_with(':') => self.ports[0],
            None => bail!("unexpected reply to EXISTS `{key}`: {text:?}"),
        };
        self.ports
            .iter()
            .position(|&port| port == owner)
            .with_context(|| format!("`{key}` lives on port {owner}, not a node of this cluster"))
    }

    fn is_ready(&self) -> bool {
        self.ports.iter().all(|port| {
            let redis = NodeProbe(*port);
            redis.info_contains("cluster_state:ok")
        })
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for child in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for index in 0..self.nodes.len() {
                let log = self
                    .dir
                    .path()
                    .join(format!("node{index}"))
                    .join("redis.log");
                eprintln!("--- cluster node {index} log ---\n{}", read_tail(&log));
            }
        }
    }
}

/// Asks one node for `CLUSTER INFO`.
struct NodeProbe(u16);

impl NodeProbe {
    fn info_contains(&self, needle: &str) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.0)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"CLUSTER INFO\r\n").is_err() {
            return false;
        }
        let mut reply = vec![0u8; 4096];
        let n = stream.read(&mut reply).unwrap_or(0);
        String::from_utf8_lossy(&reply[..n]).contains(needle)
    }
}

fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}
