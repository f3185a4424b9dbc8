"""The deployment files agree with the code and with each other, without Docker or a cluster.

deploy/compose/compose.yaml, deploy/k8s/*.yaml and deploy/docker/Dockerfile are read
as data: every setting the services read is set, none is unknown to
`runledger.config.Settings`, the commands exist in the `runledger` CLI, ports agree
(container = RUNLEDGER_API_PORT = probes = Service = scrape target, for every role),
selectors select, the analysis role runs each of its shards exactly once, the
topic settings match the configuration, the dashboard queries
metrics the services export, and the image's entry point is the console script.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import threading
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from fnmatch import fnmatch
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import pairwise
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from runledger.cli import build_parser
from runledger.config import Settings
from runledger.stores.clickhouse.tables import CLUSTER
from services import observability

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"

KNOWN_ENV = {f"RUNLEDGER_{name.upper()}" for name in Settings.model_fields}
# Settings of the embedded stack only: with the external URLs set nothing embedded starts.
EMBEDDED_ONLY = {
    "RUNLEDGER_KAFKA_PORT",
    "RUNLEDGER_POSTGRES_PORT",
    "RUNLEDGER_SERVICES_START_TIMEOUT_S",
    "RUNLEDGER_BROKER_ROTATE_MIB",
    "RUNLEDGER_BROKER_ROTATE_CARRY_MAX_MIB",
}
# Every other setting is set explicitly in both deployments, so a new setting fails
# here until the deployments decide its value.
REQUIRED_ENV = KNOWN_ENV - EMBEDDED_ONLY
ROLES = ("api", "ingest", "analysis")
# Roles that run as a fixed set of shards, each exactly once: every analysis instance
# reads every partition and analyses the experiments of its RUNLEDGER_ANALYSIS_SHARD, so
# a copy of a shard would analyse them again. No HPA, no PDB, no rolling surge.
SHARDED_ROLES = ("analysis",)
# Settings that hold credentials: the k8s Secret carries them, compose takes them from
# the environment of `docker compose`.
SECRET_KEYS = ("RUNLEDGER_BOOTSTRAP_API_KEY", "RUNLEDGER_ANALYSIS_API_KEY")

Doc = dict[str, Any]


def test_required_settings_cover_the_distributed_essentials() -> None:
    essentials = {
        "RUNLEDGER_KAFKA_BOOTSTRAP",
        "RUNLEDGER_POSTGRES_DSN",
        "RUNLEDGER_CLICKHOUSE_URL",
        "RUNLEDGER_API_HOST",
        "RUNLEDGER_API_PORT",
        "RUNLEDGER_EVENTS_TOPIC",
        "RUNLEDGER_DLQ_TOPIC",
        "RUNLEDGER_PROJECTOR_GROUP",
        "RUNLEDGER_ANALYSIS_GROUP",
        "RUNLEDGER_ANALYSIS_API_KEY",
    }
    assert essentials <= REQUIRED_ENV
    assert EMBEDDED_ONLY <= KNOWN_ENV  # a renamed embedded setting must be renamed here too


def _role(args: list[str]) -> str:
    """The role of `runledger <args>`, parsed by the real CLI parser (SystemExit if unknown)."""
    try:
        ns = build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`runledger {' '.join(args)}` is not a command of runledger.cli")
    assert ns.command == "serve", args
    role: str = ns.role
    return role


def _check_env(env: dict[str, str], where: str) -> None:
    names = set(env)
    missing = REQUIRED_ENV - names
    assert not missing, f"{where}: settings not set: {sorted(missing)}"
    unknown = {n for n in names if n.startswith("RUNLEDGER_")} - KNOWN_ENV
    assert not unknown, f"{where}: not settings of runledger.config.Settings: {sorted(unknown)}"
    # Values must be valid for the settings model (types, e.g. the port).
    Settings.model_validate(
        {n.removeprefix("RUNLEDGER_").lower(): v for n, v in env.items() if n in KNOWN_ENV}
    )
    assert env["RUNLEDGER_API_HOST"] == "0.0.0.0", f"{where}: the API must listen beyond loopback"
    assert str(env["RUNLEDGER_PROJECTOR_ASSIGN_ALL"]).lower() == "false", (
        f"{where}: projectors must share partitions through the consumer group"
    )
    for name in ("RUNLEDGER_KAFKA_BOOTSTRAP", "RUNLEDGER_POSTGRES_DSN", "RUNLEDGER_CLICKHOUSE_URL"):
        assert env[name], f"{where}: {name} empty: the embedded part would start"
    assert env["RUNLEDGER_ANALYSIS_GROUP"] != env["RUNLEDGER_PROJECTOR_GROUP"], (
        f"{where}: the analysis service and the projectors must not share a consumer group"
    )


# --- compose ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> Doc:
    doc = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


def _runledger_services(compose: Doc) -> dict[str, Doc]:
    return {
        name: svc
        for name, svc in compose["services"].items()
        if str(svc.get("image", "")).startswith("runledger:")
    }


def _env(svc: Doc) -> dict[str, str]:
    env = svc.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def _by_role(compose: Doc) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {r: [] for r in ROLES}
    for name, svc in _runledger_services(compose).items():
        roles[_role(svc["command"])].append(name)
    return roles


def test_compose_runs_the_whole_distributed_stack(compose: Doc) -> None:
    services = set(compose["services"])
    infra = {"kafka", "kafka-init", "clickhouse-keeper", "clickhouse-01", "clickhouse-02", "clickhouse-init"}
    assert infra | {"postgres", "minio", "prometheus", "grafana"} <= services
    roles = _by_role(compose)
    assert len(roles["api"]) >= 2 and len(roles["ingest"]) >= 2, roles
    for role in SHARDED_ROLES:
        envs = [_env(compose["services"][name]) for name in roles[role]]
        shards = {int(env["RUNLEDGER_ANALYSIS_SHARDS"]) for env in envs}
        assert len(shards) == 1, f"the {role} services disagree on the shard count: {shards}"
        # Every shard exactly once.
        assert sorted(int(env["RUNLEDGER_ANALYSIS_SHARD"]) for env in envs) == list(range(shards.pop()))
        for name in roles[role]:
            assert "deploy" not in compose["services"][name], "replicas would be set there"
    for name, svc in _runledger_services(compose).items():
        assert svc["build"]["dockerfile"] == "deploy/docker/Dockerfile", name
        assert (COMPOSE_DIR / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        # Topics and the cluster schema exist before any service starts.
        deps = svc["depends_on"]
        for init in ("kafka-init", "clickhouse-init"):
            assert deps[init]["condition"] == "service_completed_successfully", (name, init)
        assert deps["postgres"]["condition"] == "service_healthy"
        assert "healthcheck" in svc, name


def test_compose_sets_every_setting(compose: Doc) -> None:
    for name, svc in _runledger_services(compose).items():
        _check_env(_env(svc), f"compose {name}")


def test_compose_takes_secrets_from_the_environment(compose: Doc) -> None:
    """Keys are not written into the file: each comes from `docker compose`'s environment."""
    for name, svc in _runledger_services(compose).items():
        env = _env(svc)
        for key in SECRET_KEYS:
            assert env[key] == f"${{{key}:-}}", (name, key, env[key])


