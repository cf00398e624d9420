"""What a component's function may ask of the service that runs it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlmesh.settings import Settings
from mlmesh.state import StateDB
from services.framework.paths import confine

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """Per-run context: ids, settings, data paths, output files and state databases."""

    component: str
    settings: Settings
    request_id: str | None
    databases: dict[str, StateDB] = field(default_factory=dict)
    # Long-lived clients shared by the service's runs (pools, caches); closed when the service stops.
    resources: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    output_files: list[str] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def data_path(self, user_path: str, *, field: str = "path") -> Path:
        """A caller-given path, confined to the data directory (400 naming ``field`` otherwise)."""
        return confine(self.settings.data_dir, user_path, field=field)

    def write_output(self, name: str, content: str | bytes) -> Path:
        """Write ``outputs/<component>/<run-id>/<name>`` and list it in the envelope."""
        directory = self.settings.outputs_dir / self.component / self.run_id
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / Path(name).name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        self.output_files.append(f"{self.settings.outputs_dir.name}/{self.component}/{self.run_id}/{path.name}")
        return path

    def state(self, name: str, migrations: Sequence[str]) -> StateDB:
        """The service's SQLite database ``data/<name>.sqlite``, migrated and shared across runs."""
        db = self.databases.get(name)
        if db is None:
            db = self.databases.setdefault(name, StateDB(self.settings.data_dir / f"{name}.sqlite", migrations))
        return db
