"""The projector against the real FerretDB: redelivery however it is cut, republished copies,
replicas and zombies sharing partitions, unit and campaign state, the processed-ids window, the
plain-query contract of the counter documents, and write volume."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date

import pytest
from aiokafka import TopicPartition
from prometheus_client import REGISTRY
from pymongo.asynchronous.database import AsyncDatabase

from metrics import folding
from metrics.folding import Folder, FoldLoop
from metrics.handlers import Listed, Projector, watermark_key
from metrics.projection import ALL_DAY, CounterSums, Delta, counter_id, increments, nonzero
from metrics.repository import Document, MetaRepository, Pending, ProjectionRepository, stream_db_name
from shared.consumer import Consumed, ProcessedEvents
from shared.contracts import registry as reg
from shared.envelope import Envelope, make_event
from shared.infra import FerretDB
from shared.mongo import connect
from shared.topics import REGISTRY_TOPIC, VISITS_TOPIC

pytestmark = [pytest.mark.mongo]

PROVINCE = ["QN"]
HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
SCHOOL = ["QN", "QN-HALONG", "QN-HALONG-THPT"]
GROUP = "metrics.projector"
END = 1_000_000  # a cut past the end of any stream here

Counters = dict[str, dict[str, int]]


@pytest.fixture
async def db(ferretdb: FerretDB, run_id: str) -> AsyncIterator[AsyncDatabase[Document]]:
    client = connect(ferretdb.url)
    name = f"metrics_proj_{run_id}"
    yield client[name]
    await client.drop_database(name)
    await client.drop_database(stream_db_name(name))
    await client.close()


@pytest.fixture
async def repo(db: AsyncDatabase[Document]) -> ProjectionRepository:
    repository = ProjectionRepository(db, 1)
    await repository.ensure_indexes()
    return repository


def projector_on(repo: ProjectionRepository, *, window: int = 20_000) -> Projector:
    """A projector as a (re)started process builds it: nothing in memory."""
    return Projector(repo, ProcessedEvents(repo.processed_events, GROUP, window=window))


def at_offsets(
    events: Sequence[Envelope], start: int = 0, partition: int = 0, topic: str = VISITS_TOPIC
) -> list[Consumed]:
    return [Consumed(e, topic, partition, start + i) for i, e in enumerate(events)]


def backlog(ev, n: int, prefix: str = "v") -> list[Envelope]:
    """Visits to three units over five days, with a correction every 10th and, every 11th, the
    visit republished by a relay three events later (same ce_id, later offset)."""
    out: list[Envelope] = []
    due: list[tuple[int, Envelope]] = []
    paths = (HALONG, VANDON, SCHOOL)
    for i in range(n):
        figures = ev.figures(paths[i % 3], date(2025, 7, 1 + i % 5), people=1 + i % 4, vneid=i % 2)
        visit = ev.visit(f"{prefix}{i}", figures)
        out.append(visit)
        if i % 10 == 5:
            out.append(ev.visit_corrected(f"{prefix}{i}", figures, ev.figures(VANDON, date(2025, 7, 9), people=7)))
        if i % 11 == 0:
            due.append((len(out) + 3, visit))
        while due and due[0][0] <= len(out):
            out.append(due.pop(0)[1])
    return out + [v for _, v in due]


def expected(events: Iterable[Consumed | Envelope]) -> Counters:
    """What the events add up to, per counter document, each ce_id once."""
    unique = {e.id: e for e in (c.envelope if isinstance(c, Consumed) else c for c in events)}
    sums = CounterSums()
    for e in unique.values():
        sums.add(increments(e.payload()))
    return {d: nonzero(fs) for d, fs in sums.docs.items() if nonzero(fs)}


async def stored(repo: ProjectionRepository) -> Counters:
    """Every counter document's non-zero fields by ``_id``, watermarks left out."""
    out: Counters = {}
    for row in await repo.all_counters():
        fields = nonzero(row["c"])
        if fields:
            out[counter_id(row["unit"], row["day"])] = fields
    return out


async def all_time(repo: ProjectionRepository, unit: str, field: str) -> int:
    return sum(r["c"].get(field, 0) for r in await repo.counters_all_time(unit))


async def processed_pairs(repo: ProjectionRepository, partition: int = 0) -> list[tuple[str, int]]:
    docs = await repo.processed_events.find({"partition": partition}).sort("first", 1).to_list()
    return [(i, o) for d in docs for i, o in zip(d["ids"], d["offsets"], strict=True)]


def writes() -> float:
    return REGISTRY.get_sample_value("bridge_projector_mongo_writes_total") or 0.0


def unit_moved(path: Sequence[str], previous: Sequence[str]) -> Envelope:
    payload = reg.UnitUpdated(
        code=path[-1],
        name="Trường THPT Hòn Gai",
        kind="school",
        parent_code=path[-2],
        path=list(path),
        previous_path=list(previous),
    )
    return make_event(reg.UNIT_UPDATED, payload, source="/registry", key=path[-1])


