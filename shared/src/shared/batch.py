"""What a batch upload answers per item; shared so every service's batch endpoints say the same."""

from __future__ import annotations

from enum import StrEnum


class BatchStatus(StrEnum):
    created = "created"
    duplicate = "duplicate"  # the same client_ref was stored before: the first copy is kept
    rejected = "rejected"  # see the item's problem; the other items went ahead
