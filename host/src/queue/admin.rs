//! Tenant-wide operations on a [`Queue`]: the tenant's queue names, cancelling a job, counting
//! the jobs still to run, and deleting everything the tenant has.

use anyhow::Context as _;
use redis::AsyncCommands as _;

use super::{Queue, QueueKeys, Refusal, TenantKeys};

/// What [`Queue::cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Canceled {
    /// The job was waiting or running (the state it was in); it is now failed with a
    /// `canceled` outcome, and a running guest is being stopped.
    Done(super::JobState),
    /// The job had already finished in this state; nothing changed.
    AlreadyFinished(super::JobState),
}

/// How many SCAN results to ask for at a time when deleting a tenant.
const SCAN_COUNT: usize = 1000;

impl Queue {
    /// The names of the tenant's queues: every queue it has enqueued to, sorted.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn queues(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self
            .conn
            .clone()
            .smembers(self.tenant_keys.queues())
            .await
            .with_context(|| format!("failed to list the queues of tenant `{}`", self.tenant))?;
        names.retain(|name| super::check_name("queue", name).is_ok());
        names.sort();
        Ok(names)
    }

    /// Records `queue` among the tenant's queues, once per handle and queue.
    pub(super) async fn note_queue(&self, queue: &str) -> anyhow::Result<()> {
        if super::lock(&self.known_queues).contains(queue) {
            return Ok(());
        }
        let _: i64 = self
            .conn
            .clone()
            .sadd(self.tenant_keys.queues(), queue)
            .await
            .with_context(|| format!("failed to record queue `{queue}`"))?;
        super::lock(&self.known_queues).insert(queue.to_owned());
        Ok(())
    }

    /// Jobs waiting (queued or scheduled) across the tenant's queues.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn waiting_jobs(&self) -> anyhow::Result<u64> {
        Ok(self.job_totals().await?.0)
    }

    /// Jobs waiting and running across the tenant's queues.
    async fn job_totals(&self) -> anyhow::Result<(u64, u64)> {
        let mut conn = self.conn.clone();
        let (mut waiting, mut running) = (0, 0);
        for queue in self.queues().await? {
            let keys = QueueKeys::new(&self.tenant, &queue);
            // One queue's keys share a slot, so this pipeline is fine on a cluster too.
            let (ready, scheduled, busy): (u64, u64, u64) = redis::pipe()
                .llen(keys.ready())
                .zcard(keys.scheduled())
                .zcard(keys.running())
                .query_async(&mut conn)
                .await
                .with_context(|| format!("failed to count the jobs of queue `{queue}`"))?;
            waiting += ready + scheduled;
            running += busy;
        }
        Ok((waiting, running))
    }

    /// Refuses `adding` more waiting jobs when that would pass the tenant's `max_queued`.
    ///
    /// The count is read before the jobs are written, so enqueues racing each other can pass
    /// the quota by at most their own sizes; the quota bounds a flood, not an exact number.
    pub(super) async fn check_room(&self, adding: usize) -> anyhow::Result<()> {
        let Some(cap) = self.quotas.max_queued else {
            return Ok(());
        };
        let waiting = self.waiting_jobs().await?;
        if waiting + adding as u64 > cap {
            return Err(Refusal::Quota(format!(
                "tenant `{}` has {waiting} jobs waiting and a quota of {cap}; {adding} more \
                 would pass it. Try again when workers have caught up, or raise the quota with \
                 `wasm-runner tenant update {} --max-queued N`",
                self.tenant, self.tenant
            ))
            .into());
        }
        Ok(())
    }

    /// Cancels job `id` of `queue` if it has not finished: it moves to the failed set with a
    /// `canceled` outcome (so it can be requeued), and a running guest is stopped within
    /// milliseconds by its worker.
    ///
    /// # Errors
    ///
    /// [`Refusal::NotFound`] when there is no such job; otherwise when Redis fails.
    pub async fn cancel(&self, queue: &str, id: &str) -> anyhow::Result<Canceled> {
        let keys = self.queue_keys(queue)?;
        let outcome = serde_json::json!({
            "class": "canceled",
            "message": "the job was canceled before it finished",
        });
        let (what, state): (String, String) = self
            .scripts
            .cancel
            .key(keys.job(id))
            .key(keys.ready())
            .key(keys.scheduled())
            .key(keys.running())
            .key(keys.failed())
            .arg(id)
            .arg(outcome.to_string())
            .arg("canceled")
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to cancel job {id}"))?;
        let parse = |state: &str| {
            super::JobState::parse(state).map_err(|msg| anyhow::anyhow!("job {id}: {msg}"))
        };
        match what.as_str() {
            "canceled" => Ok(Canceled::Done(parse(&state)?)),
            "final" => Ok(Canceled::AlreadyFinished(parse(&state)?)),
            _ => Err(Refusal::NotFound(format!("there is no job {id} in queue `{queue}`")).into()),
        }
    }

    /// Jobs waiting (queued or scheduled) and running across the tenant's queues.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn active_jobs(&self) -> anyhow::Result<(u64, u64)> {
        self.job_totals().await
    }

    /// Deletes every task, job, result and setting of the tenant, running jobs included (their
    /// workers' results are then refused). Returns how many keys went. `tenant delete` checks
    /// [`Queue::active_jobs`] and revokes the tenant first.
    ///
    /// # Errors
    ///
    /// When Redis fails; what was deleted stays deleted, and running it again finishes the job.
    pub async fn purge(&self) -> anyhow::Result<u64> {
        let mut deleted = 0;
        for queue in self.queues().await? {
            let keys = QueueKeys::new(&self.tenant, &queue);
            deleted += self.delete_matching(&keys.ready(), &keys.prefix()).await?;
        }
        let tenant = TenantKeys::new(&self.tenant);
        deleted += self
            .delete_matching(&tenant.tasks(), &tenant.pattern())
            .await?;
        Ok(deleted)
    }

    /// Deletes the keys matching `pattern` (`prefix` plus `*`), found with SCAN on the node
    /// that holds `anchor`'s slot; every key of the pattern shares that slot.
    async fn delete_matching(&self, anchor: &str, pattern: &str) -> anyhow::Result<u64> {
        let pattern = if pattern.ends_with('*') {
            pattern.to_owned()
        } else {
            format!("{pattern}*")
        };
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, found): (u64, Vec<String>) = self
                .conn
                .clone()
                .query_on_node_of(anchor, scan)
                .await
                .with_context(|| format!("failed to scan for `{pattern}`"))?;
            if !found.is_empty() {
                let mut del = redis::cmd("DEL");
                del.arg(&found);
                let n: u64 = self
                    .conn
                    .clone()
                    .query_on_node_of(anchor, del)
                    .await
                    .with_context(|| format!("failed to delete keys of `{pattern}`"))?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}
