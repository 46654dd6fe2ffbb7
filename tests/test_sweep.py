"""Sweeps on the local backend and without a backend: the dry run's counts, the price table, the
continue commands, and a failed run that does not stop the others (worker processes)."""

from __future__ import annotations

import io
import shlex
import shutil

import pandas as pd
import pytest

from ulora_remote.cli import main
from ulora_remote.errors import BackendError, ConfigurationError
from ulora_remote.study.compare import compare_command, compare_scenario, compare_specs
from ulora_remote.study.cost import estimate_runs, format_estimate, load_prices
from ulora_remote.study.plan import StudyPlan, study_command, study_specs

TINY = ["steps=10", "shocks.windows=[[4,6]]", 'backend.base_model="small"', "eval.every=5",
        "eval.size=4", "eval.max_tokens=6", "baselines.fixed_lrs=[2e-3]", "checkpoint.every=5"]


def test_dry_run_counts_every_request_and_token_and_starts_nothing(tmp_path, capsys):
    pytest.importorskip("transformers")
    from ulora_remote.backends.local.tokenizer import build_char_tokenizer
    from ulora_remote.backends.tinker.render import prompt_tokens, render_example
    from ulora_remote.scenarios import load_scenario

    from ulora_remote.run.builders import build_source

    argv = ["compare", "pig-latin-shock", "--seeds", "0,1", "--out", str(tmp_path / "c"),
            "--dry-run"]
    for kv in (*TINY, 'backend.kind="tinker"', 'backend.base_model="ulora/builtin-small"'):
        argv += ["--set", kv]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert not (tmp_path / "c").exists()  # nothing started, nothing written
    assert "PLACEHOLDERS" in out and "guarded s1" in out and "fixed-2e-3 s0" in out

    # The first run by hand, with the real character tokenizer of the built-in models.
    _, specs = compare_specs("pig-latin-shock", seeds=(0,), out=tmp_path / "c",
                             overrides=[*TINY, 'backend.kind="tinker"',
                                        'backend.base_model="ulora/builtin-small"'])
    est = estimate_runs(specs[:1])[0]
    scenario = load_scenario(specs[0].scenario, specs[0].overrides)
    source, tok = build_source(scenario), build_char_tokenizer()
    train = sum(len(render_example(tok, e).input_tokens)
                for t in range(10) for e in source.batch(t).examples)
    evals = source.eval_examples(0)
    prefill = 3 * sum(len(render_example(tok, e).input_tokens) + len(prompt_tokens(tok, e.prompt))
                      for e in evals)  # evaluations at steps 0, 5 and 10
    # The first run is the guarded default: its guard screens every batch with a forward.
    assert est.spec.label == "guarded"
    assert est.tokens == {"train": train, "prefill": prefill + train, "sample": 3 * 4 * 6}
    assert est.requests == {"start": 1, "forward_backward": 10, "optim_step": 10, "forward": 13,
                            "sample": 12, "save_weights_for_sampler": 3, "save_state": 3}
    assert est.exact and est.price(load_prices()) == pytest.approx(
        (2 * train + prefill + 72) / 1e6)


def test_a_price_file_sets_the_rates_by_model_and_a_bad_one_is_named(tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text('source = "my invoice, 2026-01"\n'
                      '[models."ulora/builtin-small"]\nprefill = 2.0\nsample = 3.0\ntrain = 5.0\n')
    _, specs = compare_specs("pig-latin-shock", seeds=(0,), out=tmp_path / "c",
                             overrides=[*TINY, 'backend.kind="tinker"',
                                        'backend.base_model="ulora/builtin-small"'])
    est = estimate_runs(specs[:1])[0]
    table = load_prices(prices)
    t = est.tokens
    assert est.price(table) == pytest.approx(
        (2 * t["prefill"] + 3 * t["sample"] + 5 * t["train"]) / 1e6)
    text = format_estimate([est], table)
    assert "prices: my invoice, 2026-01" in text and "PLACEHOLDERS" not in text
    local = estimate_runs(compare_specs("pig-latin-shock", seeds=(0,), out=tmp_path / "l",
                                        overrides=TINY)[1][:1])
    assert local[0].price(table) is None  # the local backend has no service price
    prices.write_text('source = "x"\n[default]\nprefill = -1.0\nsample = 1.0\ntrain = 1.0\n')
    with pytest.raises(ConfigurationError, match="prices.toml is not a price table"):
        load_prices(prices)
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_prices(tmp_path / "missing.toml")


def test_study_dry_run_lists_every_run_of_the_plan(tmp_path):
    plan = StudyPlan(scenarios=("pig-latin-shock",), seeds=(0, 1), methods=("zskip",),
                     no_shock=(), overrides=tuple(TINY))
    specs = study_specs(plan, tmp_path)
    assert sorted(s.run_dir.name for s in specs) == ["fixed-2e-3-s0", "fixed-2e-3-s1",
                                                     "zskip-s0", "zskip-s1"]
    zskip = next(e for e in estimate_runs(specs) if e.spec.label == "zskip")
    assert zskip.requests["forward"] == 3 + 10  # evaluations, and a screening pass per step
    assert zskip.tokens["prefill"] > zskip.tokens["train"]


def test_continue_commands_name_the_output_and_never_force(tmp_path):
    cmd = compare_command("pig-latin-shock", (0, 1), tmp_path, ['backend.kind="tinker"'], 8)
    argv = shlex.split(cmd)
    assert argv[:3] == ["ulora", "compare", "pig-latin-shock"] and "--force" not in argv
    assert argv[argv.index("--out") + 1] == str(tmp_path)
    assert argv[argv.index("--concurrency") + 1] == "8"
    assert argv[argv.index("--set") + 1] == 'backend.kind="tinker"'
    plan = StudyPlan(scenarios=("pig-latin-shock",), seeds=(0, 1), overrides=("steps=30",))
    study = shlex.split(study_command(plan, tmp_path, 4))
    assert study[:2] == ["python", "benchmarks/study.py"] and "steps=30" in study


@pytest.mark.slow
def test_a_failed_run_does_not_stop_the_others_and_resumes_alone(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    _, specs = compare_specs("pig-latin-shock", seeds=(0,), out=tmp_path, overrides=TINY)
    broken = specs[0].run_dir  # guarded s0: a run directory of ours with a damaged config.json
    broken.mkdir(parents=True)  # (a folder that is no run is refused before the sweep starts)
    (broken / "ulora-run.json").write_text('{"format": "ulora-run", "version": 1}')
    (broken / "config.json").write_text('{"scenario": {"name": 1}}')
    term = io.StringIO()
    with pytest.raises(BackendError, match="1 of 3 runs failed") as err:
        compare_scenario("pig-latin-shock", seeds=(0,), out=tmp_path, overrides=TINY,
                         console=term, concurrency=2)
    assert f"ulora run --resume {broken}" in str(err.value)
    assert "continue the sweep with: ulora compare" in str(err.value)
    assert "FAILED" in term.getvalue() and " finished in " in term.getvalue()
    assert (specs[1].run_dir / "summary.json").exists()  # the other run finished
    assert "Traceback" in broken.with_name(broken.name + ".log").read_text()

    shutil.rmtree(broken)  # the cause fixed: the same call continues the sweep
    again = io.StringIO()
    table = compare_scenario("pig-latin-shock", seeds=(0,), out=tmp_path, overrides=TINY,
                             console=again)  # concurrency 1: the same rule inline
    assert "3 runs: 2 reused, 1 to start, 0 to resume" in again.getvalue()
    assert set(pd.read_csv(table.csv_path)["method"]) == {"guarded", "seed", "fixed-2e-3"}