def test_compose_consumers_stop_after_their_batch(compose: Doc) -> None:
    for role in ("ingest", "analysis"):
        for name in _by_role(compose)[role]:
            # The consumer loop finishes its current batch on SIGTERM (Docker's default: 10 s).
            assert compose["services"][name]["stop_grace_period"] == "60s", name


def test_compose_store_addresses_point_at_compose_services(compose: Doc) -> None:
    services = compose["services"]
    for name, svc in _runledger_services(compose).items():
        env = _env(svc)
        for server in env["RUNLEDGER_KAFKA_BOOTSTRAP"].split(","):
            host, port = server.rsplit(":", 1)
            assert host in services, (name, server)
            listeners = services[host]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
            assert f"//{host}:{port}" in listeners, (name, server, listeners)
        for var in ("RUNLEDGER_POSTGRES_DSN", "RUNLEDGER_CLICKHOUSE_URL"):
            url = urlsplit(env[var])
            assert url.hostname in services, (name, var, url.hostname)
        assert urlsplit(env["RUNLEDGER_CLICKHOUSE_URL"]).path == "/runledger"


def test_compose_ports_agree(compose: Doc) -> None:
    """Every replica of every role publishes RUNLEDGER_API_PORT (the API, or ingest's and
    analysis's /healthz and /metrics), each on its own host port."""
    host_ports = []
    for name in _runledger_services(compose):
        svc = compose["services"][name]
        port = int(_env(svc)["RUNLEDGER_API_PORT"])
        mappings = [str(p).split(":") for p in svc["ports"]]
        assert [int(m[-1]) for m in mappings] == [port], (name, svc["ports"])
        host_ports.append(int(mappings[0][0]))
    assert len(set(host_ports)) == len(host_ports), "two replicas on one host port"


