"""compose.yaml describes production; no Docker runs here, so check its wiring by reading it."""

from __future__ import annotations

import base64
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser
from tests.support import ROOT

DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of each mount; long and short syntax."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


def command(service: dict) -> list[str]:
    cmd = service.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(part) for part in cmd]


def scrape_targets(compose: dict) -> list[str]:
    """Every ``host:port`` the Prometheus config in compose.yaml scrapes."""
    prometheus = yaml.safe_load(compose["configs"]["prometheus"]["content"])
    return [t for job in prometheus["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]


def tailor_services(services) -> dict[str, list[str]]:
    return {name: command(s) for name, s in services.items() if command(s)[:1] == ["tailor"]}


def flow_services(services) -> list[str]:
    return [name for name, cmd in tailor_services(services).items() if cmd[1:2] == ["flow"]]


def test_production_has_kafka_redis_feast_apply_flow_and_monitoring(services):
    assert {"kafka", "redis", "feast-apply", "prometheus", "grafana"} <= set(services)
    assert flow_services(services), "no service runs `tailor flow`"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["redis"]["image"].startswith("redis:")


def test_every_service_has_an_image_or_a_build_that_exists(services):
    for name, service in services.items():
        assert service.get("image") or service.get("build"), f"{name} has neither image nor build"
        build = service.get("build")
        if build:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            assert dockerfile.is_file(), f"{name} builds from {dockerfile}, which does not exist"


def test_depends_on_names_real_services_with_valid_conditions(services):
    for name, service in services.items():
        for dependency, condition in depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert dependency != name
            assert condition in DEPENDS_CONDITIONS, f"{name}: {condition}"
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy; it has no healthcheck"
                )


def test_the_flow_starts_after_feast_apply_and_healthy_kafka_and_redis(services):
    for name in flow_services(services):
        deps = depends_on(services[name])
        assert deps.get("feast-apply") == "service_completed_successfully"
        assert deps.get("kafka") == "service_healthy"
        assert deps.get("redis") == "service_healthy"


def test_flow_services_get_brokers_and_redis_that_point_at_compose_services(services):
    kafka_env = environment(services["kafka"])
    advertised = {m.group(1) for m in re.finditer(r"PLAINTEXT://([^,]+)", kafka_env["KAFKA_ADVERTISED_LISTENERS"])}
    for name in [*flow_services(services), "feast-apply"]:
        env = environment(services[name])
        assert env.get("TAILOR_BROKERS"), f"{name} has no TAILOR_BROKERS"
        assert env.get("TAILOR_REDIS_URL"), f"{name} has no TAILOR_REDIS_URL"
        for address in env["TAILOR_BROKERS"].split(","):
            assert address.split(":")[0] in services, f"{name}: broker {address} is not a service"
            assert address in advertised, f"{name}: {address} is not a listener Kafka advertises ({advertised})"
        assert env["TAILOR_REDIS_URL"].split(":")[0] in services


def test_kafka_runs_kraft_with_a_valid_cluster_id(services):
    env = environment(services["kafka"])
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "ZOOKEEPER" not in " ".join(env)
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"]
    assert voters.split("@")[0] == env["KAFKA_NODE_ID"]
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64url UUID"
    mounts = dict((target, source) for source, target in volume_mounts(services["kafka"]))
    assert env["KAFKA_LOG_DIRS"] in mounts, "Kafka's log is not on a volume"


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose.get("volumes") or {})
    used = set()
    for name, service in services.items():
        for source, _target in volume_mounts(service):
            if source and not source.startswith((".", "/", "~", "$")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert used == declared, f"declared but unused volumes: {declared - used}"


def test_recovery_lives_on_a_volume(services):
    for name in flow_services(services):
        args = build_parser().parse_args(command(services[name])[1:])
        assert args.recovery_dir, f"{name} runs the flow without recovery"
        targets = [target for _source, target in volume_mounts(services[name])]
        assert any(Path(args.recovery_dir).is_relative_to(t) for t in targets), (
            f"{name}: {args.recovery_dir} is not on a volume"
        )


def test_commands_are_real_tailor_subcommands(services):
    commands = tailor_services(services)
    assert {"apply", "flow"} <= {cmd[1] for cmd in commands.values() if len(cmd) > 1}
    for name, cmd in commands.items():
        try:
            build_parser().parse_args(cmd[1:])
        except SystemExit:
            pytest.fail(f"{name}: `{shlex.join(cmd)}` is not a valid tailor command line")


def test_configs_are_declared_and_prometheus_scrapes_services(compose, services):
    configs = compose.get("configs") or {}
    for name, service in services.items():
        for ref in service.get("configs") or []:
            source = ref["source"] if isinstance(ref, dict) else ref
            assert source in configs, f"{name} uses undeclared config {source}"
    targets = scrape_targets(compose)
    assert targets
    for target in targets:
        host, port = target.split(":")
        assert host in services, f"Prometheus scrapes {target}, not a service"
        exposed = {str(p).split(":")[-1] for p in services[host].get("expose", []) + services[host].get("ports", [])}
        assert port in exposed, f"{host} does not expose {port}"
    assert "true" == environment(services["flow"]).get("BYTEWAX_DATAFLOW_API_ENABLED")


def test_grafana_has_no_default_password(services):
    password = environment(services["grafana"]).get("GF_SECURITY_ADMIN_PASSWORD", "")
    assert password.startswith("${") and ":?" in password, "the admin password must come from the environment"


def test_dockerfile_builds_the_package_on_python_3_11_slim():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"pip install \.", text)
    assert re.search(r"^USER (?!root)\S+", text, re.M), "the image should not run as root"
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        *sources, _dest = line.split()
        for source in sources:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_the_image_holds_every_package_the_project_installs():
    """`pip install .` in the image finds only what was copied in: every listed package must be."""
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    sources = [source for line in re.findall(r"^COPY (.+)$", text, re.M) for source in line.split()[:-1]]
    copied = {Path(source).parts[0] for source in sources if not source.startswith("--")}
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for pattern in packages["include"]:
        package = pattern.rstrip("*")
        assert package in copied, f"pyproject.toml installs {package}, which the Dockerfile does not copy"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "models/artifacts" in ignored and ".venv" in ignored, "built models and virtualenvs stay out of the image"


