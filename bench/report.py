"""Turns results.json into report.md: one table per workload with the median and the min-max
range over the runs of every metric, ratios of wasm-runner against each peer, and the targets
of issue #6 next to what was measured."""

from pathlib import Path

from common import summary

WR = "wasm-runner"


def fmt(value):
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values):
    """`median (min–max)` over the runs, or the single value when there was one run."""
    stats = summary(values)
    if stats is None:
        return "n/a"
    if len([v for v in values if v is not None]) == 1 or stats["min"] == stats["max"]:
        return fmt(stats["median"])
    return f"{fmt(stats['median'])} ({fmt(stats['min'])}–{fmt(stats['max'])})"


def median(values):
    stats = summary(values)
    return stats["median"] if stats else None


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def dig(metrics, path):
    """metrics["a"]["b"] for path "a.b"; None when any step is missing."""
    value = metrics
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


class Cases:
    """The successful cases of one workload, grouped by system and worker count."""

    def __init__(self, results, workload):
        self.groups = {}
        self.errors = []
        for case in results["cases"]:
            if case["workload"] != workload:
                continue
            key = (case["system"], case["workers"])
            if "error" in case:
                self.errors.append(f"run {case['run']} {case['system']} x{case['workers']}: "
                                   f"{case['error']}")
                continue
            self.groups.setdefault(key, []).append(case["metrics"])

    def keys(self):
        return list(self.groups)

    def values(self, key, path):
        return [dig(m, path) for m in self.groups.get(key, [])]

    def median(self, key, path):
        return median(self.values(key, path))


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def errors_note(cases):
    if not cases.errors:
        return []
    return ["", "Failed cases (not in the table):", ""] + [f"- {e}" for e in cases.errors]


def label(key):
    system, workers = key
    return f"{system} ×{workers}"


def w1_section(results):
    cases = Cases(results, "W1")
    if not cases.groups:
        return []
    columns = [
        ("enqueue jobs/s", "enqueue_jobs_per_s"),
        ("drain jobs/s", "drain_jobs_per_s"),
        ("Redis CPU µs/job", "redis_cpu_us_per_job"),
        ("commands/job", "commands_per_job"),
        ("script calls/job", "script_calls_per_job"),
        ("Redis reads/job (drain)", "drain_redis_reads_per_job"),
        ("worker round trips/job", "worker_round_trips_per_job"),
    ]
    rows = []
    for key in cases.keys():
        capped = sum(1 for v in cases.values(key, "capped") if v)
        done = cases.values(key, "done")
        notes = [f"capped in {capped} run(s): {fmt(median(done))} jobs done"] if capped else []
        notes += sorted({n for n in cases.values(key, "enqueue_note") if n})
        note = "; ".join(notes)
        rows.append([label(key)] + [cell(cases.values(key, p)) for _, p in columns] + [note])
    out = ["## W1 throughput", "", table(["system"] + [c for c, _ in columns] + ["note"], rows)]
    ratio_rows = []
    for key in cases.keys():
        system, workers = key
        mine = (WR, workers)
        if system == WR or mine not in cases.groups:
            continue
        ratio_rows.append([
            label(key),
            fmt(ratio(cases.median(mine, "drain_jobs_per_s"),
                      cases.median(key, "drain_jobs_per_s"))) + "×",
            fmt(ratio(cases.median(key, "redis_cpu_us_per_job"),
                      cases.median(mine, "redis_cpu_us_per_job"))) + "×",
            fmt(ratio(cases.median(key, "commands_per_job"),
                      cases.median(mine, "commands_per_job"))) + "×",
        ])
    if ratio_rows:
        out += ["", "Ratios of medians (wasm-runner against each peer, same worker count): "
                "drain speed-up, and how many times more Redis CPU and commands the peer spends "
                "per job.", ""]
        out.append(table(["peer", "wasm-runner drain ÷ peer's", "peer's Redis CPU ÷ ours",
                          "peer's commands ÷ ours"], ratio_rows))
    return out + errors_note(cases)


def w2_section(results):
    cases = Cases(results, "W2")
    if not cases.groups:
        return []
    rows = []
    for key in cases.keys():
        rows.append([
            key[0],
            cell(cases.values(key, "total_s")),
            cell(cases.values(key, "executions")),
            cell(cases.values(key, "succeeded")),
            cell(cases.values(key, "lateness_ms.p50")),
            cell(cases.values(key, "lateness_ms.p99")),
            cell(cases.values(key, "lateness_ms.max")),
            cell(cases.values(key, "lateness_ms.min")),
        ])
    out = ["## W2 retry success", "",
           table(["system", "total s", "executions", "succeeded", "lateness p50 ms",
                  "p99 ms", "max ms", "min ms"], rows)]
    out += ratio_lines(cases, "lateness_ms.p99", "retry lateness p99, peer's ÷ wasm-runner's")
    return out + errors_note(cases)


