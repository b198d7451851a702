"""Start and stop the real Apache Kafka broker and FerretDB as local processes.

Used by ``make infra-up``/``make run`` (``python -m shared.infra up``) and by the test fixtures in
:mod:`shared.testing`, so development, tests and CI all run the same binaries the same way.
Binaries are installed by ``scripts/setup.sh`` into a per-user cache (see ``scripts/versions.sh``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

KAFKA_VERSION = os.environ.get("KAFKA_VERSION", "4.1.1")
FERRETDB_VERSION = os.environ.get("FERRETDB_VERSION", "v1.24.2")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))) / "digital-bridge"
KAFKA_LIB = Path(os.environ.get("KAFKA_HOME", str(CACHE / f"kafka-{KAFKA_VERSION}"))) / "lib"
FERRETDB_BUILD = os.environ.get("FERRETDB_BUILD", f"{FERRETDB_VERSION}-idindex1-notrack1")
FERRETDB_BIN = Path(os.environ.get("FERRETDB_BIN", str(CACHE / f"ferretdb-{FERRETDB_BUILD}")))

_LOG4J = """status=warn
appender.console.type=Console
appender.console.name=STDOUT
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=warn
rootLogger.appenderRef.stdout.ref=STDOUT
"""


def free_port() -> int:
    """Return a TCP port on loopback that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """True when something accepts TCP connections on ``host:port`` now."""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _kafka_answers(bootstrap: str) -> bool:
    """True when the broker answers a metadata request (not merely accepts TCP)."""
    from aiokafka.admin import AIOKafkaAdminClient

    async def probe() -> bool:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return True
        except Exception:
            return False
        finally:
            await admin.close()

    result: list[bool] = []
    # A fresh thread keeps this usable from inside a running event loop (pytest-asyncio fixtures).
    t = threading.Thread(target=lambda: result.append(asyncio.run(probe())))
    t.start()
    t.join()
    return bool(result and result[0])


def _mongo_answers(url: str) -> bool:
    import pymongo

    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        url, serverSelectionTimeoutMS=500, connectTimeoutMS=500
    )
    try:
        client.admin.command("ping")
        return True
    except Exception:
        return False
    finally:
        client.close()


