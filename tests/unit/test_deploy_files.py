"""Offline checks of the container and deployment files (Dockerfile, deploy/compose, deploy/k8s).

Nothing here builds an image or starts a container or a cluster: the files are checked against
the published schemas shipped in pip packages (the Compose Specification from check-jsonschema,
the Kubernetes API schemas from kubernetes-validate, KEDA's ScaledObject CRD as the pydantic
models of cloudcoil-models-keda) and against tidal itself: the pipeline the files deploy loads,
the consumer group and topic KEDA watches are the ones the workers use, and the ports, paths,
users and environment variables agree across the files. A schema package that is missing skips
its test with the command that installs it.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tidal.stream.pipeline import Pipeline
from tidal.stream.spec import from_dict, load_pipeline

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
COMPOSE_PIPELINE = COMPOSE_DIR / "pipeline.yaml"
PROMETHEUS = COMPOSE_DIR / "prometheus.yml"
GRAFANA = COMPOSE_DIR / "grafana" / "provisioning"
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
K8S = ROOT / "deploy" / "k8s"

# Where a package that provides a schema comes from (the skip message says how to install it).
COMPOSE_SCHEMA_PKG = "check-jsonschema==0.39.0"
K8S_SCHEMA_PKG = "kubernetes-validate==1.37.0"
# Optional: cloudcoil (its dependency) registers a pytest plugin that imports filelock, so install
# both or neither; without them the ScaledObject gets the structural checks below only.
KEDA_SCHEMA_PKG = "cloudcoil-models-keda==2.16.1.0 filelock"
# The Prometheus Operator's CRDs (PodMonitor) as pydantic models, optional in the same way.
OPERATOR_SCHEMA_PKG = "cloudcoil-models-prometheus-operator==0.80.1.0 filelock"
OPERATOR = K8S / "prometheus-operator"
K8S_VERSIONS = ("1.30", "1.37")  # an older supported minor and the newest the package has

# The kafka scaler's metadata keys (KEDA docs, scalers/apache-kafka): a misspelt one is ignored
# by KEDA, so it is refused here.
KEDA_KAFKA_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold",
    "offsetResetPolicy", "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag",
    "limitToPartitionsWithLag", "ensureEvenDistributionOfPartitions", "partitionLimitation",
    "sasl", "tls", "unsafeSsl", "version",
}
# `tidal run` writes to a producer for at most message.timeout.ms (60 s, tidal's setting) before
# SIGTERM's commit: the grace period must leave that time.
MIN_GRACE_S = 60


# -- helpers -----------------------------------------------------------------------------------

def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def compose() -> dict:
    return yaml_file(COMPOSE)


def k8s_docs() -> dict[str, dict]:
    """Every manifest the kustomization lists, by kind."""
    kustomization = yaml_file(K8S / "kustomization.yaml")
    docs: dict[str, dict] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc:
                assert doc["kind"] not in docs, f"two {doc['kind']} manifests; the tests expect one of each"
                docs[doc["kind"]] = doc
    return docs


def configmap_pipeline() -> Pipeline:
    cm = k8s_docs()["ConfigMap"]
    return from_dict(yaml.safe_load(cm["data"]["pipeline.yaml"]), base=K8S)


def container(deployment: dict) -> dict:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "tidal"]
    return c


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def parse_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    return instructions[starts[-1]:]


def global_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """ARGs declared before the first FROM (usable in FROM lines), with their defaults."""
    out = {}
    for op, args in instructions:
        if op == "FROM":
            break
        if op == "ARG":
            name, _, default = args.partition("=")
            out[name] = default.strip('"')
    return out


def env_instructions(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for op, args in stage:
        if op == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over relative paths."""
    pattern = pattern.strip().lstrip("/").rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignored(rel: str) -> bool:
    """Whether the build context leaves ``rel`` out: the last matching line wins, and a line
    that matches a folder applies to everything inside it (Docker's rules)."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), dockerignore_regex(line.lstrip("!"))))
    parts = Path(rel).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, rx in rules:
        if any(rx.fullmatch(c) for c in candidates):
            excluded = not negated
    return excluded


def metrics_port_default() -> tuple[int, str]:
    """``tidal run``'s --metrics-port default and its environment variable, from the CLI itself."""
    from tidal.cli.main import run

    option = inspect.signature(run).parameters["metrics_port"].default
    return int(option.default), option.envvar


