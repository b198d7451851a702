"""``make demo``: replay the seven-week Quảng Ninh campaign against a running ``make run``.

Everything goes through the services' public REST APIs. At the end the script prints its own ground
truth (the plan counted by DOMAIN.md's rules) beside the metrics service's ``GET /v1/summary`` and
exits non-zero if any indicator differs. ``--scale 0.05`` replays the same campaign, smaller;
``--scale 100`` the province-wide rollout (the same communes, a hundred times the teams and records).

    make demo                                  # the article's figures (about 20 000 records)
    make demo ARGS="--seed 3 --scale 0.1 --out /tmp/demo.json"
    make demo ARGS="--scale 10"                # about 200 000 records
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx

from scripts.run import REPO, SERVICES, _state
from scripts.simulator.closing import WeekCloser
from scripts.simulator.driver import Api, DemoError, Progress, Replay, estimate_requests
from scripts.simulator.plan import TYPHOON_WEEK, Plan, build_plan
from scripts.simulator.truth import Tally, campaign_actuals, flatten, tally
from shared.auth import issue_token
from shared.settings import DEV_JWT_SECRET

MIN_SCALE, MAX_SCALE = 0.05, 100.0
# What the article reports (DOMAIN.md), shown beside the replayed figures.
ARTICLE = {
    "teams.permanent": "55",
    "teams.mobile": "67",
    "teams.literacy": "54",
    "teams.campaign": "55 + 6",
    "households_visited": "1,440",
    "people_supported": "12,000+",
    "courses.youth_children": "151",
    "courses.elderly_middle_aged": "110",
    "courses.total": "261",
    "course_participants.total": "17,000+",
    "outreach_posts.fanpage": "~780",
    "outreach_posts.newspaper": "97",
    "outreach_posts.visual": "~2,000",
    # Breakdowns the article quotes: all 1,440 households were in remote, border and island areas;
    # its 500+ IT volunteers are those of the campaign teams, a part of everyone with the skill.
    "households_by_area.total": "1,440",
    "volunteers_by_skill.it": "500+",
    "team_members.permanent": "2,380+",
}


@dataclass
class DemoResult:
    plan: Plan
    truth: Tally
    expected: dict[str, int]
    reported: dict[str, int]
    baseline: dict[str, int]
    seconds: float
    requests: int
    stats: dict[str, Any]
    progress: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    progress_expected: dict[str, dict[str, int]] = field(default_factory=dict)
    # The province's report for the last full week: its period, how its totals differ from the
    # ground truth over that week, and the XLSX as the metrics service made it.
    report_week: tuple[str, str] | None = None
    report_differences: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    report_xlsx: bytes = b""
    report_filename: str = ""
    # Closing the weeks (#21): the ISO weeks closed as the replay went, per closed week how its revised
    # figures differ from the ground truth, the late records of the typhoon week's ISO weeks, and the
    # province's narrative of the last closed week.
    closed_weeks: list[str] = field(default_factory=list)
    closing_differences: dict[str, dict[str, tuple[int, int | None]]] = field(default_factory=dict)
    typhoon_adjustments: dict[str, int] = field(default_factory=dict)
    narrative_week: str = ""
    narrative_md: str = ""
    narrative_html: str = ""

    @property
    def differences(self) -> dict[str, tuple[int, int]]:
        return {k: (v, self.reported.get(k, 0)) for k, v in self.expected.items() if self.reported.get(k, 0) != v}

    @property
    def progress_differences(self) -> list[str]:
        out = []
        for code, rows in self.progress.items():
            expected = self.progress_expected.get(code, {})
            for row in rows:
                key = f"{row['indicator']}@{row['unit_code']}"
                if key in expected and expected[key] != row["actual"]:
                    out.append(f"{code} {key}: truth {expected[key]}, metrics {row['actual']}")
        return out


def default_urls(data_dir: Path = REPO / ".data") -> dict[str, str]:
    """The running ``make run`` (its ``.data/run.json``), else the default ports."""
    urls = {s.name: f"http://127.0.0.1:{s.default_port}" for s in SERVICES}
    urls.update(_state(data_dir).get("services", {}))
    return urls


async def fetch_summary(client: httpx.AsyncClient, unit: str = "QN") -> dict[str, int]:
    resp = await client.get("/v1/summary", params={"unit": unit})
    if resp.status_code == 404:
        return flatten({})  # the province is not known yet: a fresh system
    resp.raise_for_status()
    return flatten(resp.json())


async def wait_for_metrics(
    client: httpx.AsyncClient, expected: dict[str, int], timeout: float = 60.0
) -> dict[str, int]:
    """Poll the summary until it equals ``expected``, or until it stops changing after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: dict[str, int] = {}
    stable_since = time.monotonic()
    while True:
        current = await fetch_summary(client)
        if current == expected:
            return current
        if current != last:
            last, stable_since = current, time.monotonic()
        if time.monotonic() > deadline and time.monotonic() - stable_since > 3.0:
            return current
        await asyncio.sleep(0.5)


