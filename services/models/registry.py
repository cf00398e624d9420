"""The model store: versioned scikit-learn artefacts in ``data/models`` with a SQLite index.

Layout::

    data/models/registry.sqlite                 the index (StateDB: WAL, busy timeout, migrations)
    data/models/<name>/<version>/model.skops    one artefact per version, written by this module only

Saving serialises the estimator with ``skops.io.dumps``, asks ``skops.io.get_untrusted_types`` which
non-default types the bytes need (e.g. ``sklearn.tree._tree.Tree``), checks them against an allow-list of
scikit-learn types and records that list with the bytes' SHA-256. The version number is allocated inside one
``BEGIN IMMEDIATE`` transaction, in which the artefact is written to a temporary file, fsynced and atomically
renamed into place before its row is inserted; two concurrent trainings of one model therefore get distinct
versions and neither can see a half-written file.

Loading reads the artefact's bytes once, verifies their SHA-256 against the index (a mismatch is a 409,
"artefact corrupted", and the bytes are never deserialised), then loads *those same bytes* with
``skops.io.loads`` trusting exactly the recorded types. Deserialised models are cached by digest; a file
whose stat signature (inode, size, mtime, ctime) is unchanged since its bytes last matched is not re-hashed
(see :class:`_LoadedModels`). Nothing is ever unpickled, and nothing a caller
supplies is ever loaded as a model: callers name a model, never a file.

Also here, because both model components need them: the feature-matrix wire type (:data:`Matrix`, inline
rows or a file under ``data/``) and the estimator factory (:func:`build_estimator`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import skops.io as sio
from pydantic import Field
from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from mlmesh.errors import BadRequest, Conflict, InvalidInput, MeshError, NotFound
from services.framework import ComponentInput, Numbers, StateDB, confine, load_numbers
from services.framework.arrays import MatrixRef, read_matrix

__all__ = [
    "ALIAS_PATTERN",
    "MAX_ABS_VALUE",
    "MAX_CELLS",
    "MAX_FEATURES",
    "MAX_INLINE_ROWS",
    "MIGRATIONS",
    "MODEL_NAME_PATTERN",
    "STATE_NAME",
    "AliasName",
    "EstimatorParams",
    "Matrix",
    "MatrixRef",
    "ModelName",
    "ModelRecord",
    "ModelRegistry",
    "Task",
    "build_estimator",
    "check_values",
    "clear_cache",
    "effective_params",
    "infer_task",
    "load_matrix",
    "load_vector",
]

# ctx.state(STATE_NAME, MIGRATIONS) opens data/models/registry.sqlite.
STATE_NAME = "models/registry"
MODELS_DIR = "models"
ARTEFACT_FILE = "model.skops"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Aliases start with a letter so that they can never be confused with a version number.
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
ModelName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=MODEL_NAME_PATTERN, description="model name (letters, digits, _ -)")
]
AliasName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=ALIAS_PATTERN, description="alias, e.g. 'production'")
]
Task = Literal["regression", "classification"]

MIGRATIONS = [
    """
    CREATE TABLE model_counter (
        name TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    );
    CREATE TABLE model_version (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        model_type TEXT NOT NULL,
        task TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        artefact TEXT NOT NULL,
        trusted_types TEXT NOT NULL,
        meta TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE TABLE model_alias (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES model_version (name, version) ON DELETE RESTRICT
    );
    CREATE INDEX model_alias_version ON model_alias (name, version);
    """
]

# Types beyond skops' defaults that an artefact may need: scikit-learn's own (trees, KD-trees, distance
# metrics). Anything else in an artefact we wrote means the estimator is not one of ours: refuse it.
_TRUSTED_PREFIXES = ("sklearn.",)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ModelRecord:
    """One stored version of a model, as the index describes it."""

    name: str
    version: int
    model_type: str
    task: str
    sha256: str
    size_bytes: int
    artefact: str  # path relative to the data directory
    trusted_types: tuple[str, ...]
    meta: dict[str, Any]
    created_at: float
    aliases: tuple[str, ...] = field(default=())

    @property
    def feature_names(self) -> list[str]:
        return list(self.meta.get("feature_names", []))


def _record(row: sqlite3.Row, aliases: tuple[str, ...]) -> ModelRecord:
    return ModelRecord(
        name=row["name"],
        version=int(row["version"]),
        model_type=row["model_type"],
        task=row["task"],
        sha256=row["sha256"],
        size_bytes=int(row["size_bytes"]),
        artefact=row["artefact"],
        trusted_types=tuple(json.loads(row["trusted_types"])),
        meta=json.loads(row["meta"]),
        created_at=float(row["created_at"]),
        aliases=aliases,
    )


# --------------------------------------------------------------------------- loaded-model cache


# A file whose status changed less than this long before it was hashed is re-hashed on every load: file
# timestamps may be as coarse as a kernel tick, so a write right after ours could leave them unchanged.
_SETTLE_NS = 2_000_000_000
_StatSignature = tuple[int, int, int, int, int]


def _signature(st: os.stat_result) -> _StatSignature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _LoadedModels:
    """A small LRU of deserialised estimators keyed by the SHA-256 of their verified bytes.

    Content-addressed, so sharing it across apps and data directories in one process is safe. A module-level
    cache because a run's context offers no per-service object store.

    Hashing a large artefact on every predict costs more than the prediction (≈ 50 ms for a 16 MB forest), so
    each artefact path also remembers the stat signature (device, inode, size, mtime, ctime) it had when its
    bytes were last hashed and matched. While the signature is unchanged the bytes are the verified ones: any
    write changes ctime, which no unprivileged call can set back, and a replacement file has another inode.
    Files that had changed just before hashing are never remembered (see ``_SETTLE_NS``).
    """

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._verified: dict[str, tuple[str, _StatSignature]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Any | None:
        with self._lock:
            model = self._items.get(digest)
            if model is not None:
                self._items.move_to_end(digest)
            return model

    def get_verified(self, path: Path, digest: str, signature: _StatSignature) -> Any | None:
        """The model of ``path`` if its bytes were verified as ``digest`` and it has not changed since."""
        with self._lock:
            if self._verified.get(str(path)) != (digest, signature):
                return None
        return self.get(digest)

    def put(self, digest: str, model: Any, path: Path, signature: _StatSignature | None) -> None:
        with self._lock:
            self._items[digest] = model
            self._items.move_to_end(digest)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            if signature is None:
                self._verified.pop(str(path), None)
            else:
                self._verified[str(path)] = (digest, signature)
            live = set(self._items)
            for key in [k for k, (d, _) in self._verified.items() if d not in live]:
                del self._verified[key]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._verified.clear()


_LOADED = _LoadedModels()


def clear_cache() -> None:
    """Forget every deserialised model (the next load deserialises from disk again)."""
    _LOADED.clear()


def _check_trusted(types: list[str] | tuple[str, ...], where: str) -> list[str]:
    bad = [t for t in types if not t.startswith(_TRUSTED_PREFIXES)]
    if bad:
        raise MeshError(f"{where}: artefact needs types outside scikit-learn ({', '.join(sorted(bad))}); refusing")
    return list(types)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".model-", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


# --------------------------------------------------------------------------- the registry


class ModelRegistry:
    """Versioned model artefacts under ``data/models`` with a SQLite index.

    Args:
        data_dir: the mesh's data directory; every artefact lives under ``data_dir/models``.
        db: the index; by default ``StateDB(data_dir / "models/registry.sqlite", MIGRATIONS)``. Components pass
            ``ctx.state(STATE_NAME, MIGRATIONS)`` so that the service shares one connection pool.
    """

    def __init__(self, data_dir: Path, db: StateDB | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.db = db or StateDB(self.data_dir / f"{STATE_NAME}.sqlite", MIGRATIONS)

    @classmethod
    def for_context(cls, ctx: Any) -> ModelRegistry:
        """The registry of a run's data directory, over the service's shared StateDB."""
        return cls(ctx.data_dir, ctx.state(STATE_NAME, MIGRATIONS))

    # ------------------------------------------------------------------ writing

    def save(
        self, name: str, estimator: BaseEstimator, *, model_type: str, task: str, meta: dict[str, Any]
    ) -> ModelRecord:
        """Store a fitted estimator as the next version of ``name`` and return its record."""
        data = sio.dumps(estimator)
        trusted = _check_trusted(sio.get_untrusted_types(data=data), f"model {name!r}")
        digest = hashlib.sha256(data).hexdigest()
        meta_json = json.dumps(meta, allow_nan=False)
        written: Path | None = None
        try:
            with self.db.transaction() as conn:
                row = conn.execute("SELECT last_version FROM model_counter WHERE name = ?", (name,)).fetchone()
                version = (int(row[0]) if row else 0) + 1
                conn.execute(
                    "INSERT INTO model_counter (name, last_version) VALUES (?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
                    (name, version),
                )
                relative = f"{MODELS_DIR}/{name}/{version}/{ARTEFACT_FILE}"
                path = confine(self.data_dir, relative, field="name")
                _atomic_write(path, data)
                written = path
                created = time.time()
                conn.execute(
                    "INSERT INTO model_version (name, version, model_type, task, sha256, size_bytes, artefact, "
                    "trusted_types, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        model_type,
                        task,
                        digest,
                        len(data),
                        relative,
                        json.dumps(trusted),
                        meta_json,
                        created,
                    ),
                )
        except BaseException:
            if written is not None:
                shutil.rmtree(written.parent, ignore_errors=True)
            raise
        return ModelRecord(
            name=name,
            version=version,
            model_type=model_type,
            task=task,
            sha256=digest,
            size_bytes=len(data),
            artefact=relative,
            trusted_types=tuple(trusted),
            meta=meta,
            created_at=created,
        )

    def promote(self, name: str, alias: str, version: int) -> ModelRecord:
        """Point ``alias`` of ``name`` at ``version`` (404 if the model or version is unknown)."""
        with self.db.transaction() as conn:
            self._require_version(conn, name, version)
            conn.execute(
                "INSERT INTO model_alias (name, alias, version, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (name, alias, version, time.time()),
            )
        return self.resolve(name, version=version)

    def delete(self, name: str, version: int | None = None, *, force: bool = False) -> tuple[list[int], list[str]]:
        """Delete one version (or every version) of ``name``; returns (deleted versions, removed aliases).

        A version that an alias points at is kept (409) unless ``force``, which removes those aliases too.
        """
        with self.db.transaction() as conn:
            if version is None:
                rows = conn.execute("SELECT version FROM model_version WHERE name = ?", (name,)).fetchall()
                if not rows:
                    raise NotFound(f"no model named {name!r}")
                versions = sorted(int(r[0]) for r in rows)
                alias_rows = conn.execute("SELECT alias, version FROM model_alias WHERE name = ?", (name,)).fetchall()
            else:
                self._require_version(conn, name, version)
                versions = [version]
                alias_rows = conn.execute(
                    "SELECT alias, version FROM model_alias WHERE name = ? AND version = ?", (name, version)
                ).fetchall()
            aliases = sorted(r["alias"] for r in alias_rows)
            if aliases and not force:
                pointed = ", ".join(f"{r['alias']} → {r['version']}" for r in alias_rows)
                raise Conflict(
                    f"model {name!r}: aliases point at the version(s) to delete ({pointed}); "
                    "promote another version first or delete with force=true"
                )
            marks = ",".join("?" * len(versions))
            conn.execute(f"DELETE FROM model_alias WHERE name = ? AND version IN ({marks})", (name, *versions))  # noqa: S608
            conn.execute(f"DELETE FROM model_version WHERE name = ? AND version IN ({marks})", (name, *versions))  # noqa: S608
            if version is None:
                conn.execute("DELETE FROM model_counter WHERE name = ?", (name,))
        # Files go after the commit: a crash in between leaves an orphan directory, never a dangling row.
        model_dir = confine(self.data_dir, f"{MODELS_DIR}/{name}", field="name")
        if version is None:
            shutil.rmtree(model_dir, ignore_errors=True)
        else:
            shutil.rmtree(model_dir / str(version), ignore_errors=True)
        return versions, aliases

    # ------------------------------------------------------------------ reading

    def resolve(self, name: str, *, version: int | None = None, alias: str | None = None) -> ModelRecord:
        """The record of ``name`` at ``version``, at ``alias``, or (neither given) its latest version."""
        conn = self.db.connect()
        if version is not None and alias is not None:
            raise InvalidInput("alias", "give either version or alias, not both")
        if alias is not None:
            found = conn.execute(
                "SELECT version FROM model_alias WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if found is None:
                self._require_model(conn, name)
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            version = int(found[0])
        if version is None:
            row = conn.execute(
                "SELECT * FROM model_version WHERE name = ? ORDER BY version DESC LIMIT 1", (name,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no model named {name!r}")
        else:
            row = self._require_version(conn, name, version)
        return _record(row, self._aliases(conn, name, int(row["version"])))

    def versions(self, name: str | None = None) -> list[ModelRecord]:
        """Every stored version (of ``name``, or of all models), by name then version."""
        conn = self.db.connect()
        if name is None:
            rows = conn.execute("SELECT * FROM model_version ORDER BY name, version").fetchall()
            alias_rows = conn.execute("SELECT name, alias, version FROM model_alias ORDER BY alias").fetchall()
        else:
            rows = conn.execute("SELECT * FROM model_version WHERE name = ? ORDER BY version", (name,)).fetchall()
            alias_rows = conn.execute(
                "SELECT name, alias, version FROM model_alias WHERE name = ? ORDER BY alias", (name,)
            ).fetchall()
        by_version: dict[tuple[str, int], list[str]] = {}
        for a in alias_rows:
            by_version.setdefault((a["name"], int(a["version"])), []).append(a["alias"])
        return [_record(r, tuple(by_version.get((r["name"], int(r["version"])), ()))) for r in rows]

    def load(self, record: ModelRecord) -> Any:
        """The estimator of ``record``, after verifying its artefact's SHA-256 (409 if it does not match)."""
        where = f"model {record.name!r} version {record.version}"
        path = confine(self.data_dir, record.artefact, field="artefact")
        try:
            st = path.stat()
            model = _LOADED.get_verified(path, record.sha256, _signature(st))
            if model is not None:
                return model
            data = path.read_bytes()
        except FileNotFoundError:
            if not self._exists(record.name, record.version):
                raise NotFound(f"{where} was deleted") from None
            raise Conflict(f"{where}: artefact {record.artefact} is missing; retrain or delete this version") from None
        digest = hashlib.sha256(data).hexdigest()
        if not hmac.compare_digest(digest, record.sha256):
            raise Conflict(
                f"{where}: artefact corrupted (its SHA-256 does not match the registry index); "
                "refusing to load it; retrain or delete this version"
            )
        model = _LOADED.get(digest)
        if model is None:
            trusted = _check_trusted(record.trusted_types, where)
            model = sio.loads(data, trusted=trusted)
        # The signature taken before reading: a write during or after the read changes it.
        settled = time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _SETTLE_NS
        _LOADED.put(digest, model, path, _signature(st) if settled else None)
        return model

    # ------------------------------------------------------------------ helpers

    def _exists(self, name: str, version: int) -> bool:
        row = (
            self.db.connect()
            .execute("SELECT 1 FROM model_version WHERE name = ? AND version = ?", (name, version))
            .fetchone()
        )
        return row is not None

    @staticmethod
    def _require_model(conn: sqlite3.Connection, name: str) -> None:
        if conn.execute("SELECT 1 FROM model_version WHERE name = ? LIMIT 1", (name,)).fetchone() is None:
            raise NotFound(f"no model named {name!r}")

    @classmethod
    def _require_version(cls, conn: sqlite3.Connection, name: str, version: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM model_version WHERE name = ? AND version = ?", (name, version)).fetchone()
        if row is None:
            cls._require_model(conn, name)
            raise NotFound(f"model {name!r} has no version {version}")
        return row

    @staticmethod
    def _aliases(conn: sqlite3.Connection, name: str, version: int) -> tuple[str, ...]:
        rows = conn.execute(
            "SELECT alias FROM model_alias WHERE name = ? AND version = ? ORDER BY alias", (name, version)
        ).fetchall()
        return tuple(r[0] for r in rows)


# --------------------------------------------------------------------------- feature matrices

MAX_FEATURES = 1000
MAX_INLINE_ROWS = 100_000
# A file may hold more rows than a JSON body, but not more cells than this (80 MB of float64).
MAX_CELLS = 10_000_000

# Values beyond this are refused: scaling, squares and sums over a million rows must stay finite.
MAX_ABS_VALUE = 1e12
Value = Annotated[float, Field(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE, allow_inf_nan=False)]
Row = Annotated[list[Value], Field(min_length=1, max_length=MAX_FEATURES)]


Matrix = Annotated[list[Row], Field(min_length=1, max_length=MAX_INLINE_ROWS)] | MatrixRef


def load_matrix(value: Any, data_dir: Path, *, field: str) -> tuple[np.ndarray, list[str] | None]:
    """``field`` as a finite 2-D float64 array (rows × features), with column names when the file has them."""
    names: list[str] | None = None
    if isinstance(value, list):
        widths = {len(row) for row in value}
        if len(widths) != 1:
            first = len(value[0])
            bad = next(i for i, row in enumerate(value) if len(row) != first)
            raise InvalidInput(
                field, f"rows must all have the same length; row {bad} has {len(value[bad])}, row 0 has {first}"
            )
        arr = np.asarray(value, dtype=np.float64)
    else:
        arr, names = read_matrix(value, data_dir, field=field, max_cells=MAX_CELLS)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidInput(field, f"must be a non-empty matrix (rows × features); got shape {list(arr.shape)}")
    if arr.shape[1] > MAX_FEATURES:
        raise InvalidInput(field, f"at most {MAX_FEATURES} features; got {arr.shape[1]}")
    if arr.size > MAX_CELLS:
        raise InvalidInput(field, f"at most {MAX_CELLS:,} cells; got {arr.size:,}")
    check_values(arr, field)
    return arr, names


def load_vector(value: Numbers, data_dir: Path, *, field: str) -> np.ndarray:
    """``load_numbers`` with the value bounds of :func:`check_values`, and unreadable paths as 400."""
    try:
        arr = load_numbers(value, data_dir, field=field)
    except OSError as exc:  # e.g. a name too long for the file system; strerror carries no absolute path
        raise BadRequest(f"{field}.path: could not read the file: {exc.strerror}") from exc
    check_values(arr, field)
    return arr


def check_values(arr: np.ndarray, field: str) -> None:
    """422 naming ``field`` unless every value is finite and within ±``MAX_ABS_VALUE``."""
    if not np.isfinite(arr).all():
        raise InvalidInput(field, "must contain only finite numbers (no NaN or infinity)")
    if arr.size and float(np.abs(arr).max()) > MAX_ABS_VALUE:
        raise InvalidInput(field, f"values must lie within ±{MAX_ABS_VALUE:g}; rescale the data")


# --------------------------------------------------------------------------- estimators


class EstimatorParams(ComponentInput):
    """Hyper-parameters; each model type reads only its own (the others are ignored)."""

    alpha: float = Field(1.0, gt=0, le=1e6, description="ridge: L2 penalty")
    C: float = Field(1.0, gt=0, le=1e6, description="logistic: inverse L2 penalty")
    max_iter: int = Field(1000, ge=10, le=10_000, description="logistic: solver iterations")
    n_estimators: int = Field(100, ge=1, le=500, description="random_forest / gradient_boosting: trees")
    max_depth: int | None = Field(
        None, ge=1, le=64, description="tree depth (random_forest, decision_tree: unlimited; gradient_boosting: 3)"
    )
    min_samples_leaf: int = Field(1, ge=1, le=10_000, description="trees: minimum samples per leaf")
    learning_rate: float = Field(0.1, gt=0, le=1, description="gradient_boosting: shrinkage")
    n_neighbors: int = Field(5, ge=1, le=200, description="knn: neighbours")


_ONLY = {"ridge": "regression", "logistic": "classification"}
_PARAMS = {
    "ridge": ("alpha",),
    "logistic": ("C", "max_iter"),
    "random_forest": ("n_estimators", "max_depth", "min_samples_leaf"),
    "gradient_boosting": ("n_estimators", "learning_rate", "max_depth", "min_samples_leaf"),
    "decision_tree": ("max_depth", "min_samples_leaf"),
    "knn": ("n_neighbors",),
}


# An integer-valued target with at most this many distinct values is taken for class labels.
AUTO_MAX_CLASSES = 10


def infer_task(requested: str, model_type: str, y: np.ndarray) -> str:
    """``requested`` unless it is ``"auto"``: then the task of a single-task model (ridge: regression, logistic:
    classification), else classification for an integer target with two to ten distinct values."""
    if requested != "auto":
        return requested
    if model_type in _ONLY:
        return _ONLY[model_type]
    integral = bool(np.all(y == np.round(y)))
    return "classification" if integral and 2 <= np.unique(y).size <= AUTO_MAX_CLASSES else "regression"


def effective_params(model_type: str, params: EstimatorParams) -> dict[str, Any]:
    """The hyper-parameters ``model_type`` actually uses (gradient boosting's default depth filled in)."""
    out = {key: getattr(params, key) for key in _PARAMS[model_type]}
    if model_type == "gradient_boosting" and out["max_depth"] is None:
        out["max_depth"] = 3
    return out


def build_estimator(model_type: str, task: str, params: EstimatorParams, seed: int) -> BaseEstimator:
    """An unfitted scikit-learn estimator for ``model_type`` and ``task``.

    Linear models and k-NN standardise the features first (``Pipeline([StandardScaler(), model])``) so that
    their penalty and distances do not depend on the features' units; trees do not need it.
    """
    if model_type not in _PARAMS:
        raise InvalidInput("model_type", f"unknown model type {model_type!r}; use one of {sorted(_PARAMS)}")
    only = _ONLY.get(model_type)
    if only is not None and only != task:
        other = "logistic" if model_type == "ridge" else "ridge"
        raise InvalidInput("model_type", f"{model_type} is for {only} only; the task is {task} (use {other})")
    p = effective_params(model_type, params)
    classify = task == "classification"
    if model_type == "ridge":
        return Pipeline([("scale", StandardScaler()), ("model", Ridge(alpha=p["alpha"]))])
    if model_type == "logistic":
        model = LogisticRegression(C=p["C"], max_iter=p["max_iter"], random_state=seed)
        return Pipeline([("scale", StandardScaler()), ("model", model)])
    if model_type == "knn":
        knn = KNeighborsClassifier if classify else KNeighborsRegressor
        return Pipeline([("scale", StandardScaler()), ("model", knn(n_neighbors=p["n_neighbors"]))])
    if model_type == "random_forest":
        forest = RandomForestClassifier if classify else RandomForestRegressor
        return forest(
            n_estimators=p["n_estimators"],
            max_depth=p["max_depth"],
            min_samples_leaf=p["min_samples_leaf"],
            random_state=seed,
            n_jobs=1,
        )
    if model_type == "gradient_boosting":
        boosting = GradientBoostingClassifier if classify else GradientBoostingRegressor
        return boosting(
            n_estimators=p["n_estimators"],
            learning_rate=p["learning_rate"],
            max_depth=p["max_depth"],
            min_samples_leaf=p["min_samples_leaf"],
            random_state=seed,
        )
    tree = DecisionTreeClassifier if classify else DecisionTreeRegressor
    return tree(max_depth=p["max_depth"], min_samples_leaf=p["min_samples_leaf"], random_state=seed)
