"""Key records in SQLite with their material encrypted at rest under a master key.

Layout, all under the data directory::

    keys/               created 0700
    keys/master.key     the master key when MLMESH_MASTER_KEY is unset: created 0600 at first use
    keys/keys.sqlite    key records (pre-created 0600, so SQLite's -wal/-shm files inherit the mode)

The master key is a Fernet key (url-safe base64 of 32 bytes) taken from the environment variable
``MLMESH_MASTER_KEY`` or else from ``keys/master.key``. The file is created with
``os.open(O_CREAT | O_EXCL, 0o600)`` under a temporary name and hard-linked into place, so two
processes starting together agree on one key; a file accessible by group or others (or a symlink,
or one owned by another user) is refused with :class:`MasterKeyError` (503, says what to fix).

A record's material is stored as ``Fernet(master).encrypt(key_id + b"\\0" + material)``: the id
inside the ciphertext binds the blob to its row (a blob copied onto another row fails the check),
and the record's fingerprint (first 8 bytes of SHA-256 of the material, hex) is checked again on
every unwrap. Destroying a key sets the blob to NULL with ``PRAGMA secure_delete`` on and then
truncates the WAL, so the ciphertext does not linger in the database files either.

Metadata (:class:`KeyRecord`) never carries material; material leaves the store only through
:meth:`KeyStore.material` and :meth:`KeyStore.ring`, for the component that uses it, and is
never logged. Lifecycle::

    active ──retire / rotate──▶ retired ──destroy──▶ destroyed
       └──────────────────destroy─────────────────────▲

Keys of one *name* are the versions of one family: ``rotate`` adds version n+1 as the one active
key and retires the others (retired keys still decrypt, they no longer encrypt or derive).
Unknown ids or names raise :class:`~mlmesh.errors.NotFound`, invalid transitions
:class:`~mlmesh.errors.Conflict`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import stat
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mlmesh.errors import Conflict, NotFound, ServiceUnavailable
from mlmesh.state import StateDB

if TYPE_CHECKING:
    from services.framework.context import RunContext

__all__ = [
    "ALGORITHMS",
    "FINGERPRINT_BYTES",
    "KEYS_DIR",
    "MASTER_KEY_ENV",
    "MASTER_KEY_FILE",
    "MIGRATIONS",
    "STATE_NAME",
    "STATUSES",
    "KeyRecord",
    "KeyStore",
    "MasterKeyError",
    "fernet_key",
    "fingerprint",
    "hkdf_sha256",
    "load_master_key",
]

log = logging.getLogger("mlmesh.keys")

MASTER_KEY_ENV = "MLMESH_MASTER_KEY"
KEYS_DIR = "keys"
MASTER_KEY_FILE = "master.key"
STATE_NAME = f"{KEYS_DIR}/keys"  # RunContext.state → data/keys/keys.sqlite
FINGERPRINT_BYTES = 8
ALGORITHMS = ("symmetric", "fernet")
STATUSES = ("active", "retired", "destroyed")
FERNET_BYTES = 32  # 16 bytes signing key + 16 bytes AES-128 key
HKDF_MAX_BYTES = 255 * 32  # RFC 5869: L ≤ 255 · HashLen

Algorithm = Literal["symmetric", "fernet"]

MIGRATIONS = [
    """
    CREATE TABLE key (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        purpose TEXT NOT NULL,
        algorithm TEXT NOT NULL CHECK (algorithm IN ('symmetric', 'fernet')),
        bits INTEGER NOT NULL CHECK (bits > 0),
        version INTEGER NOT NULL CHECK (version >= 1),
        status TEXT NOT NULL CHECK (status IN ('active', 'retired', 'destroyed')),
        parent_id TEXT REFERENCES key (id),
        derivation TEXT,
        fingerprint TEXT NOT NULL,
        material BLOB,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        retired_at REAL,
        destroyed_at REAL,
        UNIQUE (name, version),
        CHECK ((status = 'destroyed') = (material IS NULL))
    );
    CREATE UNIQUE INDEX key_one_active_per_name ON key (name) WHERE status = 'active';
    CREATE INDEX key_parent ON key (parent_id);
    CREATE INDEX key_algorithm_name ON key (algorithm, name);
    """
]


class MasterKeyError(ServiceUnavailable):
    """The master key is malformed, unsafely stored, or does not open the stored material (503)."""


@dataclass(frozen=True)
class KeyRecord:
    """A key's metadata: everything about it except its material."""

    key_id: str
    name: str
    purpose: str
    algorithm: str
    bits: int
    version: int
    status: str
    parent_id: str | None
    derivation: dict[str, Any] | None
    fingerprint: str
    created_at: float
    updated_at: float
    retired_at: float | None
    destroyed_at: float | None


