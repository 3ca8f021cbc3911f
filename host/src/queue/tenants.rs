//! The tenant registry: who the tenants are, their quotas, and their API tokens.
//!
//! A token is shown once, when it is made; Redis keeps only its sha256, so a copy of the
//! database does not hand out access. The tenant named [`DEFAULT_TENANT`]
//! exists without being created, with default quotas and no token, so a single-user setup
//! needs no tenant commands at all; creating it gives it a token and quotas like any other.

use std::fmt;
use std::sync::LazyLock;

use anyhow::{Context as _, anyhow, bail};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::keys::{registry_epoch, registry_tenants, registry_tokens};
use super::{Conn, DEFAULT_TENANT, Refusal, check_name};

/// The largest component accepted when a tenant sets no limit (64 MiB).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = 64 << 20;

/// What every API token starts with, so a leaked one is easy to recognise in logs and scans.
pub const TOKEN_PREFIX: &str = "wrt_";

/// A tenant's limits. A limit left unset does not apply, except the two sizes, which fall back
/// to 1 MiB per payload and 64 MiB per component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// The most of the tenant's jobs running at once, across every worker.
    pub max_running: Option<u32>,
    /// The most of the tenant's jobs waiting (queued or scheduled), across its queues.
    pub max_queued: Option<u64>,
    /// The largest payload, in bytes.
    pub max_payload_bytes: Option<u64>,
    /// The largest component, in bytes.
    pub max_component_bytes: Option<u64>,
    /// The most memory one attempt may ask for, in bytes.
    pub max_memory_bytes: Option<u64>,
    /// The longest timeout one attempt may ask for, in milliseconds.
    pub max_timeout_ms: Option<u64>,
    /// The fuel (WebAssembly instructions, roughly) each attempt may burn. Enforced by workers
    /// started with `--fuel-metering`.
    pub fuel_per_attempt: Option<u64>,
}

impl Quotas {
    /// The payload size limit in force.
    pub fn payload_limit(&self) -> u64 {
        self.max_payload_bytes
            .unwrap_or(super::DEFAULT_MAX_PAYLOAD_BYTES as u64)
    }

    /// The component size limit in force.
    pub fn component_limit(&self) -> u64 {
        self.max_component_bytes
            .unwrap_or(DEFAULT_MAX_COMPONENT_BYTES)
    }

    /// Refuses a memory limit or timeout over the tenant's ceilings.
    ///
    /// # Errors
    ///
    /// [`Refusal::Limit`] naming the ceiling and how to stay under it.
    pub fn check_limits(&self, memory_bytes: u64, timeout_ms: u64) -> Result<(), Refusal> {
        if let Some(ceiling) = self.max_memory_bytes
            && memory_bytes > ceiling
        {
            return Err(Refusal::Limit(format!(
                "a memory limit of {} is over this tenant's ceiling of {}; ask for at most {}",
                bytesize::ByteSize(memory_bytes),
                bytesize::ByteSize(ceiling),
                bytesize::ByteSize(ceiling)
            )));
        }
        if let Some(ceiling) = self.max_timeout_ms
            && timeout_ms > ceiling
        {
            return Err(Refusal::Limit(format!(
                "a timeout of {timeout_ms} ms is over this tenant's ceiling of {ceiling} ms; \
                 ask for at most {ceiling} ms"
            )));
        }
        Ok(())
    }