def ratio_lines(cases, path, what):
    mine = median(cases.values((WR, 1), path))
    if mine is None or mine <= 0:
        return []
    parts = []
    for key in cases.keys():
        if key[0] != WR:
            parts.append(f"{key[0]} {fmt(ratio(cases.median(key, path), mine))}×")
    if not parts:
        return []
    return ["", f"Ratios of medians, {what}: " + ", ".join(parts) + "."]


def w3_section(results):
    cases = Cases(results, "W3")
    if not cases.groups:
        return []
    rows = [[
        key[0],
        cell(cases.values(key, "executions")),
        cell(cases.values(key, "wasted_executions")),
        cell(cases.values(key, "bad_failed_permanently")),
        cell(cases.values(key, "good_succeeded")),
        cell(cases.values(key, "total_s")),
    ] for key in cases.keys()]
    out = ["## W3 permanent errors", "",
           table(["system", "executions", "wasted executions", "bad jobs failed at once",
                  "good jobs succeeded", "total s"], rows)]
    return out + errors_note(cases)


def w4_section(results):
    cases = Cases(results, "W4")
    if not cases.groups:
        return []
    rows = [[
        key[0],
        cell(cases.values(key, "latency_ms.p50")),
        cell(cases.values(key, "latency_ms.p99")),
        cell(cases.values(key, "latency_ms.max")),
        cell(cases.values(key, "enqueue_call_ms.p50")),
        cell(cases.values(key, "own_latency_ms.p50")),
        cell(cases.values(key, "own_latency_ms.p99")),
    ] for key in cases.keys()]
    out = ["## W4 idle latency", "",
           table(["system", "enqueue call → start p50 ms", "p99 ms", "max ms",
                  "enqueue call itself p50 ms", "own timestamps p50 ms", "own p99 ms"], rows)]
    out += ratio_lines(cases, "latency_ms.p50", "p50, peer's ÷ wasm-runner's")
    out += ratio_lines(cases, "latency_ms.p99", "p99, peer's ÷ wasm-runner's")
    return out + errors_note(cases)


def w5_section(results):
    cases = Cases(results, "W5")
    if not cases.groups:
        return []
    rows = [[
        key[0],
        cell(cases.values(key, "lost")),
        cell(cases.values(key, "run_twice")),
        cell(cases.values(key, "kill_to_last_s")),
        cell(cases.values(key, "in_flight_at_kill")),
        cell(cases.values(key, "executions")),
    ] for key in cases.keys()]
    wait = next(iter(cases.groups.values()))[0]["wait_s"]
    out = ["## W5 crash", "",
           f"Lost means not completed within {fmt(wait)} s of the kill.", "",
           table(["system", "jobs lost", "jobs run twice", "kill → last completion s",
                  "running at the kill", "executions"], rows)]
    return out + errors_note(cases)


def w6_section(results):
    w6 = results.get("w6")
    if not w6:
        return []
    rows = [[name, fmt(p["p50_us"]), fmt(p["p99_us"]), fmt(p["mean_us"])]
            for name, p in w6["paths"].items()]
    out = ["## W6 sandbox overhead", "",
           f"`cargo bench --bench overhead`, {w6['jobs']} jobs per path, task "
           f"`{w6.get('task')}`.", "",
           table(["path", "p50 µs", "p99 µs", "mean µs"], rows), "",
           f"One-core ceiling 1e6 / executor p50: {fmt(w6['ceiling_jobs_per_s'])} jobs/s."]
    drain = median(Cases(results, "W1").values((WR, 1), "drain_jobs_per_s"))
    if drain is not None:
        share = 100 * drain / w6["ceiling_jobs_per_s"]
        out.append(f"W1 drain with one serve process (median): {fmt(drain)} jobs/s, "
                   f"{fmt(share)}% of that ceiling.")
    return out


def memory_section(results):
    mem = results.get("memory")
    if not mem:
        return []
    rows = [["idle after start", "0", fmt(mem["idle_rss_kib"] / 1024)],
            [f"{mem['running_jobs_seen']} jobs running at once", "",
             fmt(mem["running_rss_kib"] / 1024)]]
    rows += [[f"after {s['jobs']:,} no-op jobs", f"{s['jobs']:,}", fmt(s["rss_kib"] / 1024)]
             for s in mem["samples"]]
    return ["## Memory (wasm-runner serve, --concurrency 64)", "",
            table(["when", "jobs done", "VmRSS MiB"], rows), "",
            f"Peak (VmHWM): {fmt(mem['peak_rss_kib'] / 1024)} MiB."]


