# ruff: noqa: RUF001 - the report uses typographic multiplication signs and dashes
"""Render ``benchmarks.json`` as ``benchmarks.md`` plus ``bench-*.png`` charts (matplotlib).

``python -m bench.run --report-only docs/benchmarks.json`` re-renders without measuring.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.procs import BACKING, interference

PEERS = ["socketio-node", "python-socketio", "rabbitmq"]
COLORS = {
    "tidings": "#1f6feb",
    "tidings-direct": "#0a3069",
    "tidings-batch": "#8250df",
    "tidings-memory": "#58a6ff",
    "tidings-amqp-pg": "#6e7781",
    "socketio-node": "#2da44e",
    "python-socketio": "#bf8700",
    "rabbitmq": "#cf222e",
}
SHORT = {
    "tidings": "Tidings (Redis)",
    "tidings-direct": "Tidings (Redis), direct",
    "tidings-batch": "Tidings (Redis), HTTP batched",
    "tidings-memory": "Tidings (memory)",
    "tidings-amqp-pg": "Tidings (RabbitMQ + PostgreSQL)",
    "socketio-node": "Node socket.io",
    "python-socketio": "python-socketio",
    "rabbitmq": "RabbitMQ Web-STOMP",
}

Result = dict[str, Any]

TIDINGS_S2_PATHS = [
    ("tidings", "HTTP API"),
    ("tidings-batch", "HTTP API, batched"),
    ("tidings-direct", "direct publisher"),
]
"""S2's Tidings publish paths and how the targets table names them."""


# -- number formatting ---------------------------------------------------------------------
def k(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 1000:
        return f"{value / 1000:,.1f}k"
    return f"{value:,.0f}"


def ms(us: float | None) -> str:
    if us is None:
        return "–"
    value = us / 1000
    if value >= 1000:
        return f"{value / 1000:,.2f} s"
    if value >= 100:
        return f"{value:,.0f} ms"
    if value >= 10:
        return f"{value:,.1f} ms"
    return f"{value:,.2f} ms"


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}%"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"


def _ok(result: Result | None) -> bool:
    return bool(result) and "error" not in (result or {})


def _server_cpu(cpu: dict[str, float] | None) -> float | None:
    if not cpu:
        return None
    values = [v for name, v in cpu.items() if name.startswith("server-")]
    return sum(values) if values else None


def _redis_cpu(cpu: dict[str, float] | None) -> float | None:
    """Every backing server's CPU % summed: one Redis, a cluster's masters, or RabbitMQ
    and PostgreSQL (each with its process tree)."""
    values = [v for name, v in (cpu or {}).items() if name.startswith(BACKING)]
    return sum(values) if values else None


def _redis_cpus(cpu: dict[str, float]) -> str:
    """One Redis' CPU, or a cluster's masters' (RabbitMQ's, PostgreSQL's) as "a + b"."""
    names = sorted(name for name in cpu if name.startswith(BACKING))
    return " + ".join(pct(cpu[name]) for name in names) if names else pct(None)


def _lat(result: Result | None, key: str) -> float | None:
    if not result or not result.get("latencyUs"):
        return None
    value: float = result["latencyUs"][key]
    return value


# -- one line per run, for the progress log ---------------------------------------------------
def one_line(scenario: str, result: Result) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    if scenario == "s1":
        fixed, sat = result["fixed_rate"], result["saturation"]
        return (
            f"saturation {k(sat['rate'])}/s (server {pct(_server_cpu(sat['cpuPct']))}, "
            f"loadgen {pct(sat['cpuPct'].get('loadgen'))}); 20 msg/s p50 "
            f"{ms(_lat(fixed, 'p50'))} p99 {ms(_lat(fixed, 'p99'))}, lost {fixed['lost']}"
        )
    if scenario == "s2":
        parts = [
            f"{rate}/s: lost {r['lost']} dup {r['duplicates']} p50 {ms(_lat(r, 'p50'))} "
            f"p99 {ms(_lat(r, 'p99'))}"
            for rate, r in result["rates"].items()
        ]
        return "; ".join(parts)
    if scenario == "s34":
        storm, idle = result["storm"], result["idle"]
        return (
            f"storm {storm['opened']} in {storm['elapsedMs'] / 1000:.2f} s "
            f"({storm['rate']:.0f}/s); idle {idle['sessions']} sessions, "
            f"{idle['kb_per_session']:.1f} KB each"
        )
    if scenario == "s3max":
        return (
            f"held {result['opened']} sessions (errors {result['errors']}), "
            f"fd limit {result['server_nofile_limit']}"
        )
    if scenario.startswith("profile"):
        top = ", ".join(f"{name} {share}%" for name, share in result.get("self", [])[:3])
        return f"{result.get('samples', 0)} samples; top self time: {top}"
    if scenario == "memory":
        return (
            f"{result['sessions']} sessions: RSS {result['rss_kb_per_session']} KB, "
            f"Python heap {result['traced_kb_per_session']} KB per session"
        )
    return ""


