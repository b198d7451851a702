"""``python -m scripts.cli``: every command against the real broker and database.

Commands run in a worker thread (``asyncio.to_thread``) because each one runs its own event loop,
as it does from a shell; the services they talk to run on the test's loop meanwhile.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import shutil
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
import structlog
import uvicorn
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from typer.testing import CliRunner, Result

from metrics.app import MetricsSettings, build_app
from metrics.repository import MetaRepository
from scripts.cli import app
from shared.auth import Authenticator, Role
from shared.consumer import Consumed, ConsumerRunner, ProcessedEvents
from shared.contracts import registry as reg
from shared.contracts.common import TeamKind
from shared.envelope import Envelope, make_event
from shared.kafka import EventProducer
from shared.logging import HANDLER_NAME
from shared.mongo import connect
from shared.settings import ServiceSettings
from shared.testing import token, wait_until
from shared.topics import EVENT_TOPICS, REGISTRY_TOPIC


@pytest.fixture(autouse=True)
def _logging_left_as_it_was() -> Any:
    """``rebuild`` configures logging to the stdout CliRunner swaps in and closes: undo it after each test,
    or later tests log into a closed file."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)


pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

SECRET = "a-shared-secret-for-every-service-0123456789"
UNITS = [
    (["QN"], "Tỉnh Quảng Ninh", "province"),
    (["QN", "QN-HALONG"], "Phường Hạ Long", "ward"),
    (["QN", "QN-VANDON"], "Đặc khu Vân Đồn", "special_zone"),
]


def unit_event(path: list[str], name: str, kind: Any) -> Envelope:
    payload = reg.UnitCreated(
        code=path[-1], name=name, kind=kind, parent_code=path[-2] if len(path) > 1 else None, path=path
    )
    return make_event(reg.UNIT_CREATED, payload, source="/registry", key=path[-1])


def team_event(code: str, path: list[str]) -> Envelope:
    payload = reg.TeamCreated(
        code=code, name=f"Đội hình {code}", kind=TeamKind.mobile, unit_code=path[-1], unit_path=list(path)
    )
    return make_event(reg.TEAM_CREATED, payload, source="/registry", key=code)


def cli_env(settings: ServiceSettings, prefix: str = "BRIDGE_") -> dict[str, str]:
    """What a shell would export to point the CLI at the test's broker, database and topic prefix."""
    return {
        "BRIDGE_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BRIDGE_MONGO_URL": settings.mongo_url,
        "BRIDGE_TOPIC_PREFIX": settings.topic_prefix,
        "BRIDGE_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "BRIDGE_LOG_JSON": "false",
        f"{prefix}MONGO_DB": settings.mongo_db,
    }


async def run_cli(args: Sequence[str], env: dict[str, str] | None = None) -> Result:
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


async def publish(settings: ServiceSettings, events: Sequence[Envelope]) -> None:
    producer = EventProducer(settings.kafka_bootstrap, client_id="cli-test")
    try:
        await producer.send_all({t: settings.topic(t) for t in EVENT_TOPICS}, list(events))
    finally:
        await producer.stop()


def test_token_is_signed_with_the_shared_secret_and_verifies() -> None:
    result = CliRunner().invoke(
        app,
        ["token", "--role", "field", "--unit", "QN-VANDON", "--teams", "QN-VANDON-CD1,QN-VANDON-CD2", "--sub", "huong"],
        env={"BRIDGE_JWT_SECRET": SECRET},
    )
    assert result.exit_code == 0, result.output
    principal = Authenticator(algorithm="HS256", secret=SECRET).decode(result.stdout.strip())
    assert principal.role is Role.field
    assert principal.unit == "QN-VANDON"
    assert principal.teams == ["QN-VANDON-CD1", "QN-VANDON-CD2"]
    assert principal.sub == "huong"


def test_token_refuses_an_unknown_role() -> None:
    result = CliRunner().invoke(app, ["token", "--role", "superuser"])
    assert result.exit_code == 2
    assert "superuser" in result.output


def test_contract_writes_then_checks_and_names_a_stale_file(tmp_path: Path) -> None:
    from shared.catalog import events_dir

    target = tmp_path / "events"
    shutil.copytree(events_dir(), target)
    wrote = CliRunner().invoke(app, ["contract", "--dir", str(target)])
    assert wrote.exit_code == 0, wrote.output
    assert "event types in docs/events/" in wrote.stdout
    checked = CliRunner().invoke(app, ["contract", "--check", "--dir", str(target)])
    assert checked.exit_code == 0, checked.output
    schema = sorted((target / "schemas").glob("*.json"))[0]
    schema.write_text(schema.read_text() + " ")
    stale = CliRunner().invoke(app, ["contract", "--check", "--dir", str(target)])
    assert stale.exit_code == 1
    assert f"stale: docs/events/schemas/{schema.name}" in stale.stderr