def targets_section(results):
    """Issue #6's targets against the medians of this run."""
    w1 = Cases(results, "W1")
    rows = []

    def add(target, value, ok):
        # Targets whose workload did not run are left out.
        if ok is not None:
            rows.append([target, value, "met" if ok else "not met"])

    def check(value, test):
        return None if value is None else test(value)

    wr_drain = w1.median((WR, 1), "drain_jobs_per_s")
    for peer, factor in (("bullmq-c50", 2), ("rq-simple", 40)):
        r = ratio(wr_drain, w1.median((peer, 1), "drain_jobs_per_s"))
        add(f"W1 drain ≥ {factor}× {peer}", fmt(r) + "×", check(r, lambda v: v >= factor))
    cpu = w1.median((WR, 1), "redis_cpu_us_per_job")
    add("Redis CPU ≤ 25 µs/job", fmt(cpu), check(cpu, lambda v: v <= 25))
    bull_cpu = w1.median(("bullmq-c50", 1), "redis_cpu_us_per_job")
    r = ratio(cpu, bull_cpu)
    add("Redis CPU ≤ ¼ of bullmq-c50's", fmt(r) + "×", check(r, lambda v: v <= 0.25))
    trips = w1.median((WR, 1), "worker_round_trips_per_job")
    add("worker round trips/job well under 1", fmt(trips), check(trips, lambda v: v < 0.5))
    p99 = Cases(results, "W2").median((WR, 1), "lateness_ms.p99")
    add("W2 lateness p99 ≤ 10 ms", fmt(p99), check(p99, lambda v: v <= 10))
    wasted = Cases(results, "W3").median((WR, 1), "wasted_executions")
    add("W3 zero wasted executions", fmt(wasted), check(wasted, lambda v: v == 0))
    w4 = Cases(results, "W4")
    for q, limit in (("p50", 1), ("p99", 3)):
        for path, how in (("latency_ms", "from the HTTP call"), ("own_latency_ms", "own stamps")):
            v = w4.median((WR, 1), f"{path}.{q}")
            add(f"W4 {q} ≤ {limit} ms ({how})", fmt(v), check(v, lambda x, lim=limit: x <= lim))
    w5 = Cases(results, "W5")
    lost = w5.median((WR, 1), "lost")
    add("W5 zero lost", fmt(lost), check(lost, lambda v: v == 0))
    last = w5.median((WR, 1), "kill_to_last_s")
    add("W5 last job ≤ lease + 1 s (6 s)", fmt(last), check(last, lambda v: v <= 6))
    w6 = results.get("w6")
    p50 = w6["executor_p50_us"] if w6 else None
    add("W6 executor p50 ≤ 20 µs", fmt(p50), check(p50, lambda v: v <= 20))
    share = ratio(wr_drain, w6["ceiling_jobs_per_s"]) if w6 else None
    add("W1 drain ≥ 60% of the W6 ceiling", fmt(share and 100 * share) + "%",
        check(share, lambda v: v >= 0.6))
    if not rows:
        return []
    return ["## Targets (issue #6), medians of this run", "",
            table(["target", "measured", "verdict"], rows)]


def header(results):
    meta = results["meta"]
    v = meta["versions"]
    m = meta["machine"]
    dirty = " (with uncommitted changes)" if v.get("git_dirty") else ""
    return [
        "# wasm-runner side by side: benchmark report",
        "",
        f"Generated by `bench/run` on {meta['date']}, {meta['mode']} mode, {meta['runs']} "
        f"interleaved run(s), {fmt(meta.get('seconds'))} s in all. Cells show the median and, "
        "in parentheses, the range over the runs.",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
        f"- wasm-runner: {v['wasm-runner']}, commit {(v['git_commit'] or '')[:12]}{dirty}",
        f"- {v['redis-server']}",
        f"- RQ {v['rq']}, Celery {v['celery']} (kombu {v['kombu']}), redis-py {v['redis-py']}, "
        f"Python {v['python']}",
        f"- BullMQ {v['bullmq']}, ioredis {v['ioredis']}, Node {v['node']}",
        "",
        "How each number is measured, and every configuration choice: bench/README.md.",
    ]


def write(results, path):
    sections = [header(results)]
    for make in (w1_section, w2_section, w3_section, w4_section, w5_section, w6_section,
                 memory_section, targets_section):
        part = make(results)
        if part:
            sections.append(part)
    text = "\n\n".join("\n".join(part) for part in sections) + "\n"
    Path(path).write_text(text)