def generator_services(services) -> list[str]:
    return [name for name, cmd in tailor_services(services).items() if cmd[1:3] == ["copy", "generate"]]


def test_a_generator_writes_copy_into_the_shared_redis_with_a_mounted_model(services, compose):
    """The API never generates: compose runs `tailor copy generate`, on Redis (shared by every replica)."""
    generators = generator_services(services)
    assert generators, "no service runs `tailor copy generate`"
    for name in generators:
        service, env = services[name], environment(services[name])
        assert env.get("TAILOR_REDIS_URL", "").split(":")[0] in services, "copy must go to the shared Redis"
        assert depends_on(service).get("redis") == "service_healthy"
        assert depends_on(service).get("feast-apply") == "service_completed_successfully"
        mounts = volume_mounts(service)
        for setting in ("TAILOR_MODEL_DIR", "TAILOR_MODEL_REGISTRY"):
            path = env.get(setting)
            assert path, f"{name} has no {setting}: the default lies inside the installed package"
            assert any(Path(path).is_relative_to(target) for _source, target in mounts), f"{setting} is not mounted"
        host = [source for source, target in mounts if Path(env["TAILOR_MODEL_DIR"]).is_relative_to(target)]
        assert (ROOT / host[0]).resolve() == (ROOT / "models" / "artifacts").resolve(), (
            "the model comes from where `tailor export` writes it on the host"
        )
        port = env.get("TAILOR_GENERATOR_METRICS_PORT")
        assert port and port in {str(p) for p in service.get("expose", [])}
        assert f"{name}:{port}" in scrape_targets(compose), "Prometheus does not scrape the generator"
