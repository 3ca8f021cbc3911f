"""The benchmark's tasks for RQ, and its exception handler for permanent errors.

Workers import this module by name (`rq worker --path bench/peers`), so the functions here are
what the enqueued jobs point at. Every task takes one argument, the job's payload.
"""

from rq import Retry, get_current_job

import ledger

# Retries after the first attempt: the same three attempts as every system in W2, W3 and W5.
RETRY_MAX = 2
# W2 and W3: 1 s before the second attempt, 2 s before the third. RQ picks the interval of a
# retry as intervals[len(intervals) - retries_left] (clamped at 0), so a list exactly
# RETRY_MAX long is read in order; a shorter list would repeat its *first* entry first.
RETRY_INTERVALS = [1, 2]


def retry_for(kind):
    """The Retry each kind of job is enqueued with (None: no retries)."""
    if kind in ("flaky", "validate"):
        return Retry(max=RETRY_MAX, interval=RETRY_INTERVALS)
    if kind == "slow":
        # W5: an abandoned job (its worker was killed) is retried at once, without waiting for
        # the scheduler; see bench/README.md.
        return Retry(max=RETRY_MAX)
    return None


def timeout_for(kind):
    """The job timeout in seconds (None: RQ's default of 180 s). W5's 200 ms jobs get 5 s: RQ
    takes a job back from a dead worker only once its entry in the started-job registry
    expires, which for a SimpleWorker is the job timeout + 60 s after the job started."""
    return 5 if kind == "slow" else None


def current_attempt():
    """1 for the first execution; RQ lowers `retries_left` by one before each retry."""
    job = get_current_job()
    if job.retries_left is None:
        return 1
    return RETRY_MAX + 1 - job.retries_left


def noop(payload=None):
    """W1: does nothing. Completion is counted from RQ's own finished-job registry."""


def probe(payload=None):
    """W4: records when it starts."""
    job = get_current_job()
    ledger.run_recorded(job.id, 1, lambda: None)


def flaky(payload=None):
    attempt = current_attempt()
    ledger.run_recorded(get_current_job().id, attempt, lambda: ledger.flaky_body(attempt))


def validate(payload=None):
    attempt = current_attempt()
    ledger.run_recorded(get_current_job().id, attempt, lambda: ledger.validate_body(payload))


def slow(payload=None):
    attempt = current_attempt()
    ledger.run_recorded(get_current_job().id, attempt, lambda: ledger.slow_body(payload))


def stop_retrying_permanent(job, exc_type, exc_value, traceback):
    """RQ has no error type that means "do not retry". Its documented hook for custom failure
    handling is an exception handler, which the worker calls before it decides whether to
    retry; setting `retries_left` to 0 there makes the job fail for good."""
    if exc_type is not None and issubclass(exc_type, ledger.PermanentError):
        job.retries_left = 0
    # Fall through to RQ's default handling (the failed-job registry).
    return True
