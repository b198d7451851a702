"""Settings common to every service (pydantic-settings; each service adds its own ``env_prefix``)."""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_JWT_SECRET = "digital-bridge-development-secret-change-me"  # noqa: S105 - local default only


class ServiceSettings(BaseSettings):
    """Every field has a safe local default so ``make run`` needs no ``.env``.

    A service subclasses this with its own ``env_prefix`` (``REGISTRY_``, ``VISITS_``...).
    """

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="ignore")

    service_name: str = "service"
    kafka_bootstrap: str = "127.0.0.1:9092"
    mongo_url: str = "mongodb://127.0.0.1:27017/"
    mongo_db: str = "bridge"
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
    log_level: str = "INFO"
    log_json: bool = True
    max_body_bytes: int = 1024 * 1024
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

    def topic(self, name: str) -> str:
        return self.topic_prefix + name

    def group(self, name: str) -> str:
        return self.consumer_group_prefix + name