def registry_events(events: Sequence[Envelope], start: int = 0) -> list[Consumed]:
    return at_offsets(events, start, topic=REGISTRY_TOPIC)


def batches(stream: Sequence[Consumed], cuts: Sequence[int]) -> list[Sequence[Consumed]]:
    return [stream[lo:hi] for lo, hi in itertools.pairwise(cuts)]


# --- redelivery after a crash -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("applied", "redelivered", "ids_lost"),
    [
        # Everything written, nothing committed, and even the processed ids gone: the watermarks
        # alone keep the second pass, cut otherwise, from adding anything.
        ([0, 45, 90, END], [0, 7, 55, 56, END], True),
        # Written up to 90, committed up to 45: Kafka resumes at 45 (the first redelivered cut).
        ([0, 45, 90], [45, 46, 100, END], False),
        ([0, 13, 29, 64], [13, 64, 65, END], False),
    ],
)
async def test_redelivery_after_a_crash_before_the_commit_changes_nothing_however_batches_are_cut(
    ev, repo, applied, redelivered, ids_lost
) -> None:
    stream = at_offsets(backlog(ev, 120))
    assert len(stream) > 130
    crashed = projector_on(repo)
    for batch in batches(stream, applied):
        await crashed(batch)
    if ids_lost:
        await repo.processed_events.delete_many({})
    restarted = projector_on(repo)
    for batch in batches(stream, redelivered):
        await restarted(batch)
    want = expected(stream)
    assert await stored(repo) == want
    # Not vacuous: the days hold the 120 visits, and so do the units' all-time documents.
    assert sum(f.get("households_visited", 0) for d, f in want.items() if not d.endswith(f"|{ALL_DAY}")) == 120
    assert sum(f.get("households_visited", 0) for d, f in want.items() if d.endswith(f"|{ALL_DAY}")) == 120


@pytest.mark.parametrize("redelivered", [[30, 60, END], [30, 31, 75, END]], ids=["same cut", "other cuts"])
async def test_ids_recorded_by_a_batch_whose_counters_were_never_written_do_not_hide_its_redelivery(
    ev, repo, redelivered
) -> None:
    stream = at_offsets(backlog(ev, 80))
    crashed = projector_on(repo)
    await crashed(stream[:30])
    # The next batch got as far as storing its ids (they go first); the process died before
    # any counter changed, so offset 30 is where Kafka resumes.
    folded = await crashed.fold(Listed(stream[30:60]))
    await crashed.processed.record_ids(folded.fresh)
    stored_ids = {i for i, _ in await processed_pairs(repo)}
    assert {c.envelope.id for c in stream[30:60]} <= stored_ids
    assert await stored(repo) == expected(stream[:30])

    restarted = projector_on(repo)
    for batch in batches(stream, redelivered):
        await restarted(batch)
    assert await stored(repo) == expected(stream)
    # Each id is stored at the offset of its first copy only.
    pairs = await processed_pairs(repo)
    first_offsets: dict[str, int] = {}
    for c in stream:
        first_offsets.setdefault(c.envelope.id, c.offset)
    assert set(pairs) == set(first_offsets.items())


# --- republished copies ---------------------------------------------------------------------------


async def test_same_event_republished_at_a_later_offset_counts_once(ev, repo) -> None:
    visit = ev.visit("v-dup", ev.figures(HALONG, date(2025, 7, 2), people=5))
    projector = projector_on(repo)
    await projector(at_offsets([visit, visit]))  # a copy in the same batch
    await projector(at_offsets([visit], start=2))  # and in a later batch
    doc = counter_id("QN-HALONG", "2025-07-02")
    assert (await stored(repo))[doc]["people_supported"] == 5

    # A restarted process knows nothing in memory: the copy is recognised from the database.
    other = ev.visit("v-new", ev.figures(HALONG, date(2025, 7, 2), people=3))
    restarted = projector_on(repo)
    await restarted(at_offsets([visit, other], start=3))
    assert (await stored(repo))[doc]["people_supported"] == 8
    # Redelivered at its own offset it is the same record, not a copy; the watermarks absorb it.
    await projector_on(repo)(at_offsets([visit]))
    assert (await stored(repo))[doc]["people_supported"] == 8
    assert [o for i, o in await processed_pairs(repo) if i == visit.id] == [0]


async def test_the_processed_ids_of_every_assigned_partition_are_read_in_one_query(ev, repo) -> None:
    # Six partitions with history, then a process that is assigned them: each partition's ids are
    # read (a scan on FerretDB) with the first one needed, all six in one query, and a copy on any
    # of them is still recognised (confirmed by reading the stored id's document by ``_id``).
    visits = [ev.visit(f"v-p{p}", ev.figures(HALONG, date(2025, 7, 4), people=1)) for p in range(6)]
    await projector_on(repo)([c for p, v in enumerate(visits) for c in at_offsets([v], start=10, partition=p)])
    restarted = projector_on(repo)
    queries = 0
    find = repo.processed_events.find

    def counted_find(*args: object, **kwargs: object) -> object:
        nonlocal queries
        by_id = bool(args) and isinstance(args[0], dict) and set(args[0]) == {"_id"}
        queries += 0 if by_id else 1
        return find(*args, **kwargs)

    repo.processed_events.find = counted_find  # type: ignore[method-assign]
    try:
        restarted.assigned([TopicPartition(VISITS_TOPIC, p) for p in range(6)])
        copies = [c for p, v in enumerate(visits) for c in at_offsets([v], start=20, partition=p)]
        await restarted(copies)
        assert queries == 1
    finally:
        del repo.processed_events.find
    assert (await stored(repo))[counter_id("QN-HALONG", "2025-07-04")]["people_supported"] == 6


