"""Training data for rule-effectiveness models: load, validate, mix synthetic rows, split by session, write.

Sources (``source``):

* ``"store"`` — rule applications from the domain store (:func:`services.domain.store_for`: PostgreSQL when
  ``MLMESH_DATABASE_URL`` is set, else ``data/domain.sqlite``), filtered by ``since`` / ``until`` (unix seconds,
  ``[since, until)``), ``rule_ids`` and ``domains``;
* ``{"path": ...}`` — a CSV (header row) or JSON (list of objects) file under ``data/``, e.g.
  ``sample/applications.csv`` written by ``scripts/sample_data.py``; the same filters apply;
* ``{"records": [...]}`` — up to 10,000 records inline.

A record needs ``session_id``, ``rule_id``, ``before_quality``, ``after_quality`` and ``improvement_score``;
``id``, ``domain``, ``latency_ms``, ``success``, ``applied_at`` and the text features are optional. Features
are taken from the record's own columns, else from its ``context`` object, else measured on ``prompt_text``
(:func:`services.text.features.text_features`); ``step`` defaults to the record's position within its
session (by ``applied_at``). A record that still lacks something, or holds a value out of range (qualities
outside [0, 1], negative latency, a non-finite number, a duplicate id), is invalid: it is dropped and counted
with its reason, or — with ``strict`` — the request fails with 422.

Synthetic rows (``synthetic``: a file under ``data/``, e.g. a copy of production_synthetic_data_generator's
``synthetic.csv``) are validated the same way (``session_id`` is not needed) and only ever added to the
training split, flagged ``synthetic = 1``: ``n_syn = min(available, ⌊share · n_train / (1 − share)⌋)`` rows
drawn without replacement, so synthetic rows are at most ``share`` (≤ 0.5) of the training split.

Split: by session, like scikit-learn's ``GroupShuffleSplit``: the sorted distinct session ids are permuted with
``np.random.default_rng(seed)``; the first ``round(test_fraction · n_sessions)`` go to test, the next
``round(validation_fraction · n_sessions)`` to validation (each at least one session when its fraction is
positive), the rest to train. No session is in two splits.

Features (no label leakage — nothing measured after the rule was applied is a feature):

* ``before_quality`` — the prompt's quality before the rule;
* ``prompt_length``, ``word_count``, ``has_headers``, ``has_list``, ``has_code``, ``has_xml``, ``vagueness`` —
  the prompt's text features;
* ``step`` — the rule's position in its session (1 = first);
* ``rule_<id>`` — one-hot rule, one column per rule in the loaded data (sorted);
* ``domain_<name>`` — one-hot domain, one column per domain in the loaded data (sorted; ``unknown`` if absent).

``after_quality``, ``improvement_score``, ``success``, ``latency_ms`` and ``applied_at`` are never features.
The label is ``improvement_score`` (default), ``after_quality`` or ``success`` (0/1).

Files: ``data/datasets/<first 16 hex of the content SHA-256>/{train,validation,test}.csv`` plus
``manifest.json``; the columns are ``id, session_id, rule_id, domain, group, synthetic``, the features and the
label. ``group`` is a numeric session code (synthetic rows: −1 − row number) so a model trainer can keep
sessions together (ml_model_service's ``groups: {path, column: "group"}``). Same input and data → same hash and
files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from mlmesh.errors import BadRequest, InvalidInput
from services.domain import store_for
from services.framework import ComponentInput, ComponentOutput, FiniteFloat, RunContext, Seed, component
from services.text.features import TEXT_FEATURES, text_features

__all__ = [
    "FEATURES",
    "LEAKY_COLUMNS",
    "FileSource",
    "InlineRecord",
    "RecordsSource",
    "SyntheticSource",
    "TrainingDataLoaderInput",
    "TrainingDataLoaderOutput",
    "training_data_loader",
]

MAX_INLINE_RECORDS = 10_000
MAX_ROWS = 500_000
MAX_FILE_BYTES = 256 * 2**20
MAX_SYNTHETIC_SHARE = 0.5
MAX_EXAMPLES = 20
MAX_ONE_HOT = 200
DATASETS_DIR = "datasets"
FEATURES = ("before_quality", *TEXT_FEATURES, "step")
LABELS = ("improvement_score", "after_quality", "success")
# Measured after the rule ran (or identifiers): never features.
LEAKY_COLUMNS = ("after_quality", "improvement_score", "success", "latency_ms", "applied_at")
ID_COLUMNS = ("id", "session_id", "rule_id", "domain", "group", "synthetic")
SPLITS = ("train", "validation", "test")
_TRUE = frozenset({"1", "1.0", "true", "yes", "t", "y"})
_FALSE = frozenset({"0", "0.0", "false", "no", "f", "n"})

Name = Annotated[str, Field(min_length=1, max_length=200)]
DataPath = Annotated[str, Field(min_length=1, max_length=1024, description="path relative to data/ (.csv or .json)")]


class FileSource(ComponentInput):
    """Records in a CSV (header row) or JSON (list of objects) file under data/."""

    path: DataPath


Number = FiniteFloat
Text = Annotated[str, Field(max_length=100_000)]
ContextValue = FiniteFloat | int | bool | Annotated[str, Field(max_length=10_000)] | None


class InlineRecord(ComponentInput):
    """One rule application; every field is optional here so that a missing one is reported per record."""

    model_config = ComponentInput.model_config | {"strict": False}

    id: Name | None = None
    application_id: Name | None = None
    session_id: Name | None = None
    rule_id: Name | None = None
    domain: Name | None = None
    prompt_id: Name | None = None
    prompt_text: Text | None = None
    before_quality: Number | None = None
    after_quality: Number | None = None
    improvement_score: Number | None = None
    latency_ms: Number | None = None
    success: bool | None = None
    applied_at: Number | None = None
    prompt_length: Number | None = None
    word_count: Number | None = None
    has_headers: Number | None = None
    has_list: Number | None = None
    has_code: Number | None = None
    has_xml: Number | None = None
    vagueness: Number | None = None
    step: Number | None = None
    parameters: dict[Name, ContextValue | list[ContextValue]] | None = Field(None, max_length=100)
    context: dict[Name, ContextValue] | None = Field(None, max_length=100)


class RecordsSource(ComponentInput):
    """Records inline, shaped like the store's applications (at least session_id, rule_id, before_quality,
    after_quality, improvement_score)."""

    records: list[InlineRecord] = Field(min_length=1, max_length=MAX_INLINE_RECORDS)


class SyntheticSource(ComponentInput):
    """Synthetic rows to mix into the training split only."""

    path: DataPath
    share: float = Field(
        0.2, ge=0.0, le=MAX_SYNTHETIC_SHARE, description="at most this share of the training split is synthetic"
    )


class TrainingDataLoaderInput(ComponentInput):
    """Where the records come from, how to filter, validate, mix and split them."""

    source: Literal["store"] | FileSource | RecordsSource = Field(
        description='"store" (the domain store), {"path": ...} under data/, or {"records": [...]}'
    )
    since: FiniteFloat | None = Field(None, ge=0, le=1e11, description="unix seconds, inclusive")
    until: FiniteFloat | None = Field(None, ge=0, le=1e11, description="unix seconds, exclusive")
    rule_ids: list[Name] | None = Field(None, min_length=1, max_length=200, description="only these rules")
    domains: list[Name] | None = Field(None, min_length=1, max_length=200, description="only these domains")
    label: Literal["improvement_score", "after_quality", "success"] = "improvement_score"
    strict: bool = Field(False, description="fail with 422 on any invalid record instead of dropping it")
    synthetic: SyntheticSource | None = None
    validation_fraction: float = Field(0.15, ge=0.0, le=0.45, description="share of sessions for validation")
    test_fraction: float = Field(0.15, ge=0.0, le=0.45, description="share of sessions for test")
    seed: Seed = 0

    @model_validator(mode="after")
    def _check(self) -> TrainingDataLoaderInput:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        if self.validation_fraction + self.test_fraction > 0.6:
            raise ValueError("validation_fraction + test_fraction must be at most 0.6 (train keeps the rest)")
        return self


class InvalidRecords(ComponentOutput):
    count: int
    reasons: dict[str, int] = Field(description="reason → number of records")
    examples: list[str] = Field(description=f"the first {MAX_EXAMPLES}: 'row i: reason'")


class Counts(ComponentOutput):
    loaded: int = Field(description="records read after the filters")
    valid: int
    invalid: int
    synthetic_available: int
    synthetic_invalid: int
    synthetic_used: int
    train: int = Field(description="rows, synthetic included")
    validation: int
    test: int
    train_sessions: int
    validation_sessions: int
    test_sessions: int
    shared_sessions: int = Field(description="sessions in more than one split (0 by construction)")


class ColumnInfo(ComponentOutput):
    name: str
    dtype: Literal["string", "int", "float"]
    role: Literal["id", "group", "flag", "feature", "label"]


class LabelMean(ComponentOutput):
    split: str
    n: int
    mean: float | None = Field(description="None for an empty split")


class TrainingDataLoaderOutput(ComponentOutput):
    source: str
    counts: Counts
    invalid: InvalidRecords
    synthetic_invalid: InvalidRecords
    synthetic_share: float = Field(description="synthetic rows / training rows")
    columns: list[ColumnInfo] = Field(description="the split files' schema: every column with its dtype and role")
    files: dict[str, str] = Field(description="split → CSV path relative to data/")
    manifest: str = Field(description="manifest.json path relative to data/")
    feature_columns: list[str]
    label_column: str
    excluded_columns: list[str] = Field(description="outcome columns never used as features")
    content_hash: str = Field(description="SHA-256 of the three split files")
    label_means: list[LabelMean]
    seed: int


# --------------------------------------------------------------------------- reading


def _read_file(path: Path, field: str) -> list[dict[str, Any]]:
    try:
        if not path.is_file():
            raise BadRequest(f"{field}: no such file in the data directory")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise InvalidInput(field, f"file is larger than {MAX_FILE_BYTES // 2**20} MiB")
        suffix = path.suffix.lower()
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames:
                    raise InvalidInput(field, f"{path.name} is empty; need a header row and data rows")
                rows = []
                for row in reader:
                    if None in row:
                        raise InvalidInput(field, f"line {reader.line_num} has more fields than the header")
                    rows.append(row)
                    if len(rows) > MAX_ROWS:
                        raise InvalidInput(field, f"at most {MAX_ROWS:,} records; narrow the file")
                return rows
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise InvalidInput(field, f"{path.name} must hold a JSON list of objects")
            if len(data) > MAX_ROWS:
                raise InvalidInput(field, f"at most {MAX_ROWS:,} records; narrow the file")
            return data
        raise InvalidInput(field, f"unsupported file type {suffix or '(none)'!r}; use .csv or .json")
    except UnicodeDecodeError as exc:
        raise InvalidInput(field, "the file is not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise InvalidInput(field, f"not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    except OSError as exc:  # strerror carries no absolute path
        raise BadRequest(f"{field}: could not read the file: {exc.strerror}") from exc


def _load(req: TrainingDataLoaderInput, ctx: RunContext) -> tuple[str, list[dict[str, Any]]]:
    if req.source == "store":
        store = store_for(ctx)
        rows: list[dict[str, Any]] = []
        for rule in req.rule_ids or [None]:
            rows += store.applications(since=req.since, until=req.until, rule_id=rule, limit=MAX_ROWS + 1)
            if len(rows) > MAX_ROWS:
                raise InvalidInput("since", f"more than {MAX_ROWS:,} records match; narrow since/until or rule_ids")
        return "store", _filter(rows, req, time_filtered=True)
    if isinstance(req.source, FileSource):
        rows = _read_file(ctx.data_path(req.source.path, field="source.path"), "source.path")
        return req.source.path, _filter(rows, req, time_filtered=False)
    inline = [r.model_dump(exclude_none=True) for r in req.source.records]
    return "records", _filter(inline, req, time_filtered=False)


def _filter(rows: list[dict[str, Any]], req: TrainingDataLoaderInput, *, time_filtered: bool) -> list[dict[str, Any]]:
    rules = set(req.rule_ids) if req.rule_ids else None
    domains = set(req.domains) if req.domains else None
    check_time = not time_filtered and (req.since is not None or req.until is not None)
    out = []
    for row in rows:
        if rules is not None and str(row.get("rule_id")) not in rules:
            continue
        if domains is not None and str(_domain(row)) not in domains:
            continue
        if check_time:
            t = _number(row.get("applied_at"))
            if t is None or (req.since is not None and t < req.since) or (req.until is not None and t >= req.until):
                continue
        out.append(row)
    return out


# --------------------------------------------------------------------------- validation


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:  # an integer too large for a float
            return None
        return number if math.isfinite(number) else None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _flag(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return float(value.strip().lower() in _TRUE)
    return None


def _context(row: dict[str, Any]) -> dict[str, Any]:
    ctx = row.get("context")
    if isinstance(ctx, str) and ctx.startswith("{"):
        try:
            ctx = json.loads(ctx)
        except json.JSONDecodeError:
            return {}
    return ctx if isinstance(ctx, dict) else {}


def _domain(row: dict[str, Any]) -> Any:
    value = row.get("domain")
    if value in (None, ""):
        value = _context(row).get("domain")
    return value


@dataclass
class Record:
    id: str
    session_id: str
    rule_id: str
    domain: str
    applied_at: float
    values: dict[str, float]  # features (step may be filled later) and label candidates


_BOUNDED = {"before_quality": (0.0, 1.0), "after_quality": (0.0, 1.0), "vagueness": (0.0, 1.0)}


def _validate(row: dict[str, Any], index: int, *, synthetic: bool) -> Record | str:
    """A clean record, or the reason the row is invalid."""
    if not isinstance(row, dict):
        return "not an object"
    ctx = _context(row)
    session = row.get("session_id")
    if not synthetic and (session is None or str(session).strip() == ""):
        return "missing session_id"
    rule = row.get("rule_id")
    if rule is None or str(rule).strip() == "":
        return "missing rule_id"
    values: dict[str, float] = {}
    measured: dict[str, float] | None = None
    for name in (*FEATURES, "after_quality", "improvement_score", "latency_ms"):
        raw = row.get(name)
        if raw in (None, ""):
            raw = ctx.get(name)
        if raw in (None, "") and name in TEXT_FEATURES and isinstance(row.get("prompt_text"), str):
            measured = measured or text_features(row["prompt_text"])
            raw = measured[name]
        if raw in (None, ""):
            if name in ("step", "latency_ms"):
                continue  # step: filled from the session order; latency: optional
            return f"missing {name}"
        number = _flag(raw) if name.startswith("has_") else _number(raw)
        if number is None:
            return f"{name} is not a finite number" if not name.startswith("has_") else f"{name} is not 0/1"
        low, high = _BOUNDED.get(name, (None, None))
        if low is not None and high is not None and not low <= number <= high:
            return f"{name} outside [0, 1]"
        if name in ("latency_ms", "prompt_length", "word_count") and number < 0:
            return f"{name} is negative"
        values[name] = number
    success = row.get("success")
    if success in (None, ""):
        values["success"] = float(values["improvement_score"] > 0)
    else:
        flag = _flag(success)
        if flag is None:
            return "success is not a boolean"
        values["success"] = flag
    applied = row.get("applied_at")
    applied_at = 0.0
    if applied not in (None, ""):
        number = _number(applied)
        if number is None:
            return "applied_at is not a finite number"
        applied_at = number
    domain = _domain(row)
    rid = row.get("id", row.get("application_id"))
    return Record(
        id=str(rid) if rid not in (None, "") else f"row{index}",
        session_id="" if synthetic else str(session),
        rule_id=str(rule),
        domain=str(domain) if domain not in (None, "") else "unknown",
        applied_at=applied_at,
        values=values,
    )


def _clean(rows: list[dict[str, Any]], *, synthetic: bool) -> tuple[list[Record], InvalidRecords]:
    records: list[Record] = []
    reasons: Counter[str] = Counter()
    examples: list[str] = []
    seen: set[str] = set()
    for i, row in enumerate(rows):
        result = _validate(row, i, synthetic=synthetic)
        if isinstance(result, Record) and not synthetic:
            if result.id in seen:
                result = "duplicate id"
            else:
                seen.add(result.id)
        if isinstance(result, str):
            reasons[result] += 1
            if len(examples) < MAX_EXAMPLES:
                examples.append(f"row {i}: {result}")
        else:
            records.append(result)
    invalid = InvalidRecords(count=sum(reasons.values()), reasons=dict(sorted(reasons.items())), examples=examples)
    return records, invalid


def _fill_steps(records: list[Record]) -> None:
    """A record without ``step`` gets its 1-based position in its session (by applied_at, then id)."""
    by_session: dict[str, list[Record]] = {}
    for record in records:
        by_session.setdefault(record.session_id, []).append(record)
    for members in by_session.values():
        members.sort(key=lambda r: (r.applied_at, r.id))
        for position, record in enumerate(members, start=1):
            record.values.setdefault("step", float(position))


# --------------------------------------------------------------------------- splitting and writing


def split_sessions(
    sessions: list[str], validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, set[str]]:
    """Assign each distinct session to train, validation or test (see the module docstring)."""
    unique = sorted(set(sessions))
    n = len(unique)
    order = np.random.default_rng(seed).permutation(n)

    def take(fraction: float) -> int:
        return 0 if fraction == 0 else max(1, round(fraction * n))

    n_test, n_val = take(test_fraction), take(validation_fraction)
    if n - n_test - n_val < 1:
        raise InvalidInput(
            "source",
            f"{n} session(s) cannot fill train, validation and test; need at least "
            f"{(test_fraction > 0) + (validation_fraction > 0) + 1} sessions or smaller fractions",
        )
    shuffled = [unique[i] for i in order]
    return {
        "test": set(shuffled[:n_test]),
        "validation": set(shuffled[n_test : n_test + n_val]),
        "train": set(shuffled[n_test + n_val :]),
    }


def _fmt(value: float) -> str:
    return repr(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _csv(
    rows: list[tuple[Record, int, int]], feature_columns: list[str], label: str, rules: list[str], domains: list[str]
) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*ID_COLUMNS, *feature_columns, label])
    for record, group, synthetic in rows:
        base = [_fmt(record.values[name]) for name in FEATURES]
        one_hot = [str(int(record.rule_id == r)) for r in rules] + [str(int(record.domain == d)) for d in domains]
        writer.writerow(
            [
                record.id,
                record.session_id,
                record.rule_id,
                record.domain,
                str(group),
                str(synthetic),
                *base,
                *one_hot,
                _fmt(record.values[label]),
            ]
        )
    return buf.getvalue()


def _write_atomic(path: Path, content: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def _one_hot_name(prefix: str, value: str) -> str:
    # Keep the CSV header parseable by simple readers: no commas, quotes or whitespace in names.
    cleaned = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in value)
    return f"{prefix}_{cleaned}"


# --------------------------------------------------------------------------- the component


_EXAMPLE_RECORDS = [
    {
        "id": f"a{i}",
        "session_id": f"s{i // 2}",
        "rule_id": rule,
        "domain": domain,
        "before_quality": before,
        "after_quality": after,
        "improvement_score": round(after - before, 4),
        "latency_ms": 10.0 + i,
        "applied_at": 1_735_689_600.0 + 60 * i,
        "prompt_text": text,
    }
    for i, (rule, domain, before, after, text) in enumerate(
        [
            ("clarity", "coding", 0.40, 0.52, "fix my code"),
            ("chain_of_thought", "coding", 0.52, 0.66, "fix my code"),
            ("few_shot", "classification", 0.45, 0.61, "Classify reviews as positive or negative."),
            ("clarity", "classification", 0.61, 0.66, "Classify reviews as positive or negative."),
            ("role", "customer_support", 0.50, 0.58, "# Task\nReply to a refund request.\n- be polite"),
            ("clarity", "customer_support", 0.58, 0.60, "# Task\nReply to a refund request.\n- be polite"),
            ("chain_of_thought", "analysis", 0.35, 0.55, "why did sales drop?"),
            ("specificity", "analysis", 0.55, 0.63, "why did sales drop?"),
            ("few_shot", "classification", 0.30, 0.49, "label these emails"),
            ("clarity", "classification", 0.49, 0.57, "label these emails"),
            ("xml_structure", "coding", 0.62, 0.66, "<task>Write a parser</task>"),
            ("clarity", "coding", 0.66, 0.68, "<task>Write a parser</task>"),
        ]
    )
]


@component(
    "TrainingDataLoader",
    tier="tier1",
    capabilities=["training_data", "data_validation", "dataset_splitting"],
    example={"source": {"records": _EXAMPLE_RECORDS}, "validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    examples=[
        {"source": "store", "since": 1_735_689_600.0, "rule_ids": ["clarity", "few_shot"], "seed": 7},
        {"source": {"path": "sample/applications.csv"}, "synthetic": {"path": "sample/synthetic.csv", "share": 0.3}},
    ],
    errors={
        400: "a path outside data/, or a file that does not exist or cannot be read",
        503: "the domain store's PostgreSQL is configured but unreachable",
    },
)
def training_data_loader(request: TrainingDataLoaderInput, ctx: RunContext) -> TrainingDataLoaderOutput:
    """Load rule-application records, validate them, split by session and write content-hashed CSV splits.

    Sources: the domain store, a CSV/JSON file under data/, or inline records. Synthetic rows go to the
    training split only (flagged), at most ``synthetic.share`` of it. No session is in two splits, and no
    outcome column is a feature. See the module docstring for the feature list and file layout.
    """
    # Resolve every caller path before any work, so that a bad path is reported first.
    synthetic_path = None
    if request.synthetic is not None:
        synthetic_path = ctx.data_path(request.synthetic.path, field="synthetic.path")
    source_name, rows = _load(request, ctx)
    source_field = "source.path" if isinstance(request.source, FileSource) else "source"
    records, invalid = _clean(rows, synthetic=False)
    if request.strict and invalid.count:
        raise InvalidInput(source_field, f"{invalid.count} invalid record(s): {'; '.join(invalid.examples[:5])}")
    if not records:
        why = f"all {len(rows)} records are invalid ({'; '.join(invalid.examples[:3])})" if rows else "no records"
        raise InvalidInput(source_field, f"{why} match the filters; nothing to split")
    _fill_steps(records)

    synthetic_rows: list[dict[str, Any]] = []
    if synthetic_path is not None:
        synthetic_rows = _read_file(synthetic_path, "synthetic.path")
        synthetic_rows = _filter(synthetic_rows, request, time_filtered=True)
    synthetic, synthetic_invalid = _clean(synthetic_rows, synthetic=True)
    for i, record in enumerate(synthetic):
        record.session_id = f"synthetic-{i}"
        record.values.setdefault("step", 1.0)

    splits = split_sessions(
        [r.session_id for r in records], request.validation_fraction, request.test_fraction, request.seed
    )
    codes = {s: i for i, s in enumerate(sorted({r.session_id for r in records}))}
    ordered = sorted(records, key=lambda r: (r.applied_at, r.id))
    by_split: dict[str, list[tuple[Record, int, int]]] = {name: [] for name in SPLITS}
    for record in ordered:
        name = next(n for n in SPLITS if record.session_id in splits[n])
        by_split[name].append((record, codes[record.session_id], 0))

    n_real_train = len(by_split["train"])
    used = 0
    if synthetic and request.synthetic is not None and request.synthetic.share > 0:
        share = request.synthetic.share
        cap = math.floor(share * n_real_train / (1 - share) + 1e-9)
        used = min(len(synthetic), cap)
        rng = np.random.default_rng([request.seed, 1])  # a stream of its own: the split does not shift
        picked = np.sort(rng.choice(len(synthetic), size=used, replace=False)) if used else np.array([], dtype=int)
        by_split["train"] += [(synthetic[int(i)], -1 - int(i), 1) for i in picked]

    everything = [r for rows_ in by_split.values() for r, _, _ in rows_]
    rules = sorted({r.rule_id for r in everything})
    domains = sorted({r.domain for r in everything})
    if len(rules) + len(domains) > MAX_ONE_HOT:
        raise InvalidInput(source_field, f"{len(rules)} rules and {len(domains)} domains; at most {MAX_ONE_HOT} in all")
    rule_cols = [_one_hot_name("rule", r) for r in rules]
    domain_cols = [_one_hot_name("domain", d) for d in domains]
    if len(set(rule_cols + domain_cols)) != len(rule_cols) + len(domain_cols):
        raise InvalidInput(source_field, "two rule or domain names map to the same column name; rename one")
    feature_columns = [*FEATURES, *rule_cols, *domain_cols]
    label = request.label

    contents = {name: _csv(by_split[name], feature_columns, label, rules, domains) for name in SPLITS}
    digest = hashlib.sha256()
    for name in SPLITS:
        digest.update(name.encode() + b"\0" + contents[name].encode() + b"\0")
    content_hash = digest.hexdigest()
    relative = f"{DATASETS_DIR}/{content_hash[:16]}"
    directory = ctx.data_dir / relative
    directory.mkdir(parents=True, exist_ok=True)
    files = {}
    for name in SPLITS:
        _write_atomic(directory / f"{name}.csv", contents[name])
        files[name] = f"{relative}/{name}.csv"

    label_means = []
    for name in SPLITS:
        ys = [r.values[label] for r, _, _ in by_split[name]]
        label_means.append(LabelMean(split=name, n=len(ys), mean=float(np.mean(ys)) if ys else None))
    split_sessions_ = {name: {r.session_id for r, _, syn in by_split[name] if not syn} for name in SPLITS}
    shared = (
        (split_sessions_["train"] & split_sessions_["validation"])
        | (split_sessions_["train"] & split_sessions_["test"])
        | (split_sessions_["validation"] & split_sessions_["test"])
    )
    counts = Counts(
        loaded=len(rows),
        valid=len(records),
        invalid=invalid.count,
        synthetic_available=len(synthetic),
        synthetic_invalid=synthetic_invalid.count,
        synthetic_used=used,
        train=len(by_split["train"]),
        validation=len(by_split["validation"]),
        test=len(by_split["test"]),
        train_sessions=len(split_sessions_["train"]),
        validation_sessions=len(split_sessions_["validation"]),
        test_sessions=len(split_sessions_["test"]),
        shared_sessions=len(shared),
    )
    schema = [ColumnInfo(name=c, dtype="string", role="id") for c in ("id", "session_id", "rule_id", "domain")] + [
        ColumnInfo(name="group", dtype="int", role="group"),
        ColumnInfo(name="synthetic", dtype="int", role="flag"),
        *(
            ColumnInfo(
                name=c,
                dtype="int" if c.startswith(("has_", "rule_", "domain_")) or c == "step" else "float",
                role="feature",
            )
            for c in feature_columns
        ),
        ColumnInfo(name=label, dtype="int" if label == "success" else "float", role="label"),
    ]
    manifest = {
        "content_hash": content_hash,
        "source": source_name,
        "label": label,
        "features": feature_columns,
        "excluded_columns": list(LEAKY_COLUMNS),
        "files": {name: f"{name}.csv" for name in SPLITS},
        "counts": counts.model_dump(),
        "seed": request.seed,
        "validation_fraction": request.validation_fraction,
        "test_fraction": request.test_fraction,
        "synthetic_share_cap": None if request.synthetic is None else request.synthetic.share,
    }
    _write_atomic(directory / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    n_train = len(by_split["train"])
    return TrainingDataLoaderOutput(
        source=source_name,
        counts=counts,
        invalid=invalid,
        synthetic_invalid=synthetic_invalid,
        synthetic_share=used / n_train if n_train else 0.0,
        columns=schema,
        files=files,
        manifest=f"{relative}/manifest.json",
        feature_columns=feature_columns,
        label_column=label,
        excluded_columns=list(LEAKY_COLUMNS),
        content_hash=content_hash,
        label_means=label_means,
        seed=request.seed,
    )
