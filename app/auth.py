"""Optional Bearer API keys, as one ``Annotated`` dependency that yields the caller's owner tag.

With ``RISE_API_KEYS`` empty every request is anonymous (owner None). With keys, a request
must send ``Authorization: Bearer <key>`` for one of them; the owner tag is the key's SHA-256
digest, which sessions store to stay visible only to the key that created them. Keys are
compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized
from app.sessions import owner_of

_bearer = HTTPBearer(auto_error=False, description="One of RISE_API_KEYS, when keys are set.")


def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The owner tag of the caller's key; None when the service runs without keys."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return None
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'", headers=challenge)
    given = credentials.credentials.encode()
    for key in keys:
        if hmac.compare_digest(given, key.encode()):
            return owner_of(key)
    raise Unauthorized("unknown API key", headers=challenge)


Owner = Annotated[str | None, Depends(authenticate)]
