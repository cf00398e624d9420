"""The mesh's key store: key material encrypted at rest under a master key, metadata in SQLite.

Shared by the key components of Tier 4 (``secure_key_manager``, ``fernet_key_manager``); plain
library code with no HTTP. See :mod:`services.keys.store`.
"""

from services.keys.store import (
    ALGORITHMS,
    MASTER_KEY_ENV,
    STATUSES,
    KeyRecord,
    KeyStore,
    MasterKeyError,
    fingerprint,
    hkdf_sha256,
    load_master_key,
)

__all__ = [
    "ALGORITHMS",
    "MASTER_KEY_ENV",
    "STATUSES",
    "KeyRecord",
    "KeyStore",
    "MasterKeyError",
    "fingerprint",
    "hkdf_sha256",
    "load_master_key",
]
