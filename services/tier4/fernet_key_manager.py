"""Fernet keyrings over the mesh's key store: encrypt, decrypt with TTLs, MultiFernet rotation.

A *keyring* is a named family of Fernet keys in the key store (:mod:`services.keys.store`), so
its keys are encrypted at rest under the master key and shown only by fingerprint:

* ``create_keyring`` — version 1, a fresh Fernet key, is the primary.
* ``add_key`` — a new version becomes the primary; the previous primary is retired (decrypts only).
* ``encrypt`` — a UTF-8 plaintext → a Fernet token under the primary key (timestamped now).
* ``decrypt`` — ``MultiFernet([primary, retired newest first…])``; with ``ttl`` the token must be
  at most ``ttl`` seconds old (Fernet's rule: issued ≥ now − ttl and ≤ now + 60 s of clock skew).
* ``rotate_token`` — ``MultiFernet.rotate``: the same plaintext re-encrypted under the primary.
  Rotation keeps the token's original timestamp, so a TTL still counts from the *first*
  encryption; with ``ttl`` an already expired token is refused instead of rotated.
* ``drop_old_keys`` — destroy the retired keys beyond the newest ``keep`` (material deleted);
  tokens only they could open become undecryptable, so rotate them first.

Errors (never a 500): unknown keyring 404; a keyring with no active key (encrypt, rotate) or no
undestroyed key (decrypt), or a key family that is not Fernet → 409; a bad token → **422** naming
the field: ``token: invalid, tampered, or not encrypted under a key of this keyring`` or
``token: expired (ttl …)``. Keys never appear in responses or logs; tokens and plaintexts are
returned to the caller and not logged either.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import Field, RootModel

from mlmesh.errors import Conflict, InvalidInput, NotFound
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.keys.store import KeyRecord, KeyStore, fernet_key

__all__ = [
    "MAX_CLOCK_SKEW_S",
    "FernetAddKeyOp",
    "FernetCreateKeyringOp",
    "FernetDecryptOp",
    "FernetDropOldKeysOp",
    "FernetEncryptOp",
    "FernetKeyInfo",
    "FernetKeyManagerInput",
    "FernetKeyManagerOutput",
    "FernetKeyring",
    "FernetListOp",
    "FernetRotateTokenOp",
    "FernetStatusOp",
    "fernet_key_manager",
]

MAX_CLOCK_SKEW_S = 60  # cryptography's Fernet refuses tokens issued further in the future when a ttl is given
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$"
KeyringName = Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="keyring name")]
# Fernet tokens are url-safe base64; ~4 MB of UTF-8 plaintext makes a token of ~5.4 M characters.
Token = Annotated[
    str, Field(min_length=1, max_length=6_000_000, pattern=r"^[A-Za-z0-9_=-]+$", description="a Fernet token")
]
Ttl = Annotated[
    int,
    Field(ge=1, le=10 * 365 * 86400, description="maximum token age in seconds, counted from its first encryption"),
]
Purpose = Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]


# --------------------------------------------------------------------------- inputs


class FernetCreateKeyringOp(ComponentInput):
    operation: Literal["create_keyring"]
    keyring: KeyringName | None = Field(None, description="name of the new keyring; generated when omitted")
    purpose: Purpose = "fernet keyring"


class FernetAddKeyOp(ComponentInput):
    operation: Literal["add_key"]
    keyring: KeyringName


class FernetEncryptOp(ComponentInput):
    operation: Literal["encrypt"]
    keyring: KeyringName
    plaintext: str = Field(max_length=1_000_000, description="text to encrypt (UTF-8)")


class FernetDecryptOp(ComponentInput):
    operation: Literal["decrypt"]
    keyring: KeyringName
    token: Token
    ttl: Ttl | None = None


class FernetRotateTokenOp(ComponentInput):
    operation: Literal["rotate_token"]
    keyring: KeyringName
    token: Token
    ttl: Ttl | None = Field(None, description="refuse (422) to rotate a token older than this")


class FernetDropOldKeysOp(ComponentInput):
    operation: Literal["drop_old_keys"]
    keyring: KeyringName
    keep: int = Field(1, ge=1, le=1000, description="how many of the newest keys (the primary included) to keep")


class FernetStatusOp(ComponentInput):
    operation: Literal["status"]
    keyring: KeyringName


class FernetListOp(ComponentInput):
    operation: Literal["list"]
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class FernetKeyManagerInput(
    RootModel[
        Annotated[
            FernetCreateKeyringOp
            | FernetAddKeyOp
            | FernetEncryptOp
            | FernetDecryptOp
            | FernetRotateTokenOp
            | FernetDropOldKeysOp
            | FernetStatusOp
            | FernetListOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One keyring operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class FernetKeyInfo(ComponentOutput):
    """A keyring key without its material."""

    key_id: str
    version: int
    status: Literal["active", "retired", "destroyed"]
    primary: bool = Field(description="the key new tokens are encrypted under")
    fingerprint: str = Field(description="first 8 bytes of SHA-256 of the raw key (32 bytes), hex")
    created_at: float


class FernetKeyring(ComponentOutput):
    keyring: str
    primary_key_id: str | None = Field(description="None when no key is active (add_key to encrypt again)")
    usable_keys: int = Field(description="undestroyed keys: the ones that decrypt")
    keys: list[FernetKeyInfo] = Field(description="every version, newest first")


class FernetKeyManagerOutput(ComponentOutput):
    operation: str
    keyring: FernetKeyring | None = None
    keyrings: list[FernetKeyring] = Field(default_factory=list, description="list: this page of keyrings")
    total: int | None = Field(None, description="list: how many keyrings there are")
    token: str | None = Field(None, description="encrypt, rotate_token: the token")
    plaintext: str | None = Field(None, description="decrypt: the plaintext")
    key_id: str | None = Field(None, description="encrypt, rotate_token: the key the token is now under")
    issued_at: int | None = Field(None, description="the token's timestamp (unix s); rotation keeps it")
    age_s: int | None = Field(None, description="decrypt: seconds since issued_at")
    needs_rotation: bool | None = Field(None, description="decrypt: the token is not under the primary key")
    dropped: list[FernetKeyInfo] = Field(default_factory=list, description="drop_old_keys: keys destroyed")


# --------------------------------------------------------------------------- operations


def _info(record: KeyRecord) -> FernetKeyInfo:
    return FernetKeyInfo(
        key_id=record.key_id,
        version=record.version,
        status=record.status,  # type: ignore[arg-type]
        primary=record.status == "active",
        fingerprint=record.fingerprint,
        created_at=record.created_at,
    )


def _versions(store: KeyStore, name: str) -> list[KeyRecord]:
    """The keyring's keys, newest first: 404 if unknown, 409 if the name holds other keys."""
    try:
        records = store.versions(name)
    except NotFound:
        raise NotFound(f"keyring: no keyring named {name!r}") from None
    if records[0].algorithm != "fernet":
        raise Conflict(f"keyring: {name!r} holds {records[0].algorithm} keys, not Fernet keys")
    return records


