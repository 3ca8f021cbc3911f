//! Reads the executions of the `guest-ledger` task back out of worker logs.
//!
//! The guest logs `ledger start <job_id> <attempt>` before it sleeps and `ledger end <job_id>
//! <attempt>` after; a worker run with `RUST_LOG=warn,wasm_runner::guest=debug` prints both as
//! tracing lines, each beginning with an RFC 3339 timestamp:
//!
//! ```text
//! 2026-12-03T17:05:00.117068Z DEBUG wasm_runner::guest: level="info" ledger start 01a2 1 fields=[]
//! 2026-12-03T17:05:00.218744Z DEBUG wasm_runner::guest: level="info" ledger end 01a2 1 fields=[]
//! ```
//!
//! When the worker stops a guest because the job's lease is gone, it logs
//! `lease lost; attempt abandoned job_id=<job_id>` (a warning) once the guest has stopped: that
//! line closes the execution as *stopped*. An execution with neither line was still running
//! when the log ended, which for a worker killed with SIGKILL means it died with the process.
//!
//! This is the "external ledger" of the reliability plan: it sees every execution, including
//! those the queue never recorded, so tests can count duplicates and check that two executions
//! of one job never overlap in time.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use anyhow::{Context as _, bail};

/// The guest's record of an execution starting.
const START: &str = "ledger start";
/// The guest's record of an execution ending normally.
const END: &str = "ledger end";
/// The worker's record of a guest it stopped because the lease was lost.
const ABANDONED: &str = "lease lost; attempt abandoned";

/// One execution of a job's guest, as one worker's log tells it. Times are the worker's
/// clock, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// The job's id.
    pub job_id: String,
    /// The attempt number the guest was given. A lost attempt is not charged, so a job run
    /// again after its worker died gets the same number again.
    pub attempt: u32,
    /// The worker whose log this came from.
    pub worker: String,
    /// When the guest logged its start.
    pub start_ms: u64,
    /// When the guest logged its end, if it got that far.
    pub end_ms: Option<u64>,
    /// When the worker reported the guest stopped because its lease was lost, if it did.
    pub stopped_ms: Option<u64>,
}

impl Execution {
    /// When the execution is known to have been over: its end, else when it was stopped.
    /// `None` means the log ended while it ran.
    pub fn over_ms(&self) -> Option<u64> {
        self.end_ms.or(self.stopped_ms)
    }
}

/// The executions in one worker's log, in the order they started.
///
/// # Errors
///
/// When a ledger line is malformed (no timestamp, no job id, a bad attempt number), or an end
/// has no start before it in the same log: the log is not what the tests assume.
pub fn parse(worker: &str, log: &str) -> anyhow::Result<Vec<Execution>> {
    let mut executions: Vec<Execution> = Vec::new();
    for (number, line) in log.lines().enumerate() {
        let parsed = parse_line(worker, line, &mut executions);
        parsed.with_context(|| format!("worker {worker}, log line {}: {line}", number + 1))?;
    }
    Ok(executions)
}

/// Applies one log line to the executions seen so far.
fn parse_line(worker: &str, line: &str, executions: &mut Vec<Execution>) -> anyhow::Result<()> {
    if let Some(rest) = after(line, START) {
        let (job_id, attempt) = job_and_attempt(rest)?;
        executions.push(Execution {
            job_id,
            attempt,
            worker: worker.to_owned(),
            start_ms: timestamp_ms(line)?,
            end_ms: None,
            stopped_ms: None,
        });
    } else if let Some(rest) = after(line, END) {
        let (job_id, attempt) = job_and_attempt(rest)?;
        let at = timestamp_ms(line)?;
        // One worker runs a job at most once at a time, so an end belongs to the job's latest
        // start; an earlier open start of the same job was cut off and stays open.
        match open_execution(executions, &job_id) {
            Some(execution) if execution.attempt == attempt => execution.end_ms = Some(at),
            _ => bail!("`ledger end` of job {job_id} attempt {attempt} with no open start"),
        }
    } else if line.contains(ABANDONED) {
        let job_id = field(line, "job_id").context("an abandoned attempt names no job_id")?;
        let at = timestamp_ms(line)?;
        // A guest abandoned before it logged its start left no execution to close.
        if let Some(execution) = open_execution(executions, job_id) {
            execution.stopped_ms = Some(at);
        }
    }
    Ok(())
}

/// The latest execution of `job_id` that has not ended, if it is the job's latest execution.
fn open_execution<'a>(executions: &'a mut [Execution], job_id: &str) -> Option<&'a mut Execution> {
    executions
        .iter_mut()
        .rev()
        .find(|execution| execution.job_id == job_id)
        .filter(|execution| execution.over_ms().is_none())
}

/// The executions in the logs of several workers, given as `(worker, log)`, in the order they
/// started (by timestamp).
///
/// # Errors
///
/// As [`parse`], for any of the logs.
pub fn parse_all<'a>(
    logs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> anyhow::Result<Vec<Execution>> {
    let mut all = Vec::new();
    for (worker, log) in logs {
        all.extend(parse(worker, log)?);
    }
    all.sort_by(|a, b| (a.start_ms, &a.worker).cmp(&(b.start_ms, &b.worker)));
    Ok(all)
}

