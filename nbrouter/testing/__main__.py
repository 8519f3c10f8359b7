"""Run the provider simulator as a process of its own, for several router processes to share.

    python -m nbrouter.testing serve --port 0 --config sim.json      # prints http://127.0.0.1:PORT
    python -m nbrouter.testing serve --requests 120 --window-s 60      # 120 requests per sliding minute per key

The first line on stdout is the simulator's URL (and nothing else is printed there); it serves on
127.0.0.1 until SIGTERM or Ctrl-C. `--clock manual` runs it on a ManualClock that clients move with
`POST /_sim/clock {"seconds": N}`. `start_simulator_process` (nbrouter.testing.process) does all this for a
test.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import Any, Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m nbrouter.testing", description="The loopback provider simulator.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve on 127.0.0.1 until stopped; the first stdout line is the URL")
    serve.add_argument("--port", type=int, default=0, help="the loopback port (0: any free one)")
    serve.add_argument("--config", help="a JSON or TOML file of settings (see nbrouter.testing.config); - reads JSON from stdin")
    serve.add_argument("--requests", type=int, help="every key: at most this many requests per sliding window")
    serve.add_argument("--tokens", type=int, help="every key: at most this many tokens per sliding window")
    serve.add_argument("--window-s", type=float, default=60.0, help="the sliding window's length (default 60 s)")
    serve.add_argument("--steady", action="store_true", help="keys start in steady use (their window already full)")
    serve.add_argument("--clock", choices=("real", "manual"), default="real", help="manual: moved by POST /_sim/clock")
    return parser


def serve(args: argparse.Namespace) -> int:
    """Start the simulator, print its URL, and serve until SIGTERM or SIGINT."""
    from .clock import ManualClock
    from .config import apply, load
    from .ratelimits import WindowLimits
    from .simulator import ProviderSimulator

    clock: Any = ManualClock() if args.clock == "manual" else None
    sim = ProviderSimulator(clock=clock, port=args.port)
    if args.config == "-":  # how start_simulator_process hands settings over: no file ever holds a key
        apply(sim, json.loads(sys.stdin.read() or "{}"))
    elif args.config:
        apply(sim, load(args.config))
    if args.requests or args.tokens:
        sim.rate_limits.set_default(
            WindowLimits(requests=args.requests, tokens=args.tokens, window_s=args.window_s, start_full=not args.steady)
        )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with sim:
        sys.stdout.write(sim.url + "\n")
        sys.stdout.flush()
        stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
