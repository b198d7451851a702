"""docker-compose.yml and the service Dockerfiles, checked without a Docker engine.

``docker-compose config`` (Debian's docker-compose 1.29, installed by scripts/setup.sh) validates the
file the way Compose will read it; the rest asserts what the deployment promises: pinned images,
real MongoDB as a replica set, two replicas of each service on host ports that cannot clash, Prometheus
scraping every replica, the same topic catalogue as ``make run``, and hardened service images.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.topics import load_topics

REPO = Path(__file__).resolve().parent.parent
COMPOSE = REPO / "docker-compose.yml"
SERVICES = {
    "registry": ("REGISTRY", 8001),
    "visits": ("VISITS", 8002),
    "training": ("TRAINING", 8003),
    "metrics": ("METRICS", 8004),
}
REPLICAS = 2


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The file as docker-compose itself resolves it (anchors merged, defaults filled in)."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail("docker-compose is not installed; run `make setup` (scripts/setup.sh installs it)")
    proc = subprocess.run(
        [exe, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert proc.returncode == 0, f"docker-compose config rejected the file:\n{proc.stderr}"
    loaded: dict[str, Any] = yaml.safe_load(proc.stdout)
    return loaded


def test_compose_file_is_valid_and_defines_the_whole_system(resolved: dict[str, Any]) -> None:
    names = set(resolved["services"])
    assert {"kafka", "kafka-init", "mongo", "prometheus", "grafana", *SERVICES} <= names


def test_every_image_is_pinned_to_a_version_not_latest(resolved: dict[str, Any]) -> None:
    for name, svc in resolved["services"].items():
        image = svc.get("image")
        assert image, f"{name} has no image"
        repo, _, tag = image.rpartition(":")
        assert repo, f"{name}: image {image!r} has no repository"
        assert tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: image {image!r} is not pinned to a version"


def test_infrastructure_images_are_the_official_ones(resolved: dict[str, Any]) -> None:
    images = {n: s["image"] for n, s in resolved["services"].items()}
    assert images["kafka"].startswith("apache/kafka:4.")
    assert images["kafka-init"] == images["kafka"], "topics are created with the broker's own kafka-topics.sh"
    assert re.fullmatch(r"mongo:8\.0\.\d+", images["mongo"])
    assert images["prometheus"].startswith("prom/prometheus:v")
    assert images["grafana"].startswith("grafana/grafana:")


def test_kafka_is_a_single_kraft_node_without_topic_auto_creation(resolved: dict[str, Any]) -> None:
    env = resolved["services"]["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "healthcheck" in resolved["services"]["kafka"]


def test_mongo_runs_as_a_single_node_replica_set_that_initiates_itself(resolved: dict[str, Any]) -> None:
    mongo = resolved["services"]["mongo"]
    assert "--replSet" in mongo["command"]
    assert "rs0" in mongo["command"]
    check = " ".join(mongo["healthcheck"]["test"])
    assert "rs.initiate" in check
    assert "mongo:27017" in check


def test_services_are_built_per_service_and_wired_to_kafka_and_real_mongodb(resolved: dict[str, Any]) -> None:
    for name, (prefix, port) in SERVICES.items():
        svc = resolved["services"][name]
        assert svc["build"]["dockerfile"] == f"services/{name}/Dockerfile"
        env = svc["environment"]
        assert env[f"{prefix}_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert env[f"{prefix}_MONGO_URL"] == "mongodb://mongo:27017/?replicaSet=rs0"
        assert env[f"{prefix}_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container network
        assert int(env[f"{prefix}_MONGO_MAX_POOL_SIZE"]) > 1, "real MongoDB is safe with a pool"
        assert int(env[f"{prefix}_PORT"]) == port
        deps = svc["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy"
        assert deps["mongo"]["condition"] == "service_healthy"
        assert deps["kafka-init"]["condition"] == "service_completed_successfully"


def replicas_of(svc: dict[str, Any]) -> int:
    """How many containers Compose starts: ``deploy.replicas`` (or the older ``scale``), else one."""
    replicas = svc.get("deploy", {}).get("replicas")
    scale = svc.get("scale")
    assert replicas is None or scale is None, "docker-compose 1.29 rejects a service with both"
    return int(replicas if replicas is not None else scale if scale is not None else 1)


def host_ports(mapping: str | dict[str, Any]) -> tuple[range, int, str]:
    """(host ports, container port, protocol) of one ``ports`` entry, short or long syntax."""
    if isinstance(mapping, dict):
        published, target, proto = str(mapping.get("published", "")), int(mapping["target"]), mapping.get("protocol")
    else:
        spec, _, proto = mapping.partition("/")
        # [host_ip:][published:]target; the container side of these services is one port, never a range.
        *front, target_text = spec.rsplit(":", 2)
        published, target = (front[-1] if front else ""), int(target_text)
    if not published:
        return range(0), target, proto or "tcp"
    first, _, last = published.partition("-")
    return range(int(first), int(last or first) + 1), target, proto or "tcp"


def test_host_port_parsing_reads_ranges_and_both_syntaxes() -> None:
    assert host_ports("18011-18012:8001") == (range(18011, 18013), 8001, "tcp")
    assert host_ports("127.0.0.1:9094:9094/udp") == (range(9094, 9095), 9094, "udp")
    assert host_ports("8002") == (range(0), 8002, "tcp")
    assert host_ports({"published": "18021-18022", "target": 8002}) == (range(18021, 18023), 8002, "tcp")


def test_each_service_runs_two_replicas(resolved: dict[str, Any]) -> None:
    for name in SERVICES:
        svc = resolved["services"][name]
        assert replicas_of(svc) == REPLICAS, name
        # Docker names each container; a fixed name (or one fixed host port) stops the second replica.
        assert "container_name" not in svc, name


def test_every_replica_gets_its_own_host_port_and_no_two_mappings_collide(resolved: dict[str, Any]) -> None:
    owner: dict[tuple[int, str], str] = {}
    for name, svc in resolved["services"].items():
        replicas = replicas_of(svc)
        for mapping in svc.get("ports", []):
            ports, target, proto = host_ports(mapping)
            if name in SERVICES:
                assert target == SERVICES[name][1], f"{name} publishes {target}, not its service port"
            # The engine gives each container one free port of a range, so a range as long as the
            # replica count (onto one container port) lets every replica start; an empty range is ephemeral.
            assert not ports or len(ports) >= replicas, f"{name}: {len(ports)} host port(s) for {replicas} replicas"
            for port in ports:
                assert (port, proto) not in owner, f"host port {port} of {name} is also {owner[(port, proto)]}'s"
                owner[(port, proto)] = name
    for name in SERVICES:
        assert name in owner.values(), f"{name} is not reachable from the host"


def test_prometheus_discovers_every_replica_of_every_service(resolved: dict[str, Any]) -> None:
    prom = resolved["services"]["prometheus"]
    mounts = [str(v) if isinstance(v, str) else f"{v.get('source')}:{v.get('target')}" for v in prom["volumes"]]
    assert any("deploy/prometheus/prometheus.yml" in m for m in mounts)
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(SERVICES), "one job per service, named after it (the dashboards group by job)"
    for name, (_, port) in SERVICES.items():
        job = jobs[name]
        # A static ``name:port`` target resolves to one replica per scrape; DNS A records list them all.
        assert "static_configs" not in job, f"{name}: a static target would scrape one replica"
        discovered = [(sd.get("type", "SRV"), n, sd.get("port")) for sd in job["dns_sd_configs"] for n in sd["names"]]
        assert discovered == [("A", name, port)], f"{name}: {discovered}"


def test_grafana_is_provisioned_from_the_repository(resolved: dict[str, Any]) -> None:
    mounts = " ".join(str(v) for v in resolved["services"]["grafana"]["volumes"])
    assert "deploy/grafana/provisioning" in mounts
    assert "deploy/grafana/dashboards" in mounts


def test_topic_init_script_creates_exactly_the_catalogue_topics() -> None:
    """The awk reading of topics.yaml in create-topics.sh agrees with shared.topics.load_topics()."""
    env = {
        **os.environ,
        "DRY_RUN": "1",
        "TOPICS_FILE": str(REPO / "deploy/kafka/topics.yaml"),
        "KAFKA_TOPICS": "kafka-topics.sh",
    }
    out = subprocess.run(
        ["/bin/bash", str(REPO / "deploy/kafka/create-topics.sh")], env=env, capture_output=True, text=True, check=True
    ).stdout
    commands = [line.split() for line in out.splitlines() if line.startswith("kafka-topics.sh")]
    got: dict[str, tuple[int, int, dict[str, str]]] = {}
    for words in commands:
        assert "--create" in words
        assert "--if-not-exists" in words, "the init step must be idempotent"
        opts = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
        configs = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "--config")
        got[opts["--topic"]] = (int(opts["--partitions"]), int(opts["--replication-factor"]), configs)
    expected = {t.name: (t.partitions, t.replication_factor, t.config) for t in load_topics()}
    assert got == expected


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_dockerfile_is_pinned_non_root_and_health_checked(name: str) -> None:
    text = (REPO / "services" / name / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base.group(1)), base.group(1)
    user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert user, "the image must switch to a service user"
    assert user[-1] not in ("root", "0"), "the service must not run as root"
    assert re.search(r"^HEALTHCHECK .*", text, re.MULTILINE)
    assert "/readyz" in text
    # Runtime dependencies from uv.lock with the uv that scripts/versions.sh pins; shared in place (editable).
    uv = re.search(r"^export UV_VERSION=(\S+)$", (REPO / "scripts" / "versions.sh").read_text(), re.MULTILINE)
    assert uv is not None
    assert f"pip install uv=={uv.group(1)}" in text
    assert f"uv sync --frozen --no-dev --package digital-bridge-{name}" in text
    assert "--no-editable" not in text
    assert "COPY pyproject.toml uv.lock ./" in text
    assert f"services/{name}" in text
    assert f'CMD ["python", "-m", "{name}"]' in text