    /// Checks the quotas make sense: no zero caps, ceilings inside what a run accepts.
    ///
    /// # Errors
    ///
    /// A message naming the quota.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_running == Some(0) {
            return Err("max running jobs must be at least 1".to_owned());
        }
        if self.max_queued == Some(0) {
            return Err("max queued jobs must be at least 1".to_owned());
        }
        if self.fuel_per_attempt == Some(0) {
            return Err("the fuel per attempt must be at least 1".to_owned());
        }
        if let Some(memory) = self.max_memory_bytes
            && !(crate::config::MIN_MEMORY_BYTES..=crate::config::MAX_MEMORY_BYTES)
                .contains(&memory)
        {
            return Err(format!(
                "a memory ceiling of {} is out of range; use 1MiB to 4GiB",
                bytesize::ByteSize(memory)
            ));
        }
        if let Some(timeout) = self.max_timeout_ms
            && !(1..=crate::config::MAX_TIMEOUT.as_millis() as u64).contains(&timeout)
        {
            return Err(format!(
                "a timeout ceiling of {timeout} ms is out of range; use 1ms to 24h"
            ));
        }
        for (what, size) in [
            ("payload", self.max_payload_bytes),
            ("component", self.max_component_bytes),
        ] {
            if size == Some(0) {
                return Err(format!("the {what} size limit must be at least 1 byte"));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Quotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_any = |value: Option<String>| value.unwrap_or_else(|| "unlimited".to_owned());
        let size = |bytes: u64| bytesize::ByteSize(bytes).to_string();
        write!(
            f,
            "running {}, queued {}, payload {}, component {}, memory {}, timeout {}, fuel {}",
            or_any(self.max_running.map(|n| n.to_string())),
            or_any(self.max_queued.map(|n| n.to_string())),
            size(self.payload_limit()),
            size(self.component_limit()),
            or_any(self.max_memory_bytes.map(size)),
            or_any(self.max_timeout_ms.map(|ms| format!("{ms}ms"))),
            or_any(self.fuel_per_attempt.map(|n| n.to_string())),
        )
    }
}

/// One tenant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// The tenant's name.
    pub name: String,
    /// Its limits.
    pub quotas: Quotas,
    /// The sha256 (hex) of its current API token; `None` for the implicit default tenant.
    pub token_hash: Option<String>,
    /// When it was created (ms since the epoch, this host's clock).
    pub created_at_ms: u64,
}

impl TenantRecord {
    fn implicit_default() -> Self {
        TenantRecord {
            name: DEFAULT_TENANT.to_owned(),
            quotas: Quotas::default(),
            token_hash: None,
            created_at_ms: 0,
        }
    }
}

/// A freshly made API token. Shown to the user once; only its hash is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Token(format!("{TOKEN_PREFIX}{hex}"))
    }

    /// The token as the user must present it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a secret by accident, e.g. in a panic message.
        f.write_str("Token(…)")
    }
}

/// The hex sha256 of a token: what Redis stores and looks tokens up by.
pub fn token_hash(token: &str) -> String {
    format!("{:x}", Sha256::digest(token.as_bytes()))
}

/// The token lookup of [`Registry::authenticate`], built once.
static AUTHENTICATE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/authenticate.lua")));

/// Reads and changes the tenant registry.
#[derive(Clone)]
pub struct Registry {
    conn: Conn,
    script: std::sync::Arc<Script>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

impl Registry {
    /// The registry over `conn`.
    pub fn new(conn: Conn) -> Self {
        Registry {
            conn,
            script: std::sync::Arc::new(super::script(include_str!("lua/tenant.lua"))),
        }
    }

    /// The stored record of `name`, if it was created.
    ///
    /// # Errors
    ///
    /// When Redis fails or holds a malformed record.
    pub async fn get(&self, name: &str) -> anyhow::Result<Option<TenantRecord>> {
        let json: Option<String> = self
            .conn
            .clone()
            .hget(registry_tenants(), name)
            .await
            .with_context(|| format!("failed to look up tenant `{name}`"))?;
        json.map(|json| parse_record(name, &json)).transpose()
    }

    /// The record of `name`: the stored one, or the implicit default tenant's.
    ///
    /// # Errors
    ///
    /// [`Refusal::NotFound`] for a tenant that was never created; Redis errors as [`get`].
    ///
    /// [`get`]: Registry::get
    pub async fn resolve(&self, name: &str) -> anyhow::Result<TenantRecord> {
        check_name("tenant", name).map_err(Refusal::Invalid)?;
        match self.get(name).await? {
            Some(record) => Ok(record),
            None if name == DEFAULT_TENANT => Ok(TenantRecord::implicit_default()),
            None => Err(Refusal::NotFound(format!(
                "there is no tenant `{name}`; create it with `wasm-runner tenant create {name}`"
            ))
            .into()),
        }
    }

    /// Every created tenant, by name.
    ///
    /// # Errors
    ///
    /// When Redis fails or holds a malformed record.
    pub async fn list(&self) -> anyhow::Result<Vec<TenantRecord>> {
        let all: Vec<(String, String)> = self
            .conn
            .clone()
            .hgetall(registry_tenants())
            .await
            .context("failed to list tenants")?;
        let mut records = all
            .iter()
            .map(|(name, json)| parse_record(name, json))
            .collect::<anyhow::Result<Vec<_>>>()?;
        records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(records)
    }

