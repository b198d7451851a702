"""Several replicas of every service, one of each SIGKILLed mid-campaign: nothing lost, nothing doubled.

Two replicas of registry, visits and training and three of metrics run as real processes (their own
ports, one consumer group per service) against the real broker (6 partitions per topic) and the
patched FerretDB, as ``make run --replicas`` starts them. The demo's campaign goes through every
replica round-robin, so corrections and voids often reach the replica that did not record the visit;
roster imports, enrolments, re-sent batches and the typhoon week's late uploads are all in it. One
replica of each service is killed with SIGKILL in the middle (visits while its requests are in
flight) and started again later, which moves partitions between replicas twice. The province
summary, a commune's summary and every campaign target must then equal the replay's ground truth,
through every metrics replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.demo import run_demo
from scripts.run import SERVICES, RunConfig, System
from scripts.simulator.truth import campaign_actuals, flatten
from shared.infra import free_port
from shared.testing import token

SCALE = 0.05
SEED = 23
REPLICAS = {"registry": 2, "visits": 2, "training": 2, "metrics": 3}


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    cfg = RunConfig(
        data_dir=Path(tmp_path_factory.mktemp("replicas")),
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        mongo_port=free_port(),
        ports={s.name: free_port() for s in SERVICES},
        replica_ports={name: [free_port() for _ in range(n - 1)] for name, n in REPLICAS.items()},
        topic_prefix="replicas.",
        echo_logs=False,
        # Relays notice a killed peer's leftovers within seconds, not the default ten.
        extra_env={
            **{f"{s.env_prefix}RELAY_POLL_SECONDS": "0.1" for s in SERVICES},
            **{f"{s.env_prefix}RELAY_STALE_AFTER_SECONDS": "4" for s in SERVICES},
        },
    )
    with System(cfg) as running:
        yield running


class Chaos:
    """Kills and restarts replicas at the replay's checkpoints (and once in the middle of a week)."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.killed: list[str] = []
        self.restarted: list[str] = []
        self._pending: list[asyncio.Task[None]] = []

    def kill(self, instance: str) -> None:
        self.system.services[instance].kill()
        self.killed.append(instance)

    def restart(self, instance: str) -> None:
        name, _, number = instance.partition("-")
        self.system.start_replica(name, int(number))
        self.restarted.append(instance)

    async def _kill_later(self, instance: str, seconds: float) -> None:
        await asyncio.sleep(seconds)
        self.kill(instance)

    async def __call__(self, phase: str) -> None:
        if phase == "registry":
            # The roster's events are still being consumed by every service.
            self.kill("registry-2")
            self.kill("metrics-3")
        elif phase == "week 2":
            self.kill("training-2")
            # Killed while its share of week 3's batches is in flight: the driver re-sends them to
            # the other replica, and intake by client_ref answers what was stored as duplicates.
            self._pending.append(asyncio.create_task(self._kill_later("visits-2", 0.3)))
        elif phase == "week 4":
            for instance in ("registry-2", "metrics-3", "training-2"):
                self.restart(instance)
        elif phase == "week 6":
            await asyncio.gather(*self._pending)
            self.restart("visits-2")


@pytest.mark.e2e
@pytest.mark.kafka
@pytest.mark.mongo
@pytest.mark.timeout(1500)
async def test_replicas_killed_mid_campaign_count_every_record_exactly_once(replicated: System) -> None:
    chaos = Chaos(replicated)
    auth = token("admin")["Authorization"].removeprefix("Bearer ")
    result = await run_demo(
        replicated.replica_urls(),
        auth,
        seed=SEED,
        scale=SCALE,
        show_progress=False,
        metrics_timeout=180,
        checkpoint=chaos,
    )
    assert chaos.killed == ["registry-2", "metrics-3", "training-2", "visits-2"]
    assert chaos.restarted == ["registry-2", "metrics-3", "training-2", "visits-2"]
    assert replicated.dead_services() == []

    assert result.differences == {}
    assert result.reported["households_visited"] > 0
    assert result.reported["course_participants.total"] > 0
    assert result.progress_differences == []

    truth = result.truth
    commune = next(t.unit for t in result.plan.teams if t.kind == "mobile")
    actuals = campaign_actuals(result.plan, truth)
    for url in replicated.replica_urls()["metrics"]:
        async with httpx.AsyncClient(base_url=url, headers=token("admin"), timeout=30) as metrics:
            province = await metrics.get("/v1/summary")
            assert flatten(province.json()) == flatten(truth.summary())
            resp = await metrics.get("/v1/summary", params={"unit": commune})
            assert flatten(resp.json()) == flatten(truth.summary(commune))
            for campaign in result.plan.campaigns:
                body = (await metrics.get(f"/v1/campaigns/{campaign.code}/progress")).json()
                got = {(t["indicator"], t["unit_code"]): t["actual"] for t in body["targets"]}
                assert got == actuals[campaign.code]
