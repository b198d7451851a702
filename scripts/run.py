"""``make run``: the whole system on this machine, in the foreground.

Starts the real Apache Kafka broker and FerretDB (``shared.infra``) with their data under ``.data/``,
creates the topics, starts every service that exists as a child process (``python -m <name>``),
waits until each ``/readyz`` answers 200, prints the URLs and an admin token, and stops everything
cleanly on Ctrl-C or SIGTERM. The data survives a restart; ``make clean-data`` wipes it.

Everything is parameterised (ports, data dir, topic prefix) so the end-to-end test starts the same
system on free ports in a temp dir: see :class:`RunConfig` and :class:`System`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any

import httpx

from shared.auth import issue_token
from shared.infra import FERRETDB_VERSION, KAFKA_VERSION, FerretDB, KafkaBroker, pid_alive, port_open
from shared.settings import DEV_JWT_SECRET
from shared.topics import ensure_topics_sync, load_topics

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    env_prefix: str
    default_port: int
    role: str


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("registry", "REGISTRY_", 8001, "units, teams, volunteers, campaigns"),
    ServiceSpec("visits", "VISITS_", 8002, "household visits, service-centre support, outreach posts"),
    ServiceSpec("training", "TRAINING_", 8003, "digital-literacy courses, sessions, participants"),
    ServiceSpec("metrics", "METRICS_", 8004, "live indicators, campaign progress, Prometheus gauges"),
)
SPEC_BY_NAME = {s.name: s for s in SERVICES}


def available_services(repo: Path = REPO) -> list[str]:
    """Services whose package is far enough along to run (it has an ``app.py``)."""
    return [s.name for s in SERVICES if (repo / "services" / s.name / s.name / "app.py").exists()]


@dataclass
class RunConfig:
    """Where and how the system runs. Defaults are ``make run``'s; tests pass free ports and a temp dir."""

    data_dir: Path = REPO / ".data"
    kafka_port: int = 9092
    # Kafka formats its log dir for one controller address, so a restart on the same data must reuse it.
    kafka_controller_port: int | None = None
    mongo_port: int = 27017
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: {s.name: s.default_port for s in SERVICES})
    services: Sequence[str] | None = None
    topic_prefix: str = ""
    consumer_group_prefix: str | None = None
    jwt_secret: str = DEV_JWT_SECRET
    echo_logs: bool = True
    verbose: bool = False
    color: bool = False
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def controller_port(self) -> int:
        return self.kafka_controller_port or self.kafka_port + 1

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_UVICORN_ACCESS = re.compile(r'"[A-Z]+ \S+ HTTP/[0-9.]+" (\d{3})')
_COLORS = {"registry": "36", "visits": "32", "training": "35", "metrics": "33"}
_print_lock = threading.Lock()


def render_log_line(service: str, raw: str, *, verbose: bool = False) -> str | None:
    """One readable console line for a service's JSON log line, or None to keep it out of the console.

    Access logs of successful requests are left to the log file unless ``verbose``: a demo run makes
    thousands of them and they would bury the lines that matter.
    """
    line = _ANSI.sub("", raw.rstrip("\n"))
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except ValueError:
        access = _UVICORN_ACCESS.search(line)
        if access and not verbose and int(access.group(1)) < 400:
            return None
        return line
    if not isinstance(rec, dict):
        return line
    event = str(rec.pop("event", ""))
    level = str(rec.pop("level", "info"))
    ts = str(rec.pop("timestamp", ""))
    rec.pop("service", None)
    if event == "http_request" and not verbose and int(rec.get("status", 0)) < 400:
        return None
    exc = rec.pop("exception", None)
    clock = ts[11:19] if len(ts) >= 19 else ts
    extras = " ".join(f"{k}={v}" for k, v in rec.items())
    text = f"{clock} {level:<7} {event} {extras}".rstrip()
    if exc:
        text += "\n" + str(exc)
    return text


