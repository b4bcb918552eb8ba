"""The scenarios of issue 6 (S1-S4), each run against one system at a time.

Every phase is bounded: a count (connections, messages) and a time (the loadgen's
deadlines, drain limits and the per-command timeouts here).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loadgen import LoadGen
from bench.procs import (
    CLIENT_CORE,
    SERVER_CORE,
    BenchError,
    free_port,
    nofile_limit,
    redis_flushall,
    rss_kb,
    tree_pids,
    wait_http_ok,
)
from bench.systems import Context, Deployment, System


@dataclass(frozen=True)
class Sizes:
    """Counts and durations; ``QUICK`` is the ~2 minute smoke run."""

    s1_subscribers: int = 1000
    s1_rate: int = 20
    s1_fixed_s: float = 15
    s1_saturate_s: float = 6
    s1_saturate_warmup_s: float = 1
    s1_saturate_repeats: int = 3
    s1_window: int = 32
    s2_users: int = 1000
    s2_rates: tuple[int, ...] = (2000, 5000)
    s2_seconds: float = 15
    s3_idle: int = 10_000
    s4_storm: int = 5000
    storm_concurrency: int = 100
    s3_max_target: int = 25_000
    s3_workers_target: int = 51_000  # one server of 3 worker processes, 4 load generators
    s3_max_seconds: float = 90
    drain_ms: int = 30_000
    warmup_s: float = 2
    profile_s: float = 8


FULL = Sizes()
QUICK = Sizes(
    s1_fixed_s=3,
    s1_saturate_s=3,
    s1_saturate_warmup_s=1,
    s1_saturate_repeats=1,
    s2_seconds=3,
    s3_idle=2000,
    s4_storm=1000,
    s3_max_target=4000,
    s3_workers_target=6000,
    s3_max_seconds=20,
    drain_ms=8000,
    warmup_s=1,
    profile_s=3,
)


def _open(
    lg: LoadGen, dep: Deployment, ctx: Context, n: int, dest: str, **kw: Any
) -> dict[str, Any]:
    spec = dep.client_spec(dest, n=n, concurrency=kw.pop("concurrency", 100), **kw)
    spec.setdefault("meterPids", {**dep.meter_pids(ctx)})
    timeout = spec.get("deadlineMs", 300_000) / 1000 + 30
    result = lg.call("open", timeout=timeout, **spec)
    return result


def _publisher(lg: LoadGen, dep: Deployment) -> int | None:
    reply = lg.call("publisher", timeout=60, **dep.publisher)
    pid: int | None = reply.get("pid")
    return pid


def _pids(dep: Deployment, ctx: Context, publisher_pid: int | None) -> dict[str, int]:
    pids = dep.meter_pids(ctx)
    if publisher_pid:
        pids["publisher"] = publisher_pid
    return pids


def _memory(dep: Deployment) -> dict[str, Any]:
    return {
        f"server-{i + 1}": {
            "rss_mb": round(rss_kb(p.pid) / 1024, 1),
        }
        for i, p in enumerate(dep.servers)
    }


def _settle(lg: LoadGen) -> None:
    """Clients closed: give servers a moment to notice before the next deployment."""
    lg.call("close", timeout=60)
    time.sleep(0.5)


def _teardown(ctx: Context, lg: LoadGen, dep: Deployment) -> None:
    with contextlib.suppress(BenchError):
        lg.call("closePublisher", timeout=30)
    with contextlib.suppress(BenchError):
        _settle(lg)
    dep.stop()
    with contextlib.suppress(OSError):
        redis_flushall(ctx.redis_url)


# -- S1: broadcast ------------------------------------------------------------------------
def s1_broadcast(ctx: Context, lg: LoadGen, system: System, sz: Sizes) -> dict[str, Any]:
    dep = system.deploy(ctx, 1)
    try:
        n = sz.s1_subscribers
        opened = _open(lg, dep, ctx, n, dep.topic_dest)
        if opened["opened"] != n:
            raise BenchError(f"S1: only {opened['opened']} of {n} subscribers: {opened}")
        pids = _pids(dep, ctx, _publisher(lg, dep))
        drain = sz.drain_ms
        lg.call(
            "rate",
            timeout=sz.warmup_s + drain / 1000 + 30,
            rate=sz.s1_rate,
            seconds=sz.warmup_s,
            phase=1,
            fanout=n,
            drainMs=drain,
        )
        fixed = lg.call(
            "rate",
            timeout=sz.s1_fixed_s + drain / 1000 + 30,
            rate=sz.s1_rate,
            seconds=sz.s1_fixed_s,
            phase=2,
            fanout=n,
            drainMs=drain,
            meterPids=pids,
        )
        fixed["memory"] = _memory(dep)
        runs = []
        for repeat in range(sz.s1_saturate_repeats):
            sat = lg.call(
                "saturate",
                timeout=sz.s1_saturate_s + drain / 1000 + 30,
                seconds=sz.s1_saturate_s,
                warmup=sz.s1_saturate_warmup_s,
                window=sz.s1_window,
                phase=3 + repeat,
                fanout=n,
                drainMs=drain,
                meterPids=pids,
            )
            sat["memory"] = _memory(dep)
            runs.append(sat)
        # This VM's speed drifts (neighbours on the host): report the median window.
        median = sorted(runs, key=lambda r: r["rate"])[len(runs) // 2]
        median["repeats"] = [round(r["rate"]) for r in runs]
        return {"subscribers": n, "fixed_rate": fixed, "saturation": median}
    finally:
        _teardown(ctx, lg, dep)


# -- S2: per-user across two nodes ----------------------------------------------------------
def s2_per_user(ctx: Context, lg: LoadGen, system: System, sz: Sizes) -> dict[str, Any]:
    dep = system.deploy(ctx, 2)
    try:
        n = sz.s2_users
        opened = _open(lg, dep, ctx, n, dep.user_dest)
        if opened["opened"] != n:
            raise BenchError(f"S2: only {opened['opened']} of {n} users: {opened}")
        pids = _pids(dep, ctx, _publisher(lg, dep))
        drain = sz.drain_ms
        lg.call(
            "rate",
            timeout=sz.warmup_s + drain / 1000 + 30,
            rate=500,
            seconds=sz.warmup_s,
            phase=1,
            fanout=1,
            target="user",
            users=n,
            drainMs=drain,
        )
        runs: dict[str, Any] = {}
        for index, rate in enumerate(sz.s2_rates):
            before = dep.redis_calls() if dep.redis_calls else None
            result = lg.call(
                "rate",
                timeout=sz.s2_seconds + drain / 1000 + 60,
                rate=rate,
                seconds=sz.s2_seconds,
                phase=2 + index,
                fanout=1,
                target="user",
                users=n,
                drainMs=drain,
                meterPids=pids,
            )
            result["memory"] = _memory(dep)
            if dep.redis_calls and before is not None:
                result["redisCalls"] = _calls_between(before, dep.redis_calls())
            runs[str(rate)] = result
            time.sleep(0.5)
        return {"users": n, "nodes": 2, "rates": runs}
    finally:
        _teardown(ctx, lg, dep)


def _calls_between(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, dict[str, int]]:
    """Each Redis master's commands called between two ``INFO commandstats`` readings."""
    return {
        name: {
            command: calls - before.get(name, {}).get(command, 0)
            for command, calls in sorted(counts.items())
            if calls > before.get(name, {}).get(command, 0)
        }
        for name, counts in sorted(after.items())
    }


