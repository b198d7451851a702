"""Structured logging: one JSON object per line on stdout, for our own lines and every library's.

The services log through structlog. Libraries (uvicorn, aiokafka, pymongo...) log through the
standard ``logging`` module; a :class:`structlog.stdlib.ProcessorFormatter` on the root logger runs
their records through the same processors and renderer, so a log shipper (or ``scripts/run.py``'s
``render_log_line``) sees one format: ``event``, ``level``, ``timestamp``, ``service``, the bound
context (``request_id``, ``event_id``...), ``trace_id``/``span_id`` inside a span when tracing is on
(:mod:`shared.tracing`), and ``logger`` for a library's line.
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from shared.tracing import current_ids

bind_context = structlog.contextvars.bind_contextvars
clear_context = structlog.contextvars.clear_contextvars
unbind_context = structlog.contextvars.unbind_contextvars

HANDLER_NAME = "bridge-structlog"
# Record attributes that only repeat ``event``: uvicorn's ANSI-coloured copy of the message, and
# what another handler's formatter (pytest's, say) left on the shared record.
_DROPPED_EXTRAS = ("color_message", "message", "asctime")


def _service_adder(service: str) -> Processor:
    # A processor rather than a context variable: threads (pymongo's monitors) start with an empty
    # context, and their lines should still say which service wrote them.
    def add_service(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service


def _add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    ids = current_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def _drop_extras(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in _DROPPED_EXTRAS:
        event_dict.pop(key, None)
    return event_dict


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Route structlog and stdlib logging to stdout, as JSON lines (or readable ones when ``json`` is off)."""
    numeric_level = logging.getLevelName(level.upper())
    common: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _service_adder(service),
        _add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            *common,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            *common,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            _drop_extras,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    # aiokafka is chatty about reconnects that our own code already reports.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger
