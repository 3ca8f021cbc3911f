//! Every Redis key name wasm-runner uses, built in one place.
//!
//! Keys are namespaced by tenant, and every key of one queue shares one Redis Cluster hash tag,
//! `{<tenant>/<queue>}`, so each queue operation is one script on one node. A tenant's task
//! registry has its own tag, `{<tenant>}`, so an upload is one script as well.
//!
//! ```text
//! wr:{acme}:tasks                      HASH   task name -> latest version (JSON)
//! wr:{acme}:task:<name>:versions       LIST   every version of a task, oldest first (JSON)
//! wr:{acme}:component:<sha256>         STRING component bytes, content-addressed
//! wr:{acme}:queues                     SET    the tenant's queue names (added on enqueue)
//! wr:{acme}:slots                      ZSET   running-jobs cap holders -> lease deadline (ms)
//! wr:{tenants}:all                     HASH   tenant name -> record (quotas, token hash)
//! wr:{tenants}:tokens                  HASH   sha256 of an API token -> tenant name
//! wr:{tenants}:epoch                   STRING random marker; gone or changed = data was lost
//! wr:{acme/default}:ready              LIST   job ids ready to run, oldest first
//! wr:{acme/default}:scheduled          ZSET   job id -> due time (ms): delayed jobs and retries
//! wr:{acme/default}:running            ZSET   lease `<job id>|<token>` -> lease deadline (ms)
//! wr:{acme/default}:failed             ZSET   job id -> time it failed (ms)
//! wr:{acme/default}:succeeded          ZSET   job id -> time it succeeded (ms)
//! wr:{acme/default}:job:<id>           HASH   the job: task, payload, policy, state, result,
//!                                             and `run:<token>` -> each attempt's record
//! wr:{acme/default}:idem:<key>         STRING idempotency key -> job id
//! wr:{acme/default}:workers            ZSET   worker id -> last heartbeat (ms)
//! wr:{acme/default}:wake               LIST   a token per enqueue, to wake idle workers
//! wr:{acme/default}:counts             HASH   `<task>|<state>` -> number of jobs
//! wr:{acme/default}:config             HASH   queue settings (retention periods)
//! ```

/// Every key starts with this, so wasm-runner's keys are easy to find in a shared Redis.
const PREFIX: &str = "wr";

/// The longest tenant, queue or task name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a tenant, queue or task name: 1 to 64 characters from `A-Z a-z 0-9 _ - .`.
///
/// The limit keeps key names free of the characters that have a meaning in them (`{`, `}`,
/// `:`, `/`), so one tenant's name can never reach into another's keys.
///
/// # Errors
///
/// Returns a message naming `what` and the rule that was broken.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "{what} name `{name}` must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "{what} name `{name}` contains `{bad}`; use only letters, digits, `_`, `-` and `.`"
        ));
    }
    Ok(())
}

/// The tenant registry: every tenant's record, and the index from API token hash to tenant.
/// Both share the `{tenants}` tag, so creating, rotating and deleting are one script each.
pub fn registry_tenants() -> String {
    format!("{PREFIX}:{{tenants}}:all")
}

/// A random marker written once to every Redis wasm-runner uses. If it vanishes or changes,
/// Redis lost its data (restarted without persistence, flushed, or failed over to a stale
/// replica), and workers say so.
pub fn registry_epoch() -> String {
    format!("{PREFIX}:{{tenants}}:epoch")
}

/// Hex sha256 of an API token -> tenant name.
pub fn registry_tokens() -> String {
    format!("{PREFIX}:{{tenants}}:tokens")
}

/// The keys of one tenant's task registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantKeys {
    tag: String,
}

impl TenantKeys {
    /// Keys for `tenant`, whose name must pass [`check_name`].
    pub fn new(tenant: &str) -> Self {
        TenantKeys {
            tag: format!("{PREFIX}:{{{tenant}}}"),
        }
    }

    /// Task name -> latest version.
    pub fn tasks(&self) -> String {
        format!("{}:tasks", self.tag)
    }

    /// Every version of one task.
    pub fn versions(&self, task: &str) -> String {
        format!("{}:task:{task}:versions", self.tag)
    }

