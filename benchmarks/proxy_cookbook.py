"""tinker-cookbook's ``supervised.train`` through ``ulora proxy`` against going direct, and the
guarded wrapper script (examples/guarded_script.py) against the same script unguarded, all on
``ulora serve`` in this process ("small" model), with only ``base_url`` changed for the cookbook.

The data: a conversation file of Pig Latin records (``word`` → its Pig Latin) whose records
between 40% and 60% of the file are corrupted, once with another record's answer ("swapped"),
once with random letters ("letters"), and once not at all ("clean"). ``shuffle_seed=None`` and
the test split (the file's first ``TEST`` records) is clean.

Measured:
* rise: the cookbook's own final ``test/nll`` minus the direct clean run's; through the proxy it
  must be at most 10% of the direct run's rise;
* the clean file's final ``test/nll`` through the proxy within 1% of direct;
* seconds per step through the proxy at most 1.1x direct, on a second server with
  ``--cycle-s 0.3 --latency-s 0.1``: (wall of a 40-step run − wall of a 2-step run) / 38, so
  that start-up and the final checkpoint cancel; direct and proxy alternate twice and each is
  the mean of its two; the server's clock cycles per step are counted too (load-independent);
* the wrapper script, guarded against unguarded, on the same two NLL numbers.

Run:  python benchmarks/proxy_cookbook.py [--steps 60] [--out DIR]     (a few minutes)
      python benchmarks/proxy_cookbook.py --smoke                     (the suite's check)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

KEY = "tml-local-benchmark-key"
RENDERER = "role_colon"
TEST = 48
BATCH = 8


def _offline() -> None:
    os.environ.update(TINKER_TELEMETRY="0", HF_HUB_OFFLINE="1", TINKER_API_KEY=KEY,
                      HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9",
                      NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")


def write_file(path: Path, kind: str, n: int, seed: int = 0) -> Path:
    """``n`` Pig Latin records; those in [0.4n, 0.6n) corrupted as ``kind`` says."""
    from ulora_remote.scenarios.pig_latin import load_words, to_pig_latin

    rng = random.Random(seed)
    words = load_words()[:n]
    answers = [to_pig_latin(w) for w in words]
    lo, hi = int(0.4 * n), int(0.6 * n)
    with path.open("w") as f:
        for i, word in enumerate(words):
            answer = answers[i]
            if lo <= i < hi and kind == "swapped":
                answer = answers[(i + n // 3) % n]
            elif lo <= i < hi and kind == "letters":
                answer = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                 for _ in range(len(answer)))
            messages = [{"role": "user", "content": word},
                        {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def model_name(base_url: str) -> str:
    import tinker

    rest = tinker.RestClient(base_url=base_url, api_key=KEY)
    return str(rest.get_server_capabilities().result(60).supported_models[-1].model_name)


def cookbook(base_url: str, name: str, data: Path, log: Path, steps: int, eval_every: int,
             lr: float) -> list[dict[str, Any]]:
    """One ``supervised.train`` run; its metrics.jsonl rows."""
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    common = ChatDatasetBuilderCommonConfig(model_name_for_tokenizer=name, renderer_name=RENDERER,
                                            max_length=64, batch_size=BATCH)
    builder = FromConversationFileBuilder(common_config=common, file_path=str(data),
                                          test_size=TEST, shuffle_seed=None)  # type: ignore[arg-type]
    config = train.Config(log_path=str(log), model_name=name, recipe_name="proxy-benchmark",
                          renderer_name=RENDERER, dataset_builder=builder, learning_rate=lr,
                          lora_rank=8, base_url=base_url, save_every=0, eval_every=eval_every,
                          max_steps=steps + 1)
    asyncio.run(train.main(config))
    return [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]


def final_nll(rows: list[dict[str, Any]]) -> float:
    return float([r for r in rows if "test/nll" in r][-1]["test/nll"])


def guard_rows(folder: Path) -> list[list[str]]:
    return [r.split(",") for p in sorted(folder.iterdir())
            for r in (p / "steps.csv").read_text().splitlines()[1:]]


def _script(base_url: str, name: str, data: Path, steps: int, lr: float, guarded: bool,
            out: Path, screen: Any) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import guarded_script

    return float(guarded_script.main(base_url, name, str(data), steps=steps, lr=lr,
                                     guarded=guarded, out=str(out), test=TEST, screen=screen))


def run(steps: int, out: Path, smoke: bool, screen: Any = None, parts: str = "all"
        ) -> dict[str, Any]:
    import torch
    from ulora_remote.backends.proxy import ProxyConfig, proxy_in_thread
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    _offline()
    torch.set_num_threads(1)
    n = TEST + BATCH * (steps + 1)
    eval_every = steps if smoke else steps // 3
    lr = 5e-3
    files = {k: write_file(out / f"{k}.jsonl", k, n) for k in ("clean", "swapped", "letters")}
    result: dict[str, Any] = {"steps": steps, "records": n, "nll": {}, "rows": {}}
    server = serve_in_thread(ServerConfig(port=0, checkpoint_dir=out / "ckpt", api_key=KEY),
                             start_timeout_s=300)
    proxy = proxy_in_thread(ProxyConfig(upstream=server.base_url, out=out / "guard",
                                        screen=screen))
    try:
        name = model_name(server.base_url)
        kinds = ("clean", "swapped") if smoke else ("clean", "swapped", "letters")
        for kind in kinds:
            for way, url in (("direct", server.base_url), ("proxy", proxy.base_url)):
                t0 = time.monotonic()
                rows = cookbook(url, name, files[kind], out / f"{way}-{kind}", steps,
                                eval_every, lr)
                result["nll"][f"cookbook {way} {kind}"] = final_nll(rows)
                print(f"cookbook {way:6s} {kind:8s} test/nll {final_nll(rows):.4f} "
                      f"({time.monotonic() - t0:.0f} s)", flush=True)
        result["guard_rows"] = len(guard_rows(out / "guard"))
        if parts in ("all", "nll"):
            for kind in ("clean",) if smoke else kinds:
                for guarded in (False, True):
                    way = "guarded" if guarded else "plain"
                    nll = _script(server.base_url, name, files[kind], steps, lr, guarded,
                                  out / f"script-{way}-{kind}", screen)
                    result["nll"][f"script {way} {kind}"] = nll
                    print(f"script   {way:7s} {kind:8s} test nll {nll:.4f}", flush=True)
    finally:
        proxy.stop()
        server.stop()
    if not smoke and parts in ("all", "timing"):
        result["timing"] = timing(out, name_steps=min(steps, 40), lr=lr, files=files)
    result["targets"] = targets(result)
    return result


def timing(out: Path, name_steps: int, lr: float, files: dict[str, Path]) -> dict[str, float]:
    """Seconds per step direct and through the proxy on a clocked server (one invocation)."""
    from ulora_remote.backends.proxy import ProxyConfig, proxy_in_thread
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    server = serve_in_thread(ServerConfig(port=0, checkpoint_dir=out / "ckpt-clock", api_key=KEY,
                                          cycle_s=0.3, latency_s=0.1), start_timeout_s=300)
    proxy = proxy_in_thread(ProxyConfig(upstream=server.base_url, out=out / "guard-clock"))
    try:
        name = model_name(server.base_url)
        found: dict[str, float] = {}
        for way, url in (("direct", server.base_url), ("proxy", proxy.base_url),
                         ("direct again", server.base_url), ("proxy again", proxy.base_url)):
            wall, cycles = {}, {}
            for n in (2, name_steps):
                t0, c0 = time.monotonic(), server.cycles
                cookbook(url, name, files["clean"], out / f"clock-{way}-{n}", n, 10_000, lr)
                wall[n], cycles[n] = time.monotonic() - t0, server.cycles - c0
            # The difference of a long and a short run: start-up and the final save cancel.
            found[way] = (wall[name_steps] - wall[2]) / (name_steps - 2)
            found[f"{way} cycles"] = (cycles[name_steps] - cycles[2]) / (name_steps - 2)
            print(f"clocked  {way:12s} {found[way]:.3f} s/step, "
                  f"{found[f'{way} cycles']:.2f} cycles/step", flush=True)
        return found
    finally:
        proxy.stop()
        server.stop()


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target with its numbers (met or missed)."""
    nll, out = r["nll"], {}
    for prefix, base, guarded in (("cookbook", "direct", "proxy"), ("script", "plain", "guarded")):
        clean = nll.get(f"{prefix} {base} clean")
        if clean is None:
            continue
        g_clean = nll[f"{prefix} {guarded} clean"]
        out[f"{prefix}: clean within 1%"] = {"relative": (g_clean - clean) / clean,
                                             "met": abs(g_clean - clean) <= 0.01 * clean}
        for kind in ("swapped", "letters"):
            if f"{prefix} {base} {kind}" not in nll:
                continue
            rise = nll[f"{prefix} {base} {kind}"] - clean
            g_rise = nll[f"{prefix} {guarded} {kind}"] - clean
            out[f"{prefix}: {kind} rise ≤ 10% of direct"] = {
                "rise": rise, "guarded_rise": g_rise,
                "share": g_rise / rise if rise > 0 else float("nan"),
                "met": rise > 0 and g_rise <= 0.1 * rise}
    if "timing" in r:
        t = r["timing"]
        direct = statistics.fmean([t["direct"], t["direct again"]])
        proxied = statistics.fmean([t["proxy"], t["proxy again"]])
        out["seconds per step ≤ 1.1x direct"] = {"ratio": proxied / direct,
                                                  "met": proxied <= 1.1 * direct}
        out["cycles per step (direct, proxy)"] = {
            "direct": statistics.fmean([t["direct cycles"], t["direct again cycles"]]),
            "proxy": statistics.fmean([t["proxy cycles"], t["proxy again cycles"]])}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="4 steps, clean and swapped only")
    parser.add_argument("--parts", choices=("all", "nll", "timing"), default="all",
                        help="the wrapper script's runs (nll) and the clocked runs (timing)")
    parser.add_argument("--screen", default="", metavar="K=V,...",
                        help="ScreenConfig fields for the proxy and the wrapper, e.g. z=2")
    args = parser.parse_args(argv)
    from ulora_remote.control.screen import ScreenConfig

    fields = dict(kv.split("=") for kv in args.screen.split(",") if kv)
    screen = ScreenConfig(**{k: type(getattr(ScreenConfig(), k))(v) for k, v in fields.items()})
    steps = 4 if args.smoke else args.steps
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        result = run(steps, out, args.smoke, screen, args.parts)
        result["screen"] = fields
        print(json.dumps(result["targets"], indent=1))
        (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
