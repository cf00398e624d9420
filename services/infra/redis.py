"""Redis through redis-py, one client (with its own connection pool) per service process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from mlmesh.errors import ServiceUnavailable
from mlmesh.settings import Settings
from services.framework.context import RunContext

__all__ = ["redis_client", "redis_errors", "require_redis_url"]


def require_redis_url(settings: Settings) -> str:
    if not settings.redis_url:
        raise ServiceUnavailable("Redis is not configured: set MLMESH_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    return settings.redis_url


def redis_client(ctx: RunContext) -> redis.Redis:
    """The service's client for the configured Redis (closed with the service)."""
    url = require_redis_url(ctx.settings)
    key = f"redis:{url}"
    client = ctx.resources.get(key)
    if client is None:
        client = ctx.resources.setdefault(
            key, redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30)
        )
    return client  # type: ignore[no-any-return]


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn an unreachable or timing-out Redis into 503."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ServiceUnavailable(f"Redis unreachable: {exc}", retry_after=5) from exc
