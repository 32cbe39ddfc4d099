"""The Dockerfile and the compose files, checked by parsing them (no Docker engine needed).

What is checked is what breaks a deployment silently: a service that cannot be
scaled, a health check on the wrong port, a gateway pointed at a name that is
not a service, an index or gateway image that installs TensorFlow, an env var
no service reads.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from serving.config import FlagParser, add_server_flags

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SHARDS_FILE = ROOT / "docker-compose.shards.yml"
COMPOSE_FILES = [COMPOSE_FILE, SHARDS_FILE]

# Dockerfile target (= role) -> gRPC port, health service name, Python module.
ROLES = {
    "gateway": (50051, "recsys.v1.Gateway", "gateway"),
    "query": (50052, "recsys.internal.v1.QueryService", "query_service"),
    "index": (50053, "recsys.internal.v1.IndexService", "index_service"),
}
ENV_PREFIX = {"gateway": "GATEWAY_", "query": "QUERY_", "index": "INDEX_"}
TENSORFLOW_REQUIREMENTS = re.compile(r"^(tensorflow|tf-keras|tf_keras|tf-nightly)\b|\[.*\btf\b.*\]", re.I)


# ---------------------------------------------------------------- helpers


def load_compose(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def services(path: Path) -> dict[str, dict]:
    return load_compose(path)["services"]


def role(service: dict) -> str:
    """The Dockerfile target a compose service is built from."""
    return service["build"]["target"]


def services_of_role(path: Path, wanted: str) -> dict[str, dict]:
    return {name: s for name, s in services(path).items() if role(s) == wanted}


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def published_ports(service: dict) -> list[tuple[str | None, int]]:
    """(host port or None, container port) for each entry of ``ports``."""
    result = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            result.append((str(entry.get("published")), int(entry["target"])))
            continue
        parts = str(entry).split(":")
        container = int(parts[-1].split("/")[0])
        result.append((parts[-2] if len(parts) > 1 else None, container))
    return result


def mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each entry of ``volumes``."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            result.append((entry["source"], entry["target"], bool(entry.get("read_only"))))
            continue
        # SOURCE:TARGET[:MODE]; SOURCE may hold ":" itself (${VAR:-default}).
        match = re.fullmatch(r"(.+?):(/[^:]*)(?::([a-z,]+))?", entry)
        assert match, f"cannot parse volume {entry!r}"
        source, target, mode = match.groups()
        result.append((source, target, "ro" in (mode or "").split(",")))
    return result


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration):
        total += float(number) * units[unit]
    return total


def parse_target(target: str) -> tuple[str, int]:
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", target)
    assert match, f"{target!r} is not a dns:///name:port target"
    return match.group(1), int(match.group(2))


@functools.cache
def help_text(*command: str) -> str:
    """``python -m <command...> --help``: the flags and the env var of each."""
    result = subprocess.run(
        [sys.executable, "-m", *command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stdout.split())  # argparse wraps "[env NAME]" across lines


def default_grace_period() -> float:
    parser = FlagParser(env_prefix="UNUSED_TEST_PREFIX_")
    add_server_flags(parser, default_port=1)
    return parser.parse_args([]).grace_period


# ---------------------------------------------------------------- Dockerfile parsing


@functools.cache
def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {"base": FROM image or stage, "instructions": [(KEYWORD, args)]}."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    stages: dict[str, dict] = {}
    current = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I)
            assert match, f"cannot parse FROM {args!r}"
            current = {"base": match.group(1), "instructions": []}
            stages[match.group(2) or f"stage{len(stages)}"] = current
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current["instructions"].append((keyword, args.strip()))
    return stages


def stage_chain(target: str) -> list[dict]:
    """The stage and all the stages it is built FROM, base first."""
    stages = dockerfile_stages()
    assert target in stages, f"Dockerfile has no stage {target!r} (stages: {sorted(stages)})"
    chain = []
    name = target
    while name in stages:
        chain.append(stages[name])
        name = stages[name]["base"]
    return chain[::-1]


def instructions(target: str, keyword: str) -> list[str]:
    return [args for stage in stage_chain(target) for kw, args in stage["instructions"] if kw == keyword]


def pip_installs(target: str) -> list[str]:
    return [run for run in instructions(target, "RUN") if re.search(r"\bpip3?\s+install\b", run)]


def installed_extras(target: str) -> set[str]:
    extras = set()
    for run in pip_installs(target):
        for group in re.findall(r"\.\[([^\]]+)\]", run):
            extras.update(e.strip() for e in group.split(","))
    return extras


def requirements_installed(target: str) -> list[str]:
    """The project requirements a target installs: base dependencies plus its extras."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = installed_extras(target)
    unknown = extras - set(project["optional-dependencies"])
    assert not unknown, f"target {target} installs extras {unknown} that pyproject.toml does not define"
    requirements = list(project["dependencies"])
    for extra in sorted(extras):
        requirements += project["optional-dependencies"][extra]
    return requirements


