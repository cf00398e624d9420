"""The ``mlmesh`` command line: look at the mesh and run components through the gateway.

    mlmesh status                         services, their status and latency
    mlmesh components --tier tier3        declared components
    mlmesh run NAME --input FILE|-        run one; prints its result as JSON
    mlmesh ping                           /health of the gateway and of every service, directly
    mlmesh pipeline list                  the pipelines the gateway knows
    mlmesh pipeline run NAME [-p k=v]     start a run, follow its steps live, print the summary
    mlmesh runs [RUN_ID]                  run history, or one run's steps
    mlmesh logs --request ID              one request's log lines from every process

Exit codes: 0 all well, 1 the mesh answered with a problem or something is down,
2 bad usage (unreadable or invalid input, bad option).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, TypeVar

import httpx
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mlmesh.client import (
    ComponentInfo,
    MeshClient,
    MeshClientError,
    MeshHealth,
    PingResult,
    ServiceHealth,
)
from mlmesh.settings import Settings

__all__ = ["TABLE_BOX", "app", "ping_mesh", "print_problem", "resolve_gateway"]

EXIT_OK, EXIT_PROBLEM, EXIT_USAGE = 0, 1, 2
CONNECT_TIMEOUT_S = 5.0
T = TypeVar("T")
# The tiers of mlmesh.settings.TIERS, spelled out so that typer can offer them as choices.
Tier = Literal["tier1", "tier2", "tier3", "tier4"]

app = typer.Typer(
    name="mlmesh",
    help="Look at the mlmesh gateway and run components through it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# No vertical rules: the tables stay legible in an 80-column terminal.
TABLE_BOX = box.SIMPLE_HEAD
STATUS_STYLE = {
    "ok": "green",
    "up": "green",
    "closed": "green",
    "degraded": "yellow",
    "unknown": "yellow",
    "half-open": "yellow",
    "down": "red",
    "open": "red",
    "unreachable": "red",
}


@dataclass(frozen=True, slots=True)
class _Options:
    gateway: str | None
    timeout: float


def _consoles() -> tuple[Console, Console]:
    # Built per command, so that they write to whatever sys.stdout/stderr are now.
    return Console(), Console(stderr=True, soft_wrap=True)


def _coloured(value: str, text: str | None = None) -> str:
    """``text`` (default: ``value``) in the colour of the status ``value``."""
    style = STATUS_STYLE.get(value)
    shown = escape(value if text is None else text)
    return f"[{style}]{shown}[/]" if style else shown


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} ms"


def print_problem(err: Console, exc: MeshClientError) -> None:
    """Print a mesh error as one red line (status, title, detail) and the request id, if any."""
    status = f"{exc.status} " if exc.status is not None else ""
    err.print(f"[bold red]error:[/] [red]{status}{escape(exc.title)}: {escape(exc.detail)}[/]", highlight=False)
    if exc.request_id:
        err.print(f"request id: {escape(exc.request_id)}", style="dim", highlight=False)


def _usage_error(err: Console, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] [red]{escape(message)}[/]", highlight=False)
    raise typer.Exit(EXIT_USAGE)


def resolve_gateway(gateway: str | None) -> str:
    """The gateway URL to use: ``gateway`` if given, else the one the settings derive.

    Raises:
        ValueError: If the settings (``configs/mesh.toml``, ``MLMESH_*``) are invalid.
    """
    return gateway if gateway else Settings().gateway_url


def _client(options: _Options, err: Console) -> MeshClient:
    try:
        timeout = httpx.Timeout(options.timeout, connect=min(options.timeout, CONNECT_TIMEOUT_S))
        return MeshClient(resolve_gateway(options.gateway), timeout=timeout)
    except ValueError as exc:
        _usage_error(err, str(exc))


def _call(err: Console, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine; a mesh error becomes a red message on stderr and exit code 1."""
    try:
        return asyncio.run(make())
    except MeshClientError as exc:
        print_problem(err, exc)
        raise typer.Exit(EXIT_PROBLEM) from None


