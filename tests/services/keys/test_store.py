"""The key store: HKDF known answers, master key handling, encryption at rest, lifecycle, concurrency."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import sqlite3
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from mlmesh.errors import Conflict, NotFound
from services.keys.store import (
    MASTER_KEY_ENV,
    KeyStore,
    MasterKeyError,
    fernet_key,
    fingerprint,
    hkdf_sha256,
    load_master_key,
)

# RFC 5869, appendix A: test cases 1 and 3 (SHA-256).
RFC_IKM = bytes.fromhex("0b" * 22)
RFC1_SALT = bytes.fromhex("000102030405060708090a0b0c")
RFC1_INFO = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
RFC1_PRK = "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
RFC1_OKM = "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
RFC3_OKM = "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> KeyStore:
    # environ={}: a master key in the developer's environment must not leak into these tests.
    return KeyStore.open(data_dir, environ={})


def db_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (data_dir / "keys").glob("keys.sqlite*"))


def raw_blob(data_dir: Path, key_id: str) -> bytes | None:
    with sqlite3.connect(data_dir / "keys" / "keys.sqlite") as conn:
        return conn.execute("SELECT material FROM key WHERE id = ?", (key_id,)).fetchone()[0]


def rfc5869_reference(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF written straight from RFC 5869 §2 with the standard library's hmac (independent of cryptography)."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


# ----------------------------------------------------------------------------- HKDF known answers


def test_rfc5869_case1_with_cryptography_hkdf() -> None:
    okm = HKDF(algorithm=hashes.SHA256(), length=42, salt=RFC1_SALT, info=RFC1_INFO).derive(RFC_IKM)
    assert okm.hex() == RFC1_OKM
    assert hkdf_sha256(RFC_IKM, length=42, salt=RFC1_SALT, info=RFC1_INFO).hex() == RFC1_OKM
    assert hmac.new(RFC1_SALT, RFC_IKM, hashlib.sha256).hexdigest() == RFC1_PRK


def test_rfc5869_case3_empty_salt_and_info() -> None:
    assert hkdf_sha256(RFC_IKM, length=42).hex() == RFC3_OKM


@settings(max_examples=40, deadline=None)
@given(
    ikm=st.binary(min_size=1, max_size=64),
    salt=st.binary(max_size=40),
    info=st.binary(max_size=40),
    length=st.integers(1, 200),
)
def test_hkdf_matches_the_rfc_written_with_hmac(ikm: bytes, salt: bytes, info: bytes, length: int) -> None:
    assert hkdf_sha256(ikm, length=length, salt=salt, info=info) == rfc5869_reference(ikm, salt, info, length)


def test_derive_through_the_store_gives_the_rfc_okm(store: KeyStore) -> None:
    parent = store.import_key(RFC_IKM, name="rfc-ikm")
    child = store.derive(parent.key_id, name="rfc-okm", bits=42 * 8, salt=RFC1_SALT, info=RFC1_INFO)
    assert store.material(child.key_id, use="encrypt").hex() == RFC1_OKM
    assert child.fingerprint == hashlib.sha256(bytes.fromhex(RFC1_OKM)).hexdigest()[:16]
    assert child.parent_id == parent.key_id and child.bits == 336 and child.version == 1
    assert child.derivation == {
        "kdf": "HKDF-SHA256",
        "salt_hex": RFC1_SALT.hex(),
        "info_hex": RFC1_INFO.hex(),
        "length": 42,
    }


def test_fingerprint_is_sha256_prefix() -> None:
    assert fingerprint(b"abc") == "ba7816bf8f01cfea"  # SHA-256("abc") from FIPS 180-2


# ----------------------------------------------------------------------------- master key


def test_master_key_file_is_created_private(store: KeyStore, data_dir: Path) -> None:
    record = store.generate(name="k")
    key_file = data_dir / "keys" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "keys").stat().st_mode) == 0o700
    for db_file in (data_dir / "keys").glob("keys.sqlite*"):
        assert stat.S_IMODE(db_file.stat().st_mode) == 0o600, db_file.name
    # The blob opens with the file's key, independently of the store: id, NUL, material.
    plain = Fernet(key_file.read_bytes().strip()).decrypt(raw_blob(data_dir, record.key_id))
    assert plain == record.key_id.encode() + b"\0" + store.material(record.key_id, use="encrypt")
    assert not list((data_dir / "keys").glob(".master.key.*"))  # no temporary file left behind


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_master_key_file_readable_by_others_is_refused(data_dir: Path, mode: int) -> None:
    keys = data_dir / "keys"
    keys.mkdir(parents=True)
    (keys / "master.key").write_bytes(Fernet.generate_key())
    os.chmod(keys / "master.key", mode)
    with pytest.raises(MasterKeyError, match=r"chmod 600") as err:
        load_master_key(keys, environ={})
    assert f"{mode:04o}" in err.value.detail
    assert err.value.status == 503


def test_master_key_symlink_is_refused(data_dir: Path, tmp_path: Path) -> None:
    keys = data_dir / "keys"
    keys.mkdir(parents=True)
    target = tmp_path / "elsewhere.key"
    target.write_bytes(Fernet.generate_key())
    os.chmod(target, 0o600)
    (keys / "master.key").symlink_to(target)
    with pytest.raises(MasterKeyError, match="symlink"):
        load_master_key(keys, environ={})


def test_malformed_master_key_file_is_refused(data_dir: Path) -> None:
    keys = data_dir / "keys"
    keys.mkdir(parents=True)
    fd = os.open(keys / "master.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not-a-key")
    os.close(fd)
    with pytest.raises(MasterKeyError, match="32-byte"):
        load_master_key(keys, environ={})


def test_master_key_from_environment(data_dir: Path) -> None:
    master = Fernet.generate_key()
    store = KeyStore.open(data_dir, environ={MASTER_KEY_ENV: master.decode()})
    record = store.generate(name="env")
    assert not (data_dir / "keys" / "master.key").exists()
    plain = Fernet(master).decrypt(raw_blob(data_dir, record.key_id))
    assert plain.endswith(store.material(record.key_id, use="encrypt"))


def test_malformed_environment_master_key_is_refused_without_echo(data_dir: Path) -> None:
    secret = "definitely-not-base64-of-32-bytes"
    with pytest.raises(MasterKeyError) as err:
        KeyStore.open(data_dir, environ={MASTER_KEY_ENV: secret}).generate()
    assert MASTER_KEY_ENV in err.value.detail and secret not in err.value.detail


def test_a_changed_master_key_is_a_clear_503(data_dir: Path) -> None:
    first = KeyStore.open(data_dir, environ={MASTER_KEY_ENV: Fernet.generate_key().decode()})
    record = first.generate(name="k")
    second = KeyStore.open(data_dir, environ={MASTER_KEY_ENV: Fernet.generate_key().decode()})
    with pytest.raises(MasterKeyError, match="master key"):
        second.material(record.key_id, use="decrypt")


def test_concurrent_first_use_agrees_on_one_master_key(data_dir: Path) -> None:
    keys = data_dir / "keys"
    keys.mkdir(parents=True)
    barrier = threading.Barrier(8)

    def load(_: int) -> bytes:
        barrier.wait()
        return load_master_key(keys, environ={}).encrypt(b"x")

    with ThreadPoolExecutor(8) as pool:
        tokens = list(pool.map(load, range(8)))
    master = Fernet((keys / "master.key").read_bytes().strip())
    assert all(master.decrypt(t) == b"x" for t in tokens)
    assert sorted(p.name for p in keys.iterdir()) == ["master.key"]


# ----------------------------------------------------------------------------- at rest


def test_material_is_encrypted_at_rest(store: KeyStore, data_dir: Path) -> None:
    records = [store.generate(bits=256), store.generate(algorithm="fernet")]
    on_disk = db_bytes(data_dir)
    for record in records:
        material = store.material(record.key_id, use="encrypt")
        for form in (material, material.hex().encode(), base64.b64encode(material), fernet_key(material)):
            assert form not in on_disk


def test_a_blob_moved_to_another_row_fails_its_integrity_check(store: KeyStore, data_dir: Path) -> None:
    a, b = store.generate(name="a"), store.generate(name="b")
    with sqlite3.connect(data_dir / "keys" / "keys.sqlite") as conn:
        conn.execute("UPDATE key SET material = ? WHERE id = ?", (raw_blob(data_dir, a.key_id), b.key_id))
    with pytest.raises(MasterKeyError, match="integrity"):
        store.material(b.key_id, use="decrypt")


def test_destroy_wipes_the_blob_from_the_database_files(store: KeyStore, data_dir: Path) -> None:
    record = store.generate(name="doomed")
    blob = raw_blob(data_dir, record.key_id)
    assert blob and blob in db_bytes(data_dir)
    destroyed = store.destroy(record.key_id)
    assert destroyed.status == "destroyed" and destroyed.fingerprint == record.fingerprint
    assert raw_blob(data_dir, record.key_id) is None
    assert blob not in db_bytes(data_dir)


# ----------------------------------------------------------------------------- lifecycle


def test_generate_sizes_and_metadata(store: KeyStore) -> None:
    sym = store.generate(name="s", bits=512, purpose="p")
    fer = store.generate(name="f", algorithm="fernet")
    assert len(store.material(sym.key_id, use="encrypt")) == 64 and sym.bits == 512
    assert Fernet(fernet_key(store.material(fer.key_id, use="encrypt")))  # a valid Fernet key
    assert (sym.name, sym.purpose, sym.version, sym.status, sym.parent_id) == ("s", "p", 1, "active", None)
    unnamed = store.generate()
    assert unnamed.name == unnamed.key_id and unnamed.key_id.startswith("key-")
    assert store.get(sym.key_id) == sym
    with pytest.raises(Conflict):
        store.generate(name="s")


def test_rotate_retires_the_old_version_which_still_decrypts(store: KeyStore) -> None:
    v1 = store.generate(name="svc", algorithm="fernet", purpose="sessions")
    v2, retired = store.rotate("svc")
    assert (v2.version, v2.status, v2.algorithm, v2.purpose) == (2, "active", "fernet", "sessions")
    assert [r.key_id for r in retired] == [v1.key_id] and retired[0].status == "retired"
    assert store.material(v1.key_id, use="decrypt") != store.material(v2.key_id, use="encrypt")
    with pytest.raises(Conflict, match="retired"):
        store.material(v1.key_id, use="encrypt")
    with pytest.raises(Conflict, match="active keys derive"):
        store.derive(v1.key_id)
    assert [r.key_id for r, _ in store.ring("svc")] == [v2.key_id, v1.key_id]
    assert [r.version for r in store.versions("svc")] == [2, 1]


def test_invalid_transitions_are_conflicts(store: KeyStore) -> None:
    record = store.generate(name="k")
    store.retire(record.key_id)
    with pytest.raises(Conflict, match="already retired"):
        store.retire(record.key_id)
    store.destroy(record.key_id)
    for action in (store.retire, store.destroy, store.derive):
        with pytest.raises(Conflict):
            action(record.key_id)
    with pytest.raises(Conflict, match="destroyed"):
        store.material(record.key_id, use="decrypt")
    parent = store.generate()
    child = store.derive(parent.key_id, name="child")
    with pytest.raises(Conflict, match="derive again"):
        store.rotate("child")
    with pytest.raises(Conflict, match="exists"):
        store.derive(parent.key_id, name="child")
    assert child.version == 1


def test_unknown_ids_and_names_are_not_found(store: KeyStore) -> None:
    for call in (
        lambda: store.get("key-nope"),
        lambda: store.retire("key-nope"),
        lambda: store.destroy("key-nope"),
        lambda: store.derive("key-nope"),
        lambda: store.rotate("nope"),
        lambda: store.ring("nope"),
    ):
        with pytest.raises(NotFound):
            call()


def test_destroy_old_versions_keeps_the_newest(store: KeyStore) -> None:
    v1 = store.generate(name="ring", algorithm="fernet")
    v2, _ = store.rotate("ring")
    v3, _ = store.rotate("ring")
    dropped = store.destroy_old_versions("ring", keep=2)
    assert [r.key_id for r in dropped] == [v1.key_id]
    assert [r.key_id for r, _ in store.ring("ring")] == [v3.key_id, v2.key_id]
    assert store.destroy_old_versions("ring", keep=2) == []


def test_list_filters_and_pages(store: KeyStore) -> None:
    store.generate(name="a")
    store.rotate("a")
    store.generate(name="b", algorithm="fernet")
    records, total = store.list_keys()
    assert total == 3 and [r.name for r in records] == ["a", "a", "b"]
    assert store.list_keys(status="retired")[1] == 1
    assert [r.name for r in store.list_keys(algorithm="fernet")[0]] == ["b"]
    page, total = store.list_keys(limit=1, offset=1)
    assert total == 3 and len(page) == 1
    assert store.names() == (["a", "b"], 2)
    assert store.names(algorithm="fernet") == (["b"], 1)


def test_state_survives_a_new_store(store: KeyStore, data_dir: Path) -> None:
    record = store.generate(name="kept")
    material = store.material(record.key_id, use="encrypt")
    store.db.close()
    again = KeyStore.open(data_dir, environ={})
    assert again.get(record.key_id) == record
    assert again.material(record.key_id, use="encrypt") == material


def test_concurrent_rotations_keep_one_active_version(store: KeyStore, data_dir: Path) -> None:
    store.generate(name="hot")

    def rotate(_: int) -> int:
        return KeyStore.open(data_dir, environ={}).rotate("hot")[0].version

    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(rotate, range(8)))
    assert sorted(versions) == list(range(2, 10))
    family = store.versions("hot")
    assert [r.status for r in family].count("active") == 1 and family[0].status == "active"
