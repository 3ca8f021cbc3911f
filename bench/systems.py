"""One adapter per system under test: how to prepare it, enqueue, start a worker, count
finished jobs and read back what each execution did.

Every configuration choice for a system lives in its adapter, and bench/README.md lists them.
Workloads are named "W1".."W5" and "MEM"; a kind of job is one of noop, probe (W4's no-op that
records its start), flaky, validate or slow.
"""

import http.client
import json
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import redis

from common import (
    GUESTS,
    NODE_MODULES,
    OUT,
    PEERS_SRC,
    VENV,
    WASM_RUNNER,
    Proc,
    now_us,
    run_checked,
    wait_until,
)

# Delays before retry 1 and retry 2 in W2 and W3, in ms, for every system.
RETRY_INTERVALS_MS = [1000, 2000]
# The lease (or its equivalent) every system gets in W5.
CRASH_LEASE_S = 5
# W5: jobs run at once where a system has concurrency.
CRASH_CONCURRENCY = 10
# W1: wasm-runner's slots per worker for the no-op throughput case.
W1_CONCURRENCY = 64


@dataclass
class Exec:
    """One execution of a job: start and end in µs (end None if it never ended), outcome one
    of ok, transient, permanent, worker_lost (wasm-runner) or None (never ended)."""

    job: str
    attempt: int
    start_us: int
    end_us: int | None
    outcome: str | None


@dataclass
class Enqueued:
    seconds: float
    # (job id, µs just before the call that enqueued it, µs when that call returned), in
    # payload order. A batch's jobs share their batch's times.
    jobs: list
    note: str = ""

    @property
    def ids(self):
        return [job[0] for job in self.jobs]


def write_payloads(path, payloads):
    with open(path, "w") as f:
        for payload in payloads:
            f.write(json.dumps(payload) + "\n")


def parse_ledger(lines, wanted):
    """Pairs the ledger's start and end records into executions of the jobs in `wanted`."""
    open_execs = {}
    execs = []
    for raw in lines:
        fields = raw.decode().split()
        kind, job, attempt, t_us = fields[0], fields[1], int(fields[2]), int(fields[3])
        if job not in wanted:
            continue
        if kind == "S":
            e = Exec(job, attempt, t_us, None, None)
            execs.append(e)
            open_execs[(job, attempt)] = e
        else:
            e = open_execs.pop((job, attempt), None)
            if e is not None:
                e.end_us = t_us
                e.outcome = fields[4]
    return execs


class System:
    """What every adapter provides. `env` is the driver's Env (ports, log directory)."""

    name = ""
    has_concurrency = False

    def __init__(self, env, name):
        self.env = env
        self.name = name
        self.workload = None

    @property
    def redis_url(self):
        return f"redis://127.0.0.1:{self.env.redis_port}"

    @property
    def ledger_url(self):
        return f"redis://127.0.0.1:{self.env.ledger_port}"

    def log(self, what):
        return self.env.case_logs / f"{self.name}-{what}.log"

    def prepare(self, workload):
        """Called on an empty Redis before each case."""
        self.workload = workload

    def finish(self):
        """Called after each case, once its workers are stopped."""

    def ledger_execs(self, job_ids):
        lines = self.env.ledger.lrange("bench:exec", 0, -1)
        return parse_ledger(lines, set(job_ids))

    def own_latencies_ms(self, jobs):
        """W4: enqueue-to-start from the system's own timestamps, or None if it keeps none."""
        return None

    def shutdown_stats(self, procs):
        """Round trips and jobs a worker reports at shutdown, if it does."""
        return None


# --- wasm-runner ----------------------------------------------------------------------------