def _kafka_init_topics(compose: Doc) -> dict[str, dict[str, str]]:
    """topic -> its options (--partitions, --config k=v) from kafka-init's command."""
    command = " ".join(compose["services"]["kafka-init"]["command"])
    topics: dict[str, dict[str, str]] = {}
    for call in command.split("&&"):
        words = shlex.split(call)
        if "--create" not in words:
            continue
        opts: dict[str, str] = {}
        for flag, value in pairwise(words):
            if flag == "--config":
                key, _, val = value.partition("=")
                opts[key] = val
            elif flag.startswith("--"):
                opts[flag] = value
        topics[opts["--topic"]] = opts
    return topics


def test_compose_creates_the_configured_topics(compose: Doc) -> None:
    topics = _kafka_init_topics(compose)
    ingest = _by_role(compose)["ingest"]
    for name, svc in _runledger_services(compose).items():
        env = _env(svc)
        assert set(topics) == {env["RUNLEDGER_EVENTS_TOPIC"], env["RUNLEDGER_DLQ_TOPIC"]}, name
        events = topics[env["RUNLEDGER_EVENTS_TOPIC"]]
        assert int(events["--partitions"]) == int(env["RUNLEDGER_TOPIC_PARTITIONS"]), name
        # Every projector must own at least one partition.
        assert int(events["--partitions"]) >= len(ingest)
    for opts in topics.values():
        assert opts["compression.type"] and opts["retention.ms"]
    assert compose["services"]["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert compose["services"]["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def _bind_mounts(svc: Doc) -> list[tuple[Path, str]]:
    mounts = []
    for volume in svc.get("volumes", []):
        source, target = str(volume).split(":")[:2]
        if source.startswith("."):
            mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def test_compose_bind_mounts_exist(compose: Doc) -> None:
    for name, svc in compose["services"].items():
        for source, _ in _bind_mounts(svc):
            assert source.exists(), (name, source)


def test_clickhouse_cluster_config(compose: Doc) -> None:
    services = compose["services"]
    cluster_xml = ET.parse(COMPOSE_DIR / "clickhouse" / "config.d" / "cluster.xml").getroot()
    cluster = cluster_xml.find(f"remote_servers/{CLUSTER}")
    assert cluster is not None, f"cluster {CLUSTER!r} (tables.CLUSTER) not defined"
    shards = cluster.findall("shard")
    assert len(shards) == 1
    assert shards[0].findtext("internal_replication") == "true"
    replicas = [r.findtext("host") for r in shards[0].findall("replica")]
    assert replicas == ["clickhouse-01", "clickhouse-02"]
    keeper = cluster_xml.findtext("zookeeper/node/host")
    assert keeper in services

    seen: set[tuple[str | None, str | None]] = set()
    for host in replicas:
        assert host is not None and services[host]["hostname"] == host
        targets = dict((t, s) for s, t in _bind_mounts(services[host]))
        assert "/etc/clickhouse-server/config.d/cluster.xml" in targets
        macros = ET.parse(targets["/etc/clickhouse-server/config.d/macros.xml"]).getroot()
        shard, replica = macros.findtext("macros/shard"), macros.findtext("macros/replica")
        assert shard and replica == host
        seen.add((shard, replica))
    assert len(seen) == len(replicas), "replica macros must be unique"

    init = services["clickhouse-init"]
    sql = {t: s for s, t in _bind_mounts(init)}
    assert (DEPLOY / "clickhouse" / "cluster.sql").resolve() in sql.values()


def _scrape_jobs() -> dict[str, Doc]:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


@pytest.mark.parametrize("role", ROLES)
def test_prometheus_scrapes_every_replica(compose: Doc, role: str) -> None:
    job = _scrape_jobs()[f"runledger-{role}"]
    assert job["metrics_path"] == observability.METRICS_PATH
    # /metrics names tenants: the scrape presents the services' token (compose's default value)
    token = _env(compose["services"][_by_role(compose)[role][0]])["RUNLEDGER_METRICS_TOKEN"]
    assert job["authorization"] == {"type": "Bearer", "credentials": token.split(":-")[-1].rstrip("}")}
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = {
        f"{name}:{_env(compose['services'][name])['RUNLEDGER_API_PORT']}" for name in _by_role(compose)[role]
    }
    assert targets == expected


def _dashboards(compose: Doc) -> list[Path]:
    grafana = COMPOSE_DIR / "grafana"
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "runledger.yaml").read_text())
    mounts = {t: s for s, t in _bind_mounts(compose["services"]["grafana"])}
    dashboards = sorted(mounts[provider["providers"][0]["options"]["path"]].glob("*.json"))
    assert dashboards
    return dashboards


