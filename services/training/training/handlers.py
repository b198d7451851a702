"""Consumed events: the registry's, applied to the local read model that checks course references."""

from __future__ import annotations

from shared.consumer import BatchHandler
from shared.registry_view import RegistryView
from training.service import TrainingService


def registry_handlers(view: RegistryView, service: TrainingService) -> BatchHandler:
    """The batch handler of ``registry.events.v1``: update the view, then re-check pending courses."""
    view.on_change(service.on_registry_change)
    return view.apply