async def test_a_dead_lettered_event_released_counts_once_when_replayed_from_the_dlq(ev, repo) -> None:
    # The runner's single-event fallback: ids go first, the counters' write fails for good, the
    # event is dead-lettered and released; `dlq replay` publishes it again at a later offset.
    visit = ev.visit("v-dlq", ev.figures(HALONG, date(2025, 7, 3), people=4))
    first = at_offsets([visit], start=7)
    projector = projector_on(repo)
    folded = await projector.fold(Listed(first))
    await projector.processed.record_ids(folded.fresh)
    projector.forget()
    await projector.release(Listed(first))

    replayed = at_offsets([visit], start=12)
    restarted = projector_on(repo)  # nothing in memory: the release must be in the database
    await restarted(replayed)
    await restarted(replayed)  # and redelivered, it is still counted once
    assert (await stored(repo))[counter_id("QN-HALONG", "2025-07-03")]["people_supported"] == 4
    assert [o for i, o in await processed_pairs(repo) if i == visit.id] == [12]


async def test_team_counters_stored_among_the_units_move_apart_once_with_their_watermarks(ev, db, repo) -> None:
    mark = watermark_key(VISITS_TOPIC, 0)
    # As earlier code stored them: unit and team rows in one collection.
    await db["counts_g1"].insert_many(
        [
            {
                "_id": counter_id("QN-HALONG", "2025-07-02"),
                "unit": "QN-HALONG",
                "day": "2025-07-02",
                "people_supported": 5,
                "wm": {mark: 3},
            },
            {
                "_id": "team:T-HL|2025-07-02",
                "team": "T-HL",
                "day": "2025-07-02",
                "people_supported": 5,
                "wm": {mark: 3},
            },
        ]
    )
    meta = MetaRepository(db)
    await meta.split_team_counters()
    await meta.split_team_counters()  # recorded: a second start moves nothing
    assert [d["_id"] async for d in db["counts_g1"].find({})] == [counter_id("QN-HALONG", "2025-07-02")]
    assert [r["c"] async for r in repo.team_counters(["T-HL"], "2025-07-01", "2025-07-31")] == [{"people_supported": 5}]
    # The watermarks moved with it.
    moved = await repo.team_counts.find_one({"_id": "team:T-HL|2025-07-02"})
    assert moved is not None
    assert moved["wm"] == {mark: 3}


# --- replicas and zombies ---------------------------------------------------------------------------


def fetches(p0: Sequence[Consumed], p1: Sequence[Consumed], cuts0: list[int], cuts1: list[int]) -> list[list[Consumed]]:
    """Whole fetches of two partitions, each partition cut at its own offsets (empty ones left out)."""
    parts0, parts1 = batches(p0, cuts0), batches(p1, cuts1)
    both = ([*a, *b] for a, b in itertools.zip_longest(parts0, parts1, fillvalue=[]))
    return [f for f in both if f]


async def apply_like_the_runner(projector: Projector, fetch: Sequence[Consumed], failures: list[str]) -> None:
    """Fold once, write until it succeeds, forgetting the memory after each failure (what
    ``ConsumerRunner`` does): a replica whose watermarks keep moving gives up a round and retries."""
    folded = await projector.fold(Listed(fetch))
    for _ in range(10):
        try:
            await projector.write(folded)
            return
        except RuntimeError as exc:
            failures.append(str(exc))
            projector.forget()
            await asyncio.sleep(0.01)
    raise AssertionError(f"a fetch failed 10 times: {failures[-1]}")


def spread(ev) -> tuple[list[Consumed], list[Consumed], list[list[int]], list[list[int]]]:
    """Visits, corrections and republished copies over many documents, cut coarsely."""
    p0 = at_offsets(backlog(ev, 150, "a"), partition=0)
    p1 = at_offsets(backlog(ev, 90, "b"), partition=1)
    return p0, p1, [[*range(0, len(p0), 25)], [0, 7, 50, 51, 120]], [[*range(0, len(p1), 15)], [0, 40, 41]]


def contended(ev) -> tuple[list[Consumed], list[Consumed], list[list[int]], list[list[int]]]:
    """Every event on two documents, cut small: the replicas write the same documents all along."""
    p0, p1 = (
        at_offsets([ev.visit(f"{p}{i}", ev.figures(HALONG, date(2025, 7, 1 + i % 2))) for i in range(300)], partition=n)
        for n, p in enumerate("ab")
    )
    return p0, p1, [[*range(0, 301, 5)], [*range(0, 301, 4)]], [[*range(0, 301, 3)], [*range(0, 301, 7)]]


