"""The projector against the real FerretDB: redelivery, duplicates, zombies and write volume."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import orjson
import pytest
from prometheus_client import REGISTRY

from metrics.handlers import Projector
from metrics.repository import ProjectionRepository, unpack
from shared.consumer import Consumed
from shared.envelope import Envelope
from shared.mongo import connect

pytestmark = [pytest.mark.mongo]

HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
TOPIC = "visits.events.v1"


@pytest.fixture
async def repo(ferretdb, run_id):
    client = connect(ferretdb.url)
    repository = ProjectionRepository(client[f"metrics_proj_{run_id}"], 1)
    await repository.ensure_indexes()
    yield repository
    await client.drop_database(f"metrics_proj_{run_id}")
    await client.close()


def at_offsets(events: Sequence[Envelope], start: int = 0, partition: int = 0) -> list[Consumed]:
    return [Consumed(e, TOPIC, partition, start + i) for i, e in enumerate(events)]


async def counters(repo: ProjectionRepository, unit: str, day: str) -> dict[str, Any]:
    doc = await repo.counters.find_one({"_id": unit})
    if doc is None:
        return {}
    content = unpack(doc)
    section = content.get(day) if day in ("all", "state") else content["days"].get(day)
    return dict(section or {})


def writes() -> float:
    return REGISTRY.get_sample_value("bridge_projector_mongo_writes_total") or 0.0


def backlog(ev, n: int) -> list[Envelope]:
    out = []
    for i in range(n):
        path = HALONG if i % 3 else VANDON
        out.append(ev.visit(f"v{i}", ev.figures(path, date(2025, 7, 1 + i % 5), people=2, vneid=i % 2)))
    return out


async def test_redelivery_after_a_crash_before_the_commit_changes_nothing_however_batches_are_cut(ev, repo) -> None:
    stream = at_offsets(backlog(ev, 120))
    projector = Projector(repo)
    for lo in range(0, 120, 40):
        await projector(stream[lo : lo + 40])
    expected = await counters(repo, "QN", "all")
    assert expected["people_supported"] == 240
    assert expected["households_visited"] == 120
    # The crash hit after the counters were written but before applied ids and offsets were: Kafka
    # redelivers from an old commit and cuts the batches differently this time.
    await repo.applied_events.delete_many({})
    for lo, hi in ((0, 7), (7, 55), (55, 56), (56, 120)):
        await projector(stream[lo:hi])
    assert await counters(repo, "QN", "all") == expected
    assert (await counters(repo, "QN-VANDON", "all"))["households_visited"] == 40
    assert (await counters(repo, "QN-HALONG", "2025-07-01"))["households_visited"] == 16


async def test_same_event_republished_at_a_later_offset_counts_once(ev, repo) -> None:
    visit = ev.visit("v-dup", ev.figures(HALONG, date(2025, 7, 2), people=5))
    projector = Projector(repo)
    # Inside one batch, and again in a later batch.
    await projector(at_offsets([visit, visit]))
    await projector(at_offsets([visit], start=2))
    assert (await counters(repo, "QN-HALONG", "2025-07-02"))["people_supported"] == 5


async def test_zombie_projector_that_read_stale_watermarks_does_not_double_count(ev, repo) -> None:
    stream = at_offsets(backlog(ev, 30))
    live, zombie = Projector(repo), Projector(ProjectionRepository(repo._db, 1))
    zombie_repo = zombie.repo
    original = zombie_repo.load_counters
    rounds = 0

    async def stale_read(doc_ids=None):
        nonlocal rounds
        rounds += 1
        docs = await original(doc_ids)
        if rounds == 1:
            await live(stream)  # the live projector applies the batch right after the zombie read
        return docs

    zombie_repo.load_counters = stale_read  # type: ignore[method-assign]
    await zombie(stream)
    assert rounds >= 2  # its conditional writes missed, so it re-read
    assert (await counters(repo, "QN", "all"))["people_supported"] == 60


async def test_a_fetch_of_several_partitions_is_one_write_per_document_and_redelivery_is_harmless(ev, repo) -> None:
    p0 = at_offsets([ev.visit(f"a{i}", ev.figures(HALONG, date(2025, 7, 9), people=2)) for i in range(20)], partition=0)
    p1 = at_offsets([ev.visit(f"b{i}", ev.figures(HALONG, date(2025, 7, 9), people=3)) for i in range(10)], partition=1)
    projector = Projector(repo)
    before = writes()
    await projector([*p0, *p1])
    # Two documents (QN, QN-HALONG) written once each + 1 applied-ids insert, not one per partition.
    assert writes() - before == 3
    assert (await counters(repo, "QN", "2025-07-09"))["people_supported"] == 70
    # After a restart (fresh projector, nothing in memory), partition 1 comes again with more events.
    more = at_offsets([ev.visit(f"c{i}", ev.figures(HALONG, date(2025, 7, 9), people=1)) for i in range(5)], 10, 1)
    await Projector(repo)([*p1, *more])
    assert (await counters(repo, "QN", "2025-07-09"))["people_supported"] == 75
    assert (await counters(repo, "QN-HALONG", "all"))["people_supported"] == 75


async def test_mongo_writes_grow_with_counters_touched_not_with_events(ev, repo) -> None:
    same_day = [ev.visit(f"s{i}", ev.figures(HALONG, date(2025, 7, 9), people=1)) for i in range(500)]
    before = writes()
    await Projector(repo)(at_offsets(same_day))
    spent = writes() - before
    # One document per unit (2 units) and 1 insert of applied ids.
    assert spent == 3
    assert (await counters(repo, "QN", "2025-07-09"))["people_supported"] == 500


async def test_units_and_campaigns_keep_their_latest_state(ev, repo) -> None:
    projector = Projector(repo)
    await projector(
        at_offsets(
            [
                ev.unit(["QN"]),
                ev.unit(HALONG),
                ev.campaign("C90", date(2025, 7, 1), date(2025, 9, 28), [("courses", "QN", 3)]),
            ]
        )
    )
    unit = await repo.unit("QN-HALONG")
    assert unit is not None
    assert unit["name"] == "Phường Hạ Long"
    assert unit["path"] == HALONG
    root = await repo.root_unit()
    assert root is not None
    assert root["_id"] == "QN"
    campaign = await repo.campaign("C90")
    assert campaign is not None
    assert campaign["starts_on"] == "2025-07-01"
    assert campaign["targets"] == [{"indicator": "courses", "unit_code": "QN", "value": 3}]


async def test_applied_ids_are_kept_for_a_window_of_recent_events_in_memory_and_in_mongo(ev, repo) -> None:
    small = ProjectionRepository(repo._db, 1, applied_window=10)
    projector = Projector(small)
    visits = backlog(ev, 24)
    for lo in range(0, 24, 8):
        await projector(at_offsets(visits[lo : lo + 8], start=lo))
    remembered = await small.applied_ids()
    # The two newest fetches (16 ids) stay: dropping the older of them would leave fewer than 10.
    assert remembered == {v.id for v in visits[8:]}
    stored = await small.applied_events.find({}).to_list()
    assert sorted(d["n"] for d in stored) == [8, 8]
    # A republish of a recent event is still recognised, after a restart too.
    await Projector(ProjectionRepository(repo._db, 1, applied_window=10))(at_offsets([visits[20]], start=24))
    assert (await counters(repo, "QN", "all"))["households_visited"] == 24


async def test_a_busy_topic_does_not_push_a_quiet_topics_ids_out_of_the_window(ev, repo) -> None:
    small = ProjectionRepository(repo._db, 1, applied_window=10)
    projector = Projector(small)
    visits = backlog(ev, 8)
    await projector(at_offsets(visits))
    # Thirty registry events pass before the visits relay republishes one of its last chunk.
    units = [ev.unit(["QN", f"QN-C{i:02d}"]) for i in range(30)]
    for lo in range(0, 30, 6):
        await projector([Consumed(u, "registry.events.v1", 0, lo + i) for i, u in enumerate(units[lo : lo + 6])])
    assert {v.id for v in visits} <= await small.applied_ids()
    restarted = Projector(ProjectionRepository(repo._db, 1, applied_window=10))
    await restarted(at_offsets([visits[3]], start=8))
    assert (await counters(repo, "QN", "all"))["households_visited"] == 8
    # The busy topic keeps only its own window: its two newest documents (12 ids).
    stored = await small.applied_events.find({"topic": "registry.events.v1"}).to_list()
    assert sorted(d["n"] for d in stored) == [6, 6]


async def test_counters_stored_unpacked_by_an_earlier_version_are_read_and_rewritten_packed(ev, repo) -> None:
    await repo.counters.insert_one(
        {"_id": "QN", "depth": 1, "state": {}, "all": {"households_visited": 5}, "days": {}, "wm": {}}
    )
    await Projector(repo)(at_offsets([ev.visit("v-new", ev.figures(HALONG, date(2025, 7, 2)))]))
    stored = await repo.counters.find_one({"_id": "QN"})
    assert stored is not None
    assert "c" in stored
    assert stored["v"] == 1
    assert (await counters(repo, "QN", "all"))["households_visited"] == 6


async def test_counters_packed_uncompressed_by_an_earlier_version_are_read_and_rewritten_compressed(ev, repo) -> None:
    content = {"state": {}, "all": {"households_visited": 5}, "days": {}, "wm": {}}
    await repo.counters.insert_one({"_id": "QN", "depth": 1, "v": 3, "c": orjson.dumps(content)})
    await Projector(repo)(at_offsets([ev.visit("v-new", ev.figures(HALONG, date(2025, 7, 2)))]))
    stored = await repo.counters.find_one({"_id": "QN"})
    assert stored is not None
    assert stored["v"] == 4
    assert not bytes(stored["c"]).startswith(b"{")
    assert (await counters(repo, "QN", "all"))["households_visited"] == 6
