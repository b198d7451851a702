"""``make run``: the whole system on this machine, in the foreground.

Starts the real Apache Kafka broker and FerretDB (``shared.infra``) with their data under ``.data/``,
creates the topics, starts every service that exists as a child process (``python -m <name>``) and
Prometheus (Debian's ``/usr/bin/prometheus``) scraping every replica with the alert rules of
``deploy/prometheus/``, waits until each ``/readyz`` answers 200, prints the URLs and an admin token,
and stops everything cleanly on Ctrl-C or SIGTERM. The data survives a restart; ``make clean-data``
wipes it.

Everything is parameterised (ports, data dir, topic prefix) so the end-to-end test starts the same
system on free ports in a temp dir: see :class:`RunConfig` and :class:`System`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import IO, Any, Protocol

import httpx
import yaml

from shared.auth import issue_token
from shared.infra import (
    FERRETDB_VERSION,
    KAFKA_VERSION,
    FerretDB,
    KafkaBroker,
    inspect_pidfile,
    pid_alive,
    port_open,
    process_is,
)
from shared.settings import ServiceSettings
from shared.topics import ensure_topics_sync, load_topics

REPO = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
PROMETHEUS_BIN = shutil.which("prometheus") or "/usr/bin/prometheus"


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
    # BRIDGE_JWT_SECRET when set, so `make run` and `make token` (scripts.cli) sign and verify alike.
    jwt_secret: str = field(default_factory=lambda: ServiceSettings().jwt_secret)
    echo_logs: bool = True
    verbose: bool = False
    color: bool = False
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)
    # Ports of further replicas per service (the first listens on ``ports``); they share its
    # database and consumer groups, as replicas behind a load balancer would.
    replica_ports: dict[str, list[int]] = field(default_factory=dict)
    # None: no Prometheus (the default for tests and benches, which start systems side by side);
    # `make run` passes 9090. A taken port only skips it (Debian's own prometheus.service may hold it).
    prometheus_port: int | None = None

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

    def __init__(
        self, spec: ServiceSpec, port: int, env: dict[str, str], cfg: RunConfig, *, instance: str | None = None
    ) -> None:
        self.spec = spec
        self.instance = instance or spec.name  # "visits", or "visits-2" for a further replica
        self.port = port
        self.cfg = cfg
        self.url = f"http://{cfg.host}:{port}"
        self.log_path = cfg.log_dir / f"{self.instance}.log"
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
        self._reader = threading.Thread(target=self._pump, name=f"log-{self.instance}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        width = max(len(s.name) for s in SERVICES) + (2 if self.cfg.replica_ports else 0)
        prefix = f"{self.instance:<{width}} | "
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

    def kill(self) -> None:
        """SIGKILL, as a crash would: no shutdown hook runs."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._reader.join(timeout=2)
        self._log.close()

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


def describe_exit(returncode: int) -> str:
    """``"signal 9, SIGKILL"`` or ``"code 1"`` for a Popen return code."""
    if returncode < 0:
        try:
            return f"signal {-returncode}, {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"code {returncode}"


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _is_program(pid: int, name: str) -> bool:
    """``shared.infra.process_is``, which knows Kafka and FerretDB, plus Prometheus."""
    if name != "prometheus":
        return process_is(pid, name)
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True
    return Path(os.fsdecode(args[0])).name == "prometheus"


def _live_pid_in(pidfile: Path, name: str) -> int | None:
    """The pid in ``pidfile`` if it is a live ``name`` process (the file is left alone either way)."""
    pid = _pid_in(pidfile)
    return pid if pid is not None and pid_alive(pid) and _is_program(pid, name) else None