class WasmRunner(System):
    """`wasm-runner serve` processes against the queue's Redis."""

    has_concurrency = True
    # W2 and W4 enqueue one job at a time through the HTTP API, which needs a tenant with a
    # token; the implicit `default` tenant has none, so those workloads use tenant `bench`.
    HTTP_WORKLOADS = ("W2", "W4")
    # W1 reads the round trips each serve reports in its shutdown line, which the worker
    # module logs at INFO, next to an INFO line per attempt; other workloads log warnings only.
    # BENCH_WR_LOG overrides the W1 filter (see bench/README.md).
    W1_LOG_FILTER = os.environ.get("BENCH_WR_LOG", "warn,wasm_runner::worker::totals=info")

    TASKS = {
        # kind: (task name, component, upload flags)
        "noop": ("noop", "example_noop.wasm", []),
        "probe": ("noop", "example_noop.wasm", []),
        "flaky": (
            "flaky",
            "example_flaky.wasm",
            ["--max-attempts", "3", "--intervals", "1s,2s", "--jitter", "0%"],
        ),
        "validate": ("validate", "example_validate.wasm", []),
        "slow": ("slow", "example_slow.wasm", []),
    }
    KINDS_FOR = {
        "W1": ["noop"],
        "W2": ["noop", "flaky"],
        "W3": ["noop", "validate"],
        "W4": ["noop"],
        "W5": ["noop", "slow"],
        "MEM": ["noop", "slow"],
    }

    def __init__(self, env, name):
        super().__init__(env, name)
        self.tenant = "default"
        self.token = None
        self.api = None
        self.http = None
        if "--batch" not in self.cli(["enqueue", "--help"], "help"):
            raise RuntimeError("this wasm-runner has no `enqueue --batch`; rebuild it")

    def cli(self, args, what, stdin_path=None, timeout=600):
        env = {"WASM_RUNNER_REDIS": self.redis_url}
        return run_checked(
            [WASM_RUNNER, *args], self.log(what), env=env, stdin_path=stdin_path, timeout=timeout
        )

    @property
    def tag(self):
        return f"wr:{{{self.tenant}/default}}"

    def prepare(self, workload):
        super().prepare(workload)
        self.tenant = "bench" if workload in self.HTTP_WORKLOADS else "default"
        if self.tenant != "default":
            self.token = self.cli(["tenant", "create", self.tenant], "tenant").strip()
        uploaded = set()
        for kind in self.KINDS_FOR[workload]:
            task, component, flags = self.TASKS[kind]
            if task in uploaded:
                continue
            uploaded.add(task)
            path = GUESTS / component
            args = ["upload", path, "--name", task, "--tenant", self.tenant, *flags]
            self.cli(args, "upload")
        if workload in self.HTTP_WORKLOADS:
            self.start_api()

    def start_api(self):
        port = self.env.free_port()
        self.api = Proc(
            [WASM_RUNNER, "api", "--http", f"127.0.0.1:{port}", "--redis", self.redis_url],
            self.log("api"),
        )
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def healthy():
            try:
                self.http.request("GET", "/healthz")
                response = self.http.getresponse()
                response.read()
                return response.status == 200
            except OSError:
                self.http.close()
                return False

        if not wait_until(healthy, 30, 0.05):
            raise RuntimeError(f"the API did not come up; see {self.api.log_path}")

    def finish(self):
        if self.api is not None:
            self.http.close()
            self.api.stop()
            self.api = None
            self.http = None

    def enqueue(self, kind, payloads, pace_ms=0):
        task = self.TASKS[kind][0]
        if self.http is not None:
            return self.enqueue_http(task, payloads, pace_ms)
        if pace_ms:
            raise ValueError("paced enqueues go through the HTTP API")
        return self.enqueue_batch(task, payloads)

    def enqueue_batch(self, task, payloads):
        """`wasm-runner enqueue TASK --batch FILE`, timed around the whole process."""
        path = self.env.case_logs / "payloads.jsonl"
        write_payloads(path, payloads)
        began = time.monotonic()
        t_us = now_us()
        out = self.cli(["enqueue", task, "--batch", path, "--tenant", self.tenant], "enqueue")
        seconds = time.monotonic() - began
        after_us = now_us()
        ids = out.split()
        if len(ids) != len(payloads):
            raise RuntimeError(f"enqueue --batch printed {len(ids)} ids for {len(payloads)} jobs")
        return Enqueued(seconds, [(job_id, t_us, after_us) for job_id in ids])

    def enqueue_http(self, task, payloads, pace_ms):
        """One POST per job on a kept-alive connection, `pace_ms` apart on a fixed schedule."""
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        jobs = []
        began = time.monotonic()
        for i, payload in enumerate(payloads):
            if pace_ms:
                delay = began + i * pace_ms / 1000 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            body = json.dumps({"task": task, "payload": payload})
            t_us = now_us()
            self.http.request("POST", "/v1/queues/default/jobs", body=body, headers=headers)
            response = self.http.getresponse()
            reply = response.read()
            after_us = now_us()
            if response.status != 201:
                raise RuntimeError(f"enqueue over HTTP: {response.status} {reply[:200]!r}")
            jobs.append((json.loads(reply)["id"], t_us, after_us))
        return Enqueued(time.monotonic() - began, jobs, note="HTTP API, one request per job")

    def start_worker(self, index):
        args = [
            WASM_RUNNER, "serve", "--redis", self.redis_url, "--grace", "1s",
            "--worker-id", f"bench-{self.workload}-{index}",
            "--cache-dir", OUT / "wasm-runner-cache",
        ]
        if self.workload == "W1":
            # Short jobs: more slots mean larger fetches, so fewer script calls per job
            # (docs/performance.md); BullMQ's throughput case runs at concurrency 50.
            args += ["--concurrency", str(W1_CONCURRENCY)]
        elif self.workload == "W5":
            args += ["--concurrency", str(CRASH_CONCURRENCY), "--lease", f"{CRASH_LEASE_S}s"]
        elif self.workload == "MEM":
            args += ["--concurrency", "64", "--succeeded-retention", "10s"]
        log_filter = self.W1_LOG_FILTER if self.workload == "W1" else "warn"
        env = {"RUST_LOG": log_filter, "NO_COLOR": "1"}
        return Proc(args, self.log(f"serve-{index}"), env=env)

    def done_count(self, probe):
        succeeded = probe.call("ZCARD", f"{self.tag}:succeeded")
        failed = probe.call("ZCARD", f"{self.tag}:failed")
        return succeeded + failed

    def attempts(self, job_ids):
        """Each job's attempt records (JSON text), oldest first. They are kept in the job's
        hash as `run:<lease token>`; older versions kept them in a list `job:<id>:attempts`,
        which is read when the hash has none."""
        pipe = redis.Redis(host="127.0.0.1", port=self.env.redis_port).pipeline(False)
        for job_id in job_ids:
            pipe.hgetall(f"{self.tag}:job:{job_id}")
            pipe.lrange(f"{self.tag}:job:{job_id}:attempts", 0, -1)
        replies = pipe.execute()
        records = {}
        for job_id, fields, listed in zip(job_ids, replies[::2], replies[1::2]):
            runs = sorted(
                (int(name[4:]), value) for name, value in fields.items()
                if name.startswith(b"run:")
            )
            records[job_id] = [value for _, value in runs] or listed
        return records

    def executions(self, job_ids):
        execs = []
        for job_id, records in self.attempts(job_ids).items():
            for raw in records:
                record = json.loads(raw)
                execs.append(
                    Exec(
                        job_id,
                        record["attempt"],
                        record["started_at_ms"] * 1000,
                        record["ended_at_ms"] * 1000,
                        record["outcome"]["class"],
                    )
                )
        return execs

    def starts_us(self, job_ids):
        """W4: when each job's first attempt was leased to a worker (Redis clock, ms)."""
        starts = {}
        for job_id, records in self.attempts(job_ids).items():
            if records:
                starts[job_id] = json.loads(records[0])["started_at_ms"] * 1000
        return starts

    def own_latencies_ms(self, jobs):
        ids = [job[0] for job in jobs]
        pipe = redis.Redis(host="127.0.0.1", port=self.env.redis_port).pipeline(False)
        for job_id in ids:
            pipe.hget(f"{self.tag}:job:{job_id}", "enqueued_at")
        enqueued = dict(zip(ids, pipe.execute()))
        starts = self.starts_us(ids)
        return [starts[j] / 1000 - int(enqueued[j]) for j in ids if j in starts and enqueued[j]]

    def shutdown_stats(self, procs):
        """Sums the `jobs` and `redis_round_trips` of each serve's shutdown line."""
        pattern = re.compile(r"shutdown finished.*?jobs=(\d+) redis_round_trips=(\d+)")
        jobs = trips = 0
        found = False
        for proc in procs:
            text = re.sub(r"\x1b\[[0-9;]*m", "", proc.output())
            for match in pattern.finditer(text):
                found = True
                jobs += int(match.group(1))
                trips += int(match.group(2))
        return {"jobs": jobs, "redis_round_trips": trips} if found else None


