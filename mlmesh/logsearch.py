"""Reading the mesh's JSON logs back: every process's rotating files, merged by time.

Each process writes ``logs/<process>.log`` (see :func:`mlmesh.logs.configure_logging`); the rotating handler
moves older lines to ``<process>.log.1`` … ``<process>.log.5`` (the higher the number, the older). Every
line is one JSON object with ``time`` (local time, millisecond resolution, as ``logging`` formats
``asctime``), ``level``, ``logger``, ``message``, ``request_id``, ``process`` and the record's extra
fields (the access log adds ``method``, ``path``, ``status``, ``duration_ms``).

    entries = find_request(Path("logs"), "4f1c…")     # one request's lines from every process, in time order
    mlmesh logs --request 4f1c… [--logs-dir DIR] [--json]   # the same from the command line

Lines that are not JSON objects (a crash's stray output) are skipped. Entries with the same millisecond
keep the order of their files (oldest rotation first) and lines, so one process's lines never swap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlmesh.logs import valid_request_id
from mlmesh.settings import Settings

__all__ = ["LogEntry", "entries_table", "find_request", "iter_entries", "log_files", "parse_time", "show_request"]

_LOG_FILE = re.compile(r"^(?P<process>.+)\.log(?:\.(?P<rotation>\d+))?$")
_TIME_FORMAT = "%Y-%m-%d %H:%M:%S,%f"
# Fields every line has; the rest are the record's extras.
STANDARD_FIELDS = ("time", "level", "logger", "message", "request_id", "process")


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log line: its JSON record, its time as unix seconds (None if unparsable) and where it came from."""

    record: dict[str, Any]
    time: float | None
    file: str
    line: int

    @property
    def process(self) -> str:
        return str(self.record.get("process") or _LOG_FILE.match(self.file).group("process"))  # type: ignore[union-attr]

    @property
    def extras(self) -> dict[str, Any]:
        return {k: v for k, v in self.record.items() if k not in STANDARD_FIELDS}


def parse_time(text: object) -> float | None:
    """Unix seconds of a log line's ``time`` (``2026-01-31 12:00:00,123``, local time), or None."""
    if not isinstance(text, str):
        return None
    try:
        return datetime.strptime(text, _TIME_FORMAT).timestamp()
    except ValueError:
        return None


def log_files(logs_dir: Path) -> list[Path]:
    """Every process's log files under ``logs_dir``, per process from the oldest rotation to the live file."""
    if not logs_dir.is_dir():
        return []
    found: list[tuple[str, int, Path]] = []
    for path in logs_dir.iterdir():
        match = _LOG_FILE.match(path.name)
        if match and path.is_file():
            rotation = int(match.group("rotation") or 0)
            # The live file (rotation 0) is the newest: sort rotations high to low, the live file last.
            found.append((match.group("process"), -rotation, path))
    return [path for _, _, path in sorted(found)]


def iter_entries(logs_dir: Path, *, contains: str | None = None) -> Iterator[LogEntry]:
    """Every JSON line of every log file, file by file (see :func:`log_files`).

    Args:
        logs_dir: The logs directory.
        contains: Only lines whose raw text contains this string (a cheap filter before JSON decoding).
    """
    needle = contains.encode() if contains is not None else None
    for path in log_files(logs_dir):
        try:
            handle = path.open("rb")
        except OSError:  # rotated away between listing and opening
            continue
        with handle:
            for number, raw in enumerate(handle, start=1):
                if needle is not None and needle not in raw:
                    continue
                try:
                    record = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(record, dict):
                    yield LogEntry(record=record, time=parse_time(record.get("time")), file=path.name, line=number)


def find_request(logs_dir: Path, request_id: str) -> list[LogEntry]:
    """Every line logged for ``request_id`` by any process, merged by time.

    Lines without a parsable time sort after those with one; ties keep file and line order.
    """
    # A request id is quoted verbatim in the JSON (ids are letters, digits and ._:-), so the raw filter is exact.
    matches = [
        entry
        for entry in iter_entries(logs_dir, contains=f'"{request_id}"')
        if entry.record.get("request_id") == request_id
    ]
    return sorted(matches, key=lambda e: (e.time is None, e.time or 0.0))


def _details(extras: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in extras.items())


def entries_table(request_id: str, entries: list[LogEntry]) -> Table:
    """A rich table of one request's lines: time, process, level, and the message over its logger and extras."""
    processes = sorted({e.process for e in entries})
    table = Table(
        title=f"request {escape(request_id)} · {len(entries)} lines from {', '.join(map(escape, processes))}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    table.add_column("time", no_wrap=True)
    table.add_column("process", no_wrap=True)
    table.add_column("level", no_wrap=True)
    table.add_column("message", overflow="fold")
    for e in entries:
        r = e.record
        # The logger and extra fields go under the message, so that an 80-column terminal stays legible.
        below = " ".join([str(r.get("logger", "")), _details(e.extras)]).strip()
        table.add_row(
            escape(str(r.get("time", ""))),
            escape(e.process),
            escape(str(r.get("level", ""))),
            escape(str(r.get("message", ""))) + (f"\n[dim]{escape(below)}[/]" if below else ""),
        )
    return table


def show_request(request_id: str, logs_dir: Path | None, *, as_json: bool, out: Console, err: Console) -> int:
    """Print one request's lines (a table, or the JSON records one a line); the exit code of ``mlmesh logs``.

    Returns:
        0 when lines were found, 1 when none were, 2 for a malformed id or invalid settings.
    """
    if valid_request_id(request_id) is None:
        err.print("[bold red]error:[/] [red]--request: ids are 1–64 letters, digits or . _ : -[/]", highlight=False)
        return 2
    if logs_dir is None:
        try:
            logs_dir = Settings().logs_dir
        except ValueError as exc:
            err.print(f"[bold red]error:[/] [red]{escape(str(exc))}[/]", highlight=False)
            return 2
    files = log_files(logs_dir)
    entries = find_request(logs_dir, request_id) if files else []
    if not entries:
        plural = "s" * (len(files) != 1)
        where = f"{len(files)} log file{plural} in {logs_dir}" if files else f"{logs_dir} (no log files there)"
        err.print(f"[red]no log lines for request {escape(request_id)} in {escape(where)}[/]", highlight=False)
        return 1
    if as_json:
        for e in entries:
            out.file.write(orjson.dumps(e.record).decode() + "\n")
    else:
        out.print(entries_table(request_id, entries))
    return 0
