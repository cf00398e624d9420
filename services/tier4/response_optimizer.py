"""Serialiser × codec comparison for one JSON payload: sizes, ratios, measured times, a recommendation.

Every candidate is a serialiser (``json``, ``orjson`` when installed, ``msgpack``) followed by a codec
(``none``, ``gzip``, ``brotli``, ``zstd``) at a level. Each is run ``repeat`` times: encode = serialise +
compress, decode = decompress + deserialise, timed with ``perf_counter`` and reported as medians; the
decoded value must equal the payload (``roundtrip_equal``) for the candidate to be recommended. A
serialiser that cannot represent the payload (e.g. an integer beyond 64 bits for orjson and msgpack)
is reported with its error and left out.

Objectives: ``size`` — fewest bytes (ties: faster); ``speed`` — least encode+decode time; ``balanced``
— least ``size/smallest + time/fastest`` (each candidate's cost relative to the best on that axis).
"""

from __future__ import annotations

import gzip
import importlib
import json
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import brotli
import msgpack
import zstandard
from pydantic import Field, JsonValue, model_validator

from mlmesh.errors import InvalidInput
from services.framework import ComponentInput, ComponentOutput, component

__all__ = [
    "CodecSpec",
    "ResponseOptimizerInput",
    "ResponseOptimizerOutput",
    "ResponseOption",
    "codec_functions",
    "response_optimizer",
    "serialiser_functions",
]

MAX_PAYLOAD_BYTES = 256 * 1024
# Bounds the time a request can take: brotli at quality 11 runs at about 1 MB/s.
MAX_WORK_BYTES = 32 * 1024 * 1024
LEVELS = {"none": (None, None), "gzip": (0, 9), "brotli": (0, 11), "zstd": (1, 22)}
DEFAULT_CODECS = [
    {"codec": "none"},
    *({"codec": "gzip", "level": level} for level in (1, 6, 9)),
    *({"codec": "brotli", "level": level} for level in (1, 5, 9)),
    *({"codec": "zstd", "level": level} for level in (1, 3, 9)),
]
Serialiser = Literal["json", "orjson", "msgpack"]


class CodecSpec(ComponentInput):
    """A codec and its level: gzip 0–9, brotli 0–11, zstd 1–22, none without a level."""

    codec: Literal["none", "gzip", "brotli", "zstd"]
    level: int | None = Field(None, ge=0, le=22, description="compression level (the codec's default when omitted)")

    @model_validator(mode="after")
    def _level_in_range(self) -> CodecSpec:
        low, high = LEVELS[self.codec]
        if self.codec == "none" and self.level is not None:
            raise ValueError("codec 'none' takes no level")
        if self.level is not None and low is not None and high is not None and not low <= self.level <= high:
            raise ValueError(f"{self.codec} level must be in [{low}, {high}]; got {self.level}")
        return self


class ResponseOptimizerInput(ComponentInput):
    """A JSON payload and what to compare on it."""

    payload: JsonValue = Field(description=f"the response body to optimise (at most {MAX_PAYLOAD_BYTES} bytes as JSON)")
    objective: Literal["size", "speed", "balanced"] = Field("balanced", description="what the recommendation favours")
    serialisers: list[Serialiser] = Field(
        default_factory=lambda: ["json", "orjson", "msgpack"], min_length=1, max_length=3
    )
    codecs: list[CodecSpec] = Field(
        default_factory=lambda: [CodecSpec.model_validate(c) for c in DEFAULT_CODECS], min_length=1, max_length=20
    )
    repeat: int = Field(5, ge=1, le=20, description="timed runs per candidate (medians are reported)")


class ResponseOption(ComponentOutput):
    serialiser: str
    codec: str
    level: int | None
    serialised_bytes: int | None = Field(None, description="bytes after serialising, before the codec")
    size_bytes: int | None = Field(None, description="bytes on the wire")
    ratio: float | None = Field(None, description="serialised_bytes / size_bytes (compression ratio)")
    size_vs_json: float | None = Field(None, description="size_bytes / plain compact json bytes")
    encode_ms: float | None = Field(None, description="median serialise + compress time")
    decode_ms: float | None = Field(None, description="median decompress + deserialise time")
    roundtrip_equal: bool
    error: str | None = Field(None, description="why the candidate could not run")


class ResponseOptimizerOutput(ComponentOutput):
    objective: str
    json_bytes: int = Field(description="compact json (separators ',' ':', UTF-8) size of the payload")
    options: list[ResponseOption]
    recommended: ResponseOption
    rationale: str
    unavailable: list[str] = Field(default_factory=list, description="requested serialisers that are not installed")


def _json_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def serialiser_functions(name: str) -> tuple[Callable[[Any], bytes], Callable[[bytes], Any]] | None:
    """``(dumps, loads)`` of a serialiser, or None when its library is not installed."""
    if name == "json":
        return _json_dumps, json.loads
    if name == "msgpack":
        return (lambda v: msgpack.packb(v, use_bin_type=True)), (lambda b: msgpack.unpackb(b, raw=False))
    try:
        orjson = importlib.import_module("orjson")
    except ImportError:
        return None
    return orjson.dumps, orjson.loads