# -- S3 + S4: connection storm, then idle sessions -----------------------------------------
def s34_connections(ctx: Context, lg: LoadGen, system: System, sz: Sizes) -> dict[str, Any]:
    """S4: ``s4_storm`` connects + subscribes, timed; S3: then up to ``s3_idle`` idle
    subscribed sessions on one process, and the server's RSS growth per session."""
    dep = system.deploy(ctx, 1)
    try:
        server = dep.servers[0]
        time.sleep(1.0)
        base_kb = rss_kb(server.pid)
        storm = _open(
            lg,
            dep,
            ctx,
            sz.s4_storm,
            dep.user_dest,
            concurrency=sz.storm_concurrency,
            deadlineMs=240_000,
        )
        rest = _open(
            lg,
            dep,
            ctx,
            sz.s3_idle - sz.s4_storm,
            dep.user_dest,
            userOffset=sz.s4_storm,
            concurrency=sz.storm_concurrency,
            deadlineMs=300_000,
        )
        time.sleep(3.0)
        live = lg.call("count")["open"]
        rss = rss_kb(server.pid)
        sessions = storm["opened"] + rest["opened"]
        return {
            "storm": {
                "connections": sz.s4_storm,
                "concurrency": sz.storm_concurrency,
                **storm,
            },
            "idle": {
                "target": sz.s3_idle,
                "sessions": sessions,
                "live_after_3s": live,
                "rss_base_mb": round(base_kb / 1024, 1),
                "rss_mb": round(rss / 1024, 1),
                "kb_per_session": round((rss - base_kb) / max(sessions, 1), 2),
                "open_rest": rest,
            },
        }
    finally:
        _teardown(ctx, lg, dep)


