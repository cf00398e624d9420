"""Run one tier service: ``python -m services tier3 [--port 9003]``."""

from __future__ import annotations

import argparse
import os

import uvicorn

from mlmesh.settings import TIERS, Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services", description=__doc__)
    parser.add_argument("tier", choices=TIERS)
    parser.add_argument("--port", type=int, help="override the configured port")
    args = parser.parse_args(argv)
    settings = Settings()
    port = args.port if args.port is not None else settings.tiers[args.tier].port
    if args.port is not None and not settings.advertise_url:
        os.environ["MLMESH_ADVERTISE_URL"] = f"http://{settings.host}:{port}"
    uvicorn.run(
        f"services.app:{args.tier}",
        factory=True,
        host=settings.host,
        port=port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        # Longer than the gateway keeps idle connections, so it never reuses one the tier just closed.
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
