//! A tenant's running-jobs cap, held across every worker (see `lua/slots.lua`).
//!
//! A worker takes slots before it fetches a capped tenant's jobs, gives back those it did not
//! use, renews the rest with its leases, and gives each back when its job ends. Slots live in
//! the tenant's own hash tag, apart from its queues, so a fetch is one script per tag.

use anyhow::Context as _;
use std::time::Duration;

use super::Queue;

impl Queue {
    /// Takes as many of `holders` (names unique to this worker) as fit under `cap`, for
    /// `lease`, and returns those taken.
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn take_slots(
        &self,
        holders: &[String],
        cap: u32,
        lease: Duration,
    ) -> anyhow::Result<Vec<String>> {
        self.slots_call("take", holders, cap, lease).await
    }

    /// Extends `holders` by `lease` and returns those that had expired (the worker was cut
    /// off for longer than a lease; their jobs are being lost too).
    ///
    /// # Errors
    ///
    /// When Redis fails.
    pub async fn renew_slots(
        &self,
        holders: &[String],
        lease: Duration,
    ) -> anyhow::Result<Vec<String>> {
        self.slots_call("renew", holders, 0, lease).await
    }

    /// Gives `holders` back.
    ///
    /// # Errors
    ///
    /// When Redis fails; the slots then expire with their lease.
    pub async fn give_slots(&self, holders: &[String]) -> anyhow::Result<()> {
        if holders.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .slots_invocation("give", holders, 0, Duration::ZERO)
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to give back slots of tenant `{}`", self.tenant))?;
        Ok(())
    }

    async fn slots_call(
        &self,
        op: &str,
        holders: &[String],
        cap: u32,
        lease: Duration,
    ) -> anyhow::Result<Vec<String>> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        self.slots_invocation(op, holders, cap, lease)
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("failed to {op} slots of tenant `{}`", self.tenant))
    }

    fn slots_invocation(
        &self,
        op: &str,
        holders: &[String],
        cap: u32,
        lease: Duration,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.scripts.slots.prepare_invoke();
        invocation
            .key(self.tenant_keys.slots())
            .arg(op)
            .arg(lease.as_millis() as u64)
            .arg(cap);
        for holder in holders {
            invocation.arg(holder);
        }
        invocation
    }
}