@pytest.mark.parametrize("shape", [spread, contended])
async def test_two_replicas_applying_the_same_stream_concurrently_count_each_event_once(
    ev, ferretdb: FerretDB, repo, shape
) -> None:
    p0, p1, cuts0, cuts1 = shape(ev)
    # Each replica is its own process: its own client (a pool of connections) and its own memory.
    clients = [connect(ferretdb.url, max_pool_size=8) for _ in range(2)]
    failures: list[str] = []
    try:
        replicas = [projector_on(ProjectionRepository(c[repo.counters.database.name], 1)) for c in clients]

        async def run(projector: Projector, plan: list[list[Consumed]]) -> None:
            for fetch in plan:
                await apply_like_the_runner(projector, fetch, failures)

        plans = [fetches(p0, p1, [*c0, END], [*c1, END]) for c0, c1 in zip(cuts0, cuts1, strict=True)]
        await asyncio.gather(*(run(p, plan) for p, plan in zip(replicas, plans, strict=True)))
    finally:
        for c in clients:
            await c.close()
    assert await stored(repo) == expected([*p0, *p1])
    assert all("watermarks kept moving" in f for f in failures)


async def test_a_zombie_that_writes_old_batches_after_the_new_owner_wrote_later_ones_does_not_double_count(
    ev, ferretdb: FerretDB, repo
) -> None:
    stream = at_offsets(backlog(ev, 60))
    zombie_client = connect(ferretdb.url, max_pool_size=8)
    try:
        zombie = projector_on(ProjectionRepository(zombie_client[repo.counters.database.name], 1))
        # The zombie fetched and folded two batches, then stalled; the partition moved on.
        stale = [await zombie.fold(Listed(stream[0:30])), await zombie.fold(Listed(stream[30:45]))]
        owner = projector_on(repo)
        await owner(stream[0:20])
        await owner(stream[20:])
        for folded in stale:
            await zombie.write(folded)
    finally:
        await zombie_client.close()
    assert await stored(repo) == expected(stream)


async def test_a_zombie_whose_chain_end_is_overtaken_by_the_owner_appends_only_what_the_chain_lacks(ev, repo) -> None:
    stream = at_offsets(backlog(ev, 60))
    owner = projector_on(repo)
    await owner(stream[:20])
    zombie_repo = ProjectionRepository(repo.counters.database, 1)
    appends = 0
    extend = zombie_repo.extend_chains

    async def overtaken(deltas: Sequence[Delta]) -> dict[str, int]:
        nonlocal appends
        appends += 1
        reached = await extend(deltas)
        if appends == 1:
            await owner(stream[20:])  # the owner appends right after the zombie read the chain's end
        return reached

    zombie_repo.extend_chains = overtaken  # type: ignore[method-assign]
    await projector_on(zombie_repo)(stream[:45])
    assert appends == 2  # the rest of its fetch, from the end it read, met the owner's delta there
    assert await stored(repo) == expected(stream)
    assert await repo.chains.count_documents({"starts": {"$ne": []}}) == 0  # everything folded


def pending_of(repo: ProjectionRepository, events: Sequence[Consumed]) -> list[Delta]:
    """The deltas a projector would write for ``events`` (one partition, every event fresh)."""
    sums = CounterSums()
    for c in events:
        sums.add(increments(c.envelope.payload()))
    key = watermark_key(events[0].topic, events[0].partition)
    return [Delta(key, events[0].offset, events[-1].offset + 1, {d: f for d, f in sums.docs.items() if f})]


async def append(repo: ProjectionRepository, deltas: Sequence[Delta]) -> None:
    await repo.extend_chains(await repo.put_deltas(deltas))


async def test_two_folders_of_the_same_chains_add_every_delta_once_whichever_reads_first(ev, repo) -> None:
    days = [date(2025, 7, 1 + i % 5) for i in range(60)]
    stream = at_offsets(
        [ev.visit(f"f{i}", ev.figures((HALONG, VANDON)[i % 2], d, people=1 + i % 3)) for i, d in enumerate(days)]
    )
    other = Folder(repo)
    mine_repo = ProjectionRepository(repo.counters.database, 1)
    mine = Folder(mine_repo)
    for lo, hi in ((0, 20), (20, 30)):
        await append(repo, pending_of(repo, stream[lo:hi]))
    # The other folder folds and deletes the chain right after this one read the chain's heads.
    read_heads = mine_repo.chain_heads

    async def heads_then_other_folds() -> list[Document]:
        heads = await read_heads()
        await other.fold_once()
        return heads

    mine_repo.chain_heads = heads_then_other_folds  # type: ignore[method-assign]
    assert await mine.fold_once() == 0  # its deltas were gone: nothing taken, nothing added
    mine_repo.chain_heads = read_heads  # type: ignore[method-assign]
    assert await stored(repo) == expected(stream[:30])
    # Now the other folds right after this one read the deltas: this one's conditions miss, so it
    # reads the watermarks and adds only what they lack (nothing).
    for lo, hi in ((30, 45), (45, 60)):
        await append(repo, pending_of(repo, stream[lo:hi]))
    read_deltas = mine_repo.chain_deltas

    async def deltas_then_other_folds(heads: Sequence[Document]) -> dict[str, list[Delta | None]]:
        deltas = await read_deltas(heads)
        await other.fold_once()
        return deltas

    mine_repo.chain_deltas = deltas_then_other_folds  # type: ignore[method-assign]
    assert await mine.fold_once() == 2
    assert await stored(repo) == expected(stream)
    assert await repo.deltas.count_documents({}) == 0


