"""Runs the side-by-side benchmark: wasm-runner and its peers through workloads W1-W6 and the
memory check, interleaved, and writes target/bench/results.json and target/bench/report.md.

Started by bench/run, which installs the peers, builds everything and starts the two private
Redis servers whose ports and pids it passes here. See bench/README.md.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import traceback
from datetime import datetime, timezone

import redis

import report
import workloads
from common import (
    DEBUG_BUILD,
    NODE_MODULES,
    OUT,
    ROOT,
    WASM_RUNNER,
    Probe,
    check_private,
    write_json,
)
from systems import ALL_SYSTEMS, make_system

WORKLOADS = ["W1", "W2", "W3", "W4", "W5", "MEM", "W6"]
# Run once, after the interleaved runs, whatever --runs says.
ONCE = ("MEM", "W6")


class Env:
    """The two private Redis servers, the driver's connections to them, and where logs go."""

    def __init__(self, args):
        check_private(args.redis_port, args.redis_pid)
        check_private(args.ledger_port, args.ledger_pid)
        self.redis_port = args.redis_port
        self.ledger_port = args.ledger_port
        self.probe = Probe(args.redis_port)
        self.ledger = redis.Redis(host="127.0.0.1", port=args.ledger_port)
        self.logs = OUT / "logs"
        # Logs of an earlier run would be appended to; start afresh (our directory only).
        shutil.rmtree(self.logs, ignore_errors=True)
        self.case_logs = self.logs / "setup"
        self.case_logs.mkdir(parents=True, exist_ok=True)

    def flush(self):
        """Empties both servers (ours alone: checked at start) and their script caches, so
        every case starts as on a freshly started Redis."""
        for server in (self.probe.redis, self.ledger):
            server.flushall()
            server.script_flush()

    def start_case(self, label):
        self.case_logs = self.logs / label
        self.case_logs.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def free_port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="CI mode: tiny workloads, 1 run")
    parser.add_argument("--runs", type=int, help="interleaved runs (default 3; 1 with --tiny)")
    parser.add_argument("--only", help=f"comma-separated workloads out of {','.join(WORKLOADS)}")
    parser.add_argument("--systems", help=f"comma-separated, out of {','.join(ALL_SYSTEMS)}")
    parser.add_argument("--w1-cap", type=float, help="W1 drain time cap in seconds")
    parser.add_argument("--crash-wait", type=float, help="W5: seconds to wait after the kill")
    for name in ("redis-port", "redis-pid", "ledger-port", "ledger-pid"):
        parser.add_argument(f"--{name}", type=int, required=True, help="set by bench/run")
    args = parser.parse_args()

    args.workloads = split_list(args.only, WORKLOADS, "workload") if args.only else WORKLOADS
    args.system_names = (
        split_list(args.systems, ALL_SYSTEMS, "system") if args.systems else ALL_SYSTEMS
    )
    if args.runs is None:
        args.runs = 1 if args.tiny else 3
    args.params = workloads.Params.tiny() if args.tiny else workloads.Params()
    if args.w1_cap is not None:
        args.params.w1_cap_s = args.w1_cap
    if args.crash_wait is not None:
        args.params.w5_wait_s = args.crash_wait
    return args


def split_list(text, known, what):
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item not in known:
            raise SystemExit(f"unknown {what} {item!r}; known: {', '.join(known)}")
    return items


def systems_for(workload, names):
    """W5 runs BullMQ once, at concurrency 10, in place of its c1 and c50 variants."""
    if workload != "W5":
        return list(names)
    out = []
    for name in names:
        name = "bullmq-c10" if name.startswith("bullmq-") else name
        if name not in out:
            out.append(name)
    return out


def plan(args):
    """(run, workload, system, worker processes) in the order they run: for each run, each
    workload, every system, in an order rotated from one run and workload to the next."""
    cases = []
    interleaved = [w for w in args.workloads if w not in ONCE]
    for run in range(1, args.runs + 1):
        for index, workload in enumerate(interleaved):
            names = systems_for(workload, args.system_names)
            shift = (run - 1 + index) % len(names)
            for name in names[shift:] + names[:shift]:
                for workers in (1, 2) if workload == "W1" else (1,):
                    cases.append((run, workload, name, workers))
    return cases


def run_case(env, system, workload, workers, params):
    if workload == "W1":
        return workloads.w1(env, system, workers, params)
    return getattr(workloads, workload.lower())(env, system, params)


