"""The seven-week campaign as data: every unit, team, volunteer, visit, post and course, decided up front.

:func:`build_plan` is pure and deterministic for a seed, scale and "today"; the driver sends the plan
to the services and :mod:`scripts.simulator.truth` counts it by DOMAIN.md's rules, so the figures the
metrics service reports can be checked against an independent tally.

The scale multiplies teams, volunteers and records; the province keeps its communes, so at 100x a
commune has a hundred times the teams. Units, teams and volunteers are held in memory. Visits, posts
and courses are not: each comes from a shard (a team's week of visits, a channel's week of posts, a
block of courses) with its own seeded generator, made again on every pass over the plan, so a
province-wide campaign of half a million records is never held at once. Every count that matters
(households, voids, courses, posts) is divided among the shards exactly, so the ground truth stays exact.
"""

from __future__ import annotations

import functools
import random
import uuid
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from scripts.simulator import names as vn

if TYPE_CHECKING:
    from scripts.simulator.truth import Tally

R = TypeVar("R")

WEEKS = 7
TYPHOON_WEEK = 2  # typhoon No. 3: field devices stay offline; their records arrive after the campaign

# The article's figures at scale 1 (DOMAIN.md); the rest of the plan derives from them.
PERMANENT_TEAMS = 55
PERMANENT_MEMBERS = 2392
MOBILE_TEAMS = 67
HOUSEHOLDS = 1440
SHIFTS_PER_PERMANENT_TEAM = 22
LITERACY_TEAMS = 54
YOUTH_COURSES = 151
ELDERLY_COURSES = 110
SHINING_RED_TEAMS = 55
GREEN_SUMMER_TEAMS = 6
IT_VOLUNTEERS = 520
FANPAGE_POSTS = 780
NEWSPAPER_ARTICLES = 97
VISUAL_POSTS = 2000


@dataclass(slots=True)
class Unit:
    code: str
    name: str
    kind: str
    parent: str | None
    area: str

    @property
    def path(self) -> tuple[str, ...]:
        return (self.code,) if self.parent is None else (self.parent, self.code)


@dataclass(slots=True)
class Volunteer:
    key: int
    unit: str
    full_name: str
    birth_year: int
    roles: list[str]
    skills: list[str]
    phone: str | None = None
    email: str | None = None
    leaves_on: date | None = None
    retry: bool = False  # the registration is sent twice with the same Idempotency-Key

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "full_name": self.full_name,
            "birth_year": self.birth_year,
            "unit_code": self.unit,
            "roles": self.roles,
            "skills": self.skills,
        }
        if self.phone:
            out["phone"] = self.phone
        if self.email:
            out["email"] = self.email
        return out


@dataclass(slots=True)
class Team:
    code: str
    name: str
    kind: str
    unit: str
    base: str | None = None
    campaign: str | None = None
    members: list[int] = field(default_factory=list)
    since: date | None = None
    deactivate: bool = False

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "name": self.name, "kind": self.kind, "unit_code": self.unit}
        if self.base:
            out["base"] = self.base
        if self.campaign:
            out["campaign_code"] = self.campaign
        return out


@dataclass(slots=True)
class Visit:
    client_ref: str
    team: str
    unit: str
    visited_on: date
    setting: str
    area: str
    household_ref: str | None
    households: int
    people: dict[str, int]
    services: dict[str, int]
    volunteers: list[int]
    typhoon: bool = False
    single: bool = False  # sent alone (POST /v1/visits) rather than in an offline batch
    retry: bool = False  # sent again with the same client_ref, as after a lost response
    correction: dict[str, Any] | None = None  # new people/services replacing the recorded ones
    correction_retry: bool = False
    void_reason: str | None = None

    def body(self, volunteer_ids: dict[int, str], *, corrected: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_ref": self.client_ref,
            "team_code": self.team,
            "unit_code": self.unit,
            "visited_on": self.visited_on.isoformat(),
            "setting": self.setting,
            "area": self.area,
            "households": self.households,
            "people": self.people,
            "services": self.services,
            "volunteer_ids": [volunteer_ids[k] for k in self.volunteers],
        }
        if self.household_ref:
            out["household_ref"] = self.household_ref
        if corrected and self.correction:
            out.update(self.correction)
        return out

    @property
    def figures(self) -> tuple[int, dict[str, int], dict[str, int]]:
        """households, people and services as they finally count (after any correction)."""
        c = self.correction or {}
        return self.households, c.get("people", self.people), c.get("services", self.services)


