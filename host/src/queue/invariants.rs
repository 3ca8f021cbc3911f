//! A read-only consistency check of one queue, for tests and for operators after an incident:
//! every job is in exactly one state structure, that structure matches the state in its hash,
//! no job hash is orphaned, and the per-task counts agree with the structures.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context as _;
use redis::AsyncCommands as _;

use super::{JobState, Queue};

impl Queue {
    /// Scans `queue` and returns every inconsistency found, in words; empty when consistent.
    ///
    /// Meant for quiet moments (tests, or a queue with no worker running): a job that moves
    /// while the scan runs can show up as a false alarm. It reads every job of the queue, so
    /// it is slow on a large queue.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn check_invariants(&self, queue: &str) -> anyhow::Result<Vec<String>> {
        let keys = self.queue_keys(queue)?;
        let mut conn = self.conn.clone();
        let mut problems = Vec::new();

        // Where each id is listed.
        let mut listed: HashMap<String, Vec<JobState>> = HashMap::new();
        let ready: Vec<String> = conn.lrange(keys.ready(), 0, -1).await?;
        for id in ready {
            listed.entry(id).or_default().push(JobState::Queued);
        }
        for (key, state) in [
            (keys.scheduled(), JobState::Scheduled),
            (keys.running(), JobState::Running),
            (keys.succeeded(), JobState::Succeeded),
            (keys.failed(), JobState::Failed),
        ] {
            let ids: Vec<String> = conn.zrange(key, 0, -1).await?;
            for id in ids {
                // Running jobs are listed by lease, `<id>|<token>`.
                let id = super::lease_job_id(&id).to_owned();
                listed.entry(id).or_default().push(state);
            }
        }

        // Every job hash, found by scanning the queue's key space.
        let pattern = format!("{}job:*", keys.prefix());
        let mut hashes = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            // On a cluster the queue's keys live on one node; scan that one.
            let (next, batch): (u64, Vec<String>) = conn
                .query_on_node_of(&keys.ready(), scan)
                .await
                .context("failed to scan job keys")?;
            hashes.extend(
                batch
                    .into_iter()
                    .filter_map(|key| key.rsplit_once(":job:").map(|(_, id)| id.to_owned())),
            );
            cursor = next;
            if cursor == 0 {
                break;
            }
        }

        let mut counted: BTreeMap<(String, JobState), i64> = BTreeMap::new();
        for id in &hashes {
            let (state, task): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(keys.job(id))
                .arg("state")
                .arg("task")
                .query_async(&mut conn)
                .await?;
            let state = state.as_deref().map(JobState::parse);
            let places = listed.remove(id).unwrap_or_default();
            match (state, places.as_slice()) {
                (Some(Ok(state)), [place]) if *place == state => {
                    *counted
                        .entry((task.unwrap_or_default(), state))
                        .or_default() += 1;
                }
                (Some(Ok(state)), []) => problems.push(format!(
                    "job {id} is {} but in no state structure (orphaned)",
                    state.as_str()
                )),
                (Some(Ok(state)), places) => problems.push(format!(
                    "job {id} is {} but listed in {places:?}",
                    state.as_str()
                )),
                (_, _) => problems.push(format!("job {id} has no valid state")),
            }
        }
        for (id, places) in listed {
            problems.push(format!("job {id} is listed in {places:?} but has no hash"));
        }

        let stored: Vec<(String, i64)> = conn.hgetall(keys.counts()).await?;
        let mut stored: BTreeMap<(String, JobState), i64> = stored
            .into_iter()
            .filter_map(|(field, count)| {
                let (task, state) = field.rsplit_once('|')?;
                Some(((task.to_owned(), JobState::parse(state).ok()?), count))
            })
            .filter(|(_, count)| *count != 0)
            .collect();
        for (key, count) in counted {
            let kept = stored.remove(&key).unwrap_or(0);
            if kept != count {
                problems.push(format!(
                    "task {} has {count} {} jobs but the counts say {kept}",
                    key.0,
                    key.1.as_str()
                ));
            }
        }
        for ((task, state), kept) in stored {
            problems.push(format!(
                "the counts say task {task} has {kept} {} jobs but it has none",
                state.as_str()
            ));
        }
        Ok(problems)
    }
}