async def run_demo(
    urls: Mapping[str, str | Sequence[str]],
    token: str,
    *,
    seed: int = 7,
    scale: float = 1.0,
    tag: str = "",
    concurrency: int = 16,
    show_progress: bool = True,
    metrics_timeout: float = 60.0,
    checkpoint: Callable[[str], Awaitable[None]] | None = None,
) -> DemoResult:
    plan = build_plan(seed, scale, tag=tag)
    truth = tally(plan)
    progress = Progress(estimate_requests(plan), enabled=show_progress)
    api = Api(urls, token, concurrency, progress)
    started = time.monotonic()
    try:
        metrics = api.clients["metrics"]
        baseline = await fetch_summary(metrics)
        fresh = not any(baseline.values())
        closer = WeekCloser(api.call, plan.units[0].code, plan.day0, lambda code: len(plan.path(code)) - 1)

        async def reached(phase: str) -> None:
            # A fresh system closes each ISO week once the replay has passed its Sunday.
            if fresh and phase.startswith("week "):
                progress.set_phase(f"closing the weeks up to {phase}")
                await closer.after(plan.day0 + timedelta(days=7 * int(phase.split()[1]) - 1))
            if checkpoint is not None:
                await checkpoint(phase)

        await Replay(plan, api, reached).run()
        progress.set_phase("waiting for the metrics to catch up")
        truth_flat = flatten(truth.summary())
        # Current-state and dated figures of earlier replays (another --tag) stay in the totals.
        expected = {k: baseline.get(k, 0) + v for k, v in truth_flat.items()}
        reported = await wait_for_metrics(metrics, expected, metrics_timeout)
        result = DemoResult(
            plan, truth, expected, reported, baseline, time.monotonic() - started, api.stats.requests, _stats(api)
        )
        if not any(baseline.values()):
            actuals = campaign_actuals(plan, truth)
            for c in plan.campaigns:
                resp = await metrics.get(f"/v1/campaigns/{c.code}/progress")
                resp.raise_for_status()
                result.progress[c.code] = resp.json()["targets"]
                result.progress_expected[c.code] = {f"{i}@{u}": v for (i, u), v in actuals[c.code].items()}
            await _weekly_report(metrics, result)
            await _closed_weeks(closer, result)
        return result
    finally:
        progress.close()
        await api.close()


async def _weekly_report(metrics: httpx.AsyncClient, result: DemoResult) -> None:
    """The province's report for the last full week, checked against the ground truth, and its XLSX."""
    root = result.plan.units[0].code
    resp = await metrics.get("/v1/reports/table", params={"unit": root})
    resp.raise_for_status()
    body = resp.json()
    first, last = body["from"], body["to"]
    result.report_week = (first, last)
    want = flatten(result.truth.summary(root, date.fromisoformat(first), date.fromisoformat(last)))
    got = body["totals"]["figures"]
    result.report_differences = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
    xlsx = await metrics.get("/v1/reports/table", params={"unit": root, "from": first, "to": last, "format": "xlsx"})
    xlsx.raise_for_status()
    result.report_xlsx = xlsx.content
    disposition = xlsx.headers.get("content-disposition", "")
    result.report_filename = disposition.partition('filename="')[2].rstrip('"') or f"bao-cao_{root}_{first}.xlsx"