async def test_readers_see_pending_deltas_once_before_during_and_after_they_are_folded(ev, repo) -> None:
    stream = at_offsets([ev.visit(f"r{i}", ev.figures(HALONG, date(2025, 7, 2), people=2)) for i in range(30)])
    await append(repo, pending_of(repo, stream[:10]))
    await append(repo, pending_of(repo, stream[10:30]))
    doc = counter_id("QN-HALONG", "2025-07-02")
    assert (await stored(repo))[doc]["people_supported"] == 60  # nothing folded yet: all from the deltas
    assert await repo.counters.count_documents({}) == 0
    # Folded while a reader is between its read of the deltas and its read of the counters.
    pending = repo.pending

    async def pending_then_folded() -> Pending:
        deltas = await pending()
        await Folder(ProjectionRepository(repo.counters.database, 1)).fold_once()
        return deltas

    repo.pending = pending_then_folded  # type: ignore[method-assign]
    assert (await stored(repo))[doc]["people_supported"] == 60
    repo.pending = pending  # type: ignore[method-assign]
    assert (await stored(repo))[doc]["people_supported"] == 60
    assert await repo.deltas.count_documents({}) == 0
    raw = await repo.counters.find_one({"_id": doc})
    assert raw is not None
    assert (raw["people_supported"], raw["wm"]) == (60, {watermark_key(VISITS_TOPIC, 0): 29})


async def test_deltas_no_chain_names_are_swept_first_and_after_a_lost_append_only(ev, repo, monkeypatch) -> None:
    monkeypatch.setattr(folding, "SWEEP_EVERY", 2)
    stream = at_offsets([ev.visit(f"o{i}", ev.figures(VANDON, date(2025, 7, 5), people=2)) for i in range(40)])
    folder = Folder(repo)
    await repo.put_deltas(pending_of(repo, stream[3:6]))  # a writer killed before its append
    await append(repo, pending_of(repo, stream[0:10]))
    assert await folder.fold_once() == 1
    assert await repo.deltas.count_documents({}) == 0  # the first pass swept it
    await repo.put_deltas(pending_of(repo, stream[5:10]))  # another process's writer that lost
    for lo, hi in ((10, 20), (20, 30)):
        await append(repo, pending_of(repo, stream[lo:hi]))
        assert await folder.fold_once() == 1
    assert await repo.deltas.count_documents({}) == 1  # a steady stream's passes read no stray deltas
    folder.orphaned()
    await append(repo, pending_of(repo, stream[30:40]))
    assert await folder.fold_once() == 1
    assert await repo.deltas.count_documents({}) == 0
    assert await stored(repo) == expected(stream)


async def test_readers_asking_at_once_read_each_new_delta_once_and_all_see_it(ev, repo) -> None:
    stream = at_offsets([ev.visit(f"s{i}", ev.figures(HALONG, date(2025, 7, 4), people=1)) for i in range(40)])
    reader = ProjectionRepository(repo.counters.database, 1)  # another process's: it has none of them
    read: list[str] = []
    read_deltas = reader.read_deltas

    async def counted(ids: Sequence[str]) -> dict[str, Delta]:
        read.extend(ids)
        await asyncio.sleep(0.05)  # long enough for every request to ask while the read is under way
        return await read_deltas(ids)

    reader.read_deltas = counted  # type: ignore[method-assign]
    doc = counter_id("QN-HALONG", "2025-07-04")

    def adds(pending: Pending) -> int:
        return int(next(iter(pending.add_to({}, [doc])))["people_supported"])

    for lo, hi in ((0, 10), (10, 25)):
        await append(repo, pending_of(repo, stream[lo:hi]))
    seen = await asyncio.gather(*(reader.pending() for _ in range(20)))
    assert sorted(read) == sorted({i for p in seen for i in p.ids})
    assert len(read) == 2
    assert {adds(p) for p in seen} == {25}
    await append(repo, pending_of(repo, stream[25:40]))
    seen = await asyncio.gather(*(reader.pending() for _ in range(20)))
    assert len(read) == 3  # only the new one
    assert {adds(p) for p in seen} == {40}
    # Once folded, a reader's chains name none of them and it reads nothing more.
    await Folder(repo).fold_once()
    assert (await stored(reader))[doc]["people_supported"] == 40
    assert len(read) == 3