# -- the Compose file --------------------------------------------------------------------------

def test_compose_file_matches_the_compose_specification():
    try:
        from importlib.resources import files

        schema_text = (files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip(f"the Compose Specification schema ships in check-jsonschema: pip install '{COMPOSE_SCHEMA_PKG}'")
    import jsonschema

    schema = json.loads(schema_text)
    assert schema.get("title") == "Compose Specification"
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    errors = sorted(validator_cls(schema).iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_compose_schema_check_catches_a_mistake():
    """The schema really is applied: a misspelt service key and a bad replica count are refused."""
    try:
        from importlib.resources import files

        schema = json.loads((files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip(f"pip install '{COMPOSE_SCHEMA_PKG}'")
    import jsonschema

    bad = compose()
    bad["services"]["tidal"]["enviroment"] = bad["services"]["tidal"].pop("environment")
    bad["services"]["tidal"]["depends_on"]["kafka"]["condition"] = "service_ready"  # not in the enum
    errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(bad))
    text = " ".join(e.message for e in errors)
    assert "enviroment" in text and "service_ready" in text, text


def test_compose_runs_a_single_node_kraft_kafka():
    kafka = compose()["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = {k: str(v) for k, v in kafka["environment"].items()}
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(re.match(r"(\w+)://(.*)", item).groups() for item in env["KAFKA_LISTENERS"].split(","))
    assert {"PLAINTEXT", "CONTROLLER"} <= set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    protocol_map = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocol_map)
    advertised = dict(re.match(r"(\w+)://(.*)", item).groups() for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert advertised["PLAINTEXT"] == "kafka:9092"
    assert "CONTROLLER" not in advertised
    controller_port = listeners["CONTROLLER"].rsplit(":", 1)[1]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:{controller_port}"
    for setting in ("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
                    "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"):
        assert env[setting] == "1", f"{setting}: one broker holds one replica"
    assert kafka["healthcheck"]["test"]


def test_compose_runs_two_tidal_replicas_of_the_image():
    spec = compose()
    tidal = spec["services"]["tidal"]
    assert tidal["deploy"]["replicas"] == 2
    build = tidal["build"]
    assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
    assert (COMPOSE_DIR / build["context"] / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    assert "container_name" not in tidal and "ports" not in tidal, "replicas cannot share a name or a host port"
    env = {k: str(v) for k, v in tidal["environment"].items()}
    kafka_env = spec["services"]["kafka"]["environment"]
    assert env["TIDAL_BOOTSTRAP_SERVERS"] in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["TIDAL_METRICS_HOST"] == "0.0.0.0"
    port, envvar = metrics_port_default()
    assert int(env[envvar]) == port
    assert str(port) in [str(p) for p in tidal["expose"]]
    assert tidal["depends_on"]["kafka"]["condition"] == "service_healthy"
    grace = re.fullmatch(r"(\d+)s", tidal["stop_grace_period"])
    assert grace and int(grace.group(1)) >= MIN_GRACE_S
    # the model registry: a named volume, mounted where TIDAL_REGISTRY points
    from tidal.registry.store import ENV_REGISTRY

    mounts = dict(reversed(v.split(":")[:2]) for v in tidal["volumes"])
    registry_volume = mounts[env[ENV_REGISTRY]]
    assert registry_volume in spec["volumes"], "the registry is a named volume"
    assert (COMPOSE_DIR / mounts["/etc/tidal/pipeline.yaml"]).resolve() == COMPOSE_PIPELINE
    # the command runs the mounted pipeline (the image's default command too)
    assert tidal["command"] == ["run", "/etc/tidal/pipeline.yaml"]


def test_every_bind_mount_in_compose_exists():
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} does not exist"


def test_prometheus_scrapes_every_worker_of_the_compose_stack():
    spec = compose()
    prom = yaml_file(PROMETHEUS)
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "tidal-workers"]
    # the dashboard counts its targets with up{job="tidal-workers"}
    assert 'up{job=\\"tidal-workers\\"}' in DASHBOARD.read_text()
    (sd,) = job["dns_sd_configs"]
    assert "tidal" in sd["names"] and "tidal" in spec["services"]
    port, envvar = metrics_port_default()
    assert sd["port"] == int(spec["services"]["tidal"]["environment"][envvar]) == port
    mounts = dict(reversed(v.split(":")[:2]) for v in spec["services"]["prometheus"]["volumes"])
    assert (COMPOSE_DIR / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS
    assert "--config.file=/etc/prometheus/prometheus.yml" in spec["services"]["prometheus"]["command"]


def test_grafana_provisions_the_prometheus_datasource_and_the_tidal_dashboard():
    spec = compose()
    grafana = spec["services"]["grafana"]
    mounts = dict(reversed(v.split(":")[:2]) for v in grafana["volumes"])
    assert (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA
    (ds,) = yaml_file(GRAFANA / "datasources" / "prometheus.yaml")["datasources"]
    assert ds["type"] == "prometheus" and ds["isDefault"]
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"]).groups()
    assert host in spec["services"] and f"{port}:{port}" in spec["services"][host]["ports"]
    (provider,) = yaml_file(GRAFANA / "dashboards" / "tidal.yaml")["providers"]
    assert provider["type"] == "file"
    dashboard_in_container = {v: k for k, v in mounts.items()}
    inside = [c for c, h in mounts.items() if (COMPOSE_DIR / h).resolve() == DASHBOARD]
    assert inside and all(Path(c).parent == Path(provider["options"]["path"]) for c in inside), dashboard_in_container
    dashboard = json.loads(DASHBOARD.read_text())
    assert {p["datasource"]["type"] for p in dashboard["panels"] if "datasource" in p} == {"prometheus"}


def test_the_compose_pipeline_loads():
    p = load_pipeline(COMPOSE_PIPELINE)
    assert p.name == "sensors" and p.group == "tidal.sensors" and p.sources == ["sensors.events"]
    out, rejects = p.test([b'{"sensor_id": "s-1", "reading_id": "r1", "ts": 1700000000000, "temperature": 21.5, '
                           b'"humidity": 40}', b"not json"])
    assert len(out) == 1 and [r.reason for r in rejects] == ["invalid_json"]


def test_the_compose_pipeline_needs_no_extra():
    """The image installs the lean package (`pip install .`): the pipeline must load without any
    extra, as tests/unit/test_lean_install.py checks for `tidal run`."""
    from tidal.cli.main import EXTRAS

    code = textwrap.dedent(f"""
        import sys
        for name in {sorted(EXTRAS)!r}:
            sys.modules[name] = None
        from tidal.stream.spec import load_pipeline
        p = load_pipeline({str(COMPOSE_PIPELINE)!r})
        out, rejects = p.test([b'{{"sensor_id": "s-1", "reading_id": "r1", "ts": 1, "temperature": 1, "humidity": 1}}'])
        import tidal.cli.main, tidal.stream.worker, tidal.monitor.hooks
        print(len(out))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


# -- the environment variables -----------------------------------------------------------------

def test_every_tidal_variable_the_files_set_is_one_tidal_reads():
    from tidal.config import ENV_BOOTSTRAP, ENV_PREFIX, env_overrides

    texts = {p: p.read_text() for p in [DOCKERFILE, COMPOSE, *sorted(K8S.glob("*.yaml"))]}
    source = "\n".join(p.read_text() for p in (ROOT / "src" / "tidal").rglob("*.py"))
    names = {n for text in texts.values() for n in re.findall(r"\bTIDAL_[A-Z0-9_]*[A-Z0-9]\b", text)}
    names -= {args.partition("=")[0] for op, args in parse_dockerfile() if op == "ARG"}  # build arguments
    assert ENV_BOOTSTRAP in names
    for name in sorted(names):
        if name.startswith(ENV_PREFIX) and name != "TIDAL_KAFKA_CONFIG":
            (key,) = env_overrides({name: "x"})  # TIDAL_KAFKA_SASL_MECHANISM -> sasl.mechanism
            assert re.fullmatch(r"[a-z]+(\.[a-z]+)+", key), (name, key)
        else:
            assert f'"{name}"' in source, f"{name} is set but tidal never reads it"


# -- Kubernetes --------------------------------------------------------------------------------

def test_the_kustomization_lists_every_manifest():
    listed = yaml_file(K8S / "kustomization.yaml")["resources"]
    present = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == present
    assert set(k8s_docs()) == {"ConfigMap", "Deployment", "Service", "ScaledObject", "PodDisruptionBudget"}


def test_every_manifest_names_its_kind():
    for kind, doc in k8s_docs().items():
        assert doc["apiVersion"] and doc["kind"] == kind and doc["metadata"]["name"], kind
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), doc["metadata"]["name"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_match_the_kubernetes_schemas(version):
    try:
        from kubernetes_validate import utils
    except ModuleNotFoundError:
        pytest.skip(f"the Kubernetes JSON schemas ship in kubernetes-validate: pip install '{K8S_SCHEMA_PKG}'")
    checked = []
    for kind, doc in k8s_docs().items():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_scaledobject_matches_the_keda_crd
        try:
            utils.validate(doc, version, strict=True)  # strict: unknown fields are errors too
        except utils.ValidationError as exc:
            pytest.fail(f"{kind} ({version}): {'/'.join(map(str, exc.path))}: {exc.message}")
        checked.append(kind)
    assert sorted(checked) == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"]


def test_the_kubernetes_schema_check_catches_a_mistake():
    try:
        from kubernetes_validate import utils
    except ModuleNotFoundError:
        pytest.skip(f"pip install '{K8S_SCHEMA_PKG}'")
    bad = k8s_docs()["Deployment"]
    bad["spec"]["template"]["spec"]["terminationGracePeriod"] = 90  # misspelt
    with pytest.raises(utils.ValidationError):
        utils.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_scaledobject_matches_the_keda_crd():
    try:
        from cloudcoil.models.keda.v1alpha1 import ScaledObject
    except ModuleNotFoundError:
        pytest.skip(f"KEDA's CRD as pydantic models ships in cloudcoil-models-keda: pip install {KEDA_SCHEMA_PKG}")
    doc = k8s_docs()["ScaledObject"]
    model = ScaledObject.model_validate(doc)  # types, required fields, enums of the CRD
    # the models ignore unknown fields: what does not survive the round trip was not in the CRD
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc


def podmonitor() -> dict:
    return yaml_file(OPERATOR / "podmonitor.yaml")


def test_the_operator_overlay_is_the_base_plus_a_podmonitor():
    kustomization = yaml_file(OPERATOR / "kustomization.yaml")
    assert kustomization["resources"] == ["../", "podmonitor.yaml"]
    assert sorted(p.name for p in OPERATOR.glob("*.yaml")) == ["kustomization.yaml", "podmonitor.yaml"]
    doc = podmonitor()
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PodMonitor"


def test_the_podmonitor_scrapes_every_worker_pod_on_its_metrics_port():
    doc, deployment = podmonitor(), k8s_docs()["Deployment"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = doc["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= template_labels.items()
    ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    (endpoint,) = doc["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports and endpoint["path"] == "/metrics"
    service = k8s_docs()["Service"]
    assert int(service["metadata"]["annotations"]["prometheus.io/port"]) == ports[endpoint["port"]]
    assert endpoint["path"] == service["metadata"]["annotations"]["prometheus.io/path"]


def test_podmonitor_matches_the_prometheus_operator_crd():
    try:
        from cloudcoil.models.prometheus_operator.v1 import PodMonitor
    except ModuleNotFoundError:
        pytest.skip(f"the Prometheus Operator's CRDs as pydantic models: pip install {OPERATOR_SCHEMA_PKG}")
    doc = podmonitor()
    model = PodMonitor.model_validate(doc)
    assert model.model_dump(by_alias=True, exclude_unset=True, mode="json") == doc  # no unknown fields
    bad = {**doc, "spec": {**doc["spec"], "podMetricsEndpoints": [{"port": "metrics", "interval": 15}]}}
    with pytest.raises(Exception, match="interval"):  # the CRD's Duration is a string like "15s"
        PodMonitor.model_validate(bad)


def test_the_disruption_budget_covers_the_workers_one_at_a_time():
    docs = k8s_docs()
    pdb, deployment = docs["PodDisruptionBudget"], docs["Deployment"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_deployment_selects_its_own_pods():
    docs = k8s_docs()
    deployment = docs["Deployment"]
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector and selector.items() <= template_labels.items()
    service_selector = docs["Service"]["spec"]["selector"]
    assert service_selector and service_selector.items() <= template_labels.items()
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count; a re-apply would reset it"


def test_the_deployment_runs_the_configmap_pipeline_with_probes_and_resources():
    docs = k8s_docs()
    deployment, cm = docs["Deployment"], docs["ConfigMap"]
    pod = deployment["spec"]["template"]["spec"]
    c = container(deployment)
    env = env_of(c)
    # the pipeline: the args name the file where the ConfigMap is mounted
    (volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == volume["name"]]
    (item,) = volume["configMap"]["items"]
    assert item["key"] in cm["data"]
    assert c["args"] == ["run", f"{mount['mountPath']}/{item['path']}"]
    # Kafka and metrics from the environment
    assert env["TIDAL_BOOTSTRAP_SERVERS"]
    assert env["TIDAL_METRICS_HOST"] == "0.0.0.0"
    port, envvar = metrics_port_default()
    assert int(env[envvar]) == port
    (metrics,) = [p for p in c["ports"] if p["name"] == "metrics"]
    assert metrics["containerPort"] == port
    for probe, path in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready"),
                        ("startupProbe", "/health/live")):
        get = c[probe]["httpGet"]
        assert get["path"] == path and get["port"] in ("metrics", port), probe
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), kind
    assert pod["terminationGracePeriodSeconds"] >= MIN_GRACE_S
    # non-root, as the image's USER
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == dockerfile_user().split(":")[0]
    # the image is the one the kustomization sets
    images = {i["name"] for i in yaml_file(K8S / "kustomization.yaml").get("images", [])}
    assert c["image"].split(":")[0] in images
    # the Service scrapes the metrics port
    service = docs["Service"]
    ann = service["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    assert ann["prometheus.io/path"] == "/metrics"
    (sp,) = service["spec"]["ports"]
    assert sp["targetPort"] in (metrics["name"], port) and sp["port"] == port


def test_the_configmap_pipeline_loads():
    p = configmap_pipeline()
    assert p.name and p.steps
    cm_steps = [type(s).__name__ for s in p.steps]
    assert cm_steps == [type(s).__name__ for s in load_pipeline(COMPOSE_PIPELINE).steps]


def test_keda_scales_the_deployment_on_the_lag_of_the_pipeline_group():
    docs = k8s_docs()
    scaled, deployment = docs["ScaledObject"], docs["Deployment"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target["name"] == deployment["metadata"]["name"]
    assert target.get("apiVersion", "apps/v1") == deployment["apiVersion"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert set(meta) <= KEDA_KAFKA_KEYS, set(meta) - KEDA_KAFKA_KEYS
    assert all(isinstance(v, str) for v in meta.values()), "trigger metadata values are strings in the CRD"
    pipeline = configmap_pipeline()
    assert meta["consumerGroup"] == Pipeline(pipeline.name).group == pipeline.group
    assert meta["topic"] in pipeline.sources
    from tidal.broker.topics import PipelineTopics

    assert meta["topic"] == PipelineTopics(pipeline.name).events
    assert meta["bootstrapServers"] == env_of(container(deployment))["TIDAL_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) > 0
    assert meta.get("offsetResetPolicy", "latest") == "earliest", "the workers start from the earliest offset"
    # more workers than partitions sit idle: the most replicas is the partition count
    assert scaled["spec"]["minReplicaCount"] == 1
    assert scaled["spec"]["maxReplicaCount"] == pipeline.partitions


# -- the Dockerfile ----------------------------------------------------------------------------

def dockerfile_user() -> str:
    users = [args for op, args in final_stage(parse_dockerfile()) if op == "USER"]
    assert users, "the image sets no USER: it would run as root"
    return users[-1]


def test_the_image_is_python_311_slim():
    instructions = parse_dockerfile()
    args = global_args(instructions)
    for op, image in instructions:
        if op == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], image.split()[0])
            assert image == "python:3.11-slim"


def test_the_image_installs_the_package_from_the_repository():
    runs = " ".join(args for op, args in parse_dockerfile() if op == "RUN")
    assert re.search(r"pip install \"?\.", runs), "pip install . (the repository)"


def test_every_path_the_dockerfile_copies_exists_and_is_in_the_build_context():
    copies = []
    for op, args in parse_dockerfile():
        if op in ("COPY", "ADD"):
            words = exec_form(args) if args.startswith("[") else shlex.split(args)
            if any(w.startswith("--from") for w in words):
                continue  # from another stage
            copies += [w for w in words[:-1] if not w.startswith("--")]
    assert copies
    for src in copies:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert not dockerignored(src), f"COPY {src}: .dockerignore leaves it out of the build context"
    # what `pip install .` reads inside src/ is in the context; the clutter is not
    assert not dockerignored("src/tidal/__init__.py")
    assert not dockerignored("src/tidal/monitor/dashboard/static")
    for clutter in (".venv", ".git", "build", "tests", "src/tidal/__pycache__", "src/tidal.egg-info"):
        assert dockerignored(clutter), clutter


def test_the_image_runs_tidal_as_a_non_root_user():
    stage = final_stage(parse_dockerfile())
    user = dockerfile_user()
    assert user.split(":")[0] not in ("root", "0")
    assert re.fullmatch(r"\d+(:\d+)?", user), "a numeric USER lets Kubernetes' runAsNonRoot check it"
    (entrypoint,) = [exec_form(args) for op, args in stage if op == "ENTRYPOINT"]
    assert entrypoint == ["tidal"]
    (cmd,) = [exec_form(args) for op, args in stage if op == "CMD"]
    assert cmd[0] == "run" and len(cmd) == 2
    # the default pipeline is in the image, where the command reads it
    dests = [shlex.split(args)[-1] for op, args in stage if op == "COPY" and "pipeline.yaml" in args]
    assert cmd[1] in dests
    assert [op for op, _ in stage].index("USER") > max(i for i, (op, _) in enumerate(stage) if op == "RUN")


def test_the_exposed_port_is_the_metrics_port_everywhere():
    stage = final_stage(parse_dockerfile())
    exposed = {int(p.split("/")[0]) for op, args in stage if op == "EXPOSE" for p in args.split()}
    port, envvar = metrics_port_default()
    env = env_instructions(stage)
    assert exposed == {port} == {int(env[envvar])}
    assert env["TIDAL_METRICS_HOST"] == "0.0.0.0", "metrics bind 127.0.0.1 unless told otherwise"
    assert int(compose()["services"]["tidal"]["environment"][envvar]) == port
    deployment = k8s_docs()["Deployment"]
    assert {p["containerPort"] for p in container(deployment)["ports"]} == exposed
    from tidal.registry.store import ENV_REGISTRY

    assert env[ENV_REGISTRY] == str(compose()["services"]["tidal"]["environment"][ENV_REGISTRY])


def test_the_healthcheck_asks_the_workers_live_probe_with_python():
    """HEALTHCHECK's command is run here against tidal's own metrics server (its /health/live) on a
    loopback port: it passes while live, fails when the worker reports a stalled loop."""
    from prometheus_client import CollectorRegistry

    from tidal.monitor.metrics import serve_metrics

    stage = final_stage(parse_dockerfile())
    (check,) = [args for op, args in stage if op == "HEALTHCHECK"]
    cmd = exec_form(check[check.index("CMD") + 3:].strip())
    assert cmd[:2] == ["python", "-c"] and "/health/live" in cmd[2] and "127.0.0.1" in cmd[2]
    state = {"live": True, "ready": True}
    port = serve_metrics(CollectorRegistry(), 0, "127.0.0.1", health=lambda: state)
    env = {**os.environ, "TIDAL_METRICS_PORT": str(port)}
    ok = subprocess.run([sys.executable, "-c", cmd[2]], env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    state["live"] = False  # a stalled loop: 503, and the check fails
    down = subprocess.run([sys.executable, "-c", cmd[2]], env=env, capture_output=True, timeout=30)
    assert down.returncode != 0
