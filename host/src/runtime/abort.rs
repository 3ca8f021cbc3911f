//! Stopping a running attempt from outside the guest: the worker is shutting down, or it lost
//! the job's lease and must not keep running a job another worker may now hold.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// A handle that stops one attempt when [`abort`](AbortHandle::abort) is called. Clones share
/// the same signal.
///
/// A guest running WebAssembly code is stopped at its next epoch tick (10 ms); a guest blocked
/// in a host call is stopped at once. The attempt then ends as `Outcome::Aborted`.
#[derive(Debug, Clone, Default)]
pub struct AbortHandle {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    aborted: AtomicBool,
    reason: Mutex<Option<String>>,
    notify: Notify,
}

impl AbortHandle {
    /// A handle that has not been aborted.
    pub fn new() -> Self {
        AbortHandle::default()
    }

    /// Stops the attempt. The first reason given is the one reported.
    pub fn abort(&self, reason: impl Into<String>) {
        {
            let mut slot = self.inner.reason.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                *slot = Some(reason.into());
            }
        }
        self.inner.aborted.store(true, Ordering::Release);
        self.inner.notify.notify_waiters();
    }

    /// Whether [`abort`](AbortHandle::abort) was called.
    pub fn is_aborted(&self) -> bool {
        self.inner.aborted.load(Ordering::Acquire)
    }

    /// The reason given to [`abort`](AbortHandle::abort), if it was called.
    pub fn reason(&self) -> Option<String> {
        self.inner
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Resolves once the handle is aborted.
    pub(crate) async fn aborted(&self) {
        loop {
            let mut notified = pin!(self.inner.notify.notified());
            // Register before checking the flag, so an abort between the two is not missed.
            notified.as_mut().enable();
            if self.is_aborted() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_wins_and_waiters_wake() {
        let handle = AbortHandle::new();
        let waiter = tokio::spawn({
            let handle = handle.clone();
            async move { handle.aborted().await }
        });
        handle.abort("shutdown");
        handle.abort("lease lost");
        waiter.await.unwrap();
        assert!(handle.is_aborted());
        assert_eq!(handle.reason().as_deref(), Some("shutdown"));
        // Already aborted: resolves at once.
        handle.aborted().await;
    }
}
