"""JWT bearer authentication and unit-scoped authorization.

Tokens carry ``sub``, ``role``, ``unit`` (the unit code whose subtree the holder may act in) and,
for field users, ``teams``. HS256 with a development secret by default; RS256 with a configured
public key in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import jwt
from pydantic import BaseModel, Field

from shared.errors import Forbidden, Unauthorized

ISSUER = "digital-bridge"


class Role(StrEnum):
    admin = "admin"
    manager = "manager"
    field = "field"
    viewer = "viewer"
    integrator = "integrator"


READ_ROLES = (Role.admin, Role.manager, Role.field, Role.viewer, Role.integrator)


class Principal(BaseModel):
    """Who is calling, as established by a verified token."""

    sub: str
    role: Role
    unit: str | None = Field(default=None, description="Unit code whose subtree this principal covers.")
    teams: list[str] = Field(default_factory=list)

    def in_scope(self, unit_path: Sequence[str]) -> bool:
        """True if the unit whose ancestor path is given lies in this principal's subtree."""
        if self.role is Role.admin:
            return True
        return self.unit is not None and self.unit in unit_path


class Authenticator:
    def __init__(self, *, algorithm: str, secret: str, public_key: str | None = None) -> None:
        self._algorithm = "RS256" if public_key else algorithm
        self._key = public_key or secret

    def decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                issuer=ISSUER,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        try:
            return Principal(
                sub=claims["sub"], role=claims["role"], unit=claims.get("unit"), teams=claims.get("teams", [])
            )
        except (KeyError, ValueError) as exc:
            raise Unauthorized("token lacks a valid role claim") from exc


def issue_token(
    *,
    secret: str,
    role: str,
    unit: str | None,
    sub: str = "dev",
    teams: Sequence[str] = (),
    ttl: timedelta = timedelta(hours=12),
    algorithm: str = "HS256",
) -> str:
    """Sign a token (development and tests; production tokens come from the identity provider)."""
    now = datetime.now(UTC)
    claims = {"sub": sub, "role": role, "unit": unit, "teams": list(teams), "iss": ISSUER, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, secret, algorithm=algorithm)


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = ", ".join(r.value for r in roles)
        raise Forbidden(f"role '{principal.role.value}' may not do this; it needs one of: {allowed}")


def require_scope(principal: Principal, unit_path: Sequence[str], what: str = "this unit") -> None:
    if not principal.in_scope(unit_path):
        raise Forbidden(
            f"{what} ({unit_path[-1] if unit_path else '?'}) is outside your unit scope ({principal.unit})",
            slug="out-of-scope",
        )


def main() -> None:
    """``make token ROLE=admin UNIT=QN``: print a signed development token."""
    import argparse

    from shared.settings import ServiceSettings

    p = argparse.ArgumentParser(description="Print a development JWT")
    p.add_argument("--role", default="admin", choices=[r.value for r in Role])
    p.add_argument("--unit", default=None)
    p.add_argument("--sub", default="dev")
    p.add_argument("--teams", default="", help="comma-separated team codes (field users)")
    p.add_argument("--hours", type=float, default=12)
    a = p.parse_args()
    s = ServiceSettings()
    teams = [t for t in a.teams.split(",") if t]
    print(
        issue_token(
            secret=s.jwt_secret, role=a.role, unit=a.unit or None, sub=a.sub, teams=teams, ttl=timedelta(hours=a.hours)
        )
    )


if __name__ == "__main__":
    main()