def _exprs(path: Path) -> list[str]:
    dash = json.loads(path.read_text())
    return [t["expr"] for p in dash["panels"] if p["type"] != "row" for t in p["targets"]]


def test_grafana_queries_metrics_the_services_export(compose: Doc) -> None:
    """Every runledger_* series a panel queries is declared in services/observability.py,
    and every job it filters on is scraped."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    exported = {
        family.name + suffix
        for value in vars(observability).values()
        if isinstance(value, (Counter, Gauge, Histogram))
        for family in value.collect()
        for suffix in suffixes[family.type]
    }
    jobs = set(_scrape_jobs())
    queried: set[str] = set()
    for path in _dashboards(compose):
        for expr in _exprs(path):
            queried |= set(re.findall(r"\brunledger_[a-z_]+\b", expr))
            for match in re.findall(r'job=~?"([^"]+)"', expr):
                assert set(match.split("|")) <= jobs, (path.name, expr)
    assert queried, "the dashboard shows no RunLedger metric"
    unknown = queried - exported
    assert not unknown, f"queried but not exported: {sorted(unknown)}"


def test_grafana_dashboard_uses_the_provisioned_datasource(compose: Doc) -> None:
    grafana = COMPOSE_DIR / "grafana"
    datasources = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    uids = {ds["uid"] for ds in datasources["datasources"]}
    for path in _dashboards(compose):
        dash = json.loads(path.read_text())
        panels = [p for p in dash["panels"] if p["type"] != "row"]
        assert panels, path
        for panel in panels:
            assert panel["datasource"]["uid"] in uids, (path.name, panel["title"])
            assert all(t["expr"] for t in panel["targets"])


# --- Kubernetes -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def kustomization() -> Doc:
    doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert isinstance(doc, dict)
    return doc


@pytest.fixture(scope="module")
def k8s_docs(kustomization: Doc) -> list[Doc]:
    """Every document of the resources kustomization.yaml lists."""
    docs = []
    for resource in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / resource).read_text()) if d]
    return docs


def _kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _literals(kustomization: Doc, name: str) -> dict[str, str]:
    gen = next(g for g in kustomization["configMapGenerator"] if g["name"] == name)
    return dict(str(lit).split("=", 1) for lit in gen["literals"])


def _secret_example() -> Doc:
    doc = yaml.safe_load((K8S / "secret.example.yaml").read_text())
    assert isinstance(doc, dict) and doc["kind"] == "Secret"
    return doc


def test_every_k8s_yaml_parses_and_is_a_resource(kustomization: Doc) -> None:
    files = {p.name for p in K8S.glob("*.yaml")}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and doc.get("apiVersion") and doc.get("kind"), path.name
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path.name
    listed = set(kustomization["resources"])
    assert listed <= files
    # The Secret example is deliberately not deployed: real secrets come out of band.
    assert files - listed == {"kustomization.yaml", "secret.example.yaml"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds() -> None:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    kinds = {d["kind"] for d in yaml.safe_load_all(out) if d}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap"} <= kinds
    assert "KafkaTopic" in kinds and "Secret" not in kinds


def _containers(deployment: Doc) -> list[Doc]:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    return containers


def _workloads(k8s_docs: list[Doc]) -> dict[str, Doc]:
    """The Deployments and StatefulSets by name."""
    return _kind(k8s_docs, "Deployment") | _kind(k8s_docs, "StatefulSet")


def _deployment_roles(k8s_docs: list[Doc]) -> dict[str, tuple[Doc, Doc]]:
    """role -> (Deployment or StatefulSet, its runledger container)."""
    roles = {}
    for deployment in _workloads(k8s_docs).values():
        (container,) = _containers(deployment)
        roles[_role(container["args"])] = (deployment, container)
        assert "command" not in container, "command would replace the image's runledger entrypoint"
    return roles


def test_deployments_are_complete(k8s_docs: list[Doc]) -> None:
    roles = _deployment_roles(k8s_docs)
    assert set(roles) == set(ROLES)
    for role, (deployment, container) in roles.items():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), role
        assert container["image"], role
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), (role, kind)
        assert container.get("livenessProbe") and container.get("readinessProbe"), role
        pod_sc = spec["template"]["spec"]["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["runAsUser"] != 0, role
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, role
        assert sc["capabilities"]["drop"] == ["ALL"], role
        # A read-only root needs writable /tmp and state directory mounts.
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/tmp" in mounts, role


def test_k8s_sets_every_setting(kustomization: Doc, k8s_docs: list[Doc]) -> None:
    configmaps = {g["name"] for g in kustomization["configMapGenerator"]}
    secret = _secret_example()
    for role, (_, container) in _deployment_roles(k8s_docs).items():
        env: dict[str, str] = {}
        for source in container["envFrom"]:
            if "configMapRef" in source:
                name = source["configMapRef"]["name"]
                assert name in configmaps, (role, name)
                env.update(_literals(kustomization, name))
            else:
                assert source["secretRef"]["name"] == secret["metadata"]["name"], role
                env.update({k: str(v) for k, v in secret["stringData"].items()})
        for e in container.get("env", []):
            # A value from the pod (the analysis shard's ordinal) is a valid value at run time.
            env[e["name"]] = str(e["value"]) if "value" in e else _POD_FIELD_EXAMPLES[_field_path(e)]
        _check_env(env, f"k8s {role}")


_POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"
_POD_FIELD_EXAMPLES = {_POD_INDEX: "0"}


def _field_path(env_var: Doc) -> str:
    path: str = env_var["valueFrom"]["fieldRef"]["fieldPath"]
    return path


def test_credentials_stay_in_the_secret(kustomization: Doc) -> None:
    config = _literals(kustomization, "runledger-config")
    secret = _secret_example()["stringData"]
    assert {"RUNLEDGER_POSTGRES_DSN", "RUNLEDGER_CLICKHOUSE_URL", *SECRET_KEYS} <= set(secret)
    assert not set(config) & set(secret), "a setting in both would depend on envFrom order"
    for name, value in config.items():
        assert urlsplit(value).password is None, name


def _resolve_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == port))


def _probe_port(container: Doc, probe: Doc) -> int | None:
    for handler in ("httpGet", "tcpSocket", "grpc"):
        if handler in probe:
            return _resolve_port(container, probe[handler]["port"])
    return None  # exec


def _selects(selector: dict[str, str], deployment: Doc) -> bool:
    labels: dict[str, str] = deployment["spec"]["template"]["metadata"]["labels"]
    return selector.items() <= labels.items()


@pytest.mark.parametrize("role", ROLES)
def test_ports_agree(kustomization: Doc, k8s_docs: list[Doc], role: str) -> None:
    """Every role listens on RUNLEDGER_API_PORT; probes, Services and scrape annotations use it."""
    port = int(_literals(kustomization, "runledger-config")["RUNLEDGER_API_PORT"])
    deployment, container = _deployment_roles(k8s_docs)[role]
    assert [p["containerPort"] for p in container["ports"]] == [port]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert _probe_port(container, container[probe]) == port, probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == port
    assert annotations["prometheus.io/path"] == observability.METRICS_PATH
    services = [s for s in _kind(k8s_docs, "Service").values() if _selects(s["spec"]["selector"], deployment)]
    if role == "api":
        assert services, "no Service selects the API"
    for service in services:
        for sp in service["spec"]["ports"]:
            assert _resolve_port(container, sp["targetPort"]) == port


@pytest.mark.parametrize("role", ["ingest", "analysis"])
def test_consumer_probes_are_its_healthz(k8s_docs: list[Doc], role: str) -> None:
    """The consumer loop's heartbeat (GET /healthz) decides liveness, readiness and start-up."""
    _, container = _deployment_roles(k8s_docs)[role]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz", probe
    # Stale after 30 s (services/ingest/app.py, both roles), so liveness must not fire much sooner.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30


