"""Test support: real Kafka and FerretDB processes, isolated per test run (see ``fixtures``)."""

from shared.testing.support import collect_events, running_app, token, wait_until

__all__ = ["collect_events", "running_app", "token", "wait_until"]
