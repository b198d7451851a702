"""schemathesis against each service's own OpenAPI document: no input, valid or not, gets a 5xx.

Each service runs in this process (uvicorn in a thread, its real lifespan on the session's Kafka and
FerretDB) and every operation gets generated requests with an admin token: ``FUZZ_EXAMPLES`` valid
ones and as many invalid ones. Every answer must conform to the document (status, content type, body
schema), every 4xx must be a problem, and an invalid request must never be accepted.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import schemathesis
import uvicorn
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from metrics.app import MetricsSettings
from metrics.app import build_app as metrics_app
from registry.app import RegistrySettings
from registry.app import build_app as registry_app
from shared.server import config
from shared.testing import running_app, token
from training.app import TrainingSettings
from training.app import build_app as training_app
from visits.app import VisitsSettings
from visits.app import build_app as visits_app

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.mongo,
    # schemathesis's own strategies draw from `random`; nothing this test can change.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

SERVICES: dict[str, tuple[type[Any], Callable[[Any], FastAPI]]] = {
    "registry": (RegistrySettings, registry_app),
    "visits": (VisitsSettings, visits_app),
    "training": (TrainingSettings, training_app),
    "metrics": (MetricsSettings, metrics_app),
}
# Per operation and per mode (valid, invalid): ~80 operations in all, about 2,000 requests, 1.5 to 3 minutes
# here depending on the load (FUZZ_EXAMPLES=15 for a deeper run: none failed, ~6 minutes).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
# A rebuild replays every topic into a new projection: slow, and its only input is the token.
SKIPPED = {("POST", "/v1/admin/rebuild")}


def problem_details(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx that the document says is a problem is an RFC 9457 problem (pages answer with pages)."""
    documented = case.operation.definition.raw.get("responses", {}).get(str(response.status_code), {})
    if 400 <= response.status_code < 500 and "application/problem+json" in documented.get("content", {}):
        media = response.headers.get("content-type", [""])[0]
        assert media.startswith("application/problem+json"), f"{response.status_code} answered as {media!r}"
        body = response.json()
        assert body["status"] == response.status_code, body
        assert body["type"], body
        assert body["title"], body
    return None


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    problem_details,
]


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Run the app (with its lifespan) on a free loopback port in a thread; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # The deployed config (what the parser refuses is a problem too), in a thread of its own.
    server = uvicorn.Server(
        config(app, host="127.0.0.1", port=port, lifespan="on", loop="asyncio", timeout_keep_alive=30)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), "the service stopped while starting"
        assert time.monotonic() < deadline, "the service did not start within 60 s"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def fuzz_operation(operation: Any, base_url: str, headers: dict[str, str], failures: list[str]) -> int:
    """Send the generated requests of one operation; record each distinct failure. Returns how many were sent."""
    sent = 0
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        try:
            sent += fuzz_mode(operation, mode, base_url, headers, failures)
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid (no input)
    return sent


def fuzz_mode(operation: Any, mode: GenerationMode, base_url: str, headers: dict[str, str], failures: list[str]) -> int:
    sent = 0
    seen: set[str] = set()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        nonlocal sent
        sent += 1
        # A case whose negated part is its headers (no or a bad token) is sent as generated.
        sent_headers = None if case.meta.is_negative_at(ParameterLocation.HEADER) else headers
        response = case.call(base_url=base_url, headers=sent_headers, timeout=30)
        # Unknown query parameters are ignored, as on most of the web; a case that only adds one is valid.
        declared = {p["name"] for p in case.operation.definition.raw.get("parameters", []) if p["in"] == "query"}
        unknown = set(case.query or {}) - declared
        try:
            case.validate_response(
                response,
                checks=CHECKS,
                excluded_checks=[negative_data_rejection] if unknown else [],
                headers=sent_headers,
            )
        except FailureGroup as group:
            for failure in group.exceptions:
                title = f"{operation.label} [{mode.value}]: {failure.title}"
                if title not in seen:
                    seen.add(title)
                    failures.append(f"{title}\n{str(group)[:3000]}")

    run()
    return sent


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(SERVICES))
def test_no_generated_request_gets_a_server_error(name: str, make_settings: Callable[..., Any]) -> None:
    settings_cls, build = SERVICES[name]
    app = build(make_settings(settings_cls))
    schema = schemathesis.openapi.from_dict(app.openapi())
    headers = token("admin", sub="fuzzer")
    failures: list[str] = []
    sent = 0
    started = time.monotonic()
    with serving(app) as base_url:
        for result in schema.get_all_operations():
            operation: Any = result.ok()  # type: ignore[union-attr]  # an Err here is a broken document: fail
            if (operation.method.upper(), operation.path) in SKIPPED:
                continue
            sent += fuzz_operation(operation, base_url, headers, failures)
    elapsed = time.monotonic() - started
    print(f"{name}: {sent} requests in {elapsed:.1f} s")
    assert sent > 0
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)


async def test_numbers_too_large_to_store_are_422_problems_naming_the_field(make_settings: Callable[..., Any]) -> None:
    too_big = 2**63
    registry = registry_app(make_settings(RegistrySettings))
    async with running_app(registry) as client:
        admin = token("admin", sub="fuzzer")
        unit = {"code": "QN", "name": "Tỉnh Quảng Ninh", "kind": "province"}
        assert (await client.post("/v1/units", json=unit, headers=admin)).status_code == 201
        campaign = {"code": "PEAK90", "name": "Cao điểm 90 ngày", "starts_on": "2025-07-01", "ends_on": "2025-09-28"}
        answers = [
            await client.post(
                "/v1/campaigns",
                json={**campaign, "targets": [{"indicator": "people_supported", "unit_code": "QN", "value": v}]},
                headers=admin,
            )
            for v in (too_big, 100_000_001, 100_000_000)
        ]
    assert [a.status_code for a in answers] == [422, 422, 201]
    assert answers[0].headers["content-type"] == "application/problem+json"
    assert [e["field"] for e in answers[0].json()["errors"]] == ["targets.0.value"]

    visit = {
        "client_ref": "0b7f3c1e-2a4d-4f5e-9c61-3d2a1b0c9e88",
        "team_code": "QN-VD-MOBILE-1",
        "unit_code": "QN-VD",
        "visited_on": "2025-08-14",
        "setting": "household",
        "area": "island",
        "people": {"total": too_big, "elderly": 1},
        "households": too_big,
    }
    async with running_app(visits_app(make_settings(VisitsSettings))) as client:
        r = await client.post("/v1/visits", json=visit, headers=token("admin"))
    assert r.status_code == 422
    assert {e["field"] for e in r.json()["errors"]} == {"people.total", "households"}

    async with running_app(training_app(make_settings(TrainingSettings))) as client:
        r = await client.post(
            "/v1/courses/HL-VNEID-0701:complete", json={"final_participants": too_big}, headers=token("admin")
        )
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["final_participants"]