@dataclass(slots=True)
class Post:
    client_ref: str
    unit: str
    team: str | None
    channel: str
    published_on: date
    title: str
    url: str | None
    void_reason: str | None = None

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_ref": self.client_ref,
            "unit_code": self.unit,
            "channel": self.channel,
            "published_on": self.published_on.isoformat(),
            "title": self.title,
        }
        if self.team:
            out["team_code"] = self.team
        if self.url:
            out["url"] = self.url
        return out


@dataclass(slots=True)
class Session:
    client_ref: str
    held_on: date
    duration_minutes: int
    count: int | None = None  # head count
    roster: list[int] | None = None  # indexes into the course's participants


@dataclass(slots=True)
class Course:
    client_ref: str
    code: str
    title: str
    team: str
    unit: str
    audience: str
    mode: str
    topics: list[str]
    starts_on: date
    ends_on: date
    counting: str  # roster | head_count
    capacity: int | None = None
    participants: list[dict[str, Any]] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    marked_complete: list[int] = field(default_factory=list)
    final_participants: int | None = None
    final_completions: int | None = None
    completes: bool = False
    cancel_reason: str | None = None
    retry: bool = False  # the create request is sent twice with the same client_ref
    duplicate_session_upload: bool = False

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "client_ref": self.client_ref,
            "code": self.code,
            "title": self.title,
            "team_code": self.team,
            "unit_code": self.unit,
            "audience": self.audience,
            "mode": self.mode,
            "topics": self.topics,
            "starts_on": self.starts_on.isoformat(),
            "ends_on": self.ends_on.isoformat(),
        }
        if self.capacity is not None:
            out["capacity"] = self.capacity
        return out


@dataclass
class Campaign:
    code: str
    name: str
    starts_on: date
    ends_on: date
    targets: list[dict[str, Any]] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "name": self.name,
            "starts_on": self.starts_on.isoformat(),
            "ends_on": self.ends_on.isoformat(),
        }


@dataclass
class Merge:
    """Communes merged mid-campaign, as the 2025 reform did: ``sources`` into ``into``."""

    sources: list[str]
    into: str
    after_week: int  # 0-based: the merge is made once this week's records are sent


class Shards(Generic[R]):
    """Records made shard by shard on every pass and never all held at once.

    ``keys`` are ``(week, key)``: every record ``make(key)`` returns belongs to that week (visited,
    published or started in it), so a replay can send a week's records without making the others.
    """

    def __init__(self, keys: Sequence[tuple[int, Any]], make: Callable[[Any], list[R]], size: int) -> None:
        self.keys = keys
        self.make = make
        self.size = size

    def __iter__(self) -> Iterator[R]:
        for _, key in self.keys:
            yield from self.make(key)

    def week(self, week: int) -> Iterator[R]:
        for w, key in self.keys:
            if w == week:
                yield from self.make(key)

    def __len__(self) -> int:
        return self.size

    def __contains__(self, item: object) -> bool:
        return any(item == r for r in self)


