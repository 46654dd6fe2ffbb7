"""The local torch+peft backend: learning, determinism, gradient semantics, sampling.

All on the built-in "small" model, one thread, seconds each (the model is pre-trained once per
session into the conftest cache). Checkpoints and bad input are in test_local_backend_state.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.backends.local import LocalBackend  # noqa: E402
from ulora_remote.scenarios.pig_latin import PigLatinTask  # noqa: E402

from ulora_remote.backend import AdamParams, Example, TrainingBackend  # noqa: E402

torch.set_num_threads(1)

BATCH = [Example("hello ->", " ellohay"), Example("apple ->", " appleway"),
         Example("string ->", " ingstray")]
MORE = [Example("duck ->", " uckday"), Example("egg ->", " eggway")]


def _train(backend: LocalBackend, steps: int, lr: float = 2e-3, start: int = 0) -> list[float]:
    task = PigLatinTask(seed=0, eval_size=8)
    losses = []
    for step in range(start, start + steps):
        res = backend.forward_backward(task.train_batch(step, 8)).result()
        # a learning rate that changes every step, as the controller's does
        backend.optim_step(AdamParams(learning_rate=lr * (1 + step % 3) / 2)).result()
        losses.append(res.mean_loss)
    return losses


def _adapter(backend: LocalBackend) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in backend.params}


def test_implements_the_protocol_and_renders_completion_weights() -> None:
    backend = LocalBackend("small", seed=0)
    assert isinstance(backend, TrainingBackend)
    assert backend.base_model_name == "ulora/builtin-small" and backend.rank == 8
    d = backend.render(Example("ab ->", " ba"))
    tok = backend.tokenizer
    expected = [tok.bos_token_id, *tok.encode("ab -> ba", add_special_tokens=False),
                backend.eos_token_id]
    assert list(d.input_tokens) == expected[:-1] and list(d.target_tokens) == expected[1:]
    # targets " ", "b", "a", EOS carry weight; the prompt's targets do not
    assert d.weights == (0.0,) * 5 + (1.0,) * 4


def test_loss_on_pig_latin_falls_well_below_its_start() -> None:
    backend = LocalBackend("small", seed=0)
    held_out = PigLatinTask(seed=0, eval_size=32).eval_examples()
    before = backend.forward(held_out).result().mean_loss
    _train(backend, 150)
    after = backend.forward(held_out).result().mean_loss
    assert after < 0.4 * before, (before, after)


def test_same_seed_same_losses_other_seed_other_losses() -> None:
    a = _train(LocalBackend("small", seed=3), 8)
    b = _train(LocalBackend("small", seed=3), 8)
    c = _train(LocalBackend("small", seed=4), 8)
    assert a == b  # bit-identical, not approximately equal
    assert a[0] == c[0]  # LoRA B starts at zero: the first loss is the base model's
    assert a[1:] != c[1:]


def test_forward_leaves_gradients_and_weights_untouched() -> None:
    backend = LocalBackend("small", seed=0)
    _train(backend, 2)
    trained = backend.forward_backward(BATCH).result()
    grads = {n: p.grad.clone() for n, p in backend.params}
    weights = _adapter(backend)
    evaluated = backend.forward(BATCH).result()
    for n, p in backend.params:
        assert torch.equal(p.grad, grads[n]) and torch.equal(p.detach(), weights[n])
    assert evaluated.nll_sums == pytest.approx(trained.nll_sums, rel=1e-6)
    assert evaluated.weight_sums == trained.weight_sums == (9.0, 10.0, 10.0)


def test_two_forward_backwards_then_one_step_equal_one_concatenated_batch() -> None:
    split, joint = LocalBackend("small", seed=0), LocalBackend("small", seed=0)
    _train(split, 3)
    _train(joint, 3)
    r1 = split.forward_backward(BATCH).result()
    r2 = split.forward_backward(MORE).result()
    rj = joint.forward_backward(BATCH + MORE).result()
    assert r1.nll_sums + r2.nll_sums == pytest.approx(rj.nll_sums, rel=1e-5)
    for (n, p), (_, q) in zip(split.params, joint.params, strict=True):
        # float32 sums in another order: equal up to rounding relative to the tensor's scale
        assert float((p.grad - q.grad).abs().max()) <= 1e-5 * float(q.grad.abs().max()), n
    params = AdamParams(learning_rate=1e-3, eps=1e-8)
    ns = split.optim_step(params).result().grad_norm
    nj = joint.optim_step(params).result().grad_norm
    assert ns == pytest.approx(nj, rel=1e-5)
    for (n, p), (_, q) in zip(split.params, joint.params, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)
        assert p.grad is None  # optim_step clears the gradients


def _clipped_run(clip: float) -> tuple[float, float, float]:
    """(reported norm, torch's norm, global norm of Adam's first moment after one step)."""
    backend = LocalBackend("small", seed=0)
    _train(backend, 2)
    backend.forward_backward(BATCH).result()
    clones = [torch.nn.Parameter(torch.zeros_like(p)) for _, p in backend.params]
    for clone, (_, p) in zip(clones, backend.params, strict=True):
        clone.grad = p.grad.clone()
    expected = float(torch.nn.utils.clip_grad_norm_(clones, max_norm=1.0))
    beta1 = 0.9
    before = [backend.optimizer.state[p]["exp_avg"].clone() for _, p in backend.params]
    reported = backend.optim_step(
        AdamParams(learning_rate=1e-3, beta1=beta1, grad_clip_norm=clip)
    ).result().grad_norm
    # exp_avg' = β1·exp_avg + (1−β1)·g_applied, so the applied gradient can be read back
    applied = [(backend.optimizer.state[p]["exp_avg"] - beta1 * b) / (1 - beta1)
               for (_, p), b in zip(backend.params, before, strict=True)]
    applied_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in applied])))
    assert reported is not None
    return reported, expected, applied_norm


def test_grad_clipping_bounds_the_applied_gradient_and_reports_torchs_norm() -> None:
    reported, expected, applied = _clipped_run(clip=0.0)
    assert reported == pytest.approx(expected, rel=1e-6)
    assert applied == pytest.approx(expected, rel=1e-4)  # no clipping: the whole gradient
    clip = expected / 4
    reported, expected2, applied = _clipped_run(clip=clip)
    assert reported == pytest.approx(expected, rel=1e-6) and expected2 == expected
    assert applied == pytest.approx(clip, rel=1e-4)


def test_optim_step_without_gradients_changes_nothing() -> None:
    backend = LocalBackend("small", seed=0)
    before = _adapter(backend)
    assert backend.optim_step(AdamParams(learning_rate=1e-2)).result().grad_norm == 0.0
    assert all(torch.equal(p, before[n]) for n, p in backend.params)


def test_datum_results_carry_every_targets_logprob() -> None:
    backend = LocalBackend("small", seed=0)
    datums = [backend.render(e) for e in BATCH]
    res = backend.forward_datums(datums).result()
    for d, lp, nll in zip(datums, res.logprobs, res.nll_sums, strict=True):
        assert len(lp) == len(d.target_tokens) and all(x <= 0.0 for x in lp)
        weighted = sum(w * x for w, x in zip(d.weights, lp, strict=True))
        assert nll == pytest.approx(-weighted, rel=1e-5)
    trained = backend.forward_backward_datums(datums).result()
    assert trained.to_forward_backward_result().nll_sums == pytest.approx(res.nll_sums, rel=1e-6)
    assert all(p.grad is not None for _, p in backend.params if "lora_B" in _)


def test_batched_greedy_sampling_matches_one_prompt_at_a_time() -> None:
    backend = LocalBackend("small", seed=0)
    _train(backend, 40)
    prompts = ["hello ->", "a ->", "strengths ->", "eat ->"]
    batched = backend.sample([Example(p, "") for p in prompts], max_tokens=12)
    for prompt, text in zip(prompts, batched, strict=True):
        tokens = backend.sample_tokens(backend.tokenizer.encode(prompt), max_tokens=12)
        assert text == backend.tokenizer.decode(tokens, skip_special_tokens=True)
        assert len(tokens) <= 12 and (len(tokens) == 12 or tokens[-1] == backend.eos_token_id)


def test_sampling_stops_on_stop_tokens_and_is_reproducible_with_a_seed() -> None:
    backend = LocalBackend("small", seed=0)
    prompt = backend.tokenizer.encode("abcdef ->")
    greedy = backend.sample_tokens(prompt, max_tokens=8)
    stop = greedy[2]
    cut = backend.sample_tokens(prompt, max_tokens=8, stop_tokens=[stop])
    assert cut == greedy[: greedy.index(stop) + 1]
    hot = [backend.sample_tokens(prompt, 8, temperature=1.5, seed=11) for _ in range(2)]
    assert hot[0] == hot[1]


def test_the_builtin_fast_encoder_matches_the_tokenizer() -> None:
    from ulora_remote.backends.local import CHAR_VOCAB

    backend = LocalBackend("small", seed=0)
    text = "".join(c for c in CHAR_VOCAB if len(c) == 1)  # every character of the vocabulary
    example = Example(text + " ->", " " + text[::-1])
    d = backend.render(example)
    tok = backend.tokenizer
    expected = [*tok.encode(example.prompt),
                *tok.encode(example.completion, add_special_tokens=False), backend.eos_token_id]
    assert [*d.input_tokens, d.target_tokens[-1]] == expected


def test_sampling_with_the_kv_cache_warns_about_nothing() -> None:
    """transformers 5.x renamed ``past_key_values``; the old name warned twice on every run."""
    import logging
    import warnings

    backend = LocalBackend("small", seed=0)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("transformers")
    logging.Logger.warning_once.cache_clear()  # type: ignore[attr-defined]  # transformers' once
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            texts = backend.sample([Example("hello ->", ""), Example("a ->", "")], max_tokens=6)
    finally:
        logger.removeHandler(handler)
    assert len(texts) == 2 and [r.getMessage() for r in records] == []
