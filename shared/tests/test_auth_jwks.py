"""Tokens from an identity provider: RS256 verified against its JWKS, with issuer and audience."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from shared.auth import Authenticator, Role, issue_token
from shared.errors import Unauthorized
from shared.settings import DEV_JWT_SECRET, ServiceSettings

PROVIDER = "https://id.doanthanhnien.example/realms/quang-ninh"
AUDIENCE = "digital-bridge-api"


def _key() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key, pem


def _jwks(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    return {"keys": [{**jwk, "kid": kid, "use": "sig", "alg": "RS256"}]}


def _provider_token(pem: str, kid: str, **overrides: Any) -> str:
    args: dict[str, Any] = {
        "secret": pem,
        "role": "manager",
        "unit": "QN-HALONG",
        "sub": "nguyen.thi.huong",
        "algorithm": "RS256",
        "issuer": PROVIDER,
        "audience": AUDIENCE,
        "headers": {"kid": kid},
    }
    return issue_token(**{**args, **overrides})


@pytest.fixture(scope="module")
def provider_key() -> tuple[rsa.RSAPrivateKey, str]:
    return _key()


@pytest.fixture
def jwks_server(provider_key: tuple[rsa.RSAPrivateKey, str]) -> Iterator[tuple[str, list[int]]]:
    """A tiny local identity provider serving its JWKS; yields the URL and a hit counter."""
    body = json.dumps(_jwks(provider_key[0], "k1")).encode()
    hits = [0]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits[0] += 1
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/protocol/openid-connect/certs", hits
    finally:
        server.shutdown()
        server.server_close()


def _authenticator(url: str) -> Authenticator:
    return Authenticator(algorithm="HS256", secret=DEV_JWT_SECRET, jwks_url=url, audience=AUDIENCE, issuer=PROVIDER)


def test_provider_token_verified_against_served_jwks_and_keys_cached(
    jwks_server: tuple[str, list[int]], provider_key: tuple[rsa.RSAPrivateKey, str]
) -> None:
    url, hits = jwks_server
    auth = _authenticator(url)
    for _ in range(3):
        principal = auth.decode(_provider_token(provider_key[1], "k1"))
        assert principal.sub == "nguyen.thi.huong"
        assert principal.role is Role.manager
        assert principal.unit == "QN-HALONG"
    assert hits[0] == 1  # one fetch for three tokens


def test_wrong_audience_issuer_or_missing_audience_are_401(
    jwks_server: tuple[str, list[int]], provider_key: tuple[rsa.RSAPrivateKey, str]
) -> None:
    auth = _authenticator(jwks_server[0])
    pem = provider_key[1]
    bad = {
        "audience": _provider_token(pem, "k1", audience="another-app"),
        "issuer": _provider_token(pem, "k1", issuer="https://evil.example"),
        "no aud": _provider_token(pem, "k1", audience=None),
    }
    for what, token in bad.items():
        with pytest.raises(Unauthorized, match="invalid token"):
            auth.decode(token)
        assert what  # names the case in a failure's traceback


def test_development_and_foreign_keys_are_refused_when_a_jwks_is_configured(
    jwks_server: tuple[str, list[int]],
) -> None:
    auth = _authenticator(jwks_server[0])
    hs256 = issue_token(secret=DEV_JWT_SECRET, role="admin", unit=None, issuer=PROVIDER, audience=AUDIENCE)
    _, other_pem = _key()
    foreign = _provider_token(other_pem, "k1")  # the provider's kid, another private key
    unknown_kid = _provider_token(other_pem, "k9")
    for token in (hs256, foreign, unknown_kid):
        with pytest.raises(Unauthorized):
            auth.decode(token)


def test_jwks_read_from_a_file(tmp_path: Path, provider_key: tuple[rsa.RSAPrivateKey, str]) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(provider_key[0], "k1")))
    auth = _authenticator(path.as_uri())
    assert auth.decode(_provider_token(provider_key[1], "k1")).unit == "QN-HALONG"


def test_unreachable_provider_is_401_not_500(provider_key: tuple[rsa.RSAPrivateKey, str]) -> None:
    auth = _authenticator("http://127.0.0.1:9/certs")  # discard port: nothing listens
    with pytest.raises(Unauthorized, match="cannot be fetched"):
        auth.decode(_provider_token(provider_key[1], "k1"))


def test_settings_wire_jwks_audience_and_issuer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, provider_key: tuple[rsa.RSAPrivateKey, str]
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(_jwks(provider_key[0], "k1")))
    monkeypatch.setenv("BRIDGE_JWT_JWKS_URL", path.as_uri())
    monkeypatch.setenv("BRIDGE_JWT_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("BRIDGE_JWT_ISSUER", PROVIDER)
    auth = Authenticator.from_settings(ServiceSettings())
    assert auth.decode(_provider_token(provider_key[1], "k1")).sub == "nguyen.thi.huong"
    with pytest.raises(Unauthorized):
        auth.decode(issue_token(secret=DEV_JWT_SECRET, role="admin", unit=None))
