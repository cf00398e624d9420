"""MultiLevelCache on the real Redis (unique namespace, cleaned up) and on the embedded store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from mlmesh.settings import Settings
from services.framework import RunContext
from services.framework.app import create_app
from services.tier4.multi_level_cache import MultiLevelCacheInput, multi_level_cache, redis_key
from tests.conftest import AUTH, make_settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def _client(settings: Settings) -> TestClient:
    return TestClient(
        create_app("tier4", settings=settings, components=[multi_level_cache], announce=False), headers=AUTH
    )


def _run(client: TestClient, body: dict) -> dict:
    r = client.post("/run/multi_level_cache", json=body)
    assert r.status_code == 200, r.text
    return r.json()["component_result"]


@pytest.fixture
def raw() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def ns(raw: redis.Redis) -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex}"
    yield name
    names = list(raw.scan_iter(match=f"mlmesh:cache:{name}:*"))
    if names:
        raw.delete(*names)


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[TestClient]:
    with _client(make_settings(tmp_path, redis_url=REDIS_URL)) as client:
        yield client


def _levels(stats: dict) -> dict[str, dict]:
    return {level["level"]: level for level in stats["levels"]}


def test_set_get_and_l2_hit_after_l1_eviction(cache: TestClient, raw: redis.Redis, ns: str) -> None:
    _run(cache, {"operation": "configure", "namespace": ns, "l1_max_items": 2, "l1_max_ttl_s": 60})
    for i, key in enumerate("abc"):
        _run(cache, {"operation": "set", "namespace": ns, "key": key, "value": {"i": i, "k": [key]}})
    # The real Redis holds each value as JSON under the namespaced key, without expiry.
    assert raw.get(redis_key(ns, "a")) == b'{"i":0,"k":["a"]}'
    assert raw.pttl(redis_key(ns, "a")) == -1
    # L1 holds 2: "a" (least recently used) was evicted, so it comes from L2 and is promoted.
    got = _run(cache, {"operation": "get", "namespace": ns, "key": "a"})
    assert (got["hit"], got["level"], got["value"]) == (True, "l2", {"i": 0, "k": ["a"]})
    # Promoting "a" evicted "b" (the LRU now); "a" and "c" are in L1.
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "a"})["level"] == "l1"
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "c"})["level"] == "l1"
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "b"})["level"] == "l2"
    missing = _run(cache, {"operation": "get", "namespace": ns, "key": "zz"})
    assert (missing["hit"], missing["level"], missing["value"]) == (False, None, None)

    stats = _levels(_run(cache, {"operation": "stats", "namespace": ns}))
    # Hand count: gets a(L2) a(L1) c(L1) b(L2) zz(miss); evictions: a on set c, b on promote a, c on promote b.
    assert (stats["l1"]["hits"], stats["l1"]["misses"]) == (2, 3)
    assert stats["l1"]["hit_ratio"] == pytest.approx(2 / 5)
    assert (stats["l2"]["hits"], stats["l2"]["misses"]) == (2, 1)
    assert stats["l2"]["hit_ratio"] == pytest.approx(2 / 3)
    assert stats["l1"]["evictions"] == 3
    assert stats["l1"]["size"] == 2 and stats["l1"]["max_size"] == 2
    assert stats["l2"]["size"] == 3 and stats["l2"]["backend"] == "redis"
    assert stats["l2"]["evictions"] is None


def test_ttl_expires_in_both_levels(cache: TestClient, raw: redis.Redis, ns: str) -> None:
    _run(cache, {"operation": "set", "namespace": ns, "key": "k", "value": 1, "ttl_s": 0.3})
    assert 0 < raw.pttl(redis_key(ns, "k")) <= 300
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "k"})["level"] == "l1"
    time.sleep(0.4)
    assert raw.exists(redis_key(ns, "k")) == 0
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "k"})["hit"] is False
    stats = _levels(_run(cache, {"operation": "stats", "namespace": ns}))
    assert stats["l1"]["expirations"] == 1 and stats["l1"]["size"] == 0 and stats["l2"]["size"] == 0


def test_l1_ttl_cap_then_l2_serves_with_remaining_ttl(cache: TestClient, ns: str) -> None:
    _run(cache, {"operation": "configure", "namespace": ns, "l1_max_items": 10, "l1_max_ttl_s": 0.2})
    _run(cache, {"operation": "set", "namespace": ns, "key": "k", "value": "v", "ttl_s": 60})
    time.sleep(0.3)
    got = _run(cache, {"operation": "get", "namespace": ns, "key": "k"})
    assert got["level"] == "l2" and got["value"] == "v"
    assert 55 < got["ttl_remaining_s"] <= 60


def test_invalidation_of_both_levels(cache: TestClient, raw: redis.Redis, ns: str) -> None:
    for key in ("user:1", "user:2", "user:*", "order:1"):
        _run(cache, {"operation": "set", "namespace": ns, "key": key, "value": key})
    one = _run(cache, {"operation": "invalidate", "namespace": ns, "key": "user:1"})
    assert (one["removed_l1"], one["removed_l2"]) == (1, 1)
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "user:1"})["hit"] is False
    # A glob character in the prefix is literal: "user:*" removes only that key.
    star = _run(cache, {"operation": "invalidate", "namespace": ns, "prefix": "user:*"})
    assert (star["removed_l1"], star["removed_l2"]) == (1, 1)
    assert raw.exists(redis_key(ns, "user:2")) == 1
    pre = _run(cache, {"operation": "invalidate", "namespace": ns, "prefix": "user:"})
    assert (pre["removed_l1"], pre["removed_l2"]) == (1, 1)
    assert raw.exists(redis_key(ns, "order:1")) == 1
    everything = _run(cache, {"operation": "invalidate", "namespace": ns})
    assert (everything["removed_l1"], everything["removed_l2"]) == (1, 1)
    assert list(raw.scan_iter(match=f"mlmesh:cache:{ns}:*")) == []
    assert _run(cache, {"operation": "get", "namespace": ns, "key": "order:1"})["hit"] is False


def test_a_second_service_reads_the_first_ones_value_from_l2(tmp_path: Path, ns: str) -> None:
    # Two services (two L1s) over one Redis: a value set by one is an L2 hit for the other.
    with (
        _client(make_settings(tmp_path / "a", redis_url=REDIS_URL)) as a,
        _client(make_settings(tmp_path / "b", redis_url=REDIS_URL)) as b,
    ):
        _run(a, {"operation": "set", "namespace": ns, "key": "shared", "value": [1, 2]})
        assert _run(b, {"operation": "get", "namespace": ns, "key": "shared"})["level"] == "l2"


def test_embedded_store_serves_l2_and_survives_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    with _client(settings) as first:
        _run(first, {"operation": "configure", "namespace": "emb", "l1_max_items": 1, "l1_max_ttl_s": None})
        _run(first, {"operation": "set", "namespace": "emb", "key": "x", "value": {"a": 1}})
        _run(first, {"operation": "set", "namespace": "emb", "key": "y", "value": [True, None]})
        _run(first, {"operation": "set", "namespace": "emb", "key": "short", "value": 0, "ttl_s": 0.2})
        got = _run(first, {"operation": "get", "namespace": "emb", "key": "x"})
        assert (got["level"], got["value"], got["l2_backend"]) == ("l2", {"a": 1}, "embedded")
    time.sleep(0.25)
    with _client(settings) as second:  # a new app over the same data directory: L1 empty, L2 kept
        got = _run(second, {"operation": "get", "namespace": "emb", "key": "y"})
        assert (got["level"], got["value"]) == ("l2", [True, None])
        assert _run(second, {"operation": "get", "namespace": "emb", "key": "short"})["hit"] is False
        stats = _run(second, {"operation": "stats", "namespace": "emb"})
        assert stats["l1_max_items"] == 1  # the configuration survived too
        levels = _levels(stats)
        assert levels["l2"]["size"] == 2 and levels["l2"]["backend"] == "embedded"
        removed = _run(second, {"operation": "invalidate", "namespace": "emb", "prefix": "x"})
        assert removed["removed_l2"] == 1
        assert _run(second, {"operation": "get", "namespace": "emb", "key": "x"})["hit"] is False


def test_redis_unreachable_is_503_without_fallback(tmp_path: Path) -> None:
    with _client(make_settings(tmp_path, redis_url="redis://127.0.0.1:1/0")) as client:
        for body in (
            {"operation": "set", "namespace": "n", "key": "k", "value": 1},
            {"operation": "get", "namespace": "n", "key": "k"},
            {"operation": "invalidate", "namespace": "n"},
            {"operation": "stats", "namespace": "n"},
        ):
            r = client.post("/run/multi_level_cache", json=body)
            assert r.status_code == 503, r.text
            assert "Redis unreachable" in r.json()["detail"]
        # configure touches only the embedded store's settings table.
        assert (
            client.post("/run/multi_level_cache", json={"operation": "configure", "namespace": "n"}).status_code == 200
        )


def test_invalid_inputs_are_422(cache: TestClient) -> None:
    bad = [
        {"operation": "set", "namespace": "a:b", "key": "k", "value": 1},
        {"operation": "set", "namespace": "n", "key": "", "value": 1},
        {"operation": "set", "namespace": "n", "key": "k", "value": 1, "ttl_s": 0},
        {"operation": "invalidate", "namespace": "n", "key": "k", "prefix": "k"},
        {"operation": "configure", "namespace": "n", "l1_max_items": 0},
        {"operation": "set", "namespace": "n", "key": "k", "value": "x" * (1 << 20)},
    ]
    for body in bad:
        r = cache.post("/run/multi_level_cache", json=body)
        assert r.status_code == 422, (body, r.text)


def test_plain_call_without_redis(settings: Settings) -> None:
    ctx = RunContext("multi_level_cache", settings, None)
    multi_level_cache(
        MultiLevelCacheInput.model_validate({"operation": "set", "namespace": "p", "key": "k", "value": 2}), ctx
    )
    out = multi_level_cache(
        MultiLevelCacheInput.model_validate({"operation": "get", "namespace": "p", "key": "k"}), ctx
    )
    assert (out.hit, out.level, out.value) == (True, "l1", 2)
    assert "multi_level_cache:l1" in ctx.resources