# -- targets -------------------------------------------------------------------------------
def targets(data: Result) -> list[tuple[str, str, str]]:
    """(target, figure in this run, verdict) for each target of issue 6."""
    res = data["results"]
    rows: list[tuple[str, str, str]] = []
    s1 = res.get("s1", {})
    t, t_mem, sio = s1.get("tidings"), s1.get("tidings-memory"), s1.get("socketio-node")
    if _ok(t) and _ok(sio):
        tr, sr = t["saturation"]["rate"], sio["saturation"]["rate"]
        need = 2 * sr
        verdict = (
            f"**met** ({tr / sr:.2f}×)"
            if tr >= need
            else f"**missed** by {k(need - tr)}/s ({100 * (need - tr) / need:.0f}% short)"
        )
        figure = f"{k(tr)}/s vs {k(sr)}/s = {tr / sr:.2f}×"
        if _ok(t_mem):
            figure += f" (memory broker: {k(t_mem['saturation']['rate'])}/s = "
            figure += f"{t_mem['saturation']['rate'] / sr:.2f}×)"
        rows.append(("S1 saturation ≥ 2× Node socket.io, one server core", figure, verdict))
    if _ok(t):
        p99 = _lat(t["fixed_rate"], "p99")
        if p99 is not None:
            verdict = (
                f"**met** ({20 - p99 / 1000:.1f} ms to spare)"
                if p99 <= 20_000
                else f"**missed** by {ms(p99 - 20_000)}"
            )
            figure = f"p99 {ms(p99)} (p50 {ms(_lat(t['fixed_rate'], 'p50'))})"
            if _ok(t_mem):
                figure += f"; memory broker p99 {ms(_lat(t_mem['fixed_rate'], 'p99'))}"
            rows.append(("S1 at 20k deliveries/s: p99 ≤ 20 ms", figure, verdict))
    rows += _s2_targets(res.get("s2", {}))
    s34 = res.get("s34", {})
    t3, sio3 = s34.get("tidings"), s34.get("socketio-node")
    if _ok(t3):
        kb = t3["idle"]["kb_per_session"]
        verdict = (
            f"**met** ({12 - kb:.1f} KB to spare)"
            if kb <= 12
            else f"**missed** by {kb - 12:.1f} KB"
        )
        rows.append(
            (
                "S3: ≤ 12 KB per idle subscribed session",
                f"{kb:.1f} KB at {t3['idle']['sessions']:,} sessions",
                verdict,
            )
        )
    tmax = res.get("s3max", {}).get("tidings")
    wmax = res.get("s3max", {}).get("tidings-workers")
    if _ok(tmax):
        held = tmax["opened"]
        limit = tmax.get("server_nofile_limit")
        verdict = (
            "**met**"
            if held >= 50_000
            else f"**not shown** on one process: {50_000 - held:,} short; the sandbox caps a "
            f"process at {limit:,} open files (hard limit, no CAP_SYS_RESOURCE to raise it)"
        )
        result = f"{held:,} held by one process"
        if _ok(wmax):
            result += f"; {wmax['opened']:,} by one server of 3 worker processes"
            if wmax["opened"] >= 50_000 and wmax["server_alive"]:
                verdict += (
                    f"; one `--workers 3` server on the same core held {wmax['opened']:,} "
                    f"({wmax['kb_per_session']:.1f} KB each)"
                )
        rows.append(("S3: ≥ 50,000 sessions on one node", result, verdict))
    if _ok(t3) and _ok(sio3):
        ts, ss = t3["storm"]["elapsedMs"] / 1000, sio3["storm"]["elapsedMs"] / 1000
        verdict = (
            f"**met** ({ss / ts:.2f}× faster)" if ts < ss else f"**missed** by {ts - ss:.2f} s"
        )
        rows.append(
            (
                f"S4: {t3['storm']['connections']:,} connects + subscribes faster than socket.io",
                f"{ts:.2f} s vs {ss:.2f} s",
                verdict,
            )
        )
    return rows


def _s2_targets(s2: dict[str, Result]) -> list[tuple[str, str, str]]:
    """S2's targets, judged on each Tidings publish path that ran."""
    rows: list[tuple[str, str, str]] = []
    sio = s2.get("socketio-node")
    for key, path in TIDINGS_S2_PATHS:
        t = s2.get(key)
        if not _ok(t):
            continue
        lost = sum(r["lost"] for r in t["rates"].values())
        dups = sum(r["duplicates"] for r in t["rates"].values())
        sent = sum(r["published"] for r in t["rates"].values())
        rows.append(
            (
                f"S2 ({path}): nothing lost",
                f"{sent:,} published, {lost} lost, {dups} duplicated",
                "**met**" if lost == 0 and dups == 0 else "**missed**",
            )
        )
        if not _ok(sio):
            continue
        for rate, r in t["rates"].items():
            tp, sp = _lat(r, "p99"), _lat(sio["rates"].get(rate), "p99")
            if tp is None or sp is None:
                continue
            verdict = (
                f"**met** ({sp / tp:.1f}× lower)"
                if tp <= sp
                else f"**missed** by {ms(tp - sp)} ({tp / sp:.1f}×)"
            )
            rows.append(
                (
                    f"S2 ({path}) at {int(rate):,} msg/s: p99 ≤ Node socket.io's",
                    f"{ms(tp)} vs {ms(sp)}",
                    verdict,
                )
            )
    return rows