@dataclass
class Plan:
    seed: int
    scale: float
    today: date
    day0: date
    units: list[Unit]
    campaigns: list[Campaign]
    teams: list[Team]
    volunteers: list[Volunteer]
    visits: Collection[Visit]
    posts: Collection[Post]
    courses: Collection[Course]
    duplicate_visit_batches: set[tuple[str, int]] = field(default_factory=set)
    duplicate_post_batches: set[tuple[str, int]] = field(default_factory=set)
    merge: Merge | None = None
    # The ground truth, counted once while the plan was built (it needs a whole pass over the records).
    truth: Tally | None = field(default=None, repr=False, compare=False)
    _by_code: dict[str, Unit] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def last_day(self) -> date:
        return self.day0 + timedelta(days=WEEKS * 7 - 1)

    def unit(self, code: str) -> Unit:
        if len(self._by_code) != len(self.units):
            self._by_code = {u.code: u for u in self.units}
        return self._by_code[code]

    def week_of(self, day: date) -> int:
        return (day - self.day0).days // 7

    def in_week(self, records: Collection[R], week: int, day: Callable[[R], date]) -> Iterator[R]:
        """The records whose ``day`` falls in ``week``, without making other weeks' shards."""
        if isinstance(records, Shards):
            yield from records.week(week)
        else:
            yield from (r for r in records if self.week_of(day(r)) == week)

    def path(self, code: str) -> tuple[str, ...]:
        """The unit's path in the tree as it stands at the end (a merged unit hangs below its successor)."""
        m = self.merge
        if m is not None and code in m.sources:
            return (*self.unit(m.into).path, code)
        return self.unit(code).path

    def current_unit(self, code: str) -> str:
        """Where a team or volunteer of ``code`` belongs at the end: the successor of a merged unit."""
        m = self.merge
        return m.into if m is not None and code in m.sources else code

    def stored_unit(self, code: str, sent_week: int | None) -> str:
        """The unit a record naming ``code`` is stored for, sent in week ``sent_week`` (None: after the
        seven weeks): a merged unit's code sent after the merge resolves to its successor."""
        m = self.merge
        if m is None or code not in m.sources or (sent_week is not None and sent_week <= m.after_week):
            return code
        return m.into

    def targets_now(self, campaign: Campaign) -> list[dict[str, Any]]:
        """The campaign's targets after the merge: a merged unit's added into its successor's."""
        m = self.merge
        if m is None:
            return campaign.targets
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for t in campaign.targets:
            unit = self.current_unit(t["unit_code"])
            row = out.setdefault((t["indicator"], unit), {"indicator": t["indicator"], "unit_code": unit, "value": 0})
            row["value"] += t["value"]
            if unit != t["unit_code"]:
                row.setdefault("merged_from", []).append(t["unit_code"])
        return list(out.values())


class _Gen:
    """The random choices behind one plan: a seeded generator for the plan's skeleton, and one per shard."""

    def __init__(self, seed: int, scale: float, today: date, tag: str) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.scale = scale
        self.today = today
        self.day0 = today - timedelta(days=WEEKS * 7)
        self.tag = tag
        # Lists drawn from a handful of values are shared, not copied per volunteer (300,000 at 100x).
        self._interned: dict[tuple[str, ...], list[str]] = {}

    def n(self, full: int) -> int:
        return max(1, round(full * self.scale))

    def shard_rng(self, *parts: object) -> random.Random:
        # A string seed is hashed with SHA-512: the same on every run, whatever PYTHONHASHSEED.
        return random.Random("/".join(map(str, (self.seed, *parts, self.tag))))

    def uuid(self, rng: random.Random | None = None) -> str:
        return str(uuid.UUID(int=(rng or self.rng).getrandbits(128), version=4))

    def day(self, first: int = 0, last: int = WEEKS * 7 - 1, rng: random.Random | None = None) -> date:
        return self.day0 + timedelta(days=(rng or self.rng).randint(first, last))

    def person(self, rng: random.Random | None = None) -> tuple[str, bool]:
        r = rng or self.rng
        female = r.random() < 0.55
        middle = r.choice(vn.MIDDLE_F if female else vn.MIDDLE_M)
        given = r.choice(vn.GIVEN_F if female else vn.GIVEN_M)
        return f"{r.choice(vn.FAMILY)} {middle} {given}", female

    def code(self, *parts: str) -> str:
        return "-".join(p for p in (*parts, self.tag) if p)

    def interned(self, values: list[str]) -> list[str]:
        return self._interned.setdefault(tuple(values), values)


def _units() -> list[Unit]:
    root, root_name = vn.PROVINCE
    units = [Unit(root, root_name, "province", None, "urban")]
    units += [Unit(f"{root}-{vn.slug(n)}", f"Phường {n}", "ward", root, "urban") for n in vn.WARDS]
    units += [Unit(f"{root}-{vn.slug(n)}", f"Xã {n}", "commune", root, area) for n, area in vn.COMMUNES]
    units += [Unit(f"{root}-{vn.slug(n)}", f"Đặc khu {n}", "special_zone", root, "island") for n in vn.SPECIAL_ZONES]
    units += [Unit(f"{root}-{c}", name, "school", root, "urban") for c, name in vn.SCHOOLS]
    assert len({u.code for u in units}) == len(units), "unit codes must be unique"
    return units


