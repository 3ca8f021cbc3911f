//! The per-attempt memory limit.
//!
//! wasmtime's stock `StoreLimits` caps each linear memory on its own and cannot say afterwards
//! whether the cap was hit. This limiter caps the *sum* over all of a task's memories (a composed
//! component can have several) and remembers a refusal, so the executor can tell "stopped at the
//! memory limit" apart from an ordinary panic: a Rust guest whose allocation fails aborts with
//! the same `unreachable` trap as one that panics.

use wasmtime::ResourceLimiter;

/// The most elements one table may hold. Tables hold function references; real tasks use a few
/// thousand, and each element costs the host 8 bytes. The instance pool reserves this many per
/// table (`engine.rs`), so the two limits are one number and a growth past it is refused here,
/// where it is recorded, rather than by the pool, which would not say so.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 20_000;
/// The most core instances, tables and memories one task may create.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

/// Caps the total linear memory of one store and records whether it refused a growth.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    limit_bytes: usize,
    used_bytes: usize,
    peak_bytes: usize,
    hit: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit_bytes: u64) -> Self {
        MemoryLimiter {
            limit_bytes: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            used_bytes: 0,
            peak_bytes: 0,
            hit: false,
        }
    }

    /// Whether a memory or table growth was refused during this attempt.
    pub(crate) fn hit(&self) -> bool {
        self.hit
    }

    /// The most linear memory in use at any point, in bytes.
    pub(crate) fn peak_bytes(&self) -> u64 {
        self.peak_bytes as u64
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self.used_bytes - current.min(self.used_bytes) + desired;
        if total > self.limit_bytes {
            self.hit = true;
            // Refuse instead of trapping: `memory.grow` returns -1 and the guest's allocator
            // decides what to do (Rust aborts). A forced trap would not be a `Trap` value, which
            // makes classification harder, and the `hit` flag already says what happened.
            return Ok(false);
        }
        self.used_bytes = total;
        self.peak_bytes = self.peak_bytes.max(total);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_growth_up_to_the_total() {
        let mut limiter = MemoryLimiter::new(10);
        assert!(limiter.memory_growing(0, 6, None).unwrap());
        assert!(limiter.memory_growing(6, 10, None).unwrap());
        assert!(!limiter.hit());
        assert_eq!(limiter.peak_bytes(), 10);
    }

    #[test]
    fn sums_over_memories_and_remembers_a_refusal() {
        let mut limiter = MemoryLimiter::new(10);
        assert!(limiter.memory_growing(0, 6, None).unwrap());
        // A second memory of 6 would bring the total to 12.
        assert!(!limiter.memory_growing(0, 6, None).unwrap());
        assert!(limiter.hit());
    }

    #[test]
    fn refuses_huge_tables() {
        let mut limiter = MemoryLimiter::new(10);
        assert!(limiter.table_growing(0, 10, None).unwrap());
        assert!(
            !limiter
                .table_growing(10, MAX_TABLE_ELEMENTS + 1, None)
                .unwrap()
        );
        assert!(limiter.hit());
    }
}