def _keyring_state(store: KeyStore, name: str) -> FernetKeyring:
    records = _versions(store, name)
    return FernetKeyring(
        keyring=name,
        primary_key_id=next((r.key_id for r in records if r.status == "active"), None),
        usable_keys=sum(r.status != "destroyed" for r in records),
        keys=[_info(r) for r in records],
    )


def _ring(store: KeyStore, name: str, *, need_primary: bool) -> tuple[MultiFernet, Fernet | None, str | None]:
    """The keyring as MultiFernet (primary first), the primary's Fernet and its key id."""
    _versions(store, name)
    ring = store.ring(name)
    primary = ring[0] if ring and ring[0][0].status == "active" else None
    if need_primary and primary is None:
        raise Conflict(f"keyring: {name!r} has no active key; add_key to give it a primary")
    if not ring:
        raise Conflict(f"keyring: every key of {name!r} is destroyed; nothing can decrypt")
    fernets = [Fernet(fernet_key(material)) for _, material in ring]
    return MultiFernet(fernets), (fernets[0] if primary else None), (primary[0].key_id if primary else None)


def _refuse(multi: MultiFernet, token: bytes, ttl: int | None, name: str) -> InvalidInput:
    """Why ``token`` failed: a bad signature, or (with ``ttl``) its age."""
    if ttl is not None:
        try:
            issued = multi.extract_timestamp(token)
        except InvalidToken:
            pass
        else:
            now = int(time.time())
            if issued > now + MAX_CLOCK_SKEW_S:
                return InvalidInput("token", f"issued {issued - now} s in the future (beyond the allowed clock skew)")
            return InvalidInput("token", f"expired (ttl {ttl} s; issued {now - issued} s ago)")
    return InvalidInput("token", f"invalid, tampered, or not encrypted under a key of keyring {name!r}")


def _open(multi: MultiFernet, token: bytes, ttl: int | None, name: str) -> bytes:
    try:
        return multi.decrypt(token, ttl=ttl)
    except InvalidToken:
        raise _refuse(multi, token, ttl, name) from None


