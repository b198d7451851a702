from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from registry.app import RegistrySettings, build_app
from shared.testing import running_app


@pytest.fixture
def settings(make_settings: Callable[..., Any]) -> RegistrySettings:
    s: RegistrySettings = make_settings(RegistrySettings)
    return s


@pytest.fixture
async def client(settings: RegistrySettings) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(build_app(settings)) as c:
        yield c
