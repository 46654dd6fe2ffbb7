"""``ulora proxy``: arguments and entry point (``ulora_remote/cli.py`` dispatches here).

Example::

    ulora proxy --upstream http://127.0.0.1:8000 --port 8100 --out guard-records
    # then point any Tinker program at it: ServiceClient(base_url="http://127.0.0.1:8100"),
    # or the cookbook's base_url; the client's own TINKER_API_KEY goes upstream unchanged

It binds 127.0.0.1. Another interface needs ``--allow-remote`` and ``--client-key-env VAR``:
clients must then send the key held in ``$VAR`` (as their API key), and the proxy sends
``$TINKER_API_KEY`` upstream in its place. Keys are read from the environment, never from the
command line, so that they stay out of the process list.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from ulora_remote.errors import ConfigurationError, UloraError

__all__ = ["add_proxy_arguments", "proxy_config", "proxy_main"]


def add_proxy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--upstream", required=True,
                        help="the service's base URL (hosted Tinker, or ulora serve's)")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    parser.add_argument("--port", type=int, default=8100, help="TCP port; 0 picks a free one")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than loopback (needs --client-key-env)")
    parser.add_argument("--client-key-env", metavar="VAR", default=None,
                        help="the environment variable holding the key clients must send")
    parser.add_argument("--controller", action="store_true",
                        help="the seed's controller sets the learning rate (default: the "
                             "client's own schedule stands)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for the guard's records, one sub-folder per model id")


def proxy_config(args: argparse.Namespace, environ: dict[str, str]) -> object:
    """The ``ProxyConfig`` for parsed ``args``.

    Raises:
        ConfigurationError: a non-loopback host without --allow-remote and a client key, or an
        empty key (the variable's value is never echoed).
    """
    from ulora_remote.backends.server.config import is_loopback

    from .app import ProxyConfig

    if not args.upstream.startswith(("http://", "https://")):
        raise ConfigurationError(f"--upstream {args.upstream!r} must be an http:// or https:// "
                                 "URL, e.g. http://127.0.0.1:8000")
    client_key = upstream_key = None
    if not is_loopback(args.host):
        if not args.allow_remote or not args.client_key_env:
            raise ConfigurationError(
                f"--host {args.host} is reachable from other machines; add --allow-remote and "
                "--client-key-env VAR (a key of the proxy's own that clients must send), or "
                "bind 127.0.0.1")
    if args.client_key_env:
        client_key = environ.get(args.client_key_env, "")
        upstream_key = environ.get("TINKER_API_KEY", "")
        if not client_key.strip():
            raise ConfigurationError(f"${args.client_key_env} is empty or unset; put the key "
                                     "clients must send there")
        if not upstream_key.strip():
            raise ConfigurationError("with --client-key-env the proxy sends $TINKER_API_KEY "
                                     "upstream, and it is empty or unset; set it")
    return ProxyConfig(upstream=args.upstream, out=args.out, controller=args.controller,
                       client_key=client_key, upstream_key=upstream_key)


def proxy_main(args: argparse.Namespace) -> int:
    """Run ``ulora proxy`` with parsed ``args`` until interrupted; return the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .runner import proxy_forever

    try:
        config = proxy_config(args, dict(os.environ))
        proxy_forever(config, host=args.host, port=args.port)  # type: ignore[arg-type]
    except KeyboardInterrupt:
        return 0
    except (UloraError, OSError) as exc:
        print(f"ulora proxy: error: {exc}", file=sys.stderr)
        return 2
    return 0
