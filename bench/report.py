"""The targets of issue 6 with pass/fail, the ratios, and the Markdown report of a run's results."""
from __future__ import annotations

import re

from bench.orders_db import TERMINAL

TARGETS = {
    "placement_ratio": 0.06,    # placement @32 >= 0.06 x pgbench's order transaction @32
    "read_ratio": 0.25,         # read @32 >= 0.25 x hello-world
    "read_p99_ms": 100.0,       # read @32 p99 <= 100 ms
    "cpu_per_order_ms": 20.0,   # CPU per fulfilled order, every process of the system (placement, tasks, mails)
    "pipeline_ratio": 1.0,      # fulfilled/s >= 1.0 x the unbatched chain's chains/s, sustained (gaps <= 5%, mails)
    "fulfil_p99_ms": 1000.0,    # placement-to-fulfilled p99 <= 1 s at that rate
    "peak_connections": 20,     # whole system, any scenario
    "commits_per_order": 10.0,  # committed transactions per fulfilled order
}
LATENCY_BUDGET_S = 2.0  # ORDER_LATENCY_BUDGET_SECONDS's default, when the run's settings do not say
WHY = "Why: CPU per unit of work"  # the section every missed throughput target points to, besides its profile


def reference_clients(clients: list[int]) -> int:
    return 32 if 32 in clients else clients[len(clients) // 2]


def get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def pipeline_runs(results: dict) -> list[tuple[str, dict]]:
    return [(n, r) for n, r in results.get("phases", {}).items()
            if n.startswith(("pipeline@", "paced@", "overload@")) and "db" in r]


def _reference_pipeline(results: dict, ref: int):
    """The paced run if there is one (the target's rate), else the closed-loop run at the reference count."""
    runs = pipeline_runs(results)
    return next((nr for nr in runs if nr[0].startswith("paced@")), None) or \
        next((nr for nr in runs if nr[0] == f"pipeline@{ref}"), None)


def admission(run: dict) -> dict:
    """What placement answered in a pipeline run: accepted (202), refused with 503 and Retry-After, anything
    else (other statuses, no answer); accepted orders missing from the database or not terminal after the drain."""
    http, db = run["http"], run["db"]
    statuses = {int(k): v for k, v in http["statuses"].items()}  # string keys once read back from the JSON
    accepted, refused = statuses.get(202, 0), http.get("retry_after_503", 0)
    not_terminal = sum(n for s, n in db["final_status"].items() if s not in TERMINAL)
    return {"accepted": accepted, "refused_retry_after": refused,
            "other": sum(statuses.values()) - accepted - refused + sum(http["socket_errors"].values()),
            "in_database": db["orders_placed"], "not_terminal": not_terminal,
            "lost": max(0, accepted - db["orders_placed"]) + not_terminal}


def evaluate(results: dict, clients: list[int]) -> dict:
    """The figures the targets speak of, their ratios, and pass/fail per target (None: not measured); each
    target names the section that explains a miss."""
    ref = reference_clients(clients)
    phases, base = results.get("phases", {}), results.get("baselines", {})
    hello, pg, chain, batched = get(base, "hello", "ok_rps"), get(base, "pgbench", "runs", str(ref), "tps"), \
        get(base, "chain", "chains_per_s"), get(base, "chain_batched", "chains_per_s")
    read_rps, read_p99 = get(phases, f"read@{ref}", "ok_rps"), get(phases, f"read@{ref}", "latency_ms", "p99")
    place_rps = get(phases, f"placement@{ref}", "http", "ok_rps")
    runs = pipeline_runs(results)
    rate = lambda r: r["db"]["fulfilled_per_s"]  # noqa: E731
    p99 = lambda r: r["db"]["placement_to_fulfilled"]["p99_ms"]  # noqa: E731
    sustained = [(n, r) for n, r in runs if r["db"].get("sustained")]
    best = max(sustained, key=lambda nr: rate(nr[1]), default=None)
    fast = [(n, r) for n, r in sustained if chain and rate(r) >= TARGETS["pipeline_ratio"] * chain]
    best_latency = min(fast, key=lambda nr: p99(nr[1]) or 1e18, default=None)
    peak = max(((r.get("connections") or {}).get("peak_total", 0), n) for n, r in phases.items()) if phases \
        else (None, None)
    ref_pipeline = _reference_pipeline(results, ref)
    commits = get(ref_pipeline[1], "db_work", "xact_commit_per_unit") if ref_pipeline else None
    cpu_ms = get(ref_pipeline[1], "cpu_per_unit", "system_ms") if ref_pipeline else None
    over = next((nr for nr in runs if nr[0].startswith("overload@")), None)
    adm = admission(over[1]) if over else {}
    budget = get(results, "settings", "system", "order_latency_budget_seconds") or LATENCY_BUDGET_S
    checks = {k: v for k, v in (results.get("checks") or {}).items() if isinstance(v, dict) and "pass" in v}
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None  # noqa: E731
    ratios = {"read_vs_hello": ratio(read_rps, hello), "placement_vs_pgbench": ratio(place_rps, pg),
              "pipeline_vs_chain": ratio(rate(best[1]) if best else None, chain),
              "pipeline_vs_chain_batched": ratio(rate(best[1]) if best else None, batched),
              "pipeline_vs_chain_each": {n: ratio(rate(r), chain) for n, r in runs},
              "pipeline_vs_chain_batched_each": {n: ratio(rate(r), batched) for n, r in runs}}
    at_least = lambda x, t: None if x is None else x >= t  # noqa: E731
    at_most = lambda x, t: None if x is None else x <= t  # noqa: E731
    no_pipeline = chain is None or not runs
    profiled = lambda name: f"Profiles › {name}" if get(phases, name, "profile") else WHY  # noqa: E731
    paced_why = profiled(ref_pipeline[0]) if ref_pipeline else WHY
    hops = get(base, "chain", "hops")
    targets = [
        (f"placement @{ref} >= {TARGETS['placement_ratio']} x pgbench's order transaction @{ref}",
         ratios["placement_vs_pgbench"], at_least(ratios["placement_vs_pgbench"], TARGETS["placement_ratio"]),
         f"{place_rps} orders/s / {pg} tps", profiled(f"placement@{ref}")),
        (f"read @{ref} >= {TARGETS['read_ratio']} x hello-world", ratios["read_vs_hello"],
         at_least(ratios["read_vs_hello"], TARGETS["read_ratio"]), f"{read_rps} / {hello} req/s",
         profiled(f"read@{ref}")),
        (f"read @{ref} p99 <= {TARGETS['read_p99_ms']:g} ms", read_p99, at_most(read_p99, TARGETS["read_p99_ms"]),
         f"{read_p99} ms", profiled(f"read@{ref}")),
        (f"CPU per fulfilled order, every process of the system <= {TARGETS['cpu_per_order_ms']:g} ms", cpu_ms,
         at_most(cpu_ms, TARGETS["cpu_per_order_ms"]),
         f"in {ref_pipeline[0]}; placement, tasks and mails" if ref_pipeline else "no pipeline run", paced_why),
        (f"pipeline fulfilled/s >= {TARGETS['pipeline_ratio']} x the unbatched bare chain ({hops} hops), sustained "
         "(accepted and fulfilled within 5%, every mail sent)", ratios["pipeline_vs_chain"],
         None if no_pipeline else bool(fast),
         f"best sustained run {best[0]}: {rate(best[1])}/s vs chain {chain}/s (batched {batched}/s)" if best
         else f"no run was sustained (chain {chain}/s)", paced_why),
        (f"placement-to-fulfilled p99 <= {TARGETS['fulfil_p99_ms']:g} ms at that sustained rate",
         p99(best_latency[1]) if best_latency else (p99(best[1]) if best else None),
         None if no_pipeline else bool(best_latency and (p99(best_latency[1]) or 1e18) <= TARGETS["fulfil_p99_ms"]),
         best_latency[0] if best_latency else
         f"no sustained run at >= {TARGETS['pipeline_ratio']} x chain; shown: best sustained run", paced_why),
        (f"{over[0] if over else 'overload'}: accepted orders' placement-to-fulfilled p99 <= the latency budget "
         f"({budget:g} s)", p99(over[1]) if over else None, at_most(p99(over[1]) if over else None, 1000 * budget),
         f"{adm.get('accepted')} accepted" if over else "no overload run", paced_why),
        ("overload: the rest refused with 503 + Retry-After", adm.get("other"),
         (adm["other"] == 0) if over else None,
         f"{adm['refused_retry_after']} refused with 503 + Retry-After, {adm['other']} other answers or errors"
         if over else "no overload run", "Overload and admission control"),
        ("overload: no accepted order lost (each terminal after the drain)", adm.get("lost"),
         (adm["lost"] == 0) if over else None,
         f"{adm['in_database']} in the database, {adm['not_terminal']} not terminal" if over else "no overload run",
         "Overload and admission control"),
        (f"peak PostgreSQL connections <= {TARGETS['peak_connections']} (any scenario)", peak[0],
         at_most(peak[0], TARGETS["peak_connections"]), f"in {peak[1]}", "Connections"),
        (f"<= {TARGETS['commits_per_order']:g} committed transactions per fulfilled order", commits,
         at_most(commits, TARGETS["commits_per_order"]),
         f"in {ref_pipeline[0]}" if ref_pipeline else "no pipeline run", "Database work"),
        ("correctness checks pass", sum(1 for v in checks.values() if v["pass"] is False) if checks else None,
         all(v["pass"] is not False for v in checks.values()) if checks else None,
         f"{len(checks)} checks", "Correctness at the end"),
    ]
    return {"reference_clients": ref, "ratios": ratios, "best_sustained": best[0] if best else None,
            "latency_budget_s": budget, "overload": adm or None,
            "targets": [dict(zip(("target", "measured", "pass", "detail", "see"), t)) for t in targets]}


# -- Markdown ------------------------------------------------------------------------------------

def f(x, nd=1) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    return f"{x:,.{nd}f}" if isinstance(x, float) else f"{x:,}" if isinstance(x, int) else str(x)


def table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|",
            *("| " + " | ".join(c if isinstance(c, str) else f(c) for c in row) + " |" for row in rows), ""]


