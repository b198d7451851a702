"""Sends a :class:`~scripts.simulator.plan.Plan` to the services through their public REST APIs only.

Week by week, the way the field would: offline batches from devices, single records from a phone
with a flaky connection (re-sent with the same ``client_ref``), a typhoon week whose records arrive
after the campaign (one batch twice), then corrections and voids. Bounded concurrency throughout.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from scripts.simulator.plan import TYPHOON_WEEK, WEEKS, Course, Plan, Post, Team, Visit

T = TypeVar("T")
BATCH = 500
# How long the services that take records may need to hear of a merge, at scale 1.
KNOWN_WITHIN_SECONDS = 60.0
ROSTER_BATCH = 250
RETRYABLE = {502, 503, 504}
# How long one request keeps retrying "503 busy" answers before they count as failures.
BUSY_PATIENCE_SECONDS = 900.0


class DemoError(RuntimeError):
    """The system answered something the campaign replay cannot continue from."""


class Progress:
    """A plain stderr progress bar (a line per phase when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.phase = ""
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def set_phase(self, phase: str) -> None:
        self.phase = phase
        if self.enabled and not self.tty:
            print(f"demo: {phase} ({self.done} requests so far)", file=sys.stderr, flush=True)
        self.draw(force=True)

    def advance(self, n: int = 1) -> None:
        self.done += n
        self.draw()

    def draw(self, force: bool = False) -> None:
        if not (self.enabled and self.tty):
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        share = min(self.done / self.total, 1.0)
        bar = "#" * int(share * 30)
        line = f"\r[{bar:<30}] {share:4.0%} {self.done:>6} requests {now - self.started:5.1f}s  {self.phase:<34}"
        print(line, end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.draw(force=True)
            print(file=sys.stderr, flush=True)


@dataclass
class Stats:
    requests: int = 0
    retried_after_error: int = 0
    replays_answered_as_duplicate: int = 0
    batch_items: int = 0
    resolved_from_old_codes: int = 0  # records naming a merged unit, stored for its successor
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Api:
    """httpx clients for the four services, a concurrency limit and retries on transient failures."""

    def __init__(
        self,
        urls: Mapping[str, str | Sequence[str]],
        token: str,
        concurrency: int,
        progress: Progress,
        timeout: float = 60.0,
    ) -> None:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        headers = {"Authorization": f"Bearer {token}"}
        # Several URLs of one service are its replicas: requests go round-robin, and one that
        # cannot reach a replica (killed, restarting) is sent again to the next.
        self.replicas = {
            name: [
                httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits)
                for url in ([given] if isinstance(given, str) else given)
            ]
            for name, given in urls.items()
        }
        self.clients = {name: replicas[0] for name, replicas in self.replicas.items()}
        self._turn = itertools.count()
        self.gate = asyncio.Semaphore(concurrency)
        self.progress = progress
        self.stats = Stats()

    async def close(self) -> None:
        for replicas in self.replicas.values():
            for c in replicas:
                await c.aclose()

    async def until_known(
        self, services: Sequence[str], codes: Sequence[str], into: str, timeout: float = KNOWN_WITHIN_SECONDS
    ) -> None:
        """Wait until every replica of ``services`` stores records naming ``codes`` for ``into``."""
        deadline = time.monotonic() + timeout
        for service in services:
            for client in self.replicas[service]:
                for code in codes:
                    while not await _resolves(client, code, into):
                        if time.monotonic() > deadline:
                            raise DemoError(f"{service} at {client.base_url} does not resolve {code} to {into}")
                        await asyncio.sleep(0.2)

    async def call(
        self,
        service: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        ok: Sequence[int] = (200, 201, 202),
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        count: bool = True,
    ) -> httpx.Response:
        delay = 0.2
        lost = False  # a request sent again after its answer was lost may have been applied already
        # A service holding large writes (503 busy: too many at once, or its consumers behind) asks
        # for patience, not for giving up: those answers do not use up the attempts.
        patient_until = time.monotonic() + BUSY_PATIENCE_SECONDS
        attempt = -1
        while attempt < 7:
            attempt += 1
            try:
                replicas = self.replicas[service]
                client = replicas[next(self._turn) % len(replicas)]
                async with self.gate:
                    resp = await client.request(method, path, json=body, headers=headers, params=params)
            except httpx.TransportError as exc:
                if attempt == 7:
                    raise DemoError(f"{service} {method} {path}: {exc!r}") from exc
                resp = None
                lost = lost or not isinstance(exc, httpx.ConnectError)
            if resp is not None and resp.status_code in ok:
                resp.extensions["resent_after_lost_answer"] = lost
                if count:
                    self.stats.requests += 1
                    self.progress.advance()
                return resp
            # "busy" and "concurrent-change" conflicts ask the client to retry (a merge moving hundreds of teams).
            busy = (
                resp is not None
                and resp.status_code == 409
                and ("busy" in resp.text or "concurrent-change" in resp.text)
            )
            if resp is not None and resp.status_code not in RETRYABLE and not busy:
                raise DemoError(f"{service} {method} {path} -> {resp.status_code}: {resp.text[:500]}")
            self.stats.retried_after_error += 1
            if resp is not None and resp.status_code == 503 and "busy" in resp.text:
                if time.monotonic() < patient_until:
                    attempt -= 1
                await asyncio.sleep(float(resp.headers.get("retry-after", "2")))
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, 3.0)
        raise DemoError(f"{service} {method} {path}: still failing after retries")


