"""The scenario schema: malformed files get a message with the file, the key and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ulora_remote.scenarios import (
    Scenario,
    load_scenario,
    parse_override,
    shipped_scenarios,
    validate_scenario,
)

from ulora_remote.errors import ConfigurationError

VALID = """\
name = "t"
steps = 100
batch_size = 4

[shocks]
windows = [[20, 40], [60, 80]]

[eval]
every = 10
size = 8
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.toml"
    path.write_text(text, encoding="utf-8")
    return path


# (id, file text or None for VALID, overrides, message fragments in order)
MALFORMED = [
    (
        "unknown-key",
        "lerning_rate = 1\n" + VALID,
        (),
        ["case.toml: unknown key 'lerning_rate'", "remove it or fix the spelling"],
    ),
    (
        "unknown-key-in-table",
        VALID.replace("every = 10", "evry = 10"),
        (),
        [
            "unknown key 'eval.evry'",
            "did you mean 'every'?",
            "valid keys in [eval] are every, size, max_tokens",
        ],
    ),
    (
        "wrong-type",
        VALID.replace("steps = 100", 'steps = "100"'),
        (),
        ["case.toml: steps = '100': input should be a valid integer", "write an integer"],
    ),
    (
        "float-for-int",
        VALID.replace("batch_size = 4", "batch_size = 4.0"),
        (),
        ["batch_size = 4.0", "valid integer"],
    ),
    (
        "window-outside-run",
        None,
        ("shocks.windows=[[90, 120]]",),
        [
            "case.toml with override 'shocks.windows=[[90, 120]]': ",
            "shocks.windows[0] = [90, 120] lies outside the run [0, 100]",
            "move it inside or raise steps",
        ],
    ),
    (
        "overlapping-windows",
        None,
        ("shocks.windows=[[20, 40], [30, 50]]",),
        [
            "shocks.windows[1] = [30, 50] overlaps shocks.windows[0] = [20, 40]",
            "windows must not overlap — move or merge them",
        ],
    ),
    (
        "overlap-unsorted",
        None,
        ("shocks.windows=[[30, 50], [10, 31]]",),
        ["shocks.windows[1] = [10, 31] overlaps shocks.windows[0] = [30, 50]"],
    ),
    (
        "zero-batch-size",
        None,
        ("batch_size=0",),
        [
            "case.toml with override 'batch_size=0': ",
            "batch_size = 0: input should be greater than 0",
            "use a value above 0",
        ],
    ),
    (
        "start-not-below-end",
        None,
        ("shocks.windows=[[40, 20]]",),
        ["shocks.windows[0] = [40, 20]: start must be below end"],
    ),
    (
        "window-not-a-pair",
        None,
        ("shocks.windows=[[1, 2, 3]]",),
        ["shocks.windows[0] = [1, 2, 3]", "give at most 2 items"],
    ),
    (
        "bad-shock-kind",
        None,
        ("shocks.kind=noise",),
        ["shocks.kind = 'noise'", "choose one of random-letters, reversed, swapped-answer"],
    ),
    (
        "bad-fraction",
        None,
        ("shocks.fraction=1.5",),
        ["shocks.fraction = 1.5", "use a value of at most 1.0"],
    ),
    (
        "bad-preset",
        None,
        ("controller.preset=fast",),
        ["controller.preset = 'fast'", "'reference' or 'tinker'"],
    ),
    (
        "bad-method",
        None,
        ("controller.method=adaptive",),
        ["controller.method = 'adaptive'",
         "choose one of 'guarded', 'seed', 'controller', 'fixed', 'plateau'"],
    ),
    (
        "bad-backend-kind",
        None,
        ("backend.kind=cloud",),
        ["backend.kind = 'cloud'", "choose one of 'local', 'tinker'"],
    ),
    (
        "negative-seed",
        None,
        ("seed=-1",),
        ["seed = -1: input should be greater than or equal to 0", "use a value of at least 0"],
    ),
    (
        "warmup-not-below-steps",
        None,
        ("warmup_steps=100",),
        [
            "case.toml with override 'warmup_steps=100': ",
            "warmup_steps = 100 must be below steps = 100",
            "shorten the warm-up",
        ],
    ),
    ("eval-every-zero", None, ("eval.every=0",), ["eval.every = 0", "use a value above 0"]),
    (
        "eval-size-beyond-pool",
        None,
        ("eval.size=501",),
        ["eval.size = 501", "has 500 held-out examples; choose 1..500"],
    ),
    (
        "unknown-controller-field",
        None,
        ("controller.coldown=0",),
        [
            "case.toml with override 'controller.coldown=0': unknown key 'controller.coldown'",
            "did you mean 'cooldown'?",
        ],
    ),
    (
        "controller-field-wrong-type",
        None,
        ("controller.cooldown=1.5",),
        ["controller.cooldown = 1.5: input should be a valid integer"],
    ),
    (
        "controller-field-bad-value",
        None,
        ("controller.theta0=0.9",),
        ["controller: theta0=0.9 must be below theta1=0.7"],
    ),
    (
        "tinker-option-on-local",
        None,
        ("backend.base_url=http://127.0.0.1:1",),
        [
            "backend.base_url is a Tinker option, but backend.kind = 'local'",
            "set backend.kind = 'tinker'",
        ],
    ),
    (
        "hub-name-on-local",
        None,
        ("backend.base_model=meta-llama/Llama-3.2-1B",),
        [
            "backend.base_model = 'meta-llama/Llama-3.2-1B' is neither a built-in model",
            "(small, medium), a named model (smollm2-135m) nor a local model directory",
        ],
    ),
    (
        "negative-lr-baseline",
        None,
        ("baselines.fixed_lrs=[1e-3, -1e-4]",),
        ["baselines.fixed_lrs[1] = -0.0001", "use a value above 0"],
    ),
    ("table-given-a-value", None, ("eval=3",), ["eval = 3", "write a table"]),
    ("missing-required", "name = 't'\n", (), ["case.toml: steps is required — add it to the file"]),
    ("bad-task", 'task = "sst2"\n' + VALID, (), ["task.kind = 'sst2' is not known", "'pig-latin'"]),
]


