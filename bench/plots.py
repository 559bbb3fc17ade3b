"""The report's plots (PNG, matplotlib), drawn from a run's results and written beside its Markdown.

throughput.png  throughput and p99 against clients per scenario, the baselines beside them
cpu.png         CPU ms per unit of work by process (the system's processes, stacked)
latency.png     placement-to-fulfilled latency over the paced and overload runs, by second of placement
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.report import TARGETS, _cpu_runs, evaluate, get, pipeline_runs, reference_clients  # noqa: E402


def render(results: dict, folder: Path) -> dict[str, str]:
    """Every plot the results have data for: {name: path relative to the folder's parent}."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, draw in (("throughput", throughput), ("cpu", cpu), ("latency", latency)):
        fig = draw(results)
        if fig is not None:
            fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            out[name] = f"{folder.name}/{name}.png"
    return out


def _series(ax, xs, ys, label, **style) -> None:
    points = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if points:
        ax.plot(*zip(*points), marker="o", label=label, **style)


def _baseline(ax, y, label, **style) -> None:
    if y:
        ax.axhline(y, linestyle="--", linewidth=1, label=label, **style)


def throughput(results: dict):
    clients, phases, base = results["config"]["clients"], results.get("phases", {}), results.get("baselines", {})
    at = lambda prefix, *path: [get(phases, f"{prefix}@{c}", *path) for c in clients]  # noqa: E731
    pg = lambda key: [get(base, "pgbench", "runs", str(c), key) for c in clients]  # noqa: E731
    over = next((x for n, x in pipeline_runs(results) if n.startswith("overload@")), None)
    rows = [("read: GET a product via the gateway", "req/s",
             [("read", at("read", "ok_rps"), at("read", "latency_ms", "p99"))],
             [("hello-world @%s" % get(base, "hello", "connections"), get(base, "hello", "ok_rps"),
               get(base, "hello", "latency_ms", "p99"))], []),
            ("placement, workers stopped", "orders/s",
             [("placement", at("placement", "http", "ok_rps"), at("placement", "http", "latency_ms", "p99")),
              ("pgbench order transaction", pg("tps"), pg("p99_ms"))], [], []),
            ("pipeline (p99: placement to fulfilled)", "fulfilled orders/s",
             [("pipeline", at("pipeline", "db", "fulfilled_per_s"),
               at("pipeline", "db", "placement_to_fulfilled", "p99_ms"))],
             [("bare chain", get(base, "chain", "chains_per_s"), None),
              ("batched bare chain", get(base, "chain_batched", "chains_per_s"), None)],
             [(f"overload@{results['config'].get('overload_clients', 64)}", over)] if over else [])]
    rows = [r for r in rows if any(y is not None for _, ys, _ in r[2] for y in ys)]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 3.2 * len(rows)), squeeze=False)
    for (title, unit, series, lines, points), (ax_rate, ax_p99) in zip(rows, axes):
        for label, rates, p99s in series:
            _series(ax_rate, clients, rates, label)
            _series(ax_p99, clients, p99s, label)
        for i, (label, rate, p99) in enumerate(lines):
            _baseline(ax_rate, rate, label, color=f"C{i + 3}")
            _baseline(ax_p99, p99, label, color=f"C{i + 3}")
        for label, x in points:
            n = int(label.split("@")[1])
            ax_rate.plot([n], [x["db"]["fulfilled_per_s"]], "s", color="C2", label=label)
            ax_p99.plot([n], [x["db"]["placement_to_fulfilled"]["p99_ms"]], "s", color="C2", label=label)
        values = [y for _, ys, _ in series for y in ys if y] + [y for _, y, _ in lines if y]
        if values and max(values) > 10 * min(values):
            ax_rate.set_yscale("log")
        ax_p99.set_yscale("log")
        ax_rate.set(title=title, xlabel="clients", ylabel=unit, xticks=clients)
        ax_p99.set(title=f"{title}: p99", xlabel="clients", ylabel="p99 ms", xticks=clients)
        for ax in (ax_rate, ax_p99):
            ax.grid(True, alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def cpu(results: dict):
    runs = [(f"{n}\n(ms per {c['unit']})", c) for n, _, c in
            _cpu_runs(results, reference_clients(results["config"]["clients"]))]
    if not runs:
        return None
    procs = sorted({p for _, c in runs for p in c["by_process_ms"]},
                   key=lambda p: -sum(c["by_process_ms"].get(p, 0) for _, c in runs))
    fig, ax = plt.subplots(figsize=(11, 0.5 * len(runs) + 1.5))
    left = [0.0] * len(runs)
    colors = plt.get_cmap("tab20").colors
    for i, p in enumerate(procs):
        widths = [max(0.0, c["by_process_ms"].get(p, 0.0)) for _, c in runs]
        ax.barh(range(len(runs)), widths, left=left, label=p, color=colors[i % len(colors)])
        left = [a + b for a, b in zip(left, widths)]
    for y, total in enumerate(left):
        ax.text(total, y, f" {total:.2f}", va="center", fontsize=7)
    ax.set_xlim(0, 1.12 * max(*left, TARGETS["cpu_per_order_ms"]))  # room for the totals
    ax.axvline(TARGETS["cpu_per_order_ms"], color="red", linestyle=":", linewidth=1,
               label=f"target per fulfilled order ({TARGETS['cpu_per_order_ms']:g} ms)")
    ax.set_yticks(range(len(runs)), [n for n, _ in runs], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="CPU ms per unit of work, the system's processes", title="CPU per unit of work by process")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def latency(results: dict):
    runs = [(n, x) for n, x in pipeline_runs(results) if n.startswith(("paced@", "overload@"))
            and x["db"].get("over_time")]
    if not runs:
        return None
    budget = (results.get("evaluation") or evaluate(results, results["config"]["clients"]))["latency_budget_s"]
    fig, axes = plt.subplots(len(runs), 1, figsize=(11, 3.2 * len(runs)), squeeze=False)
    for (name, x), (ax,) in zip(runs, axes):
        points = x["db"]["over_time"]
        t = [p["t"] for p in points]
        placed = ax.twinx()
        placed.bar(t, [p["placed"] for p in points], width=0.9, color="0.85", label="orders placed per s")
        placed.set_ylabel("orders placed per s")
        ax.set_zorder(placed.get_zorder() + 1)
        ax.patch.set_visible(False)
        for key, style in (("p50_ms", "-"), ("p99_ms", "-"), ("max_ms", ":")):
            _series(ax, t, [p[key] for p in points], f"to fulfilled {key[:-3]}", linestyle=style, markersize=3)
        limit = 1000 * budget if name.startswith("overload@") else TARGETS["fulfil_p99_ms"]
        _baseline(ax, limit, "latency budget" if name.startswith("overload@") else "p99 target", color="red")
        ax.set_yscale("log")
        ax.set_xlim(-0.5, max(t[-1], results["config"]["duration"]) + 0.5)  # seconds nothing was accepted too
        ax.set(title=f"{name}: placement to fulfilled, by second of placement", xlabel="s since the run's start",
               ylabel="ms")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
