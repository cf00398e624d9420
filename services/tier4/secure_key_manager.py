"""Key lifecycle over the mesh's key store: generate, derive, rotate, retire, destroy, list — never the material.

Keys live in ``data/keys/keys.sqlite`` with their material encrypted at rest under the master key
(``MLMESH_MASTER_KEY`` or the 0600 file ``data/keys/master.key``); see :mod:`services.keys.store`.
No response and no log line carries key material: a key is shown by its metadata and its
fingerprint, the first 8 bytes of SHA-256 of the raw material, in hex.

* ``generate`` — a random key from ``secrets.token_bytes``: ``symmetric`` of ``bits`` (128–4096,
  default 256) or a ``fernet`` key (256 bits: signing + AES-128 halves).
* ``derive`` — HKDF-SHA256 (RFC 5869, cryptography's implementation) of an active key with
  ``salt_hex`` and ``info`` / ``info_hex`` into a new stored child key (its ``parent_id`` and
  derivation parameters are kept).
* ``rotate`` — version n+1 of a named key becomes its active key; the old version is retired: it
  still decrypts (e.g. in a Fernet keyring) but no longer encrypts or derives.
* ``retire`` / ``destroy`` — active → retired → destroyed (or active → destroyed); destroying deletes
  the encrypted blob and keeps the metadata for audit.

Unknown key id or name → 404; an invalid transition (retire twice, derive from a retired or
destroyed key, destroy twice) → 409; a missing, malformed or group/world-readable master key → 503.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, RootModel, model_validator

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, RunContext, component
from services.keys.store import KeyRecord, KeyStore

__all__ = [
    "KeyDerivation",
    "KeyMetadata",
    "SecureKeyDeriveOp",
    "SecureKeyDestroyOp",
    "SecureKeyGenerateOp",
    "SecureKeyGetOp",
    "SecureKeyListOp",
    "SecureKeyManagerInput",
    "SecureKeyManagerOutput",
    "SecureKeyRetireOp",
    "SecureKeyRotateOp",
    "key_metadata",
    "secure_key_manager",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$"
KeyId = Annotated[str, Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="key id (key-…)")]
KeyName = Annotated[
    str,
    Field(min_length=1, max_length=128, pattern=NAME_PATTERN, description="key name; its versions share it"),
]
# Printable text: no control characters (they would end up in logs and listings).
Purpose = Annotated[
    str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$", description="what the key is for (free text)")
]
Hex = Annotated[str, Field(max_length=2048, pattern=r"^(?:[0-9a-fA-F]{2})*$")]
Bits = Annotated[int, Field(ge=128, le=4096, multiple_of=8, description="key size in bits (multiple of 8)")]


# --------------------------------------------------------------------------- inputs


class SecureKeyGenerateOp(ComponentInput):
    """A new random key, version 1 of ``name``."""

    operation: Literal["generate"]
    name: KeyName | None = Field(None, description="name of the key family; the key id when omitted")
    purpose: Purpose = ""
    algorithm: Literal["symmetric", "fernet"] = Field("symmetric", description="random bytes, or a Fernet key")
    bits: Bits | None = Field(None, description="size of a symmetric key (default 256); Fernet keys are 256")


class SecureKeyDeriveOp(ComponentInput):
    """A child key HKDF-SHA256(parent, salt, info), stored as version 1 of ``name``."""

    operation: Literal["derive"]
    key_id: KeyId = Field(description="the parent key (must be active)")
    name: KeyName | None = Field(None, description="name of the derived key; its id when omitted")
    purpose: Purpose = ""
    algorithm: Literal["symmetric", "fernet"] = "symmetric"
    bits: Bits | None = Field(None, description="output size (default 256); Fernet keys are 256")
    salt_hex: Hex = Field("", description="HKDF salt, hex (empty: HashLen zero bytes, per RFC 5869)")
    info: Annotated[str, Field(max_length=1024)] | None = Field(None, description="HKDF info as UTF-8 text")
    info_hex: Hex | None = Field(None, description="HKDF info as hex (instead of `info`)")

    @model_validator(mode="after")
    def _one_info(self) -> SecureKeyDeriveOp:
        if self.info is not None and self.info_hex is not None:
            raise ValueError("give `info` (text) or `info_hex`, not both")
        return self


class SecureKeyRotateOp(ComponentInput):
    operation: Literal["rotate"]
    name: KeyName = Field(description="the key family to rotate")


class SecureKeyRetireOp(ComponentInput):
    operation: Literal["retire"]
    key_id: KeyId


class SecureKeyDestroyOp(ComponentInput):
    operation: Literal["destroy"]
    key_id: KeyId


class SecureKeyGetOp(ComponentInput):
    operation: Literal["get"]
    key_id: KeyId


class SecureKeyListOp(ComponentInput):
    operation: Literal["list"]
    name: KeyName | None = Field(None, description="only the versions of this key")
    status: Literal["active", "retired", "destroyed"] | None = None
    algorithm: Literal["symmetric", "fernet"] | None = None
    limit: int = Field(100, ge=1, le=1000)
    offset: int = Field(0, ge=0, le=1_000_000)


class SecureKeyManagerInput(
    RootModel[
        Annotated[
            SecureKeyGenerateOp
            | SecureKeyDeriveOp
            | SecureKeyRotateOp
            | SecureKeyRetireOp
            | SecureKeyDestroyOp
            | SecureKeyGetOp
            | SecureKeyListOp,
            Field(discriminator="operation"),
        ]
    ]
):
    """One key operation, chosen by ``operation``."""


# --------------------------------------------------------------------------- outputs


class KeyDerivation(ComponentOutput):
    kdf: Literal["HKDF-SHA256"]
    salt_hex: str
    info_hex: str
    length: int = Field(description="output length in bytes")


class KeyMetadata(ComponentOutput):
    """A key without its material."""

    key_id: str
    name: str
    purpose: str
    algorithm: str
    bits: int
    version: int
    status: Literal["active", "retired", "destroyed"]
    parent_id: str | None = Field(description="the key this one was derived from")
    derivation: KeyDerivation | None
    fingerprint: str = Field(description="first 8 bytes of SHA-256 of the raw key material, hex")
    created_at: float = Field(description="unix time, seconds")
    updated_at: float
    retired_at: float | None
    destroyed_at: float | None


class SecureKeyManagerOutput(ComponentOutput):
    operation: str
    key: KeyMetadata | None = Field(None, description="the key the operation created or changed")
    retired: list[KeyMetadata] = Field(default_factory=list, description="versions a rotation retired")
    keys: list[KeyMetadata] = Field(default_factory=list, description="list: this page of keys")
    total: int | None = Field(None, description="list: how many keys match in all")


def key_metadata(record: KeyRecord) -> KeyMetadata:
    """The wire form of a key record (metadata only)."""
    return KeyMetadata(
        key_id=record.key_id,
        name=record.name,
        purpose=record.purpose,
        algorithm=record.algorithm,
        bits=record.bits,
        version=record.version,
        status=record.status,  # type: ignore[arg-type]
        parent_id=record.parent_id,
        derivation=KeyDerivation(**record.derivation) if record.derivation else None,
        fingerprint=record.fingerprint,
        created_at=record.created_at,
        updated_at=record.updated_at,
        retired_at=record.retired_at,
        destroyed_at=record.destroyed_at,
    )


# --------------------------------------------------------------------------- operations


def _bits(algorithm: str, bits: int | None) -> int:
    if algorithm == "fernet":
        if bits not in (None, 256):
            raise InvalidInput("bits", f"Fernet keys are 256 bits; got {bits}")
        return 256
    return bits or 256


def _derive(op: SecureKeyDeriveOp, store: KeyStore) -> KeyMetadata:
    info = bytes.fromhex(op.info_hex) if op.info_hex is not None else (op.info or "").encode()
    record = store.derive(
        op.key_id,
        name=op.name,
        algorithm=op.algorithm,
        bits=_bits(op.algorithm, op.bits),
        salt=bytes.fromhex(op.salt_hex),
        info=info,
        purpose=op.purpose,
    )
    return key_metadata(record)


@component(
    "SecureKeyManager",
    tier="tier4",
    capabilities=["key_management", "key_derivation", "key_rotation", "encryption_at_rest"],
    example={"operation": "list"},
    # Examples must succeed whenever they run: no fixed names (a second generate would be 409).
    examples=[{"operation": "generate", "purpose": "signing webhooks", "bits": 256}],
    deterministic=False,
)
def secure_key_manager(request: SecureKeyManagerInput, ctx: RunContext) -> SecureKeyManagerOutput:
    """Key lifecycle: generate, store encrypted at rest, derive (HKDF), rotate, retire, destroy, list.

    Keys are stored under the master key and shown only by metadata and fingerprint (first 8
    bytes of SHA-256, hex) — never their material. Unknown id → 404, invalid transition → 409,
    unusable master key → 503.
    """
    op = request.root
    store = KeyStore.for_run(ctx)
    match op:
        case SecureKeyGenerateOp():
            record = store.generate(
                name=op.name, algorithm=op.algorithm, bits=_bits(op.algorithm, op.bits), purpose=op.purpose
            )
            return SecureKeyManagerOutput(operation=op.operation, key=key_metadata(record))
        case SecureKeyDeriveOp():
            return SecureKeyManagerOutput(operation=op.operation, key=_derive(op, store))
        case SecureKeyRotateOp():
            record, retired = store.rotate(op.name)
            return SecureKeyManagerOutput(
                operation=op.operation, key=key_metadata(record), retired=[key_metadata(r) for r in retired]
            )
        case SecureKeyRetireOp():
            return SecureKeyManagerOutput(operation=op.operation, key=key_metadata(store.retire(op.key_id)))
        case SecureKeyDestroyOp():
            return SecureKeyManagerOutput(operation=op.operation, key=key_metadata(store.destroy(op.key_id)))
        case SecureKeyGetOp():
            return SecureKeyManagerOutput(operation=op.operation, key=key_metadata(store.get(op.key_id)))
        case SecureKeyListOp():
            records, total = store.list_keys(
                name=op.name, status=op.status, algorithm=op.algorithm, limit=op.limit, offset=op.offset
            )
            return SecureKeyManagerOutput(operation=op.operation, keys=[key_metadata(r) for r in records], total=total)
    raise AssertionError(f"unhandled operation {op!r}")  # pragma: no cover - the union is exhaustive