async def _resolves(client: httpx.AsyncClient, code: str, into: str) -> bool:
    try:
        resp = await client.get(f"/v1/units/{code}")
    except httpx.TransportError:
        return True  # a replica that is down reads the database afresh when it starts
    return resp.status_code == 200 and resp.json().get("takes_records_as") == into


async def gather_all(items: Iterable[T], work: Callable[[T], Awaitable[Any]]) -> list[Any]:
    return list(await asyncio.gather(*(work(i) for i in items)))


def chunks(items: Sequence[T], size: int = BATCH) -> list[Sequence[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def estimate_requests(plan: Plan) -> int:
    """Roughly how many requests :class:`Replay` makes (for the progress bar): one pass over the plan."""
    vb: dict[tuple[str, int], int] = defaultdict(int)
    pb: dict[tuple[str, int], int] = defaultdict(int)
    n = len(plan.units) + len(plan.campaigns) + len(plan.teams) + 1
    n += -(-len(plan.volunteers) // ROSTER_BATCH) + -(-sum(v.retry for v in plan.volunteers) // ROSTER_BATCH)
    n += sum(v.leaves_on is not None for v in plan.volunteers)
    for v in plan.visits:
        if v.single:
            n += 1 + v.retry
        else:
            vb[(v.team, plan.week_of(v.visited_on))] += 1
        n += (1 + v.correction_retry if v.correction else 0) + bool(v.void_reason)
    for p in plan.posts:
        pb[(p.unit, plan.week_of(p.published_on))] += 1
        n += bool(p.void_reason)
    n += sum(-(-k // BATCH) for k in vb.values()) + len(plan.duplicate_visit_batches)
    n += sum(-(-k // BATCH) for k in pb.values()) + len(plan.duplicate_post_batches)
    for c in plan.courses:
        n += 1 + c.retry + bool(c.participants) + bool(c.sessions) + c.duplicate_session_upload
        n += len(c.marked_complete) + (c.completes or bool(c.cancel_reason))
    return n + 1


class Replay:
    """One replay of a plan. ``run()`` returns when every record has been sent and accepted."""

    def __init__(self, plan: Plan, api: Api, checkpoint: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.plan = plan
        self.api = api
        # Called between phases with the phase just finished ("registry", "week 3", ...): tests
        # kill and restart replicas there, while consumers are still working off that phase.
        self._checkpoint = checkpoint
        self.volunteer_ids: dict[int, str] = {}
        # Ids of the records corrected or voided later only: a province-wide replay sends half a million.
        self.visit_ids: dict[str, str] = {}
        self.post_ids: dict[str, str] = {}
        self.rejected: list[str] = []
        self._void_twice: str | None = None  # the post whose void is sent twice

    # --- registry ---------------------------------------------------------------------------------

    async def _unit(self, u: Any) -> None:
        body = {"code": u.code, "name": u.name, "kind": u.kind, "parent_code": u.parent}
        resp = await self.api.call("registry", "POST", "/v1/units", body, ok=(201, 409))
        if resp.status_code == 409:
            existing = (await self.api.call("registry", "GET", f"/v1/units/{u.code}", count=False)).json()
            if existing["name"] != u.name:
                raise DemoError(f"unit {u.code} exists with another name: {existing['name']}")

    async def registry(self) -> None:
        p = self.plan
        self.api.progress.set_phase("registry: units and campaigns")
        await self._unit(p.units[0])  # the province first: every other unit hangs below it
        await gather_all(p.units[1:], self._unit)
        for c in p.campaigns:
            resp = await self.api.call("registry", "POST", "/v1/campaigns", c.body(), ok=(201, 409))
            if resp.status_code == 409:
                raise DemoError(
                    f"campaign {c.code} exists: this system already holds a replay. Run `make clean-data` "
                    "(then `make run`), or replay alongside it with `--tag X`"
                )
        self.api.progress.set_phase("registry: teams")
        await gather_all(p.teams, self._team)
        for c in p.campaigns:
            await self.api.call("registry", "PUT", f"/v1/campaigns/{c.code}/targets", {"targets": c.targets})
        self.api.progress.set_phase("registry: volunteer rosters")
        # Volunteers arrive as the rosters the union's offices keep: one row per person with the
        # teams they join, a few hundred rows per upload.
        teams_of: dict[int, list[dict[str, str]]] = {}
        for t in p.teams:
            membership = {"code": t.code, "since": (t.since or p.day0).isoformat()}  # one dict per team
            for k in t.members:
                teams_of.setdefault(k, []).append(membership)
        prefix = f"roster-{p.seed}-{p.day0}-{p.campaigns[0].code}"

        def rows(keys: Sequence[int]) -> list[tuple[int, dict[str, Any]]]:
            # Made per upload: 300,000 roster rows at once would be most of the replay's memory.
            out = []
            for key in keys:
                v = p.volunteers[key]
                out.append((key, {**v.body(), "client_ref": f"{prefix}/{key}", "teams": teams_of.get(key, [])}))
            return out

        everyone = range(len(p.volunteers))
        await gather_all(chunks(everyone, ROSTER_BATCH), lambda keys: self._roster(rows(keys)))
        # Offices whose connection dropped before the answer send those rows again.
        resent = [v.key for v in p.volunteers if v.retry]
        await gather_all(chunks(resent, ROSTER_BATCH), lambda keys: self._roster(rows(keys), resend=True))

    async def _team(self, t: Team) -> None:
        await self.api.call("registry", "POST", "/v1/teams", t.body())
        if t.deactivate:
            # Created twice by mistake under another code; closing it keeps the record, not the count.
            await self.api.call("registry", "POST", f"/v1/teams/{t.code}:deactivate")

    async def _roster(self, part: Sequence[tuple[int, dict[str, Any]]], *, resend: bool = False) -> None:
        resp = await self.api.call("registry", "POST", "/v1/volunteers:import", {"items": [r for _, r in part]})
        want = {"duplicate"} if resend else {"created"}
        if resp.extensions.get("resent_after_lost_answer"):
            want.add("duplicate")  # the lost attempt created them
        for (key, r), got in zip(part, resp.json()["items"], strict=True):
            if got["status"] not in want or got["teams"] != [t["code"] for t in r["teams"]]:
                raise DemoError(f"roster row {r['client_ref']}: expected {want}, got {got}")
            if resend and got["id"] != self.volunteer_ids[key]:
                raise DemoError("a re-sent roster row created a second volunteer")
            self.volunteer_ids[key] = got["id"]
        if resend:
            self.api.stats.replays_answered_as_duplicate += len(part)

    async def _leave(self, key: int) -> None:
        v = self.plan.volunteers[key]
        assert v.leaves_on is not None
        body = {"left_on": v.leaves_on.isoformat()}
        await self.api.call("registry", "POST", f"/v1/volunteers/{self.volunteer_ids[key]}:leave", body)

    # --- visits and outreach ------------------------------------------------------------------------

    def _check_items(
        self, what: str, refs: Sequence[str], result: dict[str, Any], ids: dict[str, str], keep: Container[str]
    ) -> None:
        items = result["items"]
        if len(items) != len(refs):
            raise DemoError(f"{what}: {len(items)} results for {len(refs)} items")
        for ref, item in zip(refs, items, strict=True):
            self.api.stats.outcomes[f"{what}:{item['status']}"] += 1
            self.api.stats.batch_items += 1
            self.api.stats.resolved_from_old_codes += bool(item.get("resolved_from"))
            if item["status"] == "rejected":
                self.rejected.append(f"{what} {ref}: {item.get('problem')}")
            elif item.get("id") and ref in keep:
                ids[ref] = item["id"]

    async def _visit_batch(self, visits: Sequence[Visit], twice: bool) -> None:
        for part in chunks(visits):
            body = {"items": [v.body(self.volunteer_ids) for v in part]}
            refs = [v.client_ref for v in part]
            later = {v.client_ref for v in part if v.correction or v.void_reason}
            for attempt in range(2 if twice else 1):
                resp = await self.api.call("visits", "POST", "/v1/visits:batch", body)
                self._check_items("visit", refs, resp.json(), self.visit_ids, later)
                if attempt:
                    dup = sum(i["status"] == "duplicate" for i in resp.json()["items"])
                    self.api.stats.replays_answered_as_duplicate += dup

    async def _single_visit(self, v: Visit) -> None:
        body = v.body(self.volunteer_ids)
        resp = await self.api.call("visits", "POST", "/v1/visits", body)
        first = resp.json()["id"]
        if v.correction or v.void_reason:
            self.visit_ids[v.client_ref] = first
        if v.retry:
            again = await self.api.call("visits", "POST", "/v1/visits", body)
            if again.status_code != 200 or again.json()["id"] != first:
                raise DemoError(f"a re-sent visit ({v.client_ref}) was not recognised as the same record")
            self.api.stats.replays_answered_as_duplicate += 1

    async def _post_batch(self, posts: Sequence[Post], twice: bool) -> None:
        for part in chunks(posts):
            body = {"items": [p.body() for p in part]}
            refs = [p.client_ref for p in part]
            later = {p.client_ref for p in part if p.void_reason}
            for attempt in range(2 if twice else 1):
                resp = await self.api.call("visits", "POST", "/v1/outreach:batch", body)
                self._check_items("post", refs, resp.json(), self.post_ids, later)
                if attempt:
                    dup = sum(i["status"] == "duplicate" for i in resp.json()["items"])
                    self.api.stats.replays_answered_as_duplicate += dup

    def _visit_batches(self, visits: Iterable[Visit]) -> list[tuple[tuple[str, int], list[Visit]]]:
        groups: dict[tuple[str, int], list[Visit]] = defaultdict(list)
        for v in visits:
            groups[(v.team, self.plan.week_of(v.visited_on))].append(v)
        return sorted(groups.items())

    # --- training -----------------------------------------------------------------------------------

    async def _course(self, c: Course) -> None:
        created = (await self.api.call("training", "POST", "/v1/courses", c.body())).json()
        if c.retry:
            again = await self.api.call("training", "POST", "/v1/courses", c.body())
            if again.status_code != 200:
                raise DemoError(f"a re-sent course ({c.client_ref}) was created twice")
            self.api.stats.replays_answered_as_duplicate += 1
        if created["status"] == "pending":
            await self._until_scheduled(c.code)
        ids: dict[str, str] = {}
        for part in chunks(c.participants):
            resp = await self.api.call("training", "POST", f"/v1/courses/{c.code}/participants", {"items": list(part)})
            refs = [p["client_ref"] for p in part]
            self._check_items("participant", refs, resp.json(), ids, refs)
        pid = [ids.get(p["client_ref"], "") for p in c.participants]
        if c.sessions:
            items = []
            for s in c.sessions:
                attendance: dict[str, Any] = (
                    {"count": s.count} if s.count is not None else {"participant_ids": [pid[i] for i in s.roster or []]}
                )
                items.append(
                    {
                        "client_ref": s.client_ref,
                        "held_on": s.held_on.isoformat(),
                        "duration_minutes": s.duration_minutes,
                        "attendance": attendance,
                    }
                )
            for attempt in range(2 if c.duplicate_session_upload else 1):
                resp = await self.api.call("training", "POST", f"/v1/courses/{c.code}/sessions:batch", {"items": items})
                self._check_items("session", [s.client_ref for s in c.sessions], resp.json(), {}, ())
                if attempt:
                    self.api.stats.replays_answered_as_duplicate += len(items)
        for i in c.marked_complete:
            await self.api.call("training", "POST", f"/v1/courses/{c.code}/participants/{pid[i]}:complete")
        if c.cancel_reason:
            await self.api.call("training", "POST", f"/v1/courses/{c.code}:cancel", {"reason": c.cancel_reason})
        elif c.completes:
            body: dict[str, Any] = {"final_completions": c.final_completions}
            if c.counting == "head_count":
                body["final_participants"] = c.final_participants
            await self.api.call("training", "POST", f"/v1/courses/{c.code}:complete", body)

    async def _until_scheduled(self, code: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            course = (await self.api.call("training", "GET", f"/v1/courses/{code}", count=False)).json()
            if course["status"] != "pending":
                if course["status"] != "scheduled":
                    raise DemoError(f"course {code} became {course['status']}: {course.get('problem')}")
                return
            await asyncio.sleep(0.2)
        raise DemoError(f"course {code} stayed pending for {timeout:.0f}s (registry events not arriving?)")

    async def _until_no_pending(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            resp = await self.api.call("visits", "GET", path, params={"status": "pending", "limit": 1}, count=False)
            if not resp.json()["items"]:
                return
            await asyncio.sleep(0.3)
        raise DemoError(f"records stayed pending at {path} for {timeout:.0f}s")

    # --- the campaign -------------------------------------------------------------------------------

    async def _reached(self, phase: str) -> None:
        if self._checkpoint is not None:
            await self._checkpoint(phase)

    async def run(self) -> None:
        p = self.plan
        await self.registry()
        await self._reached("registry")
        for week in range(WEEKS):
            label = " (typhoon No. 3: field devices offline)" if week == TYPHOON_WEEK else ""
            self.api.progress.set_phase(f"week {week + 1}/{WEEKS}{label}")
            # Only this week's records are made: a province-wide plan is never held whole.
            visits = [v for v in p.in_week(p.visits, week, lambda v: v.visited_on) if not v.typhoon]
            jobs: list[Awaitable[Any]] = []
            for key, group in self._visit_batches(v for v in visits if not v.single):
                jobs.append(self._visit_batch(group, key in p.duplicate_visit_batches))
            jobs += [self._single_visit(v) for v in visits if v.single]
            posts: dict[tuple[str, int], list[Post]] = defaultdict(list)
            for post in p.in_week(p.posts, week, lambda x: x.published_on):
                posts[(post.unit, week)].append(post)
            jobs += [self._post_batch(g, k in p.duplicate_post_batches) for k, g in sorted(posts.items())]
            jobs += [self._course(c) for c in p.in_week(p.courses, week, lambda c: c.starts_on)]
            jobs += [
                self._leave(v.key) for v in p.volunteers if v.leaves_on is not None and p.week_of(v.leaves_on) == week
            ]
            del visits, posts
            await asyncio.gather(*jobs)
            del jobs
            if p.merge is not None and week == p.merge.after_week:
                await self._merge()
            await self._reached(f"week {week + 1}")
        self.api.progress.set_phase("late uploads from the typhoon week")
        late = [v for v in p.in_week(p.visits, TYPHOON_WEEK, lambda v: v.visited_on) if v.typhoon]
        await asyncio.gather(
            *(self._visit_batch(g, k in p.duplicate_visit_batches) for k, g in self._visit_batches(late))
        )
        del late
        self.api.progress.set_phase("corrections and voids")
        await self._until_no_pending("/v1/visits")
        await self._until_no_pending("/v1/outreach")
        fixes = [v for v in p.visits if v.correction or v.void_reason]
        await asyncio.gather(*(self._correct(v) for v in fixes if v.correction))
        await asyncio.gather(*(self._void_visit(v) for v in fixes if v.void_reason))
        voided = [x for x in p.posts if x.void_reason]
        self._void_twice = voided[0].client_ref if voided else None
        await asyncio.gather(*(self._void_post(x) for x in voided))
        if self.rejected:
            raise DemoError(f"{len(self.rejected)} records were rejected, e.g. {self.rejected[0]}")

    async def _merge(self) -> None:
        """The communes merge mid-campaign; their field devices keep sending the old codes."""
        m = self.plan.merge
        assert m is not None
        self.api.progress.set_phase(f"merging {', '.join(m.sources)} into {m.into}")
        body = {"sources": m.sources, "into": m.into}
        result = (await self.api.call("registry", "POST", "/v1/units:merge", body)).json()
        if [u["code"] for u in result["merged"]] != m.sources or result["successor"]["code"] != m.into:
            raise DemoError(f"merge answered {result}")
        # Field devices go on sending the old codes at once; wait until every replica of the
        # services that take records resolves them, as an office would check before announcing it.
        # Their read models may be behind by a bigger roster's registry events at a larger scale.
        timeout = KNOWN_WITHIN_SECONDS * max(1.0, self.plan.scale)
        await self.api.until_known(["visits", "training"], m.sources, m.into, timeout=timeout)

    async def _correct(self, v: Visit) -> None:
        path = f"/v1/visits/{self.visit_ids[v.client_ref]}:correct"
        for _ in range(2 if v.correction_retry else 1):
            await self.api.call("visits", "POST", path, v.body(self.volunteer_ids, corrected=True))

    async def _void_visit(self, v: Visit) -> None:
        await self.api.call(
            "visits", "POST", f"/v1/visits/{self.visit_ids[v.client_ref]}:void", {"reason": v.void_reason}
        )

    async def _void_post(self, post: Post) -> None:
        path = f"/v1/outreach/{self.post_ids[post.client_ref]}:void"
        await self.api.call("visits", "POST", path, {"reason": post.void_reason})
        if post.client_ref == self._void_twice:
            # Voiding twice is the same request arriving twice: it must change nothing.
            await self.api.call("visits", "POST", path, {"reason": post.void_reason})