    /// Creates tenant `name` with `quotas` and returns its record and its API token, which is
    /// not stored and cannot be shown again.
    ///
    /// # Errors
    ///
    /// When the name or quotas are invalid, the tenant exists, or Redis fails.
    pub async fn create(
        &self,
        name: &str,
        quotas: Quotas,
    ) -> anyhow::Result<(TenantRecord, Token)> {
        check_name("tenant", name).map_err(Refusal::Invalid)?;
        quotas.validate().map_err(Refusal::Invalid)?;
        let token = Token::generate();
        let record = TenantRecord {
            name: name.to_owned(),
            quotas,
            token_hash: Some(token_hash(token.expose())),
            created_at_ms: now_ms(),
        };
        if !self.swap(name, None, Some(&record)).await? {
            bail!(Refusal::Conflict(format!(
                "tenant `{name}` already exists; change it with `wasm-runner tenant update {name}` \
                 or get a new token with `wasm-runner tenant rotate-token {name}`"
            )));
        }
        Ok((record, token))
    }

    /// Applies `change` to the quotas of tenant `name` and returns the new record.
    ///
    /// # Errors
    ///
    /// When the tenant does not exist, the new quotas are invalid, another admin changed the
    /// tenant at the same moment, or Redis fails.
    pub async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut Quotas),
    ) -> anyhow::Result<TenantRecord> {
        let old = self.existing(name).await?;
        let mut new = old.clone();
        change(&mut new.quotas);
        new.quotas.validate().map_err(Refusal::Invalid)?;
        if !self.swap(name, Some(&old), Some(&new)).await? {
            bail!(concurrent_change(name));
        }
        Ok(new)
    }

    /// Replaces tenant `name`'s API token; the old one stops working at once.
    ///
    /// # Errors
    ///
    /// When the tenant does not exist, changed at the same moment, or Redis fails.
    pub async fn rotate_token(&self, name: &str) -> anyhow::Result<Token> {
        let old = self.existing(name).await?;
        let token = Token::generate();
        let new = TenantRecord {
            token_hash: Some(token_hash(token.expose())),
            ..old.clone()
        };
        if !self.swap(name, Some(&old), Some(&new)).await? {
            bail!(concurrent_change(name));
        }
        Ok(token)
    }

    /// Removes tenant `name` from the registry and revokes its token. Its data is not touched
    /// here; see [`Queue::purge`](super::Queue::purge).
    ///
    /// # Errors
    ///
    /// When the tenant does not exist, changed at the same moment, or Redis fails.
    pub async fn remove(&self, name: &str) -> anyhow::Result<TenantRecord> {
        let old = self.existing(name).await?;
        if !self.swap(name, Some(&old), None).await? {
            bail!(concurrent_change(name));
        }
        Ok(old)
    }

    /// The tenant an API token belongs to, or `None` for a token that is unknown, revoked or
    /// malformed.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn authenticate(&self, token: &str) -> anyhow::Result<Option<TenantRecord>> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 128 {
            return Ok(None);
        }
        let hash = token_hash(token);
        // One round trip for the index and the record: every API request pays for it.
        let found: Option<(String, String)> = AUTHENTICATE
            .key(registry_tokens())
            .key(registry_tenants())
            .arg(&hash)
            .invoke_async(&mut self.conn.clone())
            .await
            .context("failed to look up an API token")?;
        let Some((name, json)) = found else {
            return Ok(None);
        };
        // The index and the record are written together, but check the record as well: a token
        // must match the tenant's current hash to count.
        Ok(Some(parse_record(&name, &json)?)
            .filter(|record| record.token_hash.as_deref() == Some(hash.as_str())))
    }

    /// The data epoch of this Redis: the marker written by the first worker that saw it.
    /// Writes `candidate` if there is none yet, and returns the marker in force.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn epoch(&self, candidate: &str) -> anyhow::Result<String> {
        let mut conn = self.conn.clone();
        let _: Option<String> = redis::cmd("SET")
            .arg(registry_epoch())
            .arg(candidate)
            .arg("NX")
            .query_async(&mut conn)
            .await
            .context("failed to write the data epoch marker")?;
        conn.get(registry_epoch())
            .await
            .context("failed to read the data epoch marker")
    }

    /// Redis's `maxmemory-policy` (on the node holding the registry), or `None` when the
    /// server does not allow `CONFIG GET` (some managed services).
    pub async fn eviction_policy(&self) -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let reply: Vec<String> = self
            .conn
            .clone()
            .query_on_node_of(&registry_tenants(), cmd)
            .await
            .ok()?;
        reply.get(1).cloned()
    }

    async fn existing(&self, name: &str) -> anyhow::Result<TenantRecord> {
        check_name("tenant", name).map_err(Refusal::Invalid)?;
        self.get(name).await?.ok_or_else(|| {
            anyhow!(Refusal::NotFound(format!(
                "there is no tenant `{name}`; see `wasm-runner tenant list`"
            )))
        })
    }

    async fn swap(
        &self,
        name: &str,
        old: Option<&TenantRecord>,
        new: Option<&TenantRecord>,
    ) -> anyhow::Result<bool> {
        let encode = |record: Option<&TenantRecord>| {
            record.map_or_else(String::new, |r| {
                serde_json::to_string(r).expect("a tenant record always serializes")
            })
        };
        let old_hash = old.and_then(|r| r.token_hash.clone()).unwrap_or_default();
        let new_hash = new.and_then(|r| r.token_hash.clone()).unwrap_or_default();
        // Dropping and re-adding the same hash would be a no-op; skip the drop.
        let drop_hash = if old_hash == new_hash {
            String::new()
        } else {
            old_hash
        };
        let written: i64 = self
            .script
            .key(registry_tenants())
            .key(registry_tokens())
            .arg(name)
            .arg(encode(old))
            .arg(encode(new))
            .arg(drop_hash)
            .arg(new_hash)
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to write tenant `{name}`"))?;
        Ok(written == 1)
    }
}