async def _closed_weeks(closer: WeekCloser, result: DemoResult) -> None:
    """Every closed week's revised figures against the ground truth, and the last week's narrative."""
    plan, root = result.plan, closer.root
    typhoon = {plan.day0 + timedelta(days=7 * TYPHOON_WEEK + d) for d in range(7)}
    for week in closer.closed:
        monday, sunday = closer.weeks[week]
        figures = await closer.figures(week)
        want = flatten(result.truth.summary(root, monday, sunday))
        got = figures["revised"]
        wrong = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
        if wrong:
            result.closing_differences[week] = wrong
        if any(monday <= day <= sunday for day in typhoon):
            result.typhoon_adjustments[week] = len(figures["adjustments"])
    result.closed_weeks = list(closer.closed)
    if closer.closed:
        result.narrative_week = closer.closed[-1]
        result.narrative_md = await closer.narrative(result.narrative_week, "md")
        result.narrative_html = await closer.narrative(result.narrative_week, "html")


def _stats(api: Api) -> dict[str, Any]:
    s = api.stats
    return {
        "requests": s.requests,
        "batch_items": s.batch_items,
        "replays_answered_as_duplicate": s.replays_answered_as_duplicate,
        "retried_after_transient_error": s.retried_after_error,
        "resolved_from_old_codes": s.resolved_from_old_codes,
        "outcomes": dict(sorted(s.outcomes.items())),
    }


def _fmt(n: int) -> str:
    return f"{n:,}"


def render(result: DemoResult) -> str:
    p = result.plan
    truth = flatten(result.truth.summary())
    it = len({m for t in p.teams if t.kind == "campaign" for m in t.members if "it" in p.volunteers[m].skills})
    far = sum(truth[f"households_by_area.{a}"] for a in ("remote", "border", "island"))
    corrections = voids = late = 0
    for v in p.visits:  # one pass: a province-wide plan makes its records again on every pass
        corrections += v.correction is not None
        voids += v.void_reason is not None
        late += v.typhoon
    voids += sum(x.void_reason is not None for x in p.posts)
    lines = [
        "",
        f"Seven-week campaign {p.day0} .. {p.last_day} (seed {p.seed}, scale {p.scale:g}): "
        f"{result.requests:,} requests in {result.seconds:.1f}s",
        f"  {len(p.units) - 1} units under {p.units[0].name}; {_fmt(truth['team_members.permanent'])} members of "
        f"permanent teams; {_fmt(it)} IT volunteers in campaign teams; {_fmt(far)} households visited in remote, "
        "border and island areas",
        f"  {result.stats['replays_answered_as_duplicate']:,} re-sent records answered as duplicates; "
        f"{corrections:,} corrections, {voids:,} voids, {late:,} late typhoon-week records, "
        f"{sum(c.cancel_reason is not None for c in p.courses)} cancelled courses",
    ]
    if p.merge is not None:
        lines.append(
            f"  after week {p.merge.after_week + 1}, {', '.join(p.merge.sources)} merged into {p.merge.into} "
            f"(Sáp nhập / merged); {result.stats['resolved_from_old_codes']:,} records sent with the old code "
            "were stored for the successor"
        )
    lines += [
        "",
        f"{'indicator':<38}{'article':>10}{'ground truth':>14}{'metrics':>10}   ",
        "-" * 76,
    ]
    for key, value in result.expected.items():
        got = result.reported.get(key, 0)
        mark = "ok" if got == value else "DIFFERS"
        lines.append(f"{key:<38}{ARTICLE.get(key, ''):>10}{_fmt(value):>14}{_fmt(got):>10}   {mark}")
    lines.append("-" * 76)
    if any(result.baseline.values()):
        lines.append("(the system held earlier data: ground truth = figures before the replay + this replay)")
    for code, rows in result.progress.items():
        matched = len(rows) - sum(1 for d in result.progress_differences if d.startswith(code + " "))
        lines.append(f"campaign {code}: {len(rows)} targets, {matched} with actual = ground truth")
    verdict = "every indicator matches" if not result.differences else f"{len(result.differences)} indicators DIFFER"
    lines.append(f"Result: {verdict}.")
    return "\n".join(lines)


