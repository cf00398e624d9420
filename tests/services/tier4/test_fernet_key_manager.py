"""fernet_key_manager: MultiFernet rotation, TTL from creation, tampering → 422, no keys in responses or logs."""

from __future__ import annotations

import base64
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from fastapi.testclient import TestClient

from mlmesh.errors import InvalidInput
from mlmesh.settings import Settings
from services.framework import RunContext
from services.keys.store import MASTER_KEY_ENV, KeyStore, fernet_key
from services.tier4.fernet_key_manager import FernetKeyManagerInput, FernetKeyManagerOutput, fernet_key_manager
from tests.conftest import make_settings

ROUTE = "/run/fernet_key_manager"


@pytest.fixture(autouse=True)
def _no_env_master_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)


@pytest.fixture
def client(client_for: Callable[..., TestClient]) -> TestClient:
    return client_for(fernet_key_manager)


def ok(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post(ROUTE, json=body)
    assert response.status_code == 200, response.text
    return response.json()["component_result"]


def problem(client: TestClient, status: int, **body: Any) -> str:
    response = client.post(ROUTE, json=body)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()["detail"]


def fernet_of(settings: Settings, key_id: str) -> Fernet:
    """An independent Fernet over a stored key (test-side access to the material)."""
    return Fernet(fernet_key(KeyStore.open(settings.data_dir).material(key_id, use="decrypt")))


def tamper(token: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[30] ^= 0x01  # a ciphertext byte: the HMAC no longer matches
    return base64.urlsafe_b64encode(bytes(raw)).decode()


# ----------------------------------------------------------------------------- the scenario


def test_k1_token_decrypts_under_k2_k1_and_after_rotation_under_k2_alone(
    client: TestClient, settings: Settings
) -> None:
    ring = ok(client, operation="create_keyring", keyring="payments")["keyring"]
    k1 = ring["primary_key_id"]
    t1 = ok(client, operation="encrypt", keyring="payments", plaintext="card 4242")
    assert t1["key_id"] == k1

    ring = ok(client, operation="add_key", keyring="payments")["keyring"]
    k2 = ring["primary_key_id"]
    assert k2 != k1 and [(k["version"], k["status"], k["primary"]) for k in ring["keys"]] == [
        (2, "active", True),
        (1, "retired", False),
    ]
    # Ring [K2, K1]: the K1 token still opens, and is flagged for rotation.
    out = ok(client, operation="decrypt", keyring="payments", token=t1["token"])
    assert out["plaintext"] == "card 4242" and out["needs_rotation"] is True
    # New tokens are under K2 (checked with cryptography directly).
    t2_new = ok(client, operation="encrypt", keyring="payments", plaintext="new")["token"]
    assert fernet_of(settings, k2).decrypt(t2_new) == b"new"

    rotated = ok(client, operation="rotate_token", keyring="payments", token=t1["token"])
    assert rotated["key_id"] == k2 and rotated["token"] != t1["token"]
    assert fernet_of(settings, k2).decrypt(rotated["token"]) == b"card 4242"
    with pytest.raises(InvalidToken):
        fernet_of(settings, k1).decrypt(rotated["token"])

    dropped = ok(client, operation="drop_old_keys", keyring="payments")
    assert [k["key_id"] for k in dropped["dropped"]] == [k1]
    assert dropped["keyring"]["usable_keys"] == 1
    # Ring [K2] alone: the rotated token opens, the original no longer does.
    out = ok(client, operation="decrypt", keyring="payments", token=rotated["token"])
    assert out["plaintext"] == "card 4242" and out["needs_rotation"] is False
    assert problem(client, 422, operation="decrypt", keyring="payments", token=t1["token"]).startswith("token: invalid")


def test_ttl_counts_from_creation_through_rotation(client: TestClient, settings: Settings) -> None:
    k1 = ok(client, operation="create_keyring", keyring="ttl")["keyring"]["primary_key_id"]
    created = int(time.time()) - 1000
    # A token K1 issued 1000 s ago, made with cryptography's explicit-time API (no sleeping).
    old = fernet_of(settings, k1).encrypt_at_time(b"session", created).decode()
    ok(client, operation="add_key", keyring="ttl")

    assert ok(client, operation="decrypt", keyring="ttl", token=old, ttl=5000)["issued_at"] == created
    detail = problem(client, 422, operation="decrypt", keyring="ttl", token=old, ttl=500)
    assert detail.startswith("token: expired (ttl 500 s; issued ")

    rotated = ok(client, operation="rotate_token", keyring="ttl", token=old)
    assert rotated["issued_at"] == created
    k2 = rotated["key_id"]
    assert fernet_of(settings, k2).extract_timestamp(rotated["token"]) == created
    # Still expired for a 500 s TTL after rotation: the clock did not restart.
    assert "expired" in problem(client, 422, operation="decrypt", keyring="ttl", token=rotated["token"], ttl=500)
    out = ok(client, operation="decrypt", keyring="ttl", token=rotated["token"], ttl=5000)
    assert out["plaintext"] == "session" and 1000 <= out["age_s"] < 1100
    # Independently: MultiFernet at explicit times agrees.
    multi = MultiFernet([fernet_of(settings, k2)])
    assert multi.decrypt_at_time(rotated["token"].encode(), 1001, created + 1000) == b"session"
    with pytest.raises(InvalidToken):
        multi.decrypt_at_time(rotated["token"].encode(), 999, created + 1000)
    # rotate_token with a ttl refuses an expired token rather than refreshing it.
    assert "expired" in problem(client, 422, operation="rotate_token", keyring="ttl", token=old, ttl=500)


def test_fresh_token_within_ttl_and_token_from_the_future(client: TestClient, settings: Settings) -> None:
    k1 = ok(client, operation="create_keyring", keyring="clock")["keyring"]["primary_key_id"]
    token = ok(client, operation="encrypt", keyring="clock", plaintext="héllo ✓")["token"]
    assert ok(client, operation="decrypt", keyring="clock", token=token, ttl=60)["plaintext"] == "héllo ✓"
    future = fernet_of(settings, k1).encrypt_at_time(b"x", int(time.time()) + 3600).decode()
    assert "future" in problem(client, 422, operation="decrypt", keyring="clock", token=future, ttl=60)
    assert ok(client, operation="decrypt", keyring="clock", token=future)["plaintext"] == "x"  # no ttl, no check


# ----------------------------------------------------------------------------- bad tokens are 4xx, never 500


def test_tampered_and_malformed_tokens_are_422(client: TestClient, settings: Settings) -> None:
    ok(client, operation="create_keyring", keyring="t")
    token = ok(client, operation="encrypt", keyring="t", plaintext="secret text")["token"]
    assert problem(client, 422, operation="decrypt", keyring="t", token=tamper(token)) == (
        "token: invalid, tampered, or not encrypted under a key of keyring 't'"
    )
    for bad in (token[:-8], token[:20], "AAAA", "gAAAAA", "x" * 100, tamper(token)):
        for op in ("decrypt", "rotate_token"):
            detail = problem(client, 422, operation=op, keyring="t", token=bad)
            assert detail.startswith("token:") and "secret text" not in detail
    for bad in ("not base64!", "é" * 10, "a\x00b", ""):
        assert "token" in problem(client, 422, operation="decrypt", keyring="t", token=bad)
    foreign = Fernet(Fernet.generate_key()).encrypt(b"elsewhere").decode()
    assert problem(client, 422, operation="decrypt", keyring="t", token=foreign).startswith("token: invalid")


def test_non_text_plaintexts_are_422(client: TestClient, settings: Settings) -> None:
    k = ok(client, operation="create_keyring", keyring="bin")["keyring"]["primary_key_id"]
    binary = fernet_of(settings, k).encrypt(b"\xff\xfe\x00").decode()
    assert "UTF-8" in problem(client, 422, operation="decrypt", keyring="bin", token=binary)
    response = client.post(
        ROUTE,
        content=b'{"operation": "encrypt", "keyring": "bin", "plaintext": "\\ud800"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422 and "plaintext" in response.json()["detail"]


# ----------------------------------------------------------------------------- keyring state errors


def test_keyring_errors(client: TestClient, settings: Settings) -> None:
    assert "keyring" in problem(client, 404, operation="encrypt", keyring="ghost", plaintext="x")
    assert "keyring" in problem(client, 404, operation="add_key", keyring="ghost")
    ok(client, operation="create_keyring", keyring="dup")
    assert "exists" in problem(client, 409, operation="create_keyring", keyring="dup")
    # A family of symmetric keys is not a keyring.
    KeyStore.open(settings.data_dir).generate(name="raw", bits=256)
    assert "not Fernet" in problem(client, 409, operation="encrypt", keyring="raw", plaintext="x")
    # No active key: no encryption, but decryption still works.
    token = ok(client, operation="encrypt", keyring="dup", plaintext="kept")["token"]
    primary = ok(client, operation="status", keyring="dup")["keyring"]["primary_key_id"]
    KeyStore.open(settings.data_dir).retire(primary)
    assert "no active key" in problem(client, 409, operation="encrypt", keyring="dup", plaintext="x")
    assert "no active key" in problem(client, 409, operation="rotate_token", keyring="dup", token=token)
    out = ok(client, operation="decrypt", keyring="dup", token=token)
    assert out["plaintext"] == "kept" and out["needs_rotation"] is True
    KeyStore.open(settings.data_dir).destroy(primary)
    assert "destroyed" in problem(client, 409, operation="decrypt", keyring="dup", token=token)
    ok(client, operation="add_key", keyring="dup")
    assert problem(client, 422, operation="decrypt", keyring="dup", token=token).startswith("token: invalid")


def test_drop_old_keys_keeps_the_newest(client: TestClient) -> None:
    ok(client, operation="create_keyring", keyring="r")
    tokens = []
    for _ in range(3):
        tokens.append(ok(client, operation="encrypt", keyring="r", plaintext="p")["token"])
        ok(client, operation="add_key", keyring="r")
    out = ok(client, operation="drop_old_keys", keyring="r", keep=2)
    assert [k["version"] for k in out["dropped"]] == [2, 1]
    assert [(k["version"], k["status"]) for k in out["keyring"]["keys"]] == [
        (4, "active"),
        (3, "retired"),
        (2, "destroyed"),
        (1, "destroyed"),
    ]
    assert ok(client, operation="decrypt", keyring="r", token=tokens[2])["plaintext"] == "p"
    for token in tokens[:2]:
        problem(client, 422, operation="decrypt", keyring="r", token=token)
    listing = ok(client, operation="list")
    assert listing["total"] == 1 and listing["keyrings"][0]["keyring"] == "r"


# ----------------------------------------------------------------------------- secrecy and persistence


def test_keys_never_in_responses_or_logs(client: TestClient, settings: Settings) -> None:
    texts = [client.post(ROUTE, json={"operation": "create_keyring", "keyring": "leak"}).text]
    token = client.post(ROUTE, json={"operation": "encrypt", "keyring": "leak", "plaintext": "p"}).json()
    texts.append(str(token))
    texts.append(client.post(ROUTE, json={"operation": "add_key", "keyring": "leak"}).text)
    for body in (
        {"operation": "decrypt", "keyring": "leak", "token": token["component_result"]["token"]},
        {"operation": "rotate_token", "keyring": "leak", "token": token["component_result"]["token"]},
        {"operation": "decrypt", "keyring": "leak", "token": tamper(token["component_result"]["token"])},
        {"operation": "status", "keyring": "leak"},
        {"operation": "list"},
        {"operation": "drop_old_keys", "keyring": "leak"},
    ):
        texts.append(client.post(ROUTE, json=body).text)
    store = KeyStore.open(settings.data_dir)
    secrets_ = []
    for record in store.versions("leak"):
        if record.status != "destroyed":
            material = store.material(record.key_id, use="decrypt")
            secrets_ += [fernet_key(material).decode(), material.hex(), base64.b64encode(material).decode()]
    assert len(secrets_) == 3  # the one key left after drop_old_keys
    secrets_.append((settings.data_dir / "keys" / "master.key").read_text().strip())
    log_text = (settings.logs_dir / "tier4.log").read_text()
    assert "leak" in log_text and "/run/fernet_key_manager" in log_text
    for text in [*texts, log_text]:
        assert not any(secret in text for secret in secrets_)


def test_master_key_file_is_0600_and_a_0644_one_is_refused(client: TestClient, settings: Settings) -> None:
    ok(client, operation="create_keyring", keyring="m")
    key_file = settings.data_dir / "keys" / "master.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    os.chmod(key_file, 0o644)
    detail = problem(client, 503, operation="encrypt", keyring="m", plaintext="x")
    assert "0644" in detail and "refusing" in detail
    os.chmod(key_file, 0o600)
    ok(client, operation="encrypt", keyring="m", plaintext="x")


def test_master_key_from_environment(
    client_for: Callable[..., TestClient], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, Fernet.generate_key().decode())
    client = client_for(fernet_key_manager)
    ok(client, operation="create_keyring", keyring="e")
    token = ok(client, operation="encrypt", keyring="e", plaintext="env")["token"]
    assert not (settings.data_dir / "keys" / "master.key").exists()
    monkeypatch.setenv(MASTER_KEY_ENV, Fernet.generate_key().decode())  # the wrong master key
    detail = problem(client, 503, operation="decrypt", keyring="e", token=token)
    assert MASTER_KEY_ENV in detail


def test_state_survives_restart(client_for: Callable[..., TestClient]) -> None:
    first = client_for(fernet_key_manager)
    ok(first, operation="create_keyring", keyring="durable")
    old = ok(first, operation="encrypt", keyring="durable", plaintext="before restart")["token"]
    ok(first, operation="add_key", keyring="durable")
    first.__exit__(None, None, None)
    second = client_for(fernet_key_manager)
    assert ok(second, operation="decrypt", keyring="durable", token=old)["plaintext"] == "before restart"
    assert ok(second, operation="status", keyring="durable")["keyring"]["keys"][0]["version"] == 2


def test_callable_without_http(tmp_path: Path) -> None:
    ctx = RunContext(component="fernet_key_manager", settings=make_settings(tmp_path), request_id=None)

    def run(**body: Any) -> FernetKeyManagerOutput:
        return fernet_key_manager(FernetKeyManagerInput.model_validate(body), ctx)

    name = run(operation="create_keyring").keyring.keyring  # type: ignore[union-attr]
    token = run(operation="encrypt", keyring=name, plaintext="direct").token
    assert run(operation="decrypt", keyring=name, token=token).plaintext == "direct"
    with pytest.raises(InvalidInput, match="token"):
        run(operation="decrypt", keyring=name, token=tamper(token))  # type: ignore[arg-type]
