"""Confining caller-given paths to the data directory."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mlmesh.errors import BadRequest

__all__ = ["confine"]

NAME_MAX, PATH_MAX = 255, 1024  # bytes: the usual file-system limit for a name, and a bound for a relative path


def confine(base: Path, user_path: str, *, field: str = "path") -> Path:
    """Resolve ``user_path`` inside ``base`` or raise 400 naming ``field``.

    Rejects absolute paths, ``..`` segments, NUL bytes, and symlinks whose target
    lies outside ``base``. The returned path is absolute and fully resolved.
    """
    if not user_path or "\x00" in user_path:
        raise BadRequest(f"{field}: must be a non-empty relative path without NUL bytes")
    pure = PurePosixPath(user_path.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and pure.parts[0].endswith(":")):
        raise BadRequest(f"{field}: must be relative to the data directory; got an absolute path")
    if ".." in pure.parts:
        raise BadRequest(f"{field}: must not contain '..'")
    # Checked here because resolve() does not touch a missing file: the error would come later, from open().
    longest = max((len(part.encode()) for part in pure.parts), default=0)
    if longest > NAME_MAX or len(user_path.encode()) > PATH_MAX:
        raise BadRequest(f"{field}: too long (a name may have {NAME_MAX} bytes, the path {PATH_MAX})")
    root = base.resolve()
    try:
        resolved = (root / Path(*pure.parts)).resolve()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise BadRequest(f"{field}: not a usable path ({exc.strerror or type(exc).__name__})") from exc
    if resolved != root and root not in resolved.parents:
        raise BadRequest(f"{field}: resolves outside the data directory (through a symlink)")
    return resolved
