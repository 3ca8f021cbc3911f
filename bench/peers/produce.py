"""Enqueues jobs into RQ or Celery and reports how long it took.

    python produce.py SYSTEM KIND PAYLOADS OUT [--batch N] [--pace-ms MS]

SYSTEM is `rq` or `celery`; KIND names the task; PAYLOADS is a file of JSON payloads, one per
line. With --pace-ms 0 the jobs go in batches through the system's bulk API (RQ enqueue_many,
a Celery group); otherwise one at a time, MS apart on a fixed schedule. OUT receives JSON:
{"seconds": time spent enqueueing, "jobs": [[job id, µs before its enqueue call, µs after], ...]}.
Run from bench/peers with BENCH_REDIS_URL set (and BENCH_LEDGER_URL for Celery's app module).
"""

import argparse
import json
import os
import time


def now_us():
    return time.time_ns() // 1000


def chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sleep_until(deadline):
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


class RqProducer:
    def __init__(self, kind):
        import redis
        from rq import Queue

        import rq_jobs

        self.func = getattr(rq_jobs, kind)
        self.retry = rq_jobs.retry_for(kind)
        self.timeout = rq_jobs.timeout_for(kind)
        self.queue = Queue("bench", connection=redis.Redis.from_url(os.environ["BENCH_REDIS_URL"]))

    def one(self, payload):
        return self.queue.enqueue(
            self.func, payload, retry=self.retry, job_timeout=self.timeout
        ).id

    def many(self, payloads):
        from rq import Queue

        datas = [
            Queue.prepare_data(self.func, (p,), retry=self.retry, timeout=self.timeout)
            for p in payloads
        ]
        return [job.id for job in self.queue.enqueue_many(datas)]


class CeleryProducer:
    def __init__(self, kind):
        import celery_jobs

        self.task = getattr(celery_jobs, kind)

    def one(self, payload):
        return self.task.apply_async((payload,)).id

    def many(self, payloads):
        from celery import group

        # A group publishes each message in turn over one producer connection: Celery has
        # no multi-message publish for Redis.
        result = group(self.task.s(p) for p in payloads).apply_async()
        return [child.id for child in result.results]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("system", choices=["rq", "celery"])
    parser.add_argument("kind")
    parser.add_argument("payloads")
    parser.add_argument("out")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--pace-ms", type=float, default=0.0)
    args = parser.parse_args()

    with open(args.payloads) as f:
        payloads = [json.loads(line) for line in f if line.strip()]
    producer = (RqProducer if args.system == "rq" else CeleryProducer)(args.kind)

    jobs = []
    began = time.monotonic()
    if args.pace_ms > 0:
        for i, payload in enumerate(payloads):
            sleep_until(began + i * args.pace_ms / 1000)
            t_us = now_us()
            job_id = producer.one(payload)
            jobs.append([job_id, t_us, now_us()])
    else:
        for chunk in chunks(payloads, args.batch):
            t_us = now_us()
            ids = producer.many(chunk)
            after_us = now_us()
            jobs.extend([job_id, t_us, after_us] for job_id in ids)
    seconds = time.monotonic() - began

    with open(args.out, "w") as f:
        json.dump({"seconds": seconds, "jobs": jobs}, f)


if __name__ == "__main__":
    main()