def env_of(target: str) -> dict[str, str]:
    env = {}
    for args in instructions(target, "ENV"):
        for token in shlex.split(args):
            if "=" in token:
                key, _, value = token.partition("=")
                env[key] = value
    return env


def copied_sources(target: str) -> list[str]:
    sources = []
    for args in instructions(target, "COPY"):
        if "--from" in args:
            continue  # from another stage, not the build context
        tokens = [t for t in shlex.split(args) if not t.startswith("--")]
        sources += tokens[:-1]
    return sources


# ---------------------------------------------------------------- compose: topology


def test_base_file_has_the_four_roles():
    found = services(COMPOSE_FILE)
    assert {"trainer", "query", "index", "gateway"} <= set(found)
    for name in ("trainer", "query", "index", "gateway"):
        assert role(found[name]) == name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_service_is_built_from_a_dockerfile_target(path):
    stages = dockerfile_stages()
    for name, service in services(path).items():
        assert service["build"]["context"] == ".", name
        assert role(service) in stages, f"{name}: no Dockerfile stage {role(service)!r}"
        # One image per role: services of one role share it, different roles never do.
        assert service["image"].split(":")[0].endswith("/" + role(service)), name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_models_volume_is_written_by_the_trainer_and_read_only_elsewhere(path):
    compose = load_compose(path)
    assert "models" in (compose.get("volumes") or {})
    for name, service in compose["services"].items():
        model_mounts = [(target, ro) for source, target, ro in mounts(service) if source == "models"]
        if role(service) == "gateway":
            assert not model_mounts, "the gateway holds no model"
            continue
        assert model_mounts, f"{name} does not mount the models volume"
        [(target, read_only)] = model_mounts
        assert read_only == (role(service) != "trainer"), f"{name}: models mount read_only={read_only}"
        model_base = environment(service).get("MODEL_BASE")
        assert model_base and model_base.startswith(target.rstrip("/") + "/"), (
            f"{name}: MODEL_BASE={model_base!r} is not inside the models mount {target}"
        )


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_trainer_is_one_shot_and_reads_mounted_movielens(path):
    trainer = services(path)["trainer"]
    command = trainer["command"]
    assert command[:4] == ["python", "-m", "trainer", "train"]
    assert "--if-missing" in command, "the trainer must not retrain on every `up`"
    assert trainer.get("restart", "no") == "no"
    assert "healthcheck" not in trainer and not trainer.get("ports")
    data_dir = environment(trainer)["ML100K_DIR"]
    data_mounts = [(src, ro) for src, target, ro in mounts(trainer) if target == data_dir]
    assert data_mounts, f"nothing is mounted at ML100K_DIR={data_dir}"
    [(source, read_only)] = data_mounts
    assert read_only and source == "${ML100K_DIR:-./data/ml-100k}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_only_the_gateway_publishes_a_host_port(path):
    for name, service in services(path).items():
        ports = published_ports(service)
        if role(service) == "gateway":
            assert (str(ROLES["gateway"][0]), ROLES["gateway"][0]) in ports, ports
        else:
            assert not ports, f"{name} publishes {ports}: only the gateway is reachable from the host"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_index_services_can_scale(path):
    index = services_of_role(path, "index")
    assert index
    for name, service in index.items():
        # A fixed container name or host port would make `--scale index=N` fail.
        assert "container_name" not in service, name
        assert not service.get("ports"), name
        replicas = service["deploy"]["replicas"]
        assert isinstance(replicas, int) and replicas >= 1, name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_servers_have_a_grpc_healthcheck_on_their_own_port(path):
    servers = {n: s for n, s in services(path).items() if role(s) != "trainer"}
    assert {role(s) for s in servers.values()} == set(ROLES)
    for name, service in servers.items():
        port, health_service, _ = ROLES[role(service)]
        assert environment(service).get(ENV_PREFIX[role(service)] + "PORT", str(port)) == str(port), name
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", f"{name}: exec form, so no shell is needed"
        args = test[1:]
        assert args[:3] == ["python", "-m", "serving.healthcheck"], name
        assert args[args.index("--address") + 1] == f"127.0.0.1:{port}", name
        assert args[args.index("--service") + 1] == health_service, name
        for key in ("interval", "timeout", "start_period"):
            assert seconds(service["healthcheck"][key]) > 0, (name, key)


