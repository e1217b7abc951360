"""Who may call the API: API keys (bearer tokens) with scopes, and short-lived report tickets.

- **Keys.** Settings hold only the SHA-256 hex of each key (:func:`hash_key`) with its scopes: ``score``
  (``POST /v1/score``) and ``read:alerts`` (the dashboard's data: alerts show card tokens, last four digits and
  amounts). A request presents its key as ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``). Its hash is
  compared with every stored hash in constant time (:func:`hmac.compare_digest`, no early exit), so response time
  says nothing about how close a guess was. Keys are never logged; a key is named by the first 8 hex characters
  of its hash.
- **Verdicts.** No key or an unknown key: ``401`` with ``WWW-Authenticate: Bearer``; a known key without the
  scope: ``403``. Required by default outside ``environment=dev``, and in dev once keys are set
  (``api.require_auth`` overrides).
- **Tickets.** A browser cannot put a header on a link, so a page with a key asks for a ticket (an HMAC of the path
  and its expiry under a per-process secret, valid :data:`TICKET_S` seconds) and opens ``path?ticket=...``.

Pure apart from :func:`guard` and :func:`answer` (FastAPI) and the secret :class:`Tickets` draws: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from fraudpipe.settings import ApiSettings

__all__ = [
    "SCOPES",
    "TICKET_S",
    "Keys",
    "Refused",
    "Scope",
    "Tickets",
    "Verdict",
    "answer",
    "guard",
    "hash_key",
    "new_key",
    "presented",
]

log = logging.getLogger(__name__)

Scope = Literal["score", "read:alerts"]
SCOPES: tuple[Scope, ...] = ("score", "read:alerts")
TICKET_S = 60.0
"""Lifetime of a report ticket, seconds."""


def hash_key(key: str) -> str:
    """The SHA-256 hex (64 lowercase characters) of ``key`` (UTF-8): what settings store."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A new random key: ``fpk_`` then 32 bytes from the OS as URL-safe base64 (47 characters in all)."""
    return f"fpk_{secrets.token_urlsafe(32)}"


def presented(authorization: str | None, api_key: str | None) -> str | None:
    """The key a request presents: the token of ``Authorization: Bearer <token>``, else ``X-API-Key``."""
    if authorization:
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    return api_key.strip() if api_key and api_key.strip() else None


@dataclass(frozen=True, slots=True)
class Verdict:
    """``status``: 200 (go on), 401 or 403; ``reason`` and ``detail`` as the API's error body (never the key);
    ``key_id``: the first 8 hex characters of the key's hash when it is known."""

    status: int
    reason: str = "ok"
    detail: str = ""
    key_id: str | None = None
    scope: Scope | None = None


class Keys:
    """The API's keys: hash -> scopes, and whether a key is required at all."""

    def __init__(self, hashes: Mapping[str, Iterable[str]], *, required: bool) -> None:
        self.entries: tuple[tuple[str, frozenset[str]], ...] = tuple(
            (digest.lower(), frozenset(scopes)) for digest, scopes in hashes.items()
        )
        self.required = required

    @classmethod
    def from_settings(cls, api: ApiSettings, environment: str) -> Keys:
        """Required when ``api.require_auth`` says so; unset: outside dev, or in dev once keys are set."""
        required = api.require_auth if api.require_auth is not None else (environment != "dev" or bool(api.keys))
        return cls(api.keys, required=required)

    def check(self, key: str | None, scope: Scope) -> Verdict:
        """May ``key`` (as presented, or ``None``) use ``scope``?"""
        if not self.required:
            return Verdict(200, scope=scope)
        if key is None:
            return Verdict(401, "unauthorized", "an API key is required: Authorization: Bearer <key>", scope=scope)
        digest = hash_key(key)
        granted: frozenset[str] | None = None
        for known, scopes in self.entries:  # every entry, whatever matched: the time does not depend on the key
            if hmac.compare_digest(digest, known):
                granted = scopes
        if granted is None:
            return Verdict(401, "unauthorized", "unknown API key", scope=scope)
        if scope not in granted:
            return Verdict(403, "forbidden", f"this API key lacks the scope {scope}", digest[:8], scope)
        return Verdict(200, key_id=digest[:8], scope=scope)


class Refused(Exception):  # noqa: N818 (a verdict, not an error of ours)
    """Raised by :func:`guard` with the verdict; the API turns it into the response (:meth:`headers`)."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict

    def headers(self) -> dict[str, str]:
        """``WWW-Authenticate`` as RFC 6750 words it (a challenge for 401, ``insufficient_scope`` for 403), and
        ``Connection: close``: the body of a refused request is not read, nor drained."""
        if self.verdict.status == 401:
            return {"WWW-Authenticate": 'Bearer realm="fraudpipe"', "Connection": "close"}
        scope = self.verdict.scope
        challenge = f'Bearer realm="fraudpipe", error="insufficient_scope", scope="{scope}"'
        return {"WWW-Authenticate": challenge, "Connection": "close"}


class Tickets:
    """Short-lived report links: ``mint(path, now_s)`` -> ticket, ``valid(ticket, path, now_s)``. ``now_s``: wall
    seconds (the clock's). The secret is drawn per process: tickets end with it."""

    def __init__(self, secret: bytes | None = None, lifetime_s: float = TICKET_S) -> None:
        self.secret = secret if secret is not None else secrets.token_bytes(32)
        self.lifetime_s = lifetime_s

    def _mac(self, path: str, expires: int) -> str:
        return hmac.new(self.secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def mint(self, path: str, now_s: float) -> str:
        """A ticket for ``path``: ``<expiry, unix seconds>.<HMAC-SHA-256 hex>``."""
        expires = int(now_s + self.lifetime_s)
        return f"{expires}.{self._mac(path, expires)}"

    def valid(self, ticket: str | None, path: str, now_s: float) -> bool:
        """True for a ticket minted for ``path`` that has not expired."""
        expires_text, _, mac = (ticket or "").partition(".")
        if not expires_text.isascii() or not expires_text.isdigit() or len(expires_text) > 12:
            return False
        expires = int(expires_text)
        return now_s < expires and hmac.compare_digest(mac, self._mac(path, expires))


def guard(keys: Keys, scope: Scope) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: raises :class:`Refused` unless the request's key has ``scope``."""

    async def check(request: Request) -> None:
        verdict = keys.check(presented(request.headers.get("authorization"), request.headers.get("x-api-key")), scope)
        if verdict.status != 200:
            log.debug("refused %s %s: %s (key %s)", request.method, request.url.path, verdict.reason,
                      verdict.key_id or "none")  # fmt: skip
            raise Refused(verdict)

    return check


async def answer(_: Request, error: Exception) -> Response:
    """The exception handler for :class:`Refused`: the API's error body (``{"reason", "detail"}``) and the
    ``WWW-Authenticate`` challenge."""
    assert isinstance(error, Refused)
    verdict = error.verdict
    body = {"reason": verdict.reason, "detail": verdict.detail}
    return JSONResponse(body, status_code=verdict.status, headers=error.headers())
