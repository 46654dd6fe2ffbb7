"""``ulora serve``: arguments and entry point (``ulora_remote/cli.py`` dispatches here).

Example::

    ulora serve --port 8000 --base-model small --checkpoint-dir ./ckpt
    ulora serve --cycle-s 0.5 --fault-rate 0.1 --fault-seed 7     # a storm for tests
    ulora serve --max-live-models 4 --refuse-creates 12          # the service's LoRA limits

The API key defaults to ``$ULORA_SERVE_API_KEY`` so that it need not appear in the process list.
An empty key (``--api-key ""``, or the variable set to nothing) is refused rather than read as
"no key", and so is a non-loopback ``--host`` without a key: either would leave the server open
while its user believes it is protected.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ["add_serve_arguments", "serve_main"]


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``ulora serve`` to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port; 0 picks a free one")
    parser.add_argument(
        "--base-model", default="small",
        help="small, medium, smollm2-135m, or a local model directory"
    )
    parser.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=Path("ulora-serve-checkpoints"),
        help="where checkpoints are written (default: ./ulora-serve-checkpoints)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require this key in X-API-Key (default: $ULORA_SERVE_API_KEY, else no check; "
        "an empty key is refused)",
    )
    parser.add_argument("--cycle-s", type=float, default=0.0, help="simulated clock cycle (s)")
    parser.add_argument("--latency-s", type=float, default=0.0, help="added latency per answer")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="fraction of faulty requests")
    parser.add_argument(
        "--fault-kinds", default="429,500,408,410,drop", help="comma-separated fault kinds"
    )
    parser.add_argument("--fault-seed", type=int, default=0, help="seed of the fault injector")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per engine (default 1; more only pays on an otherwise idle machine)",
    )
    parser.add_argument(
        "--header-timeout-s",
        type=float,
        default=10.0,
        help="a request's headers must arrive within this many seconds, else 408 (default 10)",
    )
    parser.add_argument(
        "--body-timeout-s",
        type=float,
        default=30.0,
        help="its body must arrive within this many seconds more, else 408 (default 30)",
    )
    parser.add_argument(
        "--max-live-models",
        type=int,
        default=None,
        help="at most K training models live at once; a further creation queues "
        "(try_again, paused_rate_limit) until a session ends",
    )
    parser.add_argument(
        "--refuse-creates",
        type=int,
        default=0,
        metavar="N",
        help="answer the first N model creations with HTTP 429 (rate limit)",
    )
    parser.add_argument(
        "--pyqwest", action="store_true", help="let clients use the SDK's pyqwest transport"
    )


def api_key_from(given: str | None, environ: dict[str, str]) -> str | None:
    """The key to require: ``--api-key``, else ``$ULORA_SERVE_API_KEY``, else None (no check).

    Raises:
        ConfigurationError: the key chosen is empty or blank (never echoed).
    """
    from ulora_remote.errors import ConfigurationError

    source, key = ("--api-key", given) if given is not None else (
        "ULORA_SERVE_API_KEY", environ.get("ULORA_SERVE_API_KEY"))  # fmt: skip
    if key is not None and not key.strip():
        raise ConfigurationError(
            f"{source} is empty, which would serve without authentication; pass a key, or leave "
            f"{source} unset to serve without one on 127.0.0.1"
        )
    return key


def serve_main(args: argparse.Namespace) -> int:
    """Run ``ulora serve`` with parsed ``args`` until interrupted; return the exit code."""
    from ulora_remote.errors import UloraError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        from ulora_remote.backends.server import FaultConfig, ServerConfig, serve_forever

        kinds = tuple(k.strip() for k in args.fault_kinds.split(",") if k.strip())
        config = ServerConfig(
            host=args.host,
            port=args.port,
            base_model=args.base_model,
            checkpoint_dir=args.checkpoint_dir,
            api_key=api_key_from(args.api_key, dict(os.environ)),
            cycle_s=args.cycle_s,
            latency_s=args.latency_s,
            faults=FaultConfig(rate=args.fault_rate, kinds=kinds, seed=args.fault_seed),  # type: ignore[arg-type]
            header_timeout_s=args.header_timeout_s,
            body_timeout_s=args.body_timeout_s,
            threads=args.threads,
            use_pyqwest=args.pyqwest,
            max_live_models=args.max_live_models,
            refuse_creates=args.refuse_creates,
        )
        serve_forever(config)
    except KeyboardInterrupt:
        return 0
    except (UloraError, OSError) as exc:
        print(f"ulora serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m ulora_remote.backends.server.cli``."""
    parser = argparse.ArgumentParser(prog="ulora serve", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    return serve_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
