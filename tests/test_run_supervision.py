"""``make run`` looks after its Kafka and FerretDB; ``make infra-up`` tells a dead process from a live one.

Real processes throughout: the broker and the database are killed with SIGKILL, as a crash or the
OOM killer would, and the supervisor in :mod:`scripts.run` must notice, restart them on the same
data and ports (or, past its limit, print the command that recovers them). ``python -m shared.infra
up`` runs as the subprocess ``make infra-up`` runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from scripts.run import REPO, InfraProcess, InfraSupervisor, RunConfig, System
from shared.infra import FerretDB, free_port, inspect_pidfile, pid_alive, process_is, process_state
from shared.topics import load_topics


def _wait_for(check: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def _pid(pidfile: Path) -> int:
    return int(pidfile.read_text())


def _mongo(url: str) -> pymongo.MongoClient[dict[str, object]]:
    return pymongo.MongoClient(url, serverSelectionTimeoutMS=15000)


def _topics(bootstrap: str) -> set[str]:
    async def probe() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
        await admin.start()
        try:
            return set(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(probe())


@pytest.fixture
def zombie() -> Iterator[int]:
    """The pid of a child killed by SIGKILL and not reaped: what a crashed broker was under `make run`."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    os.kill(child.pid, signal.SIGKILL)
    _wait_for(lambda: process_state(child.pid) == "zombie", 5, "the killed child to become a zombie")
    yield child.pid
    child.wait()


def _infra_cmd(data_dir: Path, kafka_port: int, controller_port: int, mongo_port: int, cmd: str) -> str:
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "KAFKA_PORT": str(kafka_port),
        "KAFKA_CONTROLLER_PORT": str(controller_port),
        "MONGO_PORT": str(mongo_port),
    }
    done = subprocess.run(
        [sys.executable, "-m", "shared.infra", cmd],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# --- pid files (no servers) --------------------------------------------------------------------------


def test_a_killed_unreaped_child_counts_as_dead_and_its_pid_file_as_stale(zombie: int, tmp_path: Path) -> None:
    assert Path(f"/proc/{zombie}").exists()  # the pid still exists: os.kill(pid, 0) alone would call it alive
    assert not pid_alive(zombie)
    pidfile = tmp_path / "kafka.pid"
    pidfile.write_text(str(zombie))
    pid, why = inspect_pidfile(pidfile, "kafka")
    assert pid is None
    assert why == f"pid {zombie}, which has exited (a zombie)"
    assert not pidfile.exists()


def test_a_pid_file_naming_another_live_program_is_stale_and_a_missing_one_is_not(tmp_path: Path) -> None:
    pidfile = tmp_path / "ferretdb.pid"
    pidfile.write_text(str(os.getpid()))  # this pytest process: alive, but not FerretDB
    assert pid_alive(os.getpid())
    assert not process_is(os.getpid(), "ferretdb")
    assert inspect_pidfile(pidfile, "ferretdb") == (None, f"pid {os.getpid()}, which is another program now")
    assert not pidfile.exists()
    assert inspect_pidfile(pidfile, "ferretdb") == (None, None)
    pidfile.write_text("garbage")
    assert inspect_pidfile(pidfile, "ferretdb") == (None, "no pid ('garbage')")


def test_recovery_command_is_plain_make_infra_up_for_the_defaults_and_names_every_non_default(
    tmp_path: Path,
) -> None:
    default = System(RunConfig())
    custom = System(RunConfig(data_dir=tmp_path, kafka_port=19092, mongo_port=27018))
    assert default.recovery_command().endswith("make infra-up")
    assert "=" not in default.recovery_command()
    assert custom.recovery_command().startswith(f"DATA_DIR={tmp_path} KAFKA_PORT=19092 MONGO_PORT=27018 make ")
    assert custom.recovery_command().endswith("infra-up")


# --- make infra-up -----------------------------------------------------------------------------------


@pytest.mark.kafka
@pytest.mark.mongo
def test_infra_up_replaces_a_zombie_and_a_dead_pid_file_and_then_reuses_the_live_processes(
    zombie: int, tmp_path: Path
) -> None:
    ports = (free_port(), free_port(), free_port())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "kafka.pid").write_text(str(zombie))
    (tmp_path / "ferretdb.pid").write_text(str(gone.pid))
    try:
        first = _infra_cmd(tmp_path, *ports, "up")
        assert f"kafka.pid named pid {zombie}, which has exited (a zombie); removed it, starting a fresh kafka" in first
        assert f"ferretdb.pid named pid {gone.pid}, which has exited; removed it, starting a fresh ferretdb" in first
        kafka_pid, ferret_pid = _pid(tmp_path / "kafka.pid"), _pid(tmp_path / "ferretdb.pid")
        assert kafka_pid != zombie
        assert pid_alive(kafka_pid)
        assert process_is(kafka_pid, "kafka")
        assert pid_alive(ferret_pid)
        assert process_is(ferret_pid, "ferretdb")
        with _mongo(f"mongodb://127.0.0.1:{ports[2]}/") as client:
            assert client.admin.command("ping")["ok"] == 1.0

        again = _infra_cmd(tmp_path, *ports, "up")
        assert f"infra: kafka already running (pid {kafka_pid}); reusing it" in again
        assert f"infra: ferretdb already running (pid {ferret_pid}); reusing it" in again
        assert "starting a fresh" not in again
        assert (_pid(tmp_path / "kafka.pid"), _pid(tmp_path / "ferretdb.pid")) == (kafka_pid, ferret_pid)
    finally:
        down = _infra_cmd(tmp_path, *ports, "down")
    assert "stopped kafka" in down
    assert not (tmp_path / "kafka.pid").exists()
    _wait_for(lambda: not pid_alive(kafka_pid) and not pid_alive(ferret_pid), 20, "infra-down to stop both")