# --- peers ----------------------------------------------------------------------------------


class PythonPeer(System):
    """Shared by RQ and Celery: producers run bench/peers/produce.py in the peers' venv."""

    produce_name = ""

    def peer_env(self):
        return {
            "BENCH_REDIS_URL": self.redis_url,
            "BENCH_LEDGER_URL": self.ledger_url,
            "PYTHONPATH": str(PEERS_SRC),
            # Unbuffered, so a killed worker's log still shows what it did.
            "PYTHONUNBUFFERED": "1",
        }

    def enqueue(self, kind, payloads, pace_ms=0):
        path = self.env.case_logs / "payloads.jsonl"
        out = self.env.case_logs / "enqueued.json"
        write_payloads(path, payloads)
        cmd = [VENV / "bin" / "python", PEERS_SRC / "produce.py", self.produce_name, kind,
               path, out, "--pace-ms", str(pace_ms)]
        run_checked(cmd, self.log("produce"), env=self.peer_env(), cwd=PEERS_SRC)
        result = json.loads(out.read_text())
        return Enqueued(result["seconds"], [tuple(j) for j in result["jobs"]])

    def executions(self, job_ids):
        return self.ledger_execs(job_ids)

    def starts_us(self, job_ids):
        return {e.job: e.start_us for e in self.ledger_execs(job_ids) if e.attempt == 1}