/// The executions grouped by job, each group in the order they started.
pub fn by_job(executions: &[Execution]) -> BTreeMap<&str, Vec<&Execution>> {
    let mut jobs: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
    for execution in executions {
        jobs.entry(&execution.job_id).or_default().push(execution);
    }
    for group in jobs.values_mut() {
        group.sort_by_key(|execution| execution.start_ms);
    }
    jobs
}

/// Every pair of executions of one job that ran at the same time: the later one started
/// before the earlier one was over. An execution that has no end and was not stopped is taken
/// to have run until `open_until(execution)` (for example, when its worker was killed).
pub fn overlaps(
    executions: &[Execution],
    open_until: impl Fn(&Execution) -> u64,
) -> Vec<(&Execution, &Execution)> {
    let mut found = Vec::new();
    for group in by_job(executions).into_values() {
        for (index, earlier) in group.iter().enumerate() {
            let over = earlier.over_ms().unwrap_or_else(|| open_until(earlier));
            for later in &group[index + 1..] {
                if later.start_ms < over {
                    found.push((*earlier, *later));
                }
            }
        }
    }
    found
}

/// The timestamps (ms since the epoch) of the log lines that contain `needle`, in log order.
///
/// # Errors
///
/// When such a line does not begin with an RFC 3339 timestamp.
pub fn times_of(log: &str, needle: &str) -> anyhow::Result<Vec<u64>> {
    log.lines()
        .filter(|line| line.contains(needle))
        .map(|line| timestamp_ms(line).with_context(|| format!("log line: {line}")))
        .collect()
}

/// The line's leading timestamp, in milliseconds since the Unix epoch.
///
/// # Errors
///
/// When the line does not begin with an RFC 3339 timestamp.
pub fn timestamp_ms(line: &str) -> anyhow::Result<u64> {
    let first = line.split_whitespace().next().unwrap_or_default();
    let time = humantime::parse_rfc3339_weak(first)
        .with_context(|| format!("`{first}` is not an RFC 3339 timestamp"))?;
    let since = time
        .duration_since(UNIX_EPOCH)
        .context("a timestamp before 1970")?;
    Ok(u64::try_from(since.as_millis())?)
}

/// What follows `marker` in `line`, if it occurs.
fn after<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// Reads `<job_id> <attempt>` from the start of `rest`.
fn job_and_attempt(rest: &str) -> anyhow::Result<(String, u32)> {
    let mut words = rest.split_whitespace();
    let job_id = words.next().context("no job id")?;
    let attempt = words.next().context("no attempt number")?;
    let attempt = attempt
        .parse()
        .with_context(|| format!("attempt `{attempt}` is not a number"))?;
    Ok((job_id.to_owned(), attempt))
}

