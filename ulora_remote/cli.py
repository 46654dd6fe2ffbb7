"""The ``ulora`` command: run, compare, report, scenarios, serve.

Every ``UloraError`` prints one line (``ulora: error: ...``) and exits with status 2; Ctrl-C
exits with 130 after the runner has flushed its files and printed how to resume.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulora_remote.errors import UloraError

__all__ = ["main"]

DEFAULT_SCENARIO = "pig-latin-shock"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ulora``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser(serving=bool(argv) and argv[0] == "serve")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UloraError as exc:
        print(f"ulora: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser(*, serving: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ulora", description="LoRA training under the Unified-LoRA controller."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario (default: pig-latin-shock)")
    run.add_argument("scenario", nargs="?", default=None,
                     help=f"a shipped scenario name or a TOML path (default {DEFAULT_SCENARIO})")
    _add_overrides(run)
    run.add_argument("--backend", choices=("local", "tinker"), help="override backend.kind")
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
    """``serve`` comes from the server backend; absent when that module is not installed.

    The server imports tinker and torch (seconds), so its options load only for ``ulora serve``;
    other commands list it by name.
    """
    help_text = "serve Tinker's HTTP protocol on 127.0.0.1 (local)"
    if not load:
        if importlib.util.find_spec("ulora_remote.backends.server") is not None:
            sub.add_parser("serve", help=help_text)
        return
    try:
        server_cli = importlib.import_module("ulora_remote.backends.server.cli")
    except ImportError:
        return
    serve = sub.add_parser("serve", help=help_text)
    server_cli.add_serve_arguments(serve)
    serve.set_defaults(func=server_cli.serve_main)


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

    if args.resume is not None:
        if args.scenario or _run_overrides(args) or args.out:
            raise _usage("--resume takes the scenario and options from the run's config.json; "
                         "give only --resume RUN_DIR")
        result = resume_run(args.resume, log_every=args.log_every)
    else:
        result = run_scenario(args.scenario or DEFAULT_SCENARIO, out=args.out,
                              overrides=_run_overrides(args), force=args.force,
                              log_every=args.log_every)
    _print_summary(result.summary, result.run_dir)
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
    summary = write_report(rd)
    _print_summary(summary, rd.path)
    return 0


def _cmd_scenarios(args: argparse.Namespace) -> int:
    from ulora_remote.scenarios import list_scenarios

    entries = list_scenarios()
    width = max((len(name) for name, _ in entries), default=0)
    for name, description in entries:
        print(f"{name:<{width}}  {description}")
    return 0


def _print_summary(summary: dict[str, Any] | None, run_dir: Path) -> None:
    if summary:
        final = summary.get("final", {})
        print(f"final eval loss {final.get('eval_loss', float('nan')):.4f}, exact match "
              f"{final.get('exact_match', float('nan')):.3f}, "
              f"{summary.get('wall_s', float('nan')):.1f} s")
        from ulora_remote.run.summary import classification_line

        line = classification_line(summary)
        if line:
            print(line)
    print(f"run directory: {run_dir}")


class _UsageError(UloraError):
    pass


def _usage(message: str) -> UloraError:
    return _UsageError(message)


if __name__ == "__main__":  # pragma: no cover - `python -m ulora_remote.cli`
    raise SystemExit(main())