@app.callback()
def main(
    ctx: typer.Context,
    *,
    gateway: Annotated[
        str | None,
        typer.Option("--gateway", "-g", metavar="URL", help="Gateway URL (default: from configs/mesh.toml)."),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds to wait for each answer.")] = 65.0,
) -> None:
    """Look at the mlmesh gateway and run components through it."""
    ctx.obj = _Options(gateway=gateway, timeout=timeout)


def _health_table(health: MeshHealth, gateway: str) -> Table:
    table = Table(
        title=f"mesh {_coloured(health.status)} · gateway {escape(gateway)} · v{escape(health.version)}",
        title_justify="left",
        box=TABLE_BOX,
    )
    for column in ("id", "tier", "url", "status", "latency", "components"):
        table.add_column(column, justify="right" if column in ("latency", "components") else "left")
    for s in health.services:
        table.add_row(
            escape(s.id), escape(s.tier), escape(s.base_url), _coloured(s.status), _ms(s.latency_ms), str(s.components)
        )
    return table


def _print_errors(out: Console, errors: list[tuple[str, str]]) -> None:
    # Below the table rather than in a column, so that a narrow terminal keeps the table legible.
    for who, message in errors:
        out.print(f"  [bold]{escape(who)}[/]: [red]{escape(message)}[/]", highlight=False, soft_wrap=True)


def _service_note(s: ServiceHealth) -> str:
    parts = [f"breaker {s.breaker}"] if s.breaker != "closed" else []
    return "; ".join([*parts, s.error] if s.error else parts)


@app.command()
def status(ctx: typer.Context) -> None:
    """Show every service the gateway knows, with status and latency; exit 1 if any is down."""
    options: _Options = ctx.obj
    out, err = _consoles()
    client = _client(options, err)

    async def fetch() -> MeshHealth:
        async with client:
            return await client.health()

    health = _call(err, fetch)
    out.print(_health_table(health, client.base_url))
    notes = [(s.id, _service_note(s)) for s in health.services]
    _print_errors(out, [(sid, note) for sid, note in notes if note])
    if not health.services:
        out.print("no services registered", style="yellow")
    if health.down or health.status == "down":
        down = ", ".join(s.id for s in health.down) or "the mesh"
        err.print(f"[red]down: {escape(down)}[/]", highlight=False)
        raise typer.Exit(EXIT_PROBLEM)


@app.command()
def components(
    ctx: typer.Context,
    *,
    tier: Annotated[Tier | None, typer.Option("--tier", "-t", help="Only the components of this tier.")] = None,
) -> None:
    """List the declared components: name, tier, status, version, capabilities."""
    options: _Options = ctx.obj
    out, err = _consoles()
    client = _client(options, err)

    async def fetch() -> list[ComponentInfo]:
        async with client:
            return await client.discover_components()

    found = [c for c in _call(err, fetch) if tier is None or c.tier == tier]
    if not found:
        out.print(f"no components{f' in {tier}' if tier else ''}", style="yellow")
        return
    table = Table(title=f"{len(found)} components", title_justify="left", box=TABLE_BOX)
    for column in ("name", "tier", "status", "version", "capabilities"):
        table.add_column(
            column,
            overflow="fold" if column == "capabilities" else "ellipsis",
            no_wrap=column == "name",
        )
    for c in sorted(found, key=lambda c: (c.tier, c.name)):
        table.add_row(
            escape(c.name), escape(c.tier), _coloured(c.status), escape(c.version), escape(", ".join(c.capabilities))
        )
    out.print(table)


def _read_input(source: str, err: Console) -> dict[str, Any]:
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _usage_error(err, f"cannot read input {name}: {getattr(exc, 'strerror', None) or exc}")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        _usage_error(err, f"input {name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if not isinstance(payload, dict):
        _usage_error(err, f"input {name} must be a JSON object (the component's input); got {type(payload).__name__}")
    return payload


@app.command()
def run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The component to run.", show_default=False)],
    *,
    source: Annotated[str, typer.Option("--input", "-i", metavar="FILE|-", help="JSON input file, or - for stdin.")],
    envelope: Annotated[
        bool, typer.Option("--envelope", help="Print the whole envelope, not just the result.")
    ] = False,
    request_id: Annotated[
        str | None, typer.Option("--request-id", metavar="ID", help="X-Request-ID to send along.")
    ] = None,
) -> None:
    """Run a component through the gateway and print its result as JSON."""
    options: _Options = ctx.obj
    out, err = _consoles()
    payload = _read_input(source, err)
    client = _client(options, err)

    async def call() -> dict[str, Any]:
        async with client:
            answer = await client.run_envelope(name, payload, request_id=request_id)
        return answer.model_dump(mode="json") if envelope else answer.component_result

    out.print_json(data=_call(err, call))


async def _ping(client: MeshClient, *, direct: bool) -> tuple[PingResult, MeshHealth | None, list[PingResult]]:
    async with client:
        gateway = await client.ping()
        try:
            health = MeshHealth.model_validate(gateway.body)
        except ValueError:  # unreachable, or not the mesh's health answer
            return gateway, None, []
        directs = await client.ping_many([s.base_url for s in health.services]) if direct else []
        return gateway, health, directs


def ping_mesh(
    gateway: str | None = None,
    *,
    direct: bool = True,
    timeout: float = 5.0,
    out: Console | None = None,
    err: Console | None = None,
) -> int:
    """Ping the gateway's ``/health`` and, with ``direct``, each service's own ``/health``; print a table.

    Args:
        gateway: The gateway URL; from the settings when omitted.
        direct: Also ping every service at the base URL the gateway lists.
        timeout: Seconds to wait for each answer.
        out: Where the table goes (stdout by default).
        err: Where errors go (stderr by default).

    Returns:
        The exit code: 0 if everything answered and nothing is down, 1 otherwise, 2 for a bad URL.
    """
    default_out, default_err = _consoles()
    out, err = out or default_out, err or default_err
    try:
        client = MeshClient(resolve_gateway(gateway), timeout=timeout)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] [red]{escape(str(exc))}[/]", highlight=False)
        return EXIT_USAGE
    gw, health, directs = asyncio.run(_ping(client, direct=direct))
    if health is None:
        reason = gw.error or "its /health answer is not the mesh's health"
        err.print(f"[bold red]error:[/] [red]gateway {escape(gw.url)}: {escape(reason)}[/]", highlight=False)
        return EXIT_PROBLEM

    failures: list[str] = []
    errors: list[tuple[str, str]] = []
    table = Table(
        title=f"ping · gateway {escape(gw.url)} {_coloured(gw.status)} in {_ms(gw.latency_ms)}",
        title_justify="left",
        box=TABLE_BOX,
    )
    for column in ["service", "tier", "url", "gateway", *(["direct"] if direct else [])]:
        table.add_column(column)
    for i, s in enumerate(health.services):
        row = [escape(s.id), escape(s.tier), escape(s.base_url), f"{_coloured(s.status)} {_ms(s.latency_ms)}"]
        errors += [(s.id, note)] if (note := _service_note(s)) else []
        down = s.status == "down"
        if direct:
            d = directs[i]
            row.append(f"{_coloured('up' if d.ok else 'down')} {_ms(d.latency_ms)}")
            errors += [(f"{s.id} (direct)", d.error)] if d.error else []
            down = down or not d.ok
        if down:
            failures.append(s.id)
        table.add_row(*row)
    out.print(table)
    _print_errors(out, errors)
    if not health.services:
        out.print("the gateway lists no services", style="yellow")
    if not failures and health.status == "down":
        failures.append("the mesh")
    if failures:
        err.print(f"[red]down: {escape(', '.join(failures))}[/]", highlight=False)
        return EXIT_PROBLEM
    return EXIT_OK


