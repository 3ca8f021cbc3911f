//! Which tenants and queues a worker serves, and the order it fetches from them in.
//!
//! Fairness is round-robin at two levels: each fetch round starts one tenant further along,
//! splits the free slots evenly between the tenants that may have work, and within a tenant
//! starts one queue further along. A tenant with a backlog of a million jobs therefore gets
//! the same share of a freed slot as a tenant with one job, and a job of a quiet tenant waits
//! for at most one round of slot releases once it is ready (docs/tenants.md states the bound).
//!
//! To avoid a script call per empty queue per round, a queue found empty is marked idle until
//! its next scheduled job is due (at most a second) or a wake-up arrives for it. An idle mark is
//! trusted only while the worker's listener is in a wait that includes the queue's wake-up key:
//! a busy worker leaves wake-ups to idle workers (its listener waits for cancels only), and
//! meanwhile it asks every queue on every round rather than miss an enqueue.

use std::time::{Duration, Instant};

use crate::queue::Queue;

/// What the planner needs of a tenant's handle: its name. Implemented by [`Queue`]; the unit
/// tests use plain names, so planning is tested without Redis.
pub(super) trait Tenant: Clone + std::fmt::Debug {
    fn name(&self) -> &str;
}

impl Tenant for Queue {
    fn name(&self) -> &str {
        self.tenant()
    }
}

/// The tenants and queues one worker serves.
#[derive(Debug)]
pub(super) struct Served<H = Queue> {
    tenants: Vec<TenantEntry<H>>,
    /// Where the next round starts.
    cursor: usize,
}

impl<H> Default for Served<H> {
    fn default() -> Self {
        Served {
            tenants: Vec::new(),
            cursor: 0,
        }
    }
}

#[derive(Debug)]
struct TenantEntry<H> {
    handle: H,
    queues: Vec<QueueEntry>,
    cursor: usize,
    /// Set when the tenant's running-jobs cap was full, until when not to ask again.
    capped_until: Option<Instant>,
}

#[derive(Debug)]
struct QueueEntry {
    name: String,
    idle: Option<Idle>,
    /// When the last wake-up for this queue was heard.
    woken_at: Option<Instant>,
    /// Whether the listener's current wait includes this queue's wake-up key, so that an
    /// enqueue would be heard and an idle mark can be trusted.
    hearing: bool,
}

/// A queue found empty, not worth asking again before `until`.
#[derive(Debug, Clone, Copy)]
struct Idle {
    until: Instant,
}

/// One step of a fetch round: up to `share` jobs of one tenant, asked of its queues in order.
#[derive(Debug, Clone)]
pub(super) struct Step<H = Queue> {
    /// The tenant's handle, with its quotas.
    pub(super) tenant: H,
    /// Its queues that may have work, in this round's order.
    pub(super) queues: Vec<String>,
    /// How many jobs to take from this tenant at most.
    pub(super) share: usize,
}

impl<H: Tenant> Served<H> {
    /// Replaces the served set with `tenants` (handle and queue names), keeping the idle marks
    /// and cursors of what stays. Returns the (tenant, queue) pairs that are new.
    pub(super) fn update(&mut self, tenants: Vec<(H, Vec<String>)>) -> Vec<(String, String)> {
        let mut old: Vec<TenantEntry<H>> = std::mem::take(&mut self.tenants);
        let mut added = Vec::new();
        for (handle, names) in tenants {
            let previous = old
                .iter()
                .position(|t| t.handle.name() == handle.name())
                .map(|i| old.swap_remove(i));
            let (mut old_queues, cursor, capped_until) = match previous {
                Some(entry) => (entry.queues, entry.cursor, entry.capped_until),
                None => (Vec::new(), 0, None),
            };
            let queues = names
                .into_iter()
                .map(
                    |name| match old_queues.iter().position(|q| q.name == name) {
                        Some(i) => old_queues.swap_remove(i),
                        None => {
                            added.push((handle.name().to_owned(), name.clone()));
                            QueueEntry {
                                name,
                                idle: None,
                                woken_at: None,
                                hearing: false,
                            }
                        }
                    },
                )
                .collect();
            self.tenants.push(TenantEntry {
                handle,
                queues,
                cursor,
                capped_until,
            });
        }
        self.tenants
            .sort_by(|a, b| a.handle.name().cmp(b.handle.name()));
        added
    }

    /// The handle of `tenant`, if served.
    pub(super) fn handle(&self, tenant: &str) -> Option<&H> {
        self.tenants
            .iter()
            .find(|t| t.handle.name() == tenant)
            .map(|t| &t.handle)
    }

    /// Every served (tenant handle, queue) pair.
    pub(super) fn pairs(&self) -> Vec<(H, String)> {
        self.tenants
            .iter()
            .flat_map(|t| t.queues.iter().map(|q| (t.handle.clone(), q.name.clone())))
            .collect()
    }

    /// Whether `queue` of `tenant` is served.
    pub(super) fn serves(&self, tenant: &str, queue: &str) -> bool {
        self.tenants
            .iter()
            .any(|t| t.handle.name() == tenant && t.queues.iter().any(|q| q.name == queue))
    }