def _pass(v) -> str:
    return "n/a" if v is None else ("**pass**" if v else "**FAIL**")


def _code(text: str, n: int = 1000) -> str:
    return "`" + text[:n].replace("|", "\\|") + "`"


def _pair(d: dict | None, a: str, b: str) -> str:
    return f"{f(get(d, a))} / {f(get(d, b))}"


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _cpu_runs(results: dict, ref: int) -> list[tuple[str, float | None, dict]]:
    """(run, rate /s, CPU per unit) of the runs whose CPU per unit of work the report shows."""
    phases, base = results.get("phases", {}), results.get("baselines", {})
    pg_tps = [r["tps"] for r in (get(base, "pgbench", "runs") or {}).values() if r.get("tps")]
    rows = [(f"read@{ref}", get(phases, f"read@{ref}", "ok_rps"), get(phases, f"read@{ref}", "cpu_per_unit")),
            ("hello-world", get(base, "hello", "ok_rps"), get(base, "hello", "cpu_per_unit")),
            (f"placement@{ref}", get(phases, f"placement@{ref}", "http", "ok_rps"),
             get(phases, f"placement@{ref}", "cpu_per_unit")),
            ("pgbench order transaction", sum(pg_tps) / len(pg_tps) if pg_tps else None,
             get(base, "pgbench", "cpu_per_unit"))]
    rows += [(n, x["db"]["fulfilled_per_s"], x.get("cpu_per_unit")) for n, x in pipeline_runs(results)]
    rows += [("backlog-drain", get(phases, "backlog-drain", "rate", "fulfilled_per_s"),
              get(phases, "backlog-drain", "cpu_per_unit")),
             ("bare Celery chain", get(base, "chain", "chains_per_s"), get(base, "chain", "cpu_per_unit")),
             ("bare Celery chain, batched", get(base, "chain_batched", "chains_per_s"),
              get(base, "chain_batched", "cpu_per_unit"))]
    return [r for r in rows if r[2]]