@pytest.mark.parametrize(
    ("text", "overrides", "fragments"),
    [
        pytest.param(text, overrides, fragments, id=case)
        for case, text, overrides, fragments in MALFORMED
    ],
)
def test_malformed_scenario_gets_its_specific_message(
    tmp_path: Path, text: str | None, overrides: tuple[str, ...], fragments: list[str]
) -> None:
    path = _write(tmp_path, VALID if text is None else text)
    with pytest.raises(ConfigurationError) as caught:
        load_scenario(path, overrides)
    message = str(caught.value)
    position = 0
    for fragment in fragments:
        found = message.find(fragment, position)
        assert found >= 0, f"{fragment!r} not in {message!r}"
        position = found + len(fragment)


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, 'name = "t"\nsteps = 10\nbatch_size = = 3\n')
    with pytest.raises(
        ConfigurationError, match=r"case\.toml: invalid TOML: .*line 3.*fix the syntax"
    ):
        load_scenario(path)


def test_unknown_scenario_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_scenario("pig-latin-shok")
    message = str(caught.value)
    assert "unknown scenario 'pig-latin-shok'" in message
    for name in shipped_scenarios():
        assert name in message


@pytest.mark.parametrize("raw", ["controller.cooldown", "=3", "a..b=1", "steps x=1"])
def test_bad_override_syntax(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="not key=value with a dotted key"):
        load_scenario("pig-latin-shock", [raw])


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="steps is a value, not a table"):
        load_scenario("pig-latin-shock", ["steps.x=1"])


def test_overrides_are_parsed_as_toml_and_validated() -> None:
    assert parse_override("shocks.windows=[[20,40]]") == ("shocks.windows", [[20, 40]])
    assert parse_override("backend.kind=tinker") == ("backend.kind", "tinker")
    assert parse_override("controller.mirror_lock = true") == ("controller.mirror_lock", True)
    scenario = load_scenario(
        "pig-latin-shock", ["controller.cooldown=0", "steps=60", "shocks.windows=[[20,40]]"]
    )
    assert scenario.steps == 60 and scenario.schedule.windows == ((20, 40),)
    assert scenario.controller.overrides == {"cooldown": 0}
    assert scenario.controller.controller_config().cooldown == 0
    assert scenario.controller.controller_config().lr_single == 2e-3  # the tinker preset


