"""ResponseOptimizer: sizes against each library's own output, round-trips, objective-driven recommendations."""

from __future__ import annotations

import gzip
import json

import brotli
import msgpack
import orjson
import pytest
import zstandard

from mlmesh.errors import InvalidInput
from services.tier4.response_optimizer import ResponseOptimizerInput, response_optimizer

PAYLOAD = {
    "users": [
        {"id": i, "name": f"user-{i}", "tags": ["a", "b", "ü"], "score": i / 7, "ok": i % 2 == 0} for i in range(40)
    ],
    "meta": {"page": 1, "next": None},
}


def run(**body: object):
    return response_optimizer(ResponseOptimizerInput.model_validate(body))


def _reference_size(serialiser: str, codec: str, level: int | None) -> int:
    raw = {
        "json": json.dumps(PAYLOAD, separators=(",", ":"), ensure_ascii=False).encode(),
        "orjson": orjson.dumps(PAYLOAD),
        "msgpack": msgpack.packb(PAYLOAD, use_bin_type=True),
    }[serialiser]
    if codec == "none":
        return len(raw)
    if codec == "gzip":
        return len(gzip.compress(raw, compresslevel=level, mtime=0))
    if codec == "brotli":
        return len(brotli.compress(raw, quality=level))
    return len(zstandard.ZstdCompressor(level=level).compress(raw))


def test_sizes_equal_library_output_and_roundtrips() -> None:
    out = run(payload=PAYLOAD, repeat=1)
    assert len(out.options) == 3 * 10
    assert out.json_bytes == _reference_size("json", "none", None)
    for option in out.options:
        assert option.size_bytes == _reference_size(option.serialiser, option.codec, option.level), option
        assert option.roundtrip_equal and option.error is None
        assert option.ratio == pytest.approx(option.serialised_bytes / option.size_bytes)
        assert option.encode_ms >= 0 and option.decode_ms >= 0


def test_size_objective_picks_the_smallest() -> None:
    repetitive = {"rows": [{"status": "active", "region": "eu-west-1", "value": 1}] * 800}
    out = run(
        payload=repetitive,
        objective="size",
        repeat=1,
        codecs=[{"codec": "none"}, {"codec": "gzip", "level": 1}, {"codec": "brotli", "level": 11}],
    )
    sizes = {(o.serialiser, o.codec): o.size_bytes for o in out.options}
    assert out.recommended.size_bytes == min(sizes.values())
    assert out.recommended.codec != "none"


def test_speed_objective_prefers_no_compression_over_brotli_11() -> None:
    # Brotli at quality 11 on ~100 KB costs milliseconds; an identity codec costs nothing.
    big = {"rows": [{"k": i, "text": f"value {i} " * 5} for i in range(1500)]}
    out = run(
        payload=big,
        objective="speed",
        serialisers=["json"],
        repeat=3,
        codecs=[{"codec": "none"}, {"codec": "brotli", "level": 11}],
    )
    assert out.recommended.codec == "none"
    totals = [o.encode_ms + o.decode_ms for o in out.options]
    assert out.recommended.encode_ms + out.recommended.decode_ms == min(totals)


def test_balanced_is_between_the_extremes() -> None:
    out = run(payload=PAYLOAD, objective="balanced", repeat=2)
    smallest = min(o.size_bytes for o in out.options)
    fastest = min(o.encode_ms + o.decode_ms for o in out.options)

    def score(o):
        return o.size_bytes / smallest + (o.encode_ms + o.decode_ms) / fastest

    assert score(out.recommended) == pytest.approx(min(score(o) for o in out.options))


def test_unrepresentable_payload_reports_error_and_falls_back() -> None:
    out = run(payload={"big": 2**70}, serialisers=["orjson", "msgpack", "json"], codecs=[{"codec": "none"}], repeat=1)
    errors = {o.serialiser: o.error for o in out.options}
    assert errors["orjson"] and errors["msgpack"] and errors["json"] is None
    assert out.recommended.serialiser == "json"
    with pytest.raises(InvalidInput):
        run(payload={"big": 2**70}, serialisers=["msgpack"], codecs=[{"codec": "none"}], repeat=1)


def test_bad_levels_and_oversized_payload(client_for) -> None:
    client = client_for(response_optimizer)
    for codec in ({"codec": "gzip", "level": 12}, {"codec": "none", "level": 1}, {"codec": "zstd", "level": 0}):
        r = client.post("/run/response_optimizer", json={"payload": {}, "codecs": [codec]})
        assert r.status_code == 422, codec
    r = client.post("/run/response_optimizer", json={"payload": "x" * (300 * 1024)})
    assert r.status_code == 422 and "payload" in r.json()["detail"]
    r = client.post("/run/response_optimizer", json={"payload": "y" * 200_000, "repeat": 20})
    assert r.status_code == 422 and "repeat" in r.json()["detail"]
    r = client.post("/run/response_optimizer", json={"payload": [1, 2, 3], "repeat": 1})
    assert r.status_code == 200 and r.json()["component_result"]["recommended"]["roundtrip_equal"]
