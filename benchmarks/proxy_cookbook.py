"""tinker-cookbook's ``supervised.train`` through ``ulora proxy`` against going direct, and the
guarded wrapper script (examples/guarded_script.py) against the same script unguarded, all on
``ulora serve`` in this process ("small" model), with only ``base_url`` changed for the cookbook.

The data: a conversation file of Pig Latin records (``word`` → its Pig Latin) with 20% of its
records corrupted, once with another record's answer ("swapped"), once with random letters
("letters"), and once not at all ("clean"). ``shuffle_seed=None`` and the test split (the file's
first ``TEST`` records) is clean. The cookbook shuffles its training split every epoch anyway, so
the corrupted records are placed two ways: "… burst", the records its first epoch trains between
40% and 60% (a burst in training time; ``corrupted_records``), and plain, the records between 40%
and 60% of the file (spread over the run by the cookbook; a burst for the wrapper script, which
reads the file in order).

Measured:
* rise: the cookbook's own final ``test/nll`` minus the direct clean run's; through the proxy it
  must be at most 10% of the direct run's rise;
* the clean file's final ``test/nll`` through the proxy within 1% of direct;
* where the burst was trained, read back from the cookbook's dataset and from the runs;
* seconds per step through the proxy at most 1.1x direct, on a second server with
  ``--cycle-s 0.3 --latency-s 0.1``: (wall of a ``--clock-steps`` run − wall of a 2-step run) /
  (steps − 2), so that start-up and the final checkpoint cancel; direct and proxy alternate
  ``--repeats`` times; the ratio's 95% interval from the per-pair ratios; the server's clock
  cycles per step are counted too (load-independent);
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


def corrupted_records(n: int, placement: str, epoch_seed: int = 0) -> range | list[int]:
    """File indices of the records to corrupt in a file of ``n`` records.

    "file": those between 40% and 60% of the file. "trained": those that the cookbook trains
    between 40% and 60% of its first epoch. ``supervised.train`` calls
    ``dataset.set_epoch(seed=epoch)``, which shuffles the training split
    (``hf_dataset.shuffle(seed=epoch)``) even with ``shuffle_seed=None``; that permutation
    depends only on the split's length, so the same ``datasets`` calls on the record indices
    give it (the training split is the file after its first ``TEST`` records).
    """
    if placement == "file":
        return range(int(0.4 * n), int(0.6 * n))
    import datasets

    split = datasets.Dataset.from_list([{"i": i} for i in range(n)]).skip(TEST)
    order = split.shuffle(seed=epoch_seed)["i"]
    lo, hi = int(0.4 * len(order)), int(0.6 * len(order))
    return sorted(order[lo:hi])


def write_file(path: Path, kind: str, n: int, seed: int = 0, placement: str = "file") -> Path:
    """``n`` Pig Latin records; those ``corrupted_records(n, placement)`` names corrupted as
    ``kind`` says ("swapped": another record's answer; "letters": random letters)."""
    from ulora_remote.scenarios.pig_latin import load_words, to_pig_latin

    rng = random.Random(seed)
    words = load_words()[:n]
    answers = [to_pig_latin(w) for w in words]
    bad = set(corrupted_records(n, placement)) if kind != "clean" else set()
    with path.open("w") as f:
        for i, word in enumerate(words):
            answer = answers[i]
            if i in bad and kind == "swapped":
                answer = answers[(i + n // 3) % n]
            elif i in bad and kind == "letters":
                answer = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz")
                                 for _ in range(len(answer)))
            messages = [{"role": "user", "content": word},
                        {"role": "assistant", "content": answer}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


def corrupted_steps(data: Path, name: str) -> list[int]:
    """How many corrupted records each step of the cookbook's first epoch trains, read back
    from the cookbook's own dataset: ``FromConversationFileBuilder`` as the benchmark builds
    it, ``set_epoch(seed=0)`` as ``supervised.train`` calls it, and the rows ``get_batch``
    selects (a record is corrupted when its answer is not its word's Pig Latin)."""
    from tinker_cookbook.supervised.data import FromConversationFileBuilder
    from ulora_remote.scenarios.pig_latin import to_pig_latin

    train_set, _ = FromConversationFileBuilder(
        common_config=_common(name), file_path=str(data), test_size=TEST,
        shuffle_seed=None)()  # type: ignore[arg-type]
    train_set.set_epoch(seed=0)
    rows = train_set.shuffle_dataset  # type: ignore[attr-defined]  # what get_batch selects from
    counts = []
    for b in range(len(train_set)):
        batch = rows.select(range(b * BATCH, (b + 1) * BATCH))["messages"]
        counts.append(sum(m[1]["content"] != to_pig_latin(m[0]["content"]) for m in batch))
    return counts


def model_name(base_url: str) -> str:
    import tinker

    rest = tinker.RestClient(base_url=base_url, api_key=KEY)
    return str(rest.get_server_capabilities().result(60).supported_models[-1].model_name)


def cookbook(base_url: str, name: str, data: Path, log: Path, steps: int, eval_every: int,
             lr: float) -> list[dict[str, Any]]:
    """One ``supervised.train`` run; its metrics.jsonl rows."""
    from tinker_cookbook.supervised import train
    from tinker_cookbook.supervised.data import FromConversationFileBuilder

    builder = FromConversationFileBuilder(common_config=_common(name), file_path=str(data),
                                          test_size=TEST, shuffle_seed=None)  # type: ignore[arg-type]
    config = train.Config(log_path=str(log), model_name=name, recipe_name="proxy-benchmark",
                          renderer_name=RENDERER, dataset_builder=builder, learning_rate=lr,
                          lora_rank=8, base_url=base_url, save_every=0, eval_every=eval_every,
                          max_steps=steps + 1)
    asyncio.run(train.main(config))
    return [json.loads(x) for x in (log / "metrics.jsonl").read_text().splitlines()]


def _common(name: str) -> Any:
    from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig

    return ChatDatasetBuilderCommonConfig(model_name_for_tokenizer=name, renderer_name=RENDERER,
                                          max_length=64, batch_size=BATCH)


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


# The cookbook's corrupted files: "… burst" corrupts the records it trains between 40% and 60%
# of its (shuffled) first epoch, so the corruption is a burst in training time; the plain kind
# corrupts the records between 40% and 60% of the file, which the cookbook spreads over the run.
# The wrapper script reads the file in order, so the plain kind is its burst.
COOKBOOK_KINDS = ("clean", "swapped burst", "letters burst", "swapped", "letters")
SCRIPT_KINDS = ("clean", "swapped", "letters")


def run(steps: int, out: Path, smoke: bool, screen: Any = None, parts: str = "all",
        repeats: int = 2, clock_steps: int = 40) -> dict[str, Any]:
    import torch
    from ulora_remote.backends.proxy import ProxyConfig, proxy_in_thread
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    _offline()
    torch.set_num_threads(1)
    n = TEST + BATCH * (steps + 1)
    eval_every = steps if smoke else steps // 3
    lr = 5e-3
    files = {k: write_file(out / f"{k.replace(' ', '-')}.jsonl", k.split()[0], n,
                           placement="trained" if k.endswith("burst") else "file")
             for k in COOKBOOK_KINDS}
    result: dict[str, Any] = {"steps": steps, "records": n, "nll": {}, "burst": {}}
    if parts in ("all", "nll"):
        server = serve_in_thread(ServerConfig(port=0, checkpoint_dir=out / "ckpt", api_key=KEY),
                                 start_timeout_s=300)
        proxy = proxy_in_thread(ProxyConfig(upstream=server.base_url, out=out / "guard",
                                            screen=screen))
        try:
            name = model_name(server.base_url)
            kinds = ("clean", "swapped") if smoke else COOKBOOK_KINDS
            for kind in kinds:
                if kind.endswith("burst"):
                    result["burst"][kind] = {"per_step": corrupted_steps(files[kind], name)}
                for way, url in (("direct", server.base_url), ("proxy", proxy.base_url)):
                    before = set(_folders(out / "guard"))
                    t0 = time.monotonic()
                    rows = cookbook(url, name, files[kind], out / f"{way}-{kind}", steps,
                                    eval_every, lr)
                    result["nll"][f"cookbook {way} {kind}"] = final_nll(rows)
                    print(f"cookbook {way:6s} {kind:13s} test/nll {final_nll(rows):.4f} "
                          f"({time.monotonic() - t0:.0f} s)", flush=True)
                    if kind in result["burst"]:
                        _read_back(result["burst"][kind], way, rows,
                                   [f for f in _folders(out / "guard") if f not in before])
            result["guard_rows"] = len(guard_rows(out / "guard"))
            for kind in ("clean",) if smoke else SCRIPT_KINDS:
                for guarded in (False, True):
                    way = "guarded" if guarded else "plain"
                    nll = _script(server.base_url, name, files[kind], steps, lr, guarded,
                                  out / f"script-{way}-{kind}", screen)
                    result["nll"][f"script {way} {kind}"] = nll
                    print(f"script   {way:7s} {kind:13s} test nll {nll:.4f}", flush=True)
        finally:
            proxy.stop()
            server.stop()
    if not smoke and parts in ("all", "timing"):
        result["timing"] = timing(out, clock_steps, lr, files, repeats)
    result["targets"] = targets(result)
    return result


def _folders(guard: Path) -> list[Path]:
    return sorted(guard.iterdir()) if guard.exists() else []


def _read_back(burst: dict[str, Any], way: str, rows: list[dict[str, Any]],
               folders: list[Path]) -> None:
    """Where the corrupted records were trained, read back from the runs: the cookbook's own
    ``train_mean_nll`` per step (direct) and the proxy's ``steps.csv`` (rejections per step),
    inside the steps that train a corrupted record and outside them."""
    hit = {i for i, c in enumerate(burst["per_step"]) if c}
    burst["first_step"], burst["last_step"] = min(hit), max(hit)
    burst["corrupted"] = sum(burst["per_step"])
    nll = {int(r["step"]): float(r["train_mean_nll"]) for r in rows if "train_mean_nll" in r}
    inside = [v for k, v in nll.items() if k in hit]
    outside = [v for k, v in nll.items() if k not in hit]
    burst[f"{way} train_mean_nll inside, outside"] = [statistics.fmean(inside),
                                                      statistics.fmean(outside)]
    if folders:
        csv_rows = [r.split(",") for f in folders
                    for r in (f / "steps.csv").read_text().splitlines()[1:]]
        burst["proxy rejected inside, outside"] = [
            sum(int(r[2]) for r in csv_rows if int(r[0]) in hit),
            sum(int(r[2]) for r in csv_rows if int(r[0]) not in hit)]
        burst["proxy events"] = [(int(r[0]), r[3]) for r in csv_rows if r[3]]


def timing(out: Path, clock_steps: int, lr: float, files: dict[str, Path],
           repeats: int) -> dict[str, Any]:
    """Seconds per step direct and through the proxy on a clocked server (one invocation):
    ``repeats`` alternating pairs, each (wall of a ``clock_steps`` run − wall of a 2-step run)
    / (clock_steps − 2), so that start-up and the final checkpoint cancel."""
    from ulora_remote.backends.proxy import ProxyConfig, proxy_in_thread
    from ulora_remote.backends.server import ServerConfig, serve_in_thread

    server = serve_in_thread(ServerConfig(port=0, checkpoint_dir=out / "ckpt-clock", api_key=KEY,
                                          cycle_s=0.3, latency_s=0.1), start_timeout_s=300)
    proxy = proxy_in_thread(ProxyConfig(upstream=server.base_url, out=out / "guard-clock"))
    try:
        name = model_name(server.base_url)
        found: dict[str, list[float]] = {"direct": [], "proxy": [], "direct cycles": [],
                                         "proxy cycles": []}
        for r in range(repeats):
            for way, url in (("direct", server.base_url), ("proxy", proxy.base_url)):
                wall, cycles = {}, {}
                for n in (2, clock_steps):
                    t0, c0 = time.monotonic(), server.cycles
                    cookbook(url, name, files["clean"], out / f"clock-{way}-{r}-{n}", n, 10_000,
                             lr)
                    wall[n], cycles[n] = time.monotonic() - t0, server.cycles - c0
                found[way].append((wall[clock_steps] - wall[2]) / (clock_steps - 2))
                found[f"{way} cycles"].append((cycles[clock_steps] - cycles[2])
                                              / (clock_steps - 2))
                print(f"clocked  {way:6s} #{r} {found[way][-1]:.3f} s/step, "
                      f"{found[f'{way} cycles'][-1]:.2f} cycles/step", flush=True)
        return {"clock_steps": clock_steps, **found}
    finally:
        proxy.stop()
        server.stop()


def ratio_interval(direct: list[float], proxied: list[float]) -> dict[str, float]:
    """The ratio of mean seconds per step (proxy / direct) and a 95% interval for it from the
    per-pair ratios (pairs alternate, so a slow spell of the machine hits both of a pair):
    mean ± t(0.975, n−1)·sd/√n, with n ≥ 2."""
    pairs = [p / d for d, p in zip(direct, proxied, strict=True)]
    t975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}
    half = (t975.get(len(pairs) - 1, 2.0) * statistics.stdev(pairs) / len(pairs) ** 0.5
            if len(pairs) > 1 else float("nan"))
    mean = statistics.fmean(pairs)
    return {"ratio": statistics.fmean(proxied) / statistics.fmean(direct),
            "pair_mean": mean, "low": mean - half, "high": mean + half}


def targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target with its numbers (met or missed)."""
    nll, out = r["nll"], {}
    for prefix, base, guarded, kinds in (
            ("cookbook", "direct", "proxy", COOKBOOK_KINDS[1:]),
            ("script", "plain", "guarded", SCRIPT_KINDS[1:])):
        clean = nll.get(f"{prefix} {base} clean")
        if clean is None:
            continue
        g_clean = nll[f"{prefix} {guarded} clean"]
        out[f"{prefix}: clean within 1%"] = {"relative": (g_clean - clean) / clean,
                                             "met": abs(g_clean - clean) <= 0.01 * clean}
        for kind in kinds:
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
        ratio = ratio_interval(t["direct"], t["proxy"])
        out["seconds per step ≤ 1.1x direct"] = {**ratio, "met": ratio["ratio"] <= 1.1}
        out["cycles per step (direct, proxy)"] = {
            "direct": statistics.fmean(t["direct cycles"]),
            "proxy": statistics.fmean(t["proxy cycles"])}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="4 steps, clean and swapped only")
    parser.add_argument("--parts", choices=("all", "nll", "timing"), default="all",
                        help="the wrapper script's runs (nll) and the clocked runs (timing)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternating direct/proxy pairs of clocked runs")
    parser.add_argument("--clock-steps", type=int, default=40,
                        help="steps of a clocked run (a 2-step run is subtracted)")
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
        result = run(steps, out, args.smoke, screen, args.parts, args.repeats,
                     args.clock_steps)
        result["screen"] = fields
        print(json.dumps(result["targets"], indent=1))
        (out / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
