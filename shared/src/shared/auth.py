"""JWT bearer authentication and unit-scoped authorization.

Tokens carry ``sub``, ``role``, ``unit`` (the unit code whose subtree the holder may act in) and,
for field users, ``teams``. HS256 with a development secret by default; in production RS256 with a
configured public key, or the keys an identity provider publishes as a JWKS (``jwt_jwks_url``), with
its issuer and audience. ``python -m scripts.cli token`` (``make token``) prints a development token.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse
from urllib.request import url2pathname

import jwt
from pydantic import BaseModel, Field

from shared.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from shared.settings import ServiceSettings

ISSUER = "digital-bridge"
# Only asymmetric algorithms are taken from a JWKS: an HS256 token "signed" with a public key must not pass.
JWKS_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")


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
    """Verifies bearer tokens: a shared secret (HS256), a public key (RS256) or an identity provider's JWKS."""

    def __init__(
        self,
        *,
        algorithm: str,
        secret: str,
        public_key: str | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str = ISSUER,
    ) -> None:
        self._algorithm = "RS256" if public_key else algorithm
        self._key = public_key or secret
        self._audience = audience
        self._issuer = issuer
        self._jwks: jwt.PyJWKClient | None = None
        self._jwk_file: jwt.PyJWKSet | None = None
        if jwks_url and jwks_url.startswith(("http://", "https://")):
            # Fetched on first use and cached for 5 minutes; an unknown ``kid`` (a rotated key)
            # refetches at most every 30 s, so forged kids cannot hammer the provider.
            self._jwks = jwt.PyJWKClient(jwks_url, timeout=5, lifespan=300, cooldown_duration=30)
        elif jwks_url:
            # A key set mounted as a file (air-gapped installs); read once, at start-up.
            path = Path(url2pathname(urlparse(jwks_url).path)) if jwks_url.startswith("file:") else Path(jwks_url)
            self._jwk_file = jwt.PyJWKSet.from_json(path.read_text())

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> Authenticator:
        return cls(
            algorithm=settings.jwt_algorithm,
            secret=settings.jwt_secret,
            public_key=settings.jwt_public_key,
            jwks_url=settings.jwt_jwks_url,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    def _key_and_algorithms(self, token: str) -> tuple[object, list[str]]:
        if self._jwk_file is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            matching = [k for k in self._jwk_file.keys if k.key_id == kid]
            if not matching:
                raise Unauthorized(f"invalid token: no key {kid!r} in the configured JWKS")
            signing = matching[0]
        elif self._jwks is not None:
            try:
                signing = self._jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as exc:
                raise Unauthorized("the identity provider's keys cannot be fetched now") from exc
        else:
            return self._key, [self._algorithm]
        algorithm = signing.algorithm_name
        if algorithm not in JWKS_ALGORITHMS:
            raise Unauthorized(f"invalid token: algorithm {algorithm} is not accepted from a JWKS")
        return signing.key, [algorithm]

    def decode(self, token: str) -> Principal:
        try:
            key, algorithms = self._key_and_algorithms(token)
            claims = jwt.decode(
                token,
                key,  # type: ignore[arg-type]  # a PEM string, a secret or a key object from the JWKS
                algorithms=algorithms,
                issuer=self._issuer,
                audience=self._audience,
                options={"require": ["sub", "exp", "iss", *(["aud"] if self._audience else [])]},
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
    issuer: str = ISSUER,
    audience: str | None = None,
    headers: dict[str, str] | None = None,
) -> str:
    """Sign a token (development and tests; production tokens come from the identity provider)."""
    now = datetime.now(UTC)
    claims = {"sub": sub, "role": role, "unit": unit, "teams": list(teams), "iss": issuer, "iat": now, "exp": now + ttl}
    if audience is not None:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)


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
