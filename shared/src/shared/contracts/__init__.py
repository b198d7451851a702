"""Event contracts: one pydantic payload model per versioned event type.

These modules are the only coupling between services and the public contract for integrators.
A ``.v1`` type only ever changes backward-compatibly; a breaking change is a new ``.v2`` type.
"""

from __future__ import annotations

from pydantic import BaseModel

from shared.contracts import registry, reporting, training, visits
from shared.topics import REGISTRY_TOPIC, REPORTING_TOPIC, TRAINING_TOPIC, VISITS_TOPIC

EVENT_TYPES: dict[str, type[BaseModel]] = {
    **registry.EVENTS,
    **visits.EVENTS,
    **training.EVENTS,
    **reporting.EVENTS,
}
TOPIC_OF_TYPE: dict[str, str] = {
    **dict.fromkeys(registry.EVENTS, REGISTRY_TOPIC),
    **dict.fromkeys(visits.EVENTS, VISITS_TOPIC),
    **dict.fromkeys(training.EVENTS, TRAINING_TOPIC),
    **dict.fromkeys(reporting.EVENTS, REPORTING_TOPIC),
}

__all__ = ["EVENT_TYPES", "TOPIC_OF_TYPE", "registry", "reporting", "training", "visits"]
