"""The project's command line: ``python -m scripts.cli <command>`` (the Makefile targets call it).

Commands read the same settings as the services: ``BRIDGE_KAFKA_BOOTSTRAP``, ``BRIDGE_MONGO_URL``,
``BRIDGE_JWT_SECRET``, ``BRIDGE_TOPIC_PREFIX``... (see the configuration table in README.md), so one
environment serves both. ``--help`` on any command lists its options.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shared.auth import Role, issue_token
from shared.settings import ServiceSettings
from shared.topics import EVENT_TOPICS, dlq_topic

if TYPE_CHECKING:
    from aiokafka.structs import ConsumerRecord

    from metrics.app import MetricsSettings

app = typer.Typer(
    name="bridge",
    help="Digital Bridge: development tokens, the event contract, metrics rebuilds, Kafka topics, "
    "dead letters and report exports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
dlq_app = typer.Typer(help="Inspect and replay dead-letter topics (<topic>.dlq).", no_args_is_help=True)
app.add_typer(dlq_app, name="dlq")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DLQ_HEADERS = ("dlq_error", "dlq_consumer", "dlq_topic", "dlq_partition", "dlq_offset")
REPLAY_HEADER = "dlq_replay_of"
T = TypeVar("T")


def _settings() -> ServiceSettings:
    return ServiceSettings()


def _run_kafka(coro: Coroutine[Any, Any, T], bootstrap: str) -> T:
    """Run a command's coroutine; an unreachable broker is a one-line error, not a traceback."""
    from aiokafka.errors import KafkaConnectionError

    try:
        return asyncio.run(coro)
    except (KafkaConnectionError, ConnectionError) as exc:
        err.print(f"Kafka at {bootstrap} is not reachable ({exc}); start it with `make infra-up` or `make run`")
        raise typer.Exit(1) from None


# --- token ---------------------------------------------------------------------------------------


@app.command()
def token(
    role: Annotated[Role, typer.Option(help="What the holder may do.")] = Role.admin,
    unit: Annotated[str | None, typer.Option(help="Unit code whose subtree the holder covers (QN-HALONG).")] = None,
    teams: Annotated[str, typer.Option(help="Comma-separated team codes (field users).")] = "",
    sub: Annotated[str, typer.Option(help="Subject: who the token names.")] = "dev",
    hours: Annotated[float, typer.Option(min=0.01, max=24 * 30, help="Lifetime in hours.")] = 12,
) -> None:
    """Print a development JWT signed with BRIDGE_JWT_SECRET (make token ROLE=manager UNIT=QN-HALONG)."""
    s = _settings()
    if s.jwt_public_key or s.jwt_jwks_url:
        err.print(
            "[yellow]warning:[/] the services are configured for an identity provider's keys "
            "(jwt_public_key / jwt_jwks_url); they will refuse this development token"
        )
    signed = issue_token(
        secret=s.jwt_secret,
        role=role.value,
        unit=unit or None,
        sub=sub,
        teams=[t for t in teams.split(",") if t],
        ttl=timedelta(hours=hours),
        issuer=s.jwt_issuer,
        audience=s.jwt_audience,
    )
    typer.echo(signed)


# --- contract ------------------------------------------------------------------------------------


@app.command()
def contract(
    check: Annotated[bool, typer.Option("--check", help="Verify only: exit 1 when stale or breaking.")] = False,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Catalogue directory (default docs/events/ of the repository).")
    ] = None,
) -> None:
    """Regenerate the event catalogue in docs/events/ from shared/contracts, gated for compatibility."""
    from shared import catalog

    current = catalog.event_schemas()
    problems = catalog.compatibility_report(catalog.committed_schemas(), current)
    problems += [f"personal data: {f}" for s in current.values() for f in catalog.personal_data_fields(s)]
    if check:
        problems += [f"stale: docs/events/{rel} (run `make contract`)" for rel in catalog.stale_files(directory)]
    else:
        for path in catalog.write(directory):
            typer.echo(f"wrote {path}")
        typer.echo(f"event catalogue: {len(current)} event types in docs/events/")
    for p in problems:
        err.print(f"contract: {p}", markup=False)
    if problems:
        err.print("an incompatible change needs a new versioned type (.v2); see docs/events/README.md")
        raise typer.Exit(1)


