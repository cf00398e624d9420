"""The mesh token: a shared secret between the gateway and the tiers.

Tiers refuse ``POST /run/...`` without it, and the gateway refuses registrations
without it, so a local process that is not part of the mesh cannot call
components behind the gateway's back or slip into its registry. It comes from
``MLMESH_TOKEN`` or, by default, from ``data/mesh.token``, generated at first
start with mode 0600. It is compared in constant time and never logged.
"""

import contextlib
import hmac
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated

from fastapi import Header

from mlmesh.errors import Unauthorized
from mlmesh.settings import Settings

__all__ = ["TOKEN_FILE", "TOKEN_HEADER", "mesh_token", "require_token", "token_matches"]

TOKEN_HEADER = "X-MLMesh-Token"  # noqa: S105 - a header name, not a secret
TOKEN_FILE = "mesh.token"  # noqa: S105 - a file name, not a secret


def mesh_token(settings: Settings) -> str:
    """The configured token, or the one in ``data/mesh.token`` (created if missing)."""
    if settings.token is not None:
        return settings.token.get_secret_value()
    path = settings.data_dir / TOKEN_FILE
    if not path.exists():
        _create(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others (mode {oct(mode & 0o777)}); chmod 600 it")
    token = path.read_text(encoding="utf-8").strip()
    if len(token) < 32:
        raise PermissionError(f"{path} holds no usable token; delete it to have a new one generated")
    return token


def _create(path: Path) -> None:
    # Written under a temporary name and linked into place, so that processes starting
    # together never see a half-written file: the first link wins, the others read it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(secrets.token_urlsafe(32))
        with contextlib.suppress(FileExistsError):  # another process won the race: use its token
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def require_token(token: str, *, why: str) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that answers 401 unless the request carries ``token``."""

    async def check(x_mlmesh_token: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
        if not token_matches(x_mlmesh_token, token):
            raise Unauthorized(f"missing or wrong {TOKEN_HEADER} header: {why}")

    return check