def prometheus_config(
    targets: Mapping[str, Sequence[tuple[str, str]]], source: Path = PROMETHEUS_DIR / "prometheus.yml"
) -> dict[str, Any]:
    """The project's scrape config (``source``, written for docker-compose) for replicas on this machine.

    ``targets``: per service, ``(instance name, host:port)`` of each replica. Each job keeps its settings
    but scrapes those addresses instead of discovering compose containers by DNS; every replica carries
    a ``replica`` label (``visits-2``). Rule files are made absolute, so the config works from any dir.
    """
    base = yaml.safe_load(source.read_text())
    jobs = []
    for job in base["scrape_configs"]:
        replicas = targets.get(job["job_name"])
        if not replicas:
            continue
        local = {k: v for k, v in job.items() if not k.endswith("_sd_configs")}
        local["static_configs"] = [{"targets": [address], "labels": {"replica": name}} for name, address in replicas]
        jobs.append(local)
    rules = [str((source.parent / f).resolve()) for f in base.get("rule_files", [])]
    return {"global": base["global"], "rule_files": rules, "scrape_configs": jobs}


@dataclass
class PrometheusServer:
    """Prometheus on loopback with a config file written by the runner; its TSDB and log in ``data_dir``."""

    data_dir: Path
    port: int
    config_file: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None
    # Debian's build serves only the classic UI, under /classic/; upstream's serves /targets itself.
    ui_prefix: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, name: str) -> str:
        """The URL of a UI page (``targets``, ``alerts``, ``graph``) in this build of Prometheus."""
        return f"{self.url}{self.ui_prefix}/{name}"

    def start(self, timeout: float = 30.0, cancel: threading.Event | None = None) -> PrometheusServer:
        """Start it and wait until ``/-/ready``; ``cancel`` aborts the wait (and stops it)."""
        if not Path(PROMETHEUS_BIN).exists():
            raise RuntimeError(f"Prometheus not found at {PROMETHEUS_BIN}: run `make setup`")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = (self.data_dir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
                "--storage.tsdb.retention.time=30d",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Prometheus exited early; see {self.data_dir / 'prometheus.log'}")
            if cancel is not None and cancel.is_set():
                self.stop()
                raise RuntimeError("Prometheus start cancelled")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    classic = httpx.get(f"{self.url}/classic/targets", timeout=2.0).status_code == 200
                    self.ui_prefix = "/classic" if classic else ""
                    return self
            time.sleep(0.1)
        raise TimeoutError(f"Prometheus was not ready on {self.url} within {timeout}s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.log:
            self.log.close()
            self.log = None


class Server(Protocol):
    """What the supervisor needs of Kafka, FerretDB and Prometheus."""

    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None
    log: IO[bytes] | None

    def start(self, timeout: float = ..., cancel: threading.Event | None = None) -> object: ...

    def stop(self) -> None: ...


@dataclass
class InfraProcess:
    """Kafka, FerretDB or Prometheus as the runner watches it."""

    name: str
    server: Server
    pidfile: Path
    pid: int
    # Started by this runner, so stopped with it; otherwise `make infra-up` started it and it stays up.
    owned: bool
    # How to bring it back once the supervisor gives up (default: the supervisor's, `make infra-up`).
    recovery: str | None = None
    attempts: int = 0  # restarts since it last stayed up for the supervisor's stable_after
    up_since: float = field(default_factory=time.monotonic)
    down_since: float | None = None
    next_try: float = 0.0
    given_up: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def exit_reason(self) -> str | None:
        """None while it runs; else how it ended (with its exit status when it is this runner's child)."""
        proc = self.server.proc
        if proc is not None and proc.pid == self.pid:
            # poll() reaps the child: a killed broker never lingers as this runner's zombie.
            code = proc.poll()
            return None if code is None else describe_exit(code)
        if pid_alive(self.pid) and _is_program(self.pid, self.name):
            return None
        return f"pid {self.pid} is gone"


class InfraSupervisor:
    """Restarts a crashed Kafka or FerretDB with the same data dir and ports, within limits.

    Every ``interval`` seconds each process is checked. A dead one is restarted after a backoff
    (``backoff[attempt]``); after ``max_restarts`` attempts without ``stable_after`` seconds of
    uptime in between it is left down and ``recovery`` (the command that brings it back) is printed.
    A pid file removed while the process died means ``make infra-down`` stopped it: no restart.
    A pid file that names another live process means someone restarted it: that one is watched.
    """

    def __init__(
        self,
        infra: Sequence[InfraProcess],
        *,
        notice: Callable[[str], None],
        recovery: str,
        after_restart: Callable[[InfraProcess], None] | None = None,
        interval: float = 1.0,
        backoff: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 8.0),
        max_restarts: int = 5,
        stable_after: float = 60.0,
    ) -> None:
        self.infra = list(infra)
        self.notice = notice
        self.recovery = recovery
        self.after_restart = after_restart
        self.interval = interval
        self.backoff = tuple(backoff)
        self.max_restarts = max_restarts
        self.stable_after = stable_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="infra-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; a restart in progress is cancelled (and its process stopped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.check_once()

    def check_once(self) -> None:
        for proc in self.infra:
            if self._stop.is_set():
                return
            try:
                self._check(proc)
            except Exception as exc:  # a bug here must not end the watch over the other process
                self.notice(f"supervising {proc.name} failed: {exc!r}")

    def _delay(self, attempts: int) -> float:
        return self.backoff[min(attempts, len(self.backoff) - 1)] if self.backoff else 0.0

    def _adopt_if_replaced(self, proc: InfraProcess) -> bool:
        pid = _live_pid_in(proc.pidfile, proc.name)
        if pid is None or pid == proc.pid:
            return False
        proc.server.stop()  # closes our log handle of the old process; the new one is not ours
        proc.pid, proc.owned, proc.attempts, proc.given_up = pid, False, 0, False
        proc.down_since, proc.up_since = None, time.monotonic()
        self.notice(f"{proc.name} is back (pid {pid}, started outside `make run`); watching it")
        return True

    def _check(self, proc: InfraProcess) -> None:
        now = time.monotonic()
        if proc.given_up:
            self._adopt_if_replaced(proc)
            return
        if proc.down_since is None:
            reason = proc.exit_reason()
            if reason is None:
                if proc.attempts and now - proc.up_since >= self.stable_after:
                    proc.attempts = 0
                return
            if _pid_in(proc.pidfile) is None:
                proc.given_up = True
                proc.server.stop()
                self.notice(
                    f"{proc.name} exited ({reason}) and its pid file is gone (`make infra-down`?); "
                    f"not restarting it. Start it again with: {proc.recovery or self.recovery}"
                )
                return
            if self._adopt_if_replaced(proc):
                return
            proc.down_since = now
            delay = self._delay(proc.attempts)
            proc.next_try = now + delay
            when = "restarting" if delay <= 0 else f"restarting in {delay:g}s"
            self.notice(f"{proc.name} exited ({reason}); {when}")
        if now < proc.next_try or self._adopt_if_replaced(proc):
            return
        self._restart(proc)

    def _restart(self, proc: InfraProcess) -> None:
        if proc.attempts >= self.max_restarts:
            proc.given_up = True
            restarts = "1 restart" if proc.attempts == 1 else f"{proc.attempts} restarts"
            self.notice(
                f"{proc.name} went down again after {restarts}; not restarting it again. "
                f"Recover it with: {proc.recovery or self.recovery}"
            )
            return
        proc.attempts += 1
        proc.server.stop()
        failure: str | None = None
        if port_open(proc.server.port):
            failure = f"port {proc.server.port} is taken by another program"
        else:
            try:
                proc.server.start(cancel=self._stop)
            except (RuntimeError, TimeoutError, OSError, subprocess.CalledProcessError) as exc:
                proc.server.stop()
                failure = str(exc)
        if self._stop.is_set():
            return
        now = time.monotonic()
        if failure is not None or proc.server.proc is None:
            delay = self._delay(proc.attempts)
            proc.next_try = now + delay
            self.notice(f"restarting {proc.name} failed: {failure}; next try in {delay:g}s")
            return
        proc.pid = proc.server.proc.pid
        proc.pidfile.write_text(str(proc.pid))
        proc.down_since, proc.up_since = None, now
        self.notice(f"{proc.name} restarted (pid {proc.pid}) on {proc.address}, data {proc.server.data_dir}")
        if self.after_restart is not None:
            try:
                self.after_restart(proc)
            except Exception as exc:
                self.notice(f"after restarting {proc.name}: {exc!r}")


class System:
    """Kafka + FerretDB + Prometheus + the services, started and stopped in order. Use as a context manager."""

    def __init__(self, cfg: RunConfig | None = None) -> None:
        self.cfg = cfg or RunConfig()
        self.infra: dict[str, InfraProcess] = {}
        self.bootstrap = f"127.0.0.1:{self.cfg.kafka_port}"
        self.mongo_url = f"mongodb://127.0.0.1:{self.cfg.mongo_port}/"
        self.services: dict[str, ServiceProcess] = {}
        self.reused: list[str] = []
        self.notices: deque[str] = deque(maxlen=200)
        self.supervisor: InfraSupervisor | None = None
        self.prometheus: PrometheusServer | None = None

    # --- infrastructure --------------------------------------------------------------------------

    def notice(self, text: str) -> None:
        """A runner line on the console (kept in ``notices`` too, for tests)."""
        self.notices.append(text)
        with _print_lock:
            print(f"run: {text}", flush=True)

    def _reusable(self, name: str, port: int) -> int | None:
        """The pid if ``make infra-up`` already runs this server on our data dir; else fail on a busy port.

        A pid file whose process is gone or a zombie is stale: it is removed and the server started afresh.
        """
        pid, stale = inspect_pidfile(self.cfg.data_dir / f"{name}.pid", name)
        if pid is not None:
            self.reused.append(name)
            return pid
        if stale:
            self.notice(f"{name}.pid named {stale}; starting a fresh {name}")
        if port_open(port):
            raise RuntimeError(f"port {port} for {name} is taken by another program; stop it or pick another port")
        return None

    def recovery_command(self) -> str:
        """The command that brings this run's Kafka and FerretDB back (``make infra-up`` for the defaults)."""
        env = []
        if self.cfg.data_dir.resolve() != (REPO / ".data").resolve():
            env.append(f"DATA_DIR={self.cfg.data_dir}")
        if self.cfg.kafka_port != 9092:
            env.append(f"KAFKA_PORT={self.cfg.kafka_port}")
        if self.cfg.controller_port != self.cfg.kafka_port + 1:
            env.append(f"KAFKA_CONTROLLER_PORT={self.cfg.controller_port}")
        if self.cfg.mongo_port != 27017:
            env.append(f"MONGO_PORT={self.cfg.mongo_port}")
        make = "make infra-up" if Path.cwd().resolve() == REPO else f"make -C {REPO} infra-up"
        return " ".join([*env, make])

    def start_infra(self) -> None:
        self.cfg.data_dir.mkdir(parents=True, exist_ok=True)
        servers: tuple[tuple[str, KafkaBroker | FerretDB], ...] = (
            (
                "kafka",
                KafkaBroker(
                    self.cfg.data_dir / "kafka", port=self.cfg.kafka_port, controller_port=self.cfg.controller_port
                ),
            ),
            ("ferretdb", FerretDB(self.cfg.data_dir / "ferretdb", port=self.cfg.mongo_port)),
        )
        for name, server in servers:
            pidfile = self.cfg.data_dir / f"{name}.pid"
            pid = self._reusable(name, server.port)
            if pid is None:
                try:
                    server.start()
                except BaseException:
                    server.stop()  # a broker that timed out must not outlive the failed start
                    raise
                assert server.proc is not None
                pid = server.proc.pid
                # The pid file lets `make infra-down` / `make clean-data` stop it even if this runner is killed.
                pidfile.write_text(str(pid))
            self.infra[name] = InfraProcess(name, server, pidfile, pid, owned=name not in self.reused)
        ensure_topics_sync(self.bootstrap, self.cfg.topic_prefix)
        prometheus = self.start_prometheus()
        if prometheus is not None:
            self.infra["prometheus"] = prometheus
        self.supervisor = InfraSupervisor(
            list(self.infra.values()),
            notice=self.notice,
            recovery=self.recovery_command(),
            after_restart=self._after_restart,
        )
        self.supervisor.start()

    def service_names(self) -> list[str]:
        return list(self.cfg.services) if self.cfg.services is not None else available_services()

    def scrape_targets(self) -> dict[str, list[tuple[str, str]]]:
        """Per service, ``(instance, host:port)`` of every replica this run starts."""
        out: dict[str, list[tuple[str, str]]] = {}
        for name in self.service_names():
            ports = [self.cfg.ports[name], *self.cfg.replica_ports.get(name, ())]
            instances = [name, *(f"{name}-{i}" for i in range(2, len(ports) + 1))]
            out[name] = [(inst, f"{self.cfg.host}:{port}") for inst, port in zip(instances, ports, strict=True)]
        return out

    def start_prometheus(self) -> InfraProcess | None:
        """Prometheus scraping every replica this run starts, with the project's alert rules.

        Only this runner starts Prometheus, so one still named by ``prometheus.pid`` outlived a runner
        that was killed: it is stopped (it holds the TSDB lock) and a new one is started with this
        run's ports. Without the binary, or with its port taken, the system runs without it.
        """
        port = self.cfg.prometheus_port
        if port is None:
            return None
        if not Path(PROMETHEUS_BIN).exists():
            self.notice(f"Prometheus is not installed ({PROMETHEUS_BIN}); `make setup` installs it. Running without it")
            return None
        pidfile = self.cfg.data_dir / "prometheus.pid"
        orphan = _live_pid_in(pidfile, "prometheus")
        if orphan is not None:
            self.notice(f"stopping Prometheus (pid {orphan}) left running by an earlier `make run`")
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while pid_alive(orphan) and time.monotonic() < deadline:
                time.sleep(0.1)
        pidfile.unlink(missing_ok=True)
        if port_open(port):
            self.notice(f"port {port} for Prometheus is taken by another program; running without it (see --help)")
            return None
        data = self.cfg.data_dir / "prometheus"
        data.mkdir(parents=True, exist_ok=True)
        config = data / "prometheus.yml"
        config.write_text(yaml.safe_dump(prometheus_config(self.scrape_targets()), sort_keys=False))
        server = PrometheusServer(data, port, config)
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        assert server.proc is not None
        pidfile.write_text(str(server.proc.pid))
        self.prometheus = server
        again = "stop `make run` (Ctrl-C) and start it again"
        return InfraProcess("prometheus", server, pidfile, server.proc.pid, owned=True, recovery=again)

    def _after_restart(self, proc: InfraProcess) -> None:
        if proc.name == "kafka":
            ensure_topics_sync(self.bootstrap, self.cfg.topic_prefix)

    def stop_infra(self) -> None:
        # The supervisor goes first, or it would restart what is being stopped.
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None
        for name in ("prometheus", "ferretdb", "kafka"):
            proc = self.infra.get(name)
            if proc is None:
                continue
            if proc.owned:
                proc.server.stop()
                if _pid_in(proc.pidfile) == proc.pid:
                    proc.pidfile.unlink(missing_ok=True)
            else:
                # `make infra-up`'s process (or our restart of it) outlives this runner; only our log handle goes.
                if proc.server.log is not None:
                    proc.server.log.close()
                    proc.server.log = None
        self.infra.clear()
        self.prometheus = None

    # --- services --------------------------------------------------------------------------------

    def service_env(self, spec: ServiceSpec, port: int | None = None) -> dict[str, str]:
        p = spec.env_prefix
        env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(s.env_prefix for s in SERVICES))}
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                f"{p}KAFKA_BOOTSTRAP": self.bootstrap,
                f"{p}MONGO_URL": self.mongo_url,
                f"{p}HOST": self.cfg.host,
                f"{p}PORT": str(port or self.cfg.ports[spec.name]),
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
        names = self.service_names()
        if not names:
            raise RuntimeError("no service has an app.py yet under services/<name>/<name>/")
        self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            for port in (self.cfg.ports[name], *self.cfg.replica_ports.get(name, ())):
                if port_open(port, self.cfg.host):
                    raise RuntimeError(f"port {port} for {name} is in use (is another `make run` running?)")
        for name in names:
            self.start_replica(name, 1)
            for i in range(len(self.cfg.replica_ports.get(name, ()))):
                self.start_replica(name, i + 2)

    def start_replica(self, name: str, number: int) -> ServiceProcess:
        """Start replica ``number`` (1 is the one on ``ports``) of a service; its instance name is
        the service's, or ``<service>-<number>`` for further replicas."""
        spec = SPEC_BY_NAME[name]
        port = self.cfg.ports[name] if number == 1 else self.cfg.replica_ports[name][number - 2]
        instance = name if number == 1 else f"{name}-{number}"
        svc = ServiceProcess(spec, port, self.service_env(spec, port), self.cfg, instance=instance)
        self.services[instance] = svc
        return svc

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
        """The first replica of each service."""
        return {svc.spec.name: svc.url for svc in self.services.values() if svc.instance == svc.spec.name}

    def replica_urls(self) -> dict[str, list[str]]:
        """Every replica of each service, the first first."""
        out: dict[str, list[str]] = {}
        for svc in self.services.values():
            out.setdefault(svc.spec.name, []).append(svc.url)
        return out

    def admin_token(self, hours: float = 12) -> str:
        return issue_token(
            secret=self.cfg.jwt_secret, role="admin", unit=None, sub="make-run", ttl=timedelta(hours=hours)
        )

    def write_state(self) -> None:
        """``<data_dir>/run.json``: where the services listen, so ``make demo`` finds a non-default run."""
        state: dict[str, Any] = {"services": self.urls(), "kafka": self.bootstrap, "mongo": self.mongo_url}
        if self.prometheus is not None:
            state["prometheus"] = self.prometheus.url
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
            lines += [
                "",
                f"  Indicators: {m}/v1/summary   Metrics exposition: {m}/metrics",
                "  Campaign page (Trang chiến dịch; the link signs you in for 12 h):",
                f"    {m}/v1/campaign-page?token={self.admin_token()}",
            ]
        if self.prometheus is not None:
            prom = self.prometheus
            lines += [
                "",
                f"  Prometheus: {prom.url}   targets {prom.page('targets')}   alerts {prom.page('alerts')}",
                f"    scrapes every replica; rules {PROMETHEUS_DIR / 'alerts.yml'}; data {self.prometheus.data_dir}/",
            ]
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
    p = argparse.ArgumentParser(
        prog="make run", description="Run Kafka, FerretDB, Prometheus and every service in the foreground."
    )
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
    p.add_argument(
        "--replicas",
        type=int,
        default=int(os.environ.get("REPLICAS", "1")),
        help="processes per service; replica N listens on the first's port + 100*(N-1)",
    )
    p.add_argument(
        "--prometheus-port",
        type=int,
        default=int(os.environ.get("PROMETHEUS_PORT", "9090")),
        help="Prometheus listens here (default 9090)",
    )
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.add_argument("--verbose", action="store_true", help="also echo every HTTP access log line")
    p.add_argument("--quiet", action="store_true", help="write service logs only to files")
    a = p.parse_args(argv)
    ports = {s.name: a.port_base + (s.default_port - 8000) for s in SERVICES}
    return RunConfig(
        data_dir=a.data_dir.resolve(),
        kafka_port=a.kafka_port,
        mongo_port=a.mongo_port,
        ports=ports,
        replica_ports={name: [port + 100 * i for i in range(1, a.replicas)] for name, port in ports.items()},
        services=[s for s in a.services.split(",") if s] or None,
        topic_prefix=a.topic_prefix,
        prometheus_port=None if a.no_prometheus else a.prometheus_port,
        echo_logs=not a.quiet,
        verbose=a.verbose,
        color=sys.stdout.isatty(),
    )


def main(argv: Sequence[str] | None = None) -> int:
    cfg = _parse(argv)
    system = System(cfg)
    with _stop_signals() as stop:
        infra = "Kafka, FerretDB and Prometheus" if cfg.prometheus_port is not None else "Kafka and FerretDB"
        print(f"run: starting {infra} (data in {cfg.data_dir})", flush=True)
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
        print(f"run: stopping services, {infra} (data kept)", flush=True)
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
