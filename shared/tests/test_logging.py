"""Every log line a service process writes is the same JSON: its own, uvicorn's, aiokafka's, stdlib's."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from scripts.run import render_log_line
from shared import tracing
from shared.infra import free_port
from shared.logging import HANDLER_NAME, configure_logging, get_logger
from shared.server import config


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiokafka").setLevel(logging.NOTSET)
    structlog.reset_defaults()


def json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert all(isinstance(p, dict) for p in parsed)
    return parsed


def test_stdlib_aiokafka_and_pymongo_records_come_out_as_the_same_json_as_the_services_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("visits", "INFO", json=True)
    get_logger("visits.service").info("visit_recorded", visit_id="visit-Hạ-Long-1")
    logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s: %s", 1, "Connection refused")
    logging.getLogger("aiokafka.consumer.fetcher").warning("a reconnect our own code reports already")
    logging.getLogger("pymongo.serverSelection").warning("Đặc khu Vân Đồn: server %s unreachable", "db:27017")
    try:
        raise ZeroDivisionError("households / 0")
    except ZeroDivisionError:
        logging.getLogger("asyncio").exception("Task exception was never retrieved")

    own, kafka, mongo, crash = json_lines(capsys.readouterr().out)
    for line in (own, kafka, mongo, crash):
        assert {"event", "level", "timestamp", "service"} <= set(line), line
        assert line["service"] == "visits"
        assert line["timestamp"].endswith("Z")
    assert (own["event"], own["visit_id"], own["level"]) == ("visit_recorded", "visit-Hạ-Long-1", "info")
    assert "logger" not in own
    assert "trace_id" not in own  # tracing is off
    assert (kafka["event"], kafka["level"], kafka["logger"]) == (
        "Unable connect to node with id 1: Connection refused",
        "error",
        "aiokafka.conn",
    )
    assert (mongo["event"], mongo["level"]) == ("Đặc khu Vân Đồn: server db:27017 unreachable", "warning")
    assert crash["level"] == "error"
    assert "ZeroDivisionError: households / 0" in crash["exception"]
    # scripts/run.py renders them all the same way on the console.
    rendered = render_log_line("visits", json.dumps(kafka))
    assert rendered is not None
    assert rendered.endswith("error   Unable connect to node with id 1: Connection refused logger=aiokafka.conn")


def test_uvicorn_start_up_and_shut_down_lines_are_json_with_the_bound_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("metrics", "INFO", json=True)

    async def run_server() -> None:
        # The server a service process runs: uvicorn's own logging configuration off.
        server = uvicorn.Server(config(FastAPI(), host="127.0.0.1", port=free_port()))
        task = asyncio.create_task(server.serve())
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.05)
        assert server.started
        server.should_exit = True
        await task

    asyncio.run(run_server())
    lines = json_lines(capsys.readouterr().out)
    uvicorn_lines = [line for line in lines if line.get("logger", "").startswith("uvicorn")]
    events = [line["event"] for line in uvicorn_lines]
    assert any(e.startswith("Started server process") for e in events), events
    assert any(e.startswith("Uvicorn running on http://127.0.0.1:") for e in events), events
    assert any(e.startswith("Shutting down") for e in events), events
    for line in uvicorn_lines:
        assert line["service"] == "metrics"
        assert line["level"] == "info"
        assert "color_message" not in line  # uvicorn's ANSI copy of the message is dropped


def test_readable_lines_when_json_is_off_and_levels_filter_library_records(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("training", "WARNING", json=False)
    logging.getLogger("uvicorn.error").info("below the level")
    get_logger("training.service").info("below the level too")
    logging.getLogger("uvicorn.error").warning("Invalid HTTP request received.")
    out = capsys.readouterr().out
    assert "below the level" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1
    assert not lines[0].startswith("{")
    assert "Invalid HTTP request received." in lines[0]
    assert "uvicorn.error" in lines[0]


def test_configuring_twice_keeps_one_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("registry")
    configure_logging("registry")
    logging.getLogger("uvicorn.error").info("once")
    assert [line["event"] for line in json_lines(capsys.readouterr().out)] == ["once"]


def test_lines_written_inside_a_span_carry_its_trace_and_span_ids(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("visits")
    provider = TracerProvider()
    tracing.install(provider)
    try:
        with provider.get_tracer("tests").start_as_current_span("POST /v1/visits") as span:
            get_logger("visits.service").info("visit_recorded")
            logging.getLogger("pymongo.command").warning("slow command")
        get_logger("visits.service").info("outside")
    finally:
        tracing.uninstall()
        provider.shutdown()
    inside, library, outside = json_lines(capsys.readouterr().out)
    ctx = span.get_span_context()
    for line in (inside, library):
        assert (line["trace_id"], line["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert "trace_id" not in outside