async def test_topics_lists_partitions_end_offsets_and_group_lag(make_settings: Callable[..., Any]) -> None:
    settings: ServiceSettings = make_settings(ServiceSettings)
    topic = settings.topic(REGISTRY_TOPIC)
    await publish(settings, [unit_event(p, n, k) for p, n, k in UNITS])
    # A consumer group that committed 1 of the 3 events on each partition it read.
    group = settings.group("cli-test.lagging")
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    partitions = sorted(p["partition"] for p in described["partitions"])
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(tps)
        used = next(tp for tp in tps if ends[tp] > 0)
        consumer.assign([used])
        await consumer.commit({used: 1})
    finally:
        await consumer.stop()
    # The lag counts only the partitions the group has committed on.
    lag = ends[used] - 1

    result = await run_cli(["topics", "--json"], cli_env(settings))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    by_name = {t["name"]: t for t in report["topics"]}
    assert set(by_name) >= {settings.topic(t) for t in EVENT_TOPICS}
    assert all(name.startswith(settings.topic_prefix) for name in by_name)  # other runs' topics left out
    assert by_name[topic]["partitions"] == len(partitions)
    assert sum(by_name[topic]["end_offsets"].values()) == 3
    assert by_name[topic]["messages"] == 3
    lags = [g for g in report["groups"] if g["group"] == group]
    assert lags == [{"group": group, "topic": topic, "committed": 1, "lag": lag}]

    table = await run_cli(["topics"], {**cli_env(settings), "COLUMNS": "250"})
    assert table.exit_code == 0
    assert "cli-test.lagging" in table.stdout


class Flaky:
    """A consumer's handler that fails until its bug is "fixed", then records what it handled."""

    def __init__(self) -> None:
        self.fixed = False
        self.handled: list[str] = []

    async def __call__(self, events: Sequence[Consumed]) -> None:
        if not self.fixed:
            raise RuntimeError("Đặc khu Vân Đồn: bug in the handler")
        self.handled += [c.envelope.id for c in events]


def flaky_runner(settings: ServiceSettings, handler: Flaky, producer: EventProducer, **kw: Any) -> ConsumerRunner:
    return ConsumerRunner(
        name="cli-test.flaky",
        bootstrap=settings.kafka_bootstrap,
        topics=[settings.topic(REGISTRY_TOPIC)],
        group_id=settings.group("cli-test.flaky"),
        handler=handler,
        producer=producer,
        max_retries=1,
        backoff_seconds=0.01,
        **kw,
    )


async def _dead_letter_then_replay(settings: ServiceSettings, dedup: bool) -> tuple[Flaky, Envelope, list[Any]]:
    env = cli_env(settings)
    handler = Flaky()
    producer = EventProducer(settings.kafka_bootstrap, client_id="cli-test")
    client = connect(settings.mongo_url)
    processed = ProcessedEvents(client[settings.mongo_db]["processed_events"], "cli-test.flaky") if dedup else None
    runner = flaky_runner(settings, handler, producer, dedup=processed)
    event = unit_event(["QN", "QN-VANDON"], "Đặc khu Vân Đồn", "special_zone")
    await runner.start()
    try:
        await publish(settings, [event])
        listed: list[dict[str, Any]] = []

        async def dead_lettered() -> bool:
            nonlocal listed
            result = await run_cli(["dlq", "list", "registry", "--json"], env)
            assert result.exit_code == 0, result.output
            # The consumer running in this process logs to the same captured stdout: keep the JSON lines.
            listed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
            return bool(listed)

        await wait_until(dead_lettered, timeout=30, interval=0.5)
        handler.fixed = True
        replayed = await run_cli(["dlq", "replay", "registry.events.v1", "--event-id", event.id], env)
        assert replayed.exit_code == 0, replayed.output
        assert "1 event(s) replayed" in replayed.stdout

        async def handled() -> bool:
            return event.id in handler.handled

        await wait_until(handled, timeout=8)
    finally:
        await runner.stop()
        await producer.stop()
        await client.close()
    return handler, event, listed