def _costs(results: dict, ref: int) -> list[str]:
    """Why a ratio is what it is: CPU per unit of work of every process next to the baselines', and what a target
    needs. On a CPU-bound machine a throughput ratio is the inverse ratio of CPU per unit."""
    base = results.get("baselines", {})
    cores = get(results, "machine", "cores") or 2
    runs = _cpu_runs(results, ref)
    L = [f"### {WHY}", "",
         f"CPU seconds the processes used over the run (from its start to the end of its drain) divided by the "
         f"units of work done (the machine has {cores} cores). *System*: every process of the system under test "
         "summed — gateway, services, Celery worker (main and pool), beat, PostgreSQL (its backends, background "
         "and exited processes), Redis, the SMTP sink; *all* adds the load generators, the bench (its "
         "generators, samplers and its own queries' PostgreSQL backends) and py-spy. When the machine is busy, a "
         "throughput ratio is roughly the inverse of the CPU-per-unit ratio.", ""]
    if missing := results.get("cpu_not_covered"):
        L += [f"Not counted (not processes of this machine's run): {', '.join(missing)}.", ""]
    L += table(["run", "unit", "rate /s", "CPU ms per unit, system", "all", "largest shares (ms per unit)"],
               [[n, c["unit"], rate, f(c["system_ms"], 2), f(c["all_ms"], 2), ", ".join(
                   f"{p} {v:.2f}" for p, v in list(c["by_process_ms"].items())[:4] if v >= 0.01)]
                for n, rate, c in runs])
    shown = [(n, c) for n, _, c in runs if n.startswith(("read@", "placement@", "pipeline@", "paced@", "overload@",
                                                        "backlog-drain"))]
    if shown:
        procs = sorted({p for _, c in shown for p in c["by_process_ms"]},
                       key=lambda p: -max(c["by_process_ms"].get(p, 0) for _, c in shown))
        harness = sorted({p for _, c in shown for p in c["harness_ms"]})
        L += ["#### CPU ms per unit by process", ""]
        L += table(["process", *(f"{n} (per {c['unit']})" for n, c in shown)],
                   [[p, *(f(c["by_process_ms"].get(p), 2) for _, c in shown)] for p in procs]
                   + [["**system, summed**", *(f"**{f(c['system_ms'], 2)}**" for _, c in shown)]]
                   + [[f"{p} (not counted)", *(f(c["harness_ms"].get(p), 2) for _, c in shown)] for p in harness])
        L += ["'worker' is the Celery worker's main process and its pool children (and pool children that exited); "
              "'postgres' its client backends and the backends and autovacuum workers that exited meanwhile, "
              "'postgres (background)' the postmaster and its background processes; '(not counted)' rows are the "
              "harness, not the system.", ""]
    place, drain = (get(results, "phases", n, "cpu_per_unit", "system_ms")
                    for n in (f"placement@{ref}", "backlog-drain"))
    if place and drain:
        L += [f"An order without refusals costs placement@{ref} + backlog-drain = **{place + drain:.2f} ms**; the "
              "pipeline runs' figures also carry the CPU of the requests placement refused (see Overload and "
              "admission control).", ""]
    if plot := get(results, "plots", "cpu"):
        L += [f"![CPU per unit of work by process]({plot})", ""]
    needs = []
    if get(results, "phases", f"read@{ref}", "connections"):
        rate = ref / (TARGETS["read_p99_ms"] / 1000)
        needs.append(f"read p99 <= {TARGETS['read_p99_ms']:g} ms with {ref} connections always busy needs at least "
                     f"{rate:,.0f} req/s (Little's law: rate = connections / latency, and the mean is below the "
                     f"p99), i.e. <= {1000 * cores / rate:.2f} ms of CPU per request on {cores} cores for "
                     "everything on the machine")
    if pg := get(base, "pgbench", "runs", str(ref), "tps"):
        rate = TARGETS["placement_ratio"] * pg
        needs.append(f"placement >= {TARGETS['placement_ratio']} x pgbench needs {rate:,.0f} orders/s, i.e. "
                     f"<= {1000 * cores / rate:.2f} ms of CPU per accepted order")
    if chain := get(base, "chain", "chains_per_s"):
        rate = TARGETS["pipeline_ratio"] * chain
        needs.append(f"the pipeline target needs {rate:,.1f} fulfilled orders/s with placement running, i.e. "
                     f"<= {1000 * cores / rate:.1f} ms of CPU per order, placement and notifications included "
                     f"(the CPU target asks <= {TARGETS['cpu_per_order_ms']:g} ms)")
    return L + (["What the targets need on this machine:", "", *(f"- {n}" for n in needs), ""] if needs else [])


