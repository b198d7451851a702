"""Tokens and unit scope (pure logic)."""

from __future__ import annotations

from datetime import timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.auth import ISSUER, Authenticator, Principal, Role, issue_token, require_role, require_scope
from shared.errors import Forbidden, Unauthorized

SECRET = "test-secret-long-enough-for-hs256-checks"


def test_hs256_token_round_trips_into_a_typed_principal() -> None:
    auth = Authenticator(algorithm="HS256", secret=SECRET)
    p = auth.decode(issue_token(secret=SECRET, role="field", unit="QN-VD", teams=["MOB-01"], sub="u1"))
    assert p == Principal(sub="u1", role=Role.field, unit="QN-VD", teams=["MOB-01"])


def test_expired_wrongly_signed_and_roleless_tokens_are_401() -> None:
    auth = Authenticator(algorithm="HS256", secret=SECRET)
    expired = issue_token(secret=SECRET, role="admin", unit=None, ttl=timedelta(seconds=-5))
    forged = issue_token(secret="another-secret-of-sufficient-length!!", role="admin", unit=None)
    roleless = jwt.encode({"sub": "x", "iss": ISSUER, "exp": 9999999999}, SECRET, algorithm="HS256")
    for token in (expired, forged, roleless, "garbage"):
        with pytest.raises(Unauthorized):
            auth.decode(token)


def test_rs256_with_a_configured_public_key_rejects_hs256_tokens() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    auth = Authenticator(algorithm="HS256", secret=SECRET, public_key=public_pem)
    good = issue_token(secret=private_pem, role="viewer", unit="QN", algorithm="RS256")
    assert auth.decode(good).role is Role.viewer
    with pytest.raises(Unauthorized):
        auth.decode(issue_token(secret=SECRET, role="admin", unit=None))


def test_scope_covers_the_subtree_only() -> None:
    manager = Principal(sub="m", role=Role.manager, unit="QN-HL")
    assert manager.in_scope(["QN", "QN-HL"])
    assert manager.in_scope(["QN", "QN-HL", "QN-HL-SCHOOL"])
    assert not manager.in_scope(["QN", "QN-VD"])
    assert not manager.in_scope(["QN"])
    assert Principal(sub="a", role=Role.admin).in_scope(["ANY"])
    with pytest.raises(Forbidden, match="outside your unit scope"):
        require_scope(manager, ["QN", "QN-VD"])
    with pytest.raises(Forbidden, match="needs one of: admin"):
        require_role(manager, Role.admin)
