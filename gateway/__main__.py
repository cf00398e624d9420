"""Run the gateway: ``python -m gateway [--port 9000]``."""

from __future__ import annotations

import argparse

import uvicorn

from mlmesh.settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--port", type=int, help="override the configured port")
    args = parser.parse_args(argv)
    settings = Settings()
    uvicorn.run(
        "gateway.app:create_app",
        factory=True,
        host=settings.host,
        port=args.port if args.port is not None else settings.gateway.port,
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        # Longer than the gateway keeps idle connections, so it never reuses one the tier just closed.
        timeout_keep_alive=75,
    )


if __name__ == "__main__":
    main()