async def test_a_projector_told_it_caught_up_folds_at_once_instead_of_waiting_out_the_interval(ev, repo) -> None:
    stream = at_offsets([ev.visit(f"c{i}", ev.figures(HALONG, date(2025, 7, 3), people=1)) for i in range(30)])
    doc = counter_id("QN-HALONG", "2025-07-03")
    projector = projector_on(repo)
    projector.folding = FoldLoop(Folder(repo), interval=3600)

    async def in_counters() -> int:
        raw = await repo.counters.find_one({"_id": doc})
        return int(raw["people_supported"]) if raw else 0

    try:
        await projector.write(await projector.fold(Listed(stream[:10])))
        await projector.folding.next_pass()  # the first pass waits for nothing
        assert await in_counters() == 10
        projector.caught_up()  # nothing left to fold: the next pass keeps its interval
        await projector.write(await projector.fold(Listed(stream[10:])))
        second = asyncio.create_task(projector.folding.next_pass())
        await asyncio.sleep(0.5)
        assert not second.done()
        assert await in_counters() == 10
        assert (await stored(repo))[doc]["people_supported"] == 30  # readable meanwhile
        projector.caught_up()
        await asyncio.wait_for(second, 30)
        assert await in_counters() == 30
    finally:
        await projector.close()


async def test_a_fetch_partly_seen_on_one_partition_adds_the_rest_of_it_and_all_of_the_other(ev, repo) -> None:
    p0 = at_offsets([ev.visit(f"a{i}", ev.figures(HALONG, date(2025, 7, 9), people=2)) for i in range(20)], partition=0)
    p1 = at_offsets([ev.visit(f"b{i}", ev.figures(HALONG, date(2025, 7, 9), people=3)) for i in range(10)], partition=1)
    await projector_on(repo)(p0[:12])
    # Restarted: Kafka resumes partition 0 at an older commit, together with partition 1.
    await projector_on(repo)([*p0[5:], *p1])
    doc = counter_id("QN-HALONG", "2025-07-09")
    assert (await stored(repo))[doc]["people_supported"] == 70
    marks = await repo.marks([doc])
    assert marks[doc] == {watermark_key(VISITS_TOPIC, 0): 19, watermark_key(VISITS_TOPIC, 1): 9}


# --- unit and campaign state ---------------------------------------------------------------------


async def test_units_and_campaigns_keep_their_latest_state_even_when_an_older_event_is_applied_after(ev, repo) -> None:
    campaign = ev.campaign("C90", date(2025, 7, 1), date(2025, 9, 28), [("courses", "QN", 3)])
    retargeted = make_event(
        reg.CAMPAIGN_TARGETS_SET,
        reg.CampaignTargetsSet(code="C90", targets=[reg.Target(indicator="courses", unit_code="QN-VANDON", value=5)]),
        source="/registry",
        key="C90",
    )
    older = registry_events([ev.unit(PROVINCE), ev.unit(HALONG), ev.unit(VANDON), ev.unit(SCHOOL), campaign])
    newer = registry_events([unit_moved(["QN", "QN-VANDON", "QN-HALONG-THPT"], SCHOOL), retargeted], start=5)
    owner = projector_on(repo)
    await owner(older)
    await owner(newer)
    # A zombie, or a redelivery after a restart, applies the older events once more.
    await projector_on(repo)(older[3:])

    school = await repo.unit("QN-HALONG-THPT")
    assert school is not None
    assert school["name"] == "Trường THPT Hòn Gai"
    assert school["parent_code"] == "QN-VANDON"
    assert school["path"] == ["QN", "QN-VANDON", "QN-HALONG-THPT"]
    assert "wm" not in school
    stored_campaign = await repo.campaign("C90")
    assert stored_campaign is not None
    assert stored_campaign["name"] == "Cao điểm 90 ngày"
    assert stored_campaign["starts_on"] == "2025-07-01"
    assert [(t["indicator"], t["unit_code"], t["value"]) for t in stored_campaign["targets"]] == [
        ("courses", "QN-VANDON", 5)
    ]
    root = await repo.root_unit()
    assert root is not None
    assert root["_id"] == "QN"
    assert root["name"] == "Tỉnh Quảng Ninh"


async def test_a_unit_moved_to_another_parent_takes_its_whole_history_with_it(ev, repo) -> None:
    projector = projector_on(repo)
    await projector(registry_events([ev.unit(p) for p in (PROVINCE, HALONG, VANDON, SCHOOL)]))
    await projector(at_offsets([ev.visit(f"s{i}", ev.figures(SCHOOL, date(2025, 7, 2), people=4)) for i in range(3)]))
    await projector(at_offsets([ev.visit("h", ev.figures(HALONG, date(2025, 7, 2), people=1))], start=3))
    assert await all_time(repo, "QN-HALONG", "people_supported") == 13
    assert await all_time(repo, "QN-VANDON", "people_supported") == 0

    await projector(registry_events([unit_moved(["QN", "QN-VANDON", "QN-HALONG-THPT"], SCHOOL)], start=4))
    assert await all_time(repo, "QN-HALONG", "people_supported") == 1
    assert await all_time(repo, "QN-VANDON", "people_supported") == 12
    assert await all_time(repo, "QN", "people_supported") == 13
    in_july = await repo.counters_in_range("QN-VANDON", "2025-07-01", "2025-07-31")
    assert sum(r["c"].get("people_supported", 0) for r in in_july) == 12


