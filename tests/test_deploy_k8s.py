"""The Kubernetes manifests in deploy/k8s, checked without a cluster.

Every manifest listed by kustomization.yaml is validated against the
Kubernetes OpenAPI schemas shipped (offline) by kubernetes-validate, in strict
mode so a misspelt field fails; then the wiring the schemas cannot see is
checked: headless Services for client-side balancing, gRPC probes on the right
port and health service, shard numbering, the gateway's targets, the HPAs, the
model volume, resources and the pod security settings.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from serving.config import FlagParser, add_server_flags

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
# Oldest release these manifests support: native gRPC probes are GA in 1.27
# (beta and on by default since 1.24); HPA autoscaling/v2 and PDB policy/v1 since 1.23.
KUBERNETES_VERSION = "1.30.0"

# app.kubernetes.io/component -> gRPC port, health service name, Python module.
COMPONENTS = {
    "gateway": (50051, "recsys.v1.Gateway", "gateway"),
    "query": (50052, "recsys.internal.v1.QueryService", "query_service"),
    "index": (50053, "recsys.internal.v1.IndexService", "index_service"),
}
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


# ---------------------------------------------------------------- rendering


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def _render() -> tuple[dict, ...]:
    """The resources kustomization.yaml lists, in order (no patches or generators are used)."""
    docs = []
    for resource in kustomization()["resources"]:
        path = K8S / resource
        assert path.is_file(), f"kustomization.yaml lists {resource}, which is not a file in {K8S}"
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return tuple(docs)


def render() -> list[dict]:
    return list(_render())


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in render() if doc["kind"] == kind}


def one(kind: str, name: str) -> dict:
    found = of_kind(kind)
    assert name in found, f"no {kind} {name!r} (have {sorted(found)})"
    return found[name]


def pod_specs() -> dict[str, dict]:
    """Workload name -> pod spec, for Deployments and Jobs."""
    specs = {}
    for doc in render():
        if doc["kind"] in ("Deployment", "Job"):
            specs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc["spec"]["template"]["spec"]
    return specs


def all_containers() -> list[tuple[str, dict]]:
    return [
        (f"{workload}/{c['name']}", c)
        for workload, spec in pod_specs().items()
        for c in [*spec.get("initContainers", []), *spec["containers"]]
    ]


def component(deployment: dict) -> str:
    return deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def main_container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def effective_env(container: dict) -> dict[str, str]:
    """The container's env with its envFrom ConfigMaps underneath, as the kubelet builds it."""
    merged = {}
    for source in container.get("envFrom", []):
        merged.update(one("ConfigMap", source["configMapRef"]["name"])["data"])
    merged.update(env(container))
    return merged


def index_deployments() -> dict[str, dict]:
    return {name: d for name, d in of_kind("Deployment").items() if component(d) == "index"}