    /// Plans a fetch round for `free` slots: the tenants that may have work, starting one
    /// further along than last time, each with an even share of the slots (rounded up).
    pub(super) fn plan(&mut self, free: usize, now: Instant) -> Vec<Step<H>> {
        let count = self.tenants.len();
        if count == 0 || free == 0 {
            return Vec::new();
        }
        let start = self.cursor % count;
        self.cursor = self.cursor.wrapping_add(1);

        let mut steps = Vec::new();
        for offset in 0..count {
            let tenant = &mut self.tenants[(start + offset) % count];
            if tenant.capped_until.is_some_and(|until| until > now) {
                continue;
            }
            let active: Vec<&QueueEntry> = tenant
                .queues
                .iter()
                .filter(|q| q.may_have_work(now))
                .collect();
            if active.is_empty() {
                continue;
            }
            let first = tenant.cursor % active.len();
            tenant.cursor = tenant.cursor.wrapping_add(1);
            let queues = (0..active.len())
                .map(|i| active[(first + i) % active.len()].name.clone())
                .collect();
            steps.push(Step {
                tenant: tenant.handle.clone(),
                queues,
                share: 0,
            });
        }
        let share = free.div_ceil(steps.len().max(1));
        for step in &mut steps {
            step.share = share;
        }
        steps
    }

    /// Records that `queue` of `tenant` had fewer jobs than asked for by a fetch sent at
    /// `asked_at`; it is not asked again for `wait` unless woken.
    ///
    /// A wake-up heard after `asked_at` wins: the enqueue behind it may have landed just after
    /// the fetch looked, so the empty answer is already out of date.
    pub(super) fn mark_idle(
        &mut self,
        tenant: &str,
        queue: &str,
        asked_at: Instant,
        wait: Duration,
    ) {
        if let Some(entry) = self.queue_mut(tenant, queue) {
            if entry.woken_at.is_some_and(|woken| woken >= asked_at) {
                return;
            }
            entry.idle = Some(Idle {
                until: asked_at + wait,
            });
        }
    }

    /// Records that a job may be ready on `queue` of `tenant`.
    pub(super) fn wake(&mut self, tenant: &str, queue: &str, now: Instant) {
        if let Some(entry) = self.queue_mut(tenant, queue) {
            entry.idle = None;
            entry.woken_at = Some(now);
        }
    }

    /// Records that `tenant`'s running-jobs cap was full; it is not asked again until `until`
    /// unless one of its jobs on this worker ends first.
    pub(super) fn mark_capped(&mut self, tenant: &str, until: Instant) {
        if let Some(entry) = self.tenants.iter_mut().find(|t| t.handle.name() == tenant) {
            entry.capped_until = Some(until);
        }
    }

    /// Records that one of `tenant`'s jobs ended here, so its cap may have room again.
    pub(super) fn uncap(&mut self, tenant: &str) {
        if let Some(entry) = self.tenants.iter_mut().find(|t| t.handle.name() == tenant) {
            entry.capped_until = None;
        }
    }

    /// Records whether the listener's next wait includes the wake-up keys of `pairs`
    /// (tenant, queue). Called before each wait is sent, so a wake-up pushed while the flag is
    /// set is either taken by that wait or still in its list for the next one.
    pub(super) fn set_hearing(&mut self, pairs: &[(String, String)], hearing: bool) {
        for (tenant, queue) in pairs {
            if let Some(entry) = self.queue_mut(tenant, queue) {
                entry.hearing = hearing;
            }
        }
    }

    /// How long until an idle or capped entry is worth asking again, if any is waiting.
    pub(super) fn next_check(&self, now: Instant) -> Option<Duration> {
        let idle = self.tenants.iter().flat_map(|t| {
            t.queues
                .iter()
                .filter_map(|q| q.idle.map(|idle| idle.until))
        });
        let capped = self.tenants.iter().filter_map(|t| t.capped_until);
        idle.chain(capped)
            .map(|until| until.saturating_duration_since(now))
            .min()
    }

    fn queue_mut(&mut self, tenant: &str, queue: &str) -> Option<&mut QueueEntry> {
        self.tenants
            .iter_mut()
            .find(|t| t.handle.name() == tenant)?
            .queues
            .iter_mut()
            .find(|q| q.name == queue)
    }
}