# --- rebuild -------------------------------------------------------------------------------------


@app.command()
def rebuild(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also print the service's log lines.")] = False,
) -> None:
    """Rebuild the metrics projection from every event topic and switch the live service to it.

    A running metrics service follows the switch within a couple of seconds; the figures stay
    readable from the old generation meanwhile. Uses the METRICS_* / BRIDGE_* settings.
    """
    from metrics.app import MetricsSettings
    from shared.logging import configure_logging

    settings = MetricsSettings()
    configure_logging("metrics-rebuild", settings.log_level if verbose else "WARNING", settings.log_json)
    started = time.monotonic()
    generation, events = asyncio.run(_rebuild_with_progress(settings))
    typer.echo(f"generation {generation} is live: {events:,} events replayed in {time.monotonic() - started:.1f} s")


async def _rebuild_with_progress(settings: MetricsSettings) -> tuple[int, int]:
    from metrics.rebuild import rebuild as run_rebuild
    from metrics.repository import MetaRepository
    from shared.mongo import connect

    client = connect(settings.mongo_url, max_pool_size=2)
    meta = MetaRepository(client[settings.mongo_db])
    try:
        before = int((await meta.rebuild_status() or {}).get("generation", 0))
        task = asyncio.create_task(run_rebuild(settings))
        total = 0
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
        ) as progress:
            bar = progress.add_task("replaying events", total=None)
            while not task.done():
                status = await meta.rebuild_status() or {}
                # Only this run's status: an earlier rebuild's document stays until prepare() replaces it.
                if int(status.get("generation", 0)) > before and status.get("events_to_replay") is not None:
                    total = int(status["events_to_replay"])
                    progress.update(
                        bar,
                        total=total,
                        completed=int(status.get("events_replayed") or 0),
                        description=f"replaying into generation {status['generation']}",
                    )
                await asyncio.wait({task}, timeout=0.3)
            generation = task.result()
            progress.update(bar, total=total, completed=total, description=f"generation {generation} live")
        return generation, total
    finally:
        await client.close()


# --- topics --------------------------------------------------------------------------------------


@dataclass
class TopicInfo:
    name: str
    partitions: int
    end_offsets: dict[int, int]
    messages: int


@dataclass
class GroupLag:
    group: str
    topic: str
    committed: int
    lag: int


@dataclass
class TopicsReport:
    topics: list[TopicInfo] = field(default_factory=list)
    groups: list[GroupLag] = field(default_factory=list)