def describe(metrics, workload):
    """A one-line progress summary of a finished case."""
    def fmt(value, unit=""):
        return "n/a" if value is None else f"{value:,.1f}{unit}"

    if workload == "W1":
        capped = " (capped)" if metrics["capped"] else ""
        return (f"enqueue {fmt(metrics['enqueue_jobs_per_s'])}/s, drain "
                f"{fmt(metrics['drain_jobs_per_s'])}/s{capped}, Redis CPU "
                f"{fmt(metrics['redis_cpu_us_per_job'])} µs/job, "
                f"{fmt(metrics['commands_per_job'])} commands/job")
    if workload == "W2":
        late = metrics["lateness_ms"]
        return (f"{metrics['executions']} executions, lateness p50 {fmt(late['p50'])} "
                f"p99 {fmt(late['p99'])} max {fmt(late['max'])} ms")
    if workload == "W3":
        return f"{metrics['wasted_executions']} wasted of {metrics['executions']} executions"
    if workload == "W4":
        lat = metrics["latency_ms"]
        return f"p50 {fmt(lat['p50'])} ms, p99 {fmt(lat['p99'])} ms"
    if workload == "W5":
        return (f"lost {metrics['lost']}, run twice {metrics['run_twice']}, last done "
                f"{fmt(metrics['kill_to_last_s'], ' s')} after the kill")
    return ""


def versions():
    """Versions of everything measured, for the report."""
    def command(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
        except OSError:
            return None

    bullmq = json.loads((NODE_MODULES / "bullmq" / "package.json").read_text())["version"]
    ioredis = json.loads((NODE_MODULES / "ioredis" / "package.json").read_text())["version"]
    status = command(["git", "-C", str(ROOT), "status", "--porcelain"])
    return {
        "wasm-runner": command([str(WASM_RUNNER), "--version"]),
        "git_commit": command(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "git_dirty": bool(status),
        "redis-server": command(["redis-server", "--version"]),
        "python": platform.python_version(),
        "node": command(["node", "--version"]),
        "rq": importlib.metadata.version("rq"),
        "celery": importlib.metadata.version("celery"),
        "kombu": importlib.metadata.version("kombu"),
        "redis-py": importlib.metadata.version("redis"),
        "bullmq": bullmq,
        "ioredis": ioredis,
    }


def machine():
    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release()}


def main():
    args = parse_args()
    env = Env(args)
    started = time.monotonic()
    results = {
        "meta": {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "mode": ("tiny" if args.tiny else "full")
            + (", debug build" if DEBUG_BUILD else ""),
            "runs": args.runs,
            "workloads": args.workloads,
            "systems": args.system_names,
            "params": dataclasses.asdict(args.params),
            "machine": machine(),
            "versions": versions(),
        },
        "cases": [],
    }
    results_path = OUT / "results.json"
    systems = {}
    cases = plan(args)
    try:
        for number, (run, workload, name, workers) in enumerate(cases, 1):
            label = f"run{run}-{workload}-{name}-x{workers}"
            print(f"[{number}/{len(cases)}] run {run} {workload} {name} x{workers} ...",
                  flush=True)
            env.start_case(label)
            record = {"run": run, "workload": workload, "system": name, "workers": workers}
            case_began = time.monotonic()
            try:
                if name not in systems:
                    systems[name] = make_system(env, name)
                metrics = run_case(env, systems[name], workload, workers, args.params)
                record["metrics"] = metrics
                print(f"    {describe(metrics, workload)}", flush=True)
            except Exception as err:  # one broken case must not sink the whole run
                record["error"] = f"{type(err).__name__}: {err}"
                print(f"    FAILED: {record['error']} (logs in {env.case_logs})", flush=True)
                traceback.print_exc(file=open(env.case_logs / "driver-error.log", "w"))
            record["seconds"] = time.monotonic() - case_began
            results["cases"].append(record)
            write_json(results_path, results)

        for once in (w for w in ONCE if w in args.workloads):
            print(f"[{once}] ...", flush=True)
            env.start_case(once)
            began = time.monotonic()
            try:
                if once == "MEM":
                    results["memory"] = workloads.memory(env, args.params)
                    results["memory"]["seconds"] = time.monotonic() - began
                else:
                    results["w6"] = workloads.w6(env, args.params)
                    results["w6"]["seconds"] = time.monotonic() - began
            except Exception as err:
                results[once.lower() + "_error"] = f"{type(err).__name__}: {err}"
                print(f"    FAILED: {err} (logs in {env.case_logs})", flush=True)
    finally:
        results["meta"]["seconds"] = time.monotonic() - started
        write_json(results_path, results)
        report.write(results, OUT / "report.md")
    failed = sum(1 for case in results["cases"] if "error" in case)
    failed += sum(1 for key in results if key.endswith("_error"))
    print(f"wrote {results_path} and {OUT / 'report.md'} in "
          f"{results['meta']['seconds']:.0f} s; {failed} failed case(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
