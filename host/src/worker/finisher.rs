//! Batches the outcomes of ended attempts: one finish call per queue records every attempt that
//! ended while the previous call was in flight.
//!
//! Nothing waits to fill a batch. Under light load each outcome goes out alone, at once; under
//! heavy load outcomes pile up behind the call in flight and share the next one, so round
//! trips per job fall as throughput rises. A job keeps its slot until its own outcome is
//! written (or refused), so shutdown and the running-job caps see the same thing as before.

use std::collections::HashMap;

use anyhow::anyhow;
use tokio::sync::{mpsc, oneshot};

use crate::queue::{Finished, Queue};

/// One outcome waiting to be written, and where to send the answer.
struct Pending {
    tenant: Queue,
    queue: String,
    finished: Finished,
    reply: oneshot::Sender<anyhow::Result<bool>>,
}

/// The sending side; cheap to share between job tasks.
#[derive(Debug, Clone)]
pub(super) struct Finisher {
    tx: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("job_id", &self.finished.id)
            .finish_non_exhaustive()
    }
}

impl Finisher {
    /// A finisher and the loop that writes its batches, of at most `max_batch` outcomes per
    /// script call. The loop ends when every `Finisher` clone is dropped.
    pub(super) fn new(max_batch: usize) -> (Finisher, impl Future<Output = ()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Finisher { tx }, write_batches(rx, max_batch.max(1)))
    }

    /// Records `finished` on `tenant`'s `queue`, batched with other outcomes. Returns what
    /// [`Queue::finish_many`] returned for it.
    ///
    /// # Errors
    ///
    /// When Redis fails (the batch was not written), or the writing loop has stopped.
    pub(super) async fn finish(
        &self,
        tenant: &Queue,
        queue: &str,
        finished: Finished,
    ) -> anyhow::Result<bool> {
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            tenant: tenant.clone(),
            queue: queue.to_owned(),
            finished,
            reply,
        };
        self.tx
            .send(pending)
            .map_err(|_| anyhow!("the outcome writer has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow!("the outcome writer stopped before answering"))?
    }
}

async fn write_batches(mut rx: mpsc::UnboundedReceiver<Pending>, max_batch: usize) {
    let mut batch = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut batch, max_batch).await > 0 {
        // One call per queue: a script may only touch the keys of one queue's hash tag.
        let mut by_queue: HashMap<(String, String), Vec<Pending>> = HashMap::new();
        for pending in batch.drain(..) {
            by_queue
                .entry((pending.tenant.tenant().to_owned(), pending.queue.clone()))
                .or_default()
                .push(pending);
        }
        let mut calls = tokio::task::JoinSet::new();
        for group in by_queue.into_values() {
            calls.spawn(write_one_queue(group));
        }
        while calls.join_next().await.is_some() {}
    }
}

async fn write_one_queue(group: Vec<Pending>) {
    let Some(first) = group.first() else {
        return;
    };
    let (tenant, queue) = (first.tenant.clone(), first.queue.clone());
    let (finished, replies): (Vec<Finished>, Vec<_>) =
        group.into_iter().map(|p| (p.finished, p.reply)).unzip();
    tracing::trace!(tenant = %tenant.tenant(), queue = %queue, jobs = finished.len(),
        "writing outcomes");
    match tenant.finish_many(&queue, &finished).await {
        Ok(written) => {
            for (reply, written) in replies.into_iter().zip(written) {
                // A job task that stopped waiting has nothing left to do with the answer.
                let _ = reply.send(Ok(written));
            }
        }
        Err(err) => {
            let message = format!("{err:#}");
            for reply in replies {
                let _ = reply.send(Err(anyhow!(message.clone())));
            }
        }
    }
}
