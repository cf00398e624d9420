"""The mesh token: generated once with mode 0600, shared by racing processes, refused when exposed."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlmesh.security import TOKEN_FILE, mesh_token, token_matches
from mlmesh.settings import Settings


def test_token_is_generated_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: mesh_token(settings), range(16)))
    assert len(tokens) == 1
    (token,) = tokens
    assert len(token) >= 32
    path = tmp_path / "data" / TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [TOKEN_FILE]  # no temporary files left


def test_exposed_or_empty_token_files_are_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    path = tmp_path / TOKEN_FILE
    mesh_token(settings)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        mesh_token(settings)
    os.chmod(path, 0o600)
    path.write_text("short")
    with pytest.raises(PermissionError, match="no usable token"):
        mesh_token(settings)


def test_configured_token_wins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, token="from-the-environment-0123456789abcdef")
    assert mesh_token(settings) == "from-the-environment-0123456789abcdef"
    assert not (tmp_path / TOKEN_FILE).exists()


def test_token_comparison() -> None:
    assert token_matches("abc", "abc")
    assert not token_matches("abd", "abc")
    assert not token_matches(None, "abc")
    assert not token_matches("", "abc")
