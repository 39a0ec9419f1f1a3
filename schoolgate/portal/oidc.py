"""Staff sign-in through the school's identity provider: OpenID Connect's authorization code
flow with ``authlib`` (Microsoft Entra ID, Google Workspace, or any provider with discovery).

:class:`OidcClient` knows nothing of Flask: the portal's sign-in view keeps the
:class:`PendingLogin` of :meth:`OidcClient.start` in the staff member's session, sends the
browser to the provider, and hands the callback's query to :meth:`OidcClient.finish`, which
returns the validated ID token's claims or raises :class:`OidcError`:

* **state** (against CSRF on the callback), **PKCE** (S256: a code intercepted on its way back
  is useless without the verifier) and **nonce** (an ID token replayed from another sign-in
  is refused); a sign-in not finished within 10 minutes is refused;
* the **ID token** is checked by its signature with the provider's published keys (JWKS,
  fetched again once when a token names a key not seen yet: keys rotate), only with
  asymmetric algorithms; then issuer, audience (and ``azp``), expiry, issue time, nonce and
  ``at_hash``;
* the **school's own accounts only**: Entra's tenant (``tid`` in ``allowed_tenants``; a
  multi-tenant issuer ``.../{tenantid}/v2.0`` is filled in with it), Google's hosted domain
  (``hd`` in ``allowed_domains``), or the e-mail's domain for other providers, which must be
  verified (``email_verified``) when the provider says.

:func:`staff_for` then finds the staff account the claims name, with its roles from the staff
table or from a group claim (``group_roles``), creating or updating the account in that case.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.jose import JsonWebKey, JsonWebToken
from authlib.jose.errors import JoseError
from authlib.oidc.core import CodeIDToken
from sqlalchemy.orm import Session

from schoolgate.core.staff_signin import OidcProvider
from schoolgate.portal.auth import find_staff
from schoolgate.storage.exceptions import audit
from schoolgate.storage.models import StaffRow


def _claims_error() -> type[Exception]:
    """What a bad ID token claim raises: Authlib 1.7+ validates claims with joserfc (Python
    3.12 gets it; 3.11 gets Authlib 1.6, which raises its own)."""
    try:
        from joserfc.errors import JoseError as claims_error
    except ImportError:  # pragma: no cover - Authlib 1.6 and older
        return JoseError
    return claims_error


ClaimsError = _claims_error()

log = logging.getLogger(__name__)

# Asymmetric only: a token signed with a shared secret (HS256 keyed with the public key) or
# "none" is never accepted.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
LOGIN_TIMEOUT = 600.0  # seconds from start to callback
LEEWAY = 60  # seconds of clock difference allowed on exp, iat and nbf
METADATA_TTL = 3600.0
JWKS_REFETCH_AFTER = 60.0  # at most once a minute on an unknown key id
HTTP_TIMEOUT = 10.0
NOT_A_PASSWORD = "oidc"  # password_hash of accounts made at sign-in: no password works


class OidcError(Exception):
    """A sign-in that is refused: ``reason`` is for the audit trail, the message for the
    person signing in."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PendingLogin:
    """What the portal keeps in the browser's session between :meth:`OidcClient.start` and
    :meth:`OidcClient.finish` (signed cookie; nothing here is secret from the browser, but it
    must come back unchanged)."""

    provider: str
    state: str
    nonce: str
    code_verifier: str
    started_at: float
    next: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingLogin:
        return cls(
            provider=str(data["provider"]),
            state=str(data["state"]),
            nonce=str(data["nonce"]),
            code_verifier=str(data["code_verifier"]),
            started_at=float(data["started_at"]),
            next=str(data.get("next") or ""),
        )