def _spread(total: int, buckets: int) -> list[int]:
    return [total // buckets + (1 if i < total % buckets else 0) for i in range(buckets)]


def _share(total: int, i: int, n: int) -> int:
    """Part ``i`` of ``total`` cut into ``n`` near-equal parts, evenly placed; the parts add up to ``total``."""
    return (i + 1) * total // n - i * total // n


def _nth(base: str, k: int) -> str:
    """The code fragment of a unit's ``k``-th team of a kind: "TT", then "TT2", "TT3", ..."""
    return base if k == 0 else f"{base}{k + 1}"


def _numbered(name: str, k: int) -> str:
    return name if k == 0 else f"{name} (số {k + 1})"


@dataclass(frozen=True)
class _VisitShard:
    """One team's visits in one week: ``n`` visits, of which ``corrections`` are corrected later and
    ``voids`` (others) voided."""

    team: int  # index into plan.teams
    week: int
    n: int
    corrections: int
    voids: int
    serial: int  # unique per shard: makes household refs unique


def build_plan(seed: int = 7, scale: float = 1.0, today: date | None = None, tag: str = "") -> Plan:
    """The whole campaign for ``seed`` and ``scale``, over the seven weeks that end yesterday."""
    from scripts.simulator.clock import local_today

    if not 0 < scale <= 1000:
        raise ValueError(f"scale {scale} is outside (0, 1000]")
    g = _Gen(seed, scale, today or local_today(), tag)
    rng = g.rng
    units = _units()
    local = [u for u in units if u.kind in ("ward", "commune", "special_zone")]
    schools = [u for u in units if u.kind == "school"]
    province = units[0]
    volunteers: list[Volunteer] = []

    def volunteer(unit: str, roles: list[str], skills: list[str], young: bool = False) -> int:
        name, _ = g.person()
        birth = rng.randint(g.today.year - 24, g.today.year - 18) if young else rng.randint(1975, g.today.year - 18)
        v = Volunteer(len(volunteers), unit, name, birth, g.interned(roles), g.interned(skills))
        if rng.random() < 0.5:
            v.phone = f"+84 9{rng.randint(10, 99)} {rng.randint(100, 999)} {rng.randint(100, 999)}"
        volunteers.append(v)
        return v.key

    campaigns = [
        Campaign(
            g.code("PEAK90"), "Cao điểm 90 ngày hỗ trợ dịch vụ công trực tuyến", g.day0, g.day0 + timedelta(days=89)
        ),
        Campaign(
            g.code("PEAK30"),
            "Cao điểm 30 ngày đêm “Bình dân học vụ số”",
            g.day0 + timedelta(days=7),
            g.day0 + timedelta(days=36),
        ),
    ]

    # --- teams and their members -------------------------------------------------------------------
    # Each kind of team goes round its units; past one per unit (scale > 1) a unit's next team of
    # the kind is numbered: QN-HATU-TT, QN-HATU-TT2, ...
    teams: list[Team] = []
    permanent_hosts = [province, *local]
    n_permanent = g.n(PERMANENT_TEAMS)
    per_team = _spread(g.n(PERMANENT_MEMBERS), n_permanent)
    permanent_in: dict[str, list[Team]] = {}
    for j, size in enumerate(per_team):
        u, k = permanent_hosts[j % len(permanent_hosts)], j // len(permanent_hosts)
        where = "tỉnh Quảng Ninh" if u.kind == "province" else u.name.lower()[0] + u.name[1:]
        t = Team(
            g.code(u.code, _nth("TT", k)),
            _numbered(f"Đội thanh niên tình nguyện thường trực {u.name}", k),
            "permanent",
            u.code,
            base=f"Trung tâm Phục vụ hành chính công {where}",
            since=g.day0 - timedelta(days=rng.randint(0, 20)),
        )
        for _ in range(max(1, size)):
            skills = [s for s, p in (("vneid", 0.8), ("it", 0.3), ("media", 0.1)) if rng.random() < p]
            t.members.append(volunteer(u.code, rng.choice([["union_member"], ["union_member", "youth"]]), skills))
        teams.append(t)
        permanent_in.setdefault(u.code, []).append(t)

    # The article's mobile teams visit remote, border and island areas only: several per such unit,
    # crewed from the unit's permanent teams in turn.
    field_units = [u for u in local if u.area in ("island", "border", "remote")]
    per_unit = _spread(g.n(MOBILE_TEAMS), len(field_units))
    mobile_units = [(u, k) for u, n in zip(field_units, per_unit, strict=True) for k in range(n)]
    mobile: list[Team] = []
    crews = random.Random(f"{seed}/mobile-crews")
    for i, (u, k) in enumerate(mobile_units):
        t = Team(g.code(u.code, f"CD{i + 1}"), f"Đội hình lưu động số {i + 1} {u.name}", "mobile", u.code)
        t.since = g.day0 - timedelta(days=crews.randint(0, 7))
        hosts = permanent_in.get(u.code, [])
        pool = hosts[k % len(hosts)].members[3:] if hosts else []
        size = crews.randint(4, 7)
        t.members = crews.sample(pool, min(size, len(pool)))
        while len(t.members) < 2:
            t.members.append(volunteer(u.code, ["youth"], ["vneid"]))
        teams.append(t)
        mobile.append(t)
    first = mobile_units[0][0]
    mistaken = Team(
        g.code(first.code, "CD1B"),
        f"Đội hình lưu động số 1 {first.name} (nhập trùng)",
        "mobile",
        first.code,
        deactivate=True,
    )
    teams.append(mistaken)

    literacy: list[Team] = []
    for j in range(g.n(LITERACY_TEAMS)):
        u, k = local[j % len(local)], j // len(local)
        t = Team(
            g.code(u.code, _nth("BDHVS", k)),
            _numbered(f"Tổ công nghệ số cộng đồng {u.name}", k),
            "literacy",
            u.code,
            since=g.day0,
        )
        for _ in range(rng.randint(3, 6)):
            roles = rng.choice([["lecturer"], ["student", "union_member"], ["union_member"]])
            t.members.append(volunteer(u.code, roles, ["teaching", *(["it"] if rng.random() < 0.5 else [])]))
        teams.append(t)
        literacy.append(t)

    campaign_teams: list[Team] = []
    shining_hosts = [*local, province]
    for j in range(g.n(SHINING_RED_TEAMS)):
        u, k = shining_hosts[j % len(shining_hosts)], j // len(shining_hosts)
        campaign_teams.append(
            Team(
                g.code(u.code, _nth("TSD", k)),
                _numbered(f"Đội Thắp sáng đỏ {u.name}", k),
                "campaign",
                u.code,
                campaign=campaigns[0].code,
            )
        )
    for i in range(g.n(GREEN_SUMMER_TEAMS)):
        s = schools[i % len(schools)]
        campaign_teams.append(
            Team(
                g.code(s.code, f"MHX{i + 1}"),
                f"Đội Mùa hè xanh số {i + 1} - {s.name}",
                "campaign",
                s.code,
                campaign=campaigns[1].code,
            )
        )
    for t, size in zip(campaign_teams, _spread(g.n(IT_VOLUNTEERS), len(campaign_teams)), strict=True):
        t.since = g.day0
        for _ in range(max(1, size)):
            roles = ["student"] if t.unit.startswith("QN-DH") else rng.choice([["youth", "student"], ["union_member"]])
            t.members.append(volunteer(t.unit, roles, ["it", *(["vneid"] if rng.random() < 0.6 else [])], young=True))
        teams.append(t)

    for v in rng.sample(volunteers, max(1, len(volunteers) // 40)):
        v.retry = True
    # Leavers: permanent members who never appear on a visit (so no visit refers to a former volunteer).
    permanent = [t for t in teams if t.kind == "permanent"]
    on_visits = {k for t in mobile for k in t.members} | {k for t in permanent for k in t.members[:3]}
    candidates = [k for t in permanent for k in t.members if k not in on_visits]
    for k in rng.sample(candidates, min(len(candidates), g.n(12))):
        volunteers[k].leaves_on = g.day(21, WEEKS * 7 - 1)

    # --- visits: one shard per team and week -------------------------------------------------------
    index_of = {t.code: i for i, t in enumerate(teams)}
    # Extra household visits turn out to be duplicates and are voided, leaving the reported figure.
    household_voids, centre_voids = g.n(10), g.n(12)
    plans: list[tuple[Team, int, int]] = []  # (team, visits, voids) over the seven weeks
    households = _spread(g.n(HOUSEHOLDS) + household_voids, len(mobile))
    plans += [
        (t, n, _share(household_voids, i, len(mobile))) for i, (t, n) in enumerate(zip(mobile, households, strict=True))
    ]
    shifts = _spread(g.n(PERMANENT_TEAMS * SHIFTS_PER_PERMANENT_TEAM), len(permanent))
    plans += [
        (t, n, _share(centre_voids, i, len(permanent))) for i, (t, n) in enumerate(zip(permanent, shifts, strict=True))
    ]
    total_visits = sum(n for _, n, _ in plans)
    n_shards = len(plans) * WEEKS
    corrections = max(1, total_visits // 50)
    shards: list[tuple[int, _VisitShard]] = []
    for i, (t, n, voids) in enumerate(plans):
        for w in range(WEEKS):
            # Rotated, so the weeks that get one visit more differ from team to team.
            slot = (w + i) % WEEKS
            number = len(shards)
            size, voided = _share(n, slot, WEEKS), _share(voids, slot, WEEKS)
            if voided > size:  # every team has about 22 visits, so this would be a bug in the shares
                raise AssertionError(f"visit shard {t.code} week {w}: {voided} voids among {size} visits")
            # Corrections are not an article figure: a shard too small for its share drops it.
            fixed = min(_share(corrections, number, n_shards), size - voided)
            shards.append((w, _VisitShard(index_of[t.code], w, size, fixed, voided, number)))
    unit_area = {u.code: u.area for u in units}

    def make_visits(shard: _VisitShard) -> list[Visit]:
        return _visits(g, teams[shard.team], shard, unit_area[teams[shard.team].unit])

    visits = Shards(shards, make_visits, total_visits)

    # --- outreach posts: one shard per channel and week ------------------------------------------------
    campaign_team_of: dict[str, str] = {}
    for t in campaign_teams:
        campaign_team_of.setdefault(t.unit, t.code)
    post_keys: list[tuple[int, tuple[str, int, int, int]]] = []
    n_posts = 0
    for channel, full, voided in (
        ("fanpage", FANPAGE_POSTS, 4),
        ("newspaper", NEWSPAPER_ARTICLES, 1),
        ("visual", VISUAL_POSTS, 6),
    ):
        count, extra = g.n(full), g.n(voided)
        n_posts += count + extra
        for w in range(WEEKS):
            post_keys.append((w, (channel, w, _share(count + extra, w, WEEKS), _share(extra, w, WEEKS))))

    def make_posts(key: tuple[str, int, int, int]) -> list[Post]:
        return _posts(g, key, province, local, campaign_team_of)

    posts = Shards(post_keys, make_posts, n_posts)

    # --- courses: each from its own generator, in blocks by the week they start ----------------------
    n_youth, n_elderly, n_cancel = g.n(YOUTH_COURSES), g.n(ELDERLY_COURSES), g.n(3)
    audiences = ["youth_children"] * n_youth + ["elderly_middle_aged"] * n_elderly
    audiences += [rng.choice(["youth_children", "elderly_middle_aged"]) for _ in range(n_cancel)]
    by_week: list[list[int]] = [[] for _ in range(WEEKS)]
    for i in range(len(audiences)):
        by_week[(_course_start(g, g.shard_rng("course", i)) - g.day0).days // 7].append(i)
    course_keys = [(w, tuple(ids[b : b + 100])) for w, ids in enumerate(by_week) for b in range(0, len(ids), 100)]

    def make_courses(ids: tuple[int, ...]) -> list[Course]:
        return [_course(g, i, audiences[i], literacy[i % len(literacy)], i >= n_youth + n_elderly) for i in ids]

    courses = Shards(course_keys, make_courses, len(audiences))

    plan = Plan(seed, scale, g.today, g.day0, units, campaigns, teams, volunteers, visits, posts, courses)
    if not tag:
        # A replay beside an earlier one (--tag) shares its tree, which an earlier replay merged already.
        plan.merge = _merge(plan, [s for _, s in shards])
    _duplicates(plan, rng, [s for _, s in shards], [province, *local])
    _targets(plan)
    return plan


def _people_and_services(rng: random.Random, total: int) -> tuple[dict[str, int], dict[str, int]]:
    elderly = rng.randint(0, total)
    people = {
        "total": total,
        "elderly": elderly,
        "women": rng.randint(0, total),
        "veterans": rng.randint(0, min(1, elderly)),
    }
    installed = rng.randint(0, total)
    services = {
        "vneid_installed": installed,
        "vneid_activated": rng.randint(0, installed),
        "online_applications_l3": rng.randint(0, 2),
        "online_applications_l4": rng.randint(0, 2),
        "digital_skills_guidance": rng.randint(0, total),
    }
    return people, services


def _visits(g: _Gen, t: Team, shard: _VisitShard, area: str) -> list[Visit]:
    rng = g.shard_rng("visits", t.code, shard.week)
    first, last = shard.week * 7, shard.week * 7 + 6
    out: list[Visit] = []
    for j in range(shard.n):
        if t.kind == "mobile":
            people, services = _people_and_services(rng, rng.choices([1, 2, 3, 4, 5, 6], [10, 20, 25, 25, 12, 8])[0])
            v = Visit(
                g.uuid(rng),
                t.code,
                t.unit,
                g.day(first, last, rng),
                "household",
                area,
                f"hh-{shard.serial:07x}{j:03x}-{rng.getrandbits(24):06x}",
                1,
                people,
                services,
                rng.sample(t.members, min(2, len(t.members))),
                typhoon=shard.week == TYPHOON_WEEK,
            )
        else:
            people, services = _people_and_services(rng, rng.randint(3, 10))
            helpers = rng.sample(t.members[:3], min(len(t.members), rng.randint(1, 2)))
            v = Visit(
                g.uuid(rng), t.code, t.unit, g.day(first, last, rng), "service_centre", area, None, 0, people, services,
                helpers,
            )  # fmt: skip
        if not v.typhoon and rng.random() < 0.03:
            v.single = True
            v.retry = rng.random() < 0.4
        out.append(v)
    order = list(range(shard.n))
    rng.shuffle(order)
    for i in order[: shard.corrections]:
        fixed = out[i]
        total = max(1, fixed.people["total"] + rng.choice([-2, -1, 1, 2]))
        people, services = _people_and_services(rng, total)
        fixed.correction = {"people": people, "services": services}
        fixed.correction_retry = rng.random() < 0.3
    for i in order[shard.corrections : shard.corrections + shard.voids]:
        out[i].void_reason = rng.choice(
            ["Ghi trùng với phiếu của đội khác", "Nhập nhầm đơn vị", "Hộ gia đình đã được ghi nhận"]
        )
    return out


def _posts(
    g: _Gen, key: tuple[str, int, int, int], province: Unit, local: list[Unit], campaign_team_of: dict[str, str]
) -> list[Post]:
    channel, week, n, voided = key
    rng = g.shard_rng("posts", channel, week)
    out: list[Post] = []
    for i in range(n):
        u = province if channel == "newspaper" and rng.random() < 0.6 else rng.choice(local)
        title = rng.choice(vn.POST_TITLES[channel]).format(u=u.name)
        slug = _url_slug(u.name)
        url = {
            "fanpage": f"https://www.facebook.com/tuoitre.{slug}/posts/{rng.randint(10**9, 10**10)}",
            "newspaper": f"https://baoquangninh.vn/{slug}-{rng.randint(10**6, 10**7)}.html",
            "visual": f"https://www.tiktok.com/@tuoitre.{slug}/video/{rng.randint(10**9, 10**10)}",
        }[channel]
        day = g.day(week * 7, week * 7 + 6, rng)
        post = Post(g.uuid(rng), u.code, campaign_team_of.get(u.code), channel, day, title, url)
        if i >= n - voided:
            post.void_reason = "Đăng nhầm trang"
        out.append(post)
    return out


@functools.cache
def _url_slug(name: str) -> str:
    return vn.slug(name).lower()


def _course_start(g: _Gen, rng: random.Random) -> date:
    """The first draw of a course's generator: its start, which places it in a week's shard."""
    return g.day(0, WEEKS * 7 - 4, rng)


def _course(g: _Gen, i: int, audience: str, t: Team, cancelled: bool) -> Course:
    rng = g.shard_rng("course", i)
    youth = audience == "youth_children"
    starts = _course_start(g, rng)
    ends = starts + timedelta(days=rng.randint(3, 14))
    roster = rng.random() < (0.25 if youth else 0.5)
    c = Course(
        client_ref=f"tab-{t.code}/{g.uuid(rng)[:8]}/{i}",
        code=g.code(f"K{i + 1:03d}", vn.slug(t.unit)[:10]),
        title=rng.choice(vn.YOUTH_TITLES if youth else vn.ELDERLY_TITLES),
        team=t.code,
        unit=t.unit,
        audience=audience,
        mode="online" if rng.random() < 0.15 else "in_person",
        topics=["digital_skills", "online_safety"] if youth else ["vneid", "online_public_services"],
        starts_on=starts,
        ends_on=ends,
        counting="roster" if roster else "head_count",
        retry=rng.random() < 0.03,
    )
    last_day = g.today - timedelta(days=1)
    held_days = sorted(
        {
            starts + timedelta(days=rng.randint(0, (ends - starts).days))
            for _ in range(rng.randint(2, 5 if not roster else 4))
        }
    )
    held_days = [d for d in held_days if d <= last_day] or [starts]
    if roster:
        size = rng.randint(30, 60) if youth else rng.randint(20, 50)
        for j in range(size):
            name, _female = g.person(rng)
            group = rng.choice(["child", "youth"]) if youth else rng.choice(["elderly", "middle_aged"])
            born = rng.randint(2008, 2018) if youth else rng.randint(1945, 1985)
            c.participants.append(
                {"client_ref": f"{c.client_ref}/p/{j}", "display_name": name, "birth_year": born, "group": group}
            )
        c.capacity = size + 10
        for k, d in enumerate(held_days):
            present = sorted(rng.sample(range(size), rng.randint(size * 2 // 3, size)))
            c.sessions.append(Session(f"{c.client_ref}/s/{k}", d, rng.choice([90, 120, 150]), roster=present))
        c.marked_complete = sorted(rng.sample(range(size), min(size, 3)))
        c.final_completions = max(len(c.marked_complete), round(size * rng.uniform(0.7, 0.95)))
    else:
        mean = 73 if youth else 61
        for k, d in enumerate(held_days):
            count = max(5, int(rng.gauss(mean, mean * 0.25)))
            c.sessions.append(Session(f"{c.client_ref}/s/{k}", d, rng.choice([60, 90, 120]), count=count))
        largest = max(s.count or 0 for s in c.sessions)
        c.final_participants = max(0, largest + rng.randint(-5, 12))
        c.final_completions = round(c.final_participants * rng.uniform(0.7, 0.95))
    c.completes = ends <= last_day
    c.duplicate_session_upload = rng.random() < 0.05
    if cancelled:
        c.cancel_reason = "Bão số 3: lớp học tạm dừng"
        c.completes = False
        if i % 3 == 0:
            c.sessions, c.participants, c.marked_complete = [], [], []
    return c


def _merge(plan: Plan, shards: list[_VisitShard]) -> Merge | None:
    """Two communes with mobile teams and typhoon-week records merge after week 4: their offline
    devices keep sending the old code, and the typhoon week's records arrive after the merge."""
    late = {plan.teams[s.team].unit for s in shards if s.week == TYPHOON_WEEK and s.n > 0}
    mobile = sorted({t.unit for t in plan.teams if t.kind == "mobile"} & late)
    communes = [c for c in mobile if plan.unit(c).kind == "commune"]
    if len(communes) < 2:
        return None
    return Merge(sources=[communes[1]], into=communes[0], after_week=3)


def _duplicates(plan: Plan, rng: random.Random, shards: list[_VisitShard], post_units: list[Unit]) -> None:
    """Pick the offline batches a flaky connection uploads twice (a batch with nothing but single
    visits in it is never sent, so its pick changes nothing)."""
    mobile = {t.code for t in plan.teams if t.kind == "mobile"}
    batches = sorted((plan.teams[s.team].code, s.week) for s in shards if s.n > 0)
    late = [b for b in batches if b[1] == TYPHOON_WEEK and b[0] in mobile]
    chosen = rng.sample(batches, max(1, len(batches) // 20)) + late[: max(1, len(late) // 3)]
    plan.duplicate_visit_batches = set(chosen)
    post_batches = [(u.code, w) for u in post_units for w in range(WEEKS)]
    plan.duplicate_post_batches = set(rng.sample(post_batches, max(1, len(post_batches) // 25)))


def _targets(plan: Plan) -> None:
    """Per-commune and province targets, set from the plan so the campaigns look attainable."""
    from scripts.simulator.truth import tally

    facts = tally(plan)
    plan.truth = facts
    p90, p30 = plan.campaigns
    units = [plan.units[0].code, *sorted({t.unit for t in plan.teams if t.kind in ("mobile", "literacy")})]
    for campaign, indicators, stretch in (
        (p90, ("households_visited", "people_supported", "vneid_installs"), 90 / 49),
        (p30, ("courses", "course_participants"), 1.1),
    ):
        for unit in units:
            for indicator in indicators:
                actual = facts.total(indicator, unit=unit, first=campaign.starts_on, last=campaign.ends_on)
                campaign.targets.append(
                    {"indicator": indicator, "unit_code": unit, "value": max(1, round(actual * stretch, -1))}
                )