def _overload(results: dict, budget: float) -> list[str]:
    """Placement's answers in every pipeline run, the overload run's first: admission control at work."""
    runs = sorted(pipeline_runs(results), key=lambda nr: not nr[0].startswith("overload@"))
    if not runs:
        return []
    L = ["## Overload and admission control", "",
         "Every pipeline run, the closed-loop overload run first: what placement answered (wrk / the paced "
         "generator), and from the database the accepted orders' latency to fulfilled and whether any was lost "
         f"(in the database and terminal after the drain). The latency budget (ORDER_LATENCY_BUDGET_SECONDS) is "
         f"{budget:g} s: placement refuses with 503 and a Retry-After header while the oldest order not yet "
         "reserved has waited half of it, or more orders wait than the pipeline decided in the last half of it, "
         "so that accepted orders are fulfilled within it.", ""]
    rows = []
    for n, x in runs:
        a = admission(x)
        rows.append([n, a["accepted"], a["refused_retry_after"], a["other"], x["db"]["accepted_per_s"],
                     x["db"]["fulfilled_per_s"], _pair(x["db"]["placement_to_fulfilled"], "p50_ms", "p99_ms"),
                     a["in_database"], a["not_terminal"], a["lost"], get(x, "cpu_per_unit", "system_ms")])
    L += table(["run", "accepted (202)", "refused (503 + Retry-After)", "other answers / errors", "accepted/s",
                "fulfilled/s", "to fulfilled p50 / p99 ms", "in database", "not terminal", "lost",
                "CPU ms per fulfilled order"], rows)
    if plot := get(results, "plots", "latency"):
        L += [f"![Placement-to-fulfilled latency over the paced and overload runs]({plot})", ""]
    return L


