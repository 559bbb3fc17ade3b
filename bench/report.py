"""Ratios, the targets of issue 6 with pass/fail, and the Markdown report."""
from __future__ import annotations

TARGETS = {
    "read_ratio": 0.15,         # read @32 >= 0.15 x hello-world
    "read_p99_ms": 50.0,        # read @32 p99 <= 50 ms
    "placement_ratio": 0.06,    # placement @32 >= 0.06 x pgbench @32
    "pipeline_ratio": 0.5,      # fulfilled/s >= 0.5 x chain chains/s, sustained
    "sustained_gap": 0.05,      # accepted and fulfilled rates within 5%
    "fulfil_p99_ms": 1000.0,    # placement-to-fulfilled p99 <= 1 s at that rate
    "peak_connections": 20,     # whole system, any scenario
    "commits_per_order": 12.0,  # committed transactions per fulfilled order
}


def reference_clients(clients: list[int]) -> int:
    return 32 if 32 in clients else clients[len(clients) // 2]


def _get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def pipeline_runs(results: dict) -> list[tuple[str, dict]]:
    return [(name, r) for name, r in results.get("phases", {}).items()
            if (name.startswith("pipeline@") or name.startswith("paced@")) and "db" in r]


def evaluate(results: dict, clients: list[int]) -> dict:
    """The figures the targets speak of, their ratios, and pass/fail per target."""
    ref = reference_clients(clients)
    phases = results.get("phases", {})
    base = results.get("baselines", {})
    hello = _get(base, "hello", "ok_rps")
    read = phases.get(f"read@{ref}", {})
    read_rps, read_p99 = read.get("ok_rps"), _get(read, "latency_ms", "p99")
    pg = _get(base, "pgbench", "runs", str(ref), "tps")
    placement = phases.get(f"placement@{ref}", {})
    place_rps = _get(placement, "http", "ok_rps")
    chain = _get(base, "chain", "chains_per_s")

    runs = pipeline_runs(results)
    sustained = [(n, r) for n, r in runs if r["db"].get("sustained")]
    best = max(sustained, key=lambda nr: nr[1]["db"]["fulfilled_per_s"], default=None)
    fast_enough = [(n, r) for n, r in sustained
                   if chain and r["db"]["fulfilled_per_s"] >= TARGETS["pipeline_ratio"] * chain]
    best_latency = min(fast_enough, key=lambda nr: nr[1]["db"]["placement_to_fulfilled"]["p99_ms"] or 1e18,
                       default=None)

    peak = max(((r.get("connections") or {}).get("peak_total", 0), n) for n, r in phases.items()) if phases else (None, None)
    ref_pipeline = next((nr for nr in runs if nr[0].startswith("paced@")), None) or \
        next((nr for nr in runs if nr[0] == f"pipeline@{ref}"), None)
    commits = _get(ref_pipeline[1], "db_work", "xact_commit_per_unit") if ref_pipeline else None

    ratios = {
        "read_vs_hello": _ratio(read_rps, hello),
        "placement_vs_pgbench": _ratio(place_rps, pg),
        "pipeline_vs_chain": _ratio(best[1]["db"]["fulfilled_per_s"] if best else None, chain),
        "pipeline_vs_chain_each": {n: _ratio(r["db"]["fulfilled_per_s"], chain) for n, r in runs},
    }

    def target(name, measured, ok, detail):
        return {"target": name, "measured": measured, "pass": ok, "detail": detail}

    targets = [
        target(f"read @{ref} >= {TARGETS['read_ratio']} x hello-world", ratios["read_vs_hello"],
               None if ratios["read_vs_hello"] is None else ratios["read_vs_hello"] >= TARGETS["read_ratio"],
               f"{read_rps} / {hello} req/s"),
        target(f"read @{ref} p99 <= {TARGETS['read_p99_ms']:g} ms", read_p99,
               None if read_p99 is None else read_p99 <= TARGETS["read_p99_ms"], f"{read_p99} ms"),
        target(f"placement @{ref} >= {TARGETS['placement_ratio']} x pgbench @{ref}", ratios["placement_vs_pgbench"],
               None if ratios["placement_vs_pgbench"] is None else ratios["placement_vs_pgbench"] >= TARGETS["placement_ratio"],
               f"{place_rps} orders/s / {pg} tps"),
        target(f"pipeline fulfilled/s >= {TARGETS['pipeline_ratio']} x chain chains/s, sustained (gap <= 5%)",
               ratios["pipeline_vs_chain"],
               None if chain is None or not runs else bool(fast_enough),
               (f"best sustained run {best[0]}: {best[1]['db']['fulfilled_per_s']}/s vs chain {chain}/s"
                if best else f"no run was sustained (chain {chain}/s)")),
        target(f"placement-to-fulfilled p99 <= {TARGETS['fulfil_p99_ms']:g} ms at that sustained rate",
               best_latency[1]["db"]["placement_to_fulfilled"]["p99_ms"] if best_latency else
               (best[1]["db"]["placement_to_fulfilled"]["p99_ms"] if best else None),
               None if chain is None or not runs else bool(
                   best_latency and (best_latency[1]["db"]["placement_to_fulfilled"]["p99_ms"] or 1e18)
                   <= TARGETS["fulfil_p99_ms"]),
               (f"{best_latency[0]}" if best_latency else "no sustained run at >= 0.5 x chain; shown: best sustained run")),
        target(f"peak PostgreSQL connections <= {TARGETS['peak_connections']} (any scenario)", peak[0],
               None if peak[0] is None else peak[0] <= TARGETS["peak_connections"], f"in {peak[1]}"),
        target(f"<= {TARGETS['commits_per_order']:g} committed transactions per fulfilled order", commits,
               None if commits is None else commits <= TARGETS["commits_per_order"],
               f"in {ref_pipeline[0]}" if ref_pipeline else "no pipeline run"),
    ]
    return {"reference_clients": ref, "ratios": ratios, "targets": targets,
            "best_sustained": best[0] if best else None}


# -- Markdown ------------------------------------------------------------------------------------

def _f(x, nd=1):
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for row in rows:
        out.append("| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |")
    return out


def _pass(v) -> str:
    return "n/a" if v is None else ("**pass**" if v else "**FAIL**")


def _per_unit(cpu: dict | None, rate: float | None) -> tuple[float | None, str]:
    """CPU milliseconds per unit of work (the run's own processes), and the largest shares."""
    if not cpu or not rate:
        return None, "–"
    by = sorted((cpu.get("ours_by_process") or {}).items(), key=lambda kv: -kv[1])
    top = ", ".join(f"{name} {1000 * cores / rate:.2f}" for name, cores in by[:5] if cores >= 0.01)
    return 1000 * cpu.get("ours_cores", 0) / rate, top


def _costs(results: dict, ev: dict) -> list[str]:
    """Why a ratio is what it is: CPU per unit of work next to the baseline's, and what a target needs.

    On a CPU-bound machine a throughput ratio is the inverse ratio of CPU per unit, so this
    table says where each miss comes from; the profiles below say which code spends it.
    """
    ref = ev["reference_clients"]
    phases, base = results.get("phases", {}), results.get("baselines", {})
    cores = (results.get("machine") or {}).get("cores") or 2
    pg_runs = [r["tps"] for r in (_get(base, "pgbench", "runs") or {}).values() if r.get("tps")]
    read, place = phases.get(f"read@{ref}", {}), phases.get(f"placement@{ref}", {})
    runs = pipeline_runs(results)
    paced = next((nr for nr in runs if nr[0].startswith("paced@")), None)
    rows = [
        (f"read@{ref}", "request", read.get("ok_rps"), read.get("cpu")),
        ("hello-world", "request", _get(base, "hello", "ok_rps"), _get(base, "hello", "cpu")),
        (f"placement@{ref}", "accepted order", _get(place, "http", "ok_rps"), place.get("cpu")),
        ("pgbench order transaction", "transaction (≈, all client counts)",
         sum(pg_runs) / len(pg_runs) if pg_runs else None, _get(base, "pgbench", "cpu")),
    ]
    if paced:
        rows.append((paced[0], "fulfilled order (placement, tasks, mails)", paced[1]["db"].get("fulfilled_per_s"),
                     paced[1].get("cpu")))
    rows.append(("bare Celery chain", "chain", _get(base, "chain", "chains_per_s"), _get(base, "chain", "cpu")))
    table = []
    for name, unit, rate, cpu in rows:
        ms, top = _per_unit(cpu, rate)
        table.append([name, unit, rate, ms, top])
    L = ["### Why: CPU per unit of work", "",
         f"Cores used by the run's processes divided by the rate (the machine has {cores}); the largest "
         "shares by process in ms per unit. When the machine is busy, a throughput ratio is roughly the "
         "inverse of the CPU-per-unit ratio.", ""]
    L += _table(["run", "unit", "rate /s", "CPU ms per unit", "largest shares (ms per unit)"], table)
    L.append("")
    needs = []
    conns = read.get("connections") and ref
    if conns:
        needed = ref / (TARGETS["read_p99_ms"] / 1000)
        needs.append(f"read p99 <= {TARGETS['read_p99_ms']:g} ms with {ref} connections always busy needs at "
                     f"least {needed:,.0f} req/s (Little's law: rate = connections / latency, and the mean is "
                     f"below the p99), i.e. <= {1000 * cores / needed:.2f} ms of CPU per request on {cores} cores "
                     "for everything on the machine")
    pg = _get(base, "pgbench", "runs", str(ref), "tps")
    if pg:
        needed = TARGETS["placement_ratio"] * pg
        needs.append(f"placement >= {TARGETS['placement_ratio']} x pgbench needs {needed:,.0f} orders/s, i.e. "
                     f"<= {1000 * cores / needed:.2f} ms of CPU per accepted order")
    chain = _get(base, "chain", "chains_per_s")
    if chain:
        needed = TARGETS["pipeline_ratio"] * chain
        needs.append(f"the pipeline target needs {needed:,.1f} fulfilled orders/s with placement running, i.e. "
                     f"<= {1000 * cores / needed:.1f} ms of CPU per order, placement and notifications included")
    if needs:
        L += ["What the targets need on this machine:", ""] + [f"- {n}" for n in needs] + [""]
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
         f"{first['seconds']} s. A sample is kept only if a thread of the process holds the GIL: the profile is "
         "of the CPU spent running Python (waits, and C code that releases the GIL, are not in it). 'cores' is "
         "the processes' CPU over the window as the kernel counts it; 'unreadable' are samples py-spy could not "
         "read because it does not pause the process. 'in the stack' = share of the samples with the function "
         "anywhere in the stack (thread, run-loop and WSGI/view-dispatch plumbing left out); 'running' = share "
         "with it at the top. Raw stacks (`frame;frame;... count` per line, for flamegraph.pl or speedscope) are "
         "in `profiles/` of the logs folder beside this report.", ""]
    for name, prof in profiled:
        L.append(f"### {name}")
        L.append("")
        for proc in prof["processes"]:
            L.append(f"**{proc['process']}** (pid {', '.join(str(p) for p in proc['pids'])}): "
                     f"{_f(proc['cores'], 2)} cores, {_f(proc['samples'])} samples "
                     f"({_f(proc['failed_reads'])} unreadable)")
            L.append("")
            L += _table(["in the stack", "%", "running", "%"], _side_by_side(proc["inclusive"], proc["self"]))
            L.append("")
        notes = [f"py-spy itself used {_f(prof['profiler_cores'], 2)} cores"]
        if prof["skipped"]:
            notes.append(f"not shown (samples in under {prof['min_share']:.0%} of the ticks): " + ", ".join(
                f"{s['process']} {_f(s['samples'])}" for s in prof["skipped"]))
        if prof["errors"]:
            notes.append("py-spy failed: " + "; ".join(prof["errors"]))
        L.append("; ".join(notes) + ".")
        L.append("")
    return L


