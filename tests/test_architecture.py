"""Layering rules from STYLE.md, checked by parsing imports (no service code is run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("registry", "visits", "training", "metrics")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def service_files(service: str) -> list[Path]:
    return sorted((ROOT / "services" / service).rglob("*.py"))


@pytest.mark.parametrize("service", SERVICES)
def test_services_never_import_each_other(service: str) -> None:
    others = {s for s in SERVICES if s != service}
    offenders = [
        f"{path.relative_to(ROOT)} imports {mod}"
        for path in service_files(service)
        for mod in imported_modules(path)
        if mod.split(".")[0] in others
    ]
    assert offenders == []


@pytest.mark.parametrize("service", SERVICES)
def test_domain_layer_imports_neither_fastapi_nor_kafka(service: str) -> None:
    path = ROOT / "services" / service / service / "service.py"
    if not path.exists():
        pytest.skip(f"{service} has no service.py yet")
    banned = {"fastapi", "starlette", "aiokafka"}
    assert {m.split(".")[0] for m in imported_modules(path)} & banned == set()


def test_shared_never_imports_a_service() -> None:
    offenders = [
        f"{path.relative_to(ROOT)} imports {mod}"
        for path in sorted((ROOT / "shared" / "src").rglob("*.py"))
        for mod in imported_modules(path)
        if mod.split(".")[0] in SERVICES
    ]
    assert offenders == []


def test_only_repositories_talk_to_mongo() -> None:
    # Collections are reached through repository.py; api/service layers must not query directly.
    offenders = []
    for service in SERVICES:
        for name in ("api.py", "service.py", "schemas.py"):
            path = ROOT / "services" / service / service / name
            if path.exists() and "pymongo" in {m.split(".")[0] for m in imported_modules(path)}:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
