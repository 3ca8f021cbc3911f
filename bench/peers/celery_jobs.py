"""The benchmark's Celery app and tasks.

Started with `celery -A celery_jobs worker --pool solo` from bench/peers. The broker is the
queue's private Redis (BENCH_REDIS_URL); no result backend is configured, Celery's default.
BENCH_CRASH=1 switches on the settings W5 needs to survive a kill -9 (see bench/README.md).
"""

import os
import threading
import time

from celery import Celery, signals

import ledger

QUEUE = "bench"
# W2 and W3: the delay before retry n (1-based) is RETRY_COUNTDOWNS[n - 1] seconds.
RETRY_COUNTDOWNS = [1, 2]
RETRY_MAX = 2

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_default_queue=QUEUE,
    # Without a result backend there is nothing to store; say so instead of relying on it.
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
if os.environ.get("BENCH_CRASH") == "1":
    app.conf.update(
        # Acknowledge after the task ran, so a killed worker's task is delivered again...
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # ...hold one unacknowledged message at a time, as the docs advise for long tasks...
        worker_prefetch_multiplier=1,
        # ...and give it back after 5 s, checking for expired ones every second.
        broker_transport_options={
            "visibility_timeout": 5,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )


class DoneCounter:
    """Counts finished tasks in this process and publishes the count to the ledger every 10 ms
    from a thread, so the W1 no-op task pays no Redis round trip of its own for being counted
    (Celery keeps no finished-task record without a result backend)."""

    def __init__(self):
        self.count = 0
        self.thread = None
        self.field = f"{os.uname().nodename}-{os.getpid()}"

    def add(self):
        self.count += 1
        if self.thread is None:
            self.thread = threading.Thread(target=self.publish_forever, daemon=True)
            self.thread.start()

    def publish_forever(self):
        published = -1
        while True:
            count = self.count
            if count != published:
                ledger.client().hset("bench:done", self.field, count)
                published = count
            time.sleep(0.01)


done = DoneCounter()


@signals.task_success.connect
def count_success(**_):
    done.add()


@signals.task_failure.connect
def count_failure(**_):
    # Sent only when a task fails for good, not when it asks to be retried.
    done.add()


def retry_or_raise(task, exc):
    """Retries a transient failure after the next countdown; re-raises when none are left."""
    attempt = task.request.retries + 1
    if attempt > RETRY_MAX:
        raise exc
    raise task.retry(exc=exc, countdown=RETRY_COUNTDOWNS[attempt - 1], max_retries=RETRY_MAX)


@app.task(name="noop")
def noop(payload=None):
    """W1: does nothing."""


@app.task(bind=True, name="probe")
def probe(self, payload=None):
    """W4: records when it starts."""
    ledger.run_recorded(self.request.id, 1, lambda: None)


@app.task(bind=True, name="flaky")
def flaky(self, payload=None):
    attempt = self.request.retries + 1
    try:
        ledger.run_recorded(self.request.id, attempt, lambda: ledger.flaky_body(attempt))
    except ledger.TransientError as exc:
        retry_or_raise(self, exc)


@app.task(bind=True, name="validate")
def validate(self, payload=None):
    # Celery retries only what the task asks to retry: a PermanentError propagates and the
    # task fails at once, while a transient error (none here) would be retried.
    attempt = self.request.retries + 1
    try:
        ledger.run_recorded(self.request.id, attempt, lambda: ledger.validate_body(payload))
    except ledger.TransientError as exc:
        retry_or_raise(self, exc)


@app.task(bind=True, name="slow")
def slow(self, payload=None):
    attempt = self.request.retries + 1
    ledger.run_recorded(self.request.id, attempt, lambda: ledger.slow_body(payload))
