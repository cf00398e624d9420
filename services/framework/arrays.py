"""Arrays inline as JSON or by reference to a file under ``data/`` (.npy, .csv, .json).

``load_numbers`` reads one numeric column; ``read_matrix`` reads a 2-D matrix (rows × features) with the
column names a CSV header gives. Components bound sizes and values for their own methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import Field

from mlmesh.errors import BadRequest, InvalidInput
from services.framework.models import ComponentInput, FiniteFloat
from services.framework.paths import confine

__all__ = ["FileRef", "MatrixRef", "Numbers", "load_numbers", "read_matrix"]


class FileRef(ComponentInput):
    """A numeric column in a file under the data directory."""

    path: str = Field(min_length=1, max_length=1024, description="path relative to data/ (.npy, .csv or .json)")
    column: str | Annotated[int, Field(ge=0)] | None = Field(
        default=None, description="CSV column name or index; required for multi-column files"
    )


# Inline lists are bounded by the body limit; files by the data directory.
Numbers = list[FiniteFloat] | FileRef

MAX_MATRIX_COLUMNS = 1000


class MatrixRef(ComponentInput):
    """A feature matrix (rows × features) in a file under the data directory."""

    path: str = Field(min_length=1, max_length=1024, description="path relative to data/ (.npy 2-D, .csv, .json)")
    columns: list[str | Annotated[int, Field(ge=0)]] | None = Field(
        None,
        min_length=1,
        max_length=MAX_MATRIX_COLUMNS,
        description="columns to use (CSV names or indices); default all",
    )


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


def read_matrix(ref: MatrixRef, data_dir: Path, *, field: str, max_cells: int) -> tuple[np.ndarray, list[str] | None]:
    """The file's matrix as float64 (a 1-D file is one column), and its column names when a CSV header has them.

    Every failure is a 4xx naming ``field``: a path outside data/ or unreadable (400), an unknown column or more
    than ``max_cells`` values (422). Values are not checked here: callers bound them for their methods.
    """
    path = confine(data_dir, ref.path, field=f"{field}.path")
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            raise BadRequest(f"{field}.path: no such file in the data directory")
        if suffix == ".npy":
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            if mapped.size > max_cells:
                raise InvalidInput(field, f"at most {max_cells:,} cells; {path.name} has {mapped.size:,}")
            arr, names = np.array(mapped, dtype=np.float64), None
        elif suffix == ".json":
            if path.stat().st_size > 16 * max_cells:
                raise InvalidInput(field, f"{path.name} is too large for a JSON matrix; use .npy")
            arr, names = np.asarray(json.loads(path.read_text(encoding="utf-8")), dtype=np.float64), None
        elif suffix == ".csv":
            return _read_csv_matrix(path, ref.columns, field)
        else:
            raise BadRequest(f"{field}.path: unsupported file type {suffix!r}; use .npy, .csv or .json")
    except OSError as exc:  # e.g. a name too long for the file system; strerror carries no absolute path
        raise BadRequest(f"{field}.path: could not read the file: {exc.strerror}") from exc
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"{field}.path: could not read {path.name}: {type(exc).__name__}: {exc}") from exc
    if ref.columns is None:
        return arr, names
    if arr.ndim != 2:
        raise InvalidInput(f"{field}.columns", "columns can only be chosen from a 2-D matrix")
    return arr[:, _column_indices(None, arr.shape[1], ref.columns, field)], None


def _column_indices(header: list[str] | None, width: int, columns: list[str | int], field: str) -> list[int]:
    indices = []
    for col in columns:
        if isinstance(col, str):
            if header is None or col not in header:
                raise InvalidInput(f"{field}.columns", f"no column named {col!r}")
            indices.append(header.index(col))
        elif col >= width:
            raise InvalidInput(f"{field}.columns", f"index {col} is past the {width} columns")
        else:
            indices.append(col)
    return indices


def _read_csv_matrix(path: Path, columns: list[str | int] | None, field: str) -> tuple[np.ndarray, list[str] | None]:
    with path.open(encoding="utf-8") as fh:
        first = [cell.strip() for cell in fh.readline().strip().split(",")]
    header = first if any(_not_number(cell) for cell in first) else None
    indices = list(range(len(first))) if columns is None else _column_indices(header, len(first), columns, field)
    arr = np.loadtxt(path, delimiter=",", skiprows=int(header is not None), usecols=indices, dtype=np.float64, ndmin=2)
    return arr, [header[i] for i in indices] if header is not None else None