impl QueueEntry {
    fn may_have_work(&self, now: Instant) -> bool {
        match self.idle {
            None => true,
            Some(idle) => idle.until <= now || !self.hearing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Tenant for String {
        fn name(&self) -> &str {
            self
        }
    }

    fn handle(tenant: &str) -> String {
        tenant.to_owned()
    }

    fn served(tenants: &[(&str, &[&str])]) -> Served<String> {
        let mut served = Served::default();
        served.update(
            tenants
                .iter()
                .map(|(name, queues)| {
                    (
                        handle(name),
                        queues.iter().map(|q| (*q).to_owned()).collect(),
                    )
                })
                .collect(),
        );
        // As while the listener waits on every wake-up key.
        let pairs = served.pairs();
        served.set_hearing(&pairs, true);
        served
    }

    fn tenants_of(steps: &[Step<String>]) -> Vec<&str> {
        steps.iter().map(|s| s.tenant.as_str()).collect()
    }

    #[test]
    fn rounds_rotate_between_tenants_and_split_the_slots() {
        let mut served = served(&[("a", &["q"]), ("b", &["q"]), ("c", &["q"])]);
        let now = Instant::now();
        let first = served.plan(4, now);
        assert_eq!(tenants_of(&first), ["a", "b", "c"]);
        assert!(first.iter().all(|s| s.share == 2), "{first:?}");
        assert_eq!(tenants_of(&served.plan(1, now)), ["b", "c", "a"]);
        assert_eq!(tenants_of(&served.plan(1, now)), ["c", "a", "b"]);
    }

    #[test]
    fn a_single_free_slot_alternates_between_two_busy_tenants() {
        // The fairness bound: with one slot freeing at a time, a quiet tenant's job is first
        // in line at most one round after it became ready.
        let mut served = served(&[("flood", &["q"]), ("quiet", &["q"])]);
        let now = Instant::now();
        let firsts: Vec<String> = (0..6)
            .map(|_| served.plan(1, now)[0].tenant.clone())
            .collect();
        assert_eq!(
            firsts,
            ["flood", "quiet", "flood", "quiet", "flood", "quiet"]
        );
    }

    #[test]
    fn idle_queues_are_skipped_until_due_or_woken() {
        let mut served = served(&[("a", &["q1", "q2"]), ("b", &["q"])]);
        let now = Instant::now();
        served.mark_idle("b", "q", now, Duration::from_secs(1));
        served.mark_idle("a", "q1", now, Duration::from_secs(1));
        let steps = served.plan(8, now);
        assert_eq!(tenants_of(&steps), ["a"]);
        assert_eq!(steps[0].queues, ["q2"]);
        assert_eq!(steps[0].share, 8);
        assert_eq!(served.next_check(now), Some(Duration::from_secs(1)));

        served.wake("b", "q", now);
        assert_eq!(tenants_of(&served.plan(8, now)), ["b", "a"]);
        let later = now + Duration::from_secs(2);
        assert_eq!(served.plan(8, later)[0].queues.len(), 2);
    }

    #[test]
    fn a_wake_up_heard_while_a_fetch_was_out_beats_its_empty_answer() {
        let mut served = served(&[("a", &["q"])]);
        let asked = Instant::now();
        // The enqueue lands after the fetch looked, and its wake-up is heard before the
        // empty answer comes back.
        served.wake("a", "q", asked + Duration::from_millis(1));
        served.mark_idle("a", "q", asked, Duration::from_secs(1));
        let later = asked + Duration::from_millis(2);
        assert_eq!(tenants_of(&served.plan(1, later)), ["a"]);

        // A fetch sent after the wake-up may mark the queue idle again.
        served.mark_idle("a", "q", later, Duration::from_secs(1));
        assert!(served.plan(1, later).is_empty());
    }

    #[test]
    fn idle_marks_are_trusted_only_while_wake_ups_are_heard() {
        let mut served = served(&[("a", &["q"])]);
        let pairs = [("a".to_owned(), "q".to_owned())];
        let now = Instant::now();
        served.mark_idle("a", "q", now, Duration::from_secs(1));
        served.set_hearing(&pairs, false);
        // No wait is listening: an enqueue would go unheard, so the queue is asked.
        assert_eq!(tenants_of(&served.plan(1, now)), ["a"]);

        served.set_hearing(&pairs, true);
        assert!(served.plan(1, now).is_empty());

        // Every slot busy: the listener waits for cancels only.
        served.set_hearing(&pairs, false);
        assert_eq!(tenants_of(&served.plan(1, now)), ["a"]);
    }

    #[test]
    fn capped_tenants_wait_until_a_slot_may_be_free() {
        let mut served = served(&[("a", &["q"]), ("b", &["q"])]);
        let now = Instant::now();
        served.mark_capped("a", now + Duration::from_millis(50));
        assert_eq!(tenants_of(&served.plan(2, now)), ["b"]);
        served.uncap("a");
        assert_eq!(served.plan(2, now).len(), 2);
    }

    #[test]
    fn updates_keep_marks_and_report_new_queues() {
        let mut served = served(&[("a", &["q"])]);
        let now = Instant::now();
        served.mark_idle("a", "q", now, Duration::from_secs(1));
        let added = served.update(vec![
            (handle("a"), vec!["q".to_owned(), "r".to_owned()]),
            (handle("b"), vec!["q".to_owned()]),
        ]);
        assert_eq!(
            added,
            [
                ("a".to_owned(), "r".to_owned()),
                ("b".to_owned(), "q".to_owned())
            ]
        );
        assert!(served.serves("a", "q") && served.serves("b", "q"));
        let steps = served.plan(4, now);
        let a = steps.iter().find(|s| s.tenant == "a").expect("a has work");
        assert_eq!(a.queues, ["r"]);
        served.update(vec![(handle("b"), vec!["q".to_owned()])]);
        assert!(!served.serves("a", "q"));
        assert!(served.handle("a").is_none());
    }
}
