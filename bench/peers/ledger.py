"""What the Python peers' tasks write about themselves, and where.

Every execution that the driver must count (W2 to W5) writes two records to a list on the
*ledger* Redis, a second private server: "S <job> <attempt> <µs>" when it starts and
"E <job> <attempt> <µs> <outcome>" when it ends. Keeping these writes off the queue's Redis
means that server's command counts and CPU time contain only the queue's own work.

Times are the wall clock in microseconds since the epoch. All processes run on one machine, so
they share that clock with the driver and with Redis's TIME.
"""

import os
import time

import redis

# The list every record goes to; the driver reads it after each case.
EXEC_KEY = "bench:exec"

_client = None


def client():
    """One connection per process. redis-py notices a fork (RQ's work horse) and reconnects."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["BENCH_LEDGER_URL"])
    return _client


def now_us():
    return time.time_ns() // 1000


def started(job_id, attempt):
    client().rpush(EXEC_KEY, f"S {job_id} {attempt} {now_us()}")


def ended(job_id, attempt, outcome):
    client().rpush(EXEC_KEY, f"E {job_id} {attempt} {now_us()} {outcome}")


class TransientError(Exception):
    """A failure worth retrying (the `flaky` task on attempts 1 and 2)."""


class PermanentError(Exception):
    """A failure that will happen again on every attempt (bad input to `validate`)."""


def flaky_body(attempt):
    """Fails transiently on attempts 1 and 2 and succeeds from 3, like examples/flaky."""
    if attempt < 3:
        raise TransientError(f"attempt {attempt} fails on purpose; attempt 3 will succeed")


def validate_body(order):
    """Accepts an order with an e-mail address containing `@`, like examples/validate does
    (in a much simpler form: only the outcome matters here)."""
    email = order.get("email") if isinstance(order, dict) else None
    if not isinstance(email, str) or "@" not in email:
        raise PermanentError("`email` is not a valid address")


def slow_body(ms):
    time.sleep(int(ms) / 1000)


def run_recorded(job_id, attempt, body):
    """Runs `body()` between a start and an end record; re-raises what it raises."""
    started(job_id, attempt)
    try:
        body()
    except TransientError:
        ended(job_id, attempt, "transient")
        raise
    except PermanentError:
        ended(job_id, attempt, "permanent")
        raise
    ended(job_id, attempt, "ok")
