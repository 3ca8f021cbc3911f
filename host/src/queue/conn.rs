//! The connection to Redis: one server or a Redis Cluster, behind one type.
//!
//! Every script and pipeline wasm-runner sends touches keys of a single hash tag (see
//! [`keys`](super::keys)), so on a cluster each one goes to the one node that owns the slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// How long a command may wait for Redis before it is reported as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where Redis is: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One Redis server.
    Single(String),
    /// Any nodes of a Redis Cluster; the rest are discovered.
    Cluster(Vec<String>),
}

impl Target {
    /// Reads `--redis`: one URL for a single server, or `cluster:` followed by a
    /// comma-separated list of node URLs for a cluster
    /// (`cluster:redis://10.0.0.1:7000,redis://10.0.0.2:7000`).
    ///
    /// # Errors
    ///
    /// Says what a valid value looks like when a URL does not parse.
    pub fn parse(text: &str) -> anyhow::Result<Target> {
        let check = |url: &str| {
            redis::Client::open(url).map(|_| ()).with_context(|| {
                format!(
                    "`{url}` is not a Redis URL; use e.g. redis://127.0.0.1:6379, or \
                     cluster:redis://host1:7000,redis://host2:7000 for a cluster"
                )
            })
        };
        match text.strip_prefix("cluster:") {
            Some(list) => {
                let nodes: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(str::to_owned)
                    .collect();
                if nodes.is_empty() {
                    bail!("`{text}` names no cluster node; write cluster:redis://host:port,...");
                }
                for node in &nodes {
                    check(node)?;
                }
                Ok(Target::Cluster(nodes))
            }
            None => {
                check(text)?;
                Ok(Target::Single(text.to_owned()))
            }
        }
    }
}

/// A multiplexed connection to one server or to a cluster. Cheap to clone; clones share it.
#[derive(Clone)]
pub enum Conn {
    /// One server, reconnected automatically.
    Single(ConnectionManager),
    /// A cluster, with slots discovered and redirections followed automatically.
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl Conn {
    /// Connects, failing within a few seconds when Redis does not answer.
    ///
    /// # Errors
    ///
    /// When the target is unreachable; the message names it.
    pub async fn connect(target: &Target) -> anyhow::Result<Conn> {
        match target {
            Target::Single(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_secs(2));
                let client = redis::Client::open(url.as_str())?;
                let conn = client
                    .get_connection_manager_with_config(config)
                    .await
                    .with_context(|| {
                        format!("failed to connect to Redis at {url}; is it running?")
                    })?;
                Ok(Conn::Single(conn))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3)
                    .build()
                    .context("failed to configure the Redis Cluster client")?;
                let conn = client.get_async_connection().await.with_context(|| {
                    format!(
                        "failed to connect to the Redis Cluster at {}; are its nodes running?",
                        nodes.join(", ")
                    )
                })?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// Runs a keyless command (such as `SCAN`) on the node that owns `key`'s slot; on a single
    /// server, just runs it.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn query_on_node_of<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        cmd: Cmd,
    ) -> anyhow::Result<T> {
        let value = match self {
            Conn::Single(conn) => cmd.query_async::<Value>(conn).await?,
            Conn::Cluster(conn) => {
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                conn.route_command(cmd, routing).await?
            }
        };
        T::from_redis_value(value).map_err(|err| anyhow::anyhow!("unexpected reply: {err}"))
    }
}

/// Requests sent to Redis by this process: one per command or pipeline, whatever it holds.
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// How many requests (single commands or whole pipelines) this process has sent to Redis
/// through a [`Conn`] so far. A worker reports it at shutdown, so the round trips it spends
/// per job can be measured from outside.
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        match self {
            Conn::Single(conn) => conn.req_packed_command(cmd),
            Conn::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
        match self {
            Conn::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(conn) => conn.get_db(),
            Conn::Cluster(conn) => conn.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_cluster_targets() {
        assert_eq!(
            Target::parse("redis://127.0.0.1:6379").unwrap(),
            Target::Single("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            Target::parse("cluster:redis://a:7000, redis://b:7001").unwrap(),
            Target::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
        );
        assert!(Target::parse("not a url").is_err());
        assert!(Target::parse("cluster:").is_err());
        assert!(Target::parse("cluster:redis://a:1,nope").is_err());
    }
}