def test_lag_defaults_by_backend_and_is_recorded() -> None:
    local = load_scenario("pig-latin-shock")
    tinker = load_scenario(
        "pig-latin-shock", ["backend.kind=tinker", "backend.base_model=meta-llama/Llama-3.2-1B"]
    )
    explicit = load_scenario("pig-latin-shock", ["lag=1"])
    assert (local.lag, tinker.lag, explicit.lag) == (0, 1, 1)
    assert local.model_dump(mode="json")["lag"] == 0


def test_dump_round_trips_through_json_and_contains_no_secret_fields() -> None:
    scenario = load_scenario("pig-latin-v2", ["controller.mirror_lock=true"])
    dumped = json.loads(json.dumps(scenario.model_dump(mode="json")))
    assert dumped["shocks"]["windows"] == [[150, 250], [400, 500]]
    assert dumped["controller"]["cooldown"] == 30 and dumped["controller"]["mirror_lock"] is True
    assert validate_scenario(dumped, "config.json") == scenario
    assert not any("key" in k.lower() for k in dumped["backend"])


def test_scenario_is_frozen_and_rebuilds_adam_params() -> None:
    scenario = load_scenario("pig-latin-shock")
    with pytest.raises(ValueError):
        scenario.steps = 5  # type: ignore[misc]
    params = scenario.optimizer.adam_params(1e-4)
    assert (params.learning_rate, params.beta2, params.eps) == (1e-4, 0.95, 1e-8)


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    scenario = load_scenario(_write(tmp_path, 'name = "m"\nsteps = 10\n'))
    assert scenario.shocks is None and scenario.schedule.windows == ()
    assert (scenario.batch_size, scenario.seed, scenario.lag, scenario.warmup_steps) == (8, 0, 0, 0)
    assert (scenario.eval.every, scenario.eval.size, scenario.eval.max_tokens) == (25, 64, 24)
    assert (scenario.backend.kind, scenario.backend.base_model, scenario.backend.rank) == (
        "local",
        "medium",
        8,
    )
    assert scenario.controller.preset == "tinker" and scenario.checkpoint.every == 100
    assert scenario.baselines.fixed_lrs == (2e-3, 5e-4, 1e-4)
    assert isinstance(scenario, Scenario)


def test_validate_scenario_names_its_source() -> None:
    with pytest.raises(ConfigurationError, match=r"^config\.json: steps is required"):
        validate_scenario({"name": "x"}, "config.json")


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("optimizer.weight_decay=inf", "optimizer.weight_decay = inf: input should be a finite"),
        ("optimizer.eps=inf", "optimizer.eps = inf: input should be a finite"),
        ("controller.lr_single=1e9", "lr_single=1000000000.0: a learning rate must be finite"),
        ("lag=1000000", "lag = 1000000: input should be less than or equal to 16"),
        ("warmup_lr=inf", "warmup_lr = inf: input should be a finite"),
        ('controller.method="fixed"', None),  # valid: a reference for the next one
        ("controller.stress.gain=inf", "controller.stress.gain = inf"),
        ("seed=18446744073709551616", "seed = 18446744073709551616"),
        ("backend.rank=1099511627776", "backend.rank = 1099511627776"),
        ("controller.cooldown=-1", "with override 'controller.cooldown=-1': controller: cooldown"),
        ('name="../escape"', "use only letters, digits"),
    ],
)
def test_absurd_values_are_refused_naming_the_key(override: str, needle: str | None) -> None:
    overrides = ["steps=12", "shocks.windows=[]", override]
    if needle is None:
        load_scenario("pig-latin-shock", overrides)
        return
    with pytest.raises(ConfigurationError) as info:
        load_scenario("pig-latin-shock", overrides)
    assert needle in str(info.value)
    assert "steps=12" not in str(info.value)  # blamed on the override that caused it


def test_a_secret_given_by_mistake_is_never_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        load_scenario("pig-latin-shock", ['backend.api_key="tml-secret-value-123"'])
    assert "tml-secret-value-123" not in str(info.value)
    assert "backend.api_key=<hidden>" in str(info.value)