@app.command()
def ping(ctx: typer.Context) -> None:
    """Ping the gateway and, directly, every service it lists; exit 1 if any is down."""
    options: _Options = ctx.obj
    code = ping_mesh(options.gateway, direct=True, timeout=min(options.timeout, 10.0))
    raise typer.Exit(code)


@app.command()
def logs(
    *,
    request: Annotated[str, typer.Option("--request", "-r", metavar="ID", help="The request id to look for.")],
    logs_dir: Annotated[
        Path | None, typer.Option("--logs-dir", metavar="DIR", help="Logs directory (default: from the settings).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the JSON lines instead of a table.")] = False,
) -> None:
    """Show one request's log lines from every process (rotated files too) in time order; exit 1 if none."""
    from mlmesh.logsearch import show_request  # only this command needs it

    out, err = _consoles()
    raise typer.Exit(show_request(request, logs_dir, as_json=as_json, out=out, err=err))


pipeline_app = typer.Typer(help="Pipelines: list them, run one and follow it live.", no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")
FINISHED = ("succeeded", "failed", "cancelled")
STATUS_STYLE.update(
    {"succeeded": "green", "running": "cyan", "queued": "yellow", "pending": "dim", "retrying": "yellow"}
    | {"failed": "red", "cancelled": "red", "skipped": "dim"}
)


@pipeline_app.command("list")
def pipeline_list(ctx: typer.Context) -> None:
    """The pipelines the gateway knows, their steps, and whether they validate against the registry now."""
    out, err = _consoles()
    client = _client(ctx.obj, err)

    async def fetch() -> list[dict[str, Any]]:
        async with client:
            return await client.pipelines()

    table = Table("pipeline", "source", "steps", "valid", "problem", box=TABLE_BOX)
    for p in _call(err, fetch):
        steps = " → ".join(s["id"] for s in p["steps"])
        table.add_row(
            p["name"], p["source"], escape(steps), _coloured("ok" if p["valid"] else "down"), escape(p["problem"] or "")
        )
    out.print(table)


def _parse_params(pairs: list[str], err: Console) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            _usage_error(err, f"--param takes KEY=VALUE; got {pair!r}")
        try:
            params[key] = json.loads(raw)  # numbers, booleans, lists, objects
        except json.JSONDecodeError:
            params[key] = raw  # anything else is a string
    return params


def _run_table(run: dict[str, Any]) -> Table:
    table = Table("step", "component", "status", "attempts", "time", "detail", box=TABLE_BOX)
    for s in run["steps"]:
        detail = (s.get("error") or {}).get("detail") or ""
        table.add_row(
            s["id"],
            s["component"],
            _coloured(s["status"]),
            str(s["attempts"]),
            _ms(s["duration_ms"]),
            escape(str(detail)[:120]),
        )
    return table


@pipeline_app.command("run")
def pipeline_run(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The pipeline to run.", show_default=False)],
    *,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", metavar="KEY=VALUE", help="A run parameter (JSON or text).")
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Print the run id and return without following it.")] = False,
    poll: Annotated[float, typer.Option("--poll", min=0.05, max=10.0, help="Seconds between progress checks.")] = 0.25,
) -> None:
    """Start a run, show a live progress bar per step, then the summary. Exit 1 unless it succeeds."""
    from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

    out, err = _consoles()
    params = _parse_params(param or [], err)
    client = _client(ctx.obj, err)

    async def follow() -> dict[str, Any]:
        async with client:
            run_id = await client.start_run(name, params)
            if detach:
                return {"id": run_id, "status": "queued", "steps": []}
            err.print(f"run [bold]{run_id}[/] of {escape(name)}", highlight=False)
            columns = (
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=err, transient=False) as progress:
                bars: dict[str, TaskID] = {}
                while True:
                    run = await client.get_run(run_id)
                    for s in run["steps"]:
                        if s["id"] not in bars:
                            bars[s["id"]] = progress.add_task(
                                f"{s['id']} ({s['component']})", total=1, status="", start=False
                            )
                        bar = bars[s["id"]]
                        if s["status"] != "pending":
                            progress.start_task(bar)
                        done = s["status"] in ("succeeded", "failed", "skipped", "cancelled")
                        label = s["status"] + (f" (attempt {s['attempts']})" if s["attempts"] > 1 else "")
                        progress.update(
                            bar,
                            completed=1 if done else 0,
                            status=_coloured(s["status"], label),
                        )
                        if done:
                            progress.stop_task(bar)
                    if run["status"] in FINISHED:
                        return run
                    await asyncio.sleep(poll)

    try:
        run = _call(err, follow)
    except KeyboardInterrupt:
        err.print("interrupted: the run goes on in the gateway (cancel it with POST /runs/<id>/cancel)")
        raise typer.Exit(EXIT_PROBLEM) from None
    if detach:
        out.print(run["id"])
        return
    out.print(_run_table(run))
    out.print(
        f"run {run['id']}: {_coloured(run['status'])} in {_ms(run['duration_ms'])}"
        + (f" — {escape(run['error'])}" if run["error"] else "")
    )
    out.print(f"report: outputs/runs/{run['id']}/report.md", style="dim", highlight=False)
    raise typer.Exit(EXIT_OK if run["status"] == "succeeded" else EXIT_PROBLEM)


@app.command()
def runs(
    ctx: typer.Context,
    run_id: Annotated[str | None, typer.Argument(help="Show this run's steps instead of the history.")] = None,
    *,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=500, help="How many runs to list.")] = 20,
    status: Annotated[str | None, typer.Option("--status", help="Only runs in this state.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", help="Only runs of this pipeline.")] = None,
) -> None:
    """Run history, newest first; or, given a run id, that run's steps."""
    out, err = _consoles()
    client = _client(ctx.obj, err)

    async def fetch() -> dict[str, Any]:
        async with client:
            if run_id:
                return await client.get_run(run_id)
            return await client.runs(limit=limit, status=status, pipeline=pipeline)

    data = _call(err, fetch)
    if run_id:
        out.print(_run_table(data))
        out.print(
            f"run {data['id']} of {data['pipeline']}: {_coloured(data['status'])}"
            + (f" — {escape(data['error'])}" if data["error"] else "")
        )
        return
    table = Table("run", "pipeline", "status", "steps", "created", "time", box=TABLE_BOX)
    for r in data["runs"]:
        done = sum(s["status"] == "succeeded" for s in r["steps"])
        table.add_row(
            r["id"],
            r["pipeline"],
            _coloured(r["status"]),
            f"{done}/{len(r['steps'])}",
            (r["created_at"] or "")[:19],
            _ms(r["duration_ms"]),
        )
    out.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in data["counts"].items() if v)
    out.print(f"{data['total']} run(s){': ' + counts if counts else ''}", style="dim", highlight=False)