@pytest.mark.parametrize("role", SHARDED_ROLES)
def test_sharded_roles_run_each_shard_once(kustomization: Doc, k8s_docs: list[Doc], role: str) -> None:
    """A StatefulSet: one pod per shard, its ordinal the shard, never two of one ordinal;
    no autoscaler or disruption budget."""
    deployment, container = _deployment_roles(k8s_docs)[role]
    assert deployment["kind"] == "StatefulSet"
    spec = deployment["spec"]
    assert spec["replicas"] == int(_literals(kustomization, "runledger-config")["RUNLEDGER_ANALYSIS_SHARDS"])
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"  # a pod stops before its replacement starts
    assert spec["serviceName"] in _kind(k8s_docs, "Service")
    shard = {e["name"]: e for e in container["env"]}["RUNLEDGER_ANALYSIS_SHARD"]
    assert _field_path(shard) == _POD_INDEX
    # The consumer loop finishes its batch on SIGTERM.
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    name = deployment["metadata"]["name"]
    hpas = _kind(k8s_docs, "HorizontalPodAutoscaler").values()
    assert not [h for h in hpas if h["spec"]["scaleTargetRef"]["name"] == name], "an HPA would scale it"
    pdbs = _kind(k8s_docs, "PodDisruptionBudget").values()
    assert not [p for p in pdbs if _selects(p["spec"]["selector"]["matchLabels"], deployment)]