# --- the supervisor ----------------------------------------------------------------------------------


@pytest.mark.mongo
def test_supervisor_restarts_a_killed_ferretdb_on_its_data_and_a_client_can_ping_it_again(tmp_path: Path) -> None:
    db = FerretDB(tmp_path / "ferretdb").start()
    assert db.proc is not None
    pidfile = tmp_path / "ferretdb.pid"
    pidfile.write_text(str(db.proc.pid))
    notices: list[str] = []
    watched = InfraProcess("ferretdb", db, pidfile, db.proc.pid, owned=True)
    supervisor = InfraSupervisor([watched], notice=notices.append, recovery="make infra-up", interval=0.2)
    supervisor.start()
    client = _mongo(db.url)
    try:
        client.bridge.volunteers.insert_one({"_id": "v1", "name": "Nguyễn Thị Hương", "unit": "Phường Hạ Long"})
        old = db.proc.pid
        os.kill(old, signal.SIGKILL)
        _wait_for(lambda: _pid(pidfile) != old, 20, "the supervisor to restart FerretDB")
        assert notices[0] == "ferretdb exited (signal 9, SIGKILL); restarting"
        assert notices[1].startswith(f"ferretdb restarted (pid {_pid(pidfile)}) on 127.0.0.1:{db.port}")
        assert process_state(old) == "gone"  # reaped, not left a zombie
        assert process_is(_pid(pidfile), "ferretdb")
        with _mongo(db.url) as fresh:
            assert fresh.admin.command("ping")["ok"] == 1.0
            assert fresh.bridge.volunteers.find_one({"_id": "v1"}) == {
                "_id": "v1",
                "name": "Nguyễn Thị Hương",
                "unit": "Phường Hạ Long",
            }
    finally:
        client.close()
        supervisor.stop()
        db.stop()


@pytest.mark.kafka
@pytest.mark.mongo
def test_supervisor_gives_up_past_its_limit_prints_the_recovery_command_and_adopts_what_infra_up_starts(
    tmp_path: Path,
) -> None:
    kafka_port, controller_port = free_port(), free_port()
    db = FerretDB(tmp_path / "ferretdb").start()
    assert db.proc is not None
    pidfile = tmp_path / "ferretdb.pid"
    pidfile.write_text(str(db.proc.pid))
    notices: list[str] = []
    watched = InfraProcess("ferretdb", db, pidfile, db.proc.pid, owned=True)
    recovery = f"DATA_DIR={tmp_path} MONGO_PORT={db.port} make infra-up"
    supervisor = InfraSupervisor(
        [watched], notice=notices.append, recovery=recovery, interval=0.2, backoff=(0.0,), max_restarts=1
    )
    supervisor.start()
    try:
        first = db.proc.pid
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: _pid(pidfile) != first, 20, "the first restart")
        second = _pid(pidfile)
        os.kill(second, signal.SIGKILL)
        _wait_for(lambda: any("not restarting it again" in n for n in notices), 20, "the supervisor to give up")
        assert notices[-1] == (
            f"ferretdb went down again after 1 restart; not restarting it again. Recover it with: {recovery}"
        )
        time.sleep(1.0)
        assert _pid(pidfile) == second
        assert not pid_alive(second)

        # The printed command, run as `make infra-up` runs it, brings it back and the runner watches it.
        _infra_cmd(tmp_path, kafka_port, controller_port, db.port, "up")
        _wait_for(lambda: "is back" in notices[-1], 10, "the supervisor to adopt the new FerretDB")
        assert notices[-1] == f"ferretdb is back (pid {_pid(pidfile)}, started outside `make run`); watching it"
        assert watched.pid == _pid(pidfile)
        assert not watched.owned
        with _mongo(db.url) as client:
            assert client.admin.command("ping")["ok"] == 1.0
    finally:
        supervisor.stop()
        db.stop()
        _infra_cmd(tmp_path, kafka_port, controller_port, db.port, "down")


@pytest.mark.kafka
@pytest.mark.mongo
def test_make_run_restarts_a_killed_kafka_with_its_topics_while_infra_up_reuses_the_live_servers(
    tmp_path: Path,
) -> None:
    cfg = RunConfig(
        data_dir=tmp_path,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mongo_port=free_port(),
        topic_prefix="sup.",
        echo_logs=False,
    )
    system = System(cfg)
    system.start_infra()
    try:
        kafka_pidfile = tmp_path / "kafka.pid"
        old = _pid(kafka_pidfile)
        os.kill(old, signal.SIGKILL)
        _wait_for(lambda: _pid(kafka_pidfile) != old, 60, "the supervisor to restart Kafka")
        assert "kafka exited (signal 9, SIGKILL); restarting" in system.notices
        assert process_state(old) == "gone"
        assert {t.name for t in load_topics("sup.")} <= _topics(system.bootstrap)

        # The report's case: `make infra-up` next to a running `make run` must reuse, not trace back.
        out = _infra_cmd(tmp_path, cfg.kafka_port, cfg.controller_port, cfg.mongo_port, "up")
        assert f"kafka already running (pid {_pid(kafka_pidfile)}); reusing it" in out
        assert "ferretdb already running" in out
        restarted = _pid(kafka_pidfile)
    finally:
        system.stop_infra()
    assert not (tmp_path / "kafka.pid").exists()
    assert not pid_alive(restarted)
