"""Smoke-test the mesh: run one component of each tier through the gateway with its example.

    python scripts/smoke.py [--gateway URL] [--timeout S]

Discovers the components, picks one per tier (an "up" one first, then by name),
posts its declared ``example`` to ``POST /run/{name}`` and prints a table of tier,
component, status and milliseconds. Exits 1 if the gateway cannot be reached, no
component is declared at all, or any call fails; a tier without components is
reported as "no components" and is not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlmesh.cli import TABLE_BOX
from mlmesh.client import ComponentInfo, MeshClient, MeshClientError
from mlmesh.settings import TIERS


@dataclass(frozen=True, slots=True)
class SmokeResult:
    """One row of the smoke table."""

    tier: str
    component: str | None
    ok: bool
    status: str
    ms: float | None = None


def pick(components: list[ComponentInfo]) -> dict[str, ComponentInfo]:
    """One component per tier: an "up" one if there is any, then the first by name."""
    chosen: dict[str, ComponentInfo] = {}
    for info in sorted(components, key=lambda c: (c.status != "up", c.name)):
        chosen.setdefault(info.tier, info)
    return chosen


async def smoke(client: MeshClient) -> list[SmokeResult]:
    """Run one component per tier through the gateway; one result per tier, in tier order.

    Raises:
        MeshClientError: If discovery itself fails.
    """
    chosen = pick(await client.discover_components())
    tiers = [*TIERS, *sorted(set(chosen) - set(TIERS))]

    async def one(tier: str) -> SmokeResult:
        info = chosen.get(tier)
        if info is None:
            return SmokeResult(tier, None, ok=True, status="no components")
        start = time.perf_counter()
        try:
            await client.run(info.name, info.example, request_id=f"smoke-{info.name}")
        except MeshClientError as exc:
            code = f"{exc.status} " if exc.status is not None else ""
            return SmokeResult(tier, info.name, ok=False, status=f"{code}{exc.title}: {exc.detail}")
        return SmokeResult(tier, info.name, ok=True, status="ok", ms=(time.perf_counter() - start) * 1e3)

    return list(await asyncio.gather(*(one(t) for t in tiers)))


def render(results: list[SmokeResult], gateway: str) -> Table:
    """The smoke table: tier, component, status, ms."""
    table = Table(title=f"smoke · gateway {escape(gateway)}", title_justify="left", box=TABLE_BOX)
    table.add_column("tier")
    table.add_column("component")
    table.add_column("status", overflow="fold")
    table.add_column("ms", justify="right")
    for r in results:
        style = "green" if r.ok and r.component else ("yellow" if r.ok else "red")
        table.add_row(
            escape(r.tier),
            escape(r.component or "—"),
            f"[{style}]{escape(r.status)}[/]",
            "—" if r.ms is None else f"{r.ms:.1f}",
        )
    return table


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the smoke test, print the table; return the exit code."""
    parser = argparse.ArgumentParser(prog="smoke.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", metavar="URL", help="gateway URL (default: from configs/mesh.toml)")
    parser.add_argument("--timeout", type=float, default=65.0, metavar="S", help="seconds per request (default 65)")
    args = parser.parse_args(argv)
    out, err = Console(), Console(stderr=True, soft_wrap=True)
    try:
        client = MeshClient(args.gateway, timeout=httpx.Timeout(args.timeout, connect=min(args.timeout, 5.0)))
    except ValueError as exc:
        err.print(f"[bold red]error:[/] [red]{escape(str(exc))}[/]", highlight=False)
        return 2

    async def go() -> list[SmokeResult]:
        async with client:
            return await smoke(client)

    try:
        results = asyncio.run(go())
    except MeshClientError as exc:
        err.print(f"[bold red]error:[/] [red]discovery failed: {escape(exc.detail)}[/]", highlight=False)
        return 1
    out.print(render(results, client.base_url))
    if not any(r.component for r in results):
        err.print("[red]no components declared in any tier[/]", highlight=False)
        return 1
    failed = [r for r in results if not r.ok]
    if failed:
        err.print(f"[red]failed: {escape(', '.join(f'{r.tier}/{r.component}' for r in failed))}[/]", highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