class OidcClient:
    """One provider's relying party. Thread-safe; keeps the discovery document and the keys."""

    def __init__(
        self,
        provider: OidcProvider,
        *,
        redirect_uri: str,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.redirect_uri = redirect_uri
        self.http = http or httpx.Client(timeout=HTTP_TIMEOUT, follow_redirects=False)
        self.clock = clock
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: Any = None
        self._refreshed_at: float | None = None  # the last fetch for an unknown key id

    # -- the provider's documents --------------------------------------------------------
    def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            answer = self.http.get(url)
            answer.raise_for_status()
            data = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(
                f"The sign-in service {self.provider.label!r} could not be reached; try again "
                "in a minute, or sign in with your password.",
                f"{what} unavailable: {exc}",
            ) from None
        if not isinstance(data, dict):
            raise OidcError("The sign-in service answered wrongly.", f"{what} is not an object")
        return data

    def metadata(self) -> dict[str, Any]:
        """The discovery document (cached for an hour); its issuer must be the one configured
        (OpenID Connect Discovery 1.0, section 4.3)."""
        with self._lock:
            if self._metadata is not None and self.monotonic() - self._metadata_at < METADATA_TTL:
                return self._metadata
        data = self._get_json(self.provider.discovery_url, "discovery document")
        issuer = str(data.get("issuer") or "").rstrip("/")
        if issuer != self.provider.issuer:
            raise OidcError(
                "The sign-in service is not the one configured.",
                f"discovery issuer {issuer!r} is not {self.provider.issuer!r}",
            )
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(data.get(key), str):
                raise OidcError("The sign-in service answered wrongly.", f"discovery lacks {key}")
        with self._lock:
            self._metadata, self._metadata_at = data, self.monotonic()
        return data

    def _keys(self, *, refresh: bool = False) -> Any:
        with self._lock:
            if self._jwks is not None and not refresh:
                return self._jwks
            if refresh:  # at most once a minute, however many unknown key ids come
                last = self._refreshed_at
                if last is not None and self.monotonic() - last < JWKS_REFETCH_AFTER:
                    return self._jwks
                self._refreshed_at = self.monotonic()
        data = self._get_json(self.metadata()["jwks_uri"], "JWKS")
        try:
            keys = JsonWebKey.import_key_set(data)
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcError("The sign-in service answered wrongly.", f"bad JWKS: {exc}") from None
        with self._lock:
            self._jwks = keys
        return keys

    def _oauth(self) -> OAuth2Client:
        p = self.provider
        metadata = self.metadata()
        methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        auth = "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
        return OAuth2Client(
            client_id=p.client_id,
            client_secret=p.client_secret,
            scope=" ".join(p.scopes),
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=auth,
            timeout=HTTP_TIMEOUT,
        )

    # -- the flow ----------------------------------------------------------------------------
    def start(self, next_path: str = "") -> tuple[str, PendingLogin]:
        """The address to send the browser to, and what to keep until it comes back."""
        pending = PendingLogin(
            provider=self.provider.name,
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(64),
            started_at=self.clock(),
            next=next_path,
        )
        extra: dict[str, str] = {"nonce": pending.nonce}
        if self.provider.kind == "google" and len(self.provider.allowed_domains) == 1:
            extra["hd"] = next(iter(self.provider.allowed_domains))  # a hint; checked anyway
        if self.provider.kind == "entra":
            extra["prompt"] = "select_account"
        with self._oauth() as client:
            url, _ = client.create_authorization_url(
                self.metadata()["authorization_endpoint"],
                state=pending.state,
                code_verifier=pending.code_verifier,
                **extra,
            )
        return url, pending

    def finish(self, params: Mapping[str, str], pending: PendingLogin) -> dict[str, Any]:
        """The validated ID token's claims for the callback's query ``params``."""
        if pending.provider != self.provider.name:
            raise OidcError("This sign-in was started elsewhere; start again.", "provider mixup")
        if not hmac.compare_digest(str(params.get("state") or ""), pending.state):
            raise OidcError("This sign-in was not started here; start again.", "state mismatch")
        if self.clock() - pending.started_at > LOGIN_TIMEOUT:
            raise OidcError("The sign-in took too long; start again.", "sign-in timed out")
        if params.get("error"):
            said = str(params.get("error_description") or params["error"])[:300]
            raise OidcError(f"The sign-in service refused: {said}", f"provider error: {said}")
        code = str(params.get("code") or "")
        if not code:
            raise OidcError("The sign-in service sent no code; start again.", "no code")
        try:
            with self._oauth() as client:
                token = client.fetch_token(
                    self.metadata()["token_endpoint"],
                    grant_type="authorization_code",
                    code=code,
                    code_verifier=pending.code_verifier,
                )
        except Exception as exc:  # noqa: BLE001 - any failure of the exchange refuses
            raise OidcError(
                "The sign-in service did not accept this sign-in; start again.",
                f"token exchange failed: {type(exc).__name__}: {exc}",
            ) from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("The sign-in service sent no identity.", "no id_token")
        claims = self._validate(id_token, pending, token.get("access_token"))
        self._check_school(claims)
        return dict(claims)

    def _decode(self, id_token: str, keys: Any, params: dict[str, Any], options: dict) -> Any:
        return JsonWebToken(list(ALGORITHMS)).decode(
            id_token, keys, claims_cls=CodeIDToken, claims_options=options, claims_params=params
        )

    def _validate(self, id_token: str, pending: PendingLogin, access_token: Any) -> Any:
        params = {"nonce": pending.nonce, "client_id": self.provider.client_id}
        if isinstance(access_token, str):
            params["access_token"] = access_token
        options = {
            "iss": {"essential": True},
            "aud": {"essential": True, "value": self.provider.client_id},
            "nonce": {"essential": True},
        }
        try:
            try:
                claims = self._decode(id_token, self._keys(), params, options)
            except ValueError as exc:  # an unknown key id: the provider may have rotated keys
                if "key not found" not in str(exc).lower():
                    raise
                claims = self._decode(id_token, self._keys(refresh=True), params, options)
            claims.validate(now=int(self.clock()), leeway=LEEWAY)
        except (JoseError, ClaimsError, ValueError) as exc:
            raise OidcError(
                "The identity the sign-in service sent could not be trusted; start again.",
                f"ID token refused: {exc}",
            ) from None
        expected = self._issuer_for(claims)
        if str(claims.get("iss") or "").rstrip("/") != expected:
            raise OidcError(
                "The identity came from another sign-in service.",
                f"ID token issuer {claims.get('iss')!r} is not {expected!r}",
            )
        return claims

    def _issuer_for(self, claims: Mapping[str, Any]) -> str:
        issuer = self.metadata()["issuer"].rstrip("/")
        if "{tenantid}" in issuer:  # Entra's multi-tenant endpoints
            return issuer.replace("{tenantid}", str(claims.get("tid") or "-"))
        return issuer

    def _check_school(self, claims: Mapping[str, Any]) -> None:
        p = self.provider
        if p.allowed_tenants:
            tenant = str(claims.get("tid") or "").lower()
            if tenant not in p.allowed_tenants:
                raise OidcError(
                    "This account is not one of the school's.", f"tenant {tenant!r} not allowed"
                )
        if p.allowed_domains:
            if p.kind == "google":
                domain = str(claims.get("hd") or "").lower()
            else:
                domain = _domain(_username_claim(p, claims))
                if claims.get("email_verified") is False:
                    raise OidcError(
                        "This account's e-mail address is not verified.", "email not verified"
                    )
            if domain not in p.allowed_domains:
                raise OidcError(
                    "This account is not one of the school's.", f"domain {domain!r} not allowed"
                )


def _username_claim(provider: OidcProvider, claims: Mapping[str, Any]) -> str:
    value = claims.get(provider.username_claim)
    if not isinstance(value, str) or not value.strip():
        raise OidcError(
            "The sign-in service did not say who you are.",
            f"no {provider.username_claim!r} claim",
        )
    return value.strip().lower()


def _domain(name: str) -> str:
    return name.rpartition("@")[2] if "@" in name else ""


def username_for(provider: OidcProvider, claims: Mapping[str, Any]) -> str:
    """The staff user name the claims name: ``mrs.khan@school.example`` is ``mrs.khan`` with
    ``strip_domain`` (the domain is one of the school's: checked by the client)."""
    name = _username_claim(provider, claims)
    if provider.strip_domain and "@" in name:
        name = name.partition("@")[0]
    if not name or any(c.isspace() for c in name) or len(name) > 200:
        raise OidcError("The sign-in service sent an unusable name.", f"bad user name {name!r}")
    return name


def roles_from_groups(provider: OidcProvider, claims: Mapping[str, Any]) -> list[str]:
    if "_claim_names" in claims and provider.groups_claim in (claims.get("_claim_names") or {}):
        raise OidcError(
            "Your account is in too many groups for the sign-in service to list; ask IT Support.",
            "group overage: the token does not list the groups (use app roles, groups_claim: "
            "roles)",
        )
    groups = claims.get(provider.groups_claim) or []
    if isinstance(groups, str):
        groups = [groups]
    roles: list[str] = []
    for group in groups:
        for role in provider.group_roles.get(str(group), ()):
            if role not in roles:
                roles.append(role)
    return roles


def staff_for(
    session: Session, provider: OidcProvider, claims: Mapping[str, Any], *, now: Any
) -> StaffRow:
    """The staff account these (validated) claims sign in as. With ``roles_from:
    staff_table`` it must exist and be active; with ``groups`` its roles are the groups' at
    every sign-in (an account is made on a first sign-in; a member of staff in no mapped group
    is refused, and loses the roles they had). Changes are audited; the caller commits."""
    username = username_for(provider, claims)
    row = find_staff(session, username)
    actor = f"oidc:{provider.name}"
    if provider.roles_from == "staff_table":
        if row is None or not row.active:
            raise OidcError(
                f"There is no portal account for {username}; ask IT Support to add one.",
                f"no active staff account {username!r}",
            )
        return row
    roles = roles_from_groups(provider, claims)
    if row is not None and not row.active:
        raise OidcError("This portal account is disabled.", f"staff account {username!r} disabled")
    if not roles:
        if row is not None and row.role_list:
            audit(session, actor, "staff.roles", f"staff {username}", "no mapped group: no roles")
            row.set_roles(())
        raise OidcError(
            "Your account is in no group that gives access to the portal.",
            f"{username!r} is in no mapped group",
        )
    joined = ",".join(roles)
    if row is None:
        row = StaffRow(
            username=username,
            display_name=str(claims.get("name") or username)[:200],
            email=str(claims.get("email") or "")[:320],
            groups="",
            password_hash=NOT_A_PASSWORD,
            active=True,
            created_at=now,
            password_changed_at=now,
        )
        row.set_roles(roles)
        session.add(row)
        session.flush()
        audit(session, actor, "staff.add", f"staff {username}", f"roles {joined} from groups")
    elif set(row.role_list) != set(roles):
        was = ",".join(row.role_list)
        audit(session, actor, "staff.roles", f"staff {username}", f"{was} -> {joined}")
        row.set_roles(roles)
    return row


__all__ = [
    "OidcClient",
    "OidcError",
    "PendingLogin",
    "roles_from_groups",
    "staff_for",
    "username_for",
]