async def test_dead_letter_listed_then_replayed_to_its_topic_and_handled(make_settings: Callable[..., Any]) -> None:
    settings: ServiceSettings = make_settings(ServiceSettings)
    handler, event, listed = await _dead_letter_then_replay(settings, dedup=False)
    assert handler.handled == [event.id]
    [letter] = listed
    assert letter["event_id"] == event.id
    assert letter["type"] == reg.UNIT_CREATED
    assert letter["consumer"] == "cli-test.flaky"
    assert "bug in the handler" in letter["error"]
    assert letter["origin"].startswith(settings.topic(REGISTRY_TOPIC) + ":")
    # The topic now holds the original and the replayed copy: same id and key, DLQ headers gone.
    consumer = AIOKafkaConsumer(
        settings.topic(REGISTRY_TOPIC), bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records: list[Any] = []
        while len(records) < 2:
            batch = await consumer.getmany(timeout_ms=2000)
            assert batch, "the replayed copy never reached the topic"
            records += [r for rs in batch.values() for r in rs]
    finally:
        await consumer.stop()
    original, copy = sorted(records, key=lambda r: r.offset)
    assert copy.key == original.key
    assert copy.value == original.value
    headers = dict(copy.headers)
    assert headers["ce_id"] == event.id.encode()
    assert not any(k.startswith("dlq_") and k != "dlq_replay_of" for k in headers)
    assert headers["dlq_replay_of"].decode().startswith(settings.topic(REGISTRY_TOPIC) + ".dlq:")


async def test_replayed_dead_letter_reaches_a_consumer_that_deduplicates(make_settings: Callable[..., Any]) -> None:
    settings: ServiceSettings = make_settings(ServiceSettings)
    handler, event, _ = await _dead_letter_then_replay(settings, dedup=True)
    assert handler.handled == [event.id]


async def test_dlq_replay_needs_a_selection_and_reports_no_match(make_settings: Callable[..., Any]) -> None:
    settings: ServiceSettings = make_settings(ServiceSettings)
    env = cli_env(settings)
    unselected = await run_cli(["dlq", "replay", "visits"], env)
    assert unselected.exit_code == 2
    assert "--all" in unselected.stderr
    nothing = await run_cli(["dlq", "replay", "visits", "--all"], env)
    assert nothing.exit_code == 1
    assert "no dead letter matches" in nothing.stderr
    empty = await run_cli(["dlq", "list"], env)
    assert empty.exit_code == 0
    assert "0 dead letter(s)" in empty.stdout


async def test_rebuild_replays_every_event_into_a_new_live_generation(make_settings: Callable[..., Any]) -> None:
    settings: MetricsSettings = make_settings(MetricsSettings)
    events = [unit_event(p, n, k) for p, n, k in UNITS] + [team_event("QN-HALONG-CD1", ["QN", "QN-HALONG"])]
    await publish(settings, events)
    result = await run_cli(["rebuild"], cli_env(settings, prefix="METRICS_"))
    assert result.exit_code == 0, result.output
    assert "generation 2 is live: 4 events replayed" in result.stdout
    client = connect(settings.mongo_url)
    try:
        meta = MetaRepository(client[settings.mongo_db])
        assert await meta.active_generation() == 2
        status = await meta.rebuild_status()
        assert status is not None
        assert (status["state"], status["events_replayed"]) == ("done", 4)
    finally:
        await client.close()


async def test_report_exports_the_metrics_table_as_xlsx_and_csv(
    make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    settings: MetricsSettings = make_settings(MetricsSettings)
    metrics = build_app(settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(metrics, log_config=None, lifespan="on"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    admin = token("admin")
    try:
        await wait_until(lambda: asyncio.sleep(0, result=server.started), timeout=30)
        await publish(settings, [unit_event(p, n, k) for p, n, k in UNITS])
        week = {"unit": "QN", "from": "2025-07-07", "to": "2025-07-13"}
        async with httpx.AsyncClient(base_url=url, headers=admin) as http:

            async def projected() -> bool:
                r = await http.get("/v1/reports/table", params=week)
                return r.status_code == 200 and len(r.json()["rows"]) == 2

            await wait_until(projected, timeout=30)
            table = (await http.get("/v1/reports/table", params=week)).json()

        env = {"BRIDGE_METRICS_URL": url, "TOKEN": admin["Authorization"].removeprefix("Bearer ")}
        args = ["--unit", "QN", "--from", "2025-07-07", "--to", "2025-07-13"]
        xlsx = tmp_path / "bao-cao-tuan.xlsx"
        result = await run_cli(["report", str(xlsx), *args], env)
        assert result.exit_code == 0, result.output
        assert f"wrote {xlsx}" in result.stdout
        sheet = openpyxl.load_workbook(xlsx).active
        assert sheet is not None
        cells = [str(c) for row in sheet.iter_rows(values_only=True) for c in row]
        assert "Phường Hạ Long" in cells
        assert "Đặc khu Vân Đồn" in cells

        csv_path = tmp_path / "bao-cao-tuan.csv"
        result = await run_cli(["report", str(csv_path), *args], env)
        assert result.exit_code == 0, result.output
        text = csv_path.read_bytes().decode("utf-8-sig")
        names = [row[1] for row in csv.reader(io.StringIO(text)) if len(row) > 1]
        for row in table["rows"]:
            assert row["name"] in names

        missing = await run_cli(["report", str(tmp_path / "x.csv"), "--unit", "QN-NOWHERE"], env)
        assert missing.exit_code == 1
        assert "404" in missing.stderr
        assert not (tmp_path / "x.csv").exists()
    finally:
        server.should_exit = True
        await serving