def fingerprint(material: bytes) -> str:
    """The public fingerprint of a key: the first 8 bytes of SHA-256 of its raw material, hex."""
    return hashlib.sha256(material).digest()[:FINGERPRINT_BYTES].hex()


def hkdf_sha256(ikm: bytes, *, length: int, salt: bytes = b"", info: bytes = b"") -> bytes:
    """HKDF-SHA256 (RFC 5869) with cryptography's implementation; an empty salt means HashLen zeros."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt or None, info=info).derive(ikm)


# --------------------------------------------------------------------------- master key


def _fernet_from(value: bytes | str, source: str) -> Fernet:
    try:
        return Fernet(value)
    except (ValueError, TypeError):
        # Never echo the value: it is (meant to be) a secret.
        raise MasterKeyError(
            f"{source}: not a valid master key; it must be a url-safe base64 encoded 32-byte key "
            "as Fernet.generate_key() makes"
        ) from None


def _read_master_file(path: Path, display: str) -> Fernet:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise MasterKeyError(
            f"{display}: cannot be opened ({exc.strerror}); it must be a regular file, not a symlink"
        ) from None
    with os.fdopen(fd, "rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise MasterKeyError(f"{display}: is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise MasterKeyError(
                f"{display}: has mode {mode:04o}, readable or writable by group or others; refusing to use it "
                f"(chmod 600 it, or set {MASTER_KEY_ENV})"
            )
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise MasterKeyError(f"{display}: is owned by another user (uid {info.st_uid}); refusing to use it")
        raw = fh.read(4096)
    return _fernet_from(raw.strip(), display)


def _create_master_file(path: Path, display: str) -> None:
    # Write the whole key under a private name, then link it into place: the link is atomic and fails
    # if the file exists, so a concurrent starter never reads a half-written key.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process won the race; its key is the master key
        log.info("generated a new master key in %s (mode 0600)", display)
    finally:
        tmp.unlink(missing_ok=True)


def load_master_key(keys_dir: Path, *, environ: Mapping[str, str] | None = None) -> Fernet:
    """The master key: ``$MLMESH_MASTER_KEY`` if set, else ``keys_dir/master.key`` (created 0600 if missing).

    Raises:
        MasterKeyError: the key is malformed, or the file is a symlink, not private (any group or
            other permission bit) or owned by another user.
    """
    env = os.environ if environ is None else environ
    value = env.get(MASTER_KEY_ENV, "").strip()
    if value:
        return _fernet_from(value, MASTER_KEY_ENV)
    path = keys_dir / MASTER_KEY_FILE
    display = f"{KEYS_DIR}/{MASTER_KEY_FILE} in the data directory"
    try:
        return _read_master_file(path, display)
    except FileNotFoundError:
        _ensure_dir(keys_dir)
        _create_master_file(path, display)
    return _read_master_file(path, display)


def _ensure_dir(keys_dir: Path) -> Path:
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return keys_dir


def _precreate_private(path: Path) -> None:
    # SQLite gives its -wal and -shm files the database file's mode: create that file 0600 first.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


# --------------------------------------------------------------------------- the store


def _row_record(row: sqlite3.Row) -> KeyRecord:
    return KeyRecord(
        key_id=row["id"],
        name=row["name"],
        purpose=row["purpose"],
        algorithm=row["algorithm"],
        bits=int(row["bits"]),
        version=int(row["version"]),
        status=row["status"],
        parent_id=row["parent_id"],
        derivation=json.loads(row["derivation"]) if row["derivation"] else None,
        fingerprint=row["fingerprint"],
        created_at=float(row["created_at"]),
        updated_at=float(row["updated_at"]),
        retired_at=row["retired_at"],
        destroyed_at=row["destroyed_at"],
    )


def _new_material(algorithm: str, bits: int) -> bytes:
    if algorithm == "fernet":
        if bits != FERNET_BYTES * 8:
            raise ValueError(f"Fernet keys are {FERNET_BYTES * 8} bits; got {bits}")
        return secrets.token_bytes(FERNET_BYTES)
    if algorithm != "symmetric" or bits <= 0 or bits % 8:
        raise ValueError(f"unsupported key: algorithm {algorithm!r}, {bits} bits")
    return secrets.token_bytes(bits // 8)


def _audit(record: KeyRecord, action: str) -> None:
    # Metadata only: never material, never the master key.
    log.info(
        "key %s %s (name %r, version %d, %s, fingerprint %s)",
        record.key_id,
        action,
        record.name,
        record.version,
        record.algorithm,
        record.fingerprint,
    )


class KeyStore:
    """Key records in ``keys/keys.sqlite``, material wrapped under the master key.

    Build one per run with :meth:`for_run` (shares the service's database connection pool) or
    standalone with :meth:`open`. The master key is loaded lazily, on the first operation that
    wraps or unwraps material, so listing metadata never creates one.
    """

    def __init__(self, db: StateDB, keys_dir: Path, *, environ: Mapping[str, str] | None = None) -> None:
        self.db = db
        self.keys_dir = keys_dir
        self._environ = environ
        self._master: Fernet | None = None

    @classmethod
    def open(cls, data_dir: Path, *, environ: Mapping[str, str] | None = None) -> KeyStore:
        """A store over ``data_dir/keys`` with its own database handle."""
        keys_dir = _ensure_dir(data_dir / KEYS_DIR)
        _precreate_private(keys_dir / "keys.sqlite")
        return cls(StateDB(keys_dir / "keys.sqlite", MIGRATIONS), keys_dir, environ=environ)

    @classmethod
    def for_run(cls, ctx: RunContext) -> KeyStore:
        """The store of the run's data directory, on the service's shared state database."""
        keys_dir = _ensure_dir(ctx.data_dir / KEYS_DIR)
        _precreate_private(keys_dir / "keys.sqlite")
        return cls(ctx.state(STATE_NAME, MIGRATIONS), keys_dir)

    # ------------------------------------------------------------------ plumbing

    def master(self) -> Fernet:
        """The master key, loaded (or created) on first use."""
        if self._master is None:
            self._master = load_master_key(self.keys_dir, environ=self._environ)
        return self._master

    def _conn(self) -> sqlite3.Connection:
        conn = self.db.connect()
        # Freed pages (a destroyed key's old blob) are overwritten with zeros, not left on disk.
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def _wrap(self, key_id: str, material: bytes) -> bytes:
        return self.master().encrypt(key_id.encode() + b"\0" + material)

    def _unwrap(self, row: sqlite3.Row) -> bytes:
        key_id = row["id"]
        try:
            plain = self.master().decrypt(row["material"])
        except InvalidToken:
            raise MasterKeyError(
                f"key {key_id}: its stored material does not open under the current master key "
                f"(was {MASTER_KEY_ENV} or {KEYS_DIR}/{MASTER_KEY_FILE} changed?)"
            ) from None
        prefix = key_id.encode() + b"\0"
        material = plain[len(prefix) :]
        if not plain.startswith(prefix) or fingerprint(material) != row["fingerprint"]:
            raise MasterKeyError(f"key {key_id}: stored material fails its integrity check (record tampered with)")
        return material

    @staticmethod
    def _row(conn: sqlite3.Connection, key_id: str) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM key WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"key_id: no key {key_id!r}")
        return row

    @staticmethod
    def _family_rows(conn: sqlite3.Connection, name: str) -> list[sqlite3.Row]:
        rows = conn.execute("SELECT * FROM key WHERE name = ? ORDER BY version DESC", (name,)).fetchall()
        if not rows:
            raise NotFound(f"name: no key named {name!r}")
        return rows

    def _insert(
        self,
        conn: sqlite3.Connection,
        *,
        key_id: str,
        name: str,
        purpose: str,
        algorithm: str,
        material: bytes,
        wrapped: bytes,
        version: int,
        parent_id: str | None = None,
        derivation: dict[str, Any] | None = None,
    ) -> KeyRecord:
        now = time.time()
        conn.execute(
            "INSERT INTO key (id, name, purpose, algorithm, bits, version, status, parent_id, derivation, "
            "fingerprint, material, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?, ?, ?)",
            (
                key_id,
                name,
                purpose,
                algorithm,
                len(material) * 8,
                version,
                parent_id,
                json.dumps(derivation) if derivation else None,
                fingerprint(material),
                wrapped,
                now,
                now,
            ),
        )
        return _row_record(self._row(conn, key_id))

    @staticmethod
    def _new_id() -> str:
        return f"key-{uuid.uuid4().hex}"

    def _add_family(
        self,
        *,
        name: str | None,
        purpose: str,
        algorithm: str,
        material: bytes,
        parent_id: str | None = None,
        derivation: dict[str, Any] | None = None,
    ) -> KeyRecord:
        key_id = self._new_id()
        wrapped = self._wrap(key_id, material)  # outside the write lock: may create the master key
        name = name or key_id
        with self.db.transaction() as conn:
            if conn.execute("SELECT 1 FROM key WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"name: a key named {name!r} exists; rotate it to add a version")
            record = self._insert(
                conn,
                key_id=key_id,
                name=name,
                purpose=purpose,
                algorithm=algorithm,
                material=material,
                wrapped=wrapped,
                version=1,
                parent_id=parent_id,
                derivation=derivation,
            )
        return record

    # ------------------------------------------------------------------ lifecycle

    def generate(
        self, *, name: str | None = None, algorithm: Algorithm = "symmetric", bits: int = 256, purpose: str = ""
    ) -> KeyRecord:
        """A new random key (``secrets.token_bytes``); version 1 of ``name`` (default: its id)."""
        self._conn()
        material = _new_material(algorithm, bits)
        record = self._add_family(name=name, purpose=purpose, algorithm=algorithm, material=material)
        _audit(record, "generated")
        return record

    def import_key(
        self, material: bytes, *, name: str | None = None, algorithm: Algorithm = "symmetric", purpose: str = ""
    ) -> KeyRecord:
        """Store existing material as version 1 of ``name`` (for migrations and known-answer tests)."""
        if algorithm == "fernet" and len(material) != FERNET_BYTES:
            raise ValueError(f"Fernet keys are {FERNET_BYTES} bytes; got {len(material)}")
        if not material:
            raise ValueError("key material must not be empty")
        self._conn()
        record = self._add_family(name=name, purpose=purpose, algorithm=algorithm, material=bytes(material))
        _audit(record, "imported")
        return record

    def derive(
        self,
        parent_id: str,
        *,
        name: str | None = None,
        algorithm: Algorithm = "symmetric",
        bits: int = 256,
        salt: bytes = b"",
        info: bytes = b"",
        purpose: str = "",
    ) -> KeyRecord:
        """A child key ``HKDF-SHA256(parent, salt, info, bits/8)``, stored as version 1 of ``name``.

        Raises:
            NotFound: no key ``parent_id``.
            Conflict: the parent is retired or destroyed, or ``name`` exists.
        """
        length = bits // 8
        if bits % 8 or not 0 < length <= HKDF_MAX_BYTES:
            raise ValueError(f"bits must be a multiple of 8 in (0, {HKDF_MAX_BYTES * 8}]; got {bits}")
        if algorithm == "fernet" and length != FERNET_BYTES:
            raise ValueError(f"Fernet keys are {FERNET_BYTES * 8} bits; got {bits}")
        self.master()  # load (or create) the master key before taking the write lock
        self._conn()
        with self.db.transaction() as conn:
            parent = self._row(conn, parent_id)
            if parent["status"] != "active":
                raise Conflict(f"key_id: key {parent_id} is {parent['status']}; only active keys derive new keys")
            material = hkdf_sha256(self._unwrap(parent), length=length, salt=salt, info=info)
            key_id = self._new_id()
            name = name or key_id
            if conn.execute("SELECT 1 FROM key WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"name: a key named {name!r} exists; choose another name for the derived key")
            record = self._insert(
                conn,
                key_id=key_id,
                name=name,
                purpose=purpose,
                algorithm=algorithm,
                material=material,
                wrapped=self._wrap(key_id, material),
                version=1,
                parent_id=parent_id,
                derivation={"kdf": "HKDF-SHA256", "salt_hex": salt.hex(), "info_hex": info.hex(), "length": length},
            )
        _audit(record, f"derived from {parent_id}")
        return record

    def rotate(self, name: str) -> tuple[KeyRecord, list[KeyRecord]]:
        """Add version n+1 of ``name`` (same algorithm and size) as its active key; retire the active one.

        Returns:
            The new version and the versions this rotation retired.

        Raises:
            NotFound: no key named ``name``.
            Conflict: the family is derived (derive again from its parent instead).
        """
        self._conn()
        self.master()
        key_id = self._new_id()
        with self.db.transaction() as conn:
            rows = self._family_rows(conn, name)
            latest = rows[0]
            if latest["parent_id"] is not None:
                raise Conflict(
                    f"name: {name!r} is derived from {latest['parent_id']}; derive again (new salt or info) "
                    "instead of rotating it"
                )
            material = _new_material(latest["algorithm"], int(latest["bits"]))
            retired = [r["id"] for r in rows if r["status"] == "active"]
            now = time.time()
            conn.execute(
                "UPDATE key SET status = 'retired', retired_at = ?, updated_at = ? "
                "WHERE name = ? AND status = 'active'",
                (now, now, name),
            )
            record = self._insert(
                conn,
                key_id=key_id,
                name=name,
                purpose=latest["purpose"],
                algorithm=latest["algorithm"],
                material=material,
                wrapped=self._wrap(key_id, material),
                version=int(latest["version"]) + 1,
            )
            old = [_row_record(self._row(conn, rid)) for rid in retired]
        _audit(record, "rotated in")
        for rec in old:
            _audit(rec, "retired by rotation")
        return record, old

    def retire(self, key_id: str) -> KeyRecord:
        """Active → retired: the key still decrypts but no longer encrypts or derives (409 otherwise)."""
        self._conn()
        with self.db.transaction() as conn:
            row = self._row(conn, key_id)
            if row["status"] != "active":
                raise Conflict(f"key_id: key {key_id} is already {row['status']}; only active keys can be retired")
            now = time.time()
            conn.execute(
                "UPDATE key SET status = 'retired', retired_at = ?, updated_at = ? WHERE id = ?", (now, now, key_id)
            )
            record = _row_record(self._row(conn, key_id))
        _audit(record, "retired")
        return record

    def destroy(self, key_id: str) -> KeyRecord:
        """Active or retired → destroyed: the wrapped material is deleted; metadata stays (409 if destroyed)."""
        self._conn()
        with self.db.transaction() as conn:
            row = self._row(conn, key_id)
            if row["status"] == "destroyed":
                raise Conflict(f"key_id: key {key_id} is already destroyed")
            self._destroy_row(conn, key_id)
            record = _row_record(self._row(conn, key_id))
        self._truncate_wal()
        _audit(record, "destroyed")
        return record

    def destroy_old_versions(self, name: str, *, keep: int) -> list[KeyRecord]:
        """Destroy every non-active version of ``name`` beyond the newest ``keep`` undestroyed ones."""
        self._conn()
        with self.db.transaction() as conn:
            rows = [r for r in self._family_rows(conn, name) if r["status"] != "destroyed"]
            doomed = [r["id"] for r in rows[keep:] if r["status"] != "active"]
            for key_id in doomed:
                self._destroy_row(conn, key_id)
            records = [_row_record(self._row(conn, key_id)) for key_id in doomed]
        if records:
            self._truncate_wal()
        for record in records:
            _audit(record, "destroyed")
        return records

    @staticmethod
    def _destroy_row(conn: sqlite3.Connection, key_id: str) -> None:
        now = time.time()
        conn.execute(
            "UPDATE key SET status = 'destroyed', material = NULL, destroyed_at = ?, updated_at = ? WHERE id = ?",
            (now, now, key_id),
        )

    def _truncate_wal(self) -> None:
        # Move the change into the main file and empty the WAL, so the old page image goes too.
        # Best effort: a concurrent reader can hold the checkpoint back; the next one finishes it.
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()

    # ------------------------------------------------------------------ reading

    def get(self, key_id: str) -> KeyRecord:
        """A key's metadata (404 if unknown)."""
        return _row_record(self._row(self._conn(), key_id))

    def versions(self, name: str) -> list[KeyRecord]:
        """Every version of ``name``, newest first (404 if unknown)."""
        return [_row_record(r) for r in self._family_rows(self._conn(), name)]

    def list_keys(
        self,
        *,
        name: str | None = None,
        status: str | None = None,
        algorithm: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[KeyRecord], int]:
        """Metadata of matching keys, oldest first, and how many match in all."""
        where, args = [], []
        for column, value in (("name", name), ("status", status), ("algorithm", algorithm)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        conn = self._conn()
        total = int(conn.execute(f"SELECT COUNT(*) FROM key{clause}", args).fetchone()[0])  # noqa: S608 - fixed columns
        rows = conn.execute(
            f"SELECT * FROM key{clause} ORDER BY created_at, name, version LIMIT ? OFFSET ?",  # noqa: S608
            [*args, limit, offset],
        ).fetchall()
        return [_row_record(r) for r in rows], total

    def names(self, *, algorithm: str | None = None, limit: int = 100, offset: int = 0) -> tuple[list[str], int]:
        """Key family names (oldest family first) and how many there are."""
        clause, args = (" WHERE algorithm = ?", [algorithm]) if algorithm else ("", [])
        conn = self._conn()
        total = int(conn.execute(f"SELECT COUNT(DISTINCT name) FROM key{clause}", args).fetchone()[0])  # noqa: S608
        rows = conn.execute(
            f"SELECT name FROM key{clause} GROUP BY name ORDER BY MIN(created_at), name LIMIT ? OFFSET ?",  # noqa: S608
            [*args, limit, offset],
        ).fetchall()
        return [r["name"] for r in rows], total

    # ------------------------------------------------------------------ material (never logged, never returned)

    def material(self, key_id: str, *, use: Literal["encrypt", "decrypt"]) -> bytes:
        """A key's raw material for ``use``: encrypting needs an active key, decrypting any undestroyed one."""
        row = self._row(self._conn(), key_id)
        if row["status"] == "destroyed" or (use == "encrypt" and row["status"] != "active"):
            raise Conflict(f"key_id: key {key_id} is {row['status']}; it cannot {use}")
        return self._unwrap(row)

    def ring(self, name: str) -> list[tuple[KeyRecord, bytes]]:
        """The undestroyed versions of ``name`` with their material: the active one first, then newest first.

        Raises:
            NotFound: no key named ``name``.
        """
        rows = [r for r in self._family_rows(self._conn(), name) if r["status"] != "destroyed"]
        rows.sort(key=lambda r: (r["status"] != "active", -int(r["version"])))
        return [(_row_record(r), self._unwrap(r)) for r in rows]


def fernet_key(material: bytes) -> bytes:
    """The Fernet key (url-safe base64) of 32 bytes of material."""
    return base64.urlsafe_b64encode(material)