async def topics_report(bootstrap: str, *, topic_prefix: str, group_prefix: str) -> TopicsReport:
    """Every topic under ``topic_prefix`` with its end offsets, and the lag of every consumer group."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        names = sorted(t for t in await admin.list_topics() if t.startswith(topic_prefix) and not t.startswith("__"))
        described = await admin.describe_topics(names) if names else []
        partitions = {d["topic"]: sorted(p["partition"] for p in d["partitions"]) for d in described}
        tps = [TopicPartition(t, p) for t in names for p in partitions.get(t, [])]
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps) if tps else {}
        begins: dict[TopicPartition, int] = await consumer.beginning_offsets(tps) if tps else {}
        report = TopicsReport()
        for t in names:
            parts = partitions.get(t, [])
            end = {p: ends[TopicPartition(t, p)] for p in parts}
            kept = sum(end[p] - begins[TopicPartition(t, p)] for p in parts)
            report.topics.append(TopicInfo(t, len(parts), end, kept))
        groups = sorted(str(g[0]) for g in await admin.list_consumer_groups() if str(g[0]).startswith(group_prefix))
        for g in groups:
            committed = await admin.list_consumer_group_offsets(g)
            per_topic: dict[str, tuple[int, int]] = {}
            for tp, meta in committed.items():
                if tp not in ends or meta.offset < 0:
                    continue
                done, lag = per_topic.get(tp.topic, (0, 0))
                per_topic[tp.topic] = (done + meta.offset, lag + max(0, ends[tp] - meta.offset))
            report.groups += [GroupLag(g, t, c, lag) for t, (c, lag) in sorted(per_topic.items())]
        return report
    finally:
        await consumer.stop()
        await admin.close()


@app.command()
def topics(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    prefix: Annotated[str | None, typer.Option(help="Topic prefix to list (default BRIDGE_TOPIC_PREFIX).")] = None,
) -> None:
    """List the topics with partitions and end offsets, and every consumer group's lag."""
    s = _settings()
    topic_prefix = s.topic_prefix if prefix is None else prefix
    report = _run_kafka(
        topics_report(s.kafka_bootstrap, topic_prefix=topic_prefix, group_prefix=s.group("")), s.kafka_bootstrap
    )
    if as_json:
        typer.echo(json.dumps(asdict(report), indent=2))
        return
    t = Table(title=f"Topics on {s.kafka_bootstrap}")
    for col in ("topic", "partitions", "end offsets (sum)", "messages kept"):
        wide = col == "topic"
        t.add_column(col, justify="left" if wide else "right", overflow="fold" if wide else "ellipsis")
    for info in report.topics:
        t.add_row(info.name, str(info.partitions), f"{sum(info.end_offsets.values()):,}", f"{info.messages:,}")
    out.print(t)
    g = Table(title="Consumer groups")
    for col in ("group", "topic", "committed (sum)", "lag"):
        wide = col in ("group", "topic")
        g.add_column(col, justify="left" if wide else "right", overflow="fold" if wide else "ellipsis")
    for lag in report.groups:
        g.add_row(lag.group, lag.topic, f"{lag.committed:,}", f"[red]{lag.lag:,}[/]" if lag.lag else "0")
    out.print(g)


# --- dead letters --------------------------------------------------------------------------------


@dataclass
class DeadLetter:
    """One record of a dead-letter topic and where it came from (the headers the consumer added)."""

    dlq: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode(errors="replace")
        return None

    @property
    def origin(self) -> str:
        """The topic the event was consumed from (the DLQ's own name minus ``.dlq`` if unrecorded)."""
        return self.header("dlq_topic") or self.dlq.removesuffix(".dlq")

    def summary(self) -> dict[str, Any]:
        return {
            "dlq": self.dlq,
            "partition": self.partition,
            "offset": self.offset,
            "event_id": self.header("ce_id"),
            "type": self.header("ce_type"),
            "key": self.key.decode(errors="replace") if self.key else None,
            "consumer": self.header("dlq_consumer"),
            "origin": f"{self.origin}:{self.header('dlq_partition')}:{self.header('dlq_offset')}",
            "error": self.header("dlq_error"),
            "replay_of": self.header(REPLAY_HEADER),
        }


def resolve_topic(name: str, settings: ServiceSettings) -> str:
    """An event topic's full name from ``visits``, ``visits.events.v1`` or ``visits.events.v1.dlq``."""
    base = name.removesuffix(".dlq")
    if "." not in base:
        base = f"{base}.events.v1"
    if settings.topic_prefix and base.startswith(settings.topic_prefix):
        return base
    return settings.topic(base)