def _decrypt(op: FernetDecryptOp, store: KeyStore) -> FernetKeyManagerOutput:
    multi, primary, _ = _ring(store, op.keyring, need_primary=False)
    token = op.token.encode("ascii")  # the field pattern admits url-safe base64 only
    plain = _open(multi, token, op.ttl, op.keyring)
    try:
        text = plain.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput("token", "decrypts to bytes that are not UTF-8 text; this service handles text") from None
    issued = multi.extract_timestamp(token)
    under_primary = True
    if primary is not None:
        try:
            primary.extract_timestamp(token)  # verifies the signature under the primary alone
        except InvalidToken:
            under_primary = False
    return FernetKeyManagerOutput(
        operation=op.operation,
        plaintext=text,
        issued_at=issued,
        age_s=int(time.time()) - issued,
        needs_rotation=primary is None or not under_primary,
    )


def _rotate_token(op: FernetRotateTokenOp, store: KeyStore) -> FernetKeyManagerOutput:
    multi, _, primary_id = _ring(store, op.keyring, need_primary=True)
    token = op.token.encode("ascii")
    if op.ttl is not None:
        _open(multi, token, op.ttl, op.keyring)
    try:
        rotated = multi.rotate(token)
    except InvalidToken:
        raise _refuse(multi, token, None, op.keyring) from None
    return FernetKeyManagerOutput(
        operation=op.operation,
        token=rotated.decode("ascii"),
        key_id=primary_id,
        issued_at=multi.extract_timestamp(rotated),
    )


def _encrypt(op: FernetEncryptOp, store: KeyStore) -> FernetKeyManagerOutput:
    multi, _, primary_id = _ring(store, op.keyring, need_primary=True)
    token = multi.encrypt(op.plaintext.encode("utf-8"))
    return FernetKeyManagerOutput(
        operation=op.operation, token=token.decode("ascii"), key_id=primary_id, issued_at=multi.extract_timestamp(token)
    )


@component(
    "FernetKeyManager",
    tier="tier4",
    capabilities=["encryption", "key_rotation", "token_ttl", "key_management"],
    example={"operation": "list"},
    examples=[{"operation": "create_keyring"}],
    deterministic=False,
)
def fernet_key_manager(request: FernetKeyManagerInput, ctx: RunContext) -> FernetKeyManagerOutput:
    """Fernet / MultiFernet keyrings: encrypt, decrypt with TTLs, rotate keys and tokens.

    Keyring keys are kept encrypted at rest in the key store and never returned. A token from an
    older key still decrypts while that key is in the ring; ``rotate_token`` re-encrypts it under
    the primary keeping its timestamp (TTLs count from the first encryption). Invalid, tampered
    or expired tokens → 422 naming ``token``.
    """
    op = request.root
    store = KeyStore.for_run(ctx)
    match op:
        case FernetCreateKeyringOp():
            try:
                record = store.generate(name=op.keyring, algorithm="fernet", bits=256, purpose=op.purpose)
            except Conflict:
                raise Conflict(f"keyring: {op.keyring!r} exists; add_key to give it a new primary") from None
            return FernetKeyManagerOutput(operation=op.operation, keyring=_keyring_state(store, record.name))
        case FernetAddKeyOp():
            _versions(store, op.keyring)
            store.rotate(op.keyring)
            return FernetKeyManagerOutput(operation=op.operation, keyring=_keyring_state(store, op.keyring))
        case FernetEncryptOp():
            return _encrypt(op, store)
        case FernetDecryptOp():
            return _decrypt(op, store)
        case FernetRotateTokenOp():
            return _rotate_token(op, store)
        case FernetDropOldKeysOp():
            _versions(store, op.keyring)
            dropped = store.destroy_old_versions(op.keyring, keep=op.keep)
            return FernetKeyManagerOutput(
                operation=op.operation,
                keyring=_keyring_state(store, op.keyring),
                dropped=[_info(r) for r in dropped],
            )
        case FernetStatusOp():
            return FernetKeyManagerOutput(operation=op.operation, keyring=_keyring_state(store, op.keyring))
        case FernetListOp():
            names, total = store.names(algorithm="fernet", limit=op.limit, offset=op.offset)
            return FernetKeyManagerOutput(
                operation=op.operation, keyrings=[_keyring_state(store, n) for n in names], total=total
            )
    raise AssertionError(f"unhandled operation {op!r}")  # pragma: no cover - the union is exhaustive
