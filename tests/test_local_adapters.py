"""Per-task adapters on the local backend: the fork (each new adapter equal to the shared one),
routing (each example's gradient reaches only its task's adapter), the weight-space variance,
and checkpoints that carry every adapter once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from ulora_remote.backends.local import LocalBackend  # noqa: E402

from ulora_remote.backend import AdamParams, AdapterBackend, Example  # noqa: E402
from ulora_remote.errors import InputError  # noqa: E402

A = [Example("abc ->", " bcaay", task="a"), Example("cat ->", " atcay", task="a")]
B = [Example("dog ->", " god", task="b"), Example("pig ->", " gip", task="b")]
STEP = AdamParams(learning_rate=1e-2, beta1=0.9, beta2=0.95, eps=1e-8)


def _backend(tmp_path: Path, seed: int = 0) -> LocalBackend:
    return LocalBackend("small", rank=2, seed=seed, threads=1, checkpoint_dir=tmp_path,
                        progress=None)


def _adapter(backend: LocalBackend, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s weights by module path (the adapter's name taken out)."""
    return {n.replace(f".{name}.", "."): p.detach().clone()
            for n, p in backend.params if f".{name}." in n}


def _trained(tmp_path: Path) -> LocalBackend:
    """A backend whose shared adapter and AdamW moments are no longer at their start."""
    backend = _backend(tmp_path)
    for _ in range(2):
        backend.forward_backward(A + B)
        backend.optim_step(STEP)
    return backend


def test_each_new_adapter_starts_equal_to_the_shared_one(tmp_path: Path) -> None:
    backend = _trained(tmp_path)
    assert isinstance(backend, AdapterBackend) and backend.adapter_tasks() == ()
    before_a, before_b = backend.forward(A).result(), backend.forward(B).result()
    backend.fork_adapters(["a", "b"])
    assert backend.adapter_tasks() == ("a", "b")
    shared = _adapter(backend, "default")
    for name in ("task0", "task1"):
        copy = _adapter(backend, name)
        assert copy.keys() == shared.keys()
        assert all(torch.equal(copy[k], shared[k]) for k in shared)
    state = backend.optimizer.state
    by_name = dict(backend.params)
    for n, p in backend.params:
        if ".task0." in n:
            source = state[by_name[n.replace(".task0.", ".default.")]]
            assert all(torch.equal(state[p][k], source[k]) for k in ("exp_avg", "exp_avg_sq",
                                                                      "step"))
    assert backend.forward(A).result() == before_a  # same weights, same numbers
    assert backend.forward(B).result() == before_b


def test_each_examples_gradient_reaches_only_its_tasks_adapter(tmp_path: Path) -> None:
    backend = _trained(tmp_path)
    backend.fork_adapters(["a", "b"])
    alone = _backend(tmp_path / "alone")
    alone.load_state(backend.save_state("forked"))
    alone.forward_backward(A)
    expected = {n: p.grad.clone() for n, p in alone.params if p.grad is not None}

    backend.forward_backward(A + B)  # a mixed batch
    with_grad = {n for n, p in backend.params if p.grad is not None}
    assert with_grad == {n for n, _ in backend.params if ".task0." in n or ".task1." in n}
    for n, grad in expected.items():  # task a's gradient is what a alone gives, on task0
        assert ".task0." in n
        got = dict(backend.params)[n].grad
        assert got is not None and torch.allclose(got, grad, rtol=1e-5, atol=1e-7)