def to_json(result: DemoResult) -> dict[str, Any]:
    p = result.plan
    return {
        "seed": p.seed,
        "scale": p.scale,
        "window": {"from": p.day0.isoformat(), "to": p.last_day.isoformat()},
        "campaigns": [
            {"code": c.code, "starts_on": c.starts_on.isoformat(), "ends_on": c.ends_on.isoformat()}
            for c in p.campaigns
        ],
        "ground_truth": result.expected,
        "metrics_summary": result.reported,
        "baseline": result.baseline,
        "differences": {k: {"ground_truth": a, "metrics": b} for k, (a, b) in result.differences.items()},
        "campaign_progress": result.progress,
        "campaign_progress_differences": result.progress_differences,
        "seconds": round(result.seconds, 2),
        "stats": result.stats,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=7, help="random seed; the same seed replays the same campaign")
    ap.add_argument(
        "--scale", type=float, default=1.0, help=f"{MIN_SCALE:g} to {MAX_SCALE:g}; 1 = the article, 100 = province-wide"
    )
    ap.add_argument("--tag", default="", help="suffix for codes, to replay again beside an earlier replay")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, help="write ground truth and metrics summary as JSON here")
    ap.add_argument("--data-dir", type=Path, default=REPO / ".data", help="where `make run` keeps run.json")
    for s in SERVICES:
        ap.add_argument(f"--{s.name}-url", help=f"{s.name} base URL (default: from run.json or port {s.default_port})")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--metrics-timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    if not MIN_SCALE <= a.scale <= MAX_SCALE:
        ap.error(f"--scale must be from {MIN_SCALE:g} to {MAX_SCALE:g}")
    urls = default_urls(a.data_dir)
    for s in SERVICES:
        override = getattr(a, f"{s.name}_url")
        if override:
            urls[s.name] = override.rstrip("/")
    token = issue_token(secret=DEV_JWT_SECRET, role="admin", unit=None, sub="demo", ttl=timedelta(hours=2))
    try:
        result = asyncio.run(
            run_demo(
                urls,
                token,
                seed=a.seed,
                scale=a.scale,
                tag=a.tag,
                concurrency=a.concurrency,
                show_progress=not a.no_progress,
                metrics_timeout=a.metrics_timeout,
            )
        )
    except (DemoError, httpx.HTTPError) as exc:
        print(f"demo: failed: {exc}", file=sys.stderr)
        if isinstance(exc, httpx.ConnectError):
            print(f"demo: is `make run` running? tried {urls}", file=sys.stderr)
        return 2
    print(render(result))
    if result.report_xlsx:
        path = a.data_dir / "reports" / result.report_filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(result.report_xlsx)
        assert result.report_week is not None
        verdict = "matches the ground truth" if not result.report_differences else "DIFFERS from the ground truth"
        print(f"Báo cáo tuần / weekly report {result.report_week[0]} .. {result.report_week[1]} ({verdict}): {path}")
    if result.narrative_md:
        print()
        print(result.narrative_md)
        for ext, text in (("md", result.narrative_md), ("html", result.narrative_html)):
            out = a.data_dir / "reports" / f"tuong-thuat_{result.plan.units[0].code}_{result.narrative_week}.{ext}"
            out.write_text(text, encoding="utf-8")
        late = ", ".join(f"{w}: {n}" for w, n in result.typhoon_adjustments.items())
        verdict = "match the ground truth" if not result.closing_differences else "DIFFER from the ground truth"
        print(
            f"Đã chốt / closed {len(result.closed_weeks)} weeks ({', '.join(result.closed_weeks)}); revised figures "
            f"{verdict}; typhoon-week adjustments: {late or 'none'}; narrative: {out.with_suffix('.md')}"
        )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(to_json(result), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"Wrote {a.out}")
    failed = result.differences or result.progress_differences or result.report_differences
    return 1 if failed or result.closing_differences else 0


if __name__ == "__main__":
    raise SystemExit(main())
