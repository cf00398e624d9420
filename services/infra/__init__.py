"""Connections to the optional real parts: PostgreSQL and Redis.

Components that need them call :func:`pg_connection` / :func:`redis_client` with
their run context. Without ``MLMESH_DATABASE_URL`` / ``MLMESH_REDIS_URL`` these
answer 503 saying what to set; an unreachable server is a 503 too.
"""

from services.infra.postgres import pg_connection, pg_pool, postgres_errors, require_database_url
from services.infra.redis import redis_client, redis_errors, require_redis_url

__all__ = [
    "pg_connection",
    "pg_pool",
    "postgres_errors",
    "redis_client",
    "redis_errors",
    "require_database_url",
    "require_redis_url",
]
