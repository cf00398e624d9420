"""Request ids and rotating JSON logs, one file per process under ``logs/``."""

from __future__ import annotations

import logging
import logging.handlers
import re
import uuid
from contextvars import ContextVar
from pathlib import Path

from pythonjsonlogger.json import JsonFormatter

__all__ = ["configure_logging", "current_request_id", "new_request_id", "set_request_id", "valid_request_id"]

_request_id: ContextVar[str | None] = ContextVar("mlmesh_request_id", default=None)
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id() -> str:
    return uuid.uuid4().hex


def valid_request_id(value: str | None) -> str | None:
    """A caller's request id if it is safe to log and echo, else None."""
    return value if value and _SAFE_ID.match(value) else None


def set_request_id(value: str) -> None:
    # Each request runs in its own task, so the value never leaks between requests.
    _request_id.set(value)


def current_request_id() -> str | None:
    return _request_id.get()


class _RequestIdFilter(logging.Filter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        record.process_name = self.process
        return True


def configure_logging(process: str, logs_dir: Path, *, level: int = logging.INFO) -> Path:
    """Send the process's log records to ``logs/<process>.log`` as JSON lines (rotating).

    Idempotent: calling it again for the same process replaces the earlier handler.
    """
    logs_dir.mkdir(parents=True, exist_ok=True)
    path = logs_dir / f"{process}.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=10 * 1024 * 1024, backupCount=5, encoding="utf-8")
    handler.set_name(f"mlmesh-{process}")
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}{request_id}{process_name}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger", "process_name": "process"},
        )
    )
    handler.addFilter(_RequestIdFilter(process))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == handler.get_name()]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).propagate = True
    # One line per request comes from the mesh's own access log; the HTTP client's would double it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return path