def selects(selector: dict[str, str], deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def parse_target(target: str) -> tuple[str, int]:
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
    assert match, f"{target!r} is not a dns:///name:port target"
    return match.group(1), int(match.group(2))


@functools.cache
def help_text(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())


def default_grace_period() -> float:
    parser = FlagParser(env_prefix="UNUSED_TEST_PREFIX_")
    add_server_flags(parser, default_port=1)
    return parser.parse_args([]).grace_period


# ---------------------------------------------------------------- schema validation


def test_kustomization_lists_every_manifest_in_the_folder():
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_kustomization_sets_the_namespace_it_creates():
    namespaces = of_kind("Namespace")
    assert list(namespaces) == [kustomization()["namespace"]]
    for doc in render():
        assert "namespace" not in doc["metadata"], "left to kustomize's namespace field"


@pytest.mark.parametrize(
    "doc", render(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_manifest_is_valid_for_kubernetes(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_schema_validation_catches_mistakes():
    """The validator works offline and is strict: a control for the test above."""
    deployment = one("Deployment", "gateway")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    del main_container(broken)["readinessProbe"]["grpc"]["port"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    misspelt["spec"]["replica"] = misspelt["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
def test_kubectl_kustomize_renders_the_same_resources():
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, rendered)) == sorted(map(key, render()))
    namespace = kustomization()["namespace"]
    for doc in rendered:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, key(doc)
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


# ---------------------------------------------------------------- topology


def test_workloads_are_the_expected_ones():
    assert sorted(of_kind("Deployment")) == ["gateway", "index-shard-0", "index-shard-1", "query"]
    assert sorted(of_kind("Job")) == ["trainer"]
    for name, deployment in of_kind("Deployment").items():
        assert deployment["spec"]["replicas"] >= 2, f"{name}: one replica is a single point of failure"


def test_query_and_index_services_are_headless_and_the_gateway_service_is_not():
    services = of_kind("Service")
    backends = ["query", *index_deployments()]
    for name in backends:
        assert services[name]["spec"].get("clusterIP") == "None", f"{name}: needs clusterIP: None for dns:/// balancing"
    assert services["gateway"]["spec"].get("clusterIP") != "None"
    assert sorted(services) == sorted(["gateway", *backends])


def test_every_service_selects_exactly_its_deployment_on_its_grpc_port():
    deployments = of_kind("Deployment")
    for name, service in of_kind("Service").items():
        selector = service["spec"]["selector"]
        matching = [d for d in deployments.values() if selects(selector, d)]
        assert [d["metadata"]["name"] for d in matching] == [name]
        port, _, _ = COMPONENTS[component(matching[0])]
        [service_port] = service["spec"]["ports"]
        assert service_port["port"] == port
        container_ports = {p["name"]: p["containerPort"] for p in main_container(matching[0])["ports"]}
        assert container_ports[service_port["targetPort"]] == port


def test_deployment_selectors_match_their_own_pods_only():
    deployments = of_kind("Deployment")
    for name, deployment in deployments.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert [n for n, d in deployments.items() if selects(selector, d)] == [name]


def test_index_shards_are_numbered_0_to_n_minus_1():
    shards = index_deployments()
    assert len(shards) == 2
    numbers = []
    for name, deployment in shards.items():
        shard_env = env(main_container(deployment))
        assert int(shard_env["INDEX_NUM_SHARDS"]) == len(shards), name
        assert name == f"index-shard-{shard_env['INDEX_SHARD_INDEX']}"
        numbers.append(int(shard_env["INDEX_SHARD_INDEX"]))
    assert sorted(numbers) == list(range(len(shards)))


def test_gateway_has_one_dns_target_per_shard_service_and_one_for_query():
    gateway_env = env(main_container(one("Deployment", "gateway")))
    services = of_kind("Service")

    query_name, query_port = parse_target(gateway_env["QUERY_TARGET"])
    assert query_name == "query" and query_port == services["query"]["spec"]["ports"][0]["port"]

    targets = [parse_target(t) for t in gateway_env["INDEX_TARGETS"].split(";")]
    assert sorted(name for name, _ in targets) == sorted(index_deployments())
    for name, port in targets:
        assert services[name]["spec"]["clusterIP"] == "None"
        assert port == services[name]["spec"]["ports"][0]["port"]


def test_every_env_var_is_a_flag_of_its_service():
    """A misspelt variable is silently ignored by the service; catch it here."""
    for name, deployment in of_kind("Deployment").items():
        module = COMPONENTS[component(deployment)][2]
        for variable in effective_env(main_container(deployment)):
            if variable.startswith("OTEL_"):
                continue  # read by the OpenTelemetry SDK (serving/tracing.py), not a flag
            assert f"[env {variable}]" in help_text(module), f"{name}: {variable} is not a flag of python -m {module}"


# ---------------------------------------------------------------- probes and shutdown


def test_servers_have_grpc_probes_on_their_port_and_health_service():
    for name, deployment in of_kind("Deployment").items():
        port, health_service, _ = COMPONENTS[component(deployment)]
        container = main_container(deployment)
        assert env(container)[f"{component(deployment).upper()}_PORT"] == str(port), name
        for probe in PROBES:
            service = health_service
            if component(deployment) == "gateway" and probe != "readinessProbe":
                # The gateway's readiness waits for its peers (start-up gate); liveness must not.
                service = "liveness"
            assert container[probe]["grpc"] == {"port": port, "service": service}, (name, probe)


def test_startup_probe_leaves_time_to_load_a_model():
    for name, deployment in of_kind("Deployment").items():
        startup = main_container(deployment)["startupProbe"]
        window = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
        needed = 30 if component(deployment) == "gateway" else 120
        assert window >= needed, f"{name}: startup probe gives up after {window} s"


def test_model_servers_wait_for_the_first_bundle_before_starting():
    for name, deployment in of_kind("Deployment").items():
        if component(deployment) == "gateway":
            continue
        [wait] = deployment["spec"]["template"]["spec"]["initContainers"]
        assert wait["image"] == main_container(deployment)["image"], name
        assert "serving.bundle import version_dirs" in " ".join(wait["command"]), name
        assert effective_env(wait)["MODEL_BASE"] == effective_env(main_container(deployment))["MODEL_BASE"]


def test_pods_outlive_the_services_shutdown_grace_period():
    grace = default_grace_period()
    for name, deployment in of_kind("Deployment").items():
        container = main_container(deployment)
        own = float(env(container).get(f"{component(deployment).upper()}_GRACE_PERIOD", grace))
        # The kubelet's default is 30 s; set it explicitly so it cannot drift below the drain time.
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > own, name


# ---------------------------------------------------------------- scaling


def test_every_index_shard_has_a_cpu_autoscaler():
    hpas = of_kind("HorizontalPodAutoscaler")
    deployments = of_kind("Deployment")
    targeted = []
    for name, hpa in hpas.items():
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["apiVersion"] == "apps/v1"
        assert ref["name"] in deployments, f"{name} scales a Deployment that does not exist"
        targeted.append(ref["name"])
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        [metric] = hpa["spec"]["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
        # Utilization is measured against the CPU request, so there must be one.
        assert main_container(deployments[ref["name"]])["resources"]["requests"]["cpu"]
    assert sorted(targeted) == sorted(index_deployments())


def test_every_index_shard_and_query_keep_a_replica_through_disruptions():
    pdbs = of_kind("PodDisruptionBudget")
    deployments = of_kind("Deployment")
    for name in ["query", *index_deployments()]:
        covering = [p for p in pdbs.values() if selects(p["spec"]["selector"]["matchLabels"], deployments[name])]
        assert covering, f"no PodDisruptionBudget covers {name}"
        assert covering[0]["spec"]["minAvailable"] >= 1


# ---------------------------------------------------------------- model volume


def test_models_claim_is_read_write_many():
    claim = one("PersistentVolumeClaim", "models")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def _model_mount(spec: dict, container: dict) -> tuple[dict, dict]:
    [volume] = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "models"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    return volume, mount


def test_trainer_job_writes_bundles_into_the_claim_once():
    job = one("Job", "trainer")
    spec = job["spec"]["template"]["spec"]
    [trainer] = spec["containers"]
    volume, mount = _model_mount(spec, trainer)
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    assert effective_env(trainer)["MODEL_BASE"].startswith(mount["mountPath"].rstrip("/") + "/")
    assert trainer["command"][:4] == ["python", "-m", "trainer", "train"]
    assert "--if-missing" in trainer["command"], "re-applying the kustomization must not retrain"
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    # The non-root trainer can write to the volume only through fsGroup.
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]


def test_query_and_index_mount_the_claim_read_only_at_model_base():
    for name, deployment in of_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        if component(deployment) == "gateway":
            assert not any("persistentVolumeClaim" in v for v in spec.get("volumes", [])), "the gateway holds no model"
            continue
        for container in [*spec["initContainers"], *spec["containers"]]:
            volume, mount = _model_mount(spec, container)
            assert mount["readOnly"] and volume["persistentVolumeClaim"]["readOnly"], name
            assert effective_env(container)["MODEL_BASE"].startswith(mount["mountPath"].rstrip("/") + "/")


def test_shared_settings_come_from_the_config_map():
    data = one("ConfigMap", "recsys-config")["data"]
    assert {"MODEL_BASE", "POLL_INTERVAL"} <= set(data)
    assert float(data["POLL_INTERVAL"]) > 0
    for workload, spec in pod_specs().items():
        if workload == "Deployment/gateway":
            continue
        for container in spec["containers"]:
            assert {"configMapRef": {"name": "recsys-config"}} in container.get("envFrom", []), workload


# ---------------------------------------------------------------- resources and security


def test_every_container_requests_cpu_and_memory_and_caps_memory():
    for name, container in all_containers():
        resources = container.get("resources", {})
        assert {"cpu", "memory"} <= set(resources.get("requests", {})), name
        assert "memory" in resources.get("limits", {}), name


def test_every_image_is_a_role_image_that_kustomize_can_retag():
    retaggable = {image["name"] for image in kustomization()["images"]}
    for name, container in all_containers():
        image = container["image"].rsplit(":", 1)[0]
        assert image in retaggable, f"{name}: image {image} is not in kustomization.yaml images"


def test_containers_run_as_non_root_with_a_read_only_root_filesystem():
    for workload, spec in pod_specs().items():
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, workload
        assert pod["seccompProfile"]["type"] == "RuntimeDefault", workload
        # Service links would set e.g. GATEWAY_PORT=tcp://10.0.0.1:50051 from the gateway
        # Service, which the gateway would read as its --port flag.
        assert spec["enableServiceLinks"] is False, workload
        assert spec["automountServiceAccountToken"] is False, workload
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (workload, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (workload, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (workload, container["name"])
        # A read-only root still needs a writable /tmp for the servers' and TensorFlow's scratch files.
        for container in spec["containers"]:
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, f"{workload}: no writable /tmp"


# ---------------------------------------------------------------- multi-worker training (deploy/k8s/train-multiworker)

MULTIWORKER = K8S / "train-multiworker"
COMPLETION_INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


@functools.cache
def _render_multiworker() -> tuple[dict, ...]:
    listed = yaml.safe_load((MULTIWORKER / "kustomization.yaml").read_text())
    docs = []
    for resource in listed["resources"]:
        docs += [doc for doc in yaml.safe_load_all((MULTIWORKER / resource).read_text()) if doc]
    return tuple(docs)


def multiworker(kind: str) -> dict:
    [doc] = [d for d in _render_multiworker() if d["kind"] == kind]
    return doc


def expand(value: str, variables: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion of an env value (variables defined earlier in the list)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: variables.get(m.group(1), m.group(0)), value)


def test_multiworker_kustomization_lists_every_manifest_and_the_namespace():
    listed = yaml.safe_load((MULTIWORKER / "kustomization.yaml").read_text())
    assert set(listed["resources"]) == {p.name for p in MULTIWORKER.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed["namespace"] == kustomization()["namespace"]
    assert {i["name"] for i in listed["images"]} <= {i["name"] for i in kustomization()["images"]}


@pytest.mark.parametrize("doc", _render_multiworker(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_multiworker_manifest_is_valid_for_kubernetes(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_multiworker_job_is_indexed_and_its_pods_are_named_by_the_headless_service():
    job, service = multiworker("Job"), multiworker("Service")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] >= 2
    pod = spec["template"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in service["spec"]["selector"].items())
    assert pod["spec"]["restartPolicy"] == "Never"


def _worker_tf_configs() -> list[dict]:
    """TF_CONFIG as each worker pod sees it: the Job's env with its completion index substituted."""
    job = multiworker("Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    configs = []
    for index in range(job["spec"]["completions"]):
        variables: dict[str, str] = {}
        for entry in container["env"]:
            if "value" in entry:
                variables[entry["name"]] = expand(entry["value"], variables)
            elif entry["valueFrom"].get("fieldRef", {}).get("fieldPath") == COMPLETION_INDEX_ANNOTATION:
                variables[entry["name"]] = str(index)
        configs.append(json.loads(variables["TF_CONFIG"]))
    return configs


def test_multiworker_tf_config_lists_every_worker_and_names_the_pods_own_index():
    job, service = multiworker("Job"), multiworker("Service")
    [container] = job["spec"]["template"]["spec"]["containers"]
    [port] = service["spec"]["ports"]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[port["targetPort"]] == port["port"]
    name, subdomain = job["metadata"]["name"], service["metadata"]["name"]
    # An Indexed Job's pod i has the hostname <job name>-<i>; under the subdomain it resolves as <host>.<service>.
    expected = [f"{name}-{i}.{subdomain}:{port['port']}" for i in range(job["spec"]["completions"])]
    configs = _worker_tf_configs()
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(len(expected))]
    for config in configs:
        assert config["cluster"] == {"worker": expected}, "worker 0 is the chief; every pod must list the same cluster"


def test_multiworker_tf_config_check_fails_on_a_wrong_index_source():
    """A control: with the index taken from anywhere else, the pods would all claim index $(WORKER_INDEX)."""
    job = yaml.safe_load(yaml.safe_dump(multiworker("Job")))
    [container] = job["spec"]["template"]["spec"]["containers"]
    [index_entry] = [e for e in container["env"] if e["name"] == "WORKER_INDEX"]
    index_entry["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.name"
    variables: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            variables[entry["name"]] = expand(entry["value"], variables)
    with pytest.raises(ValueError):
        json.loads(variables["TF_CONFIG"])


def test_multiworker_job_trains_from_the_data_claim_into_the_models_claim():
    job = multiworker("Job")
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["command"][:4] == ["python", "-m", "trainer", "train"]
    volume, mount = _model_mount(spec, container)
    assert volume["persistentVolumeClaim"]["claimName"] == one("PersistentVolumeClaim", "models")["metadata"]["name"]
    assert not mount.get("readOnly")
    assert effective_env(container)["MODEL_BASE"].startswith(mount["mountPath"].rstrip("/") + "/")
    claim = multiworker("PersistentVolumeClaim")
    [data_volume] = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
    [data_mount] = [m for m in container["volumeMounts"] if m["name"] == data_volume["name"]]
    assert data_mount["readOnly"] and data_volume["persistentVolumeClaim"]["readOnly"]
    data_dir = container["command"][container["command"].index("--data-dir") + 1]
    assert data_dir.startswith(data_mount["mountPath"].rstrip("/") + "/")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "every worker pod mounts it, on any node"


def test_multiworker_pods_are_locked_down_like_the_others():
    spec = multiworker("Job")["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0 and pod["fsGroup"] == pod["runAsUser"]
    assert spec["enableServiceLinks"] is False and spec["automountServiceAccountToken"] is False
    [container] = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and container["resources"]["limits"]["memory"]
    assert container["image"].rsplit(":", 1)[0] in {i["name"] for i in kustomization()["images"]}


def test_every_serving_pod_reads_the_tracing_settings_and_traces_nothing_by_default():
    from serving import tracing

    deployments = {name: d for name, d in of_kind("Deployment").items() if component(d) in COMPONENTS}
    assert {component(d) for d in deployments.values()} == set(COMPONENTS)
    for name, deployment in deployments.items():
        settings = effective_env(main_container(deployment))
        assert settings.get("OTEL_TRACES_SAMPLER") == "parentbased_traceidratio", name
        assert 0 < float(settings["OTEL_TRACES_SAMPLER_ARG"]) <= 1, name
        assert settings["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://"), name
        assert not tracing.wanted(settings), f"{name}: tracing must be off until an operator turns it on"
        assert tracing.wanted({**settings, "OTEL_TRACES_EXPORTER": "otlp"}), name