def _profiles(phases: dict) -> list[str]:
    """Per profiled phase and process: the top functions inclusive and self, side by side."""
    profiled = [(n, x["profile"]) for n, x in phases.items() if x.get("profile")]
    if not profiled:
        return []
    first = profiled[0][1]
    L = ["## Profiles (py-spy, CPU samples holding the GIL)", "",
         f"`{first['tool']}` at {first['rate']} Hz on the processes that do the work (gunicorn workers, the Celery "
         f"worker's main process and its pool), from {first['started_after_s']:g} s into the phase for "
         f"{first['seconds']} s. A sample is kept only if a thread of the process holds the GIL: the profile is of "
         "the CPU spent running Python (waits, and C code that releases the GIL, are not in it). 'cores' is the "
         "processes' CPU over the window as the kernel counts it; 'unreadable' are samples py-spy could not read "
         "because it does not pause the process. 'in the stack' = share of the samples with the function anywhere "
         "in the stack (thread, run-loop and WSGI/view-dispatch plumbing left out); 'running' = share with it at "
         "the top. Raw stacks (`frame;frame;... count` per line, for flamegraph.pl or speedscope) are in "
         "`profiles/` of the logs folder beside this report.", ""]
    for name, prof in profiled:
        L += [f"### {name}", ""]
        for proc in prof["processes"]:
            inc, own = proc["inclusive"], proc["self"]
            cell = lambda col, i: ([_code(col[i]["function"]), f"{col[i]['percent']:.1f}"]  # noqa: E731
                                   if i < len(col) else ["", ""])
            L += [f"**{proc['process']}** (pid {', '.join(map(str, proc['pids']))}): {f(proc['cores'], 2)} cores, "
                  f"{f(proc['samples'])} samples ({f(proc['failed_reads'])} unreadable)", ""]
            L += table(["in the stack", "%", "running", "%"],
                       [cell(inc, i) + cell(own, i) for i in range(max(len(inc), len(own)))])
        notes = [f"py-spy itself used {f(prof['profiler_cores'], 2)} cores"]
        if prof["skipped"]:
            notes.append(f"not shown (samples in under {prof['min_share']:.0%} of the ticks): " +
                         ", ".join(f"{s['process']} {f(s['samples'])}" for s in prof["skipped"]))
        if prof["errors"]:
            notes.append("py-spy failed: " + "; ".join(prof["errors"]))
        L += ["; ".join(notes) + ".", ""]
    return L


