"""Ping the mesh: a table of services with status and latency; non-zero exit if any is down.

    python scripts/health_ping.py [--gateway URL] [--direct] [--timeout S]

Without ``--direct`` the table is the gateway's own view (``GET /health``); with it,
every service is also pinged at the base URL the gateway lists. The work is done by
:func:`mlmesh.cli.ping_mesh`, the same code as ``mlmesh ping``.
"""

from __future__ import annotations

import argparse
import sys

from mlmesh.cli import ping_mesh


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, ping, print the table; return the exit code."""
    parser = argparse.ArgumentParser(prog="health_ping.py", description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", metavar="URL", help="gateway URL (default: from configs/mesh.toml)")
    parser.add_argument("--direct", action="store_true", help="also ping each service's own /health")
    parser.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds per request (default 5)")
    args = parser.parse_args(argv)
    return ping_mesh(args.gateway, direct=args.direct, timeout=args.timeout)


if __name__ == "__main__":
    sys.exit(main())
