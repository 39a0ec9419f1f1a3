"""A small OpenID Connect provider for the tests, built with authlib's own server side
(``AuthorizationServer``, the authorization code grant with the OpenID Connect and PKCE
extensions), served on a loopback port by Werkzeug in a thread.

It behaves as Microsoft Entra ID does where schoolgate relies on it: an issuer
``http://127.0.0.1:PORT/<tenant>/v2.0`` with discovery under it, RS256 ID tokens with a key id
published in a JWKS, ``tid`` and ``preferred_username`` claims, PKCE required. The test says
who signs in (``provider.user``: the claims) and may make it misbehave (``provider.tamper``):
``bad_signature`` (signed with a key not published), ``wrong_audience``, ``wrong_nonce``,
``expired``, ``wrong_issuer``; ``provider.rotate()`` publishes a new signing key.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.jose import JsonWebKey
from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import AuthorizationCodeMixin, UserInfo
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify
from werkzeug.serving import make_server

TENANT = "11111111-2222-3333-4444-555555555555"


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    scope: str = "openid email profile"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return " ".join(s for s in scope.split() if s in allowed)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user: dict[str, Any]
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time


class Provider:
    """The provider; ``start()`` serves it, ``stop()`` ends it."""

    def __init__(self, *, client_id: str, client_secret: str, redirect_uris: list[str]) -> None:
        self.client = Client(client_id, client_secret, redirect_uris)
        self.codes: dict[str, Code] = {}
        self.keys = [self._new_key()]
        self.rogue = self._new_key(kid=self.keys[0].as_dict()["kid"])
        self.user: dict[str, Any] = {}
        self.tamper: str | None = None
        self.token_requests = 0
        self.server = None
        self.thread: threading.Thread | None = None
        self.base = ""
        self.app = self._app()

    @staticmethod
    def _new_key(kid: str | None = None):
        return JsonWebKey.generate_key(
            "RSA", 2048, is_private=True, options={"kid": kid or secrets.token_hex(8)}
        )

    def rotate(self) -> None:
        """Sign with a new key from now on (the old one stays published, as providers do)."""
        self.keys.insert(0, self._new_key())

    @property
    def issuer(self) -> str:
        return f"{self.base}/{TENANT}/v2.0"

    # -- the app -----------------------------------------------------------------------------
    def _app(self) -> Flask:
        app = Flask("test-oidc-provider")
        app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"authorization_code": 3600}
        provider = self

        class Grant(AuthorizationCodeGrant):
            TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

            def save_authorization_code(self, code, req):
                provider.codes[code] = Code(
                    code=code,
                    client_id=req.client.client_id,
                    redirect_uri=req.payload.redirect_uri,
                    scope=req.payload.scope,
                    user=req.user,
                    nonce=req.payload.data.get("nonce"),
                    code_challenge=req.payload.data.get("code_challenge"),
                    code_challenge_method=req.payload.data.get("code_challenge_method"),
                )

            def query_authorization_code(self, code, client):
                found = provider.codes.get(code)
                return found if found and found.client_id == client.client_id else None

            def delete_authorization_code(self, authorization_code):
                provider.codes.pop(authorization_code.code, None)

            def authenticate_user(self, authorization_code):
                return authorization_code.user

        class OpenID(OpenIDCode):
            def exists_nonce(self, nonce, req):
                return any(c.nonce == nonce for c in provider.codes.values())

            def get_jwt_config(self, grant, client=None):
                key = provider.rogue if provider.tamper == "bad_signature" else provider.keys[0]
                return {
                    "key": key.as_dict(is_private=True),
                    "alg": "RS256",
                    "kid": key.as_dict()["kid"],
                    "iss": "http://evil.example/v2.0"
                    if provider.tamper == "wrong_issuer"
                    else provider.issuer,
                    "exp": -3600 if provider.tamper == "expired" else 3600,
                }

            def get_audiences(self, req):
                if provider.tamper == "wrong_audience":
                    return ["another-application"]
                return [req.client.get_client_id()]

            def generate_user_info(self, user, scope):
                info = UserInfo(user)
                if provider.tamper == "wrong_nonce":
                    info["nonce"] = "not-the-nonce-you-sent"
                return info

        server = AuthorizationServer(
            app,
            query_client=lambda cid: provider.client if cid == provider.client.client_id else None,
            save_token=lambda token, req: None,
        )
        server.register_grant(Grant, [OpenID(require_nonce=True), CodeChallenge(required=True)])
        prefix = f"/{TENANT}/v2.0"

        @app.get(f"{prefix}/.well-known/openid-configuration")
        def discovery():
            return jsonify(
                issuer=provider.issuer,
                authorization_endpoint=f"{provider.issuer}/authorize",
                token_endpoint=f"{provider.issuer}/token",
                jwks_uri=f"{provider.issuer}/keys",
                response_types_supported=["code"],
                subject_types_supported=["pairwise"],
                id_token_signing_alg_values_supported=["RS256"],
                token_endpoint_auth_methods_supported=["client_secret_basic"],
                code_challenge_methods_supported=["S256"],
            )

        @app.get(f"{prefix}/keys")
        def keys():
            return jsonify(keys=[key.as_dict() for key in provider.keys])

        @app.get(f"{prefix}/authorize")
        def authorize():
            # the person has signed in at the provider: the test chose who (provider.user)
            return server.create_authorization_response(grant_user=dict(provider.user))

        @app.post(f"{prefix}/token")
        def token():
            provider.token_requests += 1
            return server.create_token_response()

        @app.errorhandler(Exception)
        def failed(exc):  # pragma: no cover - shows the provider's own bugs in the test
            return jsonify(error="server_error", error_description=repr(exc)), 500

        return app

    # -- serving -----------------------------------------------------------------------------
    def start(self) -> Provider:
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        if self.thread is not None:
            self.thread.join(10)
