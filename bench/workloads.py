"""The workloads. Each case starts from an empty queue Redis and an empty ledger, runs one
system through one workload, stops every process it started, and returns a dict of numbers
(the raw per-run record that results.json keeps). bench/README.md says how each is measured."""

import json
import math
import time
from dataclasses import dataclass

from common import (
    DEBUG_BUILD,
    OUT,
    ROOT,
    delta,
    now_us,
    percentile,
    rss_kib,
    run_checked,
    wait_until,
)
from systems import RETRY_INTERVALS_MS, WasmRunner


@dataclass
class Params:
    """Sizes and bounds; `tiny()` is the CI variant."""

    w1_jobs: int = 20_000
    w1_cap_s: float = 60
    w2_jobs: int = 1_000
    w2_pace_ms: float = 10
    w2_wait_s: float = 120
    w3_jobs: int = 1_000
    w3_wait_s: float = 60
    w4_jobs: int = 200
    w4_pace_ms: float = 20
    w5_jobs: int = 100
    w5_slow_ms: int = 200
    w5_kill_fraction: float = 0.4
    w5_wait_s: float = 90
    mem_jobs: int = 1_000_000
    mem_batch: int = 100_000
    mem_running: int = 64
    mem_running_ms: int = 3_000
    w6_jobs: int = 20_000
    # How often the driver polls for progress.
    poll_s: float = 0.005
    # Longest wait for a freshly started worker to finish its warm-up job.
    warm_up_s: float = 60

    @classmethod
    def tiny(cls):
        return cls(
            w1_jobs=200, w1_cap_s=20, w2_jobs=20, w2_wait_s=30, w3_jobs=20, w3_wait_s=30,
            w4_jobs=20, w5_jobs=20, w5_wait_s=10, mem_jobs=2_000, mem_batch=200, w6_jobs=500,
        )


def per_job(total, jobs):
    return total / jobs if jobs else None


def stats_ms(values):
    if not values:
        return {"p50": None, "p99": None, "max": None, "min": None, "n": 0}
    return {
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
        "n": len(values),
    }


def watch(system, probe, target, limit_s, poll_s, baseline=0):
    """Polls the number of finished jobs until `target` are done or `limit_s` passes. Returns
    when the first finished job was seen, when the last poll happened, and the counts then."""
    began = time.monotonic()
    first = None
    while True:
        done = system.done_count(probe) - baseline
        at = time.monotonic()
        if first is None and done > 0:
            first = (at, done)
        if done >= target or at - began > limit_s:
            return {"first": first, "last": (at, done), "timed_out": done < target}
        time.sleep(poll_s)


def warm_up(env, system, params, kind="noop", payload=None):
    """Runs one job through a freshly started worker, so that what follows meets a worker that
    is up, connected, has loaded (for wasm-runner: compiled) the task, and is idle. Uses a
    job that succeeds at once. Returns the finished count to measure from."""
    system.enqueue(kind, [{} if payload is None else payload])
    ok = wait_until(lambda: system.done_count(env.probe) >= 1, params.warm_up_s, 0.02)
    if not ok:
        raise RuntimeError(f"{system.name}: the warm-up job did not finish")
    return system.done_count(env.probe)


def stop_all(system, procs):
    for proc in procs:
        if proc is not None:
            proc.stop()
    system.finish()


# --- W1 -------------------------------------------------------------------------------------


def w1(env, system, workers, params):
    n = params.w1_jobs
    env.flush()
    system.prepare("W1")
    probe = env.probe
    probe.reset_stats()
    before = probe.snapshot()
    enqueued = system.enqueue("noop", [{}] * n)
    enqueue_end = probe.snapshot()
    procs = [system.start_worker(i) for i in range(workers)]
    try:
        seen = watch(system, probe, n, params.w1_cap_s, params.poll_s)
        drain_end = probe.snapshot()
    finally:
        stop_all(system, procs)

    enq = delta(before, enqueue_end)
    drain = delta(enqueue_end, drain_end)
    last_at, done = seen["last"]
    rate = None
    drain_s = None
    if seen["first"] is not None and last_at > seen["first"][0]:
        drain_s = last_at - seen["first"][0]
        rate = (done - seen["first"][1]) / drain_s

    def both(enq_total, drain_total):
        # Enqueue cost is spread over the jobs enqueued, drain cost over the jobs finished
        # (fewer when the drain hit its time cap).
        if not done:
            return None
        return enq_total / n + drain_total / done

    result = {
        "workers": workers,
        "jobs": n,
        "done": done,
        "capped": seen["timed_out"],
        "enqueue_s": enqueued.seconds,
        "enqueue_jobs_per_s": n / enqueued.seconds,
        "enqueue_note": enqueued.note,
        "drain_s": drain_s,
        "drain_jobs_per_s": rate,
        "commands_per_job": both(enq.total_commands, drain.total_commands),
        "script_calls_per_job": both(enq.script_calls, drain.script_calls),
        "redis_cpu_us_per_job": both(enq.cpu_us, drain.cpu_us),
        "enqueue_commands_per_job": per_job(enq.total_commands, n),
        "drain_commands_per_job": per_job(drain.total_commands, done),
        "drain_redis_reads_per_job": per_job(drain.reads, done),
        "enqueue_redis_cpu_us_per_job": per_job(enq.cpu_us, n),
        "drain_redis_cpu_us_per_job": per_job(drain.cpu_us, done),
        "commands": {"enqueue": enq.commands, "drain": drain.commands},
    }
    reported = system.shutdown_stats(procs)
    if reported:
        result["worker_reported"] = reported
        result["worker_round_trips_per_job"] = per_job(
            reported["redis_round_trips"], reported["jobs"]
        )
    return result


