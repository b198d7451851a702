"""The campaign page (``GET /v1/campaign-page``) on the real broker and database: what it shows equals
the API, it needs no outside resource, and it signs in and scopes exactly as the API does.
The same page in a real Chromium: tests/test_campaign_page_browser.py."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from metrics.app import MetricsSettings, build_app
from metrics.page import COOKIE, PATH, number, pick_campaign
from metrics.service import local_today
from shared.testing import running_app, token

pytestmark = [pytest.mark.kafka, pytest.mark.mongo]

HALONG = ["QN", "QN-HALONG"]
VANDON = ["QN", "QN-VANDON"]
ADMIN = token("admin")


def scenario(ev: Any) -> list[Any]:
    """A campaign running today: a province target and one per commune, visits in both communes."""
    today = local_today()
    start = today - timedelta(days=20)
    events = [ev.unit(["QN"]), ev.unit(HALONG), ev.unit(VANDON)]
    events.append(
        ev.campaign(
            "PEAK90",
            start,
            start + timedelta(days=89),
            [
                ("households_visited", "QN", 40),
                ("households_visited", "QN-HALONG", 8),
                ("people_supported", "QN-VANDON", 30),
            ],
        )
    )
    for n in range(6):
        events.append(ev.visit(f"h{n}", ev.figures(HALONG, today - timedelta(days=n + 1), households=1, people=3)))
    for n in range(2):
        events.append(ev.visit(f"v{n}", ev.figures(VANDON, today - timedelta(days=2), households=2, people=4)))
    return events


class Rows(HTMLParser):
    """The ``data-*`` attributes of every target row, and all URLs the page refers to."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[dict[str, str]] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "tr" and "target" in found.get("class", "").split():
            self.targets.append({k.removeprefix("data-"): v for k, v in found.items() if k.startswith("data-")})
        self.urls += [v for k, v in found.items() if k in ("href", "src", "action")]


def parse(text: str) -> Rows:
    rows = Rows()
    rows.feed(text)
    return rows


