"""Settings common to every service (pydantic-settings; each service adds its own ``env_prefix``).

What the services share is set once for all of them with ``BRIDGE_<FIELD>`` (``BRIDGE_JWT_SECRET``,
``BRIDGE_KAFKA_BOOTSTRAP``, ``BRIDGE_MONGO_URL``...: the fields in :data:`SHARED_FIELDS`); a
service's own prefix still wins (``VISITS_JWT_SECRET`` over ``BRIDGE_JWT_SECRET``). Everything else
(port, database name...) is per service only, so one variable cannot point four services at one port.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

DEV_JWT_SECRET = "digital-bridge-development-secret-change-me"  # noqa: S105 - local default only
SHARED_PREFIX = "BRIDGE_"
SHARED_FIELDS = frozenset(
    {
        "environment",
        "kafka_bootstrap",
        "mongo_url",
        "topic_prefix",
        "consumer_group_prefix",
        "jwt_algorithm",
        "jwt_secret",
        "jwt_public_key",
        "jwt_jwks_url",
        "jwt_audience",
        "jwt_issuer",
        "log_level",
        "log_json",
        "otlp_endpoint",
    }
)
# HS256 keys shorter than the hash output are brute-forceable offline from one captured token (RFC 7518 3.2).
MIN_SECRET_LENGTH = 32


class _SharedEnv(EnvSettingsSource):
    """``BRIDGE_<FIELD>`` for the shared fields, below the service's own prefix."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, env_prefix=SHARED_PREFIX, case_sensitive=False)

    def __call__(self) -> dict[str, Any]:
        values = {k: v for k, v in super().__call__().items() if k in SHARED_FIELDS}
        short = os.environ.get(f"{SHARED_PREFIX}ENV")  # the usual spelling of BRIDGE_ENVIRONMENT
        if short and "environment" not in values:
            values["environment"] = short
        return values


class ServiceSettings(BaseSettings):
    """Every field has a safe local default so ``make run`` needs no ``.env``.

    A service subclasses this with its own ``env_prefix`` (``REGISTRY_``, ``VISITS_``...).
    """

    # Subclasses' configs merge with this one: a refused setting is never echoed into a start-up log.
    model_config = SettingsConfigDict(env_prefix=SHARED_PREFIX, extra="ignore", hide_input_in_errors=True)

    # ``production`` refuses to start with the development JWT secret (BRIDGE_ENV=production).
    environment: Literal["development", "production"] = "development"

    service_name: str = "service"
    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_db: str = "bridge"
    # The database of the registry read model (visits, training); empty: ``<mongo_db>_registry_view``.
    # Its own database, because FerretDB keeps a database in one SQLite file with one writer: in one
    # file, the read model's consumer queued behind the service's own writes (ADR 0005, third pass).
    registry_view_db: str = ""
    mongo_max_pool_size: int = 16
    # Commands slower than this are logged with their filter's field names; 0 turns the log off.
    mongo_slow_ms: float = 250
    # Prepended to every topic name; tests use it to isolate runs on one broker.
    topic_prefix: str = ""
    consumer_group_prefix: str = ""
    jwt_algorithm: str = "HS256"
    jwt_secret: str = DEV_JWT_SECRET
    # PEM public key; when set, tokens must be RS256-signed by the matching private key.
    jwt_public_key: str | None = None
    # An identity provider's JWKS (https://..., or a file path / file:// URL read once at start-up);
    # when set, tokens are verified against its keys.
    jwt_jwks_url: str | None = None
    # When set, tokens must name it in ``aud`` (an identity provider's client or API identifier).
    jwt_audience: str | None = None
    # The ``iss`` every token must carry: ours for development tokens, the provider's URL otherwise.
    jwt_issuer: str = "digital-bridge"
    log_level: str = "INFO"
    log_json: bool = True
    max_body_bytes: int = 1024 * 1024
    # Large-bodied writes (batches, rosters, uploads) handled at once per process; the rest wait
    # unread up to bulk_wait_seconds, then get 503 + Retry-After (shared.http.BulkAdmissionMiddleware).
    # A bound on memory under a crowd of uploads, not a speed-up: 4 left the registry's RSS as it was
    # at 10x and slowed the 100x roster (ADR 0005, third pass). 0 admits every request at once.
    bulk_requests_at_once: int = 16
    bulk_request_min_bytes: int = 64 * 1024
    bulk_wait_seconds: float = 30.0
    # Backpressure (shared.backpressure): large writes also wait while a live consumer group named here
    # (base names, e.g. "visits.registry-view") is more than backpressure_max_lag_events behind on
    # backpressure_topics, or its relay has more than backpressure_max_outbox_events documents not yet
    # published (0: no limit). No groups and no outbox limit: nothing is sampled.
    backpressure_groups: list[str] = []
    backpressure_topics: list[str] = []
    backpressure_max_lag_events: int = 5000
    backpressure_max_outbox_events: int = 0
    # How long an Idempotency-Key is remembered (draft-ietf-httpapi-idempotency-key-header); then it is new again.
    idempotency_key_ttl_seconds: float = 24 * 3600
    # OTLP/HTTP collector base URL (http://collector:4318); unset: no tracing.
    otlp_endpoint: str | None = None
    # Writes wake the relay in-process; this is only its idle wait and the first retry delay after a failure.
    relay_poll_seconds: float = 2.0
    relay_batch_size: int = 1000
    # Relays beat a heartbeat this often; one silent for ``relay_stale_after_seconds`` is taken for
    # dead, and a survivor sweeps for the events its process wrote but did not publish.
    relay_heartbeat_seconds: float = 2.0
    relay_stale_after_seconds: float = 10.0
    consumer_max_records: int = 2000
    # Batch consumers (projector, registry read model) let the broker hold a fetch up to this long
    # while less than 1 MiB is waiting, so a trickle of events is applied in batches: one write per
    # document per batch instead of per event. It bounds the added freshness delay.
    consumer_linger_ms: int = 200
    # ...or until this much is waiting, whichever comes first.
    consumer_linger_bytes: int = 1024 * 1024
    # Caps on one fetch's size. aiokafka reads the next fetch while the last is processed, so these
    # bound the raw bytes a consumer buffers; what one getmany parses is bounded by max_records.
    consumer_fetch_max_bytes: int = 32 * 1024 * 1024
    consumer_partition_fetch_bytes: int = 4 * 1024 * 1024
    # Whole-fetch consumers (the projector) behind the log end wait this long for more records
    # before closing a fetch whose buffered records ran out; 0 closes it at once.
    consumer_fetch_top_up_ms: int = 0
    consumer_retries: int = 3
    consumer_backoff_seconds: float = 0.2
    create_topics: bool = True

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, _SharedEnv(settings_cls), file_secret_settings

    @model_validator(mode="after")
    def _production_needs_real_keys(self) -> ServiceSettings:
        if self.environment != "production" or self.jwt_public_key or self.jwt_jwks_url:
            return self
        if self.jwt_secret == DEV_JWT_SECRET:
            raise ValueError(
                "environment=production refuses the development JWT secret: set BRIDGE_JWT_SECRET "
                "(or BRIDGE_JWT_PUBLIC_KEY / BRIDGE_JWT_JWKS_URL)"
            )
        if len(self.jwt_secret) < MIN_SECRET_LENGTH:
            raise ValueError(f"environment=production needs a JWT secret of at least {MIN_SECRET_LENGTH} characters")
        return self

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def group(self, name: str) -> str:
        return self.consumer_group_prefix + name

    @property
    def view_db_name(self) -> str:
        return self.registry_view_db or f"{self.mongo_db}_registry_view"
