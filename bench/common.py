"""Plumbing shared by the driver: paths, processes, bounded waits, Redis counters, statistics."""

import json
import math
import os
import signal
import statistics
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "target" / "bench"
PEERS_SRC = ROOT / "bench" / "peers"
VENV = OUT / "peers" / "venv"
NODE_MODULES = OUT / "peers" / "node" / "node_modules"
# BENCH_BUILD=debug (CI's check that the harness runs) uses the debug build the tests made, so
# CI does not compile wasmtime a second time; figures from it mean nothing.
DEBUG_BUILD = os.environ.get("BENCH_BUILD", "release") == "debug"
WASM_RUNNER = ROOT / "target" / ("debug" if DEBUG_BUILD else "release") / "wasm-runner"
GUESTS = ROOT / "target" / "wasm32-wasip2" / "guest"


def now_us():
    """Wall clock in µs since the epoch: the clock every process on this machine shares."""
    return time.time_ns() // 1000


def wait_until(predicate, timeout, interval=0.005):
    """Calls predicate() until it returns something truthy or `timeout` seconds pass; returns
    the last value. Every wait in the harness goes through here, so none is unbounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# --- processes ------------------------------------------------------------------------------


def children_of(pid):
    """Direct children of `pid`, from /proc (Linux only, like the rest of the harness)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; ppid follows it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def process_tree(pid):
    tree = [pid]
    for child in children_of(pid):
        tree.extend(process_tree(child))
    return tree


class Proc:
    """A process the harness started, in a session of its own, with output in a log file."""

    def __init__(self, cmd, log_path, env=None, cwd=None):
        self.cmd = [str(part) for part in cmd]
        self.log_path = Path(log_path)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = open(self.log_path, "ab")
        self.log.write(f"$ {' '.join(self.cmd)}\n".encode())
        self.log.flush()
        self.popen = subprocess.Popen(
            self.cmd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def kill_tree(self):
        """SIGKILL to the process and everything below it. RQ's work horse puts itself in a
        process group of its own, so killing our session's group alone would miss it."""
        tree = process_tree(self.pid)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=10)
        self.log.close()

    def stop(self, grace=15):
        """SIGTERM, then after `grace` seconds SIGKILL to whatever is left of the tree."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            self.kill_tree()
            return
        # The main process is gone; make sure nothing it started lingers.
        for pid in process_tree(self.pid)[1:]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()

    def output(self):
        return self.log_path.read_text(errors="replace")


def run_checked(cmd, log_path, env=None, cwd=None, timeout=600, stdin_path=None):
    """Runs a command to completion (bounded); returns its stdout. Stderr goes to the log."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"$ {' '.join(str(c) for c in cmd)}\n".encode())
        log.flush()
        stdin = open(stdin_path, "rb") if stdin_path else subprocess.DEVNULL
        try:
            done = subprocess.run(
                [str(c) for c in cmd],
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=stdin,
                env=full_env,
                cwd=cwd,
                timeout=timeout,
            )
        finally:
            if stdin_path:
                stdin.close()
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {done.returncode}; see {log_path}")
    return done.stdout.decode()


def rss_kib(pid):
    """Resident memory of a process (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- Redis ----------------------------------------------------------------------------------

SCRIPT_COMMANDS = ("evalsha", "eval", "fcall", "evalsha_ro", "eval_ro", "fcall_ro")


@dataclass
class Snapshot:
    """Redis's cumulative counters at one moment, and how many commands the driver itself had
    sent on its probe connection by then (to be subtracted)."""

    at: float
    cpu_s: float
    reads: int
    commands: dict
    probe_commands: Counter = field(default_factory=Counter)


@dataclass
class Delta:
    seconds: float
    cpu_us: float
    reads: int
    commands: dict

    @property
    def total_commands(self):
        return sum(self.commands.values())

    @property
    def script_calls(self):
        return sum(self.commands.get(name, 0) for name in SCRIPT_COMMANDS)


class Probe:
    """The driver's one connection to the Redis under test. Every command it sends is counted
    by name so that its polling can be taken out of the server's command statistics."""

    def __init__(self, port):
        self.redis = redis.Redis(host="127.0.0.1", port=port)
        self.sent = Counter()

    def call(self, *args):
        self.sent[str(args[0]).lower()] += 1
        return self.redis.execute_command(*args)

    def reset_stats(self):
        self.call("CONFIG", "RESETSTAT")

    def snapshot(self):
        # Three INFO calls; they are counted in `sent` like any other probe command.
        self.sent["info"] += 3
        cpu = self.redis.info("cpu")
        stats = self.redis.info("stats")
        commandstats = self.redis.info("commandstats")
        commands = {}
        for key, value in commandstats.items():
            name = key.removeprefix("cmdstat_").lower()
            commands[name] = value["calls"]
        return Snapshot(
            at=time.monotonic(),
            cpu_s=float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
            reads=int(stats["total_reads_processed"]),
            commands=commands,
            probe_commands=Counter(self.sent),
        )


def delta(before, after):
    """The work Redis did between two snapshots for everyone but the driver's probe."""
    probe = after.probe_commands - before.probe_commands
    commands = {}
    for name, calls in after.commands.items():
        base = name.split("|")[0]
        # The driver's own bookkeeping commands are never part of a system's work.
        if base in ("info", "config"):
            continue
        own = calls - before.commands.get(name, 0) - probe.get(name, 0)
        if own > 0:
            commands[name] = own
    return Delta(
        seconds=after.at - before.at,
        cpu_us=(after.cpu_s - before.cpu_s) * 1e6,
        reads=max(0, after.reads - before.reads - sum(probe.values())),
        commands=commands,
    )


def check_private(port, expected_pid):
    """Refuses to touch a Redis the harness did not start: the port must not be 6379 and the
    server must be the process bench/run launched."""
    if port == 6379:
        raise SystemExit("refusing to use port 6379: the harness only uses its own Redis servers")
    info = redis.Redis(host="127.0.0.1", port=port).info("server")
    if int(info["process_id"]) != expected_pid:
        raise SystemExit(f"the Redis on port {port} is not the one bench/run started")


# --- statistics -----------------------------------------------------------------------------


def percentile(values, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values):
    """Median, min and max of the per-run values that exist (None where a run had none)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def write_json(path, data):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