class ServiceProcess:
    """One service as a child process, its output copied to ``<log_dir>/<name>.log`` (and the console)."""

    def __init__(self, spec: ServiceSpec, port: int, env: dict[str, str], cfg: RunConfig) -> None:
        self.spec = spec
        self.port = port
        self.cfg = cfg
        self.url = f"http://{cfg.host}:{port}"
        self.log_path = cfg.log_dir / f"{spec.name}.log"
        self.tail: deque[str] = deque(maxlen=40)
        self._log: IO[str] = self.log_path.open("a", encoding="utf-8")
        self.proc = subprocess.Popen(
            [cfg.python, "-m", spec.name],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            # Own process group: Ctrl-C reaches only the runner, which stops services before infra.
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, name=f"log-{spec.name}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        width = max(len(s.name) for s in SERVICES)
        prefix = f"{self.spec.name:<{width}} | "
        if self.cfg.color:
            prefix = f"\x1b[{_COLORS.get(self.spec.name, '0')}m{prefix}\x1b[0m"
        for raw in self.proc.stdout:
            self._log.write(raw)
            self._log.flush()
            self.tail.append(raw.rstrip("\n"))
            if self.cfg.echo_logs:
                text = render_log_line(self.spec.name, raw, verbose=self.cfg.verbose)
                if text is not None:
                    with _print_lock:
                        for part in text.splitlines():
                            print(prefix + part, flush=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def terminate(self) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def wait(self, grace: float) -> None:
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._reader.join(timeout=2)
        self._log.close()


class System:
    """Kafka + FerretDB + the services, started and stopped in order. Use as a context manager."""

    def __init__(self, cfg: RunConfig | None = None) -> None:
        self.cfg = cfg or RunConfig()
        self.kafka: KafkaBroker | None = None  # only brokers this runner started (and will stop)
        self.ferretdb: FerretDB | None = None
        self.bootstrap = f"127.0.0.1:{self.cfg.kafka_port}"
        self.mongo_url = f"mongodb://127.0.0.1:{self.cfg.mongo_port}/"
        self.services: dict[str, ServiceProcess] = {}
        self.reused: list[str] = []

    # --- infrastructure --------------------------------------------------------------------------

    def _reusable(self, name: str, port: int) -> bool:
        """True if ``make infra-up`` already runs this server on our data dir; else fail on a busy port."""
        pidfile = self.cfg.data_dir / f"{name}.pid"
        if pidfile.exists() and pid_alive(int(pidfile.read_text())):
            self.reused.append(name)
            return True
        if port_open(port):
            raise RuntimeError(f"port {port} for {name} is taken by another program; stop it or pick another port")
        return False

    def start_infra(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if not self._reusable("kafka", self.cfg.kafka_port):
            broker = KafkaBroker(
                self.cfg.data_dir / "kafka", port=self.cfg.kafka_port, controller_port=self.cfg.controller_port
            )
            self.kafka = broker.start()
            assert broker.proc is not None
            # The pid file lets `make infra-down` / `make clean-data` stop it even if this runner is killed.
            (self.cfg.data_dir / "kafka.pid").write_text(str(broker.proc.pid))
        if not self._reusable("ferretdb", self.cfg.mongo_port):
            db = FerretDB(self.cfg.data_dir / "ferretdb", port=self.cfg.mongo_port)
            self.ferretdb = db.start()
            assert db.proc is not None
            (self.cfg.data_dir / "ferretdb.pid").write_text(str(db.proc.pid))
        ensure_topics_sync(self.bootstrap, self.cfg.topic_prefix)

    def stop_infra(self) -> None:
        for name, server in (("ferretdb", self.ferretdb), ("kafka", self.kafka)):
            if server is not None:
                server.stop()
                with contextlib.suppress(FileNotFoundError):
                    (self.cfg.data_dir / f"{name}.pid").unlink()
        self.kafka = self.ferretdb = None

    # --- services --------------------------------------------------------------------------------

    def service_env(self, spec: ServiceSpec) -> dict[str, str]:
        p = spec.env_prefix
        env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(s.env_prefix for s in SERVICES))}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                f"{p}KAFKA_BOOTSTRAP": self.bootstrap,
                f"{p}MONGO_URL": self.mongo_url,
                f"{p}HOST": self.cfg.host,
                f"{p}PORT": str(self.cfg.ports[spec.name]),
                f"{p}TOPIC_PREFIX": self.cfg.topic_prefix,
                f"{p}CONSUMER_GROUP_PREFIX": (
                    self.cfg.topic_prefix if self.cfg.consumer_group_prefix is None else self.cfg.consumer_group_prefix
                ),
                f"{p}JWT_SECRET": self.cfg.jwt_secret,
                f"{p}LOG_JSON": "true",
                # Topics exist already (created above); this saves each service an admin round trip.
                f"{p}CREATE_TOPICS": "false",
            }
        )
        env.update(self.cfg.extra_env)
        return env

    def start_services(self) -> None:
        names = list(self.cfg.services) if self.cfg.services is not None else available_services()
        if not names:
            raise RuntimeError("no service has an app.py yet under services/<name>/<name>/")
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            port = self.cfg.ports[name]
            if port_open(port, self.cfg.host):
                raise RuntimeError(f"port {port} for {name} is in use (is another `make run` running?)")
        for name in names:
            spec = SPEC_BY_NAME[name]
            self.services[name] = ServiceProcess(spec, self.cfg.ports[name], self.service_env(spec), self.cfg)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every service's ``/readyz`` is 200; fail early if one exits."""
        pending = set(self.services)
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while pending:
                for name in sorted(pending):
                    svc = self.services[name]
                    if not svc.alive():
                        tail = "\n".join(svc.tail)
                        raise RuntimeError(f"{name} exited with code {svc.proc.returncode}; last output:\n{tail}")
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(f"{svc.url}/readyz").status_code == 200:
                            pending.discard(name)
                if not pending:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready within {timeout:.0f}s: {', '.join(sorted(pending))}")
                time.sleep(0.25)

    def stop_services(self, grace: float = 20.0) -> None:
        for svc in self.services.values():
            svc.terminate()
        for svc in self.services.values():
            svc.wait(grace)
        self.services.clear()

    # --- whole system ----------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> System:
        try:
            self.start_infra()
            self.start_services()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        self.write_state()
        return self

    def stop(self) -> None:
        self.stop_services()
        self.stop_infra()
        with contextlib.suppress(FileNotFoundError):
            (self.cfg.data_dir / "run.json").unlink()

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def urls(self) -> dict[str, str]:
        return {name: svc.url for name, svc in self.services.items()}

    def admin_token(self, hours: float = 12) -> str:
        return issue_token(
            secret=self.cfg.jwt_secret, role="admin", unit=None, sub="make-run", ttl=timedelta(hours=hours)
        )

    def write_state(self) -> None:
        """``<data_dir>/run.json``: where the services listen, so ``make demo`` finds a non-default run."""
        state = {"services": self.urls(), "kafka": self.bootstrap, "mongo": self.mongo_url}
        (self.cfg.data_dir / "run.json").write_text(json.dumps(state, indent=2))

    def dead_services(self) -> list[str]:
        return [name for name, svc in self.services.items() if not svc.alive()]

    def banner(self) -> str:
        width = max(len(n) for n in self.services)
        lines = ["", "Digital Bridge is running.", ""]
        for name, svc in self.services.items():
            lines.append(f"  {name:<{width}}  {svc.url}  docs {svc.url}/docs  openapi {svc.url}/openapi.json")
        lines.append("")
        lines.append("  Event catalogue:")
        for svc in self.services.values():
            lines.append(f"    {svc.url}/v1/events/catalog")
        if "metrics" in self.services:
            m = self.services["metrics"].url
            lines += ["", f"  Indicators: {m}/v1/summary   Prometheus: {m}/metrics"]
        topics = ", ".join(t.name for t in load_topics(self.cfg.topic_prefix))
        owned = "" if not self.reused else f" (reused from `make infra-up`: {', '.join(self.reused)})"
        lines += [
            "",
            f"  Kafka {KAFKA_VERSION}  {self.bootstrap}   FerretDB {FERRETDB_VERSION}  {self.mongo_url}{owned}",
            f"  Topics: {topics}",
            f"  Data: {self.cfg.data_dir}/ (kept between runs; `make clean-data` wipes it)",
            f"  Logs: {self.cfg.log_dir}/<service>.log (JSON); the console shows them prefixed by service",
            "",
            "  Admin token (12 h):",
            f"    export TOKEN={self.admin_token()}",
            f'    curl -H "Authorization: Bearer $TOKEN" {next(iter(self.services.values())).url}/readyz',
            "",
            "  Replay the seven-week campaign in another terminal: make demo     Stop: Ctrl-C",
            "",
        ]
        return "\n".join(lines)


