"""Consumed events: the registry's, applied to the local read model that reference checks use."""

from __future__ import annotations

from shared.consumer import BatchHandler
from shared.registry_view import ChangeListener, RegistryView


def registry_handlers(view: RegistryView, *listeners: ChangeListener) -> BatchHandler:
    """The batch handler of ``registry.events.v1``; ``listeners`` re-check pending records."""
    for listener in listeners:
        view.on_change(listener)
    return view.apply