def s3_max(
    ctx: Context, lg: LoadGen, system: System, sz: Sizes, extra: list[LoadGen]
) -> dict[str, Any]:
    """The most idle subscribed sessions one server holds, opened from several loadgen
    processes and 127.0.0.x source addresses; bounded by ``s3_max_seconds``.

    ``tidings``: one node process, from 2 load generators; ``tidings-workers``: one server
    of 3 worker processes (``--workers 3``, one port), from 4 (each load generator is a
    process too, under the same open-file limit)."""
    workers = system.key == "tidings-workers"
    target = sz.s3_workers_target if workers else sz.s3_max_target
    gens = [lg, *extra] if workers else [lg, *extra[:1]]
    dep = system.deploy(ctx, 1)
    try:
        server = dep.servers[0]
        time.sleep(1.0)
        base_kb = sum(rss_kb(pid) for pid in tree_pids(server.pid))
        per = target // len(gens)
        waits = []
        for index, gen in enumerate(gens):
            spec = dep.client_spec(
                dep.user_dest,
                n=per,
                userOffset=index * per,
                concurrency=100,
                sources=[f"127.0.0.{2 + 2 * index + k}" for k in range(2)],
                timeoutMs=5000,
                stopAfterFailures=200,
                deadlineMs=int(sz.s3_max_seconds * 1000),
                meterPids=dep.meter_pids(ctx),
            )
            waits.append((gen, gen.send("open", **spec)))
        results = [gen.wait(ident, sz.s3_max_seconds + 60) for gen, ident in waits]
        time.sleep(2.0)
        live = sum(gen.call("count")["open"] for gen in gens)
        # --workers 3: the parent, 3 workers and multiprocessing's resource tracker
        processes = tree_pids(server.pid)
        alive = server.alive() and len(processes) >= (5 if workers else 1)
        healthy = False
        if alive and dep.proto == "stomp" and dep.flavor == "tidings":
            port = dep.targets[0]["port"]
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp,
            ):
                healthy = resp.status == 200
        errors: Counter[str] = Counter()
        for result in results:
            errors.update(result["errors"])
        opened = sum(r["opened"] for r in results)
        rss = sum(rss_kb(pid) for pid in processes)
        return {
            "target": target,
            "opened": opened,
            "failed": sum(r["failed"] for r in results),
            "errors": dict(errors),
            "live_after_2s": live,
            "seconds": max(r["elapsedMs"] for r in results) / 1000,
            "server_alive": alive,
            "server_processes": len(processes),
            "healthz_ok_at_max": healthy,
            "server_rss_mb": round(rss / 1024, 1),
            "kb_per_session": round((rss - base_kb) / max(opened, 1), 2),
            "server_nofile_limit": nofile_limit(processes[-1]),
            "loadgens": len(gens),
        }
    finally:
        for gen in extra:
            with contextlib.suppress(BenchError):
                gen.call("close", timeout=60)
        _teardown(ctx, lg, dep)