def test_selectors_and_targets_resolve(k8s_docs: list[Doc]) -> None:
    deployments = _workloads(k8s_docs)
    for kind in ("Service", "PodDisruptionBudget"):
        for name, doc in _kind(k8s_docs, kind).items():
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            matched = [d for d in deployments.values() if _selects(selector, d)]
            assert len(matched) == 1, f"{kind} {name} selects {len(matched)} workloads"
    roles = _deployment_roles(k8s_docs)
    # Every role but the sharded ones scales (HPA) and has a disruption budget.
    scaled = {d["metadata"]["name"] for role, (d, _) in roles.items() if role not in SHARDED_ROLES}
    assert len(scaled) == len(ROLES) - len(SHARDED_ROLES)
    hpas = _kind(k8s_docs, "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == scaled
    for name, hpa in hpas.items():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["apiVersion"] == "apps/v1", name
        assert ref["name"] in deployments, name
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"], name
        assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"])
    pdbs = _kind(k8s_docs, "PodDisruptionBudget")
    budgeted = {
        name
        for pdb in pdbs.values()
        for name, d in deployments.items()
        if _selects(pdb["spec"]["selector"]["matchLabels"], d)
    }
    assert len(pdbs) == len(scaled) and budgeted == scaled


def test_kafka_topics_match_the_settings(kustomization: Doc, k8s_docs: list[Doc]) -> None:
    config = _literals(kustomization, "runledger-config")
    topics = {t["spec"]["topicName"]: t for t in _kind(k8s_docs, "KafkaTopic").values()}
    assert set(topics) == {config["RUNLEDGER_EVENTS_TOPIC"], config["RUNLEDGER_DLQ_TOPIC"]}
    for name, topic in topics.items():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2", name
        assert topic["metadata"]["labels"]["strimzi.io/cluster"], name
        spec = topic["spec"]
        assert spec["replicas"] == 3 and spec["config"]["min.insync.replicas"] == 2, name
        assert spec["config"]["retention.ms"] > 0 and spec["config"]["compression.type"], name
    events = topics[config["RUNLEDGER_EVENTS_TOPIC"]]["spec"]["partitions"]
    assert events == int(config["RUNLEDGER_TOPIC_PARTITIONS"])
    # A partition is consumed by one projector: more projectors than partitions idle.
    ingest_hpa = next(
        h
        for h in _kind(k8s_docs, "HorizontalPodAutoscaler").values()
        if h["spec"]["scaleTargetRef"]["name"] == _deployment_roles(k8s_docs)["ingest"][0]["metadata"]["name"]
    )
    assert ingest_hpa["spec"]["maxReplicas"] <= events


# --- Dockerfile -------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_entrypoint_is_the_console_script() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    final = dict(_final_stage())
    entrypoint = json.loads(final["ENTRYPOINT"])
    assert Path(entrypoint[0]).name in scripts and scripts[Path(entrypoint[0]).name] == "runledger.cli:main"
    assert _role(json.loads(final["CMD"])) in ROLES
    assert final["EXPOSE"] == str(Settings.model_fields["api_port"].default)
    assert "healthcheck.py" in final["HEALTHCHECK"]


def test_dockerfile_is_multi_stage_and_non_root() -> None:
    instructions = _instructions()
    froms = [args for op, args in instructions if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith("AS builder")
    args = dict(a.split("=", 1) for op, a in instructions if op == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    assert any(op == "RUN" and 'pip install ".[server]"' in a for op, a in instructions)
    final = _final_stage()
    user = next(a for op, a in final if op == "USER")
    uid = user.split(":")[0]
    uid = args.get(uid.strip("${}"), uid)
    assert uid not in ("0", "root") and int(uid) > 0
    copies = [a for op, a in final if op == "COPY"]
    assert any(c.startswith("--from=builder /opt/venv") for c in copies)


def _dockerignore() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch(p, pat.removeprefix("**/")) or fnmatch(p, pat) for pat in patterns for p in prefixes)


def test_dockerignore_keeps_local_state_out_but_not_the_build_inputs() -> None:
    patterns = _dockerignore()
    for local in (".venv", ".runledger", ".git", "bench/out", ".pytest_cache", ".mypy_cache"):
        assert _ignored(local, patterns), local
    for op, args in _instructions():
        if op != "COPY" or args.startswith("--from"):
            continue
        *sources, _ = args.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert not _ignored(source, patterns), f"{source} is COPY'd but .dockerignore drops it"


# --- the image's health check -------------------------------------------------------------


@pytest.fixture(scope="module")
def healthcheck() -> ModuleType:
    path = DEPLOY / "docker" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("runledger_image_healthcheck", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fake_proc(root: Path, argv: list[str], state: str) -> Path:
    pid = root / "1"
    pid.mkdir(parents=True)
    (pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (pid / "stat").write_text(f"1 (runledger serve) {state} 0 1 1 0 -1 4194560\n")
    return root


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["/opt/venv/bin/python", "/opt/venv/bin/runledger", "serve", "ingest"], "ingest"),
        (["python", "-m", "runledger.serve", "api"], "api"),
        (["/opt/venv/bin/python", "/opt/venv/bin/runledger", "serve", "analysis"], "analysis"),
        (["/opt/venv/bin/python", "/opt/venv/bin/runledger", "up"], ""),
    ],
)
def test_healthcheck_finds_the_role(healthcheck: ModuleType, argv: list[str], role: str) -> None:
    assert healthcheck.role_of(argv) == role


@pytest.mark.parametrize(("state", "healthy"), [("S", True), ("R", True), ("Z", False), ("T", False)])
def test_healthcheck_of_a_non_service_command_is_its_process(
    healthcheck: ModuleType, tmp_path: Path, state: str, healthy: bool
) -> None:
    proc = _fake_proc(tmp_path, ["runledger", "up"], state)
    assert healthcheck.check(1, proc) is healthy
    assert healthcheck.process_alive(2, proc) is False  # no such process


@pytest.fixture
def healthz_server() -> Iterator[tuple[int, list[int]]]:
    """A loopback server answering /healthz with the status at the head of the list."""
    statuses = [200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses[0] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("role", ROLES)
def test_healthcheck_of_a_role_is_its_healthz(
    healthcheck: ModuleType,
    healthz_server: tuple[int, list[int]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    role: str,
) -> None:
    port, statuses = healthz_server
    assert healthcheck.healthz_ok(port) is True
    statuses[0] = 503
    assert healthcheck.healthz_ok(port) is False
    # check() picks the HTTP test from PID 1's argv and the port from RUNLEDGER_API_PORT.
    proc = _fake_proc(tmp_path, ["/opt/venv/bin/runledger", "serve", role], "S")
    monkeypatch.setenv("RUNLEDGER_API_PORT", str(port))
    assert healthcheck.check(1, proc) is False
    statuses[0] = 200
    assert healthcheck.check(1, proc) is True