def test_healthcheck_module_takes_the_flags_the_compose_files_use():
    text = help_text("serving.healthcheck")
    assert "--address" in text and "--service" in text


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_servers_outlive_their_own_shutdown_grace_period(path):
    grace = default_grace_period()
    for name, service in services(path).items():
        if role(service) == "trainer":
            continue
        own = float(environment(service).get(ENV_PREFIX[role(service)] + "GRACE_PERIOD", grace))
        # Docker's default is 10 s, no more than the services' own drain time.
        assert seconds(service.get("stop_grace_period", "10s")) > own, name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_start_order_waits_for_training_then_health(path):
    all_services = services(path)
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        if role(service) in ("query", "index"):
            assert depends == {"trainer": {"condition": "service_completed_successfully"}}, name
        if role(service) == "gateway":
            backends = {n for n, s in all_services.items() if role(s) in ("query", "index")}
            assert set(depends) == backends, name
            assert all(d["condition"] == "service_healthy" for d in depends.values()), name


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_gateway_targets_are_dns_names_of_compose_services(path):
    all_services = services(path)
    [gateway] = services_of_role(path, "gateway").values()
    env = environment(gateway)

    query_name, query_port = parse_target(env["QUERY_TARGET"])
    assert role(all_services[query_name]) == "query"
    assert query_port == ROLES["query"][0]

    index_targets = [parse_target(t) for t in env["INDEX_TARGETS"].split(";")]
    # One target per index service (= per shard), each named once.
    assert sorted(n for n, _ in index_targets) == sorted(services_of_role(path, "index"))
    assert {port for _, port in index_targets} == {ROLES["index"][0]}


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_env_var_is_a_flag_of_its_service(path):
    """A misspelt variable is silently ignored by the service; catch it here."""
    for name, service in services(path).items():
        if role(service) == "trainer":
            continue  # test_trainer_cli_reads_the_compose_environment
        module = ROLES[role(service)][2]
        for variable in environment(service):
            if variable.startswith("OTEL_"):
                continue  # read by the OpenTelemetry SDK (serving/tracing.py), not a flag
            assert f"[env {variable}]" in help_text(module), f"{name}: {variable} is not a flag of python -m {module}"


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_trainer_cli_reads_the_compose_environment(path):
    trainer = services(path)["trainer"]
    text = help_text("trainer", "train")
    for flag in trainer["command"][4:]:
        assert flag in text, f"python -m trainer train has no {flag}"
    for variable in environment(trainer):
        if variable != "ML100K_DIR":  # read by trainer/readers/download.py, not a flag
            assert f"[env {variable}]" in text, f"trainer: {variable} is not a flag of python -m trainer train"


# ---------------------------------------------------------------- compose: shards file


def test_shards_file_runs_two_shards_of_two_replicas():
    shards = services_of_role(SHARDS_FILE, "index")
    assert sorted(shards) == ["index-shard-0", "index-shard-1"]
    assert "index" not in services(SHARDS_FILE)
    for name, service in shards.items():
        env = environment(service)
        assert env["INDEX_SHARD_INDEX"] == name.rsplit("-", 1)[1]
        assert env["INDEX_NUM_SHARDS"] == "2"
        assert service["deploy"]["replicas"] == 2
    gateway = services(SHARDS_FILE)["gateway"]
    assert environment(gateway)["INDEX_TARGETS"] == "dns:///index-shard-0:50053;dns:///index-shard-1:50053"