    /// A component's bytes, by the hex sha256 of those bytes.
    pub fn component(&self, digest: &str) -> String {
        format!("{}:component:{digest}", self.tag)
    }

    /// The names of the tenant's queues, so workers and `tenant delete` can find them.
    pub fn queues(&self) -> String {
        format!("{}:queues", self.tag)
    }

    /// Holders of the tenant's running-jobs slots (see `lua/slots.lua`).
    pub fn slots(&self) -> String {
        format!("{}:slots", self.tag)
    }

    /// What every key of this tenant's registry starts with; used to find them for deletion.
    pub fn pattern(&self) -> String {
        format!("{}:*", self.tag)
    }
}

/// The keys of one queue of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueKeys {
    tag: String,
}

impl QueueKeys {
    /// Keys for `queue` of `tenant`; both names must pass [`check_name`].
    pub fn new(tenant: &str, queue: &str) -> Self {
        QueueKeys {
            tag: format!("{PREFIX}:{{{tenant}/{queue}}}"),
        }
    }

    /// What every key of this queue starts with, including the trailing `:`. Scripts build
    /// job keys from it, which is safe on a cluster because they share the queue's hash tag.
    pub fn prefix(&self) -> String {
        format!("{}:", self.tag)
    }

    /// Cancel requests for jobs that `worker` is running: job ids, popped by that worker.
    pub fn cancels(&self, worker: &str) -> String {
        format!("{}:cancel:{worker}", self.tag)
    }

    /// Job ids ready to run.
    pub fn ready(&self) -> String {
        format!("{}:ready", self.tag)
    }

    /// Delayed jobs and retries, by due time.
    pub fn scheduled(&self) -> String {
        format!("{}:scheduled", self.tag)
    }

    /// Running jobs, by lease deadline.
    pub fn running(&self) -> String {
        format!("{}:running", self.tag)
    }

    /// Failed jobs, by the time they failed.
    pub fn failed(&self) -> String {
        format!("{}:failed", self.tag)
    }

    /// Succeeded jobs, by the time they succeeded.
    pub fn succeeded(&self) -> String {
        format!("{}:succeeded", self.tag)
    }

    /// One job's hash.
    pub fn job(&self, id: &str) -> String {
        format!("{}:job:{id}", self.tag)
    }

    /// An idempotency key's job id.
    pub fn idempotency(&self, key: &str) -> String {
        format!("{}:idem:{key}", self.tag)
    }

    /// Workers serving this queue, by last heartbeat.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.tag)
    }

    /// Wake-up tokens for idle workers.
    pub fn wake(&self) -> String {
        format!("{}:wake", self.tag)
    }

    /// Job counts per task and state, kept by the scripts.
    pub fn counts(&self) -> String {
        format!("{}:counts", self.tag)
    }

    /// The queue's settings: `succeeded_retention_ms`, `failed_retention_ms`.
    pub fn config(&self) -> String {
        format!("{}:config", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_keys_share_one_hash_tag() {
        let keys = QueueKeys::new("acme", "images");
        let all = [
            keys.ready(),
            keys.scheduled(),
            keys.running(),
            keys.failed(),
            keys.succeeded(),
            keys.job("j1"),
            keys.idempotency("k"),
            keys.workers(),
            keys.wake(),
            keys.counts(),
            keys.config(),
        ];
        for key in &all {
            assert!(key.starts_with("wr:{acme/images}:"), "{key}");
            assert_eq!(key.matches('{').count(), 1, "{key}");
        }
        assert_eq!(keys.job("j1"), format!("{}job:j1", keys.prefix()));
    }

    #[test]
    fn tenants_do_not_share_keys() {
        assert_ne!(TenantKeys::new("a").tasks(), TenantKeys::new("b").tasks());
        assert_ne!(
            QueueKeys::new("a", "q").ready(),
            QueueKeys::new("b", "q").ready()
        );
        assert_eq!(
            TenantKeys::new("acme").component("ab"),
            "wr:{acme}:component:ab"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("task", "resize-v2.1_fast").is_ok());
        assert!(check_name("task", "").is_err());
        assert!(check_name("tenant", "a}b").unwrap_err().contains("`}`"));
        assert!(check_name("queue", "a/b").is_err());
        assert!(check_name("queue", &"x".repeat(65)).is_err());
    }
}