async def wait_for_projection(client: httpx.AsyncClient, households: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = await client.get("/v1/summary", headers=ADMIN)
        if resp.status_code == 200 and resp.json()["households_visited"] == households:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the projection did not reach {households} households")


async def test_page_shows_units_indicators_targets_and_freshness_equal_to_the_api(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await send(settings, scenario(ev))
        await wait_for_projection(client, 10)
        resp = await client.get(PATH, headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in resp.headers["content-security-policy"]
        assert resp.headers["cache-control"] == "no-store"
        page = resp.text
        assert '<html lang="vi">' in page
        for name in ("Tỉnh Quảng Ninh", "Phường Hạ Long", "Đặc khu Vân Đồn", "Cao điểm 90 ngày"):
            assert name in page
        assert "Hộ gia đình được thăm" in page
        assert "Households visited" in page

        progress = (await client.get("/v1/campaigns/PEAK90/progress", headers=ADMIN)).json()
        risk = (await client.get("/v1/campaigns/PEAK90/risk", headers=ADMIN)).json()
        shown = {(t["indicator"], t["unit"]): t for t in parse(page).targets}
        assert set(shown) == {(t["indicator"], t["unit_code"]) for t in progress["targets"]}
        for t in progress["targets"]:
            row = shown[(t["indicator"], t["unit_code"])]
            assert (int(row["actual"]), int(row["target"])) == (t["actual"], t["target"])
            assert float(row["percent"]) == t["percent"]
            assert float(row["projected"]) == t["projected"]
        statuses = {(t["indicator"], t["unit_code"]): t["status"] for t in risk["targets"]}
        assert {k: v["status"] for k, v in shown.items()} == statuses
        # The province's own target comes first.
        assert parse(page).targets[0]["unit"] == "QN"
        assert shown[("households_visited", "QN-HALONG")]["actual"] == "6"

        # Indicators of the campaign window, and every commune in the table.
        assert re.search(r'data-key="households_visited"><div class="value">10<', page)
        assert 'data-unit="QN-HALONG"' in page
        assert 'data-unit="QN-VANDON"' in page
        # Freshness: every topic with its lag.
        freshness = (await client.get("/v1/freshness", headers=ADMIN)).json()
        for topic in freshness["topics"]:
            assert f'data-topic="{topic["topic"]}"' in page

        # Self-contained: every URL on the page is a path on this service.
        assert all(url.startswith(("/", "?", "#")) for url in parse(page).urls), parse(page).urls
        assert "<script" not in page
        assert "<link" not in page


async def test_token_link_signs_in_by_cookie_and_the_callers_unit_scope_applies(make_settings, ev, send) -> None:
    settings = make_settings(MetricsSettings)
    async with running_app(build_app(settings)) as client:
        await send(settings, scenario(ev))
        await wait_for_projection(client, 10)

        anonymous = await client.get(PATH)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        assert 'id="sign-in"' in anonymous.text
        assert "Đăng nhập" in anonymous.text
        bad = await client.get(PATH, params={"token": "not-a-jwt"})
        assert bad.status_code == 401
        assert 'id="sign-in-error"' in bad.text

        manager = token("manager", "QN-VANDON")["Authorization"].removeprefix("Bearer ")
        link = await client.get(PATH, params={"token": manager, "campaign": "PEAK90"})
        assert link.status_code == 303
        assert link.headers["location"] == f"{PATH}?campaign=PEAK90"
        # Values that mean something in a URL come back as the same values, not as new parameters.
        odd = {"campaign": "PEAK90", "unit": "Vân Đồn&campaign=X#top %zz+1"}
        moved = await client.get(PATH, params={"token": manager, **odd})
        assert moved.status_code == 303
        location = moved.headers["location"]
        assert location.startswith(f"{PATH}?")
        assert parse_qs(urlsplit(location).query, strict_parsing=True) == {k: [v] for k, v in odd.items()}
        cookie = link.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}={manager};")
        assert "HttpOnly" in cookie
        assert f"Path={PATH}" in cookie
        assert "SameSite=lax" in cookie
        assert 0 < int(re.search(r"Max-Age=(\d+)", cookie).group(1)) <= 12 * 3600  # type: ignore[union-attr]

        client.cookies.set(COOKIE, manager)
        own = await client.get(link.headers["location"])
        assert own.status_code == 200
        # Their own commune and only its target, as /v1/campaigns/PEAK90/progress gives them.
        assert re.search(r'<h1 id="unit-name">Đặc khu Vân Đồn', own.text)
        assert [(t["indicator"], t["unit"]) for t in parse(own.text).targets] == [("people_supported", "QN-VANDON")]
        other = await client.get(PATH, params={"unit": "QN-HALONG"})
        assert other.status_code == 403
        assert 'id="problem"' in other.text
        assert "QN-HALONG" in other.text
        client.cookies.clear()
        assert (await client.get(PATH)).status_code == 401


def test_numbers_read_the_same_in_vietnamese_and_english_and_the_running_campaign_is_chosen() -> None:
    assert number(12000) == "12\u202f000"
    assert number(56.25, 1) == "56,2" or number(56.25, 1) == "56,3"
    assert number(None) == "\u2013"
    today = local_today()
    iso = today.isoformat
    campaigns = [
        {"_id": "OLD", "starts_on": (today - timedelta(days=90)).isoformat(), "ends_on": iso()},
        {"_id": "NOW", "starts_on": (today - timedelta(days=5)).isoformat(), "ends_on": iso()},
        {"_id": "NEXT", "starts_on": (today + timedelta(days=5)).isoformat(), "ends_on": "9999-12-31"},
    ]
    assert pick_campaign(campaigns, today) == "NOW"
    assert pick_campaign(campaigns[2:], today) == "NEXT"
    assert pick_campaign([], today) is None
