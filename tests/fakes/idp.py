"""A fake OpenID Connect identity provider: discovery and a JWKS on a real loopback socket.

Keys are generated when it is made (RSA, EC P-256, Ed25519), never stored. Tests mint
tokens with :meth:`FakeIdentityProvider.mint`, rotate keys (:meth:`rotate`), and take the
JWKS endpoint down (:attr:`down`: it accepts the connection and answers nothing for
:attr:`hang` seconds, then 503), counting every fetch.

Run it in the foreground, printing a token for ``sub=alice``::

    python -m tests.fakes.idp --port 8900
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALGORITHMS = ("RS256", "ES256", "EdDSA")


def new_private_key(alg: str) -> Any:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(alg)


def public_jwk(private_key: Any, kid: str, alg: str, declare_alg: bool = True) -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk: dict[str, Any] = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig"})
    if declare_alg:
        jwk["alg"] = alg
    return jwk


@dataclass
class SigningKeyPair:
    kid: str
    alg: str
    private: Any

    def jwk(self) -> dict[str, Any]:
        return public_jwk(self.private, self.kid, self.alg)


class FakeIdentityProvider:
    """Discovery at ``/.well-known/openid-configuration``, keys at ``/jwks``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.issuer = f"http://{host}:{self._server.server_address[1]}/realms/test"
        self.jwks_url = f"{self.issuer}/jwks"
        self.keys: list[SigningKeyPair] = [SigningKeyPair(f"{alg}-1", alg, new_private_key(alg)) for alg in ALGORITHMS]
        self.down = False
        self.hang = 3.0  # seconds a request hangs while the endpoint is down
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.discovery_issuer: str | None = None  # None: the real issuer
        self._thread: threading.Thread | None = None

    # --- tokens ---------------------------------------------------------------
    def key(self, alg: str = "RS256") -> SigningKeyPair:
        return next(pair for pair in self.keys if pair.alg == alg)

    def claims(self, audience: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience,
            "sub": "alice",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not None}

    def mint(self, audience: str, alg: str = "RS256", pair: SigningKeyPair | None = None, **claims: Any) -> str:
        pair = pair or self.key(alg)
        return jwt.encode(self.claims(audience, **claims), pair.private, algorithm=pair.alg, headers={"kid": pair.kid})

    def rotate(self, alg: str = "RS256", keep_old: bool = False) -> SigningKeyPair:
        """A new key (a new kid) for ``alg``; the old one is withdrawn unless ``keep_old``."""
        fresh = SigningKeyPair(f"{alg}-{uuid.uuid4().hex[:8]}", alg, new_private_key(alg))
        if not keep_old:
            self.keys = [pair for pair in self.keys if pair.alg != alg]
        self.keys = [fresh, *self.keys]
        return fresh

    def jwks(self) -> dict[str, Any]:
        return {"keys": [pair.jwk() for pair in self.keys]}

    # --- server ---------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.endswith("/.well-known/openid-configuration"):
                    idp.discovery_fetches += 1
                    body = {"issuer": idp.discovery_issuer or idp.issuer, "jwks_uri": idp.jwks_url}
                elif self.path.endswith("/jwks"):
                    idp.jwks_fetches += 1
                    body = idp.jwks()
                else:
                    self.send_error(404)
                    return
                if idp.down:
                    time.sleep(idp.hang)
                    try:
                        self.send_error(503)
                    except OSError:  # the gateway gave up waiting, as it should
                        pass
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def start(self) -> FakeIdentityProvider:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-idp", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--audience", default="ai-gateway")
    args = parser.parse_args()
    idp = FakeIdentityProvider(port=args.port).start()
    print(f"OIDC_ISSUER={idp.issuer}\nOIDC_AUDIENCE={args.audience}")
    print(idp.mint(args.audience), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        idp.stop()


if __name__ == "__main__":
    main()
