"""context_cache_manager: LRU order, TTL on an injected clock, hit ratios, versions, restarts, threads, 422s."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.framework import RunContext
from services.framework.app import create_app
from services.tier2.context_cache_manager import (
    MAX_BATCH,
    RESOURCE,
    ContextCacheManagerInput,
    ContextCacheManagerOutput,
    ContextCaches,
    cache_key,
    content_hash,
    context_cache_manager,
)
from tests.conftest import AUTH, make_settings

ROUTE = "/run/context_cache_manager"
NS = "linguistic"


class Clock:
    """Wall-clock stand-in the tests move by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Service:
    """One service process: its resources (memory caches) and databases; ``restart`` keeps only the data dir."""

    def __init__(self, root: Path, clock: Clock) -> None:
        self.root, self.clock = root, clock
        self.settings = make_settings(root)
        self.restart()

    def restart(self) -> None:
        self.databases: dict[str, Any] = {}
        self.resources: dict[str, Any] = {RESOURCE: ContextCaches(clock=self.clock)}

    def __call__(self, **body: Any) -> ContextCacheManagerOutput:
        ctx = RunContext(
            component="context_cache_manager",
            settings=self.settings,
            request_id=None,
            databases=self.databases,
            resources=self.resources,
        )
        return context_cache_manager(ContextCacheManagerInput.model_validate(body), ctx)

    def put(self, text: str, value: Any, *, analyzer: str = "readability", version: str = "1.0.0", **kw: Any) -> str:
        out = self(
            operation="put", namespace=NS, analyzer=analyzer, analyzer_version=version, text=text, value=value, **kw
        )
        return out.keys[0]

    def get(self, text: str, *, analyzer: str = "readability", version: str = "1.0.0") -> Any:
        out = self(operation="get", namespace=NS, analyzer=analyzer, analyzer_version=version, text=text)
        return out.results[0]

    def stats(self, namespace: str = NS) -> Any:
        return self(operation="stats", namespace=namespace).stats

    def disk_rows(self) -> int:
        with sqlite3.connect(self.settings.data_dir / "context_cache_manager.sqlite") as conn:
            return conn.execute("SELECT COUNT(*) FROM context_entry WHERE namespace = ?", (NS,)).fetchone()[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def svc(tmp_path: Path, clock: Clock) -> Service:
    return Service(tmp_path, clock)


def test_key_is_sha256_of_nfc_text_plus_analyzer_and_version(svc: Service) -> None:
    composed, decomposed = "caf\u00e9 na\u00efve", "cafe\u0301 nai\u0308ve"
    expected = hashlib.sha256(unicodedata.normalize("NFC", decomposed).encode()).hexdigest()
    assert content_hash(composed) == content_hash(decomposed) == expected
    key = svc.put(composed, {"tokens": 2})
    assert key == cache_key("readability", "1.0.0", expected) == f"readability:1.0.0:{expected}"
    got = svc.get(decomposed)  # the other spelling of the same text
    assert (got.hit, got.value, got.key, got.source) == (True, {"tokens": 2}, key, "memory")


def test_lru_evicts_the_least_recently_used(svc: Service) -> None:
    svc(operation="configure", namespace=NS, max_items=3, default_ttl_s=None)
    for text in "abc":
        svc.put(text, text.upper())
    assert svc.get("a").hit  # order (least recent first): b, c, a
    svc.put("d", "D")  # evicts b
    assert [svc.get(t).hit for t in "abcd"] == [True, False, True, True]
    svc.put("e", "E")  # the reads above left the order a, c, d (b missed): evicts a
    assert [svc.get(t).hit for t in "acde"] == [False, True, True, True]
    stats = svc.stats()
    assert (stats.evictions_lru, stats.evictions_ttl, stats.size, stats.memory_items) == (2, 0, 3, 3)
    assert svc.disk_rows() == 3  # the disk holds what the cache holds
    # Updating an existing key is not a new entry: nothing is evicted.
    svc.put("e", "E2")
    assert svc.stats().evictions_lru == 2 and svc.get("e").value == "E2"


def test_ttl_expiry_on_the_injected_clock(svc: Service, clock: Clock) -> None:
    svc(operation="configure", namespace=NS, max_items=10, default_ttl_s=100)
    svc.put("short", 1, ttl_s=10)
    svc.put("default", 2)  # the namespace default: 100 s
    svc.put("forever", 3, ttl_s=None)
    clock.now += 9.5
    got = svc.get("short")
    assert got.hit and got.expires_in_s == pytest.approx(0.5)
    clock.now += 0.5  # exactly at the expiry time: gone
    assert not svc.get("short").hit
    assert svc.get("default").expires_in_s == pytest.approx(90.0)
    clock.now += 90.0
    assert not svc.get("default").hit
    assert svc.get("forever").hit and svc.get("forever").expires_in_s is None
    stats = svc.stats()
    assert (stats.evictions_ttl, stats.evictions_lru, stats.size) == (2, 0, 1)
    assert svc.disk_rows() == 1


def test_hit_ratio_arithmetic(svc: Service) -> None:
    assert svc.stats().hit_ratio is None  # no lookup yet
    svc.put("x", 1)
    svc.get("x"), svc.get("y"), svc.get("x")
    out = svc(operation="get_many", namespace=NS, analyzer="readability", analyzer_version="1.0.0", texts=["x", "z"])
    assert [r.hit for r in out.results] == [True, False]
    stats = svc.stats()
    assert (stats.hits, stats.misses) == (3, 2)
    assert stats.hit_ratio == pytest.approx(3 / 5)
    assert svc.stats(namespace="domain").hit_ratio is None  # namespaces count separately


def test_a_new_analyzer_version_never_reads_an_old_entry(svc: Service) -> None:
    svc.put("prompt", {"v": 1}, version="1.0.0")
    assert not svc.get("prompt", version="1.1.0").hit
    assert not svc.get("prompt", analyzer="sentiment", version="1.0.0").hit
    svc.put("prompt", {"v": 2}, version="1.1.0")
    assert svc.get("prompt", version="1.0.0").value == {"v": 1}
    assert svc.get("prompt", version="1.1.0").value == {"v": 2}
    out = svc(operation="invalidate", namespace=NS, analyzer="readability", analyzer_version="1.0.0")
    assert out.removed == 1
    assert not svc.get("prompt", version="1.0.0").hit and svc.get("prompt", version="1.1.0").hit


def test_invalidate_by_key_text_analyzer_and_namespace(svc: Service) -> None:
    k1 = svc.put("t1", 1)
    svc.put("t1", 1, analyzer="domain_classifier")
    svc.put("t2", 2)
    svc.put("t3", 3, analyzer="domain_classifier")
    assert svc(operation="invalidate", namespace=NS, key=k1).removed == 1
    assert not svc.get("t1").hit and svc.get("t1", analyzer="domain_classifier").hit
    svc.put("t1", 1)
    assert svc(operation="invalidate", namespace=NS, text="t1").removed == 2  # every analyzer's entry
    assert svc(operation="invalidate", namespace=NS, analyzer="domain_classifier").removed == 1
    assert svc.get("t2").hit
    assert svc(operation="invalidate", namespace=NS).removed == 1
    assert svc.stats().size == 0 and svc.disk_rows() == 0


def test_restart_keeps_the_warm_cache_and_honours_ttl(svc: Service, clock: Clock) -> None:
    svc(operation="configure", namespace=NS, max_items=3, default_ttl_s=None)
    svc.put("kept", {"a": [1, 2]})
    svc.put("expiring", "soon", ttl_s=30)
    svc.restart()  # a new process: empty memory, same data directory
    assert svc.stats().memory_items == 0 and svc.stats().size == 2 and svc.stats().max_items == 3
    got = svc.get("kept")
    assert (got.hit, got.source, got.value) == (True, "disk", {"a": [1, 2]})
    assert svc.get("kept").source == "memory"  # restored lazily, then served from memory
    clock.now += 30  # wall-clock expiry survives the restart
    assert not svc.get("expiring").hit
    stats = svc.stats()
    assert (stats.restored_from_disk, stats.evictions_ttl, stats.size) == (1, 1, 1)


def test_after_a_restart_entries_not_read_yet_are_evicted_first(svc: Service, clock: Clock) -> None:
    svc(operation="configure", namespace=NS, max_items=3, default_ttl_s=None)
    for text in "abc":
        svc.put(text, text)
        clock.now += 1
    svc.restart()
    assert svc.get("a").source == "disk"  # read since the restart: now more recent than b and c
    svc.put("d", "d")  # evicts b, the earliest stored of the entries not read since the restart
    assert [svc.get(t).hit for t in "abcd"] == [True, False, True, True]
    assert svc.stats().evictions_lru == 1 and svc.disk_rows() == 3


def test_configure_shrink_keeps_the_most_recently_used(svc: Service) -> None:
    svc(operation="configure", namespace=NS, max_items=5, default_ttl_s=None)
    for text in "abcde":
        svc.put(text, text)
    svc.get("a")  # order: b c d e a
    out = svc(operation="configure", namespace=NS, max_items=2, default_ttl_s=None)
    assert out.stats.size == 2 and out.stats.evictions_lru == 3
    assert [svc.get(t).hit for t in "abcde"] == [True, False, False, False, True]


def test_batches(svc: Service) -> None:
    svc(operation="configure", namespace=NS, max_items=3, default_ttl_s=None)
    items = [{"text": f"t{i}", "value": {"i": i}} for i in range(5)]
    out = svc(operation="put_many", namespace=NS, analyzer="readability", analyzer_version="1.0.0", items=items)
    assert out.keys == [cache_key("readability", "1.0.0", content_hash(f"t{i}")) for i in range(5)]
    # Five new entries into three places: the first two stored are the least recently used.
    got = svc(
        operation="get_many", namespace=NS, analyzer="readability", analyzer_version="1.0.0",
        texts=[f"t{i}" for i in range(5)],
    )  # fmt: skip
    assert [r.hit for r in got.results] == [False, False, True, True, True]
    assert [r.value for r in got.results][2:] == [{"i": 2}, {"i": 3}, {"i": 4}]
    assert svc.stats().evictions_lru == 2 and svc.disk_rows() == 3


def test_memory_estimate_grows_with_the_values(svc: Service) -> None:
    svc.put("small", "x")
    small = svc.stats().memory_bytes
    svc.put("big", "y" * 10_000)
    big = svc.stats().memory_bytes
    assert small > 0 and big - small > 10_000


def test_concurrent_puts_keep_every_entry_and_the_bound(svc: Service) -> None:
    svc(operation="configure", namespace=NS, max_items=100, default_ttl_s=None)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(40):
                svc.put(f"thread {t} text {i}", {"t": t, "i": i})
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    stats = svc.stats()
    assert (stats.size, stats.memory_items, stats.evictions_lru) == (100, 100, 140)
    assert svc.disk_rows() == 100
    # Below the bound nothing is lost: every thread's last 10 puts fit and are found.
    svc(operation="configure", namespace=NS, max_items=1000, default_ttl_s=None)
    threads = [threading.Thread(target=worker, args=(t,)) for t in range(6, 10)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert all(svc.get(f"thread {t} text {i}").value == {"t": t, "i": i} for t in range(6, 10) for i in range(40))


def test_http_round_trip_and_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    body = {"namespace": "domain", "analyzer": "domain_classifier", "analyzer_version": "2.0.0", "text": "SQL joins"}

    def client() -> TestClient:
        return TestClient(
            create_app("tier2", settings=settings, components=[context_cache_manager], announce=False), headers=AUTH
        )

    with client() as c:
        r = c.post(ROUTE, json={"operation": "put", **body, "value": {"domain": "databases", "p": 0.93}})
        assert r.status_code == 200, r.text
    with client() as c:
        r = c.post(ROUTE, json={"operation": "get", **body})
        result = r.json()["component_result"]["results"][0]
        assert (result["hit"], result["source"], result["value"]) == (True, "disk", {"domain": "databases", "p": 0.93})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"operation": "get", "namespace": NS, "analyzer": "a", "text": "x"}, "analyzer_version"),
        ({"operation": "get", "namespace": "a b", "analyzer": "a", "analyzer_version": "1", "text": "x"}, "namespace"),
        ({"operation": "get", "namespace": NS, "analyzer": "a:b", "analyzer_version": "1", "text": "x"}, "analyzer"),
        ({"operation": "put", "namespace": NS, "analyzer": "a", "analyzer_version": "1", "text": "x", "value": 1,
          "ttl_s": -1}, "ttl_s"),
        ({"operation": "put", "namespace": NS, "analyzer": "a", "analyzer_version": "1", "text": "x",
          "value": "v" * 300_000}, "value"),
        ({"operation": "put_many", "namespace": NS, "analyzer": "a", "analyzer_version": "1",
          "items": [{"text": "x", "value": 1}, {"text": "y", "value": ["v" * 300_000]}]}, "items[1].value"),
        ({"operation": "invalidate", "namespace": NS, "key": "nope"}, "key"),
        ({"operation": "invalidate", "namespace": NS, "text": "x", "analyzer": "a"}, "one of key, text or analyzer"),
        ({"operation": "invalidate", "namespace": NS, "analyzer_version": "1"}, "analyzer_version needs analyzer"),
        ({"operation": "configure", "namespace": NS, "max_items": 0}, "max_items"),
        ({"operation": "get_many", "namespace": NS, "analyzer": "a", "analyzer_version": "1", "texts": []}, "texts"),
    ],
)  # fmt: skip
def test_invalid_input_is_422_naming_the_field(
    client_for: Callable[..., TestClient], body: dict[str, Any], field: str
) -> None:
    r = client_for(context_cache_manager).post(ROUTE, json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["detail"]


def test_oversized_put_many_is_refused_by_count_or_by_body_size(tmp_path: Path, svc: Service) -> None:
    # Regression (slow schemathesis): a put_many of more than MAX_BATCH items whose body is also over
    # settings.max_body_bytes is refused with 413 before validation; one under the limit gets a 422 naming items.
    settings = make_settings(tmp_path / "http", max_body_bytes=64 * 1024)
    app = create_app("tier2", settings=settings, components=[context_cache_manager], announce=False)
    head = {"operation": "put_many", "namespace": NS, "analyzer": "a", "analyzer_version": "0"}
    with TestClient(app, headers=AUTH) as client:
        for text, status, detail in (("x" * 100, 413, "request body is over"), ("", 422, "put_many.items:")):
            items = [{"text": text, "ttl_s": 5e-324, "value": None}] * (MAX_BATCH + 1)
            r = client.post(ROUTE, json={**head, "items": items})
            assert r.status_code == status and r.json()["detail"].startswith(detail), r.text
        items = [{"text": str(i), "ttl_s": 5e-324, "value": None} for i in range(MAX_BATCH)]
        assert client.post(ROUTE, json={**head, "items": items}).status_code == 200
    # A subnormal TTL is valid and means "expired on arrival" (expiry is now + ttl_s, due at that instant).
    svc.put("fleeting", 1, ttl_s=5e-324)
    assert not svc.get("fleeting").hit
