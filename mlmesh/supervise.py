"""Keep one mesh process running: ``python -m mlmesh.supervise NAME -- COMMAND...``.

honcho stops every process when one of them exits, so a crashed tier would take
the whole mesh down. Each Procfile entry runs under this supervisor instead: it
restarts the command when it dies (with a growing, capped delay) and forwards
SIGINT/SIGTERM so that honcho can still stop everything.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from types import FrameType

__all__ = ["main", "supervise"]

# A run that lasted this long counts as healthy: the restart delay starts over.
STABLE_AFTER_S = 30.0


def supervise(name: str, command: list[str], *, max_delay_s: float = 10.0) -> int:
    """Run ``command`` until asked to stop, restarting it whenever it exits."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    delay = 0.5
    while True:
        started = time.monotonic()
        child = subprocess.Popen(command)  # noqa: S603 - the command comes from the Procfile
        code = child.wait()
        if stopping:
            return 0
        if time.monotonic() - started > STABLE_AFTER_S:
            delay = 0.5
        print(f"[supervise] {name} exited with {code}; restarting in {delay:.1f}s", file=sys.stderr, flush=True)
        time.sleep(delay)
        if stopping:
            return 0
        delay = min(max_delay_s, delay * 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlmesh.supervise", description=__doc__)
    parser.add_argument("name")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    sys.exit(supervise(args.name, command))


if __name__ == "__main__":
    main()