def markdown(results: dict) -> str:
    cfg = results["config"]
    clients = cfg["clients"]
    ev = results.get("evaluation") or evaluate(results, clients)
    ref, r = ev["reference_clients"], ev["ratios"]
    phases, base, m = results.get("phases", {}), results.get("baselines", {}), results.get("machine", {})
    L = [f"# Benchmark {results['run_id']}", "",
         f"{results.get('started_at', '')} · {results.get('elapsed_s', 0):.0f} s · git {m.get('git', '?')}"
         + (f" (diff {m['git_diff_sha1']})" if m.get("git_diff_sha1") else "")
         + f" · `{results.get('command', 'python -m bench')}`", "",
         f"Machine: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, {m.get('memory_gib', '?')} GiB, "
         f"{m.get('kernel', '')}; PostgreSQL {m.get('postgres', '?')}, Redis {m.get('redis', '?')}, "
         f"Python {m.get('python', '?')}, {m.get('wrk', 'wrk ?')}.", ""]
    if results.get("error"):
        L += [f"**The run stopped early:** `{results['error'].splitlines()[0]}`", ""]

    L += ["## Targets (issue 6)", ""]
    targets_at = len(L)  # the table goes here once every heading a missed target points to is known
    L += [f"Ratios: read@{ref} / hello-world = **{f(r['read_vs_hello'], 3)}**; placement@{ref} / pgbench@{ref} = "
          f"**{f(r['placement_vs_pgbench'], 3)}**; pipeline fulfilled/s / unbatched chain chains/s = "
          f"**{f(r['pipeline_vs_chain'], 3)}**, / batched chain = **{f(r.get('pipeline_vs_chain_batched'), 3)}** "
          f"(best sustained run: {ev.get('best_sustained') or 'none'}).", ""]
    if plot := get(results, "plots", "throughput"):
        L += [f"![Throughput and p99 against clients, beside the baselines]({plot})", ""]
    L += _costs(results, ref)

    per_unit = lambda x, *k: get(x, "db_work", *k)  # noqa: E731
    reads = [(c, phases[f"read@{c}"]) for c in clients if f"read@{c}" in phases]
    if reads:
        L += ["## Read: `GET /api/inventory/products/{id}` through the gateway (wrk)", ""]
        L += table(["connections", "req/s", "p50 ms", "p99 ms", "errors", "peak conns", "commits/req", "stmts/req"],
                   [[c, x["ok_rps"], x["latency_ms"]["p50"], x["latency_ms"]["p99"], x["errors"],
                     get(x, "connections", "peak_total"), per_unit(x, "xact_commit_per_unit"),
                     per_unit(x, "statements", "toplevel_per_unit")] for c, x in reads])

    pages = sorted(((int(n.split("@")[1]), x) for n, x in phases.items() if n.startswith("storefront@")),
                   key=lambda item: item[0])
    if pages:
        hello = get(results, "baselines", "hello", "ok_rps")
        L += ["## Storefront: catalog, search, product and sign-in pages through the gateway and the web "
              "console (wrk)", ""]
        L += table(["visitors", "pages/s", "x hello-world", "p50 ms", "p99 ms", "statuses", "5xx", "socket errors",
                    "CPU ms/page"],
                   [[c, x["ok_rps"], f(round(x["ok_rps"] / hello, 3) if hello else None, 3), x["latency_ms"]["p50"],
                     x["latency_ms"]["p99"],
                     ", ".join(f"{code}: {n}" for code, n in sorted(x["statuses"].items())),
                     sum(n for code, n in x["statuses"].items() if int(code) >= 500),
                     sum(x["socket_errors"].values()), get(x, "cpu_per_unit", "system_ms")] for c, x in pages])

    places = [(c, phases[f"placement@{c}"]) for c in clients if f"placement@{c}" in phases]
    if places:
        L += ["## Placement: `POST /api/orders` through the gateway, Celery worker and beat stopped, admission "
              "control off (wrk)", ""]
        L += table(["clients", "accepted/s", "p50 ms", "p99 ms", "errors", "accepted (db)", "peak conns",
                    "commits/order", "SQL/order", "resets/order"],
                   [[c, x["http"]["ok_rps"], x["http"]["latency_ms"]["p50"], x["http"]["latency_ms"]["p99"],
                     x["http"]["errors"], x["db"]["accepted"], get(x, "connections", "peak_total"),
                     per_unit(x, "xact_commit_per_unit"), per_unit(x, "statements", "sql_per_unit"),
                     per_unit(x, "statements", "reset_per_unit")] for c, x in places])
        if drain := phases.get("backlog-drain"):
            rate = drain["rate"]
            L += [f"Backlog drain afterwards (worker and beat only, no HTTP load): {f(rate['fulfilled'])} orders "
                  f"fulfilled in {f(rate['seconds'])} s = **{f(rate['fulfilled_per_s'])} orders/s**, done "
                  f"(notifications included) in {f(rate.get('done_seconds'))} s = **{f(rate.get('done_per_s'))} "
                  f"orders/s**; drained: {f(drain['drain']['drained'])}; {f(per_unit(drain, 'xact_commit_per_unit'))} "
                  f"commits and {f(per_unit(drain, 'statements', 'toplevel_per_unit'))} statements per fulfilled order "
                  f"(worker side only); peak connections {f(get(drain, 'connections', 'peak_total'))}.", ""]

    runs = pipeline_runs(results)
    if runs:
        pct = lambda g: f"{g * 100:+.1f}%" if g is not None else "–"  # noqa: E731
        L += ["## Pipeline: orders through the gateway with everything running (rates and latencies from the "
              "database)", ""]
        L += table(["run", "accepted/s", "fulfilled/s (gap)", "done/s (gap)", "sustained", "placement p50/p99 ms",
                    "to fulfilled p50/p99 ms", "to done p50/p99 ms", "drain s", "peak conns", "commits/order",
                    "SQL/order", "pool releases/order", "vs chain / batched"],
                   [[n, x["db"]["accepted_per_s"], f"{f(x['db']['fulfilled_per_s'])} ({pct(x['db']['backlog_gap'])})",
                     f"{f(x['db'].get('done_per_s'))} ({pct(x['db'].get('done_gap'))})", f(x["db"]["sustained"]),
                     _pair(x["http"]["latency_ms"], "p50", "p99"),
                     _pair(x["db"]["placement_to_fulfilled"], "p50_ms", "p99_ms"),
                     _pair(x["db"].get("placement_to_done"), "p50_ms", "p99_ms"), x["drain"]["seconds"],
                     get(x, "connections", "peak_total"), per_unit(x, "xact_commit_per_unit"),
                     per_unit(x, "statements", "sql_per_unit"), per_unit(x, "statements", "releases_per_unit"),
                     f"{f(r['pipeline_vs_chain_each'].get(n), 3)} / "
                     f"{f(get(r, 'pipeline_vs_chain_batched_each', n), 3)}"] for n, x in runs])
        L += [f"Rates over the run after a {cfg['trim']:g} s warm-up, counted in the database: accepted = orders "
              "created, fulfilled = 'fulfilled' history rows, done = orders whose last step (fulfilment, or the last "
              "notification of its events sent) fell in the run — notifications included. gap = (accepted/s - x/s) "
              "/ accepted/s; sustained = both gaps within 5% (no growing backlog) and every notification sent. "
              "Latencies are over every order placed in the run, read after the drain: created_at to the "
              "'fulfilled' history row, and to done. `paced@R/s` is an open-loop run at a fixed arrival rate R "
              f"(default: the target rate, {TARGETS['pipeline_ratio']:g} x the unbatched chain's chains/s); the wrk "
              "runs are closed-loop at each client count, `overload@N` at N clients.", ""]
    L += _overload(results, ev.get("latency_budget_s") or LATENCY_BUDGET_S)

    if mixed := phases.get("mixed"):
        L += [f"## Mixed (locust, {mixed['users']} users, tests/locustfile.py)", ""]
        L += table(["request", "count", "failures", "req/s", "p50 ms", "p99 ms"],
                   [[k, v["requests"], v["failures"], v["rps"], v["p50_ms"], v["p99_ms"]]
                    for k, v in mixed["requests"].items()])

    cpu_ms = lambda x: f"{f(get(x, 'cpu_per_unit', 'system_ms'), 2)} per {get(x, 'cpu_per_unit', 'unit')}"  # noqa
    rows = [[f"pgbench order transaction @{c}", f"{f(x['tps'])} tps", x.get("p50_ms"), x.get("p99_ms"), x.get("failed"),
             "–"] for c, x in (get(base, "pgbench", "runs") or {}).items()]
    if rows:
        rows[-1][-1] = cpu_ms(base["pgbench"]) + " (all client counts)"
    if h := base.get("hello"):
        rows.append([f"hello-world Flask, same gunicorn settings @{h['connections']}", f"{f(h['ok_rps'])} req/s",
                     h["latency_ms"]["p50"], h["latency_ms"]["p99"], h["errors"], cpu_ms(h)])
    for key, what in (("chain", "bare Celery chain"), ("chain_batched", "batched bare Celery chain")):
        if c := base.get(key):
            rows.append([f"{what}, {c['hops']} hops, {c['in_flight']} in flight"
                         + (f", <= {c['max_batch']} per message ({f(c['chains_per_message'])} on average)"
                            if c.get("max_batch", 1) > 1 else ""),
                         f"{f(c['chains_per_s'])} chains/s ({f(c['tasks_per_s'])} tasks/s)", "–", "–",
                         "0" if c["all_finished"] else "unfinished chains", cpu_ms(c)])
    L += ["## Baselines (same run, same machine)", ""]
    L += table(["baseline", "throughput", "p50 ms", "p99 ms", "errors", "CPU ms per unit, system"], rows)
    if base.get("chain_batched"):
        L += ["The batched chain batches as the pipeline does: one message carries the payloads of every chain "
              "ready to start (up to the maximum), each hop handles them in turn and forwards the list as one "
              "message; same in-flight count as the unbatched chain. A pipeline ratio above 1.0 against the "
              "unbatched chain is what batching buys; the batched chain is the bound with the same batching.", ""]
    if hops := results.get("pipeline_hops"):
        source = ("tasks three probe orders caused, from the consumers' inbox rows" if get(results, "probe", "hops")
                  else "walked from `order.placed` in `workers.relay.ROUTES`")
        L.append(f"Hops per order ({source}): **{len(hops)}** — " + ", ".join(h["task"] for h in hops) + ".")
        if (walked := results.get("pipeline_hops_routes")) is not None:
            L.append("The walk over `workers.relay.ROUTES` (with FULFILMENT_DELAY_SECONDS <= 0 the reservation "
                     f"step writes order.fulfilled alone) counts {len(walked)}: "
                     + ", ".join(f"{h['task']} ({h['event']})" for h in walked) + ".")
        L.append("")

    L += ["## Connections (pg_stat_activity, sampled every 150 ms; the bench's own excluded)", ""]
    if budget := results.get("connection_budget"):
        L += [f"Configured budget: {budget.get('pool_owners')} pool-owning processes, each at most its DB_POOL_MAX: "
              f"**{budget.get('budget')}** ({budget.get('detail')}); idle after start: "
              f"{budget.get('idle_connections')}.", ""]
    L += table(["phase", "peak total", "peak active", "peak by application_name", "CPU busy (cores)",
                "this run (cores)", "other programs (cores)"],
               [[n, cx["peak_total"], cx["peak_active"], ", ".join(f"{k} {v}" for k, v in
                                                                   cx["peak_by_application_name"].items()),
                 *(get(x, "cpu", k) for k in ("machine_busy_cores", "ours_cores", "other_processes_cores"))]
                for n, x in phases.items() if (cx := x.get("connections"))])
    L += ["CPU busy: the whole machine's busy time over the phase (2.0 = both cores); this run: its processes (system "
          "under test, load generators, servers); other programs: the rest (above 0.1 the run was disturbed by "
          "something else on the machine).", ""]
    rows = [[n, ", ".join(f"{k} {v:.2f}" for k, v in list(by.items())[:7])]
            for n, x in [*phases.items(), *((f"baseline {k}", v) for k, v in base.items() if isinstance(v, dict))]
            if (by := get(x, "cpu", "ours_by_process"))]
    if rows:
        L += ["### Where the CPU went (cores, this run's processes)", ""] + table(["phase", "cores by process"], rows)
        L += ["'load generators' is wrk / pgbench / locust (and processes the bench stopped during the phase); "
              "'bench' is the harness itself (the paced generator, the chain feeder, the samplers); "
              "'profiler (py-spy)' samples the profiled phases (see Profiles).", ""]

    L += ["## Database work (pg_stat_database.xact_commit, pg_stat_statements; all processes)", ""]
    L += table(["phase", "per", "units", "commits", "rollbacks (total)", "statements", "SQL", "BEGIN/COMMIT",
                "reset stmts", "pool releases", "session setup", "nested (triggers, FK checks)"],
               [[n, w["unit"], w["units"], w["xact_commit_per_unit"], w["xact_rollback"]]
                + [get(w, "statements", k + "_per_unit") for k in ("toplevel", "sql", "transaction_control", "reset",
                                                                   "releases", "session_setup", "nested")]
                for n, x in phases.items() if (w := x.get("db_work"))])
    L.append("Per unit. statements = top-level pg_stat_statements calls = SQL + BEGIN/COMMIT + reset stmts + session "
             "setup. 'reset stmts' is what asyncpg sends when a connection goes back to the pool (SELECT "
             "pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL — four statements in one query string, so "
             "one implicit transaction, i.e. one of the commits, per pool release); they are counted apart from the "
             "SQL. 'nested' are statements run inside others (the order-history trigger, foreign-key checks), not "
             "sent by the application.")
    ref_run = _reference_pipeline(results, ref)
    if top := get(ref_run[1] if ref_run else {}, "db_work", "statements", "top"):
        L += ["", "Most frequent statements per fulfilled order in the reference pipeline run:", ""]
        L += table(["per order", "kind", "exec ms (total)", "statement"],
                   [[t["per_unit"], t["kind"], t["exec_ms"], _code(t["query"], 150)] for t in top[:15]])
        L.append("PostgreSQL 18's pg_stat_statements identifies a table by name without its schema, so the same "
                 "statement on users.outbox, orders.outbox and inventory.outbox (or on each schema's inbox) is one "
                 "entry, shown with the schema it was first seen with: read such a row as the sum over schemas.")
    L.append("")
    L += _profiles(phases)

    if checks := results.get("checks"):
        L += ["## Correctness at the end", ""]
        L += table(["check", "result", "detail"],
                   [[k.replace("_", " "), _pass(v["pass"]),
                     _code(str({kk: vv for kk, vv in v.items() if kk != "pass" and vv not in ({}, [], None)}), 200)]
                    for k, v in checks.items() if isinstance(v, dict) and "pass" in v])
        if (mails := get(checks, "mail_received", "count")) is not None:
            L += [f"Mails received by the SMTP sink: {f(mails)}.", ""]

    st = results.get("settings", {})
    L += ["## Settings", "", "Bench: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k != "run_id"), ""]
    if st.get("bench_overrides"):
        L += ["Set by the bench for the system (not in the environment): "
              + ", ".join(f"{k}={v}" for k, v in st["bench_overrides"].items()), ""]
    if st.get("processes"):
        L += ["Processes (the Procfile's lines): " + "; ".join(f"{k}: `{v}`" for k, v in st["processes"].items()), ""]
        if st.get("procfile_entries_not_started"):
            L += ["Procfile entries not started: " + ", ".join(st["procfile_entries_not_started"]) + " (mail is "
                  "replaced by the bench's own counting SMTP sink on SMTP_PORT; Flower is a dashboard).", ""]
    if system := st.get("system"):
        keys = ["db_pool_min", "db_pool_max", "db_timeout", "fulfilment_delay_seconds", "outbox_sweep_seconds",
                "rate_limit_default", "log_level", "log_format", "app_env", "registry_enabled",
                "registry_heartbeat_seconds"]
        L += ["System settings: " + ", ".join(f"{k}={system[k]}" for k in keys if k in system)
              + f"; WEB_CONCURRENCY={st.get('web_concurrency')}, GUNICORN_THREADS={st.get('gunicorn_threads')}, "
              f"CELERY_CONCURRENCY={st.get('celery_concurrency')} (full list in the JSON).", ""]
    if results.get("warnings"):
        L += ["## Warnings", "", *(f"- {w}" for w in results["warnings"]), ""]
    if noisy := {k: v for k, v in (results.get("logs") or {}).items() if v.get("errors")}:
        L += ["Error lines in the processes' logs: " + ", ".join(f"{k} {v['errors']}" for k, v in noisy.items())
              + " (tails kept beside this report).", ""]
    headings = [line.lstrip("#").strip() for line in L if line.startswith("#")]

    def see(t: dict) -> str:  # a missed target points to the section that explains it
        name = t["see"].split(" › ")[-1]
        heading = next((h for h in headings if h == name or h.startswith(t["see"])), None)
        return f" — see [{t['see']}](#{_anchor(heading)})" if heading and t["pass"] is False else ""

    missed = [t for t in ev["targets"] if t["pass"] is False]
    L[targets_at:targets_at] = table(
        ["target", "measured", "result", "detail"],
        [[t["target"], f(t["measured"], 3), _pass(t["pass"]), t["detail"] + see(t)] for t in ev["targets"]]) + (
        [f"Missed: {len(missed)} of {len(ev['targets'])} — " + "; ".join(
            f"{t['target']} ({t['see']})" for t in missed) + ".", ""] if missed else [])
    return "\n".join(L)