# --- the processed-ids window -------------------------------------------------------------------


async def test_processed_ids_are_pruned_past_the_window_per_partition(ev, repo) -> None:
    projector = projector_on(repo, window=10)
    busy = [ev.visit(f"b{i}", ev.figures(HALONG, date(2025, 7, 1))) for i in range(24)]
    quiet = [ev.visit(f"q{i}", ev.figures(VANDON, date(2025, 7, 1))) for i in range(6)]
    for lo in range(0, 24, 8):
        await projector(at_offsets(busy[lo : lo + 8], start=lo, partition=0))
        if lo < 6:
            await projector(at_offsets(quiet[lo : lo + 3], start=lo, partition=1))
    await projector(at_offsets(quiet[3:], start=3, partition=1))

    # The busy partition keeps its two newest batches: dropping the older of them would leave
    # fewer than 10 ids. The quiet one keeps all of its 6, however busy the other is.
    busy_docs = await repo.processed_events.find({"partition": 0}).sort("first", 1).to_list()
    assert [len(d["ids"]) for d in busy_docs] == [8, 8]
    assert {i for i, _ in await processed_pairs(repo, 0)} == {e.id for e in busy[8:]}
    assert {i for i, _ in await processed_pairs(repo, 1)} == {e.id for e in quiet}

    # Memory holds what the database holds, not every id this replica ever read.
    assert projector.processed.cached() == 16 + 6

    # Copies of recent events are still recognised after a restart, on both partitions.
    restarted = projector_on(repo, window=10)
    await restarted(at_offsets([busy[20]], start=24, partition=0))
    await restarted(at_offsets([quiet[0]], start=6, partition=1))
    assert await all_time(repo, "QN-HALONG", "households_visited") == 24
    assert await all_time(repo, "QN-VANDON", "households_visited") == 6


async def test_one_fetch_prunes_every_partition_past_the_window_and_still_knows_its_copies(ev, repo) -> None:
    projector = projector_on(repo, window=4)
    first = [ev.visit(f"p{i}", ev.figures(HALONG, date(2025, 7, 1))) for i in range(16)]
    # Two fetches over two partitions each; the second takes both partitions past the window.
    await projector(at_offsets(first[0:4], partition=0) + at_offsets(first[4:8], partition=1))
    await projector(at_offsets(first[8:12], start=4, partition=0) + at_offsets(first[12:16], start=4, partition=1))

    docs = await repo.processed_events.find({}).sort([("partition", 1), ("first", 1)]).to_list()
    assert [(d["partition"], d["first"], d["last"]) for d in docs] == [(0, 4, 7), (1, 4, 7)]
    assert projector.processed.cached() == 8
    # Copies of events still inside the window, republished on their partitions, are skipped.
    await projector(at_offsets([first[9]], start=8, partition=0) + at_offsets([first[13]], start=8, partition=1))
    assert await all_time(repo, "QN-HALONG", "households_visited") == 16


async def test_a_batch_redelivered_with_the_same_cut_after_a_restart_does_not_shrink_the_window(ev, repo) -> None:
    visits = at_offsets([ev.visit(f"w{i}", ev.figures(HALONG, date(2025, 7, 1))) for i in range(16)])
    await projector_on(repo, window=10)(visits[:8])
    # Restarted before the commit: the same batch comes again, its ids document is stored already.
    restarted = projector_on(repo, window=10)
    await restarted(visits[:8])
    await restarted(visits[8:])
    # Dropping the older batch would leave 8 ids, fewer than the window: both stay.
    docs = await repo.processed_events.find({}).sort("first", 1).to_list()
    assert [(d["first"], d["last"]) for d in docs] == [(0, 7), (8, 15)]
    await projector_on(repo, window=10)(at_offsets([visits[6].envelope], start=16))
    assert await all_time(repo, "QN-HALONG", "households_visited") == 16


# --- the documented plain query ----------------------------------------------------------------


