"""Session affinity: which replica and which engine rank a conversation's turns belong to.

A conversation's later turns reuse its earlier tokens, so they are fastest where those tokens
are still in the prefix cache: on the same service replica, and inside it on the same vLLM
data-parallel rank. Every router in use hashes a key for this (vLLM production-stack's session
router, sgl-router, SkyRL's trajectory id); ours is the **session root**.

A session id is ``ROOT`` or ``ROOT.SUFFIX``. Every session a conversation creates shares one
root: the ``n`` choices of one request, and the new session each ``/v1`` request of a chat
creates when it sends the root back in ``X-Session-Id``. Proxies hash the root (nginx
``hash ... consistent``, ingress-nginx ``upstream-hash-by``); the engine maps it to a rank
(:func:`rise.engine.base.affinity_rank`). The suffix is random, so ids stay unguessable even
when a client chooses its root.
"""

from __future__ import annotations

import re
import secrets

ROOT_REGEX = r"[A-Za-z0-9_-]{8,64}"
"""A root: what ``secrets.token_urlsafe`` produces, or a client's own key of that alphabet."""
SESSION_ID_REGEX = ROOT_REGEX + r"(?:\.[A-Za-z0-9_-]{1,32})?"
SESSION_ID_MAX_LENGTH = 64 + 1 + 32
ROOT_PATTERN = re.compile(ROOT_REGEX)
SESSION_ID_PATTERN = re.compile(SESSION_ID_REGEX)


def new_root() -> str:
    """A fresh, unguessable root (128 bits)."""
    return secrets.token_urlsafe(16)


def session_root(session_id: str) -> str:
    """The root of a session id (the id itself when it has no suffix)."""
    return session_id.split(".", 1)[0]


def is_root(value: str) -> bool:
    return ROOT_PATTERN.fullmatch(value) is not None


def is_session_id(value: str) -> bool:
    return SESSION_ID_PATTERN.fullmatch(value) is not None


def new_session_ids(n: int, root: str | None = None) -> list[str]:
    """Ids for the ``n`` sessions of one request, all under one root.

    Without a given root the first id is a fresh root itself (so a plain single session keeps
    a plain id); every other id is ``root.<random suffix>``.
    """
    if root is not None and not is_root(root):
        raise ValueError(f"not a session root: {root!r}")
    ids = [] if root is not None else [new_root()]
    base = root if root is not None else ids[0]
    while len(ids) < n:
        ids.append(f"{base}.{secrets.token_urlsafe(9)}")
    return ids[:n]