fn parse_record(name: &str, json: &str) -> anyhow::Result<TenantRecord> {
    serde_json::from_str(json)
        .with_context(|| format!("tenant `{name}` has a malformed record in Redis"))
}

fn concurrent_change(name: &str) -> Refusal {
    Refusal::Conflict(format!(
        "tenant `{name}` was changed by someone else at the same moment; run the command again"
    ))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = Token::generate();
        let b = Token::generate();
        assert_ne!(a, b);
        assert!(a.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose().len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(format!("{a:?}"), "Token(…)");
        assert_eq!(token_hash(a.expose()).len(), 64);
        assert_ne!(token_hash(a.expose()), token_hash(b.expose()));
    }

    #[test]
    fn ceilings_refuse_what_is_over_them() {
        let quotas = Quotas {
            max_memory_bytes: Some(64 << 20),
            max_timeout_ms: Some(10_000),
            ..Quotas::default()
        };
        assert!(quotas.check_limits(64 << 20, 10_000).is_ok());
        let memory = quotas.check_limits(128 << 20, 1).unwrap_err().to_string();
        assert!(memory.contains("ceiling of 64.0 MiB"), "{memory}");
        let timeout = quotas.check_limits(1, 10_001).unwrap_err().to_string();
        assert!(timeout.contains("ceiling of 10000 ms"), "{timeout}");
        assert!(Quotas::default().check_limits(u64::MAX, u64::MAX).is_ok());
    }

    #[test]
    fn quotas_are_validated() {
        assert!(Quotas::default().validate().is_ok());
        let zero_running = Quotas {
            max_running: Some(0),
            ..Quotas::default()
        };
        assert!(zero_running.validate().is_err());
        let huge_memory = Quotas {
            max_memory_bytes: Some(8 << 30),
            ..Quotas::default()
        };
        assert!(huge_memory.validate().unwrap_err().contains("out of range"));
    }

    #[test]
    fn size_limits_fall_back_to_defaults() {
        let quotas = Quotas::default();
        assert_eq!(quotas.payload_limit(), 1 << 20);
        assert_eq!(quotas.component_limit(), 64 << 20);
        assert!(quotas.to_string().contains("running unlimited"));
    }

    #[test]
    fn records_round_trip_and_reject_unknown_quota_fields() {
        let record = TenantRecord {
            name: "acme".to_owned(),
            quotas: Quotas {
                max_running: Some(4),
                ..Quotas::default()
            },
            token_hash: Some("ab".to_owned()),
            created_at_ms: 5,
        };
        let json = serde_json::to_string(&record).unwrap();
        assert_eq!(parse_record("acme", &json).unwrap(), record);
        assert!(serde_json::from_str::<Quotas>(r#"{"max_runing": 3}"#).is_err());
    }
}