async def test_plain_query_aggregate_over_the_subtree_units_gives_the_repository_total(ev, repo) -> None:
    projector = projector_on(repo)
    await projector(registry_events([ev.unit(p) for p in (PROVINCE, HALONG, VANDON, SCHOOL)]))
    await projector(at_offsets(backlog(ev, 45)))
    await projector(at_offsets([ev.visit("tinh", ev.figures(PROVINCE, date(2025, 7, 3), people=11))], start=100))
    await projector(registry_events([ev.volunteer("V1", HALONG), ev.team("T1", "mobile", SCHOOL)], start=4))

    totals = {}
    for unit in ("QN", "QN-HALONG", "QN-VANDON", "QN-HALONG-THPT"):
        units = await repo.subtree(unit)
        cursor = await repo.counters.aggregate(
            [
                {"$match": {"unit": {"$in": units}, "day": ALL_DAY}},
                {"$group": {"_id": None, "p": {"$sum": "$people_supported"}}},
            ]
        )
        rows = await cursor.to_list()
        plain = rows[0]["p"] if rows else 0
        assert plain == await all_time(repo, unit, "people_supported"), unit
        totals[unit] = plain
    assert totals["QN"] == totals["QN-HALONG"] + totals["QN-VANDON"] + 11
    assert 0 < totals["QN-HALONG-THPT"] < totals["QN-HALONG"]


# --- write volume ----------------------------------------------------------------------------------


async def test_a_fetch_of_several_partitions_is_one_write_per_document_and_redelivery_is_harmless(ev, repo) -> None:
    p0 = at_offsets([ev.visit(f"a{i}", ev.figures(HALONG, date(2025, 7, 9), people=2)) for i in range(20)], partition=0)
    p1 = at_offsets([ev.visit(f"b{i}", ev.figures(HALONG, date(2025, 7, 9), people=3)) for i in range(10)], partition=1)
    before = writes()
    await projector_on(repo)([*p0, *p1])
    # The day's and the unit's all-time documents written once each, plus one insert of the processed
    # ids of both partitions.
    assert writes() - before == 3
    doc = counter_id("QN-HALONG", "2025-07-09")
    assert (await stored(repo))[doc]["people_supported"] == 70
    # After a restart, partition 1 comes again with more events.
    more = at_offsets([ev.visit(f"c{i}", ev.figures(HALONG, date(2025, 7, 9), people=1)) for i in range(5)], 10, 1)
    await projector_on(repo)([*p1, *more])
    assert (await stored(repo))[doc]["people_supported"] == 75


async def test_mongo_writes_grow_with_counters_touched_not_with_events(ev, repo) -> None:
    same_day = [ev.visit(f"s{i}", ev.figures(HALONG, date(2025, 7, 9), people=1)) for i in range(500)]
    before = writes()
    await projector_on(repo)(at_offsets(same_day))
    assert writes() - before == 3
    day_and_all = (counter_id("QN-HALONG", "2025-07-09"), counter_id("QN-HALONG", ALL_DAY))
    fields = {
        "households_visited": 500,
        "people_supported": 500,
        "people_supported_by_area_island": 500,
        "people_supported_by_area_total": 500,
        "households_by_area_island": 500,
        "households_by_area_total": 500,
        "people_supported_by_group_elderly": 500,
        "people_supported_by_group_total": 500,
    }
    assert (await stored(repo)) == dict.fromkeys(day_and_all, fields)


async def test_a_database_of_the_previous_layout_is_replayed_into_a_fresh_generation_once(db) -> None:
    # Layout 2: the projector raised the counters' watermarks to fetch offsets, not delta ends.
    await db["meta"].insert_many(
        [{"_id": "active", "generation": 1}, {"_id": "generations", "last": 1}, {"_id": "layout", "version": 2}]
    )
    old = {"_id": "QN|2025-07-02", "unit": "QN", "day": "2025-07-02", "people_supported": 5, "wm": {"k": 3}}
    await db["counts_g1"].insert_one(old)
    meta = MetaRepository(db)
    await meta.migrate_layout()
    await meta.migrate_layout()  # a second start (or replica) changes nothing more
    assert await meta.active_generation() == 2
    assert "counts_g1" not in await db.list_collection_names()
    assert await ProjectionRepository(db, 2).all_counters() == []


async def test_a_read_of_a_period_adds_only_the_pending_documents_of_its_units_days_and_teams(ev, repo) -> None:
    stream = at_offsets(
        [
            ev.visit("in", ev.figures(HALONG, date(2025, 7, 1), people=2, team="T-HL")),
            ev.visit("late", ev.figures(HALONG, date(2025, 7, 5), people=3, team="T-HL")),
            ev.visit("other", ev.figures(VANDON, date(2025, 7, 1), people=5)),
        ]
    )
    await append(repo, pending_of(repo, stream))
    await append(repo, pending_of(repo, registry_events([ev.volunteer("V1", HALONG)], start=0)))
    rows = await repo.counters_of(["QN-HALONG"], "2025-07-01", "2025-07-03")
    assert sorted((r["day"], r["c"].get("people_supported", 0), r["c"].get("volunteers", 0)) for r in rows) == [
        ("2025-07-01", 2, 0),
        ("state", 0, 1),
    ]
    teams = [r async for r in repo.team_counters(["T-HL"], "2025-07-04", "2025-07-31")]
    assert [(r["day"], r["c"]["people_supported"]) for r in teams] == [("2025-07-05", 3)]
    # No unit events here, so the tree is empty and a subtree is the unit alone.
    assert sum(r["c"].get("people_supported", 0) for r in await repo.counters_all_time("QN-HALONG")) == 5