/// The value of tracing field `name` (`name=value`) in a log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A log as a worker writes it: other records are interleaved with the ledger's.
    const LOG: &str = "\
2026-12-03T17:05:00.000100Z  INFO wasm_runner::worker: serving queue tenant=default queue=default
2026-12-03T17:05:00.117068Z DEBUG wasm_runner::guest: level=\"info\" ledger start job-a 1 fields=[]
2026-12-03T17:05:00.120000Z DEBUG wasm_runner::guest: level=\"info\" ledger start job-b 2 fields=[]
2026-12-03T17:05:00.218744Z DEBUG wasm_runner::guest: level=\"info\" ledger end job-a 1 fields=[]
2026-12-03T17:05:01.500000Z ERROR wasm_runner::worker: Redis unreachable; stopping all guests jobs=2
2026-12-03T17:05:01.502000Z  WARN wasm_runner::worker: lease lost; attempt abandoned job_id=job-b
2026-12-03T17:05:02Z DEBUG wasm_runner::guest: level=\"info\" ledger start job-c 1 fields=[]
";

    /// 2026-12-03T17:05:00Z in ms since the epoch.
    const T0: u64 = 1_796_317_500_000;

    #[test]
    fn timestamps_are_read_to_the_millisecond() {
        assert_eq!(timestamp_ms("2026-12-03T17:05:00Z rest").unwrap(), T0);
        assert_eq!(
            timestamp_ms("2026-12-03T17:05:00.117968Z DEBUG x").unwrap(),
            T0 + 117
        );
        assert!(timestamp_ms("DEBUG no time").is_err());
        assert!(timestamp_ms("").is_err());
    }

    #[test]
    fn executions_are_ended_stopped_or_open() {
        let executions = parse("w1", LOG).unwrap();
        let expected = [
            ("job-a", 1, T0 + 117, Some(T0 + 218), None),
            ("job-b", 2, T0 + 120, None, Some(T0 + 1502)),
            ("job-c", 1, T0 + 2000, None, None),
        ];
        assert_eq!(executions.len(), expected.len(), "{executions:#?}");
        for (execution, (job, attempt, start, end, stopped)) in executions.iter().zip(expected) {
            assert_eq!(execution.job_id, job);
            assert_eq!(execution.attempt, attempt);
            assert_eq!(execution.worker, "w1");
            assert_eq!(execution.start_ms, start);
            assert_eq!(execution.end_ms, end);
            assert_eq!(execution.stopped_ms, stopped);
        }
        assert_eq!(executions[1].over_ms(), Some(T0 + 1502));
        assert_eq!(executions[2].over_ms(), None);
    }

    #[test]
    fn an_end_closes_the_latest_start_of_its_job() {
        // The first run of job-a was cut off unseen; the worker ran it again later.
        let log = "\
2026-12-03T17:05:00Z DEBUG g: ledger start job-a 1 fields=[]
2026-12-03T17:05:03Z DEBUG g: ledger start job-a 1 fields=[]
2026-12-03T17:05:04Z DEBUG g: ledger end job-a 1 fields=[]
";
        let executions = parse("w", log).unwrap();
        assert_eq!(executions.len(), 2);
        assert_eq!(executions[0].end_ms, None);
        assert_eq!(executions[1].end_ms, Some(T0 + 4000));
    }

    #[test]
    fn malformed_ledger_lines_are_errors() {
        let bad = [
            "2026-12-03T17:05:00Z g: ledger end job-z 1",
            "2026-12-03T17:05:00Z g: ledger start job-z one",
            "2026-12-03T17:05:00Z g: ledger start",
            "no-time g: ledger start job-z 1",
            "2026-12-03T17:05:00Z WARN w: lease lost; attempt abandoned",
        ];
        for line in bad {
            assert!(parse("w", line).is_err(), "accepted: {line}");
        }
        // An end whose attempt differs from its job's open start is a different execution.
        let log = "2026-12-03T17:05:00Z g: ledger start job-a 1\n\
                   2026-12-03T17:05:01Z g: ledger end job-a 2\n";
        assert!(parse("w", log).is_err());
    }

    #[test]
    fn abandoning_a_guest_that_never_started_closes_nothing() {
        let log = "2026-12-03T17:05:00Z g: ledger start job-a 1\n\
                   2026-12-03T17:05:01Z g: ledger end job-a 1\n\
                   2026-12-03T17:05:02Z WARN w: lease lost; attempt abandoned job_id=job-a\n";
        let executions = parse("w", log).unwrap();
        assert_eq!(executions.len(), 1);
        assert_eq!(executions[0].end_ms, Some(T0 + 1000));
        assert_eq!(executions[0].stopped_ms, None);
    }

    #[test]
    fn logs_of_several_workers_are_merged_in_start_order() {
        let first = "2026-12-03T17:05:02Z g: ledger start job-a 1\n";
        let second = "2026-12-03T17:05:01Z g: ledger start job-b 1\n";
        let all = parse_all([("one", first), ("two", second)]).unwrap();
        let order: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.worker.as_str(), e.job_id.as_str()))
            .collect();
        assert_eq!(order, [("two", "job-b"), ("one", "job-a")]);
    }

    fn execution(job: &str, worker: &str, start: u64, end: Option<u64>) -> Execution {
        Execution {
            job_id: job.to_owned(),
            attempt: 1,
            worker: worker.to_owned(),
            start_ms: start,
            end_ms: end,
            stopped_ms: None,
        }
    }

    #[test]
    fn overlaps_are_found_per_job() {
        let executions = [
            // job-a: the second run starts after the first ended.
            execution("job-a", "A", 0, Some(100)),
            execution("job-a", "B", 100, Some(200)),
            // job-b: the second run starts while the first still runs.
            execution("job-b", "A", 0, Some(500)),
            execution("job-b", "B", 300, Some(600)),
            // job-c: the first run is open and taken to last until 1000.
            execution("job-c", "A", 0, None),
            execution("job-c", "B", 900, Some(1200)),
            // Different jobs at the same time never overlap.
            execution("job-d", "A", 0, Some(1000)),
        ];
        let found = overlaps(&executions, |_| 1000);
        let pairs: Vec<(&str, u64, u64)> = found
            .iter()
            .map(|(a, b)| (a.job_id.as_str(), a.start_ms, b.start_ms))
            .collect();
        assert_eq!(pairs, [("job-b", 0, 300), ("job-c", 0, 900)]);
        assert!(overlaps(&executions, |_| 900).len() == 1);
    }

    #[test]
    fn times_of_lists_matching_lines() {
        let times = times_of(LOG, "stopping all guests").unwrap();
        assert_eq!(times, [T0 + 1500]);
        assert!(times_of(LOG, "no such text").unwrap().is_empty());
        assert!(times_of("garbage needle", "needle").is_err());
    }

    #[test]
    fn by_job_groups_in_start_order() {
        let executions = [
            execution("job-a", "B", 50, None),
            execution("job-b", "A", 10, None),
            execution("job-a", "A", 20, None),
        ];
        let jobs = by_job(&executions);
        assert_eq!(jobs.len(), 2);
        let starts: Vec<u64> = jobs["job-a"].iter().map(|e| e.start_ms).collect();
        assert_eq!(starts, [20, 50]);
    }
}