def test_base_file_runs_one_unsharded_index():
    [index] = services_of_role(COMPOSE_FILE, "index").values()
    env = environment(index)
    assert env.get("INDEX_NUM_SHARDS", "1") == "1"
    assert env.get("INDEX_SHARD_INDEX", "0") == "0"


def test_shared_services_agree_between_the_two_files():
    base, shards = services(COMPOSE_FILE), services(SHARDS_FILE)
    for name in ("trainer", "query"):
        assert base[name] == shards[name], f"{name} differs between the compose files"
    ignore = {"environment", "depends_on"}
    assert {k: v for k, v in base["gateway"].items() if k not in ignore} == {
        k: v for k, v in shards["gateway"].items() if k not in ignore
    }


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_has_one_target_per_role_on_python_311_slim():
    stages = dockerfile_stages()
    assert {"trainer", "query", "index", "gateway"} <= set(stages)
    for target in ("trainer", "query", "index", "gateway"):
        assert stage_chain(target)[0]["base"] == "python:3.11-slim"


@pytest.mark.parametrize("target", ["index", "gateway"])
def test_index_and_gateway_images_never_install_tensorflow(target):
    for run in instructions(target, "RUN"):
        assert not re.search(r"tensorflow|tf[-_]keras", run, re.I), run
    assert not installed_extras(target) & {"trainer", "query"}
    for requirement in requirements_installed(target):
        assert not TENSORFLOW_REQUIREMENTS.search(requirement), f"{target} installs {requirement}"


@pytest.mark.parametrize(
    "target, extra, tensorflow",
    [("trainer", "trainer", True), ("query", "query", True), ("index", "index", False), ("gateway", None, False)],
)
def test_each_target_installs_its_own_extra(target, extra, tensorflow):
    # Also the positive control for the test above: the parser does see TensorFlow where it is.
    assert installed_extras(target) == ({extra} if extra else set())
    assert any(TENSORFLOW_REQUIREMENTS.search(r) for r in requirements_installed(target)) == tensorflow
    assert any("--no-cache-dir" in run for run in pip_installs(target))


@pytest.mark.parametrize("target", ["trainer", "query", "index", "gateway"])
def test_each_target_holds_only_its_own_code(target):
    own = {"trainer": "trainer", "query": "query_service", "index": "index_service", "gateway": "gateway"}[target]
    copied = {source.strip("/").split("/")[0] for source in copied_sources(target)}
    assert own in copied
    assert copied <= {"pyproject.toml", "protos", "serving", own}, copied


@pytest.mark.parametrize("target", ["trainer", "query", "index", "gateway"])
def test_each_target_runs_as_non_root_with_single_threaded_blas(target):
    env = env_of(target)
    assert env.get("OPENBLAS_NUM_THREADS") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    if target in ("trainer", "query"):
        assert env.get("TF_USE_LEGACY_KERAS") == "1"
    users = instructions(target, "USER")
    assert users, f"{target} runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("target", ["query", "index", "gateway"])
def test_server_targets_expose_their_port_and_start_their_module(target):
    port, health_service, module = ROLES[target]
    assert str(port) in " ".join(instructions(target, "EXPOSE")).split()
    assert json.loads(instructions(target, "CMD")[-1]) == ["python", "-m", module]
    [healthcheck] = instructions(target, "HEALTHCHECK")
    assert "serving.healthcheck" in healthcheck and health_service in healthcheck and str(port) in healthcheck


def test_dockerignore_admits_everything_the_dockerfile_copies():
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list keeps .venv, models and data out of the build context"
    allowed = {line[1:].strip("/") for line in lines if line.startswith("!")}
    for target in ("trainer", "query", "index", "gateway"):
        for source in copied_sources(target):
            assert source.strip("/").split("/")[0] in allowed, f"{source} is excluded by .dockerignore"
    for unwanted in (".venv", "models", "data", ".git", "tests"):
        assert unwanted not in allowed