def _side_by_side(*columns: list[dict]) -> list[list[str]]:
    rows = []
    for i in range(max(len(c) for c in columns)):
        row = []
        for column in columns:
            row += [_code(column[i]["function"]), f"{column[i]['percent']:.1f}"] if i < len(column) else ["", ""]
        rows.append(row)
    return rows


def _code(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def markdown(results: dict) -> str:
    cfg = results["config"]
    clients = cfg["clients"]
    ev = results.get("evaluation") or evaluate(results, clients)
    phases = results.get("phases", {})
    base = results.get("baselines", {})
    m = results.get("machine", {})
    L: list[str] = []
    L.append(f"# Benchmark {results['run_id']}")
    L.append("")
    L.append(f"{results.get('started_at', '')} · {results.get('elapsed_s', 0):.0f} s · git {m.get('git', '?')}"
             + (f" (diff {m['git_diff_sha1']})" if m.get("git_diff_sha1") else "") + " · "
             f"`{results.get('command', 'python -m bench')}`")
    L.append("")
    L.append(f"Machine: {m.get('cpu_model', '?')}, {m.get('cores', '?')} cores, "
             f"{m.get('memory_gib', '?')} GiB, {m.get('kernel', '')}; PostgreSQL {m.get('postgres', '?')}, "
             f"Redis {m.get('redis', '?')}, Python {m.get('python', '?')}, {m.get('wrk', 'wrk ?')}.")
    L.append("")
    if results.get("error"):
        L.append(f"**The run stopped early:** `{results['error'].splitlines()[0]}`")
        L.append("")

    # Targets first: what the lead reads.
    L.append("## Targets (issue 6)")
    L.append("")
    L += _table(["target", "measured", "result", "detail"],
                [[t["target"], _f(t["measured"], 3) if isinstance(t["measured"], float) else _f(t["measured"]),
                  _pass(t["pass"]), t["detail"]] for t in ev["targets"]])
    L.append("")
    r = ev["ratios"]
    ref = ev["reference_clients"]
    L.append(f"Ratios: read@{ref} / hello-world = **{_f(r['read_vs_hello'], 3)}**; placement@{ref} / pgbench@{ref} = "
             f"**{_f(r['placement_vs_pgbench'], 3)}**; pipeline fulfilled/s / chain chains/s = "
             f"**{_f(r['pipeline_vs_chain'], 3)}** (best sustained run: {ev.get('best_sustained') or 'none'}).")
    L.append("")
    L += _costs(results, ev)

    # Read
    reads = [(c, phases.get(f"read@{c}")) for c in clients if phases.get(f"read@{c}")]
    if reads:
        L.append("## Read: `GET /api/inventory/products/{id}` through the gateway (wrk)")
        L.append("")
        L += _table(["connections", "req/s", "p50 ms", "p99 ms", "errors", "peak conns", "commits/req", "stmts/req"],
                    [[c, x["ok_rps"], x["latency_ms"]["p50"], x["latency_ms"]["p99"], x["errors"],
                      _get(x, "connections", "peak_total"), _get(x, "db_work", "xact_commit_per_unit"),
                      _get(x, "db_work", "statements", "toplevel_per_unit")] for c, x in reads])
        L.append("")

    # Placement
    places = [(c, phases.get(f"placement@{c}")) for c in clients if phases.get(f"placement@{c}")]
    if places:
        L.append("## Placement: `POST /api/orders` through the gateway, Celery worker and beat stopped (wrk)")
        L.append("")
        L += _table(["clients", "accepted/s", "p50 ms", "p99 ms", "errors", "accepted (db)", "peak conns",
                     "commits/order", "SQL/order", "resets/order"],
                    [[c, x["http"]["ok_rps"], x["http"]["latency_ms"]["p50"], x["http"]["latency_ms"]["p99"],
                      x["http"]["errors"], x["db"]["accepted"], _get(x, "connections", "peak_total"),
                      _get(x, "db_work", "xact_commit_per_unit"), _get(x, "db_work", "statements", "sql_per_unit"),
                      _get(x, "db_work", "statements", "reset_per_unit")] for c, x in places])
        drain = phases.get("backlog-drain")
        if drain:
            L.append("")
            L.append(f"Backlog drain afterwards (worker and beat only, no HTTP load): "
                     f"{_f(drain['rate']['fulfilled'])} orders fulfilled in {_f(drain['rate']['seconds'])} s = "
                     f"**{_f(drain['rate']['fulfilled_per_s'])} orders/s**, done (notifications included) in "
                     f"{_f(drain['rate'].get('done_seconds'))} s = **{_f(drain['rate'].get('done_per_s'))} orders/s**; "
                     f"drained: {_f(drain['drain']['drained'])}; "
                     f"{_f(_get(drain, 'db_work', 'xact_commit_per_unit'))} commits and "
                     f"{_f(_get(drain, 'db_work', 'statements', 'toplevel_per_unit'))} statements per fulfilled "
                     f"order (worker side only); peak connections {_f(_get(drain, 'connections', 'peak_total'))}.")
        L.append("")

    # Pipeline
    runs = pipeline_runs(results)
    if runs:
        L.append("## Pipeline: orders through the gateway with everything running (rates and latencies from the database)")
        L.append("")
        pct = (lambda g: f"{g * 100:+.1f}%" if g is not None else "–")
        L += _table(["run", "accepted/s", "fulfilled/s (gap)", "done/s (gap)", "sustained", "placement p50/p99 ms",
                     "to fulfilled p50/p99 ms", "to done p50/p99 ms", "drain s", "peak conns",
                     "commits/order", "SQL/order", "pool releases/order", "vs chain"],
                    [[n, x["db"]["accepted_per_s"],
                      f"{_f(x['db']['fulfilled_per_s'])} ({pct(x['db']['backlog_gap'])})",
                      f"{_f(x['db'].get('done_per_s'))} ({pct(x['db'].get('done_gap'))})",
                      _f(x["db"]["sustained"]),
                      f"{_f(x['http']['latency_ms']['p50'])} / {_f(x['http']['latency_ms']['p99'])}",
                      f"{_f(x['db']['placement_to_fulfilled']['p50_ms'])} / {_f(x['db']['placement_to_fulfilled']['p99_ms'])}",
                      f"{_f(_get(x, 'db', 'placement_to_done', 'p50_ms'))} / {_f(_get(x, 'db', 'placement_to_done', 'p99_ms'))}",
                      x["drain"]["seconds"], _get(x, "connections", "peak_total"),
                      _get(x, "db_work", "xact_commit_per_unit"), _get(x, "db_work", "statements", "sql_per_unit"),
                      _get(x, "db_work", "statements", "releases_per_unit"),
                      r["pipeline_vs_chain_each"].get(n)] for n, x in runs])
        L.append("")
        L.append("Rates over the run after a "
                 f"{cfg['trim']:g} s warm-up, counted in the database: accepted = orders created, fulfilled = "
                 "'fulfilled' history rows, done = orders whose last step (fulfilment, or the last notification of "
                 "its events sent) fell in the run — notifications included. gap = (accepted/s - x/s) / accepted/s; "
                 "sustained = both gaps within 5% (no growing backlog). Latencies are over every order placed in "
                 "the run, read after the drain: created_at to the 'fulfilled' history row, and to done. "
                 "`paced@R/s` is an open-loop run at a fixed arrival rate R (default: the target rate, "
                 "0.5 x the chain's chains/s); the wrk runs are closed-loop at each client count.")
        L.append("")

    mixed = phases.get("mixed")
    if mixed:
        L.append(f"## Mixed (locust, {mixed['users']} users, tests/locustfile.py)")
        L.append("")
        L += _table(["request", "count", "failures", "req/s", "p50 ms", "p99 ms"],
                    [[k, v["requests"], v["failures"], v["rps"], v["p50_ms"], v["p99_ms"]]
                     for k, v in mixed["requests"].items()])
        L.append("")

    # Baselines
    L.append("## Baselines (same run, same machine)")
    L.append("")
    rows = []
    for c, x in (_get(base, "pgbench", "runs") or {}).items():
        rows.append([f"pgbench order transaction @{c}", f"{_f(x['tps'])} tps", x.get("p50_ms"), x.get("p99_ms"),
                     x.get("failed")])
    if base.get("hello"):
        h = base["hello"]
        rows.append([f"hello-world Flask, same gunicorn settings @{h['connections']}", f"{_f(h['ok_rps'])} req/s",
                     h["latency_ms"]["p50"], h["latency_ms"]["p99"], h["errors"]])
    if base.get("chain"):
        c = base["chain"]
        rows.append([f"bare Celery chain, {c['hops']} hops, {c['in_flight']} in flight",
                     f"{_f(c['chains_per_s'])} chains/s ({_f(c['tasks_per_s'])} tasks/s)", "–", "–",
                     "0" if c["all_finished"] else "unfinished chains"])
    L += _table(["baseline", "throughput", "p50 ms", "p99 ms", "errors"], rows)
    hops = results.get("pipeline_hops") or []
    walked = results.get("pipeline_hops_routes")
    observed = _get(results, "probe", "hops")
    if hops:
        L.append("")
        source = ("tasks three probe orders caused, from the consumers' inbox rows" if observed
                  else "walked from `order.placed` in `workers.relay.ROUTES`")
        L.append(f"Hops per order ({source}): **{len(hops)}** — " +
                 ", ".join(h["task"] for h in hops) + ".")
        if walked is not None:
            L.append(f"The walk over `workers.relay.ROUTES` (delayed routes skipped when FULFILMENT_DELAY_SECONDS "
                     f"<= 0, as the relay does) counts {len(walked)}: " + ", ".join(
                         f"{h['task']} ({h['event']})" for h in walked) + ".")
    L.append("")

    # Connections
    L.append("## Connections (pg_stat_activity, sampled every 150 ms; the bench's own excluded)")
    L.append("")
    budget = results.get("connection_budget", {})
    if budget:
        L.append(f"Configured budget: {budget.get('pool_owners')} pool-owning processes, each at most its "
                 f"DB_POOL_MAX: **{budget.get('budget')}** ({budget.get('detail')}); "
                 f"idle after start: {budget.get('idle_connections')}.")
        L.append("")
    rows = []
    for n, x in phases.items():
        cx = x.get("connections")
        if cx:
            rows.append([n, cx["peak_total"], cx["peak_active"],
                         ", ".join(f"{k} {v}" for k, v in cx["peak_by_application_name"].items()),
                         _get(x, "cpu", "machine_busy_cores"), _get(x, "cpu", "ours_cores"),
                         _get(x, "cpu", "other_processes_cores")])
    L += _table(["phase", "peak total", "peak active", "peak by application_name", "CPU busy (cores)",
                 "this run (cores)", "other programs (cores)"], rows)
    L.append("")
    L.append("CPU busy: the whole machine's busy time over the phase (2.0 = both cores); this run: its processes "
             "(system under test, load generators, servers); other programs: the rest (above 0.1 the run was "
             "disturbed by something else on the machine).")
    L.append("")

    rows = []
    for n, x in list(phases.items()) + [(f"baseline {k}", v) for k, v in base.items() if isinstance(v, dict)]:
        by = _get(x, "cpu", "ours_by_process")
        if by:
            rows.append([n, ", ".join(f"{k} {v:.2f}" for k, v in list(by.items())[:7])])
    if rows:
        L.append("### Where the CPU went (cores, this run's processes)")
        L.append("")
        L += _table(["phase", "cores by process"], rows)
        L.append("")
        L.append("'load generators' is wrk / pgbench / locust (and processes the bench stopped during the phase); "
                 "'bench' is the harness itself (the paced generator, the chain feeder, the samplers); "
                 "'profiler (py-spy)' samples the profiled phases (see Profiles).")
        L.append("")

    # Database work
    L.append("## Database work (pg_stat_database.xact_commit, pg_stat_statements; all processes)")
    L.append("")
    rows = []
    for n, x in phases.items():
        w = x.get("db_work")
        if not w:
            continue
        s = w.get("statements") or {}
        rows.append([n, w["unit"], w["units"], w["xact_commit_per_unit"], w["xact_rollback"],
                     s.get("toplevel_per_unit"), s.get("sql_per_unit"), s.get("transaction_control_per_unit"),
                     s.get("reset_per_unit"), s.get("releases_per_unit"), s.get("session_setup_per_unit"),
                     s.get("nested_per_unit")])
    L += _table(["phase", "per", "units", "commits", "rollbacks (total)", "statements", "SQL", "BEGIN/COMMIT",
                 "reset stmts", "pool releases", "session setup", "nested (triggers, FK checks)"], rows)
    L.append("")
    L.append("Per unit. statements = top-level pg_stat_statements calls = SQL + BEGIN/COMMIT + reset stmts + "
             "session setup. 'reset stmts' is what asyncpg sends when a connection goes back to the pool "
             "(SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL — four statements in one "
             "query string, so one implicit transaction, i.e. one of the commits, per pool release); they are "
             "counted apart from the SQL. 'nested' are statements run inside others (the order-history trigger, "
             "foreign-key checks), not sent by the application.")
    ref_run = next((x for n, x in runs if n.startswith("paced@")), None) or phases.get(f"pipeline@{ref}")
    top = _get(ref_run or {}, "db_work", "statements", "top")
    if top:
        L.append("")
        L.append("Most frequent statements per fulfilled order in the reference pipeline run:")
        L.append("")
        L += _table(["per order", "kind", "exec ms (total)", "statement"],
                    [[t["per_unit"], t["kind"], t["exec_ms"], "`" + t["query"][:150].replace("|", "\\|") + "`"]
                     for t in top[:15]])
        L.append("")
        L.append("PostgreSQL 18's pg_stat_statements identifies a table by name without its schema, so the same "
                 "statement on users.outbox, orders.outbox and inventory.outbox (or on each schema's inbox) is one "
                 "entry, shown with the schema it was first seen with: read such a row as the sum over schemas.")
    L.append("")

    L += _profiles(phases)

    # Correctness
    checks = results.get("checks")
    if checks:
        L.append("## Correctness at the end")
        L.append("")
        rows = []
        for k, v in checks.items():
            if not isinstance(v, dict) or "pass" not in v:
                continue
            detail = {kk: vv for kk, vv in v.items() if kk != "pass" and vv not in ({}, [], None)}
            rows.append([k.replace("_", " "), _pass(v["pass"]), "`" + str(detail)[:200] + "`"])
        L += _table(["check", "result", "detail"], rows)
        mails = _get(checks, "mail_received", "count")
        if mails is not None:
            L.append("")
            L.append(f"Mails received by the SMTP sink: {_f(mails)}.")
        L.append("")

    # Settings
    L.append("## Settings")
    L.append("")
    L.append("Bench: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if k not in ("run_id",)))
    L.append("")
    st = results.get("settings", {})
    if st.get("bench_overrides"):
        L.append("Set by the bench for the system (not in the environment): " +
                 ", ".join(f"{k}={v}" for k, v in st["bench_overrides"].items()))
        L.append("")
    if st.get("processes"):
        L.append("Processes (the Procfile's lines): " + "; ".join(f"{k}: `{v}`" for k, v in st["processes"].items()))
        L.append("")
        if st.get("procfile_entries_not_started"):
            L.append("Procfile entries not started: " + ", ".join(st["procfile_entries_not_started"]) +
                     " (mail is replaced by the bench's own counting SMTP sink on SMTP_PORT; Flower is a dashboard).")
            L.append("")
    if st.get("system"):
        keys = ["db_pool_min", "db_pool_max", "db_timeout", "fulfilment_delay_seconds", "outbox_sweep_seconds",
                "rate_limit_default", "log_level", "log_format", "app_env", "registry_enabled",
                "registry_heartbeat_seconds"]
        L.append("System settings: " + ", ".join(f"{k}={st['system'][k]}" for k in keys if k in st["system"]) +
                 f"; WEB_CONCURRENCY={st.get('web_concurrency')}, GUNICORN_THREADS={st.get('gunicorn_threads')}, "
                 f"CELERY_CONCURRENCY={st.get('celery_concurrency')} (full list in the JSON).")
        L.append("")
    if results.get("warnings"):
        L.append("## Warnings")
        L.append("")
        for w in results["warnings"]:
            L.append(f"- {w}")
        L.append("")
    logs = results.get("logs")
    if logs:
        noisy = {k: v for k, v in logs.items() if v.get("errors")}
        if noisy:
            L.append("Error lines in the processes' logs: " + ", ".join(f"{k} {v['errors']}" for k, v in noisy.items())
                     + " (tails kept beside this report).")
            L.append("")
    return "\n".join(L)
