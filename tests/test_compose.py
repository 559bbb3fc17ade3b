"""docker-compose.yml, the Dockerfile and deploy/ against the code (Docker cannot run here).

Every command names a module, app, subcommand, option and file that exist; every variable
set for our processes is read by our code or a known consumer (the OpenTelemetry SDK,
Flower); every port, URL, dependency, mount, scrape target and dashboard metric points at
something real. Nothing is started: modules are imported, files parsed.
"""
from __future__ import annotations

import ast
import importlib
import json
import re
import shlex
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml


ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
DASHBOARDS = ROOT / "deploy/grafana/dashboards"
PROVISIONING = ROOT / "deploy/grafana/provisioning"
CODE_DIRS = ("app", "config", "infra", "services", "workers")

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Metrics exported by third-party exporters that run in the compose file (image -> names).
EXPORTER_METRICS = {"oliver006/redis_exporter": {"redis_key_size", "redis_up"}}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                "unless", "offset", "inf", "nan", "atan2"}


# -- loading -------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict:
    return compose()["services"]


def argv(value) -> list[str]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else shlex.split(value)


def environment(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def is_ours(svc: dict) -> bool:
    """Built from this repository's Dockerfile."""
    return "build" in svc


def runs_our_code(svc: dict) -> bool:
    cmd = argv(svc.get("command"))
    return bool(cmd) and (cmd[0] in ("gunicorn", "celery") or cmd[:3] == ["python", "-m", "app"])


def gunicorn_app(svc: dict) -> str | None:
    cmd = argv(svc.get("command"))
    if not cmd or cmd[0] != "gunicorn":
        return None
    specs = [a for a in cmd[1:] if re.fullmatch(r"[\w.]+:\w+", a)]
    assert len(specs) == 1, f"one app spec in {cmd}"
    return specs[0]


def http_services() -> dict[str, dict]:
    return {name: svc for name, svc in services().items() if gunicorn_app(svc)}


def option(cmd: list[str], *names: str) -> str | None:
    for i, arg in enumerate(cmd):
        for name in names:
            if arg == name and i + 1 < len(cmd):
                return cmd[i + 1]
            if name.startswith("--") and arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def port_of(name: str) -> int | None:
    """The port a compose service listens on, from its own configuration."""
    svc = services()[name]
    env = environment(svc)
    if env.get("BIND"):
        return int(env["BIND"].rpartition(":")[2])
    cmd = argv(svc.get("command"))
    if cmd[:1] == ["celery"] and "flower" in cmd:
        return int(option(cmd, "--port") or 5555)
    listen = option(cmd, "-l", "--listen")
    if listen:
        return int(listen.rpartition(":")[2])
    ports = [str(p).rpartition(":")[2] for p in (svc.get("expose") or []) + (svc.get("ports") or [])]
    return int(ports[0].split("/")[0]) if ports else None


def container_ports(name: str) -> set[int]:
    svc = services()[name]
    out = {int(str(p).rpartition(":")[2].split("/")[0]) for p in (svc.get("expose") or []) + (svc.get("ports") or [])}
    if port_of(name):
        out.add(port_of(name))
    return out


# -- what the code reads -------------------------------------------------------------------
class _Recorder(dict):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


def _is_environ(node: ast.AST) -> bool:
    """os.environ, environ, or a mapping named env (config/settings.py, devtools/supervisor.py)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ"
    return isinstance(node, ast.Name) and node.id in ("environ", "env")


@lru_cache(maxsize=None)
def variables_read_by_code() -> frozenset[str]:
    from config.settings import load_settings

    names: set[str] = set()
    # load_settings reads every setting, including the per-service *_PORT / *_URL.
    env = _Recorder(APP_ENV="production", DATABASE_URL="postgresql://x@h/db", REDIS_URL="redis://h",
                    JWT_SECRET_KEY="x" * 40)
    load_settings(env)
    names |= env.read
    for folder in CODE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                key = None
                if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                    func = node.func
                    if isinstance(func, ast.Attribute) and func.attr in ("get", "pop", "setdefault") \
                            and _is_environ(func.value):
                        key = node.args[0].value
                    elif isinstance(func, ast.Attribute) and func.attr == "getenv":
                        key = node.args[0].value
                elif isinstance(node, ast.Subscript) and _is_environ(node.value) \
                        and isinstance(node.slice, ast.Constant):
                    key = node.slice.value
                if isinstance(key, str) and re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
                    names.add(key)
    return frozenset(names)


@lru_cache(maxsize=None)
def otel_variables() -> frozenset[str]:
    names: set[str] = set()
    for module in ("opentelemetry.environment_variables", "opentelemetry.sdk.environment_variables"):
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        names |= {v for k, v in vars(mod).items() if k.startswith("OTEL_") and isinstance(v, str)}
    return frozenset(names)


def is_flower_option(variable: str) -> bool:
    """Flower applies FLOWER_<option> from the environment (flower.command.apply_env_options)."""
    import flower.options  # noqa: F401  (defines the options)
    from tornado.options import options

    if not variable.startswith("FLOWER_"):
        return False
    name = variable[len("FLOWER_"):].lower()
    known = options._options  # noqa: SLF001 - the mapping Flower itself looks names up in
    return name in known or name.replace("_", "-") in known


def variable_is_read(name: str, svc: dict) -> bool:
    if name in variables_read_by_code():
        return True
    if name.startswith("OTEL_"):
        return name in otel_variables()
    if name.startswith("FLOWER_"):
        return "flower" in argv(svc.get("command")) and is_flower_option(name)
    return False


# -- metric names --------------------------------------------------------------------------
_METRIC_CALLS = {"Counter", "PrometheusCounter", "Gauge", "Histogram", "Summary", "Info", "Enum", "Figure",
                 "GaugeMetricFamily", "CounterMetricFamily", "HistogramMetricFamily", "SummaryMetricFamily"}


def _exposed(kind: str, name: str) -> set[str]:
    if kind in ("Counter", "PrometheusCounter", "CounterMetricFamily"):
        base = name[: -len("_total")] if name.endswith("_total") else name
        return {f"{base}_total", f"{base}_created"}
    if kind in ("Histogram", "HistogramMetricFamily"):
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind in ("Summary", "SummaryMetricFamily"):
        return {name, f"{name}_sum", f"{name}_count", f"{name}_created"}
    if kind == "Info":
        return {f"{name}_info"}
    return {name}


def metrics_defined_in(paths) -> set[str]:
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(Path(path).read_text(), str(path))):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            func = node.func
            kind = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if kind in _METRIC_CALLS and isinstance(node.args[0].value, str):
                names |= _exposed(kind, node.args[0].value)
    return names


@lru_cache(maxsize=None)
def known_metrics() -> frozenset[str]:
    import flower

    ours = metrics_defined_in(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py"))
    theirs = metrics_defined_in([Path(flower.__file__).parent / "events.py"])
    exporters = set()
    for svc in services().values():
        image = str(svc.get("image", "")).split(":")[0]
        exporters |= EXPORTER_METRICS.get(image, set())
    return frozenset(ours | theirs | exporters)


def promql_metrics(expr: str) -> set[str]:
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_panels(dashboard: dict):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows


# == the compose file ======================================================================
def test_compose_file_has_every_process_of_the_system():
    expected = {"postgres", "redis", "migrate", "gateway", "users", "orders", "inventory", "notifications",
                "worker", "beat", "flower", "prometheus", "grafana", "jaeger"}
    assert expected <= set(services())
    from config.settings import DEFAULT_PORTS

    assert {gunicorn_app(s).rpartition(":")[2] for s in http_services().values()} == set(DEFAULT_PORTS)


def test_no_unescaped_dollar_for_the_container_shell():
    """Compose interpolates $NAME itself: a variable meant for the container must be $$NAME."""
    for lineno, line in enumerate(COMPOSE.read_text().splitlines(), 1):
        code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
        stripped = code.replace("$$", "")
        assert not re.search(r"\$(?![{])", stripped), f"line {lineno}: unescaped $ in {line.strip()!r}"


def test_required_secrets_refuse_to_start_without_a_value():
    raw = COMPOSE.read_text()
    assert "${JWT_SECRET_KEY:?" in raw
    assert "${FLOWER_BASIC_AUTH:?" in raw
    for name, svc in services().items():
        env = environment(svc)
        for var in ("JWT_SECRET_KEY", "FLOWER_BASIC_AUTH"):
            if var in env:
                assert env[var].startswith("${%s:?" % var), f"{name}: {var} must be required, not defaulted"


# -- commands ------------------------------------------------------------------------------
def _click_options(command) -> set[str]:
    opts = set()
    for param in command.params:
        opts |= set(getattr(param, "opts", [])) | set(getattr(param, "secondary_opts", []))
    return opts


def _check_option_flags(cmd: list[str], known: set[str], what: str):
    for arg in cmd:
        if arg.startswith("-") and arg != "-":
            flag = arg.split("=", 1)[0]
            assert flag in known, f"{what}: unknown option {flag}"


def check_gunicorn(name: str, cmd: list[str]):
    from gunicorn.config import KNOWN_SETTINGS

    flags = {f for s in KNOWN_SETTINGS for f in (s.cli or [])}
    _check_option_flags(cmd[1:], flags, f"{name}: gunicorn")
    config = option(cmd, "-c", "--config")
    assert config, f"{name}: gunicorn without -c"
    assert (ROOT / config).is_file(), f"{name}: {config} does not exist"
    compile((ROOT / config).read_text(), config, "exec")
    module, _, attr = gunicorn_app({"command": cmd}).partition(":")
    mod = importlib.import_module(module)
    if module == "app.wsgi":
        from config.settings import DEFAULT_PORTS

        assert attr in DEFAULT_PORTS, f"{name}: app.wsgi:{attr} is not a service (DEFAULT_PORTS)"
    else:
        assert hasattr(mod, attr), f"{name}: {module} has no {attr}"


def check_celery(name: str, cmd: list[str]):
    from celery import Celery
    from celery.bin.celery import celery as celery_cli

    spec = option(cmd, "-A", "--app")
    assert spec, f"{name}: celery without -A"
    module, _, attr = spec.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    assert isinstance(app, Celery), f"{name}: {spec} is not a Celery app"
    rest = cmd[cmd.index(spec) + 1:] if spec in cmd else [a for a in cmd[1:] if not a.startswith(("-A", "--app"))]
    sub = rest[0]
    assert sub in celery_cli.commands, f"{name}: celery has no {sub!r} command"
    if sub == "flower":
        import flower.options  # noqa: F401
        from tornado.options import options

        for arg in rest[1:]:
            assert arg.startswith("--"), f"{name}: flower takes --name=value options, got {arg}"
            key = arg[2:].split("=", 1)[0]
            assert key in options._options or key.replace("_", "-") in options._options, \
                f"{name}: flower has no --{key}"  # noqa: SLF001
    else:
        _check_option_flags(rest[1:], _click_options(celery_cli.commands[sub]), f"{name}: celery {sub}")


def check_python_module(name: str, cmd: list[str], capsys):
    module = cmd[2]
    if module == "app":
        from app.cli import main

        with pytest.raises(SystemExit) as exc:
            main([cmd[3], "--help"])
        capsys.readouterr()
        assert exc.value.code == 0, f"{name}: `python -m app {cmd[3]}` is not a subcommand of app/cli.py"
    elif module == "aiosmtpd":
        assert importlib.util.find_spec("aiosmtpd.__main__"), f"{name}: aiosmtpd is not installed"
        handler = option(cmd, "-c", "--class")
        mod, _, cls = handler.rpartition(".")
        assert hasattr(importlib.import_module(mod), cls), f"{name}: no handler {handler}"
    else:
        pytest.fail(f"{name}: unexpected module {module}")


@pytest.mark.parametrize("name", sorted(n for n, svc in compose()["services"].items() if is_ours(svc)))
def test_commands_name_real_modules_apps_and_options(name, capsys):
    check_command(name, argv(services()[name].get("command")), capsys)


def test_commands_run_programs_the_image_installs():
    """gunicorn, celery, flower, aiosmtpd: pinned in requirements.txt and not filtered out by the Dockerfile."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            pins[re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()] = line
    match = re.search(r"grep -viE '([^']+)' requirements\.txt", (ROOT / "Dockerfile").read_text())
    excluded = re.compile(match.group(1), re.I) if match else None
    needed = set()
    for svc in services().values():
        if not is_ours(svc):
            continue
        cmd = argv(svc.get("command"))
        needed.add(cmd[2] if cmd[:2] == ["python", "-m"] else cmd[0])
        if cmd[0] == "celery" and "flower" in cmd:
            needed.add("flower")
    needed.discard("app")
    for dist in needed:
        assert dist in pins, f"{dist} is run by docker-compose.yml but not pinned in requirements.txt"
        if excluded:
            assert not excluded.search(pins[dist]), f"the Dockerfile leaves {dist} out of the image"


def test_worker_consumes_every_queue_the_code_sends_to():
    from workers import relay, tasks  # noqa: F401  (registers the tasks)
    from workers.celery_app import app

    sent_to = {app.conf.task_default_queue}
    sent_to |= {t.queue for n, t in app.tasks.items() if not n.startswith("celery.") and getattr(t, "queue", None)}
    sent_to |= {r.queue for routes in relay.ROUTES.values() for r in routes}
    sent_to |= {e.get("options", {}).get("queue") for e in app.conf.beat_schedule.values()} - {None}
    routes = app.conf.task_routes
    if isinstance(routes, dict):
        sent_to |= {r.get("queue") for r in routes.values() if isinstance(r, dict)} - {None}
    cmd = argv(services()["worker"]["command"])
    consumed = set(option(cmd, "-Q", "--queues").split(","))
    assert sent_to <= consumed, f"no worker consumes {sorted(sent_to - consumed)}"


def test_worker_scales():
    worker = services()["worker"]
    for key in ("container_name", "hostname", "ports"):
        assert key not in worker, f"worker has {key}: `--scale worker=N` needs none"
    cmd = argv(worker["command"])
    assert option(cmd, "-n", "--hostname") is None, "a fixed node name would collide between replicas"
    beat = services()["beat"]
    assert "container_name" not in beat and "ports" not in beat


# -- environment ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(n for n, svc in compose()["services"].items() if is_ours(svc)))
def test_every_variable_is_read_by_the_code_or_a_known_consumer(name):
    svc = services()[name]
    unknown = [var for var in environment(svc) if not variable_is_read(var, svc)]
    assert not unknown, f"{name}: nothing reads {unknown}"


@pytest.mark.parametrize("name", sorted(n for n, svc in compose()["services"].items()
                                         if is_ours(svc) and runs_our_code(svc)))
def test_processes_running_our_code_get_production_settings(name):
    svc = services()[name]
    env = environment(svc)
    assert env.get("APP_ENV") == "production"
    if gunicorn_app(svc) == "app.wsgi:web":
        # The web console: no database login, no token signing key; a cookie key of its own.
        assert "DATABASE_URL" not in env and "JWT_SECRET_KEY" not in env
        assert env["WEB_SECRET_KEY"].startswith("${WEB_SECRET_KEY:?")
        required = ("REDIS_URL", "SERVICE_NAME", "OTEL_SERVICE_NAME")
    else:
        required = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET_KEY", "SERVICE_NAME", "OTEL_SERVICE_NAME")
    for var in required:
        assert env.get(var), f"{name}: {var} missing"
    assert "DATABASE_URL" not in env or urlsplit(env["DATABASE_URL"]).hostname in services()
    assert urlsplit(env["REDIS_URL"]).hostname in services()
    endpoint = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    assert endpoint.hostname in services() and endpoint.port in container_ports(endpoint.hostname)
    assert endpoint.port == 4318, "config/tracing.py exports OTLP over HTTP (4318), not gRPC (4317)"
    smtp = env.get("SMTP_HOST")
    if smtp:
        assert smtp in services() and port_of(smtp) == int(env["SMTP_PORT"])


@pytest.mark.parametrize("name", sorted(n for n, svc in compose()["services"].items()
                                         if is_ours(svc) and runs_our_code(svc)))
def test_each_process_logs_in_to_postgresql_as_its_own_role(name):
    """infra/roles.py: migrate as the owner, HTTP services as their domain (or the
    gateway), the rest as the worker; with the password migrate gives that role."""
    from config.settings import load_settings
    from infra import roles

    svc, migrate = services()[name], environment(services()["migrate"])
    if gunicorn_app(svc) == "app.wsgi:web":
        assert "DATABASE_URL" not in environment(svc), "the web console logs in to no database"
        return
    url = urlsplit(environment(svc)["DATABASE_URL"])
    if name == "migrate":
        assert url.username == environment(services()["postgres"])["POSTGRES_USER"]
        return
    app = gunicorn_app(svc)
    kind = app.rpartition(":")[2] if app else roles.WORKER
    assert url.username == roles.login(load_settings({"DATABASE_URL": url.geturl()}), kind).user
    assert url.password == migrate[f"DB_PASSWORD_{kind.upper()}"]


def test_otel_service_names_are_unique():
    names = [environment(s)["OTEL_SERVICE_NAME"] for s in services().values() if environment(s).get("OTEL_SERVICE_NAME")]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", sorted(http_services()))
def test_http_services_bind_advertise_and_keep_metrics(name):
    from config.settings import DEFAULT_PORTS

    svc = services()[name]
    env = environment(svc)
    service = gunicorn_app(svc).rpartition(":")[2]
    port = DEFAULT_PORTS[service]
    assert env["SERVICE_NAME"] == service
    assert env["BIND"] == f"0.0.0.0:{port}"
    if service != "web":  # the web console is not in the registry: the gateway has WEB_URL
        assert env["ADVERTISE_URL"] == f"http://{name}:{port}"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert env["PROMETHEUS_MULTIPROC_DIR"] in (ROOT / "Dockerfile").read_text(), \
        "the image must create the multiprocess folder for its non-root user"


def test_service_urls_point_at_the_services():
    from config.settings import SERVICES

    http = http_services()
    for name, svc in services().items():
        for var, value in environment(svc).items():
            if var.endswith("_URL") and var[: -len("_URL")].lower() in (*SERVICES, "web"):
                url = urlsplit(value)
                assert url.hostname in http, f"{name}: {var} points at {url.hostname}"
                assert url.port == port_of(url.hostname), f"{name}: {var} has the wrong port"
                assert gunicorn_app(http[url.hostname]).endswith(":" + var[: -len("_URL")].lower())
    gateway = environment(services()["gateway"])
    listed = gateway["GATEWAY_SERVICES"].split(",")
    assert sorted(listed) == sorted(SERVICES)
    for service in listed:
        assert f"{service.upper()}_URL" in gateway
    assert "INVENTORY_URL" in environment(services()["orders"])
    assert "WEB_URL" in gateway
    assert urlsplit(environment(services()["web"])["GATEWAY_URL"]).hostname == "gateway"


def test_gateway_is_published_on_loopback_only():
    assert services()["gateway"]["ports"] == ["127.0.0.1:8000:8000"]
    for name, svc in services().items():
        for published in svc.get("ports", []):
            assert str(published).startswith("127.0.0.1:"), f"{name} publishes {published} beyond loopback"


# -- health and dependencies ---------------------------------------------------------------
def one_shot(svc: dict) -> bool:
    return str(svc.get("restart", "no")) == "no"


@pytest.mark.parametrize("name", sorted(n for n, svc in compose()["services"].items() if not one_shot(svc)))
def test_every_long_running_service_has_a_healthcheck(name):
    svc = services()[name]
    check = svc.get("healthcheck") or {}
    assert check.get("test") and not check.get("disable"), f"{name}: no healthcheck"
    test = argv(check["test"]) if isinstance(check["test"], str) else check["test"]
    assert test[0] in ("CMD", "CMD-SHELL")
    if test[0] == "CMD" and test[1:3] == ["python", "-c"]:
        compile(test[3], f"{name} healthcheck", "exec")


@pytest.mark.parametrize("name", sorted(http_services()))
def test_http_healthchecks_ask_the_right_port(name):
    test = services()[name]["healthcheck"]["test"]
    assert f"http://127.0.0.1:{port_of(name)}/health" in " ".join(test)


def test_worker_beat_flower_and_mail_healthchecks():
    worker = services()["worker"]
    check = worker["healthcheck"]["test"]
    # The liveness file the worker touches (workers/liveness.py), probed without the broker.
    assert check[:4] == ["CMD", "python", "-m", "workers.liveness"]
    assert check[4] == worker["environment"]["WORKER_LIVENESS_FILE"]
    beat = services()["beat"]
    schedule = option(argv(beat["command"]), "--schedule", "-s")
    assert f"glob.glob('{schedule}*')" in " ".join(beat["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port_of('flower')}/healthcheck" in " ".join(services()["flower"]["healthcheck"]["test"])
    assert f"'127.0.0.1', {port_of('mail')}" in " ".join(services()["mail"]["healthcheck"]["test"])


def test_depends_on_targets_exist_with_valid_conditions():
    for name, svc in services().items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            assert target in services(), f"{name} depends on unknown {target}"
            assert target != name
            condition = (spec or {}).get("condition", "service_started")
            assert condition in CONDITIONS, f"{name} -> {target}: {condition}"
            other = services()[target]
            if condition == "service_healthy":
                hc = other.get("healthcheck") or {}
                assert hc.get("test") and not hc.get("disable"), f"{name} waits for {target} healthy: it has no healthcheck"
            if condition == "service_completed_successfully":
                assert one_shot(other), f"{target} is not a one-shot"
        if is_ours(svc) and runs_our_code(svc) and name != "migrate" and "flower" not in argv(svc.get("command")) \
                and "DATABASE_URL" in environment(svc):
            assert deps.get("migrate", {}).get("condition") == "service_completed_successfully", \
                f"{name} must start after the migrations"


# -- files ---------------------------------------------------------------------------------
def test_mounted_repository_files_exist():
    mounts = 0
    for name, svc in services().items():
        build = svc.get("build")
        if build:
            context = build if isinstance(build, str) else build.get("context", ".")
            assert (ROOT / context / "Dockerfile").is_file()
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                mounts += 1
                assert (ROOT / source).resolve().exists(), f"{name}: {source} does not exist"
            else:
                assert source in (compose().get("volumes") or {}), f"{name}: undeclared volume {source}"
    assert mounts >= 3


def test_dockerfile_is_slim_multi_stage_non_root_and_copies_what_exists():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    assert "slim" in text
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert "PYTHONDONTWRITEBYTECODE=1" in text
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for entry in (".venv", "var", "bench/results", ".git", "tests", ".env"):
        assert entry in ignored, f".dockerignore misses {entry}"
    assert any("__pycache__" in e for e in ignored)
    copied = set()
    for match in re.finditer(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", text, re.M):
        source = match.group(1)
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert source not in ignored, f"COPY {source} is excluded by .dockerignore"
        copied.add(source)
    # every top-level package the commands import, and the SQL migrations
    assert {"app", "config", "infra", "services", "workers", "migrations"} <= copied
    for folder in ("tests", "bench", ".venv", "var"):
        assert folder not in copied


# -- Prometheus ----------------------------------------------------------------------------
def scrape_targets() -> list[tuple[str, str, int]]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    out = []
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                out.append((job["job_name"], host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            for host in dns["names"]:
                out.append((job["job_name"], host, int(dns["port"])))
    return out


def test_prometheus_scrapes_services_that_exist_on_their_ports():
    targets = scrape_targets()
    assert targets
    for job, host, port in targets:
        if host == "localhost":
            host = "prometheus"
        assert host in services(), f"job {job}: no service {host}"
        assert port in container_ports(host), f"job {job}: {host} does not listen on {port}"
    scraped = {host for _, host, _ in targets}
    assert set(http_services()) <= scraped, f"not scraped: {set(http_services()) - scraped}"
    assert "flower" in scraped


def test_prometheus_sends_flowers_basic_auth():
    config = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = [j for j in config["scrape_configs"]
              if any("flower:" in t for s in j.get("static_configs", []) for t in s["targets"])]
    auth = job["basic_auth"]
    prometheus = services()["prometheus"]
    script = " ".join(argv(prometheus.get("entrypoint"))) + " " + " ".join(argv(prometheus.get("command")))
    for key in ("username", "password"):
        path = auth.get(f"{key}_file")
        assert path and path in script, f"the prometheus entrypoint must write {path}"
    assert "FLOWER_BASIC_AUTH" in script
    assert environment(prometheus)["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    mounts = [v.split(":") for v in prometheus["volumes"] if v.startswith("./")]
    assert ["./deploy/prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml", "ro"] in mounts
    assert "--config.file=/etc/prometheus/prometheus.yml" in script


# -- Grafana -------------------------------------------------------------------------------
def grafana_mount(source: str) -> str:
    for volume in services()["grafana"]["volumes"]:
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    pytest.fail(f"grafana does not mount {source}")


def test_grafana_provisioning_points_at_the_mounted_dashboards():
    assert grafana_mount("./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    target = grafana_mount("./deploy/grafana/dashboards")
    providers = [p for f in (PROVISIONING / "dashboards").glob("*.yml")
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert providers and all(p["options"]["path"] == target for p in providers)
    home = environment(services()["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home.startswith(target + "/") and (DASHBOARDS / home[len(target) + 1:]).is_file()
    datasources = [d for f in (PROVISIONING / "datasources").glob("*.yml")
                   for d in yaml.safe_load(f.read_text())["datasources"]]
    for ds in datasources:
        url = urlsplit(ds["url"])
        assert url.hostname in services() and url.port in container_ports(url.hostname)


def load_dashboards() -> list[dict]:
    files = sorted(DASHBOARDS.glob("*.json"))
    assert files, "no dashboard in deploy/grafana/dashboards"
    return [json.loads(f.read_text()) for f in files]


def test_dashboard_panels_query_only_metrics_that_are_exported():
    datasources = {d["uid"] for f in (PROVISIONING / "datasources").glob("*.yml")
                   for d in yaml.safe_load(f.read_text())["datasources"]}
    known = known_metrics()
    used = set()
    for dashboard in load_dashboards():
        assert dashboard["uid"] and dashboard["title"]
        for panel in dashboard_panels(dashboard):
            if panel.get("type") == "row":
                continue
            assert panel.get("datasource", {}).get("uid") in datasources, panel["title"]
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"
            for target in panel["targets"]:
                names = promql_metrics(target["expr"])
                assert names, f"{panel['title']!r}: no metric in {target['expr']!r}"
                unknown = names - known
                assert not unknown, f"{panel['title']!r} queries {sorted(unknown)}: nothing exports them"
                used |= names
    # what the issue asks the dashboard to show
    for metric in ("orders", "http_request_duration_seconds_bucket", "db_pool_connections",
                   "outbox_lag_seconds", "dead_letters", "redis_key_size"):
        assert metric in used, f"the dashboard does not show {metric}"


def test_queue_depth_covers_every_worker_queue():
    queues = set(option(argv(services()["worker"]["command"]), "-Q").split(","))
    exporter = environment(services()["redis-exporter"])["REDIS_EXPORTER_CHECK_SINGLE_KEYS"]
    assert {k.split("=", 1)[-1] for k in exporter.split(",")} == queues
    assert urlsplit(environment(services()["redis-exporter"])["REDIS_ADDR"]).hostname == \
        urlsplit(environment(services()["worker"])["REDIS_URL"]).hostname
    exprs = [t["expr"] for d in load_dashboards() for p in dashboard_panels(d) for t in p.get("targets", [])
             if "redis_key_size" in t["expr"]]
    assert exprs
    for expr in exprs:
        (pattern,) = re.findall(r'key=~"([^"]+)"', expr)
        assert set(pattern.split("|")) == queues


def test_promql_metric_extraction():
    assert promql_metrics('histogram_quantile(0.99, sum by (le, service) (rate(http_request_duration_seconds_bucket'
                          '{service="orders"}[$__rate_interval])))') == {"http_request_duration_seconds_bucket"}
    assert promql_metrics('sum(a_total) / on(x) group_left(y) b{c=~"d|e"} offset 5m') == {"a_total", "b"}


def check_command(name: str, cmd: list[str], capsys) -> None:
    """Our image's command for ``name`` runs a real app, Celery command or module with real options."""
    assert cmd, f"{name}: our image needs an explicit command"
    if cmd[0] == "gunicorn":
        check_gunicorn(name, cmd)
    elif cmd[0] == "celery":
        check_celery(name, cmd)
    elif cmd[:2] == ["python", "-m"]:
        check_python_module(name, cmd, capsys)
    else:
        pytest.fail(f"{name}: unexpected command {cmd}")