@dataclass
class KafkaBroker:
    """One KRaft node (broker + controller) of the real Apache Kafka, on loopback."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    heap: str = "512m"
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java(self, *args: str) -> list[str]:
        return [
            "java",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            f"{KAFKA_LIB}/*",
            *args,
        ]

    def _configure(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logs = self.data_dir / "logs"
        props = self.data_dir / "server.properties"
        c = f"127.0.0.1:{self.controller_port}"
        props.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.bootstrap.servers={c}",
                    f"listeners=PLAINTEXT://{self.bootstrap},CONTROLLER://{c}",
                    f"advertised.listeners=PLAINTEXT://{self.bootstrap},CONTROLLER://{c}",
                    "inter.broker.listener.name=PLAINTEXT",
                    "controller.listener.names=CONTROLLER",
                    "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                    f"log.dirs={logs}",
                    "num.partitions=6",
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=6",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "",
                ]
            )
        )
        (self.data_dir / "log4j2.properties").write_text(_LOG4J)
        if not (logs / "meta.properties").exists():
            # Formatting binds the log dir to this controller address, so a restart must reuse ports.
            subprocess.run(
                self._java(
                    "kafka.tools.StorageTool",
                    "format",
                    "--standalone",
                    "-t",
                    uuid.uuid4().hex[:22],
                    "-c",
                    str(props),
                ),
                check=True,
                capture_output=True,
            )
        return props

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        if not KAFKA_LIB.is_dir():
            raise RuntimeError(f"Kafka jars not found in {KAFKA_LIB}: run `make setup`")
        props = self._configure()
        self.log = (self.data_dir / "kafka.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "java",
                f"-Xms{self.heap}",
                f"-Xmx{self.heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                *self._java("kafka.Kafka", str(props))[1:],
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Kafka exited early; see {self.data_dir / 'kafka.log'}")
            if port_open(self.port) and _kafka_answers(self.bootstrap):
                return self
            time.sleep(0.3)
        raise TimeoutError(f"Kafka did not answer on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None


@dataclass
class FerretDB:
    """FerretDB v1 (MongoDB 7 wire protocol over SQLite) on loopback."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 30.0) -> FerretDB:
        if not FERRETDB_BIN.exists():
            raise RuntimeError(f"FerretDB not found at {FERRETDB_BIN}: run `make setup`")
        data = self.data_dir / "sqlite"
        data.mkdir(parents=True, exist_ok=True)
        self.log = (self.data_dir / "ferretdb.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(FERRETDB_BIN),
                "--handler=sqlite",
                # WAL (FerretDB's default) with synchronous=NORMAL: a commit survives a crash of
                # FerretDB or of a service; only an OS crash or power cut can lose the last commits,
                # which is the durability MongoDB gives by default (w:1, journal flushed every
                # 100 ms). FULL fsyncs every commit: 60 document rewrites took 123-150 ms with it
                # and 57-80 ms without, and every service write pays it.
                f"--sqlite-url=file:{data}/?_pragma=synchronous(normal)",
                f"--listen-addr=127.0.0.1:{self.port}",
                f"--state-dir={self.data_dir}",
                "--debug-addr=-",
                "--telemetry=disable",
                "--log-level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FerretDB exited early; see {self.data_dir / 'ferretdb.log'}")
            if port_open(self.port) and _mongo_answers(self.url):
                return self
            time.sleep(0.1)
        raise TimeoutError(f"FerretDB did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        _terminate(self.proc)
        self.proc = None
        if self.log:
            self.log.close()
            self.log = None


def _terminate(proc: subprocess.Popen[bytes] | None, grace: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- the `make infra-up` / `make infra-down` entry point -------------------------------------------


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _up(root: Path) -> None:
    from shared.topics import ensure_topics_sync

    kafka_port = int(os.environ.get("KAFKA_PORT", "9092"))
    controller_port = int(os.environ.get("KAFKA_CONTROLLER_PORT", str(kafka_port + 1)))
    mongo_port = int(os.environ.get("MONGO_PORT", "27017"))
    root.mkdir(parents=True, exist_ok=True)
    kafka = KafkaBroker(root / "kafka", port=kafka_port, controller_port=controller_port)
    ferret = FerretDB(root / "ferretdb", port=mongo_port)
    for name, svc in (("kafka", kafka), ("ferretdb", ferret)):
        pidfile = root / f"{name}.pid"
        if pidfile.exists() and pid_alive(int(pidfile.read_text())):
            print(f"infra: {name} already running (pid {pidfile.read_text().strip()})")
            continue
        svc.start()
        assert svc.proc is not None
        pidfile.write_text(str(svc.proc.pid))
        # The child lives on in its own session after this command exits.
        svc.proc = None
    ensure_topics_sync(kafka.bootstrap)
    print(f"infra: Kafka    {kafka.bootstrap}  (Apache Kafka {KAFKA_VERSION}, data {root / 'kafka'})")
    print(f"infra: FerretDB {ferret.url}  (FerretDB {FERRETDB_VERSION}, data {root / 'ferretdb'})")


def _down(root: Path) -> None:
    for name in ("ferretdb", "kafka"):
        pidfile = root / f"{name}.pid"
        if not pidfile.exists():
            continue
        pid = int(pidfile.read_text())
        if pid_alive(pid):
            os.killpg(pid, signal.SIGTERM)
            for _ in range(150):
                if not pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                os.killpg(pid, signal.SIGKILL)
            print(f"infra: stopped {name} (pid {pid})")
        pidfile.unlink()


def main(argv: list[str]) -> int:
    root = Path(os.environ.get("DATA_DIR", ".data"))
    cmd = argv[1] if len(argv) > 1 else "up"
    if cmd == "up":
        _up(root)
    elif cmd == "down":
        _down(root)
    elif cmd == "clean":
        _down(root)
        shutil.rmtree(root, ignore_errors=True)
        print(f"infra: removed {root}")
    else:
        print("usage: python -m shared.infra up|down|clean", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