def codec_functions(codec: str, level: int | None) -> tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]:
    """``(compress, decompress)`` of a codec at ``level`` (the library's default level when None)."""
    if codec == "none":
        return (lambda b: b), (lambda b: b)
    if codec == "gzip":
        lvl = 9 if level is None else level
        # mtime=0: the same bytes every run, so sizes are reproducible.
        return (lambda b: gzip.compress(b, compresslevel=lvl, mtime=0)), gzip.decompress
    if codec == "brotli":
        quality = 11 if level is None else level
        return (lambda b: brotli.compress(b, quality=quality)), brotli.decompress
    compressor = zstandard.ZstdCompressor(level=3 if level is None else level)
    decompressor = zstandard.ZstdDecompressor()
    return compressor.compress, decompressor.decompress


def _measure(payload: Any, serialiser: str, spec: CodecSpec, repeat: int, json_bytes: int) -> ResponseOption:
    dumps, loads = serialiser_functions(serialiser)  # type: ignore[misc]
    compress, decompress = codec_functions(spec.codec, spec.level)
    base = {"serialiser": serialiser, "codec": spec.codec, "level": spec.level}
    try:
        raw = dumps(payload)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. integers beyond 64 bits
        return ResponseOption(**base, roundtrip_equal=False, error=f"{type(exc).__name__}: {exc}")
    encode, decode = [], []
    wire = b""
    value: Any = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        wire = compress(dumps(payload))
        t1 = time.perf_counter()
        value = loads(decompress(wire))
        t2 = time.perf_counter()
        encode.append(t1 - t0)
        decode.append(t2 - t1)
    return ResponseOption(
        **base,
        serialised_bytes=len(raw),
        size_bytes=len(wire),
        ratio=len(raw) / len(wire) if wire else None,
        size_vs_json=len(wire) / json_bytes,
        encode_ms=statistics.median(encode) * 1e3,
        decode_ms=statistics.median(decode) * 1e3,
        roundtrip_equal=value == payload,
    )


def _recommend(options: list[ResponseOption], objective: str) -> tuple[ResponseOption, str]:
    usable = [o for o in options if o.roundtrip_equal and o.size_bytes is not None]
    if not usable:
        raise InvalidInput("serialisers", "no requested serialiser can represent this payload exactly")

    def total(o: ResponseOption) -> float:
        return float(o.encode_ms or 0.0) + float(o.decode_ms or 0.0)

    if objective == "size":
        best = min(usable, key=lambda o: (o.size_bytes, total(o)))
        return best, f"fewest bytes on the wire: {best.size_bytes}"
    if objective == "speed":
        best = min(usable, key=total)
        return best, f"least encode+decode time: {total(best):.4f} ms (median of the runs)"
    smallest = min(o.size_bytes or 0 for o in usable) or 1
    fastest = min(total(o) for o in usable) or 1e-9
    best = min(usable, key=lambda o: (o.size_bytes or 0) / smallest + max(total(o), 1e-9) / fastest)
    return best, (
        f"least size/smallest + time/fastest: {best.size_bytes} bytes ({best.size_bytes / smallest:.2f}× the smallest),"
        f" {total(best):.4f} ms ({max(total(best), 1e-9) / fastest:.2f}× the fastest)"
    )


@component(
    "ResponseOptimizer",
    tier="tier4",
    capabilities=["serialisation", "compression", "payload_optimisation"],
    # Options first: any JSON is a valid payload, so the contract's malformed-input probes target these.
    example={
        "repeat": 3,
        "objective": "balanced",
        "payload": {"items": [{"id": i, "name": f"item-{i}", "score": i * 0.5} for i in range(50)]},
    },
    deterministic=False,
)
def response_optimizer(request: ResponseOptimizerInput) -> ResponseOptimizerOutput:
    """Compare serialisers and codecs on a payload by size, ratio and measured time; recommend one.

    Sizes are exact byte counts of each library's output; times are medians of ``repeat`` runs;
    every candidate's decoded value is checked against the payload.
    """
    plain = _json_dumps(request.payload)
    if len(plain) > MAX_PAYLOAD_BYTES:
        raise InvalidInput("payload", f"payload is {len(plain)} bytes as JSON; at most {MAX_PAYLOAD_BYTES} allowed")
    candidates = len(set(request.serialisers)) * len(request.codecs)
    if len(plain) * request.repeat * candidates > MAX_WORK_BYTES:
        raise InvalidInput(
            "repeat",
            f"payload bytes × repeat × candidates is {len(plain) * request.repeat * candidates}; at most"
            f" {MAX_WORK_BYTES}: lower repeat or compare fewer codecs",
        )
    unavailable = [s for s in dict.fromkeys(request.serialisers) if serialiser_functions(s) is None]
    options = [
        _measure(request.payload, serialiser, spec, request.repeat, len(plain))
        for serialiser in dict.fromkeys(request.serialisers)
        if serialiser not in unavailable
        for spec in request.codecs
    ]
    if not options:
        raise InvalidInput("serialisers", f"none of the requested serialisers is installed: {unavailable}")
    best, why = _recommend(options, request.objective)
    return ResponseOptimizerOutput(
        objective=request.objective,
        json_bytes=len(plain),
        options=options,
        recommended=best,
        rationale=why,
        unavailable=unavailable,
    )