def missed_notes(data: Result) -> list[str]:
    """What limits each missed target, from this run's figures (issue 6: say what limits it)."""
    verdicts = {target: verdict for target, _, verdict in targets(data)}
    res = data["results"]
    notes: list[str] = []
    s2 = res.get("s2", {})
    sio2 = s2.get("socketio-node")

    def missed(prefix: str) -> bool:
        return any(t.startswith(prefix) and v.startswith("**missed") for t, v in verdicts.items())

    s1 = res.get("s1", {})
    t1, sio1 = s1.get("tidings"), s1.get("socketio-node")
    if missed("S1 at 20k") and _ok(t1) and _ok(sio1):
        f, sf = t1["fixed_rate"], sio1["fixed_rate"]
        notes.append(
            "- **S1 at 20 msg/s**: the p99 is the first subscriber's latency plus the spread to "
            f"the last: first p99 {ms(f['firstDeliveryUs']['p99'])} (socket.io "
            f"{ms(sf['firstDeliveryUs']['p99'])}), spread p99 {ms(f['spreadUs']['p99'])} "
            f"(socket.io {ms(sf['spreadUs']['p99'])}). The spread is mostly the load "
            "generator reading 1,000 frames (the measurement floor in S1); the first "
            "subscriber's tail is Tidings' own (HTTP publish, Redis, back to the node, and "
            "whatever stalls the node's loop meanwhile) and is not pinned down yet."
        )
    direct = s2.get("tidings-direct")
    for key, path in TIDINGS_S2_PATHS[:2]:  # the HTTP API, one message or a tick's per request
        http = s2.get(key)
        if not (missed(f"S2 ({path}) at") and _ok(http) and _ok(sio2)):
            continue
        top = max(http["rates"], key=int)
        cpu = http["rates"][top]["cpuPct"]
        busy = cpu.get("server-1", 0) + cpu.get("server-2", 0) + cpu.get("redis", 0)
        per_t = _cpu_per_message(http["rates"][top])
        per_s = _cpu_per_message(sio2["rates"][top])
        h, s = http["rates"][top], sio2["rates"][top]
        queue = (
            ", saturated: the queue behind it is the latency"
            if busy >= 90
            else f" (p50 {ms(_lat(h, 'p50'))} vs {ms(_lat(s, 'p50'))})"
        )
        notes.append(
            f"- **S2, {path}**: one more hop than socket.io's emitter. The back end's request "
            "goes to a node, which runs the inbox script on Redis (store, trim, announce) and "
            "answers 202; Redis then hands the message to the node that holds the user. "
            f"{per_t:.0f} µs of server CPU per message at {int(top):,} msg/s against "
            f"socket.io's {per_s:.0f} µs (its emitter writes to Redis from the back end's "
            "process, so its servers only deliver). Both nodes and Redis share core 0, which "
            f"was {busy:.0f}% busy{queue}; Redis, running the inbox script that makes the "
            f"message durable, took {cpu.get('redis', 0):.0f}% of it (socket.io's PUBLISH: "
            f"{s['cpuPct'].get('redis', 0):.0f}%). The S2 profile below shows the node's share "
            "(one message per request). The direct publisher is the same shape as socket.io's "
            "emitter."
        )
    if missed("S2 (direct publisher) at") and _ok(direct) and _ok(sio2):
        top = max(direct["rates"], key=int)
        d, s = direct["rates"][top], sio2["rates"][top]
        notes.append(
            f"- **S2, direct publisher**: the median is close ({ms(_lat(d, 'p50'))} vs "
            f"{ms(_lat(s, 'p50'))} at {int(top):,} msg/s), the tail is not (p90 "
            f"{ms(_lat(d, 'p90'))} vs {ms(_lat(s, 'p90'))}, p99 {ms(_lat(d, 'p99'))} vs "
            f"{ms(_lat(s, 'p99'))}). The publisher helper (Python, its own process) used "
            f"{d['cpuPct'].get('publisher', 0):.0f}% of the client core it shares with the "
            f"load generator ({d['cpuPct'].get('core1', 0):.0f}% busy in all); socket.io's "
            "emitter runs inside the load generator. Redis runs the inbox script per "
            "message (store, trim, announce: what makes the message durable): "
            f"{d['cpuPct'].get('redis', 0):.0f}% of core 0 against "
            f"{s['cpuPct'].get('redis', 0):.0f}% for socket.io's PUBLISH."
        )
    s34 = res.get("s34", {})
    t3, sio3 = s34.get("tidings"), s34.get("socketio-node")
    if missed("S4") and _ok(t3) and _ok(sio3):
        tc, sc = t3["storm"]["cpuPct"], sio3["storm"]["cpuPct"]
        notes.append(
            "- **S4**: round trips. Before its RECEIPT a Tidings session makes two Redis round "
            "trips (its presence entry on CONNECT; the SUBSCRIBE of its user's channel, "
            "confirmed by Redis so that no message published after the RECEIPT is missed), "
            "while socket.io's adapter joins a room in memory "
            f"(Redis CPU {tc.get('redis', 0):.0f}% vs {sc.get('redis', 0):.0f}%). "
            f"The server used {tc.get('server-1', 0):.0f}% of its core against socket.io's "
            f"{sc.get('server-1', 0):.0f}%; the S4 profile below shows where. The garbage "
            "collector is the other part: every session adds ~26 tracked objects that each "
            "full collection rescans while the heap grows (`TIDINGS_GC_LOG=1`, "
            "docs/decisions.md: ~0.5 s of a storm before the threshold change)."
        )
    return notes


def _cpu_per_message(rate_result: Result) -> float:
    cpu = rate_result["cpuPct"]
    busy = (cpu.get("server-1", 0) + cpu.get("server-2", 0)) / 100
    return 1e6 * busy * rate_result["publishSeconds"] / max(1, rate_result["published"])


