"""A local backend that records its adapter and AdamW state at every save and right after every
load, so a test can check that a restore is exact (needs torch and peft: import it after
``pytest.importorskip``)."""

from __future__ import annotations

from typing import Any

import torch
from ulora_remote.backends.local import LocalBackend


class Recording(LocalBackend):
    """``at_save[ref]``: the state when ``ref`` was saved; ``loads``: (ref, state) right after
    each load, in order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.at_save: dict[str, dict[str, Any]] = {}
        self.loads: list[tuple[str, dict[str, Any]]] = []

    def _copy(self) -> dict[str, Any]:
        weights = {n: p.detach().clone() for n, p in self.params}
        # By parameter name: the order of optimizer.state is not kept across a load.
        optim = {n: {k: (v.clone() if torch.is_tensor(v) else v)
                     for k, v in self.optimizer.state.get(p, {}).items()}
                 for n, p in self.params}
        return {"weights": weights, "optim": optim}

    def save_state(self, name: str) -> str:
        ref = super().save_state(name)
        self.at_save[ref] = self._copy()
        return ref

    def load_state(self, ref: str) -> None:
        super().load_state(ref)
        self.loads.append((ref, self._copy()))
