"""The folder: adds the projector's pending deltas into the counter documents, exactly once.

The projector makes a fetch visible with a few writes whatever the number of counter documents it
touches (one delta per partition, one chain append per partition: :mod:`metrics.repository`); the
counters catch up here, several fetches at a time, so a document touched by many fetches is
updated once per pass instead of once per fetch.

Exactly once, with any number of folders at a time (every replica's projector runs one):
- a pass reads each chain's unfolded deltas, adds their sums per counter document conditional on
  the document's watermark of each partition being before the chain's folded point, and raises it
  to the last offset of the pass's last delta of that partition, in the same atomic update;
- a document whose condition missed (another folder got there first, or part-way) has its
  watermarks read and exactly the deltas after them added, conditional on the watermarks read;
- only then is the chain's folded point raised and its deltas deleted, so a reader that finds a
  delta gone knows the counters it reads next include it.
"""

from __future__ import annotations

import asyncio
import contextlib

from prometheus_client import Counter

from metrics.projection import CounterSums, Delta, chain_sums, nonzero
from metrics.repository import MARKS, ProjectionRepository, marks_filter
from shared.logging import get_logger

log = get_logger(__name__)

FOLD_WRITES = Counter("bridge_folder_counter_writes", "Counter document updates issued by the metrics folder")
DELTAS_FOLDED = Counter("bridge_folder_deltas", "Projector deltas folded into the counters")
MAX_CONDITIONAL_ROUNDS = 5
# Deltas of one chain a pass takes at most: bounds a pass's memory and its time between chains' progress.
DELTAS_PER_PASS = 64
RETRY_SECONDS = 1.0
# A pass starts at most this often unless hurried: the longer the wait, the more fetches one pass
# adds up, so the fewer counter updates per event compete with the projector and the readers for
# the database (readers see the deltas meanwhile).
FOLD_INTERVAL_SECONDS = 1.0
# Passes between two sweeps of the deltas no chain names, at least.
SWEEP_EVERY = 100


class Folder:
    """Folds the pending deltas of one generation's projection into its counters."""

    def __init__(self, repo: ProjectionRepository) -> None:
        self.repo = repo
        self._passes = 0
        # Deltas no chain names are left by a writer whose append lost, or by a process killed between
        # its insert and its append. A sweep reads every delta (FerretDB narrows no other filter by an
        # index) under the stream database's write lock: run every 100 passes regardless, it held the
        # projector's writes for 1.6-2 s each time. So a process sweeps in its first pass, and again
        # only after its projector lost an append (``orphaned``), SWEEP_EVERY passes apart at least.
        self._sweep_due = True
        self._last_sweep = -SWEEP_EVERY

    def orphaned(self) -> None:
        """The projector left a delta no chain names: sweep in a coming pass."""
        self._sweep_due = True

    async def fold_once(self) -> int:
        """One pass over every chain; answers how many deltas it folded."""
        heads = await self.repo.chain_heads()
        chains = await self.repo.chain_deltas(heads)
        folded_at = {h["_id"]: int(h.get("folded", 0)) for h in heads}
        plan: dict[str, list[Delta]] = {}
        for key, chain in chains.items():
            taken = chain[:DELTAS_PER_PASS]
            # A delta gone since the heads were read was folded by another folder: read again next pass.
            if taken and all(d is not None for d in taken):
                plan[key] = [d for d in taken if d is not None]
        if not plan:
            return 0
        sums = CounterSums()
        keys_of: dict[str, list[str]] = {}
        for key, deltas in plan.items():
            for delta in deltas:
                sums.add(delta.rows)
                for doc_id in delta.rows:
                    if key not in keys_of.setdefault(doc_id, []):
                        keys_of[doc_id].append(key)
        changes = sums.docs
        last = {key: deltas[-1].end - 1 for key, deltas in plan.items()}
        guards = {d: {f"{MARKS}.{k}": {"$not": {"$gte": folded_at[k]}} for k in keys} for d, keys in keys_of.items()}
        todo = {d: nonzero(fields) for d, fields in changes.items()}
        for _ in range(MAX_CONDITIONAL_ROUNDS):
            missed = await self.repo.add_counts(todo, guards, last)
            FOLD_WRITES.inc(len(todo))
            if not missed:
                break
            # Some documents already hold part of this pass: add exactly the deltas they lack.
            log.info("folder_exact_path", documents=len(missed))
            marks = await self.repo.marks(missed)
            todo, guards = {}, {}
            for d in missed:
                mine = marks.get(d, {})
                todo[d] = nonzero(chain_sums((x for k in keys_of[d] for x in plan[k]), d, mine))
                guards[d] = marks_filter({k: mine.get(k) for k in keys_of[d]})
        else:
            raise RuntimeError("counter watermarks kept moving; another folder is writing the same documents")
        self._passes += 1
        sweep = self._sweep_due and self._passes - self._last_sweep >= SWEEP_EVERY
        await asyncio.gather(
            *(self.repo.folded(key, ds[-1].end, [d.start for d in ds], sweep=sweep) for key, ds in plan.items())
        )
        if sweep:
            self._sweep_due, self._last_sweep = False, self._passes
        n = sum(len(d) for d in plan.values())
        DELTAS_FOLDED.inc(n)
        return n


class FoldLoop:
    """Runs the folder in the background after the projector's writes, one pass at a time.

    A pass takes every delta written before it starts, so writes that arrive during a pass are folded
    together by the next one. ``behind`` counts the writes since the current pass started, which the
    projector holds at a bound so the pending deltas (and what each read adds up) stay bounded.
    """

    def __init__(self, folder: Folder, *, interval: float = FOLD_INTERVAL_SECONDS) -> None:
        self.folder = folder
        self.behind = 0
        self._interval = interval
        self._last_start = -interval
        self._hurry = asyncio.Event()
        self._again = False
        self._task: asyncio.Task[None] | None = None
        self._pass_done: asyncio.Future[None] | None = None

    def kick(self) -> None:
        """Make sure a pass starts after everything written so far."""
        self._again = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="metrics-folder")

    def hurry(self) -> None:
        """Start the next pass without waiting for the interval, if there is one to run."""
        if self._again:
            self._hurry.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._again:
            wait = self._last_start + self._interval - loop.time()
            if wait > 0 and not self._hurry.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), wait)
            self._hurry.clear()
            self._last_start = loop.time()
            self._again = False
            self.behind = 0
            try:
                await self.folder.fold_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("folder_pass_failed", error=str(exc) or type(exc).__name__)
                self._again = True
                await asyncio.sleep(RETRY_SECONDS)
            finally:
                done, self._pass_done = self._pass_done, None
                if done is not None and not done.done():
                    done.set_result(None)

    async def next_pass(self) -> None:
        """Wait until the pass running now (if any) ends."""
        if self._task is None or self._task.done():
            return
        if self._pass_done is None:
            self._pass_done = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._pass_done)

    async def settle(self) -> None:
        """Wait until every write so far is folded (tests, and a projector called directly)."""
        while self._task is not None and not self._task.done():
            self.hurry()
            await asyncio.wait({self._task})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