# -- charts ----------------------------------------------------------------------------------
def _plt() -> Any:
    import matplotlib  # noqa: PLC0415 - optional (bench extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _bar_chart(
    out: Path,
    name: str,
    *,
    title: str,
    xlabel: str,
    rows: list[tuple[str, float]],
    fmt: Callable[[float], str],
) -> str | None:
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.4))
    labels = [SHORT.get(key, key) for key, _ in rows]
    values = [v for _, v in rows]
    ax.barh(labels, values, color=[COLORS.get(key, "#888") for key, _ in rows])
    ax.invert_yaxis()
    for index, value in enumerate(values):
        ax.text(value, index, " " + fmt(value), va="center", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.set_xlim(0, max(values) * 1.25 if max(values) > 0 else 1)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def _latency_cdf(out: Path, s1: dict[str, Result]) -> str | None:
    curves = [(key, r["fixed_rate"]["cdfUs"]) for key, r in s1.items() if _ok(r)]
    curves = [(key, c) for key, c in curves if c]
    if not curves:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for key, points in curves:
        xs = [max(p[1], 1) / 1000 for p in points]
        ys = [100 * p[0] for p in points]
        ax.plot(xs, ys, label=SHORT.get(key, key), color=COLORS.get(key), linewidth=2)
    ax.set_xscale("log")
    ax.axvline(20, color="#666", linestyle=":", linewidth=1)
    ax.text(20, 3, " 20 ms target", fontsize=8, color="#666")
    ax.set_xlabel("latency, ms (log scale): publisher's scheduled time → frame read by client")
    ax.set_ylabel("% of deliveries")
    ax.set_title("S1: 1,000 subscribers, 20 msg/s (20k deliveries/s): latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "bench-s1-latency.png", dpi=110)
    plt.close(fig)
    return "bench-s1-latency.png"


def _s2_chart(out: Path, s2: dict[str, Result]) -> str | None:
    systems = [key for key, r in s2.items() if _ok(r)]
    if not systems:
        return None
    rates = list(s2[systems[0]]["rates"])
    plt = _plt()
    fig, axes = plt.subplots(1, len(rates), figsize=(4.5 * len(rates), 4.2), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        labels, p50s, p99s = [], [], []
        for key in systems:
            r = s2[key]["rates"].get(rate)
            if not r or not r.get("latencyUs"):
                continue
            labels.append(SHORT.get(key, key))
            p50s.append(r["latencyUs"]["p50"] / 1000)
            p99s.append(r["latencyUs"]["p99"] / 1000)
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], p50s, width=0.4, label="p50", color="#8c959f")
        ax.bar([x + 0.2 for x in xs], p99s, width=0.4, label="p99", color="#1f6feb")
        ax.set_yscale("log")
        ax.set_xticks(list(xs))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("latency, ms (log)")
        ax.set_title(f"{int(rate):,} msg/s to random users")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("S2: 1,000 users over 2 server processes")
    fig.tight_layout()
    fig.savefig(out / "bench-s2-latency.png", dpi=110)
    plt.close(fig)
    return "bench-s2-latency.png"


def _profile_chart(out: Path, name: str, title: str, rows: list[list[Any]]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(9, 0.42 * len(rows) + 1.5))
    ax.barh([r[0] for r in rows], [r[1] for r in rows], color="#1f6feb")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=8)
    ax.set_xlabel("% of samples (self time)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def charts(data: Result, out: Path) -> dict[str, str]:
    res = data["results"]
    made: dict[str, str] = {}
    s1 = res.get("s1", {})
    name = _bar_chart(
        out,
        "bench-s1-saturation.png",
        title="S1: deliveries/s at saturation (1,000 subscribers, one server core)",
        xlabel="deliveries per second",
        rows=[(key, r["saturation"]["rate"]) for key, r in s1.items() if _ok(r)],
        fmt=lambda v: f"{k(v)}/s",
    )
    if name:
        made["s1_saturation"] = name
    name = _latency_cdf(out, s1)
    if name:
        made["s1_latency"] = name
    name = _s2_chart(out, res.get("s2", {}))
    if name:
        made["s2"] = name
    s34 = {key: r for key, r in res.get("s34", {}).items() if _ok(r)}
    name = _bar_chart(
        out,
        "bench-s3-memory.png",
        title=f"S3: server RSS per idle subscribed session ({data['sizes']['s3_idle']:,} sessions)",
        xlabel="KB per session",
        rows=[(key, r["idle"]["kb_per_session"]) for key, r in s34.items()],
        fmt=lambda v: f"{v:.1f} KB",
    )
    if name:
        made["s3"] = name
    name = _bar_chart(
        out,
        "bench-s4-storm.png",
        title=f"S4: {data['sizes']['s4_storm']:,} connects + subscribes "
        f"({data['sizes']['storm_concurrency']} in flight)",
        xlabel="sessions per second",
        rows=[(key, r["storm"]["rate"]) for key, r in s34.items()],
        fmt=lambda v: f"{v:,.0f}/s",
    )
    if name:
        made["s4"] = name
    for scenario, key, name, title in PROFILES:
        prof = res.get(scenario, {}).get(key)
        if _ok(prof) and prof.get("self"):
            made[f"{scenario}:{key}"] = _profile_chart(out, name, title, prof["self"][:12])
    return made


PROFILES = [
    (
        "profile_s1",
        "tidings-memory",
        "bench-profile-s1.png",
        "Tidings (memory broker) during S1 saturation (py-spy, self time)",
    ),
    (
        "profile_s1",
        "tidings",
        "bench-profile-s1-redis.png",
        "Tidings (Redis broker) during S1 saturation (py-spy, self time)",
    ),
    (
        "profile_s2",
        "tidings",
        "bench-profile-s2.png",
        "Tidings node 1 during S2 at 5,000 msg/s (py-spy, self time)",
    ),
    (
        "profile_s4",
        "tidings",
        "bench-profile-s4.png",
        "Tidings during the S4 connection storm (py-spy, self time)",
    ),
]


# -- markdown ----------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _label(data: Result, key: str) -> str:
    label: str = data["systems"].get(key, {}).get("label", key)
    return label


def _errors(data: Result, scenario: str) -> list[str]:
    return [
        f"- {_label(data, key)}: {r['error']}"
        for key, r in data["results"].get(scenario, {}).items()
        if not _ok(r)
    ]


def _s1(data: Result) -> list[str]:
    s1 = data["results"].get("s1", {})
    rows = []
    base = s1.get("tidings")
    base_rate = base["saturation"]["rate"] if _ok(base) else None
    for key, r in s1.items():
        if not _ok(r):
            continue
        sat, fixed = r["saturation"], r["fixed_rate"]
        spread = ""
        if len(sat.get("repeats", [])) > 1:
            spread = f" ({k(min(sat['repeats']))}–{k(max(sat['repeats']))})"
        rows.append(
            [
                _label(data, key),
                f"**{k(sat['rate'])}/s**{spread}",
                ratio(base_rate, sat["rate"]) if key != "tidings" else "1×",
                pct(_server_cpu(sat["cpuPct"])),
                pct(sat["cpuPct"].get("redis")),
                pct(sat["cpuPct"].get("loadgen")),
                f"{ms(_lat(fixed, 'p50'))} / **{ms(_lat(fixed, 'p99'))}** / "
                f"{ms(_lat(fixed, 'max'))}",
                pct(_server_cpu(fixed["cpuPct"])),
                f"{fixed['lost']:,}",
                f"{sat['memory']['server-1']['rss_mb']:.0f} MB",
            ]
        )
    lines = _table(
        [
            "system",
            "saturation, deliveries/s: median (range)",
            "Tidings (Redis) ÷ this",
            "server CPU",
            "Redis CPU",
            "loadgen CPU",
            "20 msg/s: p50 / p99 / max",
            "server CPU at 20 msg/s",
            "lost at 20 msg/s",
            "server RSS",
        ],
        rows,
    )
    return lines + _errors(data, "s1")


def _s2(data: Result) -> list[str]:
    s2 = data["results"].get("s2", {})
    rows = []
    for key, r in s2.items():
        if not _ok(r):
            continue
        for rate, x in r["rates"].items():
            cpu = x["cpuPct"]
            servers = " + ".join(
                pct(v) for name, v in sorted(cpu.items()) if name.startswith("server-")
            )
            total = _server_cpu(cpu) or 0.0
            per_msg = f"{total / 100 * 1e6 / x['achievedRate']:.0f} µs"
            redis = _redis_cpu(cpu)
            redis_per_msg = (
                f"{redis / 100 * 1e6 / x['achievedRate']:.0f} µs" if redis is not None else "–"
            )
            rows.append(
                [
                    _label(data, key),
                    f"{int(rate):,}",
                    f"{x['achievedRate']:,.0f}",
                    f"{x['published']:,}",
                    f"{x['unique']:,}",
                    f"{x['lost']:,}",
                    f"{x['duplicates']:,}",
                    ms(_lat(x, "p50")),
                    f"**{ms(_lat(x, 'p99'))}**",
                    ms(_lat(x, "max")),
                    servers,
                    per_msg,
                    _redis_cpus(cpu),
                    redis_per_msg,
                    pct(cpu.get("loadgen")),
                    pct(cpu.get("publisher")),
                ]
            )
    lines = _table(
        [
            "system",
            "target msg/s",
            "published msg/s",
            "published",
            "delivered",
            "lost",
            "dup",
            "p50",
            "p99",
            "max",
            "server CPU (node 1 + node 2)",
            "server CPU per message",
            "Redis CPU",
            "Redis CPU per message",
            "loadgen CPU",
            "publisher CPU",
        ],
        rows,
    )
    lines += [
        "",
        "Server CPU per message is both nodes' CPU over the window divided by the messages "
        "published: it includes taking the publish in (Tidings over HTTP: an HTTP request "
        "and the inbox script call; Tidings' direct publisher and the others: reading it "
        "from Redis or AMQP), routing it and delivering it. Tidings' direct publisher, the "
        "Socket.IO emitters and python-socketio's write-only manager do their encoding in "
        "the back end's process (here the load generator or the publisher helper, on core 1). "
        "Redis CPU per message likewise: every Redis process' CPU (a cluster's masters "
        "summed; for RabbitMQ + PostgreSQL, RabbitMQ's node and then the PostgreSQL cluster, "
        "the postmaster with all its backends) over the messages published.",
        "",
    ]
    lines += _s2_spread(data)
    rates = list(next((r["rates"] for r in s2.values() if _ok(r)), {}))
    for key, path in TIDINGS_S2_PATHS:
        lines += _ratio_lines(
            data,
            "s2",
            f"p99 ({path})",
            lambda r, rate: _lat(r["rates"].get(rate), "p99"),
            rates,
            base_key=key,
        )
    return lines + _errors(data, "s2")


SPREAD_COMMANDS = ("evalsha", "eval", "spublish", "publish")
"""The commands whose per-master counts show how S2's publishes spread over a cluster."""


def _s2_spread(data: Result) -> list[str]:
    """Per-master command counts (``INFO commandstats``) of S2 runs on a Redis Cluster."""
    rows = []
    for key, r in data["results"].get("s2", {}).items():
        if not _ok(r):
            continue
        for rate, x in r["rates"].items():
            calls: dict[str, dict[str, int]] = x.get("redisCalls") or {}
            for command in SPREAD_COMMANDS:
                counts = {name: c.get(command, 0) for name, c in calls.items()}
                total = sum(counts.values())
                if not total:
                    continue
                shares = ", ".join(
                    f"{name} {n:,} ({100 * n / total:.1f}%)" for name, n in counts.items()
                )
                rows.append([_label(data, key), f"{int(rate):,}", command, f"{total:,}", shares])
    if not rows:
        return []
    lines = [
        "How the publishes spread over the cluster's masters: each master's `INFO "
        "commandstats` calls, read before and after each window (the drain included):",
        "",
    ]
    lines += _table(["system", "target msg/s", "command", "calls", "per master"], rows)
    return [*lines, ""]


def _ratio_lines(
    data: Result,
    scenario: str,
    what: str,
    get: Callable[[Result, str], float | None],
    keys: list[str],
    *,
    base_key: str = "tidings",
) -> list[str]:
    res = data["results"].get(scenario, {})
    base = res.get(base_key)
    if not _ok(base):
        return []
    lines = []
    for sub in keys:
        mine = get(base, sub)
        parts = []
        for peer in PEERS:
            other = res.get(peer)
            if not _ok(other):
                continue
            theirs = get(other, sub)
            if mine and theirs:
                parts.append(f"{SHORT[peer]} {theirs / mine:.2f}×")
        if parts:
            lines.append(
                f"- {what} at {int(sub):,} msg/s, peer ÷ Tidings (above 1 = Tidings lower): "
                + ", ".join(parts)
            )
    return lines


def _s34(data: Result) -> tuple[list[str], list[str]]:
    s34 = data["results"].get("s34", {})
    base = s34.get("tidings")
    s3_rows, s4_rows = [], []
    for key, r in s34.items():
        if not _ok(r):
            continue
        idle, storm = r["idle"], r["storm"]
        s3_rows.append(
            [
                _label(data, key),
                f"{idle['sessions']:,} / {idle['target']:,}",
                f"{idle['rss_base_mb']:.0f} MB",
                f"{idle['rss_mb']:.0f} MB",
                f"**{idle['kb_per_session']:.1f} KB**",
                ratio(idle["kb_per_session"], base["idle"]["kb_per_session"])
                if _ok(base) and key != "tidings"
                else "1×",
            ]
        )
        conn = storm.get("connectMs") or {}
        s4_rows.append(
            [
                _label(data, key),
                f"{storm['opened']:,} / {storm['connections']:,}",
                f"**{storm['elapsedMs'] / 1000:.2f} s**",
                f"{storm['rate']:,.0f}/s",
                ratio(storm["elapsedMs"], base["storm"]["elapsedMs"])
                if _ok(base) and key != "tidings"
                else "1×",
                f"{ms(conn.get('p50'))} / {ms(conn.get('p99'))}",
                pct(_server_cpu(storm.get("cpuPct"))),
                pct((storm.get("cpuPct") or {}).get("redis")),
                pct((storm.get("cpuPct") or {}).get("loadgen")),
            ]
        )
    s3 = _table(
        [
            "system",
            "sessions held",
            "server RSS before",
            "server RSS after",
            "per session",
            "this ÷ Tidings",
        ],
        s3_rows,
    )
    s4 = _table(
        [
            "system",
            "sessions",
            "time",
            "rate",
            "time ÷ Tidings'",
            "connect+subscribe p50 / p99",
            "server CPU",
            "Redis CPU",
            "loadgen CPU",
        ],
        s4_rows,
    )
    return s3 + _errors(data, "s34"), s4


def _s3max(data: Result) -> list[str]:
    runs = data["results"].get("s3max", {})
    lines: list[str] = []
    for key, what in (
        ("tidings", "one Tidings node process"),
        ("tidings-workers", "one Tidings server of 3 worker processes (`--workers 3`, one port)"),
    ):
        r = runs.get(key)
        if not r:
            continue
        if not _ok(r):
            lines += [f"Most sessions on {what}: {r['error']}", ""]
            continue
        errors = ", ".join(f"{name} × {count:,}" for name, count in r["errors"].items()) or "none"
        per_session = (
            f" ({r['kb_per_session']:.1f} KB per session over its RSS before)"
            if "kb_per_session" in r
            else ""
        )
        lines += [
            f"Most sessions {what} held: **{r['opened']:,}** of {r['target']:,} attempted "
            f"in {r['seconds']:.0f} s from {r['loadgens']} load-generator processes and 127.0.0.x "
            f"source addresses; {r['live_after_2s']:,} still open 2 s later; server RSS "
            f"{r['server_rss_mb']:.0f} MB{per_session}; server alive: "
            f"{'yes' if r['server_alive'] else 'NO'}, /healthz at the limit: "
            f"{'200' if r['healthz_ok_at_max'] else 'no answer'}. Failures: {errors}. "
            f"Open-file limit per process: {r['server_nofile_limit']:,}, this sandbox's hard "
            "limit, which root cannot raise here (no CAP_SYS_RESOURCE): one process stops at "
            "that many sockets whatever its memory.",
            "",
        ]
    return lines[:-1]


def _profile(data: Result, made: dict[str, str]) -> list[str]:
    lines: list[str] = []
    for scenario, key, _, title in PROFILES:
        prof = data["results"].get(scenario, {}).get(key)
        if not prof:
            continue
        if not _ok(prof) or not prof.get("self"):
            lines += [f"### {title}", "", f"Not profiled: {prof.get('error', 'no samples')}", ""]
            continue
        what = prof.get("what", "")
        extra = ""
        if "rate_while_profiled" in prof:
            extra = f"; {k(prof['rate_while_profiled'])} deliveries/s while profiled"
        if prof.get("p99_us_while_profiled") is not None:
            extra = f"; p99 {ms(prof['p99_us_while_profiled'])} while profiled"
            cpu = prof.get("cpu_while_profiled") or {}
            extra += ", server CPU " + " + ".join(
                pct(v) for name, v in sorted(cpu.items()) if name.startswith("server-")
            )
        if "storm" in prof:
            extra = f"; {prof['storm']['elapsedMs'] / 1000:.2f} s while profiled"
        lines += [
            f"### {title}",
            "",
            f"{_label(data, key)}, {what}: py-spy at 200 Hz for "
            f"{data['sizes']['profile_s']:.0f} s, {prof['samples']:,} samples{extra}. "
            f"Raw stacks: `bench/out/logs/{prof['raw_file']}` (flame graph: "
            "`py-spy record --format flamegraph`, or any collapsed-stack viewer).",
            "",
        ]
        if f"{scenario}:{key}" in made:
            lines += [f"![{scenario}]({made[f'{scenario}:{key}']})", ""]
        rows = []
        for i in range(min(12, max(len(prof["self"]), len(prof["inclusive"])))):
            me = prof["self"][i] if i < len(prof["self"]) else ["", ""]
            inc = prof["inclusive"][i] if i < len(prof["inclusive"]) else ["", ""]
            rows.append([f"`{me[0]}`", f"{me[1]}%", f"`{inc[0]}`", f"{inc[1]}%"])
        lines += _table(["function (self)", "self", "function (inclusive)", "inclusive"], rows)
        lines.append("")
    if lines:
        lines = [
            "## Where Tidings' core goes (profiles)",
            "",
            "Separate runs from the measured ones above (the sampler costs a little), on the "
            "client core. Percentages are of the samples in which the process was not "
            "sleeping; time in C (system calls, uvloop, hiredis) counts to the Python function "
            "that called it. In S2 both nodes and Redis share core 0, so a node that is "
            "preempted inside a system call (a write that wakes Redis, which wakes the other "
            "node) is sampled in that call: there `StreamWriter.writelines` holds the other "
            "processes' turn on the core as well as its own.",
            "",
            *lines,
        ]
    return lines


def _short_path(where: str) -> str:
    """``/…/site-packages/aiohttp/web_ws.py:402`` → ``aiohttp/web_ws.py:402``."""
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3.12/"):
        if marker in where:
            return where.split(marker, 1)[1]
    return where


def _memory(data: Result) -> list[str]:
    mem = data["results"].get("memory", {}).get("tidings")
    if not mem:
        return []
    if not _ok(mem):
        return [f"Memory breakdown failed: {mem['error']}", ""]
    lines = [
        "### Where an idle session's memory goes (tracemalloc)",
        "",
        f"Tidings (Redis broker) under `tracemalloc` (`bench/tracemalloc_serve.py`) with "
        f"{mem['sessions']:,} idle subscribed sessions: RSS grew "
        f"**{mem['rss_kb_per_session']:.1f} KB per session**, of which the Python allocator "
        f"holds **{mem['traced_kb_per_session']:.1f} KB**; the rest is C-level (uvloop/libuv "
        "handles and buffers, malloc overhead). Largest growth by source line, per session:",
        "",
    ]
    rows = [
        [f"`{_short_path(where)}`", f"{kb:.2f} KB", f"{count:.1f}"]
        for where, kb, count in mem["by_line"]
    ]
    lines += _table(["allocated at", "per session", "blocks per session"], rows)
    lines += ["", "By file:", ""]
    rows = [
        [f"`{_short_path(where).removesuffix(':0')}`", f"{kb:.2f} KB", f"{count:.1f}"]
        for where, kb, count in mem["by_file"]
    ]
    lines += _table(["file", "per session", "blocks per session"], rows)
    return [*lines, ""]


def _windows(scenario: str, r: Result) -> list[tuple[str, dict[str, float]]]:
    """The measured windows of one result, with their loadgen ``cpuPct``."""
    if scenario == "s1":
        return [
            ("20 msg/s", r["fixed_rate"]["cpuPct"]),
            ("saturation", r["saturation"]["cpuPct"]),
        ]
    if scenario == "s2":
        return [(f"{rate} msg/s", x["cpuPct"]) for rate, x in r["rates"].items()]
    if scenario == "s34":
        return [("storm", r["storm"].get("cpuPct") or {})]
    return []


def worst_interference(scenario: str, r: Result) -> float:
    """The most CPU that processes outside the bench used on one core in any window."""
    if not _ok(r):
        return 0.0
    values = [v for _, cpu in _windows(scenario, r) for v in interference(cpu).values()]
    return max(values, default=0.0)


def _interference_notes(data: Result) -> list[str]:
    """Windows in which processes outside the bench used a core noticeably."""
    notes = []
    for scenario, runs in data["results"].items():
        for key, r in runs.items():
            if not _ok(r):
                continue
            for name, cpu in _windows(scenario, r):
                busy = {c: v for c, v in interference(cpu).items() if v >= 10}
                if busy:
                    where = ", ".join(f"{v:.0f}% of {c}" for c, v in busy.items())
                    notes.append(
                        f"{scenario.upper()} {_label(data, key)} ({name}): other processes "
                        f"used {where}"
                    )
    return notes


def markdown(data: Result, made: dict[str, str]) -> str:
    m = data["machine"]
    sz = data["sizes"]
    tid = data.get("tidings", {})
    src = tid.get("source", "?")
    commit = (tid.get("commit") or "?")[:12]
    dirty = tid.get("uncommitted_src_files")
    src_note = f"{src}, commit `{commit}`"
    if dirty:
        src_note += f" plus {dirty} uncommitted file(s) in src/"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `./run bench{' --quick' if data['mode'] == 'quick' else ''}` "
        f"on {data['started']} in {data.get('duration_seconds', 0) / 60:.1f} minutes. "
        "**Every figure on this page comes from that one run**, with all peers measured "
        f"side by side on the same machine. Tidings under test: {src_note}. Raw figures: "
        "[`benchmarks.json`](benchmarks.json).",
        "",
        "## Targets (issue 6)",
        "",
    ]
    lines += _table(["target", "this run", "verdict"], [list(r) for r in targets(data)])
    notes = missed_notes(data)
    if notes:
        lines += ["", "What limits the missed targets, from this run's figures:", "", *notes]
    lines += [
        "",
        "## How it was measured",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
        f"{m['kernel']}; Python {m['python']}, Node {m['node']}, Redis {m['redis']}, RabbitMQ "
        f"{m['rabbitmq']} (Erlang {m['erlang']}). Open-file limit per process: "
        f"{m['nofile_limit']:,}.",
        "- **Cores**: every server process (Tidings, the peers, their Redis, the RabbitMQ "
        "nodes) is pinned to **core 0** with `taskset`; the load generator, the publishers and "
        "the orchestrator to **core 1**. S2's two server processes share core 0. CPU figures "
        "are % of one core over the measured window, from `/proc/<pid>/stat`; RSS from "
        "`/proc/<pid>/status`.",
        "- **Load generator** (`bench/loadgen.mjs`): one Node process holding every client "
        "connection. It speaks RFC 6455 over raw `net` sockets with its own frame parser (no "
        "WebSocket library, no per-frame objects) and STOMP 1.2 or Engine.IO 4/Socket.IO 5 "
        "on top; a delivery costs a header decode and a fixed-offset read of the timestamp. "
        "Its own CPU is in every table: it stays below 100% of its core, so it is not what "
        "limits the figures.",
        "- **Messages**: 100-byte ASCII bodies `~T<µs>~P<phase>~S<seq>~xxx…`. The timestamp is "
        "the publisher's *scheduled* send time on CLOCK_MONOTONIC, so a publisher or server "
        "that falls behind shows in the latency (no coordinated omission). Latency = scheduled "
        "time → frame parsed by the client, over every delivery. The sequence number finds "
        "losses and duplicates.",
        "- **Publish paths** (what a back end would use):",
    ]
    lines += [f"  - {info['label']}: {info['describe']}." for info in data["systems"].values()]
    lines += [
        "- **Clients**: Tidings and RabbitMQ clients send STOMP `CONNECT` (heart-beat 0,0) and "
        "`SUBSCRIBE` with a `receipt`; Socket.IO clients connect over WebSocket only and send "
        "a `sub` event whose acknowledgement says the room is joined. A session counts as "
        "connected when the receipt or ack arrives.",
        "- **RabbitMQ**: the bench starts its own RabbitMQ nodes (with `rabbitmq_web_stomp`) on "
        "free ports with their own data directories, and a two-node cluster for S2, instead "
        "of using the machine's node: that one runs with a 1,024 open-file limit "
        "(about 830 sockets), too few for S3/S4. Subscriptions are `/topic/bench` and "
        "`/topic/user.<id>` (one auto-delete queue each).",
        "",
        "Scenarios:",
        "",
        f"- **S1 broadcast**: {sz['s1_subscribers']:,} subscribers of one topic on one server "
        f"process. Fixed rate: {sz['s1_rate']} msg/s for {sz['s1_fixed_s']:.0f} s "
        f"({sz['s1_rate'] * sz['s1_subscribers']:,} deliveries/s) after {sz['warmup_s']:.0f} s "
        f"of warm-up. Saturation: the publisher keeps {sz['s1_window']} messages in flight "
        f"(published but not yet delivered to all) for {sz['s1_saturate_s']:.0f} s; the rate "
        f"is counted after {sz['s1_saturate_warmup_s']:.0f} s; this is done "
        f"{sz.get('s1_saturate_repeats', 1)} times and the median is shown (this VM's speed "
        "drifts with load elsewhere on its host, which cannot be seen from inside: runs of "
        "the same build minutes apart differed by up to 40%). "
        "Tidings runs twice: with the Redis broker (the same shape as the "
        "Socket.IO peers: publish → Redis → server) and with its embedded memory broker.",
        f"- **S2 per-user across 2 nodes**: {sz['s2_users']:,} users, user *i* on node *i* mod "
        "2; publishes to uniformly random users at "
        + " and ".join(f"{r:,}" for r in sz["s2_rates"])
        + f" msg/s for {sz['s2_seconds']:.0f} s each through the server-side publish path "
        "(Tidings: HTTP round-robin over both nodes, one message per request and, "
        "separately, the messages of each 1 ms tick as one batch request per node; and its "
        "direct publisher from a Python helper; Socket.IO: its Redis emitter/manager; "
        "the Python helpers, Tidings' and python-socketio's, run the fixed-rate schedule "
        "themselves, as socket.io's emitter does inside the load generator; "
        "RabbitMQ: STOMP SEND on node 1 of the cluster). Then up to "
        f"{sz['drain_ms'] / 1000:.0f} s to drain.",
        f"- **S4 connection storm**: {sz['s4_storm']:,} connects + subscribes (each to its own "
        f"user destination), {sz['storm_concurrency']} handshakes in flight, on a fresh server.",
        f"- **S3 idle sessions**: the same server then takes more sessions up to "
        f"{sz['s3_idle']:,}; after 3 s the growth of its RSS over its RSS before S4, divided by "
        "the sessions, is the cost of one idle subscribed session. Then the most sessions one "
        f"Tidings node process holds: up to {sz['s3_max_target']:,} from two load-generator "
        "processes and four 127.0.0.x source addresses; and one server of 3 worker processes "
        f"(`--workers 3`): up to {sz.get('s3_workers_target', 0):,} from four load generators "
        f"and eight addresses; each at most {sz['s3_max_seconds']:.0f} s.",
        "",
        "## S1: broadcast to 1,000 subscribers, one server process",
        "",
    ]
    lines += _s1(data)
    lines.append("")
    s1 = data["results"].get("s1", {})
    base = s1.get("tidings")
    if _ok(base):
        rat = [
            f"{SHORT[p]} {base['saturation']['rate'] / s1[p]['saturation']['rate']:.2f}×"
            for p in PEERS
            if _ok(s1.get(p))
        ]
        if rat:
            lines.append("- Saturation, Tidings (Redis) ÷ peer: " + ", ".join(rat))
        mem = s1.get("tidings-memory")
        if _ok(mem):
            rat = [
                f"{SHORT[p]} {mem['saturation']['rate'] / s1[p]['saturation']['rate']:.2f}×"
                for p in PEERS
                if _ok(s1.get(p))
            ]
            if rat:
                lines.append("- Saturation, Tidings (memory) ÷ peer: " + ", ".join(rat))
        lat = [
            f"{SHORT[p]} {_lat(s1[p]['fixed_rate'], 'p99') / _lat(base['fixed_rate'], 'p99'):.1f}×"  # type: ignore[operator]
            for p in PEERS
            if _ok(s1.get(p))
            and _lat(s1[p]["fixed_rate"], "p99")
            and _lat(base["fixed_rate"], "p99")
        ]
        if lat:
            lines.append("- p99 at 20 msg/s, peer ÷ Tidings (Redis): " + ", ".join(lat))
    split = [
        f"{SHORT[key]} {ms(r['fixed_rate']['firstDeliveryUs']['p50'])} / "
        f"{ms(r['fixed_rate']['firstDeliveryUs']['p99'])} then "
        f"{ms(r['fixed_rate']['spreadUs']['p50'])} / {ms(r['fixed_rate']['spreadUs']['p99'])}"
        for key, r in s1.items()
        if _ok(r) and r["fixed_rate"].get("firstDeliveryUs") and r["fixed_rate"].get("spreadUs")
    ]
    if split:
        lines += [
            "",
            "Where the 20 msg/s latency comes from, per message: time to its first "
            "subscriber's frame (p50 / p99), then the spread from its first to its last "
            "subscriber's frame (p50 / p99): " + "; ".join(split) + ".",
        ]
    floors = [
        (key, r["fixed_rate"]["cpuPct"].get("loadgen"))
        for key, r in s1.items()
        if _ok(r) and r["fixed_rate"]["cpuPct"].get("loadgen") is not None
    ]
    if floors:
        rate = data["sizes"]["s1_rate"]
        per_msg = [f"{SHORT[key]} {cpu / 100 * 1000 / rate:.0f} ms" for key, cpu in floors]
        lines += [
            "",
            "Measurement floor: at 20 msg/s each of a message's 1,000 frames arrives in its own "
            "read, and the load generator's core needs about this long to read one message's "
            "1,000 frames (its CPU in that window ÷ messages): " + ", ".join(per_msg) + ". "
            "The last subscriber's frame is read that long after the first one's, whichever "
            "server sent them, so the p99 of every system includes most of it.",
        ]
    lines.append("")
    for key in ("s1_saturation", "s1_latency"):
        if key in made:
            lines += [f"![{key}]({made[key]})", ""]
    lines += ["## S2: per-user messages across 2 nodes", ""]
    lines += _s2(data)
    lines.append("")
    if "s2" in made:
        lines += [f"![s2]({made['s2']})", ""]
    s3, s4 = _s34(data)
    lines += ["## S3: idle subscribed sessions", "", *s3, ""]
    if "s3" in made:
        lines += [f"![s3]({made['s3']})", ""]
    lines += _memory(data)
    lines += [*_s3max(data), ""]
    lines += ["## S4: connection storm", "", *s4, ""]
    if "s4" in made:
        lines += [f"![s4]({made['s4']})", ""]
    lines += _profile(data, made)
    notes = list(data.get("notes", []))
    busy = _interference_notes(data)
    if busy:
        notes.append(
            "This machine is shared: while these windows were measured, processes outside "
            "the bench used a core (their figures may be pessimistic): " + "; ".join(busy)
        )
    else:
        notes.append(
            "No measured window had more than 10% of a core used by processes outside the "
            "bench (from /proc/stat, per core, minus the bench's own processes)."
        )
    lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    lines += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "./run bench            # full run: rewrites this page, the JSON and the charts",
        "./run bench --quick    # ~2 minute smoke run with smaller counts, into bench/out/quick/",
        "./run bench --systems tidings,socketio-node --scenarios s1   # a subset",
        "```",
        "",
        "Server and load-generator logs of the last run are in `bench/out/logs/`.",
    ]
    return "\n".join(lines) + "\n"


KEPT_SECTIONS = (
    "## Catch-up and safety net (issue 13)",
    "## Client → back end (app webhook)",
    "## PostgreSQL inbox (bench/micro_postgres.py)",
)
"""Sections other benchmarks write into this page (bench/micro_catchup.py, and by hand from
bench/micro_app_webhook.py and bench/micro_postgres.py): a full run keeps them, from their
heading to the next one."""


def kept_sections(previous: str) -> str:
    """The KEPT_SECTIONS of the page as it was, to append to the new one."""
    kept = []
    for heading in KEPT_SECTIONS:
        _, found, rest = previous.partition(heading + "\n")
        if found:
            body, _, _ = rest.partition("\n## ")
            kept.append(f"\n{heading}\n{body.rstrip()}\n")
    return "".join(kept)


def write(data: Result, out: Path) -> None:
    made = charts(data, out)
    page = out / "benchmarks.md"
    previous = page.read_text() if page.exists() else ""
    page.write_text(markdown(data, made) + kept_sections(previous))