# -- profiles ------------------------------------------------------------------------------
def _pyspy(ctx: Context, pid: int, seconds: float, raw: Path) -> subprocess.Popen[bytes]:
    pyspy = Path(ctx.python).with_name("py-spy")
    return subprocess.Popen(
        [
            *("taskset", "-c", CLIENT_CORE, str(pyspy), "record", "--pid", str(pid)),
            *("--duration", str(int(seconds)), "--rate", "200", "--format", "raw"),
            *("--output", str(raw), "--nonblocking"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _pyspy_result(spy: subprocess.Popen[bytes], raw: Path) -> dict[str, Any]:
    try:
        _, err = spy.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        spy.kill()
        _, err = spy.communicate()
    if not raw.exists():
        return {"error": "py-spy: " + (err or b"").decode(errors="replace")[-500:]}
    return summarize_profile(raw)


def profile(
    ctx: Context, lg: LoadGen, system: System, sz: Sizes, *, out: Path, kind: str
) -> dict[str, Any] | None:
    """py-spy on a Tidings process while it does one scenario's work: where its core goes.

    ``kind``: "s1" (saturation, 1,000 subscribers), "s2" (node 1 of 2 at the highest S2
    rate), "s4" (the connection storm).
    """
    if not Path(ctx.python).with_name("py-spy").exists():
        return None
    raw = out / f"profile-{kind}-{system.key}.txt"
    seconds = sz.profile_s
    dep = system.deploy(ctx, 2 if kind == "s2" else 1)
    try:
        pid = dep.servers[0].pid
        result: dict[str, Any]
        if kind == "s4":
            spy = _pyspy(ctx, pid, seconds, raw)
            time.sleep(0.5)
            storm = _open(
                lg, dep, ctx, sz.s4_storm, dep.user_dest, concurrency=sz.storm_concurrency
            )
            result = {"what": f"{sz.s4_storm:,} connects + subscribes", "storm": storm}
            result.update(_pyspy_result(spy, raw))
            return result
        n = sz.s2_users if kind == "s2" else sz.s1_subscribers
        _open(lg, dep, ctx, n, dep.user_dest if kind == "s2" else dep.topic_dest)
        _publisher(lg, dep)
        if kind == "s2":
            rate = max(sz.s2_rates)
            lg.call("rate", rate=500, seconds=1, phase=1, fanout=1, target="user", users=n)
            spy = _pyspy(ctx, pid, seconds, raw)
            run = lg.call(
                "rate",
                timeout=seconds + sz.drain_ms / 1000 + 60,
                rate=rate,
                seconds=seconds,
                phase=5,
                fanout=1,
                target="user",
                users=n,
                drainMs=sz.drain_ms,
                meterPids=dep.meter_pids(ctx),
            )
            result = {
                "what": f"node 1 of 2, {rate:,} msg/s to random users",
                "p99_us_while_profiled": (run.get("latencyUs") or {}).get("p99"),
                "cpu_while_profiled": run["cpuPct"],
            }
        else:
            lg.call("rate", rate=sz.s1_rate, seconds=1, phase=1, fanout=n, drainMs=sz.drain_ms)
            spy = _pyspy(ctx, pid, seconds, raw)
            sat = lg.call(
                "saturate",
                timeout=seconds + sz.drain_ms / 1000 + 30,
                seconds=seconds,
                warmup=0.5,
                window=sz.s1_window,
                phase=4,
                fanout=n,
                drainMs=sz.drain_ms,
            )
            result = {"what": "S1 saturation", "rate_while_profiled": sat["rate"]}
        result.update(_pyspy_result(spy, raw))
        return result
    finally:
        _teardown(ctx, lg, dep)


def memory_breakdown(
    ctx: Context, lg: LoadGen, system: System, sz: Sizes, out: Path
) -> dict[str, Any]:
    """Where an idle session's Python memory goes: Tidings under tracemalloc, S3's sessions."""
    del system  # always Tidings with the Redis broker, as in S3
    report_file = out / "tracemalloc-s3.json"
    report_file.unlink(missing_ok=True)
    port = free_port()
    script = Path(__file__).resolve().parent / "tracemalloc_serve.py"
    proc = ctx.reg.start(
        f"tidings-tracemalloc-{port}",
        [
            *(ctx.python, str(script), str(report_file), "--host", "127.0.0.1"),
            *("--port", str(port), "--broker", ctx.redis_url, "--log-level", "warning"),
        ],
        core=SERVER_CORE,
        log_dir=ctx.log_dir,
        env={"PYTHONUNBUFFERED": "1", **ctx.tidings_env},
        cwd=ctx.work_dir,
    )
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", proc)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
        base_kb = rss_kb(proc.pid)
        n = min(sz.s3_idle, 5000)
        spec = {
            "proto": "stomp",
            "flavor": "tidings",
            "targets": [{"port": port, "path": "/stomp"}],
            "destination": "/user/{u}/message",
            "n": n,
            "concurrency": 100,
        }
        opened = lg.call("open", timeout=300, **spec)["opened"]
        time.sleep(2.0)
        rss_growth = rss_kb(proc.pid) - base_kb
        os.kill(proc.pid, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        while not report_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        if not report_file.exists():
            return {"error": "tracemalloc report not written"}
        data = json.loads(report_file.read_text())
        per = max(opened, 1)
        return {
            "sessions": opened,
            "rss_kb_per_session": round(rss_growth / per, 2),
            "traced_kb_per_session": round(data["total_lineno"] / 1024 / per, 2),
            "by_line": [
                [where, round(size / 1024 / per, 2), count / per]
                for where, size, count in data["lineno"][:15]
            ],
            "by_file": [
                [where, round(size / 1024 / per, 2), count / per]
                for where, size, count in data["filename"][:12]
            ],
        }
    finally:
        with contextlib.suppress(BenchError):
            _settle(lg)
        ctx.reg.stop(proc)
        with contextlib.suppress(OSError):
            redis_flushall(ctx.redis_url)


def summarize_profile(raw: Path, top: int = 15) -> dict[str, Any]:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame_name(f) for f in stack.split(";")]
        frames = [f for f in frames if f]
        if not frames:
            continue
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}
    return {
        "samples": total,
        "raw_file": raw.name,
        "self": [[n, round(100 * c / total, 1)] for n, c in self_counts.most_common(top)],
        "inclusive": [[n, round(100 * c / total, 1)] for n, c in incl_counts.most_common(top)],
    }


def _frame_name(frame: str) -> str:
    """``deliver (tidings/hub.py:120)`` → ``deliver (tidings/hub.py)``; drops process labels."""
    frame = frame.strip()
    if frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name
