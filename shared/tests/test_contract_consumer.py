"""The integrator quick start works: the example consumer against the real broker."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from shared import catalog
from shared.contracts import EVENT_TYPES
from shared.contracts import registry as reg
from shared.contracts import training as trn
from shared.contracts import visits as vis
from shared.envelope import Envelope, make_event
from shared.kafka import EventProducer
from shared.settings import ServiceSettings
from shared.testing import collect_events
from shared.topics import EVENT_TOPICS

EXAMPLE = catalog.events_dir() / "example_consumer.py"
_HALONG = ["QN", "QN-HALONG"]


class IntegratorSettings(ServiceSettings):
    service_name: str = "integrator"


def _event(event_type: str, **changes: object) -> Envelope:
    validated = EVENT_TYPES[event_type].model_validate({**catalog.EXAMPLES[event_type], **changes})
    key = catalog.EVENT_DOCS[event_type].key.format(
        **{name: getattr(validated, name) for name in type(validated).model_fields}
    )
    return make_event(event_type, validated, source=catalog.source_of(event_type), key=key)


@pytest.mark.kafka
@pytest.mark.mongo
async def test_example_consumer_receives_each_event_once_decoded_despite_a_redelivery(make_settings) -> None:
    settings = make_settings(IntegratorSettings)
    created = _event(reg.UNIT_CREATED)
    renamed = _event(
        reg.UNIT_UPDATED, code="QN-HALONG", name="Phường Hồng Gai", kind="ward", path=_HALONG, previous_path=_HALONG
    )
    visit = _event(vis.VISIT_RECORDED)
    course = _event(trn.COURSE_SCHEDULED)
    # The redelivery shares the key, so it sits between the original and `renamed` in one partition:
    # the consumer must skip it before it can reach `renamed`.
    published = [created, created, renamed, visit, course]
    assert created.key == renamed.key == "QN-HALONG"
    producer = EventProducer(settings.kafka_bootstrap, client_id="integrator-test")
    try:
        await producer.send_all({t: settings.topic(t) for t in EVENT_TOPICS}, published)
    finally:
        await producer.stop()
    on_broker = await collect_events(settings.kafka_bootstrap, [settings.topic(t) for t in EVENT_TOPICS], count=5)
    assert len(on_broker) == 5

    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--bootstrap",
        settings.kafka_bootstrap,
        "--prefix",
        settings.topic_prefix,
        "--group",
        settings.group("integrator"),
        "--max-events",
        "4",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    except TimeoutError:
        process.kill()
        raise
    assert process.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]

    assert [line["id"] for line in lines].count(created.id) == 1
    received = {line["id"]: line for line in lines}
    assert len(received) == len(lines) == 4
    for event in (created, renamed, visit, course):
        got = received[event.id]
        assert got["type"] == event.type
        assert got["key"] == event.key
        assert got["data"] == event.data
    assert received[created.id]["data"]["name"] == "Phường Hạ Long"
    assert received[renamed.id]["data"]["name"] == "Phường Hồng Gai"


def test_readme_quotes_the_example_consumer_verbatim() -> None:
    readme = (catalog.events_dir() / "README.md").read_text(encoding="utf-8")
    assert "```python\n" + EXAMPLE.read_text(encoding="utf-8") + "```" in readme
    assert "kcat -C -b" in readme
