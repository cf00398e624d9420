"""Arrays inline as JSON or by reference to a file under ``data/`` (.npy, .csv, .json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from mlmesh.errors import BadRequest, InvalidInput
from services.framework.models import ComponentInput, FiniteFloat
from services.framework.paths import confine

__all__ = ["FileRef", "Numbers", "load_numbers"]


class FileRef(ComponentInput):
    """A numeric column in a file under the data directory."""

    path: str = Field(min_length=1, max_length=1024, description="path relative to data/ (.npy, .csv or .json)")
    column: str | Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="CSV column name or index; required for multi-column files"
    )


# Inline lists are bounded by the body limit; files by the data directory.
Numbers = list[FiniteFloat] | FileRef


def load_numbers(value: Numbers, data_dir: Path, *, field: str) -> np.ndarray:
    """The values of ``field`` as a 1-D float64 array, finite and non-empty."""
    if isinstance(value, list):
        arr = np.asarray(value, dtype=np.float64)
    else:
        arr = _read_file(confine(data_dir, value.path, field=f"{field}.path"), value.column, field)
    if arr.ndim != 1:
        raise InvalidInput(field, f"must be one-dimensional; got shape {list(arr.shape)}")
    if arr.size == 0:
        raise InvalidInput(field, "must contain at least one value")
    if not np.isfinite(arr).all():
        raise InvalidInput(field, "must contain only finite numbers (no NaN or infinity)")
    return arr


def _read_file(path: Path, column: str | int | None, field: str) -> np.ndarray:
    try:
        is_file = path.is_file()
    except OSError as exc:  # e.g. a name longer than the file system allows
        raise BadRequest(f"{field}.path: not a usable path ({exc.strerror or type(exc).__name__})") from exc
    if not is_file:
        raise BadRequest(f"{field}.path: no such file in the data directory")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 2 and column is not None:
                if not isinstance(column, int):
                    raise InvalidInput(f"{field}.column", "must be an index for a 2-D .npy file")
                arr = arr[:, column]
            return np.asarray(arr, dtype=np.float64)
        if suffix == ".json":
            return np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.float64)
        if suffix == ".csv":
            return _read_csv(path, column, field)
    except (ValueError, TypeError, IndexError, OSError) as exc:
        raise BadRequest(f"{field}.path: could not read {path.name}: {type(exc).__name__}: {exc}") from exc
    raise BadRequest(f"{field}.path: unsupported file type {suffix!r}; use .npy, .csv or .json")


def _read_csv(path: Path, column: str | int | None, field: str) -> np.ndarray:
    with path.open(encoding="utf-8") as fh:
        first = fh.readline().strip().split(",")
    has_header = any(_not_number(cell) for cell in first)
    if isinstance(column, str):
        if not has_header or column not in first:
            raise InvalidInput(f"{field}.column", f"no column named {column!r} in {path.name}")
        index = first.index(column)
    elif isinstance(column, int):
        if column >= len(first):
            raise InvalidInput(f"{field}.column", f"index {column} is past the {len(first)} columns of {path.name}")
        index = column
    elif len(first) == 1:
        index = 0
    else:
        raise InvalidInput(f"{field}.column", f"{path.name} has {len(first)} columns; name one")
    return np.loadtxt(path, delimiter=",", skiprows=int(has_header), usecols=index, dtype=np.float64, ndmin=1)


def _not_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return True
    return False
