"""One name for what the services share (BRIDGE_*), per-service overrides, and production's refusals."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from metrics.app import MetricsSettings
from registry.app import RegistrySettings
from shared.settings import DEV_JWT_SECRET, SHARED_FIELDS
from training.app import TrainingSettings
from visits.app import VisitsSettings

SERVICES: list[type[RegistrySettings | VisitsSettings | TrainingSettings | MetricsSettings]] = [
    RegistrySettings,
    VisitsSettings,
    TrainingSettings,
    MetricsSettings,
]
STRONG = "a-production-secret-of-forty-characters!"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's shell may export some of these; each test sets exactly what it checks."""
    for name in list(os.environ):
        if name.startswith(("BRIDGE_", "REGISTRY_", "VISITS_", "TRAINING_", "METRICS_")):
            monkeypatch.delenv(name)


def test_one_bridge_variable_reaches_every_service(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_JWT_SECRET", STRONG)
    monkeypatch.setenv("BRIDGE_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("BRIDGE_MONGO_URL", "mongodb://db.quangninh.internal:27017/")
    for cls in SERVICES:
        s = cls()
        assert (s.jwt_secret, s.kafka_bootstrap, s.mongo_url) == (
            STRONG,
            "kafka-1:9092,kafka-2:9092",
            "mongodb://db.quangninh.internal:27017/",
        ), cls.__name__


def test_service_prefix_wins_over_the_shared_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_JWT_SECRET", STRONG)
    monkeypatch.setenv("BRIDGE_MONGO_URL", "mongodb://shared:27017/")
    monkeypatch.setenv("VISITS_JWT_SECRET", "visits-own-secret-" + "x" * 20)
    monkeypatch.setenv("VISITS_MONGO_URL", "mongodb://visits-only:27017/")
    visits, registry = VisitsSettings(), RegistrySettings()
    assert visits.jwt_secret == "visits-own-secret-" + "x" * 20
    assert visits.mongo_url == "mongodb://visits-only:27017/"
    assert registry.jwt_secret == STRONG
    assert registry.mongo_url == "mongodb://shared:27017/"


def test_per_service_fields_are_not_shared(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "9999")
    monkeypatch.setenv("BRIDGE_MONGO_DB", "everyone")
    ports = {cls().port for cls in SERVICES}
    assert 9999 not in ports
    assert len(ports) == 4
    assert [cls().mongo_db for cls in SERVICES] == ["registry", "visits", "training", "metrics"]
    assert {"port", "mongo_db", "service_name"}.isdisjoint(SHARED_FIELDS)


def test_production_refuses_the_development_secret_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ENV", "production")
    for cls in SERVICES:
        with pytest.raises(ValidationError, match="refuses the development JWT secret"):
            cls()
    monkeypatch.setenv("BRIDGE_JWT_SECRET", "short")
    with pytest.raises(ValidationError, match="at least 32 characters") as info:
        VisitsSettings()
    assert "short" not in str(info.value)  # a refused secret is not echoed into the log


def test_production_starts_with_a_real_secret_public_key_or_jwks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_ENVIRONMENT", "production")
    monkeypatch.setenv("BRIDGE_JWT_SECRET", STRONG)
    assert VisitsSettings().environment == "production"
    monkeypatch.delenv("BRIDGE_JWT_SECRET")
    monkeypatch.setenv("BRIDGE_JWT_JWKS_URL", "https://id.example/certs")
    assert MetricsSettings().jwt_secret == DEV_JWT_SECRET  # unused: tokens are checked against the JWKS
    # Development (the default) keeps working with no configuration at all.
    monkeypatch.delenv("BRIDGE_ENVIRONMENT")
    monkeypatch.delenv("BRIDGE_JWT_JWKS_URL")
    assert RegistrySettings().environment == "development"