# --- W2 -------------------------------------------------------------------------------------


def retry_lateness_ms(execs):
    """For each retry: its start minus (the failed attempt's end + the interval before it)."""
    by_job = {}
    for e in execs:
        by_job.setdefault(e.job, []).append(e)
    lateness = []
    for runs in by_job.values():
        runs.sort(key=lambda e: e.start_us)
        for i, (failed, retry) in enumerate(zip(runs, runs[1:])):
            if failed.outcome != "transient" or failed.end_us is None:
                continue
            interval_us = RETRY_INTERVALS_MS[min(i, len(RETRY_INTERVALS_MS) - 1)] * 1000
            lateness.append((retry.start_us - failed.end_us - interval_us) / 1000)
    return lateness


def w2(env, system, params):
    n = params.w2_jobs
    env.flush()
    system.prepare("W2")
    proc = system.start_worker(0)
    try:
        base = warm_up(env, system, params)
        began = time.monotonic()
        enqueued = system.enqueue("flaky", [{}] * n, pace_ms=params.w2_pace_ms)
        seen = watch(system, env.probe, n, params.w2_wait_s, 0.01, baseline=base)
        total_s = seen["last"][0] - began
        execs = system.executions(enqueued.ids)
    finally:
        stop_all(system, [proc])
    succeeded = {e.job for e in execs if e.outcome == "ok"}
    lateness = retry_lateness_ms(execs)
    return {
        "jobs": n,
        "done": seen["last"][1],
        "timed_out": seen["timed_out"],
        "total_s": total_s,
        "executions": len(execs),
        "expected_executions": 3 * n,
        "succeeded": len(succeeded),
        "lateness_ms": stats_ms(lateness),
        "enqueue_note": enqueued.note,
    }


# --- W3 -------------------------------------------------------------------------------------


def w3_payloads(n):
    """Every tenth job is a bad order, which fails permanently."""
    good = {"email": "ada@example.com", "quantity": 3}
    bad = {"email": "not-an-address", "quantity": 3}
    return [bad if i % 10 == 9 else good for i in range(n)]


def w3(env, system, params):
    n = params.w3_jobs
    payloads = w3_payloads(n)
    env.flush()
    system.prepare("W3")
    proc = system.start_worker(0)
    try:
        base = warm_up(env, system, params, "validate", payloads[0])
        began = time.monotonic()
        enqueued = system.enqueue("validate", payloads)
        seen = watch(system, env.probe, n, params.w3_wait_s, 0.01, baseline=base)
        total_s = seen["last"][0] - began
        ids = enqueued.ids
        execs = system.executions(ids)
    finally:
        stop_all(system, [proc])
    bad_ids = {job for job, payload in zip(ids, payloads) if payload["email"] == "not-an-address"}
    runs = {}
    for e in execs:
        runs.setdefault(e.job, []).append(e)
    wasted = sum(max(0, len(runs.get(job, [])) - 1) for job in bad_ids)
    bad_failed = sum(
        1 for job in bad_ids if any(e.outcome == "permanent" for e in runs.get(job, []))
    )
    good_ok = sum(
        1
        for job in ids
        if job not in bad_ids and any(e.outcome == "ok" for e in runs.get(job, []))
    )
    return {
        "jobs": n,
        "bad_jobs": len(bad_ids),
        "done": seen["last"][1],
        "timed_out": seen["timed_out"],
        "total_s": total_s,
        "executions": len(execs),
        "wasted_executions": wasted,
        "bad_failed_permanently": bad_failed,
        "good_succeeded": good_ok,
    }


# --- W4 -------------------------------------------------------------------------------------


def w4(env, system, params):
    n = params.w4_jobs
    env.flush()
    system.prepare("W4")
    proc = system.start_worker(0)
    try:
        base = warm_up(env, system, params, "probe")
        # Let the worker settle into waiting for work.
        time.sleep(1)
        enqueued = system.enqueue("probe", [{}] * n, pace_ms=params.w4_pace_ms)
        seen = watch(system, env.probe, n, 30, 0.01, baseline=base)
        starts = system.starts_us(enqueued.ids)
        own = system.own_latencies_ms(enqueued.jobs)
    finally:
        stop_all(system, [proc])
    latencies = [
        (starts[job] - before) / 1000 for job, before, _ in enqueued.jobs if job in starts
    ]
    calls = [(after - before) / 1000 for _, before, after in enqueued.jobs]
    return {
        "jobs": n,
        "done": seen["last"][1],
        "timed_out": seen["timed_out"],
        "latency_ms": stats_ms(latencies),
        "enqueue_call_ms": stats_ms(calls),
        "own_latency_ms": stats_ms(own) if own is not None else None,
        "enqueue_note": enqueued.note,
    }


