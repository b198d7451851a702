"""Cursor pagination: ``{"items": [...], "next_cursor": ...}`` ordered by a stable key."""

from __future__ import annotations

import base64
from typing import Any, Generic, TypeVar

import orjson
from pydantic import BaseModel, Field

from shared.errors import InvalidInput

MAX_LIMIT = 200


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` to get the next page; null on the last page."
    )


def encode_cursor(last_key: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(last_key)).decode()


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:
        return None
    try:
        return orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("cursor is not valid", slug="invalid-cursor") from exc


def after_filter(cursor: str | None, field: str = "_id") -> dict[str, Any]:
    """The filter that starts a page after the cursor's key."""
    last = decode_cursor(cursor)
    return {} if last is None else {field: {"$gt": last}}


def next_cursor(docs: list[dict[str, Any]], limit: int, field: str = "_id") -> str | None:
    """A cursor when the page is full (``docs`` holds ``limit + 1`` rows when there are more)."""
    if len(docs) <= limit:
        return None
    return encode_cursor(docs[limit - 1][field])