class Rq(PythonPeer):
    """`rq worker`, with the default forking Worker or with SimpleWorker."""

    produce_name = "rq"
    WORKER_CLASSES = {"rq-fork": "rq.Worker", "rq-simple": "rq.SimpleWorker"}

    def start_worker(self, index):
        cmd = [
            VENV / "bin" / "rq", "worker", "bench",
            "--url", self.redis_url,
            "--path", PEERS_SRC,
            "--worker-class", self.WORKER_CLASSES[self.name],
            "--name", f"bench-{self.workload}-{index}-{time.time_ns()}",
            # One line per job at the default INFO level is output no other system writes.
            "--logging_level", "WARNING",
            # Only acts on the benchmark's PermanentError; see rq_jobs.py.
            "--exception-handler", "rq_jobs.stop_retrying_permanent",
        ]
        if self.workload in ("W2", "W3"):
            # Retries with intervals are scheduled jobs, which only a scheduler enqueues.
            cmd.append("--with-scheduler")
        if self.workload == "W5":
            # Look for abandoned jobs every 5 s, and heartbeat every 5 s while a job runs. An
            # idle worker blocks on the queue for worker-ttl - 15 s and only then looks for
            # abandoned jobs, so the worker TTL is shortened too (to 20 s: 5 s waits).
            cmd += ["--maintenance-interval", "5", "--job-monitoring-interval", "5",
                    "--worker-ttl", "20"]
        return Proc(cmd, self.log(f"worker-{index}"), env=self.peer_env(), cwd=PEERS_SRC)

    def done_count(self, probe):
        return probe.call("ZCARD", "rq:finished:bench") + probe.call("ZCARD", "rq:failed:bench")

    def own_latencies_ms(self, jobs):
        r = redis.Redis(host="127.0.0.1", port=self.env.redis_port)
        pipe = r.pipeline(False)
        for job_id, *_ in jobs:
            pipe.hmget(f"rq:job:{job_id}", "enqueued_at", "started_at")
        latencies = []
        for enqueued, started in pipe.execute():
            if enqueued and started:
                latencies.append((rq_time_us(started) - rq_time_us(enqueued)) / 1000)
        return latencies


