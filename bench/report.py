"""The targets of issue 6 with pass/fail, the ratios, and the Markdown report of a run's results."""
from __future__ import annotations

TARGETS = {
    "read_ratio": 0.15,         # read @32 >= 0.15 x hello-world
    "read_p99_ms": 50.0,        # read @32 p99 <= 50 ms
    "placement_ratio": 0.06,    # placement @32 >= 0.06 x pgbench @32
    "pipeline_ratio": 0.5,      # fulfilled/s >= 0.5 x chain chains/s, sustained (accepted and fulfilled within 5%)
    "fulfil_p99_ms": 1000.0,    # placement-to-fulfilled p99 <= 1 s at that rate
    "peak_connections": 20,     # whole system, any scenario
    "commits_per_order": 12.0,  # committed transactions per fulfilled order
}


def reference_clients(clients: list[int]) -> int:
    return 32 if 32 in clients else clients[len(clients) // 2]


def get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def pipeline_runs(results: dict) -> list[tuple[str, dict]]:
    return [(n, r) for n, r in results.get("phases", {}).items() if n.startswith(("pipeline@", "paced@")) and "db" in r]


def _reference_pipeline(results: dict, ref: int):
    """The paced run if there is one (the target's rate), else the closed-loop run at the reference count."""
    runs = pipeline_runs(results)
    return next((nr for nr in runs if nr[0].startswith("paced@")), None) or \
        next((nr for nr in runs if nr[0] == f"pipeline@{ref}"), None)


def evaluate(results: dict, clients: list[int]) -> dict:
    """The figures the targets speak of, their ratios, and pass/fail per target (None: not measured)."""
    ref = reference_clients(clients)
    phases, base = results.get("phases", {}), results.get("baselines", {})
    hello, pg, chain = get(base, "hello", "ok_rps"), get(base, "pgbench", "runs", str(ref), "tps"), \
        get(base, "chain", "chains_per_s")
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
    ratio = lambda a, b: round(a / b, 3) if a is not None and b else None  # noqa: E731
    ratios = {"read_vs_hello": ratio(read_rps, hello), "placement_vs_pgbench": ratio(place_rps, pg),
              "pipeline_vs_chain": ratio(rate(best[1]) if best else None, chain),
              "pipeline_vs_chain_each": {n: ratio(rate(r), chain) for n, r in runs}}
    at_least = lambda x, t: None if x is None else x >= t  # noqa: E731
    at_most = lambda x, t: None if x is None else x <= t  # noqa: E731
    no_pipeline = chain is None or not runs
    targets = [
        (f"read @{ref} >= {TARGETS['read_ratio']} x hello-world", ratios["read_vs_hello"],
         at_least(ratios["read_vs_hello"], TARGETS["read_ratio"]), f"{read_rps} / {hello} req/s"),
        (f"read @{ref} p99 <= {TARGETS['read_p99_ms']:g} ms", read_p99, at_most(read_p99, TARGETS["read_p99_ms"]),
         f"{read_p99} ms"),
        (f"placement @{ref} >= {TARGETS['placement_ratio']} x pgbench @{ref}", ratios["placement_vs_pgbench"],
         at_least(ratios["placement_vs_pgbench"], TARGETS["placement_ratio"]), f"{place_rps} orders/s / {pg} tps"),
        (f"pipeline fulfilled/s >= {TARGETS['pipeline_ratio']} x chain chains/s, sustained (gap <= 5%)",
         ratios["pipeline_vs_chain"], None if no_pipeline else bool(fast),
         f"best sustained run {best[0]}: {rate(best[1])}/s vs chain {chain}/s" if best
         else f"no run was sustained (chain {chain}/s)"),
        (f"placement-to-fulfilled p99 <= {TARGETS['fulfil_p99_ms']:g} ms at that sustained rate",
         p99(best_latency[1]) if best_latency else (p99(best[1]) if best else None),
         None if no_pipeline else bool(best_latency and (p99(best_latency[1]) or 1e18) <= TARGETS["fulfil_p99_ms"]),
         best_latency[0] if best_latency else "no sustained run at >= 0.5 x chain; shown: best sustained run"),
        (f"peak PostgreSQL connections <= {TARGETS['peak_connections']} (any scenario)", peak[0],
         at_most(peak[0], TARGETS["peak_connections"]), f"in {peak[1]}"),
        (f"<= {TARGETS['commits_per_order']:g} committed transactions per fulfilled order", commits,
         at_most(commits, TARGETS["commits_per_order"]),
         f"in {ref_pipeline[0]}" if ref_pipeline else "no pipeline run"),
    ]
    return {"reference_clients": ref, "ratios": ratios, "best_sustained": best[0] if best else None,
            "targets": [dict(zip(("target", "measured", "pass", "detail"), t)) for t in targets]}


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


def _costs(results: dict, ref: int) -> list[str]:
    """Why a ratio is what it is: CPU per unit of work next to the baseline's, and what a target needs.
    On a CPU-bound machine a throughput ratio is the inverse ratio of CPU per unit."""
    phases, base = results.get("phases", {}), results.get("baselines", {})
    cores = get(results, "machine", "cores") or 2
    pg_tps = [r["tps"] for r in (get(base, "pgbench", "runs") or {}).values() if r.get("tps")]
    read, place = phases.get(f"read@{ref}", {}), phases.get(f"placement@{ref}", {})
    paced = next((nr for nr in pipeline_runs(results) if nr[0].startswith("paced@")), None)
    rows = [(f"read@{ref}", "request", read.get("ok_rps"), read.get("cpu")),
            ("hello-world", "request", get(base, "hello", "ok_rps"), get(base, "hello", "cpu")),
            (f"placement@{ref}", "accepted order", get(place, "http", "ok_rps"), place.get("cpu")),
            ("pgbench order transaction", "transaction (≈, all client counts)",
             sum(pg_tps) / len(pg_tps) if pg_tps else None, get(base, "pgbench", "cpu"))]
    if paced:
        rows.append((paced[0], "fulfilled order (placement, tasks, mails)", paced[1]["db"].get("fulfilled_per_s"),
                     paced[1].get("cpu")))
    rows.append(("bare Celery chain", "chain", get(base, "chain", "chains_per_s"), get(base, "chain", "cpu")))
    out = []
    for name, unit, rate, cpu in rows:
        ms, top = (None, "–") if not cpu or not rate else (1000 * cpu.get("ours_cores", 0) / rate, ", ".join(
            f"{p} {1000 * c / rate:.2f}" for p, c in list((cpu.get("ours_by_process") or {}).items())[:5] if c >= 0.01))
        out.append([name, unit, rate, ms, top])
    L = ["### Why: CPU per unit of work", "",
         f"Cores used by the run's processes divided by the rate (the machine has {cores}); the largest shares by "
         "process in ms per unit. When the machine is busy, a throughput ratio is roughly the inverse of the "
         "CPU-per-unit ratio.", ""]
    L += table(["run", "unit", "rate /s", "CPU ms per unit", "largest shares (ms per unit)"], out)
    needs = []
    if read.get("connections"):
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
                     f"<= {1000 * cores / rate:.1f} ms of CPU per order, placement and notifications included")
    return L + (["What the targets need on this machine:", "", *(f"- {n}" for n in needs), ""] if needs else [])


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
    L += table(["target", "measured", "result", "detail"],
               [[t["target"], f(t["measured"], 3), _pass(t["pass"]), t["detail"]] for t in ev["targets"]])
    L += [f"Ratios: read@{ref} / hello-world = **{f(r['read_vs_hello'], 3)}**; placement@{ref} / pgbench@{ref} = "
          f"**{f(r['placement_vs_pgbench'], 3)}**; pipeline fulfilled/s / chain chains/s = "
          f"**{f(r['pipeline_vs_chain'], 3)}** (best sustained run: {ev.get('best_sustained') or 'none'}).", ""]
    L += _costs(results, ref)

    per_unit = lambda x, *k: get(x, "db_work", *k)  # noqa: E731
    reads = [(c, phases[f"read@{c}"]) for c in clients if f"read@{c}" in phases]
    if reads:
        L += ["## Read: `GET /api/inventory/products/{id}` through the gateway (wrk)", ""]
        L += table(["connections", "req/s", "p50 ms", "p99 ms", "errors", "peak conns", "commits/req", "stmts/req"],
                   [[c, x["ok_rps"], x["latency_ms"]["p50"], x["latency_ms"]["p99"], x["errors"],
                     get(x, "connections", "peak_total"), per_unit(x, "xact_commit_per_unit"),
                     per_unit(x, "statements", "toplevel_per_unit")] for c, x in reads])

    places = [(c, phases[f"placement@{c}"]) for c in clients if f"placement@{c}" in phases]
    if places:
        L += ["## Placement: `POST /api/orders` through the gateway, Celery worker and beat stopped (wrk)", ""]
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
                    "SQL/order", "pool releases/order", "vs chain"],
                   [[n, x["db"]["accepted_per_s"], f"{f(x['db']['fulfilled_per_s'])} ({pct(x['db']['backlog_gap'])})",
                     f"{f(x['db'].get('done_per_s'))} ({pct(x['db'].get('done_gap'))})", f(x["db"]["sustained"]),
                     _pair(x["http"]["latency_ms"], "p50", "p99"),
                     _pair(x["db"]["placement_to_fulfilled"], "p50_ms", "p99_ms"),
                     _pair(x["db"].get("placement_to_done"), "p50_ms", "p99_ms"), x["drain"]["seconds"],
                     get(x, "connections", "peak_total"), per_unit(x, "xact_commit_per_unit"),
                     per_unit(x, "statements", "sql_per_unit"), per_unit(x, "statements", "releases_per_unit"),
                     r["pipeline_vs_chain_each"].get(n)] for n, x in runs])
        L += [f"Rates over the run after a {cfg['trim']:g} s warm-up, counted in the database: accepted = orders "
              "created, fulfilled = 'fulfilled' history rows, done = orders whose last step (fulfilment, or the last "
              "notification of its events sent) fell in the run — notifications included. gap = (accepted/s - x/s) "
              "/ accepted/s; sustained = both gaps within 5% (no growing backlog). Latencies are over every order "
              "placed in the run, read after the drain: created_at to the 'fulfilled' history row, and to done. "
              "`paced@R/s` is an open-loop run at a fixed arrival rate R (default: the target rate, 0.5 x the "
              "chain's chains/s); the wrk runs are closed-loop at each client count.", ""]

    if mixed := phases.get("mixed"):
        L += [f"## Mixed (locust, {mixed['users']} users, tests/locustfile.py)", ""]
        L += table(["request", "count", "failures", "req/s", "p50 ms", "p99 ms"],
                   [[k, v["requests"], v["failures"], v["rps"], v["p50_ms"], v["p99_ms"]]
                    for k, v in mixed["requests"].items()])

    rows = [[f"pgbench order transaction @{c}", f"{f(x['tps'])} tps", x.get("p50_ms"), x.get("p99_ms"), x.get("failed")]
            for c, x in (get(base, "pgbench", "runs") or {}).items()]
    if h := base.get("hello"):
        rows.append([f"hello-world Flask, same gunicorn settings @{h['connections']}", f"{f(h['ok_rps'])} req/s",
                     h["latency_ms"]["p50"], h["latency_ms"]["p99"], h["errors"]])
    if c := base.get("chain"):
        rows.append([f"bare Celery chain, {c['hops']} hops, {c['in_flight']} in flight",
                     f"{f(c['chains_per_s'])} chains/s ({f(c['tasks_per_s'])} tasks/s)", "–", "–",
                     "0" if c["all_finished"] else "unfinished chains"])
    L += ["## Baselines (same run, same machine)", ""] + table(["baseline", "throughput", "p50 ms", "p99 ms", "errors"],
                                                               rows)
    if hops := results.get("pipeline_hops"):
        source = ("tasks three probe orders caused, from the consumers' inbox rows" if get(results, "probe", "hops")
                  else "walked from `order.placed` in `workers.relay.ROUTES`")
        L.append(f"Hops per order ({source}): **{len(hops)}** — " + ", ".join(h["task"] for h in hops) + ".")
        if (walked := results.get("pipeline_hops_routes")) is not None:
            L.append("The walk over `workers.relay.ROUTES` (delayed routes skipped when FULFILMENT_DELAY_SECONDS "
                     f"<= 0, as the relay does) counts {len(walked)}: "
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
    return "\n".join(L)
