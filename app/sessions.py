"""Session storage: every solve is a session, stored as JSON after every turn.

A :class:`Session` is a RISE :class:`~rise.episode.Episode` (with its exact token ids, so a
later request can continue it at the token level) plus who owns it and the
:class:`~rise.plan.RequestPlan` its last run followed (a continuation starts from it).
It is stored as JSON — never pickle — through the small :class:`SessionStore` protocol:

- :class:`RedisStore` (production, ``RISE_REDIS_URL``): one ``SET key json EX ttl`` per write,
  inside ``MULTI``, so a write is atomic and a crash or outage never leaves half a session.
  Connection and timeout errors become :class:`~app.errors.StoreUnavailable` (503); redis-py
  reconnects by itself when the server is back. A sorted set of expiry times counts active
  sessions without ``SCAN``, and a lease key (``SET NX EX``) keeps two replicas from running
  turns on one session at once.
- :class:`MemoryStore` (the embedded default): the same JSON in a dict, with the same TTL.

Owners are SHA-256 digests of API keys, never the keys themselves.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from app.errors import StoreUnavailable
from rise.episode import Episode
from rise.plan import RequestPlan

T = TypeVar("T")
_PREFIX = "rise:session:"
_INDEX = "rise:sessions"  # sorted set: session id -> expiry time (unix seconds)


def owner_of(api_key: str | None) -> str | None:
    """The owner tag stored with a session: a digest of the key, or None without keys."""
    return None if api_key is None else hashlib.sha256(api_key.encode()).hexdigest()


@dataclass
class Session:
    """One stored episode, its owner and the plan its turns ran with."""

    episode: Episode
    owner: str | None = None
    plan: RequestPlan = field(default_factory=RequestPlan)  # what a continuation starts from
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def id(self) -> str:
        return self.episode.id

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": 1,
                "owner": self.owner,
                "options": self.plan.options(),
                "created_at": self.created_at,
                "updated_at": self.updated_at,
                "episode": self.episode.to_dict(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Session:
        data = json.loads(text)
        return cls(
            episode=Episode.from_dict(data["episode"]),
            owner=data.get("owner"),
            plan=RequestPlan.from_options(data.get("options") or {}),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
        )


class SessionStore(Protocol):
    """Where sessions live; every method raises StoreUnavailable when the store is down."""

    ttl_s: int

    async def get(self, session_id: str) -> Session | None: ...

    async def put(self, session: Session) -> None: ...

    async def delete(self, session_id: str) -> bool: ...

    async def count(self) -> int: ...

    async def acquire(self, session_id: str, token: str) -> bool:
        """Take the session's lease (False when another run holds it)."""
        ...

    async def release(self, session_id: str, token: str) -> None: ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Sessions in this process (the embedded default); JSON text, so nothing is shared."""

    def __init__(self, ttl_s: int, lease_s: int = 300) -> None:
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self._data: dict[str, tuple[float, str]] = {}  # id -> (expires_at, json)
        self._leases: dict[str, tuple[float, str]] = {}  # id -> (expires_at, token)

    async def get(self, session_id: str) -> Session | None:
        item = self._data.get(session_id)
        if item is None or item[0] <= time.time():
            self._data.pop(session_id, None)
            return None
        return Session.from_json(item[1])

    async def put(self, session: Session) -> None:
        session.updated_at = time.time()
        self._data[session.id] = (session.updated_at + self.ttl_s, session.to_json())
        lease = self._leases.get(session.id)
        if lease is not None:
            self._leases[session.id] = (time.time() + self.lease_s, lease[1])

    async def delete(self, session_id: str) -> bool:
        return self._data.pop(session_id, None) is not None

    async def count(self) -> int:
        now = time.time()
        for key in [k for k, (expires, _) in self._data.items() if expires <= now]:
            del self._data[key]
        return len(self._data)

    async def acquire(self, session_id: str, token: str) -> bool:
        held = self._leases.get(session_id)
        if held is not None and held[0] > time.time() and held[1] != token:
            return False
        self._leases[session_id] = (time.time() + self.lease_s, token)
        return True

    async def release(self, session_id: str, token: str) -> None:
        held = self._leases.get(session_id)
        if held is not None and held[1] == token:
            del self._leases[session_id]

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


# Compare-and-delete: release a lease only if this run still holds it.
_RELEASE_LUA = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


class RedisStore:
    """Sessions in Redis, shared by every replica behind one Service."""

    def __init__(self, url: str, ttl_s: int, lease_s: int = 300, timeout_s: float = 2.0) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff

        self.ttl_s = ttl_s
        self.lease_s = lease_s
        # redis-py's default retries 10 times with backoff up to seconds: during an outage that
        # holds every request for long. Two quick retries ride out a blip; beyond that, a 503.
        self._redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
            health_check_interval=10,
        )

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return await make()
        except (TimeoutError, RedisConnectionError, RedisTimeoutError, OSError) as error:
            raise StoreUnavailable(f"session store unavailable: {error}") from error

    @staticmethod
    def _key(session_id: str) -> str:
        return _PREFIX + session_id

    async def get(self, session_id: str) -> Session | None:
        raw = await self._call(lambda: self._redis.get(self._key(session_id)))
        return None if raw is None else Session.from_json(raw)

    async def put(self, session: Session) -> None:
        session.updated_at = time.time()
        text = session.to_json()

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key(session.id), text, ex=self.ttl_s)
                pipe.zadd(_INDEX, {session.id: session.updated_at + self.ttl_s})
                pipe.expire(self._key(session.id) + ":lease", self.lease_s)
                await pipe.execute()

        await self._call(write)

    async def delete(self, session_id: str) -> bool:
        async def remove() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key(session_id))
                pipe.zrem(_INDEX, session_id)
                deleted, _ = await pipe.execute()
                return int(deleted)

        return bool(await self._call(remove))

    async def count(self) -> int:
        async def count() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(_INDEX, "-inf", time.time())
                pipe.zcard(_INDEX)
                _, size = await pipe.execute()
                return int(size)

        return await self._call(count)

    async def acquire(self, session_id: str, token: str) -> bool:
        key = self._key(session_id) + ":lease"
        taken = await self._call(lambda: self._redis.set(key, token, nx=True, ex=self.lease_s))
        if taken:
            return True
        holder = await self._call(lambda: self._redis.get(key))
        return holder is not None and holder.decode() == token

    async def release(self, session_id: str, token: str) -> None:
        key = self._key(session_id) + ":lease"
        await self._call(lambda: self._redis.eval(_RELEASE_LUA, 1, key, token))  # type: ignore[misc]

    async def ping(self) -> None:
        await self._call(self._redis.ping)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self._redis.aclose()


def build_store(redis_url: str | None, ttl_s: int, lease_s: int, timeout_s: float) -> SessionStore:
    """Redis when a URL is configured, otherwise the in-process store."""
    if redis_url:
        return RedisStore(redis_url, ttl_s, lease_s, timeout_s)
    return MemoryStore(ttl_s, lease_s)


def new_lease_token() -> str:
    return secrets.token_hex(8)
