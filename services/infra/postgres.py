"""PostgreSQL through psycopg 3 and one psycopg_pool per service process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from mlmesh.errors import ServiceUnavailable
from mlmesh.settings import Settings
from services.framework.context import RunContext

__all__ = ["open_pool", "pg_connection", "pg_pool", "postgres_errors", "require_database_url"]

POOL_TIMEOUT_S = 5.0


def require_database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ServiceUnavailable(
            "PostgreSQL is not configured: set MLMESH_DATABASE_URL (e.g. postgresql://127.0.0.1:5432/test)"
        )
    return settings.database_url


def pg_pool(ctx: RunContext, *, max_size: int = 10) -> ConnectionPool:
    """The service's pool for the configured database (opened on first use, closed with the service)."""
    url = require_database_url(ctx.settings)
    key = f"postgres:{url}"
    pool = ctx.resources.get(key)
    if pool is None:
        pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=POOL_TIMEOUT_S,
            kwargs={"autocommit": True, "connect_timeout": 5},
            open=False,
            name="mlmesh",
        )
        pool = ctx.resources.setdefault(key, pool)
        open_pool(pool)
    return pool  # type: ignore[no-any-return]


def open_pool(pool: ConnectionPool) -> None:
    """Open ``pool`` and wait for its first connection; a server that never answers is 503 "unreachable".

    (Waiting for the first connection times out with the same PoolTimeout as an exhausted pool; here it
    means the server could not be reached, and the message says so.)
    """
    try:
        pool.open(wait=True, timeout=POOL_TIMEOUT_S)
    except PoolTimeout as exc:
        pool.close()
        raise ServiceUnavailable(
            f"PostgreSQL unreachable: no connection could be made within {POOL_TIMEOUT_S:g}s", retry_after=5
        ) from exc


@contextmanager
def postgres_errors() -> Iterator[None]:
    """Turn an unreachable server or an exhausted pool into 503 (with Retry-After)."""
    try:
        yield
    except PoolTimeout as exc:
        raise ServiceUnavailable(
            f"PostgreSQL pool exhausted: no connection free within {POOL_TIMEOUT_S:g}s", retry_after=1
        ) from exc
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceUnavailable(f"PostgreSQL unreachable: {reason}", retry_after=5) from exc


@contextmanager
def pg_connection(ctx: RunContext, *, timeout: float | None = None) -> Iterator[psycopg.Connection]:
    """A pooled connection (autocommit; use ``conn.transaction()`` to group statements)."""
    pool = pg_pool(ctx)
    with postgres_errors(), pool.connection(timeout=timeout) as conn:
        yield conn
