"""Closed-loop HTTP load generator for ``make bench`` (run as its own process by bench.parts).

``python -m bench.loadgen --url http://127.0.0.1:8002 --mode healthz|visits --concurrency 64
--duration 10 --warmup 2 [--token T --refs refs.json --created-out refs.txt]`` keeps ``concurrency``
requests in flight on as many keep-alive connections and prints one JSON line: requests per second
and latency percentiles of the responses that completed inside the measured window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.events import visit_body


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run(a: argparse.Namespace, refs: list[dict[str, str]], created: list[str]) -> dict[str, Any]:
    rng = random.Random(a.seed)
    day0 = date(2026, 7, 1)
    headers = {"content-type": "application/json"}
    if a.token:
        headers["authorization"] = f"Bearer {a.token}"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    measured_ok = 0
    start = time.perf_counter()
    window_start = start + a.warmup
    stop_at = window_start + a.duration

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal measured_ok
        while True:
            t0 = time.perf_counter()
            if t0 >= stop_at:
                return
            try:
                if a.mode == "healthz":
                    r = await client.get("/healthz")
                    ref = None
                else:
                    u = rng.choice(refs)
                    body = visit_body(
                        rng, u["unit_code"], u["team_code"], u["volunteer_id"], day0 + timedelta(rng.randrange(50))
                    )
                    ref = str(body["client_ref"])
                    r = await client.post("/v1/visits", content=orjson.dumps(body), headers=headers)
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            t1 = time.perf_counter()
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if ref is not None and r.status_code == 201:
                created.append(ref)
            ok = r.status_code in (200, 201)
            if ok and window_start <= t1 <= stop_at:
                measured_ok += 1
                latencies.append(t1 - t0)

    # One client (and connection) per worker: a shared httpx pool serialises checkouts behind one lock
    # and becomes the bottleneck long before the server does.
    clients = [
        httpx.AsyncClient(base_url=a.url, limits=limits, timeout=30.0, headers=headers, trust_env=False)
        for _ in range(a.concurrency)
    ]
    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    return {
        "mode": a.mode,
        "concurrency": a.concurrency,
        "duration_s": a.duration,
        "requests_per_s": round(measured_ok / a.duration, 1),
        "ok_in_window": measured_ok,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else 0.0,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "created": len(created),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--mode", choices=["healthz", "visits"], required=True)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--token", default="")
    p.add_argument("--refs", default="", help="JSON list of {unit_code, team_code, volunteer_id}")
    p.add_argument("--created-out", default="", help="file that receives the client_ref of every 201")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency of the services
        pass
    refs = json.loads(Path(a.refs).read_text()) if a.refs else []
    created: list[str] = []
    print(json.dumps(asyncio.run(run(a, refs, created))))
    if a.created_out:
        Path(a.created_out).write_text("\n".join(created))
    return 0


if __name__ == "__main__":
    sys.exit(main())