@contextlib.contextmanager
def _stop_signals() -> Iterator[threading.Event]:
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _parse(argv: Sequence[str] | None) -> RunConfig:
    p = argparse.ArgumentParser(prog="make run", description="Run Kafka, FerretDB and every service in the foreground.")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("DATA_DIR", REPO / ".data")))
    p.add_argument("--kafka-port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    p.add_argument("--mongo-port", type=int, default=int(os.environ.get("MONGO_PORT", "27017")))
    p.add_argument(
        "--port-base",
        type=int,
        default=int(os.environ.get("PORT_BASE", "8000")),
        help="services listen on base+1 (registry) .. base+4 (metrics)",
    )
    p.add_argument("--topic-prefix", default=os.environ.get("TOPIC_PREFIX", ""))
    p.add_argument("--services", default="", help="comma-separated subset (default: every service with an app.py)")
    p.add_argument("--verbose", action="store_true", help="also echo every HTTP access log line")
    p.add_argument("--quiet", action="store_true", help="write service logs only to files")
    a = p.parse_args(argv)
    ports = {s.name: a.port_base + (s.default_port - 8000) for s in SERVICES}
    return RunConfig(
        data_dir=a.data_dir.resolve(),
        kafka_port=a.kafka_port,
        mongo_port=a.mongo_port,
        ports=ports,
        services=[s for s in a.services.split(",") if s] or None,
        topic_prefix=a.topic_prefix,
        echo_logs=not a.quiet,
        verbose=a.verbose,
        color=sys.stdout.isatty(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = _parse(argv)
    system = System(cfg)
    with _stop_signals() as stop:
        print(f"run: starting Kafka and FerretDB (data in {cfg.data_dir})", flush=True)
        try:
            system.start_infra()
            if stop.is_set():
                return 130
            print(f"run: starting {', '.join(cfg.services or available_services())}", flush=True)
            system.start_services()
            system.wait_ready()
        except (RuntimeError, TimeoutError) as exc:
            print(f"run: failed: {exc}", file=sys.stderr, flush=True)
            system.stop()
            return 1
        except BaseException:
            system.stop()
            raise
        system.write_state()
        print(system.banner(), flush=True)
        code = 0
        while not stop.wait(0.5):
            dead = system.dead_services()
            if dead:
                for name in dead:
                    svc = system.services[name]
                    print(f"run: {name} exited with code {svc.proc.returncode}; see {svc.log_path}", flush=True)
                code = 1
                break
        print("run: stopping services, Kafka and FerretDB (data kept)", flush=True)
        system.stop()
        print("run: stopped", flush=True)
        return code


def _state(data_dir: Path) -> dict[str, Any]:
    """The running system's ``run.json`` (used by ``scripts.demo``), or an empty dict."""
    try:
        loaded: dict[str, Any] = json.loads((data_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return loaded


if __name__ == "__main__":
    raise SystemExit(main())