# --- W5 -------------------------------------------------------------------------------------


def w5(env, system, params):
    n = params.w5_jobs
    env.flush()
    system.prepare("W5")
    procs = [system.start_worker(0)]
    try:
        base = warm_up(env, system, params, "slow", 1)
        enqueued = system.enqueue("slow", [params.w5_slow_ms] * n)
        kill_at = math.ceil(n * params.w5_kill_fraction)
        reached = wait_until(
            lambda: system.done_count(env.probe) - base >= kill_at, 120, 0.005
        )
        if not reached:
            raise RuntimeError(f"{system.name}: {kill_at} jobs did not finish before the kill")
        # Jobs of equal length finish in waves; half a job later, the next wave is mid-run.
        time.sleep(params.w5_slow_ms / 2000)
        done_at_kill = system.done_count(env.probe) - base
        kill_us = now_us()
        procs[0].kill_tree()
        procs.append(system.start_worker(1))
        seen = watch(system, env.probe, n, params.w5_wait_s, 0.01, baseline=base)
        execs = system.executions(enqueued.ids)
    finally:
        stop_all(system, procs)

    completed = {}
    starts = {}
    for e in execs:
        starts[e.job] = starts.get(e.job, 0) + 1
        if e.outcome == "ok":
            completed[e.job] = min(completed.get(e.job, e.end_us), e.end_us)
    in_flight = {
        e.job for e in execs if e.start_us <= kill_us and (e.end_us is None or e.end_us > kill_us)
    }
    last = max(completed.values()) if completed else None
    return {
        "jobs": n,
        "done_at_kill": done_at_kill,
        "in_flight_at_kill": len(in_flight),
        "completed": len(completed),
        "lost": n - len(completed),
        "run_twice": sum(1 for count in starts.values() if count > 1),
        "executions": len(execs),
        "kill_to_last_s": (last - kill_us) / 1e6 if last is not None else None,
        "timed_out": seen["timed_out"],
        "wait_s": params.w5_wait_s,
    }


# --- memory ---------------------------------------------------------------------------------


def memory(env, params):
    """wasm-runner only: the serve process's VmRSS idle, with 64 jobs running, and after every
    `mem_batch` no-op jobs up to `mem_jobs`."""
    system = WasmRunner(env, "wasm-runner")
    env.flush()
    system.prepare("MEM")
    proc = system.start_worker(0)
    probe = env.probe
    tag = system.tag
    samples = []
    try:
        time.sleep(2)
        idle = rss_kib(proc.pid)
        system.enqueue("slow", [params.mem_running_ms] * params.mem_running)
        running = wait_until(
            lambda: probe.call("ZCARD", f"{tag}:running") >= params.mem_running, 30, 0.01
        )
        at_running = rss_kib(proc.pid)
        running_seen = probe.call("ZCARD", f"{tag}:running")
        if not running:
            print(f"  memory: only {running_seen} jobs ran at once")
        wait_until(lambda: probe.call("ZCARD", f"{tag}:running") == 0, 60, 0.05)
        done = 0
        began = time.monotonic()
        while done < params.mem_jobs:
            system.enqueue("noop", [{}] * params.mem_batch)
            drained = wait_until(
                lambda: probe.call("LLEN", f"{tag}:ready") == 0
                and probe.call("ZCARD", f"{tag}:running") == 0,
                900,
                0.05,
            )
            if not drained:
                raise RuntimeError("memory: a batch of no-op jobs did not drain in 15 minutes")
            done += params.mem_batch
            samples.append({"jobs": done, "rss_kib": rss_kib(proc.pid),
                            "elapsed_s": time.monotonic() - began})
        peak = peak_kib(proc.pid)
    finally:
        stop_all(system, [proc])
    return {
        "idle_rss_kib": idle,
        "running_rss_kib": at_running,
        "running_jobs_seen": running_seen,
        "samples": samples,
        "peak_rss_kib": peak,
        "jobs": params.mem_jobs,
    }


def peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


# --- W6 -------------------------------------------------------------------------------------


def w6(env, params):
    out = OUT / "overhead.json"
    out.unlink(missing_ok=True)
    profile = ["--profile", "dev"] if DEBUG_BUILD else []
    cmd = ["cargo", "bench", "--quiet", "-p", "wasm-runner", "--bench", "overhead", *profile,
           "--", "--jobs", str(params.w6_jobs), "--json", out]
    run_checked(cmd, env.logs / "w6-overhead.log", cwd=ROOT, timeout=3600)
    report = json.loads(out.read_text())
    executor = report["paths"]["executor"]
    return {
        "jobs": report.get("jobs"),
        "task": report.get("task"),
        "paths": report["paths"],
        "executor_p50_us": executor["p50_us"],
        "executor_p99_us": executor["p99_us"],
        "ceiling_jobs_per_s": 1e6 / executor["p50_us"],
    }