def rq_time_us(raw):
    """RQ stores times as UTC text, e.g. 2026-12-03T19:28:27.610548Z."""
    text = raw.decode().rstrip("Z")
    stamp = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return int(stamp.timestamp() * 1e6)


class Celery(PythonPeer):
    """`celery worker --pool solo`, Redis as broker, no result backend."""

    produce_name = "celery"

    def start_worker(self, index):
        cmd = [
            VENV / "bin" / "celery", "-A", "celery_jobs", "worker",
            "--pool", "solo",
            # The solo pool runs one task at a time; saying so also keeps the prefetch count
            # at the multiplier (it is multiplier × concurrency, which defaults to the cores).
            "--concurrency", "1",
            "--hostname", f"bench{index}@%h",
            "--loglevel", "WARNING",
        ]
        env = self.peer_env()
        env["BENCH_CRASH"] = "1" if self.workload == "W5" else "0"
        return Proc(cmd, self.log(f"worker-{index}"), env=env, cwd=PEERS_SRC)

    def done_count(self, probe):
        # Celery keeps no record of finished tasks without a result backend, so the worker
        # counts them itself (task_success and task_failure signals) on the ledger.
        values = self.env.ledger.hvals("bench:done")
        return sum(int(v) for v in values)


class BullMQ(System):
    """A Node process running one BullMQ Worker of the given concurrency."""

    has_concurrency = True

    def __init__(self, env, name):
        super().__init__(env, name)
        self.concurrency = int(name.rsplit("-c", 1)[1])

    def node_env(self):
        return {
            "BENCH_REDIS_PORT": str(self.env.redis_port),
            "BENCH_LEDGER_PORT": str(self.env.ledger_port),
            "NODE_PATH": str(NODE_MODULES),
        }

    def enqueue(self, kind, payloads, pace_ms=0):
        path = self.env.case_logs / "payloads.jsonl"
        out = self.env.case_logs / "enqueued.json"
        write_payloads(path, payloads)
        cmd = ["node", PEERS_SRC / "bullmq.js", "produce", kind, path, out,
               "--pace-ms", str(pace_ms)]
        run_checked(cmd, self.log("produce"), env=self.node_env())
        result = json.loads(out.read_text())
        return Enqueued(result["seconds"], [tuple(j) for j in result["jobs"]])

    def start_worker(self, index):
        cmd = ["node", PEERS_SRC / "bullmq.js", "work", "--concurrency", str(self.concurrency)]
        if self.workload == "W5":
            cmd.append("--crash")
        return Proc(cmd, self.log(f"worker-{index}"), env=self.node_env())

    def done_count(self, probe):
        return probe.call("ZCARD", "bull:bench:completed") + probe.call(
            "ZCARD", "bull:bench:failed"
        )

    def executions(self, job_ids):
        return self.ledger_execs(job_ids)

    def starts_us(self, job_ids):
        return {e.job: e.start_us for e in self.ledger_execs(job_ids) if e.attempt == 1}

    def own_latencies_ms(self, jobs):
        r = redis.Redis(host="127.0.0.1", port=self.env.redis_port)
        pipe = r.pipeline(False)
        for job_id, *_ in jobs:
            pipe.hmget(f"bull:bench:{job_id}", "timestamp", "processedOn")
        return [
            int(started) - int(enqueued)
            for enqueued, started in pipe.execute()
            if enqueued and started
        ]


ALL_SYSTEMS = ["wasm-runner", "rq-fork", "rq-simple", "bullmq-c1", "bullmq-c50", "celery-solo"]


def make_system(env, name):
    if name == "wasm-runner":
        return WasmRunner(env, name)
    if name in ("rq-fork", "rq-simple"):
        return Rq(env, name)
    if name.startswith("bullmq-c"):
        return BullMQ(env, name)
    if name == "celery-solo":
        return Celery(env, name)
    raise SystemExit(f"unknown system {name!r}; known: {', '.join(ALL_SYSTEMS)}")