def test_a_step_on_one_task_changes_only_its_adapter(tmp_path: Path) -> None:
    backend = _trained(tmp_path)
    backend.fork_adapters(["a", "b"])
    shared, b_before = _adapter(backend, "default"), _adapter(backend, "task1")
    b_moments = {n: {k: v.clone() for k, v in backend.optimizer.state[p].items()}
                 for n, p in backend.params if ".task1." in n}
    loss_b = backend.forward(B).result()
    backend.forward_backward(A)
    backend.optim_step(STEP)
    assert not all(torch.equal(a, s) for a, s in
                   zip(_adapter(backend, "task0").values(), shared.values(), strict=True))
    assert all(torch.equal(v, b_before[k]) for k, v in _adapter(backend, "task1").items())
    assert all(torch.equal(v, shared[k]) for k, v in _adapter(backend, "default").items())
    for n, p in backend.params:
        if ".task1." in n:  # untouched moments and step count
            assert all(torch.equal(backend.optimizer.state[p][k], v)
                       for k, v in b_moments[n].items())
    assert backend.forward(B).result() == loss_b
    # an untrained task adapter samples like the shared one it was copied from
    shared_outputs = backend.sample([Example(e.prompt, e.completion) for e in B], 6)
    assert backend.sample(B, 6) == shared_outputs


def test_a_mixed_batch_reports_the_spread_of_the_tasks_gradients(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    assert backend.forward_backward(A + B).result().gradient_variance is None  # not asked
    backend.measure_gradient_variance(True)
    variance = backend.forward_backward(A + B).result().gradient_variance
    assert variance is not None and 0.0 < variance < 1.0
    assert backend.forward_backward(A).result().gradient_variance is None
    assert backend.forward(A + B).result().gradient_variance is None


def test_checkpoints_carry_every_adapter_once_and_restore_the_set(tmp_path: Path) -> None:
    backend = _trained(tmp_path)
    before_fork = backend.save_state("before-fork")
    unforked_a = backend.forward(A).result()
    backend.fork_adapters(["a", "b"])
    backend.forward_backward(A + B)
    backend.optim_step(STEP)
    forked = backend.save_state("forked")
    manifest = json.loads((Path(forked) / "manifest.json").read_text())
    assert manifest["task_adapters"] == {"a": "task0", "b": "task1"}
    shared_count = sum(".default." in n for n in manifest["params"])
    assert len(manifest["params"]) == 3 * shared_count  # shared + two task adapters, once each
    outputs = backend.forward(A + B).result()

    fresh = _backend(tmp_path / "fresh", seed=5)  # another seed: other initial weights
    fresh.load_state(forked)
    assert fresh.adapter_tasks() == ("a", "b")
    assert fresh.forward(A + B).result() == outputs
    for t in (fresh, backend):  # the next step is the same step (optimizer state included)
        t.forward_backward(A + B)
        t.optim_step(STEP)
    assert fresh.forward(A + B).result() == backend.forward(A + B).result()

    backend.load_state(before_fork)  # a checkpoint made before the fork: shared adapter alone
    assert backend.adapter_tasks() == ()
    assert not any(".task" in n for n, _ in backend.params)
    assert backend.forward(A).result() == unforked_a
    backend.load_state(forked)  # and forward again
    assert backend.adapter_tasks() == ("a", "b")


def test_a_bad_fork_is_refused(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    for tasks, message in (([], "at least one"), ([""], "shared"), (["a", "a"], "twice")):
        with pytest.raises(InputError, match=message):
            backend.fork_adapters(tasks)
    backend.fork_adapters(["a"])
    with pytest.raises(InputError, match="already"):
        backend.fork_adapters(["b", "a"])
    assert backend.adapter_tasks() == ("a",)


def test_a_sweeps_stoppable_backend_keeps_the_adapters(tmp_path: Path) -> None:
    """``ulora compare`` and the studies run every run behind a stoppable backend: around an
    AdapterBackend it is one too, so ``[adapters]`` scenarios run in a sweep."""
    import threading

    from runner_fakes import FakeBackend

    from ulora_remote.study.sweep_run import StoppableBackend, stoppable

    stop = threading.Event()
    backend = stoppable(_backend(tmp_path), stop)
    assert isinstance(backend, AdapterBackend) and isinstance(backend, StoppableBackend)
    backend.fork_adapters(["a", "b"])
    assert backend.adapter_tasks() == ("a", "b")
    stop.set()
    with pytest.raises(KeyboardInterrupt):
        backend.fork_adapters(["c"])
    assert not isinstance(stoppable(FakeBackend(), stop), AdapterBackend)