async def read_dead_letters(bootstrap: str, dlqs: Sequence[str], timeout: float = 15.0) -> list[DeadLetter]:
    """Every record now in ``dlqs``, read from the beginning up to the end offsets seen at the start."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [t for t in dlqs if t in existing]
        described = await admin.describe_topics(present) if present else []
    finally:
        await admin.close()
    tps = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    if not tps:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    found: list[DeadLetter] = []
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends: dict[TopicPartition, int] = await consumer.end_offsets(tps)
        todo = {tp for tp, end in ends.items() if end > 0}
        for tp in todo:
            if await consumer.position(tp) >= ends[tp]:  # compacted or deleted up to the end
                todo.discard(tp)
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {', '.join(sorted(dlqs))}: no progress for {timeout:.0f} s")
            batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset < ends[tp]:
                        found.append(DeadLetter(tp.topic, tp.partition, r.offset, r.key, r.value, list(r.headers)))
                if records:
                    deadline = time.monotonic() + timeout
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
    finally:
        await consumer.stop()
    return sorted(found, key=lambda d: (d.dlq, d.partition, d.offset))


def _dlq_names(topic: str | None, settings: ServiceSettings) -> list[str]:
    bases = [resolve_topic(topic, settings)] if topic else [settings.topic(t) for t in EVENT_TOPICS]
    return [dlq_topic(t) for t in bases]


@dlq_app.command("list")
def dlq_list(
    topic: Annotated[
        str | None, typer.Argument(help="visits, visits.events.v1 or its .dlq (default: every event topic).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per dead letter.")] = False,
) -> None:
    """List the dead letters: which event, which consumer gave up on it, and why."""
    s = _settings()
    letters = _run_kafka(read_dead_letters(s.kafka_bootstrap, _dlq_names(topic, s)), s.kafka_bootstrap)
    if as_json:
        for d in letters:
            typer.echo(json.dumps(d.summary(), ensure_ascii=False))
        return
    t = Table(title=f"{len(letters)} dead letter(s)")
    for col in ("dlq:partition:offset", "event type", "event id", "consumer", "error"):
        t.add_column(col, overflow="fold")
    for d in letters:
        row = d.summary()
        t.add_row(f"{d.dlq}:{d.partition}:{d.offset}", row["type"], row["event_id"], row["consumer"], row["error"])
    out.print(t)


async def replay(
    bootstrap: str, letters: Sequence[DeadLetter], *, client_id: str = "bridge-cli-dlq-replay"
) -> list[tuple[DeadLetter, str]]:
    """Publish each dead letter's original event, unchanged, to the topic it was consumed from.

    The key (so the partition), value and CloudEvents headers are the original's; the ``dlq_*``
    headers go, and ``dlq_replay_of`` says which dead letter the copy comes from. Consumers that
    applied the event before skip the copy by its event id.
    """
    from shared.kafka import EventProducer

    producer = EventProducer(bootstrap, client_id=client_id)
    sent: list[tuple[DeadLetter, str]] = []
    try:
        for d in letters:
            headers = [(k, v) for k, v in d.headers if k not in DLQ_HEADERS and k != REPLAY_HEADER]
            headers.append((REPLAY_HEADER, f"{d.dlq}:{d.partition}:{d.offset}".encode()))
            await producer.send_raw(d.origin, d.value, key=d.key, headers=headers)
            sent.append((d, d.origin))
    finally:
        await producer.stop()
    return sent


@dlq_app.command("replay")
def dlq_replay(
    topic: Annotated[str, typer.Argument(help="visits, visits.events.v1 or visits.events.v1.dlq.")],
    event_id: Annotated[
        list[str] | None, typer.Option("--event-id", "-e", help="Replay only this event (repeatable).")
    ] = None,
    offset: Annotated[
        list[str] | None, typer.Option("--offset", "-o", help="Replay only this dead letter: PARTITION:OFFSET.")
    ] = None,
    consumer: Annotated[str | None, typer.Option(help="Only dead letters of this consumer.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter of the topic.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be replayed.")] = False,
) -> None:
    """Republish dead-lettered events to the topic they came from, once their cause is fixed."""
    if not (event_id or offset or consumer or replay_all):
        err.print("say what to replay: --event-id, --offset, --consumer or --all")
        raise typer.Exit(2)
    s = _settings()
    letters = _run_kafka(read_dead_letters(s.kafka_bootstrap, _dlq_names(topic, s)), s.kafka_bootstrap)
    positions = set(offset or [])
    chosen = [
        d
        for d in letters
        if (not event_id or d.header("ce_id") in event_id)
        and (not positions or f"{d.partition}:{d.offset}" in positions)
        and (consumer is None or d.header("dlq_consumer") == consumer)
    ]
    if not chosen:
        err.print(f"no dead letter matches ({len(letters)} in {', '.join(_dlq_names(topic, s))})")
        raise typer.Exit(1)
    if dry_run:
        for d in chosen:
            typer.echo(f"would replay {d.dlq}:{d.partition}:{d.offset} ({d.header('ce_type')}) to {d.origin}")
        return
    sent = _run_kafka(replay(s.kafka_bootstrap, chosen), s.kafka_bootstrap)
    for d, target in sent:
        typer.echo(f"replayed {d.dlq}:{d.partition}:{d.offset} {d.header('ce_id')} -> {target}")
    typer.echo(f"{len(sent)} event(s) replayed")


# --- report --------------------------------------------------------------------------------------


class ExportFormat(StrEnum):
    csv = "csv"
    xlsx = "xlsx"


class ReportRows(StrEnum):
    units = "units"
    teams = "teams"


@app.command()
def report(
    output: Annotated[Path, typer.Argument(help="File to write: .csv or .xlsx (the format follows the suffix).")],
    unit: Annotated[str | None, typer.Option(help="Unit code (default: your own unit; admins: the province).")] = None,
    first: Annotated[str | None, typer.Option("--from", help="First local date, YYYY-MM-DD.")] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last local date, YYYY-MM-DD.")] = None,
    campaign: Annotated[str | None, typer.Option(help="Campaign code: report its window.")] = None,
    rows: Annotated[ReportRows, typer.Option(help="Child units or the subtree's teams as rows.")] = ReportRows.units,
    fmt: Annotated[ExportFormat | None, typer.Option("--format", help="Override the suffix.")] = None,
    url: Annotated[
        str, typer.Option(envvar="BRIDGE_METRICS_URL", help="The metrics service.")
    ] = "http://127.0.0.1:8004",
    bearer: Annotated[
        str | None, typer.Option("--token", envvar="TOKEN", help="Bearer token (default: an admin dev token).")
    ] = None,
) -> None:
    """Export the metrics service's report table (GET /v1/reports/table) to a CSV or XLSX file.

    Without --from/--to or --campaign it is the last full Monday-Sunday week.
    """
    import httpx

    for d in (first, last):
        if d is not None:
            try:
                date.fromisoformat(d)
            except ValueError as exc:
                raise typer.BadParameter(f"{d!r} is not a date (YYYY-MM-DD)") from exc
    chosen = fmt or (ExportFormat.xlsx if output.suffix.lower() == ".xlsx" else ExportFormat.csv)
    params = {"unit": unit, "from": first, "to": last, "campaign": campaign, "rows": rows.value, "format": chosen.value}
    if bearer is None:
        s = _settings()
        bearer = issue_token(
            secret=s.jwt_secret, role="admin", unit=None, sub="bridge-cli", issuer=s.jwt_issuer, audience=s.jwt_audience
        )
    headers = {"Authorization": f"Bearer {bearer}"}
    tmp = output.with_name(output.name + ".part")
    with (
        httpx.Client(base_url=url, timeout=120) as client,
        client.stream(
            "GET", "/v1/reports/table", params={k: v for k, v in params.items() if v}, headers=headers
        ) as response,
    ):
        if response.status_code != 200:
            response.read()
            try:
                problem = response.json()
                detail = f"{problem.get('title', '')}: {problem.get('detail', '')} ({problem.get('type', '')})"
            except ValueError:
                detail = response.text[:500]
            err.print(f"GET /v1/reports/table answered {response.status_code}: {detail}", markup=False)
            raise typer.Exit(1)
        size = int(response.headers.get("content-length", 0)) or None
        with (
            tmp.open("wb") as f,
            Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err) as progress,
        ):
            bar = progress.add_task(f"report -> {output.name}", total=size)
            for chunk in response.iter_bytes():
                f.write(chunk)
                progress.advance(bar, len(chunk))
    tmp.replace(output)
    typer.echo(f"wrote {output} ({output.stat().st_size:,} bytes, {chosen.value})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m scripts.cli`` (and of the ``bridge`` console script)."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="bridge", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
