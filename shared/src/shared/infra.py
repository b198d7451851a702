"""Start and stop the real Apache Kafka broker and FerretDB as local processes.

Used by ``make infra-up``/``make run`` (``python -m shared.infra up``) and by the test fixtures in
:mod:`shared.testing`, so development, tests and CI all run the same binaries the same way.
Binaries are installed by ``scripts/setup.sh`` into a per-user cache (see ``scripts/versions.sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
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
FERRETDB_BUILD = os.environ.get(
    "FERRETDB_BUILD",
    f"{FERRETDB_VERSION}-idindex1-notrack1-atomic3-walreset1-idin1-updtx1-sjson3-uniqidx1-delid2-updstmt3-pullcond1",
)
FERRETDB_BIN = Path(os.environ.get("FERRETDB_BIN", str(CACHE / f"ferretdb-{FERRETDB_BUILD}")))
# Go's collector target for FerretDB (GOGC): its CPU goes to decoding and collecting short-lived
# documents, so fewer collections for some more memory (measured in docs/adr/0005-*.md).
FERRETDB_GOGC = os.environ.get("FERRETDB_GOGC", "400")

_LOG4J = """status=warn
appender.console.type=Console
appender.console.name=STDOUT
appender.console.layout.type=PatternLayout
appender.console.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=warn
rootLogger.appenderRef.stdout.ref=STDOUT
"""


_handed_out: set[int] = set()


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """Return a TCP port on loopback that is free right now, and not handed out before by this process.

    Chosen below the kernel's ephemeral range: a port the kernel picked (``bind(0)``) can be picked
    again at once as the source port of some client's connection, and a service that starts on it a
    few seconds later finds it taken.
    """
    floor = _ephemeral_floor()
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(max(1024, floor - 12000), floor)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # everything below the range is busy: fall back to the kernel's choice
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

    def start(self, timeout: float = 90.0, cancel: threading.Event | None = None) -> KafkaBroker:
        """Start the broker and wait until it answers; ``cancel`` aborts the wait (and stops it)."""
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
            if cancel is not None and cancel.is_set():
                self.stop()
                raise RuntimeError("Kafka start cancelled")
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

    def start(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> FerretDB:
        """Start the database and wait until it answers; ``cancel`` aborts the wait (and stops it)."""
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
                # FERRETDB_DEBUG_ADDR=127.0.0.1:6061 serves Go's pprof (how docs/adr/0005 profiled it).
                f"--debug-addr={os.environ.get('FERRETDB_DEBUG_ADDR', '-')}",
                "--telemetry=disable",
                "--log-level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "GOGC": FERRETDB_GOGC},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"FerretDB exited early; see {self.data_dir / 'ferretdb.log'}")
            if cancel is not None and cancel.is_set():
                self.stop()
                raise RuntimeError("FerretDB start cancelled")
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


_HAVE_PROC = Path("/proc/self/stat").exists()
_STALE_WHY = {"alive": "is another program now", "zombie": "has exited (a zombie)", "gone": "has exited"}


def process_state(pid: int) -> str:
    """``"alive"``, ``"zombie"`` (exited, not yet reaped by its parent) or ``"gone"``."""
    if pid <= 0:
        return "gone"
    if _HAVE_PROC:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return "gone"
        # The state letter follows the command name, which is in parentheses and may hold spaces.
        state = stat[stat.rfind(")") + 2 : stat.rfind(")") + 3]
        return "zombie" if state in ("Z", "X") else "alive"
    try:
        # Without /proc a zombie is only visible to its parent: reap it if it is our child.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return "gone"
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    return "alive"


def pid_alive(pid: int) -> bool:
    """True when a process with this pid runs; a zombie (killed but not reaped) counts as dead."""
    return process_state(pid) == "alive"


def process_is(pid: int, name: str) -> bool:
    """True unless ``/proc`` shows that ``pid`` runs some other program than ``kafka``/``ferretdb``.

    A pid file can outlive its process long enough for the pid to be given to another program.
    """
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    if name == "kafka":
        return b"kafka.Kafka" in args
    if name == "ferretdb":
        return bool(args) and Path(os.fsdecode(args[0])).name.startswith("ferretdb")
    return True


def inspect_pidfile(pidfile: Path, name: str) -> tuple[int | None, str | None]:
    """``(pid, None)`` when ``pidfile`` names a live ``name`` process; otherwise ``(None, why)``.

    A stale pid file (its process gone, a zombie, or another program by now) is removed and ``why``
    says what it was; ``(None, None)`` means there was no pid file.
    """
    try:
        text = pidfile.read_text().strip()
    except FileNotFoundError:
        return None, None
    try:
        pid = int(text)
    except ValueError:
        why = f"no pid ({text[:20]!r})"
    else:
        state = process_state(pid)
        if state == "alive" and process_is(pid, name):
            return pid, None
        why = f"pid {pid}, which {_STALE_WHY[state]}"
    pidfile.unlink(missing_ok=True)
    return None, why


def _answers(svc: KafkaBroker | FerretDB) -> bool:
    if isinstance(svc, KafkaBroker):
        return port_open(svc.port) and _kafka_answers(svc.bootstrap)
    return port_open(svc.port) and _mongo_answers(svc.url)


def _up(root: Path) -> int:
    from shared.topics import ensure_topics_sync

    kafka_port = int(os.environ.get("KAFKA_PORT", "9092"))
    controller_port = int(os.environ.get("KAFKA_CONTROLLER_PORT", str(kafka_port + 1)))
    mongo_port = int(os.environ.get("MONGO_PORT", "27017"))
    root.mkdir(parents=True, exist_ok=True)
    kafka = KafkaBroker(root / "kafka", port=kafka_port, controller_port=controller_port)
    ferret = FerretDB(root / "ferretdb", port=mongo_port)
    servers: tuple[tuple[str, KafkaBroker | FerretDB], ...] = (("kafka", kafka), ("ferretdb", ferret))
    reused: dict[str, int] = {}
    for name, svc in servers:
        pidfile = root / f"{name}.pid"
        pid, stale = inspect_pidfile(pidfile, name)
        if pid is not None:
            print(f"infra: {name} already running (pid {pid}); reusing it")
            reused[name] = pid
            continue
        if stale:
            print(f"infra: {pidfile} named {stale}; removed it, starting a fresh {name}")
        if port_open(svc.port):
            print(
                f"infra: port {svc.port} for {name} is taken by a program this data dir has no pid file for; "
                "stop it or pick other ports (KAFKA_PORT, KAFKA_CONTROLLER_PORT, MONGO_PORT)",
                file=sys.stderr,
            )
            return 1
        try:
            svc.start()
        except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as exc:
            svc.stop()
            print(f"infra: {name} did not start: {exc}", file=sys.stderr)
            return 1
        assert svc.proc is not None
        pidfile.write_text(str(svc.proc.pid))
        print(f"infra: started {name} (pid {svc.proc.pid})")
        # The child lives on in its own session after this command exits.
        svc.proc = None
    for name, svc in servers:
        if name not in reused:
            continue
        # A reused process may still be starting up: give it a moment before calling it stuck.
        deadline = time.monotonic() + 30
        while not _answers(svc):
            if not pid_alive(reused[name]) or time.monotonic() > deadline:
                print(
                    f"infra: {name} (pid {reused[name]}) does not answer on port {svc.port}; "
                    "`make infra-down && make infra-up` restarts it",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.5)
    try:
        ensure_topics_sync(kafka.bootstrap)
    except Exception as exc:
        print(f"infra: creating the topics on {kafka.bootstrap} failed: {exc!r}", file=sys.stderr)
        return 1
    print(f"infra: Kafka    {kafka.bootstrap}  (Apache Kafka {KAFKA_VERSION}, data {root / 'kafka'})")
    print(f"infra: FerretDB {ferret.url}  (FerretDB {FERRETDB_VERSION}, data {root / 'ferretdb'})")
    return 0


def _down(root: Path) -> None:
    for name in ("ferretdb", "kafka"):
        pidfile = root / f"{name}.pid"
        pid, stale = inspect_pidfile(pidfile, name)
        if pid is None:
            if stale:
                print(f"infra: {name} was not running ({pidfile} named {stale}); removed the pid file")
            continue
        # The pid file goes first: `make run`'s supervisor reads its absence as "stopped on purpose".
        pidfile.unlink(missing_ok=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        for _ in range(150):
            if not pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        print(f"infra: stopped {name} (pid {pid})")


def main(argv: list[str]) -> int:
    root = Path(os.environ.get("DATA_DIR", ".data"))
    cmd = argv[1] if len(argv) > 1 else "up"
    if cmd == "up":
        return _up(root)
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
