"""Domain errors that the HTTP layer renders as RFC 9457 problem details.

Domain code (``service.py``) raises these without importing FastAPI.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

PROBLEM_BASE = "https://digital-bridge.youthunion.vn/problems/"


class ProblemError(Exception):
    """An error with an HTTP status and an RFC 9457 body."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, *, title: str | None = None, slug: str | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        if title:
            self.title = title
        if slug:
            self.slug = slug
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class InvalidInput(ProblemError):
    status = 422
    slug = "invalid-input"
    title = "The request is not valid"


class UnsupportedMediaType(ProblemError):
    status = 415
    slug = "unsupported-media-type"
    title = "Unsupported media type"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"
    title = "Not found"


class Conflict(ProblemError):
    status = 409
    slug = "conflict"
    title = "Conflict"


class Unauthorized(ProblemError):
    status = 401
    slug = "unauthorized"
    title = "Authentication required"


class Forbidden(ProblemError):
    status = 403
    slug = "forbidden"
    title = "Not allowed"


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"
    title = "Request body too large"


class ServiceUnavailable(ProblemError):
    status = 503
    slug = "unavailable"
    title = "Service unavailable"


def validation_problem(exc: ValidationError) -> dict[str, Any]:
    """The problem body the HTTP layer gives a request that fails validation, for one batch item."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False)
    ]
    return {
        "type": PROBLEM_BASE + "validation",
        "title": "The request is not valid",
        "status": 422,
        "detail": "; ".join(f"{e['field']}: {e['message']}" for e in errors[:5]),
        "errors": errors,
    }
